//! Consumer groups survive the death of any one broker (issue 10): three brokers on
//! loopback, a group of two members consuming and committing through the brokers that do not
//! coordinate it, then `kill -9` of the broker that does (the leader of `__consumer_offsets`,
//! which the controller made with itself first, so usually the controller too). Afterwards
//! every acknowledged commit is there (none lost, none invented), the members fetch again
//! within a bounded time (joining again is allowed: membership is not kept in the log), each
//! partition resumes exactly at its committed offset, and every record is processed.
//!
//! The same on five brokers with a topic of two replicas: there the coordinator holds no
//! replica of some partitions and reads them at their leaders (`groups::remote`), before and
//! after the kill.
//!
//! Timings are shortened by config (sessions 3 s, `raft_election_timeout_ms` 500); the time
//! from the kill to the first fetch served again is printed.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, get, post, replicas_of, wait_for};
use serde_json::{Value, json};

const TOML: &str = "broker_session_timeout_ms = 3000\n\
                    raft_heartbeat_ms = 100\n\
                    raft_election_timeout_ms = 500\n\
                    replica_lag_time_max_ms = 2000\n\
                    replica_fetch_wait_max_ms = 200\n";
const TOPIC: &str = "orders";
const PARTITIONS: u64 = 4;
const PER_PARTITION: u64 = 40;
const GROUP: &str = "billing";
/// How long the members may take to be served again after the coordinator dies.
const FAILOVER_MAX: Duration = Duration::from_secs(30);

/// The leader of `topic`'s partition 0 as broker `id` sees it.
fn leader_of(c: &Cluster, id: usize, topic: &str) -> Option<usize> {
    let (status, view) = get(&format!("{}/v1/topics/{topic}", c.url(id)));
    (status == 200)
        .then(|| view["partitions"][0]["leader"].as_u64())
        .flatten()
        .map(|l| l as usize)
}

/// Makes a topic of `factor` replicas (`min_insync_replicas` 2, or 1 for fewer than 3)
/// through broker 1 and fills each of its partitions with `PER_PARTITION` records, values
/// `p{partition}-{i}`.
fn topic_with_records(c: &Cluster, factor: u64) {
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": TOPIC, "partitions": PARTITIONS, "replication_factor": factor,
               "config": {"min_insync_replicas": factor.min(3) - 1}}),
    );
    assert_eq!(status, 201, "{body}");
    for p in 0..PARTITIONS {
        let records: Vec<Value> = (0..PER_PARTITION)
            .map(|i| json!({"partition": p, "value": format!("p{p}-{i}")}))
            .collect();
        let answer = wait_for(&format!("partition {p} written"), || {
            let (status, answer) = post(
                &format!("{}/v1/topics/{TOPIC}/records", c.url(1)),
                json!({ "records": records }),
            );
            (status == 200)
                .then_some(answer.clone())
                .ok_or(answer.to_string())
        });
        assert_eq!(answer["durability"], "isr-fsync", "{answer}");
    }
}

/// What the consumers saw and were told, across both members.
#[derive(Default)]
struct Seen {
    /// Every record value processed, with how often.
    processed: BTreeMap<String, u32>,
    /// The last commit acknowledged per partition.
    committed: BTreeMap<u64, u64>,
    /// Set at the kill: the first offset fetched afterwards per partition.
    first_after_kill: Option<BTreeMap<u64, u64>>,
    /// Problem codes (or transport failures) met, with how often.
    refusals: BTreeMap<String, u32>,
}

impl Seen {
    fn refused(&mut self, status: u16, body: &Value) {
        let code = body["code"].as_str().unwrap_or("no answer");
        *self.refusals.entry(format!("{status} {code}")).or_default() += 1;
    }

    fn all_committed(&self) -> bool {
        (0..PARTITIONS).all(|p| self.committed.get(&p) == Some(&PER_PARTITION))
    }
}

/// A plain HTTP member of the group, talking to one broker.
struct Consumer {
    url: String,
    /// Member id and generation; `None` until it (re)joins.
    member: Option<(String, u64)>,
}

impl Consumer {
    /// One round: join if needed, fetch, process, commit. True if records were fetched.
    fn step(&mut self, seen: &mut Seen) -> bool {
        let Some((member, _)) = self.member.clone() else {
            let (status, joined) = post(
                &format!("{}/v1/groups/{GROUP}/members", self.url),
                json!({"topics": [TOPIC], "session_timeout_ms": 10000}),
            );
            if status == 201 {
                let id = joined["member_id"].as_str().expect("an id").to_string();
                let generation = joined["generation"].as_u64().expect("a generation");
                self.member = Some((id, generation));
            } else {
                seen.refused(status, &joined);
            }
            return false;
        };
        let (status, fetched) = get(&format!(
            "{}/v1/groups/{GROUP}/members/{member}/records?max_records=7",
            self.url
        ));
        if status != 200 {
            if status == 404 {
                self.member = None; // the coordinator forgot it: join again
            }
            seen.refused(status, &fetched);
            return false;
        }
        let generation = fetched["generation"].as_u64().expect("a generation");
        self.member = Some((member.clone(), generation));
        let records = fetched["records"].as_array().expect("records");
        for r in records {
            let (p, offset) = (
                r["partition"].as_u64().unwrap(),
                r["offset"].as_u64().unwrap(),
            );
            if let Some(first) = seen.first_after_kill.as_mut() {
                first.entry(p).or_insert(offset);
            }
            let value = r["value"].as_str().expect("a value").to_string();
            *seen.processed.entry(value).or_default() += 1;
        }
        let next = fetched["next_offsets"].as_array().expect("next offsets");
        if next.is_empty() {
            return false;
        }
        let (status, answer) = post(
            &format!("{}/v1/groups/{GROUP}/offsets", self.url),
            json!({"member_id": member, "generation": generation, "offsets": next}),
        );
        if status == 200 {
            for o in next {
                let (p, offset) = (
                    o["partition"].as_u64().unwrap(),
                    o["offset"].as_u64().unwrap(),
                );
                seen.committed.insert(p, offset);
            }
        } else {
            if status == 404 {
                self.member = None;
            }
            seen.refused(status, &answer);
        }
        !records.is_empty()
    }
}

/// The group's committed offsets as broker `url` answers them, by partition.
fn committed_offsets(url: &str) -> Result<BTreeMap<u64, u64>, String> {
    let (status, body) = get(&format!("{url}/v1/groups/{GROUP}/offsets"));
    if status != 200 {
        return Err(format!("{status} {body}"));
    }
    Ok(body["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| {
            (
                o["partition"].as_u64().unwrap(),
                o["offset"].as_u64().unwrap(),
            )
        })
        .collect())
}

#[test]
fn a_killed_coordinator_loses_no_commit_and_members_resume_from_their_commits() {
    coordinator_kill_run(3, 3);
}

/// The same on five brokers with a topic of two replicas: the coordinator holds no replica
/// of some partitions (before the kill, after it, or both), which it reads at their
/// leaders; the kill also takes the leadership of the partitions it led to their other
/// replica.
#[test]
fn a_killed_coordinator_of_partitions_it_does_not_hold_loses_no_commit() {
    coordinator_kill_run(5, 2);
}

fn coordinator_kill_run(brokers: usize, factor: u64) {
    let mut c = Cluster::start(brokers, TOML);
    topic_with_records(&c, factor);

    // The first member joins through broker 2; the groups' coordinator is then known.
    let mut a = Consumer {
        url: c.url(2).to_string(),
        member: None,
    };
    let mut seen = Seen::default();
    wait_for("the first member joins", || {
        a.step(&mut seen);
        a.member.clone().ok_or(format!("{:?}", seen.refusals))
    });
    let victim = wait_for("a leader of __consumer_offsets", || {
        leader_of(&c, 2, "__consumer_offsets").ok_or("none yet".to_string())
    });
    let survivors: Vec<usize> = (1..=brokers).filter(|id| *id != victim).collect();
    let elsewhere: Vec<u64> = (0..PARTITIONS)
        .filter(|p| !replicas_of(&c, 2, TOPIC, *p as u32).contains(&victim))
        .collect();
    println!("partitions with no replica on the coordinator: {elsewhere:?}");
    assert_eq!(
        elsewhere.is_empty(),
        factor as usize == brokers,
        "{elsewhere:?}"
    );
    println!("coordinator: broker {victim}; members talk to {survivors:?}");
    a.url = c.url(survivors[0]).to_string();
    let mut b = Consumer {
        url: c.url(survivors[1]).to_string(),
        member: None,
    };

    // About half of the records are consumed and committed before the kill.
    let half = PARTITIONS * PER_PARTITION / 2;
    let deadline = Instant::now() + common::cluster::DEADLINE;
    while seen.committed.values().sum::<u64>() < half {
        assert!(
            Instant::now() < deadline,
            "no progress: {:?}",
            seen.refusals
        );
        a.step(&mut seen);
        b.step(&mut seen);
    }
    assert!(
        seen.refusals.keys().all(|r| r.contains("stale_generation")),
        "before the kill only a rebalance may refuse a commit: {:?}",
        seen.refusals
    );
    let committed_before = seen.committed.clone();
    println!("committed before the kill: {committed_before:?}");

    c.brokers[victim - 1].kill9();
    let killed = Instant::now();
    seen.first_after_kill = Some(BTreeMap::new());
    seen.refusals.clear();

    // The commits are all there once the groups are served again (read through a survivor).
    let after = wait_for("the committed offsets served again", || {
        committed_offsets(c.url(survivors[0]))
    });
    assert_eq!(
        after, committed_before,
        "every acknowledged commit, and nothing else, after the failover"
    );

    let mut served_again: Option<Duration> = None;
    while !seen.all_committed() {
        let waited = killed.elapsed();
        assert!(
            served_again.is_some() || waited < FAILOVER_MAX,
            "members not served within {FAILOVER_MAX:?} of the kill: {:?}",
            seen.refusals
        );
        assert!(
            waited < FAILOVER_MAX + common::cluster::DEADLINE,
            "stuck: committed {:?}, refusals {:?}",
            seen.committed,
            seen.refusals
        );
        let fetched = a.step(&mut seen) | b.step(&mut seen);
        if fetched && served_again.is_none() {
            served_again = Some(waited);
        }
        if !fetched {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    println!(
        "members fetching again {:?} after the kill; refusals meanwhile: {:?}",
        served_again.expect("fetched"),
        seen.refusals
    );
    let retryable = [
        "no answer",
        "broker_unavailable",
        "coordinator_loading",
        "not_coordinator",
        "not_controller",
        "member_not_found",
        "stale_generation",
        "forward_failed",
        "forward_timeout",
        "leader_not_available",
    ];
    for refusal in seen.refusals.keys() {
        assert!(
            retryable.iter().any(|code| refusal.ends_with(code)),
            "only retryable refusals during the failover: {refusal}"
        );
    }

    // Each partition resumed exactly where its last acknowledged commit said.
    let first = seen.first_after_kill.clone().expect("set at the kill");
    for (p, offset) in &committed_before {
        if *offset < PER_PARTITION {
            assert_eq!(
                first.get(p),
                Some(offset),
                "partition {p} resumes at its commit"
            );
        }
    }
    // Every record was processed (at least once: a commit refused by a rebalance is read again).
    let expected: BTreeSet<String> = (0..PARTITIONS)
        .flat_map(|p| (0..PER_PARTITION).map(move |i| format!("p{p}-{i}")))
        .collect();
    let processed: BTreeSet<String> = seen.processed.keys().cloned().collect();
    assert_eq!(processed, expected);
    let final_offsets = committed_offsets(c.url(survivors[1])).expect("offsets");
    assert!(
        final_offsets.values().all(|o| *o == PER_PARTITION),
        "{final_offsets:?}"
    );
}

/// A named producer session through broker `url`: (id, epoch), or the refusal.
fn session(url: &str, name: Option<&str>) -> Result<(u64, u64), String> {
    let body = name.map_or(json!({}), |n| json!({"name": n}));
    let (status, s) = post(&format!("{url}/v1/producers"), body);
    if status != 201 {
        return Err(format!("{status} {s}"));
    }
    Ok((
        s["producer_id"].as_u64().expect("an id"),
        s["producer_epoch"].as_u64().expect("an epoch"),
    ))
}

/// An idempotent produce of one record to `PAYMENTS` partition 0: (status, answer).
fn produce_as(url: &str, (id, epoch): (u64, u64), sequence: u64, value: &str) -> (u16, Value) {
    post(
        &format!(
            "{url}/v1/topics/{PAYMENTS}/records?producer_id={id}&producer_epoch={epoch}&sequence={sequence}"
        ),
        json!({"records": [{"partition": 0, "value": value}]}),
    )
}

/// A client and the runtime it runs on, for answers read as bytes.
struct Raw(tokio::runtime::Runtime, common::Client);

/// A produce with an `Idempotency-Key`: status, whether it was replayed, body bytes.
fn keyed_produce(raw: &Raw, url: &str, key: &str) -> (u16, bool, Vec<u8>) {
    let request = raw
        .1
        .post(format!("{url}/v1/topics/{PAYMENTS}/records"))
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(r#"{"records":[{"key":"o-1","value":{"amount":5}},{"value":"x"}]}"#);
    raw.0.block_on(async move {
        match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let replayed = r
                    .headers()
                    .get("idempotent-replayed")
                    .is_some_and(|v| v == "true");
                (
                    status,
                    replayed,
                    r.bytes().await.map_or(Vec::new(), |b| b.to_vec()),
                )
            }
            Err(_) => (0, false, Vec::new()),
        }
    })
}

const PAYMENTS: &str = "payments";

#[test]
fn a_killed_coordinator_hands_out_no_producer_id_twice_fences_old_epochs_and_replays_keys() {
    let mut c = Cluster::start(3, TOML);
    let (status, body) = post(
        &format!("{}/v1/topics", c.url(1)),
        json!({"name": PAYMENTS, "partitions": 2, "replication_factor": 3,
               "config": {"min_insync_replicas": 2}}),
    );
    assert_eq!(status, 201, "{body}");
    let raw = Raw(
        common::runtime(),
        common::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    );

    // Before the kill: a named producer writes, anonymous sessions take ids, a keyed produce
    // is answered.
    let first = wait_for("a named session", || session(c.url(2), Some("billing")));
    let mut ids: Vec<u64> = vec![first.0];
    for _ in 0..3 {
        ids.push(session(c.url(3), None).expect("an anonymous session").0);
    }
    let (status, answer) = produce_as(c.url(2), first, 0, "from epoch 0");
    assert_eq!(status, 200, "{answer}");
    let keyed = wait_for("a keyed produce answered", || {
        match keyed_produce(&raw, c.url(3), "pay-1") {
            (200, false, body) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });

    let victim = leader_of(&c, 1, "__producers").expect("a leader of __producers");
    let keys_leader = leader_of(&c, 1, "__idempotency_keys").expect("a keys leader");
    println!("__producers led by {victim}, __idempotency_keys by {keys_leader}");
    c.brokers[victim - 1].kill9();
    let killed = Instant::now();
    let survivor = c.url((1..=3).find(|id| *id != victim).unwrap()).to_string();

    // The same name gets its id with a higher epoch; anonymous sessions get ids never given.
    let second = wait_for("a named session after the failover", || {
        session(&survivor, Some("billing"))
    });
    println!(
        "sessions served again {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(second.0, first.0, "a name keeps its id across the failover");
    assert!(
        second.1 > first.1,
        "the epoch grows: {first:?} then {second:?}"
    );
    for _ in 0..3 {
        ids.push(session(&survivor, None).expect("an anonymous session").0);
    }
    let distinct: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "no producer id given twice: {ids:?}"
    );

    // The new incarnation writes; the old one is fenced.
    let (status, answer) = wait_for("the new epoch writes", || {
        match produce_as(&survivor, second, 0, "from the new epoch") {
            (200, a) => Ok((200, a)),
            (s, a) if s == 409 => Ok((s, a)),
            (s, a) => Err(format!("{s} {a}")),
        }
    });
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = produce_as(&survivor, first, 1, "from the fenced epoch");
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("producer_fenced")),
        "{answer}"
    );

    // The key answered before the kill replays the same answer, byte for byte.
    let (status, replayed, body) = wait_for("the key served again", || {
        match keyed_produce(&raw, &survivor, "pay-1") {
            (s, r, b) if s == 200 || s == 422 || s == 409 => Ok((s, r, b)),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(replayed, "a replay, not a second write");
    assert_eq!(body, keyed, "byte for byte");
}
