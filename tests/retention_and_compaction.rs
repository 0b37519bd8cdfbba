//! Retention and compaction on a live broker. Time is injected through record timestamps
//! (old records expire at once), not waited for; the background cleaner runs every 50 ms.

mod common;

use std::time::Duration;

use common::{
    create_topic_from_body, get_json_ok, offsets_of_records, produce_json_acks_all,
    read_partition_to_high_watermark, wait_until,
};

use serde_json::{Value, json};

const CONFIG: &str = "retention_check_interval_ms = 50\n";
/// How long the background cleaner may take to get to a change.
const WAIT: Duration = Duration::from_secs(20);

/// Reads partition 0 of `topic` from its log start to its high watermark.
async fn read_all(http: &common::Client, url: &str, topic: &str) -> Vec<Value> {
    read_partition_to_high_watermark(http, url, topic, 0)
        .await
        .records
}

#[tokio::test]
async fn expired_segments_are_deleted_and_consumers_below_start_get_the_range() {
    let broker = common::TestBroker::start_with_config(CONFIG);
    let (http, url) = (broker.client(), broker.url.clone());
    create_topic_from_body(
        &http,
        &url,
        json!({"name":"expiring","partitions":1,
        "config":{"segment_bytes":1024,"retention_ms":3600000}}),
    )
    .await;
    // 40 records stamped two hours ago fill several small segments, then fresh ones.
    let old: Vec<Value> = (0..40)
        .map(|i| json!({"value": format!("old-{i:040}"), "timestamp_ms": 1_000 + i}))
        .collect();
    produce_json_acks_all(&http, &url, "expiring", json!(old)).await;
    for i in 0..10 {
        // One batch each, so the fresh records sit in segments of their own.
        produce_json_acks_all(
            &http,
            &url,
            "expiring",
            json!([{"value": format!("new-{i:040}")}]),
        )
        .await;
    }
    wait_until("log start to move past the old records", WAIT, || async {
        get_json_ok(&http, &url, "/v1/topics/expiring").await["partitions"][0]["log_start_offset"]
            .as_u64()
            .unwrap()
            >= 40
    })
    .await;
    let records = read_all(&http, &url, "expiring").await;
    assert!(
        records
            .iter()
            .all(|r| r["value"].as_str().unwrap().starts_with("new-"))
    );
    assert_eq!(
        records.last().unwrap()["offset"],
        49,
        "fresh records keep their offsets"
    );
    let r = http
        .get(format!(
            "{url}/v1/topics/expiring/partitions/0/records?offset=0"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "offset_out_of_range");
    assert!(problem["log_start_offset"].as_u64().unwrap() >= 40);
}

/// Topic `profiles`: one partition, compacted, 1 KiB segments, tombstones kept no time.
async fn create_profiles(http: &common::Client, url: &str) {
    create_topic_from_body(
        http,
        url,
        json!({"name":"profiles","partitions":1,
        "config":{"segment_bytes":1024,"cleanup_policy":"compact","delete_retention_ms":0}}),
    )
    .await;
}

/// 20 rounds of one record for each of `user-0` to `user-4` (value `{"round": r}`); the
/// produce answers, one per round.
async fn produce_rounds(http: &common::Client, url: &str) -> Vec<Value> {
    let mut answers = Vec::new();
    for round in 0..20 {
        let batch: Vec<Value> = (0..5)
            .map(|k| json!({"key": format!("user-{k}"), "value": {"round": round}}))
            .collect();
        answers.push(produce_json_acks_all(http, url, "profiles", json!(batch)).await);
    }
    answers
}

/// Rolls the last segment out of the active position with fillers under another key.
async fn produce_fillers(http: &common::Client, url: &str) {
    for _ in 0..12 {
        produce_json_acks_all(
            http,
            url,
            "profiles",
            json!([{"key":"filler","value":"x".repeat(100)}]),
        )
        .await;
    }
}

#[tokio::test]
async fn compacted_topic_keeps_the_latest_value_per_key() {
    let broker = common::TestBroker::start_with_config(CONFIG);
    let (http, url) = (broker.client(), broker.url.clone());
    create_profiles(&http, &url).await;
    let mut latest = std::collections::BTreeMap::new();
    for (round, answer) in produce_rounds(&http, &url).await.iter().enumerate() {
        for (k, o) in answer["offsets"].as_array().unwrap().iter().enumerate() {
            latest.insert(
                format!("user-{k}"),
                (o["offset"].as_u64().unwrap(), json!({"round": round})),
            );
        }
    }
    // user-4 is deleted; with delete_retention_ms = 0 its tombstone goes too.
    produce_json_acks_all(
        &http,
        &url,
        "profiles",
        json!([{"key":"user-4","value":null}]),
    )
    .await;
    latest.remove("user-4");
    produce_fillers(&http, &url).await;
    wait_until("compaction to drop superseded records", WAIT, || async {
        let records = read_all(&http, &url, "profiles").await;
        records.iter().filter(|r| r["key"] != "filler").count() == latest.len()
    })
    .await;
    let records = read_all(&http, &url, "profiles").await;
    for r in records.iter().filter(|r| r["key"] != "filler") {
        let (offset, value) = &latest[r["key"].as_str().unwrap()];
        assert_eq!(&r["offset"], offset, "offsets never change");
        assert_eq!(&r["value"], value);
    }
    let offsets = offsets_of_records(&records);
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "still in order: {offsets:?}"
    );
}

/// Compaction empties whole segments of superseded records and leaves offset ranges with no
/// record. A group whose position lies in such a range (a new group reads from the log
/// start) must read on past it: before, the member fetch dropped a partition that showed no
/// record, so every fetch answered nothing and nothing could be committed to move on.
#[tokio::test]
async fn a_group_reads_on_past_the_ranges_compaction_emptied() {
    let broker = common::TestBroker::start_with_config(CONFIG);
    let (http, url) = (broker.client(), broker.url.clone());
    create_profiles(&http, &url).await;
    produce_rounds(&http, &url).await;
    produce_fillers(&http, &url).await;
    // Until the log starts with a range that holds no record.
    wait_until("compaction to empty the first offsets", WAIT, || async {
        read_all(&http, &url, "profiles").await[0]["offset"] != 0
    })
    .await;
    let kept = offsets_of_records(&read_all(&http, &url, "profiles").await);

    let joined = http
        .post(format!("{url}/v1/groups/g/members"))
        .json(&json!({"topics":["profiles"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(joined.status(), 201);
    let joined: Value = joined.json().await.unwrap();
    let member = joined["member_id"].as_str().unwrap().to_string();
    let generation = joined["generation"].clone();
    let last = *kept.last().unwrap();
    let mut delivered: Vec<u64> = Vec::new();
    // Bounded: a few fetches are enough once the emptied ranges are passed.
    for _ in 0..20 {
        if delivered.last() == Some(&last) {
            break;
        }
        let answer = get_json_ok(
            &http,
            &url,
            &format!("/v1/groups/g/members/{member}/records?max_records=1000&wait_ms=200"),
        )
        .await;
        delivered.extend(offsets_of_records(answer["records"].as_array().unwrap()));
        let next = answer["next_offsets"].as_array().unwrap();
        if !next.is_empty() {
            let committed = http
                .post(format!("{url}/v1/groups/g/offsets"))
                .json(&json!({"member_id": member, "generation": generation, "offsets": next}))
                .send()
                .await
                .unwrap();
            assert_eq!(committed.status(), 200);
        }
    }
    // The cleaner goes on meanwhile and may take more superseded records: the group gets
    // each record once, in order, among those there when it joined, and every one still
    // there after it read them all.
    assert_eq!(
        delivered.last(),
        Some(&last),
        "read to the end: {delivered:?}"
    );
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "{delivered:?}");
    assert!(
        delivered.iter().all(|o| kept.contains(o)),
        "{delivered:?} of {kept:?}"
    );
    let after = offsets_of_records(&read_all(&http, &url, "profiles").await);
    assert!(
        after.iter().all(|o| delivered.contains(o)),
        "{after:?} all in {delivered:?}"
    );
}
