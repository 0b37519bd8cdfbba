//! The high watermark under `acks=all` with a long `flush_ms` (issue 9): the followers' own
//! flushers then never sync within the test, so every record `acks=all` waits for must be
//! fsynced because the leader asked (`sync_now`), on every in-sync replica, in the current
//! leader epoch. Three brokers; leadership moves by `kill -9` and restart of the leader.
//!
//! After each step, once producing stops: every ISR member's own high watermark (read with
//! `replica=local`, which a follower caps at its own fsynced offset) reaches the leader's
//! within [`HW_BOUND`], far below `flush_ms`: a leader whose high watermark passed what an ISR
//! member fsynced shows as that member staying below it. Each `acks=all` produce is answered
//! 200 within its timeout.
//!
//! `TIDELOG_HW_ROUNDS` sets the number of leader kills (default 2).

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, get, post, wait_for};
use serde_json::{Value, json};

const TOML: &str = "broker_session_timeout_ms = 3000\n\
                    replica_lag_time_max_ms = 2000\n\
                    replica_fetch_wait_max_ms = 200\n";
const TOPIC: &str = "hw";
const PARTITIONS: u32 = 3;
/// Far below `flush_ms` (60 s), roomy for two busy cores.
const HW_BOUND: Duration = Duration::from_secs(8);
/// The longest an `acks=all` produce may take with a live ISR of at least the minimum.
const PRODUCE_BOUND: Duration = Duration::from_secs(8);

fn describe(c: &Cluster, id: usize) -> Value {
    get(&format!("{}/v1/topics/{TOPIC}", c.url(id))).1
}

/// Leader, leader epoch and ISR of partition `p` as broker `id` sees them.
fn state(c: &Cluster, id: usize, p: u32) -> (usize, u64, Vec<usize>) {
    let d = describe(c, id);
    let part = &d["partitions"][p as usize];
    let isr = common::cluster::node_ids(&part["isr"]);
    (
        part["leader"].as_u64().unwrap_or(0) as usize,
        part["leader_epoch"].as_u64().unwrap_or(0),
        isr,
    )
}

/// Broker `id`'s own high watermark of partition `p`.
fn local_hw(c: &Cluster, id: usize, p: u32) -> Option<u64> {
    let (status, page) = get(&format!(
        "{}/v1/topics/{TOPIC}/partitions/{p}/records?offset=0&replica=local&max_records=1",
        c.url(id)
    ));
    if status != 200 {
        return None;
    }
    page["high_watermark"].as_u64()
}

/// `batches` acks=all produces of 5 records each to the leader of `p`, one after another;
/// each must be answered 200 within [`PRODUCE_BOUND`].
fn produce_all(c: &Cluster, p: u32, batches: usize, tag: &str) {
    for b in 0..batches {
        let (leader, _, _) = wait_for("a leader", || match state(c, 1, p) {
            (0, _, _) => Err("no leader".to_string()),
            s => Ok(s),
        });
        let records: Vec<Value> = (0..5)
            .map(|i| json!({"partition": p, "value": format!("{tag}-{b}-{i}")}))
            .collect();
        let sent = Instant::now();
        let (status, body) = post(
            &format!(
                "{}/v1/topics/{TOPIC}/records?acks=all&timeout_ms={}",
                c.url(leader),
                PRODUCE_BOUND.as_millis()
            ),
            json!({ "records": records }),
        );
        let took = sent.elapsed();
        assert_eq!(
            status, 200,
            "{tag}: acks=all produce {b} to leader {leader} of partition {p} took {took:?}: {body}"
        );
        assert!(took <= PRODUCE_BOUND, "{tag}: produce {b} took {took:?}");
    }
}

/// Every ISR member's own high watermark reaches the leader's within [`HW_BOUND`] (nothing
/// is produced meanwhile), and none is above it.
fn assert_isr_caught_up(c: &Cluster, p: u32, alive: &[usize], what: &str) {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < HW_BOUND {
        let (leader, epoch, isr) = state(c, alive[0], p);
        if leader != 0 && alive.contains(&leader) {
            let leader_hw = local_hw(c, leader, p);
            let members: Vec<(usize, Option<u64>)> = isr
                .iter()
                .filter(|n| alive.contains(n))
                .map(|n| (*n, local_hw(c, *n, p)))
                .collect();
            last = format!(
                "leader {leader} epoch {epoch} hw {leader_hw:?}, isr {isr:?} hws {members:?}"
            );
            if let Some(hw) = leader_hw {
                for (n, m) in &members {
                    assert!(
                        m.is_none_or(|m| m <= hw),
                        "{what}: member {n} above the leader's HW: {last}"
                    );
                }
                if members.iter().all(|(_, m)| *m == Some(hw)) {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: an ISR member's HW stayed below the leader's for {HW_BOUND:?}: {last}");
}

#[test]
fn with_a_long_flush_ms_acks_all_and_every_isr_high_watermark_follow_the_leaders() {
    let rounds: usize = std::env::var("TIDELOG_HW_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut c = Cluster::start(3, TOML);
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": TOPIC, "partitions": PARTITIONS, "replication_factor": 3,
               "config": {"min_insync_replicas": 2, "flush_ms": 60000}}),
    );
    assert_eq!(status, 201, "{body}");
    wait_for("full ISRs", || {
        let d = describe(&c, 1);
        let full = d["partitions"].as_array().is_some_and(|ps| {
            ps.len() == PARTITIONS as usize
                && ps
                    .iter()
                    .all(|p| p["isr"].as_array().is_some_and(|i| i.len() == 3))
        });
        if full { Ok(()) } else { Err(d.to_string()) }
    });
    // A partition not led by node 1 (killing the controller is another test's matter).
    let p = (0..PARTITIONS)
        .find(|p| state(&c, 1, *p).0 != 1)
        .expect("a partition led by node 2 or 3");
    let all = [1, 2, 3];
    produce_all(&c, p, 10, "start");
    assert_isr_caught_up(&c, p, &all, "before any kill");
    for round in 0..rounds {
        let (old, old_epoch, _) = state(&c, 1, p);
        if old == 1 {
            // The controller leads now: this round produces and checks only.
            produce_all(&c, p, 10, &format!("r{round}"));
            assert_isr_caught_up(&c, p, &all, &format!("round {round}"));
            continue;
        }
        c.brokers[old - 1].kill9();
        let alive: Vec<usize> = all.iter().copied().filter(|n| *n != old).collect();
        wait_for("a new leader", || {
            let (leader, epoch, _) = state(&c, 1, p);
            if leader != 0 && leader != old && epoch > old_epoch {
                Ok(())
            } else {
                Err(format!("leader {leader} epoch {epoch}"))
            }
        });
        produce_all(&c, p, 10, &format!("r{round}-new-leader"));
        assert_isr_caught_up(&c, p, &alive, &format!("round {round}, {old} down"));
        c.brokers[old - 1].restart();
        wait_for("the old leader back in the ISR", || {
            let (_, _, isr) = state(&c, 1, p);
            if isr.contains(&old) {
                Ok(())
            } else {
                Err(format!("isr {isr:?}"))
            }
        });
        produce_all(&c, p, 10, &format!("r{round}-rejoined"));
        assert_isr_caught_up(&c, p, &all, &format!("round {round}, {old} rejoined"));
    }
}
