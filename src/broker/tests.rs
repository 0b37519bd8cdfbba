//! Broker tests with injected faults.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::*;
use crate::log::batch::RecordRef;

/// A `topic.json` write that announces it was reached, waits to be released, then fails.
#[derive(Debug, Default)]
pub(super) struct MetaWriteFault {
    reached: Notify,
    release: Notify,
}

impl MetaWriteFault {
    pub(super) async fn strike(&self) -> std::io::Result<()> {
        self.reached.notify_one();
        self.release.notified().await;
        Err(std::io::Error::other("injected topic.json write failure"))
    }
}

fn config(dir: &Path) -> BrokerConfig {
    BrokerConfig {
        data_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    }
}

/// A record with the JSON value `1`, for `partition`.
pub(crate) fn one_record(partition: u32) -> ProduceRecord<'static> {
    ProduceRecord {
        partition: Some(PartitionId(partition)),
        record: RecordRef {
            timestamp_ms: 1,
            key: None,
            key_is_utf8: false,
            value: Some(b"1"),
            value_is_json: true,
            headers: &[],
        },
    }
}

/// Produces `count` records of value `1` to `partition` of `topic` with `acks=all`.
pub(crate) async fn produce_ones(broker: &Broker, topic: &str, partition: u32, count: usize) {
    let topic = broker.topic(topic).unwrap();
    let records = vec![one_record(partition); count];
    broker
        .produce(&topic, &records, Acks::All, Duration::from_secs(10))
        .await
        .unwrap();
}

/// Item 1 of the hardening issue: an expansion whose `topic.json` write fails must not have
/// let a producer write (and be acknowledged) on a partition the metadata never counted: a
/// restart would not open it and the next expansion would delete its directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_record_is_acknowledged_on_a_partition_whose_count_is_not_durable() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path())).await.unwrap();
    broker
        .create_topic("t", 1, TopicConfig::default(), false)
        .await
        .unwrap();
    let fault = Arc::new(MetaWriteFault::default());
    *broker.expansion_meta_fault.lock().unwrap() = Some(Arc::clone(&fault));
    let expanding = tokio::spawn({
        let broker = Arc::clone(&broker);
        async move { broker.expand_partitions("t", 2).await.map(|_| ()) }
    });
    fault.reached.notified().await;
    // The count is being written: a produce to the new partition now must not be answered
    // with an offset unless the partition is already counted durably.
    let topic = broker.topic("t").unwrap();
    let acked = broker
        .produce(&topic, &[one_record(1)], Acks::All, Duration::from_secs(10))
        .await;
    fault.release.notify_one();
    assert!(expanding.await.unwrap().is_err(), "the expansion failed");
    match &acked {
        Ok(_) => {}
        Err(BrokerError::PartitionNotFound { .. }) => {}
        Err(e) => panic!("unexpected produce error: {e}"),
    }
    broker.close().await.unwrap();
    drop(broker);

    let broker = Broker::open(config(dir.path())).await.unwrap();
    // The expansion is retried, as an operator would after the failure.
    broker.expand_partitions("t", 2).await.unwrap();
    let stored = broker
        .topic("t")
        .unwrap()
        .partition(PartitionId(1))
        .unwrap()
        .fetch(Offset(0), 10, 1 << 20)
        .await
        .unwrap();
    let mut records = 0;
    stored
        .for_each_record(|_| {
            records += 1;
            Ok(())
        })
        .unwrap();
    if acked.is_ok() {
        assert_eq!(records, 1, "an acknowledged record was lost");
    } else {
        assert_eq!(records, 0);
    }
}

/// A broker in `dir` with topic "t" of one partition.
async fn broker_with_one_partition(dir: &Path) -> (Arc<Broker>, Arc<Topic>, Arc<Partition>) {
    let broker = Broker::open(config(dir)).await.unwrap();
    broker
        .create_topic("t", 1, TopicConfig::default(), false)
        .await
        .unwrap();
    let topic = broker.topic("t").unwrap();
    let partition = topic.partition(PartitionId(0)).unwrap();
    (broker, topic, partition)
}

/// Issue 9: `acks=all` on a replicated partition whose in-sync replica set is below its
/// minimum is refused before anything is appended (503 `not_enough_replicas`); with enough
/// in-sync replicas it is answered `isr-fsync`; `acks=leader` is not gated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_needs_the_minimum_in_sync_replicas_before_the_append() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, topic, partition) = broker_with_one_partition(dir.path()).await;
    let timeout = Duration::from_secs(10);
    partition.set_isr_gate(Some(IsrGate {
        isr: 1,
        min_insync_replicas: 2,
        leader_epoch: 0,
    }));
    let refused = broker
        .produce_reporting(&topic, &[one_record(0)], Acks::All, timeout)
        .await
        .unwrap_err();
    assert_eq!(
        refused.error,
        BrokerError::NotEnoughReplicas {
            isr: 1,
            min_insync_replicas: 2
        }
    );
    assert!(refused.fates.is_empty(), "nothing was stored");
    assert_eq!(partition.stats().log_end_offset, Offset(0));
    assert!(!partition.acks_all_waiting());
    let leader = broker
        .produce(&topic, &[one_record(0)], Acks::Leader, timeout)
        .await
        .unwrap();
    assert_eq!(leader.durability, Durability::Leader);
    partition.set_isr_gate(Some(IsrGate {
        isr: 2,
        min_insync_replicas: 2,
        leader_epoch: 0,
    }));
    let all = broker
        .produce(&topic, &[one_record(0)], Acks::All, timeout)
        .await
        .unwrap();
    assert_eq!(all.durability, Durability::IsrFsync);
    assert_eq!(all.offsets, vec![(PartitionId(0), Offset(1))]);
    assert!(
        !partition.acks_all_waiting(),
        "the waiter left with its answer"
    );
    partition.set_isr_gate(None);
    let standalone = broker
        .produce(&topic, &[one_record(0)], Acks::All, timeout)
        .await
        .unwrap();
    assert_eq!(standalone.durability, Durability::Fsync);
}

/// Issue 9: a replica that follows a leader refuses producers (only the leader's batches
/// are appended to it), whatever the acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_replica_refuses_producers() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, topic, partition) = broker_with_one_partition(dir.path()).await;
    partition.set_follower(true);
    for acks in [Acks::All, Acks::Leader, Acks::None] {
        let refused = broker
            .produce(&topic, &[one_record(0)], acks, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(
            refused,
            BrokerError::NotLeader {
                topic: "t".into(),
                partition: PartitionId(0)
            }
        );
    }
    assert_eq!(partition.stats().log_end_offset, Offset(0));
    partition.set_follower(false);
    produce_ones(&broker, "t", 0, 1).await;
}

/// Issue 9: an `acks=all` producer waiting on a leader is never told "stored" once the
/// leadership of its epoch ended (as a follower the replica's high watermark follows
/// another leader's log, which may hold other records at those offsets), and learns the
/// outcome is unknown when the ISR falls below its minimum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acks_all_wait_ends_unknown_when_the_leadership_or_the_isr_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, topic, partition) = broker_with_one_partition(dir.path()).await;
    partition.set_hw_mode(crate::broker::partition::HwMode::External);
    let gate = |isr| IsrGate {
        isr,
        min_insync_replicas: 2,
        leader_epoch: 0,
    };
    for lose in ["leadership", "isr"] {
        partition.set_isr_gate(Some(gate(3)));
        let producing = tokio::spawn({
            let (broker, topic) = (Arc::clone(&broker), Arc::clone(&topic));
            async move {
                broker
                    .produce_reporting(&topic, &[one_record(0)], Acks::All, Duration::from_secs(30))
                    .await
            }
        });
        while partition.stats().log_end_offset == partition.progress().high_watermark {
            tokio::task::yield_now().await;
        }
        let end = partition.stats().log_end_offset;
        if lose == "leadership" {
            // The hook makes it a follower; then its HW moves with another leader's log.
            partition.set_isr_gate(None);
            partition.flush_now().await.unwrap();
            partition.advance_high_watermark(end);
        } else {
            partition.set_isr_gate(Some(gate(1)));
        }
        let failed = producing.await.unwrap().unwrap_err();
        let expected = if lose == "leadership" {
            BrokerError::LeaderChangedAfterAppend {
                topic: "t".into(),
                partition: PartitionId(0),
            }
        } else {
            BrokerError::NotEnoughReplicasAfterAppend {
                isr: 1,
                min_insync_replicas: 2,
            }
        };
        assert_eq!(failed.error, expected, "{lose}");
        assert_eq!(
            failed.fates,
            vec![RecordFate::Unconfirmed(PartitionId(0))],
            "{lose}"
        );
    }
}

/// Issue 11 item 5: a replica of a cluster member takes no producer's write before the
/// replication layer gives it a role, whether the metadata just made it here, grew its
/// topic, or a restart opened it from disk. A restarted leader that took one (its metadata
/// not replayed yet, its session lease held) answered an idempotent retry with offsets of
/// its own stale log end, fsynced only here, which the partition's leader had given to
/// other records. The broker here has no lease, as one whose lease is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replica_takes_no_write_before_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let member = || BrokerConfig {
        peers: "1=127.0.0.1:9".into(),
        ..config(dir.path())
    };
    let mut spec = ReplicaTopic {
        name: "t".into(),
        topic_id: 7,
        partitions: 1,
        local: vec![PartitionId(0)],
        config: TopicConfig::default(),
    };
    let refused = |partition: u32| BrokerError::NotLeader {
        topic: "t".into(),
        partition: PartitionId(partition),
    };
    let produce = |broker: Arc<Broker>, p: u32| async move {
        let topic = broker.topic("t").unwrap();
        broker
            .produce(&topic, &[one_record(p)], Acks::All, Duration::from_secs(10))
            .await
            .map(|o| o.offsets)
    };
    let broker = Broker::open(member()).await.unwrap();
    broker.ensure_replica_topic(&spec).await.unwrap();
    assert_eq!(
        produce(Arc::clone(&broker), 0).await,
        Err(refused(0)),
        "made here"
    );
    // The role hook makes it a leader: it takes writes. (Its high watermark, which the
    // replication layer raises on a member, follows the local fsync here, as alone.)
    let topic = broker.topic("t").unwrap();
    let leader = topic.partition(PartitionId(0)).unwrap();
    leader.set_follower(false);
    leader.set_hw_mode(crate::broker::partition::HwMode::Standalone);
    drop(leader);
    assert_eq!(
        produce(Arc::clone(&broker), 0).await,
        Ok(vec![(PartitionId(0), Offset(0))])
    );
    spec.partitions = 2;
    spec.local = vec![PartitionId(0), PartitionId(1)];
    broker.ensure_replica_topic(&spec).await.unwrap();
    assert_eq!(
        produce(Arc::clone(&broker), 1).await,
        Err(refused(1)),
        "grown here"
    );
    drop(topic);
    broker.close().await.unwrap();
    drop(broker);

    let reopened = Broker::open(member()).await.unwrap();
    for p in 0..2 {
        assert_eq!(
            produce(Arc::clone(&reopened), p).await,
            Err(refused(p)),
            "reopened"
        );
    }
    let partition = reopened
        .topic("t")
        .unwrap()
        .partition(PartitionId(0))
        .unwrap();
    assert_eq!(
        partition.stats().log_end_offset,
        Offset(1),
        "nothing written"
    );
}

/// A replica a reassignment moved away: `topic.json` stops counting it, its directory goes,
/// its waiters and readers are told it is gone, and the topic's other replica stays. A
/// directory `topic.json` does not count (a removal cut short by a crash) is removed at the
/// next start, never opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_moved_away_is_removed_and_a_stray_directory_goes_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let member = || BrokerConfig {
        peers: "1=127.0.0.1:9".into(),
        ..config(dir.path())
    };
    let spec = ReplicaTopic {
        name: "t".into(),
        topic_id: 7,
        partitions: 2,
        local: vec![PartitionId(0), PartitionId(1)],
        config: TopicConfig::default(),
    };
    let broker = Broker::open(member()).await.unwrap();
    broker.ensure_replica_topic(&spec).await.unwrap();
    let topic_dir = dir.path().join("topics").join("t");
    let moved = broker
        .topic("t")
        .unwrap()
        .partition(PartitionId(1))
        .unwrap();
    let progress = moved.subscribe();

    broker.remove_replica("t", 8, PartitionId(1)).await.unwrap();
    assert!(
        topic_dir.join("1").exists(),
        "another topic id: nothing removed"
    );
    broker.remove_replica("t", 7, PartitionId(1)).await.unwrap();
    assert!(!topic_dir.join("1").exists());
    assert!(topic_dir.join("0").exists(), "the other replica stays");
    assert!(
        progress.borrow().deleted,
        "its waiters and readers are woken"
    );
    assert!(matches!(
        broker.topic("t").unwrap().partition(PartitionId(1)),
        Err(BrokerError::NotAReplica { .. })
    ));
    broker.remove_replica("t", 7, PartitionId(1)).await.unwrap();
    broker.close().await.unwrap();
    drop(broker);

    // A crash between `topic.json` and the move to the trash leaves the directory.
    std::fs::create_dir_all(topic_dir.join("1")).unwrap();
    std::fs::write(
        topic_dir.join("1").join("00000000000000000000.log"),
        b"stale",
    )
    .unwrap();
    let reopened = Broker::open(member()).await.unwrap();
    assert!(
        !topic_dir.join("1").exists(),
        "a stray directory is removed at start"
    );
    let topic = reopened.topic("t").unwrap();
    assert_eq!(topic.partition_count(), 2);
    assert!(topic.partition(PartitionId(0)).is_ok());
}

/// A produce's partitions: the distinct ones of its assignment in first-appearance order,
/// past [`Topic::replicas_for`]'s scan (16) through its table as well.
#[tokio::test]
async fn a_produce_appends_to_each_partition_of_its_assignment_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path())).await.unwrap();
    let topic = broker
        .create_topic("t", 24, TopicConfig::default(), false)
        .await
        .unwrap();
    // 23 down to 0, each followed by a repeat of one already seen: first appearances 23,
    // 22, ..., 0.
    let assignment: Vec<PartitionId> = (0..24u32)
        .rev()
        .flat_map(|p| [PartitionId(p), PartitionId(23 - (23 - p) / 2)])
        .collect();
    let parts = topic.replicas_for(&assignment).unwrap();
    let ids: Vec<u32> = parts.iter().map(|p| p.id.0).collect();
    assert_eq!(ids, (0..24u32).rev().collect::<Vec<_>>());
    assert!(parts.iter().all(|p| p.partition.id == p.id));
}

/// What a crash left in the trash goes after a start, entry by entry; the trash itself stays,
/// so a topic deleted right after the start moves into it (the start used to remove and make
/// the trash again in the background, and a deletion in between failed to find it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_in_the_trash_go_after_a_start_and_a_deletion_right_after_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path())).await.unwrap();
    for name in ["a", "b"] {
        broker
            .create_topic(name, 1, TopicConfig::default(), false)
            .await
            .unwrap();
    }
    broker.close().await.unwrap();
    drop(broker);
    let trash = dir.path().join("trash");
    for i in 0..200 {
        let left = trash.join(format!("left-{i}"));
        std::fs::create_dir_all(left.join("0")).unwrap();
        std::fs::write(left.join("0").join("00000000000000000000.log"), b"x").unwrap();
    }
    std::fs::write(trash.join("a-file"), b"x").unwrap();
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let trash_inode = inode(&trash);

    let broker = Broker::open(config(dir.path())).await.unwrap();
    broker.delete_topic("a").await.unwrap();
    broker.delete_topic("b").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<_> = std::fs::read_dir(&trash)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still in the trash: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        inode(&trash),
        trash_inode,
        "the same trash, never made again"
    );
    broker.close().await.unwrap();
}

/// The files of a topic made again under a deleted one's name are the new topic's alone:
/// a deleted partition still held by a task (a retention pass walking the topics it listed
/// before the delete) works by its directory path, which now names the new topic's files,
/// and must touch none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_partition_never_touches_the_files_of_a_topic_made_again_under_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path())).await.unwrap();
    let small = || TopicConfig {
        segment_bytes: 1024,
        retention_bytes: 2048,
        ..TopicConfig::default()
    };
    // Batches of 10 records, about 3 to a 1 KiB segment: a dozen segments each time.
    broker.create_topic("t", 1, small(), false).await.unwrap();
    for _ in 0..40 {
        produce_ones(&broker, "t", 0, 10).await;
    }
    let old = broker
        .topic("t")
        .unwrap()
        .partition(PartitionId(0))
        .unwrap();
    broker.delete_topic("t").await.unwrap();
    broker.create_topic("t", 1, small(), false).await.unwrap();
    for _ in 0..40 {
        produce_ones(&broker, "t", 0, 10).await;
    }
    let new_dir = broker.topic("t").unwrap().dir.join("0");
    let files = || {
        let mut names: Vec<_> = std::fs::read_dir(&new_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = files();
    assert_eq!(old.apply_retention(now_ms()).unwrap(), 0);
    assert_eq!(old.compact(now_ms(), 0, 1_000).unwrap(), 0);
    assert_eq!(files(), before, "the new topic's files are untouched");
}

/// A deleted partition's flusher ends even while it waits out `flush_ms` for `acks=leader`
/// data: it held the partition (its log, files and maps) for good before.
#[tokio::test(start_paused = true)]
async fn a_deleted_partitions_flusher_ends_in_an_acks_leader_wait() {
    let dir = tempfile::tempdir().unwrap();
    let flush = crate::config::FlushPolicy {
        flush_ms: 60_000,
        flush_bytes: u64::MAX,
    };
    let (partition, _) = Partition::open(
        "t".into(),
        PartitionId(0),
        dir.path(),
        crate::log::LogConfig::default(),
        flush,
        false,
    )
    .unwrap();
    partition
        .append(&mut crate::broker::partition::tests::batch_of(1), 1, false)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let weak = Arc::downgrade(&partition);
    partition.mark_deleted();
    drop(partition);
    for _ in 0..100 {
        if weak.upgrade().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(weak.upgrade().is_none(), "the flusher let the partition go");
}

/// A config change applies only over the config it was merged onto: one read before another
/// change landed (a concurrent PATCH, or the topic deleted and made again with another
/// config) is refused with `None`, and the caller merges again, so no change is lost and no
/// deleted topic's config lands on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_merged_onto_a_config_changed_since_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path())).await.unwrap();
    let read = TopicConfig::default();
    broker.create_topic("t", 1, read, false).await.unwrap();
    let first = TopicConfig {
        retention_ms: 60_000,
        ..read
    };
    assert!(
        broker
            .update_topic_config("t", &read, first)
            .await
            .unwrap()
            .is_some()
    );
    let stale = TopicConfig {
        segment_bytes: 1 << 20,
        ..read
    };
    assert!(
        broker
            .update_topic_config("t", &read, stale)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        broker.topic("t").unwrap().config(),
        first,
        "the first change stands"
    );
}
