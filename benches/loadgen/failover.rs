//! `--failover KILLS`: how long a partition is unwritable when its leader dies (issue 10,
//! speed). Three processes of the release broker on loopback, one topic of three partitions
//! (replication factor 3, `min_insync_replicas` 2), one acks=all producer per partition
//! keeping every partition busy. Each round kills (`kill -9`) the leader of a partition,
//! in turn one that is not the controller and the controller (when it leads one, as it
//! usually does), and measures, for that partition, the time from the kill to:
//! - `elected`: a surviving broker's metadata naming another leader under a newer epoch;
//! - `acked`: the first acks=all produce acknowledged by the new leader. The measuring
//!   client behaves like a Kafka producer: it sends single records to the leader it knows,
//!   and on any failure looks the leader up again at a surviving broker and retries after
//!   `RETRY_BACKOFF` (Kafka's `retry.backoff.ms` is 100 ms; shorter here, so the figure is
//!   the cluster's and not the client's back-off).
//!
//! Then the victim restarts and the next round waits for full in-sync sets. The timings are
//! those of the fault tests (`--failover-timings test`: a 1.5 s broker session, Raft
//! heartbeat 100 ms and election timeout 500 ms) or the broker's defaults
//! (`--failover-timings default`: 9 s, 300 ms, 1.5 s).

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cluster::{free_ports, spawn};
use super::{http_client, median};

const TOPIC: &str = "failover";
const PARTITIONS: u32 = 3;
const BROKERS: usize = 3;
/// Bound on every wait of a round (a new leader, an acknowledgement, full ISRs again).
const ROUND_MAX: Duration = Duration::from_secs(60);
/// Pause of the measuring client between a failed produce and the next attempt.
const RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// `timeout_ms` of every produce.
const PRODUCE_TIMEOUT_MS: u64 = 2_000;

/// The config file of each broker for `timings` (`test` or `default`).
pub fn config(timings: &str) -> Result<&'static str, String> {
    match timings {
        "test" => Ok("broker_session_timeout_ms = 1500\n\
                      replica_lag_time_max_ms = 2000\n\
                      replica_fetch_wait_max_ms = 200\n\
                      raft_heartbeat_ms = 100\n\
                      raft_election_timeout_ms = 500\n"),
        "default" => Ok(""),
        other => Err(format!(
            "--failover-timings '{other}' is not test or default"
        )),
    }
}

struct Member {
    port: u16,
    url: String,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

/// Runs `kills` rounds and prints each figure and their medians.
pub async fn run(root: &Path, kills: usize, timings: &str) {
    let toml = config(timings).expect("timings checked when parsing");
    let config_file = root.join("failover.toml");
    std::fs::write(&config_file, toml).expect("write the config file");
    let ports = free_ports(BROKERS);
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let peers = peers.join(",");
    let mut members: Vec<Member> = ports
        .iter()
        .map(|&port| Member {
            port,
            url: format!("http://127.0.0.1:{port}"),
            dir: root.join(format!("failover-n{port}")),
            child: None,
        })
        .collect();
    let args = |id: usize| {
        vec![
            "--node-id".to_string(),
            id.to_string(),
            "--peers".to_string(),
            peers.clone(),
            "--config".to_string(),
            config_file.display().to_string(),
        ]
    };
    for (i, m) in members.iter_mut().enumerate() {
        let a = args(i + 1);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        m.child = Some(spawn(&m.dir, m.port, &a));
    }
    let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    println!(
        "failover: {kills} kills, timings '{timings}' ({}), brokers {}",
        if toml.is_empty() {
            "the broker's defaults".to_string()
        } else {
            toml.trim().replace('\n', ", ")
        },
        urls.join(" ")
    );
    wait_until("every broker ready", || async {
        for url in &urls {
            if alive_count(url).await != BROKERS {
                return false;
            }
        }
        true
    })
    .await;
    let created = http_client(1)
        .post(format!("{}/v1/topics", urls[0]))
        .json(
            &json!({"name": TOPIC, "partitions": PARTITIONS, "replication_factor": 3,
                      "config": {"min_insync_replicas": 2}}),
        )
        .send()
        .await
        .expect("create the topic");
    assert!(
        created.status().is_success(),
        "create the topic: {created:?}"
    );
    wait_full_isrs(&urls, 0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..PARTITIONS)
        .map(|p| tokio::spawn(background_producer(urls.clone(), p, Arc::clone(&stop))))
        .collect();
    // (acked ms) of kills of a broker that was the controller too, and of the others.
    let (mut elected_ms, mut acked_ms) = (Vec::new(), Vec::new());
    let (mut with_controller, mut without_controller) = (Vec::new(), Vec::new());
    for round in 0..kills {
        // Even rounds kill a leader that is not the controller, odd ones the controller's
        // broker (when it leads a partition): the second waits for a Raft election too.
        let controller = get_json(&format!("{}/v1/cluster", urls[0]))
            .await
            .and_then(|c| c["controller"].as_u64())
            .map(|c| c as usize);
        let mut leaders = Vec::new();
        for q in 0..PARTITIONS {
            let (leader, epoch) = leader_of(&urls[0], q)
                .await
                .expect("a leader before the kill");
            leaders.push((q, leader, epoch));
        }
        let want_controller = round % 2 == 1;
        let (p, victim, epoch) = leaders
            .iter()
            .copied()
            .find(|(_, l, _)| (Some(*l) == controller) == want_controller)
            .unwrap_or(leaders[round % leaders.len()]);
        let was_controller = controller == Some(victim);
        let witness = if victim == 1 { 1 } else { 0 };
        let member = &mut members[victim - 1];
        let mut child = member.child.take().expect("the victim runs");
        let killed = Instant::now();
        let _ = child.kill();
        let _ = child.wait();
        let measured = tokio::join!(
            wait_elected(&urls[witness], p, victim, epoch, killed),
            first_ack(&urls, victim, p, killed)
        );
        let (elected, acked) = measured;
        println!(
            "[{}/{kills}] kill -9 of broker {victim} (leader of partition {p}{}): new leader after \
             {:.0} ms, first acks=all produce acknowledged by it after {:.0} ms",
            round + 1,
            if was_controller {
                ", the controller"
            } else {
                ""
            },
            ms(elected),
            ms(acked)
        );
        elected_ms.push(ms(elected));
        acked_ms.push(ms(acked));
        if was_controller {
            with_controller.push(ms(acked));
        } else {
            without_controller.push(ms(acked));
        }
        let a = args(victim);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        member.child = Some(spawn(&member.dir, member.port, &a));
        wait_full_isrs(&urls, witness).await;
    }
    stop.store(true, Ordering::SeqCst);
    for task in load {
        let _ = task.await;
    }
    println!(
        "failover ({kills} kills, timings '{timings}'): median new leader {:.0} ms, median \
         first acknowledged produce {:.0} ms (max {:.0} ms); load average {:.1}",
        median(elected_ms.clone()),
        median(acked_ms.clone()),
        acked_ms.iter().cloned().fold(0.0, f64::max),
        super::load_average()
    );
    for (what, figures) in [
        ("a leader that was not the controller", without_controller),
        ("a leader that was the controller too", with_controller),
    ] {
        if !figures.is_empty() {
            println!(
                "  kill -9 of {what}: median first acknowledged produce {:.0} ms over {} kills",
                median(figures.clone()),
                figures.len()
            );
        }
    }
    for m in &mut members {
        if let Some(mut child) = m.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Polls `check` every 20 ms until it holds; panics after [`ROUND_MAX`].
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + ROUND_MAX;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not after {ROUND_MAX:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_json(url: &str) -> Option<Value> {
    let response = http_client(1)
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// Brokers `url` sees alive, once it is ready (0 before).
async fn alive_count(url: &str) -> usize {
    if get_json(&format!("{url}/readyz")).await.is_none() {
        return 0;
    }
    get_json(&format!("{url}/v1/cluster"))
        .await
        .and_then(|c| {
            let brokers = c["brokers"].as_array()?;
            Some(brokers.iter().filter(|b| b["status"] == "alive").count())
        })
        .unwrap_or(0)
}

/// Partition `p`'s leader (node id) and leader epoch as the broker at `url` sees them.
async fn leader_of(url: &str, p: u32) -> Option<(usize, u64)> {
    let d = get_json(&format!("{url}/v1/topics/{TOPIC}")).await?;
    let part = &d["partitions"][p as usize];
    let leader = part["leader"].as_u64().filter(|l| *l > 0)? as usize;
    Some((leader, part["leader_epoch"].as_u64()?))
}

/// Waits until every broker is ready and the broker `urls[witness]` sees full ISRs.
async fn wait_full_isrs(urls: &[String], witness: usize) {
    wait_until("every broker ready with full ISRs", || async {
        for url in urls {
            if alive_count(url).await != BROKERS {
                return false;
            }
        }
        let Some(d) = get_json(&format!("{}/v1/topics/{TOPIC}", urls[witness])).await else {
            return false;
        };
        d["partitions"].as_array().is_some_and(|ps| {
            ps.len() == PARTITIONS as usize
                && ps
                    .iter()
                    .all(|p| p["isr"].as_array().is_some_and(|i| i.len() == BROKERS))
        })
    })
    .await;
}

/// Time from `killed` until `url` names a leader of `p` other than `victim` under an epoch
/// after `epoch`.
async fn wait_elected(url: &str, p: u32, victim: usize, epoch: u64, killed: Instant) -> Duration {
    wait_until("a new leader", || async {
        leader_of(url, p)
            .await
            .is_some_and(|(leader, e)| leader != victim && e > epoch)
    })
    .await;
    killed.elapsed()
}

/// One acks=all single-record produce; whether it was acknowledged.
async fn produce_one(url: &str, p: u32, value: &str) -> bool {
    let body = json!({"records": [{"partition": p, "value": value}]});
    http_client(1)
        .post(format!(
            "{url}/v1/topics/{TOPIC}/records?acks=all&timeout_ms={PRODUCE_TIMEOUT_MS}"
        ))
        .timeout(Duration::from_millis(PRODUCE_TIMEOUT_MS * 2))
        .json(&body)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Time from `killed` until a produce to `p` is acknowledged by a leader other than
/// `victim`, sending as a Kafka producer does (module doc).
async fn first_ack(urls: &[String], victim: usize, p: u32, killed: Instant) -> Duration {
    let survivors: Vec<&String> = urls
        .iter()
        .enumerate()
        .filter(|(i, _)| *i + 1 != victim)
        .map(|(_, u)| u)
        .collect();
    let mut leader = victim;
    let mut attempt = 0u64;
    let deadline = killed + ROUND_MAX;
    loop {
        assert!(
            Instant::now() < deadline,
            "no acknowledgement after {ROUND_MAX:?}"
        );
        attempt += 1;
        let url = &urls[leader - 1];
        if leader != victim && produce_one(url, p, &format!("probe-{attempt}")).await {
            return killed.elapsed();
        }
        tokio::time::sleep(RETRY_BACKOFF).await;
        let asked = survivors[attempt as usize % survivors.len()];
        if let Some((l, _)) = leader_of(asked, p).await {
            leader = l;
        }
    }
}

/// Keeps partition `p` busy: acks=all batches of 10 to its leader until `stop`, looking the
/// leader up again after a failure.
async fn background_producer(urls: Vec<String>, p: u32, stop: Arc<AtomicBool>) {
    let client = http_client(1);
    let records: Vec<Value> = (0..10)
        .map(|i| json!({"partition": p, "value": format!("load-{i}")}))
        .collect();
    let body = json!({ "records": records });
    let (mut leader, mut turn) = (None, 0);
    while !stop.load(Ordering::SeqCst) {
        let Some(id) = leader else {
            turn += 1;
            leader = leader_of(&urls[turn % urls.len()], p).await.map(|(l, _)| l);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let sent = client
            .post(format!(
                "{}/v1/topics/{TOPIC}/records?acks=all&timeout_ms={PRODUCE_TIMEOUT_MS}",
                urls[id - 1]
            ))
            .timeout(Duration::from_millis(PRODUCE_TIMEOUT_MS * 2))
            .json(&body)
            .send()
            .await;
        if !sent.is_ok_and(|r| r.status().is_success()) {
            leader = None;
        }
    }
}
