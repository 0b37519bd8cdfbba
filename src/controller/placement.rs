//! Where new partitions' replicas go: a pure function of the metadata image.
//!
//! Each new partition goes to the active brokers holding the fewest replicas (ties: fewer
//! preferred leaderships, then the lower node id), and the one of them that is the
//! preferred leader of the fewest partitions leads it; then a new partition's leadership
//! moves to one of its replicas that leads at least two fewer, while there is one.
//! Counting what the image already holds makes an expansion fill the brokers that hold
//! least. Replica counts that were within one of each other stay so; leader counts stay
//! near even (at most one above the even share, not always within one: that would need a
//! matching over chains of partitions, more than placement is worth).

use std::collections::BTreeMap;

use crate::metadata::{MetadataImage, NodeId};

/// Why replicas could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// A replication factor above the number of active brokers (or of zero).
    ReplicationFactor { factor: u32, active_brokers: u32 },
}

impl std::fmt::Display for PlacementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlacementError::ReplicationFactor {
                factor,
                active_brokers,
            } => write!(
                f,
                "replication factor {factor} needs between 1 and {active_brokers} brokers (the active brokers)"
            ),
        }
    }
}

impl std::error::Error for PlacementError {}

/// Replica lists (preferred leader first) for `partitions` new partitions.
pub fn place_replicas(
    image: &MetadataImage,
    partitions: u32,
    factor: u32,
) -> Result<Vec<Vec<NodeId>>, PlacementError> {
    let mut load: BTreeMap<NodeId, Load> = image
        .active_brokers()
        .map(|b| (b.node_id, Load::default()))
        .collect();
    let active_brokers = load.len() as u32;
    if factor == 0 || factor > active_brokers {
        return Err(PlacementError::ReplicationFactor {
            factor,
            active_brokers,
        });
    }
    for p in image.topics.values().flat_map(|t| &t.partitions) {
        for (i, r) in p.replicas.iter().enumerate() {
            if let Some(l) = load.get_mut(r) {
                l.replicas += 1;
                l.leaders += u32::from(i == 0);
            }
        }
    }
    let mut assignment = Vec::with_capacity(partitions as usize);
    for _ in 0..partitions {
        let mut replicas = Vec::with_capacity(factor as usize);
        while (replicas.len() as u32) < factor {
            let next = least(&load, &replicas, |l| (l.replicas, l.leaders));
            load.get_mut(&next).expect("a loaded broker").replicas += 1;
            replicas.push(next);
        }
        let leader = *replicas
            .iter()
            .min_by_key(|n| (load[n].leaders, **n))
            .expect("at least one replica");
        load.get_mut(&leader).expect("a loaded broker").leaders += 1;
        replicas.retain(|n| *n != leader);
        replicas.insert(0, leader);
        assignment.push(replicas);
    }
    balance_leaders(&mut assignment, &mut load);
    Ok(assignment)
}

/// Moves the preferred leadership of new partitions from the brokers that lead the most to
/// a replica of the same partition that leads at least two fewer, while one exists. Each
/// move lowers the sum of squared leader counts, so the loop ends.
fn balance_leaders(assignment: &mut [Vec<NodeId>], load: &mut BTreeMap<NodeId, Load>) {
    loop {
        let swap = assignment.iter().enumerate().find_map(|(p, replicas)| {
            let leads = load[&replicas[0]].leaders;
            let at = replicas.iter().position(|n| load[n].leaders + 2 <= leads)?;
            Some((p, at))
        });
        let Some((p, at)) = swap else { return };
        let replicas = &mut assignment[p];
        load.get_mut(&replicas[0]).expect("a loaded broker").leaders -= 1;
        load.get_mut(&replicas[at])
            .expect("a loaded broker")
            .leaders += 1;
        replicas.swap(0, at);
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Load {
    /// Replicas of any partition on the broker.
    replicas: u32,
    /// Partitions whose preferred leader it is.
    leaders: u32,
}

/// The broker not in `taken` with the smallest key (ties: the lowest id).
fn least(
    load: &BTreeMap<NodeId, Load>,
    taken: &[NodeId],
    key: impl Fn(&Load) -> (u32, u32),
) -> NodeId {
    load.iter()
        .filter(|(n, _)| !taken.contains(n))
        .min_by_key(|(n, l)| (key(l), **n))
        .map(|(n, _)| *n)
        .expect("the factor was checked against the active brokers")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::TopicConfig;
    use crate::metadata::{BrokerEpoch, Command, Outcome};

    fn cluster(brokers: u32, fenced: &[u32]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for id in 1..=brokers {
            let register = Command::RegisterBroker {
                node_id: NodeId(id),
                address: String::new(),
                incarnation: 1,
                data_lost: false,
            };
            let index = image.applied + 1;
            let Ok(Outcome::Registered { broker_epoch }) = image.apply(index, &register) else {
                panic!("registration refused");
            };
            if !fenced.contains(&id) {
                unfence(&mut image, id, broker_epoch);
            }
        }
        image
    }

    fn unfence(image: &mut MetadataImage, id: u32, broker_epoch: BrokerEpoch) {
        let command = Command::UnfenceBroker {
            node_id: NodeId(id),
            broker_epoch,
        };
        let index = image.applied + 1;
        image.apply(index, &command).expect("unfence");
    }

    fn create(image: &mut MetadataImage, name: &str, assignment: Vec<Vec<NodeId>>) {
        let command = Command::CreateTopic {
            name: name.to_string(),
            config: TopicConfig::default(),
            min_insync_replicas: 1,
            assignment,
        };
        let index = image.applied + 1;
        image.apply(index, &command).expect("create");
    }

    fn counts(image: &MetadataImage) -> (BTreeMap<NodeId, u32>, BTreeMap<NodeId, u32>) {
        let mut replicas = BTreeMap::new();
        let mut leaders = BTreeMap::new();
        for b in image.active_brokers() {
            replicas.insert(b.node_id, 0);
            leaders.insert(b.node_id, 0);
        }
        for p in image.topics.values().flat_map(|t| &t.partitions) {
            *leaders.get_mut(&p.replicas[0]).unwrap() += 1;
            for r in &p.replicas {
                *replicas.get_mut(r).unwrap() += 1;
            }
        }
        (replicas, leaders)
    }

    fn spread(counts: &BTreeMap<NodeId, u32>) -> u32 {
        counts.values().max().unwrap() - counts.values().min().unwrap()
    }

    #[test]
    fn a_factor_above_the_active_brokers_is_refused_with_their_number() {
        let image = cluster(3, &[3]);
        let e = place_replicas(&image, 1, 3).unwrap_err();
        assert_eq!(
            e,
            PlacementError::ReplicationFactor {
                factor: 3,
                active_brokers: 2
            }
        );
        assert!(place_replicas(&image, 1, 0).is_err());
        let placed = place_replicas(&image, 4, 2).unwrap();
        assert!(placed.iter().flatten().all(|n| *n != NodeId(3)));
    }

    #[test]
    fn three_partitions_on_three_brokers_each_lead_one() {
        let image = cluster(3, &[]);
        let placed = place_replicas(&image, 3, 3).unwrap();
        let leaders: Vec<u32> = placed.iter().map(|r| r[0].0).collect();
        assert_eq!(leaders, vec![1, 2, 3]);
    }

    proptest! {
        #[test]
        fn replicas_stay_within_one_and_leaders_near_even(
            brokers in 1..6u32,
            topics in proptest::collection::vec((1..12u32, 1..6u32), 1..5),
        ) {
            let mut image = cluster(brokers, &[]);
            for (i, (partitions, factor)) in topics.into_iter().enumerate() {
                let factor = factor.min(brokers);
                let placed = place_replicas(&image, partitions, factor).unwrap();
                prop_assert_eq!(placed.len() as u32, partitions);
                create(&mut image, &format!("t{i}"), placed);
                let (replicas, leaders) = counts(&image);
                prop_assert!(spread(&replicas) <= 1, "replicas {:?}", replicas);
                let total: u32 = leaders.values().sum();
                let even = total.div_ceil(brokers);
                prop_assert!(leaders.values().all(|l| *l <= even + 1), "leaders {:?}", leaders);
            }
        }
    }
}
