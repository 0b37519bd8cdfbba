//! Retention and compaction on a live broker. Time is injected through record timestamps
//! (old records expire at once), not waited for; the background cleaner runs every 50 ms.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CONFIG: &str = "retention_check_interval_ms = 50\n";

async fn create(http: &reqwest::Client, url: &str, body: Value) {
    let r = http
        .post(format!("{url}/v1/topics"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

async fn produce(http: &reqwest::Client, url: &str, topic: &str, records: Value) -> Value {
    let r = http
        .post(format!("{url}/v1/topics/{topic}/records"))
        .json(&json!({ "records": records }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn describe(http: &reqwest::Client, url: &str, topic: &str) -> Value {
    http.get(format!("{url}/v1/topics/{topic}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Reads a whole partition from the log start, following `next_offset`.
async fn read_all(http: &reqwest::Client, url: &str, topic: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut offset = "earliest".to_string();
    for _ in 0..1_000 {
        let page: Value = http
            .get(format!(
                "{url}/v1/topics/{topic}/partitions/0/records?offset={offset}&max_records=1000"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.extend(page["records"].as_array().unwrap().iter().cloned());
        let next = page["next_offset"].as_u64().unwrap();
        if next >= page["high_watermark"].as_u64().unwrap() {
            return out;
        }
        offset = next.to_string();
    }
    panic!("the partition did not end");
}

/// Polls `check` until it holds, for at most 20 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn expired_segments_are_deleted_and_consumers_below_start_get_the_range() {
    let broker = common::TestBroker::start_with_config(CONFIG);
    let (http, url) = (broker.client(), broker.url.clone());
    create(
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
    produce(&http, &url, "expiring", json!(old)).await;
    for i in 0..10 {
        // One batch each, so the fresh records sit in segments of their own.
        produce(
            &http,
            &url,
            "expiring",
            json!([{"value": format!("new-{i:040}")}]),
        )
        .await;
    }
    eventually("log start to move past the old records", || async {
        describe(&http, &url, "expiring").await["partitions"][0]["log_start_offset"]
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

#[tokio::test]
async fn compacted_topic_keeps_the_latest_value_per_key() {
    let broker = common::TestBroker::start_with_config(CONFIG);
    let (http, url) = (broker.client(), broker.url.clone());
    create(
        &http,
        &url,
        json!({"name":"profiles","partitions":1,
        "config":{"segment_bytes":1024,"cleanup_policy":"compact","delete_retention_ms":0}}),
    )
    .await;
    let mut latest = std::collections::BTreeMap::new();
    for round in 0..20 {
        let batch: Vec<Value> = (0..5)
            .map(|k| json!({"key": format!("user-{k}"), "value": {"round": round}}))
            .collect();
        let answer = produce(&http, &url, "profiles", json!(batch)).await;
        for (k, o) in answer["offsets"].as_array().unwrap().iter().enumerate() {
            latest.insert(
                format!("user-{k}"),
                (o["offset"].as_u64().unwrap(), json!({"round": round})),
            );
        }
    }
    // user-4 is deleted; with delete_retention_ms = 0 its tombstone goes too.
    produce(
        &http,
        &url,
        "profiles",
        json!([{"key":"user-4","value":null}]),
    )
    .await;
    latest.remove("user-4");
    // Roll the last segment out of the active position with fillers under another key.
    for _ in 0..12 {
        produce(
            &http,
            &url,
            "profiles",
            json!([{"key":"filler","value":"x".repeat(100)}]),
        )
        .await;
    }
    eventually("compaction to drop superseded records", || async {
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
    let offsets: Vec<u64> = records
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "still in order: {offsets:?}"
    );
}
