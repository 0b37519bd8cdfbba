//! Examples of each command, and a property test that drives `apply` with random command
//! sequences against a model of which replicas hold every committed record.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::config::TopicConfig;

fn n(id: u32) -> NodeId {
    NodeId(id)
}

/// An image with brokers 1..=count registered and unfenced.
fn cluster(count: u32) -> MetadataImage {
    let mut image = MetadataImage::default();
    for id in 1..=count {
        let epoch = register(&mut image, id, 1);
        let unfence = Command::UnfenceBroker {
            node_id: n(id),
            broker_epoch: epoch,
        };
        apply_ok(&mut image, &unfence);
    }
    image
}

fn apply_ok(image: &mut MetadataImage, command: &Command) -> Outcome {
    let index = image.applied + 1;
    image
        .apply(index, command)
        .unwrap_or_else(|e| panic!("{command:?} refused: {e}"))
}

fn register(image: &mut MetadataImage, id: u32, incarnation: u64) -> BrokerEpoch {
    let command = Command::RegisterBroker {
        node_id: n(id),
        address: format!("127.0.0.1:{}", 9000 + id),
        incarnation,
        data_lost: false,
    };
    match apply_ok(image, &command) {
        Outcome::Registered { broker_epoch } => broker_epoch,
        other => panic!("registration answered {other:?}"),
    }
}

fn create(image: &mut MetadataImage, name: &str, assignment: &[&[u32]], min: u32) {
    let command = Command::CreateTopic {
        name: name.to_string(),
        config: TopicConfig::default(),
        min_insync_replicas: min,
        assignment: assignment
            .iter()
            .map(|r| r.iter().map(|id| n(*id)).collect())
            .collect(),
    };
    apply_ok(image, &command);
}

fn epoch_of(image: &MetadataImage, id: u32) -> BrokerEpoch {
    image.brokers[&n(id)].broker_epoch
}

fn fence(image: &mut MetadataImage, id: u32) {
    let command = Command::FenceBroker {
        node_id: n(id),
        broker_epoch: epoch_of(image, id),
    };
    apply_ok(image, &command);
}

fn unfence(image: &mut MetadataImage, id: u32) {
    let command = Command::UnfenceBroker {
        node_id: n(id),
        broker_epoch: epoch_of(image, id),
    };
    apply_ok(image, &command);
}

fn nodes(ids: &[u32]) -> Vec<NodeId> {
    ids.iter().map(|id| n(*id)).collect()
}

#[test]
fn a_new_topic_is_led_by_its_first_replica_with_every_replica_in_sync() {
    let mut image = cluster(3);
    create(&mut image, "t", &[&[1, 2, 3], &[2, 3, 1]], 2);
    let p1 = image.partition("t", PartitionId(1)).unwrap();
    assert_eq!(p1.leader, Some(n(2)));
    assert_eq!(p1.isr, nodes(&[2, 3, 1]));
    assert_eq!(image.topics["t"].replication_factor, 3);
}

#[test]
fn fencing_the_leader_moves_leadership_within_the_isr_and_bumps_the_epoch() {
    let mut image = cluster(3);
    create(&mut image, "t", &[&[1, 2, 3]], 2);
    fence(&mut image, 1);
    let p = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!(p.leader, Some(n(2)));
    assert_eq!(p.leader_epoch, LeaderEpoch(1));
    assert_eq!(p.isr, nodes(&[2, 3]));
    assert!(p.elr.is_empty(), "the ISR is still at its minimum");
}

#[test]
fn the_last_in_sync_replica_fenced_leaves_the_partition_offline_until_it_returns() {
    let mut image = cluster(3);
    create(&mut image, "t", &[&[1, 2, 3]], 2);
    fence(&mut image, 3);
    fence(&mut image, 2);
    let p = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!((p.isr.clone(), p.elr.clone()), (nodes(&[1]), nodes(&[2])));
    fence(&mut image, 1);
    let p = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!(
        p.leader, None,
        "3 may lack committed records: no clean leader"
    );
    assert_eq!(p.elr, nodes(&[2, 1]));
    unfence(&mut image, 3);
    assert_eq!(image.partition("t", PartitionId(0)).unwrap().leader, None);
    unfence(&mut image, 1);
    let p = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!(p.leader, Some(n(1)), "an eligible leader replica came back");
    assert_eq!((p.isr.clone(), p.elr.clone()), (nodes(&[1]), nodes(&[2])));
}

#[test]
fn a_broker_back_with_a_wiped_directory_leaves_every_eligible_leader_set() {
    let mut image = cluster(3);
    create(&mut image, "t", &[&[1, 2, 3]], 2);
    fence(&mut image, 3);
    fence(&mut image, 2);
    fence(&mut image, 1);
    let p = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!((p.leader, p.elr.clone()), (None, nodes(&[2, 1])));
    // Node 2's disk was replaced: it comes back empty, saying so.
    let wiped = Command::RegisterBroker {
        node_id: n(2),
        address: "127.0.0.1:9002".into(),
        incarnation: 7,
        data_lost: true,
    };
    apply_ok(&mut image, &wiped);
    unfence(&mut image, 2);
    let p = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!(
        (p.leader, p.elr.clone()),
        (None, nodes(&[1])),
        "an empty replica is never elected by itself: the records up to the high watermark \
         are not on it"
    );
    // A restart that kept its data stays eligible and is elected.
    register(&mut image, 1, 8);
    unfence(&mut image, 1);
    assert_eq!(
        image.partition("t", PartitionId(0)).unwrap().leader,
        Some(n(1))
    );
}

#[test]
fn a_restarted_broker_is_fenced_and_out_of_every_isr() {
    let mut image = cluster(3);
    create(&mut image, "t", &[&[1, 2, 3]], 2);
    let old = epoch_of(&image, 2);
    let again = register(&mut image, 2, 1);
    assert_eq!(again, old, "a retried registration keeps the epoch");
    let new = register(&mut image, 2, 2);
    assert!(new > old);
    assert!(image.brokers[&n(2)].fenced);
    assert_eq!(
        image.partition("t", PartitionId(0)).unwrap().isr,
        nodes(&[1, 3])
    );
    let stale = Command::UnfenceBroker {
        node_id: n(2),
        broker_epoch: old,
    };
    let index = image.applied + 1;
    assert!(matches!(
        image.apply(index, &stale),
        Err(MetadataError::StaleBrokerEpoch { .. })
    ));
}

#[test]
fn an_isr_change_is_a_compare_and_swap_on_the_partition_epoch() {
    let mut image = cluster(3);
    create(&mut image, "t", &[&[1, 2, 3]], 2);
    let p = image.partition("t", PartitionId(0)).unwrap().clone();
    let shrink = Command::AlterPartition {
        topic: "t".into(),
        partition: PartitionId(0),
        leader: n(1),
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        isr: nodes(&[1, 2]),
        high_watermark: 0,
    };
    apply_ok(&mut image, &shrink);
    let index = image.applied + 1;
    let before = image.clone();
    assert!(matches!(
        image.apply(index, &shrink),
        Err(MetadataError::StalePartitionEpoch { .. })
    ));
    assert_eq!(
        image.topics, before.topics,
        "a refused command changes nothing"
    );
    let from_follower = Command::AlterPartition {
        topic: "t".into(),
        partition: PartitionId(0),
        leader: n(2),
        leader_epoch: p.leader_epoch,
        partition_epoch: image
            .partition("t", PartitionId(0))
            .unwrap()
            .partition_epoch,
        isr: nodes(&[2]),
        high_watermark: 0,
    };
    assert!(matches!(
        image.apply(index + 1, &from_follower),
        Err(MetadataError::NotLeader { .. })
    ));
}

#[test]
fn an_unclean_election_makes_the_replica_the_only_isr_member() {
    let mut image = cluster(3);
    create(&mut image, "t", &[&[1, 2, 3]], 2);
    // 2 leaves while the ISR stays at its minimum (not eligible), then 1 and 3: offline.
    fence(&mut image, 2);
    fence(&mut image, 1);
    fence(&mut image, 3);
    unfence(&mut image, 2);
    assert_eq!(image.partition("t", PartitionId(0)).unwrap().leader, None);
    let unclean = |replica: u32| Command::ElectLeader {
        topic: "t".into(),
        partition: PartitionId(0),
        election: Election::Unclean {
            replica: n(replica),
            log_end_offset: 40,
        },
    };
    let before = image.clone();
    for (replica, expected) in [
        (9, MetadataError::NotInReplicaSet { replica: n(9) }),
        (1, MetadataError::ReplicaFenced { replica: n(1) }),
    ] {
        let index = image.applied + 1;
        assert_eq!(image.apply(index, &unclean(replica)), Err(expected));
    }
    assert_eq!(image.topics, before.topics, "a refusal changes nothing");
    apply_ok(&mut image, &unclean(2));
    let p = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!(
        (p.leader, p.isr.clone(), p.elr.clone(), p.high_watermark),
        (Some(n(2)), nodes(&[2]), vec![], 40)
    );
    assert!(p.leader_epoch > before.partition("t", PartitionId(0)).unwrap().leader_epoch);
    let index = image.applied + 1;
    assert_eq!(
        image.apply(index, &unclean(2)),
        Err(MetadataError::PartitionHasLeader { leader: n(2) }),
        "only an offline partition is elected unclean"
    );
}

#[test]
fn the_high_watermark_a_leader_reports_with_an_isr_change_is_kept() {
    let mut image = cluster(3);
    create(&mut image, "t", &[&[1, 2, 3]], 2);
    for (isr, reported, kept) in [(&[1, 2][..], 10, 10), (&[1][..], 7, 10), (&[1][..], 25, 25)] {
        let p = image.partition("t", PartitionId(0)).unwrap().clone();
        let alter = Command::AlterPartition {
            topic: "t".into(),
            partition: PartitionId(0),
            leader: n(1),
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: nodes(isr),
            high_watermark: reported,
        };
        apply_ok(&mut image, &alter);
        assert_eq!(
            image.partition("t", PartitionId(0)).unwrap().high_watermark,
            kept
        );
    }
}

#[test]
fn a_preferred_election_moves_leadership_to_the_first_replica_once_in_sync() {
    let mut image = cluster(3);
    create(&mut image, "t", &[&[1, 2, 3]], 2);
    let preferred = Command::ElectLeader {
        topic: "t".into(),
        partition: PartitionId(0),
        election: Election::Preferred,
    };
    fence(&mut image, 1);
    let index = image.applied + 1;
    assert_eq!(
        image.apply(index, &preferred),
        Err(MetadataError::PreferredLeaderNotAvailable { replica: n(1) })
    );
    unfence(&mut image, 1);
    let p = image.partition("t", PartitionId(0)).unwrap().clone();
    assert_eq!(p.leader, Some(n(2)));
    let alter = Command::AlterPartition {
        topic: "t".into(),
        partition: PartitionId(0),
        leader: n(2),
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        isr: nodes(&[2, 3, 1]),
        high_watermark: 0,
    };
    apply_ok(&mut image, &alter);
    apply_ok(&mut image, &preferred);
    let after = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!(after.leader, Some(n(1)));
    assert!(after.leader_epoch > p.leader_epoch);
}

#[test]
fn bad_assignments_are_refused() {
    let mut image = cluster(3);
    for (assignment, min) in [
        (vec![], 1),
        (vec![vec![]], 1),
        (vec![nodes(&[1, 1])], 1),
        (vec![nodes(&[1, 4])], 1),
        (vec![nodes(&[1, 2]), nodes(&[1])], 1),
        (vec![nodes(&[1, 2])], 3),
        (vec![nodes(&[1, 2])], 0),
    ] {
        let command = Command::CreateTopic {
            name: "t".into(),
            config: TopicConfig::default(),
            min_insync_replicas: min,
            assignment,
        };
        let index = image.applied + 1;
        assert!(image.apply(index, &command).is_err(), "{command:?}");
    }
    assert!(image.topics.is_empty());
}

#[test]
fn commands_and_images_survive_a_serde_round_trip() {
    let mut image = cluster(2);
    create(&mut image, "t", &[&[1, 2]], 1);
    let text = serde_json::to_string(&image).unwrap();
    assert_eq!(serde_json::from_str::<MetadataImage>(&text).unwrap(), image);
    let command = Command::ElectLeader {
        topic: "t".into(),
        partition: PartitionId(0),
        election: Election::Unclean {
            replica: n(2),
            log_end_offset: 7,
        },
    };
    let text = serde_json::to_string(&command).unwrap();
    assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), command);
}

fn reassign(image: &mut MetadataImage, target: Option<&[u32]>) -> Result<Outcome, MetadataError> {
    let command = Command::AlterReassignment {
        topic: "t".into(),
        partition: PartitionId(0),
        target: target.map(nodes),
        throttle_bytes_per_s: None,
    };
    let index = image.applied + 1;
    image.apply(index, &command)
}

/// The leader of partition 0 of "t" adds `node` to the ISR, as it does once the follower
/// caught up.
fn caught_up(image: &mut MetadataImage, node: u32) {
    let p = image.partition("t", PartitionId(0)).unwrap().clone();
    let mut isr = p.isr.clone();
    isr.push(n(node));
    let alter = Command::AlterPartition {
        topic: "t".into(),
        partition: PartitionId(0),
        leader: p.leader.unwrap(),
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        isr,
        high_watermark: 0,
    };
    apply_ok(image, &alter);
}

#[test]
fn a_move_adds_the_new_replicas_outside_the_isr_and_completes_once_they_are_in_sync() {
    let mut image = cluster(4);
    create(&mut image, "t", &[&[1, 2]], 2);
    let before = image.partition("t", PartitionId(0)).unwrap().clone();
    reassign(&mut image, Some(&[3, 2])).unwrap();
    let p = image.partition("t", PartitionId(0)).unwrap().clone();
    assert_eq!(
        p.replicas,
        nodes(&[3, 2, 1]),
        "the target, then the replicas it removes"
    );
    assert_eq!(
        (p.adding.clone(), p.removing.clone()),
        (nodes(&[3]), nodes(&[1]))
    );
    assert_eq!(p.isr, nodes(&[1, 2]), "a new replica is not in sync yet");
    assert_eq!(p.leader, Some(n(1)));
    assert_eq!(
        p.leader_epoch, before.leader_epoch,
        "the leader keeps its epoch"
    );
    assert!(p.partition_epoch > before.partition_epoch);
    assert_eq!(
        reassign(&mut image, Some(&[4, 2])),
        Err(MetadataError::ReassignmentInProgress {
            adding: nodes(&[3]),
            removing: nodes(&[1])
        })
    );
    // The same target again sets the running move's throttle, and changes nothing else: the
    // partition epoch stays, so an ISR change under way is still valid.
    let throttle = |bytes_per_s: Option<u64>| Command::AlterReassignment {
        topic: "t".into(),
        partition: PartitionId(0),
        target: Some(nodes(&[3, 2])),
        throttle_bytes_per_s: bytes_per_s,
    };
    apply_ok(&mut image, &throttle(Some(5_000)));
    let throttled = image.partition("t", PartitionId(0)).unwrap().clone();
    assert_eq!(throttled.throttle_bytes_per_s, Some(5_000));
    assert_eq!(
        PartitionRecord {
            throttle_bytes_per_s: None,
            ..throttled
        },
        p,
        "only the throttle changed"
    );
    apply_ok(&mut image, &throttle(None));
    assert_eq!(image.partition("t", PartitionId(0)).unwrap(), &p, "lifted");

    caught_up(&mut image, 3);
    let done = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!(done.replicas, nodes(&[3, 2]));
    assert_eq!(done.isr, nodes(&[2, 3]), "the removed leader left the ISR");
    assert!(!done.is_moving());
    assert_eq!(
        done.leader,
        Some(n(3)),
        "leadership went to the target's first replica"
    );
    assert!(done.leader_epoch > p.leader_epoch);
    assert_eq!(
        reassign(&mut image, None),
        Err(MetadataError::NoReassignment)
    );
}

#[test]
fn a_cancelled_move_gives_the_partition_back_its_original_replicas() {
    let mut image = cluster(4);
    create(&mut image, "t", &[&[1, 2]], 1);
    reassign(&mut image, Some(&[3, 4])).unwrap();
    caught_up(&mut image, 3);
    let p = image.partition("t", PartitionId(0)).unwrap().clone();
    assert!(p.is_moving(), "4 is not in sync yet");
    assert_eq!(p.isr, nodes(&[1, 2, 3]));
    reassign(&mut image, None).unwrap();
    let back = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!(back.replicas, nodes(&[1, 2]));
    assert_eq!(back.isr, nodes(&[1, 2]), "the added replica left the ISR");
    assert_eq!(back.leader, Some(n(1)));
    assert!(!back.is_moving());
    assert!(back.partition_epoch > p.partition_epoch);
}

#[test]
fn a_cancel_that_would_leave_no_original_replica_to_lead_is_refused() {
    let mut image = cluster(3);
    create(&mut image, "t", &[&[1]], 1);
    reassign(&mut image, Some(&[2])).unwrap();
    // 2 is not in sync yet: the move waits, and 1 still leads.
    assert_eq!(
        image.partition("t", PartitionId(0)).unwrap().leader,
        Some(n(1))
    );
    caught_up(&mut image, 2);
    let moved = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!(
        (moved.replicas.clone(), moved.leader),
        (nodes(&[2]), Some(n(2)))
    );

    reassign(&mut image, Some(&[3])).unwrap();
    fence(&mut image, 2);
    // The leader left; 3 never caught up, so the partition is offline and a cancel
    // changes no leadership.
    let p = image.partition("t", PartitionId(0)).unwrap().clone();
    assert_eq!(p.leader, None);
    reassign(&mut image, None).unwrap();
    assert_eq!(
        image.partition("t", PartitionId(0)).unwrap().replicas,
        nodes(&[2])
    );

    // Leadership passed to a replica the move adds, and no original replica is in sync.
    let mut image = cluster(4);
    create(&mut image, "t", &[&[1, 2]], 1);
    reassign(&mut image, Some(&[3, 4])).unwrap();
    caught_up(&mut image, 3);
    fence(&mut image, 1);
    fence(&mut image, 2);
    let p = image.partition("t", PartitionId(0)).unwrap().clone();
    assert_eq!((p.leader, p.isr.clone()), (Some(n(3)), nodes(&[3])));
    assert_eq!(
        reassign(&mut image, None),
        Err(MetadataError::CancelWouldLoseLeader)
    );
    assert_eq!(image.partition("t", PartitionId(0)).unwrap(), &p);

    // The same with no leader left: 3, the only holder, waits in the ELR. Cancelling would
    // drop it and leave the original replicas, which lack its records.
    fence(&mut image, 3);
    let offline = image.partition("t", PartitionId(0)).unwrap().clone();
    assert_eq!((offline.leader, offline.elr.clone()), (None, nodes(&[3])));
    assert_eq!(
        reassign(&mut image, None),
        Err(MetadataError::CancelWouldLoseLeader)
    );
    // Nor may 4, which never caught up, be elected unclean while the move adds it.
    let unclean = Command::ElectLeader {
        topic: "t".into(),
        partition: PartitionId(0),
        election: Election::Unclean {
            replica: n(4),
            log_end_offset: 0,
        },
    };
    let index = image.applied + 1;
    assert_eq!(
        image.apply(index, &unclean),
        Err(MetadataError::ReplicaBeingAdded { replica: n(4) })
    );
    unfence(&mut image, 3);
    let back = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!(back.leader, Some(n(3)), "the eligible replica leads again");
}

/// A cancel gives the partition back its replica set in its order (the preferred leader
/// first), not the order the move kept them in.
#[test]
fn a_cancel_restores_the_original_replicas_in_their_order() {
    let mut image = cluster(4);
    create(&mut image, "t", &[&[1, 2, 3]], 2);
    let before = image.partition("t", PartitionId(0)).unwrap().clone();
    reassign(&mut image, Some(&[3, 4, 1])).unwrap();
    let moving = image.partition("t", PartitionId(0)).unwrap().clone();
    assert_eq!(
        moving.replicas,
        nodes(&[3, 4, 1, 2]),
        "the target, then the removed"
    );
    assert_eq!(moving.original(), nodes(&[1, 2, 3]));
    reassign(&mut image, None).unwrap();
    let back = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!(back.replicas, nodes(&[1, 2, 3]));
    assert_eq!(back.leader, before.leader);
    assert!(back.moved_from.is_empty(), "the move is over");
}

#[test]
fn bad_targets_are_refused_and_a_reorder_completes_at_once() {
    let mut image = cluster(3);
    create(&mut image, "t", &[&[1, 2]], 1);
    for target in [&[1][..], &[1, 1], &[1, 4], &[1, 2, 3]] {
        assert!(
            matches!(
                reassign(&mut image, Some(target)),
                Err(MetadataError::InvalidAssignment(_))
            ),
            "{target:?}"
        );
    }
    let p = image.partition("t", PartitionId(0)).unwrap().clone();
    reassign(&mut image, Some(&[1, 2])).unwrap();
    assert_eq!(
        image.partition("t", PartitionId(0)).unwrap(),
        &p,
        "nothing to do"
    );
    let throttled_reorder = Command::AlterReassignment {
        topic: "t".into(),
        partition: PartitionId(0),
        target: Some(nodes(&[2, 1])),
        throttle_bytes_per_s: Some(1_000),
    };
    apply_ok(&mut image, &throttled_reorder);
    let reordered = image.partition("t", PartitionId(0)).unwrap();
    assert_eq!(reordered.replicas, nodes(&[2, 1]));
    assert!(!reordered.is_moving());
    assert_eq!(
        reordered.throttle_bytes_per_s, None,
        "nothing moves: no throttle"
    );
    assert_eq!(
        reordered.leader,
        Some(n(1)),
        "a preferred election moves it later"
    );
}

// ---- property test ---------------------------------------------------------------------

const BROKERS: u32 = 4;
const TOPICS: [&str; 2] = ["a", "b"];

/// An abstract step; turned into a command against the current image so that most steps
/// are valid, and some are deliberately stale.
#[derive(Debug, Clone)]
enum Op {
    Restart(u32),
    Fence(u32),
    Unfence(u32),
    Shutdown(u32),
    Create {
        topic: usize,
        partitions: usize,
        factor: usize,
        min: u32,
        rotate: usize,
    },
    Delete(usize),
    Expand {
        topic: usize,
        rotate: usize,
    },
    Shrink {
        topic: usize,
        partition: usize,
        drop: usize,
        stale: bool,
    },
    Grow {
        topic: usize,
        partition: usize,
        node: u32,
    },
    Preferred {
        topic: usize,
        partition: usize,
    },
    Unclean {
        topic: usize,
        partition: usize,
        node: u32,
    },
    /// Starts moving a partition to `factor` replicas from `rotate`.
    Reassign {
        topic: usize,
        partition: usize,
        rotate: usize,
        /// The throttle, drawn apart from the target: the same target again changes it.
        throttle: usize,
    },
    CancelMove {
        topic: usize,
        partition: usize,
    },
    /// Not a command: the leader advances the high watermark, if the ISR allows.
    Commit {
        topic: usize,
        partition: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let node = 1..=BROKERS;
    let topic = 0..TOPICS.len();
    prop_oneof![
        1 => node.clone().prop_map(Op::Restart),
        1 => node.clone().prop_map(Op::Fence),
        2 => node.clone().prop_map(Op::Unfence),
        1 => node.clone().prop_map(Op::Shutdown),
        1 => (topic.clone(), 1..3usize, 1..4usize, 1..4u32, 0..4usize).prop_map(
            |(topic, partitions, factor, min, rotate)| Op::Create { topic, partitions, factor, min, rotate }
        ),
        1 => topic.clone().prop_map(Op::Delete),
        1 => (topic.clone(), 0..4usize).prop_map(|(topic, rotate)| Op::Expand { topic, rotate }),
        3 => (topic.clone(), 0..3usize, 0..3usize, any::<bool>()).prop_map(
            |(topic, partition, drop, stale)| Op::Shrink { topic, partition, drop, stale }
        ),
        3 => (topic.clone(), 0..3usize, node.clone())
            .prop_map(|(topic, partition, node)| Op::Grow { topic, partition, node }),
        1 => (topic.clone(), 0..3usize).prop_map(|(topic, partition)| Op::Preferred { topic, partition }),
        1 => (topic.clone(), 0..3usize, node).prop_map(|(topic, partition, node)| Op::Unclean { topic, partition, node }),
        2 => (topic.clone(), 0..3usize, 0..4usize, 0..3usize)
            .prop_map(|(topic, partition, rotate, throttle)| Op::Reassign { topic, partition, rotate, throttle }),
        1 => (topic.clone(), 0..3usize).prop_map(|(topic, partition)| Op::CancelMove { topic, partition }),
        4 => (topic, 0..3usize).prop_map(|(topic, partition)| Op::Commit { topic, partition }),
    ]
}

/// What the real system would know: which replicas hold every record below the high
/// watermark, per (topic id, partition).
#[derive(Default)]
struct Model {
    holders: BTreeMap<(u64, usize), BTreeSet<NodeId>>,
    incarnations: BTreeMap<u32, u64>,
}

fn replicas(rotate: usize, factor: usize) -> Vec<NodeId> {
    (0..factor)
        .map(|i| n(((rotate + i) % BROKERS as usize) as u32 + 1))
        .collect()
}

fn to_command(image: &MetadataImage, model: &mut Model, op: &Op) -> Option<Command> {
    let epoch = |id: u32| image.brokers.get(&n(id)).map(|b| b.broker_epoch);
    let partition = |t: usize, p: usize| {
        let topic = image.topics.get(TOPICS[t])?;
        let p = p % topic.partitions.len();
        Some((PartitionId(p as u32), topic.partitions[p].clone()))
    };
    Some(match op {
        Op::Restart(id) => {
            let incarnation = model.incarnations.entry(*id).or_insert(0);
            *incarnation += 1;
            Command::RegisterBroker {
                node_id: n(*id),
                address: format!("127.0.0.1:{id}"),
                incarnation: *incarnation,
                data_lost: false,
            }
        }
        Op::Fence(id) => Command::FenceBroker {
            node_id: n(*id),
            broker_epoch: epoch(*id)?,
        },
        Op::Unfence(id) => Command::UnfenceBroker {
            node_id: n(*id),
            broker_epoch: epoch(*id)?,
        },
        Op::Shutdown(id) => Command::BeginShutdown {
            node_id: n(*id),
            broker_epoch: epoch(*id)?,
        },
        Op::Create {
            topic,
            partitions,
            factor,
            min,
            rotate,
        } => Command::CreateTopic {
            name: TOPICS[*topic].to_string(),
            config: TopicConfig::default(),
            min_insync_replicas: *min,
            assignment: (0..*partitions)
                .map(|p| replicas(rotate + p, *factor))
                .collect(),
        },
        Op::Delete(topic) => Command::DeleteTopic {
            name: TOPICS[*topic].to_string(),
        },
        Op::Expand { topic, rotate } => {
            let factor = image.topics.get(TOPICS[*topic])?.replication_factor as usize;
            Command::CreatePartitions {
                topic: TOPICS[*topic].to_string(),
                assignment: vec![replicas(*rotate, factor)],
            }
        }
        Op::Shrink {
            topic,
            partition: p,
            drop,
            stale,
        } => {
            let (p, record) = partition(*topic, *p)?;
            let leader = record.leader?;
            let mut isr = record.isr.clone();
            let at = drop % isr.len();
            if isr[at] != leader {
                isr.remove(at);
            }
            let epoch = PartitionEpoch(
                record.partition_epoch.0 - u32::from(*stale).min(record.partition_epoch.0),
            );
            Command::AlterPartition {
                topic: TOPICS[*topic].to_string(),
                partition: p,
                leader,
                leader_epoch: record.leader_epoch,
                partition_epoch: epoch,
                isr,
                high_watermark: 0,
            }
        }
        Op::Grow {
            topic,
            partition: p,
            node,
        } => {
            let (p, record) = partition(*topic, *p)?;
            let mut isr = record.isr.clone();
            if !isr.contains(&n(*node)) {
                isr.push(n(*node));
            }
            Command::AlterPartition {
                topic: TOPICS[*topic].to_string(),
                partition: p,
                leader: record.leader?,
                leader_epoch: record.leader_epoch,
                partition_epoch: record.partition_epoch,
                isr,
                high_watermark: 0,
            }
        }
        Op::Preferred {
            topic,
            partition: p,
        } => Command::ElectLeader {
            topic: TOPICS[*topic].to_string(),
            partition: partition(*topic, *p)?.0,
            election: Election::Preferred,
        },
        Op::Unclean {
            topic,
            partition: p,
            node,
        } => Command::ElectLeader {
            topic: TOPICS[*topic].to_string(),
            partition: partition(*topic, *p)?.0,
            election: Election::Unclean {
                replica: n(*node),
                log_end_offset: 0,
            },
        },
        Op::Reassign {
            topic,
            partition: p,
            rotate,
            throttle,
        } => {
            let factor = image.topics.get(TOPICS[*topic])?.replication_factor as usize;
            Command::AlterReassignment {
                topic: TOPICS[*topic].to_string(),
                partition: partition(*topic, *p)?.0,
                target: Some(replicas(*rotate, factor)),
                // Also a running move's target again: a throttle change, or its removal.
                throttle_bytes_per_s: [Some(1 << 20), None, Some(1_000)][*throttle],
            }
        }
        Op::CancelMove {
            topic,
            partition: p,
        } => Command::AlterReassignment {
            topic: TOPICS[*topic].to_string(),
            partition: partition(*topic, *p)?.0,
            target: None,
            throttle_bytes_per_s: None,
        },
        Op::Commit { .. } => return None,
    })
}

/// Updates the model for a step that `apply` accepted (or, for `Commit`, that happened).
fn observe(after: &MetadataImage, model: &mut Model, op: &Op) {
    let key = |image: &MetadataImage, t: usize, p: usize| {
        let topic = image.topics.get(TOPICS[t])?;
        Some((topic.topic_id, p % topic.partitions.len()))
    };
    match op {
        Op::Create { topic, .. } | Op::Expand { topic, .. } => {
            // A new partition is empty: each of its replicas holds every committed record.
            let t = &after.topics[TOPICS[*topic]];
            for (p, record) in t.partitions.iter().enumerate() {
                let holders = record.replicas.iter().copied().collect();
                model.holders.entry((t.topic_id, p)).or_insert(holders);
            }
        }
        Op::Commit { topic, partition } => {
            let Some(k) = key(after, *topic, *partition) else {
                return;
            };
            let t = &after.topics[TOPICS[*topic]];
            let record = &t.partitions[k.1];
            if record.leader.is_some() && record.isr.len() as u32 >= t.min_insync_replicas {
                model
                    .holders
                    .insert(k, record.isr.iter().copied().collect());
            }
        }
        Op::Grow {
            topic,
            partition,
            node,
        } => {
            // An ISR expansion happens once the follower caught up to the high watermark.
            let Some(k) = key(after, *topic, *partition) else {
                return;
            };
            model.holders.get_mut(&k).unwrap().insert(n(*node));
        }
        Op::Unclean {
            topic,
            partition,
            node,
        } => {
            // The records only the others held are given up: the new baseline.
            let Some(k) = key(after, *topic, *partition) else {
                return;
            };
            model.holders.insert(k, BTreeSet::from([n(*node)]));
        }
        _ => {}
    }
}

fn check_invariants(before: &MetadataImage, after: &MetadataImage, model: &Model) {
    for t in after.topics.values() {
        for (i, p) in t.partitions.iter().enumerate() {
            let ctx = format!("{}/{i}: {p:?}", t.name);
            assert!(!has_dup(&p.replicas), "{ctx}");
            assert!(
                p.replicas.iter().all(|r| after.brokers.contains_key(r)),
                "{ctx}"
            );
            assert!(p.isr.iter().all(|r| p.replicas.contains(r)), "{ctx}");
            assert!(p.elr.iter().all(|r| p.replicas.contains(r)), "{ctx}");
            assert!(!has_dup(&p.isr) && !has_dup(&p.elr), "{ctx}");
            assert!(p.isr.iter().all(|r| !p.elr.contains(r)), "{ctx}");
            assert!(
                p.isr.iter().all(|r| after.is_active(*r)),
                "ISR members are active: {ctx}"
            );
            assert!(
                p.elr.is_empty() || (p.isr.len() as u32) < t.min_insync_replicas,
                "the ELR is empty once the ISR reaches its minimum: {ctx}"
            );
            if let Some(l) = p.leader {
                assert!(p.isr.contains(&l), "{ctx}");
            }
            assert_eq!(
                p.target().len() as u32,
                t.replication_factor,
                "a move's target has the replication factor: {ctx}"
            );
            assert!(
                p.adding
                    .iter()
                    .all(|r| p.replicas.contains(r) && !p.removing.contains(r)),
                "{ctx}"
            );
            assert!(p.removing.iter().all(|r| p.replicas.contains(r)), "{ctx}");
            assert!(
                p.is_moving() || p.throttle_bytes_per_s.is_none(),
                "a throttle lives as long as its move: {ctx}"
            );
            // The order a cancel restores: the replicas before the move, the same set as
            // the replicas less the ones it adds.
            assert!(p.is_moving() || p.moved_from.is_empty(), "{ctx}");
            if p.is_moving() {
                let kept: BTreeSet<NodeId> = p
                    .replicas
                    .iter()
                    .copied()
                    .filter(|n| !p.adding.contains(n))
                    .collect();
                let before: BTreeSet<NodeId> = p.original().into_iter().collect();
                assert_eq!(before, kept, "{ctx}");
            }
            assert!(
                p.adding.is_empty() == p.removing.is_empty(),
                "a move of a full replica set both adds and removes: {ctx}"
            );
            assert!(
                !p.is_moving() || !p.target().iter().all(|r| p.isr.contains(r)),
                "a move whose target is in sync is complete: {ctx}"
            );
            let holders = &model.holders[&(t.topic_id, i)];
            assert!(
                p.replicas.iter().any(|r| holders.contains(r)),
                "a replica still holds every committed record: {ctx}, holders {holders:?}"
            );
            assert!(
                p.isr.iter().chain(&p.elr).all(|r| holders.contains(r)),
                "every ISR and ELR member holds every committed record: {ctx}, holders {holders:?}"
            );
            let Some(old) = before
                .topics
                .get(&t.name)
                .filter(|o| o.topic_id == t.topic_id)
            else {
                continue;
            };
            if let Some(o) = old.partitions.get(i) {
                assert!(p.leader_epoch >= o.leader_epoch, "{ctx}");
                assert!(p.partition_epoch >= o.partition_epoch, "{ctx}");
                if p.leader != o.leader {
                    assert!(p.leader_epoch > o.leader_epoch, "{ctx}");
                }
            }
        }
    }
    for (id, b) in &after.brokers {
        if let Some(old) = before.brokers.get(id) {
            assert!(b.broker_epoch >= old.broker_epoch);
        }
    }
}

fn has_dup(nodes: &[NodeId]) -> bool {
    nodes
        .iter()
        .enumerate()
        .any(|(i, x)| nodes[..i].contains(x))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn apply_keeps_its_invariants_and_never_elects_a_replica_missing_committed_records(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut image = cluster(BROKERS);
        let mut model = Model::default();
        for id in 1..=BROKERS {
            model.incarnations.insert(id, 1);
        }
        let mut replay = Vec::new();
        for op in &ops {
            let before = image.clone();
            match to_command(&image, &mut model, op) {
                Some(command) => {
                    let index = image.applied + 1;
                    let result = image.apply(index, &command);
                    replay.push((index, command));
                    if result.is_err() {
                        prop_assert_eq!(&image.topics, &before.topics);
                        prop_assert_eq!(&image.brokers, &before.brokers);
                        continue;
                    }
                }
                None => {
                    if !matches!(op, Op::Commit { .. }) {
                        continue;
                    }
                }
            }
            observe(&image, &mut model, op);
            check_invariants(&before, &image, &model);
        }
        // The same commands from the same start give the same image.
        let mut again = cluster(BROKERS);
        for (index, command) in &replay {
            let _ = again.apply(*index, command);
        }
        prop_assert_eq!(again, image);
    }
}
