//! The leader's view of its followers: where each one is, the high watermark that follows
//! from it, and when the in-sync replica set should shrink or grow. Pure: times are
//! milliseconds of a monotonic clock passed in, nothing here does I/O.
//!
//! Rules (CLUSTER.md, after Kafka's KIP-497, KIP-841 and KIP-966):
//! - A follower's position counts only as far as it has fsynced (`flushed_offset`):
//!   `acks=all` promises the records are on the disks of every in-sync replica.
//! - The high watermark is the lowest fsynced offset over the *maximal* ISR: the committed
//!   set plus any member whose addition is pending (an addition counts at once), with a
//!   pending removal still counted until the controller confirms it. It never goes
//!   backwards, and it does not move while the ISR is smaller than `min_insync_replicas`.
//! - Shrink: a follower that has not been caught up with the leader's log end for
//!   `replica_lag_time_max_ms` leaves (a caught-up follower is one whose fetch reached the
//!   leader's log end, or the end the leader had at its previous fetch).
//! - Expand: a follower outside the ISR that is eligible (active broker on its current
//!   epoch, checked by the caller against the broker epoch its last fetch came with, so a
//!   broker restarted since joins only on a fetch of its own, KIP-903) and has fsynced up
//!   to the high watermark, fetching in the current leader epoch, joins. Only on a fetch seen in this leadership: a fetch is
//!   answered only once the follower's log agrees with the leader's (its divergent tail
//!   cut), and a follower not heard from may hold such a tail even when the high watermark
//!   is 0 (a leader restarted from disk opens with it at the log start).
//! - Report: while the ISR is below its minimum the high watermark stops; a leader whose
//!   stopped high watermark is above the one the metadata holds proposes the same ISR with
//!   it, once (the metadata keeps the highest reported, so an unclean election can say what
//!   it gives up even when the ISR shrank by the controller fencing a member).
//! - Lost data: every ISR member holds every record below the high watermark, so a member
//!   whose fetch asks for an offset below it has lost records it acknowledged (a flipped
//!   bit found by its CRC check, its log cut there, issue 9 item 7). It leaves at once, not
//!   after the lag bound, and is not counted in sync meanwhile ([`LeaderReplicas::in_sync`]);
//!   it joins again like any follower, once it has fsynced up to the high watermark.

use std::collections::BTreeMap;

use crate::log::Offset;
use crate::metadata::NodeId;

/// What the leader knows about one follower from its fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FollowerProgress {
    /// The offset its last fetch asked for: everything before it is in its log.
    pub fetch_offset: Offset,
    /// Everything before this offset is fsynced in its log.
    pub flushed_offset: Offset,
    /// When it was last known caught up with the leader's log end.
    pub last_caught_up_ms: u64,
    /// Its last fetch asked for an offset below the high watermark: its log lacks records
    /// the ISR acknowledged.
    pub below_high_watermark: bool,
    /// It has fetched in this leadership. Until then nothing is known of its log, which may
    /// hold a tail this leader does not have (a deposed leader's, after an unclean
    /// election): a follower joins only on what a fetch showed, never on the defaults.
    pub fetched: bool,
    /// The broker epoch its last fetch came with (0: none recorded). A broker registered
    /// again since (a restart, perhaps on an emptied disk) is another incarnation, which
    /// that fetch says nothing about: it joins only on a fetch of its own (KIP-903).
    pub broker_epoch: u64,
    /// When it last fetched, and the leader's log end then.
    last_fetch_ms: u64,
    leader_end_at_last_fetch: Offset,
}

/// A change of the ISR the leader has asked the controller for and not yet seen applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingIsr {
    pub proposed: Vec<NodeId>,
}

/// One partition's leader-side replication state.
#[derive(Debug, Clone)]
pub struct LeaderReplicas {
    pub leader: NodeId,
    /// The ISR as the controller last confirmed it.
    pub isr: Vec<NodeId>,
    /// A proposed change in flight, if any.
    pub pending: Option<PendingIsr>,
    pub min_insync_replicas: u32,
    /// Followers by node, including those outside the ISR.
    pub followers: BTreeMap<NodeId, FollowerProgress>,
    /// Never goes backwards.
    high_watermark: Offset,
    /// The high watermark the metadata holds for the partition (the highest a leader
    /// reported with an ISR change). Below the minimum ISR the high watermark stops; a
    /// leader whose stopped one is above the recorded one reports it (an ISR change to the
    /// same set), so an unclean election can say exactly what it gives up.
    pub recorded_high_watermark: Offset,
    /// The leader's log end when this leadership began. It holds every record an earlier
    /// leader acknowledged (a leader is elected from the ISR), while the high watermark a
    /// new leader starts from may trail what its predecessor acknowledged: a follower joins
    /// the ISR only once it has fsynced up to here too (KAFKA-7128), or a replica lacking an
    /// acknowledged record could join, be elected, and take the record's place.
    pub epoch_start_offset: Offset,
}

impl LeaderReplicas {
    /// The state of a new leadership: `replicas` are every replica of the partition, and the
    /// high watermark starts where the leader knows it to be (it will not go below it).
    pub fn new(
        leader: NodeId,
        replicas: &[NodeId],
        isr: Vec<NodeId>,
        min_insync_replicas: u32,
        high_watermark: Offset,
        now_ms: u64,
    ) -> LeaderReplicas {
        let mut state = LeaderReplicas {
            leader,
            isr,
            pending: None,
            min_insync_replicas,
            followers: BTreeMap::new(),
            high_watermark,
            recorded_high_watermark: Offset::ZERO,
            epoch_start_offset: Offset::ZERO,
        };
        state.set_replicas(replicas, now_ms);
        state
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// The partition's replicas changed within this leadership (a reassignment started,
    /// completed or was cancelled): replicas it adds become followers that have not fetched
    /// yet (so they join the ISR only once a fetch shows them caught up), replicas it
    /// removed are forgotten (their fetches are refused from now on).
    pub fn set_replicas(&mut self, replicas: &[NodeId], now_ms: u64) {
        self.followers.retain(|n, _| replicas.contains(n));
        for n in replicas.iter().filter(|n| **n != self.leader) {
            self.followers.entry(*n).or_insert(FollowerProgress {
                last_caught_up_ms: now_ms,
                last_fetch_ms: now_ms,
                ..FollowerProgress::default()
            });
        }
    }

    /// Records a follower's fetch. Returns false for a node that is not a follower of this
    /// partition (the fetch is refused).
    pub fn on_fetch(
        &mut self,
        node: NodeId,
        fetch_offset: Offset,
        flushed_offset: Offset,
        leader_end: Offset,
        now_ms: u64,
    ) -> bool {
        let Some(f) = self.followers.get_mut(&node) else {
            return false;
        };
        if fetch_offset >= leader_end {
            f.last_caught_up_ms = now_ms;
        } else if fetch_offset >= f.leader_end_at_last_fetch {
            f.last_caught_up_ms = f.last_caught_up_ms.max(f.last_fetch_ms);
        }
        f.below_high_watermark = fetch_offset < self.high_watermark;
        f.fetched = true;
        f.fetch_offset = fetch_offset;
        f.flushed_offset = flushed_offset.min(fetch_offset);
        f.last_fetch_ms = now_ms;
        f.leader_end_at_last_fetch = leader_end;
        true
    }

    /// The ISR the high watermark is computed over: the confirmed set, plus pending additions
    /// (removals count only once confirmed).
    pub fn maximal_isr(&self) -> Vec<NodeId> {
        let mut isr = self.isr.clone();
        if let Some(p) = &self.pending {
            for n in &p.proposed {
                if !isr.contains(n) {
                    isr.push(*n);
                }
            }
        }
        isr
    }

    /// How many members of the confirmed ISR are in sync: all but those whose last fetch
    /// showed they lost acknowledged records (they are on their way out). What `acks=all`
    /// admission counts.
    pub fn in_sync(&self) -> u32 {
        self.isr
            .iter()
            .filter(|n| {
                !self
                    .followers
                    .get(n)
                    .is_some_and(|f| f.below_high_watermark)
            })
            .count() as u32
    }

    /// Moves the high watermark given the leader's own fsynced offset; returns it. It moves
    /// only forward, and not while the confirmed ISR is below its minimum.
    pub fn advance_high_watermark(&mut self, leader_flushed: Offset) -> Offset {
        if (self.isr.len() as u32) < self.min_insync_replicas {
            return self.high_watermark;
        }
        let lowest = self
            .maximal_isr()
            .iter()
            .map(|n| match self.followers.get(n) {
                Some(f) => f.flushed_offset,
                None if *n == self.leader => leader_flushed,
                None => Offset::ZERO,
            })
            .min()
            .unwrap_or(leader_flushed)
            .min(leader_flushed);
        self.high_watermark = self.high_watermark.max(lowest);
        self.high_watermark
    }

    /// The ISR to propose now, if it should change: members not caught up within `lag_max_ms`
    /// leave, and members that lost acknowledged records leave at once; eligible followers that have fsynced up to the high watermark join. None while
    /// a change is pending or when nothing changes.
    pub fn isr_change(
        &self,
        now_ms: u64,
        lag_max_ms: u64,
        eligible: impl Fn(NodeId) -> bool,
    ) -> Option<Vec<NodeId>> {
        if self.pending.is_some() {
            return None;
        }
        let lagging = |n: &NodeId| {
            self.followers
                .get(n)
                .is_some_and(|f| now_ms.saturating_sub(f.last_caught_up_ms) > lag_max_ms)
        };
        let lost = |n: &NodeId| {
            self.followers
                .get(n)
                .is_some_and(|f| f.below_high_watermark)
        };
        let mut next: Vec<NodeId> = self
            .isr
            .iter()
            .copied()
            .filter(|n| !lagging(n) && !lost(n))
            .collect();
        for (n, f) in &self.followers {
            let joins = !next.contains(n)
                && !self.isr.contains(n)
                && eligible(*n)
                && f.fetched
                && f.flushed_offset >= self.high_watermark
                && f.flushed_offset >= self.epoch_start_offset
                && !lagging(n);
            if joins {
                next.push(*n);
            }
        }
        let below_min = (self.isr.len() as u32) < self.min_insync_replicas;
        let unreported = below_min && self.high_watermark > self.recorded_high_watermark;
        (next != self.isr || unreported).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn n(id: u32) -> NodeId {
        NodeId(id)
    }

    fn three() -> LeaderReplicas {
        LeaderReplicas::new(
            n(1),
            &[n(1), n(2), n(3)],
            vec![n(1), n(2), n(3)],
            2,
            Offset(0),
            0,
        )
    }

    #[test]
    fn below_the_minimum_the_stopped_high_watermark_is_reported_once() {
        let mut l = three();
        l.on_fetch(n(2), Offset(10), Offset(10), Offset(10), 1);
        l.on_fetch(n(3), Offset(10), Offset(10), Offset(10), 1);
        assert_eq!(l.advance_high_watermark(Offset(10)), Offset(10));
        assert_eq!(
            l.isr_change(2, 1000, |_| true),
            None,
            "at the minimum: nothing"
        );
        // The controller fenced 2 and 3: the ISR fell below its minimum without a request.
        l.isr = vec![n(1)];
        let fenced = |_| false;
        assert_eq!(l.isr_change(3, 1000, fenced), Some(vec![n(1)]));
        l.recorded_high_watermark = Offset(10);
        assert_eq!(l.isr_change(4, 1000, fenced), None, "reported already");
    }

    #[test]
    fn a_follower_joins_only_once_it_holds_what_the_leader_held_when_its_leadership_began() {
        // A new leader whose high watermark (5) trails its log end (10): records up to 10 may
        // have been acknowledged by the leader before it.
        let mut stale = three();
        stale.isr = vec![n(1), n(2)];
        stale.epoch_start_offset = Offset(10);
        stale.on_fetch(n(2), Offset(5), Offset(5), Offset(10), 1);
        stale.on_fetch(n(3), Offset(5), Offset(5), Offset(10), 1);
        assert_eq!(stale.advance_high_watermark(Offset(10)), Offset(5));
        assert_eq!(
            stale.isr_change(1, 30_000, |_| true),
            None,
            "3 is at the high watermark, but below the leadership's start"
        );
        stale.on_fetch(n(3), Offset(10), Offset(10), Offset(10), 2);
        assert_eq!(
            stale.isr_change(2, 30_000, |_| true),
            Some(vec![n(1), n(2), n(3)])
        );
    }

    #[test]
    fn a_replica_added_within_a_leadership_joins_once_caught_up_and_a_removed_one_is_refused() {
        let mut l = three();
        l.on_fetch(n(2), Offset(10), Offset(10), Offset(10), 1);
        l.on_fetch(n(3), Offset(10), Offset(10), Offset(10), 1);
        assert_eq!(l.advance_high_watermark(Offset(10)), Offset(10));
        assert!(
            !l.on_fetch(n(4), Offset(0), Offset(0), Offset(10), 1),
            "not a replica yet"
        );
        // A move to [4, 2, 3] started: 1 leads, 4 is added.
        l.set_replicas(&[n(4), n(2), n(3), n(1)], 2);
        assert_eq!(l.isr_change(2, 30_000, |_| true), None, "4 has not fetched");
        assert!(l.on_fetch(n(4), Offset(4), Offset(4), Offset(10), 3));
        assert_eq!(l.isr_change(3, 30_000, |_| true), None, "4 is behind");
        assert_eq!(
            l.advance_high_watermark(Offset(10)),
            Offset(10),
            "4 does not hold it back"
        );
        l.on_fetch(n(4), Offset(10), Offset(10), Offset(10), 4);
        assert_eq!(
            l.isr_change(4, 30_000, |_| true),
            Some(vec![n(1), n(2), n(3), n(4)])
        );
        // The move completed elsewhere in the metadata; 3 was removed meanwhile.
        l.set_replicas(&[n(4), n(2), n(1)], 5);
        assert!(!l.on_fetch(n(3), Offset(10), Offset(10), Offset(10), 5));
        assert!(
            l.on_fetch(n(4), Offset(10), Offset(10), Offset(10), 5),
            "kept as it was"
        );
        assert!(l.followers[&n(4)].fetched);
    }

    #[test]
    fn the_high_watermark_is_the_lowest_fsynced_offset_of_the_isr() {
        let mut l = three();
        l.on_fetch(n(2), Offset(10), Offset(8), Offset(10), 1);
        l.on_fetch(n(3), Offset(6), Offset(6), Offset(10), 1);
        assert_eq!(l.advance_high_watermark(Offset(10)), Offset(6));
        l.on_fetch(n(3), Offset(10), Offset(10), Offset(10), 2);
        assert_eq!(
            l.advance_high_watermark(Offset(9)),
            Offset(8),
            "follower 2 fsynced only to 8"
        );
        l.on_fetch(n(2), Offset(10), Offset(10), Offset(10), 3);
        assert_eq!(
            l.advance_high_watermark(Offset(9)),
            Offset(9),
            "the leader's own fsync bounds it too"
        );
    }

    #[test]
    fn a_lagging_follower_leaves_and_the_high_watermark_freezes_below_the_minimum() {
        let mut l = three();
        l.on_fetch(n(2), Offset(5), Offset(5), Offset(5), 100);
        l.on_fetch(n(3), Offset(0), Offset(0), Offset(5), 100);
        // 3 fetched at 100 but was behind: last caught up at 0, when the leadership began.
        assert_eq!(l.isr_change(30_000, 30_000, |_| true), None);
        assert_eq!(
            l.isr_change(30_001, 30_000, |_| true),
            Some(vec![n(1), n(2)])
        );
        l.isr = vec![n(1)];
        l.on_fetch(n(2), Offset(9), Offset(9), Offset(9), 200);
        assert_eq!(
            l.advance_high_watermark(Offset(9)),
            Offset(0),
            "ISR {{1}} is below min 2: frozen"
        );
    }

    #[test]
    fn a_follower_that_fsynced_up_to_the_high_watermark_rejoins_if_eligible() {
        let mut l = three();
        l.isr = vec![n(1), n(2)];
        l.on_fetch(n(2), Offset(20), Offset(20), Offset(20), 10);
        l.advance_high_watermark(Offset(20));
        l.on_fetch(n(3), Offset(20), Offset(15), Offset(20), 10);
        assert_eq!(
            l.isr_change(10, 30_000, |_| true),
            None,
            "fsynced only to 15 < HW 20"
        );
        l.on_fetch(n(3), Offset(20), Offset(20), Offset(20), 11);
        assert_eq!(
            l.isr_change(11, 30_000, |x| x != n(3)),
            None,
            "not eligible"
        );
        assert_eq!(
            l.isr_change(11, 30_000, |_| true),
            Some(vec![n(1), n(2), n(3)])
        );
    }

    /// An unclean election's leader opens with its high watermark at its log start (0): a
    /// returning replica it has not heard from yet (the deposed leader, with a tail it must
    /// cut first) is not taken into the ISR on its default progress.
    #[test]
    fn a_follower_joins_only_on_a_fetch_of_this_leadership() {
        let mut l = LeaderReplicas::new(n(2), &[n(1), n(2), n(3)], vec![n(2)], 2, Offset(0), 0);
        l.on_fetch(n(3), Offset(20), Offset(20), Offset(20), 10);
        assert_eq!(
            l.isr_change(10, 30_000, |_| true),
            Some(vec![n(2), n(3)]),
            "3 fetched: it joins; 1 never fetched: it does not"
        );
        l.on_fetch(n(1), Offset(20), Offset(20), Offset(20), 11);
        assert_eq!(
            l.isr_change(11, 30_000, |_| true),
            Some(vec![n(2), n(1), n(3)])
        );
    }

    #[test]
    fn a_pending_addition_counts_at_once_a_pending_removal_only_once_confirmed() {
        let mut l = three();
        l.isr = vec![n(1), n(2)];
        l.on_fetch(n(2), Offset(10), Offset(10), Offset(10), 1);
        l.on_fetch(n(3), Offset(10), Offset(10), Offset(10), 1);
        assert_eq!(l.advance_high_watermark(Offset(10)), Offset(10));
        let grown = l.isr_change(1, 30_000, |_| true).unwrap();
        l.pending = Some(PendingIsr { proposed: grown });
        l.on_fetch(n(2), Offset(20), Offset(20), Offset(20), 2);
        l.on_fetch(n(3), Offset(20), Offset(12), Offset(20), 2);
        assert_eq!(
            l.advance_high_watermark(Offset(20)),
            Offset(12),
            "3 may already count as in sync"
        );
        l.isr = vec![n(1), n(2), n(3)];
        l.pending = Some(PendingIsr {
            proposed: vec![n(1), n(2)],
        });
        assert_eq!(
            l.advance_high_watermark(Offset(20)),
            Offset(12),
            "3 is still in the confirmed ISR"
        );
        l.isr = vec![n(1), n(2)];
        l.pending = None;
        assert_eq!(l.advance_high_watermark(Offset(20)), Offset(20));
    }

    #[test]
    fn a_member_whose_fetch_goes_back_below_the_high_watermark_leaves_at_once() {
        let mut l = three();
        l.on_fetch(n(2), Offset(10), Offset(10), Offset(10), 1);
        l.on_fetch(n(3), Offset(10), Offset(10), Offset(10), 1);
        assert_eq!(l.advance_high_watermark(Offset(10)), Offset(10));
        assert_eq!(l.in_sync(), 3);
        // Follower 3 found a flipped bit at 6 and cut its log there.
        l.on_fetch(n(3), Offset(6), Offset(6), Offset(10), 2);
        assert_eq!(
            l.in_sync(),
            2,
            "not counted while it lacks acknowledged records"
        );
        assert_eq!(
            l.isr_change(2, 30_000, |_| true),
            Some(vec![n(1), n(2)]),
            "long before the lag bound"
        );
        assert_eq!(
            l.advance_high_watermark(Offset(12)),
            Offset(10),
            "frozen until the controller confirms the removal"
        );
        l.isr = vec![n(1), n(2)];
        l.on_fetch(n(2), Offset(12), Offset(12), Offset(12), 3);
        assert_eq!(l.advance_high_watermark(Offset(12)), Offset(12));
        l.on_fetch(n(3), Offset(10), Offset(10), Offset(12), 3);
        assert_eq!(
            l.isr_change(3, 30_000, |_| true),
            None,
            "still below the HW"
        );
        l.on_fetch(n(3), Offset(12), Offset(12), Offset(12), 4);
        assert_eq!(l.in_sync(), 2);
        assert_eq!(
            l.isr_change(4, 30_000, |_| true),
            Some(vec![n(1), n(2), n(3)]),
            "caught up again: it rejoins"
        );
    }

    #[test]
    fn fetches_from_strangers_are_refused() {
        let mut l = three();
        assert!(!l.on_fetch(n(7), Offset(0), Offset(0), Offset(0), 0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Whatever the fetches, ISR changes and leader fsyncs: the high watermark never goes
        /// backwards and never passes what any confirmed or pending ISR member fsynced.
        #[test]
        fn the_high_watermark_is_monotonic_and_fsynced_on_every_isr_member(
            steps in proptest::collection::vec((0..4u8, 1..4u32, 0..20u64, 0..20u64), 1..60)
        ) {
            let mut l = three();
            let mut leader_end = 0u64;
            let mut leader_flushed = 0u64;
            let mut now = 0u64;
            let mut last_hw = Offset::ZERO;
            for (kind, node, a, b) in steps {
                now += 500;
                match kind {
                    0 => {
                        leader_end += a;
                        leader_flushed = leader_end - b.min(a);
                    }
                    1 if node != 1 => {
                        let fetch = a.min(leader_end);
                        l.on_fetch(n(node), Offset(fetch), Offset(fetch.saturating_sub(b)), Offset(leader_end), now);
                    }
                    2 => {
                        if let Some(next) = l.isr_change(now, 1_000, |_| true) {
                            l.pending = Some(PendingIsr { proposed: next });
                        }
                    }
                    _ => {
                        if let Some(p) = l.pending.take() {
                            l.isr = p.proposed;
                        }
                    }
                }
                let hw = l.advance_high_watermark(Offset(leader_flushed));
                prop_assert!(hw >= last_hw);
                if hw > last_hw {
                    prop_assert!(Offset(leader_flushed) >= hw);
                    prop_assert!(l.isr.len() as u32 >= l.min_insync_replicas);
                    for m in l.maximal_isr().iter().filter(|m| **m != n(1)) {
                        let flushed = l.followers[m].flushed_offset;
                        prop_assert!(flushed >= hw, "member {:?} fsynced {} < hw {}", m, flushed, hw);
                    }
                }
                last_hw = hw;
            }
        }
    }
}
