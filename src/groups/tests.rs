use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::group::Group;
use super::sessions::run_sessions;
use super::*;
use crate::broker::tests::produce_ones;
use crate::broker::{Broker, BrokerError, Partition};
use crate::config::BrokerConfig;
use crate::log::Offset;
use crate::metadata::PartitionId;

/// A broker with topic `topic` and a coordinator over it, its session task running (as the
/// node runs it).
async fn open_broker(
    dir: &std::path::Path,
    topic: &str,
    partitions: u32,
) -> (Arc<Broker>, Arc<GroupCoordinator>) {
    let config = BrokerConfig {
        data_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    };
    let broker = Broker::open(config).await.expect("broker opens");
    if broker.topic(topic).is_err() {
        broker
            .create_topic(topic, partitions, Default::default(), false)
            .await
            .expect("topic created");
    }
    let groups =
        Arc::new(GroupCoordinator::open(Arc::clone(&broker), false).expect("offsets replay"));
    tokio::spawn(run_sessions(Arc::clone(&groups)));
    (broker, groups)
}

fn topics(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Every partition of `t` (with `n` partitions) is owned by exactly one of `views`,
/// and all views are of one generation.
fn assert_exactly_once(views: &[MemberView], n: u32) {
    let generation = views[0].generation;
    let mut seen = BTreeSet::new();
    for v in views {
        assert_eq!(v.generation, generation, "one generation");
        for tp in &v.assignment {
            assert!(seen.insert(tp.clone()), "{tp:?} owned twice");
        }
    }
    let all: BTreeSet<TopicPartition> = PartitionId::all(n)
        .map(|p| TopicPartition::new("t", p))
        .collect();
    assert_eq!(seen, all);
}

/// Joins group `g` subscribed to topic `t` with the given session timeout.
fn join_t(groups: &GroupCoordinator, session_timeout_ms: u64) -> MemberView {
    groups
        .join("g", &topics(&["t"]), Some(session_timeout_ms), None)
        .unwrap()
}

fn heartbeat_all(groups: &GroupCoordinator, ids: &[&str]) -> Vec<MemberView> {
    ids.iter()
        .map(|id| groups.heartbeat("g", id).expect("alive"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn three_members_own_every_partition_once_and_a_leaver_hands_its_own_over() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, groups) = open_broker(dir.path(), "t", 7).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let v = join_t(&groups, 10_000);
        ids.push(v.member_id);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let before = heartbeat_all(&groups, &ids);
    assert_exactly_once(&before, 7);
    assert_eq!(before[0].generation, 3);
    for v in &before {
        assert!((2..=3).contains(&v.assignment.len()), "balanced: {v:?}");
    }

    groups.leave("g", ids[1]).unwrap();
    assert!(matches!(
        groups.heartbeat("g", ids[1]),
        Err(GroupError::MemberNotFound { .. })
    ));
    let after = heartbeat_all(&groups, &[ids[0], ids[2]]);
    assert_exactly_once(&after, 7);
    assert_eq!(after[0].generation, 4);
    // Sticky: the survivors kept what they had; only the leaver's partitions moved.
    for (b, a) in [(&before[0], &after[0]), (&before[2], &after[1])] {
        for tp in &b.assignment {
            assert!(
                a.assignment.contains(tp),
                "{tp:?} stayed with {}",
                a.member_id
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_member_is_removed_after_its_session_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, groups) = open_broker(dir.path(), "t", 4).await;
    let silent = join_t(&groups, 3_000);
    let live = join_t(&groups, 3_000);
    assert_eq!(live.assignment.len(), 2);
    // The live member heartbeats every second; the silent one never calls again.
    for second in 1..=2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        groups.heartbeat("g", &live.member_id).unwrap();
        let d = groups.describe("g").await.unwrap();
        assert_eq!(d.members.len(), 2, "still inside the session at {second}s");
    }
    // Past the 3 s session (and the task's 1 s tick), the silent member is gone.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        groups.heartbeat("g", &live.member_id).unwrap();
    }
    assert!(matches!(
        groups.heartbeat("g", &silent.member_id),
        Err(GroupError::MemberNotFound { .. })
    ));
    let v = groups.heartbeat("g", &live.member_id).unwrap();
    assert_eq!(
        v.assignment.len(),
        4,
        "the live member took every partition"
    );
    assert!(v.generation > live.generation);
    // Expiry is driven by the session task, not by the heartbeat: a group whose only
    // member goes silent is emptied too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(matches!(
        groups.describe("g").await,
        Err(GroupError::GroupNotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_longer_than_the_session_keeps_the_member_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, groups) = open_broker(dir.path(), "t", 2).await;
    let v = join_t(&groups, 2_000);
    let fetched = groups
        .fetch("g", &v.member_id, 10, 1 << 20, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(fetched.parts.is_empty(), "nothing was produced");
    // 20 s passed in the poll, ten sessions; the member is still there, and then
    // expires once it goes silent.
    groups.heartbeat("g", &v.member_id).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(matches!(
        groups.heartbeat("g", &v.member_id),
        Err(GroupError::MemberNotFound { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn commits_are_fenced_by_the_generation_a_partition_was_owned_since() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, groups) = open_broker(dir.path(), "t", 2).await;
    let a = join_t(&groups, 10_000);
    assert_eq!(a.assignment.len(), 2);
    let b = join_t(&groups, 10_000);
    let lost = b.assignment[0].clone();
    let kept = groups.heartbeat("g", &a.member_id).unwrap().assignment[0].clone();
    let mut groups = groups.lock();
    let g = groups.get_mut("g").unwrap();
    // a lost `lost` in generation 2: its generation-1 commit of it is refused.
    let refused = g.check_commit(
        "g",
        Some((&a.member_id, a.generation)),
        &[(lost, Offset(0))],
    );
    assert!(
        matches!(
            refused,
            Err(GroupError::StaleGeneration { generation: 2, .. })
        ),
        "{refused:?}"
    );
    // a kept `kept` through the rebalance: its generation-1 commit of it stands.
    g.check_commit(
        "g",
        Some((&a.member_id, a.generation)),
        &[(kept.clone(), Offset(0))],
    )
    .unwrap();
    // A generation from the future is refused; so is a commit without membership.
    assert!(matches!(
        g.check_commit("g", Some((&a.member_id, 9)), &[(kept.clone(), Offset(0))]),
        Err(GroupError::StaleGeneration { .. })
    ));
    assert!(matches!(
        g.check_commit("g", None, &[(kept, Offset(0))]),
        Err(GroupError::GroupNotEmpty { members: 2, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn partition_expansion_rebalances_the_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, groups) = open_broker(dir.path(), "t", 2).await;
    let a = join_t(&groups, 10_000);
    let b = join_t(&groups, 10_000);
    broker.expand_partitions("t", 6).await.unwrap();
    let views = heartbeat_all(&groups, &[&a.member_id, &b.member_id]);
    assert_exactly_once(&views, 6);
    assert!(views[0].generation > b.generation);
}

/// A group whose commit on partition 0 of `t` (a topic of `records` records) lies past the
/// log end, as after the topic was deleted and created again; the partition, and its broker
/// (kept open while the test runs).
async fn committed_past_the_end(
    dir: &std::path::Path,
    records: usize,
) -> (Group, TopicPartition, Arc<Partition>, Arc<Broker>) {
    let (broker, _groups) = open_broker(dir, "t", 1).await;
    if records > 0 {
        produce_ones(&broker, "t", 0, records).await;
    }
    let partition = broker
        .topic("t")
        .unwrap()
        .partition(PartitionId(0))
        .unwrap();
    let tp = TopicPartition::new("t", PartitionId(0));
    let mut g = Group::new();
    g.committed.insert(
        tp.clone(),
        OffsetValue {
            offset: Offset(500),
            committed_at_ms: 0,
            member_id: None,
            generation: None,
        },
    );
    (g, tp, partition, broker)
}

#[tokio::test(start_paused = true)]
async fn a_committed_offset_past_the_end_falls_back_to_the_reset_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (mut g, tp, partition, _broker) = committed_past_the_end(dir.path(), 0).await;
    assert_eq!(
        g.position(&tp, &partition),
        Offset(0),
        "earliest: nothing skipped"
    );
    g.committed.get_mut(&tp).unwrap().offset = Offset(0);
    assert_eq!(g.position(&tp, &partition), Offset(0));
}

#[tokio::test]
async fn a_latest_reset_past_the_end_holds_its_place_until_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut g, tp, partition, broker) = committed_past_the_end(dir.path(), 3).await;
    g.auto_offset_reset = OffsetReset::Latest;
    assert_eq!(g.position(&tp, &partition), Offset(3), "latest: the end");
    // Records produced after the reset, before the member commits, are read, not skipped.
    produce_ones(&broker, "t", 0, 2).await;
    assert_eq!(g.position(&tp, &partition), Offset(3));
    assert_eq!(g.stored_position(&tp), Some(Offset(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_leave_memory_equal_to_what_a_replay_of_the_log_gives() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, groups) = open_broker(dir.path(), "t", 1).await;
    produce_ones(&broker, "t", 0, 64).await;
    let tp = TopicPartition::new("t", PartitionId(0));
    let commits: Vec<_> = (1..=64u64)
        .map(|offset| {
            let groups = Arc::clone(&groups);
            let tp = tp.clone();
            tokio::spawn(async move { groups.commit("g", None, &[(tp, Offset(offset))]).await })
        })
        .collect();
    for c in commits {
        c.await.unwrap().unwrap();
    }
    let in_memory = groups.committed("g").unwrap()[0].offset;
    broker.close().await.unwrap();
    drop((broker, groups));
    let (_broker, groups) = open_broker(dir.path(), "t", 1).await;
    let replayed = groups.committed("g").unwrap()[0].offset;
    assert_eq!(in_memory, replayed, "memory follows the log's order");
}

#[tokio::test]
async fn committed_offsets_survive_reopening_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, groups) = open_broker(dir.path(), "t", 2).await;
    produce_ones(&broker, "t", 1, 5).await;
    let tp = TopicPartition::new("t", PartitionId(1));
    groups
        .commit("g", None, &[(tp.clone(), Offset(3))])
        .await
        .unwrap();
    groups
        .commit("g", None, &[(tp.clone(), Offset(5))])
        .await
        .unwrap();
    groups
        .commit("gone", None, &[(tp.clone(), Offset(2))])
        .await
        .unwrap();
    groups.delete_group("gone").await.unwrap();
    // Past the high watermark is refused.
    assert!(matches!(
        groups.commit("g", None, &[(tp.clone(), Offset(6))]).await,
        Err(GroupError::Broker(BrokerError::OffsetOutOfRange { .. }))
    ));
    broker.close().await.unwrap();
    drop((broker, groups));

    let (_broker, groups) = open_broker(dir.path(), "t", 2).await;
    let committed = groups.committed("g").unwrap();
    assert_eq!(committed.len(), 1);
    assert_eq!(
        (committed[0].partition, committed[0].offset),
        (PartitionId(1), Offset(5))
    );
    assert!(matches!(
        groups.committed("gone"),
        Err(GroupError::GroupNotFound(_))
    ));
    let d = groups.describe("g").await.unwrap();
    assert_eq!(d.state, "empty");
    assert_eq!(d.partitions[0].lag, 0);
}

/// Describe, commit and the session task's lag refresh read partition stats (which take the
/// partition lock): never under the registry lock. `PartitionLocksForbidden` turns a
/// violation into a panic in debug builds.
#[tokio::test(start_paused = true)]
async fn no_partition_lock_is_taken_under_the_registry_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, groups) = open_broker(dir.path(), "t", 2).await;
    let tp = TopicPartition::new("t", PartitionId(0));
    groups.commit("g", None, &[(tp, Offset(0))]).await.unwrap();
    let member = join_t(&groups, 10_000);
    let d = groups.describe("g").await.unwrap();
    assert_eq!(d.partitions.len(), 2);
    assert!(groups.tick(tokio::time::Instant::now(), true).is_some());
    groups
        .commit(
            "g",
            Some((&member.member_id, member.generation)),
            &[(TopicPartition::new("t", PartitionId(1)), Offset(0))],
        )
        .await
        .unwrap();
}

/// Reads and waits at the leaders as the fake hook below records them. Partitions 0 and 1 of
/// `far` are led by broker 1, 2 and 3 by broker 2.
#[derive(Debug, Default)]
struct FakeLeaders {
    reads: std::sync::Mutex<Vec<super::remote::RemoteRead>>,
    waits: std::sync::Mutex<Vec<super::remote::RemoteWait>>,
    /// Partitions whose leader does not answer a read.
    down: std::sync::Mutex<BTreeSet<u32>>,
    /// Where a read's answer starts (a reset puts it there) and the leaders' log end.
    at: Arc<std::sync::atomic::AtomicU64>,
    /// Held: the next read of records (not an offsets-only read) answers once this is sent.
    hold: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

impl super::remote::RemotePartitions for FakeLeaders {
    fn partition_count(&self, topic: &str) -> Option<u32> {
        (topic == "far").then_some(4)
    }

    fn read(
        &self,
        read: super::remote::RemoteRead,
    ) -> futures_util::future::BoxFuture<'static, Result<super::remote::RemoteAnswer, BrokerError>>
    {
        self.reads.lock().unwrap().push(read.clone());
        let down = self.down.lock().unwrap().contains(&read.partition.0);
        let hold = if read.max_records > 0 {
            self.hold.lock().unwrap().take()
        } else {
            None
        };
        let at = Arc::clone(&self.at);
        Box::pin(async move {
            if let Some(hold) = hold {
                let _ = hold.await;
            }
            let at = Offset(at.load(std::sync::atomic::Ordering::SeqCst));
            if down {
                return Err(BrokerError::StorageUnavailable("the leader is down".into()));
            }
            Ok(super::remote::RemoteAnswer {
                fetched: crate::broker::Fetched {
                    bytes: Vec::new(),
                    from: at,
                    high_watermark: at,
                    log_start_offset: Offset(0),
                    max_records: read.max_records,
                    segment_end: None,
                },
                reset: true,
                log_end_offset: at,
            })
        })
    }

    fn leader_of(&self, _topic: &str, partition: PartitionId) -> Option<crate::metadata::NodeId> {
        Some(crate::metadata::NodeId(1 + partition.0 / 2))
    }

    fn wait(
        &self,
        wait: super::remote::RemoteWait,
    ) -> futures_util::future::BoxFuture<'static, Result<bool, BrokerError>> {
        self.waits.lock().unwrap().push(wait.clone());
        // Nothing arrives: the wait runs out.
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(wait.wait_ms)).await;
            Ok(false)
        })
    }
}

/// A broker whose coordinator reads `far` (four partitions, none here) through
/// [`FakeLeaders`], and the view of a member of group `g` on it.
async fn member_of_far(
    dir: &std::path::Path,
) -> (
    Arc<Broker>,
    Arc<GroupCoordinator>,
    Arc<FakeLeaders>,
    super::views::MemberView,
) {
    let (broker, groups) = open_broker(dir, "t", 1).await;
    let leaders = Arc::new(FakeLeaders::default());
    groups.read_remote_with(Arc::clone(&leaders) as Arc<dyn super::remote::RemotePartitions>);
    let v = groups
        .join("g", &topics(&["far"]), Some(30_000), None)
        .unwrap();
    (broker, groups, leaders, v)
}

/// A member long-poll on partitions led elsewhere waits once at each leader, for all the
/// partitions that leader leads (one long-poll slot there, not one per partition).
#[tokio::test(start_paused = true)]
async fn a_long_poll_waits_once_per_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, groups, leaders, v) = member_of_far(dir.path()).await;
    let fetched = groups
        .fetch(
            "g",
            &v.member_id,
            100,
            1 << 20,
            Duration::from_millis(1_000),
        )
        .await
        .unwrap();
    assert!(fetched.parts.is_empty());
    let waits = leaders.waits.lock().unwrap();
    let mut asked: Vec<Vec<u32>> = waits
        .iter()
        .map(|w| w.parts.iter().map(|p| p.partition.0).collect())
        .collect();
    asked.sort();
    assert_eq!(asked, vec![vec![0, 1], vec![2, 3]], "{waits:?}");
    assert!(waits.iter().all(|w| w.wait_ms == 1_000), "{waits:?}");
}

/// A member of a topic whose partitions are all led elsewhere: a fetch reads the four of them
/// at their leaders side by side, each within a quarter of the budget (so what the
/// coordinator holds stays near the member's `max_bytes`), and a commit asks each leader for
/// its log end.
#[tokio::test]
async fn partitions_led_elsewhere_are_read_within_shares_of_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, groups, leaders, v) = member_of_far(dir.path()).await;
    assert_eq!(v.assignment.len(), 4, "counted from the metadata");
    let fetched = groups
        .fetch("g", &v.member_id, 100, 1 << 20, Duration::ZERO)
        .await
        .unwrap();
    assert!(fetched.parts.is_empty());
    let reads = std::mem::take(&mut *leaders.reads.lock().unwrap());
    assert_eq!(reads.len(), 4, "{reads:?}");
    for r in &reads {
        assert_eq!(
            (r.max_records, r.max_bytes, r.wait_ms),
            (25, 1 << 18, 0),
            "{r:?}"
        );
        assert_eq!(r.position, None, "nothing committed");
    }
    let partitions: BTreeSet<u32> = reads.iter().map(|r| r.partition.0).collect();
    assert_eq!(partitions, BTreeSet::from([0, 1, 2, 3]));
    assert!(fetched.unavailable.is_empty(), "{:?}", fetched.unavailable);

    // The fake leaders' logs end at 0: a commit past that is refused, one at it is taken.
    let at = |offset| [(TopicPartition::new("far", PartitionId(0)), Offset(offset))];
    assert!(matches!(
        groups.commit("h", None, &at(5)).await,
        Err(GroupError::Broker(BrokerError::OffsetOutOfRange { .. }))
    ));
    groups.commit("h", None, &at(0)).await.unwrap();
    let asked = leaders.reads.lock().unwrap();
    assert_eq!(
        asked.len(),
        2,
        "one offsets-only read per commit: {asked:?}"
    );
    assert!(asked.iter().all(|r| r.max_records == 0 && r.wait_ms == 0));
}

/// A fetch names the partitions whose leader could not be read (`unavailable`), and only
/// those; once their leader answers again they are read and no longer named.
#[tokio::test]
async fn a_fetch_names_the_partitions_whose_leader_could_not_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, groups, leaders, v) = member_of_far(dir.path()).await;
    leaders.down.lock().unwrap().extend([1, 3]);
    let fetched = groups
        .fetch("g", &v.member_id, 100, 1 << 20, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        fetched.unavailable,
        vec![
            TopicPartition::new("far", PartitionId(1)),
            TopicPartition::new("far", PartitionId(3)),
        ]
    );
    leaders.down.lock().unwrap().clear();
    let fetched = groups
        .fetch("g", &v.member_id, 100, 1 << 20, Duration::ZERO)
        .await
        .unwrap();
    assert!(fetched.unavailable.is_empty(), "{:?}", fetched.unavailable);
    assert_eq!(
        leaders.reads.lock().unwrap().len(),
        8,
        "each read both times"
    );
}

/// A read at a leader runs outside the registry lock, so a commit can land while it is out.
/// A `latest` reset its answer brings back must not pin over that commit: the pin would win
/// over the commit and send the group back to re-read what was committed (or, with a newer
/// high watermark, past records never delivered).
#[tokio::test]
async fn a_reset_answered_after_a_commit_does_not_pin_over_it() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (_broker, groups) = open_broker(dir.path(), "t", 1).await;
    let leaders = Arc::new(FakeLeaders::default());
    groups.read_remote_with(Arc::clone(&leaders) as Arc<dyn super::remote::RemotePartitions>);
    let v = groups
        .join(
            "g",
            &topics(&["far"]),
            Some(30_000),
            Some(OffsetReset::Latest),
        )
        .unwrap();
    leaders.at.store(10, Ordering::SeqCst);
    let (release, held) = tokio::sync::oneshot::channel();
    *leaders.hold.lock().unwrap() = Some(held);
    let fetch = tokio::spawn({
        let (groups, member) = (Arc::clone(&groups), v.member_id.clone());
        async move {
            groups
                .fetch("g", &member, 100, 1 << 20, Duration::ZERO)
                .await
        }
    });
    // One read is held at its leader.
    while leaders.hold.lock().unwrap().is_some() {
        tokio::task::yield_now().await;
    }
    let far0 = TopicPartition::new("far", PartitionId(0));
    groups
        .commit(
            "g",
            Some((&v.member_id, v.generation)),
            &[(far0.clone(), Offset(10))],
        )
        .await
        .unwrap();
    // The held read answers a reset to an older high watermark.
    leaders.at.store(4, Ordering::SeqCst);
    release.send(()).unwrap();
    fetch.await.unwrap().unwrap();

    leaders.reads.lock().unwrap().clear();
    groups
        .fetch("g", &v.member_id, 100, 1 << 20, Duration::ZERO)
        .await
        .unwrap();
    let reads = leaders.reads.lock().unwrap();
    let again = reads.iter().find(|r| r.partition.0 == 0).unwrap();
    assert_eq!(again.position, Some(10), "read from the commit: {again:?}");
}

/// A group with no member and no commit is dropped from the registry, but not while a
/// commit to it is in flight: that commit would otherwise land in a new instance of the
/// group (made by a join meanwhile), outside the new instance's serialized offset writes.
#[tokio::test(start_paused = true)]
async fn a_group_is_kept_while_a_commit_to_it_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, groups) = open_broker(dir.path(), "t", 1).await;
    let a = join_t(&groups, 30_000);
    let writes = Arc::clone(&groups.lock().get("g").unwrap().offset_writes);
    let serial = writes.lock().await;
    let commit = tokio::spawn({
        let (groups, member) = (Arc::clone(&groups), a.member_id.clone());
        async move {
            let at = [(TopicPartition::new("t", PartitionId(0)), Offset(0))];
            groups.commit("g", Some((&member, a.generation)), &at).await
        }
    });
    // The commit holds its place in the group's offset writes.
    while Arc::strong_count(&writes) < 3 {
        tokio::task::yield_now().await;
    }
    groups.leave("g", &a.member_id).unwrap();
    assert!(groups.lock().contains_key("g"), "kept for the commit");
    drop(serial);
    assert!(matches!(
        commit.await.unwrap(),
        Err(GroupError::MemberNotFound { .. })
    ));
    drop(writes);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !groups.lock().contains_key("g"),
        "dropped once the commit is over"
    );
}
