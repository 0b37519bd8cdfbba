//! A simulated power cut of a single broker (issue 9, item 6, on one broker).
//!
//! The broker runs with the test-only sync ledger (`TIDELOG_TEST_SYNC_LEDGER`), which
//! records how many bytes of each segment file every completed sync covered. The test
//! acknowledges `acks=all` records, then `acks=leader` records that stay in the page cache
//! (the topic syncs them only after a minute), kills the broker with `kill -9`, cuts every
//! segment file back to what the ledger says was synced (a lost page cache), and restarts
//! it: every `acks=all` record must be there at its offset, and the unsynced `acks=leader`
//! tail must be gone (the cut was real).

mod common;

use common::{
    TestBroker, create_topic, cut_to_synced, get_json_ok, produce_json_acks_all,
    produced_partition_offsets, read_partition_to_high_watermark, scrape_metrics,
    unlabelled_metric,
};
use serde_json::json;

const TOPIC: &str = "power";
const ACKS_ALL_BATCHES: u64 = 12;
const ACKS_LEADER_RECORDS: u64 = 8;

/// With two runtime workers the flusher runs its fsync rounds on a worker (`inline_sync`),
/// except the rounds after a roll: both kinds are cut here.
#[tokio::test]
async fn acks_all_records_synced_on_a_worker_survive_a_power_cut() {
    let inline = power_cut_with_workers(2, "").await;
    assert!(inline >= 1.0, "no fsync round ran on a worker");
}

/// With one runtime worker every fsync round runs on the blocking pool.
#[tokio::test]
async fn acks_all_records_synced_on_the_pool_survive_a_power_cut() {
    let inline = power_cut_with_workers(1, "").await;
    assert_eq!(inline, 0.0, "an fsync round ran on the only worker");
}

/// `fsync_on_workers = false` keeps every round on the pool with two workers as well.
#[tokio::test]
async fn with_fsync_on_workers_off_every_round_runs_on_the_pool() {
    let inline = power_cut_with_workers(2, "fsync_on_workers = false\n").await;
    assert_eq!(inline, 0.0, "an fsync round ran on a worker");
}

/// Produces, cuts the power, restarts and checks (module docs), on a broker of `workers`
/// runtime workers with `settings` in its config. Returns how many fsync rounds ran on a
/// worker before the cut.
async fn power_cut_with_workers(workers: usize, settings: &str) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let ledger = tmp.path().join("sync-ledger");
    let env = [
        (
            "TIDELOG_TEST_SYNC_LEDGER".to_string(),
            ledger.display().to_string(),
        ),
        ("TOKIO_WORKER_THREADS".to_string(), workers.to_string()),
    ];
    // Small segments, so the acknowledged records span rolled segments too.
    let config = format!("{settings}[topic_defaults]\nsegment_bytes = 1024\n");
    let mut broker = TestBroker::start_member_with_env(&data_dir, 0, &[], &config, &env);
    let http = broker.client();
    create_topic(&http, &broker.url, TOPIC, 1).await;
    let patched = http
        .patch(format!("{}/v1/topics/{TOPIC}", broker.url))
        .json(&json!({"flush_ms": 60_000, "flush_bytes": 1 << 30}))
        .send()
        .await
        .unwrap();
    assert!(
        patched.status().is_success(),
        "{}",
        patched.text().await.unwrap()
    );

    let mut acknowledged = Vec::new();
    for batch in 0..ACKS_ALL_BATCHES {
        let records: Vec<_> = (0..3)
            .map(|i| json!({"key": format!("all-{batch}-{i}"), "value": {"n": batch * 3 + i}}))
            .collect();
        let answer = produce_json_acks_all(&http, &broker.url, TOPIC, json!(records)).await;
        for (record, (_, offset)) in records.iter().zip(produced_partition_offsets(&answer)) {
            acknowledged.push((offset, record["key"].as_str().unwrap().to_string()));
        }
    }
    let records: Vec<_> = (0..ACKS_LEADER_RECORDS)
        .map(|i| json!({"key": format!("leader-{i}"), "value": i}))
        .collect();
    let answer = http
        .post(format!(
            "{}/v1/topics/{TOPIC}/records?acks=leader",
            broker.url
        ))
        .json(&json!({ "records": records }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(answer["durability"], "leader", "{answer}");
    let described = get_json_ok(&http, &broker.url, &format!("/v1/topics/{TOPIC}")).await;
    assert_eq!(
        described["partitions"][0]["log_end_offset"],
        ACKS_ALL_BATCHES * 3 + ACKS_LEADER_RECORDS,
        "{described}"
    );

    let metrics = scrape_metrics(&http, &broker.url).await;
    let counter = |name: &str| {
        unlabelled_metric(&metrics, name).unwrap_or_else(|| panic!("{name} is not exposed"))
    };
    let (inline, all) = (
        counter("tidelog_fsyncs_inline_total"),
        counter("tidelog_fsyncs_total"),
    );
    assert!(
        all > inline,
        "rounds after a roll sync the directory on the pool: {inline} of {all} inline"
    );
    broker.kill9();
    let cut = cut_to_synced(&data_dir, &ledger);
    assert!(
        cut > 0,
        "the acks=leader tail was never synced, so a power cut loses it"
    );
    broker.restart();

    let contents = read_partition_to_high_watermark(&http, &broker.url, TOPIC, 0).await;
    let stored: Vec<(u64, String)> = contents
        .records
        .iter()
        .map(|r| {
            (
                r["offset"].as_u64().unwrap(),
                r["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        stored, acknowledged,
        "exactly the acknowledged records, at their offsets"
    );
    assert_eq!(contents.high_watermark, ACKS_ALL_BATCHES * 3);
    inline
}
