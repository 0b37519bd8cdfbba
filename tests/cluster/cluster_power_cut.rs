//! A simulated power cut of every broker of a three-broker cluster at once (issue 9, item 6).
//!
//! Each broker runs with its own test-only sync ledger (`TIDELOG_TEST_SYNC_LEDGER`), which
//! records how many bytes of each segment file every completed sync covered. Producers send
//! `acks=all` batches through different brokers (recorded by the history checker), and
//! another topic takes `acks=leader` records that no broker syncs (its `flush_ms` is a
//! minute), so the cut surely takes something. Then every broker is stopped (SIGSTOP, so none runs on while the others die),
//! killed (`kill -9`), and every segment file cut back to what its ledger says was synced, as
//! a lost page cache would leave it; all three restart. Every acknowledged record must be at
//! its offset on every replica, and the replicas identical below their high watermarks.
//!
//! `TIDELOG_POWER_CUT_RECORDS` raises the records acknowledged per producer before the cut
//! (default 100), `TIDELOG_POWER_CUT_ROUNDS` the number of cuts (default 1).

use crate::common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::checker::{History, Outcome};
use common::cluster::{
    Cluster, DEADLINE, describe, free_ports, member_data_dir, peers, post, read_every_replica,
    wait_for,
};
use common::{TestBroker, cut_to_synced};
use serde_json::{Value, json};

const TOPIC: &str = "cut";
/// One acks=all producer each.
const PARTITIONS: u32 = 3;
/// acks=leader records only, never synced before the cut.
const UNSYNCED: &str = "unsynced";

const TOML: &str = "broker_session_timeout_ms = 3000\n\
                    replica_lag_time_max_ms = 2000\n\
                    replica_fetch_wait_max_ms = 200\n\
                    [topic_defaults]\n\
                    segment_bytes = 16384\n";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ledger(root: &std::path::Path, id: usize) -> PathBuf {
    root.join(format!("n{id}")).join("sync-ledger")
}

/// Three brokers, each with its own sync ledger.
fn start_cluster() -> Cluster {
    let root = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let all = peers(&ports);
    let brokers = (1..=3)
        .map(|id| {
            std::fs::create_dir_all(root.path().join(format!("n{id}"))).unwrap();
            let args = [
                "--node-id".to_string(),
                id.to_string(),
                "--peers".to_string(),
                all.clone(),
            ];
            let env = [(
                tidelog::log::sync_ledger::SYNC_LEDGER_ENV.to_string(),
                ledger(root.path(), id).display().to_string(),
            )];
            TestBroker::start_member_with_env(
                &member_data_dir(root.path(), id),
                ports[id - 1],
                &args,
                TOML,
                &env,
            )
        })
        .collect();
    let cluster = Cluster {
        root,
        ports,
        brokers,
        toml: TOML.to_string(),
    };
    for id in 1..=3 {
        cluster.wait_ready(id);
    }
    cluster
}

fn wait_full_isrs(c: &Cluster, what: &str) {
    wait_for(what, || {
        let d = describe(c, 1, TOPIC);
        let full = d["partitions"].as_array().is_some_and(|ps| {
            ps.len() == PARTITIONS as usize
                && ps
                    .iter()
                    .all(|p| p["isr"].as_array().is_some_and(|i| i.len() == 3))
        });
        if full { Ok(()) } else { Err(d.to_string()) }
    });
}

/// Sends `values` to partition `p` through `url` and records each value's outcome (of
/// acks=all records to [`TOPIC`]; the others are recorded as unknown).
fn produce(
    url: &str,
    topic: &str,
    p: u32,
    values: &[String],
    acks: &str,
    history: &Mutex<History>,
) -> u16 {
    let records: Vec<Value> = values
        .iter()
        .map(|v| json!({"partition": p, "value": v}))
        .collect();
    let (status, body) = post(
        &format!("{url}/v1/topics/{topic}/records?acks={acks}&timeout_ms=5000"),
        json!({ "records": records }),
    );
    let mut h = history.lock().unwrap();
    for (i, v) in values.iter().enumerate() {
        let outcome = match status {
            // acks=leader promises nothing a power cut cannot take back.
            _ if topic != TOPIC => continue,
            200 if acks != "all" => Outcome::Unknown,
            200 => {
                assert_eq!(body["durability"], "isr-fsync", "{body}");
                Outcome::Acknowledged {
                    partition: p,
                    offset: body["offsets"][i]["offset"].as_u64().unwrap(),
                }
            }
            503 if body["code"] == "not_enough_replicas" => Outcome::Failed,
            _ => Outcome::Unknown,
        };
        h.produced(v, outcome);
    }
    status
}

/// A producer thread: batches of 5 unique values to one partition through one broker until
/// stopped; counts the records it got an `acks=all` answer for.
struct Producer {
    acked: Arc<AtomicUsize>,
    thread: thread::JoinHandle<()>,
}

fn spawn_producer(
    url: String,
    topic: &'static str,
    p: u32,
    acks: &'static str,
    name: String,
    stop: &Arc<AtomicBool>,
    history: &Arc<Mutex<History>>,
) -> Producer {
    let (stop, history) = (Arc::clone(stop), Arc::clone(history));
    let acked = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&acked);
    let thread = thread::spawn(move || {
        let deadline = Instant::now() + 4 * DEADLINE;
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let values: Vec<String> = (i..i + 5).map(|k| format!("{name}-{k}")).collect();
            i += 5;
            if produce(&url, topic, p, &values, acks, &history) == 200 {
                counted.fetch_add(values.len(), Ordering::SeqCst);
            } else {
                thread::sleep(Duration::from_millis(20));
            }
        }
    });
    Producer { acked, thread }
}

#[test]
fn every_acknowledged_record_survives_a_power_cut_of_every_broker() {
    let records = env_number("TIDELOG_POWER_CUT_RECORDS", 100);
    let rounds = env_number("TIDELOG_POWER_CUT_ROUNDS", 1);
    let mut c = start_cluster();
    for (name, partitions, config) in [
        (TOPIC, PARTITIONS, json!({"min_insync_replicas": 2})),
        (
            UNSYNCED,
            1,
            json!({"min_insync_replicas": 2, "flush_ms": 60_000, "flush_bytes": 1 << 30}),
        ),
    ] {
        let (status, body) = post(
            &format!("{}/v1/topics", c.url(1)),
            json!({"name": name, "partitions": partitions, "replication_factor": 3,
                   "config": config}),
        );
        assert_eq!(status, 201, "{body}");
    }
    wait_full_isrs(&c, "full ISRs");
    let history = Arc::new(Mutex::new(History::default()));
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        // Producer p through broker p + 1, whichever broker leads its partition.
        let producers: Vec<Producer> = (0..3u32)
            .map(|p| {
                spawn_producer(
                    c.url(p as usize + 1).to_string(),
                    TOPIC,
                    p,
                    "all",
                    format!("r{round}p{p}"),
                    &stop,
                    &history,
                )
            })
            .collect();
        let unsynced = spawn_producer(
            c.url(1).to_string(),
            UNSYNCED,
            0,
            "leader",
            format!("r{round}l"),
            &stop,
            &history,
        );
        wait_for("acks=all records acknowledged on every partition", || {
            let acked: Vec<usize> = producers
                .iter()
                .map(|p| p.acked.load(Ordering::SeqCst))
                .collect();
            let leader_only = unsynced.acked.load(Ordering::SeqCst);
            if acked.iter().all(|n| *n >= records) && leader_only >= 10 {
                Ok(())
            } else {
                Err(format!("{acked:?} acks=all, {leader_only} acks=leader"))
            }
        });
        // The power goes: no broker runs on while the others die.
        for b in &c.brokers {
            b.pause();
        }
        for b in &mut c.brokers {
            b.kill9();
        }
        stop.store(true, Ordering::SeqCst);
        for p in producers.into_iter().chain([unsynced]) {
            p.thread.join().unwrap();
        }
        let mut cut = 0;
        for id in 1..=3 {
            cut += cut_to_synced(&c.data_dir(id), &ledger(c.root.path(), id));
        }
        assert!(
            cut > 0,
            "the acks=leader records were never synced, so a power cut loses them"
        );
        eprintln!("power cut {round}: {cut} unsynced bytes lost");
        for b in &mut c.brokers {
            b.restart();
        }
        for id in 1..=3 {
            c.wait_ready(id);
        }
        wait_full_isrs(&c, "full ISRs after the power cut");
    }
    let reads = read_every_replica(&c, 1, TOPIC, PARTITIONS);
    let mut history = history.lock().unwrap();
    for r in &reads {
        history.high_watermark(r.node, r.partition, r.high_watermark);
    }
    assert!(history.acknowledged() >= 3 * records * rounds);
    let anomalies = history.check(&reads);
    assert!(anomalies.is_empty(), "{anomalies:#?}");
    for p in 0..PARTITIONS {
        let on_leader = reads
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.records.len())
            .max()
            .unwrap();
        assert!(on_leader >= records * rounds, "partition {p}: {on_leader}");
    }
}
