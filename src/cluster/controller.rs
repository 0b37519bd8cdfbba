//! The controller of part 1: it runs on the broker with the lowest id of `--peers`, keeps
//! the metadata log (`<data>/__cluster/metadata.journal`) and the cluster id, registers
//! brokers, takes their heartbeats and fences the silent ones.
//!
//! Decisions come from the pure modules (`controller::liveness`), changes go through
//! `MetadataLog::propose` (journal fsynced, then `apply`). Part 2 puts the same log under
//! Raft. Every proposal runs on tokio's blocking pool (it fsyncs); the state's std mutex is
//! never held across an `.await`.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use std::collections::BTreeMap;

use super::identity;
use crate::config::TopicConfig;
use crate::controller::liveness::{HeartbeatError, Sessions};
use crate::controller::metadata_log::{MetadataLog, ProposeError};
use crate::controller::peers::Peers;
use crate::controller::placement::{PlacementError, place_replicas};
use crate::metadata::{BrokerEpoch, Command, NodeId, Outcome};
use crate::metadata::{MetadataError, MetadataImage};

/// The metadata journal's file name under `<data>/__cluster/`.
pub const METADATA_JOURNAL_FILE: &str = "metadata.journal";

/// Why the controller refused an internal request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// The node is not in `--peers`, or never registered.
    UnknownBroker(String),
    /// The request comes from an older incarnation of the broker.
    StaleBrokerEpoch {
        node_id: NodeId,
        current: BrokerEpoch,
    },
    /// The broker's data directory belongs to another cluster.
    ClusterIdMismatch { ours: String, theirs: String },
    /// The broker registers under an address `--peers` does not give it.
    PeersMismatch(String),
    /// Another process of this node id is alive (heartbeats within the session timeout).
    BrokerAlreadyAlive(NodeId),
    /// A request the controller cannot carry out as asked.
    Invalid(String),
    /// The metadata log could not be written.
    Io(String),
    /// Written, but `apply` refused it (a topic that exists, a stale partition epoch, ...).
    Refused(MetadataError),
    /// Replicas cannot be placed: a replication factor of 0 or above the active brokers.
    NotEnoughBrokers { factor: u32, active_brokers: u32 },
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::UnknownBroker(why) => f.write_str(why),
            ControlError::StaleBrokerEpoch { node_id, current } => write!(
                f,
                "broker {node_id} has registered again since (current broker epoch {}): register anew",
                current.0
            ),
            ControlError::ClusterIdMismatch { ours, theirs } => write!(
                f,
                "the data directory belongs to cluster {theirs}, this controller runs cluster {ours}"
            ),
            ControlError::PeersMismatch(why) => f.write_str(why),
            ControlError::BrokerAlreadyAlive(node) => write!(
                f,
                "broker {node} is alive under another process; a new one may register once its session expires"
            ),
            ControlError::Io(e) => write!(f, "the metadata log could not be written: {e}"),
            ControlError::Refused(e) => write!(f, "{e}"),
            ControlError::Invalid(why) => f.write_str(why),
            ControlError::NotEnoughBrokers {
                factor: 0,
                active_brokers,
            } => write!(
                f,
                "replication_factor 0: a topic needs 1 to {active_brokers} replicas ({active_brokers} brokers are alive)"
            ),
            ControlError::NotEnoughBrokers {
                factor,
                active_brokers,
            } => write!(
                f,
                "replication_factor {factor} needs {factor} live brokers; {active_brokers} are alive"
            ),
        }
    }
}

/// A registration request.
#[derive(Debug, Clone)]
pub struct Registration {
    pub node_id: NodeId,
    pub address: String,
    pub incarnation: u64,
    /// The cluster id in the broker's data directory, if it has one.
    pub cluster_id: Option<String>,
}

#[derive(Debug)]
struct State {
    log: MetadataLog,
    sessions: Sessions,
    /// Per broker: the metadata index its local replicas match, as its last heartbeat on
    /// the given broker epoch said.
    reconciled: BTreeMap<NodeId, (BrokerEpoch, u64)>,
}

/// A topic to create (checked by the caller against the limits and the name rules).
#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: u32,
    /// None: min(3, active brokers).
    pub replication_factor: Option<u32>,
    /// None: min(2, replication factor).
    pub min_insync_replicas: Option<u32>,
    pub config: TopicConfig,
}

#[derive(Debug)]
pub struct Controller {
    cluster_id: String,
    peers: Peers,
    state: Arc<Mutex<State>>,
    /// The index of the last command in the log; metadata long-polls wait on it.
    last_index: watch::Sender<u64>,
    /// Moves whenever a broker reports a higher reconciled index; admin calls wait on it.
    reports: watch::Sender<u64>,
    /// The controller's monotonic clock starts here (liveness works in its milliseconds).
    started: Instant,
    session_timeout_ms: u64,
}

impl Controller {
    /// Opens (or creates) the metadata log and the cluster id in `dir`. A new cluster id is
    /// generated only when the directory has none and its log is empty.
    pub fn open(dir: &Path, peers: Peers, session_timeout_ms: u64) -> io::Result<Controller> {
        std::fs::create_dir_all(dir)?;
        let log = MetadataLog::open(&dir.join(METADATA_JOURNAL_FILE))?;
        let cluster_id = match identity::read_cluster_id(dir)? {
            Some(id) => id,
            None if log.image().applied == 0 => {
                let id = identity::new_cluster_id();
                identity::write_cluster_id(dir, &id)?;
                id
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} holds a metadata log but no cluster id", dir.display()),
                ));
            }
        };
        let last = log.image().applied;
        Ok(Controller {
            cluster_id,
            peers,
            state: Arc::new(Mutex::new(State {
                log,
                sessions: Sessions::new(session_timeout_ms, 0),
                reconciled: BTreeMap::new(),
            })),
            last_index: watch::Sender::new(last),
            reports: watch::Sender::new(0),
            started: Instant::now(),
            session_timeout_ms,
        })
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a broker process; answers its broker epoch.
    pub async fn register(&self, r: Registration) -> Result<BrokerEpoch, ControlError> {
        let expected = self.peers.address(r.node_id).ok_or_else(|| {
            ControlError::UnknownBroker(format!("node {} is not in --peers", r.node_id))
        })?;
        if r.address != expected.to_string() {
            return Err(ControlError::PeersMismatch(format!(
                "node {} registers at {}, but --peers gives it {expected}",
                r.node_id, r.address
            )));
        }
        if let Some(theirs) = r.cluster_id.as_ref().filter(|c| **c != self.cluster_id) {
            return Err(ControlError::ClusterIdMismatch {
                ours: self.cluster_id.clone(),
                theirs: theirs.clone(),
            });
        }
        let now = self.now_ms();
        self.propose_with(move |state| {
            let image = state.log.image();
            let same_process = image
                .brokers
                .get(&r.node_id)
                .is_some_and(|b| b.incarnation == r.incarnation);
            if !same_process && state.sessions.is_alive(image, r.node_id, now) {
                return Err(ControlError::BrokerAlreadyAlive(r.node_id));
            }
            let command = Command::RegisterBroker {
                node_id: r.node_id,
                address: r.address,
                incarnation: r.incarnation,
            };
            match state.log.propose(command) {
                Ok((_, Outcome::Registered { broker_epoch })) => Ok(broker_epoch),
                Ok((_, outcome)) => unreachable!("a registration answers its epoch: {outcome:?}"),
                Err(e) => Err(propose_error(e)),
            }
        })
        .await
    }

    /// Takes a heartbeat, then proposes the fence and unfence commands due (an unfence as
    /// soon as the broker says it caught up). Answers the last index of the log.
    pub async fn heartbeat(
        &self,
        node: NodeId,
        epoch: BrokerEpoch,
        caught_up: bool,
        reconciled: u64,
    ) -> Result<u64, ControlError> {
        let now = self.now_ms();
        let reports = self.reports.clone();
        self.propose_with(move |state| {
            let image = state.log.image();
            state
                .sessions
                .heartbeat(image, node, epoch, caught_up, now)
                .map_err(|e| match e {
                    HeartbeatError::UnknownBroker(n) => {
                        ControlError::UnknownBroker(format!("broker {n} is not registered"))
                    }
                    HeartbeatError::StaleBrokerEpoch { current } => {
                        ControlError::StaleBrokerEpoch {
                            node_id: node,
                            current,
                        }
                    }
                })?;
            let before = state.reconciled.insert(node, (epoch, reconciled));
            if before != Some((epoch, reconciled)) {
                reports.send_modify(|r| *r += 1);
            }
            propose_decisions(state, now)?;
            Ok(state.log.image().applied)
        })
        .await
    }

    /// Checks that `node` is registered on `epoch` (for requests other than a heartbeat).
    pub fn check_member(&self, node: NodeId, epoch: BrokerEpoch) -> Result<(), ControlError> {
        let state = self.lock();
        let b = state.log.image().brokers.get(&node).ok_or_else(|| {
            ControlError::UnknownBroker(format!("broker {node} is not registered"))
        })?;
        if b.broker_epoch != epoch {
            return Err(ControlError::StaleBrokerEpoch {
                node_id: node,
                current: b.broker_epoch,
            });
        }
        Ok(())
    }

    /// A copy of the controller's metadata image.
    pub fn image(&self) -> MetadataImage {
        self.lock().log.image().clone()
    }

    /// Proposes `command`; answers its index once it is durable and applied.
    pub async fn propose(&self, command: Command) -> Result<u64, ControlError> {
        self.propose_built(move |_| Ok(command)).await
    }

    /// Proposes the command `build` makes from the current image (under the controller's
    /// lock, so no other proposal comes between what it read and what it proposes).
    pub async fn propose_built(
        &self,
        build: impl FnOnce(&MetadataImage) -> Result<Command, ControlError> + Send + 'static,
    ) -> Result<u64, ControlError> {
        self.propose_with(move |state| {
            let command = build(state.log.image())?;
            match state.log.propose(command) {
                Ok((index, _)) => Ok(index),
                Err(ProposeError::Refused { error, .. }) => Err(ControlError::Refused(error)),
                Err(e) => Err(propose_error(e)),
            }
        })
        .await
    }

    /// Creates a topic: replicas placed over the active brokers (`controller::placement`).
    /// Answers the index of the command.
    pub async fn create_topic(&self, t: NewTopic) -> Result<u64, ControlError> {
        self.propose_built(move |image| {
            let active = image.active_brokers().count() as u32;
            let factor = t.replication_factor.unwrap_or(active.clamp(1, 3));
            let assignment = place_replicas(image, t.partitions, factor).map_err(|e| match e {
                PlacementError::ReplicationFactor {
                    factor,
                    active_brokers,
                } => ControlError::NotEnoughBrokers {
                    factor,
                    active_brokers,
                },
            })?;
            Ok(Command::CreateTopic {
                name: t.name,
                config: t.config,
                min_insync_replicas: t.min_insync_replicas.unwrap_or(factor.min(2)),
                assignment,
            })
        })
        .await
    }

    /// Grows `topic` to `count` partitions, the new ones placed over the active brokers.
    pub async fn create_partitions(&self, topic: String, count: u32) -> Result<u64, ControlError> {
        self.propose_built(move |image| {
            let record = image.topics.get(&topic).ok_or_else(|| {
                ControlError::Refused(MetadataError::TopicNotFound(topic.clone()))
            })?;
            let current = record.partitions.len() as u32;
            if count <= current {
                return Err(ControlError::Invalid(format!(
                    "count must be larger than the current {current} partitions"
                )));
            }
            let factor = record.replication_factor;
            let assignment =
                place_replicas(image, count - current, factor).map_err(|e| match e {
                    PlacementError::ReplicationFactor {
                        factor,
                        active_brokers,
                    } => ControlError::NotEnoughBrokers {
                        factor,
                        active_brokers,
                    },
                })?;
            Ok(Command::CreatePartitions { topic, assignment })
        })
        .await
    }

    /// Waits until every active broker reported its local replicas match the metadata up to
    /// `index`, `wait` passed, or `shutdown` flipped; on the last two, answers the brokers
    /// still behind.
    pub async fn wait_reconciled(
        &self,
        index: u64,
        wait: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Vec<NodeId>> {
        let mut reports = self.reports.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            reports.mark_unchanged();
            let behind = self.brokers_behind(index);
            if behind.is_empty() {
                return Ok(());
            }
            tokio::select! {
                _ = reports.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(behind),
                _ = shutdown.wait_for(|s| *s) => return Err(behind),
            }
        }
    }

    /// The active brokers whose replicas do not match the metadata up to `index` yet.
    fn brokers_behind(&self, index: u64) -> Vec<NodeId> {
        let state = self.lock();
        state
            .log
            .image()
            .active_brokers()
            .filter(|b| {
                state
                    .reconciled
                    .get(&b.node_id)
                    .is_none_or(|(epoch, r)| *epoch != b.broker_epoch || *r < index)
            })
            .map(|b| b.node_id)
            .collect()
    }

    /// Up to `max` commands after `after`, and the last index of the log.
    pub fn commands_after(&self, after: u64, max: usize) -> (Vec<(u64, Command)>, u64) {
        let state = self.lock();
        let commands = state.log.commands_after(after);
        let page = commands[..commands.len().min(max)].to_vec();
        (page, state.log.image().applied)
    }

    /// Waits until the log holds a command after `after`, `wait` passed or `shutdown` flips.
    pub async fn wait_after(
        &self,
        after: u64,
        wait: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let mut last = self.last_index.subscribe();
        tokio::select! {
            _ = last.wait_for(|l| *l > after) => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }

    /// Fences brokers whose sessions expired, until `shutdown` flips. Runs every eighth of
    /// the session timeout (at most 250 ms), so a fence comes at most that late.
    pub async fn run_liveness(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = Duration::from_millis((self.session_timeout_ms / 8).clamp(10, 250));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let now = self.now_ms();
            if let Err(e) = self
                .propose_with(move |state| propose_decisions(state, now))
                .await
            {
                tracing::error!("controller: {e}");
            }
        }
    }

    /// Runs `f` on the state on the blocking pool (it may fsync), then wakes the metadata
    /// long-polls if the log grew.
    async fn propose_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<T, ControlError> {
        let state = Arc::clone(&self.state);
        let (result, last) = tokio::task::spawn_blocking(move || {
            let mut state = state.lock().expect("the controller lock is not poisoned");
            let result = f(&mut state);
            (result, state.log.image().applied)
        })
        .await
        .expect("a controller proposal does not panic");
        self.last_index.send_if_modified(|l| {
            let grew = last > *l;
            *l = (*l).max(last);
            grew
        });
        result
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the controller lock is not poisoned")
    }
}

/// Proposes the fence and unfence commands due at `now`.
fn propose_decisions(state: &mut State, now: u64) -> Result<(), ControlError> {
    let due = state.sessions.decisions(state.log.image(), now);
    for command in due {
        match state.log.propose(command) {
            Ok(_) | Err(ProposeError::Refused { .. }) => {}
            Err(e) => return Err(propose_error(e)),
        }
    }
    Ok(())
}

fn propose_error(e: ProposeError) -> ControlError {
    match e {
        ProposeError::Io(e) => ControlError::Io(e.to_string()),
        refused @ ProposeError::Refused { .. } => ControlError::Io(refused.to_string()),
    }
}
