//! Replication of partitions between brokers (ISR style): `manager` makes the local
//! replicas match the cluster metadata and publishes their roles; the leader-side rules as
//! pure functions (`isr`: follower progress, the high watermark, ISR shrink and expand); the
//! replica fetch protocol's wire format (`wire`); the leader's state per led partition
//! (`leader`); the follower's fetcher tasks (`fetcher`); the CRC checks of every local
//! replica and what a damaged one does (`scrub`); and the [`Replicator`] that runs leaders,
//! fetchers and the scrub from the roles the manager publishes.

pub mod fetcher;
pub mod isr;
pub mod leader;
pub mod manager;
pub mod replicator;
pub mod scrub;
pub mod wire;

pub use replicator::{Replicator, Settings};
