//! Bad input against a real broker: every case is a 4xx `application/problem+json` with its
//! stable `code`, the broker keeps serving, and the records acknowledged before stay
//! readable and unchanged (nothing from a refused request is ever appended).
//!
//! Most cases are rows of one table run by [`check_case`]; the ones that need a raw socket
//! (a client that disconnects mid-body) or their own limits have their own tests.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Client;
use common::TestBroker;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Small limits, so the cases that cross them stay small. Auto-creation is on, so the cases
/// can check that a refused produce to a missing topic creates nothing.
const LIMITS: &str = "
auto_create_topics = true
[limits]
request_body_bytes_max = 65536
record_bytes_max = 4096
wait_ms_max = 2000
fetch_records_max = 100
records_per_request_max = 50
partitions_max = 8
key_bytes_max = 64
header_bytes_max = 64
";
const REQUEST_BODY_BYTES_MAX: u64 = 65536;
const RECORD_BYTES_MAX: u64 = 4096;

/// The state every case must leave untouched: topics, and all records of them.
#[derive(Debug)]
struct Snapshot {
    topics: Value,
    /// The describe documents of `kept` and `trimmed` (config, offsets, segments, sizes).
    described: Vec<Value>,
    /// `(topic, partition)` → every record from earliest to the high watermark.
    records: Vec<((String, u32), Vec<Value>)>,
}

/// A broker with acknowledged records in place: `kept` (2 partitions) and `trimmed`
/// (1 partition, records 0..10, log start moved to 5).
struct Fixture {
    broker: TestBroker,
    http: Client,
    baseline: Snapshot,
}

impl Fixture {
    async fn start() -> Fixture {
        let broker = TestBroker::start_with_config(LIMITS);
        let http = broker.client();
        let url = broker.url.clone();
        common::create_topic(&http, &url, "kept", 2).await;
        common::create_topic(&http, &url, "trimmed", 1).await;
        let kept: Vec<Value> = (0..12)
            .map(|i| json!({"key": format!("k{i}"), "value": {"n": i}, "partition": i % 2}))
            .collect();
        common::produce_json_acks_all(&http, &url, "kept", json!(kept)).await;
        let trimmed: Vec<Value> = (0..10).map(|i| json!({ "value": i })).collect();
        common::produce_json_acks_all(&http, &url, "trimmed", json!(trimmed)).await;
        let r = http
            .post(format!(
                "{url}/v1/topics/trimmed/partitions/0/delete-records"
            ))
            .json(&json!({"before_offset": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let mut fixture = Fixture {
            broker,
            http,
            baseline: Snapshot {
                topics: Value::Null,
                described: Vec::new(),
                records: Vec::new(),
            },
        };
        fixture.baseline = fixture.snapshot().await;
        assert_eq!(fixture.baseline.records[0].1.len(), 6);
        assert_eq!(fixture.baseline.records[2].1.len(), 5);
        fixture
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.broker.url)
    }

    /// `GET path`, which must answer 200 with JSON.
    async fn get_json_ok(&self, path: &str) -> Value {
        common::get_json_ok(&self.http, &self.broker.url, path).await
    }

    async fn snapshot(&self) -> Snapshot {
        let topics = self.get_json_ok("/v1/topics").await;
        let mut records = Vec::new();
        for (topic, partition) in [("kept", 0), ("kept", 1), ("trimmed", 0)] {
            let body = self
                .get_json_ok(&format!(
                    "/v1/topics/{topic}/partitions/{partition}/records?offset=earliest&max_records=100"
                ))
                .await;
            assert_eq!(
                body["next_offset"], body["high_watermark"],
                "one fetch reads all of {topic}/{partition}"
            );
            records.push((
                (topic.to_string(), partition),
                body["records"].as_array().unwrap().clone(),
            ));
        }
        let mut described = Vec::new();
        for topic in ["kept", "trimmed"] {
            described.push(self.get_json_ok(&format!("/v1/topics/{topic}")).await);
        }
        Snapshot {
            topics,
            described,
            records,
        }
    }

    /// The broker still answers, and every acknowledged record is there, unchanged, with
    /// nothing added.
    async fn assert_intact(&self, after: &str) {
        let health = self
            .http
            .get(self.url("/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("after {after}: the broker stopped answering: {e}"));
        assert_eq!(health.status(), StatusCode::OK, "after {after}");
        let now = self.snapshot().await;
        assert_eq!(
            now.topics, self.baseline.topics,
            "after {after}: the topics changed"
        );
        assert_eq!(
            now.described, self.baseline.described,
            "after {after}: a topic's config or partitions changed"
        );
        for ((at, records), (_, expected)) in now.records.iter().zip(&self.baseline.records) {
            assert_eq!(
                records.len(),
                expected.len(),
                "after {after}: {at:?} has {} records, {} before",
                records.len(),
                expected.len()
            );
            assert_eq!(records, expected, "after {after}: {at:?} changed");
        }
    }
}

/// One bad request and the problem it must get.
struct Case {
    name: String,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
    /// Members the problem must have, with these values.
    members: Vec<(&'static str, Value)>,
}

fn case(name: impl Into<String>, method: Method, path: impl Into<String>) -> Case {
    Case {
        name: name.into(),
        method,
        path: path.into(),
        headers: Vec::new(),
        body: None,
        status: 0,
        code: "",
        members: Vec::new(),
    }
}

impl Case {
    fn json(self, body: Value) -> Case {
        self.raw("application/json", body.to_string().into_bytes())
    }

    /// A body sent as-is with this content type (may be invalid on purpose).
    fn raw(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Case {
        self.headers
            .push(("content-type", content_type.to_string()));
        self.body = Some(body.into());
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Case {
        self.headers.push((name, value.to_string()));
        self
    }

    fn expect(mut self, status: u16, code: &'static str) -> Case {
        self.status = status;
        self.code = code;
        self
    }

    fn with(mut self, member: &'static str, value: impl Into<Value>) -> Case {
        self.members.push((member, value.into()));
        self
    }
}

/// Sends the case, checks the problem, then checks the broker is intact.
async fn check_case(fixture: &Fixture, case: &Case) {
    let mut request = fixture
        .http
        .request(case.method.clone(), fixture.url(&case.path));
    for (name, value) in &case.headers {
        request = request.header(*name, value);
    }
    if let Some(body) = &case.body {
        request = request.body(body.clone());
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: no answer: {e}", case.name));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    assert_eq!(status, case.status, "{}: {text}", case.name);
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{}: {text}",
        case.name
    );
    let problem: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: the problem is not JSON ({e}): {text}", case.name));
    assert_eq!(problem["code"], case.code, "{}: {problem}", case.name);
    assert_eq!(problem["status"], case.status, "{}: {problem}", case.name);
    assert!(
        problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{}: no detail in {problem}",
        case.name
    );
    for (member, value) in &case.members {
        assert_eq!(&problem[*member], value, "{}: {problem}", case.name);
    }
    fixture.assert_intact(&case.name).await;
}

const PRODUCE: &str = "/v1/topics/kept/records";
const FETCH: &str = "/v1/topics/kept/partitions/0/records";

fn produce_json(name: &str, body: Value) -> Case {
    case(name, Method::POST, PRODUCE).json(body)
}

fn fetch(name: &str, query: &str) -> Case {
    case(name, Method::GET, format!("{FETCH}?{query}"))
}

fn malformed_bodies() -> Vec<Case> {
    vec![
        case("malformed JSON produce", Method::POST, PRODUCE)
            .raw("application/json", r#"{"records":[{"value":1}"#)
            .expect(400, "invalid_request"),
        case("malformed JSON create", Method::POST, "/v1/topics")
            .raw("application/json", r#"{"name":"#)
            .expect(400, "invalid_request"),
        case("malformed JSON patch", Method::PATCH, "/v1/topics/kept")
            .raw("application/json", "{retention_ms: 5}")
            .expect(400, "invalid_request"),
        case("empty JSON body", Method::POST, PRODUCE)
            .raw("application/json", "")
            .expect(400, "invalid_request"),
        produce_json("produce body is an array", json!([{"value": 1}]))
            .expect(400, "invalid_request"),
        produce_json("no records", json!({"records": []})).expect(400, "invalid_request"),
        produce_json(
            "unknown record field",
            json!({"records": [{"value": 1, "colour": "red"}]}),
        )
        .expect(400, "invalid_request"),
        case("PATCH body not an object", Method::PATCH, "/v1/topics/kept")
            .json(json!([1]))
            .expect(400, "invalid_request"),
        case(
            "PATCH config not an object",
            Method::PATCH,
            "/v1/topics/kept",
        )
        .json(json!({"config": 5}))
        .expect(400, "invalid_request"),
        case(
            "PATCH config both bare and wrapped",
            Method::PATCH,
            "/v1/topics/kept",
        )
        .json(json!({"retention_ms": 5, "config": {"retention_ms": 6}}))
        .expect(400, "invalid_request"),
        case(
            "PATCH a value past 2^53 - 1",
            Method::PATCH,
            "/v1/topics/kept",
        )
        .json(json!({"segment_ms": 9_223_372_036_854_775_807_i64}))
        .expect(400, "invalid_request"),
        case(
            "create with a value past 2^53 - 1",
            Method::POST,
            "/v1/topics",
        )
        .json(json!({"name": "big", "config": {"retention_ms": 9_007_199_254_740_992_i64}}))
        .expect(400, "invalid_request"),
        produce_json(
            "key and key_b64, the key null",
            json!({"records": [{"key": null, "key_b64": "eA==", "value": 1}]}),
        )
        .expect(400, "invalid_request"),
        produce_json(
            "value and value_b64, the value null",
            json!({"records": [{"value": null, "value_b64": "eA=="}]}),
        )
        .expect(400, "invalid_request"),
        case("NDJSON value and value_b64", Method::POST, PRODUCE)
            .raw(
                "application/x-ndjson",
                "{\"value_b64\":\"eA==\",\"value\":null}\n",
            )
            .expect(400, "invalid_request"),
        case("PATCH unknown key", Method::PATCH, "/v1/topics/kept")
            .json(json!({"config": {"retention_hours": 5}}))
            .expect(400, "invalid_request"),
        case("PATCH bad value type", Method::PATCH, "/v1/topics/kept")
            .json(json!({"flush_ms": "soon"}))
            .expect(400, "invalid_request"),
        case("text/plain produce", Method::POST, PRODUCE)
            .raw("text/plain", "hello")
            .expect(415, "unsupported_media_type"),
        case("form produce", Method::POST, PRODUCE)
            .raw("application/x-www-form-urlencoded", "value=1")
            .expect(415, "unsupported_media_type"),
        case("text/plain create", Method::POST, "/v1/topics")
            .raw("text/plain", r#"{"name":"x"}"#)
            .expect(415, "unsupported_media_type"),
        case("xml patch", Method::PATCH, "/v1/topics/kept")
            .raw("application/xml", "<config/>")
            .expect(415, "unsupported_media_type"),
        case("invalid UTF-8 in a JSON value", Method::POST, PRODUCE)
            .raw(
                "application/json",
                b"{\"records\":[{\"value\":\"ok\xff\xfe\"}]}".to_vec(),
            )
            .expect(400, "invalid_request"),
        case("invalid UTF-8 in a JSON key", Method::POST, PRODUCE)
            .raw(
                "application/json",
                b"{\"records\":[{\"key\":\"\xc3\x28\",\"value\":1}]}".to_vec(),
            )
            .expect(400, "invalid_request"),
        case("invalid UTF-8 in NDJSON", Method::POST, PRODUCE)
            .raw(
                "application/x-ndjson",
                b"{\"value\":1}\n{\"value\":\"\xff\"}\n".to_vec(),
            )
            .expect(400, "invalid_request")
            .with("line", 2),
        case("invalid UTF-8 topic name", Method::POST, "/v1/topics")
            .raw("application/json", b"{\"name\":\"\xff\xfe\"}".to_vec())
            .expect(400, "invalid_request"),
        case("bad NDJSON line 3", Method::POST, PRODUCE)
            .raw(
                "application/x-ndjson",
                "{\"value\":\"a\"}\n{\"value\":\"b\"}\n{\"value\":\n{\"value\":\"d\"}\n",
            )
            .expect(400, "invalid_request")
            .with("line", 3),
        case(
            "text/plain to a missing topic",
            Method::POST,
            "/v1/topics/fresh/records",
        )
        .raw("text/plain", "hello")
        .expect(415, "unsupported_media_type"),
        case(
            "malformed JSON to a missing topic",
            Method::POST,
            "/v1/topics/fresh/records",
        )
        .raw("application/json", "{bad")
        .expect(400, "invalid_request"),
        case(
            "bad NDJSON to a missing topic",
            Method::POST,
            "/v1/topics/fresh/records",
        )
        .raw("application/x-ndjson", "{\"value\":1}\nnot json\n")
        .expect(400, "invalid_request")
        .with("line", 2),
        case(
            "bad octet-stream query to a missing topic",
            Method::POST,
            "/v1/topics/fresh/records?partition=x",
        )
        .raw("application/octet-stream", "x")
        .expect(400, "invalid_request"),
        case(
            "octet-stream key that is not UTF-8",
            Method::POST,
            format!("{PRODUCE}?key=%FF%FE"),
        )
        .raw("application/octet-stream", "x")
        .expect(400, "invalid_request"),
        fetch("query that is not UTF-8", "offset=%C3%28").expect(400, "invalid_request"),
        case("empty NDJSON body", Method::POST, PRODUCE)
            .raw("application/x-ndjson", "\n\n")
            .expect(400, "invalid_request"),
        produce_json(
            "value and value_b64",
            json!({"records": [{"value": "x", "value_b64": "eA=="}]}),
        )
        .expect(400, "invalid_request"),
        produce_json(
            "key and key_b64",
            json!({"records": [{"key": "x", "key_b64": "eA==", "value": 1}]}),
        )
        .expect(400, "invalid_request"),
        produce_json(
            "bad base64 value",
            json!({"records": [{"value_b64": "not base64!"}]}),
        )
        .expect(400, "invalid_request"),
        produce_json(
            "bad base64 key",
            json!({"records": [{"key_b64": "%%%", "value": 1}]}),
        )
        .expect(400, "invalid_request"),
        produce_json(
            "one bad record among good ones",
            json!({"records": [{"value": 1}, {"value": 2}, {"value_b64": "***"}]}),
        )
        .expect(400, "invalid_request"),
        produce_json(
            "headers not strings",
            json!({"records": [{"value": 1, "headers": {"n": 5}}]}),
        )
        .expect(400, "invalid_request"),
        produce_json(
            "timestamp not a number",
            json!({"records": [{"value": 1, "timestamp_ms": "yesterday"}]}),
        )
        .expect(400, "invalid_request"),
    ]
}

fn limits() -> Vec<Case> {
    let big_value = "v".repeat(RECORD_BYTES_MAX as usize + 1);
    let many: Vec<Value> = (0..51).map(|i| json!({ "value": i })).collect();
    let headers: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("h{i}"), json!("v"))).collect();
    vec![
        produce_json(
            "record over record_bytes_max",
            json!({"records": [{"value": big_value}]}),
        )
        .expect(413, "record_too_large")
        .with("limit", RECORD_BYTES_MAX)
        .with("limit_name", "record_bytes_max"),
        produce_json(
            "small records, then one over record_bytes_max",
            json!({"records": [{"value": 1}, {"value": big_value}]}),
        )
        .expect(413, "record_too_large")
        .with("limit", RECORD_BYTES_MAX),
        case("NDJSON record over record_bytes_max", Method::POST, PRODUCE)
            .raw(
                "application/x-ndjson",
                format!("{{\"value\":1}}\n{{\"value\":\"{big_value}\"}}\n"),
            )
            .expect(413, "record_too_large")
            .with("limit", RECORD_BYTES_MAX),
        case(
            "octet-stream record over record_bytes_max",
            Method::POST,
            PRODUCE,
        )
        .raw("application/octet-stream", vec![7u8; 5000])
        .expect(413, "record_too_large")
        .with("limit", RECORD_BYTES_MAX),
        produce_json(
            "records over records_per_request_max",
            json!({ "records": many }),
        )
        .expect(400, "limit_exceeded")
        .with("limit", 50)
        .with("limit_name", "records_per_request_max"),
        case(
            "records over records_per_request_max, then bytes that are not JSON",
            Method::POST,
            PRODUCE,
        )
        .raw(
            "application/json",
            format!("{{\"records\":[{}{{}}, not json", "{},".repeat(50)),
        )
        .expect(400, "limit_exceeded")
        .with("limit", 50)
        .with("limit_name", "records_per_request_max"),
        case(
            "NDJSON records over records_per_request_max, then a line that is not JSON",
            Method::POST,
            PRODUCE,
        )
        .raw(
            "application/x-ndjson",
            format!("{}not json\n", "{}\n".repeat(51)),
        )
        .expect(400, "limit_exceeded")
        .with("limit_name", "records_per_request_max")
        .with("appended_records", 0),
        produce_json(
            "headers over headers_per_record_max",
            json!({"records": [{"value": 1, "headers": headers}]}),
        )
        .expect(400, "limit_exceeded")
        .with("limit_name", "headers_per_record_max"),
        produce_json(
            "key over key_bytes_max",
            json!({"records": [{"key": "k".repeat(65), "value": 1}]}),
        )
        .expect(400, "limit_exceeded")
        .with("limit", 64)
        .with("limit_name", "key_bytes_max"),
        produce_json(
            "header over header_bytes_max",
            json!({"records": [{"value": 1, "headers": {"h": "v".repeat(64)}}]}),
        )
        .expect(400, "limit_exceeded")
        .with("limit", 64)
        .with("limit_name", "header_bytes_max"),
        fetch("wait_ms over wait_ms_max", "offset=0&wait_ms=2001")
            .expect(400, "limit_exceeded")
            .with("limit", 2000)
            .with("limit_name", "wait_ms_max"),
        fetch(
            "max_records over fetch_records_max",
            "offset=0&max_records=101",
        )
        .expect(400, "limit_exceeded")
        .with("limit", 100)
        .with("limit_name", "fetch_records_max"),
        fetch("max_bytes over fetch_bytes_max", "max_bytes=1000000000000")
            .expect(400, "limit_exceeded")
            .with("limit_name", "fetch_bytes_max"),
        fetch("max_records zero", "max_records=0").expect(400, "invalid_request"),
        fetch("max_bytes zero", "max_bytes=0").expect(400, "invalid_request"),
        case(
            "produce timeout_ms over wait_ms_max",
            Method::POST,
            format!("{PRODUCE}?timeout_ms=2001"),
        )
        .json(json!({"records": [{"value": 1}]}))
        .expect(400, "limit_exceeded")
        .with("limit", 2000),
        case(
            "stream max_bytes over fetch_bytes_max",
            Method::GET,
            "/v1/topics/kept/partitions/0/stream?max_bytes=1000000000000",
        )
        .expect(400, "limit_exceeded"),
        case("zero partitions", Method::POST, "/v1/topics")
            .json(json!({"name": "zero", "partitions": 0}))
            .expect(400, "invalid_request")
            .with("limit_name", Value::Null),
        case("too many partitions", Method::POST, "/v1/topics")
            .json(json!({"name": "huge", "partitions": 100000}))
            .expect(400, "limit_exceeded")
            .with("limit_name", "partitions_per_topic_max"),
        case(
            "expand past the maximum",
            Method::POST,
            "/v1/topics/kept/partitions",
        )
        .json(json!({"count": 100000}))
        .expect(400, "limit_exceeded"),
        case(
            "more partitions than the broker keeps",
            Method::POST,
            "/v1/topics",
        )
        .json(json!({"name": "crowd", "partitions": 6}))
        .expect(400, "limit_exceeded")
        .with("limit_name", "partitions_max")
        .with("limit", 8),
        case(
            "expand past the broker's partitions",
            Method::POST,
            "/v1/topics/kept/partitions",
        )
        .json(json!({"count": 8}))
        .expect(400, "limit_exceeded")
        .with("limit_name", "partitions_max"),
    ]
}

/// Produces to `ghost`, which does not exist: each is refused, and none may create it
/// (the topic list must stay as it was).
/// Values that would poison every fetch page holding them, and timestamps that would stall
/// retention: each refused with the record named.
fn poison_values_and_timestamps() -> Vec<Case> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let two_hours_ahead = now_ms + 2 * 3_600_000;
    // Before 1900: more than the default 100 years behind.
    let long_ago: i64 = -3_000_000_000_000;
    // Within record_bytes_max (4096), so only the depth refuses it.
    let deep = format!("{}1{}", "[".repeat(1_500), "]".repeat(1_500));
    let with_second = |value: &str| format!(r#"{{"records":[{{"value":1}},{{"value":{value}}}]}}"#);
    let ndjson_second = |value: &str| format!("{{\"value\":1}}\n{{\"value\":{value}}}\n");
    vec![
        case("a value nested 1,500 deep", Method::POST, PRODUCE)
            .raw("application/json", with_second(&deep))
            .expect(400, "limit_exceeded")
            .with("limit_name", "json_depth_max")
            .with("limit", 64)
            .with("record_index", 1),
        case("an NDJSON value nested 1,500 deep", Method::POST, PRODUCE)
            .raw("application/x-ndjson", ndjson_second(&deep))
            .expect(400, "limit_exceeded")
            .with("limit_name", "json_depth_max")
            .with("line", 2),
        case("a lone surrogate in a value", Method::POST, PRODUCE)
            .raw("application/json", with_second(r#"{"s":"a\ud800b"}"#))
            .expect(400, "invalid_request")
            .with("record_index", 1),
        case("a lone low surrogate in NDJSON", Method::POST, PRODUCE)
            .raw("application/x-ndjson", ndjson_second(r#""\udc00""#))
            .expect(400, "invalid_request")
            .with("line", 2),
        case(
            "a number that is not finite as a double",
            Method::POST,
            PRODUCE,
        )
        .raw("application/json", with_second("[1e400]"))
        .expect(400, "invalid_request")
        .with("record_index", 1),
        produce_json(
            "a timestamp two hours ahead",
            json!({"records": [{"value": 1}, {"value": 2, "timestamp_ms": two_hours_ahead}]}),
        )
        .expect(400, "invalid_timestamp")
        .with("limit_name", "timestamp_ms_ahead_max")
        .with("limit", 3_600_000)
        .with("record_index", 1),
        produce_json(
            "a timestamp before 1900",
            json!({"records": [{"value": 1, "timestamp_ms": long_ago}]}),
        )
        .expect(400, "invalid_timestamp")
        .with("limit_name", "timestamp_ms_behind_max")
        .with("record_index", 0),
        produce_json(
            "the largest timestamp",
            json!({"records": [{"value": 1, "timestamp_ms": i64::MAX}]}),
        )
        .expect(400, "invalid_timestamp")
        .with("limit_name", "timestamp_ms_ahead_max"),
        case("an NDJSON timestamp two hours ahead", Method::POST, PRODUCE)
            .raw(
                "application/x-ndjson",
                format!("{{\"value\":1,\"timestamp_ms\":{two_hours_ahead}}}\n"),
            )
            .expect(400, "invalid_timestamp")
            .with("limit_name", "timestamp_ms_ahead_max")
            .with("line", 1),
        case(
            "an octet-stream timestamp two hours ahead",
            Method::POST,
            format!("{PRODUCE}?timestamp_ms={two_hours_ahead}"),
        )
        .raw("application/octet-stream", "x")
        .expect(400, "invalid_timestamp")
        .with("limit_name", "timestamp_ms_ahead_max"),
        case(
            "an octet-stream timestamp before 1900",
            Method::POST,
            format!("{PRODUCE}?timestamp_ms={long_ago}"),
        )
        .raw("application/octet-stream", "x")
        .expect(400, "invalid_timestamp")
        .with("limit_name", "timestamp_ms_behind_max"),
        case(
            "missing topic: a timestamp two hours ahead",
            Method::POST,
            "/v1/topics/ghost/records",
        )
        .json(json!({"records": [{"value": 1, "timestamp_ms": two_hours_ahead}]}))
        .expect(400, "invalid_timestamp"),
    ]
}

fn refused_produces_to_a_missing_topic() -> Vec<Case> {
    const GHOST: &str = "/v1/topics/ghost/records";
    let big_value = "v".repeat(RECORD_BYTES_MAX as usize + 1);
    let many: Vec<Value> = (0..51).map(|i| json!({ "value": i })).collect();
    let headers: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("h{i}"), json!("v"))).collect();
    let ghost = |name: &str| case(name, Method::POST, GHOST);
    vec![
        ghost("missing topic: record over record_bytes_max")
            .json(json!({"records": [{"value": 1}, {"value": big_value}]}))
            .expect(413, "record_too_large"),
        ghost("missing topic: records over records_per_request_max")
            .json(json!({ "records": many }))
            .expect(400, "limit_exceeded")
            .with("limit_name", "records_per_request_max"),
        ghost("missing topic: headers over headers_per_record_max")
            .json(json!({"records": [{"value": 1, "headers": headers}]}))
            .expect(400, "limit_exceeded"),
        ghost("missing topic: no records")
            .json(json!({"records": []}))
            .expect(400, "invalid_request"),
        ghost("missing topic: partition past the default count")
            .json(json!({"records": [{"value": 1, "partition": 0}, {"value": 2, "partition": 1}]}))
            .expect(404, "partition_not_found")
            .with("partitions", 1),
        ghost("missing topic: bad base64")
            .json(json!({"records": [{"value_b64": "%%%"}]}))
            .expect(400, "invalid_request"),
        ghost("missing topic: NDJSON record over record_bytes_max")
            .raw(
                "application/x-ndjson",
                format!("{{\"value\":1}}\n{{\"value\":\"{big_value}\"}}\n"),
            )
            .expect(413, "record_too_large"),
        ghost("missing topic: NDJSON partition past the default count")
            .raw("application/x-ndjson", "{\"value\":1,\"partition\":3}\n")
            .expect(404, "partition_not_found"),
        ghost("missing topic: octet-stream over record_bytes_max")
            .raw("application/octet-stream", vec![7u8; 5000])
            .expect(413, "record_too_large"),
        case(
            "missing topic: octet-stream partition past the default count",
            Method::POST,
            format!("{GHOST}?partition=2"),
        )
        .raw("application/octet-stream", "x")
        .expect(404, "partition_not_found"),
    ]
}

fn topic_names() -> Vec<Case> {
    let long = "t".repeat(250);
    let create = |name: &str, body: Value| case(name, Method::POST, "/v1/topics").json(body);
    vec![
        case("produce to ../x", Method::POST, "/v1/topics/..%2Fx/records")
            .json(json!({"records": [{"value": 1}]}))
            .expect(400, "invalid_topic_name"),
        create("create ../x", json!({"name": "../x"})).expect(400, "invalid_topic_name"),
        create("create empty name", json!({"name": ""})).expect(400, "invalid_topic_name"),
        create("create 250 chars", json!({ "name": long })).expect(400, "invalid_topic_name"),
        case(
            "produce to 250 chars",
            Method::POST,
            format!("/v1/topics/{long}/records"),
        )
        .json(json!({"records": [{"value": 1}]}))
        .expect(400, "invalid_topic_name"),
        create("create .", json!({"name": "."})).expect(400, "invalid_topic_name"),
        create("create ..", json!({"name": ".."})).expect(400, "invalid_topic_name"),
        create("create with a space", json!({"name": "a b"})).expect(400, "invalid_topic_name"),
        create("create non-ASCII", json!({"name": "tōpic"})).expect(400, "invalid_topic_name"),
        create("create with a slash", json!({"name": "a/b"})).expect(400, "invalid_topic_name"),
        create("create without a name", json!({"partitions": 1})).expect(400, "invalid_request"),
        create("create __internal", json!({"name": "__internal"})).expect(403, "internal_topic"),
        case(
            "patch __consumer_offsets",
            Method::PATCH,
            "/v1/topics/__consumer_offsets",
        )
        .json(json!({"retention_ms": 1}))
        .expect(403, "internal_topic"),
        case(
            "delete __consumer_offsets",
            Method::DELETE,
            "/v1/topics/__consumer_offsets",
        )
        .expect(403, "internal_topic"),
        case(
            "expand __consumer_offsets",
            Method::POST,
            "/v1/topics/__consumer_offsets/partitions",
        )
        .json(json!({"count": 2}))
        .expect(403, "internal_topic"),
        case(
            "delete records of __consumer_offsets",
            Method::POST,
            "/v1/topics/__consumer_offsets/partitions/0/delete-records",
        )
        .json(json!({"before_offset": 1}))
        .expect(403, "internal_topic"),
        case(
            "produce to __internal",
            Method::POST,
            "/v1/topics/__internal/records",
        )
        .json(json!({"records": [{"value": 1}]}))
        .expect(403, "internal_topic"),
        case(
            "produce to __consumer_offsets",
            Method::POST,
            "/v1/topics/__consumer_offsets/records",
        )
        .raw("application/octet-stream", "x")
        .expect(403, "internal_topic"),
        create("create existing", json!({"name": "kept"})).expect(409, "topic_exists"),
        create(
            "replication factor 3 on one broker",
            json!({"name": "rf", "replication_factor": 3}),
        )
        .expect(400, "not_enough_brokers"),
        create(
            "unknown config key",
            json!({"name": "cfg", "config": {"retention_hours": 1}}),
        )
        .expect(400, "invalid_request"),
        create(
            "config value out of range",
            json!({"name": "cfg", "config": {"segment_bytes": 10}}),
        )
        .expect(400, "invalid_request"),
        case(
            "fetch a missing topic",
            Method::GET,
            "/v1/topics/nope/partitions/0/records",
        )
        .expect(404, "topic_not_found"),
        case("delete a missing topic", Method::DELETE, "/v1/topics/nope")
            .expect(404, "topic_not_found"),
        // A name no topic can have is the client's mistake, not a topic that is missing.
        case("describe a bad name", Method::GET, "/v1/topics/a%20b")
            .expect(400, "invalid_topic_name"),
        case("delete a bad name", Method::DELETE, "/v1/topics/t%C5%8Dpic")
            .expect(400, "invalid_topic_name"),
        case("patch a bad name", Method::PATCH, "/v1/topics/a%20b")
            .json(json!({"retention_ms": 1}))
            .expect(400, "invalid_topic_name"),
        case(
            "fetch a bad name",
            Method::GET,
            "/v1/topics/a%20b/partitions/0/records",
        )
        .expect(400, "invalid_topic_name"),
        case(
            "expand a bad name",
            Method::POST,
            format!("/v1/topics/{long}/partitions"),
        )
        .json(json!({"count": 2}))
        .expect(400, "invalid_topic_name"),
        case(
            "join a group for a missing topic",
            Method::POST,
            "/v1/groups/g/members",
        )
        .json(json!({"topics": ["kept", "nope"]}))
        .expect(404, "topic_not_found"),
        case(
            "join a group for a bad topic name",
            Method::POST,
            "/v1/groups/g/members",
        )
        .json(json!({"topics": ["a b"]}))
        .expect(400, "invalid_topic_name"),
    ]
}

/// Path parameters whose percent-decoded bytes are not UTF-8: problem+json like every other
/// refusal (axum's own extractor answered `text/plain`).
fn names_that_are_not_utf8() -> Vec<Case> {
    vec![
        case("describe group %FF", Method::GET, "/v1/groups/%FF").expect(400, "invalid_group_name"),
        case("join group %FF", Method::POST, "/v1/groups/%FF/members")
            .json(json!({"topics": ["kept"]}))
            .expect(400, "invalid_group_name"),
        case(
            "commit to group %C3%28",
            Method::POST,
            "/v1/groups/%C3%28/offsets",
        )
        .json(json!({"offsets": [{"topic": "kept", "partition": 0, "offset": 0}]}))
        .expect(400, "invalid_group_name"),
        case(
            "leave as member %FF",
            Method::DELETE,
            "/v1/groups/g/members/%FF",
        )
        .expect(400, "invalid_request"),
        case("describe topic %FF", Method::GET, "/v1/topics/%FF").expect(400, "invalid_topic_name"),
        case(
            "produce to topic %FF",
            Method::POST,
            "/v1/topics/%FF/records",
        )
        .json(json!({"records": [{"value": 1}]}))
        .expect(400, "invalid_topic_name"),
        case(
            "fetch from topic %FF",
            Method::GET,
            "/v1/topics/%FF/partitions/0/records",
        )
        .expect(400, "invalid_topic_name"),
        case(
            "fetch from partition %FF",
            Method::GET,
            "/v1/topics/kept/partitions/%FF/records",
        )
        .expect(400, "invalid_request"),
    ]
}

fn numbers() -> Vec<Case> {
    let mut cases = vec![
        case(
            "fetch partition out of range",
            Method::GET,
            "/v1/topics/kept/partitions/2/records",
        )
        .expect(404, "partition_not_found")
        .with("partitions", 2),
        case(
            "fetch partition u64::MAX",
            Method::GET,
            "/v1/topics/kept/partitions/18446744073709551615/records",
        )
        .expect(404, "partition_not_found"),
        produce_json(
            "produce to partition out of range",
            json!({"records": [{"value": 1, "partition": 7}]}),
        )
        .expect(404, "partition_not_found"),
        produce_json(
            "good partition, then one out of range",
            json!({"records": [{"value": 1, "partition": 0}, {"value": 2, "partition": 2}]}),
        )
        .expect(404, "partition_not_found"),
        produce_json(
            "negative JSON partition",
            json!({"records": [{"value": 1, "partition": -1}]}),
        )
        .expect(400, "invalid_request"),
        produce_json(
            "JSON partition over u32",
            json!({"records": [{"value": 1, "partition": 4294967296u64}]}),
        )
        .expect(400, "invalid_request"),
        produce_json(
            "JSON partition as a string",
            json!({"records": [{"value": 1, "partition": "0"}]}),
        )
        .expect(400, "invalid_request"),
        case(
            "octet-stream partition out of range",
            Method::POST,
            format!("{PRODUCE}?partition=9"),
        )
        .raw("application/octet-stream", "x")
        .expect(404, "partition_not_found"),
        case(
            "octet-stream partition over u32",
            Method::POST,
            format!("{PRODUCE}?partition=99999999999"),
        )
        .raw("application/octet-stream", "x")
        .expect(400, "invalid_request"),
        case(
            "octet-stream timestamp not a number",
            Method::POST,
            format!("{PRODUCE}?timestamp_ms=soon"),
        )
        .raw("application/octet-stream", "x")
        .expect(400, "invalid_request"),
        case(
            "stream partition out of range",
            Method::GET,
            "/v1/topics/kept/partitions/5/stream",
        )
        .expect(404, "partition_not_found"),
        case(
            "delete-records partition out of range",
            Method::POST,
            "/v1/topics/kept/partitions/3/delete-records",
        )
        .json(json!({"before_offset": 1}))
        .expect(404, "partition_not_found"),
        case(
            "delete-records past the high watermark",
            Method::POST,
            "/v1/topics/trimmed/partitions/0/delete-records",
        )
        .json(json!({"before_offset": 11}))
        .expect(416, "offset_out_of_range")
        .with("high_watermark", 10),
        case(
            "delete-records negative offset",
            Method::POST,
            "/v1/topics/trimmed/partitions/0/delete-records",
        )
        .json(json!({"before_offset": -1}))
        .expect(400, "invalid_request"),
        case(
            "offset below the log start",
            Method::GET,
            "/v1/topics/trimmed/partitions/0/records?offset=2",
        )
        .expect(416, "offset_out_of_range")
        .with("log_start_offset", 5)
        .with("high_watermark", 10),
        case(
            "offset above the end",
            Method::GET,
            "/v1/topics/trimmed/partitions/0/records?offset=11",
        )
        .expect(416, "offset_out_of_range")
        .with("log_start_offset", 5)
        .with("high_watermark", 10),
        case(
            "offset u64::MAX",
            Method::GET,
            "/v1/topics/trimmed/partitions/0/records?offset=18446744073709551615",
        )
        .expect(416, "offset_out_of_range"),
        case(
            "long-poll below the log start",
            Method::GET,
            "/v1/topics/trimmed/partitions/0/records?offset=0&wait_ms=1000",
        )
        .expect(416, "offset_out_of_range")
        .with("log_start_offset", 5),
        case(
            "stream below the log start",
            Method::GET,
            "/v1/topics/trimmed/partitions/0/stream?offset=1",
        )
        .expect(416, "offset_out_of_range")
        .with("log_start_offset", 5),
        case(
            "stream with a bad Last-Event-ID",
            Method::GET,
            "/v1/topics/kept/partitions/0/stream",
        )
        .header("last-event-id", "seven")
        .expect(400, "invalid_request"),
        case(
            "stream with Last-Event-ID u64::MAX",
            Method::GET,
            "/v1/topics/kept/partitions/0/stream",
        )
        .header("last-event-id", "18446744073709551615")
        .expect(416, "offset_out_of_range"),
        case(
            "stream with a negative Last-Event-ID",
            Method::GET,
            "/v1/topics/kept/partitions/0/stream",
        )
        .header("last-event-id", "-1")
        .expect(400, "invalid_request"),
        fetch("offset and timestamp_ms", "offset=0&timestamp_ms=5").expect(400, "invalid_request"),
        fetch("timestamp_ms not a number", "timestamp_ms=noon").expect(400, "invalid_request"),
        fetch("unknown query parameter", "offest=3").expect(400, "invalid_request"),
        case("bad acks", Method::POST, format!("{PRODUCE}?acks=maybe"))
            .json(json!({"records": [{"value": 1}]}))
            .expect(400, "invalid_request"),
        case("acks=2", Method::POST, format!("{PRODUCE}?acks=2"))
            .json(json!({"records": [{"value": 1}]}))
            .expect(400, "invalid_request"),
        case(
            "expand to fewer",
            Method::POST,
            "/v1/topics/kept/partitions",
        )
        .json(json!({"count": 1}))
        .expect(400, "invalid_request"),
        case(
            "expand count not a number",
            Method::POST,
            "/v1/topics/kept/partitions",
        )
        .json(json!({"count": "three"}))
        .expect(400, "invalid_request"),
    ];
    for bad in ["-1", "abc", "1.5", "99999999999999999999999", ""] {
        cases.push(
            fetch(&format!("offset={bad}"), &format!("offset={bad}"))
                .expect(400, "invalid_request"),
        );
        cases.push(
            fetch(
                &format!("wait_ms={bad}"),
                &format!("offset=0&wait_ms={bad}"),
            )
            .expect(400, "invalid_request"),
        );
        cases.push(
            fetch(&format!("max_records={bad}"), &format!("max_records={bad}"))
                .expect(400, "invalid_request"),
        );
    }
    for bad in ["-1", "abc", "99999999999999999999999", "0x1"] {
        cases.push(
            case(
                format!("fetch partition {bad}"),
                Method::GET,
                format!("/v1/topics/kept/partitions/{bad}/records"),
            )
            .expect(400, "invalid_request"),
        );
        cases.push(
            case(
                format!("stream partition {bad}"),
                Method::GET,
                format!("/v1/topics/kept/partitions/{bad}/stream"),
            )
            .expect(400, "invalid_request"),
        );
        cases.push(
            case(
                format!("octet-stream partition {bad}"),
                Method::POST,
                format!("{PRODUCE}?partition={bad}"),
            )
            .raw("application/octet-stream", "x")
            .expect(400, "invalid_request"),
        );
    }
    cases
}

/// Runs `cases` against one fresh fixture; an empty list is a mistake, not a pass.
async fn check_every_case(cases: Vec<Case>) {
    assert!(!cases.is_empty(), "no cases to check");
    let fixture = Fixture::start().await;
    for case in &cases {
        check_case(&fixture, case).await;
    }
}

#[tokio::test]
async fn malformed_bodies_are_refused_and_nothing_is_appended() {
    check_every_case(malformed_bodies()).await;
}

#[tokio::test]
async fn crossed_limits_are_refused_with_the_limit_named() {
    check_every_case(limits()).await;
}

#[tokio::test]
async fn poison_values_and_bad_timestamps_are_refused_with_the_record_named() {
    check_every_case(poison_values_and_timestamps()).await;
}

#[tokio::test]
async fn bad_topic_names_are_refused_and_no_topic_appears() {
    check_every_case(topic_names()).await;
}

#[tokio::test]
async fn a_refused_produce_to_a_missing_topic_does_not_create_it() {
    check_every_case(refused_produces_to_a_missing_topic()).await;
}

#[tokio::test]
async fn names_that_are_not_utf8_are_refused_as_problems() {
    check_every_case(names_that_are_not_utf8()).await;
}

#[tokio::test]
async fn bad_numbers_partitions_and_offsets_are_refused() {
    check_every_case(numbers()).await;
}

#[tokio::test]
async fn a_body_over_request_body_bytes_max_is_413_and_the_broker_serves_new_connections() {
    let fixture = Fixture::start().await;
    let over = REQUEST_BODY_BYTES_MAX as usize + 1024;
    // Each record is small; only the body as a whole is too large.
    let mut json_body = String::from("{\"records\":[");
    while json_body.len() < over {
        json_body.push_str("{\"value\":\"0123456789012345678901234567890123456789\"},");
    }
    json_body.push_str("{\"value\":0}]}");
    let mut ndjson_body = String::new();
    while ndjson_body.len() < over {
        ndjson_body.push_str("{\"value\":\"0123456789012345678901234567890123456789\"}\n");
    }
    let bodies = [
        ("application/json", json_body.into_bytes()),
        ("application/x-ndjson", ndjson_body.into_bytes()),
        ("application/octet-stream", vec![1u8; over]),
    ];
    for (content_type, body) in bodies {
        let response = fixture
            .http
            .post(fixture.url(PRODUCE))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{content_type}: no answer to the 413: {e}"));
        assert_eq!(
            response.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "{content_type}"
        );
        assert_eq!(
            response
                .headers()
                .get("connection")
                .map(|v| v.to_str().unwrap()),
            Some("close"),
            "{content_type}: a 413 closes the connection"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "body_too_large", "{problem}");
        assert_eq!(problem["limit"], REQUEST_BODY_BYTES_MAX, "{problem}");
        assert_eq!(problem["limit_name"], "request_body_bytes_max", "{problem}");
        fixture.assert_intact(content_type).await;
    }

    // Without a Content-Length (chunked), the limit is found while reading. The broker
    // answers and closes while the client is still writing, so the client may see its
    // write fail (broken pipe / reset) instead of the 413; both are fine here, as long as
    // it is not a success and the broker stays intact.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b' '; 8192])).collect();
    let sent = fixture
        .http
        .post(fixture.url(PRODUCE))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    if let Ok(response) = sent {
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "body_too_large");
    }

    // A fresh client (a new connection) is served too.
    let fresh = common::Client::new();
    let health = fresh.get(fixture.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    fixture.assert_intact("the chunked body").await;
}

/// Sends request headers announcing `declared` body bytes, then only `partial`, then closes.
fn disconnect_mid_body(url: &str, path: &str, content_type: &str, declared: usize, partial: &[u8]) {
    let addr = url.trim_start_matches("http://");
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {declared}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).unwrap();
    socket.write_all(partial).unwrap();
    socket.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_body_leaves_nothing_behind() {
    let fixture = Fixture::start().await;
    let url = fixture.broker.url.clone();
    let json_part =
        br#"{"records":[{"value":"partial-1","partition":0},{"value":"partial-2","partition":0},"#;
    let ndjson_part =
        b"{\"value\":\"partial-3\",\"partition\":0}\n{\"value\":\"partial-4\",\"partition\":0}\n";
    let octet_part = vec![9u8; 1000];
    let sends: [(&str, &[u8]); 3] = [
        ("application/json", json_part),
        ("application/x-ndjson", ndjson_part),
        ("application/octet-stream", &octet_part),
    ];
    for (content_type, partial) in sends {
        let url = url.clone();
        let partial = partial.to_vec();
        let content_type = content_type.to_string();
        tokio::task::spawn_blocking(move || {
            disconnect_mid_body(&url, PRODUCE, &content_type, 60_000, &partial)
        })
        .await
        .unwrap();
    }
    // Give the broker time to see the closed connections, then prove the partition moved on
    // without them: the next record gets the offset right after the acknowledged ones.
    tokio::time::sleep(Duration::from_millis(300)).await;
    fixture.assert_intact("three disconnects").await;
    let end = fixture.baseline.records[0].1.len() as u64;
    let answer = common::produce_json_acks_all(
        &fixture.http,
        &fixture.broker.url,
        "kept",
        json!([{"value": "after", "partition": 0}]),
    )
    .await;
    assert_eq!(answer["offsets"], json!([{"partition": 0, "offset": end}]));
    let body = fixture
        .get_json_ok(&format!("{FETCH}?offset=0&max_records=100"))
        .await;
    let text = body.to_string();
    assert!(
        !text.contains("partial-"),
        "a half-sent body was appended: {text}"
    );
    assert_eq!(body["records"].as_array().unwrap().len() as u64, end + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_413_answer_arrives_before_the_body_is_sent() {
    // A client that announces a body over the limit gets its 413 without sending it.
    let fixture = Fixture::start().await;
    let addr = fixture.broker.url.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        let mut socket = TcpStream::connect(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let head = format!(
            "POST {PRODUCE} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            REQUEST_BODY_BYTES_MAX * 10
        );
        socket.write_all(head.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the server closes (it must: a 413 closes the connection).
        loop {
            match socket.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => panic!("no 413 and no close: {e}; got so far: {:?}", String::from_utf8_lossy(&answer)),
            }
        }
        common::contract::assert_raw_answer_keeps_the_spec("POST", PRODUCE, &answer);
        String::from_utf8_lossy(&answer).to_string()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    fixture.assert_intact("the raw 413").await;
}

#[tokio::test]
async fn topics_past_topics_max_are_refused_whether_created_or_auto_created() {
    let broker =
        TestBroker::start_with_config("auto_create_topics = true\n[limits]\ntopics_max = 2\n");
    let http = broker.client();
    let url = &broker.url;
    for name in ["one", "two"] {
        let r = http
            .post(format!("{url}/v1/topics"))
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let created = http
        .post(format!("{url}/v1/topics"))
        .json(&json!({"name": "three"}))
        .send()
        .await
        .unwrap();
    let produced = http
        .post(format!("{url}/v1/topics/four/records"))
        .json(&json!({"records": [{"value": 1}]}))
        .send()
        .await
        .unwrap();
    for r in [created, produced] {
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["code"], "limit_exceeded");
        assert_eq!(problem["limit_name"], "topics_max");
        assert_eq!(problem["limit"], 2);
    }
    let topics: Value = http
        .get(format!("{url}/v1/topics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(topics["topics"].as_array().unwrap().len(), 2, "{topics}");
}
