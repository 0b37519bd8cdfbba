//! A rolling restart by SIGTERM under load (issue 10, item 7): three broker processes, a
//! topic of replication factor 3 and `min_insync_replicas` 2, an `acks=all` producer through
//! every broker (retrying on every retryable error, on the next broker when its own is
//! down); each broker in turn gets SIGTERM, must exit 0, and starts again; the next goes
//! only once it is back in every in-sync set. Each SIGTERM'd broker hands its leaderships
//! over before it exits (a controlled shutdown): the moment it has exited, the other brokers
//! already name other leaders and the controller has fenced it (without the controlled
//! shutdown its partitions would wait a session timeout, 3 s here, for new leaders).
//! Producers see only retryable answers (421 `not_leader`; 502/503/504 with a code of the
//! list below, every 503 with `Retry-After`; a refused connection), never a false success:
//! afterwards every replica is read back and the history checker finds no anomaly.
//!
//! The victims go in the order of who leads most, so each leads something; one of them is
//! the Raft controller leader (openraft 0.9 cannot hand that over: the others elect one
//! after the election timeout, 500 ms here). `TIDELOG_ROLLING_ROUNDS` restarts more brokers
//! (default 3: each once).

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::checker::{History, Outcome};
use common::client::Client;
use common::cluster::{self, Cluster, DEADLINE, get, post, read_every_replica, wait_for};
use serde_json::{Value, json};

const TOPIC: &str = "rolling";
const PARTITIONS: u32 = 6;

const TOML: &str = "broker_session_timeout_ms = 3000\n\
                    raft_heartbeat_ms = 100\n\
                    raft_election_timeout_ms = 500\n\
                    replica_lag_time_max_ms = 2000\n\
                    replica_fetch_wait_max_ms = 200\n\
                    controlled_shutdown_timeout_ms = 10000\n";

/// The problem codes a producer may see while brokers restart: each says "not now, or not
/// here": retry (the outcome is unknown for some; the checker takes them as such).
const RETRYABLE: [&str; 10] = [
    "not_leader",
    "shutting_down",
    "not_enough_replicas",
    "not_enough_replicas_after_append",
    "leader_changed_after_append",
    "session_lost",
    "broker_unavailable",
    "leader_not_available",
    "forward_failed",
    "forward_timeout",
];

/// Each partition's (leader, ISR size) in broker `id`'s view.
fn leaders(c: &Cluster, id: usize) -> Vec<(u64, usize)> {
    cluster::describe(c, id, TOPIC)["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let isr = p["isr"].as_array().map_or(0, Vec::len);
                    (p["leader"].as_u64().unwrap_or(0), isr)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every broker sees a leader and a full ISR on every partition.
fn wait_full_isrs(c: &Cluster, what: &str) {
    for id in 1..=3 {
        wait_for(&format!("{what} (broker {id})"), || {
            let seen = leaders(c, id);
            let full = seen.len() == PARTITIONS as usize
                && seen.iter().all(|(l, isr)| *l != 0 && *isr == 3);
            if full {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        });
    }
}

/// Broker `node`'s status in `id`'s view of the cluster.
fn status_of(c: &Cluster, id: usize, node: usize) -> String {
    let view = get(&format!("{}/v1/cluster", c.url(id))).1;
    let brokers = view["brokers"].as_array().cloned().unwrap_or_default();
    brokers
        .iter()
        .find(|b| b["node_id"] == node as u64)
        .and_then(|b| b["status"].as_str())
        .unwrap_or("unknown")
        .to_string()
}

fn controller(c: &Cluster, id: usize) -> Option<usize> {
    get(&format!("{}/v1/cluster", c.url(id))).1["controller"]
        .as_u64()
        .map(|n| n as usize)
}

/// What the producers saw, besides the history.
#[derive(Default)]
struct Tally {
    acknowledged: usize,
    /// (status, code) -> answers.
    errors: BTreeMap<(u16, String), usize>,
    /// Answers a client must not retry, or 503s without `Retry-After`.
    unexpected: Vec<String>,
}

/// Sends `values` to partition `p` through `url`; records each value's outcome. Err with the
/// status when the produce failed.
async fn produce(
    client: &Client,
    url: &str,
    p: u32,
    values: &[String],
    history: &Mutex<History>,
    tally: &Mutex<Tally>,
) -> Result<(), u16> {
    let records: Vec<Value> = values
        .iter()
        .map(|v| json!({"partition": p, "value": v}))
        .collect();
    let sent = client
        .post(format!(
            "{url}/v1/topics/{TOPIC}/records?acks=all&timeout_ms=5000"
        ))
        .json(&json!({ "records": records }))
        .send()
        .await;
    let (status, retry_after, body) = match sent {
        Ok(answer) => {
            let status = answer.status().as_u16();
            let retry_after = answer.headers().contains_key("retry-after");
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            (status, retry_after, body)
        }
        // Refused or cut: the broker is down or going; the outcome is unknown.
        Err(_) => (0, false, Value::Null),
    };
    let code = body["code"].as_str().unwrap_or("").to_string();
    {
        let mut h = history.lock().unwrap();
        for (i, v) in values.iter().enumerate() {
            let outcome = match status {
                200 => {
                    assert_eq!(body["durability"], "isr-fsync", "{body}");
                    Outcome::Acknowledged {
                        partition: p,
                        offset: body["offsets"][i]["offset"].as_u64().unwrap(),
                    }
                }
                503 if code == "not_enough_replicas" => Outcome::Failed,
                _ => Outcome::Unknown,
            };
            h.produced(v, outcome);
        }
    }
    let mut t = tally.lock().unwrap();
    if status == 200 {
        t.acknowledged += values.len();
        return Ok(());
    }
    *t.errors.entry((status, code.clone())).or_default() += 1;
    let retryable = match status {
        0 => true,
        421 => code == "not_leader",
        503 => RETRYABLE.contains(&code.as_str()) && retry_after,
        502 | 504 => RETRYABLE.contains(&code.as_str()),
        _ => false,
    };
    if !retryable {
        t.unexpected
            .push(format!("{status} retry-after={retry_after} {body}"));
    }
    Err(status)
}

/// Producer `home` (0-based): batches of 3 unique values, partition after partition, through
/// broker `home + 1`, or the next broker while its own refuses connections. A failed batch
/// is sent again as new values (the checker tells a retry's duplicate from a loss only by
/// value), after a short pause.
fn spawn_producer(
    urls: Arc<Mutex<Vec<String>>>,
    home: usize,
    stop: &Arc<AtomicBool>,
    history: &Arc<Mutex<History>>,
    tally: &Arc<Mutex<Tally>>,
) -> thread::JoinHandle<()> {
    let (stop, history, tally) = (Arc::clone(stop), Arc::clone(history), Arc::clone(tally));
    thread::spawn(move || {
        let rt = common::runtime();
        let client = Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let deadline = Instant::now() + 4 * DEADLINE;
        let (mut batch, mut attempt, mut via) = (0u64, 0u32, home);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let p = (batch % u64::from(PARTITIONS)) as u32;
            let values: Vec<String> = (0..3)
                .map(|k| format!("p{home}-b{batch}-{k}-a{attempt}"))
                .collect();
            let url = urls.lock().unwrap()[via].clone();
            match rt.block_on(produce(&client, &url, p, &values, &history, &tally)) {
                Ok(()) => {
                    (batch, attempt, via) = (batch + 1, 0, home);
                }
                Err(status) => {
                    attempt += 1;
                    if status == 0 {
                        via = (via + 1) % 3;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    })
}

/// The controlled-shutdown route refuses what it must, with stable codes (each answer is
/// checked against the spec).
fn the_shutdown_route_refuses_strangers(c: &Cluster) {
    let leader = controller(c, 1).expect("a controller");
    let other = (1..=3).find(|id| *id != leader).unwrap();
    let path = "internal/v1/brokers/shutdown";
    let (status, problem) = post(
        &format!("{}/{path}", c.url(other)),
        json!({"node_id": other, "broker_epoch": 1, "stage": "drain"}),
    );
    cluster::assert_problem(status, &problem, 421, "not_controller");
    let (status, problem) = post(
        &format!("{}/{path}", c.url(leader)),
        json!({"node_id": 9, "broker_epoch": 1, "stage": "drain"}),
    );
    cluster::assert_problem(status, &problem, 404, "unknown_broker");
    let (status, problem) = post(
        &format!("{}/{path}", c.url(leader)),
        json!({"node_id": other, "broker_epoch": 0, "stage": "stopped"}),
    );
    cluster::assert_problem(status, &problem, 409, "stale_broker_epoch");
    let (status, problem) = post(
        &format!("{}/{path}", c.url(leader)),
        json!({"node_id": other, "broker_epoch": 1, "stage": "later"}),
    );
    cluster::assert_problem(status, &problem, 400, "invalid_request");
    for id in 1..=3 {
        assert_eq!(status_of(c, leader, id), "alive", "nothing changed");
    }
}

#[test]
fn a_rolling_sigterm_restart_under_load_costs_only_retryable_errors_and_loses_nothing() {
    let rounds: usize = std::env::var("TIDELOG_ROLLING_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut c = Cluster::start(3, TOML);
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": TOPIC, "partitions": PARTITIONS, "replication_factor": 3,
               "config": {"min_insync_replicas": 2}}),
    );
    assert_eq!(status, 201, "{body}");
    wait_full_isrs(&c, "full ISRs");
    the_shutdown_route_refuses_strangers(&c);

    let history = Arc::new(Mutex::new(History::default()));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let urls = Arc::new(Mutex::new(
        (1..=3).map(|id| c.url(id).to_string()).collect::<Vec<_>>(),
    ));
    let producers: Vec<_> = (0..3)
        .map(|home| spawn_producer(Arc::clone(&urls), home, &stop, &history, &tally))
        .collect();
    let acked = || tally.lock().unwrap().acknowledged;
    wait_for("the producers under way", || {
        if acked() >= 60 {
            Ok(())
        } else {
            Err(format!("{} acknowledged", acked()))
        }
    });

    let mut restarted: Vec<usize> = Vec::new();
    let mut controller_restarted = false;
    let mut moved = 0;
    for round in 0..rounds {
        // The broker leading most partitions among those not restarted yet in this turn of
        // three.
        let turn = &restarted[restarted.len() - restarted.len() % 3..];
        let candidates: Vec<usize> = (1..=3).filter(|id| !turn.contains(id)).collect();
        let seen = leaders(&c, 1);
        let led_by = |id: usize| seen.iter().filter(|(l, _)| *l == id as u64).count();
        let victim = *candidates
            .iter()
            .max_by_key(|id| (led_by(**id), std::cmp::Reverse(**id)))
            .unwrap();
        let led = led_by(victim);
        let was_controller = controller(&c, victim) == Some(victim);
        controller_restarted |= was_controller;
        let others: Vec<usize> = (1..=3).filter(|id| *id != victim).collect();
        let acked_before = acked();

        let sent = Instant::now();
        let code = c.brokers[victim - 1].terminate();
        let exited_after = sent.elapsed();
        // The moment it is gone, the others already name other leaders for everything.
        for id in &others {
            let after = leaders(&c, *id);
            assert!(
                after.iter().all(|(l, _)| *l != victim as u64 && *l != 0),
                "round {round}: broker {victim} exited, yet broker {id} sees {after:?}"
            );
        }
        if !was_controller {
            let holder = controller(&c, others[0]).unwrap();
            assert_eq!(
                status_of(&c, holder, victim),
                "fenced",
                "round {round}: the controller fenced broker {victim} as it stopped"
            );
        }
        assert_eq!(code, Some(0), "round {round}: a clean SIGTERM exits 0");
        moved += led;
        eprintln!(
            "round {round}: broker {victim} (controller: {was_controller}) led {led} partitions; \
             exited {} ms after SIGTERM",
            exited_after.as_millis()
        );

        // Producers carry on through the others while it is down.
        wait_for("acknowledgements while a broker is down", || {
            if acked() >= acked_before + 30 {
                Ok(())
            } else {
                Err(format!("{} acknowledged", acked()))
            }
        });
        let down = Instant::now();
        c.brokers[victim - 1].restart();
        urls.lock().unwrap()[victim - 1] = c.url(victim).to_string();
        c.wait_ready(victim);
        wait_full_isrs(
            &c,
            &format!("round {round}: broker {victim} back in every ISR"),
        );
        eprintln!(
            "round {round}: broker {victim} back in every ISR {} ms after its restart",
            down.elapsed().as_millis()
        );
        restarted.push(victim);
    }
    let before_stop = acked();
    wait_for("acknowledgements after the last restart", || {
        if acked() >= before_stop + 30 {
            Ok(())
        } else {
            Err(format!("{} acknowledged", acked()))
        }
    });
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        p.join().unwrap();
    }

    let tally = tally.lock().unwrap();
    eprintln!(
        "{} records acknowledged; errors seen: {:?}",
        tally.acknowledged, tally.errors
    );
    assert!(
        tally.unexpected.is_empty(),
        "answers a producer may not retry: {:#?}",
        tally.unexpected
    );
    if rounds >= 3 {
        assert!(
            controller_restarted,
            "one of the victims ran the controller"
        );
    }
    assert!(moved >= rounds, "the victims led partitions to hand over");
    let reads = read_every_replica(&c, 1, TOPIC, PARTITIONS);
    let mut history = history.lock().unwrap();
    for r in &reads {
        history.high_watermark(r.node, r.partition, r.high_watermark);
    }
    let anomalies = history.check(&reads);
    assert!(anomalies.is_empty(), "{anomalies:#?}");
    assert!(history.acknowledged() >= 120, "{}", history.acknowledged());
}
