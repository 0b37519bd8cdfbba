//! Consumer groups: membership, assignment, generations, committed offsets.
//!
//! A plain HTTP client is a full member: the server assigns partitions (sticky, see
//! [`assignor`]), keeps each member's session, and serves records from the group's committed
//! offsets. There is no client-side join protocol: the server rebalances at once when a member
//! joins, leaves, expires, or a subscribed topic gains partitions, bumps the generation, and
//! every member learns its new assignment from its next call (each answer carries it).
//!
//! Files, one job each:
//! - [`coordinator`]: the registry of groups and the calls on it (join, heartbeat, leave,
//!   commit, reset, delete, describe, list).
//! - [`group`]: one group's state machine (members, owners, generations, positions, fencing).
//! - [`member_fetch`]: reading records for a member from the group's positions (long-poll).
//! - [`sessions`]: the background task that expires silent members.
//! - [`views`]: what the coordinator answers (member views, descriptions, lag) and lag gauges.
//! - [`remote`]: on a cluster, the partitions a group reads that this broker does not lead,
//!   read at their leaders (the hook the node gives the coordinator, and the wire format).
//! - [`assignor`], [`offsets`], [`error`]: sticky assignment, the `__consumer_offsets` store,
//!   the error type.
//!
//! Invariants kept here:
//! - Every partition of a subscribed topic has at most one owner per generation, and exactly
//!   one while any member subscribes to its topic.
//! - Commit fencing: a member may commit partition P with generation `g` only if it owns P now
//!   and has owned it without a break since a generation `<= g`. A member that lost P (even if
//!   it got it back later) cannot commit offsets it read in the older generation.
//! - A member's position moves only when offsets are committed (or with `auto_commit`, which
//!   commits before answering): a retried fetch returns the same records again.
//! - A commit is answered only after it is fsynced in `__consumer_offsets` ([`offsets`]); the
//!   in-memory committed offset changes only after that, and only in log order (offset writes
//!   of one group are serialized by its `offset_writes` lock).
//! - The group map sits behind a `std::sync::Mutex` that is never held across an `.await`;
//!   the only lock held across one is a group's `offset_writes` (a tokio mutex).
//! - The coordinator holds the broker (`Arc<Broker>`); the broker knows nothing of groups.
//! - On a cluster a group reads and checks only replicas this broker leads; the others are
//!   read at their leaders ([`remote`]), so a lagging follower copy never moves a position.
//!   A stored position stands up to the log end; past it, `auto_offset_reset` decides.
//!
//! Sessions: every member call is a heartbeat. A background task ([`sessions::run_sessions`],
//! owned by the node) driven by tokio time removes members whose session ran
//! out and rebalances their groups; it also notices partition expansion and refreshes the lag
//! gauges.

pub mod assignor;
pub mod coordinator;
pub mod error;
pub mod group;
pub mod member_fetch;
pub mod offsets;
pub mod remote;
pub mod sessions;
pub mod views;

#[cfg(test)]
mod tests;

pub use assignor::{Assignment, TopicPartition};
pub use coordinator::{GroupCoordinator, ResetTo, SESSION_TIMEOUT_MS_DEFAULT, validate_group_name};
pub use error::GroupError;
pub use group::OffsetReset;
pub use offsets::{OFFSETS_TOPIC, OffsetValue};
pub use views::{
    CommittedOffset, GroupDescription, GroupSummary, MemberDescription, MemberFetch, MemberView,
    PartitionLag,
};
