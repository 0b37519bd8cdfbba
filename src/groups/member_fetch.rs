//! Reading records for a member: plan the positions under the registry lock, read and wait
//! outside it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::time::Instant;

use super::assignor::TopicPartition;
use super::coordinator::{GroupCoordinator, member_group};
use super::error::GroupError;
use super::group::OffsetReset;
use super::remote::{RemotePartitions, RemoteRead, RemoteWait, WAIT_PARTS_MAX, WaitPart};
use super::views::{MemberFetch, MemberView};
use crate::broker::{BrokerError, Fetched, Partition, WaitKind};
use crate::log::Offset;
use crate::metadata::NodeId;

/// The partitions a fetch reads, and where, taken under the lock.
struct FetchPlan {
    member: MemberView,
    positions: Vec<(TopicPartition, Source)>,
    /// The group's stored position of each planned partition (a pin or the commit) when
    /// the plan was taken, side by side with `positions`: a read done outside the lock
    /// moves the position only where nothing moved it meanwhile.
    stored: Vec<Option<Offset>>,
    /// The group's `auto_offset_reset`, for the partitions read at their leaders.
    reset: OffsetReset,
    changes: watch::Receiver<u32>,
}

/// Where a planned partition is read.
enum Source {
    /// A replica here, at the resolved position.
    Local(Arc<Partition>, Offset),
    /// No replica here (a cluster with more brokers than the topic has replicas): read at
    /// its leader from the stored position, which the leader resolves.
    Remote(Option<Offset>),
}

impl GroupCoordinator {
    /// Reads records for a member from the group's positions on all its partitions, waiting
    /// up to `wait` for any of them to have some (or for the assignment to change).
    pub async fn fetch(
        &self,
        group: &str,
        member: &str,
        max_records: u32,
        max_bytes: u64,
        wait: Duration,
    ) -> Result<MemberFetch, GroupError> {
        let plan = self.plan_fetch(group, member)?;
        let first = self.read_plan(group, &plan, max_records, max_bytes).await?;
        if !first.parts.is_empty() || wait.is_zero() {
            return Ok(first);
        }
        // Planned again: the first read may have pinned where a `latest` reset put a
        // partition read at its leader, and the wait starts there.
        let plan = self.plan_fetch(group, member)?;
        // A long-poll in flight keeps the session alive until it ends (after the plan, which
        // sets the session's deadline from now).
        self.extend_session(group, member, wait)?;
        self.wait_for_progress(&plan, wait).await?;
        let plan = self.plan_fetch(group, member)?;
        self.read_plan(group, &plan, max_records, max_bytes).await
    }

    fn extend_session(&self, group: &str, member: &str, by: Duration) -> Result<(), GroupError> {
        let mut groups = self.lock();
        let g = member_group(&mut groups, group, member)?;
        let m = g.members.get_mut(member).expect("checked by member_group");
        m.deadline = Instant::now() + m.session_timeout + by;
        Ok(())
    }

    fn plan_fetch(&self, group: &str, member: &str) -> Result<FetchPlan, GroupError> {
        let mut groups = self.lock();
        let g = member_group(&mut groups, group, member)?;
        let m = g.members.get_mut(member).expect("checked by member_group");
        m.deadline = Instant::now() + m.session_timeout;
        g.refresh(group, self);
        let view = g.view(group, member);
        let mut positions = Vec::with_capacity(view.assignment.len());
        let mut stored = Vec::with_capacity(view.assignment.len());
        for tp in &view.assignment {
            let source = match self.local_replica(tp) {
                Some(partition) => {
                    let position = g.position(tp, &partition);
                    Source::Local(partition, position)
                }
                None if self.remote().is_some() => Source::Remote(g.stored_position(tp)),
                // Its topic is gone (deleted since the assignment).
                None => continue,
            };
            positions.push((tp.clone(), source));
            stored.push(g.stored_position(tp));
        }
        Ok(FetchPlan {
            member: view,
            reset: g.auto_offset_reset,
            positions,
            stored,
            changes: g.changes.subscribe(),
        })
    }

    async fn read_plan(
        &self,
        group: &str,
        plan: &FetchPlan,
        max_records: u32,
        max_bytes: u64,
    ) -> Result<MemberFetch, GroupError> {
        let mut parts = Vec::new();
        let n = plan.positions.len();
        let mut records_left = max_records;
        let mut bytes_left = max_bytes;
        // Start at a partition picked from the positions: a retry with nothing committed in
        // between reads exactly the same records, and commits rotate the start so a busy
        // partition cannot starve the others when `max_records` is small.
        let start = if n == 0 {
            0
        } else {
            let sum = plan.positions.iter().fold(0u64, |acc, (_, source)| {
                let p = match source {
                    Source::Local(_, p) => Some(*p),
                    Source::Remote(p) => *p,
                };
                acc.wrapping_add(p.map_or(0, |p| p.0))
            });
            (sum % n as u64) as usize
        };
        // The partitions led elsewhere are read at once, side by side (one round trip for all
        // of them), each within its share of the budget, so what the coordinator holds stays
        // near `max_bytes` (plus at most one whole batch each); what the budget leaves no
        // room for is read again next time.
        let remotes = plan
            .positions
            .iter()
            .filter(|(_, s)| matches!(s, Source::Remote(_)))
            .count()
            .max(1);
        let share_records = (max_records / remotes as u32).max(1);
        let share_bytes = (max_bytes / remotes as u64).max(REMOTE_SHARE_BYTES_MIN.min(max_bytes));
        let reads = plan.positions.iter().map(|(tp, source)| async move {
            match source {
                Source::Remote(position) => {
                    let read = RemoteRead {
                        max_records: share_records,
                        max_bytes: share_bytes,
                        ..RemoteRead::offsets(tp, *position, plan.reset)
                    };
                    self.remote_read(group, tp, *position, read).await
                }
                Source::Local(..) => None,
            }
        });
        let mut remote: Vec<Option<Fetched>> = join_all(reads).await;
        let unavailable = plan
            .positions
            .iter()
            .zip(&remote)
            .filter(|((_, source), read)| matches!(source, Source::Remote(_)) && read.is_none())
            .map(|((tp, _), _)| tp.clone())
            .collect();
        for i in 0..n {
            if records_left == 0 || bytes_left == 0 {
                break;
            }
            let at = (start + i) % n;
            let (tp, source) = &plan.positions[at];
            let fetched = match source {
                Source::Local(partition, position) => {
                    match partition.fetch(*position, records_left, bytes_left).await {
                        // Its topic was deleted since the plan: nothing to read there any more.
                        Err(BrokerError::TopicNotFound(_)) => continue,
                        other => other?,
                    }
                }
                Source::Remote(_) => match remote[at].take() {
                    Some(mut fetched) => {
                        fetched.max_records = fetched.max_records.min(records_left);
                        fetched
                    }
                    None => continue,
                },
            };
            let mut count = 0u32;
            let next = fetched.for_each_record(|_| {
                count += 1;
                Ok(())
            })?;
            if count == 0 {
                // Offsets with no record left (compaction emptied them): the group reads on
                // from past them, as a consumer's fetch does, or it would ask for the same
                // empty range forever.
                if next > fetched.from
                    && let Some(g) = self.lock().get_mut(group)
                {
                    g.pin_if_unchanged(tp, plan.stored[at], next);
                }
                continue;
            }
            records_left -= count;
            bytes_left = bytes_left.saturating_sub(fetched.bytes.len() as u64);
            parts.push((tp.clone(), fetched));
        }
        Ok(MemberFetch {
            member: plan.member.clone(),
            parts,
            unavailable,
        })
    }
}

impl GroupCoordinator {
    /// Reads `tp` at its leader (`read`, which does not wait); pins where a `latest` reset
    /// put it. None when it could not be read now (its leader moving, down, or
    /// unreachable): the fetch goes on with the other partitions, and the next one tries
    /// again.
    async fn remote_read(
        &self,
        group: &str,
        tp: &TopicPartition,
        planned: Option<Offset>,
        read: RemoteRead,
    ) -> Option<Fetched> {
        match self.remote()?.read(read).await {
            Ok(answer) => {
                if let Some(g) = self.lock().get_mut(group) {
                    g.pin_remote(tp, planned, answer.fetched.from, answer.reset);
                }
                Some(answer.fetched)
            }
            Err(e) => {
                tracing::debug!(group, topic = %tp.topic, partition = tp.partition.0, error = %e, "a partition read at its leader failed");
                None
            }
        }
    }

    /// Waits until any planned partition has records past its position, the assignment
    /// changes, shutdown begins, or `wait` passes. The partitions read at their leaders are
    /// waited on at each leader, one wait there for all of them ([`wait_at_leader`]).
    async fn wait_for_progress(&self, plan: &FetchPlan, wait: Duration) -> Result<(), GroupError> {
        let broker = &self.broker;
        let slot = broker.wait_slot(WaitKind::LongPoll)?;
        let locals = plan.positions.iter().filter_map(|(_, s)| match s {
            Source::Local(p, position) => Some((&**p, *position)),
            Source::Remote(_) => None,
        });
        let remote_parts: Vec<WaitPart> = plan
            .positions
            .iter()
            .filter_map(|(tp, s)| match s {
                Source::Remote(position) => Some(WaitPart::new(tp, *position)),
                Source::Local(..) => None,
            })
            .collect();
        let deadline = Instant::now() + wait;
        let any_remote = async {
            match self.remote() {
                Some(remote) if !remote_parts.is_empty() => {
                    wait_at_leaders(remote, remote_parts, plan.reset, deadline).await
                }
                _ => std::future::pending().await,
            }
        };
        let mut changes = plan.changes.clone();
        tokio::select! {
            _ = broker.wait_for_any_records(&slot, locals, Some(deadline)) => {}
            _ = changes.changed() => {}
            _ = any_remote => {}
        }
        Ok(())
    }
}

/// How long a member's long-poll waits before it asks a leader again whose wait failed (its
/// leadership moving, its broker down) or ended early (shutting down, a `wait_ms_max` of 0).
const REMOTE_WAIT_RETRY: Duration = Duration::from_millis(200);

/// What became of one wait at a leader.
enum Waited {
    /// A partition there has a record past the group's position.
    Ready,
    /// The deadline passed.
    Out,
    /// The leader could not be asked, or leads some of these no more: they are grouped by
    /// their leaders again.
    Regroup(Vec<WaitPart>),
}

/// Waits at the partitions' leaders, one wait per leader (of at most [`WAIT_PARTS_MAX`]
/// partitions), until one says a partition has a record past the group's position; never
/// returns if none does before `deadline` (the caller's own deadline ends the wait). A wait
/// that failed is grouped again by the leaders the metadata names then, so a failover does
/// not leave the long-poll deaf.
async fn wait_at_leaders(
    remote: &Arc<dyn RemotePartitions>,
    parts: Vec<WaitPart>,
    reset: OffsetReset,
    deadline: Instant,
) {
    let mut waits = FuturesUnordered::new();
    for group in by_leader(parts, |p| remote.leader_of(&p.topic, p.partition)) {
        waits.push(wait_at_leader(remote, group, reset, deadline));
    }
    while let Some(waited) = waits.next().await {
        match waited {
            Waited::Ready => return,
            Waited::Out => {}
            Waited::Regroup(parts) => {
                for group in by_leader(parts, |p| remote.leader_of(&p.topic, p.partition)) {
                    waits.push(wait_at_leader(remote, group, reset, deadline));
                }
            }
        }
    }
    std::future::pending().await
}

/// `parts` grouped by the leader the metadata names for each (those with none together),
/// in groups of at most [`WAIT_PARTS_MAX`].
fn by_leader(
    parts: Vec<WaitPart>,
    leader_of: impl Fn(&WaitPart) -> Option<NodeId>,
) -> Vec<Vec<WaitPart>> {
    let mut groups: BTreeMap<Option<NodeId>, Vec<WaitPart>> = BTreeMap::new();
    for part in parts {
        groups.entry(leader_of(&part)).or_default().push(part);
    }
    let mut out = Vec::new();
    for (_, mut group) in groups {
        while group.len() > WAIT_PARTS_MAX {
            let rest = group.split_off(WAIT_PARTS_MAX);
            out.push(std::mem::replace(&mut group, rest));
        }
        out.push(group);
    }
    out
}

/// Waits at the leader of `parts` (one group of [`by_leader`]). A wait the leader ended (it
/// caps a wait at its `wait_ms_max`) is asked again, at once if it waited, after a pause if it
/// answered early (no busy loop); a failed one is handed back, after a pause, to be grouped
/// again.
async fn wait_at_leader(
    remote: &Arc<dyn RemotePartitions>,
    parts: Vec<WaitPart>,
    reset: OffsetReset,
    deadline: Instant,
) -> Waited {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Waited::Out;
        }
        let wait = RemoteWait {
            parts: parts.clone(),
            reset,
            wait_ms: left.as_millis() as u64,
        };
        let asked = Instant::now();
        match remote.wait(wait).await {
            Ok(true) => return Waited::Ready,
            Ok(false) if asked.elapsed() >= left / 2 => {}
            Ok(false) => tokio::time::sleep(REMOTE_WAIT_RETRY.min(left)).await,
            Err(_) => {
                tokio::time::sleep(REMOTE_WAIT_RETRY.min(left)).await;
                return Waited::Regroup(parts);
            }
        }
    }
}

/// The least share of a fetch's byte budget a partition read at its leader gets.
const REMOTE_SHARE_BYTES_MIN: u64 = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::PartitionId;

    /// Parts are grouped by leader (those with none together), each group cut at
    /// [`WAIT_PARTS_MAX`], nothing lost or repeated.
    #[test]
    fn parts_group_by_leader_in_waits_of_at_most_the_limit() {
        let n = 2 * WAIT_PARTS_MAX as u32 + 52;
        let parts: Vec<WaitPart> = (0..n + 3)
            .map(|p| WaitPart {
                topic: "t".into(),
                partition: PartitionId(p),
                position: None,
            })
            .collect();
        let groups = by_leader(parts, |p| (p.partition.0 < n).then_some(NodeId(7)));
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3, WAIT_PARTS_MAX, WAIT_PARTS_MAX, 52]);
        let mut all: Vec<u32> = groups.iter().flatten().map(|p| p.partition.0).collect();
        all.sort();
        assert_eq!(all, (0..n + 3).collect::<Vec<_>>());
    }
}
