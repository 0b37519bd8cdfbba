//! Commands: every change to the metadata image, as it is stored in the controller's log.
//!
//! A command carries every decision already made (replica placement, the new ISR), so
//! applying it needs no clock, no randomness and no knowledge outside the image. The
//! controller logic decides; `apply` only validates and records.

use serde::{Deserialize, Serialize};

use super::{BrokerEpoch, LeaderEpoch, NodeId, PartitionEpoch, PartitionId};
use crate::config::TopicConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// A broker process announces itself. The same incarnation again is a retry and
    /// changes nothing; a new incarnation gets a new broker epoch, starts fenced, and
    /// leaves every ISR (its previous process's place there is not its own).
    RegisterBroker {
        node_id: NodeId,
        address: String,
        incarnation: u64,
        /// The broker's data directory lost everything it held (a wiped disk it was allowed
        /// to rejoin with): it also leaves every eligible leader set (KIP-966 ELR), whose
        /// promise is that the replica still holds the records up to the high watermark.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        data_lost: bool,
    },
    /// The broker's session expired: it leaves every ISR and leadership.
    FenceBroker {
        node_id: NodeId,
        broker_epoch: BrokerEpoch,
    },
    /// The broker caught up with the metadata and heartbeats: it may lead and join ISRs;
    /// offline partitions it can lead cleanly get it as leader.
    UnfenceBroker {
        node_id: NodeId,
        broker_epoch: BrokerEpoch,
    },
    /// Controlled shutdown: leadership moves to other ISR members, the broker leaves ISRs.
    BeginShutdown {
        node_id: NodeId,
        broker_epoch: BrokerEpoch,
    },
    CreateTopic {
        name: String,
        config: TopicConfig,
        min_insync_replicas: u32,
        /// Replicas of each partition, preferred leader first.
        assignment: Vec<Vec<NodeId>>,
    },
    DeleteTopic {
        name: String,
    },
    /// Adds partitions at the end; `assignment` holds only the new ones.
    CreatePartitions {
        topic: String,
        assignment: Vec<Vec<NodeId>>,
    },
    UpdateConfig {
        topic: String,
        config: TopicConfig,
    },
    /// A leader changes its partition's ISR (shrink: a follower fell behind; expand: one
    /// caught up). Compare-and-swap: refused unless leader, leader epoch and partition
    /// epoch are the current ones.
    AlterPartition {
        topic: String,
        partition: PartitionId,
        leader: NodeId,
        leader_epoch: LeaderEpoch,
        partition_epoch: PartitionEpoch,
        isr: Vec<NodeId>,
        /// The leader's high watermark when it asked (kept as
        /// `PartitionRecord::high_watermark`, so an unclean election can say what it gives
        /// up). 0 in commands written before it was kept.
        #[serde(default)]
        high_watermark: u64,
    },
    ElectLeader {
        topic: String,
        partition: PartitionId,
        election: Election,
    },
    /// Starts moving a partition to the replica set `target` (preferred leader first), or
    /// with `None` cancels the move under way (KIP-455). The move completes when every
    /// member of the target is in the ISR (checked here and at every ISR change).
    AlterReassignment {
        topic: String,
        partition: PartitionId,
        target: Option<Vec<NodeId>>,
        /// With a start: the most bytes per second the leader sends the replicas the move
        /// adds (none: as fast as they fetch). It lives as long as the move.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        throttle_bytes_per_s: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Election {
    /// Move leadership to the first replica, if it is an active ISR member.
    Preferred,
    /// Make `replica` the leader and the only ISR member of a partition that has no leader
    /// (no ISR or ELR member is active), though it is not in sync: the records it lacks are
    /// given up. Only on an operator's explicit request.
    Unclean {
        replica: NodeId,
        /// The replica's log end offset when the controller asked it: the partition's log
        /// is its log from now on, so this becomes the partition's recorded high watermark.
        #[serde(default)]
        log_end_offset: u64,
    },
}
