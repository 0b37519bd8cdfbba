//! The metadata image: the state that [`Command`](super::Command)s change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{BrokerEpoch, LeaderEpoch, NodeId, PartitionEpoch, PartitionId};
use crate::config::TopicConfig;

/// The whole cluster metadata. Ordered maps, so that two equal images serialize to the
/// same bytes (snapshots of replicas can be compared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetadataImage {
    /// Index of the last command applied (refused ones included); 0 before the first.
    pub applied: u64,
    /// Every broker that ever registered, fenced or not.
    pub brokers: BTreeMap<NodeId, BrokerRecord>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicRecord>,
}

/// One broker as the controller knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub node_id: NodeId,
    /// `host:port` where its HTTP API and internal routes listen.
    pub address: String,
    /// Chosen by the broker process at each start, so a restart is told from a retry.
    pub incarnation: u64,
    /// The index of the registration of this incarnation.
    pub broker_epoch: BrokerEpoch,
    /// A fenced broker leads nothing and is in no ISR: it registered and has not caught up
    /// yet, or its session expired.
    pub fenced: bool,
    /// Set by a controlled shutdown: leadership has moved away and nothing new is led.
    pub shutting_down: bool,
}

impl BrokerRecord {
    /// May lead partitions and join ISRs.
    pub fn is_active(&self) -> bool {
        !self.fenced && !self.shutting_down
    }
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    /// The index of the command that created it: tells a re-created topic of the same name
    /// from the old one (a broker still holding the old one's files deletes them).
    pub topic_id: u64,
    pub config: TopicConfig,
    /// An `acks=all` produce needs at least this many in-sync replicas.
    pub min_insync_replicas: u32,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Indexed by partition id; only grows.
    pub partitions: Vec<PartitionRecord>,
}

/// One partition's replica set and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Where the partition lives, preferred leader first.
    pub replicas: Vec<NodeId>,
    /// In-sync replicas: caught up with the leader and fsynced up to what it acknowledged.
    pub isr: Vec<NodeId>,
    /// Eligible leader replicas (KIP-966): left the ISR while it was below the minimum, so
    /// still hold every record below the high watermark.
    pub elr: Vec<NodeId>,
    /// None: offline (no eligible replica is active).
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
    /// The highest high watermark a leader reported with an ISR change (0 before any): every
    /// record below it was acknowledged to `acks=all` producers, or could have been. The
    /// real one does not move while the ISR is below `min_insync_replicas`, and a leader
    /// reports it then, so for a partition whose last leader saw its ISR below the minimum
    /// (the usual road to an unclean election) it is exact; otherwise a lower bound. An
    /// unclean election sets it to the new leader's log end.
    #[serde(default)]
    pub high_watermark: u64,
    /// A reassignment under way (KIP-455): the replicas it adds, which copy the log as
    /// followers outside the ISR until they catch up. Empty when none is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding: Vec<NodeId>,
    /// A reassignment under way: the replicas it removes once every replica of the target
    /// is in sync. During a move `replicas` is the target, then these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing: Vec<NodeId>,
    /// A reassignment under way: the most bytes per second its leader sends the replicas
    /// it adds. None when no move is under way, or it is not throttled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_bytes_per_s: Option<u64>,
    /// A reassignment under way: the replica set before it, in its order (preferred leader
    /// first), which a cancel restores. Empty when none is (or in an image written before
    /// the field: then the order is the one `replicas` keeps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_from: Vec<NodeId>,
}

impl PartitionRecord {
    /// Whether a reassignment is under way.
    pub fn is_moving(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }

    /// The replica set the partition is moving to (its replicas when it is not moving).
    pub fn target(&self) -> Vec<NodeId> {
        self.replicas
            .iter()
            .copied()
            .filter(|n| !self.removing.contains(n))
            .collect()
    }

    /// The replica set before the move under way, in its order (its replicas when it is not
    /// moving).
    pub fn original(&self) -> Vec<NodeId> {
        if self.is_moving() && !self.moved_from.is_empty() {
            return self.moved_from.clone();
        }
        self.replicas
            .iter()
            .copied()
            .filter(|n| !self.adding.contains(n))
            .collect()
    }
}

impl MetadataImage {
    /// The topic and partition, if both exist.
    pub fn partition(&self, topic: &str, partition: PartitionId) -> Option<&PartitionRecord> {
        self.topics.get(topic)?.partitions.get(partition.index())
    }

    /// Brokers that may lead and join ISRs, in id order.
    pub fn active_brokers(&self) -> impl Iterator<Item = &BrokerRecord> {
        self.brokers.values().filter(|b| b.is_active())
    }

    pub(super) fn is_active(&self, node: NodeId) -> bool {
        self.brokers.get(&node).is_some_and(BrokerRecord::is_active)
    }
}
