//! The consumer group coordinator: membership, assignment, generations, committed offsets.
//!
//! A plain HTTP client is a full member: the server assigns partitions (sticky, see
//! [`assignor`]), keeps each member's session, and serves records from the group's committed
//! offsets. There is no client-side join protocol: the server rebalances at once when a member
//! joins, leaves, expires, or a subscribed topic gains partitions, bumps the generation, and
//! every member learns its new assignment from its next call (each answer carries it).
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
//!
//! Sessions: every member call is a heartbeat. A background task ([`run_sessions`]) driven
//! by tokio time removes members whose session ran out and rebalances their groups; it also
//! notices partition expansion and refreshes the lag gauges.

pub mod assignor;
pub mod error;
pub mod offsets;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

pub use assignor::{Assignment, TopicPartition};
pub use error::GroupError;
pub use offsets::{OFFSETS_TOPIC, OffsetValue};

use crate::broker::{Broker, BrokerError, Fetched, Partition, now_ms, validate_topic_name};
use crate::metrics as m;

/// Session timeout of a member that does not ask for one.
pub const SESSION_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// The session task wakes at least this often (expansion checks, lag gauges).
const SESSION_TICK: Duration = Duration::from_secs(1);

/// Where a group starts reading a partition it has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// The log start offset: nothing already in the log is skipped.
    #[default]
    Earliest,
    /// The high watermark when the partition is first read; pinned in memory until a commit.
    Latest,
}

/// What a reset moves a group's committed offsets to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    /// The first offset whose timestamp is at or after this time.
    Timestamp(i64),
    /// This offset, which must be inside the readable range.
    Offset(u64),
}

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
    pub partition: u32,
    pub member_id: Option<String>,
    pub committed_offset: Option<u64>,
    /// Where the group reads next: the committed offset, or where `auto_offset_reset` puts it.
    pub position: u64,
    pub log_start_offset: u64,
    pub log_end_offset: u64,
    pub high_watermark: u64,
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
    pub partition: u32,
    pub offset: u64,
    pub committed_at_ms: i64,
}

/// Owns every group of this broker.
#[derive(Debug)]
pub struct GroupCoordinator {
    /// The broker that owns this coordinator (weak: the broker holds us).
    broker: Weak<Broker>,
    /// std mutex: held only for in-memory bookkeeping, never across `.await`.
    groups: Mutex<BTreeMap<String, Group>>,
    /// Randomness for member ids.
    ids: std::collections::hash_map::RandomState,
    /// Counter for member ids.
    sequence: AtomicU64,
}

#[derive(Debug)]
struct Group {
    generation: u32,
    members: BTreeMap<String, Member>,
    /// Who owns each assigned partition and since which generation (commit fencing).
    owners: BTreeMap<TopicPartition, Owner>,
    /// Durable committed offsets (replayed from `__consumer_offsets` on start).
    committed: BTreeMap<TopicPartition, OffsetValue>,
    /// `latest` positions resolved for partitions without a commit; in memory only.
    pinned: BTreeMap<TopicPartition, u64>,
    auto_offset_reset: OffsetReset,
    /// Partition counts of the subscribed topics at the last rebalance (expansion check).
    partition_counts: BTreeMap<String, u32>,
    /// Publishes the generation; long-polling members wake when it moves.
    changes: watch::Sender<u32>,
    /// Serializes this group's offset writes so memory follows the log's order.
    offset_writes: Arc<tokio::sync::Mutex<()>>,
    rebalances: u64,
    /// Partitions with a lag gauge set, so gauges of partitions the group no longer reads
    /// (and of a group that is gone) are zeroed rather than left stale.
    lag_published: BTreeSet<TopicPartition>,
}

#[derive(Debug)]
struct Member {
    topics: BTreeSet<String>,
    session_timeout: Duration,
    /// The session ends here unless the member calls again.
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct Owner {
    member: String,
    since_generation: u32,
}

impl Group {
    fn new() -> Group {
        Group {
            generation: 0,
            members: BTreeMap::new(),
            owners: BTreeMap::new(),
            committed: BTreeMap::new(),
            pinned: BTreeMap::new(),
            auto_offset_reset: OffsetReset::default(),
            partition_counts: BTreeMap::new(),
            changes: watch::Sender::new(0),
            offset_writes: Arc::new(tokio::sync::Mutex::new(())),
            rebalances: 0,
            lag_published: BTreeSet::new(),
        }
    }

    /// Zeroes the gauges of a group that is being removed (series cannot be unregistered).
    fn retire_gauges(&mut self, group: &str) {
        for tp in std::mem::take(&mut self.lag_published) {
            lag_gauge(group, &tp).set(0.0);
        }
        ::metrics::gauge!(m::GROUP_MEMBERS, "group" => group.to_string()).set(0.0);
    }

    fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "empty"
        } else {
            "stable"
        }
    }

    fn assignment_of(&self, member: &str) -> Vec<TopicPartition> {
        self.owners
            .iter()
            .filter(|(_, o)| o.member == member)
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    fn view(&self, group: &str, member: &str) -> MemberView {
        MemberView {
            group: group.to_string(),
            member_id: member.to_string(),
            generation: self.generation,
            session_timeout_ms: self
                .members
                .get(member)
                .map_or(0, |m| m.session_timeout.as_millis() as u64),
            assignment: self.assignment_of(member),
        }
    }

    fn subscribed_counts(&self, broker: &Broker) -> BTreeMap<String, u32> {
        let topics: BTreeSet<&String> = self.members.values().flat_map(|m| &m.topics).collect();
        topics
            .into_iter()
            .map(|t| {
                let n = broker.topic(t).map_or(0, |t| t.partition_count());
                (t.clone(), n)
            })
            .collect()
    }

    /// Reassigns partitions among the current members and starts a new generation.
    fn rebalance(&mut self, group: &str, broker: &Broker) {
        let counts = self.subscribed_counts(broker);
        let subscriptions: BTreeMap<String, BTreeSet<String>> = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.topics.clone()))
            .collect();
        let mut previous = Assignment::new();
        for (tp, owner) in &self.owners {
            previous
                .entry(owner.member.clone())
                .or_default()
                .insert(tp.clone());
        }
        let next = assignor::assign(&subscriptions, &counts, &previous);
        self.generation += 1;
        let mut owners = BTreeMap::new();
        for (member, tps) in next {
            for tp in tps {
                let since = match self.owners.get(&tp) {
                    Some(o) if o.member == member => o.since_generation,
                    _ => self.generation,
                };
                owners.insert(
                    tp,
                    Owner {
                        member: member.clone(),
                        since_generation: since,
                    },
                );
            }
        }
        self.owners = owners;
        self.partition_counts = counts;
        self.rebalances += 1;
        self.changes.send_replace(self.generation);
        ::metrics::counter!(m::GROUP_REBALANCES, "group" => group.to_string()).increment(1);
        ::metrics::gauge!(m::GROUP_MEMBERS, "group" => group.to_string())
            .set(self.members.len() as f64);
    }

    /// Rebalances if a subscribed topic changed its partition count (expansion, deletion).
    fn refresh(&mut self, group: &str, broker: &Broker) {
        if !self.members.is_empty() && self.subscribed_counts(broker) != self.partition_counts {
            self.rebalance(group, broker);
        }
    }

    /// Removes members whose session ended; rebalances if any did.
    fn expire(&mut self, group: &str, broker: &Broker, now: Instant) -> usize {
        let before = self.members.len();
        self.members.retain(|_, m| m.deadline > now);
        let expired = before - self.members.len();
        if expired > 0 {
            self.rebalance(group, broker);
        }
        expired
    }

    /// Where the group reads `tp` next, within the partition's readable range. Below the log
    /// start (retention took it) reads from the log start; past the high watermark (the topic
    /// was deleted and created again) is out of range, and `auto_offset_reset` decides.
    fn position(&mut self, tp: &TopicPartition, partition: &Partition) -> u64 {
        let progress = partition.progress();
        let stored = self
            .committed
            .get(tp)
            .map(|c| c.offset)
            .or(self.pinned.get(tp).copied());
        match stored {
            Some(o) if o <= progress.high_watermark => o.max(progress.log_start_offset),
            _ => match self.auto_offset_reset {
                OffsetReset::Earliest => progress.log_start_offset,
                OffsetReset::Latest => {
                    self.pinned.insert(tp.clone(), progress.high_watermark);
                    progress.high_watermark
                }
            },
        }
    }

    /// Position without pinning (describe must not change what a member will read).
    fn peek_position(&self, tp: &TopicPartition, partition: &Partition) -> u64 {
        let progress = partition.progress();
        let stored = self
            .committed
            .get(tp)
            .map(|c| c.offset)
            .or(self.pinned.get(tp).copied());
        match stored {
            Some(o) if o <= progress.high_watermark => o.max(progress.log_start_offset),
            _ => match self.auto_offset_reset {
                OffsetReset::Earliest => progress.log_start_offset,
                OffsetReset::Latest => progress.high_watermark,
            },
        }
    }

    /// Checks that a commit may proceed; counts as the member's heartbeat.
    fn check_commit(
        &mut self,
        group: &str,
        fence: Option<(&str, u32)>,
        offsets: &[(TopicPartition, u64)],
    ) -> Result<(), GroupError> {
        let Some((member, generation)) = fence else {
            if !self.members.is_empty() {
                return Err(GroupError::GroupNotEmpty {
                    group: group.to_string(),
                    members: self.members.len() as u32,
                });
            }
            return Ok(());
        };
        let Some(m) = self.members.get_mut(member) else {
            return Err(GroupError::MemberNotFound {
                group: group.to_string(),
                member: member.to_string(),
            });
        };
        m.deadline = Instant::now() + m.session_timeout;
        if generation > self.generation {
            return Err(GroupError::StaleGeneration {
                detail: format!(
                    "generation {generation} is newer than the group's {}",
                    self.generation
                ),
                generation: self.generation,
            });
        }
        for (tp, _) in offsets {
            let owned = self
                .owners
                .get(tp)
                .is_some_and(|o| o.member == member && o.since_generation <= generation);
            if !owned {
                return Err(GroupError::StaleGeneration {
                    detail: format!(
                        "member '{member}' has not owned {}/{} since generation {generation} \
                         (the group is at generation {}); it cannot commit it",
                        tp.topic, tp.partition, self.generation
                    ),
                    generation: self.generation,
                });
            }
        }
        Ok(())
    }
}

/// The partitions a fetch reads, and where, taken under the lock.
struct FetchPlan {
    member: MemberView,
    positions: Vec<(TopicPartition, Arc<Partition>, u64)>,
    changes: watch::Receiver<u32>,
}

impl GroupCoordinator {
    /// A coordinator for the broker being built (see `Broker::open`).
    pub fn new(broker: Weak<Broker>) -> GroupCoordinator {
        GroupCoordinator {
            broker,
            groups: Mutex::new(BTreeMap::new()),
            ids: std::collections::hash_map::RandomState::new(),
            sequence: AtomicU64::new(0),
        }
    }

    /// Rebuilds committed offsets from `__consumer_offsets` and starts the session task.
    pub fn start(&self, broker: &Arc<Broker>) -> Result<(), BrokerError> {
        let mut groups = self.lock();
        offsets::replay(broker, |group, tp, value| {
            let g = groups.entry(group).or_insert_with(Group::new);
            match value {
                Some(v) => {
                    g.committed.insert(tp, v);
                }
                None => {
                    g.committed.remove(&tp);
                }
            }
        })?;
        groups.retain(|_, g| !g.committed.is_empty());
        drop(groups);
        tokio::spawn(run_sessions(Arc::downgrade(broker)));
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn broker(&self) -> Result<Arc<Broker>, GroupError> {
        self.broker
            .upgrade()
            .ok_or(GroupError::Broker(BrokerError::ShuttingDown))
    }

    fn new_member_id(&self) -> String {
        let mut h = self.ids.build_hasher();
        h.write_u64(self.sequence.fetch_add(1, Ordering::Relaxed));
        h.write_i64(now_ms());
        format!("member-{:016x}", h.finish())
    }

    /// Adds a member subscribed to `topics`; the group rebalances at once.
    pub fn join(
        &self,
        group: &str,
        topics: &[String],
        session_timeout_ms: Option<u64>,
        auto_offset_reset: Option<OffsetReset>,
    ) -> Result<MemberView, GroupError> {
        let broker = self.broker()?;
        let limits = broker.limits();
        validate_group_name(group)?;
        if topics.is_empty() {
            return Err(GroupError::InvalidRequest(
                "'topics' must name at least one topic".into(),
            ));
        }
        if topics.len() as u64 > u64::from(limits.group_topics_max) {
            return Err(GroupError::LimitExceeded {
                limit_name: "group_topics_max",
                limit: u64::from(limits.group_topics_max),
                detail: format!("a member subscribes to {} topics", topics.len()),
            });
        }
        for t in topics {
            validate_topic_name(t)?;
        }
        let timeout_ms = session_timeout_ms.unwrap_or(SESSION_TIMEOUT_MS_DEFAULT.clamp(
            limits.group_session_timeout_ms_min,
            limits.group_session_timeout_ms_max,
        ));
        if timeout_ms < limits.group_session_timeout_ms_min {
            return Err(GroupError::LimitExceeded {
                limit_name: "group_session_timeout_ms_min",
                limit: limits.group_session_timeout_ms_min,
                detail: format!(
                    "session_timeout_ms must be at least {}",
                    limits.group_session_timeout_ms_min
                ),
            });
        }
        if timeout_ms > limits.group_session_timeout_ms_max {
            return Err(GroupError::LimitExceeded {
                limit_name: "group_session_timeout_ms_max",
                limit: limits.group_session_timeout_ms_max,
                detail: format!(
                    "session_timeout_ms must be at most {}",
                    limits.group_session_timeout_ms_max
                ),
            });
        }
        let mut groups = self.lock();
        if !groups.contains_key(group) && groups.len() as u64 >= u64::from(limits.groups_max) {
            return Err(GroupError::LimitExceeded {
                limit_name: "groups_max",
                limit: u64::from(limits.groups_max),
                detail: format!("the broker already has {} groups", limits.groups_max),
            });
        }
        let g = groups.entry(group.to_string()).or_insert_with(Group::new);
        if g.members.len() as u64 >= u64::from(limits.group_members_max) {
            return Err(GroupError::LimitExceeded {
                limit_name: "group_members_max",
                limit: u64::from(limits.group_members_max),
                detail: format!(
                    "group '{group}' already has {} members",
                    limits.group_members_max
                ),
            });
        }
        if let Some(reset) = auto_offset_reset {
            g.auto_offset_reset = reset;
        }
        let id = self.new_member_id();
        let session_timeout = Duration::from_millis(timeout_ms);
        g.members.insert(
            id.clone(),
            Member {
                topics: topics.iter().cloned().collect(),
                session_timeout,
                deadline: Instant::now() + session_timeout,
            },
        );
        g.rebalance(group, &broker);
        Ok(g.view(group, &id))
    }

    /// Keeps the member's session alive; answers its current generation and assignment.
    pub fn heartbeat(&self, group: &str, member: &str) -> Result<MemberView, GroupError> {
        let broker = self.broker()?;
        let mut groups = self.lock();
        let g = member_group(&mut groups, group, member)?;
        let m = g.members.get_mut(member).expect("checked by member_group");
        m.deadline = Instant::now() + m.session_timeout;
        g.refresh(group, &broker);
        Ok(g.view(group, member))
    }

    /// Removes the member; the rest of the group rebalances at once.
    pub fn leave(&self, group: &str, member: &str) -> Result<(), GroupError> {
        let broker = self.broker()?;
        let mut groups = self.lock();
        let g = member_group(&mut groups, group, member)?;
        g.members.remove(member);
        g.rebalance(group, &broker);
        if g.members.is_empty() && g.committed.is_empty() {
            g.retire_gauges(group);
            groups.remove(group);
        }
        Ok(())
    }

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
        let broker = self.broker()?;
        let plan = self.plan_fetch(&broker, group, member)?;
        let first = self.read_plan(&plan, max_records, max_bytes)?;
        if !first.parts.is_empty() || wait.is_zero() {
            return Ok(first);
        }
        // A long-poll in flight keeps the session alive until it ends.
        self.extend_session(group, member, wait)?;
        wait_for_progress(&broker, &plan, wait).await;
        let plan = self.plan_fetch(&broker, group, member)?;
        self.read_plan(&plan, max_records, max_bytes)
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
                .and_then(|t| t.partition(u64::from(tp.partition)))
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

    fn read_plan(
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
                .fold(0u64, |acc, (_, _, p)| acc.wrapping_add(*p));
            (sum % n as u64) as usize
        };
        for i in 0..n {
            if records_left == 0 || bytes_left == 0 {
                break;
            }
            let (tp, partition, position) = &plan.positions[(start + i) % n];
            let fetched = partition.fetch(*position, records_left, bytes_left)?;
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

    /// Commits offsets (the next offset to read) durably. `fence` is the member and the
    /// generation its records came from; `None` (no membership) only while the group has
    /// no members.
    pub async fn commit(
        &self,
        group: &str,
        fence: Option<(&str, u32)>,
        offsets: &[(TopicPartition, u64)],
    ) -> Result<(), GroupError> {
        let broker = self.broker()?;
        validate_group_name(group)?;
        self.check_offsets(&broker, offsets)?;
        for _attempt in 0..3 {
            let lock = self.with_group_for_commit(&broker, group, fence.is_none(), |g| {
                g.check_commit(group, fence, offsets)?;
                Ok(Arc::clone(&g.offset_writes))
            })?;
            let _serial = lock.lock().await;
            // The group may have changed while we waited for the lock: check again.
            let same = self.with_group_for_commit(&broker, group, fence.is_none(), |g| {
                g.check_commit(group, fence, offsets)?;
                Ok(Arc::ptr_eq(&g.offset_writes, &lock))
            })?;
            if !same {
                continue;
            }
            let now = now_ms();
            let writes: Vec<offsets::OffsetWrite> = offsets
                .iter()
                .map(|(tp, offset)| {
                    let value = OffsetValue {
                        offset: *offset,
                        committed_at_ms: now,
                        member_id: fence.map(|(m, _)| m.to_string()),
                        generation: fence.map(|(_, g)| g),
                    };
                    (tp.clone(), Some(value))
                })
                .collect();
            offsets::append(&broker, group, &writes).await?;
            let mut groups = self.lock();
            let g = groups.entry(group.to_string()).or_insert_with(Group::new);
            for (tp, value) in writes {
                g.pinned.remove(&tp);
                g.committed.insert(tp, value.expect("commits have values"));
            }
            publish_lag(group, g, &broker);
            return Ok(());
        }
        Err(GroupError::Conflict(format!(
            "group '{group}' was deleted or recreated during the commit; retry"
        )))
    }

    /// Every committed partition exists and every offset is at most its high watermark.
    fn check_offsets(
        &self,
        broker: &Broker,
        offsets: &[(TopicPartition, u64)],
    ) -> Result<(), GroupError> {
        let max = broker.limits().group_commit_offsets_max;
        if offsets.is_empty() {
            return Err(GroupError::InvalidRequest(
                "'offsets' must hold at least one offset".into(),
            ));
        }
        if offsets.len() as u64 > u64::from(max) {
            return Err(GroupError::LimitExceeded {
                limit_name: "group_commit_offsets_max",
                limit: u64::from(max),
                detail: format!("{} offsets in one commit", offsets.len()),
            });
        }
        let distinct: BTreeSet<&TopicPartition> = offsets.iter().map(|(tp, _)| tp).collect();
        if distinct.len() != offsets.len() {
            return Err(GroupError::InvalidRequest(
                "a partition appears twice in one commit".into(),
            ));
        }
        for (tp, offset) in offsets {
            let partition = broker
                .topic(&tp.topic)?
                .partition(u64::from(tp.partition))?;
            let progress = partition.progress();
            if *offset > progress.high_watermark {
                return Err(BrokerError::OffsetOutOfRange {
                    offset: *offset,
                    log_start_offset: progress.log_start_offset,
                    high_watermark: progress.high_watermark,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Runs `f` on the group under the lock; creates it (within `groups_max`) if `create`.
    fn with_group_for_commit<T>(
        &self,
        broker: &Broker,
        group: &str,
        create: bool,
        f: impl FnOnce(&mut Group) -> Result<T, GroupError>,
    ) -> Result<T, GroupError> {
        let mut groups = self.lock();
        if !groups.contains_key(group) {
            if !create {
                return Err(GroupError::GroupNotFound(group.to_string()));
            }
            let max = broker.limits().groups_max;
            if groups.len() as u64 >= u64::from(max) {
                return Err(GroupError::LimitExceeded {
                    limit_name: "groups_max",
                    limit: u64::from(max),
                    detail: format!("the broker already has {max} groups"),
                });
            }
            groups.insert(group.to_string(), Group::new());
        }
        f(groups.get_mut(group).expect("present"))
    }

    /// The group's committed offsets.
    pub fn committed(&self, group: &str) -> Result<Vec<CommittedOffset>, GroupError> {
        let groups = self.lock();
        let g = groups
            .get(group)
            .ok_or_else(|| GroupError::GroupNotFound(group.to_string()))?;
        Ok(g.committed
            .iter()
            .map(|(tp, v)| CommittedOffset {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: v.offset,
                committed_at_ms: v.committed_at_ms,
            })
            .collect())
    }

    /// Moves the committed offsets of an empty group. `topics`: all partitions of these
    /// topics; `None` means the topics the group has committed offsets for.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topics: Option<&[String]>,
        to: ResetTo,
    ) -> Result<Vec<(TopicPartition, u64)>, GroupError> {
        let broker = self.broker()?;
        validate_group_name(group)?;
        let topics: Vec<String> = match topics {
            Some(t) if !t.is_empty() => t.to_vec(),
            _ => {
                let groups = self.lock();
                let g = groups
                    .get(group)
                    .ok_or_else(|| GroupError::GroupNotFound(group.to_string()))?;
                let set: BTreeSet<String> = g.committed.keys().map(|tp| tp.topic.clone()).collect();
                set.into_iter().collect()
            }
        };
        let mut offsets = Vec::new();
        for name in &topics {
            let topic = broker.topic(name)?;
            for partition in topic.partitions() {
                let progress = partition.progress();
                let offset = match to {
                    ResetTo::Earliest => progress.log_start_offset,
                    ResetTo::Latest => progress.high_watermark,
                    ResetTo::Timestamp(ts) => partition.offset_for_timestamp(ts)?,
                    ResetTo::Offset(o)
                        if o < progress.log_start_offset || o > progress.high_watermark =>
                    {
                        return Err(BrokerError::OffsetOutOfRange {
                            offset: o,
                            log_start_offset: progress.log_start_offset,
                            high_watermark: progress.high_watermark,
                        }
                        .into());
                    }
                    ResetTo::Offset(o) => o,
                };
                offsets.push((TopicPartition::new(name.clone(), partition.id), offset));
            }
        }
        if offsets.is_empty() {
            return Err(GroupError::InvalidRequest(
                "no partitions to reset: name the topics".into(),
            ));
        }
        for chunk in offsets.chunks(broker.limits().group_commit_offsets_max.max(1) as usize) {
            self.commit(group, None, chunk).await?;
        }
        Ok(offsets)
    }

    /// Deletes a group without members, and its committed offsets (tombstones, fsynced).
    pub async fn delete_group(&self, group: &str) -> Result<(), GroupError> {
        let broker = self.broker()?;
        let lock = {
            let groups = self.lock();
            let g = groups
                .get(group)
                .ok_or_else(|| GroupError::GroupNotFound(group.to_string()))?;
            Arc::clone(&g.offset_writes)
        };
        let _serial = lock.lock().await;
        let tombstones: Vec<offsets::OffsetWrite> = {
            let groups = self.lock();
            let g = groups
                .get(group)
                .filter(|g| Arc::ptr_eq(&g.offset_writes, &lock))
                .ok_or_else(|| GroupError::GroupNotFound(group.to_string()))?;
            if !g.members.is_empty() {
                return Err(GroupError::GroupNotEmpty {
                    group: group.to_string(),
                    members: g.members.len() as u32,
                });
            }
            g.committed.keys().map(|tp| (tp.clone(), None)).collect()
        };
        offsets::append(&broker, group, &tombstones).await?;
        let mut groups = self.lock();
        // A member may have joined while the tombstones were written: keep the group then.
        if let Some(g) = groups.get_mut(group) {
            g.committed.clear();
            g.pinned.clear();
            if g.members.is_empty() {
                g.retire_gauges(group);
                groups.remove(group);
            }
        }
        Ok(())
    }

    pub fn describe(&self, group: &str) -> Result<GroupDescription, GroupError> {
        let broker = self.broker()?;
        let mut groups = self.lock();
        let g = groups
            .get_mut(group)
            .ok_or_else(|| GroupError::GroupNotFound(group.to_string()))?;
        g.refresh(group, &broker);
        let now = Instant::now();
        let members = g
            .members
            .iter()
            .map(|(id, m)| MemberDescription {
                member_id: id.clone(),
                topics: m.topics.iter().cloned().collect(),
                session_timeout_ms: m.session_timeout.as_millis() as u64,
                expires_in_ms: m.deadline.saturating_duration_since(now).as_millis() as u64,
                assignment: g.assignment_of(id),
            })
            .collect();
        Ok(GroupDescription {
            group: group.to_string(),
            state: g.state(),
            generation: g.generation,
            auto_offset_reset: g.auto_offset_reset,
            rebalances: g.rebalances,
            members,
            partitions: publish_lag(group, g, &broker),
        })
    }

    pub fn list(&self) -> Vec<GroupSummary> {
        self.lock()
            .iter()
            .map(|(name, g)| GroupSummary {
                group: name.clone(),
                state: g.state(),
                generation: g.generation,
                members: g.members.len() as u32,
                committed_partitions: g.committed.len() as u32,
            })
            .collect()
    }

    /// One pass of the session task: expires members, notices expansions, refreshes lag.
    /// Returns the earliest session deadline left.
    pub fn tick(&self, broker: &Broker, now: Instant, publish: bool) -> Option<Instant> {
        let mut groups = self.lock();
        let mut emptied = Vec::new();
        for (name, g) in groups.iter_mut() {
            if g.members.is_empty() {
                continue;
            }
            g.expire(name, broker, now);
            g.refresh(name, broker);
            if g.members.is_empty() && g.committed.is_empty() {
                emptied.push(name.clone());
            } else if publish {
                publish_lag(name, g, broker);
            }
        }
        for name in emptied {
            if let Some(mut g) = groups.remove(&name) {
                g.retire_gauges(&name);
            }
        }
        groups
            .values()
            .flat_map(|g| g.members.values().map(|m| m.deadline))
            .min()
    }
}

/// The session task: wakes at the earliest deadline (at least every [`SESSION_TICK`]) and
/// expires members. Ends at shutdown or when the broker is gone. Driven by tokio time, so
/// tests run it with paused time.
pub async fn run_sessions(broker: Weak<Broker>) {
    let Some(mut shutdown) = broker.upgrade().map(|b| b.shutdown_signal()) else {
        return;
    };
    let mut ticks = 0u64;
    loop {
        let next = {
            let Some(broker) = broker.upgrade() else {
                return;
            };
            ticks += 1;
            // Lag gauges every fifth tick: they are for dashboards, not for control.
            broker
                .groups
                .tick(&broker, Instant::now(), ticks.is_multiple_of(5))
        };
        let cap = Instant::now() + SESSION_TICK;
        let wake = next.map_or(cap, |d| d.min(cap));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Waits until any planned partition has records past its position, the assignment
/// changes, shutdown begins, or `wait` passes.
async fn wait_for_progress(broker: &Broker, plan: &FetchPlan, wait: Duration) {
    let waits: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = plan
        .positions
        .iter()
        .map(|(_, partition, position)| {
            let mut rx = partition.subscribe();
            let position = *position;
            Box::pin(async move {
                let _ = rx.wait_for(|p| p.high_watermark > position).await;
            }) as Pin<Box<dyn Future<Output = ()> + Send>>
        })
        .collect();
    let any_progress = async move {
        if waits.is_empty() {
            std::future::pending::<()>().await;
        } else {
            futures_util::future::select_all(waits).await;
        }
    };
    let mut changes = plan.changes.clone();
    let mut shutdown = broker.shutdown_signal();
    ::metrics::gauge!(m::LONG_POLLS_WAITING).increment(1.0);
    tokio::select! {
        _ = any_progress => {}
        _ = changes.changed() => {}
        _ = shutdown.wait_for(|s| *s) => {}
        _ = tokio::time::sleep(wait) => {}
    }
    ::metrics::gauge!(m::LONG_POLLS_WAITING).decrement(1.0);
}

fn member_group<'a>(
    groups: &'a mut BTreeMap<String, Group>,
    group: &str,
    member: &str,
) -> Result<&'a mut Group, GroupError> {
    match groups.get_mut(group) {
        Some(g) if g.members.contains_key(member) => Ok(g),
        _ => Err(GroupError::MemberNotFound {
            group: group.to_string(),
            member: member.to_string(),
        }),
    }
}

/// Lag of every partition the group owns or has committed; also sets the lag gauges.
fn publish_lag(group: &str, g: &mut Group, broker: &Broker) -> Vec<PartitionLag> {
    let tps: BTreeSet<TopicPartition> =
        g.owners.keys().chain(g.committed.keys()).cloned().collect();
    for gone in g.lag_published.difference(&tps) {
        lag_gauge(group, gone).set(0.0);
    }
    g.lag_published = tps.clone();
    let mut out = Vec::with_capacity(tps.len());
    for tp in tps {
        let Ok(partition) = broker
            .topic(&tp.topic)
            .and_then(|t| t.partition(u64::from(tp.partition)))
        else {
            continue;
        };
        let stats = partition.stats();
        let position = g.peek_position(&tp, &partition);
        let lag = stats.high_watermark.saturating_sub(position);
        lag_gauge(group, &tp).set(lag as f64);
        out.push(PartitionLag {
            member_id: g.owners.get(&tp).map(|o| o.member.clone()),
            committed_offset: g.committed.get(&tp).map(|v| v.offset),
            position,
            log_start_offset: stats.log_start_offset,
            log_end_offset: stats.log_end_offset,
            high_watermark: stats.high_watermark,
            lag,
            topic: tp.topic,
            partition: tp.partition,
        });
    }
    out
}

fn lag_gauge(group: &str, tp: &TopicPartition) -> ::metrics::Gauge {
    ::metrics::gauge!(
        m::GROUP_LAG,
        "group" => group.to_string(),
        "topic" => tp.topic.clone(),
        "partition" => tp.partition.to_string()
    )
}

/// Group names follow the topic name rule.
pub fn validate_group_name(name: &str) -> Result<(), GroupError> {
    validate_topic_name(name).map_err(|e| match e {
        BrokerError::InvalidTopicName(why) => GroupError::InvalidGroupName(why),
        other => GroupError::Broker(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;

    async fn open_broker(dir: &std::path::Path, topic: &str, partitions: u32) -> Arc<Broker> {
        let config = BrokerConfig {
            data_dir: dir.to_path_buf(),
            ..BrokerConfig::default()
        };
        let broker = Broker::open(config).await.expect("broker opens");
        if broker.topic(topic).is_err() {
            broker
                .create_topic(topic, partitions, Default::default(), false)
                .await
                .expect("topic created");
        }
        broker
    }

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Every partition of `t` (with `n` partitions) is owned by exactly one of `views`,
    /// and all views are of one generation.
    fn assert_exactly_once(views: &[MemberView], n: u32) {
        let generation = views[0].generation;
        let mut seen = BTreeSet::new();
        for v in views {
            assert_eq!(v.generation, generation, "one generation");
            for tp in &v.assignment {
                assert!(seen.insert(tp.clone()), "{tp:?} owned twice");
            }
        }
        let all: BTreeSet<TopicPartition> = (0..n).map(|p| TopicPartition::new("t", p)).collect();
        assert_eq!(seen, all);
    }

    /// Joins group `g` subscribed to topic `t` with the given session timeout.
    fn join_t(broker: &Broker, session_timeout_ms: u64) -> MemberView {
        broker
            .groups
            .join("g", &topics(&["t"]), Some(session_timeout_ms), None)
            .unwrap()
    }

    fn heartbeat_all(broker: &Broker, ids: &[&str]) -> Vec<MemberView> {
        ids.iter()
            .map(|id| broker.groups.heartbeat("g", id).expect("alive"))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn three_members_own_every_partition_once_and_a_leaver_hands_its_own_over() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open_broker(dir.path(), "t", 7).await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            let v = join_t(&broker, 10_000);
            ids.push(v.member_id);
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let before = heartbeat_all(&broker, &ids);
        assert_exactly_once(&before, 7);
        assert_eq!(before[0].generation, 3);
        for v in &before {
            assert!((2..=3).contains(&v.assignment.len()), "balanced: {v:?}");
        }

        broker.groups.leave("g", ids[1]).unwrap();
        assert!(matches!(
            broker.groups.heartbeat("g", ids[1]),
            Err(GroupError::MemberNotFound { .. })
        ));
        let after = heartbeat_all(&broker, &[ids[0], ids[2]]);
        assert_exactly_once(&after, 7);
        assert_eq!(after[0].generation, 4);
        // Sticky: the survivors kept what they had; only the leaver's partitions moved.
        for (b, a) in [(&before[0], &after[0]), (&before[2], &after[1])] {
            for tp in &b.assignment {
                assert!(
                    a.assignment.contains(tp),
                    "{tp:?} stayed with {}",
                    a.member_id
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_member_is_removed_after_its_session_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open_broker(dir.path(), "t", 4).await;
        let silent = join_t(&broker, 3_000);
        let live = join_t(&broker, 3_000);
        assert_eq!(live.assignment.len(), 2);
        // The live member heartbeats every second; the silent one never calls again.
        for second in 1..=2 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            broker.groups.heartbeat("g", &live.member_id).unwrap();
            let d = broker.groups.describe("g").unwrap();
            assert_eq!(d.members.len(), 2, "still inside the session at {second}s");
        }
        // Past the 3 s session (and the task's 1 s tick), the silent member is gone.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            broker.groups.heartbeat("g", &live.member_id).unwrap();
        }
        assert!(matches!(
            broker.groups.heartbeat("g", &silent.member_id),
            Err(GroupError::MemberNotFound { .. })
        ));
        let v = broker.groups.heartbeat("g", &live.member_id).unwrap();
        assert_eq!(
            v.assignment.len(),
            4,
            "the live member took every partition"
        );
        assert!(v.generation > live.generation);
        // Expiry is driven by the session task, not by the heartbeat: a group whose only
        // member goes silent is emptied too.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(matches!(
            broker.groups.describe("g"),
            Err(GroupError::GroupNotFound(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_longer_than_the_session_keeps_the_member_alive() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open_broker(dir.path(), "t", 2).await;
        let v = join_t(&broker, 2_000);
        let fetched = broker
            .groups
            .fetch("g", &v.member_id, 10, 1 << 20, Duration::from_secs(20))
            .await
            .unwrap();
        assert!(fetched.parts.is_empty(), "nothing was produced");
        // 20 s passed in the poll, ten sessions; the member is still there, and then
        // expires once it goes silent.
        broker.groups.heartbeat("g", &v.member_id).unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(matches!(
            broker.groups.heartbeat("g", &v.member_id),
            Err(GroupError::MemberNotFound { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn commits_are_fenced_by_the_generation_a_partition_was_owned_since() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open_broker(dir.path(), "t", 2).await;
        let a = join_t(&broker, 10_000);
        assert_eq!(a.assignment.len(), 2);
        let b = join_t(&broker, 10_000);
        let lost = b.assignment[0].clone();
        let kept = broker
            .groups
            .heartbeat("g", &a.member_id)
            .unwrap()
            .assignment[0]
            .clone();
        let mut groups = broker.groups.lock();
        let g = groups.get_mut("g").unwrap();
        // a lost `lost` in generation 2: its generation-1 commit of it is refused.
        let refused = g.check_commit("g", Some((&a.member_id, a.generation)), &[(lost, 0)]);
        assert!(
            matches!(
                refused,
                Err(GroupError::StaleGeneration { generation: 2, .. })
            ),
            "{refused:?}"
        );
        // a kept `kept` through the rebalance: its generation-1 commit of it stands.
        g.check_commit(
            "g",
            Some((&a.member_id, a.generation)),
            &[(kept.clone(), 0)],
        )
        .unwrap();
        // A generation from the future is refused; so is a commit without membership.
        assert!(matches!(
            g.check_commit("g", Some((&a.member_id, 9)), &[(kept.clone(), 0)]),
            Err(GroupError::StaleGeneration { .. })
        ));
        assert!(matches!(
            g.check_commit("g", None, &[(kept, 0)]),
            Err(GroupError::GroupNotEmpty { members: 2, .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn partition_expansion_rebalances_the_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open_broker(dir.path(), "t", 2).await;
        let a = join_t(&broker, 10_000);
        let b = join_t(&broker, 10_000);
        broker.expand_partitions("t", 6).await.unwrap();
        let views = heartbeat_all(&broker, &[&a.member_id, &b.member_id]);
        assert_exactly_once(&views, 6);
        assert!(views[0].generation > b.generation);
    }

    #[tokio::test(start_paused = true)]
    async fn a_committed_offset_past_the_end_falls_back_to_the_reset_policy() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open_broker(dir.path(), "t", 1).await;
        let partition = broker.topic("t").unwrap().partition(0).unwrap();
        let tp = TopicPartition::new("t", 0);
        let mut g = Group::new();
        // As after the topic was deleted and created again: the commit is past the end.
        g.committed.insert(
            tp.clone(),
            OffsetValue {
                offset: 500,
                committed_at_ms: 0,
                member_id: None,
                generation: None,
            },
        );
        assert_eq!(g.position(&tp, &partition), 0, "earliest: nothing skipped");
        g.committed.get_mut(&tp).unwrap().offset = 0;
        assert_eq!(g.position(&tp, &partition), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_leave_memory_equal_to_what_a_replay_of_the_log_gives() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open_broker(dir.path(), "t", 1).await;
        let value = b"1";
        let records = vec![
            crate::broker::ProduceRecord {
                partition: Some(0),
                record: crate::log::batch::RecordRef {
                    timestamp_ms: 1,
                    key: None,
                    key_is_utf8: false,
                    value: Some(value),
                    value_is_json: true,
                    headers: &[],
                },
            };
            64
        ];
        let topic = broker.topic("t").unwrap();
        broker
            .produce(
                &topic,
                &records,
                crate::broker::Acks::All,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let tp = TopicPartition::new("t", 0);
        let commits: Vec<_> = (1..=64u64)
            .map(|offset| {
                let broker = Arc::clone(&broker);
                let tp = tp.clone();
                tokio::spawn(async move { broker.groups.commit("g", None, &[(tp, offset)]).await })
            })
            .collect();
        for c in commits {
            c.await.unwrap().unwrap();
        }
        let in_memory = broker.groups.committed("g").unwrap()[0].offset;
        broker.close().await.unwrap();
        drop(broker);
        let broker = open_broker(dir.path(), "t", 1).await;
        let replayed = broker.groups.committed("g").unwrap()[0].offset;
        assert_eq!(in_memory, replayed, "memory follows the log's order");
    }

    #[tokio::test]
    async fn committed_offsets_survive_reopening_the_broker() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open_broker(dir.path(), "t", 2).await;
        let records = [crate::broker::ProduceRecord {
            partition: Some(1),
            record: crate::log::batch::RecordRef {
                timestamp_ms: 1,
                key: None,
                key_is_utf8: false,
                value: Some(b"1"),
                value_is_json: true,
                headers: &[],
            },
        }; 5];
        let topic = broker.topic("t").unwrap();
        broker
            .produce(
                &topic,
                &records,
                crate::broker::Acks::All,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let tp = TopicPartition::new("t", 1);
        broker
            .groups
            .commit("g", None, &[(tp.clone(), 3)])
            .await
            .unwrap();
        broker
            .groups
            .commit("g", None, &[(tp.clone(), 5)])
            .await
            .unwrap();
        broker
            .groups
            .commit("gone", None, &[(tp.clone(), 2)])
            .await
            .unwrap();
        broker.groups.delete_group("gone").await.unwrap();
        // Past the high watermark is refused.
        assert!(matches!(
            broker.groups.commit("g", None, &[(tp.clone(), 6)]).await,
            Err(GroupError::Broker(BrokerError::OffsetOutOfRange { .. }))
        ));
        broker.close().await.unwrap();
        drop(broker);

        let broker = open_broker(dir.path(), "t", 2).await;
        let committed = broker.groups.committed("g").unwrap();
        assert_eq!(committed.len(), 1);
        assert_eq!((committed[0].partition, committed[0].offset), (1, 5));
        assert!(matches!(
            broker.groups.committed("gone"),
            Err(GroupError::GroupNotFound(_))
        ));
        let d = broker.groups.describe("g").unwrap();
        assert_eq!(d.state, "empty");
        assert_eq!(d.partitions[0].lag, 0);
    }
}
