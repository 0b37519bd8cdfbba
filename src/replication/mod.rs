//! Replication of partitions between brokers (ISR style). For now the leader-side rules as
//! pure functions (`isr`: follower progress, the high watermark, ISR shrink and expand) and
//! the replica fetch protocol's wire format (`wire`). The follower fetcher and the leader's
//! fetch endpoint build on them.

pub mod isr;
pub mod wire;
