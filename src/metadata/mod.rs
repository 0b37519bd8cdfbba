//! The cluster metadata: which brokers exist, which topics and partitions, where each
//! partition's replicas live, who leads it and who is in sync.
//!
//! [`MetadataImage`] is the state, [`Command`] one change to it, and
//! [`MetadataImage::apply`] validates and applies one command. `apply` is a pure function:
//! no I/O, no clock, no randomness; every input it needs is in the command. Brokers that
//! apply the same commands in the same order therefore hold the same image, which is what
//! lets a replicated log (the controller's Raft log) keep it. `apply` takes the command's
//! index in that log; a command that fails validation changes nothing but the index of the
//! last applied command, so every replica of the log still agrees on it.
//!
//! Invariants `apply` keeps (checked after every step by the property test in `tests.rs`):
//! - A partition's replicas are distinct registered brokers; its ISR and ELR are disjoint
//!   subsets of them.
//! - A leader is a member of the ISR and is neither fenced nor shutting down.
//! - The ELR (eligible leader replicas, KIP-966) is non-empty only while the ISR is smaller
//!   than `min_insync_replicas`: it holds the members that left the ISR while it was below
//!   the minimum, which have every record below the high watermark because the high
//!   watermark does not move while the ISR is below the minimum.
//! - A clean election picks a member of the ISR, then of the ELR; only an explicit
//!   unclean election picks anyone else. Leader epochs and partition epochs only grow.
//! - Broker epochs only grow: each registration of a new incarnation gets the index of the
//!   command that registered it.
//! - A partition's target replica set (its replicas less those a move removes) has the
//!   topic's replication factor. A move (`Command::AlterReassignment`, KIP-455) puts the
//!   target first in `replicas`, then the replicas it removes; it completes, in the same
//!   command that makes it so, once every target member is in the ISR: only then do the
//!   removed replicas leave the replica set, the ISR and the ELR (so a removed replica never
//!   takes away the last copy of a committed record), and leadership moves to the target if
//!   the leader was removed.

mod apply;
mod command;
mod image;
#[cfg(test)]
mod tests;

pub use apply::{MetadataError, Outcome};
pub use command::{Command, Election};
pub use image::{BrokerRecord, MetadataImage, PartitionRecord, TopicRecord};

use serde::{Deserialize, Serialize};

/// A broker's id in the cluster (`--node-id`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct NodeId(pub u32);

/// A partition's number within its topic, from 0 to the topic's partition count less one.
/// Partition counts stay plain `u32`: a count is not an id.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct PartitionId(pub u32);

/// The epoch of a partition's leadership; bumped at every leader change.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct LeaderEpoch(pub u32);

/// The version of a partition's record (leader, ISR, ELR); bumped at every change, and the
/// compare-and-swap token of an ISR change (`Command::AlterPartition`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct PartitionEpoch(pub u32);

/// The epoch of one incarnation of a broker: the index of the command that registered it.
/// A request carrying an older broker epoch comes from a process that has since restarted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct BrokerEpoch(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl PartitionId {
    /// Every partition of a topic with `count` partitions, in order.
    pub fn all(count: u32) -> impl Iterator<Item = PartitionId> {
        (0..count).map(PartitionId)
    }

    /// The partition's place in a list of the topic's partitions.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}
