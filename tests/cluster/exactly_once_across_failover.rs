//! Exactly once across a leader failover (issue 11, item 5): an idempotent producer on three
//! brokers (factor 3, `min_insync_replicas` 2) sends records over 8 partitions through any
//! broker, retrying every request until it succeeds and 0 to 2 more times after, while the
//! broker leading some of the partitions is killed with `kill -9` and later restarted. Each
//! record is then read back from the partitions' leaders: stored exactly once, at the offset
//! its first success reported.
//!
//! A retry after the failover reaches a new leader, which rebuilt the producer's sequences
//! from the batches it replicated: a batch the old leader had replicated before it died is
//! recognized, one it had not is written anew. The restarted victim takes no write before the
//! metadata gives its replicas their roles: one that did answered a retry with its own stale
//! log end's offsets, fsynced only there. The short seeded run stays in `cargo test`;
//! `TIDELOG_EXACTLY_ONCE_RECORDS` raises the record count (the figure is 20000) and
//! `TIDELOG_EXACTLY_ONCE_SEED` replays a run.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, DEADLINE, call, get, http, post, wait_for};
use common::rng::Rng;
use serde_json::{Value, json};

const PARTITIONS: u32 = 8;
const PER_REQUEST: u64 = 10;
/// Short enough for quick tests, long enough for two busy cores (as tests/cluster/replication.rs).
const TOML: &str = "broker_session_timeout_ms = 3000\n\
                    replica_lag_time_max_ms = 2000\n\
                    replica_fetch_wait_max_ms = 200\n";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The leader of every partition as node 1 sees it (0: none).
fn leaders(c: &Cluster, topic: &str) -> Vec<usize> {
    let (_, d) = get(&format!("{}/v1/topics/{topic}", c.url(1)));
    (0..PARTITIONS as usize)
        .map(|p| d["partitions"][p]["leader"].as_u64().unwrap_or(0) as usize)
        .collect()
}

/// What the producer was told: record id → (partition, offset), from its first success.
type Told = HashMap<String, (u64, u64)>;

/// Sends request `sequence` (records `id-{sequence}-{i}`, half keyed) through the brokers in
/// `alive` until one answers 200, then 0 to 2 more times; every success must report the same
/// offsets. Returns them.
fn send_until_stored(
    urls: &[String],
    alive: &dyn Fn(usize) -> bool,
    session: (u64, u64),
    sequence: u64,
    rng: &mut Rng,
    told: &mut Told,
) -> u64 {
    let records: Vec<Value> = (0..PER_REQUEST)
        .map(|i| {
            let id = format!("id-{sequence}-{i}");
            if i % 2 == 0 {
                json!({"key": format!("k{}", sequence * 7 + i), "value": {"id": id}})
            } else {
                json!({"value": {"id": id}})
            }
        })
        .collect();
    let body = json!({ "records": records });
    let deadline = Instant::now() + 3 * DEADLINE;
    let mut first: Option<Vec<(u64, u64)>> = None;
    let mut extra = rng.below(3);
    let mut failed = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "request {sequence} never succeeded"
        );
        let node = (rng.below(urls.len() as u64)) as usize + 1;
        if !alive(node) {
            continue;
        }
        let url = format!(
            "{}/v1/topics/eo/records?acks=all&producer_id={}&producer_epoch={}&sequence={sequence}",
            urls[node - 1],
            session.0,
            session.1
        );
        let (status, answer) = call(http().post(url).json(&body));
        if status != 200 {
            // Not stored, unconfirmed, or a leader gone: retry the same request.
            failed += 1;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let offsets: Vec<(u64, u64)> = answer["offsets"]
            .as_array()
            .expect("offsets")
            .iter()
            .map(|o| {
                (
                    o["partition"].as_u64().expect("partition"),
                    o["offset"].as_u64().expect("offset"),
                )
            })
            .collect();
        match &first {
            None => first = Some(offsets),
            Some(f) => assert_eq!(f, &offsets, "a retry of {sequence} got other offsets"),
        }
        if extra == 0 {
            break;
        }
        extra -= 1;
    }
    let offsets = first.expect("a success");
    for (i, at) in offsets.into_iter().enumerate() {
        told.insert(format!("id-{sequence}-{i}"), at);
    }
    failed
}

/// Reads every partition through node 1 (forwarded to its leader) to its high watermark,
/// once that covers every offset an answer reported (a leader elected a moment ago may still
/// be raising it).
fn read_all(c: &Cluster, told: &Told) -> HashMap<String, (u64, u64)> {
    let mut seen = HashMap::new();
    for p in 0..PARTITIONS as u64 {
        let needed = told
            .values()
            .filter(|(tp, _)| *tp == p)
            .map(|(_, o)| o + 1)
            .max()
            .unwrap_or(0);
        wait_for(
            &format!("eo/{p}'s high watermark to reach {needed}"),
            || {
                let (_, page) = get(&format!(
                    "{}/v1/topics/eo/partitions/{p}/records?offset=latest",
                    c.url(1)
                ));
                match page["high_watermark"].as_u64() {
                    Some(hw) if hw >= needed => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        );
        let mut offset = 0u64;
        for _ in 0..100_000 {
            let (status, page) = get(&format!(
                "{}/v1/topics/eo/partitions/{p}/records?offset={offset}&max_records=1000",
                c.url(1)
            ));
            assert_eq!(status, 200, "{page}");
            for r in page["records"].as_array().expect("records") {
                let id = r["value"]["id"].as_str().expect("an id").to_string();
                let at = (p, r["offset"].as_u64().expect("an offset"));
                if let Some(before) = seen.insert(id.clone(), at) {
                    panic!("{id} is stored twice: at {before:?} and at {at:?}");
                }
            }
            let next = page["next_offset"].as_u64().expect("next_offset");
            if next >= page["high_watermark"].as_u64().expect("high_watermark") {
                break;
            }
            offset = next;
        }
    }
    seen
}

#[test]
fn an_idempotent_producer_stores_every_record_once_across_a_leader_kill_9() {
    let records = env_u64("TIDELOG_EXACTLY_ONCE_RECORDS", 1_000);
    let seed = env_u64("TIDELOG_EXACTLY_ONCE_SEED", 11);
    let requests = records.div_ceil(PER_REQUEST);
    let mut rng = Rng(seed);
    let mut c = Cluster::start(3, TOML);
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(2)),
        json!({"name": "eo", "partitions": PARTITIONS, "replication_factor": 3,
               "config": {"min_insync_replicas": 2}}),
    );
    assert_eq!(status, 201, "{body}");
    wait_for("eo with leaders everywhere", || {
        let l = leaders(&c, "eo");
        if l.iter().all(|n| *n != 0) {
            Ok(l)
        } else {
            Err(format!("{l:?}"))
        }
    });
    let (status, s) = post(&format!("{}/v1/producers", c.url(3)), json!({"name": "eo"}));
    assert_eq!(status, 201, "{s}");
    let session = (
        s["producer_id"].as_u64().expect("id"),
        s["producer_epoch"].as_u64().expect("epoch"),
    );
    // The victim leads some partitions and does not run the controller: the controller (the
    // Raft leader, any of the three) keeps the producer sessions, and this test is about a
    // partition leader's failover, not the controller's.
    let controller = wait_for("a controller", || {
        let (_, cluster) = get(&format!("{}/v1/cluster", c.url(1)));
        cluster["controller"]
            .as_u64()
            .map(|id| id as usize)
            .ok_or_else(|| cluster.to_string())
    });
    let led = leaders(&c, "eo");
    let victim = (1..=3)
        .find(|id| *id != controller && led.contains(id))
        .expect("a partition leader that is not the controller");
    let urls: Vec<String> = (1..=3).map(|id| c.url(id).to_string()).collect();
    let mut told = Told::new();
    let mut failed_attempts = 0;
    let kill_at = requests / 3;
    let restart_at = 2 * requests / 3;
    for sequence in 0..requests {
        if sequence == kill_at {
            c.brokers[victim - 1].kill9();
        }
        if sequence == restart_at {
            c.brokers[victim - 1].restart();
        }
        let down = (kill_at..restart_at).contains(&sequence);
        let alive = |node: usize| !(down && node == victim);
        failed_attempts += send_until_stored(&urls, &alive, session, sequence, &mut rng, &mut told);
    }
    assert!(
        failed_attempts > 0,
        "the kill failed no attempt: the failover was not exercised"
    );
    let suppressed: f64 = urls
        .iter()
        .map(|url| {
            let text = common::runtime().block_on(common::scrape_metrics(http(), url));
            text.lines()
                .filter(|l| l.starts_with("tidelog_duplicate_records_suppressed_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum();
    assert!(suppressed > 0.0, "retries after a success were recognized");
    let now_leaders = leaders(&c, "eo");
    assert!(
        now_leaders.iter().all(|n| *n != 0),
        "every partition has a leader: {now_leaders:?}"
    );
    let seen = read_all(&c, &told);
    for (id, at) in &told {
        assert_eq!(seen.get(id), Some(at), "{id} is not where its answer said");
    }
    assert_eq!(
        seen.len(),
        told.len(),
        "records stored that no answer reported (seed {seed})"
    );
    assert_eq!(told.len() as u64, requests * PER_REQUEST);
}
