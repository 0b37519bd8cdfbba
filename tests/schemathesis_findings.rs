//! Regressions for what fuzzing the API with its OpenAPI document found.

mod common;

use serde_json::json;

/// Deleting a topic renames its directory into `trash/` as `<name>-<timestamp>`; with a
/// 249-character name that was longer than a file name may be, so the delete failed with a
/// 500 `io_error` after the topic had already been dropped from memory, and it came back on
/// restart.
#[tokio::test]
async fn a_topic_with_the_longest_allowed_name_can_be_deleted_for_good() {
    let mut broker = common::TestBroker::start();
    let http = broker.client();
    let name = "t".repeat(249);
    let r = http
        .post(format!("{}/v1/topics", broker.url))
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .delete(format!("{}/v1/topics/{name}", broker.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());

    broker.restart();
    let r = broker
        .client()
        .get(format!("{}/v1/topics/{name}", broker.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "the deleted topic came back after a restart"
    );
}
