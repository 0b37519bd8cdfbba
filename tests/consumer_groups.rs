//! Consumer groups over HTTP against a real broker process: membership and assignment,
//! generation fencing, durability of commits across a `kill -9`, and an at-least-once
//! consumer loop that dies mid-batch while a checker reads every record back.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Api, TestBroker};
use serde_json::{Value, json};

async fn send(req: common::client::RequestBuilder) -> (u16, String, Value) {
    let r = req.send().await.expect("request sent");
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, ct, body)
}

/// The calls this file's tests need, on the shared client.
impl Api {
    async fn post(&self, path: &str, body: Value) -> (u16, String, Value) {
        send(self.http.post(format!("{}{path}", self.url)).json(&body)).await
    }

    async fn get(&self, path: &str) -> (u16, String, Value) {
        send(self.http.get(format!("{}{path}", self.url))).await
    }

    async fn delete(&self, path: &str) -> (u16, String, Value) {
        send(self.http.delete(format!("{}{path}", self.url))).await
    }

    async fn create_topic(&self, name: &str, partitions: u32) {
        common::create_topic(&self.http, &self.url, name, partitions).await;
    }

    /// Produces values `from..to` as `{"n": i}`, record `i` to partition `i % partitions`.
    async fn produce_numbers(&self, topic: &str, partitions: u32, from: u64, to: u64) {
        let mut i = from;
        while i < to {
            let end = (i + 500).min(to);
            let records: Vec<Value> = (i..end)
                .map(|n| json!({"value": {"n": n}, "partition": (n % u64::from(partitions))}))
                .collect();
            let (s, _, b) = self
                .post(
                    &format!("/v1/topics/{topic}/records"),
                    json!({ "records": records }),
                )
                .await;
            assert_eq!(s, 200, "{b}");
            i = end;
        }
    }

    async fn join(&self, group: &str, topics: &[&str], session_ms: u64) -> Value {
        let (s, _, b) = self
            .post(
                &format!("/v1/groups/{group}/members"),
                json!({"topics": topics, "session_timeout_ms": session_ms}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        b
    }

    async fn fetch(&self, group: &str, member: &str, query: &str) -> (u16, String, Value) {
        self.get(&format!(
            "/v1/groups/{group}/members/{member}/records?{query}"
        ))
        .await
    }

    async fn commit(&self, group: &str, member: &str, generation: u64, offsets: &Value) -> u16 {
        let (s, _, _) = self
            .post(
                &format!("/v1/groups/{group}/offsets"),
                json!({"member_id": member, "generation": generation, "offsets": offsets}),
            )
            .await;
        s
    }
}

fn assignment(v: &Value) -> BTreeSet<(String, u64)> {
    v["assignment"]
        .as_array()
        .expect("assignment")
        .iter()
        .map(|tp| {
            (
                tp["topic"].as_str().unwrap().to_string(),
                tp["partition"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn member_id(v: &Value) -> String {
    v["member_id"].as_str().expect("member_id").to_string()
}

#[tokio::test]
async fn three_members_split_the_partitions_and_a_leaver_hands_its_own_over() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("orders", 8).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(member_id(&api.join("workers", &["orders"], 30_000).await));
    }
    let all: BTreeSet<(String, u64)> = (0..8).map(|p| ("orders".to_string(), p)).collect();
    let mut before = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for id in &ids {
        let (s, _, v) = api
            .post(
                &format!("/v1/groups/workers/members/{id}/heartbeat"),
                json!({}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["generation"], 3);
        let mine = assignment(&v);
        assert!((2..=3).contains(&mine.len()), "balanced: {v}");
        for tp in &mine {
            assert!(seen.insert(tp.clone()), "{tp:?} assigned twice");
        }
        before.insert(id.clone(), mine);
    }
    assert_eq!(seen, all, "every partition assigned once");

    let (s, _, _) = api
        .delete(&format!("/v1/groups/workers/members/{}", ids[0]))
        .await;
    assert_eq!(s, 204);
    let (s, ct, p) = api.fetch("workers", &ids[0], "max_records=1").await;
    assert_eq!(
        (s, ct.as_str(), p["code"].as_str()),
        (404, "application/problem+json", Some("member_not_found"))
    );

    let (s, _, d) = api.get("/v1/groups/workers").await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["state"], "stable");
    assert_eq!(d["generation"], 4);
    let members = d["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    let mut seen = BTreeSet::new();
    for m in members {
        let id = m["member_id"].as_str().unwrap();
        let mine = assignment(m);
        assert!(before[id].is_subset(&mine), "{id} kept its partitions");
        seen.extend(mine);
    }
    assert_eq!(seen, all, "the leaver's partitions moved to the others");
    assert_eq!(d["partitions"].as_array().unwrap().len(), 8);

    let (_, _, list) = api.get("/v1/groups").await;
    assert_eq!(list["groups"][0]["group"], "workers");
    assert_eq!(list["groups"][0]["members"], 2);

    // Online expansion of a subscribed topic rebalances: the new partitions get owners.
    let (s, _, b) = api
        .post("/v1/topics/orders/partitions", json!({"count": 10}))
        .await;
    assert!(s == 200 || s == 201, "{s} {b}");
    let (_, _, d) = api.get("/v1/groups/workers").await;
    assert_eq!(d["generation"], 5);
    let owned: BTreeSet<(String, u64)> = d["members"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(assignment)
        .collect();
    assert_eq!(owned.len(), 10, "{d}");
}

#[tokio::test]
async fn a_commit_for_a_partition_lost_in_a_rebalance_is_refused_as_stale() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("t", 2).await;
    api.produce_numbers("t", 2, 0, 10).await;
    let a = api.join("g", &["t"], 30_000).await;
    let a_id = member_id(&a);
    assert_eq!(assignment(&a).len(), 2);
    let (s, _, batch) = api.fetch("g", &a_id, "max_records=100").await;
    assert_eq!(s, 200, "{batch}");
    assert_eq!(batch["records"].as_array().unwrap().len(), 10);
    assert_eq!(batch["generation"], 1);

    // b joins: one of a's partitions moves to it in generation 2.
    let b = api.join("g", &["t"], 30_000).await;
    let moved = assignment(&b).into_iter().next().unwrap();
    let (s, ct, problem) = api
        .post(
            "/v1/groups/g/offsets",
            json!({"member_id": a_id, "generation": 1, "offsets": batch["next_offsets"]}),
        )
        .await;
    assert_eq!(s, 409, "{problem}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(problem["code"], "stale_generation");
    assert_eq!(problem["generation"], 2);

    // The partition a kept may still be committed with the generation its records came from.
    let kept: Vec<&Value> = batch["next_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["partition"].as_u64() != Some(moved.1))
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(api.commit("g", &a_id, 1, &json!(kept)).await, 200);
    // Nothing of the moved partition was committed: b reads it from the start.
    let (_, _, b_batch) = api.fetch("g", &member_id(&b), "max_records=100").await;
    assert_eq!(b_batch["records"][0]["offset"], 0);
    assert_eq!(b_batch["records"].as_array().unwrap().len(), 5);

    // Without membership, commits are refused while the group has members.
    let (s, _, p) = api
        .post(
            "/v1/groups/g/offsets",
            json!({"offsets": [{"topic": "t", "partition": 0, "offset": 1}]}),
        )
        .await;
    assert_eq!((s, p["code"].as_str()), (409, Some("group_not_empty")));
}

#[tokio::test]
async fn a_retried_fetch_returns_the_same_records_until_they_are_committed() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("t", 3).await;
    api.produce_numbers("t", 3, 0, 30).await;
    let id = member_id(&api.join("g", &["t"], 30_000).await);
    let (_, _, first) = api.fetch("g", &id, "max_records=7").await;
    let (_, _, again) = api.fetch("g", &id, "max_records=7").await;
    assert_eq!(first["records"].as_array().unwrap().len(), 7);
    assert_eq!(first["records"][0]["topic"], "t");
    assert_eq!(
        again["records"], first["records"],
        "a retry gets the same records"
    );
    // Nothing committed yet: every partition is read from its first offset, none skipped.
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    for r in first["records"].as_array().unwrap() {
        let p = r["partition"].as_u64().unwrap();
        let expected = next.entry(p).or_insert(0);
        assert_eq!(r["offset"].as_u64().unwrap(), *expected, "{r}");
        *expected += 1;
    }
    assert_eq!(
        api.commit(
            "g",
            &id,
            first["generation"].as_u64().unwrap(),
            &first["next_offsets"]
        )
        .await,
        200
    );
    // auto_commit=true is at-most-once: what it returns is committed before the answer.
    let (_, _, auto) = api
        .fetch("g", &id, "max_records=100&auto_commit=true")
        .await;
    assert_eq!(auto["auto_committed"], true);
    assert_eq!(auto["unavailable"], json!([]), "every partition is here");
    assert_eq!(auto["delivery"], "at_most_once");
    assert_eq!(first["delivery"], "at_least_once");
    assert_eq!(auto["records"].as_array().unwrap().len(), 30 - 7);
    let (_, _, empty) = api.fetch("g", &id, "max_records=100").await;
    assert_eq!(empty["records"].as_array().unwrap().len(), 0);
    let (_, _, d) = api.get("/v1/groups/g").await;
    for p in d["partitions"].as_array().unwrap() {
        assert_eq!(p["lag"], 0, "{p}");
        assert_eq!(p["committed_offset"], 10);
    }
}

#[tokio::test]
async fn a_long_poll_wakes_when_a_record_arrives_on_any_partition() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("t", 4).await;
    let id = member_id(&api.join("g", &["t"], 30_000).await);
    let producer = Api::new(&broker);
    let produce = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        producer
            .post(
                "/v1/topics/t/records",
                json!({"records": [{"value": 1, "partition": 3}]}),
            )
            .await
    });
    let (s, _, b) = api.fetch("g", &id, "wait_ms=20000").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["records"].as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b["records"][0]["partition"], 3);
    assert_eq!(
        b["next_offsets"],
        json!([{"topic": "t", "partition": 3, "offset": 1}])
    );
    assert_eq!(produce.await.unwrap().0, 200);
}

#[tokio::test]
async fn committed_offsets_survive_a_kill_9_and_a_new_member_resumes_there() {
    let mut broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("t", 2).await;
    api.produce_numbers("t", 2, 0, 40).await;
    let id = member_id(&api.join("g", &["t"], 30_000).await);
    let (_, _, batch) = api.fetch("g", &id, "max_records=15").await;
    let generation = batch["generation"].as_u64().unwrap();
    assert_eq!(
        api.commit("g", &id, generation, &batch["next_offsets"])
            .await,
        200
    );
    let (_, _, before) = api.get("/v1/groups/g/offsets").await;
    assert_eq!(
        before["offsets"].as_array().unwrap().len(),
        batch["next_offsets"].as_array().unwrap().len()
    );

    broker.restart();
    let api = Api::new(&broker);
    let (s, _, after) = api.get("/v1/groups/g/offsets").await;
    assert_eq!(s, 200, "{after}");
    assert_eq!(after["offsets"], before["offsets"]);
    // The old member is gone with the process; a new one starts at the committed offsets.
    let (s, _, p) = api.fetch("g", &id, "").await;
    assert_eq!((s, p["code"].as_str()), (404, Some("member_not_found")));
    let id = member_id(&api.join("g", &["t"], 30_000).await);
    let (_, _, resumed) = api.fetch("g", &id, "max_records=100").await;
    let committed: BTreeMap<u64, u64> = after["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["partition"].as_u64().unwrap(),
                o["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut first_seen = BTreeMap::new();
    for r in resumed["records"].as_array().unwrap() {
        first_seen
            .entry(r["partition"].as_u64().unwrap())
            .or_insert(r["offset"].as_u64().unwrap());
    }
    for (p, first) in first_seen {
        assert_eq!(
            first,
            committed.get(&p).copied().unwrap_or(0),
            "partition {p}"
        );
    }
    assert_eq!(resumed["records"].as_array().unwrap().len(), 40 - 15);
}

#[tokio::test]
async fn groups_without_members_commit_reset_and_delete() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("t", 2).await;
    api.produce_numbers("t", 2, 0, 20).await;
    let (s, _, b) = api
        .post(
            "/v1/groups/manual/offsets",
            json!({"offsets": [{"topic": "t", "partition": 0, "offset": 4}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, _, o) = api.get("/v1/groups/manual/offsets").await;
    assert_eq!(o["offsets"][0]["offset"], 4);
    let (s, _, p) = api
        .post(
            "/v1/groups/manual/offsets",
            json!({"offsets": [{"topic": "t", "partition": 0, "offset": 11}]}),
        )
        .await;
    assert_eq!((s, p["code"].as_str()), (416, Some("offset_out_of_range")));

    let (s, _, r) = api
        .post("/v1/groups/manual/offsets/reset", json!({"to": "latest"}))
        .await;
    assert_eq!(s, 200, "{r}");
    let (_, _, o) = api.get("/v1/groups/manual/offsets").await;
    assert_eq!(
        o["offsets"].as_array().unwrap().len(),
        2,
        "every partition of t"
    );
    assert!(
        o["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["offset"] == 10)
    );
    let (s, _, _) = api
        .post(
            "/v1/groups/manual/offsets/reset",
            json!({"to": "offset", "offset": 3, "topics": ["t"]}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, _, d) = api.get("/v1/groups/manual").await;
    assert_eq!(d["state"], "empty");
    assert!(
        d["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["lag"] == 7)
    );

    // A member makes the group non-empty: resets and deletes are refused.
    let id = member_id(&api.join("manual", &["t"], 30_000).await);
    let (s, _, p) = api
        .post("/v1/groups/manual/offsets/reset", json!({"to": "earliest"}))
        .await;
    assert_eq!((s, p["code"].as_str()), (409, Some("group_not_empty")));
    let (s, _, p) = api.delete("/v1/groups/manual").await;
    assert_eq!((s, p["code"].as_str()), (409, Some("group_not_empty")));
    let metrics = common::scrape_metrics(&api.http, &api.url).await;
    assert!(
        metrics.contains("tidelog_consumer_group_members{group=\"manual\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tidelog_consumer_group_rebalances_total{group=\"manual\"}"));
    assert!(metrics.contains(
        "tidelog_consumer_group_lag_records{group=\"manual\",topic=\"t\",partition=\"0\"} 7"
    ));

    assert_eq!(
        api.delete(&format!("/v1/groups/manual/members/{id}"))
            .await
            .0,
        204
    );
    assert_eq!(api.delete("/v1/groups/manual").await.0, 204);
    let (s, _, p) = api.get("/v1/groups/manual").await;
    assert_eq!((s, p["code"].as_str()), (404, Some("group_not_found")));
    // A deleted group's gauges are zeroed, not left showing its last lag.
    let metrics = common::scrape_metrics(&api.http, &api.url).await;
    assert!(metrics.contains("tidelog_consumer_group_members{group=\"manual\"} 0"));
    assert!(metrics.contains(
        "tidelog_consumer_group_lag_records{group=\"manual\",topic=\"t\",partition=\"0\"} 0"
    ));
    let (s, _, p) = api
        .post("/v1/groups/bad%20name/members", json!({"topics": ["t"]}))
        .await;
    assert_eq!((s, p["code"].as_str()), (400, Some("invalid_group_name")));
    let (s, _, p) = api
        .post(
            "/v1/groups/g/members",
            json!({"topics": ["t"], "session_timeout_ms": 10}),
        )
        .await;
    assert_eq!(
        (s, p["code"].as_str(), p["limit_name"].as_str()),
        (
            400,
            Some("limit_exceeded"),
            Some("group_session_timeout_ms_min")
        )
    );
}

/// One at-least-once consumer step: fetch, "process" (record what was seen), commit.
/// `crash_after`: process only that many records of the batch, then die without committing.
/// Returns false when the member must rejoin.
async fn consume_step(
    api: &Api,
    member: &str,
    processed: &mut Vec<(u64, u64, u64)>,
    crash_after: Option<usize>,
) -> bool {
    let (s, _, batch) = api
        .fetch("drain", member, "max_records=40&wait_ms=200")
        .await;
    if s == 404 {
        return false;
    }
    assert_eq!(s, 200, "{batch}");
    for (i, r) in batch["records"].as_array().unwrap().iter().enumerate() {
        if crash_after == Some(i) {
            return true;
        }
        processed.push((
            r["partition"].as_u64().unwrap(),
            r["offset"].as_u64().unwrap(),
            r["value"]["n"].as_u64().unwrap(),
        ));
    }
    if batch["next_offsets"].as_array().unwrap().is_empty() {
        return true;
    }
    let generation = batch["generation"].as_u64().unwrap();
    match api
        .commit("drain", member, generation, &batch["next_offsets"])
        .await
    {
        // A stale commit is fine: the records go to the new owner again.
        200 | 409 => true,
        404 => false,
        other => panic!("commit answered {other}"),
    }
}

#[tokio::test]
async fn an_at_least_once_consumer_killed_mid_batch_loses_nothing() {
    const RECORDS: u64 = 3000;
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("events", 4).await;
    api.produce_numbers("events", 4, 0, RECORDS).await;

    // Sessions of 3 s: short enough to wait out, long enough for a loaded machine. A member
    // that loses its session anyway (404) joins again, as a real consumer would.
    const SESSION_MS: u64 = 3_000;
    let mut a = member_id(&api.join("drain", &["events"], SESSION_MS).await);
    let mut b = member_id(&api.join("drain", &["events"], SESSION_MS).await);
    let mut processed_a = Vec::new();
    let mut processed_b = Vec::new();
    for _ in 0..5 {
        if !consume_step(&api, &a, &mut processed_a, None).await {
            a = member_id(&api.join("drain", &["events"], SESSION_MS).await);
        }
        if !consume_step(&api, &b, &mut processed_b, None).await {
            b = member_id(&api.join("drain", &["events"], SESSION_MS).await);
        }
    }
    // a dies in the middle of a batch: half processed, nothing committed, no leave.
    let committed_by_a = processed_a.len();
    for _ in 0..10 {
        if consume_step(&api, &a, &mut processed_a, Some(20)).await {
            break;
        }
        a = member_id(&api.join("drain", &["events"], SESSION_MS).await);
    }
    let uncommitted: Vec<(u64, u64, u64)> = processed_a[committed_by_a..].to_vec();
    assert_eq!(uncommitted.len(), 20);

    // b carries on alone; once a's session ends, a's partitions come to b.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut steps = 0;
    loop {
        let seen: BTreeSet<u64> = processed_a
            .iter()
            .chain(&processed_b)
            .map(|x| x.2)
            .collect();
        if seen.len() as u64 == RECORDS {
            break;
        }
        assert!(
            Instant::now() < deadline && steps < 5_000,
            "drained {} of {RECORDS}",
            seen.len()
        );
        steps += 1;
        if !consume_step(&api, &b, &mut processed_b, None).await {
            b = member_id(&api.join("drain", &["events"], SESSION_MS).await);
        }
    }
    // Checker: every record was processed at least once, each under its own offset, and
    // what a processed without committing was delivered again.
    let all: BTreeSet<u64> = processed_a
        .iter()
        .chain(&processed_b)
        .map(|x| x.2)
        .collect();
    assert_eq!(all, (0..RECORDS).collect::<BTreeSet<u64>>());
    for (p, o, n) in processed_a.iter().chain(&processed_b) {
        assert_eq!(n % 4, *p, "record {n} came from its own partition");
        assert_eq!(n / 4, *o, "record {n} came at its own offset");
    }
    let again: BTreeSet<&(u64, u64, u64)> = processed_b.iter().collect();
    for r in &uncommitted {
        assert!(
            again.contains(r),
            "{r:?} was not committed by a, so b must see it"
        );
    }
    let (_, _, d) = api.get("/v1/groups/drain").await;
    assert_eq!(d["members"].as_array().unwrap().len(), 1);
    for p in d["partitions"].as_array().unwrap() {
        assert_eq!(p["committed_offset"], RECORDS / 4, "{p}");
        assert_eq!(p["lag"], 0);
    }
}

#[tokio::test]
async fn a_new_group_reading_from_latest_skips_the_backlog_but_not_what_comes_after_it() {
    let broker = TestBroker::start();
    let api = Api::new(&broker);
    api.create_topic("t", 1).await;
    api.produce_numbers("t", 1, 0, 5).await;
    let (s, _, v) = api
        .post(
            "/v1/groups/tail/members",
            json!({"topics": ["t"], "auto_offset_reset": "latest"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = member_id(&v);
    let (_, _, empty) = api.fetch("tail", &id, "max_records=100").await;
    assert_eq!(empty["records"].as_array().unwrap().len(), 0, "{empty}");
    // The latest position was pinned at the first read: records produced after it, before
    // any commit, are delivered rather than skipped by a later "latest".
    api.produce_numbers("t", 1, 5, 8).await;
    let (_, _, after) = api.fetch("tail", &id, "max_records=100").await;
    let offsets = common::offsets_of_records(after["records"].as_array().unwrap());
    assert_eq!(offsets, vec![5, 6, 7]);
    let (_, _, d) = api.get("/v1/groups/tail").await;
    assert_eq!(d["auto_offset_reset"], "latest");
    assert_eq!(d["partitions"][0]["position"], 5);
    assert_eq!(d["partitions"][0]["lag"], 3);
}

/// Item 13: user topics that fill `topics_max` and `partitions_max` must not block the
/// broker's own `__consumer_offsets`, or every group commit would answer `limit_exceeded`.
#[tokio::test]
async fn group_commits_work_when_user_topics_fill_the_partition_and_topic_limits() {
    let broker = TestBroker::start_with_config("[limits]\ntopics_max = 2\npartitions_max = 3\n");
    let api = Api::new(&broker);
    api.create_topic("a", 2).await;
    api.create_topic("b", 1).await;
    let (s, _, b) = api
        .post("/v1/topics", json!({"name": "c", "partitions": 1}))
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (400, Some("limit_exceeded")),
        "{b}"
    );
    api.produce_numbers("a", 2, 0, 4).await;
    let (s, _, b) = api
        .post(
            "/v1/groups/full/offsets",
            json!({"offsets": [{"topic": "a", "partition": 0, "offset": 2}]}),
        )
        .await;
    assert_eq!(s, 200, "a commit on a full broker: {b}");
    let (_, _, o) = api.get("/v1/groups/full/offsets").await;
    assert_eq!(o["offsets"][0]["offset"], 2);
    // The internal topic took no user room: the limits still bind exactly as configured.
    let (s, _, b) = api
        .post("/v1/topics/b/partitions", json!({"count": 2}))
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (400, Some("limit_exceeded")),
        "{b}"
    );
}
