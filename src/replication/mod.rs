//! Replication of partitions between brokers (ISR style): `manager` makes the local
//! replicas match the cluster metadata and publishes their roles; the leader-side rules as
//! pure functions (`isr`: follower progress, the high watermark, ISR shrink and expand) and
//! the replica fetch protocol's wire format (`wire`). The follower fetcher and the leader's
//! fetch endpoint build on them.

pub mod isr;
pub mod manager;
pub mod wire;
