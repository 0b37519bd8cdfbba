mod common;

#[tokio::test]
async fn produce_then_fetch_round_trips() {
    let broker = common::TestBroker::start();
    let http = broker.client();
    let r = http
        .post(format!("{}/v1/topics/t/records", broker.url))
        .header("content-type", "application/json")
        .body(r#"{"records":[{"key":"k","value":{"n":1}}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = http
        .get(format!("{}/v1/topics/t/partitions/0/records", broker.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["records"][0]["value"]["n"], 1);
}
