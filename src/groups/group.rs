//! One group's state machine: its members, who owns which partition since which generation,
//! committed and pinned positions, and the rebalance that starts each generation.
//!
//! Pure bookkeeping under the coordinator's registry lock: nothing here awaits, and nothing
//! here takes a partition's lock (positions read the partition's published progress only).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::assignor::{self, Assignment, TopicPartition};
use super::error::GroupError;
use super::offsets::OffsetValue;
use super::remote::resolve;
use super::views::{MemberView, lag_gauge};
use crate::broker::{Broker, Partition};
use crate::log::Offset;
use crate::metrics as m;

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

#[derive(Debug)]
pub(super) struct Group {
    pub(super) generation: u32,
    pub(super) members: BTreeMap<String, Member>,
    /// Who owns each assigned partition and since which generation (commit fencing).
    pub(super) owners: BTreeMap<TopicPartition, Owner>,
    /// Durable committed offsets (replayed from `__consumer_offsets` on start).
    pub(super) committed: BTreeMap<TopicPartition, OffsetValue>,
    /// `latest` positions resolved for partitions without a commit in range, and positions
    /// past ranges compaction emptied; in memory only, cleared by a commit.
    pub(super) pinned: BTreeMap<TopicPartition, Offset>,
    pub(super) auto_offset_reset: OffsetReset,
    /// Partition counts of the subscribed topics at the last rebalance (expansion check).
    pub(super) partition_counts: BTreeMap<String, u32>,
    /// Publishes the generation; long-polling members wake when it moves.
    pub(super) changes: watch::Sender<u32>,
    /// Serializes this group's offset writes so memory follows the log's order.
    pub(super) offset_writes: Arc<tokio::sync::Mutex<()>>,
    pub(super) rebalances: u64,
    /// Partitions with a lag gauge set, so gauges of partitions the group no longer reads
    /// (and of a group that is gone) are zeroed rather than left stale.
    pub(super) lag_published: BTreeSet<TopicPartition>,
}

#[derive(Debug)]
pub(super) struct Member {
    pub(super) topics: BTreeSet<String>,
    pub(super) session_timeout: Duration,
    /// The session ends here unless the member calls again.
    pub(super) deadline: Instant,
}

#[derive(Debug, Clone)]
pub(super) struct Owner {
    pub(super) member: String,
    pub(super) since_generation: u32,
}

impl Group {
    pub(super) fn new() -> Group {
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

    /// Whether the registry may drop the group: no member, no commit, and no commit in
    /// flight. A commit holds a clone of `offset_writes` from its first check to its memory
    /// update; a group dropped meanwhile would take that commit into a new instance of the
    /// group, outside the new instance's `offset_writes`, so memory could end in another
    /// order than the log.
    pub(super) fn removable(&self) -> bool {
        self.members.is_empty()
            && self.committed.is_empty()
            && Arc::strong_count(&self.offset_writes) == 1
    }

    /// Zeroes the gauges of a group that is being removed; with no more updates, its series
    /// leave `/metrics` after the idle timeout.
    pub(super) fn retire_gauges(&mut self, group: &str) {
        for tp in std::mem::take(&mut self.lag_published) {
            lag_gauge(group, &tp).set(0.0);
        }
        ::metrics::gauge!(m::GROUP_MEMBERS, "group" => group.to_string()).set(0.0);
    }

    /// Touches the group's own series (members, rebalances) without changing them.
    pub(super) fn refresh_gauges(&self, group: &str) {
        ::metrics::gauge!(m::GROUP_MEMBERS, "group" => group.to_string())
            .set(self.members.len() as f64);
        ::metrics::counter!(m::GROUP_REBALANCES, "group" => group.to_string()).increment(0);
    }

    pub(super) fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "empty"
        } else {
            "stable"
        }
    }

    pub(super) fn assignment_of(&self, member: &str) -> Vec<TopicPartition> {
        self.owners
            .iter()
            .filter(|(_, o)| o.member == member)
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    pub(super) fn view(&self, group: &str, member: &str) -> MemberView {
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

    pub(super) fn subscribed_counts(&self, counts: &dyn PartitionCounts) -> BTreeMap<String, u32> {
        let topics: BTreeSet<&String> = self.members.values().flat_map(|m| &m.topics).collect();
        topics
            .into_iter()
            .map(|t| (t.clone(), counts.partition_count(t)))
            .collect()
    }

    /// Reassigns partitions among the current members and starts a new generation.
    pub(super) fn rebalance(&mut self, group: &str, sizes: &dyn PartitionCounts) {
        let counts = self.subscribed_counts(sizes);
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
        tracing::info!(
            group,
            generation = self.generation,
            members = self.members.len(),
            "group rebalanced"
        );
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
    pub(super) fn refresh(&mut self, group: &str, counts: &dyn PartitionCounts) {
        if !self.members.is_empty() && self.subscribed_counts(counts) != self.partition_counts {
            self.rebalance(group, counts);
        }
    }

    /// Removes members whose session ended; rebalances if any did.
    pub(super) fn expire(
        &mut self,
        group: &str,
        counts: &dyn PartitionCounts,
        now: Instant,
    ) -> usize {
        let before = self.members.len();
        self.members.retain(|member, m| {
            let alive = m.deadline > now;
            if !alive {
                tracing::info!(group, member, "member's session expired");
            }
            alive
        });
        let expired = before - self.members.len();
        if expired > 0 {
            self.rebalance(group, counts);
        }
        expired
    }

    /// Where the group reads `tp` next ([`resolve`]). Below the log start (retention took it)
    /// reads from the log start; past the log end (the topic was deleted and created again)
    /// is out of range, and `auto_offset_reset` decides. A `latest` position is pinned until
    /// a commit, so the member reads from there.
    pub(super) fn position(&mut self, tp: &TopicPartition, partition: &Partition) -> Offset {
        let (position, reset) = self.resolve_position(tp, partition);
        if reset && self.auto_offset_reset == OffsetReset::Latest {
            self.pinned.insert(tp.clone(), position);
        }
        position
    }

    /// Position without pinning (describe must not change what a member will read).
    pub(super) fn peek_position(&self, tp: &TopicPartition, partition: &Partition) -> Offset {
        self.resolve_position(tp, partition).0
    }

    /// The position, and whether `auto_offset_reset` chose it (nothing stored in range).
    fn resolve_position(&self, tp: &TopicPartition, partition: &Partition) -> (Offset, bool) {
        let progress = partition.progress();
        resolve(
            self.stored_position(tp),
            self.auto_offset_reset,
            progress.log_start_offset,
            progress.high_watermark,
            partition.log_end_offset(),
        )
    }

    /// The offset pinned by a `latest` reset or past a range with no record, or else the
    /// committed one. A pin wins: it is only made where the commit was missing or out of
    /// range, or where reading from it found no record up to the pin (compaction emptied
    /// those offsets), and a commit clears it. So a commit past the log end does not send
    /// every read back to the high watermark of the moment (skipping what was produced
    /// between two reads), and an emptied range is read once, not at every fetch.
    pub(super) fn stored_position(&self, tp: &TopicPartition) -> Option<Offset> {
        self.pinned
            .get(tp)
            .copied()
            .or_else(|| self.committed.get(tp).map(|c| c.offset))
    }

    /// Pins where a `latest` reset put a partition read elsewhere (at its leader), as
    /// [`Self::position`] does for a local one; `planned` is the stored position the read
    /// was planned from (see [`Self::pin_if_unchanged`]).
    pub(super) fn pin_remote(
        &mut self,
        tp: &TopicPartition,
        planned: Option<Offset>,
        position: Offset,
        reset: bool,
    ) {
        if reset && self.auto_offset_reset == OffsetReset::Latest {
            self.pin_if_unchanged(tp, planned, position);
        }
    }

    /// Pins `tp` at `position` if its stored position is still `planned`, what a fetch's
    /// plan saw under the lock. The read the pin comes from ran outside the lock, and a
    /// commit, a reset or another member's read may have moved the position meanwhile:
    /// that newer position stands (a stale pin would send the group back, or past records
    /// never delivered).
    pub(super) fn pin_if_unchanged(
        &mut self,
        tp: &TopicPartition,
        planned: Option<Offset>,
        position: Offset,
    ) {
        if self.stored_position(tp) == planned {
            self.pinned.insert(tp.clone(), position);
        }
    }

    /// Checks that a commit may proceed; counts as the member's heartbeat.
    pub(super) fn check_commit(
        &mut self,
        group: &str,
        fence: Option<(&str, u32)>,
        offsets: &[(TopicPartition, Offset)],
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

/// Where a group learns how many partitions a subscribed topic has (0: no such topic).
pub(super) trait PartitionCounts {
    fn partition_count(&self, topic: &str) -> u32;
}

/// A broker alone: its own topics.
impl PartitionCounts for Broker {
    fn partition_count(&self, topic: &str) -> u32 {
        self.topic(topic).map_or(0, |t| t.partition_count())
    }
}
