//! What the other voters acknowledged of this node's leadership, and when.
//!
//! A voter that answers an AppendEntries with anything but a higher vote has not voted for a
//! later leader when it handled it, so not before the request was sent. If a quorum did so
//! for requests sent at or after instant `t`, any later leader was elected after `t`: until
//! then this node led, and its log held every committed entry. The controller answers a
//! heartbeat only on such a quorum for a `t` after the heartbeat arrived (see
//! `Controller::heartbeat`): the broker renews its lease on that answer, so an answer from
//! a deposed controller that does not know it yet (a paused process resumed, one cut off
//! from the others) must never be given.
//!
//! The network adapter records every acknowledged AppendEntries (`network::Peer`); nothing
//! here blocks or does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Instant;

use openraft::Vote;
use tokio::sync::watch;

const POISONED: &str = "the leader clock lock is not poisoned";

#[derive(Debug)]
pub(super) struct LeaderClock {
    /// Per voter: the vote it last acknowledged, and the latest send instant of an
    /// AppendEntries under that vote it acknowledged.
    acks: Mutex<BTreeMap<u64, (Vote<u64>, Instant)>>,
    /// Moves on every acknowledgement, for those waiting on a quorum.
    moved: watch::Sender<u64>,
}

impl Default for LeaderClock {
    fn default() -> Self {
        LeaderClock {
            acks: Mutex::new(BTreeMap::new()),
            moved: watch::Sender::new(0),
        }
    }
}

impl LeaderClock {
    /// `target` acknowledged an AppendEntries under `vote` that was sent at `sent`. An
    /// acknowledgement under an older vote than the one recorded changes nothing.
    pub(super) fn acknowledged(&self, target: u64, vote: &Vote<u64>, sent: Instant) {
        {
            let mut acks = self.acks.lock().expect(POISONED);
            match acks.get_mut(&target) {
                Some((v, t)) if v == vote => *t = (*t).max(sent),
                Some((v, _)) if vote < v => return,
                _ => {
                    acks.insert(target, (*vote, sent));
                }
            }
        }
        self.moved.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.moved.subscribe()
    }

    /// Whether `me`, leading under `vote`, and the voters that acknowledged that vote for a
    /// request sent at or after `since` form a majority of every voter set of `configs`
    /// (one set, or two during a joint membership change).
    pub(super) fn quorum_since(
        &self,
        me: u64,
        vote: &Vote<u64>,
        configs: &[BTreeSet<u64>],
        since: Instant,
    ) -> bool {
        let acks = self.acks.lock().expect(POISONED);
        let granted =
            |id: &u64| *id == me || acks.get(id).is_some_and(|(v, t)| v == vote && *t >= since);
        !configs.is_empty()
            && configs
                .iter()
                .all(|voters| 2 * voters.iter().filter(|id| granted(id)).count() > voters.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn voters(ids: &[u64]) -> Vec<BTreeSet<u64>> {
        vec![ids.iter().copied().collect()]
    }

    #[test]
    fn a_quorum_counts_only_acknowledgements_of_this_vote_sent_since_the_instant() {
        let clock = LeaderClock::default();
        let vote = Vote::new_committed(3, 1);
        let three = voters(&[1, 2, 3]);
        let before = Instant::now();
        let since = before + Duration::from_millis(10);
        assert!(
            !clock.quorum_since(1, &vote, &three, since),
            "the leader alone is no majority of three"
        );
        clock.acknowledged(2, &vote, before);
        assert!(
            !clock.quorum_since(1, &vote, &three, since),
            "an acknowledgement of a request sent before the instant proves nothing after it"
        );
        clock.acknowledged(3, &Vote::new_committed(2, 3), since);
        assert!(
            !clock.quorum_since(1, &vote, &three, since),
            "an acknowledgement of another vote does not count"
        );
        clock.acknowledged(2, &vote, since);
        assert!(clock.quorum_since(1, &vote, &three, since));
        assert!(
            !clock.quorum_since(1, &Vote::new_committed(4, 1), &three, since),
            "a later leadership of the same node starts with no acknowledgement"
        );
    }

    #[test]
    fn five_voters_need_two_others_and_a_late_answer_of_an_older_vote_is_ignored() {
        let clock = LeaderClock::default();
        let (old, vote) = (Vote::new_committed(2, 1), Vote::new_committed(3, 1));
        let five = voters(&[1, 2, 3, 4, 5]);
        let since = Instant::now();
        clock.acknowledged(2, &vote, since);
        assert!(!clock.quorum_since(1, &vote, &five, since));
        clock.acknowledged(4, &vote, since);
        clock.acknowledged(4, &old, since + Duration::from_millis(5));
        assert!(
            clock.quorum_since(1, &vote, &five, since),
            "the older vote's late answer did not replace voter 4's acknowledgement"
        );
        assert!(
            !clock.quorum_since(9, &vote, &five, since),
            "a leader outside the voter sets does not count itself"
        );
    }

    #[test]
    fn a_joint_membership_needs_a_majority_of_each_set() {
        let clock = LeaderClock::default();
        let vote = Vote::new_committed(1, 1);
        let since = Instant::now();
        clock.acknowledged(2, &vote, since);
        let joint = vec![
            [1, 2, 3].into_iter().collect(),
            [3, 4, 5].into_iter().collect(),
        ];
        assert!(!clock.quorum_since(1, &vote, &joint, since));
        clock.acknowledged(3, &vote, since);
        clock.acknowledged(4, &vote, since);
        assert!(clock.quorum_since(1, &vote, &joint, since));
        assert!(!clock.quorum_since(1, &vote, &[], since));
    }

    #[test]
    fn a_single_voter_is_its_own_quorum() {
        let clock = LeaderClock::default();
        let vote = Vote::new_committed(1, 1);
        assert!(clock.quorum_since(1, &vote, &voters(&[1]), Instant::now()));
    }
}
