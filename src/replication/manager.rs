//! The replica manager: follows this broker's copy of the cluster metadata and makes the
//! local replicas match it, then publishes each local replica's role.
//!
//! On every metadata change (and only while the broker is caught up with the controller's
//! log, so a stale image never deletes anything) it
//! - creates the local replica of every partition whose `replicas` name this broker, with
//!   the topic's config from the image (`Broker::ensure_replica_topic`), grows partition
//!   counts, takes config changes;
//! - deletes the local data of topics deleted from the metadata, or re-created under the
//!   same name (another `topic_id`), and of single replicas a reassignment moved away;
//! - computes each local replica's [`Role`] from the image, calls the role-change hooks,
//!   then moves the version [`ReplicaManager::subscribe`] gives, and tells the membership
//!   task the index it reconciled up to (heartbeats carry it to the controller).
//!
//! The broker stays ignorant of the cluster: the manager calls `Broker` methods. Topics of a
//! broker alone (no `topic_id`) are never touched. On a broker alone the manager runs no task
//! and holds no roles.
//!
//! Locks: `roles` and `hooks` are std mutexes, never held across an `.await`; hooks run
//! with neither held.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::{Broker, BrokerError, Partition, ReplicaTopic};
use crate::cluster::Cluster;
use crate::log::Offset;
use crate::metadata::{
    LeaderEpoch, MetadataImage, NodeId, PartitionEpoch, PartitionId, PartitionRecord,
};

/// A throttled reassignment, as its leader applies it: the most bytes per second it sends
/// the replicas the move adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveThrottle {
    pub adding: Vec<NodeId>,
    pub bytes_per_s: u64,
}

/// What this broker does for one partition it holds a replica of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It leads: producers append here, followers fetch from here.
    Leader {
        leader_epoch: LeaderEpoch,
        replicas: Vec<NodeId>,
        isr: Vec<NodeId>,
        min_insync_replicas: u32,
        /// The compare-and-swap token of an ISR change (`Command::AlterPartition`).
        partition_epoch: PartitionEpoch,
        /// The high watermark the metadata holds for the partition (the highest a leader
        /// reported with an ISR change).
        recorded_high_watermark: Offset,
        /// A throttled move under way: the replicas it adds and their rate.
        throttle: Option<MoveThrottle>,
    },
    /// It copies the leader's log.
    Follower {
        leader: NodeId,
        leader_epoch: LeaderEpoch,
    },
    /// The partition has no leader (no eligible replica is active).
    Offline,
}

/// One local replica and its role.
#[derive(Debug, Clone)]
pub struct LocalReplica {
    pub topic: Arc<str>,
    pub partition: PartitionId,
    /// The metadata's id of the topic: another id under the same name is another topic.
    pub topic_id: u64,
    pub role: Role,
    pub replica: Arc<Partition>,
}

/// A change of one local replica's role, as the hooks see it.
#[derive(Debug, Clone)]
pub struct RoleChange {
    pub topic: Arc<str>,
    pub partition: PartitionId,
    pub topic_id: u64,
    /// None: the replica is new here.
    pub before: Option<Role>,
    /// None: the replica went away (its topic was deleted or re-created); `replica` is then
    /// the old partition, already closed.
    pub after: Option<Role>,
    pub replica: Arc<Partition>,
}

type Hook = Arc<dyn Fn(&RoleChange) + Send + Sync>;

/// Local replicas by topic, then partition id.
type Roles = BTreeMap<Arc<str>, BTreeMap<PartitionId, LocalReplica>>;

pub struct ReplicaManager {
    cluster: Arc<Cluster>,
    broker: Arc<Broker>,
    /// The roles published last; std mutex, held only to read or replace them.
    roles: Mutex<Roles>,
    /// Moves after every reconcile that changed a role.
    version: watch::Sender<u64>,
    /// Called on every role change, in registration order.
    hooks: Mutex<Vec<Hook>>,
}

impl std::fmt::Debug for ReplicaManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaManager")
            .field("node_id", &self.cluster.node_id())
            .field("version", &*self.version.borrow())
            .finish_non_exhaustive()
    }
}

/// How long the manager waits before it tries again after a local replica could not be
/// made (a full disk, say).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

impl ReplicaManager {
    pub fn new(cluster: Arc<Cluster>, broker: Arc<Broker>) -> Arc<ReplicaManager> {
        Arc::new(ReplicaManager {
            cluster,
            broker,
            roles: Mutex::new(BTreeMap::new()),
            version: watch::Sender::new(0),
            hooks: Mutex::new(Vec::new()),
        })
    }

    /// Starts the reconcile task (none on a broker alone); it ends when `shutdown` flips.
    /// Hooks registered before this see every change.
    pub fn start(self: &Arc<Self>, shutdown: &watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        if !self.cluster.is_clustered() {
            return None;
        }
        Some(tokio::spawn(Arc::clone(self).run(shutdown.clone())))
    }

    pub fn is_clustered(&self) -> bool {
        self.cluster.is_clustered()
    }

    pub fn node_id(&self) -> NodeId {
        self.cluster.node_id()
    }

    /// Moves after every reconcile that changed a role.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The role of the local replica of `topic`/`partition`; None: no local replica.
    pub fn role_of(&self, topic: &str, partition: PartitionId) -> Option<Role> {
        self.replica(topic, partition).map(|r| r.role)
    }

    pub fn replica(&self, topic: &str, partition: PartitionId) -> Option<LocalReplica> {
        self.lock().get(topic)?.get(&partition).cloned()
    }

    /// The local replicas this broker leads.
    pub fn led(&self) -> Vec<LocalReplica> {
        self.filtered(|r| matches!(r, Role::Leader { .. }))
    }

    /// The local replicas this broker follows (their leaders in their roles).
    pub fn followed(&self) -> Vec<LocalReplica> {
        self.filtered(|r| matches!(r, Role::Follower { .. }))
    }

    /// Every local replica, whatever its role.
    pub fn all(&self) -> Vec<LocalReplica> {
        self.filtered(|_| true)
    }

    /// Registers a hook called on every role change, on the manager's task, after the local
    /// partition exists and before [`Self::subscribe`] moves. It must not block.
    pub fn on_role_change(&self, hook: impl Fn(&RoleChange) + Send + Sync + 'static) {
        self.hooks.lock().expect(POISONED).push(Arc::new(hook));
    }

    fn filtered(&self, keep: impl Fn(&Role) -> bool) -> Vec<LocalReplica> {
        self.lock()
            .values()
            .flat_map(BTreeMap::values)
            .filter(|r| keep(&r.role))
            .cloned()
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Roles> {
        self.roles.lock().expect(POISONED)
    }

    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.cluster.subscribe_image();
        let mut retry = false;
        loop {
            tokio::select! {
                _ = applied.changed() => {}
                _ = tokio::time::sleep(RETRY_AFTER_FAILURE), if retry => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            applied.mark_unchanged();
            if !self.cluster.caught_up() {
                retry = false;
                continue;
            }
            retry = !self.reconcile().await;
        }
    }

    /// Makes the local replicas match the image and publishes their roles; false when a
    /// replica could not be made or removed (tried again shortly).
    async fn reconcile(&self) -> bool {
        let image = self.cluster.with_image(MetadataImage::clone);
        let me = self.cluster.node_id();
        let mut complete = true;
        for topic in self.broker.topics() {
            let Some(id) = topic.topic_id() else { continue };
            if wanted_here(&image, &topic.name, me).is_some_and(|t| t.topic_id == id) {
                continue;
            }
            match self.broker.delete_topic(&topic.name).await {
                Ok(()) | Err(BrokerError::TopicNotFound(_)) => {
                    tracing::info!(topic = %topic.name, topic_id = id, "replicas removed: the topic left the metadata");
                }
                Err(e) => {
                    tracing::error!(topic = %topic.name, "removing the local replicas: {e}");
                    complete = false;
                }
            }
        }
        // Replicas a reassignment moved away, of topics this broker still holds others of.
        for topic in self.broker.topics() {
            let Some(id) = topic.topic_id() else { continue };
            let Some(record) = wanted_here(&image, &topic.name, me).filter(|t| t.topic_id == id)
            else {
                continue;
            };
            for replica in topic.partitions() {
                let named = record
                    .partitions
                    .get(replica.id.index())
                    .is_some_and(|p| p.replicas.contains(&me));
                if named {
                    continue;
                }
                if let Err(e) = self
                    .broker
                    .remove_replica(&topic.name, id, replica.id)
                    .await
                {
                    tracing::error!(topic = %topic.name, partition = replica.id.0, "removing the local replica: {e}");
                    complete = false;
                }
            }
        }
        for spec in replica_topics(&image, me) {
            if let Err(e) = self.broker.ensure_replica_topic(&spec).await {
                if !matches!(e, BrokerError::ShuttingDown) {
                    tracing::error!(topic = %spec.name, "making the local replicas: {e}");
                }
                complete = false;
            }
        }
        self.publish_roles(&image, me);
        if complete {
            self.cluster.set_reconciled(image.applied);
        }
        complete
    }

    /// Computes every local replica's role, calls the hooks for the changes, then publishes.
    fn publish_roles(&self, image: &MetadataImage, me: NodeId) {
        let mut next = Roles::new();
        for topic in self.broker.topics() {
            let Some(id) = topic.topic_id() else { continue };
            let Some(record) = image.topics.get(&*topic.name).filter(|t| t.topic_id == id) else {
                continue;
            };
            let replicas = next.entry(Arc::clone(&topic.name)).or_default();
            for replica in topic.partitions() {
                let Some(p) = record.partitions.get(replica.id.index()) else {
                    continue;
                };
                let role = role_for(p, me, record.min_insync_replicas);
                let local = LocalReplica {
                    topic: Arc::clone(&topic.name),
                    partition: replica.id,
                    topic_id: id,
                    role,
                    replica,
                };
                replicas.insert(local.partition, local);
            }
        }
        let changes = {
            let before = self.lock();
            diff_roles(&before, &next)
        };
        if changes.is_empty() {
            return;
        }
        *self.lock() = next;
        let hooks = self.hooks.lock().expect(POISONED).clone();
        for change in &changes {
            tracing::debug!(topic = %change.topic, partition = change.partition.0, before = ?change.before, after = ?change.after, "replica role");
            for hook in &hooks {
                hook(change);
            }
        }
        self.version.send_modify(|v| *v += 1);
    }
}

const POISONED: &str = "a lock is poisoned only after a panic, which stops the process";

/// The topic, if the image has it with at least one replica on `me`.
fn wanted_here<'a>(
    image: &'a MetadataImage,
    topic: &str,
    me: NodeId,
) -> Option<&'a crate::metadata::TopicRecord> {
    image
        .topics
        .get(topic)
        .filter(|t| t.partitions.iter().any(|p| p.replicas.contains(&me)))
}

/// Every topic of the image with a replica on `me`, as the broker should hold it.
pub fn replica_topics(image: &MetadataImage, me: NodeId) -> Vec<ReplicaTopic> {
    image
        .topics
        .values()
        .filter_map(|t| {
            let local: Vec<PartitionId> = t
                .partitions
                .iter()
                .zip(PartitionId::all(t.partitions.len() as u32))
                .filter(|(p, _)| p.replicas.contains(&me))
                .map(|(_, id)| id)
                .collect();
            (!local.is_empty()).then(|| ReplicaTopic {
                name: t.name.clone(),
                topic_id: t.topic_id,
                partitions: t.partitions.len() as u32,
                local,
                config: t.config,
            })
        })
        .collect()
}

/// What `me` does for partition `p`, as the image says.
pub fn role_for(p: &PartitionRecord, me: NodeId, min_insync_replicas: u32) -> Role {
    match p.leader {
        Some(leader) if leader == me => Role::Leader {
            leader_epoch: p.leader_epoch,
            replicas: p.replicas.clone(),
            isr: p.isr.clone(),
            min_insync_replicas,
            partition_epoch: p.partition_epoch,
            recorded_high_watermark: Offset(p.high_watermark),
            throttle: p.throttle_bytes_per_s.map(|bytes_per_s| MoveThrottle {
                adding: p.adding.clone(),
                bytes_per_s,
            }),
        },
        Some(leader) => Role::Follower {
            leader,
            leader_epoch: p.leader_epoch,
        },
        None => Role::Offline,
    }
}

/// The role changes from `before` to `after`: a replica gone (or of another `topic_id`) is a
/// change to None, a new one a change from None, a changed role one change.
fn diff_roles(before: &Roles, after: &Roles) -> Vec<RoleChange> {
    let find = |roles: &Roles, r: &LocalReplica| {
        roles
            .get(&r.topic)
            .and_then(|t| t.get(&r.partition))
            .filter(|o| o.topic_id == r.topic_id && Arc::ptr_eq(&o.replica, &r.replica))
            .cloned()
    };
    let mut changes = Vec::new();
    for old in before.values().flat_map(BTreeMap::values) {
        if find(after, old).is_none() {
            changes.push(RoleChange {
                topic: Arc::clone(&old.topic),
                partition: old.partition,
                topic_id: old.topic_id,
                before: Some(old.role.clone()),
                after: None,
                replica: Arc::clone(&old.replica),
            });
        }
    }
    for new in after.values().flat_map(BTreeMap::values) {
        let old = find(before, new);
        if old.as_ref().is_some_and(|o| o.role == new.role) {
            continue;
        }
        changes.push(RoleChange {
            topic: Arc::clone(&new.topic),
            partition: new.partition,
            topic_id: new.topic_id,
            before: old.map(|o| o.role),
            after: Some(new.role.clone()),
            replica: Arc::clone(&new.replica),
        });
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TopicConfig;
    use crate::metadata::Command;

    fn image_of_three() -> MetadataImage {
        let mut image = MetadataImage::default();
        let mut index = 0;
        let mut apply = |image: &mut MetadataImage, c: Command| {
            index += 1;
            image.apply(index, &c).unwrap();
        };
        for id in 1..=3 {
            apply(
                &mut image,
                Command::RegisterBroker {
                    node_id: NodeId(id),
                    address: format!("127.0.0.1:900{id}"),
                    incarnation: 1,
                    data_lost: false,
                },
            );
            let broker_epoch = image.brokers[&NodeId(id)].broker_epoch;
            apply(
                &mut image,
                Command::UnfenceBroker {
                    node_id: NodeId(id),
                    broker_epoch,
                },
            );
        }
        apply(
            &mut image,
            Command::CreateTopic {
                name: "t".into(),
                config: TopicConfig::default(),
                min_insync_replicas: 2,
                assignment: vec![
                    vec![NodeId(1), NodeId(2)],
                    vec![NodeId(2), NodeId(3)],
                    vec![NodeId(3), NodeId(1)],
                ],
            },
        );
        image
    }

    #[test]
    fn each_broker_holds_the_partitions_that_name_it() {
        let image = image_of_three();
        let specs = replica_topics(&image, NodeId(1));
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].local, vec![PartitionId(0), PartitionId(2)]);
        assert_eq!(specs[0].partitions, 3);
        assert_eq!(specs[0].topic_id, image.topics["t"].topic_id);
        assert!(replica_topics(&image, NodeId(4)).is_empty());
    }

    fn local(
        topic: &str,
        partition: PartitionId,
        topic_id: u64,
        role: Role,
        replica: &Arc<Partition>,
    ) -> Roles {
        let mut roles = Roles::new();
        let replica = LocalReplica {
            topic: Arc::from(topic),
            partition,
            topic_id,
            role,
            replica: Arc::clone(replica),
        };
        roles
            .entry(Arc::from(topic))
            .or_default()
            .insert(partition, replica);
        roles
    }

    fn follower(leader: u32, epoch: u32) -> Role {
        Role::Follower {
            leader: NodeId(leader),
            leader_epoch: LeaderEpoch(epoch),
        }
    }

    #[tokio::test]
    async fn a_change_is_reported_once_and_a_recreated_topic_as_a_removal_and_an_addition() {
        let dir = tempfile::tempdir().unwrap();
        let config = TopicConfig::default();
        let open = |sub: &str| {
            Partition::open(
                Arc::from("t"),
                PartitionId(0),
                &dir.path().join(sub),
                config.log_config(),
                config.flush_policy(),
                false,
            )
            .unwrap()
            .0
        };
        let (old, new) = (open("a"), open("b"));
        let before = local("t", PartitionId(0), 7, follower(1, 0), &old);
        assert!(
            diff_roles(&before, &before.clone()).is_empty(),
            "nothing changed"
        );

        let moved = local("t", PartitionId(0), 7, follower(2, 1), &old);
        let changes = diff_roles(&before, &moved);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].before, Some(follower(1, 0)));
        assert_eq!(changes[0].after, Some(follower(2, 1)));

        // Deleted and created again under the same name: another id, another partition.
        let recreated = local("t", PartitionId(0), 9, follower(1, 0), &new);
        let changes = diff_roles(&before, &recreated);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!((changes[0].topic_id, changes[0].after.clone()), (7, None));
        assert!(Arc::ptr_eq(&changes[0].replica, &old));
        assert_eq!((changes[1].topic_id, changes[1].before.clone()), (9, None));
        assert!(Arc::ptr_eq(&changes[1].replica, &new));

        let gone = diff_roles(&before, &Roles::new());
        assert_eq!((gone.len(), gone[0].after.clone()), (1, None));
        let added = diff_roles(&Roles::new(), &before);
        assert_eq!((added.len(), added[0].before.clone()), (1, None));
    }

    #[test]
    fn roles_follow_the_leader_in_the_image() {
        let image = image_of_three();
        let p = &image.topics["t"].partitions[0];
        assert_eq!(
            role_for(p, NodeId(1), 2),
            Role::Leader {
                leader_epoch: p.leader_epoch,
                replicas: vec![NodeId(1), NodeId(2)],
                isr: vec![NodeId(1), NodeId(2)],
                min_insync_replicas: 2,
                partition_epoch: p.partition_epoch,
                recorded_high_watermark: Offset(0),
                throttle: None,
            }
        );
        assert_eq!(
            role_for(p, NodeId(2), 2),
            Role::Follower {
                leader: NodeId(1),
                leader_epoch: p.leader_epoch
            }
        );
        let mut offline = p.clone();
        offline.leader = None;
        assert_eq!(role_for(&offline, NodeId(2), 2), Role::Offline);
    }
}
