//! Idempotent producers: retries that never duplicate, across disconnects and `kill -9`.
//!
//! A producer session (`POST /v1/producers`) gives an id and an epoch; every produce carries
//! them and a sequence number that grows with each request. A retry of a request (same
//! sequence) is answered with the offsets its first success got and writes nothing. These
//! tests retry at random (after an answer, and after cutting the request off mid-flight),
//! kill the broker in the middle, and then read every partition back: each record is there
//! exactly once, at the offset its first success reported.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::rng::Rng;
use common::{
    Client, TestBroker, create_topic, read_partition_to_high_watermark, runtime, wait_until,
};
use serde_json::{Value, json};

const PARTITIONS: u64 = 8;

async fn session(http: &Client, url: &str, body: Option<Value>) -> (u64, i64) {
    let mut request = http.post(format!("{url}/v1/producers"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the broker answers");
    let status = response.status();
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(status, 201, "{answer}");
    (
        answer["producer_id"].as_u64().expect("an id"),
        answer["producer_epoch"].as_i64().expect("an epoch"),
    )
}

/// Sends one idempotent produce; `(status, body)`.
async fn produce(
    http: &Client,
    url: &str,
    topic: &str,
    query: &str,
    records: &Value,
) -> Result<(u16, Value), String> {
    let response = http
        .post(format!("{url}/v1/topics/{topic}/records?{query}"))
        .json(&json!({ "records": records }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.json().await.map_err(|e| format!("{e:?}"))?;
    Ok((status, body))
}

/// What the producer was told: key → (partition, offset), from the first success.
type Told = HashMap<String, (u64, u64)>;

/// Reads every partition back and checks that each sent key is there exactly once, at the
/// offset it was told, and nothing else is.
async fn assert_exactly_once(http: &Client, url: &str, topic: &str, told: &Told) {
    let mut seen: HashMap<String, (u64, u64)> = HashMap::new();
    for p in 0..PARTITIONS {
        let contents = read_partition_to_high_watermark(http, url, topic, p).await;
        for r in &contents.records {
            let key = r["value"]["id"].as_str().expect("an id").to_string();
            let at = (p, r["offset"].as_u64().expect("an offset"));
            if let Some(first) = seen.insert(key.clone(), at) {
                panic!("{key} is stored twice: at {first:?} and at {at:?}");
            }
        }
    }
    for (key, at) in told {
        assert_eq!(
            seen.get(key),
            Some(at),
            "{key} is not where its answer said"
        );
    }
    assert_eq!(
        seen.len(),
        told.len(),
        "records stored that no answer reported"
    );
}

/// Sends `requests` requests of `per_request` records (half keyed, half spread round-robin)
/// with sequence numbers from `first_sequence`, each retried 0 to 3 times after its first
/// success, and cut off at random before it; `url` may change (a restart) while it runs.
/// Returns what the answers said; panics if it takes over four minutes.
async fn produce_with_retries(
    http: Client,
    url: Arc<Mutex<String>>,
    topic: &str,
    session: (u64, i64),
    requests: u64,
    per_request: u64,
    rng: &mut Rng,
) -> Told {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut told = Told::new();
    for sequence in 0..requests {
        let records: Vec<Value> = (0..per_request)
            .map(|i| {
                let id = format!("r{sequence}-{i}");
                if i % 2 == 0 {
                    json!({"key": id, "value": {"id": id}})
                } else {
                    json!({"value": {"id": id}})
                }
            })
            .collect();
        let records = Value::Array(records);
        let query = format!(
            "producer_id={}&producer_epoch={}&sequence={sequence}",
            session.0, session.1
        );
        let mut retries_after_success = rng.below(4);
        let mut first: Option<Vec<(u64, u64)>> = None;
        while first.is_none() || retries_after_success > 0 {
            assert!(
                Instant::now() < deadline,
                "request {sequence} never succeeded"
            );
            let target = url.lock().unwrap().clone();
            let attempt = produce(&http, &target, topic, &query, &records);
            // One attempt in four is cut off after a few milliseconds, wherever it is.
            let answer = if rng.below(4) == 0 {
                let cut = Duration::from_millis(rng.below(8));
                match tokio::time::timeout(cut, attempt).await {
                    Ok(answer) => answer,
                    Err(_) => continue,
                }
            } else {
                attempt.await
            };
            let Ok((status, body)) = answer else {
                // The broker is down (restarting): try again shortly.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            if status == 503 || status == 504 {
                continue;
            }
            assert_eq!(status, 200, "request {sequence}: {body}");
            let offsets: Vec<(u64, u64)> = body["offsets"]
                .as_array()
                .expect("offsets")
                .iter()
                .map(|o| {
                    (
                        o["partition"].as_u64().unwrap(),
                        o["offset"].as_u64().unwrap(),
                    )
                })
                .collect();
            match &first {
                None => first = Some(offsets),
                Some(original) => {
                    assert_eq!(
                        &offsets, original,
                        "a retry of {sequence} moved its records"
                    );
                    retries_after_success -= 1;
                }
            }
        }
        for (i, at) in first.expect("succeeded").into_iter().enumerate() {
            told.insert(format!("r{sequence}-{i}"), at);
        }
    }
    told
}

#[test]
fn retries_and_cut_off_requests_store_every_record_exactly_once() {
    let broker = TestBroker::start();
    let rt = runtime();
    rt.block_on(async {
        let http = broker.client();
        create_topic(&http, &broker.url, "once", PARTITIONS as u32).await;
        let s = session(&http, &broker.url, None).await;
        let url = Arc::new(Mutex::new(broker.url.clone()));
        let mut rng = Rng(0x1de_0001);
        let told = produce_with_retries(http.clone(), url, "once", s, 200, 100, &mut rng).await;
        assert_eq!(told.len(), 20_000);
        assert_exactly_once(&http, &broker.url, "once", &told).await;
    });
}

#[test]
fn retries_across_a_kill_9_store_every_record_exactly_once() {
    let mut broker = TestBroker::start();
    let rt = runtime();
    let http = broker.client();
    let url = Arc::new(Mutex::new(broker.url.clone()));
    let s = rt.block_on(async {
        create_topic(&http, &broker.url, "crash", PARTITIONS as u32).await;
        session(&http, &broker.url, None).await
    });
    let producer = {
        let (http, url) = (http.clone(), Arc::clone(&url));
        rt.spawn(async move {
            let mut rng = Rng(0x1de_0002);
            produce_with_retries(http, url, "crash", s, 200, 50, &mut rng).await
        })
    };
    // Kill once the producer is well under way, then start again on the same data.
    rt.block_on(wait_until(
        "records before the kill",
        Duration::from_secs(60),
        || {
            let (http, url) = (http.clone(), broker.url.clone());
            async move {
                let d: Value = http
                    .get(format!("{url}/v1/topics/crash"))
                    .send()
                    .await
                    .expect("answers")
                    .json()
                    .await
                    .expect("JSON");
                let stored: u64 = d["partitions"]
                    .as_array()
                    .expect("partitions")
                    .iter()
                    .map(|p| p["high_watermark"].as_u64().unwrap_or(0))
                    .sum();
                stored >= 3_000
            }
        },
    ));
    broker.kill9();
    broker.restart();
    *url.lock().unwrap() = broker.url.clone();
    let told = rt.block_on(producer).expect("the producer finishes");
    assert_eq!(told.len(), 10_000);
    rt.block_on(assert_exactly_once(&http, &broker.url, "crash", &told));
}

#[test]
fn a_newer_incarnation_of_a_named_producer_fences_the_older_even_after_a_restart() {
    let mut broker = TestBroker::start();
    let rt = runtime();
    let http = broker.client();
    let one = json!([{"key": "k", "value": 1}]);
    let query = |(id, epoch): (u64, i64), seq: u32| {
        format!("producer_id={id}&producer_epoch={epoch}&sequence={seq}")
    };
    let (old, new) = rt.block_on(async {
        create_topic(&http, &broker.url, "fence", 2).await;
        let old = session(&http, &broker.url, Some(json!({"name": "billing"}))).await;
        let (status, _) = produce(&http, &broker.url, "fence", &query(old, 0), &one)
            .await
            .unwrap();
        assert_eq!(status, 200);
        let new = session(&http, &broker.url, Some(json!({"name": "billing"}))).await;
        assert_eq!(new.0, old.0, "a name keeps its id");
        assert_eq!(new.1, old.1 + 1, "and gets the next epoch");
        (old, new)
    });
    for restart in [false, true] {
        if restart {
            broker.restart();
        }
        rt.block_on(async {
            let (status, body) = produce(&http, &broker.url, "fence", &query(old, 1), &one)
                .await
                .unwrap();
            assert_eq!(
                (status, body["code"].as_str()),
                (409, Some("producer_fenced")),
                "{body}"
            );
            assert_eq!(body["producer_epoch"], new.1);
        });
    }
    rt.block_on(async {
        let (status, body) = produce(&http, &broker.url, "fence", &query(new, 0), &one)
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let third = session(&http, &broker.url, Some(json!({"name": "billing"}))).await;
        assert_eq!(third, (old.0, new.1 + 1), "epochs survive the restart");
        let p = read_partition_to_high_watermark(&http, &broker.url, "fence", 0).await;
        let q = read_partition_to_high_watermark(&http, &broker.url, "fence", 1).await;
        assert_eq!(
            p.records.len() + q.records.len(),
            2,
            "the fenced produces wrote nothing"
        );
    });
}

/// Every way a sequence can be wrong, and the partition's limit on producers: a 4xx problem
/// with its code, and nothing written.
#[test]
fn bad_sequences_and_producers_are_refused_and_write_nothing() {
    let broker = TestBroker::start_with_config(
        "retention_check_interval_ms = 50\n[limits]\nproducers_per_partition_max = 2\nproducer_idle_timeout_ms = 1500\n",
    );
    let rt = runtime();
    rt.block_on(async {
        let http = broker.client();
        let url = &broker.url;
        create_topic(&http, url, "bad", 1).await;
        let (id, epoch) = session(&http, url, None).await;
        let one = json!([{"value": 1}]);
        let two = json!([{"value": 1}, {"value": 2}]);
        let q = |seq: i64| format!("producer_id={id}&producer_epoch={epoch}&sequence={seq}");
        for seq in [0, 1, 2, 3, 4, 5, 7] {
            let (status, body) = produce(&http, url, "bad", &q(seq), &one).await.unwrap();
            assert_eq!(status, 200, "{body}");
        }
        let cases: Vec<(String, &Value, u16, &str)> = vec![
            (
                format!("producer_id={id}&producer_epoch={epoch}"),
                &one,
                400,
                "invalid_request",
            ),
            (q(-1), &one, 400, "invalid_request"),
            (
                format!("producer_id={id}&producer_epoch=40000&sequence=9"),
                &one,
                400,
                "invalid_request",
            ),
            (
                format!("producer_id={id}&producer_epoch=1&sequence=9"),
                &one,
                400,
                "unknown_producer",
            ),
            (
                "producer_id=999999&producer_epoch=0&sequence=0".into(),
                &one,
                400,
                "unknown_producer",
            ),
            (q(0), &one, 409, "sequence_too_old"),
            (q(6), &one, 409, "sequence_out_of_order"),
            (q(7), &two, 422, "sequence_reused"),
        ];
        for (query, records, status, code) in &cases {
            let (got, body) = produce(&http, url, "bad", query, records).await.unwrap();
            assert_eq!(
                (got, body["code"].as_str()),
                (*status, Some(*code)),
                "{query}: {body}"
            );
        }
        // Two producers are tracked: a third is refused until one has been idle long enough.
        let (second, _) = session(&http, url, None).await;
        let (third, _) = session(&http, url, None).await;
        let as_producer = |p: u64| format!("producer_id={p}&producer_epoch=0&sequence=0");
        let (status, _) = produce(&http, url, "bad", &as_producer(second), &one)
            .await
            .unwrap();
        assert_eq!(status, 200);
        let (status, body) = produce(&http, url, "bad", &as_producer(third), &one)
            .await
            .unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("limit_exceeded")),
            "{body}"
        );
        assert_eq!(body["limit_name"], "producers_per_partition_max");
        let stored = read_partition_to_high_watermark(&http, url, "bad", 0).await;
        assert_eq!(stored.records.len(), 8, "nothing refused was written");
        wait_until("idle producers expire", Duration::from_secs(30), || {
            let (http, query, one) = (http.clone(), as_producer(third), one.clone());
            async move {
                let (status, _) = produce(&http, url, "bad", &query, &one).await.unwrap();
                status == 200
            }
        })
        .await;
    });
}
