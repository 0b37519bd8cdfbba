//! Issue 10, bad input: a voter of the metadata Raft whose data directory was wiped (or
//! replaced by a new disk) while the cluster knows it. With an empty log it would grant its
//! vote to any candidate, one that lacks metadata its own lost log had acknowledged (a
//! committed entry gone); its replicas are empty too. So it refuses to start, naming the
//! fault, unless the operator says `--rejoin-after-data-loss`; then it neither votes nor
//! campaigns until it holds the log the others had applied when it started, and its replicas
//! rejoin the in-sync sets only once fetched again (a new incarnation leaves them all).

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::{
    Cluster, get, peers, post, read_every_replica, run_to_exit, start_member_with_peers, wait_for,
};
use serde_json::{Value, json};

/// Short Raft timings and sessions, as tests/controller_failover.rs.
const TOML: &str = "broker_session_timeout_ms = 3000\n\
                    raft_heartbeat_ms = 100\n\
                    raft_election_timeout_ms = 500\n\
                    replica_lag_time_max_ms = 2000\n\
                    replica_fetch_wait_max_ms = 200\n";

fn cluster_view(c: &Cluster, id: usize) -> Value {
    get(&format!("{}/v1/cluster", c.url(id))).1
}

/// The controller broker `id` knows (None during an election).
fn controller_seen_by(c: &Cluster, id: usize) -> Option<usize> {
    cluster_view(c, id)["controller"]
        .as_u64()
        .map(|n| n as usize)
}

#[test]
fn a_wiped_voter_refuses_to_start_and_rejoins_only_when_told_voting_once_caught_up() {
    let mut c = Cluster::start(3, TOML);
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": "w", "partitions": 3, "replication_factor": 3}),
    );
    assert_eq!(status, 201, "{body}");
    for i in 0..30 {
        let (status, body) = post(
            &format!("{}/v1/topics/w/records?acks=all", c.url(1 + i % 3)),
            json!({"records": [{"key": format!("k{i}"), "value": i}]}),
        );
        assert_eq!(status, 200, "{body}");
    }
    let leader = wait_for("a controller", || {
        controller_seen_by(&c, 1).ok_or_else(|| "none".to_string())
    });
    let victim = (1..=3).find(|id| *id != leader).expect("a follower voter");
    let other = (1..=3)
        .find(|id| *id != leader && *id != victim)
        .expect("the third voter");

    // The victim's disk is wiped while it is down.
    c.brokers[victim - 1].kill9();
    let data = c.data_dir(victim);
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let config_file = data.parent().unwrap().join("tidelog-test.toml");
    let all = peers(&c.ports);
    let listen = format!("127.0.0.1:{}", c.ports[victim - 1]);
    let args = [
        "--listen",
        &listen,
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        config_file.to_str().unwrap(),
        "--node-id",
        &victim.to_string(),
        "--peers",
        &all,
    ];
    let (code, stderr) = run_to_exit(&args);
    assert_ne!(code, Some(0), "a wiped voter must not start: {stderr}");
    assert!(
        stderr.contains("--rejoin-after-data-loss") && stderr.contains("holds no cluster state"),
        "the refusal names the fault and the way out: {stderr}"
    );
    assert!(
        !data
            .join("__cluster")
            .join("raft")
            .join("vote.json")
            .exists(),
        "the refused start stored no vote"
    );

    // The leader goes down too: the third voter campaigns and needs the victim's vote. Told
    // to rejoin, the victim withholds it until it caught up, so no leader is elected from a
    // log its lost one may have held more than (here it could not even catch up: no leader).
    c.brokers[leader - 1].kill9();
    let rejoining = format!("{TOML}rejoin_after_data_loss = true\n");
    c.brokers[victim - 1] =
        start_member_with_peers(c.root.path(), &c.ports, victim, &rejoining, &all);
    let view = cluster_view(&c, victim);
    assert_eq!(view["raft"]["votes_withheld"], true, "{view}");
    wait_for(
        "the third voter to miss its leader",
        || match controller_seen_by(&c, other) {
            Some(l) if l == leader => Err(format!("still {l}")),
            other => Ok(other),
        },
    );
    let quiet_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < quiet_until {
        for id in [victim, other] {
            let seen = controller_seen_by(&c, id);
            assert_eq!(
                seen, None,
                "broker {id} sees a controller elected with the vote of a voter that lost its log"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // The old leader is back: a leader is elected without the victim, which catches up,
    // then votes again; its replicas are fetched again and rejoin the in-sync sets.
    c.brokers[leader - 1].restart();
    wait_for("the rejoined voter caught up and voting", || {
        let view = cluster_view(&c, victim);
        match (&view["raft"]["votes_withheld"], &view["controller"]) {
            (Value::Bool(false), Value::Number(_)) => Ok(()),
            _ => Err(view.to_string()),
        }
    });
    for id in 1..=3 {
        c.wait_ready(id);
    }
    wait_for("every partition of w in sync on three replicas", || {
        let (_, d) = get(&format!("{}/v1/topics/w", c.url(other)));
        let isr: Vec<usize> = (0..3)
            .map(|p| d["partitions"][p]["isr"].as_array().map_or(0, Vec::len))
            .collect();
        if isr == [3, 3, 3] {
            Ok(())
        } else {
            Err(d.to_string())
        }
    });
    let reads = read_every_replica(&c, other, "w", 3);
    let on_victim: usize = reads
        .iter()
        .filter(|r| r.node as usize == victim)
        .map(|r| r.records.len())
        .sum();
    assert_eq!(on_victim, 30, "the wiped replicas hold every record again");
}
