//! This process's part in a cluster (issue 9, part 1: membership; no partition replication
//! yet, topics stay local to the broker that serves them).
//!
//! Without `--peers` the broker runs alone, exactly as before: no controller, no files under
//! `<data>/__cluster/`, `/v1/cluster` shows a cluster of one. With `--peers`:
//! - the broker with the lowest id runs the [`controller::Controller`] (part 2 puts it under
//!   Raft): the metadata log and the cluster id live in its `<data>/__cluster/`;
//! - every broker, the controller's own included, runs the membership task
//!   (`member::run`): it registers with a fresh random incarnation, heartbeats, and follows
//!   the metadata log into its own `MetadataImage`, over the internal routes on the
//!   controller's port. It stores the cluster id it joined and refuses another one.
//!
//! `/readyz` is 200 only once the broker registered and caught up with the metadata.
//!
//! Locks: `member` is a std mutex held for bookkeeping only, never across an `.await`.

pub mod client;
pub mod controller;
pub mod forwarder;
pub mod identity;
mod member;
pub mod protocol;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::controller::peers::Peers;
use crate::metadata::{BrokerEpoch, MetadataImage, NodeId};
use controller::Controller;
use protocol::MetadataAnswer;

/// The directory under the data directory that holds the cluster's files.
pub const CLUSTER_DIR: &str = "__cluster";

/// Shortest broker session timeout accepted, in milliseconds: below it heartbeats (a quarter
/// of it) would flood the controller.
pub const SESSION_TIMEOUT_MS_MIN: u64 = 100;

/// Checks the cluster settings before anything opens: `None` when the broker runs alone.
pub fn check_config(config: &BrokerConfig) -> Result<Option<Peers>, String> {
    if config.peers.trim().is_empty() {
        return Ok(None);
    }
    if config.node_id == 0 {
        return Err("--node-id must be a positive integer".into());
    }
    if config.broker_session_timeout_ms < SESSION_TIMEOUT_MS_MIN {
        return Err(format!(
            "broker_session_timeout_ms must be at least {SESSION_TIMEOUT_MS_MIN}"
        ));
    }
    Peers::parse(&config.peers, NodeId(config.node_id), config.listen)
        .map(Some)
        .map_err(|e| format!("bad --peers: {e}"))
}

#[derive(Debug)]
pub struct Cluster {
    node_id: NodeId,
    listen: SocketAddr,
    /// None: the broker runs alone.
    peers: Option<Peers>,
    dir: PathBuf,
    controller: Option<Arc<Controller>>,
    session_timeout_ms: u64,
    member: Mutex<MemberState>,
    /// Set once when the broker must stop (its data directory belongs to another cluster).
    fatal: watch::Sender<Option<String>>,
    /// The index of the last metadata command applied to this broker's image (and bumped
    /// when the image starts over): the replica manager and replication follow it.
    image_version: watch::Sender<u64>,
    /// The metadata index the replica manager has made the local replicas match; heartbeats
    /// carry it, so the controller answers an admin call once every broker has its replicas.
    reconciled: watch::Sender<u64>,
}

/// What this broker knows of the cluster.
#[derive(Debug, Default)]
struct MemberState {
    /// Stored in the data directory, or learned at the first registration.
    cluster_id: Option<String>,
    /// The epoch of this process's registration; None before it (or after it went stale).
    broker_epoch: Option<BrokerEpoch>,
    /// The metadata as followed from the controller's log.
    image: MetadataImage,
    /// The highest last index of the log the controller told us.
    known_last: u64,
}

impl Cluster {
    /// Opens this broker's cluster state: nothing when it runs alone; else its stored
    /// cluster id, and on the controller the metadata log.
    pub fn open(config: &BrokerConfig) -> io::Result<Arc<Cluster>> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let peers = check_config(config).map_err(invalid)?;
        let dir = config.data_dir.join(CLUSTER_DIR);
        let node_id = NodeId(config.node_id);
        let mut member = MemberState::default();
        let mut controller = None;
        if let Some(peers) = &peers {
            if identity::read_cluster_id(&dir)?.is_none() {
                refuse_single_broker_topics(&config.data_dir)?;
            }
            if peers.ids().next() == Some(node_id) {
                let c = Controller::open(&dir, peers.clone(), config.broker_session_timeout_ms)?;
                controller = Some(Arc::new(c));
            }
            member.cluster_id = identity::read_cluster_id(&dir)?;
        }
        Ok(Arc::new(Cluster {
            node_id,
            listen: config.listen,
            peers,
            dir,
            controller,
            session_timeout_ms: config.broker_session_timeout_ms,
            member: Mutex::new(member),
            fatal: watch::Sender::new(None),
            image_version: watch::Sender::new(0),
            reconciled: watch::Sender::new(0),
        }))
    }

    /// Starts the membership task (and the controller's liveness task); they end when
    /// `shutdown` flips. Nothing when the broker runs alone.
    pub fn start(self: &Arc<Self>, shutdown: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if self.peers.is_none() {
            return tasks;
        }
        if let Some(c) = &self.controller {
            tasks.push(tokio::spawn(Arc::clone(c).run_liveness(shutdown.clone())));
        }
        tasks.push(tokio::spawn(member::run(
            Arc::clone(self),
            shutdown.clone(),
        )));
        tasks
    }

    /// The controller, when this broker runs it.
    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.controller.as_ref()
    }

    /// The controller's node id: the lowest of `--peers` (this broker when alone).
    pub fn controller_id(&self) -> NodeId {
        self.peers
            .as_ref()
            .and_then(|p| p.ids().next())
            .unwrap_or(self.node_id)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// How often the broker heartbeats: every 500 ms, or a quarter of a shorter session.
    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis((self.session_timeout_ms / 4).min(500))
    }

    /// Why the broker is not ready yet, if it is not.
    pub fn not_ready(&self) -> Option<&'static str> {
        self.peers.as_ref()?;
        let m = self.lock();
        if m.broker_epoch.is_none() {
            Some("registering")
        } else if m.image.applied < m.known_last {
            Some("catching_up")
        } else {
            None
        }
    }

    /// The answer of `GET /v1/cluster`.
    pub fn view(&self) -> Value {
        let version = env!("CARGO_PKG_VERSION");
        if self.peers.is_none() {
            return json!({
                "cluster_id": "tidelog-single-node",
                "controller": self.node_id,
                "node_id": self.node_id,
                "brokers": [{"node_id": self.node_id, "address": self.listen.to_string(), "status": "alive"}],
                "version": version,
            });
        }
        let m = self.lock();
        let brokers: Vec<Value> = m
            .image
            .brokers
            .values()
            .map(|b| {
                let status = if b.shutting_down {
                    "shutting_down"
                } else if b.fenced {
                    "fenced"
                } else {
                    "alive"
                };
                json!({"node_id": b.node_id, "address": b.address, "status": status, "broker_epoch": b.broker_epoch})
            })
            .collect();
        json!({
            "cluster_id": m.cluster_id,
            "controller": self.controller_id(),
            "node_id": self.node_id,
            "brokers": brokers,
            "version": version,
        })
    }

    /// Moves whenever this broker's metadata image changes.
    pub fn subscribe_image(&self) -> watch::Receiver<u64> {
        self.image_version.subscribe()
    }

    /// Runs `f` on this broker's metadata image, under the member lock (keep `f` short;
    /// never `.await` in it).
    pub fn with_image<T>(&self, f: impl FnOnce(&MetadataImage) -> T) -> T {
        f(&self.lock().image)
    }

    /// The broker epoch of this process's registration, once registered.
    pub fn broker_epoch(&self) -> Option<BrokerEpoch> {
        self.lock().broker_epoch
    }

    /// Where broker `node` listens, from `--peers` (None when it is not a peer).
    pub fn peer_address(&self, node: NodeId) -> Option<SocketAddr> {
        self.peers.as_ref()?.address(node)
    }

    /// True when the broker runs as part of a cluster (`--peers`).
    pub fn is_clustered(&self) -> bool {
        self.peers.is_some()
    }

    /// The controller's address (None on a broker alone).
    pub fn controller_addr(&self) -> Option<SocketAddr> {
        self.peer_address(self.controller_id())
    }

    /// Whether the image holds every command the controller told this broker of.
    pub fn caught_up(&self) -> bool {
        let m = self.lock();
        m.image.applied >= m.known_last
    }

    /// The replica manager made the local replicas match the image up to `index`.
    pub fn set_reconciled(&self, index: u64) {
        self.reconciled.send_if_modified(|r| {
            let moved = index > *r;
            *r = (*r).max(index);
            moved
        });
    }

    fn reconciled(&self) -> u64 {
        *self.reconciled.borrow()
    }

    /// The reason the broker must stop, once it has one.
    pub fn fatal_error(&self) -> Option<String> {
        self.fatal.borrow().clone()
    }

    /// Waits until the broker must stop; returns why.
    pub async fn failed(&self) -> String {
        let mut rx = self.fatal.subscribe();
        // The sender lives as long as `self`, so the wait ends only with a reason.
        let why = rx.wait_for(Option::is_some).await.map(|w| w.clone());
        why.ok().flatten().unwrap_or_default()
    }

    /// Makes the process stop (main prints `why` and exits non-zero).
    fn fail(&self, why: String) {
        self.fatal.send_replace(Some(why));
    }

    fn controller_address(&self) -> SocketAddr {
        let peers = self.peers.as_ref().expect("a cluster member has peers");
        peers
            .address(self.controller_id())
            .expect("the controller is one of the peers")
    }

    fn own_address(&self) -> String {
        let peers = self.peers.as_ref().expect("a cluster member has peers");
        peers
            .address(self.node_id)
            .expect("--peers names this broker")
            .to_string()
    }

    fn lock(&self) -> MutexGuard<'_, MemberState> {
        self.member.lock().expect("the member lock is not poisoned")
    }

    fn stored_cluster_id(&self) -> Option<String> {
        self.lock().cluster_id.clone()
    }

    fn registered(&self, cluster_id: String, epoch: BrokerEpoch) {
        let mut m = self.lock();
        m.cluster_id = Some(cluster_id);
        m.broker_epoch = Some(epoch);
        m.known_last = m.known_last.max(epoch.0);
    }

    fn lost_registration(&self) {
        self.lock().broker_epoch = None;
    }

    fn applied(&self) -> u64 {
        self.lock().image.applied
    }

    fn saw_last_index(&self, last: u64) {
        let mut m = self.lock();
        m.known_last = m.known_last.max(last);
    }

    /// Applies a page of the metadata log. A log shorter than what we applied is not the
    /// one we followed: the image starts over.
    fn apply_page(&self, after: u64, page: MetadataAnswer) {
        let changed = {
            let mut m = self.lock();
            if page.last_index < after {
                m.image = MetadataImage::default();
                m.known_last = page.last_index;
                self.reconciled.send_replace(0);
                true
            } else {
                m.known_last = m.known_last.max(page.last_index);
                let before = m.image.applied;
                for c in page.commands {
                    if c.index > m.image.applied {
                        // A refused command is refused on every replica of the log alike.
                        let _ = m.image.apply(c.index, &c.command);
                    }
                }
                m.image.applied != before
            }
        };
        if changed {
            self.image_version.send_modify(|v| *v += 1);
        }
    }
}

/// A data directory that never joined a cluster but holds topics is a single broker's: a
/// cluster member would not know them (the metadata has no record of them) and must not
/// remove them, so it does not start on it.
fn refuse_single_broker_topics(data_dir: &std::path::Path) -> io::Result<()> {
    let topics = data_dir.join("topics");
    let entries = match std::fs::read_dir(&topics) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.path().join("topic.json").exists() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} holds the topics of a single broker ({}) and has never joined a cluster: start it without --peers, or give the cluster member an empty data directory",
            data_dir.display(),
            names.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::protocol::IndexedCommand;
    use super::*;
    use crate::metadata::Command;

    fn member_of_three(dir: &std::path::Path) -> Arc<Cluster> {
        let config = BrokerConfig {
            node_id: 2,
            listen: "127.0.0.1:9002".parse().unwrap(),
            peers: "1=127.0.0.1:9001,2=127.0.0.1:9002,3=127.0.0.1:9003".into(),
            data_dir: dir.to_path_buf(),
            ..BrokerConfig::default()
        };
        Cluster::open(&config).unwrap()
    }

    fn page(commands: Vec<(u64, Command)>, last_index: u64) -> MetadataAnswer {
        MetadataAnswer {
            cluster_id: "ab".into(),
            commands: commands
                .into_iter()
                .map(|(index, command)| IndexedCommand { index, command })
                .collect(),
            last_index,
        }
    }

    fn register(id: u32) -> Command {
        Command::RegisterBroker {
            node_id: NodeId(id),
            address: format!("127.0.0.1:900{id}"),
            incarnation: 7,
        }
    }

    #[test]
    fn ready_only_once_registered_and_caught_up_and_a_shorter_log_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let c = member_of_three(dir.path());
        assert!(
            c.controller().is_none(),
            "node 2 does not run the controller"
        );
        assert_eq!(c.controller_id(), NodeId(1));
        assert_eq!(c.not_ready(), Some("registering"));
        c.registered("ab".into(), BrokerEpoch(2));
        assert_eq!(c.not_ready(), Some("catching_up"));
        let image = c.subscribe_image();
        c.apply_page(0, page(vec![(1, register(1))], 3));
        assert!(
            image.has_changed().unwrap(),
            "followers of the image are woken"
        );
        assert_eq!(c.with_image(|i| i.applied), 1);
        assert_eq!(c.broker_epoch(), Some(BrokerEpoch(2)));
        assert_eq!(c.not_ready(), Some("catching_up"), "3 commands, 1 applied");
        c.apply_page(1, page(vec![(2, register(2)), (3, register(3))], 3));
        assert_eq!(c.not_ready(), None);
        assert!(c.caught_up());
        assert_eq!(c.view()["brokers"].as_array().unwrap().len(), 3);
        // The controller's log is shorter than what we applied: not the log we followed.
        c.apply_page(3, page(vec![], 1));
        assert_eq!(c.applied(), 0);
        assert!(!c.caught_up());
        c.apply_page(0, page(vec![(1, register(1))], 1));
        assert_eq!(c.view()["brokers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_broker_alone_is_a_cluster_of_one_and_always_ready() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        };
        let c = Cluster::open(&config).unwrap();
        assert_eq!(c.not_ready(), None);
        assert_eq!(c.view()["cluster_id"], "tidelog-single-node");
        assert!(!dir.path().join(CLUSTER_DIR).exists());
    }
}
