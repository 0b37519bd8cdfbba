//! `MetadataImage::apply`: validate one command, then change the image.
//!
//! Each arm checks everything before it changes anything, so a refused command leaves the
//! image as it was (but for `applied`).

use super::image::{MetadataImage, PartitionRecord, TopicRecord};
use super::{BrokerEpoch, Command, Election, LeaderEpoch, NodeId, PartitionEpoch, PartitionId};
use crate::metadata::image::BrokerRecord;

/// What an applied command produced, beyond the new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// `RegisterBroker`: the epoch of the incarnation (new or, for a retry, the existing one).
    Registered {
        broker_epoch: BrokerEpoch,
    },
}

/// Why a command was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    UnknownBroker(NodeId),
    /// The command comes from an older incarnation of the broker.
    StaleBrokerEpoch {
        node_id: NodeId,
        current: BrokerEpoch,
        given: BrokerEpoch,
    },
    TopicExists(String),
    TopicNotFound(String),
    PartitionNotFound {
        topic: String,
        partition: PartitionId,
    },
    InvalidAssignment(String),
    InvalidMinInsync {
        min_insync_replicas: u32,
        replication_factor: u32,
    },
    /// An ISR change from a broker that is not (or no longer) the leader.
    NotLeader {
        leader: Option<NodeId>,
        given: NodeId,
    },
    FencedLeaderEpoch {
        current: LeaderEpoch,
        given: LeaderEpoch,
    },
    /// The partition changed since the proposer read it; it re-reads and retries.
    StalePartitionEpoch {
        current: PartitionEpoch,
        given: PartitionEpoch,
    },
    InvalidIsr(String),
    /// An ISR change naming a replica that cannot be in sync.
    IneligibleReplica {
        replica: NodeId,
        reason: &'static str,
    },
    /// An election names a broker that holds no replica of the partition.
    NotInReplicaSet {
        replica: NodeId,
    },
    /// An election names a replica that is fenced (never registered, or its session
    /// expired) or shutting down: it cannot lead.
    ReplicaFenced {
        replica: NodeId,
    },
    /// An unclean election for a partition that has a leader: only an offline partition
    /// may be elected unclean.
    PartitionHasLeader {
        leader: NodeId,
    },
    /// A preferred election while the first replica is not an active ISR member.
    PreferredLeaderNotAvailable {
        replica: NodeId,
    },
    /// A reassignment asked for while another is under way (cancel it first).
    ReassignmentInProgress {
        adding: Vec<NodeId>,
        removing: Vec<NodeId>,
    },
    /// A cancel with no reassignment under way.
    NoReassignment,
    /// Cancelling would leave the partition without a leader: no replica of the original
    /// set is in sync or eligible (the move's new replicas hold the log now).
    CancelWouldLoseLeader,
    /// An unclean election of a replica a move is still adding (it may hold only part of
    /// the log, and electing it would complete the move and delete the full copies).
    ReplicaBeingAdded {
        replica: NodeId,
    },
}

impl std::fmt::Display for MetadataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use MetadataError as E;
        match self {
            E::UnknownBroker(n) => write!(f, "broker {n} is not registered"),
            E::StaleBrokerEpoch {
                node_id,
                current,
                given,
            } => write!(
                f,
                "broker {node_id}: epoch {} is stale (current {})",
                given.0, current.0
            ),
            E::TopicExists(t) => write!(f, "topic '{t}' already exists"),
            E::TopicNotFound(t) => write!(f, "topic '{t}' does not exist"),
            E::PartitionNotFound { topic, partition } => {
                write!(f, "topic '{topic}' has no partition {partition}")
            }
            E::InvalidAssignment(why) => write!(f, "invalid replica assignment: {why}"),
            E::InvalidMinInsync {
                min_insync_replicas,
                replication_factor,
            } => write!(
                f,
                "min_insync_replicas {min_insync_replicas} must be between 1 and the replication factor {replication_factor}"
            ),
            E::NotLeader { leader, given } => match leader {
                Some(l) => write!(f, "broker {given} is not the leader (broker {l} is)"),
                None => write!(
                    f,
                    "broker {given} is not the leader (the partition has none)"
                ),
            },
            E::FencedLeaderEpoch { current, given } => write!(
                f,
                "leader epoch {} is stale (current {})",
                given.0, current.0
            ),
            E::StalePartitionEpoch { current, given } => write!(
                f,
                "partition epoch {} is stale (current {})",
                given.0, current.0
            ),
            E::InvalidIsr(why) => write!(f, "invalid in-sync replica set: {why}"),
            E::IneligibleReplica { replica, reason } => {
                write!(f, "broker {replica} cannot be in sync: {reason}")
            }
            E::NotInReplicaSet { replica } => {
                write!(f, "broker {replica} holds no replica of the partition")
            }
            E::ReplicaFenced { replica } => write!(
                f,
                "broker {replica} is fenced (not registered, or its session expired) or shutting down, so it cannot lead"
            ),
            E::PartitionHasLeader { leader } => write!(
                f,
                "the partition has a leader (broker {leader}); only an offline partition may be elected unclean"
            ),
            E::PreferredLeaderNotAvailable { replica } => write!(
                f,
                "the preferred replica, broker {replica}, is not an alive in-sync replica"
            ),
            E::ReassignmentInProgress { adding, removing } => {
                let ids = |nodes: &[NodeId]| nodes.iter().map(|n| n.0).collect::<Vec<_>>();
                write!(
                    f,
                    "a reassignment is under way (adding {:?}, removing {:?}); cancel it first",
                    ids(adding),
                    ids(removing)
                )
            }
            E::NoReassignment => write!(f, "no reassignment of the partition is under way"),
            E::CancelWouldLoseLeader => write!(
                f,
                "no replica of the original set is in sync or eligible to lead, so cancelling would leave the partition without its records; let the move finish"
            ),
            E::ReplicaBeingAdded { replica } => write!(
                f,
                "broker {replica} is still being added by a reassignment and may hold only part of the log; elect an original replica, or cancel the move first"
            ),
        }
    }
}

impl std::error::Error for MetadataError {}

impl MetadataImage {
    /// Applies the command at `index` of the controller's log. Indexes must grow; a
    /// refused command changes nothing but `applied`.
    pub fn apply(&mut self, index: u64, command: &Command) -> Result<Outcome, MetadataError> {
        assert!(
            index > self.applied,
            "metadata commands apply in log order: {index} after {}",
            self.applied
        );
        self.applied = index;
        let outcome = self.apply_command(index, command)?;
        self.complete_moves();
        Ok(outcome)
    }

    /// One command's validation and change (see [`Self::apply`]).
    fn apply_command(&mut self, index: u64, command: &Command) -> Result<Outcome, MetadataError> {
        match command {
            Command::RegisterBroker {
                node_id,
                address,
                incarnation,
                data_lost,
            } => Ok(self.register(index, *node_id, address, *incarnation, *data_lost)),
            Command::FenceBroker {
                node_id,
                broker_epoch,
            } => {
                self.check_broker_epoch(*node_id, *broker_epoch)?;
                self.broker_mut(*node_id).fenced = true;
                self.leave_every_isr(*node_id);
                Ok(Outcome::Applied)
            }
            Command::BeginShutdown {
                node_id,
                broker_epoch,
            } => {
                self.check_broker_epoch(*node_id, *broker_epoch)?;
                self.broker_mut(*node_id).shutting_down = true;
                self.leave_every_isr(*node_id);
                Ok(Outcome::Applied)
            }
            Command::UnfenceBroker {
                node_id,
                broker_epoch,
            } => {
                self.check_broker_epoch(*node_id, *broker_epoch)?;
                self.broker_mut(*node_id).fenced = false;
                self.elect_offline_leaders();
                Ok(Outcome::Applied)
            }
            Command::CreateTopic {
                name,
                config,
                min_insync_replicas,
                assignment,
            } => self.create_topic(index, name, *config, *min_insync_replicas, assignment),
            Command::DeleteTopic { name } => {
                self.topics
                    .remove(name)
                    .ok_or_else(|| MetadataError::TopicNotFound(name.clone()))?;
                Ok(Outcome::Applied)
            }
            Command::CreatePartitions { topic, assignment } => {
                let factor = self.topic(topic)?.replication_factor;
                self.check_assignment(assignment, factor)?;
                let new: Vec<PartitionRecord> =
                    assignment.iter().map(|r| self.new_partition(r)).collect();
                self.topic_mut(topic)?.partitions.extend(new);
                Ok(Outcome::Applied)
            }
            Command::UpdateConfig { topic, config } => {
                self.topic_mut(topic)?.config = *config;
                Ok(Outcome::Applied)
            }
            Command::AlterPartition {
                topic,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
                high_watermark,
            } => {
                let min = self.topic(topic)?.min_insync_replicas;
                let p = self.partition_ref(topic, *partition)?;
                check_alter(p, *leader, *leader_epoch, *partition_epoch, isr)?;
                if let Some(inactive) = isr.iter().find(|n| !self.is_active(**n)) {
                    return Err(MetadataError::IneligibleReplica {
                        replica: *inactive,
                        reason: "fenced or shutting down",
                    });
                }
                let p = self.partition_mut(topic, *partition)?;
                set_isr(p, isr, min);
                p.high_watermark = p.high_watermark.max(*high_watermark);
                Ok(Outcome::Applied)
            }
            Command::ElectLeader {
                topic,
                partition,
                election,
            } => self.elect(topic, *partition, election),
            Command::AlterReassignment {
                topic,
                partition,
                target,
                throttle_bytes_per_s,
            } => match target {
                Some(target) => self.start_move(topic, *partition, target, *throttle_bytes_per_s),
                None => self.cancel_move(topic, *partition),
            },
        }
    }

    /// Starts moving a partition to `target`: its replicas become the target, then the
    /// replicas it removes; the ones it adds follow the leader outside the ISR until they
    /// catch up. A target that only reorders the replicas completes at once. The target of
    /// the move under way sets its throttle; another target is refused while it runs.
    fn start_move(
        &mut self,
        topic: &str,
        partition: PartitionId,
        target: &[NodeId],
        throttle_bytes_per_s: Option<u64>,
    ) -> Result<Outcome, MetadataError> {
        let factor = self.topic(topic)?.replication_factor;
        let p = self.partition_ref(topic, partition)?;
        if p.is_moving() && p.target() == target {
            // The move under way, asked again: its throttle is what this one says (Kafka
            // alters a running move's throttle the same way). Nothing else changes, so the
            // partition epoch stays (an ISR change under way is still valid).
            self.partition_mut(topic, partition)?.throttle_bytes_per_s = throttle_bytes_per_s;
            return Ok(Outcome::Applied);
        }
        if p.is_moving() {
            return Err(MetadataError::ReassignmentInProgress {
                adding: p.adding.clone(),
                removing: p.removing.clone(),
            });
        }
        self.check_assignment(&[target.to_vec()], factor)?;
        if p.replicas == target {
            return Ok(Outcome::Applied);
        }
        let p = self.partition_mut(topic, partition)?;
        p.moved_from = p.replicas.clone();
        p.adding = target
            .iter()
            .copied()
            .filter(|n| !p.replicas.contains(n))
            .collect();
        p.removing = p
            .replicas
            .iter()
            .copied()
            .filter(|n| !target.contains(n))
            .collect();
        p.replicas = target.iter().chain(&p.removing).copied().collect();
        // A reorder moves nothing (and completes at once): no throttle to keep.
        p.throttle_bytes_per_s = throttle_bytes_per_s.filter(|_| p.is_moving());
        p.partition_epoch.0 += 1;
        Ok(Outcome::Applied)
    }

    /// Completes every move whose whole target is in sync, whatever command brought it there:
    /// an ISR change, an election from the ELR or an unclean one, or the start of a move that
    /// only reorders the replicas.
    fn complete_moves(&mut self) {
        let active = self.active_set();
        for p in self.topics.values_mut().flat_map(|t| &mut t.partitions) {
            complete_move(p, &active);
        }
    }

    /// Cancels the move under way: the replicas it was adding leave the replica set, the
    /// ISR and the ELR; leadership stays if the leader is an original replica, else moves
    /// to one that is in sync (refused if none is).
    fn cancel_move(
        &mut self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<Outcome, MetadataError> {
        let p = self.partition_ref(topic, partition)?;
        if !p.is_moving() {
            return Err(MetadataError::NoReassignment);
        }
        let original = p.original();
        // The ISR and the ELR hold every committed record; if none of them is an original
        // replica, only the replicas the move adds hold them, and the cancel would drop them
        // (and their brokers delete the copies), with or without a leader now.
        let holders = p.isr.iter().chain(&p.elr);
        if holders.clone().next().is_some() && !holders.clone().any(|n| original.contains(n)) {
            return Err(MetadataError::CancelWouldLoseLeader);
        }
        let active = self.active_set();
        let mut next = p.clone();
        end_move(&mut next, original);
        let leader_kept = next.leader.is_some_and(|l| next.replicas.contains(&l));
        if !leader_kept && next.leader.is_some() {
            let Some(successor) = clean_candidate(&next, &active) else {
                return Err(MetadataError::CancelWouldLoseLeader);
            };
            set_leader(&mut next, Some(successor));
        } else {
            next.partition_epoch.0 += 1;
        }
        *self.partition_mut(topic, partition)? = next;
        Ok(Outcome::Applied)
    }

    fn register(
        &mut self,
        index: u64,
        node_id: NodeId,
        address: &str,
        incarnation: u64,
        data_lost: bool,
    ) -> Outcome {
        if let Some(b) = self.brokers.get_mut(&node_id)
            && b.incarnation == incarnation
        {
            b.address = address.to_string();
            return Outcome::Registered {
                broker_epoch: b.broker_epoch,
            };
        }
        let broker_epoch = BrokerEpoch(index);
        let record = BrokerRecord {
            node_id,
            address: address.to_string(),
            incarnation,
            broker_epoch,
            fenced: true,
            shutting_down: false,
        };
        self.brokers.insert(node_id, record);
        // The previous process's ISR places are not the new one's (KIP-841): it rejoins once
        // its leader sees it caught up.
        self.leave_every_isr(node_id);
        if data_lost {
            self.leave_every_elr(node_id);
        }
        Outcome::Registered { broker_epoch }
    }

    /// Takes `node` out of every eligible leader set: its replicas lost what they held, so
    /// electing one would silently give up acknowledged records (an operator can still ask
    /// for that with an unclean election, which reports what it gives up).
    fn leave_every_elr(&mut self, node: NodeId) {
        for p in self.topics.values_mut().flat_map(|t| &mut t.partitions) {
            if let Some(at) = p.elr.iter().position(|n| *n == node) {
                p.elr.remove(at);
                p.partition_epoch.0 += 1;
            }
        }
    }

    fn check_broker_epoch(&self, node: NodeId, given: BrokerEpoch) -> Result<(), MetadataError> {
        let b = self
            .brokers
            .get(&node)
            .ok_or(MetadataError::UnknownBroker(node))?;
        if b.broker_epoch != given {
            return Err(MetadataError::StaleBrokerEpoch {
                node_id: node,
                current: b.broker_epoch,
                given,
            });
        }
        Ok(())
    }

    fn broker_mut(&mut self, node: NodeId) -> &mut BrokerRecord {
        self.brokers
            .get_mut(&node)
            .expect("the broker epoch was checked, so the broker exists")
    }

    /// Removes `node` from every ISR (into the ELR where the ISR drops below its minimum)
    /// and moves every leadership it held to the next eligible replica.
    fn leave_every_isr(&mut self, node: NodeId) {
        let active = self.active_set();
        for topic in self.topics.values_mut() {
            let min = topic.min_insync_replicas;
            for p in &mut topic.partitions {
                let Some(at) = p.isr.iter().position(|n| *n == node) else {
                    continue;
                };
                p.isr.remove(at);
                if (p.isr.len() as u32) < min {
                    p.elr.push(node);
                }
                p.partition_epoch.0 += 1;
                if p.leader == Some(node) {
                    let next = clean_candidate(p, &active);
                    set_leader(p, next);
                }
            }
        }
    }

    fn elect_offline_leaders(&mut self) {
        let active = self.active_set();
        for p in self.topics.values_mut().flat_map(|t| &mut t.partitions) {
            if p.leader.is_none()
                && let Some(next) = clean_candidate(p, &active)
            {
                set_leader(p, Some(next));
            }
        }
    }

    fn active_set(&self) -> Vec<NodeId> {
        self.active_brokers().map(|b| b.node_id).collect()
    }

    fn create_topic(
        &mut self,
        index: u64,
        name: &str,
        config: crate::config::TopicConfig,
        min_insync_replicas: u32,
        assignment: &[Vec<NodeId>],
    ) -> Result<Outcome, MetadataError> {
        if self.topics.contains_key(name) {
            return Err(MetadataError::TopicExists(name.to_string()));
        }
        let factor = assignment.first().map_or(0, |r| r.len() as u32);
        self.check_assignment(assignment, factor)?;
        if min_insync_replicas == 0 || min_insync_replicas > factor {
            return Err(MetadataError::InvalidMinInsync {
                min_insync_replicas,
                replication_factor: factor,
            });
        }
        let partitions = assignment.iter().map(|r| self.new_partition(r)).collect();
        let record = TopicRecord {
            name: name.to_string(),
            topic_id: index,
            config,
            min_insync_replicas,
            replication_factor: factor,
            partitions,
        };
        self.topics.insert(name.to_string(), record);
        Ok(Outcome::Applied)
    }

    /// Every list has `factor` (at least one) distinct registered brokers.
    fn check_assignment(
        &self,
        assignment: &[Vec<NodeId>],
        factor: u32,
    ) -> Result<(), MetadataError> {
        let invalid = |why: String| Err(MetadataError::InvalidAssignment(why));
        if assignment.is_empty() {
            return invalid("no partitions".to_string());
        }
        if factor == 0 {
            return invalid("a partition needs at least one replica".to_string());
        }
        for (i, replicas) in assignment.iter().enumerate() {
            if replicas.len() as u32 != factor {
                return invalid(format!(
                    "partition {i} has {} replicas, the replication factor is {factor}",
                    replicas.len()
                ));
            }
            if let Some(n) = replicas.iter().find(|n| !self.brokers.contains_key(n)) {
                return invalid(format!("broker {n} is not registered"));
            }
            if has_duplicates(replicas) {
                return invalid(format!("partition {i} names a broker twice"));
            }
        }
        Ok(())
    }

    /// A new partition: every active replica is in sync (the log is empty), the first of
    /// them leads.
    fn new_partition(&self, replicas: &[NodeId]) -> PartitionRecord {
        let isr: Vec<NodeId> = replicas
            .iter()
            .copied()
            .filter(|n| self.is_active(*n))
            .collect();
        PartitionRecord {
            replicas: replicas.to_vec(),
            leader: isr.first().copied(),
            isr,
            elr: Vec::new(),
            leader_epoch: LeaderEpoch(0),
            partition_epoch: PartitionEpoch(0),
            high_watermark: 0,
            adding: Vec::new(),
            removing: Vec::new(),
            throttle_bytes_per_s: None,
            moved_from: Vec::new(),
        }
    }

    fn elect(
        &mut self,
        topic: &str,
        partition: PartitionId,
        election: &Election,
    ) -> Result<Outcome, MetadataError> {
        let p = self.partition_ref(topic, partition)?;
        match election {
            Election::Preferred => {
                let first = p.replicas[0];
                if p.leader == Some(first) {
                    return Ok(Outcome::Applied);
                }
                if !p.isr.contains(&first) || !self.is_active(first) {
                    return Err(MetadataError::PreferredLeaderNotAvailable { replica: first });
                }
                set_leader(self.partition_mut(topic, partition)?, Some(first));
            }
            Election::Unclean {
                replica,
                log_end_offset,
            } => {
                if !p.replicas.contains(replica) {
                    return Err(MetadataError::NotInReplicaSet { replica: *replica });
                }
                // It may hold only part of the log, and the move would then complete at once
                // and delete the original replicas' full copies.
                if p.adding.contains(replica) {
                    return Err(MetadataError::ReplicaBeingAdded { replica: *replica });
                }
                if let Some(leader) = p.leader {
                    return Err(MetadataError::PartitionHasLeader { leader });
                }
                if !self.is_active(*replica) {
                    return Err(MetadataError::ReplicaFenced { replica: *replica });
                }
                let p = self.partition_mut(topic, partition)?;
                p.isr = vec![*replica];
                p.elr.clear();
                p.high_watermark = *log_end_offset;
                set_leader(p, Some(*replica));
            }
        }
        Ok(Outcome::Applied)
    }

    fn topic(&self, name: &str) -> Result<&TopicRecord, MetadataError> {
        self.topics
            .get(name)
            .ok_or_else(|| MetadataError::TopicNotFound(name.to_string()))
    }

    fn topic_mut(&mut self, name: &str) -> Result<&mut TopicRecord, MetadataError> {
        self.topics
            .get_mut(name)
            .ok_or_else(|| MetadataError::TopicNotFound(name.to_string()))
    }

    fn partition_ref(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<&PartitionRecord, MetadataError> {
        self.topic(topic)?
            .partitions
            .get(partition.index())
            .ok_or_else(|| MetadataError::PartitionNotFound {
                topic: topic.to_string(),
                partition,
            })
    }

    fn partition_mut(
        &mut self,
        topic: &str,
        partition: PartitionId,
    ) -> Result<&mut PartitionRecord, MetadataError> {
        self.topic_mut(topic)?
            .partitions
            .get_mut(partition.index())
            .ok_or_else(|| MetadataError::PartitionNotFound {
                topic: topic.to_string(),
                partition,
            })
    }
}

/// The checks of an ISR change that need only the partition.
fn check_alter(
    p: &PartitionRecord,
    leader: NodeId,
    leader_epoch: LeaderEpoch,
    partition_epoch: PartitionEpoch,
    isr: &[NodeId],
) -> Result<(), MetadataError> {
    if p.leader != Some(leader) {
        return Err(MetadataError::NotLeader {
            leader: p.leader,
            given: leader,
        });
    }
    if p.leader_epoch != leader_epoch {
        return Err(MetadataError::FencedLeaderEpoch {
            current: p.leader_epoch,
            given: leader_epoch,
        });
    }
    if p.partition_epoch != partition_epoch {
        return Err(MetadataError::StalePartitionEpoch {
            current: p.partition_epoch,
            given: partition_epoch,
        });
    }
    let invalid = |why: &str| Err(MetadataError::InvalidIsr(why.to_string()));
    if !isr.contains(&leader) {
        return invalid("it must contain the leader");
    }
    if isr.iter().any(|n| !p.replicas.contains(n)) {
        return invalid("every member must be a replica");
    }
    if has_duplicates(isr) {
        return invalid("a member is named twice");
    }
    Ok(())
}

/// Sets the ISR; members leaving it while it is below `min` join the ELR, and the ELR
/// empties once the ISR reaches `min` again.
fn set_isr(p: &mut PartitionRecord, isr: &[NodeId], min: u32) {
    let below_min = (isr.len() as u32) < min;
    let leaving: Vec<NodeId> = p.isr.iter().copied().filter(|n| !isr.contains(n)).collect();
    p.elr.retain(|n| !isr.contains(n));
    if below_min {
        p.elr.extend(leaving);
    } else {
        p.elr.clear();
    }
    p.isr = isr.to_vec();
    p.partition_epoch.0 += 1;
}

/// Completes the move under way once every member of its target is in the ISR: the target
/// becomes the replica set, the removed replicas leave the ISR and the ELR, and leadership
/// moves to the target (its first in-sync member) if the leader was removed.
fn complete_move(p: &mut PartitionRecord, active: &[NodeId]) {
    if !p.is_moving() {
        return;
    }
    let target = p.target();
    if !target.iter().all(|n| p.isr.contains(n)) {
        return;
    }
    end_move(p, target);
    match p.leader {
        Some(l) if !p.replicas.contains(&l) => {
            let next = clean_candidate(p, active);
            set_leader(p, next);
        }
        _ => p.partition_epoch.0 += 1,
    }
}

/// Ends the move under way on the replica set `replicas` (its target, or its original set
/// for a cancel): the ISR and the ELR keep only its members, and the move's fields clear.
/// Leadership is the caller's.
fn end_move(p: &mut PartitionRecord, replicas: Vec<NodeId>) {
    p.isr.retain(|n| replicas.contains(n));
    p.elr.retain(|n| replicas.contains(n));
    p.replicas = replicas;
    p.adding.clear();
    p.removing.clear();
    p.throttle_bytes_per_s = None;
    p.moved_from.clear();
}

/// The replica a clean election picks: the first active ISR member in replica order, else
/// the first active ELR member.
fn clean_candidate(p: &PartitionRecord, active: &[NodeId]) -> Option<NodeId> {
    let pick = |set: &[NodeId]| {
        p.replicas
            .iter()
            .copied()
            .find(|n| set.contains(n) && active.contains(n))
    };
    pick(&p.isr).or_else(|| pick(&p.elr))
}

/// Changes the leader (bumping the leader epoch when it really changes). A leader taken
/// from the ELR becomes the ISR's first member.
fn set_leader(p: &mut PartitionRecord, leader: Option<NodeId>) {
    if let Some(l) = leader
        && let Some(at) = p.elr.iter().position(|n| *n == l)
    {
        p.elr.remove(at);
        p.isr.push(l);
    }
    if p.leader != leader {
        p.leader = leader;
        p.leader_epoch.0 += 1;
    }
    p.partition_epoch.0 += 1;
}

fn has_duplicates(nodes: &[NodeId]) -> bool {
    nodes
        .iter()
        .enumerate()
        .any(|(i, n)| nodes[..i].contains(n))
}
