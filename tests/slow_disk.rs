//! A slow disk sends the flusher's fsync rounds back to the blocking pool.
//!
//! A round that syncs only the active segment runs its `fdatasync` on a runtime worker
//! (`broker::inline_sync`), which stops that worker for as long as the disk takes. One such
//! sync of 20 ms or more sends the rounds of the next 10 s to the blocking pool, where a
//! stalled disk stops no worker. The broker here runs with two workers and the test aid
//! `TIDELOG_TEST_SYNC_DELAY_MS` (every sync of a segment file sleeps first).

mod common;

use common::{
    TestBroker, create_topic, produce_json_acks_all, read_partition_to_high_watermark,
    scrape_unlabelled_metric,
};
use serde_json::json;

const PRODUCES: u64 = 8;

/// Produces `PRODUCES` single records one after the other with `acks=all` (so each needs a
/// round of its own), reads them back, and returns (inline rounds, all rounds).
async fn sequential_produces(env: &[(String, String)]) -> (f64, f64) {
    let tmp = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_member_with_env(&tmp.path().join("data"), 0, &[], "", env);
    let http = broker.client();
    create_topic(&http, &broker.url, "slow", 1).await;
    for i in 0..PRODUCES {
        produce_json_acks_all(&http, &broker.url, "slow", json!([{"value": i}])).await;
    }
    let contents = read_partition_to_high_watermark(&http, &broker.url, "slow", 0).await;
    assert_eq!(contents.records.len() as u64, PRODUCES);
    let inline = scrape_unlabelled_metric(&http, &broker.url, "tidelog_fsyncs_inline_total").await;
    let all = scrape_unlabelled_metric(&http, &broker.url, "tidelog_fsyncs_total").await;
    (inline, all)
}

#[tokio::test]
async fn after_one_slow_fsync_on_a_worker_the_rounds_go_to_the_pool() {
    let env = [
        ("TOKIO_WORKER_THREADS".to_string(), "2".to_string()),
        ("TIDELOG_TEST_SYNC_DELAY_MS".to_string(), "40".to_string()),
    ];
    let (inline, all) = sequential_produces(&env).await;
    assert!(all >= PRODUCES as f64, "a round per produce: {all}");
    assert_eq!(
        inline, 1.0,
        "the first inline sync took 40 ms, so the next 10 s of rounds ran on the pool"
    );
}
