//! Consumer groups on a cluster with more brokers than a topic has replicas: the group's
//! coordinator (the leader of `__consumer_offsets`) holds no replica of some of the
//! partitions it assigns. A member still reads every partition (the coordinator reads the
//! ones it lacks from their leaders), and commits for them are taken.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{self, Cluster, describe, get, post, replicas_of, wait_for};
use serde_json::{Value, json};

const TOML: &str = "broker_session_timeout_ms = 2000\n\
                    replica_lag_time_max_ms = 2000\n\
                    replica_fetch_wait_max_ms = 200\n\
                    raft_heartbeat_ms = 100\n\
                    raft_election_timeout_ms = 500\n";

const TOPIC: &str = "spread";
const PARTITIONS: u32 = 5;

/// A new member of `group` on `topic`, joined through broker `via` with `session_timeout_ms`
/// (the broker's default when None): its member id.
fn join(c: &Cluster, via: usize, group: &str, topic: &str, session_ms: Option<u64>) -> String {
    let mut body = json!({ "topics": [topic] });
    if let Some(ms) = session_ms {
        body["session_timeout_ms"] = json!(ms);
    }
    let (status, joined) = post(&format!("{}/v1/groups/{group}/members", c.url(via)), body);
    assert_eq!(status, 201, "{joined}");
    joined["member_id"].as_str().unwrap().to_string()
}

/// The broker that coordinates groups: the leader of `__consumer_offsets`, as broker 1 sees it.
fn coordinator(c: &Cluster) -> usize {
    describe(c, 1, "__consumer_offsets")["partitions"][0]["leader"]
        .as_u64()
        .unwrap() as usize
}

/// A new member of `group` on `topic` (joined through broker `join_via`) and the values of
/// its first fetch (through `fetch_via`, waiting up to 5 s for records).
fn join_and_fetch(
    c: &Cluster,
    group: &str,
    topic: &str,
    join_via: usize,
    fetch_via: usize,
) -> (String, Vec<String>) {
    let member = join(c, join_via, group, topic, None);
    let (status, page) = get(&format!(
        "{}/v1/groups/{group}/members/{member}/records?wait_ms=5000",
        c.url(fetch_via)
    ));
    assert_eq!(status, 200, "{page}");
    let values = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["value"].as_str().map(str::to_string))
        .collect();
    (member, values)
}

#[test]
fn a_member_reads_and_commits_partitions_its_coordinator_holds_no_replica_of() {
    let c = Cluster::start(5, TOML);
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": TOPIC, "partitions": PARTITIONS, "replication_factor": 1}),
    );
    assert_eq!(status, 201, "{body}");
    wait_for("every partition led", || {
        let d = describe(&c, 1, TOPIC);
        let led = d["partitions"]
            .as_array()
            .is_some_and(|ps| ps.iter().all(|p| p["leader"].as_u64().is_some()));
        if led { Ok(()) } else { Err(d.to_string()) }
    });
    for p in 0..PARTITIONS {
        let records: Vec<Value> = (0..3)
            .map(|i| json!({"partition": p, "value": format!("p{p}-{i}")}))
            .collect();
        let (status, body) = post(
            &format!("{}/v1/topics/{TOPIC}/records?acks=all", c.url(1)),
            json!({ "records": records }),
        );
        assert_eq!(status, 200, "{body}");
    }
    let member = join(&c, 2, "readers", TOPIC, Some(30_000));
    let coordinator = coordinator(&c);
    let elsewhere: Vec<u32> = (0..PARTITIONS)
        .filter(|p| !replicas_of(&c, 1, TOPIC, *p).contains(&coordinator))
        .collect();
    assert!(
        !elsewhere.is_empty(),
        "every partition is on the coordinator"
    );

    // Fetch and commit until every record was read (bounded).
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let (status, page) = get(&format!(
            "{}/v1/groups/readers/members/{member}/records?max_records=4&wait_ms=500",
            c.url(3)
        ));
        assert_eq!(status, 200, "{page}");
        for r in page["records"].as_array().unwrap() {
            seen.insert(r["value"].as_str().unwrap().to_string());
        }
        let next = page["next_offsets"].clone();
        if next.as_array().is_some_and(|n| !n.is_empty()) {
            let (status, body) = post(
                &format!("{}/v1/groups/readers/offsets", c.url(4)),
                json!({"member_id": member, "generation": page["generation"], "offsets": next}),
            );
            assert_eq!(status, 200, "{body}");
        }
        if seen.len() == 3 * PARTITIONS as usize {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        seen.len(),
        3 * PARTITIONS as usize,
        "partitions {elsewhere:?} are not on coordinator {coordinator}: read {seen:?}"
    );
    // A long-poll wakes for a record produced meanwhile to a partition held elsewhere.
    let far = elsewhere[0];
    let url = c.url(1).to_string();
    let producer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1_500));
        post(
            &format!("{url}/v1/topics/{TOPIC}/records?acks=all"),
            json!({"records": [{"partition": far, "value": "late"}]}),
        )
    });
    let asked = Instant::now();
    let (status, page) = get(&format!(
        "{}/v1/groups/readers/members/{member}/records?max_records=4&wait_ms=20000",
        c.url(3)
    ));
    // Not a speed bound: a wait that the record did not wake ends only after 20 s.
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "the long-poll was not woken by the record: {:?}",
        asked.elapsed()
    );
    assert_eq!(producer.join().unwrap().0, 200);
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["records"][0]["value"], "late", "{page}");
    assert_eq!(page["records"][0]["partition"], far, "{page}");
    let (status, body) = post(
        &format!("{}/v1/groups/readers/offsets", c.url(4)),
        json!({"member_id": member, "generation": page["generation"], "offsets": page["next_offsets"]}),
    );
    assert_eq!(status, 200, "{body}");

    let (status, offsets) = get(&format!("{}/v1/groups/readers/offsets", c.url(5)));
    assert_eq!(status, 200, "{offsets}");
    let committed: Vec<u64> = offsets["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["offset"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..PARTITIONS)
        .map(|p| if p == far { 4 } else { 3 })
        .collect();
    assert_eq!(committed, expected, "{offsets}");
    // The description tells every partition's lag, those held elsewhere from their leaders.
    let (status, described) = get(&format!("{}/v1/groups/readers", c.url(2)));
    assert_eq!(status, 200, "{described}");
    let lags: Vec<(u64, u64, u64)> = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let n = |k: &str| p[k].as_u64().unwrap();
            (n("partition"), n("high_watermark"), n("lag"))
        })
        .collect();
    let caught_up: Vec<(u64, u64, u64)> = (0..PARTITIONS as u64)
        .map(|p| (p, expected[p as usize], 0))
        .collect();
    assert_eq!(lags, caught_up, "{described}");
    // The coordinator's lag gauge follows a partition led elsewhere (the session task reads
    // its leader's offsets every few seconds): one more record there is one record of lag.
    let (status, body) = post(
        &format!("{}/v1/topics/{TOPIC}/records?acks=all", c.url(1)),
        json!({"records": [{"partition": far, "value": "lag"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let series = format!("partition=\"{far}\"");
    wait_for("the lag gauge of a partition led elsewhere", || {
        let text = common::runtime().block_on(common::scrape_metrics(
            &common::Client::new(),
            c.url(coordinator),
        ));
        let line = text.lines().find(|l| {
            l.starts_with("tidelog_consumer_group_lag_records{")
                && l.contains("group=\"readers\"")
                && l.contains(&series)
        });
        match line.and_then(|l| l.rsplit(' ').next()) {
            Some("1") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // A topic with no replica on the coordinator at all: moved to another broker.
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": "far", "partitions": 1, "replication_factor": 1}),
    );
    assert_eq!(status, 201, "{body}");
    let other = (1..=5).find(|n| *n != coordinator).unwrap();
    let (status, body) = post(
        &format!("{}/v1/topics/far/partitions/0/reassignment", c.url(1)),
        json!({"replicas": [other]}),
    );
    assert!(status == 200 || status == 202, "{body}");
    wait_for("far moved off the coordinator", || {
        match replicas_of(&c, 1, "far", 0) == vec![other] {
            true => Ok(()),
            false => Err(describe(&c, 1, "far").to_string()),
        }
    });
    let (status, body) = post(
        &format!("{}/v1/topics/far/records?acks=all", c.url(1)),
        json!({"records": [{"value": "a"}, {"value": "b"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let (member, values) = join_and_fetch(&c, "far-readers", "far", 2, 2);
    assert_eq!(values, ["a", "b"]);

    // An empty group's offsets reset, on a partition held elsewhere: to the end, to an
    // offset, to a time (before the records: the first one).
    let (status, _) = cluster::delete(&format!(
        "{}/v1/groups/far-readers/members/{member}",
        c.url(2)
    ));
    assert_eq!(status, 204);
    for (to, expected) in [
        (json!({"to": "latest"}), 2),
        (json!({"to": "offset", "offset": 1}), 1),
        (json!({"to": "timestamp", "timestamp_ms": 0}), 0),
    ] {
        let mut body = to.clone();
        body["topics"] = json!(["far"]);
        let (status, answer) = post(
            &format!("{}/v1/groups/far-readers/offsets/reset", c.url(3)),
            body,
        );
        assert_eq!(status, 200, "{to}: {answer}");
        let (_, offsets) = get(&format!("{}/v1/groups/far-readers/offsets", c.url(4)));
        assert_eq!(offsets["offsets"][0]["offset"], expected, "{to}: {offsets}");
    }
    // A commit past the end is refused as for a partition led here (its leader asked).
    let (status, problem) = post(
        &format!("{}/v1/groups/far-readers/offsets", c.url(5)),
        json!({"offsets": [{"topic": "far", "partition": 0, "offset": 3}]}),
    );
    assert_eq!(
        (status, &problem["code"]),
        (416, &json!("offset_out_of_range")),
        "{problem}"
    );
    let (status, problem) = post(
        &format!("{}/v1/groups/far-readers/offsets/reset", c.url(3)),
        json!({"topics": ["far"], "to": "offset", "offset": 9}),
    );
    assert_eq!(
        (status, &problem["code"]),
        (416, &json!("offset_out_of_range")),
        "{problem}"
    );
}

/// The coordinator's own replica of a partition may be a follower far behind the leader: a
/// move just added it (here throttled to one byte a second, so it stays behind). The group
/// reads at the leader, from its committed offset, and not from the lagging copy, whose
/// range would have reset the position and delivered the partition again from its start.
#[test]
fn a_lagging_replica_on_the_coordinator_does_not_reset_the_groups_position() {
    let c = Cluster::start(5, TOML);
    // The first group call makes __consumer_offsets; its leader is the coordinator.
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": "lagging", "partitions": 1, "replication_factor": 1}),
    );
    assert_eq!(status, 201, "{body}");
    let records: Vec<Value> = (0..10)
        .map(|i| json!({"value": format!("old-{i}")}))
        .collect();
    let (status, body) = post(
        &format!("{}/v1/topics/lagging/records?acks=all", c.url(1)),
        json!({ "records": records }),
    );
    assert_eq!(status, 200, "{body}");
    wait_for("a first commit", || {
        match post(
            &format!("{}/v1/groups/g/offsets", c.url(1)),
            json!({"offsets": [{"topic": "lagging", "partition": 0, "offset": 10}]}),
        ) {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    });
    let coordinator = coordinator(&c);
    // A second batch: the move's first read takes one whole batch and leaves the bucket
    // in debt for minutes, so the copy cannot catch up (with one batch it would at once).
    let (status, body) = post(
        &format!("{}/v1/topics/lagging/records?acks=all", c.url(1)),
        json!({"records": [{"value": "new"}]}),
    );
    assert_eq!(status, 200, "{body}");
    // The partition's one replica elsewhere, then a move to the coordinator at one byte a
    // second: the copy there stays a follower, behind.
    let elsewhere = (1..=5).find(|n| *n != coordinator).unwrap();
    for (to, throttle) in [(elsewhere, None), (coordinator, Some(1))] {
        if replicas_of(&c, 1, "lagging", 0) == vec![to] {
            continue;
        }
        let (status, body) = post(
            &format!("{}/v1/topics/lagging/partitions/0/reassignment", c.url(1)),
            json!({"replicas": [to], "throttle_bytes_per_s": throttle}),
        );
        assert!(status == 200 || status == 202, "{body}");
        if throttle.is_none() {
            wait_for("on one broker", || {
                match replicas_of(&c, 1, "lagging", 0) == vec![to] {
                    true => Ok(()),
                    false => Err(describe(&c, 1, "lagging").to_string()),
                }
            });
        }
    }
    let (_, values) = join_and_fetch(&c, "g", "lagging", 2, 3);
    assert_eq!(values, ["new"], "read from the committed offset 10");
    let (_, list) = get(&format!("{}/v1/reassignments", c.url(1)));
    assert_eq!(
        list["reassignments"][0]["adding"],
        json!([coordinator]),
        "the coordinator's copy was still being added: {list}"
    );
}

/// A member's long-poll on a partition led elsewhere outlives that leader: its wait there
/// fails when the leader is killed, is asked again of the next leader, and wakes for a record
/// produced to it.
#[test]
fn a_long_poll_on_a_partition_led_elsewhere_follows_its_next_leader() {
    let mut c = Cluster::start(5, TOML);
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": "failing", "partitions": 1, "replication_factor": 2,
               "config": {"min_insync_replicas": 1}}),
    );
    assert_eq!(status, 201, "{body}");
    // The first group call makes __consumer_offsets; then the partition goes to two other
    // brokers.
    let member = join(&c, 1, "w", "failing", Some(60_000));
    let coordinator = coordinator(&c);
    let pair: Vec<usize> = (1..=5).filter(|n| *n != coordinator).take(2).collect();
    let (status, body) = post(
        &format!("{}/v1/topics/failing/partitions/0/reassignment", c.url(1)),
        json!({ "replicas": pair }),
    );
    assert!(status == 200 || status == 202, "{body}");
    let leader = wait_for("the partition on the pair, both in sync", || {
        let p = &describe(&c, 1, "failing")["partitions"][0];
        let in_sync = cluster::node_ids(&p["isr"]).len() == 2;
        match (cluster::node_ids(&p["replicas"]) == pair, in_sync) {
            (true, true) => Ok(p["leader"].as_u64().unwrap() as usize),
            _ => Err(p.to_string()),
        }
    });
    let other = *pair.iter().find(|n| **n != leader).unwrap();
    let witness = (1..=5)
        .find(|n| !pair.contains(n) && *n != coordinator)
        .unwrap();

    let url = c.url(witness).to_string();
    let member_id = member.clone();
    let poll = std::thread::spawn(move || {
        let asked = Instant::now();
        let answer = get(&format!(
            "{url}/v1/groups/w/members/{member}/records?wait_ms=30000"
        ));
        (answer, asked.elapsed())
    });
    // Give the poll time to reach the leader, then kill it.
    std::thread::sleep(Duration::from_millis(1_000));
    c.brokers[leader - 1].kill9();
    // While the coordinator's metadata still names the dead leader, a fetch that does not
    // wait names the partition unavailable instead of leaving it out unsaid. (A slow machine
    // may see the next leader named already; then there is nothing to check here.)
    let led_by = |at: usize| describe(&c, at, "failing")["partitions"][0]["leader"].as_u64();
    let named_before = led_by(coordinator);
    let (status, page) = get(&format!(
        "{}/v1/groups/w/members/{member_id}/records?wait_ms=0",
        c.url(witness)
    ));
    assert_eq!(status, 200, "{page}");
    if named_before == Some(leader as u64) && led_by(coordinator) == Some(leader as u64) {
        assert_eq!(
            page["unavailable"],
            json!([{"topic": "failing", "partition": 0}]),
            "{page}"
        );
        assert_eq!(page["records"], json!([]), "{page}");
    }
    wait_for("the other replica leads", || {
        let p = &describe(&c, witness, "failing")["partitions"][0];
        match p["leader"].as_u64() {
            Some(l) if l as usize == other => Ok(()),
            _ => Err(p.to_string()),
        }
    });
    let (status, body) = post(
        &format!("{}/v1/topics/failing/records?acks=all", c.url(witness)),
        json!({"records": [{"value": "after"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let ((status, page), took) = poll.join().unwrap();
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["records"][0]["value"], "after", "{page}");
    // Not a speed bound: a long-poll deaf to the new leader ends only after its 30 s.
    assert!(
        took < Duration::from_secs(25),
        "the long-poll was not woken by the new leader's record: {took:?}"
    );
}

/// A member's long-poll on several partitions led by one other broker waits there once: one
/// long-poll slot at that leader (its `tidelog_long_polls_waiting`), not one per partition.
#[test]
fn a_long_poll_holds_one_slot_at_a_leader_of_several_of_its_partitions() {
    let c = Cluster::start(3, TOML);
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": "wide", "partitions": 6, "replication_factor": 1}),
    );
    assert_eq!(status, 201, "{body}");
    let leaders: Vec<usize> = wait_for("every partition led", || {
        let d = describe(&c, 1, "wide");
        let leaders: Option<Vec<usize>> = d["partitions"].as_array().and_then(|ps| {
            ps.iter()
                .map(|p| p["leader"].as_u64().map(|l| l as usize))
                .collect()
        });
        leaders.ok_or_else(|| d.to_string())
    });
    let member = join(&c, 1, "wide-readers", "wide", Some(30_000));
    let coordinator = coordinator(&c);
    let leader = (1..=3)
        .find(|n| *n != coordinator && leaders.iter().filter(|l| *l == n).count() >= 2)
        .unwrap_or_else(|| panic!("no other broker leads two partitions: {leaders:?}"));

    let url = c.url(coordinator).to_string();
    let poll = std::thread::spawn(move || {
        get(&format!(
            "{url}/v1/groups/wide-readers/members/{member}/records?wait_ms=6000"
        ))
    });
    let waiting = |id: usize| -> String {
        let text =
            common::runtime().block_on(common::scrape_metrics(&common::Client::new(), c.url(id)));
        let line = text
            .lines()
            .find(|l| l.starts_with("tidelog_long_polls_waiting "));
        line.and_then(|l| l.rsplit(' ').next())
            .unwrap_or("absent")
            .to_string()
    };
    // The wait reaches the leader; it holds one slot there for all its partitions (one per
    // partition before, two here).
    wait_for("the member's wait at the leader", || {
        match waiting(leader) {
            v if v == "0" || v == "absent" => Err(v),
            v => Ok(v),
        }
    });
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(waiting(leader));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen.iter().all(|v| v == "1"), "{seen:?}");
    let (status, page) = poll.join().unwrap();
    assert_eq!(status, 200, "{page}");

    // The internal read still waits when asked to (offsets only, on an empty partition).
    let partition = leaders.iter().position(|l| *l == leader).unwrap();
    let asked = Instant::now();
    let (status, answer) = common::runtime().block_on(async {
        let response = common::Client::new()
            .post(format!("{}/internal/v1/partitions/read", c.url(leader)))
            .json(
                &json!({"topic": "wide", "partition": partition, "position": 0,
                          "reset": "earliest", "max_records": 0, "max_bytes": 0, "wait_ms": 300}),
            )
            .send()
            .await
            .expect("the leader answers");
        let status = response.status().as_u16();
        (status, response.bytes().await.expect("an answer"))
    });
    assert_eq!(status, 200);
    assert!(asked.elapsed() >= Duration::from_millis(250), "it waited");
    assert_eq!(answer.len(), 6 * 8 + 1, "the header alone: offsets only");

    // Refusals: a wait naming a partition another broker leads is 421 `not_leader` (the
    // coordinator groups it again), and a read of a topic nobody has is 404.
    let elsewhere = leaders.iter().position(|l| *l != leader).unwrap();
    let (status, problem) = post(
        &format!("{}/internal/v1/partitions/wait", c.url(leader)),
        json!({"parts": [{"topic": "wide", "partition": partition, "position": 0},
                         {"topic": "wide", "partition": elsewhere, "position": 0}],
               "reset": "earliest", "wait_ms": 0}),
    );
    cluster::assert_problem(status, &problem, 421, "not_leader");
    let (status, problem) = post(
        &format!("{}/internal/v1/partitions/read", c.url(leader)),
        json!({"topic": "nope", "partition": 0, "position": null, "reset": "earliest",
               "max_records": 0, "max_bytes": 0, "wait_ms": 0}),
    );
    cluster::assert_problem(status, &problem, 404, "topic_not_found");
    let (status, ready) = post(
        &format!("{}/internal/v1/partitions/wait", c.url(leader)),
        json!({"parts": [{"topic": "wide", "partition": partition, "position": 0}],
               "reset": "earliest", "wait_ms": 0}),
    );
    assert_eq!((status, ready), (200, json!({"ready": false})));
    let too_many: Vec<Value> = (0..1025)
        .map(|_| json!({"topic": "wide", "partition": partition, "position": 0}))
        .collect();
    let (status, problem) = post(
        &format!("{}/internal/v1/partitions/wait", c.url(leader)),
        json!({"parts": too_many, "reset": "earliest", "wait_ms": 0}),
    );
    cluster::assert_problem(status, &problem, 400, "invalid_request");
}
