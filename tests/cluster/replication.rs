//! Replication (issue 9, part 1): three broker processes on loopback, topics of replication
//! factor 3 and `min_insync_replicas` 2, producers recorded by the history checker, then
//! every replica read back with `replica=local`.
//!
//! Item 4 puts a TCP proxy (tests/common/proxy.rs) between a follower and its leader.
//!
//! Counts are small so `cargo test` stays quick; `TIDELOG_REPLICATION_RECORDS` raises the
//! records per producer (the issue's figure is 10000).

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::checker::{History, Outcome, ReplicaRead};
use common::cluster::{
    self, Cluster, DEADLINE, describe, get, partition_state, post, read_every_replica, read_local,
    wait_for,
};
use common::proxy::{Mode, Proxy};
use serde_json::{Value, json};

/// Short enough for quick tests, long enough for two busy cores.
const TOML: &str = "broker_session_timeout_ms = 3000\n\
                    replica_lag_time_max_ms = 2000\n\
                    replica_fetch_wait_max_ms = 200\n";
const LAG_MAX: Duration = Duration::from_millis(2000);

fn records_per_producer(default: usize) -> usize {
    std::env::var("TIDELOG_REPLICATION_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Creates `name` with factor 3 and min ISR 2 at the controller (node 1); waits until every
/// broker knows it with a full ISR on every partition.
fn create_topic(c: &Cluster, name: &str, partitions: u32) {
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": name, "partitions": partitions, "replication_factor": 3,
               "config": {"min_insync_replicas": 2}}),
    );
    assert_eq!(status, 201, "{body}");
    for id in 1..=3 {
        wait_for(&format!("{name} with full ISRs on {id}"), || {
            let d = describe(c, id, name);
            let full = d["partitions"].as_array().is_some_and(|ps| {
                ps.len() == partitions as usize
                    && ps
                        .iter()
                        .all(|p| p["isr"].as_array().is_some_and(|i| i.len() == 3))
            });
            if full { Ok(()) } else { Err(d.to_string()) }
        });
    }
}

/// Sends one produce of `values` to `partition` at broker `id`; records each value's
/// outcome. Returns the HTTP status.
fn produce(
    url: &str,
    topic: &str,
    partition: u32,
    values: &[String],
    acks: &str,
    history: &Mutex<History>,
) -> u16 {
    let records: Vec<Value> = values
        .iter()
        .map(|v| json!({"partition": partition, "value": v}))
        .collect();
    let (status, body) = post(
        &format!("{url}/v1/topics/{topic}/records?acks={acks}&timeout_ms=5000"),
        json!({ "records": records }),
    );
    let mut h = history.lock().unwrap();
    for (i, v) in values.iter().enumerate() {
        let outcome = match status {
            // acks=leader promises nothing a failover cannot take back.
            200 if acks != "all" => Outcome::Unknown,
            200 => {
                assert_eq!(body["durability"], "isr-fsync", "{body}");
                Outcome::Acknowledged {
                    partition,
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

fn scrape(url: &str) -> String {
    let http = common::Client::new();
    common::runtime().block_on(common::scrape_metrics(&http, url))
}

/// The history checker over `reads`, with each replica's high watermark as read.
fn assert_no_anomalies(history: &Mutex<History>, reads: &[ReplicaRead]) {
    let mut history = history.lock().unwrap();
    for r in reads {
        history.high_watermark(r.node, r.partition, r.high_watermark);
    }
    let anomalies = history.check(reads);
    assert!(anomalies.is_empty(), "{anomalies:#?}");
}

/// Producers of `count` records each, in batches of 10, to `partition` through `via`
/// (its leader), acks=all; stop early when `stop` is set.
fn spawn_producer(
    url: String,
    topic: &'static str,
    partition: u32,
    name: String,
    count: usize,
    history: &Arc<Mutex<History>>,
) -> thread::JoinHandle<usize> {
    let history = Arc::clone(history);
    thread::spawn(move || {
        let mut acked = 0;
        for batch in 0..count.div_ceil(10) {
            let values: Vec<String> = (batch * 10..((batch + 1) * 10).min(count))
                .map(|i| format!("{name}-{i}"))
                .collect();
            if produce(&url, topic, partition, &values, "all", &history) == 200 {
                acked += values.len();
            }
        }
        acked
    })
}

/// Item 1: three producers, acks=all, each through another broker: every acknowledged record
/// is at its offset on all three replicas, the replicas are identical below the high
/// watermark; the replication metrics are exposed on a leader.
#[test]
fn every_acknowledged_record_is_on_every_replica() {
    let c = Cluster::start(3, TOML);
    create_topic(&c, "r", 3);
    let history = Arc::new(Mutex::new(History::default()));
    let count = records_per_producer(200);
    // Producer p sends through broker p + 1 to partition (p + 1) % 3: each one through a
    // broker that does not lead its partition (placement spreads leaders one per broker),
    // so the produce is split and forwarded to the leader.
    let producers: Vec<_> = (0..3u32)
        .map(|p| {
            let via = p as usize + 1;
            let p = (p + 1) % 3;
            spawn_producer(
                c.url(via).to_string(),
                "r",
                p,
                format!("p{p}"),
                count,
                &history,
            )
        })
        .collect();
    for p in producers {
        assert_eq!(
            p.join().unwrap(),
            count,
            "every acks=all produce is acknowledged"
        );
    }
    let reads = read_every_replica(&c, 1, "r", 3);
    assert_eq!(history.lock().unwrap().acknowledged(), 3 * count);
    for read in &reads {
        assert_eq!(
            read.records.len(),
            count,
            "node {} partition {}",
            read.node,
            read.partition
        );
    }
    assert_no_anomalies(&history, &reads);
    let (leader, _, _) = partition_state(&c, 1, "r", 0);
    let metrics = scrape(c.url(leader));
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string("openapi/tidelog.json").unwrap()).unwrap();
    let replication_metrics: Vec<&str> = spec["x-tidelog-metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["module"] == "replication")
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(replication_metrics.len() >= 6);
    for name in replication_metrics {
        assert!(
            metrics.contains(name),
            "{name} (documented) is not exposed on a leader that also follows"
        );
    }
}

/// A producer that keeps sending acks=all batches of 5 to `partition`'s current leader (as
/// node 1 sees it) until stopped, counting the records acknowledged.
struct SteadyProducer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    /// The longest a produce took to be answered (any answer).
    slowest: Arc<Mutex<Duration>>,
    thread: thread::JoinHandle<()>,
}

impl SteadyProducer {
    fn start(
        urls: Vec<String>,
        topic: &'static str,
        partition: u32,
        history: &Arc<Mutex<History>>,
    ) -> SteadyProducer {
        let history = Arc::clone(history);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let slowest = Arc::new(Mutex::new(Duration::ZERO));
        let (stopped, counted, slow) =
            (Arc::clone(&stop), Arc::clone(&acked), Arc::clone(&slowest));
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + 4 * DEADLINE;
            let mut i = 0;
            while !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
                let (_, d) = get(&format!("{}/v1/topics/{topic}", urls[0]));
                let leader = d["partitions"][partition as usize]["leader"]
                    .as_u64()
                    .unwrap_or(0) as usize;
                if leader == 0 {
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
                let values: Vec<String> = (i..i + 5).map(|k| format!("s{partition}-{k}")).collect();
                i += 5;
                let url = &urls[leader - 1];
                let sent = Instant::now();
                let status = produce(url, topic, partition, &values, "all", &history);
                let took = sent.elapsed();
                let mut slowest = slow.lock().unwrap();
                *slowest = (*slowest).max(took);
                drop(slowest);
                if status == 200 {
                    counted.fetch_add(values.len(), Ordering::SeqCst);
                } else {
                    thread::sleep(Duration::from_millis(20));
                }
            }
        });
        SteadyProducer {
            stop,
            acked,
            slowest,
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

    /// The longest answer time so far, and resets it.
    fn take_slowest(&self) -> Duration {
        std::mem::take(&mut *self.slowest.lock().unwrap())
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
    }
}

/// Waits until every replica has everything, reads them all, and checks the history.
fn check_every_replica(c: &Cluster, topic: &str, partitions: u32, history: &Mutex<History>) {
    let reads = read_every_replica(c, 1, topic, partitions);
    assert_no_anomalies(history, &reads);
}

fn urls(c: &Cluster) -> Vec<String> {
    (1..=3).map(|id| c.url(id).to_string()).collect()
}

/// A follower of `leader` that is not the controller (node 1): killing the controller
/// would stop every ISR change in this part of the issue.
fn follower_not_controller(leader: usize) -> usize {
    if leader == 3 { 2 } else { 3 }
}

/// Item 2: kill -9 a follower under acks=all load: it leaves the ISR about
/// `replica_lag_time_max_ms` later and acks=all goes on with the others; restarted, it
/// catches up and rejoins; no acknowledged record is lost.
#[test]
fn a_killed_follower_leaves_the_isr_and_rejoins_once_restarted() {
    let mut c = Cluster::start(3, TOML);
    create_topic(&c, "f", 1);
    let (leader, _, _) = partition_state(&c, 1, "f", 0);
    let follower = follower_not_controller(leader);
    let history = Arc::new(Mutex::new(History::default()));
    let producer = SteadyProducer::start(urls(&c), "f", 0, &history);
    producer.wait_more(20, "acks before the kill");
    c.brokers[follower - 1].kill9();
    let killed = Instant::now();
    wait_for("the ISR shrinks", || {
        let (_, _, isr) = partition_state(&c, leader, "f", 0);
        if isr.contains(&(follower as u64)) {
            Err(format!("isr {isr:?}"))
        } else {
            Ok(())
        }
    });
    let shrank_after = killed.elapsed();
    eprintln!("ISR shrank {shrank_after:?} after the kill (replica_lag_time_max_ms {LAG_MAX:?})");
    assert!(
        shrank_after <= LAG_MAX + Duration::from_secs(1),
        "the ISR shrank {shrank_after:?} after the kill"
    );
    producer.wait_more(20, "acks=all goes on without the follower");
    c.brokers[follower - 1].restart();
    wait_for("the follower rejoins the ISR", || {
        let (_, _, isr) = partition_state(&c, leader, "f", 0);
        if isr.len() == 3 {
            Ok(())
        } else {
            Err(format!("isr {isr:?}"))
        }
    });
    producer.stop();
    check_every_replica(&c, "f", 1, &history);
}

/// Item 3: both followers of a partition down: acks=all fails cleanly (refused before the
/// append once the ISR is below the minimum, or unknown; never a false success), and
/// acks=leader records stay invisible to consumers until the followers are back and have
/// them.
#[test]
fn with_both_followers_down_acks_all_fails_cleanly_and_acks_leader_stays_invisible() {
    // Five brokers: with both followers of a partition down, three of the five voters of the
    // metadata Raft are still up, so the controller can still shrink the ISR (with three
    // brokers, two down would leave the metadata without a quorum: no ISR change at all).
    let mut c = Cluster::start(5, TOML);
    create_topic(&c, "b", 5);
    // The partition node 1 leads: its two followers are killed, node 1 stays up.
    let p = (0..5)
        .find(|p| partition_state(&c, 1, "b", *p).0 == 1)
        .expect("placement gives node 1 a leadership");
    let followers: Vec<usize> = partition_state(&c, 1, "b", p)
        .2
        .into_iter()
        .map(|n| n as usize)
        .filter(|n| *n != 1)
        .collect();
    assert_eq!(followers.len(), 2, "{followers:?}");
    let history = Arc::new(Mutex::new(History::default()));
    let url = c.url(1).to_string();
    let first: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
    assert_eq!(produce(&url, "b", p, &first, "all", &history), 200);
    for f in &followers {
        c.brokers[f - 1].kill9();
    }
    let mut i = 0;
    wait_for("acks=all refused with not_enough_replicas", || {
        let values = vec![format!("down-{i}")];
        i += 1;
        let status = produce(&url, "b", p, &values, "all", &history);
        match status {
            503 => {
                let (_, _, isr) = partition_state(&c, 1, "b", p);
                if isr == [1] {
                    Ok(())
                } else {
                    Err(format!("isr {isr:?}"))
                }
            }
            200 => panic!("acks=all acknowledged with both followers down"),
            s => Err(format!("status {s}")),
        }
    });
    let failed = "refused";
    let (status, body) = post(
        &format!("{url}/v1/topics/b/records?acks=all"),
        json!({"records": [{"partition": p, "value": "refused"}]}),
    );
    cluster::assert_problem(status, &body, 503, "not_enough_replicas");
    history.lock().unwrap().produced(failed, Outcome::Failed);
    let hidden = vec!["leader-only".to_string()];
    assert_eq!(produce(&url, "b", p, &hidden, "leader", &history), 200);
    let (_, page) = get(&format!(
        "{url}/v1/topics/b/partitions/{p}/records?offset=earliest&max_records=1000&wait_ms=500"
    ));
    let seen: Vec<&str> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["value"].as_str())
        .collect();
    assert!(
        !seen.contains(&"leader-only"),
        "an acks=leader record is visible below min ISR: {seen:?}"
    );
    for f in &followers {
        c.brokers[f - 1].restart();
    }
    wait_for("the followers rejoin", || {
        let (_, _, isr) = partition_state(&c, 1, "b", p);
        if isr.len() == 3 {
            Ok(())
        } else {
            Err(format!("isr {isr:?}"))
        }
    });
    wait_for("the acks=leader record becomes visible", || {
        let (_, page) = get(&format!(
            "{url}/v1/topics/b/partitions/{p}/records?offset=earliest&max_records=1000"
        ));
        let seen = page["records"].as_array().map_or(0, |rs| {
            rs.iter().filter(|r| r["value"] == "leader-only").count()
        });
        if seen == 1 {
            Ok(())
        } else {
            Err(page.to_string())
        }
    });
    check_every_replica(&c, "b", 5, &history);
}

/// Item 5: kill -9 a partition's leader (not the controller) under acks=all load and
/// restart it: leadership moves to an in-sync follower under a new leader epoch, the old
/// leader comes back as a follower and truncates a divergent tail by epoch, no acknowledged
/// record is lost, and the replicas are identical below the high watermark.
#[test]
fn a_killed_leader_comes_back_as_a_follower_and_nothing_acknowledged_is_lost() {
    let mut c = Cluster::start(3, TOML);
    create_topic(&c, "l", 3);
    let p = (0..3)
        .find(|p| partition_state(&c, 1, "l", *p).0 != 1)
        .expect("a partition led by node 2 or 3");
    let (old_leader, old_epoch, _) = partition_state(&c, 1, "l", p);
    let history = Arc::new(Mutex::new(History::default()));
    let producer = SteadyProducer::start(urls(&c), "l", p, &history);
    producer.wait_more(20, "acks before the kill");
    // acks=leader records right before the kill: maybe only on the old leader, a tail the
    // new leader never had.
    let tail: Vec<String> = (0..20).map(|i| format!("tail-{i}")).collect();
    produce(c.url(old_leader), "l", p, &tail, "leader", &history);
    c.brokers[old_leader - 1].kill9();
    let new_epoch = wait_for("a new leader", || {
        let (leader, epoch, _) = partition_state(&c, 1, "l", p);
        if leader != 0 && leader != old_leader && epoch > old_epoch {
            Ok(epoch)
        } else {
            Err(format!("leader {leader} epoch {epoch}"))
        }
    });
    producer.wait_more(20, "acks=all goes on at the new leader");
    c.brokers[old_leader - 1].restart();
    wait_for("the old leader rejoins the ISR", || {
        let (_, epoch, isr) = partition_state(&c, 1, "l", p);
        assert!(epoch >= new_epoch);
        if isr.contains(&(old_leader as u64)) {
            Ok(())
        } else {
            Err(format!("isr {isr:?}"))
        }
    });
    producer.stop();
    check_every_replica(&c, "l", 3, &history);
}

/// The proxy of item 4 does what the test relies on: it passes bytes, black-holes them on
/// open and new connections alike, delays them, and after a black hole closes the
/// connections that lost bytes while new ones pass again.
#[test]
fn the_test_proxy_passes_black_holes_and_delays() {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = echo.local_addr().unwrap();
    thread::spawn(move || {
        for conn in echo.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let mut from = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut from, &mut conn);
            });
        }
    });
    let proxy = Proxy::start(target);
    let round_trip = |conn: &mut TcpStream, message: &[u8]| -> Option<Duration> {
        let sent = Instant::now();
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        conn.write_all(message).unwrap();
        let mut back = vec![0; message.len()];
        conn.read_exact(&mut back).ok()?;
        assert_eq!(back, message);
        Some(sent.elapsed())
    };
    let mut open = TcpStream::connect(proxy.addr).unwrap();
    assert!(round_trip(&mut open, b"pass").is_some());
    proxy.set_mode(Mode::Delay(300));
    let took = round_trip(&mut open, b"slow").expect("delayed, not dropped");
    assert!(
        took >= Duration::from_millis(600),
        "each way delayed: {took:?}"
    );
    proxy.set_mode(Mode::BlackHole);
    assert_eq!(round_trip(&mut open, b"gone"), None, "an open connection");
    let mut new = TcpStream::connect(proxy.addr).expect("the black hole accepts");
    assert_eq!(round_trip(&mut new, b"gone too"), None, "a new connection");
    assert!(proxy.dropped() >= 12, "{} bytes dropped", proxy.dropped());
    proxy.set_mode(Mode::Pass);
    for conn in [&mut open, &mut new] {
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut rest = [0u8; 16];
        let read = conn.read(&mut rest);
        assert!(
            matches!(read, Ok(0)) || read.is_err_and(|e| e.kind() != ErrorKind::WouldBlock),
            "a connection that lost bytes is closed once healed"
        );
    }
    let mut healed = TcpStream::connect(proxy.addr).unwrap();
    assert!(round_trip(&mut healed, b"healed").is_some());
}

/// How long each proxied chunk waits in the "slow" phase of item 4: past a fetch's deadline
/// (its wait plus `max(replica_lag_time_max_ms / 2, 500 ms)`, about 1.2 s here).
const SLOW_MS: u64 = 2_000;
/// `forward_timeout_ms` of the item 4 cluster.
const FORWARD_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Every produce of item 4 is answered within its `timeout_ms` (5 s) and room for two
/// busy cores; a hung request would take the client's 30 s.
const ANSWER_BOUND: Duration = Duration::from_secs(10);

/// The value of the series of `name` whose labels include every one of `labels`.
fn series_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| set.split(',').any(|l| l == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

fn fetch_errors(url: &str) -> f64 {
    let http = common::Client::new();
    common::runtime().block_on(common::scrape_unlabelled_metric(
        &http,
        url,
        "tidelog_replica_fetch_errors_total",
    ))
}

/// Item 4: a follower that is alive but cut off from its leader, then very slow. Node 3
/// reaches node 2 only through a TCP proxy (its `--peers` entry for node 2 is the proxy);
/// node 2 leads partition `p`, node 3 follows it; heartbeats to the controller (node 1) go
/// direct, so node 3 stays alive and leaves the ISR by lag alone. For each fault (black
/// hole, then a delay past the fetch deadline): node 3's fetches fail at their deadline, it
/// leaves the ISR within `replica_lag_time_max_ms` + 1 s of its last caught-up fetch reaching
/// the leader (with the delay, a fetch sent just before the cut arrives `SLOW_MS` late and
/// may be one: a CI run saw the ISR shrink 4.08 s after the cut), acks=all goes on, every request
/// is answered within a bound (produces, a read through node 3 forwarded to node 2, node 3's
/// own replica); healed, it catches up and rejoins. Nothing acknowledged is lost.
#[test]
fn a_follower_cut_off_or_slow_leaves_the_isr_and_nothing_hangs() {
    let ports = cluster::free_ports(3);
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], ports[1])));
    let direct = cluster::peers(&ports);
    let through_proxy = format!(
        "1=127.0.0.1:{},2=127.0.0.1:{},3=127.0.0.1:{}",
        ports[0],
        proxy.port(),
        ports[2]
    );
    let toml = format!(
        "{TOML}[limits]\nforward_timeout_ms = {}\n",
        FORWARD_TIMEOUT.as_millis()
    );
    let c = Cluster::start_with_peers(ports, &toml, |id| {
        if id == 3 {
            through_proxy.clone()
        } else {
            direct.clone()
        }
    });
    create_topic(&c, "cut", 3);
    let p = (0..3)
        .find(|p| partition_state(&c, 1, "cut", *p).0 == 2)
        .expect("placement gives node 2 a leadership");
    let history = Arc::new(Mutex::new(History::default()));
    let producer = SteadyProducer::start(urls(&c), "cut", p, &history);
    producer.wait_more(20, "acks before the cut");
    assert!(
        proxy.accepted() > 0,
        "node 3 fetches from node 2 through the proxy"
    );
    // How long after the cut node 3 may still leave the ISR. Black-holed, its last caught-up
    // fetch came before the cut. Slowed, an exchange already under way at the cut reaches the
    // leader up to SLOW_MS late, and it still counts as caught up when nothing was appended
    // meanwhile (the producer waits for node 3's acks=all): the lag clock may start that late.
    for (fault, mode, latest_caught_up) in [
        ("black-holed", Mode::BlackHole, Duration::ZERO),
        ("slow", Mode::Delay(SLOW_MS), Duration::from_millis(SLOW_MS)),
    ] {
        let errors_before = fetch_errors(c.url(3));
        producer.take_slowest();
        proxy.set_mode(mode);
        let cut = Instant::now();
        wait_for(&format!("node 3 leaves the ISR ({fault})"), || {
            let (_, _, isr) = partition_state(&c, 2, "cut", p);
            if isr.contains(&3) {
                Err(format!("isr {isr:?}"))
            } else {
                Ok(())
            }
        });
        let shrank_after = cut.elapsed();
        eprintln!("{fault}: ISR shrank {shrank_after:?} after the cut (lag max {LAG_MAX:?})");
        assert!(
            shrank_after <= latest_caught_up + LAG_MAX + Duration::from_secs(1),
            "{fault}: the ISR shrank {shrank_after:?} after the cut"
        );
        let (_, brokers) = get(&format!("{}/v1/cluster", c.url(1)));
        assert_eq!(
            brokers["brokers"][2]["status"], "alive",
            "node 3 left by lag, not by fencing: {brokers}"
        );
        producer.wait_more(20, &format!("acks=all goes on ({fault})"));
        // The leader's metrics say so: under-replicated, node 3 behind in records and bytes.
        let partition = p.to_string();
        wait_for(
            &format!("node 2's metrics show node 3 behind ({fault})"),
            || {
                let text = scrape(c.url(2));
                let of = |name| {
                    let labels = [("topic", "cut"), ("partition", partition.as_str())];
                    series_value(&text, name, &labels).unwrap_or(0.0)
                };
                let lag = |name| {
                    let labels = [
                        ("topic", "cut"),
                        ("partition", partition.as_str()),
                        ("follower", "3"),
                    ];
                    series_value(&text, name, &labels).unwrap_or(0.0)
                };
                let seen = (
                    of("tidelog_partition_under_replicated"),
                    of("tidelog_partition_in_sync_replicas"),
                    lag("tidelog_follower_lag_records"),
                    lag("tidelog_follower_lag_bytes"),
                );
                if seen.0 == 1.0 && seen.1 == 2.0 && seen.2 > 0.0 && seen.3 > seen.2 {
                    Ok(())
                } else {
                    Err(format!(
                        "under-replicated, isr, lag records, lag bytes: {seen:?}"
                    ))
                }
            },
        );
        wait_for(
            &format!("node 3's fetches fail at their deadline ({fault})"),
            || {
                let errors = fetch_errors(c.url(3));
                if errors > errors_before {
                    Ok(())
                } else {
                    Err(format!("{errors} fetch errors"))
                }
            },
        );
        if mode == Mode::BlackHole {
            // Node 3 forwards a read of p to node 2, through the black hole.
            let sent = Instant::now();
            let (status, body) = get(&format!(
                "{}/v1/topics/cut/partitions/{p}/records?offset=0",
                c.url(3)
            ));
            let took = sent.elapsed();
            cluster::assert_problem(status, &body, 504, "forward_timeout");
            assert!(
                took < FORWARD_TIMEOUT + Duration::from_secs(5),
                "forward_timeout after {took:?}"
            );
        }
        let sent = Instant::now();
        read_local(&c, 3, "cut", p, Some(0)).expect("node 3 serves its own replica");
        assert!(sent.elapsed() < ANSWER_BOUND, "replica=local on node 3");
        let slowest = producer.take_slowest();
        assert!(
            slowest < ANSWER_BOUND,
            "a produce took {slowest:?} while the follower was {fault}"
        );
        proxy.set_mode(Mode::Pass);
        wait_for(
            &format!("node 3 rejoins the ISR once healed ({fault})"),
            || {
                let (_, _, isr) = partition_state(&c, 2, "cut", p);
                if isr.len() == 3 {
                    Ok(())
                } else {
                    Err(format!("isr {isr:?}"))
                }
            },
        );
        producer.wait_more(20, &format!("acks=all with node 3 back ({fault})"));
    }
    producer.stop();
    check_every_replica(&c, "cut", 3, &history);
}

/// POSTs `body` as JSON; the status and the raw answer (a replica fetch answers bytes).
fn post_for_bytes(url: &str, body: &Value) -> (u16, Vec<u8>) {
    common::runtime().block_on(async {
        let r = common::Client::new()
            .post(url)
            .json(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the broker answers");
        let status = r.status().as_u16();
        (status, r.bytes().await.expect("a body").to_vec())
    })
}

/// The header of the first partition of a replica fetch answer ("TLRF", version, count,
/// then per partition a length-prefixed JSON header).
fn first_partition_answer(bytes: &[u8]) -> Value {
    assert_eq!(&bytes[..4], b"TLRF", "a replica fetch answer");
    let count = u32::from_le_bytes(bytes[5..9].try_into().unwrap());
    assert!(count >= 1);
    let len = u32::from_le_bytes(bytes[9..13].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[13..13 + len]).expect("a JSON partition header")
}

/// Issue 9, "Bad input" on a running cluster: internal requests from a node outside the
/// cluster or from an incarnation the metadata replaced are refused with stable problems
/// (replica fetch, ISR change); an ISR change on a wrong leader or partition epoch or from
/// a broker that does not lead is a 409; a fetch in a leader epoch the leader has not seen is
/// refused per partition; a replication factor of 0 or above the live brokers is a 400 that
/// says how many are alive; a second process under a live node id stops at start (same data
/// directory, or the same address) or is refused by the controller (another address). None
/// of it changes who is alive, who is in sync, or what is stored.
#[test]
fn bad_internal_requests_and_a_second_process_under_a_live_node_id_change_nothing() {
    let c = Cluster::start(3, TOML);
    create_topic(&c, "bad", 3);
    let p = (0..3)
        .find(|p| partition_state(&c, 1, "bad", *p).0 == 2)
        .expect("placement gives node 2 a leadership");
    let (_, leader_epoch, _) = partition_state(&c, 1, "bad", p);
    let history = Arc::new(Mutex::new(History::default()));
    let before: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
    assert_eq!(produce(c.url(2), "bad", p, &before, "all", &history), 200);
    let (_, view) = get(&format!("{}/v1/cluster", c.url(1)));
    let epoch_of = |view: &Value, node: u64| -> u64 {
        view["brokers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["node_id"] == node)
            .and_then(|b| b["broker_epoch"].as_u64())
            .unwrap_or_else(|| panic!("node {node} in {view}"))
    };
    let epoch_3 = epoch_of(&view, 3);
    let epoch_2 = epoch_of(&view, 2);
    assert!(epoch_3 >= 1, "{view}");

    // Replica fetches at the leader (node 2).
    let fetch = |replica: u64, broker_epoch: u64, leader_epoch: u64| {
        post_for_bytes(
            &format!("{}/internal/v1/replica/fetch", c.url(2)),
            &json!({"replica": replica, "broker_epoch": broker_epoch, "max_wait_ms": 0,
                    "max_bytes": 65536, "partitions": [{"topic": "bad", "partition": p,
                    "leader_epoch": leader_epoch, "fetch_offset": 0, "flushed_offset": 0}]}),
        )
    };
    let problem = |bytes: &[u8]| -> Value { serde_json::from_slice(bytes).expect("a problem") };
    let (status, body) = fetch(9, 1, leader_epoch);
    cluster::assert_problem(status, &problem(&body), 404, "unknown_broker");
    let (status, body) = fetch(3, epoch_3 - 1, leader_epoch);
    let refused = problem(&body);
    cluster::assert_problem(status, &refused, 409, "stale_broker_epoch");
    assert_eq!(refused["broker_epoch"], epoch_3, "{refused}");
    let (status, body) = fetch(3, epoch_3, leader_epoch + 1);
    assert_eq!(status, 200);
    let answer = first_partition_answer(&body);
    assert_eq!(answer["error"], "unknown_leader_epoch", "{answer}");

    // ISR changes at the controller (node 1): only the leader, in its epochs, may make one.
    let alter = |node: u64, broker_epoch: u64, leader_epoch: u64, partition_epoch: u64| {
        post(
            &format!("{}/internal/v1/partitions/alter", c.url(1)),
            json!({"node_id": node, "broker_epoch": broker_epoch, "topic": "bad",
                   "partition": p, "leader_epoch": leader_epoch,
                   "partition_epoch": partition_epoch, "isr": [2]}),
        )
    };
    let (status, refused) = alter(9, 1, leader_epoch, 0);
    cluster::assert_problem(status, &refused, 404, "unknown_broker");
    let (status, refused) = alter(2, epoch_2 - 1, leader_epoch, 0);
    cluster::assert_problem(status, &refused, 409, "stale_broker_epoch");
    let (status, refused) = alter(3, epoch_3, leader_epoch, 0);
    cluster::assert_problem(status, &refused, 409, "metadata_conflict");
    let (status, refused) = alter(2, epoch_2, leader_epoch + 1, 0);
    cluster::assert_problem(status, &refused, 409, "metadata_conflict");
    let (status, refused) = alter(2, epoch_2, leader_epoch, 1_000_000);
    cluster::assert_problem(status, &refused, 409, "metadata_conflict");

    // Replication factors the cluster cannot hold, through a broker that is not the
    // controller (forwarded).
    for factor in [0, 4] {
        let (status, refused) = post(
            &format!("{}/v1/topics", c.url(3)),
            json!({"name": format!("rf{factor}"), "replication_factor": factor}),
        );
        cluster::assert_problem(status, &refused, 400, "not_enough_brokers");
        assert_eq!(refused["alive_brokers"], 3, "{refused}");
        assert!(
            refused["detail"]
                .as_str()
                .is_some_and(|d| d.contains("3 brokers are alive") || d.contains("3 are alive")),
            "{refused}"
        );
    }

    // A second process under node 3's id while node 3 lives.
    let other_dir = c.root.path().join("second-3");
    let listen = format!("127.0.0.1:{}", c.ports[2]);
    let peers = cluster::peers(&c.ports);
    let third_dir = c.data_dir(3);
    for (dir, expected) in [
        (&third_dir, "is in use by another tidelog process"),
        (&other_dir, "cannot listen on"),
    ] {
        let (code, stderr) = cluster::run_to_exit(&[
            "--node-id",
            "3",
            "--peers",
            &peers,
            "--listen",
            &listen,
            "--data-dir",
            dir.to_str().unwrap(),
        ]);
        assert_ne!(code, Some(0), "{stderr}");
        assert!(stderr.contains(expected), "{dir:?}: {stderr}");
    }
    // At another address: the controller refuses it (its registration is what a process
    // started with other --peers would send).
    let (status, refused) = post(
        &format!("{}/internal/v1/brokers/register", c.url(1)),
        json!({"node_id": 3, "address": "127.0.0.1:1", "incarnation": 7}),
    );
    cluster::assert_problem(status, &refused, 409, "peers_mismatch");

    // Nothing changed: the same incarnations alive, the full ISR, acks=all goes on.
    let (_, after) = get(&format!("{}/v1/cluster", c.url(1)));
    assert_eq!(
        (epoch_of(&after, 2), epoch_of(&after, 3)),
        (epoch_2, epoch_3),
        "{after}"
    );
    assert!(
        after["brokers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["status"] == "alive"),
        "{after}"
    );
    let (_, epoch, isr) = partition_state(&c, 2, "bad", p);
    assert_eq!((epoch, isr.len()), (leader_epoch, 3));
    let after: Vec<String> = (0..5).map(|i| format!("after-{i}")).collect();
    assert_eq!(produce(c.url(2), "bad", p, &after, "all", &history), 200);
    check_every_replica(&c, "bad", 3, &history);
}

/// Issue 10 item 2: the leader of a busy partition paused (SIGSTOP) for three session
/// timeouts, then resumed. Meanwhile the controller fences it and elects an in-sync
/// follower, which acknowledges acks=all produces. The produces queued at the paused
/// leader (acks=all and acks=leader) are refused when it resumes, since its session lease
/// ran out, or forwarded to the new leader once it knows of it: any success they get, even
/// acks=leader, is checked against the final logs (no false success from the "zombie",
/// which the checker would find); it steps down, truncates the
/// acks=leader tail it alone had, rejoins the ISR, and the history checker finds every
/// acknowledged record on every replica, identical below the high watermark.
#[test]
fn a_paused_leader_acknowledges_nothing_once_resumed_then_steps_down_and_truncates() {
    paused_leader_run(false);
}

/// The same with a paused partition leader that is also the controller leader. Resumed, it
/// still believes it leads the metadata quorum for a moment, and its own controller may
/// answer its heartbeat: such an answer, from an image without its fencing, must not renew
/// its lease.
#[test]
fn a_paused_leader_that_was_also_the_controller_acknowledges_nothing_once_resumed() {
    paused_leader_run(true);
}

fn paused_leader_run(controller_too: bool) {
    const SESSION_MS: u64 = 1500;
    let toml = format!(
        "broker_session_timeout_ms = {SESSION_MS}\n\
         replica_lag_time_max_ms = 2000\n\
         replica_fetch_wait_max_ms = 200\n\
         raft_heartbeat_ms = 100\n\
         raft_election_timeout_ms = 500\n"
    );
    let c = Cluster::start(3, &toml);
    create_topic(&c, "z", 3);
    // A partition led by a broker that is (or is not) the controller leader.
    let controller = wait_for("a controller", || {
        get(&format!("{}/v1/cluster", c.url(1))).1["controller"]
            .as_u64()
            .ok_or_else(|| "none yet".to_string())
    }) as usize;
    let p = (0..3)
        .find(|p| (partition_state(&c, 1, "z", *p).0 == controller) == controller_too)
        .expect("placement gives every broker a leadership");
    let (old_leader, old_epoch, _) = partition_state(&c, 1, "z", p);
    // Asked about the partition while the old leader is paused: another broker.
    let via = if old_leader == 1 { 2 } else { 1 };
    let old_url = c.url(old_leader).to_string();
    let history = Arc::new(Mutex::new(History::default()));
    let producer = SteadyProducer::start(urls(&c), "z", p, &history);
    producer.wait_more(20, "acks before the pause");
    // An acks=leader tail right before the pause: maybe only on the old leader.
    let tail: Vec<String> = (0..20).map(|i| format!("tail-{i}")).collect();
    produce(&old_url, "z", p, &tail, "leader", &history);
    c.brokers[old_leader - 1].pause();
    let paused = Instant::now();
    // Produces queued at the paused leader, answered only once it resumes.
    let zombie_clients: Vec<_> = (0..4)
        .map(|k| {
            let (url, history) = (old_url.clone(), Arc::clone(&history));
            let acks = if k % 2 == 0 { "leader" } else { "all" };
            thread::spawn(move || {
                let values: Vec<String> = (0..5).map(|i| format!("zombie-{k}-{i}")).collect();
                let records: Vec<Value> = values
                    .iter()
                    .map(|v| json!({"partition": p, "value": v}))
                    .collect();
                let (status, body) = post(
                    &format!("{url}/v1/topics/z/records?acks={acks}&timeout_ms=5000"),
                    json!({ "records": records }),
                );
                // Any success, acks=leader included, is a claim the final log must hold:
                // nothing fails after the resume, so only a zombie's answer could break it
                // (a success forwarded to the new leader holds).
                let mut h = history.lock().unwrap();
                for (i, v) in values.iter().enumerate() {
                    let outcome = match status {
                        200 => Outcome::Acknowledged {
                            partition: p,
                            offset: body["offsets"][i]["offset"].as_u64().unwrap(),
                        },
                        _ => Outcome::Unknown,
                    };
                    h.produced(v, outcome);
                }
                (status, body)
            })
        })
        .collect();
    let new_epoch = wait_for(
        "an in-sync follower elected while the leader is paused",
        || {
            let (leader, epoch, isr) = partition_state(&c, via, "z", p);
            if leader != 0 && leader != old_leader && epoch > old_epoch {
                Ok(epoch)
            } else {
                Err(format!("leader {leader} epoch {epoch} isr {isr:?}"))
            }
        },
    );
    wait_for("the new leader acknowledges acks=all", || {
        // Read again each time: while the paused controller's successor takes over, the
        // partition may be briefly without a leader (0) or led by another in-sync replica.
        let (new_leader, _, _) = partition_state(&c, via, "z", p);
        if new_leader == 0 || new_leader == old_leader {
            return Err(format!("leader {new_leader}"));
        }
        let values: Vec<String> = (0..5)
            .map(|i| format!("new-{i}-{:?}", Instant::now()))
            .collect();
        match produce(c.url(new_leader), "z", p, &values, "all", &history) {
            200 => Ok(()),
            s => Err(format!("status {s}")),
        }
    });
    let three_sessions = Duration::from_millis(3 * SESSION_MS);
    thread::sleep(three_sessions.saturating_sub(paused.elapsed()));
    c.brokers[old_leader - 1].resume();
    for client in zombie_clients {
        let (status, body) = client.join().unwrap();
        eprintln!(
            "a produce queued at the paused leader: {status} {} {body}",
            body["code"]
        );
        assert_ne!(status, 0, "the resumed leader answers every queued produce");
    }
    wait_for("the old leader steps down and rejoins the ISR", || {
        let (leader, epoch, isr) = partition_state(&c, via, "z", p);
        assert!(epoch >= new_epoch);
        let (seen_leader, _, _) = partition_state(&c, old_leader, "z", p);
        if leader != old_leader && seen_leader == leader && isr.contains(&(old_leader as u64)) {
            Ok(())
        } else {
            Err(format!(
                "leader {leader} (old one sees {seen_leader}), isr {isr:?}"
            ))
        }
    });
    producer.wait_more(20, "acks=all goes on after the resume");
    producer.stop();
    check_every_replica(&c, "z", 3, &history);
}
