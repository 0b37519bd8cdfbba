//! The controller under Raft (issue 10, first step): three broker processes on loopback are
//! the voters of the metadata quorum; the controller is its leader.
//!
//! - kill -9 of the controller leader while a topic is being created: another voter is
//!   elected within seconds (the time is printed), the creation happened once or failed
//!   cleanly, nobody but the dead broker is fenced, its in-sync sets shrink, admin calls work
//!   through the survivors, and the restarted broker rejoins every in-sync set it held.
//! - A minority of voters (one of three) left alone changes no metadata: admin calls through
//!   it fail cleanly; once the others are back, everything converges.
//!
//! Timings are shortened by config (`raft_election_timeout_ms` 500, sessions 3 s).

use crate::common;

use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, get, post, wait_for};
use serde_json::{Value, json};

const TOML: &str = "broker_session_timeout_ms = 3000\n\
                    raft_heartbeat_ms = 100\n\
                    raft_election_timeout_ms = 500\n\
                    replica_lag_time_max_ms = 2000\n";

fn cluster_view(c: &Cluster, id: usize) -> Value {
    get(&format!("{}/v1/cluster", c.url(id))).1
}

/// The controller every broker in `ids` names, once they agree.
fn agreed_controller(c: &Cluster, ids: &[usize]) -> usize {
    wait_for(&format!("brokers {ids:?} name one controller"), || {
        let seen: Vec<Option<u64>> = ids
            .iter()
            .map(|id| cluster_view(c, *id)["controller"].as_u64())
            .collect();
        match seen[0] {
            Some(l) if seen.iter().all(|s| *s == Some(l)) => Ok(l as usize),
            _ => Err(format!("{seen:?}")),
        }
    })
}

/// Each broker's status in `id`'s view, by node id.
fn statuses(c: &Cluster, id: usize) -> Vec<(u64, String)> {
    let view = cluster_view(c, id);
    view["brokers"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| {
                    let n = b["node_id"].as_u64().unwrap_or(0);
                    (n, b["status"].as_str().unwrap_or("").to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every partition of `topic` as broker `id` describes it: (leader, isr).
fn partitions(c: &Cluster, id: usize, topic: &str) -> Option<Vec<(u64, Vec<u64>)>> {
    let (status, d) = get(&format!("{}/v1/topics/{topic}", c.url(id)));
    if status != 200 {
        return None;
    }
    let ids = |v: &Value| -> Vec<u64> {
        let mut ids: Vec<u64> = v
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    };
    d["partitions"].as_array().map(|ps| {
        ps.iter()
            .map(|p| (p["leader"].as_u64().unwrap_or(0), ids(&p["isr"])))
            .collect()
    })
}

/// The topic names broker `id` lists, sorted.
fn topic_names(c: &Cluster, id: usize) -> Vec<String> {
    let (_, topics) = get(&format!("{}/v1/topics", c.url(id)));
    let mut names: Vec<String> = topics["topics"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn create(url: &str, name: &str, factor: u32) -> (u16, Value) {
    post(
        &format!("{url}/v1/topics"),
        json!({"name": name, "partitions": 3, "replication_factor": factor,
               "config": {"min_insync_replicas": 1}}),
    )
}

/// Kill the controller leader in the middle of a topic creation: a new leader within
/// seconds, the topic made once or not at all, only the dead broker fenced, admin and ISR
/// changes going on.
#[test]
fn a_killed_controller_leader_is_replaced_within_seconds_and_fences_nobody_else() {
    let mut c = Cluster::start(3, TOML);
    let leader = agreed_controller(&c, &[1, 2, 3]);
    let survivors: Vec<usize> = (1..=3).filter(|id| *id != leader).collect();
    let via = c.url(survivors[0]).to_string();

    // A topic on all three, made through a broker that forwards to the controller.
    let (status, body) = create(&via, "before", 3);
    assert_eq!(status, 201, "{body}");
    for id in 1..=3 {
        wait_for(&format!("full in-sync sets on {id}"), || {
            let ps = partitions(&c, id, "before").ok_or("not yet")?;
            if ps.iter().all(|(_, isr)| isr.len() == 3) {
                Ok(())
            } else {
                Err(format!("{ps:?}"))
            }
        });
    }

    // A creation in flight when the leader dies.
    let in_flight = {
        let url = via.clone();
        thread::spawn(move || create(&url, "during", 2))
    };
    thread::sleep(Duration::from_millis(20));
    c.brokers[leader - 1].kill9();
    let killed = Instant::now();

    // A new leader, agreed by both survivors; meanwhile nobody but the dead one is fenced.
    let mut fenced_survivors = Vec::new();
    let new_leader = wait_for("a new controller leader", || {
        for id in &survivors {
            for (n, s) in statuses(&c, *id) {
                if n as usize != leader && s == "fenced" {
                    fenced_survivors.push((id, n));
                }
            }
        }
        let seen: Vec<Option<u64>> = survivors
            .iter()
            .map(|id| cluster_view(&c, *id)["controller"].as_u64())
            .collect();
        match seen[0] {
            Some(l) if l as usize != leader && seen[1] == Some(l) => Ok(l as usize),
            _ => Err(format!("{seen:?}")),
        }
    });
    let elected_after = killed.elapsed();
    println!(
        "controller failover: broker {new_leader} leads {} ms after kill -9 of broker {leader}",
        elected_after.as_millis()
    );
    assert!(
        elected_after < Duration::from_secs(15),
        "election took {elected_after:?}"
    );

    // The in-flight creation answered; made once or not at all.
    let (status, body) = in_flight.join().unwrap();
    assert!(
        [201, 421, 502, 503, 504].contains(&status),
        "the in-flight creation: {status} {body}"
    );
    let again = wait_for("the creation retried through a survivor", || {
        let (status, body) = create(&via, "during", 2);
        match status {
            201 | 409 => Ok((status, body)),
            _ => Err(format!("{status} {body}")),
        }
    });
    if status == 201 {
        assert_eq!(again.0, 409, "created twice: {}", again.1);
        assert_eq!(again.1["code"], "topic_exists", "{}", again.1);
    }
    for id in &survivors {
        let names = topic_names(&c, *id);
        let count = names.iter().filter(|n| *n == "during").count();
        assert_eq!(count, 1, "'during' exactly once on {id}: {names:?}");
    }

    // The dead broker is fenced a session after the takeover, and leaves every in-sync set;
    // the survivors never were.
    for id in &survivors {
        wait_for(&format!("broker {leader} fenced on {id}"), || {
            let s = statuses(&c, *id);
            for (n, status) in &s {
                if *n as usize != leader && status == "fenced" {
                    fenced_survivors.push((id, *n));
                }
            }
            if s.iter()
                .any(|(n, status)| *n as usize == leader && status == "fenced")
            {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        });
    }
    assert!(
        fenced_survivors.is_empty(),
        "survivors fenced during the failover: {fenced_survivors:?}"
    );
    wait_for("the dead broker leaves every in-sync set", || {
        let ps = partitions(&c, survivors[0], "before").ok_or("gone")?;
        let ok = ps.iter().all(|(l, isr)| {
            *l as usize != leader && !isr.contains(&(leader as u64)) && isr.len() == 2
        });
        if ok { Ok(()) } else { Err(format!("{ps:?}")) }
    });

    // Admin through either survivor goes on with the new controller.
    let (status, body) = create(c.url(survivors[1]), "after", 2);
    assert_eq!(status, 201, "{body}");

    // Restarted, the old leader rejoins as a follower, is unfenced, and is taken back into
    // the in-sync sets (ISR expansion at the new controller).
    c.brokers[leader - 1].restart();
    c.wait_ready(leader);
    assert_eq!(agreed_controller(&c, &[1, 2, 3]), new_leader);
    wait_for("the old leader back in every in-sync set", || {
        let ps = partitions(&c, new_leader, "before").ok_or("gone")?;
        if ps.iter().all(|(_, isr)| isr.len() == 3) {
            Ok(())
        } else {
            Err(format!("{ps:?}"))
        }
    });
    let ids: Vec<Value> = (1..=3)
        .map(|id| cluster_view(&c, id)["cluster_id"].clone())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0] && i.is_string()), "{ids:?}");
    let view = cluster_view(&c, new_leader);
    assert_eq!(view["raft"]["state"], "leader", "{view}");
    let voters = view["raft"]["voters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(voters.len(), 3, "{view}");
}

/// One voter of three left alone (the other two killed) changes no metadata: admin through
/// it fails cleanly, its image stays; with the others back, a leader is elected and every
/// broker converges on one image.
#[test]
fn a_minority_of_voters_changes_no_metadata_and_converges_after() {
    let mut c = Cluster::start(3, TOML);
    let leader = agreed_controller(&c, &[1, 2, 3]);
    let (status, body) = create(c.url(leader), "kept", 3);
    assert_eq!(status, 201, "{body}");
    let lone = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != lone).unwrap();
    wait_for("the lone voter holds 'kept'", || {
        partitions(&c, lone, "kept")
            .map(|_| ())
            .ok_or_else(|| "not yet".to_string())
    });
    let before = cluster_view(&c, lone)["raft"]["last_applied_index"].clone();
    c.brokers[leader - 1].kill9();
    c.brokers[other - 1].kill9();

    // Alone, it elects nobody and changes nothing: every admin call fails, none hangs.
    let started = Instant::now();
    for name in ["lost-1", "lost-2"] {
        let (status, body) = create(c.url(lone), name, 1);
        assert!(
            [421, 502, 503, 504].contains(&status),
            "an admin call through a minority: {status} {body}"
        );
        let (status, body) = post(
            &format!("{}/v1/topics/kept/partitions", c.url(lone)),
            json!({"count": 5}),
        );
        assert!([421, 502, 503, 504].contains(&status), "{status} {body}");
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    thread::sleep(Duration::from_secs(2));
    let view = cluster_view(&c, lone);
    assert_eq!(view["raft"]["last_applied_index"], before, "{view}");
    assert_ne!(view["raft"]["state"], "leader", "{view}");
    assert_eq!(partitions(&c, lone, "kept").map(|p| p.len()), Some(3));

    // The others back: one leader, one image everywhere, admin works again.
    c.brokers[leader - 1].restart();
    c.brokers[other - 1].restart();
    for id in 1..=3 {
        c.wait_ready(id);
    }
    let now = agreed_controller(&c, &[1, 2, 3]);
    let (status, body) = create(c.url(lone), "healed", 3);
    assert_eq!(status, 201, "{body}");
    wait_for("one image on every broker", || {
        let applied: Vec<Value> = (1..=3)
            .map(|id| cluster_view(&c, id)["raft"]["last_applied_index"].clone())
            .collect();
        let topics: Vec<Vec<String>> = (1..=3).map(|id| topic_names(&c, id)).collect();
        if applied.iter().all(|a| *a == applied[0]) && topics.iter().all(|t| *t == topics[0]) {
            Ok(())
        } else {
            Err(format!("controller {now}: applied {applied:?}"))
        }
    });
    for id in 1..=3 {
        assert_eq!(
            partitions(&c, id, "lost-1"),
            None,
            "a minority's change appeared on {id}"
        );
        assert_eq!(partitions(&c, id, "kept").map(|p| p.len()), Some(3));
    }
}
