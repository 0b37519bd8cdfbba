//! Any broker answers any request (issue 9): three broker processes on loopback. Topic admin
//! and consumer groups sent to any broker reach the controller's broker; a partition's reads
//! (fetch, long-poll, SSE) reach its leader; a produce is split per partition where it lands,
//! the same key going to the same partition whichever broker takes it; a request is
//! forwarded one hop only; an unreachable target is a clear 503.
//!
//! The topic has replication factor 1, so each partition lives on one broker only and every
//! request that reaches another must be forwarded to be served at all.

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, assert_problem, call, get, post, wait_for};
use serde_json::{Value, json};

const TOML: &str = "broker_session_timeout_ms = 3000\n";

fn http() -> common::Client {
    common::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Each partition's leader, as broker `url` describes the topic.
fn leaders(url: &str, topic: &str) -> Vec<u64> {
    let (status, view) = get(&format!("{url}/v1/topics/{topic}"));
    assert_eq!(status, 200, "{view}");
    view["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["leader"].as_u64().expect("a leader"))
        .collect()
}

/// Produces `records` through `url`; the answer's offsets as (partition, offset).
fn produce(url: &str, topic: &str, records: Value) -> Vec<(u64, u64)> {
    let (status, answer) = post(
        &format!("{url}/v1/topics/{topic}/records"),
        json!({ "records": records }),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        matches!(answer["durability"].as_str(), Some("fsync" | "isr-fsync")),
        "{answer}"
    );
    answer["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["partition"].as_u64().unwrap(),
                o["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn values(fetched: &Value) -> Vec<String> {
    fetched["records"]
        .as_array()
        .unwrap_or_else(|| panic!("records in {fetched}"))
        .iter()
        .map(|r| r["value"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn every_broker_serves_every_partition_of_a_topic_it_holds_one_replica_of() {
    let cluster = Cluster::start(3, TOML);
    let url = |id: usize| cluster.url(id).to_string();

    // Created through broker 2: the controller (broker 1) creates it, spread over all three.
    let (status, created) = post(
        &format!("{}/v1/topics", url(2)),
        json!({"name": "spread", "partitions": 3, "replication_factor": 1}),
    );
    assert_eq!(status, 201, "{created}");
    let mut led = leaders(&url(3), "spread");
    led.sort_unstable();
    assert_eq!(led, vec![1, 2, 3], "one partition led by each broker");

    // One record per partition, through broker 3: two parts go to other leaders.
    let placed = produce(
        &url(3),
        "spread",
        json!([
            {"partition": 0, "value": "p0"},
            {"partition": 1, "value": "p1"},
            {"partition": 2, "value": "p2"},
        ]),
    );
    assert_eq!(placed, vec![(0, 0), (1, 0), (2, 0)]);

    // Same key, same partition, whichever broker takes it.
    let by_broker: Vec<u64> = (1..=3)
        .map(|id| produce(&url(id), "spread", json!([{"key": "alice", "value": "k"}]))[0].0)
        .collect();
    assert!(
        by_broker.iter().all(|p| *p == by_broker[0]),
        "{by_broker:?}"
    );

    // Every broker reads every partition (the leader's copy).
    for id in 1..=3 {
        for p in 0..3 {
            let (status, fetched) = get(&format!(
                "{}/v1/topics/spread/partitions/{p}/records?offset=0&max_records=1",
                url(id)
            ));
            assert_eq!(status, 200, "broker {id} partition {p}: {fetched}");
            assert_eq!(values(&fetched), vec![format!("p{p}")], "broker {id}");
        }
    }

    // A forwarded request that misses again is not forwarded a second time.
    let (p, leader) = (0usize, leaders(&url(1), "spread")[0] as usize);
    let other = (leader % 3) + 1;
    let (status, problem) = call(
        http()
            .get(format!(
                "{}/v1/topics/spread/partitions/{p}/records?offset=0",
                url(other)
            ))
            .header("tidelog-forwarded", "9"),
    );
    assert_problem(status, &problem, 421, "not_leader");
    assert_eq!(problem["leader"], leader as u64, "{problem}");

    // A long-poll through a broker that does not lead the partition is answered by the
    // record produced through a third broker, long before its wait is over.
    let third = (other % 3) + 1;
    let third = if third == leader {
        (third % 3) + 1
    } else {
        third
    };
    let (_, before) = get(&format!(
        "{}/v1/topics/spread/partitions/{p}/records?offset=0&max_records=1000",
        url(leader)
    ));
    let next = before["next_offset"].as_u64().expect("a next offset");
    let poll_url = format!(
        "{}/v1/topics/spread/partitions/{p}/records?offset={next}&wait_ms=20000",
        url(other)
    );
    let started = Instant::now();
    let poll = std::thread::spawn(move || get(&poll_url));
    std::thread::sleep(Duration::from_millis(300));
    produce(
        &url(third),
        "spread",
        json!([{"partition": p, "value": "late"}]),
    );
    let (status, fetched) = poll.join().unwrap();
    assert_eq!(status, 200, "{fetched}");
    assert_eq!(values(&fetched), vec!["late".to_string()]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the long-poll waited it out"
    );

    // An SSE stream through a broker that does not lead the partition.
    let stream_url = format!(
        "{}/v1/topics/spread/partitions/{p}/stream?offset=0",
        url(other)
    );
    let metrics_url = format!("{}/metrics", url(leader));
    let streams_open = |metrics_url: &str| {
        common::runtime().block_on(async {
            let text = match http().get(metrics_url).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            text.lines()
                .find_map(|l| l.strip_prefix("tidelog_sse_streams_open "))
                .map(str::to_string)
        })
    };
    let (events, open_meanwhile) = common::runtime().block_on(async {
        let mut response = http().get(stream_url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut text = String::new();
        while !text.contains("late") {
            let chunk = tokio::time::timeout(Duration::from_secs(20), response.chunk())
                .await
                .expect("events arrive")
                .unwrap()
                .expect("the stream stays open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        let url = metrics_url.clone();
        let open = tokio::task::spawn_blocking(move || streams_open(&url))
            .await
            .unwrap();
        (text, open)
    });
    assert!(
        events.contains("id: 0") && events.contains("p0"),
        "{events}"
    );
    assert_eq!(
        open_meanwhile.as_deref(),
        Some("1"),
        "the leader serves the stream"
    );
    // The client went away: the proxied stream on the leader ends too (nothing left open).
    wait_for(
        "the leader's proxied stream to close",
        || match streams_open(&metrics_url).as_deref() {
            Some("0") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // Expansion through broker 3; the new partition is written through broker 1 and read
    // through broker 2.
    let (status, expanded) = post(
        &format!("{}/v1/topics/spread/partitions", url(3)),
        json!({"count": 4}),
    );
    assert_eq!(status, 200, "{expanded}");
    produce(&url(1), "spread", json!([{"partition": 3, "value": "p3"}]));
    let fetched = wait_for("partition 3 read through broker 2", || {
        let (status, fetched) = get(&format!(
            "{}/v1/topics/spread/partitions/3/records?offset=0",
            url(2)
        ));
        (status == 200)
            .then_some(fetched.clone())
            .ok_or(fetched.to_string())
    });
    assert_eq!(values(&fetched), vec!["p3".to_string()]);

    // A consumer group joined through broker 2 is the group described through broker 3.
    let (status, joined) = post(
        &format!("{}/v1/groups/billing/members", url(2)),
        json!({"topics": ["spread"], "session_timeout_ms": 30000}),
    );
    assert_eq!(status, 201, "{joined}");
    let member = joined["member_id"]
        .as_str()
        .expect("a member id")
        .to_string();
    let (status, group) = get(&format!("{}/v1/groups/billing", url(3)));
    assert_eq!(status, 200, "{group}");
    assert!(group.to_string().contains(&member), "{group}");

    // Commits live in `__consumer_offsets`, replicated on all three brokers like any topic,
    // led by the coordinator's broker (the controller, node 1).
    let (status, committed) = post(
        &format!("{}/v1/groups/audit/offsets", url(3)),
        json!({"offsets": [{"topic": "spread", "partition": 0, "offset": 1}]}),
    );
    assert_eq!(status, 200, "{committed}");
    let (status, offsets_topic) = get(&format!("{}/v1/topics/__consumer_offsets", url(2)));
    assert_eq!(status, 200, "{offsets_topic}");
    assert_eq!(offsets_topic["replication_factor"], 3, "{offsets_topic}");
    assert_eq!(
        offsets_topic["partitions"][0]["leader"], 1,
        "{offsets_topic}"
    );
    let (status, read_back) = get(&format!("{}/v1/groups/audit/offsets", url(2)));
    assert_eq!(status, 200, "{read_back}");
    assert!(
        read_back.to_string().contains("\"offset\":1"),
        "{read_back}"
    );
}

#[test]
fn a_forwarded_admin_call_is_not_forwarded_again_and_a_dead_controller_is_a_clear_503() {
    let mut cluster = Cluster::start(3, &format!("{TOML}auto_create_topics = true\n"));
    let url = |id: usize| cluster.url(id).to_string();
    let (status, problem) = call(
        http()
            .post(format!("{}/v1/topics", url(2)))
            .header("tidelog-forwarded", "3")
            .json(&json!({"name": "bounced", "partitions": 1})),
    );
    assert_problem(status, &problem, 421, "not_controller");
    assert_eq!(problem["controller"], 1, "{problem}");

    // Topics of a cluster are made at the controller only: a produce does not make one.
    let (status, problem) = post(
        &format!("{}/v1/topics/ghost/records", url(3)),
        json!({"records": [{"value": 1}]}),
    );
    assert_problem(status, &problem, 404, "topic_not_found");
    let (status, _) = get(&format!("{}/v1/topics/ghost", url(3)));
    assert_eq!(status, 404);

    let u2 = url(2);
    cluster.brokers[0].kill9();
    let (status, problem) = post(
        &format!("{u2}/v1/topics"),
        json!({"name": "orphan", "partitions": 1}),
    );
    assert_problem(status, &problem, 503, "broker_unavailable");
    assert_eq!(problem["node_id"], 1, "{problem}");
    // A method no route serves is answered where it lands, never forwarded.
    let (status, problem) = call(http().put(format!("{u2}/v1/topics/orphan/partitions")));
    assert_problem(status, &problem, 405, "method_not_allowed");
}

#[test]
fn a_split_produce_whose_leader_is_down_reports_each_record() {
    let mut cluster = Cluster::start(3, TOML);
    let url = |id: usize| cluster.url(id).to_string();
    let (status, created) = post(
        &format!("{}/v1/topics", url(2)),
        json!({"name": "halves", "partitions": 3, "replication_factor": 1}),
    );
    assert_eq!(status, 201, "{created}");
    let led = leaders(&url(2), "halves");
    let down = led[2] as usize;
    let through = if down == 2 { 1 } else { 2 };
    cluster.brokers[down - 1].kill9();
    let (status, problem) = post(
        &format!("{}/v1/topics/halves/records", cluster.url(through)),
        json!({"records": [
            {"partition": 0, "value": "a"},
            {"partition": 2, "value": "lost"},
            {"partition": 1, "value": "b"},
        ]}),
    );
    let code = problem["code"].as_str().unwrap_or_default().to_string();
    assert!(
        matches!(
            (status, code.as_str()),
            (503, "broker_unavailable" | "leader_not_available")
        ),
        "{status} {problem}"
    );
    let offsets = problem["offsets"].as_array().expect("one entry per record");
    let stored = |i: usize| offsets[i]["offset"].as_u64();
    // The parts of partitions led elsewhere, where the leader is alive, are stored; the one
    // whose leader is down is not (nothing reached it), and says so.
    let alive = |p: usize| led[p] as usize != down;
    for (i, p) in [(0usize, 0usize), (2, 1)] {
        assert_eq!(stored(i).is_some(), alive(p), "record {i}: {problem}");
    }
    assert!(offsets[1].is_null(), "{problem}");
}

#[test]
fn a_paused_leader_fails_forwarded_requests_within_their_deadline_and_leaves_parts_unconfirmed() {
    // A session long enough that the paused broker is not fenced during the test.
    let toml = "broker_session_timeout_ms = 60000\n[limits]\nforward_timeout_ms = 500\n\
                request_body_bytes_max = 4096\nrecord_bytes_max = 1024\n";
    let cluster = Cluster::start(3, toml);
    let url = |id: usize| cluster.url(id).to_string();
    let (status, created) = post(
        &format!("{}/v1/topics", url(1)),
        json!({"name": "stalled", "partitions": 3, "replication_factor": 1}),
    );
    assert_eq!(status, 201, "{created}");
    let led = leaders(&url(1), "stalled");
    let p = led
        .iter()
        .position(|l| *l == 3)
        .expect("broker 3 leads a partition");
    let q = led
        .iter()
        .position(|l| *l == 1)
        .expect("broker 1 leads a partition");
    cluster.brokers[2].pause();

    let started = Instant::now();
    let (status, problem) = get(&format!(
        "{}/v1/topics/stalled/partitions/{p}/records?offset=0&wait_ms=500",
        url(2)
    ));
    assert_problem(status, &problem, 504, "forward_timeout");
    assert!(started.elapsed() < Duration::from_secs(20), "bounded");

    let (status, problem) = post(
        &format!("{}/v1/topics/stalled/records?timeout_ms=500", url(2)),
        json!({"records": [
            {"partition": p, "value": "maybe"},
            {"partition": q, "value": "surely"},
        ]}),
    );
    assert_problem(status, &problem, 504, "forward_timeout");
    let offsets = &problem["offsets"];
    assert_eq!(offsets[0]["unconfirmed"], true, "{problem}");
    assert_eq!(offsets[1]["partition"], q as u64, "{problem}");
    assert!(offsets[1]["offset"].is_u64(), "{problem}");

    // A body declared over the limit is refused where it lands, not sent to the leader.
    let padding = "x".repeat(5000);
    let (status, problem) = post(
        &format!("{}/v1/topics/stalled/partitions/{p}/delete-records", url(2)),
        json!({"before_offset": 0, "padding": padding}),
    );
    assert_problem(status, &problem, 413, "body_too_large");
    cluster.brokers[2].resume();
}
