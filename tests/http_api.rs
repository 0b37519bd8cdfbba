//! The HTTP API of a single-node broker, end to end: every endpoint against a real broker
//! process on a loopback port (see `tests/common`).
//!
//! Each test starts its own broker, so tests never share state. Timing is never asserted
//! beyond "answered before the wait the client asked for ran out".

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::client::Response;
use common::{Api, TestBroker, offsets_of_records, produced_partition_offsets};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The calls this file's tests need, on the shared client.
impl Api {
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("the broker answers")
    }

    /// Sends a request and returns the status and the JSON body (`Null` when empty).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let response = self.send(method, path, body).await;
        let status = response.status();
        let text = response.text().await.expect("a body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        (status, json)
    }

    /// Sends a request that must succeed with a 200; returns its JSON body.
    async fn call_ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {answer}");
        answer
    }

    /// Sends a request that must be refused with a problem+json of this status and code;
    /// returns the problem.
    async fn call_expecting_problem(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: StatusCode,
        code: &str,
    ) -> Value {
        assert_problem(self.send(method, path, body).await, status, code).await
    }

    /// POSTs a raw body (NDJSON, octet-stream, a stream) with its content type.
    async fn post_body(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        self.http
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("the broker answers")
    }

    /// GETs a partition-0 SSE stream (`query` after the `?`, an optional `Last-Event-ID`).
    async fn open_stream(
        &self,
        topic: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> SseReader {
        let mut url = format!("{}/v1/topics/{topic}/partitions/0/stream", self.url);
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        let mut request = self.http.get(url);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        SseReader::new(request.send().await.expect("the broker answers"))
    }

    async fn create_topic(&self, name: &str, partitions: u32) -> Value {
        common::create_topic(&self.http, &self.url, name, partitions).await
    }

    async fn describe(&self, topic: &str) -> Value {
        common::get_json_ok(&self.http, &self.url, &format!("/v1/topics/{topic}")).await
    }

    /// How many partitions `describe` lists for `topic`.
    async fn partition_count(&self, topic: &str) -> usize {
        self.describe(topic).await["partitions"]
            .as_array()
            .expect("partitions")
            .len()
    }

    /// Produces a JSON body with `acks=all`; returns the `(partition, offset)` pairs.
    async fn produce(&self, topic: &str, records: Value) -> Vec<(u64, u64)> {
        let answer = common::produce_json_acks_all(&self.http, &self.url, topic, records).await;
        produced_partition_offsets(&answer)
    }

    /// One fetch; panics unless it is a 200.
    async fn fetch(&self, topic: &str, partition: u32, query: &str) -> Value {
        common::get_json_ok(
            &self.http,
            &self.url,
            &format!("/v1/topics/{topic}/partitions/{partition}/records?{query}"),
        )
        .await
    }

    /// Every record of a partition from `earliest` to the high watermark (bounded loop).
    async fn fetch_all(&self, topic: &str, partition: u32) -> Vec<Value> {
        common::read_partition_to_high_watermark(&self.http, &self.url, topic, partition.into())
            .await
            .records
    }

    /// The values of `fetch_all`, in offset order.
    async fn fetch_all_values(&self, topic: &str, partition: u32) -> Vec<Value> {
        self.fetch_all(topic, partition)
            .await
            .iter()
            .map(|r| r["value"].clone())
            .collect()
    }
}

/// Asserts a 200 answer and returns its JSON body.
async fn assert_ok_json(response: Response) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("a JSON body")
}

/// Asserts a problem+json answer with the given status and stable code.
async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    body
}

// ---------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn create_topic_answers_201_with_its_description_and_409_when_it_exists() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    let created = api.create_topic("orders", 3).await;
    assert_eq!(created["name"], "orders");
    assert_eq!(created["replication_factor"], 1);
    let partitions = created["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 3);
    for (i, p) in partitions.iter().enumerate() {
        assert_eq!(p["partition"], i as u64);
        assert_eq!(p["leader"], 1);
        assert_eq!(p["isr"], json!([1]));
        assert_eq!(p["log_start_offset"], 0);
        assert_eq!(p["high_watermark"], 0);
    }
    assert!(created["config"]["retention_ms"].is_i64(), "{created}");

    api.call_expecting_problem(
        Method::POST,
        "/v1/topics",
        Some(json!({"name": "orders", "partitions": 1})),
        StatusCode::CONFLICT,
        "topic_exists",
    )
    .await;
    // The 409 left the existing topic alone.
    assert_eq!(api.partition_count("orders").await, 3);
}

#[tokio::test]
async fn create_topic_takes_a_partial_config() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/topics",
            Some(json!({"name": "cfg", "config": {"retention_ms": 60000}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["config"]["retention_ms"], 60000);
    assert_eq!(body["config"]["cleanup_policy"], "delete");
    assert_eq!(body["partitions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn list_and_describe_show_each_partitions_offsets_and_size() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("b-topic", 2).await;
    api.create_topic("a-topic", 1).await;
    api.produce(
        "b-topic",
        json!([
            {"value": 1, "partition": 0},
            {"value": 2, "partition": 0},
            {"value": 3, "partition": 0}
        ]),
    )
    .await;

    let (status, list) = api.call(Method::GET, "/v1/topics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list["topics"],
        json!([
            {"name": "a-topic", "partitions": 1},
            {"name": "b-topic", "partitions": 2}
        ])
    );

    let described = api.describe("b-topic").await;
    let p0 = &described["partitions"][0];
    assert_eq!(p0["log_start_offset"], 0);
    assert_eq!(p0["high_watermark"], 3);
    assert_eq!(p0["log_end_offset"], 3);
    assert_eq!(p0["segments"], 1);
    assert!(p0["size_bytes"].as_u64().unwrap() > 0, "{p0}");
    let p1 = &described["partitions"][1];
    assert_eq!(p1["high_watermark"], 0);
    assert_eq!(p1["log_end_offset"], 0);
    assert_eq!(p1["size_bytes"], 0);

    api.call_expecting_problem(
        Method::GET,
        "/v1/topics/nope",
        None,
        StatusCode::NOT_FOUND,
        "topic_not_found",
    )
    .await;
}

#[tokio::test]
async fn patch_config_merges_into_the_current_config_and_refuses_unknown_keys() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    let before = api.create_topic("cfg", 1).await["config"].clone();

    let after = api
        .call_ok(
            Method::PATCH,
            "/v1/topics/cfg",
            Some(json!({"retention_ms": 123456})),
        )
        .await;
    let mut expected = before.clone();
    expected["retention_ms"] = json!(123456);
    assert_eq!(after["config"], expected);

    // The `{"config": {...}}` form merges the same way, keeping the earlier change.
    let after = api
        .call_ok(
            Method::PATCH,
            "/v1/topics/cfg",
            Some(json!({"config": {"cleanup_policy": "compact"}})),
        )
        .await;
    expected["cleanup_policy"] = json!("compact");
    assert_eq!(after["config"], expected);
    assert_eq!(api.describe("cfg").await["config"], expected);

    api.call_expecting_problem(
        Method::PATCH,
        "/v1/topics/cfg",
        Some(json!({"retention_hours": 1})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    api.call_expecting_problem(
        Method::PATCH,
        "/v1/topics/cfg",
        Some(json!({"segment_bytes": 1})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    // Refused patches change nothing.
    assert_eq!(api.describe("cfg").await["config"], expected);

    api.call_expecting_problem(
        Method::PATCH,
        "/v1/topics/nope",
        Some(json!({"retention_ms": 1})),
        StatusCode::NOT_FOUND,
        "topic_not_found",
    )
    .await;
}

#[tokio::test]
async fn deleted_topic_leaves_no_files_and_its_name_starts_again_at_offset_zero() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("gone", 2).await;
    api.produce(
        "gone",
        json!([{"value": "old-0"}, {"value": "old-1"}, {"value": "old-2"}]),
    )
    .await;
    let topic_dir = broker.data_dir.join("topics").join("gone");
    assert!(topic_dir.exists());

    let (status, body) = api.call(Method::DELETE, "/v1/topics/gone", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(!topic_dir.exists(), "the topic directory is still there");
    api.call_expecting_problem(
        Method::GET,
        "/v1/topics/gone",
        None,
        StatusCode::NOT_FOUND,
        "topic_not_found",
    )
    .await;
    api.call_expecting_problem(
        Method::GET,
        "/v1/topics/gone/partitions/0/records",
        None,
        StatusCode::NOT_FOUND,
        "topic_not_found",
    )
    .await;
    let (_, list) = api.call(Method::GET, "/v1/topics", None).await;
    assert_eq!(list["topics"], json!([]));
    api.call_expecting_problem(
        Method::DELETE,
        "/v1/topics/gone",
        None,
        StatusCode::NOT_FOUND,
        "topic_not_found",
    )
    .await;

    // The files leave the data directory altogether (in the background).
    common::wait_until(
        "the deleted topic's files to leave the data directory",
        Duration::from_secs(5),
        || async {
            files_under(&broker.data_dir)
                .iter()
                .all(|p| !p.to_string_lossy().contains("gone"))
        },
    )
    .await;

    api.create_topic("gone", 1).await;
    let offsets = api.produce("gone", json!([{"value": "new-0"}])).await;
    assert_eq!(offsets, vec![(0, 0)]);
    let records = api.fetch_all("gone", 0).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["value"], "new-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_the_longest_name_is_deleted_for_good() {
    let mut broker = TestBroker::start();
    let api = Api::new(&broker);
    let name = "n".repeat(249);
    api.create_topic(&name, 1).await;
    api.produce(&name, json!([{"value": 1}])).await;
    let (status, body) = api
        .call(Method::DELETE, &format!("/v1/topics/{name}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // Deleted means deleted across a restart too.
    tokio::task::block_in_place(|| broker.restart());
    let api = Api::new(&broker);
    let (_, list) = api.call(Method::GET, "/v1/topics", None).await;
    assert_eq!(list["topics"], json!([]));
    api.create_topic(&name, 1).await;
    assert!(api.fetch_all(&name, 0).await.is_empty());
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn expanding_partitions_adds_writable_partitions_and_keeps_the_old_ones() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("grow", 1).await;
    api.produce("grow", json!([{"value": "before"}])).await;

    let body = api
        .call_ok(
            Method::POST,
            "/v1/topics/grow/partitions",
            Some(json!({"count": 3})),
        )
        .await;
    assert_eq!(body["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(api.partition_count("grow").await, 3);
    let offsets = api
        .produce("grow", json!([{"value": "p2", "partition": 2}]))
        .await;
    assert_eq!(offsets, vec![(2, 0)]);
    assert_eq!(api.fetch_all("grow", 2).await[0]["value"], "p2");
    assert_eq!(api.fetch_all("grow", 0).await[0]["value"], "before");

    api.call_expecting_problem(
        Method::POST,
        "/v1/topics/grow/partitions",
        Some(json!({"count": 2})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    api.call_expecting_problem(
        Method::POST,
        "/v1/topics/grow/partitions",
        Some(json!({"count": 3})),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
}

#[tokio::test]
async fn delete_records_moves_the_log_start_and_older_offsets_are_out_of_range() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("trim", 1).await;
    let records: Vec<Value> = (0..10).map(|i| json!({"value": i})).collect();
    api.produce("trim", Value::Array(records)).await;

    let body = api
        .call_ok(
            Method::POST,
            "/v1/topics/trim/partitions/0/delete-records",
            Some(json!({"before_offset": 4})),
        )
        .await;
    assert_eq!(body["log_start_offset"], 4);
    let p0 = &api.describe("trim").await["partitions"][0];
    assert_eq!(p0["log_start_offset"], 4);
    assert_eq!(p0["high_watermark"], 10);

    let problem = api
        .call_expecting_problem(
            Method::GET,
            "/v1/topics/trim/partitions/0/records?offset=2",
            None,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "offset_out_of_range",
        )
        .await;
    assert_eq!(problem["log_start_offset"], 4);
    assert_eq!(problem["high_watermark"], 10);

    let earliest = api.fetch("trim", 0, "offset=earliest").await;
    let offsets = offsets_of_records(earliest["records"].as_array().unwrap());
    assert_eq!(offsets, (4..10).collect::<Vec<_>>());
    assert_eq!(earliest["records"][0]["value"], 4);

    // Moving it backwards is a no-op, not an error.
    let body = api
        .call_ok(
            Method::POST,
            "/v1/topics/trim/partitions/0/delete-records",
            Some(json!({"before_offset": 1})),
        )
        .await;
    assert_eq!(body["log_start_offset"], 4);

    api.call_expecting_problem(
        Method::POST,
        "/v1/topics/trim/partitions/0/delete-records",
        Some(json!({"before_offset": 11})),
        StatusCode::RANGE_NOT_SATISFIABLE,
        "offset_out_of_range",
    )
    .await;
}

#[tokio::test]
async fn with_auto_create_the_first_produce_creates_the_topic_with_the_default_partitions() {
    let broker =
        TestBroker::start_with_config("auto_create_topics = true\ndefault_partitions = 3\n");
    let api = Api::new(&broker);
    let offsets = api.produce("fresh", json!([{"value": 1}])).await;
    assert_eq!(offsets.len(), 1);
    assert_eq!(api.partition_count("fresh").await, 3);
}

/// Auto-creation is off unless configured: a typo in a topic name is a 404, not a new topic.
#[tokio::test]
async fn by_default_a_produce_to_a_missing_topic_is_404() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.call_expecting_problem(
        Method::POST,
        "/v1/topics/fresh/records",
        Some(json!({"records": [{"value": 1}]})),
        StatusCode::NOT_FOUND,
        "topic_not_found",
    )
    .await;
    let (_, list) = api.call(Method::GET, "/v1/topics", None).await;
    assert_eq!(list["topics"], json!([]));
}

// ---------------------------------------------------------------------------------------
// Produce
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn json_records_round_trip_key_value_headers_partition_and_timestamp() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("rt", 2).await;
    let values = [
        json!({"nested": {"list": [1, 2.5, "three", null, true]}}),
        json!("a string with \"quotes\", unicode ünïcødé and a \n newline"),
        json!(42),
        json!([]),
    ];
    let records: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "key": format!("key-{i}"),
                "value": v,
                "headers": {"trace": format!("t{i}"), "content-kind": "test"},
                "partition": 1,
                "timestamp_ms": 1_700_000_000_000i64 + i as i64,
            })
        })
        .collect();
    let offsets = api.produce("rt", Value::Array(records)).await;
    assert_eq!(offsets, vec![(1, 0), (1, 1), (1, 2), (1, 3)]);

    let fetched = api.fetch_all("rt", 1).await;
    assert_eq!(fetched.len(), values.len());
    for (i, (record, value)) in fetched.iter().zip(&values).enumerate() {
        assert_eq!(record["partition"], 1);
        assert_eq!(record["offset"], i as u64);
        assert_eq!(record["key"], format!("key-{i}"));
        assert_eq!(&record["value"], value);
        assert_eq!(
            record["headers"],
            json!({"trace": format!("t{i}"), "content-kind": "test"})
        );
        assert_eq!(record["timestamp_ms"], 1_700_000_000_000i64 + i as i64);
    }
    assert!(api.fetch_all("rt", 0).await.is_empty());

    // A record without a value is a tombstone and comes back as null.
    let offsets = api
        .produce("rt", json!([{"key": "k", "partition": 0}]))
        .await;
    assert_eq!(offsets, vec![(0, 0)]);
    let tombstone = &api.fetch_all("rt", 0).await[0];
    assert_eq!(tombstone["value"], Value::Null);
    assert_eq!(tombstone["key"], "k");
    assert!(tombstone["timestamp_ms"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn binary_keys_and_values_round_trip_through_base64() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    let value: Vec<u8> = (0..=255u8).rev().collect();
    let key: Vec<u8> = vec![0xff, 0x00, 0xfe, 0x80];
    api.create_topic("bin", 1).await;
    api.produce(
        "bin",
        json!([{"key_b64": B64.encode(&key), "value_b64": B64.encode(&value)}]),
    )
    .await;
    let record = &api.fetch_all("bin", 0).await[0];
    assert_eq!(
        B64.decode(record["value_b64"].as_str().unwrap()).unwrap(),
        value
    );
    assert_eq!(
        B64.decode(record["key_b64"].as_str().unwrap()).unwrap(),
        key
    );
    assert!(record.get("value").is_none(), "{record}");
    assert!(record.get("key").is_none(), "{record}");
}

#[tokio::test]
async fn a_large_ndjson_body_gets_dense_offsets_in_request_order() {
    const RECORDS: usize = 50_000;
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("lines", 1).await;
    let padding = "x".repeat(100);
    let mut body = String::new();
    for i in 0..RECORDS {
        body.push_str(&format!(
            "{{\"key\":\"k{}\",\"value\":{{\"i\":{i},\"pad\":\"{padding}\"}}}}\n",
            i % 7
        ));
    }
    // Larger than the default ndjson_batch_bytes (4 MiB), so the broker appends it in
    // several batches.
    assert!(body.len() > 6 * 1024 * 1024, "{} bytes", body.len());
    let answer = assert_ok_json(
        api.post_body("/v1/topics/lines/records", "application/x-ndjson", body)
            .await,
    )
    .await;
    let offsets = produced_partition_offsets(&answer);
    assert_eq!(offsets.len(), RECORDS);
    for (i, (partition, offset)) in offsets.iter().enumerate() {
        assert_eq!((*partition, *offset), (0, i as u64));
    }

    let records = api.fetch_all("lines", 0).await;
    assert_eq!(records.len(), RECORDS);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["offset"], i as u64);
        assert_eq!(record["value"]["i"], i as u64, "record {i} out of order");
        assert_eq!(record["key"], format!("k{}", i % 7));
    }
}

#[tokio::test]
async fn ndjson_accepts_crlf_blank_lines_and_no_final_newline() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("nd", 1).await;
    let body = "{\"value\":0}\r\n\n{\"value\":1}\n   \n{\"value\":2}";
    let answer = assert_ok_json(
        api.post_body("/v1/topics/nd/records", "application/x-ndjson", body)
            .await,
    )
    .await;
    assert_eq!(
        produced_partition_offsets(&answer),
        vec![(0, 0), (0, 1), (0, 2)]
    );
    let values = api.fetch_all_values("nd", 0).await;
    assert_eq!(values, vec![json!(0), json!(1), json!(2)]);
}

/// Posts an NDJSON body in two chunks: `first`, then `second` once the broker has appended
/// part of `first` (the partition's high watermark left 0), so `second` can only land in a
/// later batch. Returns the status and the JSON answer.
async fn post_ndjson_after_a_batch(
    api: &Api,
    topic: &str,
    first: String,
    second: String,
) -> (StatusCode, Value) {
    let http = api.http.clone();
    let url = api.url.clone();
    let describe = format!("/v1/topics/{topic}");
    let parts = futures_util::stream::iter([first, second])
        .enumerate()
        .then(move |(i, part)| {
            let http = http.clone();
            let url = url.clone();
            let describe = describe.clone();
            async move {
                for _ in 0..200 {
                    if i == 0 {
                        break;
                    }
                    let described = common::get_json_ok(&http, &url, &describe).await;
                    if described["partitions"][0]["high_watermark"].as_u64() > Some(0) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Ok::<_, std::io::Error>(part.into_bytes())
            }
        });
    let response = api
        .post_body(
            &format!("/v1/topics/{topic}/records"),
            "application/x-ndjson",
            reqwest::Body::wrap_stream(parts),
        )
        .await;
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// `{"value":i}` lines for `range`.
fn value_lines(range: std::ops::Range<u64>) -> String {
    range.map(|i| format!("{{\"value\":{i}}}\n")).collect()
}

/// The stored-records members of an NDJSON failure agree with each other and with the log:
/// `appended_records` N, `offsets` the first N lines' offsets, the partition holds exactly the
/// first N values. Returns N.
async fn assert_reports_what_was_stored(api: &Api, topic: &str, problem: &Value) -> u64 {
    let appended = problem["appended_records"]
        .as_u64()
        .unwrap_or_else(|| panic!("no appended_records in {problem}"));
    let offsets = produced_partition_offsets(problem);
    let expected: Vec<(u64, u64)> = (0..appended).map(|o| (0, o)).collect();
    assert_eq!(offsets, expected, "{problem}");
    let values = api.fetch_all_values(topic, 0).await;
    let expected: Vec<Value> = (0..appended).map(|i| json!(i)).collect();
    assert_eq!(values, expected, "{problem}");
    let said = match appended {
        1 => "the first record of the body was stored".to_string(),
        n => format!("the first {n} records of the body were stored"),
    };
    assert!(
        problem["detail"].as_str().unwrap().contains(&said),
        "{problem}"
    );
    assert_eq!(problem["unconfirmed_records"], 0, "{problem}");
    appended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_failure_after_appended_batches_reports_the_stored_records() {
    let broker = TestBroker::start_with_config(
        "[limits]\nndjson_batch_bytes = 256\nrequest_body_bytes_max = 4096\nrecord_bytes_max = 1024\n",
    );
    let api = Api::new(&broker);
    let good = value_lines(0..30);
    assert!(good.len() > 256 && good.len() < 1024);
    let big = format!("{{\"value\":\"{}\"}}\n", "x".repeat(2000));
    let over = value_lines(30..400);
    let failures = [
        (
            "bad-line",
            format!("not json\n{}", value_lines(30..32)),
            400,
            "invalid_request",
        ),
        ("too-large", big, 413, "record_too_large"),
        ("over-body", over, 413, "body_too_large"),
    ];
    for (topic, second, status, code) in failures {
        api.create_topic(topic, 1).await;
        let (got, problem) = post_ndjson_after_a_batch(&api, topic, good.clone(), second).await;
        assert_eq!(got.as_u16(), status, "{topic}: {problem}");
        assert_eq!(problem["code"], code, "{topic}: {problem}");
        let appended = assert_reports_what_was_stored(&api, topic, &problem).await;
        assert!(
            (1..=30).contains(&appended),
            "{topic}: the first chunk was appended before the second was sent: {problem}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_per_request_max_counts_a_whole_ndjson_body_not_one_batch() {
    let broker = TestBroker::start_with_config(
        "[limits]\nndjson_batch_bytes = 256\nrecords_per_request_max = 60\n",
    );
    let api = Api::new(&broker);
    api.create_topic("counted", 1).await;
    // Every batch holds about 20 records, well under 60; the body holds 100.
    let (got, problem) =
        post_ndjson_after_a_batch(&api, "counted", value_lines(0..30), value_lines(30..100)).await;
    assert_eq!(got.as_u16(), 400, "{problem}");
    assert_eq!(problem["code"], "limit_exceeded");
    assert_eq!(problem["limit_name"], "records_per_request_max");
    assert_eq!(problem["limit"], 60);
    let appended = assert_reports_what_was_stored(&api, "counted", &problem).await;
    assert!(
        appended <= 60,
        "never more than the limit is stored: {problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_body_within_one_batch_is_all_or_nothing() {
    let broker = TestBroker::start_with_config("[limits]\nndjson_batch_bytes = 4096\n");
    let api = Api::new(&broker);
    api.create_topic("whole", 1).await;
    // Sent in pieces with pauses, yet under one batch: nothing may be appended before the
    // bad last line is seen.
    let pieces = [
        value_lines(0..10),
        value_lines(10..20),
        "{\"value\":20}\n{\"value\":\"unterminated}\n".to_string(),
    ];
    let parts = futures_util::stream::iter(pieces).then(|part| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, std::io::Error>(part.into_bytes())
    });
    let response = api
        .post_body(
            "/v1/topics/whole/records",
            "application/x-ndjson",
            reqwest::Body::wrap_stream(parts),
        )
        .await;
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(problem["line"], 22, "{problem}");
    assert_eq!(problem["appended_records"], 0, "{problem}");
    assert_eq!(problem["offsets"], json!([]), "{problem}");
    assert!(api.fetch_all("whole", 0).await.is_empty());
}

#[tokio::test]
async fn an_octet_stream_body_is_one_value_with_key_and_partition_from_the_query() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("raw", 2).await;
    let value: Vec<u8> = vec![0x00, 0xff, 0x10, b'{', 0xc3];
    let answer = assert_ok_json(
        api.post_body(
            "/v1/topics/raw/records?key=d%C3%A9vice%209&partition=1&timestamp_ms=1234",
            "application/octet-stream",
            value.clone(),
        )
        .await,
    )
    .await;
    assert_eq!(produced_partition_offsets(&answer), vec![(1, 0)]);

    let record = &api.fetch_all("raw", 1).await[0];
    assert_eq!(record["key"], "dévice 9");
    assert_eq!(record["timestamp_ms"], 1234);
    assert_eq!(
        B64.decode(record["value_b64"].as_str().unwrap()).unwrap(),
        value
    );
    assert!(api.fetch_all("raw", 0).await.is_empty());
}

#[tokio::test]
async fn same_key_goes_to_the_same_partition_and_unkeyed_records_spread() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("spread", 4).await;

    let mut key_partitions: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for round in 0..3 {
        let records: Vec<Value> = (0..24)
            .map(|i| json!({"key": format!("user-{}", i % 8), "value": round}))
            .collect();
        let offsets = api.produce("spread", Value::Array(records)).await;
        for (i, (partition, _)) in offsets.iter().enumerate() {
            key_partitions
                .entry(format!("user-{}", i % 8))
                .or_default()
                .insert(*partition);
        }
    }
    for (key, partitions) in &key_partitions {
        assert_eq!(partitions.len(), 1, "{key} went to {partitions:?}");
    }

    let unkeyed: Vec<Value> = (0..40).map(|i| json!({"value": i})).collect();
    let offsets = api.produce("spread", Value::Array(unkeyed)).await;
    let used: BTreeSet<u64> = offsets.iter().map(|(p, _)| *p).collect();
    assert!(used.len() >= 2, "40 unkeyed records all went to {used:?}");

    // One offset per record in request order: within each partition they increase.
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (partition, offset) in &offsets {
        if let Some(previous) = last.insert(*partition, *offset) {
            assert_eq!(*offset, previous + 1, "partition {partition}: {offsets:?}");
        }
    }
    // And what each partition serves is what the answers said, in that order.
    for partition in 0..4u32 {
        let records = api.fetch_all("spread", partition).await;
        let served = offsets_of_records(&records);
        assert_eq!(served, (0..served.len() as u64).collect::<Vec<_>>());
    }
    for (i, (partition, offset)) in offsets.iter().enumerate() {
        let records = api
            .fetch(
                "spread",
                *partition as u32,
                &format!("offset={offset}&max_records=1"),
            )
            .await;
        assert_eq!(records["records"][0]["value"], i as u64);
    }
}

#[tokio::test]
async fn acks_modes_say_which_durability_held_in_body_and_header() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("acks", 1).await;
    let body = json!({"records": [{"value": "x"}]});
    for (expected_offset, (acks, durability)) in [
        (None, "fsync"),
        (Some("all"), "fsync"),
        (Some("leader"), "leader"),
    ]
    .into_iter()
    .enumerate()
    {
        let query = acks.map_or(String::new(), |a| format!("?acks={a}"));
        let response = api
            .send(
                Method::POST,
                &format!("/v1/topics/acks/records{query}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "acks={acks:?}");
        assert_eq!(
            response.headers()["tidelog-durability"],
            durability,
            "acks={acks:?}"
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["durability"], durability);
        assert_eq!(
            produced_partition_offsets(&answer),
            vec![(0, expected_offset as u64)]
        );
    }

    let response = api
        .send(
            Method::POST,
            "/v1/topics/acks/records?acks=none",
            Some(body.clone()),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.headers()["tidelog-durability"], "none");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["durability"], "none");
    assert!(answer.get("offsets").is_none(), "{answer}");

    // The unacknowledged record still lands, right after the others. The acks=leader and
    // acks=none ones become visible when the flusher syncs them: follow next_offset with
    // long-polls (a fetch above the high watermark would be out of range).
    let mut seen = Vec::new();
    let mut next = 0;
    for _ in 0..20 {
        if seen.len() >= 4 {
            break;
        }
        let page = api
            .fetch("acks", 0, &format!("offset={next}&wait_ms=1000"))
            .await;
        seen.extend(offsets_of_records(page["records"].as_array().unwrap()));
        next = page["next_offset"].as_u64().unwrap();
    }
    assert_eq!(seen, vec![0, 1, 2, 3]);
}

// ---------------------------------------------------------------------------------------
// Consume
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn fetch_starts_at_an_offset_earliest_latest_or_a_timestamp() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("seek", 1).await;
    let records: Vec<Value> = (0..10)
        .map(|i| json!({"value": i, "timestamp_ms": 1_000 * (i + 1)}))
        .collect();
    api.produce("seek", Value::Array(records)).await;

    let earliest = api.fetch("seek", 0, "offset=earliest").await;
    assert_eq!(
        offsets_of_records(earliest["records"].as_array().unwrap()),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(earliest["next_offset"], 10);
    assert_eq!(earliest["high_watermark"], 10);
    // No offset at all means earliest.
    let default = api.fetch("seek", 0, "").await;
    assert_eq!(default["records"], earliest["records"]);

    // A broker alone reads its own replica either way; only `local` is a replica choice.
    let local = api.fetch("seek", 0, "offset=earliest&replica=local").await;
    assert_eq!(local["records"], earliest["records"]);
    let response = api
        .send(
            Method::GET,
            "/v1/topics/seek/partitions/0/records?replica=leader",
            None,
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_request").await;

    let latest = api.fetch("seek", 0, "offset=latest").await;
    assert_eq!(latest["records"], json!([]));
    assert_eq!(latest["next_offset"], 10);

    let middle = api.fetch("seek", 0, "offset=6").await;
    assert_eq!(
        offsets_of_records(middle["records"].as_array().unwrap()),
        vec![6, 7, 8, 9]
    );

    // timestamp 4500 falls between offset 3 (4000) and offset 4 (5000).
    let by_time = api.fetch("seek", 0, "timestamp_ms=4500").await;
    assert_eq!(by_time["records"][0]["offset"], 4);
    assert_eq!(by_time["records"][0]["timestamp_ms"], 5000);
    let exact = api.fetch("seek", 0, "timestamp_ms=7000").await;
    assert_eq!(exact["records"][0]["offset"], 6);
    let before_all = api.fetch("seek", 0, "timestamp_ms=0").await;
    assert_eq!(before_all["records"][0]["offset"], 0);
    let after_all = api.fetch("seek", 0, "timestamp_ms=999999").await;
    assert_eq!(after_all["records"], json!([]));
    assert_eq!(after_all["next_offset"], 10);
}

/// The defaults of `max_records` (500) and `max_bytes` (1 MiB) are bounded by the broker's
/// own limits: a fetch that names neither used to read past a lower `fetch_records_max` or
/// `fetch_bytes_max`, the very limits a fetch naming them is refused for crossing.
#[tokio::test]
async fn a_fetch_without_max_records_or_max_bytes_stays_within_the_configured_limits() {
    let broker =
        TestBroker::start_with_config("[limits]\nfetch_records_max = 3\nfetch_bytes_max = 1000\n");
    let api = Api::new(&broker);
    api.create_topic("small", 1).await;
    let records: Vec<Value> = (0..10).map(|i| json!({"value": i})).collect();
    api.produce("small", Value::Array(records)).await;
    let page = api.fetch("small", 0, "offset=0").await;
    assert_eq!(
        offsets_of_records(page["records"].as_array().unwrap()),
        vec![0, 1, 2],
        "{page}"
    );
    // One batch per request, each of over 400 bytes: 1000 bytes hold two whole batches,
    // never three.
    api.create_topic("big", 1).await;
    let pad = "p".repeat(400);
    for i in 0..6 {
        api.produce("big", json!([{"value": {"i": i, "pad": pad}}]))
            .await;
    }
    let page = api.fetch("big", 0, "offset=0&max_records=3").await;
    assert!(
        page["records"].as_array().unwrap().len() < 3,
        "a fetch read past fetch_bytes_max: {page}"
    );
}

#[tokio::test]
async fn max_records_and_max_bytes_bound_a_fetch_and_next_offset_continues_it() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("page", 1).await;
    // One request per record: one batch per record, so max_bytes can cut between them.
    let pad = "p".repeat(200);
    for i in 0..30 {
        api.produce("page", json!([{"value": {"i": i, "pad": pad}}]))
            .await;
    }

    let page = api.fetch("page", 0, "offset=0&max_records=4").await;
    assert_eq!(
        offsets_of_records(page["records"].as_array().unwrap()),
        vec![0, 1, 2, 3]
    );
    assert_eq!(page["next_offset"], 4);
    let page = api.fetch("page", 0, "offset=4&max_records=4").await;
    assert_eq!(
        offsets_of_records(page["records"].as_array().unwrap()),
        vec![4, 5, 6, 7]
    );

    // A small max_bytes returns fewer records but never none while some are there,
    // from any offset: following next_offset reads every record exactly once.
    let mut offset = 0u64;
    let mut seen = Vec::new();
    for _ in 0..100 {
        if offset >= 30 {
            break;
        }
        let page = api
            .fetch("page", 0, &format!("offset={offset}&max_bytes=300"))
            .await;
        let records = page["records"].as_array().unwrap();
        assert!(
            !records.is_empty(),
            "a fetch at {offset} with max_bytes=300 returned nothing: {page}"
        );
        // Every batch here is one record of more than 200 bytes, so two batches never fit
        // in 300 bytes: a bounded fetch holds exactly one. (Checking `< 30` bit only on the
        // first fetch; from offset 1 on fewer than 30 records remain.)
        assert_eq!(
            records.len(),
            1,
            "a fetch at {offset} with max_bytes=300 returned more than one batch: {page}"
        );
        seen.extend(offsets_of_records(records));
        offset = page["next_offset"].as_u64().unwrap();
    }
    assert_eq!(seen, (0..30).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_long_poll_is_answered_as_soon_as_a_record_arrives() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("poll", 1).await;
    api.produce("poll", json!([{"value": "first"}])).await;

    let started = Instant::now();
    let poll = {
        let http = api.http.clone();
        let url = format!(
            "{}/v1/topics/poll/partitions/0/records?offset=1&wait_ms=5000",
            api.url
        );
        tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await.unwrap();
            (body, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.produce("poll", json!([{"value": "second"}])).await;
    let (body, elapsed) = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("the long-poll ended")
        .unwrap();
    assert_eq!(body["records"][0]["offset"], 1);
    assert_eq!(body["records"][0]["value"], "second");
    assert_eq!(body["next_offset"], 2);
    assert!(
        elapsed < Duration::from_millis(4_900),
        "answered only after the wait ran out ({elapsed:?})"
    );
}

#[tokio::test]
async fn a_long_poll_at_an_offset_not_yet_flushed_waits_for_it() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("lazy", 1).await;
    // acks=leader data is synced within flush_ms; make that long enough to fetch before it.
    api.call_ok(
        Method::PATCH,
        "/v1/topics/lazy",
        Some(json!({"flush_ms": 2000})),
    )
    .await;
    let answer = api
        .call_ok(
            Method::POST,
            "/v1/topics/lazy/records?acks=leader",
            Some(json!({"records": [{"value": "a"}, {"value": "b"}]})),
        )
        .await;
    assert_eq!(produced_partition_offsets(&answer), vec![(0, 0), (0, 1)]);

    // The producer was told offset 1; a consumer long-polling there is answered once the
    // record is durable, never shown it before (only records below the HW are served).
    let body = api.fetch("lazy", 0, "offset=1&wait_ms=10000").await;
    assert_eq!(
        offsets_of_records(body["records"].as_array().unwrap()),
        vec![1]
    );
    assert_eq!(body["high_watermark"], 2);
    // Past the log end is still out of range.
    api.call_expecting_problem(
        Method::GET,
        "/v1/topics/lazy/partitions/0/records?offset=3",
        None,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "offset_out_of_range",
    )
    .await;
}

#[tokio::test]
async fn an_empty_long_poll_returns_after_wait_ms_with_no_records() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("quiet", 1).await;
    api.produce("quiet", json!([{"value": 0}])).await;
    let started = Instant::now();
    let body = api.fetch("quiet", 0, "offset=latest&wait_ms=400").await;
    let elapsed = started.elapsed();
    assert_eq!(body["records"], json!([]));
    assert_eq!(body["next_offset"], 1);
    assert!(
        elapsed >= Duration::from_millis(350),
        "returned before the wait ran out ({elapsed:?})"
    );
}

// ---------------------------------------------------------------------------------------
// Server-sent events
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Reads `text/event-stream` events from a response, each read bounded by a timeout.
struct SseReader {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
}

impl SseReader {
    fn new(response: Response) -> SseReader {
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        SseReader {
            stream: response.bytes_stream().boxed(),
            buffer: Vec::new(),
        }
    }

    /// The next event with an id or data (keep-alive comments are skipped).
    async fn next(&mut self) -> SseEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(event) = self.take_event() {
                if event.id.is_some() || !event.data.is_empty() {
                    return event;
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream is still open")
                .expect("reading the stream");
            self.buffer.extend_from_slice(&chunk);
        }
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        // axum ends lines with `\n`; an event ends at an empty line. Split on bytes so a
        // multi-byte character cut between chunks is never mangled.
        let end = self.buffer.windows(2).position(|w| w == b"\n\n")?;
        let block = String::from_utf8(self.buffer[..end].to_vec()).expect("UTF-8 events");
        self.buffer.drain(..end + 2);
        let mut event = SseEvent::default();
        for line in block.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => event.id = Some(value.to_string()),
                "event" => event.event = Some(value.to_string()),
                "data" => {
                    if !event.data.is_empty() {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                }
                _ => {}
            }
        }
        Some(event)
    }
}

fn assert_record_event(event: &SseEvent, offset: u64, value: &Value) {
    assert_eq!(
        event.id.as_deref(),
        Some(offset.to_string().as_str()),
        "{event:?}"
    );
    assert_eq!(event.event.as_deref(), Some("record"), "{event:?}");
    let data: Value = serde_json::from_str(&event.data).expect("data is a record");
    assert_eq!(data["offset"], offset);
    assert_eq!(data["partition"], 0);
    assert_eq!(&data["value"], value);
}

#[tokio::test]
async fn sse_streams_records_with_their_offsets_as_ids_and_resumes_after_last_event_id() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("events", 1).await;
    api.produce(
        "events",
        json!([{"value": "e0"}, {"value": "e1"}, {"value": "e2"}]),
    )
    .await;
    let mut stream = api.open_stream("events", "offset=earliest", None).await;
    for offset in 0..3 {
        assert_record_event(&stream.next().await, offset, &json!(format!("e{offset}")));
    }
    // Records produced after the stream opened arrive on it.
    api.produce("events", json!([{"value": "e3"}, {"value": "e4"}]))
        .await;
    for offset in 3..5 {
        assert_record_event(&stream.next().await, offset, &json!(format!("e{offset}")));
    }
    drop(stream);

    // A reconnecting client resumes right after the last event it saw.
    let mut resumed = api.open_stream("events", "", Some("2")).await;
    for offset in 3..5 {
        assert_record_event(&resumed.next().await, offset, &json!(format!("e{offset}")));
    }
    api.produce("events", json!([{"value": "e5"}])).await;
    assert_record_event(&resumed.next().await, 5, &json!("e5"));

    // offset=latest sees only what comes after it opened.
    let mut latest = api.open_stream("events", "offset=latest", None).await;
    api.produce("events", json!([{"value": "e6"}])).await;
    assert_record_event(&latest.next().await, 6, &json!("e6"));
}

#[tokio::test]
async fn sse_refuses_a_bad_start_with_a_problem() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("events", 1).await;
    api.call_expecting_problem(
        Method::GET,
        "/v1/topics/events/partitions/0/stream?offset=5",
        None,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "offset_out_of_range",
    )
    .await;
    let bad_id = api
        .http
        .get(format!("{}/v1/topics/events/partitions/0/stream", api.url))
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    assert_problem(bad_id, StatusCode::BAD_REQUEST, "invalid_request").await;
    api.call_expecting_problem(
        Method::GET,
        "/v1/topics/nope/partitions/0/stream",
        None,
        StatusCode::NOT_FOUND,
        "topic_not_found",
    )
    .await;
}

/// A deleted partition never gets another record: a stream waiting at its end says so and
/// ends, rather than fetching again at once, forever (its wait returns at once on a failed
/// partition), which held a worker thread and sent the client nothing.
#[tokio::test]
async fn an_sse_stream_at_the_end_of_a_deleted_topic_ends_with_an_error_event() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("events", 1).await;
    api.produce("events", json!([{"value": "e0"}])).await;
    let mut stream = api.open_stream("events", "offset=earliest", None).await;
    assert_record_event(&stream.next().await, 0, &json!("e0"));
    let (status, _) = api.call(Method::DELETE, "/v1/topics/events", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let event = stream.next().await;
    assert_eq!(event.event.as_deref(), Some("error"), "{event:?}");
    let end = tokio::time::timeout(Duration::from_secs(10), stream.stream.next())
        .await
        .expect("the stream ends within 10 s");
    assert!(end.is_none(), "the stream ended: {end:?}");
}

// ---------------------------------------------------------------------------------------
// Shutdown and restart
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_a_restart_keeps_every_acknowledged_record() {
    let mut broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("durable", 2).await;
    let mut acknowledged: BTreeMap<(u64, u64), Value> = BTreeMap::new();
    for round in 0..10 {
        let records: Vec<Value> = (0..10)
            .map(|i| json!({"key": format!("k{i}"), "value": {"round": round, "i": i}}))
            .collect();
        // The last round is `acks=all`, so nothing is left to flush when the long-poll below
        // starts at `latest` (a flush landing then would answer it before it is seen waiting).
        let acks = if round % 2 == 1 { "all" } else { "leader" };
        let answer = api
            .call_ok(
                Method::POST,
                &format!("/v1/topics/durable/records?acks={acks}"),
                Some(json!({ "records": records })),
            )
            .await;
        for (record, at) in records.iter().zip(produced_partition_offsets(&answer)) {
            acknowledged.insert(at, record["value"].clone());
        }
    }

    // A long-poll and an SSE stream are open when the signal comes; both end cleanly.
    let long_poll = {
        let http = api.http.clone();
        let url = format!(
            "{}/v1/topics/durable/partitions/0/records?offset=latest&wait_ms=30000",
            api.url
        );
        tokio::spawn(async move { http.get(url).send().await.map(|r| r.status()) })
    };
    let stream = api
        .http
        .get(format!(
            "{}/v1/topics/durable/partitions/1/stream?offset=latest",
            api.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    // Both are waiting inside the broker before the signal is sent.
    common::wait_until(
        "the long-poll and the stream to wait inside the broker",
        Duration::from_secs(10),
        || async {
            let gauge = |name| common::scrape_unlabelled_metric(&api.http, &api.url, name);
            gauge("tidelog_long_polls_waiting").await >= 1.0
                && gauge("tidelog_sse_streams_open").await >= 1.0
        },
    )
    .await;

    let exit = tokio::task::block_in_place(|| broker.terminate());
    assert_eq!(exit, Some(0), "SIGTERM did not end in a clean exit");
    let long_poll_status = tokio::time::timeout(Duration::from_secs(10), long_poll)
        .await
        .expect("the long-poll ended")
        .unwrap();
    assert_eq!(long_poll_status.ok(), Some(StatusCode::OK));
    drop(stream);

    tokio::task::block_in_place(|| broker.restart());
    let api = Api::new(&broker);
    let mut served: BTreeMap<(u64, u64), Value> = BTreeMap::new();
    for partition in 0..2u32 {
        for record in api.fetch_all("durable", partition).await {
            served.insert(
                (partition as u64, record["offset"].as_u64().unwrap()),
                record["value"].clone(),
            );
        }
    }
    assert_eq!(served, acknowledged);

    // New offsets continue densely after the old ones.
    for partition in 0..2u64 {
        let end = acknowledged.keys().filter(|(p, _)| *p == partition).count() as u64;
        let offsets = api
            .produce(
                "durable",
                json!([{"value": "after", "partition": partition}]),
            )
            .await;
        assert_eq!(offsets, vec![(partition, end)]);
    }
}

// ---------------------------------------------------------------------------------------
// System routes and routing errors
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn health_readiness_cluster_metrics_and_openapi_answer_200() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("m", 1).await;
    api.produce("m", json!([{"value": 1}])).await;

    let (status, health) = api.call(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    let (status, ready) = api.call(Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["status"], "ready");
    let (status, cluster) = api.call(Method::GET, "/v1/cluster", None).await;
    assert_eq!(status, StatusCode::OK);
    let brokers = cluster["brokers"].as_array().unwrap();
    assert_eq!(brokers.len(), 1);
    assert_eq!(
        format!("http://{}", brokers[0]["address"].as_str().unwrap()),
        broker.url
    );
    assert!(cluster["controller"].is_u64(), "{cluster}");
    let (status, openapi) = api.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(openapi["paths"].is_object());

    let metrics = api.send(Method::GET, "/metrics", None).await;
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("tidelog_"), "no tidelog metrics in:\n{text}");
}

#[tokio::test]
async fn an_unknown_route_is_a_404_problem_and_a_wrong_method_a_405_problem() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    for path in ["/nope", "/v1/topics/t/partitions/0/nope", "/v2/topics"] {
        api.call_expecting_problem(Method::GET, path, None, StatusCode::NOT_FOUND, "not_found")
            .await;
    }
    for (method, path, allowed) in [
        (Method::PUT, "/v1/topics", "POST"),
        (Method::DELETE, "/v1/topics", "GET"),
        (Method::GET, "/v1/topics/t/records", "POST"),
        (Method::POST, "/v1/topics/t/partitions/0/records", "GET"),
        (Method::POST, "/healthz", "GET"),
    ] {
        let response = api.send(method.clone(), path, None).await;
        // RFC 9110: a 405 says which methods the route has.
        let allow = response.headers()["allow"].to_str().unwrap().to_string();
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{path}: {allow}"
        );
        assert_problem(
            response,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
    }
}

/// An expansion that crashed after opening a partition directory but before `topic.json`
/// counted it leaves a stray directory; the next expansion must start that partition empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expanded_partition_starts_empty_even_over_a_stray_directory() {
    let mut broker = TestBroker::start();
    let http = broker.client();
    common::create_topic(&http, &broker.url, "grown", 2).await;
    common::produce_json_acks_all(
        &http,
        &broker.url,
        "grown",
        json!([{"partition": 1, "value": "stale"}]),
    )
    .await;
    broker.kill9();
    // Make the topic one partition again on disk, leaving partition 1's directory behind.
    let meta_path = broker.data_dir.join("topics/grown/topic.json");
    let mut meta: Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["partitions"] = json!(1);
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    broker.restart();
    let http = broker.client();
    let r = http
        .post(format!("{}/v1/topics/grown/partitions", broker.url))
        .json(&json!({"count": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let described: Value = r.json().await.unwrap();
    assert_eq!(
        described["partitions"][1]["high_watermark"], 0,
        "{described}"
    );
    assert_eq!(
        described["partitions"][1]["log_end_offset"], 0,
        "{described}"
    );
}
