//! The controller: every broker of a cluster runs one, and the one whose metadata Raft
//! (`crate::cluster::raft`) leads acts: it registers brokers, takes their heartbeats, fences the
//! silent ones and proposes admin changes. The others answer 421 `not_controller` naming
//! the leader.
//!
//! Decisions come from the pure modules (`controller::liveness`, `controller::placement`);
//! changes are proposed to Raft and answered once committed and applied here. Proposals take
//! turns (an async mutex), so a command built from the image is proposed before any other
//! reads it. The session table is the leader's own: a broker that becomes leader starts a
//! new one that grants every broker a full session before anyone is fenced. The std mutex of
//! the table is never held across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use std::collections::BTreeMap;

use super::identity;
use crate::cluster::raft::{MetadataRaft, ProposeError};
use crate::config::TopicConfig;
use crate::controller::liveness::{HeartbeatError, Sessions};
use crate::controller::peers::Peers;
use crate::controller::placement::{PlacementError, place_replicas};
use crate::metadata::{BrokerEpoch, Command, NodeId, Outcome};
use crate::metadata::{MetadataError, MetadataImage};

/// The part-1 controller's metadata journal under `<data>/__cluster/`: a directory that holds
/// one is refused (its metadata is not in the Raft log).
pub const METADATA_JOURNAL_FILE: &str = "metadata.journal";

/// Longest a heartbeat waits for a quorum to confirm this controller still leads (less
/// than the broker's deadline for the call).
const CONFIRM_LEADING_WITHIN: Duration = Duration::from_secs(2);

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
    /// This broker is not the controller leader (the leader, when one is known).
    NotController { leader: Option<NodeId> },
    /// Proposed, but not known to be committed (leadership lost, no quorum in time).
    OutcomeUnknown(String),
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
            ControlError::NotController { leader: Some(l) } => {
                write!(f, "this broker is not the controller; broker {l} leads")
            }
            ControlError::NotController { leader: None } => {
                f.write_str("no controller leader is elected right now; retry shortly")
            }
            ControlError::OutcomeUnknown(why) => write!(
                f,
                "the metadata change was proposed but its outcome is unknown ({why}); read the metadata before retrying"
            ),
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
    /// Its data directory lost what a former process of it held.
    pub data_lost: bool,
}

/// The leader's liveness state: it belongs to one term of leadership.
#[derive(Debug)]
struct Leadership {
    term: u64,
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
    node_id: NodeId,
    peers: Peers,
    raft: MetadataRaft,
    /// The cluster id this broker's data directory holds (proposed by a first leader that
    /// finds none in the metadata).
    stored_cluster_id: Option<String>,
    /// Proposals take turns: what one built from the image is proposed before the next reads.
    proposals: tokio::sync::Mutex<()>,
    /// The session table of the current leadership (None while this broker does not lead).
    leadership: Mutex<Option<Leadership>>,
    /// Moves whenever a broker reports a higher reconciled index; admin calls wait on it.
    reports: watch::Sender<u64>,
    /// The controller's monotonic clock starts here (liveness works in its milliseconds).
    started: Instant,
    session_timeout_ms: u64,
}

impl Controller {
    pub fn new(
        node_id: NodeId,
        peers: Peers,
        raft: MetadataRaft,
        stored_cluster_id: Option<String>,
        session_timeout_ms: u64,
    ) -> Controller {
        Controller {
            node_id,
            peers,
            raft,
            stored_cluster_id,
            proposals: tokio::sync::Mutex::new(()),
            leadership: Mutex::new(None),
            reports: watch::Sender::new(0),
            started: Instant::now(),
            session_timeout_ms,
        }
    }

    /// The metadata quorum this broker is a voter of.
    pub fn raft(&self) -> &MetadataRaft {
        &self.raft
    }

    /// The cluster id of the metadata, once the first leader proposed it.
    pub fn cluster_id(&self) -> Option<String> {
        self.raft.state().cluster_id()
    }

    /// Whether this broker leads the metadata quorum now.
    pub fn is_leader(&self) -> bool {
        self.raft.leader_term().is_some()
    }

    /// The controller leader, as far as this broker knows.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.leader()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn not_controller(&self) -> ControlError {
        ControlError::NotController {
            leader: self.raft.leader().filter(|l| *l != self.node_id),
        }
    }

    /// Runs `f` on the session table of the current leadership: a new one (a full session
    /// for every broker) when this broker just became leader. Err when it does not lead.
    fn with_leadership<T>(&self, f: impl FnOnce(&mut Leadership) -> T) -> Result<T, ControlError> {
        let Some(term) = self.raft.leader_term() else {
            *self.lock_leadership() = None;
            return Err(self.not_controller());
        };
        let now = self.now_ms();
        let mut leadership = self.lock_leadership();
        if leadership.as_ref().is_none_or(|l| l.term != term) {
            tracing::info!(term, "controller: leading the metadata quorum");
            *leadership = Some(Leadership {
                term,
                sessions: Sessions::new(self.session_timeout_ms, now),
                reconciled: BTreeMap::new(),
            });
        }
        Ok(f(leadership.as_mut().expect("set above")))
    }

    fn lock_leadership(&self) -> MutexGuard<'_, Option<Leadership>> {
        self.leadership
            .lock()
            .expect("the controller lock is not poisoned")
    }

    /// The cluster id, or not_controller while the first leader has not proposed it.
    fn require_cluster_id(&self) -> Result<String, ControlError> {
        self.cluster_id()
            .ok_or(ControlError::NotController { leader: None })
    }

    /// Registers a broker process; answers the cluster id and its broker epoch.
    pub async fn register(&self, r: Registration) -> Result<(String, BrokerEpoch), ControlError> {
        self.with_leadership(|_| ())?;
        let expected = self.peers.address(r.node_id).ok_or_else(|| {
            ControlError::UnknownBroker(format!("node {} is not in --peers", r.node_id))
        })?;
        if r.address != expected.to_string() {
            return Err(ControlError::PeersMismatch(format!(
                "node {} registers at {}, but --peers gives it {expected}",
                r.node_id, r.address
            )));
        }
        let cluster_id = self.require_cluster_id()?;
        if let Some(theirs) = r.cluster_id.as_ref().filter(|c| **c != cluster_id) {
            return Err(ControlError::ClusterIdMismatch {
                ours: cluster_id.clone(),
                theirs: theirs.clone(),
            });
        }
        let _turn = self.proposals.lock().await;
        let now = self.now_ms();
        let image = self.image();
        let same_process = image
            .brokers
            .get(&r.node_id)
            .is_some_and(|b| b.incarnation == r.incarnation);
        let alive = self.with_leadership(|l| l.sessions.is_alive(&image, r.node_id, now))?;
        if !same_process && alive {
            return Err(ControlError::BrokerAlreadyAlive(r.node_id));
        }
        let command = Command::RegisterBroker {
            node_id: r.node_id,
            address: r.address,
            incarnation: r.incarnation,
            data_lost: r.data_lost,
        };
        match self.raft.propose(command).await.map_err(propose_error)? {
            (_, Ok(Outcome::Registered { broker_epoch })) => Ok((cluster_id, broker_epoch)),
            (_, Ok(outcome)) => unreachable!("a registration answers its epoch: {outcome:?}"),
            (_, Err(e)) => Err(ControlError::Refused(e)),
        }
    }

    /// Takes a heartbeat, then proposes the fence and unfence commands due (an unfence as
    /// soon as the broker says it caught up). Answers the last index of the image, once a
    /// quorum of voters confirmed this broker led when the heartbeat arrived and the image
    /// holds everything its log did then (`MetadataRaft::confirm_leading_since`): the
    /// broker renews its lease on this answer, so it must cover every fence and leadership
    /// committed before the heartbeat was sent. Without it, a deposed controller that does
    /// not know it yet (a paused process resumed, answering its own heartbeat) or a new one
    /// whose image lags its log would answer from an image without them.
    pub async fn heartbeat(
        &self,
        node: NodeId,
        epoch: BrokerEpoch,
        caught_up: bool,
        reconciled: u64,
    ) -> Result<u64, ControlError> {
        let received = Instant::now();
        let now = self.now_ms();
        let image = self.image();
        let reports = self.reports.clone();
        self.with_leadership(|l| {
            l.sessions
                .heartbeat(&image, node, epoch, caught_up, now)
                .map_err(|e| heartbeat_refusal(node, e))?;
            let before = l.reconciled.insert(node, (epoch, reconciled));
            if before != Some((epoch, reconciled)) {
                reports.send_modify(|r| *r += 1);
            }
            Ok::<_, ControlError>(())
        })??;
        self.propose_decisions().await?;
        self.raft
            .confirm_leading_since(received, CONFIRM_LEADING_WITHIN)
            .await
            .map_err(propose_error)?;
        Ok(self.raft.state().with_image(|i| i.applied))
    }

    /// A controlled shutdown begins: `node` leaves every in-sync set and its leaderships
    /// move to other in-sync replicas, leader epochs bumped (`Command::BeginShutdown`); a
    /// broker shutting down is no candidate for any leadership or in-sync set until its
    /// next process registers. Then waits until every active broker applied it (the new
    /// leaders lead), at most `wait`; answers the index and the brokers still behind.
    /// Asking again is harmless (the same change, a later index).
    pub async fn begin_shutdown(
        &self,
        node: NodeId,
        epoch: BrokerEpoch,
        wait: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(u64, Vec<NodeId>), ControlError> {
        self.check_member(node, epoch)?;
        let led = self.image().topics.values().fold(0, |n, t| {
            n + t
                .partitions
                .iter()
                .filter(|p| p.leader == Some(node))
                .count()
        });
        let index = self
            .propose(Command::BeginShutdown {
                node_id: node,
                broker_epoch: epoch,
            })
            .await?;
        tracing::info!(
            node_id = node.0,
            index,
            "controller: broker {node} shuts down: {led} leaderships moved to other in-sync replicas"
        );
        let behind = match self.wait_reconciled(index, wait, shutdown).await {
            Ok(()) => Vec::new(),
            Err(behind) => behind,
        };
        Ok((index, behind))
    }

    /// `node`'s process stopped (the end of its controlled shutdown): its session ends and
    /// it is fenced at once, so its next process may register without waiting for the
    /// session timeout. Answers the index of the fence.
    pub async fn broker_stopped(
        &self,
        node: NodeId,
        epoch: BrokerEpoch,
    ) -> Result<u64, ControlError> {
        let image = self.image();
        self.with_leadership(|l| l.sessions.end(&image, node, epoch))?
            .map_err(|e| heartbeat_refusal(node, e))?;
        let index = self
            .propose(Command::FenceBroker {
                node_id: node,
                broker_epoch: epoch,
            })
            .await?;
        tracing::info!(
            node_id = node.0,
            index,
            "controller: broker {node} stopped; fenced"
        );
        Ok(index)
    }

    /// Checks that `node` is registered on `epoch` (for requests other than a heartbeat).
    pub fn check_member(&self, node: NodeId, epoch: BrokerEpoch) -> Result<(), ControlError> {
        self.raft.state().with_image(|image| {
            let b = image.brokers.get(&node).ok_or_else(|| {
                ControlError::UnknownBroker(format!("broker {node} is not registered"))
            })?;
            if b.broker_epoch != epoch {
                return Err(ControlError::StaleBrokerEpoch {
                    node_id: node,
                    current: b.broker_epoch,
                });
            }
            Ok(())
        })
    }

    /// A copy of the applied metadata image.
    pub fn image(&self) -> MetadataImage {
        self.raft.state().with_image(MetadataImage::clone)
    }

    /// Proposes `command`; answers its index once it is committed and applied.
    pub async fn propose(&self, command: Command) -> Result<u64, ControlError> {
        self.propose_built(move |_| Ok(command)).await
    }

    /// Proposes the command `build` makes from the current image (no other proposal comes
    /// between what it read and what it proposes). A new leader first applies everything
    /// committed before it, so `build` never reads an image older than the last answer.
    pub async fn propose_built(
        &self,
        build: impl FnOnce(&MetadataImage) -> Result<Command, ControlError> + Send + 'static,
    ) -> Result<u64, ControlError> {
        self.with_leadership(|_| ())?;
        let _turn = self.proposals.lock().await;
        self.raft.read_barrier().await.map_err(propose_error)?;
        let command = build(&self.image())?;
        match self.raft.propose(command).await.map_err(propose_error)? {
            (index, Ok(_)) => Ok(index),
            (_, Err(e)) => Err(ControlError::Refused(e)),
        }
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

    /// The active brokers whose replicas do not match the metadata up to `index` yet (all
    /// of them when this broker no longer leads: it hears no heartbeats).
    fn brokers_behind(&self, index: u64) -> Vec<NodeId> {
        let image = self.image();
        let reconciled = self
            .with_leadership(|l| l.reconciled.clone())
            .unwrap_or_default();
        image
            .active_brokers()
            .filter(|b| {
                reconciled
                    .get(&b.node_id)
                    .is_none_or(|(epoch, r)| *epoch != b.broker_epoch || *r < index)
            })
            .map(|b| b.node_id)
            .collect()
    }

    /// While this broker leads: proposes the cluster id if the metadata has none yet, and
    /// fences brokers whose sessions expired; until `shutdown` flips. Runs every eighth of
    /// the session timeout (at most 250 ms), so a fence comes at most that late.
    pub async fn run_liveness(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = Duration::from_millis((self.session_timeout_ms / 8).clamp(10, 250));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if !self.is_leader() {
                *self.lock_leadership() = None;
                continue;
            }
            if self.cluster_id().is_none() {
                let id = self
                    .stored_cluster_id
                    .clone()
                    .unwrap_or_else(identity::new_cluster_id);
                if let Err(e) = self.raft.propose_cluster_id(id).await {
                    tracing::warn!("controller: proposing the cluster id: {e}");
                }
                continue;
            }
            match self.propose_decisions().await {
                Ok(()) | Err(ControlError::NotController { .. }) => {}
                Err(e) => tracing::error!("controller: {e}"),
            }
        }
    }

    /// Proposes the fence and unfence commands due now.
    async fn propose_decisions(&self) -> Result<(), ControlError> {
        let now = self.now_ms();
        let due = {
            let image = self.image();
            self.with_leadership(|l| l.sessions.decisions(&image, now))?
        };
        if due.is_empty() {
            return Ok(());
        }
        let _turn = self.proposals.lock().await;
        // Decide again under the turn: another proposal may have made some of them moot.
        let image = self.image();
        let due = self.with_leadership(|l| l.sessions.decisions(&image, now))?;
        for command in due {
            if let Some(c) = fence_note(&command) {
                tracing::info!("controller: {c}");
            }
            // A refusal (the broker registered again meanwhile) changes nothing.
            let (_, applied) = self.raft.propose(command).await.map_err(propose_error)?;
            if let Err(e) = applied {
                tracing::debug!("controller: a liveness decision was refused: {e}");
            }
        }
        Ok(())
    }
}

/// A refused heartbeat (or session end) of `node`, as the controller answers it.
fn heartbeat_refusal(node: NodeId, e: HeartbeatError) -> ControlError {
    match e {
        HeartbeatError::UnknownBroker(n) => {
            ControlError::UnknownBroker(format!("broker {n} is not registered"))
        }
        HeartbeatError::StaleBrokerEpoch { current } => ControlError::StaleBrokerEpoch {
            node_id: node,
            current,
        },
    }
}

/// A line for the log about a fence or unfence.
fn fence_note(command: &Command) -> Option<String> {
    match command {
        Command::FenceBroker {
            node_id,
            broker_epoch,
        } => Some(format!(
            "fencing broker {node_id} (epoch {}): its session expired",
            broker_epoch.0
        )),
        Command::UnfenceBroker {
            node_id,
            broker_epoch,
        } => Some(format!(
            "unfencing broker {node_id} (epoch {}): it heartbeats caught up",
            broker_epoch.0
        )),
        _ => None,
    }
}

fn propose_error(e: ProposeError) -> ControlError {
    match e {
        ProposeError::NotLeader(leader) => ControlError::NotController { leader },
        ProposeError::Unknown(why) => ControlError::OutcomeUnknown(why),
    }
}
