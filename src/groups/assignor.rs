//! The sticky assignor: spreads the partitions of subscribed topics over a group's members,
//! moving as few partitions as possible from the previous assignment.
//!
//! Pure: no clock, no I/O, no locks; the same inputs always give the same assignment.
//!
//! Guarantees (unit- and property-tested below):
//! - Every partition of a subscribed topic is assigned to exactly one member that subscribes
//!   to its topic; a partition nobody subscribes to is not assigned.
//! - A member keeps every partition it had that still exists and it still subscribes to,
//!   unless keeping it would leave some eligible member two or more partitions behind it.
//! - Balance: no partition can move from member `a` to an eligible member `b` while
//!   `a` has two or more partitions more than `b` (with one subscription for all: max - min <= 1).

use std::collections::{BTreeMap, BTreeSet};

use crate::metadata::PartitionId;

/// One partition of one topic.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: PartitionId,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: PartitionId) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

/// Member id → the partitions it owns.
pub type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

/// Computes the next assignment.
///
/// - `subscriptions`: each live member and the topics it subscribes to.
/// - `partition_counts`: partitions of every subscribed topic (0 or absent: no such topic).
/// - `previous`: the current assignment (members that left may still appear in it).
pub fn assign(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    partition_counts: &BTreeMap<String, u32>,
    previous: &Assignment,
) -> Assignment {
    let mut next: Assignment = subscriptions
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    let eligible = |member: &str, tp: &TopicPartition| {
        subscriptions
            .get(member)
            .is_some_and(|topics| topics.contains(&tp.topic))
            && partition_counts
                .get(&tp.topic)
                .is_some_and(|&n| tp.partition.0 < n)
    };
    // 1. Stickiness: keep what each live member had and may still own.
    let mut taken: BTreeSet<TopicPartition> = BTreeSet::new();
    for (member, owned) in previous {
        let Some(mine) = next.get_mut(member) else {
            continue;
        };
        for tp in owned {
            if eligible(member, tp) && taken.insert(tp.clone()) {
                mine.insert(tp.clone());
            }
        }
    }
    // 2. Every partition nobody holds goes to the least loaded eligible member.
    for (topic, &count) in partition_counts {
        for partition in PartitionId::all(count) {
            let tp = TopicPartition::new(topic.clone(), partition);
            if taken.contains(&tp) {
                continue;
            }
            let target = next
                .iter()
                .filter(|(m, _)| eligible(m, &tp))
                .min_by_key(|(m, owned)| (owned.len(), (*m).clone()))
                .map(|(m, _)| m.clone());
            if let Some(target) = target {
                next.get_mut(&target)
                    .expect("member exists")
                    .insert(tp.clone());
                taken.insert(tp);
            }
        }
    }
    // 3. Balance: move one partition at a time from a member with two or more partitions
    // more than an eligible member. Every move lowers the sum of squared loads, so this ends.
    while let Some((from, to, tp)) = find_move(&next, &eligible) {
        next.get_mut(&from).expect("member exists").remove(&tp);
        next.get_mut(&to).expect("member exists").insert(tp);
    }
    next
}

/// The most useful single move: from the most loaded member that has a partition some
/// member with at least two fewer partitions may own, to the least loaded such member.
fn find_move(
    next: &Assignment,
    eligible: &impl Fn(&str, &TopicPartition) -> bool,
) -> Option<(String, String, TopicPartition)> {
    let mut by_load: Vec<(&String, &BTreeSet<TopicPartition>)> = next.iter().collect();
    by_load.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    for (from, owned) in &by_load {
        for (to, theirs) in by_load.iter().rev() {
            if theirs.len() + 2 > owned.len() {
                continue;
            }
            // Give up the highest-numbered partition: low partitions stay where they were.
            if let Some(tp) = owned.iter().rev().find(|tp| eligible(to, tp)) {
                return Some(((*from).clone(), (*to).clone(), tp.clone()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subs(members: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        members
            .iter()
            .map(|(m, topics)| {
                (
                    m.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn counts(topics: &[(&str, u32)]) -> BTreeMap<String, u32> {
        topics.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    /// Checks the "exactly one eligible owner" guarantee and returns the loads.
    fn check_complete(
        s: &BTreeMap<String, BTreeSet<String>>,
        c: &BTreeMap<String, u32>,
        a: &Assignment,
    ) {
        let mut seen = BTreeSet::new();
        for (member, owned) in a {
            for tp in owned {
                assert!(seen.insert(tp.clone()), "{tp:?} assigned twice");
                assert!(
                    s[member].contains(&tp.topic),
                    "{member} owns unsubscribed {tp:?}"
                );
                assert!(tp.partition.0 < c[&tp.topic]);
            }
        }
        for (topic, &n) in c {
            let subscribed = s.values().any(|t| t.contains(topic));
            for p in PartitionId::all(n) {
                let tp = TopicPartition::new(topic.clone(), p);
                assert_eq!(seen.contains(&tp), subscribed, "{tp:?}");
            }
        }
    }

    fn moved(before: &Assignment, after: &Assignment) -> usize {
        after
            .iter()
            .map(|(m, owned)| {
                let had = before.get(m).cloned().unwrap_or_default();
                owned.difference(&had).count()
            })
            .sum()
    }

    fn loads(a: &Assignment) -> (usize, usize) {
        let l: Vec<usize> = a.values().map(BTreeSet::len).collect();
        (
            l.iter().copied().min().unwrap_or(0),
            l.iter().copied().max().unwrap_or(0),
        )
    }

    #[test]
    fn three_members_share_six_partitions_two_each() {
        let s = subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let c = counts(&[("t", 6)]);
        let a = assign(&s, &c, &Assignment::new());
        check_complete(&s, &c, &a);
        assert_eq!(loads(&a), (2, 2));
    }

    #[test]
    fn a_leaver_only_moves_its_own_partitions() {
        let c = counts(&[("t", 7)]);
        let s3 = subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let before = assign(&s3, &c, &Assignment::new());
        let s2 = subs(&[("a", &["t"]), ("c", &["t"])]);
        let after = assign(&s2, &c, &before);
        check_complete(&s2, &c, &after);
        assert_eq!(moved(&before, &after), before["b"].len());
        for m in ["a", "c"] {
            assert!(before[m].is_subset(&after[m]), "{m} kept its partitions");
        }
    }

    #[test]
    fn a_joiner_takes_only_its_fair_share() {
        let c = counts(&[("t", 12)]);
        let s3 = subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let before = assign(&s3, &c, &Assignment::new());
        let s4 = subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"]), ("d", &["t"])]);
        let after = assign(&s4, &c, &before);
        check_complete(&s4, &c, &after);
        assert_eq!(moved(&before, &after), 3, "only d's three partitions move");
        assert_eq!(after["d"].len(), 3);
    }

    #[test]
    fn expansion_hands_new_partitions_out_without_moving_old_ones() {
        let s = subs(&[("a", &["t"]), ("b", &["t"])]);
        let before = assign(&s, &counts(&[("t", 2)]), &Assignment::new());
        let c = counts(&[("t", 4)]);
        let after = assign(&s, &c, &before);
        check_complete(&s, &c, &after);
        assert_eq!(moved(&before, &after), 2);
        for m in ["a", "b"] {
            assert!(before[m].is_subset(&after[m]));
        }
    }

    #[test]
    fn members_only_get_topics_they_subscribe_to() {
        let s = subs(&[("a", &["x"]), ("b", &["x", "y"]), ("c", &["y"])]);
        let c = counts(&[("x", 3), ("y", 3), ("z", 5)]);
        let a = assign(&s, &c, &Assignment::new());
        check_complete(&s, &c, &a);
        assert_eq!(loads(&a), (2, 2));
    }

    #[test]
    fn more_members_than_partitions_leaves_some_idle() {
        let s = subs(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let c = counts(&[("t", 2)]);
        let a = assign(&s, &c, &Assignment::new());
        check_complete(&s, &c, &a);
        assert_eq!(loads(&a), (0, 1));
    }

    proptest! {
        #[test]
        fn any_change_keeps_every_partition_owned_once_and_balanced(
            partitions in 1u32..24,
            members_before in 1usize..6,
            members_after in 1usize..6,
            partitions_grow in 0u32..6,
        ) {
            let names: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
            let s = |n: usize| -> BTreeMap<String, BTreeSet<String>> {
                names[..n].iter().map(|m| (m.clone(), BTreeSet::from(["t".to_string()]))).collect()
            };
            let c1 = counts(&[("t", partitions)]);
            let before = assign(&s(members_before), &c1, &Assignment::new());
            check_complete(&s(members_before), &c1, &before);
            // Later members replace earlier ones: drop the first, add new ones at the end.
            let after_subs: BTreeMap<String, BTreeSet<String>> = names[1..=members_after]
                .iter().map(|m| (m.clone(), BTreeSet::from(["t".to_string()]))).collect();
            let c2 = counts(&[("t", partitions + partitions_grow)]);
            let after = assign(&after_subs, &c2, &before);
            check_complete(&after_subs, &c2, &after);
            let (min, max) = loads(&after);
            prop_assert!(max - min <= 1);
            // Stickiness: a survivor gives up partitions only down to the fair share.
            let fair_floor = (partitions + partitions_grow) as usize / members_after;
            for (m, had) in &before {
                if let Some(now) = after.get(m) {
                    let kept = had.intersection(now).count();
                    prop_assert!(kept >= had.len().min(fair_floor), "{m} lost too many");
                }
            }
        }
    }
}
