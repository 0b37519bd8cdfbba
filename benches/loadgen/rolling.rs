//! `--rolling-restart`: throughput of a three-broker cluster (the release binary, default
//! timeouts) before, during and after a rolling restart under `acks=all` load. Each broker in
//! turn gets SIGTERM (a controlled shutdown: its leaderships move first), is started again
//! on the same directory and port, and the next goes once it is back in every in-sync set.
//!
//! Clients send batches to partition `c % 3` through broker `c % 3` (forwarded to the
//! leader), and move to the next broker when theirs refuses the connection, as a client with
//! a bootstrap list does. A sampler counts acknowledged records every 100 ms, which gives the
//! records/s of each phase and the longest stretch without one acknowledgement during the
//! restarts; every failed answer is counted by status and code.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::{free_ports, get_json, spawn};
use super::{Args, http_client, produce_body};

const TOPIC: &str = "rolling";
const PARTITIONS: u32 = 3;
const CLIENTS: usize = 6;
const BATCH: usize = 100;
/// How long a restarted broker may take to be back in every in-sync set.
const BACK_MAX: Duration = Duration::from_secs(120);
/// How long a SIGTERM'd broker may take to exit before it is killed (its controlled
/// shutdown is bounded by 10 s by default).
const EXIT_MAX: Duration = Duration::from_secs(30);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Three broker processes this run started, restartable one by one.
struct Fleet {
    root: PathBuf,
    ports: Vec<u16>,
    peers: String,
    children: Vec<Option<Child>>,
}

impl Fleet {
    fn start(root: &Path) -> Fleet {
        let ports = free_ports(3);
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        let mut fleet = Fleet {
            root: root.to_path_buf(),
            ports,
            peers: peers.join(","),
            children: vec![None, None, None],
        };
        for i in 0..3 {
            fleet.spawn(i);
        }
        fleet
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn spawn(&mut self, i: usize) {
        let id = (i + 1).to_string();
        let args = ["--node-id", &id, "--peers", &self.peers];
        let dir = self.root.join(format!("n{id}"));
        self.children[i] = Some(spawn(&dir, self.ports[i], &args));
    }

    /// SIGTERM to broker `i`; its exit code and how long it took to exit.
    fn terminate(&mut self, i: usize) -> (Option<i32>, Duration) {
        let mut child = self.children[i].take().expect("a running broker");
        let sent = Instant::now();
        // SAFETY: kill(2) on a child this process started and has not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (status.code(), sent.elapsed());
            }
            if sent.elapsed() > EXIT_MAX {
                let _ = child.kill();
                let _ = child.wait();
                return (None, sent.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop(mut self) {
        for i in 0..3 {
            if self.children[i].is_some() {
                self.terminate(i);
            }
        }
    }

    /// Waits until every broker answers ready and sees every partition of [`TOPIC`] (if it
    /// exists yet) with a leader and all three in its in-sync set.
    async fn wait_whole(&self, with_topic: bool) -> Result<(), String> {
        let deadline = Instant::now() + BACK_MAX;
        loop {
            let mut last = String::new();
            let mut whole = true;
            for i in 0..3 {
                if get_json(&format!("{}/readyz", self.url(i))).await.is_err() {
                    whole = false;
                    last = format!("broker {} not ready", i + 1);
                }
            }
            // Every broker's own view: a restarted one may still hold an old image.
            for i in 0..3 {
                if !(whole && with_topic) {
                    break;
                }
                match get_json(&format!("{}/v1/topics/{TOPIC}", self.url(i))).await {
                    Ok(t) => {
                        let ps = t["partitions"].as_array().cloned().unwrap_or_default();
                        whole = ps.len() == PARTITIONS as usize
                            && ps.iter().all(|p| {
                                p["leader"].is_u64() && p["isr"].as_array().map_or(0, Vec::len) == 3
                            });
                        last = t["partitions"].to_string();
                    }
                    Err(e) => {
                        whole = false;
                        last = e;
                    }
                }
            }
            if whole {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn controller(&self, i: usize) -> Option<u64> {
        get_json(&format!("{}/v1/cluster", self.url(i)))
            .await
            .ok()?["controller"]
            .as_u64()
    }
}

/// What the clients share.
struct Load {
    urls: Vec<String>,
    acked: AtomicU64,
    /// "STATUS code" (or "connection") -> failed requests.
    errors: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
}

async fn client(load: Arc<Load>, c: usize) {
    let http = http_client(1);
    let p = (c % PARTITIONS as usize) as u32;
    let body = produce_body(BATCH, Some(p));
    let mut via = c % load.urls.len();
    while !load.stop.load(Ordering::Relaxed) {
        let url = format!("{}/v1/topics/{TOPIC}/records?acks=all", load.urls[via]);
        let sent = http
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(r) if r.status().is_success() => {
                load.acked.fetch_add(BATCH as u64, Ordering::Relaxed);
                continue;
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let problem: Value = r.json().await.unwrap_or(Value::Null);
                format!("{status} {}", problem["code"].as_str().unwrap_or("-"))
            }
            Err(_) => {
                via = (via + 1) % load.urls.len();
                "connection".to_string()
            }
        };
        *load.errors.lock().unwrap().entry(failure).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(time since start, acknowledged records)` every [`SAMPLE_EVERY`].
async fn sample(load: Arc<Load>, samples: Arc<Mutex<Vec<(Duration, u64)>>>, start: Instant) {
    while !load.stop.load(Ordering::Relaxed) {
        let acked = load.acked.load(Ordering::Relaxed);
        samples.lock().unwrap().push((start.elapsed(), acked));
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// One phase's figures from the samples between `from` and `to`.
fn phase(samples: &[(Duration, u64)], from: Duration, to: Duration) -> (f64, Duration) {
    let inside: Vec<&(Duration, u64)> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect();
    let (Some(first), Some(last)) = (inside.first(), inside.last()) else {
        return (0.0, Duration::ZERO);
    };
    let secs = (last.0 - first.0).as_secs_f64();
    let rate = if secs > 0.0 {
        (last.1 - first.1) as f64 / secs
    } else {
        0.0
    };
    // The longest stretch over which the count did not move.
    let (mut stall, mut since) = (Duration::ZERO, first.0);
    for pair in inside.windows(2) {
        if pair[1].1 > pair[0].1 {
            since = pair[1].0;
        } else {
            stall = stall.max(pair[1].0 - since);
        }
    }
    (rate, stall)
}

fn errors_since(now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> String {
    let mut s = String::new();
    for (k, n) in now {
        let d = n - before.get(k).copied().unwrap_or(0);
        if d > 0 {
            let _ = write!(s, "{}{k} x{d}", if s.is_empty() { "" } else { ", " });
        }
    }
    if s.is_empty() { "none".to_string() } else { s }
}

/// Runs `args.repeat` rolling restarts, each with `args.duration` of load before and after.
pub async fn run(args: &Args, root: &Path) {
    println!(
        "rolling restart: 3 brokers (release binary, default timeouts: broker_session_timeout_ms \
         9000, raft_election_timeout_ms 1500, controlled_shutdown_timeout_ms 10000); topic of \
         {PARTITIONS} partitions, replication factor 3, min_insync_replicas 2; {CLIENTS} \
         clients x {BATCH} records acks=all, client c to partition c % 3 through broker c % 3"
    );
    for repeat in 0..args.repeat {
        let fleet_root = root.join(format!("rolling-{repeat}"));
        let mut fleet = Fleet::start(&fleet_root);
        fleet.wait_whole(false).await.expect("the cluster ready");
        let created = http_client(1)
            .post(format!("{}/v1/topics", fleet.url(0)))
            .json(&serde_json::json!({"name": TOPIC, "partitions": PARTITIONS,
                "replication_factor": 3, "config": {"min_insync_replicas": 2}}))
            .send()
            .await
            .expect("create the topic");
        assert!(
            created.status().is_success(),
            "create: {}",
            created.status()
        );
        fleet.wait_whole(true).await.expect("full in-sync sets");

        let load = Arc::new(Load {
            urls: (0..3).map(|i| fleet.url(i)).collect(),
            acked: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
        });
        let start = Instant::now();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut tasks: Vec<_> = (0..CLIENTS)
            .map(|c| tokio::spawn(client(Arc::clone(&load), c)))
            .collect();
        tasks.push(tokio::spawn(sample(
            Arc::clone(&load),
            Arc::clone(&samples),
            start,
        )));

        tokio::time::sleep(args.duration).await;
        let before_end = start.elapsed();
        let errors_before = load.errors.lock().unwrap().clone();
        let mut steps = String::new();
        for i in 0..3 {
            let was_controller = fleet.controller(i).await == Some(i as u64 + 1);
            // Blocking waits on the child, off the runtime's workers.
            let (code, exit) = tokio::task::block_in_place(|| fleet.terminate(i));
            let down = Instant::now();
            fleet.spawn(i);
            let back = fleet.wait_whole(true).await;
            let _ = writeln!(
                steps,
                "  broker {}{}: SIGTERM -> exit {} ms (code {code:?}); restart -> back in every ISR {}",
                i + 1,
                if was_controller { " (controller)" } else { "" },
                exit.as_millis(),
                match back {
                    Ok(()) => format!("{} ms", down.elapsed().as_millis()),
                    Err(last) => format!("never ({last})"),
                }
            );
        }
        let during_end = start.elapsed();
        let errors_during = load.errors.lock().unwrap().clone();
        tokio::time::sleep(args.duration).await;
        let after_end = start.elapsed();
        load.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let errors_after = load.errors.lock().unwrap().clone();
        let samples = samples.lock().unwrap().clone();
        let (before, _) = phase(&samples, Duration::ZERO, before_end);
        let (during, stall) = phase(&samples, before_end, during_end);
        let (after, _) = phase(&samples, during_end, after_end);
        println!(
            "[{}/{}] before {before:.0} records/s ({:.1} s), errors: {}",
            repeat + 1,
            args.repeat,
            before_end.as_secs_f64(),
            errors_since(&errors_before, &BTreeMap::new())
        );
        print!("{steps}");
        println!(
            "      during {during:.0} records/s ({:.1} s, {:.0}% of before), longest stretch \
             without an acknowledgement {} ms, errors: {}",
            (during_end - before_end).as_secs_f64(),
            during * 100.0 / before.max(1.0),
            stall.as_millis(),
            errors_since(&errors_during, &errors_before)
        );
        println!(
            "      after  {after:.0} records/s ({:.1} s), errors: {}",
            (after_end - during_end).as_secs_f64(),
            errors_since(&errors_after, &errors_during)
        );
        fleet.stop();
    }
}
