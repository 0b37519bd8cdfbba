//! Partition reassignment (KIP-455) while traffic flows: `POST
//! /v1/topics/{t}/partitions/{p}/reassignment` moves a partition to another replica set, the
//! added replica catches up outside the ISR, the move completes once the whole target is in
//! sync, leadership leaves a removed leader, and the removed broker deletes its copy, with
//! `acks=all` producers running throughout and every acknowledged record read back from the
//! new replicas. A move that cannot finish (its new replica is down) is listed, refuses a
//! second move, and is cancelled with `DELETE`. A broker that was down when a move took its
//! replica away deletes the copy when it returns. A move outlives the controller that
//! started it (five brokers: the new replica and the controller down together still leave a
//! quorum) and completes under the next one.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::checker::{History, Outcome};
use common::cluster::{
    self, Cluster, assert_problem, delete, describe, get, post, read_every_replica, replicas_of,
    wait_for,
};
use serde_json::{Value, json};

/// Short timings, so a stopped broker is fenced within seconds.
const TOML: &str = "broker_session_timeout_ms = 2000\n\
                    replica_lag_time_max_ms = 2000\n\
                    replica_fetch_wait_max_ms = 200\n\
                    raft_heartbeat_ms = 100\n\
                    raft_election_timeout_ms = 500\n";

/// Bounds of the producer: batches, and wall time.
const BATCHES_MAX: usize = 2_000;
const PRODUCE_FOR_MAX: Duration = Duration::from_secs(120);
const RECORDS_PER_BATCH: usize = 5;

fn reassignment_url(c: &Cluster, via: usize, topic: &str, p: u32) -> String {
    format!(
        "{}/v1/topics/{topic}/partitions/{p}/reassignment",
        c.url(via)
    )
}

fn create(c: &Cluster, topic: &str, partitions: u32, min_insync: u32) {
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": topic, "partitions": partitions, "replication_factor": 2,
               "config": {"min_insync_replicas": min_insync}}),
    );
    assert_eq!(status, 201, "{body}");
}

/// Partition 0's replicas once both are in its ISR.
fn in_sync_replicas(c: &Cluster, topic: &str) -> Vec<usize> {
    wait_for("partition 0 with a full ISR", || {
        let p = partition_view(c, 1, topic, 0);
        match cluster::node_ids(&p["isr"]).len() {
            2 => Ok(cluster::node_ids(&p["replicas"])),
            _ => Err(p.to_string()),
        }
    })
}

/// Waits until broker `via` sees two brokers alive (the stopped one fenced).
fn wait_two_alive(c: &Cluster, via: usize) {
    wait_for("the stopped broker fenced", || {
        let (_, view) = get(&format!("{}/v1/cluster", c.url(via)));
        let alive = view["brokers"]
            .as_array()
            .map_or(0, |bs| bs.iter().filter(|b| b["status"] == "alive").count());
        if alive == 2 {
            Ok(())
        } else {
            Err(view.to_string())
        }
    });
}

/// Waits until `dir` is gone (a removed replica's copy, put in the trash).
fn wait_gone(dir: &std::path::Path, what: &str) {
    wait_for(what, || match dir.exists() {
        true => Err(format!("{} still there", dir.display())),
        false => Ok(()),
    });
}

/// The partition's view on broker `id`.
fn partition_view(c: &Cluster, id: usize, topic: &str, p: u32) -> Value {
    describe(c, id, topic)["partitions"][p as usize].clone()
}

/// What answered a refused batch: retryable, outcome unknown or not written. A move never
/// answers as if the storage failed or the topic were gone.
const RETRYABLE: [&str; 6] = [
    "leader_changed_after_append",
    "not_leader",
    "not_enough_replicas",
    "not_enough_replicas_after_append",
    "broker_unavailable",
    "request_timeout",
];

/// Produces batches of acks=all records to partition `p` through broker `via` until `stop`
/// (or the bounds), recording every outcome; panics on a refusal a move should not cause.
fn produce_until(url: String, topic: &'static str, p: u32, stop: Arc<AtomicBool>) -> History {
    let mut history = History::default();
    let started = Instant::now();
    for batch in 0..BATCHES_MAX {
        if stop.load(Ordering::Relaxed) || started.elapsed() > PRODUCE_FOR_MAX {
            break;
        }
        let values: Vec<String> = (0..RECORDS_PER_BATCH)
            .map(|i| format!("b{batch}-r{i}"))
            .collect();
        let records: Vec<Value> = values
            .iter()
            .map(|v| json!({"partition": p, "value": v}))
            .collect();
        let (status, body) = post(
            &format!("{url}/v1/topics/{topic}/records?acks=all&timeout_ms=5000"),
            json!({ "records": records }),
        );
        for (i, v) in values.iter().enumerate() {
            let outcome = match body["offsets"][i]["offset"].as_u64() {
                Some(offset) if status == 200 => Outcome::Acknowledged {
                    partition: p,
                    offset,
                },
                _ => Outcome::Unknown,
            };
            history.produced(v, outcome);
        }
        if status != 200 {
            let code = body["code"].as_str().unwrap_or_default();
            assert!(RETRYABLE.contains(&code), "batch {batch}: {status} {body}");
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(
                detail.matches("of the body's").count() <= 1,
                "the records' fates are told once: {detail}"
            );
            eprintln!("batch {batch} refused during the move: {status} {code}");
            // A leadership change answers an error; the next batch goes to the new leader.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    history
}

#[test]
fn a_partition_moves_off_its_leader_under_acks_all_load_and_keeps_every_acknowledged_record() {
    const TOPIC: &str = "moving";
    let c = Cluster::start(3, TOML);
    create(&c, TOPIC, 3, 2);
    let original = wait_for("partition 0 with a leader and a full ISR", || {
        let p = partition_view(&c, 1, TOPIC, 0);
        let isr = cluster::node_ids(&p["isr"]);
        match p["leader"].as_u64() {
            Some(l) if isr.len() == 2 => Ok((l as usize, cluster::node_ids(&p["replicas"]))),
            _ => Err(p.to_string()),
        }
    });
    let (leader, replicas) = original;
    let kept = *replicas.iter().find(|r| **r != leader).unwrap();
    let spare = (1..=3).find(|n| !replicas.contains(n)).unwrap();

    // Producers send through the replica that stays; records keep flowing during the move.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (url, stop) = (c.url(kept).to_string(), Arc::clone(&stop));
        std::thread::spawn(move || produce_until(url, TOPIC, 0, stop))
    };
    wait_for("records acknowledged before the move", || {
        let end = partition_view(&c, leader, TOPIC, 0)["log_end_offset"].as_u64();
        match end {
            Some(e) if e >= 50 => Ok(()),
            other => Err(format!("log end {other:?}")),
        }
    });

    let target = json!({"replicas": [spare, kept]});
    let (status, started) = post(&reassignment_url(&c, spare, TOPIC, 0), target);
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["moving"], true, "{started}");
    assert_eq!(cluster::node_ids(&started["target"]), vec![spare, kept]);
    assert_eq!(cluster::node_ids(&started["adding"]), vec![spare]);
    assert_eq!(cluster::node_ids(&started["removing"]), vec![leader]);
    assert_eq!(
        cluster::node_ids(&started["replicas"]),
        vec![spare, kept, leader],
        "the target, then the replica it removes"
    );

    let done = wait_for("the move completed", || {
        let (_, list) = get(&format!("{}/v1/reassignments", c.url(kept)));
        let p = partition_view(&c, kept, TOPIC, 0);
        let finished = list["reassignments"].as_array().is_some_and(Vec::is_empty)
            && cluster::node_ids(&p["replicas"]) == vec![spare, kept];
        if finished {
            Ok(p)
        } else {
            Err(format!("{list} {p}"))
        }
    });
    assert_eq!(
        done["leader"].as_u64(),
        Some(spare as u64),
        "leadership left the removed replica for the target's first: {done}"
    );
    let mut isr = cluster::node_ids(&done["isr"]);
    isr.sort_unstable();
    let mut want = vec![spare, kept];
    want.sort_unstable();
    assert_eq!(isr, want, "{done}");

    // More records under the new leader, then stop.
    let end_at_move = done["log_end_offset"].as_u64().unwrap_or(0);
    wait_for("records acknowledged after the move", || {
        let end = partition_view(&c, spare, TOPIC, 0)["log_end_offset"].as_u64();
        match end {
            Some(e) if e >= end_at_move + 50 => Ok(()),
            other => Err(format!("log end {other:?}, {end_at_move} at the move")),
        }
    });
    stop.store(true, Ordering::Relaxed);
    let history = producer.join().unwrap();
    assert!(history.acknowledged() >= 100, "{}", history.acknowledged());

    // Every acknowledged record, at its offset, on both new replicas.
    let reads = read_every_replica(&c, kept, TOPIC, 1);
    assert_eq!(reads.len(), 2, "the partition's two replicas were read");
    assert!(reads.iter().any(|r| r.node as usize == spare));
    let anomalies = history.check(&reads);
    assert!(anomalies.is_empty(), "{anomalies:?}");

    // The removed broker put its copy in the trash, and kept its other partitions.
    let removed_dir = c.data_dir(leader).join("topics").join(TOPIC).join("0");
    wait_gone(&removed_dir, "the removed replica's directory gone");
    for p in 1..3u32 {
        if replicas_of(&c, kept, TOPIC, p).contains(&leader) {
            let dir = c
                .data_dir(leader)
                .join("topics")
                .join(TOPIC)
                .join(p.to_string());
            assert!(dir.exists(), "partition {p} stays on broker {leader}");
        }
    }
    // A fetch from the removed broker is forwarded to the new leader.
    let (status, page) = get(&format!(
        "{}/v1/topics/{TOPIC}/partitions/0/records?offset=0&max_records=1",
        c.url(leader)
    ));
    assert_eq!(status, 200, "{page}");
}

#[test]
fn a_stuck_move_is_listed_refuses_another_and_is_cancelled_and_bad_moves_are_refused() {
    const TOPIC: &str = "stuck";
    let mut c = Cluster::start(3, TOML);
    create(&c, TOPIC, 2, 1);
    let replicas = in_sync_replicas(&c, TOPIC);
    let spare = (1..=3).find(|n| !replicas.contains(n)).unwrap();
    let via = replicas[0];
    let url = reassignment_url(&c, via, TOPIC, 0);

    // Refusals, before anything moves.
    for (body, code) in [
        (json!({"replicas": [spare]}), "invalid_request"),
        (json!({"replicas": [spare, spare]}), "invalid_request"),
        (json!({"replicas": [spare, 9]}), "invalid_request"),
        (json!({"replicas": "1,2"}), "invalid_request"),
        (
            json!({"replicas": [1, 2], "throttle": 1}),
            "invalid_request",
        ),
        (
            json!({"replicas": [spare, via], "throttle_bytes_per_s": 0}),
            "invalid_request",
        ),
    ] {
        let (status, problem) = post(&url, body.clone());
        assert_problem(status, &problem, 400, code);
    }
    let (status, problem) = post(
        &reassignment_url(&c, via, "nope", 0),
        json!({"replicas": [1, 2]}),
    );
    assert_problem(status, &problem, 404, "topic_not_found");
    let (status, problem) = post(
        &reassignment_url(&c, via, TOPIC, 7),
        json!({"replicas": [1, 2]}),
    );
    assert_problem(status, &problem, 404, "partition_not_found");
    let (status, problem) = delete(&url);
    assert_problem(status, &problem, 409, "no_reassignment");
    let (status, same) = post(&url, json!({"replicas": replicas}));
    assert_eq!((status, &same["moving"]), (200, &json!(false)), "{same}");

    // The spare is down, so a move to it cannot finish.
    c.brokers[spare - 1].kill9();
    wait_two_alive(&c, via);
    let (status, started) = post(&url, json!({"replicas": [replicas[1], spare]}));
    assert_eq!(status, 202, "{started}");
    let (status, problem) = post(&url, json!({"replicas": [spare, replicas[0]]}));
    assert_problem(status, &problem, 409, "reassignment_in_progress");
    assert_eq!(
        cluster::node_ids(&problem["adding"]),
        vec![spare],
        "{problem}"
    );

    let (_, list) = get(&format!("{}/v1/reassignments", c.url(replicas[1])));
    let moves = list["reassignments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(moves.len(), 1, "{list}");
    assert_eq!(
        (moves[0]["topic"].as_str(), moves[0]["partition"].as_u64()),
        (Some(TOPIC), Some(0))
    );

    // Records still flow to the partition while it waits.
    let (status, body) = post(
        &format!("{}/v1/topics/{TOPIC}/records?acks=all", c.url(via)),
        json!({"records": [{"partition": 0, "value": "during"}]}),
    );
    assert_eq!(status, 200, "{body}");
    // The leader says how far behind the added replica is; the others do not know.
    let leader = moves[0]["leader"].as_u64().unwrap() as usize;
    let (_, list) = get(&format!("{}/v1/reassignments", c.url(leader)));
    let lag = &list["reassignments"][0]["lag"];
    assert_eq!(lag[0]["replica"], spare as u64, "{list}");
    assert!(lag[0]["records"].as_u64() >= Some(1), "{list}");
    assert!(lag[0]["bytes"].as_u64() > Some(0), "{list}");
    let other = replicas.iter().find(|r| **r != leader).unwrap();
    let (_, list) = get(&format!("{}/v1/reassignments", c.url(*other)));
    assert_eq!(list["reassignments"][0]["lag"], Value::Null, "{list}");

    let (status, cancelled) = delete(&url);
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["moving"], false, "{cancelled}");
    let mut back = cluster::node_ids(&cancelled["replicas"]);
    back.sort_unstable();
    let mut want = replicas.clone();
    want.sort_unstable();
    assert_eq!(back, want, "the original replicas: {cancelled}");
    let (_, list) = get(&format!("{}/v1/reassignments", c.url(via)));
    assert_eq!(list["reassignments"], json!([]), "{list}");
}

#[test]
fn a_broker_alone_has_nothing_to_move() {
    let broker = common::TestBroker::start();
    let url = &broker.url;
    let (status, _) = post(
        &format!("{url}/v1/topics"),
        json!({"name": "solo", "partitions": 1}),
    );
    assert_eq!(status, 201);
    let (status, problem) = post(
        &format!("{url}/v1/topics/solo/partitions/0/reassignment"),
        json!({"replicas": [1]}),
    );
    assert_problem(status, &problem, 400, "invalid_request");
    let (status, list) = get(&format!("{url}/v1/reassignments"));
    assert_eq!((status, list), (200, json!({"reassignments": []})));
}

#[test]
fn a_replica_moved_away_while_its_broker_was_down_is_deleted_when_it_returns() {
    const TOPIC: &str = "away";
    let mut c = Cluster::start(3, TOML);
    create(&c, TOPIC, 2, 1);
    let replicas = in_sync_replicas(&c, TOPIC);
    let (gone, stays) = (replicas[0], replicas[1]);
    let spare = (1..=3).find(|n| !replicas.contains(n)).unwrap();
    let (status, body) = post(
        &format!("{}/v1/topics/{TOPIC}/records?acks=all", c.url(stays)),
        json!({"records": [{"partition": 0, "value": "before"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let removed_dir = c.data_dir(gone).join("topics").join(TOPIC).join("0");
    assert!(removed_dir.exists(), "{}", removed_dir.display());

    c.brokers[gone - 1].kill9();
    wait_two_alive(&c, stays);
    let (status, started) = post(
        &reassignment_url(&c, stays, TOPIC, 0),
        json!({"replicas": [stays, spare]}),
    );
    assert!(status == 202 || status == 200, "{status} {started}");
    wait_for("the move completed without the removed broker", || {
        let p = partition_view(&c, stays, TOPIC, 0);
        if cluster::node_ids(&p["replicas"]) == vec![stays, spare] && p["leader"].as_u64().is_some()
        {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    assert!(
        removed_dir.exists(),
        "the stopped broker cannot have removed anything yet"
    );

    c.brokers[gone - 1].restart();
    c.wait_ready(gone);
    wait_gone(&removed_dir, "the returned broker removed its stale copy");
    let reads = read_every_replica(&c, stays, TOPIC, 1);
    assert_eq!(reads.len(), 2);
    for read in &reads {
        assert_eq!(
            read.records,
            vec![(0, "before".to_string())],
            "replica {}",
            read.node
        );
    }
}

/// The controller as broker `id` names it, once there is one other than `not`.
fn controller_other_than(c: &Cluster, id: usize, not: usize) -> usize {
    wait_for("a controller", || {
        let (_, view) = get(&format!("{}/v1/cluster", c.url(id)));
        match view["controller"].as_u64().map(|n| n as usize) {
            Some(n) if n != not => Ok(n),
            other => Err(format!("controller {other:?}")),
        }
    })
}

#[test]
fn a_move_survives_the_controllers_death_and_completes_under_the_next_one() {
    const TOPIC: &str = "survive";
    let mut c = Cluster::start(5, TOML);
    create(&c, TOPIC, 1, 1);
    let replicas = in_sync_replicas(&c, TOPIC);
    let mut history = History::default();
    let records: Vec<Value> = (0..20)
        .map(|i| json!({"partition": 0, "value": format!("v{i}")}))
        .collect();
    let (status, body) = post(
        &format!("{}/v1/topics/{TOPIC}/records?acks=all", c.url(replicas[1])),
        json!({ "records": records }),
    );
    assert_eq!(status, 200, "{body}");
    for i in 0..20 {
        let offset = body["offsets"][i]["offset"].as_u64().unwrap();
        history.produced(
            &format!("v{i}"),
            Outcome::Acknowledged {
                partition: 0,
                offset,
            },
        );
    }
    let controller = controller_other_than(&c, replicas[1], 0);
    let spare = (1..=5)
        .find(|n| !replicas.contains(n) && *n != controller)
        .unwrap();
    // A live broker that is neither the spare nor the controller, to ask.
    let witness = (1..=5).find(|n| *n != spare && *n != controller).unwrap();

    // The new replica is down, so the move waits; then the controller dies.
    c.brokers[spare - 1].kill9();
    wait_for("the spare fenced", || {
        let (_, view) = get(&format!("{}/v1/cluster", c.url(witness)));
        let status = view["brokers"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["node_id"] == spare as u64).cloned());
        match status {
            Some(b) if b["status"] != "alive" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let target = json!({"replicas": [spare, replicas[1]]});
    let (status, started) = post(&reassignment_url(&c, witness, TOPIC, 0), target);
    assert_eq!(status, 202, "{started}");
    c.brokers[controller - 1].kill9();
    let next = controller_other_than(&c, witness, controller);
    let (_, list) = get(&format!("{}/v1/reassignments", c.url(witness)));
    assert_eq!(
        list["reassignments"].as_array().map(Vec::len),
        Some(1),
        "the move is metadata, under controller {next} too: {list}"
    );

    c.brokers[spare - 1].restart();
    c.brokers[controller - 1].restart();
    wait_for("the move completed under the next controller", || {
        let p = partition_view(&c, witness, TOPIC, 0);
        if cluster::node_ids(&p["replicas"]) == vec![spare, replicas[1]]
            && cluster::node_ids(&p["isr"]).len() == 2
        {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    let reads = read_every_replica(&c, witness, TOPIC, 1);
    assert_eq!(reads.len(), 2);
    let anomalies = history.check(&reads);
    assert!(anomalies.is_empty(), "{anomalies:?}");
}

#[test]
fn a_throttled_move_copies_no_faster_than_its_throttle_tells_its_progress_and_the_throttle_changes_and_ends_with_it()
 {
    const TOPIC: &str = "slow";
    const RATE: u64 = 60_000;
    let c = Cluster::start(3, TOML);
    create(&c, TOPIC, 1, 1);
    let replicas = in_sync_replicas(&c, TOPIC);
    let spare = (1..=3).find(|n| !replicas.contains(n)).unwrap();
    let value = "x".repeat(1_000);
    for _ in 0..10 {
        let records: Vec<Value> = (0..30)
            .map(|_| json!({"partition": 0, "value": value}))
            .collect();
        let (status, body) = post(
            &format!("{}/v1/topics/{TOPIC}/records?acks=all", c.url(replicas[1])),
            json!({ "records": records }),
        );
        assert_eq!(status, 200, "{body}");
    }
    let size = partition_view(&c, replicas[1], TOPIC, 0)["size_bytes"]
        .as_u64()
        .unwrap();
    assert!(size > 300_000, "{size}");

    let started = Instant::now();
    let (status, moving) = post(
        &reassignment_url(&c, spare, TOPIC, 0),
        json!({"replicas": [spare, replicas[1]], "throttle_bytes_per_s": RATE}),
    );
    assert_eq!(status, 202, "{moving}");
    assert_eq!(moving["throttle_bytes_per_s"], RATE, "{moving}");
    let (_, list) = get(&format!("{}/v1/reassignments", c.url(replicas[0])));
    assert_eq!(
        list["reassignments"][0]["throttle_bytes_per_s"], RATE,
        "{list}"
    );
    // The leader tells the copy's progress: bytes copied and left, the rate it sends at,
    // and the time left, for the replica and the move.
    wait_for("the leader tells the copy's rate and time left", || {
        let (_, list) = get(&format!("{}/v1/reassignments", c.url(replicas[0])));
        let entry = &list["reassignments"][0];
        let lag = &entry["lag"][0];
        let known = lag["replica"] == spare as u64
            && lag["in_sync"] == false
            && lag["bytes_per_s"].as_u64().is_some_and(|r| r > 0)
            && lag["eta_s"].as_f64().is_some_and(|e| e > 0.0)
            && entry["eta_s"] == lag["eta_s"]
            && lag["bytes"].as_u64().unwrap_or(0) + lag["bytes_copied"].as_u64().unwrap_or(0)
                >= size;
        if known { Ok(()) } else { Err(list.to_string()) }
    });
    wait_for("the throttled move completed", || {
        let p = partition_view(&c, spare, TOPIC, 0);
        if cluster::node_ids(&p["replicas"]) == vec![spare, replicas[1]] {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    let took = started.elapsed().as_secs_f64();
    // The bucket starts with a second's worth, and a read sends at least one whole batch
    // (30 KB here): the rest of the log needs at least (size - 2 * RATE) / RATE seconds.
    let floor = (size - 2 * RATE) as f64 / RATE as f64;
    assert!(
        took >= floor,
        "{size} bytes moved in {took:.2} s, under {floor:.2} s"
    );
    eprintln!("{size} bytes moved in {took:.2} s at {RATE} bytes/s");
    let (_, list) = get(&format!("{}/v1/reassignments", c.url(spare)));
    assert_eq!(list["reassignments"], json!([]), "the move is over");

    // Back, at one byte a second: after its first batch the copy would wait hours. The same
    // target again without a throttle lifts it (a running move's throttle changes that
    // way), and the move completes.
    let (status, back) = post(
        &reassignment_url(&c, spare, TOPIC, 0),
        json!({"replicas": replicas, "throttle_bytes_per_s": 1}),
    );
    assert_eq!(status, 202, "{back}");
    assert_eq!(back["throttle_bytes_per_s"], 1, "{back}");
    let (status, lifted) = post(
        &reassignment_url(&c, spare, TOPIC, 0),
        json!({"replicas": replicas}),
    );
    assert!(status == 202 || status == 200, "{lifted}");
    assert_eq!(lifted["throttle_bytes_per_s"], Value::Null, "{lifted}");
    assert_eq!(
        cluster::node_ids(&lifted["replicas"])[..2],
        replicas[..],
        "{lifted}"
    );
    wait_for("the move back completed", || {
        let p = partition_view(&c, spare, TOPIC, 0);
        if cluster::node_ids(&p["replicas"]) == replicas {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
}

/// An internal topic moves like any other (a broker being retired may hold it): here
/// `__consumer_offsets`, off its leader, on five brokers, while a client commits a group's
/// offsets. Leadership moves, so the group coordinator moves with it: the next leader replays
/// the topic before it serves, commits meanwhile are refused as retryable, and afterwards the
/// group's offset is the last commit acknowledged (or a later one whose answer was lost).
#[test]
fn an_internal_topic_moves_off_its_leader_and_the_coordinator_keeps_every_commit() {
    const TOPIC: &str = "orders";
    const OFFSETS: &str = "__consumer_offsets";
    let c = Cluster::start(5, TOML);
    // On every broker: a group's coordinator checks commits against its own replica of the
    // partition (README, "Three brokers on one machine"), and the coordinator moves here.
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": TOPIC, "partitions": 1, "replication_factor": 5}),
    );
    assert_eq!(status, 201, "{body}");
    // Offsets to commit: a group commits only offsets the partition has.
    for _ in 0..10 {
        let records: Vec<Value> = (0..1_000)
            .map(|_| json!({"partition": 0, "value": "o"}))
            .collect();
        let (status, body) = post(
            &format!("{}/v1/topics/{TOPIC}/records?acks=all", c.url(1)),
            json!({ "records": records }),
        );
        assert_eq!(status, 200, "{body}");
    }
    let commit = |via: usize, offset: u64| {
        post(
            &format!("{}/v1/groups/audit/offsets", c.url(via)),
            json!({"offsets": [{"topic": TOPIC, "partition": 0, "offset": offset}]}),
        )
    };
    let committed = |via: usize| {
        let (status, body) = get(&format!("{}/v1/groups/audit/offsets", c.url(via)));
        match (status, body["offsets"][0]["offset"].as_u64()) {
            (200, Some(offset)) => Ok(offset),
            _ => Err(format!("{status} {body}")),
        }
    };
    // The first group call makes the internal topic, replicated on three brokers.
    wait_for("a first commit", || match commit(1, 1) {
        (200, _) => Ok(()),
        (status, body) => Err(format!("{status} {body}")),
    });
    let (leader, replicas) = wait_for("the offsets topic in sync", || {
        let p = partition_view(&c, 1, OFFSETS, 0);
        let (replicas, isr) = (
            cluster::node_ids(&p["replicas"]),
            cluster::node_ids(&p["isr"]),
        );
        match p["leader"].as_u64() {
            Some(leader) if replicas.len() == 3 && isr.len() == 3 => {
                Ok((leader as usize, replicas))
            }
            _ => Err(p.to_string()),
        }
    });
    // The two brokers outside it, and one follower, so the leader leaves.
    let kept = *replicas.iter().find(|n| **n != leader).unwrap();
    let mut target: Vec<usize> = (1..=5).filter(|n| !replicas.contains(n)).collect();
    target.push(kept);

    // A client commits through the kept follower all along (bounded in count and time).
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(1));
    let url = c.url(kept).to_string();
    let committer = std::thread::spawn({
        let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
        move || {
            let (mut last_ok, mut last_sent) = (1u64, 1u64);
            let started = Instant::now();
            for offset in 2..5_000u64 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > PRODUCE_FOR_MAX {
                    break;
                }
                last_sent = offset;
                let (status, body) = post(
                    &format!("{url}/v1/groups/audit/offsets"),
                    json!({"offsets": [{"topic": TOPIC, "partition": 0, "offset": offset}]}),
                );
                match status {
                    200 => {
                        last_ok = offset;
                        acknowledged.store(offset, Ordering::Relaxed);
                    }
                    // The coordinator moving: retryable, the commit may or may not be kept.
                    421 | 502..=504 => std::thread::sleep(Duration::from_millis(20)),
                    _ => panic!("commit {offset}: {status} {body}"),
                }
            }
            (last_ok, last_sent)
        }
    });
    let (status, moving) = post(
        &reassignment_url(&c, kept, OFFSETS, 0),
        json!({ "replicas": target }),
    );
    assert!(status == 202 || status == 200, "{moving}");
    wait_for("the offsets topic moved", || {
        let p = partition_view(&c, kept, OFFSETS, 0);
        let done = cluster::node_ids(&p["replicas"]) == target
            && cluster::node_ids(&p["isr"]).len() == 3
            && p["leader"].as_u64().is_some_and(|l| l as usize != leader);
        if done { Ok(()) } else { Err(p.to_string()) }
    });
    // Commits went on under the new coordinator, and none acknowledged was lost.
    let before = acknowledged.load(Ordering::Relaxed);
    wait_for("commits under the new leader", || {
        match acknowledged.load(Ordering::Relaxed) {
            now if now > before => Ok(()),
            now => Err(format!("the last acknowledged still {now}")),
        }
    });
    stop.store(true, Ordering::Relaxed);
    let (last_ok, last_sent) = committer.join().unwrap();
    let offset = wait_for("the group's offset", || committed(kept));
    eprintln!(
        "{OFFSETS} moved from {replicas:?} (leader {leader}) to {target:?}; commits \
         acknowledged up to {last_ok}, sent up to {last_sent}, kept {offset}"
    );
    assert!(
        (last_ok..=last_sent).contains(&offset),
        "offset {offset}: the last commit acknowledged was {last_ok}, the last sent {last_sent}"
    );
    wait_for("a commit under the new leader", || {
        match commit(kept, 9_000) {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    });
    for via in 1..=5 {
        assert_eq!(
            wait_for("the group's offset", || committed(via)),
            9_000,
            "through {via}"
        );
    }
    // The removed leader put its copy in the trash.
    let removed_dir = c.data_dir(leader).join("topics").join(OFFSETS).join("0");
    wait_gone(&removed_dir, "the removed replica's directory gone");
}
