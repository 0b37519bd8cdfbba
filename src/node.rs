//! The node: composes the layers of one tidelog process and owns their background tasks.
//!
//! Architecture invariant: layers hold only what is below them. The [`Broker`] knows nothing
//! of groups; the [`GroupCoordinator`] holds the broker; the node holds both (and, later,
//! replication and the controller client). HTTP handlers reach each through the node.
//!
//! Shutdown: [`Node::begin_shutdown`] flips the broker's shutdown signal, which ends
//! long-polls, streams and every background task; [`Node::close`] waits for the tasks, then
//! closes the broker cleanly. Tasks still running when the last handle to the node drops are
//! aborted.
//!
//! Failure policy: a panic anywhere is a bug and stops the whole process
//! ([`install_panic_hook`], and `panic = "abort"` in the release profile). A panicked flusher
//! or session task left alone would freeze the high watermark or the groups while `readyz`
//! still said ready.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;

use crate::broker::{Broker, BrokerError};
use crate::cluster::Cluster;
use crate::cluster::client::{CallError, InternalClient};
use crate::cluster::controller::ControlError;
use crate::cluster::forwarder::Forwarder;
use crate::config::BrokerConfig;
use crate::config::TopicConfig;
use crate::coordination::{InternalTopicMaker, follow_leadership};
use crate::groups::GroupCoordinator;
use crate::groups::offsets::OFFSETS_TOPIC;
use crate::groups::remote::{
    OFFSETS_TIMEOUT, READ_PATH, READ_TIMEOUT_EXTRA, RemoteAnswer, RemotePartitions, RemoteRead,
    RemoteWait, WAIT_PATH, WaitAnswer, answer_bytes_max, decode_answer,
};
use crate::groups::sessions::run_sessions;
use crate::limits::Limits;
use crate::metadata::{Command, MetadataError, NodeId, PartitionId};
use crate::producers::idempotency_keys::{IDEMPOTENCY_KEYS_TOPIC, IdempotencyKeys};
use crate::producers::{PRODUCERS_TOPIC, ProducerRegistry};
use crate::replication::Replicator;
use crate::replication::manager::{ReplicaManager, Role};

/// One tidelog process: the broker, the group coordinator, their background tasks.
/// Cheap to clone (every field is shared); the HTTP state is a clone.
#[derive(Debug, Clone)]
pub struct Node {
    /// Topics, partitions, produce and fetch.
    pub broker: Arc<Broker>,
    /// Consumer groups; holds its own handle to the broker.
    pub groups: Arc<GroupCoordinator>,
    /// Producer sessions (ids, names, epochs) for idempotent produce; holds the broker.
    pub producers: Arc<ProducerRegistry>,
    /// `Idempotency-Key`s of produces and where their answers are stored; holds the broker.
    pub idempotency_keys: Arc<IdempotencyKeys>,
    /// Membership in the cluster, its metadata Raft voter and controller.
    pub cluster: Arc<Cluster>,
    /// The pooled client that forwards requests to the broker serving them (cluster only).
    pub forward: Forwarder,
    /// The local replicas of the cluster's partitions and their roles (idle on a broker
    /// alone).
    pub replicas: Arc<ReplicaManager>,
    /// The replication data path: leaders' follower fetches, high watermarks and ISR
    /// changes, and this broker's fetchers (idle on a broker alone).
    pub replication: Arc<Replicator>,
    /// Retention, group sessions, metrics refresh; stopped by shutdown, aborted when the node
    /// drops.
    tasks: Arc<BackgroundTasks>,
}

impl Node {
    /// Opens the data directory (recovering every topic), replays committed offsets, and
    /// starts the background tasks.
    pub async fn open(config: BrokerConfig) -> Result<Node, BrokerError> {
        // Before anything records a metric, so the idle timeout holds for every series.
        let idle = Duration::from_millis(config.metrics_idle_timeout_ms).max(METRICS_IDLE_MIN);
        crate::metrics::install_with_idle_timeout(idle);
        crate::broker::inline_sync::set_enabled(config.fsync_on_workers);
        let cluster = Cluster::open(&config)
            .await
            .map_err(|e| BrokerError::Io(e.to_string()))?;
        let broker = Broker::open(config).await?;
        let clustered = cluster.is_clustered();
        let groups = Arc::new(GroupCoordinator::open(Arc::clone(&broker), clustered)?);
        let producers = Arc::new(ProducerRegistry::open(Arc::clone(&broker), clustered)?);
        let idempotency_keys = Arc::new(IdempotencyKeys::open(Arc::clone(&broker), clustered)?);
        let mut tasks = vec![
            tokio::spawn(Arc::clone(&broker).run_retention()),
            tokio::spawn(run_sessions(Arc::clone(&groups))),
            tokio::spawn(refresh_metrics(
                Arc::clone(&broker),
                Arc::clone(&groups),
                Arc::clone(&idempotency_keys),
                idle / 4,
            )),
        ];
        let replicas = ReplicaManager::new(Arc::clone(&cluster), Arc::clone(&broker));
        if clustered {
            broker.set_session_lease(cluster.session_lease());
            let maker = internal_topic_maker(&cluster, &broker, &replicas);
            groups.make_offsets_topic_with(maker.clone());
            groups.read_remote_with(Arc::new(LeaderReads {
                cluster: Arc::clone(&cluster),
                client: InternalClient::default(),
                batch_bytes_max: broker.limits().request_body_bytes_max,
            }));
            producers.make_topic_with(maker.clone());
            idempotency_keys.make_topic_with(maker);
        }
        let settings = crate::replication::Settings::from_config(&broker.config);
        let replication = Replicator::new(
            Arc::clone(&broker),
            Arc::clone(&cluster),
            Arc::clone(&replicas),
            settings,
        );
        if clustered {
            // After the replicator's hook (hooks run in order), so a new leader's replica is
            // in its leader role, high watermark included, before a load looks at it.
            follow_internal_leaders(&replicas, &groups, &producers, &idempotency_keys);
        }
        tasks.extend(replication.start());
        tasks.extend(replicas.start(&broker.shutdown_signal()));
        tasks.extend(cluster.start(&broker.shutdown_signal()));
        let forward = Forwarder::new(Duration::from_millis(broker.limits().forward_timeout_ms));
        Ok(Node {
            broker,
            groups,
            producers,
            idempotency_keys,
            cluster,
            forward,
            replicas,
            replication,
            tasks: Arc::new(BackgroundTasks(Mutex::new(tasks))),
        })
    }

    pub fn limits(&self) -> &Limits {
        self.broker.limits()
    }

    /// A cluster member's controlled shutdown, before [`Node::begin_shutdown`] (SIGTERM):
    /// asks the controller to move this broker's leaderships to other in-sync replicas and
    /// take it out of every in-sync set, then waits until its local replicas lead nothing;
    /// `controlled_shutdown_timeout_ms` bounds the whole. The broker serves meanwhile:
    /// produces for the partitions it no longer leads are forwarded to their new leaders. On
    /// a broker alone, or with the bound 0, nothing.
    pub async fn drain(&self) {
        let bound = Duration::from_millis(self.broker.config.controlled_shutdown_timeout_ms);
        if !self.cluster.is_clustered() || bound.is_zero() {
            return;
        }
        let started = tokio::time::Instant::now();
        let deadline = started + bound;
        let led = self.replicas.led().len();
        let Some(answer) = self.cluster.drain_leaderships(deadline).await else {
            return;
        };
        let mut changed = self.replicas.subscribe();
        loop {
            changed.mark_unchanged();
            let still = self.replicas.led();
            if still.is_empty() {
                break;
            }
            tokio::select! {
                moved = changed.changed() => if moved.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => {
                    let names: Vec<String> =
                        still.iter().map(|r| format!("{}/{}", r.topic, r.partition)).collect();
                    tracing::warn!(
                        "controlled shutdown: still leading {} after {} ms; stopping anyway",
                        names.join(", "),
                        bound.as_millis()
                    );
                    return;
                }
            }
        }
        tracing::info!(
            index = answer.index,
            brokers_behind = ?answer.brokers_behind,
            "controlled shutdown: leads nothing now ({led} leaderships moved in {} ms)",
            started.elapsed().as_millis()
        );
    }

    /// Begins shutdown: long-polls, streams and background tasks end; produces are refused.
    pub fn begin_shutdown(&self) {
        self.broker.begin_shutdown();
    }

    /// Finishes a clean shutdown: background tasks stopped (a cluster member then tells the
    /// controller it stopped, which fences it at once), then the broker closed (every
    /// partition synced and sealed, then the clean-shutdown marker).
    pub async fn close(&self) -> Result<(), BrokerError> {
        self.begin_shutdown();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        self.cluster.report_stopped().await;
        self.broker.close().await
    }
}

/// On a cluster, a group coordinator reads the partitions it holds no replica of at their
/// leaders (`groups::remote`), and counts partitions from the metadata.
#[derive(Debug)]
struct LeaderReads {
    cluster: Arc<Cluster>,
    client: InternalClient,
    /// The largest batch a leader may hold (a request body's limit): a read answers at
    /// least one whole.
    batch_bytes_max: u64,
}

impl RemotePartitions for LeaderReads {
    fn partition_count(&self, topic: &str) -> Option<u32> {
        self.cluster
            .with_image(|image| Some(image.topics.get(topic)?.partitions.len() as u32))
    }

    fn read(&self, read: RemoteRead) -> BoxFuture<'static, Result<RemoteAnswer, BrokerError>> {
        let leader = self.cluster.with_image(|image| {
            image
                .partition(&read.topic, read.partition)
                .map(|p| p.leader)
        });
        let address = match leader {
            Some(leader) => self
                .leader_address(leader)
                .map_err(|why| read.leader_not_available(why)),
            None => return Box::pin(async move { Err(BrokerError::TopicNotFound(read.topic)) }),
        };
        let (client, batch_bytes_max) = (self.client.clone(), self.batch_bytes_max);
        Box::pin(async move {
            let address = address?;
            let timeout = match (read.max_records, read.wait_ms) {
                (0, 0) => OFFSETS_TIMEOUT,
                (_, wait_ms) => Duration::from_millis(wait_ms) + READ_TIMEOUT_EXTRA,
            };
            let cap = answer_bytes_max(read.max_bytes, batch_bytes_max);
            let answer = client
                .post_for_bytes(address, READ_PATH, &read, timeout, cap)
                .await;
            let bytes = answer.map_err(|e| read_failed(&read, e))?;
            decode_answer(&bytes).ok_or_else(|| read.leader_not_available("a short answer".into()))
        })
    }

    fn leader_of(&self, topic: &str, partition: PartitionId) -> Option<NodeId> {
        self.cluster
            .with_image(|image| image.partition(topic, partition)?.leader)
    }

    fn wait(&self, wait: RemoteWait) -> BoxFuture<'static, Result<bool, BrokerError>> {
        let Some(first) = wait.parts.first() else {
            return Box::pin(async { Ok(false) });
        };
        // Named by its first partition: the caller groups them again when it fails.
        let (topic, partition) = (first.topic.clone(), first.partition);
        let unavailable = move |why: String| BrokerError::LeaderNotAvailable {
            topic: topic.clone(),
            partition,
            why,
        };
        let address = self.leader_address(self.leader_of(&first.topic, first.partition));
        let client = self.client.clone();
        Box::pin(async move {
            let address = address.map_err(&unavailable)?;
            let timeout = Duration::from_millis(wait.wait_ms) + READ_TIMEOUT_EXTRA;
            let answer = client
                .post_for_bytes(address, WAIT_PATH, &wait, timeout, WAIT_ANSWER_BYTES_MAX)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let answer: WaitAnswer = serde_json::from_slice(&answer)
                .map_err(|e| unavailable(format!("its answer does not parse: {e}")))?;
            Ok(answer.ready)
        })
    }
}

/// What a read at a partition's leader that failed means for the coordinator: the topic or
/// partition is gone there (deleted meanwhile: a 404 with that code), or the leader cannot
/// be read now (its leadership moving, its broker down, or any other refusal, a 404 of a
/// route it does not serve included, as from a broker of an older version): retryable.
fn read_failed(read: &RemoteRead, e: CallError) -> BrokerError {
    match e {
        CallError::Refused {
            status: 404, code, ..
        } if code == "topic_not_found" || code == "partition_not_found" => {
            BrokerError::TopicNotFound(read.topic.clone())
        }
        e => read.leader_not_available(e.to_string()),
    }
}

impl LeaderReads {
    /// Where to reach a partition's `leader`; why not, when there is none or its address is
    /// unknown.
    fn leader_address(&self, leader: Option<NodeId>) -> Result<std::net::SocketAddr, String> {
        let node = leader.ok_or_else(|| "it has no leader now".to_string())?;
        self.cluster
            .peer_address(node)
            .ok_or_else(|| format!("broker {} has no known address", node.0))
    }
}

/// Largest answer to a wait (`{"ready":true}`, or a problem of a few hundred bytes).
const WAIT_ANSWER_BYTES_MAX: usize = 64 * 1024;

/// How long the first call that needs an internal topic on a cluster waits for this broker
/// to hold its replica of the topic it created in the metadata.
const INTERNAL_TOPIC_WAIT: Duration = Duration::from_secs(15);

/// On a cluster, the internal topics (`__consumer_offsets`, `__producers`,
/// `__idempotency_keys`) are topics of the metadata, replicated like any topic: one partition
/// on min(3, active brokers), this broker (the controller's, where a call goes while the
/// metadata has no such topic) first so it is the preferred leader. Made the first time a
/// call needs one.
fn internal_topic_maker(
    cluster: &Arc<Cluster>,
    broker: &Arc<Broker>,
    replicas: &Arc<ReplicaManager>,
) -> InternalTopicMaker {
    let (cluster, broker, replicas) = (
        Arc::clone(cluster),
        Arc::clone(broker),
        Arc::clone(replicas),
    );
    InternalTopicMaker(Arc::new(move |name: &'static str, config: TopicConfig| {
        let (cluster, broker, replicas) = (
            Arc::clone(&cluster),
            Arc::clone(&broker),
            Arc::clone(&replicas),
        );
        Box::pin(async move {
            let mut changed = replicas.subscribe();
            if !create_internal_topic(&cluster, name, config).await? {
                return Err(BrokerError::NotCoordinator { topic: name });
            }
            // Held and given its role: a replica takes no write before its role.
            let wait = async {
                while broker.topic(name).is_err()
                    || replicas.role_of(name, PartitionId(0)).is_none()
                {
                    if changed.changed().await.is_err() {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(INTERNAL_TOPIC_WAIT, wait).await;
            broker.topic(name).map(|_| ())
        })
    }))
}

/// Proposes the internal topic `name` at the controller (this broker must run it: a call
/// reaches it while the metadata has no such topic); a topic that already exists is fine.
/// True if this broker holds one of its replicas.
async fn create_internal_topic(
    cluster: &Cluster,
    name: &'static str,
    config: TopicConfig,
) -> Result<bool, BrokerError> {
    let Some(controller) = cluster.controller() else {
        return Err(BrokerError::NotCoordinator { topic: name });
    };
    let me = cluster.node_id();
    let proposed = controller
        .propose_built(move |image| {
            let mut replicas = vec![me];
            let others = image.active_brokers().map(|b| b.node_id);
            replicas.extend(others.filter(|n| *n != me).take(2));
            Ok(Command::CreateTopic {
                name: name.to_string(),
                config,
                min_insync_replicas: (replicas.len() as u32).min(2),
                assignment: vec![replicas],
            })
        })
        .await;
    match proposed {
        Ok(_) | Err(ControlError::Refused(MetadataError::TopicExists(_))) => {}
        Err(e) => {
            return Err(BrokerError::StorageUnavailable(format!(
                "creating {name} in the cluster's metadata: {e}"
            )));
        }
    }
    Ok(cluster.with_image(|image| {
        image
            .partition(name, PartitionId(0))
            .is_some_and(|p| p.replicas.contains(&me))
    }))
}

/// On a cluster, the state kept in an internal topic is served by its partition's leader
/// (`crate::coordination`): each owner hears when this broker starts leading the partition
/// (it drops its state and replays the log) and when it stops (it drops its state).
fn follow_internal_leaders(
    replicas: &ReplicaManager,
    groups: &Arc<GroupCoordinator>,
    producers: &Arc<ProducerRegistry>,
    idempotency_keys: &Arc<IdempotencyKeys>,
) {
    let (groups, producers, keys) = (
        Arc::clone(groups),
        Arc::clone(producers),
        Arc::clone(idempotency_keys),
    );
    replicas.on_role_change(move |change| {
        if change.partition != PartitionId(0) {
            return;
        }
        let leader_epoch = match &change.after {
            Some(Role::Leader { leader_epoch, .. }) => Some(leader_epoch.0),
            _ => None,
        };
        let replica = Arc::clone(&change.replica);
        match &*change.topic {
            OFFSETS_TOPIC => follow_leadership(&groups, leader_epoch, replica),
            PRODUCERS_TOPIC => follow_leadership(&producers, leader_epoch, replica),
            IDEMPOTENCY_KEYS_TOPIC => follow_leadership(&keys, leader_epoch, replica),
            _ => {}
        }
    });
}

/// Shortest metrics idle timeout honoured: the refresh task runs every quarter of it.
const METRICS_IDLE_MIN: Duration = Duration::from_millis(100);

/// Keeps the metric series of every live topic, partition and group (and the process-wide
/// ones) from going idle, so only the series of deleted names leave `/metrics`. Ends at
/// shutdown.
async fn refresh_metrics(
    broker: Arc<Broker>,
    groups: Arc<GroupCoordinator>,
    idempotency_keys: Arc<IdempotencyKeys>,
    every: Duration,
) {
    let mut shutdown = broker.shutdown_signal();
    let mut refresh = tokio::time::interval(every);
    let mut upkeep = tokio::time::interval(METRICS_UPKEEP_EVERY.min(every));
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                crate::metrics::refresh_process_series();
                broker.refresh_metrics();
                groups.refresh_metrics();
                idempotency_keys.refresh_metrics();
                crate::metrics::drop_idle_series();
                release_freed_memory();
            }
            _ = upkeep.tick() => crate::metrics::upkeep(),
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Gives the memory freed since the last call back to the system. glibc's malloc keeps freed
/// memory inside its arenas (only the top of each is returned on its own), so the peak of a
/// burst (a churned topic's series, a large fetch) otherwise stays resident for good.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; it takes each arena's lock itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often histogram samples are folded into their buckets. The recorder keeps every
/// sample until then (the exporter's own listener would do this; we serve `/metrics`
/// ourselves), so without it memory grows with every request between scrapes.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The node's background tasks; aborted when the last clone of the node drops.
#[derive(Debug)]
struct BackgroundTasks(Mutex<Vec<JoinHandle<()>>>);

impl BackgroundTasks {
    /// std mutex: taken only to push or take the handles, never across `.await`.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.0.lock().expect("the task list lock is not poisoned")
    }
}

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for task in self.lock().iter() {
            task.abort();
        }
    }
}

/// Makes any panic, on any thread or task, abort the process after the usual message: a bug
/// must stop the broker loudly (a supervisor restarts it and recovery runs), never leave it
/// serving with a dead task. The release profile also sets `panic = "abort"`; this hook gives
/// the debug binary the tests run the same behaviour. Call once, from `main` (not from tests:
/// a failing assertion in a test would abort the test harness).
pub fn install_panic_hook() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("tidelog: a bug stopped the process (panic); restart it to recover");
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::TopicPartition;
    use crate::groups::group::OffsetReset;

    /// A leader's 404 for its topic or partition is the topic gone; anything else, a 404
    /// without such a code (a route an older broker does not serve) included, is retried.
    #[test]
    fn a_leaders_refusal_is_the_topic_gone_only_when_it_says_so() {
        let tp = TopicPartition::new("orders", PartitionId(2));
        let read = RemoteRead::offsets(&tp, None, OffsetReset::Earliest);
        let refused = |status: u16, code: &str| CallError::Refused {
            status,
            code: code.to_string(),
            detail: String::new(),
        };
        for code in ["topic_not_found", "partition_not_found"] {
            assert!(
                matches!(read_failed(&read, refused(404, code)), BrokerError::TopicNotFound(t) if t == "orders"),
                "{code}"
            );
        }
        for e in [
            refused(404, "not_found"),
            refused(421, "not_leader"),
            refused(503, "leader_not_available"),
            CallError::Unreachable("connection refused".into()),
        ] {
            let why = e.to_string();
            match read_failed(&read, e) {
                BrokerError::LeaderNotAvailable {
                    topic,
                    partition,
                    why: said,
                } => {
                    assert_eq!(
                        (topic.as_str(), partition, said),
                        ("orders", PartitionId(2), why)
                    );
                }
                other => panic!("{why}: {other:?}"),
            }
        }
    }
}
