//! The group coordinator: the registry of every group of this node and the calls on it.
//!
//! Failure policy: a call that breaks no rule changes memory only after what it must write
//! (commits, tombstones) is fsynced in `__consumer_offsets`; a failed write changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use super::assignor::TopicPartition;
use super::error::GroupError;
use super::group::{Group, Member, OffsetReset, PartitionCounts};
use super::offsets::{self, OffsetValue};
use super::remote::{RemotePartitions, RemoteRead};
use super::views::{
    CommittedOffset, GroupDescription, GroupSummary, MemberDescription, MemberView, plan_lag,
};
use crate::broker::{
    Broker, BrokerError, Partition, PartitionLocksForbidden, now_ms, validate_topic_name,
};
use crate::coordination::{InternalTopicMaker, LoadId, LoadedFromLog, Residence};
use crate::limits::Limit;
use crate::log::Offset;
use crate::metadata::PartitionId;

/// The locked registry of groups; forbids partition locks while held.
pub(super) struct RegistryGuard<'a> {
    groups: MutexGuard<'a, BTreeMap<String, Group>>,
    _no_partition_locks: PartitionLocksForbidden,
}

impl std::ops::Deref for RegistryGuard<'_> {
    type Target = BTreeMap<String, Group>;
    fn deref(&self) -> &Self::Target {
        &self.groups
    }
}

impl std::ops::DerefMut for RegistryGuard<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.groups
    }
}

/// Session timeout of a member that does not ask for one.
pub const SESSION_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// What a reset moves a group's committed offsets to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    /// The first offset whose timestamp is at or after this time.
    Timestamp(i64),
    /// This offset, which must be inside the readable range.
    Offset(Offset),
}

/// Owns every group of this broker.
#[derive(Debug)]
pub struct GroupCoordinator {
    /// The broker whose topics the groups read and whose `__consumer_offsets` stores commits.
    pub(super) broker: Arc<Broker>,
    /// std mutex: held only for in-memory bookkeeping, never across `.await`.
    groups: Mutex<BTreeMap<String, Group>>,
    /// Randomness for member ids.
    ids: std::collections::hash_map::RandomState,
    /// Counter for member ids.
    sequence: AtomicU64,
    /// Whether the groups are served here: always on a broker alone; on a cluster only by
    /// the leader of `__consumer_offsets` once it replayed it (it also makes the topic, in
    /// the cluster's metadata, the first time a call needs it).
    pub(super) residence: Residence,
    /// On a cluster: partitions this broker holds no replica of, read at their leaders.
    remote: OnceLock<Arc<dyn RemotePartitions>>,
}

impl GroupCoordinator {
    /// A coordinator over `broker`. Alone, with committed offsets replayed from
    /// `__consumer_offsets` at once; on a cluster (`clustered`) empty, serving nothing until
    /// the node tells it this broker leads `__consumer_offsets` ([`Self::lead`]).
    /// Its owner runs [`super::sessions::run_sessions`] beside it.
    pub fn open(broker: Arc<Broker>, clustered: bool) -> Result<GroupCoordinator, BrokerError> {
        let (groups, residence) = if clustered {
            (BTreeMap::new(), Residence::member(offsets::OFFSETS_TOPIC))
        } else {
            (
                replay_groups(&broker)?,
                Residence::alone(offsets::OFFSETS_TOPIC),
            )
        };
        Ok(GroupCoordinator {
            broker,
            groups: Mutex::new(groups),
            ids: std::collections::hash_map::RandomState::new(),
            sequence: AtomicU64::new(0),
            residence,
            remote: OnceLock::new(),
        })
    }

    /// On a cluster: how partitions this broker holds no replica of are counted and read
    /// (at their leaders). Set once, by the node, before any request is served.
    pub fn read_remote_with(&self, remote: Arc<dyn RemotePartitions>) {
        let _ = self.remote.set(remote);
    }

    pub(super) fn remote(&self) -> Option<&Arc<dyn RemotePartitions>> {
        self.remote.get()
    }

    /// The replica of `tp` here that a group reads and checks against: on a cluster only the
    /// partition's leader (a follower's high watermark may trail by a fetch, or restart at
    /// its log start after a restart, and would reset the group's positions); None reads it
    /// at its leader.
    pub(super) fn local_replica(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        let partition = self
            .broker
            .topic(&tp.topic)
            .and_then(|t| t.partition(tp.partition))
            .ok()?;
        (self.remote().is_none() || !partition.is_follower()).then_some(partition)
    }

    /// Whether `topic` exists: here, or in the cluster's metadata (where a replica topic
    /// may hold only some of its partitions here, or none).
    fn check_topic(&self, topic: &str) -> Result<(), GroupError> {
        match self.remote() {
            Some(remote) if remote.partition_count(topic).is_some() => Ok(()),
            Some(_) => Err(BrokerError::TopicNotFound(topic.to_string()).into()),
            None => self.broker.topic(topic).map(|_| ()).map_err(Into::into),
        }
    }

    /// On a cluster: `maker` makes `__consumer_offsets` (in the cluster's metadata) the first
    /// time a call needs it. Set once, by the node, before any request is served.
    pub fn make_offsets_topic_with(&self, maker: InternalTopicMaker) {
        self.residence.make_topic_with(maker);
    }

    /// Waits until the groups are served here (at once on a broker alone): every call first
    /// passes here. 503 `coordinator_loading` while this broker replays `__consumer_offsets`
    /// after taking its lead, `not_coordinator` where it does not lead it.
    pub async fn ready(&self) -> Result<LoadId, GroupError> {
        let missing = match self.broker.topic(offsets::OFFSETS_TOPIC) {
            Ok(_) => None,
            Err(_) => Some(offsets::offsets_topic_config(
                self.broker.config.topic_defaults,
            )),
        };
        Ok(self.residence.ready(missing).await?)
    }

    /// The registry, locked. No partition lock may be taken while it is held (lock order:
    /// partition locks are never waited on under it; debug builds assert).
    pub(super) fn lock(&self) -> RegistryGuard<'_> {
        RegistryGuard {
            groups: self
                .groups
                .lock()
                .expect("the groups registry lock is not poisoned"),
            _no_partition_locks: PartitionLocksForbidden::enter(),
        }
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
        let broker = &self.broker;
        let limits = broker.limits();
        validate_group_name(group)?;
        if topics.is_empty() {
            return Err(GroupError::InvalidRequest(
                "'topics' must name at least one topic".into(),
            ));
        }
        if topics.len() as u64 > u64::from(limits.group_topics_max) {
            return Err(GroupError::LimitExceeded {
                limit_name: Limit::GroupTopicsMax,
                limit: u64::from(limits.group_topics_max),
                detail: format!("a member subscribes to {} topics", topics.len()),
            });
        }
        // A subscription to a topic that does not exist is refused (404), not answered with
        // an empty assignment the client cannot tell from an idle topic.
        for t in topics {
            self.check_topic(t)?;
        }
        let timeout_ms = session_timeout_ms.unwrap_or(SESSION_TIMEOUT_MS_DEFAULT.clamp(
            limits.group_session_timeout_ms_min,
            limits.group_session_timeout_ms_max,
        ));
        if timeout_ms < limits.group_session_timeout_ms_min {
            return Err(GroupError::LimitExceeded {
                limit_name: Limit::GroupSessionTimeoutMsMin,
                limit: limits.group_session_timeout_ms_min,
                detail: format!(
                    "session_timeout_ms must be at least {}",
                    limits.group_session_timeout_ms_min
                ),
            });
        }
        if timeout_ms > limits.group_session_timeout_ms_max {
            return Err(GroupError::LimitExceeded {
                limit_name: Limit::GroupSessionTimeoutMsMax,
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
                limit_name: Limit::GroupsMax,
                limit: u64::from(limits.groups_max),
                detail: format!("the broker already has {} groups", limits.groups_max),
            });
        }
        let g = groups.entry(group.to_string()).or_insert_with(Group::new);
        if g.members.len() as u64 >= u64::from(limits.group_members_max) {
            return Err(GroupError::LimitExceeded {
                limit_name: Limit::GroupMembersMax,
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
        tracing::info!(
            group,
            member = id,
            topics = ?topics,
            session_timeout_ms = timeout_ms,
            "member joined"
        );
        g.rebalance(group, self);
        Ok(g.view(group, &id))
    }

    /// Keeps the member's session alive; answers its current generation and assignment.
    pub fn heartbeat(&self, group: &str, member: &str) -> Result<MemberView, GroupError> {
        let mut groups = self.lock();
        let g = member_group(&mut groups, group, member)?;
        let m = g.members.get_mut(member).expect("checked by member_group");
        m.deadline = Instant::now() + m.session_timeout;
        g.refresh(group, self);
        Ok(g.view(group, member))
    }

    /// Removes the member; the rest of the group rebalances at once.
    pub fn leave(&self, group: &str, member: &str) -> Result<(), GroupError> {
        let mut groups = self.lock();
        let g = member_group(&mut groups, group, member)?;
        g.members.remove(member);
        tracing::info!(group, member, "member left");
        g.rebalance(group, self);
        if g.removable() {
            g.retire_gauges(group);
            groups.remove(group);
        }
        Ok(())
    }

    /// Commits offsets (the next offset to read) durably. `fence` is the member and the
    /// generation its records came from; `None` (no membership) only while the group has
    /// no members.
    pub async fn commit(
        &self,
        group: &str,
        fence: Option<(&str, u32)>,
        offsets: &[(TopicPartition, Offset)],
    ) -> Result<(), GroupError> {
        let broker = &self.broker;
        validate_group_name(group)?;
        let load = self.residence.serving()?;
        self.check_offsets(broker, offsets)?;
        self.check_remote_offsets(offsets).await?;
        for _attempt in 0..3 {
            let lock = self.with_group_for_commit(broker, group, fence.is_none(), |g| {
                g.check_commit(group, fence, offsets)?;
                Ok(Arc::clone(&g.offset_writes))
            })?;
            let _serial = lock.lock().await;
            // The group may have changed while we waited for the lock: check again.
            let same = self.with_group_for_commit(broker, group, fence.is_none(), |g| {
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
            offsets::append(broker, self.residence.maker(), group, &writes).await?;
            if !self.residence.is_current(load) {
                // Durable in the partition this broker led when it wrote: the next leader
                // replays it. Memory here was dropped (or rebuilt by another load).
                return Ok(());
            }
            let mut groups = self.lock();
            let g = groups.entry(group.to_string()).or_insert_with(Group::new);
            for (tp, value) in writes {
                g.pinned.remove(&tp);
                g.committed.insert(tp, value.expect("commits have values"));
            }
            let lag = plan_lag(group, g, self);
            drop(groups);
            lag.publish();
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
        offsets: &[(TopicPartition, Offset)],
    ) -> Result<(), GroupError> {
        let max = broker.limits().group_commit_offsets_max;
        if offsets.is_empty() {
            return Err(GroupError::InvalidRequest(
                "'offsets' must hold at least one offset".into(),
            ));
        }
        if offsets.len() as u64 > u64::from(max) {
            return Err(GroupError::LimitExceeded {
                limit_name: Limit::GroupCommitOffsetsMax,
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
            let partition = match (self.local_replica(tp), self.remote()) {
                (Some(partition), _) => partition,
                // Led elsewhere: it must exist; its range is its leader's
                // (`check_remote_offsets`).
                (None, Some(remote)) => {
                    let count = remote
                        .partition_count(&tp.topic)
                        .ok_or_else(|| BrokerError::TopicNotFound(tp.topic.clone()))?;
                    if tp.partition.0 >= count {
                        return Err(BrokerError::PartitionNotFound {
                            partition: u64::from(tp.partition.0),
                            partitions: count,
                        }
                        .into());
                    }
                    continue;
                }
                (None, None) => return Err(missing(broker, tp)),
            };
            let progress = partition.progress();
            // Up to the log end: a new leader's high watermark may start below what its
            // predecessor acknowledged, and a member commits what it read there.
            if *offset > partition.log_end_offset() {
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

    /// The offsets of partitions led elsewhere, checked against their leaders' log ends
    /// (asked side by side, offsets only), as a local partition's are: a commit past the end
    /// is 416 wherever the partition is led. A leader that cannot be asked now (down, moving)
    /// does not stop the commit: its offset is taken unchecked, as Kafka takes any offset,
    /// and a position past the log end is reset when read.
    async fn check_remote_offsets(
        &self,
        offsets: &[(TopicPartition, Offset)],
    ) -> Result<(), GroupError> {
        let Some(remote) = self.remote() else {
            return Ok(());
        };
        let asks = offsets
            .iter()
            .filter(|(tp, _)| self.local_replica(tp).is_none())
            .map(|(tp, offset)| async move {
                let read = RemoteRead::offsets(tp, Some(*offset), OffsetReset::Earliest);
                (*offset, remote.read(read).await)
            });
        for (offset, answer) in join_all(asks).await {
            let Ok(answer) = answer else { continue };
            if offset > answer.log_end_offset {
                return Err(BrokerError::OffsetOutOfRange {
                    offset,
                    log_start_offset: answer.fetched.log_start_offset,
                    high_watermark: answer.fetched.high_watermark,
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
                    limit_name: Limit::GroupsMax,
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
    ) -> Result<Vec<(TopicPartition, Offset)>, GroupError> {
        let broker = &self.broker;
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
            self.check_topic(name)?;
            for p in 0..self.partition_count(name) {
                let tp = TopicPartition::new(name.clone(), PartitionId(p));
                // Its range, and the offset for a time, here or at its leader.
                let (log_start, high_watermark, at_time) =
                    match (self.local_replica(&tp), self.remote()) {
                        (Some(partition), _) => {
                            let progress = partition.progress();
                            let at_time = match to {
                                ResetTo::Timestamp(ts) => {
                                    Some(partition.offset_for_timestamp(ts).await?)
                                }
                                _ => None,
                            };
                            (progress.log_start_offset, progress.high_watermark, at_time)
                        }
                        (None, Some(remote)) => {
                            let mut read = RemoteRead::offsets(&tp, None, OffsetReset::Earliest);
                            if let ResetTo::Timestamp(ts) = to {
                                read.timestamp_ms = Some(ts);
                            }
                            let answer = remote.read(read).await?;
                            let f = &answer.fetched;
                            let at_time = matches!(to, ResetTo::Timestamp(_)).then_some(f.from);
                            (f.log_start_offset, f.high_watermark, at_time)
                        }
                        (None, None) => return Err(missing(broker, &tp)),
                    };
                let offset = match to {
                    ResetTo::Earliest => log_start,
                    ResetTo::Latest => high_watermark,
                    ResetTo::Timestamp(_) => at_time.unwrap_or(high_watermark),
                    ResetTo::Offset(o) if o < log_start || o > high_watermark => {
                        return Err(BrokerError::OffsetOutOfRange {
                            offset: o,
                            log_start_offset: log_start,
                            high_watermark,
                        }
                        .into());
                    }
                    ResetTo::Offset(o) => o,
                };
                offsets.push((tp, offset));
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
        let broker = &self.broker;
        let load = self.residence.serving()?;
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
        offsets::append(broker, self.residence.maker(), group, &tombstones).await?;
        if !self.residence.is_current(load) {
            return Ok(());
        }
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

    pub async fn describe(&self, group: &str) -> Result<GroupDescription, GroupError> {
        // The registry lock ends with this block, before the lag is read.
        let (mut description, lag) = {
            let mut groups = self.lock();
            let g = groups
                .get_mut(group)
                .ok_or_else(|| GroupError::GroupNotFound(group.to_string()))?;
            g.refresh(group, self);
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
            let description = GroupDescription {
                group: group.to_string(),
                state: g.state(),
                generation: g.generation,
                auto_offset_reset: g.auto_offset_reset,
                rebalances: g.rebalances,
                members,
                partitions: Vec::new(),
            };
            (description, plan_lag(group, g, self))
        };
        description.partitions = lag.publish_all(self.remote()).await;
        Ok(description)
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
}

impl LoadedFromLog for GroupCoordinator {
    fn residence(&self) -> &Residence {
        &self.residence
    }

    /// Every group goes: a new leadership starts from the log, and members join again
    /// wherever the groups are served next.
    fn drop_state(&self) {
        let mut groups = self.lock();
        for (name, g) in groups.iter_mut() {
            g.retire_gauges(name);
        }
        groups.clear();
    }

    fn replay(self: &Arc<Self>) -> Result<Box<dyn FnOnce(LoadId) + Send>, BrokerError> {
        let groups = replay_groups(&self.broker)?;
        let me = Arc::clone(self);
        Ok(Box::new(move |_| {
            tracing::info!(groups = groups.len(), "consumer groups loaded");
            *me.lock() = groups;
        }))
    }
}

/// Every group with committed offsets, replayed from `__consumer_offsets` up to its high
/// watermark (blocking reads).
fn replay_groups(broker: &Broker) -> Result<BTreeMap<String, Group>, BrokerError> {
    let mut groups = BTreeMap::new();
    offsets::replay(broker, |group, tp, value| {
        let g: &mut Group = groups.entry(group).or_insert_with(Group::new);
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
    Ok(groups)
}

pub(super) fn member_group<'a>(
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

/// Group names follow the topic name rule.
pub fn validate_group_name(name: &str) -> Result<(), GroupError> {
    validate_topic_name(name).map_err(|e| match e {
        BrokerError::InvalidTopicName(why) => GroupError::InvalidGroupName(why),
        other => GroupError::Broker(other),
    })
}

/// On a cluster, the metadata's count (this broker may hold some partitions of a topic, or
/// none); alone, the broker's.
impl PartitionCounts for GroupCoordinator {
    fn partition_count(&self, topic: &str) -> u32 {
        match self.remote() {
            Some(remote) => remote.partition_count(topic).unwrap_or(0),
            None => self.broker.partition_count(topic),
        }
    }
}

/// Why a broker alone has no replica of `tp`: its topic or its partition is gone.
fn missing(broker: &Broker, tp: &TopicPartition) -> GroupError {
    match broker
        .topic(&tp.topic)
        .and_then(|t| t.partition(tp.partition))
    {
        Err(e) => e.into(),
        // Made again since the lookup: gone for that moment.
        Ok(_) => BrokerError::TopicNotFound(tp.topic.clone()).into(),
    }
}
