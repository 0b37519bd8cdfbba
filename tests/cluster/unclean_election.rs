//! Issue 10 item 4: the last in-sync replica of a partition killed with `kill -9`. The
//! partition goes offline (produce and fetch answer 503 `leader_not_available` with
//! `Retry-After`); a returning eligible replica is elected with no acknowledged record lost;
//! a replica that is not eligible is never elected by itself, and an operator's unclean
//! election (`POST .../elect`) elects it and reports the offsets it gave up, which are
//! exactly the acknowledged records missing when the partition is read back.
//!
//! Five brokers, a topic of replication factor 3 and `min_insync_replicas` 2 on three of
//! them. With three brokers, killing two replicas would leave the metadata's Raft without a
//! quorum: nothing, the partition going offline included, could be recorded. Here the two
//! brokers without a replica keep two of the five votes, and the non-eligible replica's
//! return makes the third.
//!
//! The road to offline: follower A is killed while the ISR stays at its minimum (it leaves
//! and is not eligible, KIP-966), records are acknowledged without it, then follower B is
//! killed (the ISR falls below its minimum: B joins the ELR and the high watermark stops),
//! then the leader L. A comes back: the quorum is whole again, L is fenced, and nobody may
//! lead. Run 1 brings L back; run 2 elects A unclean.

use crate::common;

use std::time::{Duration, Instant};

use common::checker::{History, Outcome};
use common::cluster::{self, Cluster, get, post, wait_for};
use serde_json::{Value, json};

/// Short timings: the leader shrinks its ISR (lag 1 s) before the controller fences a silent
/// broker (1.5 s), so the leader reports the high watermark it stops at.
const TOML: &str = "broker_session_timeout_ms = 1500\n\
                    replica_lag_time_max_ms = 1000\n\
                    replica_fetch_wait_max_ms = 200\n\
                    raft_heartbeat_ms = 100\n\
                    raft_election_timeout_ms = 500\n";

const TOPIC: &str = "u";

/// The cluster with partition 0 of [`TOPIC`] offline, and what was produced to it.
struct Offline {
    c: Cluster,
    /// The last in-sync replica (the leader throughout), killed last.
    leader: usize,
    /// Killed first, out of the ISR and the ELR: back up, but not eligible.
    stale: usize,
    /// Killed second: in the ELR, still down.
    eligible: usize,
    /// A broker without a replica of the partition; clients talk to it.
    via: usize,
    history: History,
    /// The values acknowledged after `stale` left, with their offsets.
    acked_without_stale: Vec<(u64, String)>,
}

fn partition_view(c: &Cluster, id: usize) -> Value {
    get(&format!("{}/v1/topics/{TOPIC}", c.url(id))).1["partitions"][0].clone()
}

/// Produces `values` with acks=all through broker `via`; records each outcome.
fn produce_all(c: &Cluster, via: usize, values: &[String], history: &mut History) -> Vec<u64> {
    let records: Vec<Value> = values
        .iter()
        .map(|v| json!({"partition": 0, "value": v}))
        .collect();
    let (status, body) = post(
        &format!(
            "{}/v1/topics/{TOPIC}/records?acks=all&timeout_ms=5000",
            c.url(via)
        ),
        json!({ "records": records }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["durability"], "isr-fsync", "{body}");
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let offset = body["offsets"][i]["offset"].as_u64().unwrap();
            history.produced(
                v,
                Outcome::Acknowledged {
                    partition: 0,
                    offset,
                },
            );
            offset
        })
        .collect()
}

fn wait_isr(c: &Cluster, via: usize, isr: &[usize], elr: &[usize]) {
    wait_for(&format!("isr {isr:?} elr {elr:?}"), || {
        let p = partition_view(c, via);
        let (mut now_isr, mut now_elr) =
            (cluster::node_ids(&p["isr"]), cluster::node_ids(&p["elr"]));
        now_isr.sort_unstable();
        now_elr.sort_unstable();
        let (mut want_isr, mut want_elr) = (isr.to_vec(), elr.to_vec());
        want_isr.sort_unstable();
        want_elr.sort_unstable();
        if now_isr == want_isr && now_elr == want_elr {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
}

/// A request to send with [`call_with_retry_after`].
enum Request {
    Get(String),
    Post(String, Value),
}

/// Status, `Retry-After` and body of a request (a client of its own runtime).
fn call_with_retry_after(request: Request) -> (u16, Option<String>, Value) {
    common::runtime().block_on(async move {
        let http = common::Client::new();
        let request = match request {
            Request::Get(url) => http.get(url),
            Request::Post(url, body) => http.post(url).json(&body),
        };
        let answer = request.send().await.expect("an answer");
        let status = answer.status().as_u16();
        let retry_after = answer
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = answer.json::<Value>().await.unwrap_or(Value::Null);
        (status, retry_after, body)
    })
}

fn set_up_offline_partition() -> Offline {
    let mut c = Cluster::start(5, TOML);
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": TOPIC, "partitions": 1, "replication_factor": 3,
               "config": {"min_insync_replicas": 2}}),
    );
    assert_eq!(status, 201, "{body}");
    let p = &body["partitions"][0];
    let replicas = cluster::node_ids(&p["replicas"]);
    let leader = p["leader"].as_u64().unwrap() as usize;
    let followers: Vec<usize> = replicas.iter().copied().filter(|r| *r != leader).collect();
    let (stale, eligible) = (followers[0], followers[1]);
    let via = (1..=5).find(|id| !replicas.contains(id)).unwrap();
    wait_isr(&c, via, &replicas, &[]);
    let mut history = History::default();
    let first: Vec<String> = (0..20).map(|i| format!("all-three-{i}")).collect();
    produce_all(&c, via, &first, &mut history);

    c.brokers[stale - 1].kill9();
    wait_isr(&c, via, &[leader, eligible], &[]);
    let second: Vec<String> = (0..20).map(|i| format!("without-stale-{i}")).collect();
    let offsets = produce_all(&c, via, &second, &mut history);
    let acked_without_stale = offsets.into_iter().zip(second).collect();

    c.brokers[eligible - 1].kill9();
    wait_isr(&c, via, &[leader], &[eligible]);
    // Below the minimum: acks=all is refused before the append; acks=leader is stored on
    // the leader alone, past the high watermark (never acknowledged as isr-fsync).
    let (status, body) = post(
        &format!("{}/v1/topics/{TOPIC}/records?acks=all", c.url(via)),
        json!({"records": [{"partition": 0, "value": "refused"}]}),
    );
    cluster::assert_problem(status, &body, 503, "not_enough_replicas");
    history.produced("refused", Outcome::Failed);
    let (status, body) = post(
        &format!("{}/v1/topics/{TOPIC}/records?acks=leader", c.url(via)),
        json!({"records": [{"partition": 0, "value": "leader-only"}]}),
    );
    assert_eq!(status, 200, "{body}");
    history.produced("leader-only", Outcome::Unknown);

    c.brokers[leader - 1].kill9();
    // Two of five voters are up: nothing can be recorded until the stale replica returns.
    c.brokers[stale - 1].restart();
    wait_for("the partition offline, its last leader fenced", || {
        let p = partition_view(&c, via);
        let elr = cluster::node_ids(&p["elr"]);
        if p["leader"].is_null() && elr.contains(&leader) && elr.contains(&eligible) {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    Offline {
        c,
        leader,
        stale,
        eligible,
        via,
        history,
        acked_without_stale,
    }
}

/// Produce, fetch, long-poll and SSE through any broker answer 503 `leader_not_available`
/// with `Retry-After`; the stale replica is alive, yet never elected by itself.
fn assert_offline_and_nobody_elected(o: &Offline) {
    for id in [o.via, o.stale] {
        let url = o.c.url(id);
        let requests = [
            Request::Post(
                format!("{url}/v1/topics/{TOPIC}/records?acks=all"),
                json!({"records": [{"partition": 0, "value": "while-offline"}]}),
            ),
            Request::Get(format!(
                "{url}/v1/topics/{TOPIC}/partitions/0/records?offset=0"
            )),
            Request::Get(format!(
                "{url}/v1/topics/{TOPIC}/partitions/0/records?offset=0&wait_ms=500"
            )),
            Request::Get(format!(
                "{url}/v1/topics/{TOPIC}/partitions/0/stream?offset=0"
            )),
        ];
        for request in requests {
            let (status, retry_after, body) = call_with_retry_after(request);
            cluster::assert_problem(status, &body, 503, "leader_not_available");
            assert!(
                retry_after.is_some_and(|s| s.parse::<u32>().is_ok()),
                "no Retry-After: {body}"
            );
        }
    }
    let stale_alive = |c: &Cluster| {
        let (_, view) = get(&format!("{}/v1/cluster", c.url(o.via)));
        view["brokers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["node_id"] == o.stale as u64 && b["status"] == "alive")
    };
    wait_for("the stale replica unfenced", || {
        if stale_alive(&o.c) {
            Ok(())
        } else {
            Err("fenced".to_string())
        }
    });
    // Polled for three sessions: an automatic election would have happened by then.
    let until = Instant::now() + Duration::from_millis(4500);
    while Instant::now() < until {
        let p = partition_view(&o.c, o.via);
        assert!(
            p["leader"].is_null(),
            "a replica outside the ISR and the ELR was elected by itself: {p}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run 1: the last in-sync replica comes back and is elected from the ELR, nothing
/// acknowledged is lost, and the stale replica catches up behind it.
fn an_eligible_replica_returns_and_is_elected_without_loss() {
    let mut o = set_up_offline_partition();
    assert_offline_and_nobody_elected(&o);
    let epoch_offline = partition_view(&o.c, o.via)["leader_epoch"]
        .as_u64()
        .unwrap();
    o.c.brokers[o.leader - 1].restart();
    wait_for("the last in-sync replica elected again", || {
        let p = partition_view(&o.c, o.via);
        if p["leader"] == o.leader as u64 && p["leader_epoch"].as_u64() > Some(epoch_offline) {
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
    o.c.brokers[o.eligible - 1].restart();
    wait_isr(&o.c, o.via, &[o.leader, o.stale, o.eligible], &[]);
    let after: Vec<String> = (0..10).map(|i| format!("after-return-{i}")).collect();
    let offsets = produce_all(&o.c, o.via, &after, &mut o.history);
    let reads = cluster::read_every_replica(&o.c, o.via, TOPIC, 1);
    assert!(reads.iter().all(|r| r.high_watermark > offsets[9]));
    let anomalies = o.history.check(&reads);
    assert!(anomalies.is_empty(), "{anomalies:#?}");
}

/// Run 2: only the stale replica is back. Bad election requests are refused; the unclean
/// election of the stale replica reports what it gives up, exactly the acknowledged records
/// that are missing once the partition is read back; the others truncate to the new leader.
fn a_forced_unclean_election_reports_exactly_what_it_gave_up() {
    let mut o = set_up_offline_partition();
    assert_offline_and_nobody_elected(&o);
    let url = o.c.url(o.via).to_string();
    let elect = |topic: &str, partition: u32, body: Value| {
        post(
            &format!("{url}/v1/topics/{topic}/partitions/{partition}/elect"),
            body,
        )
    };
    let unclean = |replica: usize| json!({"type": "unclean", "replica": replica});
    let (status, body) = elect(TOPIC, 0, unclean(o.via));
    cluster::assert_problem(status, &body, 409, "not_in_replica_set");
    let (status, body) = elect(TOPIC, 0, unclean(o.eligible));
    cluster::assert_problem(status, &body, 409, "replica_fenced");
    let (status, body) = elect(TOPIC, 0, json!({"type": "dirty", "replica": o.stale}));
    cluster::assert_problem(status, &body, 400, "invalid_request");
    let (status, body) = elect("nope", 0, unclean(o.stale));
    cluster::assert_problem(status, &body, 404, "topic_not_found");
    let (status, body) = elect(TOPIC, 7, unclean(o.stale));
    cluster::assert_problem(status, &body, 404, "partition_not_found");
    let (status, body) = elect(TOPIC, 0, json!({"type": "preferred"}));
    cluster::assert_problem(status, &body, 409, "preferred_leader_not_available");
    let epoch_offline = partition_view(&o.c, o.via)["leader_epoch"]
        .as_u64()
        .unwrap();

    let (status, answer) = elect(TOPIC, 0, unclean(o.stale));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["leader"], o.stale as u64, "{answer}");
    assert_eq!(answer["changed"], true, "{answer}");
    assert!(
        answer["leader_epoch"].as_u64() > Some(epoch_offline),
        "{answer}"
    );
    let start = answer["given_up"]["start_offset"].as_u64().unwrap();
    let end = answer["given_up"]["end_offset"].as_u64().unwrap();
    // What was acknowledged after the stale replica left is what it lacks, to the offset.
    let first_lost = o.acked_without_stale[0].0;
    let last_acked = o.acked_without_stale.last().unwrap().0;
    assert_eq!((start, end), (first_lost, last_acked + 1), "{answer}");
    let p = partition_view(&o.c, o.via);
    assert_eq!(
        (cluster::node_ids(&p["isr"]), cluster::node_ids(&p["elr"])),
        (vec![o.stale], vec![]),
        "{p}"
    );
    // A second unclean election is refused: the partition has a leader now.
    let (status, body) = elect(TOPIC, 0, unclean(o.stale));
    cluster::assert_problem(status, &body, 409, "partition_has_leader");

    // The others return and truncate to the new leader's log (a new leader epoch).
    o.c.brokers[o.eligible - 1].restart();
    o.c.brokers[o.leader - 1].restart();
    wait_isr(&o.c, o.via, &[o.stale, o.eligible, o.leader], &[]);
    // The preferred replica (the first, the old leader) is in sync again: leadership moves
    // back to it.
    let (status, moved) = elect(TOPIC, 0, json!({"type": "preferred"}));
    assert_eq!(status, 200, "{moved}");
    assert_eq!(
        (moved["leader"].as_u64(), moved["changed"].as_bool()),
        (Some(o.leader as u64), Some(true)),
        "{moved}"
    );
    assert!(moved["leader_epoch"].as_u64() > answer["leader_epoch"].as_u64());
    let after: Vec<String> = (0..10).map(|i| format!("after-unclean-{i}")).collect();
    let offsets = produce_all(&o.c, o.via, &after, &mut o.history);
    assert_eq!(
        offsets[0], start,
        "the new leader writes from its own log end"
    );
    let reads = cluster::read_every_replica(&o.c, o.via, TOPIC, 1);
    assert!(reads.iter().all(|r| r.high_watermark > offsets[9]));
    for read in &reads[1..] {
        assert_eq!(
            read.records, reads[0].records,
            "replicas differ after truncation"
        );
    }
    let stored: std::collections::BTreeMap<u64, &str> = reads[0]
        .records
        .iter()
        .map(|(o, v)| (*o, v.as_str()))
        .collect();
    let missing: Vec<u64> = o
        .history
        .acknowledged_in(0)
        .into_iter()
        .filter(|(offset, value)| stored.get(offset) != Some(&value.as_str()))
        .map(|(offset, _)| offset)
        .collect();
    let reported: Vec<u64> = (start..end).collect();
    assert_eq!(
        missing, reported,
        "the acknowledged records lost are the range reported"
    );
}

#[test]
fn the_last_in_sync_replica_killed_leaves_the_partition_offline_until_an_eligible_one_returns_or_an_operator_elects_unclean()
 {
    an_eligible_replica_returns_and_is_elected_without_loss();
    a_forced_unclean_election_reports_exactly_what_it_gave_up();
}

/// On a broker alone every partition is led by the broker: a preferred election changes
/// nothing, an unclean one is refused as on a cluster, and bad requests get their codes.
#[test]
fn a_broker_alone_answers_elections_with_the_cluster_codes() {
    let broker = common::TestBroker::start();
    let url = &broker.url;
    let (status, body) = post(
        &format!("{url}/v1/topics"),
        json!({"name": TOPIC, "partitions": 2}),
    );
    assert_eq!(status, 201, "{body}");
    let elect = |topic: &str, partition: u32, body: Value| {
        post(
            &format!("{url}/v1/topics/{topic}/partitions/{partition}/elect"),
            body,
        )
    };
    let (_, cluster_view) = get(&format!("{url}/v1/cluster"));
    let me = cluster_view["node_id"].as_u64().unwrap();
    let (status, answer) = elect(TOPIC, 1, json!({"type": "preferred"}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (
            answer["leader"].as_u64(),
            answer["changed"].as_bool(),
            &answer["given_up"]
        ),
        (Some(me), Some(false), &Value::Null),
        "{answer}"
    );
    let (status, body) = elect(TOPIC, 0, json!({"type": "unclean", "replica": me}));
    cluster::assert_problem(status, &body, 409, "partition_has_leader");
    let (status, body) = elect(TOPIC, 0, json!({"type": "unclean", "replica": me + 1}));
    cluster::assert_problem(status, &body, 409, "not_in_replica_set");
    let (status, body) = elect(TOPIC, 0, json!({"type": "clean"}));
    cluster::assert_problem(status, &body, 400, "invalid_request");
    let (status, body) = elect(TOPIC, 0, json!({"type": "unclean"}));
    cluster::assert_problem(status, &body, 400, "invalid_request");
    let (status, body) = elect(TOPIC, 2, json!({"type": "preferred"}));
    cluster::assert_problem(status, &body, 404, "partition_not_found");
    let (status, body) = elect("nope", 0, json!({"type": "preferred"}));
    cluster::assert_problem(status, &body, 404, "topic_not_found");
}
