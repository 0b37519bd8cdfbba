//! Any broker answers any request (issue 9): three broker processes on loopback; admin calls
//! and consumer groups sent to any of them reach the controller's broker, a request is
//! forwarded one hop only, and an unreachable target is a clear 503.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::TestBroker;
use serde_json::{Value, json};

/// Generous: two shared cores, debug builds, other tests running.
const DEADLINE: Duration = Duration::from_secs(60);

fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let port = |i: usize| listeners[i].local_addr().unwrap().port();
    [port(0), port(1), port(2)]
}

fn start_cluster(root: &Path) -> Vec<TestBroker> {
    let ports = free_ports();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let brokers: Vec<TestBroker> = (1..=3)
        .map(|id| {
            let args = [
                "--node-id".to_string(),
                id.to_string(),
                "--peers".to_string(),
                peers.clone(),
            ];
            let data = root.join(format!("n{id}")).join("data");
            TestBroker::start_member(
                &data,
                ports[id - 1],
                &args,
                "broker_session_timeout_ms = 3000\n",
            )
        })
        .collect();
    for b in &brokers {
        wait_for(&format!("{} ready", b.url), || {
            let (status, body) = get(&format!("{}/readyz", b.url));
            (status == 200)
                .then_some(())
                .ok_or(format!("{status} {body}"))
        });
    }
    brokers
}

fn http() -> &'static (tokio::runtime::Runtime, reqwest::Client) {
    static HTTP: OnceLock<(tokio::runtime::Runtime, reqwest::Client)> = OnceLock::new();
    HTTP.get_or_init(|| {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        (common::runtime(), client)
    })
}

/// Sends a request; `(0, null)` when the broker does not answer.
fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
    http().0.block_on(async move {
        match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    })
}

fn get(url: &str) -> (u16, Value) {
    call(http().1.get(url))
}

fn post(url: &str, body: Value) -> (u16, Value) {
    call(http().1.post(url).json(&body))
}

fn wait_for<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => panic!("{what}: still {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn admin_and_groups_reach_the_controller_through_any_broker_once() {
    let root = tempfile::tempdir().unwrap();
    let mut brokers = start_cluster(root.path());
    let urls: Vec<String> = brokers.iter().map(|b| b.url.clone()).collect();
    let url = |id: usize| urls[id - 1].clone();

    // Topic admin sent to broker 3 is served by the controller (broker 1).
    let (status, created) = post(
        &format!("{}/v1/topics", url(3)),
        json!({"name": "forwarded", "partitions": 2}),
    );
    assert_eq!(status, 201, "{created}");
    let (status, topic) = get(&format!("{}/v1/topics/forwarded", url(1)));
    assert_eq!(status, 200, "the controller has the topic: {topic}");

    // A request another broker already forwarded is not forwarded again.
    let (status, problem) = call(
        http()
            .1
            .post(format!("{}/v1/topics", url(2)))
            .header("tidelog-forwarded", "3")
            .json(&json!({"name": "bounced", "partitions": 1})),
    );
    assert_eq!(
        (status, problem["code"].as_str()),
        (421, Some("not_controller"))
    );
    assert_eq!(problem["controller"], 1, "{problem}");

    // A group joined through broker 2 is the group described through broker 3.
    let (status, joined) = post(
        &format!("{}/v1/groups/billing/members", url(2)),
        json!({"topics": ["forwarded"], "session_timeout_ms": 30000}),
    );
    assert_eq!(status, 201, "{joined}");
    let member = joined["member_id"]
        .as_str()
        .expect("a member id")
        .to_string();
    let (status, group) = get(&format!("{}/v1/groups/billing", url(3)));
    assert_eq!(status, 200, "{group}");
    assert!(group.to_string().contains(&member), "{group}");

    // The controller down: the admin call fails at once, saying nothing was sent.
    brokers[0].kill9();
    let (status, problem) = post(
        &format!("{}/v1/topics", url(2)),
        json!({"name": "orphan", "partitions": 1}),
    );
    assert_eq!(
        (status, problem["code"].as_str()),
        (503, Some("broker_unavailable")),
        "{problem}"
    );
    assert_eq!(problem["node_id"], 1, "{problem}");
}
