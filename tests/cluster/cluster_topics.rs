//! Topics on a cluster (issue 9, part 1): created, expanded, configured and deleted at the
//! controller, answered once every broker holds its replicas; the topic view shows each
//! partition's leader, epoch, replicas and ISR; a broker without a replica of a partition
//! says `not_a_replica`; a single broker's data directory is never started as a member.

use crate::common;

use common::TestBroker;
use common::cluster::{Cluster, assert_problem, call, delete, get, http, patch, post, run_to_exit};
use serde_json::{Value, json};

/// Short sessions keep the test quick; heartbeats go every quarter of it.
const TOML: &str = "broker_session_timeout_ms = 3000\n";

fn partitions(view: &Value) -> &Vec<Value> {
    view["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("{view}"))
}

fn ids(v: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn topics_are_made_at_the_controller_and_held_by_every_replica() {
    let cluster = Cluster::start(3, TOML);
    let topics = |id: usize| format!("{}/v1/topics", cluster.url(id));

    // Only the controller (node 1) makes topics; a request forwarded once is not forwarded
    // again.
    let (status, problem) = call(
        http()
            .post(topics(2))
            .header("tidelog-forwarded", "3")
            .json(&json!({"name": "orders", "partitions": 3})),
    );
    assert_problem(status, &problem, 421, "not_controller");
    assert_eq!(problem["controller"], 1, "{problem}");
    assert_eq!(
        problem["controller_address"],
        format!("127.0.0.1:{}", cluster.ports[0])
    );

    // Factor 3 (the default with three brokers), min ISR 2 (the default), sent to node 2
    // (forwarded to the controller): answered once every broker holds its replicas, so each
    // shows the topic at once.
    let (status, created) = post(&topics(2), json!({"name": "orders", "partitions": 3}));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["replication_factor"], 3);
    assert_eq!(created["config"]["min_insync_replicas"], 2);
    let leaders: Vec<u64> = partitions(&created)
        .iter()
        .map(|p| p["leader"].as_u64().unwrap())
        .collect();
    let mut spread = leaders.clone();
    spread.sort_unstable();
    assert_eq!(spread, vec![1, 2, 3], "leaders spread: {created}");
    for id in 1..=3 {
        let (status, view) = get(&format!("{}/orders", topics(id)));
        assert_eq!(status, 200, "{view}");
        for (i, p) in partitions(&view).iter().enumerate() {
            assert_eq!(p["leader"], leaders[i], "{view}");
            assert_eq!(p["leader_epoch"], created["partitions"][i]["leader_epoch"]);
            assert_eq!(ids(&p["replicas"]), vec![1, 2, 3], "{view}");
            assert_eq!(ids(&p["isr"]), vec![1, 2, 3], "{view}");
            assert_eq!(p["log_end_offset"], 0, "a local replica on {id}: {view}");
            assert!(
                cluster
                    .data_dir(id)
                    .join("topics/orders")
                    .join(i.to_string())
                    .is_dir()
            );
        }
    }

    // A factor above the live brokers is refused, naming how many there are; so is 0.
    let (status, problem) = post(&topics(1), json!({"name": "wide", "replication_factor": 4}));
    assert_problem(status, &problem, 400, "not_enough_brokers");
    assert_eq!(problem["alive_brokers"], 3, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("3 are alive"),
        "{problem}"
    );
    let (status, problem) = post(&topics(1), json!({"name": "none", "replication_factor": 0}));
    assert_problem(status, &problem, 400, "not_enough_brokers");
    let (status, problem) = post(
        &topics(1),
        json!({"name": "strict", "replication_factor": 2, "config": {"min_insync_replicas": 3}}),
    );
    assert_problem(status, &problem, 400, "invalid_request");
    let (status, problem) = post(&topics(1), json!({"name": "orders"}));
    assert_problem(status, &problem, 409, "topic_exists");

    // Factor 1 over three partitions: one replica each, on three brokers. A broker that holds
    // no replica of a partition says so when asked for its own (`replica=local`; a plain
    // fetch is forwarded to the leader), and shows the partition without local figures.
    let (status, solo) = post(
        &topics(1),
        json!({"name": "solo", "partitions": 3, "replication_factor": 1}),
    );
    assert_eq!(status, 201, "{solo}");
    for (p, view) in partitions(&solo).iter().enumerate() {
        let holder = view["replicas"][0].as_u64().unwrap() as usize;
        let other = holder % 3 + 1;
        let records = |id: usize| format!("{}/solo/partitions/{p}/records?offset=0", topics(id));
        let (status, page) = get(&format!("{}&replica=local", records(holder)));
        assert_eq!(status, 200, "{page}");
        let (status, problem) = get(&format!("{}&replica=local", records(other)));
        assert_problem(status, &problem, 421, "not_a_replica");
        let (status, page) = get(&records(other));
        assert_eq!(status, 200, "forwarded to the leader: {page}");
        let (_, seen) = get(&format!("{}/solo", topics(other)));
        assert_eq!(
            seen["partitions"][p]["log_end_offset"],
            Value::Null,
            "{seen}"
        );
        assert_eq!(seen["partitions"][p]["leader"], holder, "{seen}");
    }

    // Expansion and config changes reach every broker before the answer.
    let (status, grown) = post(
        &format!("{}/orders/partitions", topics(1)),
        json!({"count": 4}),
    );
    assert_eq!(status, 200, "{grown}");
    let (status, changed) = patch(
        &format!("{}/orders", topics(1)),
        json!({"config": {"retention_ms": 60000}}),
    );
    assert_eq!(status, 200, "{changed}");
    for id in 1..=3 {
        let (_, view) = get(&format!("{}/orders", topics(id)));
        assert_eq!(partitions(&view).len(), 4, "{view}");
        assert_eq!(view["partitions"][3]["log_end_offset"], 0, "{view}");
        assert_eq!(view["config"]["retention_ms"], 60000, "{view}");
    }
    let (_, list) = get(&topics(3));
    let names: Vec<&str> = list["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["orders", "solo"], "{list}");

    // Delete removes it everywhere, data included, before the answer.
    let (status, _) = delete(&format!("{}/orders", topics(1)));
    assert_eq!(status, 204);
    for id in 1..=3 {
        let (status, problem) = get(&format!("{}/orders", topics(id)));
        assert_problem(status, &problem, 404, "topic_not_found");
        assert!(!cluster.data_dir(id).join("topics/orders").exists());
    }
    let (status, problem) = delete(&format!("{}/orders", topics(1)));
    assert_problem(status, &problem, 404, "topic_not_found");

    // Created again under the same name, with factor 2: another topic, held by two brokers.
    let (status, again) = post(
        &topics(3),
        json!({"name": "orders", "partitions": 1, "replication_factor": 2}),
    );
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["topic_id"], created["topic_id"]);
    let holders = ids(&again["partitions"][0]["replicas"]);
    for id in 1..=3 {
        let held = cluster.data_dir(id).join("topics/orders/0").is_dir();
        assert_eq!(held, holders.contains(&(id as u64)), "broker {id}: {again}");
    }
}

#[test]
fn a_restarted_broker_keeps_its_replicas_and_drops_those_deleted_while_it_was_down() {
    let mut cluster = Cluster::start(3, TOML);
    let topics = format!("{}/v1/topics", cluster.url(1));
    for name in ["kept", "dropped"] {
        let (status, view) = post(&topics, json!({"name": name, "partitions": 2}));
        assert_eq!(status, 201, "{view}");
    }
    let third = cluster.data_dir(3);
    assert!(third.join("topics/dropped/1").is_dir());

    // Answered once node 3 is fenced (its session expired): it holds no live replica then.
    cluster.brokers[2].kill9();
    let (status, problem) = delete(&format!("{topics}/dropped"));
    assert_eq!(status, 204, "{problem}");
    assert!(third.join("topics/dropped/1").is_dir(), "node 3 was down");

    cluster.brokers[2].restart();
    cluster.wait_ready(3);
    let url = cluster.url(3).to_string();
    common::cluster::wait_for("node 3 drops the deleted topic's replicas", || {
        if third.join("topics/dropped").exists() {
            Err("still there".to_string())
        } else {
            Ok(())
        }
    });
    let (status, view) = get(&format!("{url}/v1/topics/kept"));
    assert_eq!(status, 200, "{view}");
    for p in partitions(&view) {
        assert_eq!(p["log_end_offset"], 0, "its own replica, reopened: {view}");
    }
    let (status, problem) = get(&format!("{url}/v1/topics/dropped"));
    assert_problem(status, &problem, 404, "topic_not_found");
}

#[test]
fn a_single_brokers_data_directory_is_not_started_as_a_cluster_member() {
    let mut alone = TestBroker::start();
    let (status, _) = post(
        &format!("{}/v1/topics", alone.url),
        json!({"name": "kept", "partitions": 1}),
    );
    assert_eq!(status, 201);
    assert_eq!(alone.terminate(), Some(0));
    let data = alone.data_dir.to_str().unwrap().to_string();
    let ports = common::cluster::free_ports(3);
    let (code, stderr) = run_to_exit(&[
        "--listen",
        &format!("127.0.0.1:{}", ports[0]),
        "--data-dir",
        &data,
        "--node-id",
        "1",
        "--peers",
        &common::cluster::peers(&ports),
    ]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("single broker (kept)"), "{stderr}");
    assert!(alone.data_dir.join("topics/kept/topic.json").exists());
    assert!(
        !alone.data_dir.join("__cluster").exists(),
        "nothing written"
    );
    // Started alone again, it serves its topic as before.
    alone.restart();
    let (status, view) = get(&format!("{}/v1/topics/kept", alone.url));
    assert_eq!(status, 200, "{view}");
}
