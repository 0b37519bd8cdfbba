//! `kill -9` in the middle of concurrent `acks=all` produces, several times over.
//!
//! Four producers append small batches with distinct keys to a two-partition topic, each
//! waiting for its answer before sending the next. At a random moment (seeded, so a failure
//! replays) the broker is killed with SIGKILL and restarted on the same data directory. After
//! every restart a checker reads both partitions back and asserts invariant 4 of the design:
//! - every acknowledged record is served at the offset it was given, with its key and value;
//! - offsets are dense from 0 to the high watermark (no gaps, no duplicates);
//! - each producer's records appear in the order it sent them;
//! - anything else served is a record some producer sent while the broker died (it was never
//!   acknowledged, so it may or may not be there), and appears at most once;
//! - offsets given after a restart continue from the recovered end.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Client;
use common::rng::Rng;
use common::{TestBroker, create_topic, read_partition_to_high_watermark};
use serde_json::{Value, json};

const TOPIC: &str = "crash";
const PARTITIONS: u64 = 2;
const PRODUCERS: u64 = 4;
const ROUNDS: usize = 8;
const SEED: u64 = 0x71de_1065;
/// Small segments, so rolls happen while producers run and kills land around them.
const CONFIG: &str = "[topic_defaults]\nsegment_bytes = 4096\n";

/// A record a producer sent: its key is `p{producer}-{seq}`.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    producer: u64,
    seq: u64,
    partition: u64,
    value: Value,
}

/// An acknowledged record and where the broker said it is.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    partition: u64,
    offset: u64,
    round: usize,
}

/// What every producer sent and what was acknowledged, shared with the producer tasks.
#[derive(Debug, Default)]
struct Ledger {
    sent: HashMap<String, Sent>,
    acked: Vec<Acked>,
}

/// One producer: batches of 1 to 3 records, `acks=all`, one request at a time, until `stop`.
async fn run_producer(
    http: Client,
    url: String,
    producer: u64,
    mut seq: u64,
    round: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let partition = producer % PARTITIONS;
    let mut rng = Rng(SEED ^ (producer << 32) ^ round as u64);
    for _ in 0..100_000 {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let count = 1 + rng.below(3);
        let mut records = Vec::new();
        let mut keys = Vec::new();
        {
            let mut ledger = ledger.lock().unwrap();
            for _ in 0..count {
                let key = format!("p{producer}-{seq}");
                let value = json!({"producer": producer, "seq": seq, "round": round});
                records.push(json!({"key": key, "value": value, "partition": partition}));
                ledger.sent.insert(
                    key.clone(),
                    Sent {
                        producer,
                        seq,
                        partition,
                        value,
                    },
                );
                keys.push(key);
                seq += 1;
            }
        }
        let answer = http
            .post(format!("{url}/v1/topics/{TOPIC}/records?acks=all"))
            .json(&json!({ "records": records }))
            .send()
            .await;
        let body = match answer {
            Ok(r) if r.status() == 200 => r.json::<Value>().await.ok(),
            _ => None,
        };
        let Some(body) = body else {
            // The broker is gone (or going): these records were never acknowledged.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        assert_eq!(body["durability"], "fsync");
        let offsets = body["offsets"].as_array().expect("offsets");
        assert_eq!(offsets.len(), keys.len());
        let mut ledger = ledger.lock().unwrap();
        for (key, o) in keys.into_iter().zip(offsets) {
            assert_eq!(o["partition"].as_u64(), Some(partition));
            ledger.acked.push(Acked {
                key,
                partition,
                offset: o["offset"].as_u64().expect("an offset"),
                round,
            });
        }
    }
    seq
}

/// Every record of a partition, from its log start (offset 0: nothing here trims the log) to
/// the high watermark: `(offset, key, value)`, and the high watermark.
async fn read_partition(
    http: &Client,
    url: &str,
    partition: u64,
) -> (Vec<(u64, String, Value)>, u64) {
    let read = read_partition_to_high_watermark(http, url, TOPIC, partition).await;
    let records = read
        .records
        .iter()
        .map(|r| {
            (
                r["offset"].as_u64().expect("offset"),
                r["key"].as_str().expect("a key").to_string(),
                r["value"].clone(),
            )
        })
        .collect();
    (records, read.high_watermark)
}

/// Reads everything back and checks the invariants. Returns each partition's high watermark.
async fn check(http: &Client, url: &str, ledger: &Ledger, round: usize) -> Vec<u64> {
    let mut ends = Vec::new();
    let acked_at: HashMap<(u64, u64), &Acked> = ledger
        .acked
        .iter()
        .map(|a| ((a.partition, a.offset), a))
        .collect();
    assert_eq!(
        acked_at.len(),
        ledger.acked.len(),
        "an offset was given twice"
    );
    for partition in 0..PARTITIONS {
        let (served, hw) = read_partition(http, url, partition).await;
        let offsets: Vec<u64> = served.iter().map(|r| r.0).collect();
        assert_eq!(
            offsets,
            (0..hw).collect::<Vec<_>>(),
            "round {round}: partition {partition} is dense from 0 to its high watermark"
        );
        let mut last_seq: HashMap<u64, u64> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (offset, key, value) in &served {
            let sent = ledger
                .sent
                .get(key)
                .unwrap_or_else(|| panic!("round {round}: unknown record {key} at {offset}"));
            assert!(seen.insert(key.clone()), "{key} served twice");
            assert_eq!(&sent.value, value, "{key}");
            assert_eq!(sent.partition, partition, "{key} in the wrong partition");
            if let Some(prev) = last_seq.insert(sent.producer, sent.seq) {
                assert!(prev < sent.seq, "producer {} out of order", sent.producer);
            }
            if let Some(a) = acked_at.get(&(partition, *offset)) {
                assert_eq!(
                    &a.key, key,
                    "round {round}: acked record moved from {offset}"
                );
            }
        }
        let lost: Vec<&&Acked> = acked_at
            .iter()
            .filter(|((p, o), _)| *p == partition && *o >= hw)
            .map(|(_, a)| a)
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged past the end: {lost:?}"
        );
        ends.push(hw);
    }
    ends
}

#[test]
fn acknowledged_records_survive_kill9_during_concurrent_acks_all() {
    let rt = common::runtime();
    let _in_runtime = rt.enter();
    let mut broker = TestBroker::start_with_config(CONFIG);
    let http = Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    rt.block_on(create_topic(&http, &broker.url, TOPIC, PARTITIONS as u32));

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Rng(SEED);
    let mut seqs = vec![0u64; PRODUCERS as usize];
    let mut ends = vec![0u64; PARTITIONS as usize];
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let acked_before = ledger.lock().unwrap().acked.len();
        let tasks: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                rt.spawn(run_producer(
                    http.clone(),
                    broker.url.clone(),
                    p,
                    seqs[p as usize],
                    round,
                    Arc::clone(&ledger),
                    Arc::clone(&stop),
                ))
            })
            .collect();
        // Kill while producers are getting answers: after the first acknowledgement of the
        // round, at a random moment within the next 400 ms.
        let waited = Instant::now();
        while ledger.lock().unwrap().acked.len() == acked_before
            && waited.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        broker.kill9();
        stop.store(true, Ordering::Release);
        for (p, task) in tasks.into_iter().enumerate() {
            seqs[p] = rt.block_on(task).expect("producer task");
        }
        broker.restart();
        let ledger = ledger.lock().unwrap();
        let acked_this_round: Vec<&Acked> =
            ledger.acked.iter().filter(|a| a.round == round).collect();
        assert!(
            !acked_this_round.is_empty(),
            "round {round} acknowledged nothing"
        );
        // Offsets given this round continue from where the last recovery ended.
        for a in &acked_this_round {
            assert!(
                a.offset >= ends[a.partition as usize],
                "round {round}: offset {} given below the recovered end {}",
                a.offset,
                ends[a.partition as usize]
            );
        }
        ends = rt.block_on(check(&http, &broker.url, &ledger, round));
        eprintln!(
            "round {round}: {} acknowledged, {} sent in all, ends {ends:?}",
            acked_this_round.len(),
            ledger.sent.len()
        );
    }
}
