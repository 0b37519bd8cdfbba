//! A flipped bit in a follower's fsynced data (issue 9, item 7): found by the CRC checks,
//! the replica is cut at the damage and fetches the records again from its leader; it is
//! not served meanwhile and rejoins the in-sync replica set only once it has caught up.
//!
//! Three broker processes on loopback, one partition of replication factor 3 and
//! `min_insync_replicas` 2, an `acks=all` producer recorded by the history checker, then
//! every replica read back with `replica=local`: every acknowledged record on each, the
//! replicas identical below the high watermark.
//! - A follower is killed (`kill -9`), a bit of one of its segment files is flipped, it is
//!   restarted: in a sealed segment the scrub at start finds it, in the active one recovery.
//! - A bit of a running follower's sealed segment is flipped: the periodic scrub
//!   (`replica_scrub_interval_ms`) finds it.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::checker::{History, Outcome};
use common::cluster::{Cluster, DEADLINE, get, post, read_every_replica, wait_for};
use serde_json::{Value, json};

const TOPIC: &str = "d";

/// Segments of 16 KiB, which a few thousand records fill and which get offset index entries
/// (every 4 KiB): recovery after a crash trusts a sealed segment up to its last one. Quick ISR
/// decisions.
fn toml(scrub_interval_ms: u64) -> String {
    format!(
        "broker_session_timeout_ms = 3000\n\
         replica_lag_time_max_ms = 2000\n\
         replica_fetch_wait_max_ms = 200\n\
         replica_scrub_interval_ms = {scrub_interval_ms}\n\
         [topic_defaults]\n\
         segment_bytes = 16384\n"
    )
}

fn describe(c: &Cluster, id: usize) -> Value {
    get(&format!("{}/v1/topics/{TOPIC}", c.url(id))).1
}

/// The partition's leader and ISR as broker `id` sees them.
fn leader_and_isr(c: &Cluster, id: usize) -> (usize, Vec<u64>) {
    let d = describe(c, id);
    let p = &d["partitions"][0];
    let isr = p["isr"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    (p["leader"].as_u64().unwrap_or(0) as usize, isr)
}

fn wait_full_isr(c: &Cluster, what: &str) {
    wait_for(what, || {
        let (_, isr) = leader_and_isr(c, 1);
        if isr.len() == 3 {
            Ok(())
        } else {
            Err(format!("isr {isr:?}"))
        }
    });
}

/// Creates the topic at the controller and waits for a full ISR; returns a follower that is
/// not node 1 (the controller when the cluster formed: killing the controller would stop
/// every ISR change in this part of the issue).
fn create_topic(c: &Cluster) -> usize {
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": TOPIC, "partitions": 1, "replication_factor": 3,
               "config": {"min_insync_replicas": 2}}),
    );
    assert_eq!(status, 201, "{body}");
    wait_full_isr(c, "a full ISR");
    let (leader, _) = leader_and_isr(c, 1);
    if leader == 3 { 2 } else { 3 }
}

/// Keeps producing acks=all batches of 5 unique values to the partition's leader until
/// stopped; every outcome goes into the history.
struct Producer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    thread: thread::JoinHandle<()>,
}

impl Producer {
    fn start(c: &Cluster, history: &Arc<Mutex<History>>) -> Producer {
        let urls: Vec<String> = (1..=3).map(|id| c.url(id).to_string()).collect();
        let history = Arc::clone(history);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let (stopped, counted) = (Arc::clone(&stop), Arc::clone(&acked));
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + 4 * DEADLINE;
            let mut i = 0;
            while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
                let values: Vec<String> = (i..i + 5).map(|k| format!("v{k}")).collect();
                i += 5;
                // Through node 1, which forwards to the leader.
                let records: Vec<Value> = values
                    .iter()
                    .map(|v| json!({"partition": 0, "value": v}))
                    .collect();
                let (status, body) = post(
                    &format!(
                        "{}/v1/topics/{TOPIC}/records?acks=all&timeout_ms=5000",
                        urls[0]
                    ),
                    json!({ "records": records }),
                );
                let mut h = history.lock().unwrap();
                for (k, v) in values.iter().enumerate() {
                    let outcome = match status {
                        200 => {
                            assert_eq!(body["durability"], "isr-fsync", "{body}");
                            Outcome::Acknowledged {
                                partition: 0,
                                offset: body["offsets"][k]["offset"].as_u64().unwrap(),
                            }
                        }
                        503 if body["code"] == "not_enough_replicas" => Outcome::Failed,
                        _ => Outcome::Unknown,
                    };
                    h.produced(v, outcome);
                }
                drop(h);
                if status == 200 {
                    counted.fetch_add(values.len(), Ordering::SeqCst);
                } else {
                    thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Producer {
            stop,
            acked,
            thread,
        }
    }

    /// Waits until `more` records more than now are acknowledged.
    fn wait_more(&self, more: usize, what: &str) {
        let from = self.acked.load(Ordering::SeqCst);
        wait_for(what, || {
            let n = self.acked.load(Ordering::SeqCst);
            if n >= from + more {
                Ok(())
            } else {
                Err(format!("{n} acknowledged, {from} before"))
            }
        });
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
    }
}

/// The segment files of broker `id`'s replica, oldest first.
fn segments(c: &Cluster, id: usize) -> Vec<PathBuf> {
    let dir = c.data_dir(id).join("topics").join(TOPIC).join("0");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The base offset a segment file is named after.
fn base_offset(path: &Path) -> u64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("a segment file named after its base offset")
}

/// Flips one bit of `path`, `at` its length times this (inside a batch: a segment holds
/// whole batches).
fn flip_a_bit(path: &Path, at: f64) {
    let mut bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() >= 1024,
        "{} holds a few batches",
        path.display()
    );
    let at = (bytes.len() as f64 * at) as usize;
    bytes[at] ^= 0x10;
    // In place, as a disk would have it (no new file, no rename).
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .unwrap();
}

/// Reads broker `id`'s own replica from the start, again and again, until stopped: every
/// record it is served goes into the history, which flags one that is later gone or
/// different (a replica served while damaged). Refusals are fine; wrong records are not.
struct Reader {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<usize>,
}

impl Reader {
    fn start(c: &Cluster, id: usize, history: &Arc<Mutex<History>>) -> Reader {
        let url = c.url(id).to_string();
        let history = Arc::clone(history);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + 4 * DEADLINE;
            let (mut offset, mut served) = (0, 0);
            while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
                let (status, page) = get(&format!(
                    "{url}/v1/topics/{TOPIC}/partitions/0/records?offset={offset}&replica=local&max_records=1000"
                ));
                let records = page["records"].as_array().cloned().unwrap_or_default();
                if status != 200 || records.is_empty() {
                    offset = 0;
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let mut h = history.lock().unwrap();
                for r in &records {
                    h.consumed(
                        0,
                        r["offset"].as_u64().unwrap(),
                        r["value"].as_str().unwrap(),
                    );
                    served += 1;
                }
                offset = page["next_offset"].as_u64().unwrap_or(0);
            }
            served
        });
        Reader { stop, thread }
    }

    /// Stops it; returns how many records it was served.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// A counter's sum over its labels on broker `id`.
fn counter(c: &Cluster, id: usize, name: &str) -> f64 {
    let http = common::Client::new();
    let text = common::runtime().block_on(common::scrape_metrics(&http, c.url(id)));
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every replica read once converged (a replica that answers anything but records, such as
/// `corrupt_log` for a damaged batch, fails), checked against the history; all of the same
/// length.
fn check(c: &Cluster, history: &Mutex<History>) {
    let reads = read_every_replica(c, 1, TOPIC, 1);
    let history = history.lock().unwrap();
    assert!(history.acknowledged() > 0);
    let anomalies = history.check(&reads);
    assert!(anomalies.is_empty(), "{anomalies:#?}");
    let lengths: Vec<usize> = reads.iter().map(|r| r.records.len()).collect();
    assert!(
        lengths.iter().all(|n| *n == lengths[0]),
        "replicas of different lengths: {lengths:?}"
    );
}

/// Which segment of the stopped follower gets the flipped bit.
#[derive(Clone, Copy)]
enum Where {
    /// The oldest, sealed before the kill and below the recovery checkpoint: recovery does
    /// not read it, the scrub at start does.
    Sealed,
    /// The last one, written up to the kill: recovery scans it and cuts the damage.
    Active,
}

fn a_flipped_bit_in_a_stopped_follower(place: Where) {
    // The periodic scrub stays out of the way (a day): only the start's checks find it.
    let mut c = Cluster::start(3, &toml(86_400_000));
    let follower = create_topic(&c);
    let history = Arc::new(Mutex::new(History::default()));
    let producer = Producer::start(&c, &history);
    // The first segment sealed below the follower's recovery checkpoint, so recovery after
    // the kill trusts it (reads it only past its last index entry); the active one with a
    // few batches in it.
    let checkpoint_file = c
        .data_dir(follower)
        .join("topics")
        .join(TOPIC)
        .join("0")
        .join("recovery-checkpoint");
    wait_for(
        "a sealed segment below the follower's recovery checkpoint",
        || {
            let checkpoint = std::fs::read_to_string(&checkpoint_file).unwrap_or_default();
            let files = segments(&c, follower);
            let active_bytes = files
                .last()
                .map_or(0, |f| f.metadata().map_or(0, |m| m.len()));
            match (checkpoint.trim().parse::<u64>(), files.get(1)) {
                (Ok(at), Some(second)) if at >= base_offset(second) && active_bytes >= 1024 => {
                    Ok(())
                }
                _ => Err(format!(
                    "checkpoint {checkpoint:?}, segments {files:?}, active {active_bytes} bytes"
                )),
            }
        },
    );
    c.brokers[follower - 1].kill9();
    let files = segments(&c, follower);
    match place {
        // Before its first index entry (at 4 KiB or later).
        Where::Sealed => flip_a_bit(&files[0], 0.1),
        Where::Active => flip_a_bit(files.last().unwrap(), 0.5),
    }
    producer.wait_more(10, "acks=all goes on without the follower");
    c.brokers[follower - 1].restart();
    let reader = Reader::start(&c, follower, &history);
    wait_full_isr(&c, "the damaged follower rejoins the ISR");
    producer.wait_more(20, "acks=all with the follower back");
    producer.stop();
    assert!(reader.stop() > 0, "the follower's replica was read");
    check(&c, &history);
    let (metric, what) = match place {
        Where::Sealed => (
            "tidelog_damaged_batches_found_total",
            "the scrub at start found the damage",
        ),
        Where::Active => (
            "tidelog_recovery_truncations_total",
            "recovery found the damage",
        ),
    };
    assert!(counter(&c, follower, metric) >= 1.0, "{what}");
}

#[test]
fn a_flipped_bit_in_a_stopped_followers_sealed_segment_is_found_at_start_and_fetched_again() {
    a_flipped_bit_in_a_stopped_follower(Where::Sealed);
}

#[test]
fn a_flipped_bit_in_a_stopped_followers_active_segment_is_cut_by_recovery_and_fetched_again() {
    a_flipped_bit_in_a_stopped_follower(Where::Active);
}

/// A running follower: the periodic scrub finds the damage; the follower cuts its log there
/// (below its high watermark), the leader sees its fetch go back below the high watermark
/// and takes it out of the ISR at once; it fetches the records again and rejoins.
#[test]
fn a_flipped_bit_in_a_running_follower_is_found_by_the_periodic_scrub() {
    let c = Cluster::start(3, &toml(500));
    let follower = create_topic(&c);
    let history = Arc::new(Mutex::new(History::default()));
    let producer = Producer::start(&c, &history);
    wait_for("the follower holds a sealed segment", || {
        let n = segments(&c, follower).len();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} segments"))
        }
    });
    producer.wait_more(10, "acks=all with the segments rolled");
    let reader = Reader::start(&c, follower, &history);
    let before = counter(&c, follower, "tidelog_damaged_batches_found_total");
    flip_a_bit(&segments(&c, follower)[0], 0.5);
    wait_for("the scrub finds the damage", || {
        let found = counter(&c, follower, "tidelog_damaged_batches_found_total");
        if found > before {
            Ok(())
        } else {
            Err(format!("{found} found"))
        }
    });
    producer.wait_more(20, "acks=all goes on");
    wait_full_isr(&c, "the follower rejoins the ISR");
    producer.stop();
    assert!(reader.stop() > 0, "the follower's replica was read");
    check(&c, &history);
}
