//! `Idempotency-Key` on a produce (issue 11, item 4): a replayed answer is byte-identical in
//! status, body and headers and writes nothing; another request under the key is 422; many
//! concurrent requests with one key write once; keys survive a `kill -9` and expire after
//! their lifetime; bad keys and keys past `idempotency_keys_max` are refused, writing nothing.

mod common;

use std::time::Duration;

use common::{
    Client, TestBroker, create_topic, read_partition_to_high_watermark, runtime, wait_until,
};

use reqwest::header::HeaderValue;
use serde_json::{Value, json};

/// One answer as the client saw it: status, the headers a replay keeps, the body's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    durability: Option<String>,
    replayed: bool,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The answer without the replay marker, for comparing a replay with the first answer.
    fn as_first(&self) -> Answer {
        Answer {
            replayed: false,
            ..self.clone()
        }
    }
}

async fn send(
    http: &Client,
    url: &str,
    path_and_query: &str,
    key: Option<&[u8]>,
    content_type: &str,
    body: &[u8],
) -> Answer {
    let mut request = http
        .post(format!("{url}{path_and_query}"))
        .header("content-type", content_type)
        .body(body.to_vec());
    if let Some(key) = key {
        request = request.header(
            "idempotency-key",
            HeaderValue::from_bytes(key).expect("a header value"),
        );
    }
    let response = request.send().await.expect("the broker answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("ASCII").to_string())
    };
    let (content_type, durability) = (header("content-type"), header("tidelog-durability"));
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    Answer {
        status: response.status().as_u16(),
        content_type,
        durability,
        replayed,
        body: response.bytes().await.expect("a body").to_vec(),
    }
}

async fn keyed_json(http: &Client, url: &str, topic: &str, key: &str, records: Value) -> Answer {
    let body = serde_json::to_vec(&json!({ "records": records })).expect("JSON");
    send(
        http,
        url,
        &format!("/v1/topics/{topic}/records"),
        Some(key.as_bytes()),
        "application/json",
        &body,
    )
    .await
}

async fn stored(http: &Client, url: &str, topic: &str, partitions: u64) -> usize {
    let mut n = 0;
    for p in 0..partitions {
        n += read_partition_to_high_watermark(http, url, topic, p)
            .await
            .records
            .len();
    }
    n
}

fn assert_problem(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.json()["code"], code, "{answer:?}");
    assert_eq!(
        answer.content_type.as_deref(),
        Some("application/problem+json")
    );
}

#[test]
fn a_replay_is_byte_identical_writes_nothing_and_survives_a_kill_9() {
    let mut broker = TestBroker::start();
    let rt = runtime();
    let http = broker.client();
    let url = broker.url.clone();
    let first = rt.block_on(async {
        create_topic(&http, &url, "orders", 2).await;
        let records = json!([{"key": "o-1", "value": {"n": 1}}, {"value": "two"}]);
        let first = keyed_json(&http, &url, "orders", "order-1", records.clone()).await;
        assert_eq!(first.status, 200, "{first:?}");
        assert!(!first.replayed);
        assert_eq!(first.durability.as_deref(), Some("fsync"));
        let again = keyed_json(&http, &url, "orders", "order-1", records).await;
        assert!(again.replayed, "{again:?}");
        assert_eq!(
            again.as_first(),
            first,
            "a replay is the first answer, byte for byte"
        );
        assert_eq!(stored(&http, &url, "orders", 2).await, 2, "written once");

        // Another request under the key, even only its query: 422, nothing written.
        let other = keyed_json(&http, &url, "orders", "order-1", json!([{"value": 3}])).await;
        assert_problem(&other, 422, "idempotency_key_reused");
        let body = serde_json::to_vec(
            &json!({"records": [{"key": "o-1", "value": {"n": 1}}, {"value": "two"}]}),
        )
        .unwrap();
        let other_query = send(
            &http,
            &url,
            "/v1/topics/orders/records?acks=leader",
            Some(b"order-1"),
            "application/json",
            &body,
        )
        .await;
        assert_problem(&other_query, 422, "idempotency_key_reused");

        // Octet-stream and NDJSON bodies are keyed the same way.
        for (key, ct, body) in [
            ("blob-1", "application/octet-stream", &b"\x00\x01binary"[..]),
            (
                "lines-1",
                "application/x-ndjson",
                &b"{\"value\":1}\n{\"value\":2}\n"[..],
            ),
        ] {
            let path = "/v1/topics/orders/records?partition=1";
            let path = if ct == "application/octet-stream" {
                path
            } else {
                "/v1/topics/orders/records"
            };
            let a = send(&http, &url, path, Some(key.as_bytes()), ct, body).await;
            assert_eq!(a.status, 200, "{ct}: {a:?}");
            let b = send(&http, &url, path, Some(key.as_bytes()), ct, body).await;
            assert!(b.replayed, "{ct}: {b:?}");
            assert_eq!(b.as_first(), a, "{ct}");
        }
        assert_eq!(stored(&http, &url, "orders", 2).await, 5);

        // A produce that wrote nothing (a missing topic) keeps no answer: the key is free.
        let missing = keyed_json(&http, &url, "later", "later-1", json!([{"value": 1}])).await;
        assert_problem(&missing, 404, "topic_not_found");
        create_topic(&http, &url, "later", 1).await;
        let now = keyed_json(&http, &url, "later", "later-1", json!([{"value": 1}])).await;
        assert_eq!(now.status, 200, "{now:?}");
        assert!(!now.replayed);
        first
    });

    broker.restart();
    let url = broker.url.clone();
    rt.block_on(async {
        let records = json!([{"key": "o-1", "value": {"n": 1}}, {"value": "two"}]);
        let after = keyed_json(&http, &url, "orders", "order-1", records).await;
        assert!(after.replayed, "the key survived the restart: {after:?}");
        assert_eq!(after.as_first(), first);
        assert_eq!(
            stored(&http, &url, "orders", 2).await,
            5,
            "nothing written again"
        );
        let replays =
            common::scrape_unlabelled_metric(&http, &url, "tidelog_idempotency_key_replays_total")
                .await;
        assert!(replays >= 1.0, "replays counted: {replays}");
        let kept = common::scrape_unlabelled_metric(&http, &url, "tidelog_idempotency_keys").await;
        assert_eq!(kept, 4.0, "four keys kept after the restart");
    });
}

#[test]
fn concurrent_requests_with_one_key_write_once() {
    let broker = TestBroker::start();
    let rt = runtime();
    let http = broker.client();
    let url = broker.url.clone();
    rt.block_on(async {
        create_topic(&http, &url, "once", 1).await;
        let records = json!([{"value": "a"}, {"value": "b"}, {"value": "c"}]);
        let calls = (0..16).map(|_| keyed_json(&http, &url, "once", "same", records.clone()));
        let answers = futures_util::future::join_all(calls).await;
        let successes: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
        assert!(!successes.is_empty(), "{answers:?}");
        for a in &answers {
            if a.status == 200 {
                assert_eq!(a.as_first().body, successes[0].body, "one set of offsets");
            } else {
                assert_problem(a, 409, "idempotency_key_in_progress");
            }
        }
        assert_eq!(stored(&http, &url, "once", 1).await, 3, "written once");
        let later = keyed_json(&http, &url, "once", "same", records).await;
        assert!(later.replayed);
        assert_eq!(later.body, successes[0].body);
    });
}

#[test]
fn a_key_expires_after_its_lifetime() {
    let broker = TestBroker::start_with_config("[limits]\nidempotency_key_lifetime_ms = 1500\n");
    let rt = runtime();
    let http = broker.client();
    let url = broker.url.clone();
    rt.block_on(async {
        create_topic(&http, &url, "short", 1).await;
        let first = keyed_json(&http, &url, "short", "k", json!([{"value": 1}])).await;
        assert_eq!(first.status, 200);
        let again = keyed_json(&http, &url, "short", "k", json!([{"value": 1}])).await;
        assert!(again.replayed, "within its lifetime: {again:?}");
        wait_until("the key expires", Duration::from_secs(30), || async {
            let a = keyed_json(&http, &url, "short", "k", json!([{"value": 1}])).await;
            assert_eq!(a.status, 200, "{a:?}");
            !a.replayed
        })
        .await;
        assert_eq!(
            stored(&http, &url, "short", 1).await,
            2,
            "run again once expired"
        );
    });
}

#[test]
fn bad_keys_and_keys_past_the_limit_are_refused_and_write_nothing() {
    let broker = TestBroker::start_with_config("[limits]\nidempotency_keys_max = 3\n");
    let rt = runtime();
    let http = broker.client();
    let url = broker.url.clone();
    rt.block_on(async {
        create_topic(&http, &url, "bad", 1).await;
        let body = br#"{"records":[{"value":1}]}"#;
        let path = "/v1/topics/bad/records";
        let long = vec![b'k'; 256];
        for key in [&b""[..], &long, b"a b", b"caf\xc3\xa9", b"tab\tkey"] {
            let a = send(&http, &url, path, Some(key), "application/json", body).await;
            assert_problem(&a, 400, "invalid_idempotency_key");
        }
        let twice = http
            .post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .header("idempotency-key", "one")
            .header("idempotency-key", "two")
            .body(body.to_vec())
            .send()
            .await
            .expect("an answer");
        assert_eq!(twice.status(), 400);
        let with_session = send(
            &http,
            &url,
            "/v1/topics/bad/records?producer_id=1&producer_epoch=0&sequence=0",
            Some(b"k"),
            "application/json",
            body,
        )
        .await;
        assert_problem(&with_session, 400, "invalid_request");
        assert_eq!(stored(&http, &url, "bad", 1).await, 0, "nothing written");

        let longest = vec![b'~'; 255];
        for key in [&b"k1"[..], b"k2", &longest] {
            let a = send(&http, &url, path, Some(key), "application/json", body).await;
            assert_eq!(a.status, 200, "{a:?}");
        }
        let past = send(&http, &url, path, Some(b"k4"), "application/json", body).await;
        assert_problem(&past, 400, "limit_exceeded");
        assert_eq!(past.json()["limit_name"], "idempotency_keys_max");
        assert_eq!(
            stored(&http, &url, "bad", 1).await,
            3,
            "the fourth key wrote nothing"
        );
        // Kept keys still replay, and a produce without a key is not limited by them.
        let replay = send(&http, &url, path, Some(b"k1"), "application/json", body).await;
        assert!(replay.replayed);
        let plain = send(&http, &url, path, None, "application/json", body).await;
        assert_eq!(plain.status, 200);
    });
}

/// On a cluster a keyed produce is served by the controller's broker, which keeps the keys:
/// the same key through any broker is one request, answered once.
#[test]
fn on_a_cluster_a_key_is_one_request_through_any_broker() {
    let c = common::cluster::Cluster::start(3, "");
    let (status, body) = common::cluster::post(
        &format!("{}/v1/topics", c.url(2)),
        json!({"name": "kc", "partitions": 3}),
    );
    assert_eq!(status, 201, "{body}");
    common::cluster::wait_for("kc known everywhere", || {
        let known =
            (1..=3).all(|id| common::cluster::get(&format!("{}/v1/topics/kc", c.url(id))).0 == 200);
        if known { Ok(()) } else { Err("not yet".into()) }
    });
    let http = common::cluster::http();
    let rt = runtime();
    rt.block_on(async {
        let records = json!([{"key": "a", "value": 1}, {"key": "b", "value": 2}, {"value": 3}]);
        let first = keyed_json(http, c.url(2), "kc", "through-any", records.clone()).await;
        assert_eq!(first.status, 200, "{first:?}");
        for id in [3, 1, 2] {
            let again = keyed_json(http, c.url(id), "kc", "through-any", records.clone()).await;
            assert!(again.replayed, "through {id}: {again:?}");
            assert_eq!(again.as_first(), first, "through {id}");
        }
        let other = keyed_json(http, c.url(3), "kc", "through-any", json!([{"value": 4}])).await;
        assert_problem(&other, 422, "idempotency_key_reused");
        assert_eq!(stored(http, c.url(1), "kc", 3).await, 3, "written once");
    });
}

/// A raw (`application/octet-stream`) produce whose record was appended but not confirmed
/// durable in time says so (`unconfirmed_records`), as a JSON produce does, so its key keeps
/// that answer: a retry is replayed and writes nothing. Before, the raw produce's problem
/// said nothing of the record, the key was released, and the retry stored it again.
#[test]
fn a_raw_produce_of_unknown_outcome_keeps_its_key_and_a_retry_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // Every fsync of a segment file takes 600 ms: the produce's 100 ms wait runs out.
    let env = [("TIDELOG_TEST_SYNC_DELAY_MS".to_string(), "600".to_string())];
    let broker = TestBroker::start_member_with_env(&tmp.path().join("data"), 0, &[], "", &env);
    runtime().block_on(async {
        let http = broker.client();
        create_topic(&http, &broker.url, "raw", 1).await;
        let raw = || {
            send(
                &http,
                &broker.url,
                "/v1/topics/raw/records?timeout_ms=100",
                Some(b"raw-1"),
                "application/octet-stream",
                b"payload",
            )
        };
        let first = raw().await;
        assert_problem(&first, 504, "request_timeout");
        assert_eq!(first.json()["unconfirmed_records"], 1, "{first:?}");
        let retry = raw().await;
        assert!(retry.replayed, "{retry:?}");
        assert_eq!(retry.as_first(), first);
        wait_until(
            "the record to be durable",
            Duration::from_secs(20),
            || async { stored(&http, &broker.url, "raw", 1).await == 1 },
        )
        .await;
    });
}
