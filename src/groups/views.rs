//! What the coordinator answers: a member's view of itself, records read for it, group
//! descriptions with lag, summaries and committed offsets; and the lag gauges.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures_util::future::join_all;

use serde::Serialize;

use super::assignor::TopicPartition;
use super::coordinator::GroupCoordinator;
use super::group::{Group, OffsetReset};
use super::remote::{RemotePartitions, RemoteRead};
use crate::broker::{Fetched, Partition};
use crate::log::Offset;
use crate::metadata::PartitionId;
use crate::metrics as m;

/// A member as it sees itself: the answer to join, heartbeat and fetch.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub group: String,
    pub member_id: String,
    pub generation: u32,
    pub session_timeout_ms: u64,
    pub assignment: Vec<TopicPartition>,
}

/// Records read for a member: per partition, the raw batches and where they start.
#[derive(Debug)]
pub struct MemberFetch {
    pub member: MemberView,
    pub parts: Vec<(TopicPartition, Fetched)>,
    /// Partitions led elsewhere whose leader could not be read this time (down, moving, or
    /// unreachable): nothing of them is in `parts`, and the next fetch tries again.
    pub unavailable: Vec<TopicPartition>,
}

/// The answer to describe.
#[derive(Debug, Clone, Serialize)]
pub struct GroupDescription {
    pub group: String,
    /// `empty` (no members) or `stable` (rebalances happen at once, so there is no third).
    pub state: &'static str,
    pub generation: u32,
    pub auto_offset_reset: OffsetReset,
    pub rebalances: u64,
    pub members: Vec<MemberDescription>,
    pub partitions: Vec<PartitionLag>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberDescription {
    pub member_id: String,
    pub topics: Vec<String>,
    pub session_timeout_ms: u64,
    /// Time left before the session expires without another call.
    pub expires_in_ms: u64,
    pub assignment: Vec<TopicPartition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: PartitionId,
    pub member_id: Option<String>,
    pub committed_offset: Option<Offset>,
    /// Where the group reads next: the committed offset, or where `auto_offset_reset` puts it.
    pub position: Offset,
    pub log_start_offset: Offset,
    pub log_end_offset: Offset,
    pub high_watermark: Offset,
    /// `high_watermark - position`: records the group has not committed past.
    pub lag: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupSummary {
    pub group: String,
    pub state: &'static str,
    pub generation: u32,
    pub members: u32,
    pub committed_partitions: u32,
}

/// A committed offset as the coordinator keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: PartitionId,
    pub offset: Offset,
    pub committed_at_ms: i64,
}

/// A group's lag, planned under the registry lock (positions come from the partitions'
/// published progress, no partition lock), then read and published outside it.
pub(super) struct LagPlan {
    group: String,
    partitions: Vec<PlannedLag>,
    /// Partitions this broker holds no replica of: their offsets are their leaders'.
    elsewhere: Vec<ElsewhereLag>,
}

struct ElsewhereLag {
    tp: TopicPartition,
    member_id: Option<String>,
    committed_offset: Option<Offset>,
    /// The committed or pinned offset, resolved at the leader.
    stored: Option<Offset>,
    reset: OffsetReset,
}

struct PlannedLag {
    tp: TopicPartition,
    partition: Arc<Partition>,
    member_id: Option<String>,
    committed_offset: Option<Offset>,
    position: Offset,
}

/// Under the registry lock: the lag to read for every partition the group owns or has
/// committed; zeroes the gauges of partitions it no longer reads.
pub(super) fn plan_lag(group: &str, g: &mut Group, coordinator: &GroupCoordinator) -> LagPlan {
    let tps: BTreeSet<TopicPartition> =
        g.owners.keys().chain(g.committed.keys()).cloned().collect();
    for gone in g.lag_published.difference(&tps) {
        lag_gauge(group, gone).set(0.0);
    }
    g.lag_published = tps.clone();
    let mut partitions = Vec::with_capacity(tps.len());
    let mut elsewhere = Vec::new();
    for tp in tps {
        let Some(partition) = coordinator.local_replica(&tp) else {
            elsewhere.push(ElsewhereLag {
                member_id: g.owners.get(&tp).map(|o| o.member.clone()),
                committed_offset: g.committed.get(&tp).map(|v| v.offset),
                stored: g.stored_position(&tp),
                reset: g.auto_offset_reset,
                tp,
            });
            continue;
        };
        partitions.push(PlannedLag {
            position: g.peek_position(&tp, &partition),
            member_id: g.owners.get(&tp).map(|o| o.member.clone()),
            committed_offset: g.committed.get(&tp).map(|v| v.offset),
            partition,
            tp,
        });
    }
    LagPlan {
        group: group.to_string(),
        partitions,
        elsewhere,
    }
}

impl LagPlan {
    /// Outside the registry lock: the lag gauges of the partitions held elsewhere only, read
    /// at their leaders (the session task's, every few seconds).
    pub(super) async fn publish_elsewhere(self, remote: &Arc<dyn RemotePartitions>) {
        LagPlan {
            group: self.group,
            partitions: Vec::new(),
            elsewhere: self.elsewhere,
        }
        .publish_all(Some(remote))
        .await;
    }

    /// Outside the registry lock: reads each partition's stats and sets the lag gauges; with
    /// `remote` (a cluster), also those of the partitions held elsewhere, at their leaders
    /// (one that cannot be read now is left out). In topic and partition order.
    pub(super) async fn publish_all(
        self,
        remote: Option<&Arc<dyn RemotePartitions>>,
    ) -> Vec<PartitionLag> {
        let LagPlan {
            group,
            partitions,
            elsewhere,
        } = self;
        let mut lags = LagPlan {
            group: group.clone(),
            partitions,
            elsewhere: Vec::new(),
        }
        .publish();
        let Some(remote) = remote else {
            return lags;
        };
        // Asked side by side.
        let answers = join_all(
            elsewhere
                .iter()
                .map(|e| remote.read(RemoteRead::offsets(&e.tp, e.stored, e.reset))),
        )
        .await;
        for (e, answer) in elsewhere.into_iter().zip(answers) {
            let Ok(answer) = answer else {
                continue;
            };
            let f = &answer.fetched;
            let lag = f.high_watermark.saturating_distance_from(f.from);
            lag_gauge(&group, &e.tp).set(lag as f64);
            lags.push(PartitionLag {
                member_id: e.member_id,
                committed_offset: e.committed_offset,
                position: f.from,
                log_start_offset: f.log_start_offset,
                log_end_offset: answer.log_end_offset,
                high_watermark: f.high_watermark,
                lag,
                topic: e.tp.topic,
                partition: e.tp.partition,
            });
        }
        lags.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        lags
    }

    /// Outside the registry lock: reads each local partition's stats and sets the lag
    /// gauges (the partitions held elsewhere are [`Self::publish_all`]'s).
    pub(super) fn publish(self) -> Vec<PartitionLag> {
        let group = self.group;
        self.partitions
            .into_iter()
            .map(|p| {
                let stats = p.partition.stats();
                let lag = stats.high_watermark.saturating_distance_from(p.position);
                lag_gauge(&group, &p.tp).set(lag as f64);
                PartitionLag {
                    member_id: p.member_id,
                    committed_offset: p.committed_offset,
                    position: p.position,
                    log_start_offset: stats.log_start_offset,
                    log_end_offset: stats.log_end_offset,
                    high_watermark: stats.high_watermark,
                    lag,
                    topic: p.tp.topic,
                    partition: p.tp.partition,
                }
            })
            .collect()
    }
}

pub(super) fn lag_gauge(group: &str, tp: &TopicPartition) -> ::metrics::Gauge {
    ::metrics::gauge!(
        m::GROUP_LAG,
        "group" => group.to_string(),
        "topic" => tp.topic.clone(),
        "partition" => tp.partition.to_string()
    )
}
