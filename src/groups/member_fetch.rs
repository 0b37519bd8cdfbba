//! Reading records for a member: plan the positions under the registry lock, read and wait
//! outside it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::assignor::TopicPartition;
use super::coordinator::{GroupCoordinator, member_group};
use super::error::GroupError;
use super::views::{MemberFetch, MemberView};
use crate::broker::{Broker, BrokerError, Partition, WaitKind};
use crate::log::Offset;

/// The partitions a fetch reads, and where, taken under the lock.
struct FetchPlan {
    member: MemberView,
    positions: Vec<(TopicPartition, Arc<Partition>, Offset)>,
    changes: watch::Receiver<u32>,
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
        let broker = &self.broker;
        let plan = self.plan_fetch(broker, group, member)?;
        let first = self.read_plan(&plan, max_records, max_bytes).await?;
        if !first.parts.is_empty() || wait.is_zero() {
            return Ok(first);
        }
        // A long-poll in flight keeps the session alive until it ends.
        self.extend_session(group, member, wait)?;
        wait_for_progress(broker, &plan, wait).await?;
        let plan = self.plan_fetch(broker, group, member)?;
        self.read_plan(&plan, max_records, max_bytes).await
    }

    fn extend_session(&self, group: &str, member: &str, by: Duration) -> Result<(), GroupError> {
        let mut groups = self.lock();
        let g = member_group(&mut groups, group, member)?;
        let m = g.members.get_mut(member).expect("checked by member_group");
        m.deadline = Instant::now() + m.session_timeout + by;
        Ok(())
    }

    fn plan_fetch(
        &self,
        broker: &Broker,
        group: &str,
        member: &str,
    ) -> Result<FetchPlan, GroupError> {
        let mut groups = self.lock();
        let g = member_group(&mut groups, group, member)?;
        let m = g.members.get_mut(member).expect("checked by member_group");
        m.deadline = Instant::now() + m.session_timeout;
        g.refresh(group, broker);
        let view = g.view(group, member);
        let mut positions = Vec::with_capacity(view.assignment.len());
        for tp in &view.assignment {
            let Ok(partition) = broker
                .topic(&tp.topic)
                .and_then(|t| t.partition(tp.partition))
            else {
                continue;
            };
            let position = g.position(tp, &partition);
            positions.push((tp.clone(), partition, position));
        }
        Ok(FetchPlan {
            member: view,
            positions,
            changes: g.changes.subscribe(),
        })
    }

    async fn read_plan(
        &self,
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
            let sum = plan
                .positions
                .iter()
                .fold(0u64, |acc, (_, _, p)| acc.wrapping_add(p.0));
            (sum % n as u64) as usize
        };
        for i in 0..n {
            if records_left == 0 || bytes_left == 0 {
                break;
            }
            let (tp, partition, position) = &plan.positions[(start + i) % n];
            let fetched = match partition.fetch(*position, records_left, bytes_left).await {
                // Its topic was deleted since the plan: nothing to read there any more.
                Err(BrokerError::TopicNotFound(_)) => continue,
                other => other?,
            };
            let mut count = 0u32;
            fetched.for_each_record(|_| {
                count += 1;
                Ok(())
            })?;
            if count == 0 {
                continue;
            }
            records_left -= count;
            bytes_left = bytes_left.saturating_sub(fetched.bytes.len() as u64);
            parts.push((tp.clone(), fetched));
        }
        Ok(MemberFetch {
            member: plan.member.clone(),
            parts,
        })
    }
}

/// Waits until any planned partition has records past its position, the assignment
/// changes, shutdown begins, or `wait` passes.
async fn wait_for_progress(
    broker: &Broker,
    plan: &FetchPlan,
    wait: Duration,
) -> Result<(), GroupError> {
    let slot = broker.wait_slot(WaitKind::LongPoll)?;
    let targets = plan
        .positions
        .iter()
        .map(|(_, p, position)| (&**p, *position));
    let mut changes = plan.changes.clone();
    tokio::select! {
        _ = broker.wait_for_any_records(&slot, targets, Some(Instant::now() + wait)) => {}
        _ = changes.changed() => {}
    }
    Ok(())
}
