//! Torn and damaged tails after a crash, on a real broker process.
//!
//! Each test produces acknowledged records (`acks=all`, one batch per request), kills the
//! broker with SIGKILL, damages the last segment of the partition on disk, and restarts it.
//! Then: every batch before the damage is served at its offsets with its contents, the damage
//! is cut (the log end is the end of the last intact batch, the file ends there too), and new
//! produces get dense offsets from there.
//!
//! Segment files live in `DATA/topics/<topic>/<partition>/<20-digit base>.log`.

mod common;

use std::path::{Path, PathBuf};

use common::Client;
use common::{
    TestBroker, get_json_ok, produce_json_acks_all, produced_partition_offsets,
    read_partition_to_high_watermark,
};
use serde_json::{Value, json};
use tidelog::log::batch::BatchView;

const TOPIC: &str = "torn";
/// Small segments, so the partition has several and only the last one is damaged. The topic
/// is auto-created by the first produce, with these defaults.
const CONFIG: &str = "auto_create_topics = true\n[topic_defaults]\nsegment_bytes = 2048\n";

/// One acknowledged produce request: its first offset and its record values.
#[derive(Debug, Clone)]
struct Acked {
    base: u64,
    values: Vec<Value>,
}

impl Acked {
    fn next(&self) -> u64 {
        self.base + self.values.len() as u64
    }
}

async fn produce(http: &Client, url: &str, values: &[Value]) -> Acked {
    let records: Vec<Value> = values
        .iter()
        .map(|v| {
            json!({
                "key": format!("k{}", v["n"]),
                "value": v,
                "partition": 0,
                "timestamp_ms": timestamp(v["n"].as_u64().unwrap()),
            })
        })
        .collect();
    let answer = produce_json_acks_all(http, url, TOPIC, json!(records)).await;
    let offsets: Vec<u64> = produced_partition_offsets(&answer)
        .into_iter()
        .map(|(_, offset)| offset)
        .collect();
    let base = offsets[0];
    assert_eq!(
        offsets,
        (base..base + values.len() as u64).collect::<Vec<_>>(),
        "a request's records get dense offsets"
    );
    Acked {
        base,
        values: values.to_vec(),
    }
}

/// Every record of partition 0 from its log start (offset 0: nothing here trims the log) to
/// the high watermark, as `(offset, key, value)`, and the high watermark.
async fn fetch_all(http: &Client, url: &str) -> (Vec<(u64, Value, Value)>, u64) {
    let read = read_partition_to_high_watermark(http, url, TOPIC, 0).await;
    let records = read
        .records
        .iter()
        .map(|r| {
            (
                r["offset"].as_u64().unwrap(),
                r["key"].clone(),
                r["value"].clone(),
            )
        })
        .collect();
    (records, read.high_watermark)
}

/// Record `n`'s timestamp: rising, so a seek by time has one right answer.
fn timestamp(n: u64) -> u64 {
    1_000_000 + n * 10
}

fn value(n: u64) -> Value {
    json!({"n": n, "pad": "x".repeat((n % 17) as usize * 5)})
}

/// Produces 40 requests of 1 to 3 records each.
async fn produce_some(http: &Client, url: &str) -> Vec<Acked> {
    let mut acked = Vec::new();
    let mut n = 0;
    for i in 0..40u64 {
        let values: Vec<Value> = (0..1 + i % 3).map(|j| value(n + j)).collect();
        n += values.len() as u64;
        acked.push(produce(http, url, &values).await);
    }
    for pair in acked.windows(2) {
        assert_eq!(pair[0].next(), pair[1].base);
    }
    acked
}

fn partition_dir(broker: &TestBroker) -> PathBuf {
    broker.data_dir.join("topics").join(TOPIC).join("0")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    found.sort();
    found
}

/// Whether `bytes` holds zeros only: what the broker writes ahead of small appends (so an
/// fsync need not commit a new file length) follows the last batch of an active segment.
fn zeros_only(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// The last segment's log file, the byte position of its last batch and where its batches
/// end (zeros written ahead may follow).
fn last_batch(dir: &Path) -> (PathBuf, usize, u64, usize) {
    let path = files(dir, "log").pop().expect("a segment");
    let bytes = std::fs::read(&path).unwrap();
    let mut position = 0;
    let mut last = None;
    while position < bytes.len() && !zeros_only(&bytes[position..]) {
        let batch = BatchView::parse(&bytes[position..]).expect("an intact log before damage");
        last = Some((position, batch.header.base_offset));
        position += batch.bytes.len();
    }
    let (last_position, base) = last.expect("the last segment holds the last batch");
    (path, last_position, base, position)
}

/// Checks the restarted broker serves exactly `acked` and takes new records from its end.
async fn assert_serves_exactly(http: &Client, url: &str, acked: &[Acked]) {
    let expected: Vec<(u64, Value, Value)> = acked
        .iter()
        .flat_map(|a| {
            a.values
                .iter()
                .enumerate()
                .map(move |(i, v)| (a.base + i as u64, json!(format!("k{}", v["n"])), v.clone()))
        })
        .collect();
    let end = acked.last().map_or(0, Acked::next);
    let (served, hw) = fetch_all(http, url).await;
    assert_eq!(hw, end, "the log ends at the last intact batch");
    assert_eq!(served.len(), expected.len());
    for (s, e) in served.iter().zip(&expected) {
        assert_eq!(s, e, "record at offset {}", e.0);
    }
    // New appends continue densely from the end.
    let more = produce(http, url, &[value(9_001), value(9_002)]).await;
    assert_eq!(more.base, end, "offsets continue densely after recovery");
    let (served, hw) = fetch_all(http, url).await;
    assert_eq!(hw, end + 2);
    assert_eq!(served[served.len() - 2].2, value(9_001));
    assert_eq!(served[served.len() - 1].0, end + 1);
}

/// Produces, kills, damages the last segment with `damage(bytes, last batch position)`,
/// restarts, and checks. `cuts_last` says whether the last batch must be gone.
fn crash_damage_restart(damage: impl Fn(&mut Vec<u8>, usize), cuts_last: bool) {
    let rt = common::runtime();
    let mut broker = TestBroker::start_with_config(CONFIG);
    let http = broker.client();
    let mut acked = rt.block_on(produce_some(&http, &broker.url));
    broker.kill9();
    let dir = partition_dir(&broker);
    assert!(files(&dir, "log").len() > 2, "several segments");
    let (path, position, base, data_end) = last_batch(&dir);
    assert_eq!(
        base,
        acked.last().unwrap().base,
        "the last batch is the last request"
    );
    // The zeros written ahead go first: a power cut could have left the file so, and the
    // damage then falls at its end as it would without them.
    let mut original = std::fs::read(&path).unwrap();
    original.truncate(data_end);
    let mut bytes = original.clone();
    damage(&mut bytes, position);
    std::fs::write(&path, &bytes).unwrap();
    broker.restart();
    let kept = if cuts_last {
        acked.pop();
        position
    } else {
        original.len()
    };
    rt.block_on(assert_serves_exactly(&http, &broker.url, &acked));
    // The damaged file now holds the kept bytes unchanged, then only whole batches.
    let after = std::fs::read(&path).unwrap();
    assert!(after.len() >= kept);
    assert_eq!(
        &after[..kept],
        &original[..kept],
        "the bytes before are untouched"
    );
    let mut at = kept;
    while at < after.len() && !zeros_only(&after[at..]) {
        at += BatchView::parse(&after[at..])
            .expect("whole batches after the cut")
            .bytes
            .len();
    }
}

#[test]
fn a_log_cut_mid_batch_is_truncated_to_the_last_whole_batch() {
    crash_damage_restart(|bytes, position| bytes.truncate(position + 40), true);
}

#[test]
fn flipped_bytes_in_the_last_batch_cut_it() {
    // A byte in the record area, then one in the base offset (outside the CRC's old reach).
    crash_damage_restart(|bytes, position| bytes[position + 80] ^= 0x5a, true);
    crash_damage_restart(|bytes, position| bytes[position + 1] ^= 0x01, true);
}

#[test]
fn garbage_appended_after_the_last_batch_is_cut() {
    crash_damage_restart(
        |bytes, _| bytes.extend((0..777u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)),
        false,
    );
}

#[test]
fn deleted_index_files_are_rebuilt_after_a_crash_and_after_a_clean_stop() {
    for clean in [false, true] {
        let rt = common::runtime();
        let mut broker = TestBroker::start_with_config(CONFIG);
        let http = broker.client();
        let acked = rt.block_on(produce_some(&http, &broker.url));
        if clean {
            assert_eq!(broker.terminate(), Some(0));
        } else {
            broker.kill9();
        }
        let dir = partition_dir(&broker);
        let mut deleted = 0;
        for ext in ["index", "timeindex"] {
            for path in files(&dir, ext) {
                std::fs::remove_file(path).unwrap();
                deleted += 1;
            }
        }
        assert!(deleted > 4);
        broker.restart();
        rt.block_on(assert_serves_exactly(&http, &broker.url, &acked));
        // Seek by time still works through the rebuilt time indexes (record n is at offset n).
        for n in [0, 1, 37, 60, 79] {
            let body = rt.block_on(get_json_ok(
                &http,
                &broker.url,
                &format!(
                    "/v1/topics/{TOPIC}/partitions/0/records?timestamp_ms={}&max_records=1",
                    timestamp(n) - 5
                ),
            ));
            assert_eq!(body["records"][0]["offset"], n, "seek to record {n}'s time");
        }
        assert_eq!(files(&dir, "index").len(), files(&dir, "log").len());
    }
}
