//! Long-polls, SSE streams and group member fetches hold a waiter's slot: its gauge comes
//! back down however the waiter ends (a client that disconnects included), and past
//! `long_polls_max` / `streams_max` a new waiter is refused with a 503 and `Retry-After`
//! while producers go on being served.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{Api, TestBroker};
use serde_json::{Value, json};

const LONG_POLLS_WAITING: &str = "tidelog_long_polls_waiting";
const SSE_STREAMS_OPEN: &str = "tidelog_sse_streams_open";

impl Api {
    async fn wait_for_gauge(&self, name: &str, value: f64) {
        common::wait_until(
            &format!("{name} to be {value}"),
            Duration::from_secs(20),
            || async {
                common::scrape_unlabelled_metric(&self.http, &self.url, name).await == value
            },
        )
        .await;
    }

    async fn join_group(&self, group: &str, topic: &str) -> String {
        let response = self
            .http
            .post(format!("{}/v1/groups/{group}/members", self.url))
            .json(&json!({"topics": [topic], "session_timeout_ms": 30_000}))
            .send()
            .await
            .expect("the broker answers");
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.expect("JSON");
        body["member_id"].as_str().expect("a member id").to_string()
    }
}

/// Opens a connection and sends `GET path` on it without reading the answer: a client that
/// will go away without a word.
fn open_get(url: &str, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(url.trim_start_matches("http://")).expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    stream
}

const LONG_POLL: &str = "/v1/topics/t/partitions/0/records?offset=0&wait_ms=30000";
const STREAM: &str = "/v1/topics/t/partitions/0/stream?offset=0";

#[test]
fn waiting_gauges_return_to_zero_when_clients_disconnect() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    common::runtime().block_on(async {
        common::create_topic(&api.http, &api.url, "t", 1).await;
        let mut clients: Vec<TcpStream> = (0..3).map(|_| open_get(&api.url, LONG_POLL)).collect();
        let mut expected_long_polls = 3.0;
        if common::consumer_group_routes_served() {
            let member = api.join_group("g", "t").await;
            let path = format!("/v1/groups/g/members/{member}/records?wait_ms=30000");
            clients.push(open_get(&api.url, &path));
            expected_long_polls += 1.0;
        }
        clients.extend((0..2).map(|_| open_get(&api.url, STREAM)));
        api.wait_for_gauge(LONG_POLLS_WAITING, expected_long_polls)
            .await;
        api.wait_for_gauge(SSE_STREAMS_OPEN, 2.0).await;

        drop(clients);
        api.wait_for_gauge(LONG_POLLS_WAITING, 0.0).await;
        api.wait_for_gauge(SSE_STREAMS_OPEN, 0.0).await;
    });
}

#[test]
fn waiters_past_their_limits_get_503_and_producers_are_still_served() {
    let broker = TestBroker::start_with_config("[limits]\nlong_polls_max = 2\nstreams_max = 1\n");
    let api = Api::new(&broker);
    common::runtime().block_on(async {
        common::create_topic(&api.http, &api.url, "t", 1).await;
        let mut long_polls: Vec<TcpStream> =
            (0..2).map(|_| open_get(&api.url, LONG_POLL)).collect();
        let stream = open_get(&api.url, STREAM);
        api.wait_for_gauge(LONG_POLLS_WAITING, 2.0).await;
        api.wait_for_gauge(SSE_STREAMS_OPEN, 1.0).await;

        for (path, limit_name) in [(LONG_POLL, "long_polls_max"), (STREAM, "streams_max")] {
            common::assert_get_overloaded(&api.http, &api.url, path, limit_name).await;
        }
        // A fetch that does not wait needs no slot, and producers are served.
        common::get_json_ok(
            &api.http,
            &api.url,
            "/v1/topics/t/partitions/0/records?offset=0",
        )
        .await;
        common::produce_json_acks_all(&api.http, &api.url, "t", json!([{"value": 1}])).await;

        // The produce woke both long-polls; their slots are free again, as is the stream's
        // once its client goes.
        api.wait_for_gauge(LONG_POLLS_WAITING, 0.0).await;
        long_polls.clear();
        drop(stream);
        api.wait_for_gauge(SSE_STREAMS_OPEN, 0.0).await;
        let response = api
            .http
            .get(format!(
                "{}/v1/topics/t/partitions/0/records?offset=1&wait_ms=10",
                api.url
            ))
            .send()
            .await
            .expect("the broker answers");
        assert_eq!(response.status(), 200);
    });
}
