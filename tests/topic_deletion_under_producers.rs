//! Deleting a topic while producers keep writing to it: the deletion sticks. With
//! `auto_create_topics` on, a produce to the deleted name must not bring the topic back
//! (with the default config and partition count) behind the operator's back.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::TestBroker;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_under_live_producers_stays_deleted() {
    let broker = TestBroker::start_with_config("auto_create_topics = true\n");
    let http = broker.client();
    let url = broker.url.clone();
    common::create_topic(&http, &url, "live", 4).await;

    let deleted = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let (http, url, deleted) = (http.clone(), url.clone(), Arc::clone(&deleted));
            tokio::spawn(async move {
                // Produce until the topic is deleted, then 20 more times: each is a chance
                // to auto-create it again. Bounded in count and in time.
                let started = Instant::now();
                let mut after_delete: Vec<(u16, Value)> = Vec::new();
                while after_delete.len() < 20 && started.elapsed() < Duration::from_secs(30) {
                    // Only requests sent once the deletion was answered must find no topic.
                    let sent_after_delete = deleted.load(Ordering::SeqCst);
                    let r = http
                        .post(format!("{url}/v1/topics/live/records"))
                        .json(&json!({"records": [{"value": 1}]}))
                        .send()
                        .await
                        .expect("the broker answers");
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    if sent_after_delete {
                        after_delete.push((status, body));
                    }
                }
                after_delete
            })
        })
        .collect();
    // Let the producers write for a moment, then delete.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = http
        .delete(format!("{url}/v1/topics/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    deleted.store(true, Ordering::SeqCst);
    for producer in producers {
        let answers = producer.await.unwrap();
        assert!(!answers.is_empty(), "a producer ran after the deletion");
        for (status, body) in answers {
            assert_eq!(
                (status, body["code"].as_str()),
                (404, Some("topic_not_found")),
                "a produce after the deletion: {body}"
            );
        }
    }
    let r = http
        .get(format!("{url}/v1/topics/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "the deleted topic came back");

    // An explicit create is always allowed, and auto-creation of other names still works.
    common::create_topic(&http, &url, "live", 2).await;
    let r = http
        .post(format!("{url}/v1/topics/fresh/records"))
        .json(&json!({"records": [{"value": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// A long-poll waiting on a partition whose topic is deleted is told so (404
/// `topic_not_found`), not answered an empty page as if no record had come.
#[tokio::test]
async fn a_long_poll_on_a_topic_deleted_while_it_waits_gets_topic_not_found() {
    let broker = TestBroker::start();
    let http = broker.client();
    let url = broker.url.clone();
    common::create_topic(&http, &url, "short-lived", 1).await;
    let poll = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http
                .get(format!(
                    "{url}/v1/topics/short-lived/partitions/0/records?offset=latest&wait_ms=30000"
                ))
                .send()
                .await
                .expect("the long-poll is answered");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    });
    common::wait_until("the long-poll waits", Duration::from_secs(10), || async {
        common::scrape_unlabelled_metric(&http, &url, "tidelog_long_polls_waiting").await == 1.0
    })
    .await;
    let r = http
        .delete(format!("{url}/v1/topics/short-lived"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (status, problem) = poll.await.unwrap();
    assert_eq!(status, 404, "{problem}");
    assert_eq!(problem["code"], "topic_not_found", "{problem}");
}
