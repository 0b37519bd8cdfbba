//! This process's part in a cluster.
//!
//! Without `--peers` the broker runs alone, exactly as before: no controller, no files under
//! `<data>/__cluster/`, `/v1/cluster` shows a cluster of one. With `--peers`:
//! - every broker is a voter of the metadata Raft (`crate::cluster::raft`, files in
//!   `<data>/__cluster/raft/`): its image is the state machine, applied as entries commit;
//! - every broker runs a [`controller::Controller`]; the one of the Raft leader acts as the
//!   controller (registrations, heartbeats, fencing, admin proposals), the others answer
//!   421 `not_controller` naming the leader;
//! - every broker runs the membership task (`member::run`): it registers with the current
//!   controller leader with a fresh random incarnation and heartbeats to it, following the
//!   leader wherever it moves. It stores the cluster id it joined and refuses another one;
//! - on SIGTERM the node drains it first (`shutdown`: a controlled shutdown moves its
//!   leaderships away), and reports it stopped once it no longer serves.
//!
//! `/readyz` is 200 only once the broker registered and applied the metadata up to the last
//! index the controller told it.
//!
//! Locks: `member` is a std mutex held for bookkeeping only, never across an `.await`.

pub mod client;
pub mod controller;
pub mod forwarder;
pub mod identity;
mod member;
pub mod protocol;
pub mod raft;
mod shutdown;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::SessionLease;
use crate::cluster::raft::{MetadataRaft, RAFT_DIR, Timing};
use crate::config::BrokerConfig;
use crate::controller::peers::Peers;
use crate::metadata::{BrokerEpoch, MetadataImage, NodeId};
use controller::Controller;

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
    /// Every member runs one; it acts while its Raft leads.
    controller: Option<Arc<Controller>>,
    session_timeout_ms: u64,
    member: Mutex<MemberState>,
    /// Set once when the broker must stop (its data directory belongs to another cluster).
    fatal: watch::Sender<Option<String>>,
    /// The metadata index the replica manager has made the local replicas match; heartbeats
    /// carry it, so the controller answers an admin call once every broker has its replicas.
    reconciled: watch::Sender<u64>,
    /// The lease on this broker's controller session (see `crate::broker::lease`): renewed
    /// by answered heartbeats, checked by produces.
    lease: Arc<SessionLease>,
    /// This node ran in the cluster before and its data directory lost everything
    /// (`rejoin_after_data_loss`): its registration says so, and the controller takes it out
    /// of every eligible leader set, where its empty replicas no longer belong.
    data_lost: bool,
}

/// What this broker knows of the cluster.
#[derive(Debug, Default)]
struct MemberState {
    /// Stored in the data directory, or learned at the first registration.
    cluster_id: Option<String>,
    /// The epoch of this process's registration; None before it (or after it went stale).
    broker_epoch: Option<BrokerEpoch>,
    /// The highest index of the image the controller told us of.
    known_last: u64,
    /// The controller that answered the last heartbeat: it holds this process's session,
    /// and is told when the process stops.
    session_holder: Option<SocketAddr>,
}

impl Cluster {
    /// Opens this broker's cluster state: nothing when it runs alone; else its stored
    /// cluster id and its voter of the metadata Raft (started).
    pub async fn open(config: &BrokerConfig) -> io::Result<Arc<Cluster>> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let peers = check_config(config).map_err(invalid)?;
        let dir = config.data_dir.join(CLUSTER_DIR);
        let node_id = NodeId(config.node_id);
        let mut member = MemberState::default();
        let mut controller = None;
        let mut data_lost = false;
        if let Some(peers) = &peers {
            let stored = identity::read_cluster_id(&dir)?;
            if stored.is_none() {
                refuse_single_broker_topics(&config.data_dir)?;
            }
            refuse_part_one_journal(&dir)?;
            refuse_lost_raft_state(&dir, stored.as_deref())?;
            let rejoin_at = match stored.is_none() && !holds_raft_state(&dir) {
                true => lost_state(config, peers, node_id).await?,
                false => None,
            };
            data_lost = rejoin_at.is_some();
            let timing = Timing {
                heartbeat_ms: config.raft_heartbeat_ms,
                election_timeout_ms: config.raft_election_timeout_ms,
            };
            let raft =
                MetadataRaft::open(&dir.join(RAFT_DIR), node_id, peers, timing, rejoin_at).await?;
            controller = Some(Arc::new(Controller::new(
                node_id,
                peers.clone(),
                raft,
                stored.clone(),
                config.broker_session_timeout_ms,
            )));
            member.cluster_id = stored;
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
            reconciled: watch::Sender::new(0),
            lease: Arc::new(SessionLease::new(Duration::from_millis(
                config.broker_session_timeout_ms,
            ))),
            data_lost,
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
            let (c, mut shutdown) = (Arc::clone(c), shutdown.clone());
            tasks.push(tokio::spawn(async move {
                let _ = shutdown.wait_for(|s| *s).await;
                c.raft().shutdown().await;
            }));
        }
        tasks.push(tokio::spawn(member::run(
            Arc::clone(self),
            shutdown.clone(),
        )));
        tasks
    }

    /// The controller, while this broker's metadata Raft leads.
    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.controller.as_ref().filter(|c| c.is_leader())
    }

    /// This broker's controller, leading or not (its Raft voter serves the Raft RPCs).
    pub fn local_controller(&self) -> Option<&Arc<Controller>> {
        self.controller.as_ref()
    }

    /// The controller's node id: the Raft leader as far as this broker knows (this broker
    /// when alone). While no leader is known (an election), the lowest id of `--peers`:
    /// a request sent there is answered 421 `not_controller` or fails to connect, both
    /// retryable.
    pub fn controller_id(&self) -> NodeId {
        self.known_controller()
            .or_else(|| self.peers.as_ref().and_then(|p| p.ids().next()))
            .unwrap_or(self.node_id)
    }

    /// The controller leader if one is known (this broker when alone).
    pub fn known_controller(&self) -> Option<NodeId> {
        match &self.controller {
            None => Some(self.node_id),
            Some(c) => c.leader(),
        }
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
        let applied = self.applied();
        let m = self.lock();
        if m.broker_epoch.is_none() {
            Some("registering")
        } else if applied < m.known_last {
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
        let cluster_id = self.lock().cluster_id.clone();
        let brokers: Vec<Value> = self.with_image(|image| {
            image
            .brokers
            .values()
            .map(|b| {
                // A broker fenced after its controlled shutdown stopped it is `fenced`.
                let status = if b.fenced {
                    "fenced"
                } else if b.shutting_down {
                    "shutting_down"
                } else {
                    "alive"
                };
                json!({"node_id": b.node_id, "address": b.address, "status": status, "broker_epoch": b.broker_epoch})
            })
            .collect()
        });
        let raft = self.controller.as_ref().map(|c| c.raft().view());
        json!({
            "cluster_id": cluster_id,
            "controller": self.known_controller(),
            "node_id": self.node_id,
            "brokers": brokers,
            "raft": raft,
            "version": version,
        })
    }

    /// Moves whenever this broker's metadata image changes (never on a broker alone).
    pub fn subscribe_image(&self) -> watch::Receiver<u64> {
        match &self.controller {
            Some(c) => c.raft().state().subscribe(),
            None => watch::Sender::new(0).subscribe(),
        }
    }

    /// Runs `f` on this broker's metadata image (the applied Raft state; empty on a broker
    /// alone), under its lock (keep `f` short; never `.await` in it).
    pub fn with_image<T>(&self, f: impl FnOnce(&MetadataImage) -> T) -> T {
        match &self.controller {
            Some(c) => c.raft().state().with_image(f),
            None => f(&MetadataImage::default()),
        }
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

    /// Whether the image holds every command the controller told this broker of, since its
    /// registration: before it, the image may be a voter's log replayed halfway after a
    /// restart (openraft applies what it learns is committed), an old state nobody may act on.
    pub fn caught_up(&self) -> bool {
        let applied = self.applied();
        let m = self.lock();
        m.broker_epoch.is_some() && applied >= m.known_last
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

    /// Where the controller leader listens, once one is known.
    fn controller_address(&self) -> Option<SocketAddr> {
        let peers = self.peers.as_ref().expect("a cluster member has peers");
        peers.address(self.known_controller()?)
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

    /// Whether this process started on a data directory that lost a former member's state.
    fn data_lost(&self) -> bool {
        self.data_lost
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
        self.lease.revoke();
    }

    /// The lease on this broker's controller session, for the produce path.
    pub fn session_lease(&self) -> Arc<SessionLease> {
        Arc::clone(&self.lease)
    }

    /// A heartbeat sent at `sent` was answered with the controller's image at `last`, an
    /// image holding every fence and leadership committed before the heartbeat arrived:
    /// the lease is renewed once the local replicas match that much of the metadata (a
    /// leadership lost by then is given up), waiting for it at most a heartbeat interval;
    /// else the next heartbeat tries.
    async fn heartbeat_answered(&self, to: SocketAddr, sent: std::time::Instant, last: u64) {
        self.saw_last_index(last);
        self.lock().session_holder = Some(to);
        let mut reconciled = self.reconciled.subscribe();
        let caught_up = reconciled.wait_for(|r| *r >= last);
        if tokio::time::timeout(self.heartbeat_interval(), caught_up)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            self.lease.renew(sent);
        }
    }

    fn applied(&self) -> u64 {
        self.with_image(|i| i.applied)
    }

    fn saw_last_index(&self, last: u64) {
        let mut m = self.lock();
        m.known_last = m.known_last.max(last);
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

/// A data directory of a part-1 cluster (the fixed controller's journal, no Raft state) is
/// refused: its metadata is not in a Raft log, and starting over would forget its topics.
fn refuse_part_one_journal(dir: &std::path::Path) -> io::Result<()> {
    let journal = dir.join(controller::METADATA_JOURNAL_FILE);
    if journal.exists() && !dir.join(RAFT_DIR).exists() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is the metadata log of a cluster whose controller was fixed on one broker; \
                 this version keeps the metadata in a Raft log and does not import it: start \
                 the cluster on empty data directories",
                journal.display()
            ),
        ));
    }
    Ok(())
}

/// A directory that joined a cluster (it stores the cluster id) but holds no Raft state lost
/// it (wiped, restored from an old copy): a voter without its log and vote could vote twice
/// in a term, or, as the lowest id, form a second cluster. Refused; the operator removes the
/// cluster id too to join as a new, empty voter.
fn refuse_lost_raft_state(dir: &std::path::Path, cluster_id: Option<&str>) -> io::Result<()> {
    let Some(cluster_id) = cluster_id else {
        return Ok(());
    };
    let raft = dir.join(RAFT_DIR);
    if holds_raft_state(dir) {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} joined cluster {cluster_id} but holds no metadata log or vote in {}: a voter \
             that lost them must not vote again; restore them, or start it with \
             --rejoin-after-data-loss to rejoin as a voter that votes once it has caught up",
            dir.display(),
            raft.display(),
        ),
    ))
}

/// Whether `<data>/__cluster/raft/` holds a metadata log or a vote.
fn holds_raft_state(dir: &std::path::Path) -> bool {
    let raft = dir.join(RAFT_DIR);
    let holds = |f: &str| raft.join(f).metadata().is_ok_and(|m| m.len() > 0);
    holds(crate::cluster::raft::LOG_FILE) || holds(crate::cluster::raft::VOTE_FILE)
}

/// How long a broker whose directory holds no cluster state waits for each other voter's
/// `GET /v1/cluster`. A voter not started yet refuses the connection at once.
const LOST_STATE_ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A broker whose directory holds no cluster state (no cluster id, no Raft log or vote):
/// a new voter, or one whose state was lost (a wiped directory, a new disk). The other
/// voters tell: if one of them lists this node id among the brokers of its cluster, this
/// node ran there before, its Raft log counted in their majorities, and a voter with an
/// empty log would grant its vote to a candidate lacking what it had acknowledged. Such a
/// broker refuses to start unless `rejoin_after_data_loss` is set; then it starts with its
/// vote withheld until it has applied what they had applied (`Some` of that index). None: a
/// new voter (none of the reachable voters knows it; a first formation).
///
/// Known limit: with every other voter unreachable at start, a wiped voter is taken for a
/// new one.
async fn lost_state(config: &BrokerConfig, peers: &Peers, me: NodeId) -> io::Result<Option<u64>> {
    let client = client::InternalClient::default();
    let asks = peers
        .ids()
        .filter(|id| *id != me)
        .filter_map(|id| peers.address(id))
        .map(|to| {
            let client = &client;
            async move {
                client
                    .get::<Value>(to, "/v1/cluster", LOST_STATE_ASK_TIMEOUT)
                    .await
                    .ok()
            }
        });
    let answers = futures_util::future::join_all(asks).await;
    let mut known_in = None;
    let mut applied = 0;
    for view in answers.into_iter().flatten() {
        let lists_me = view["brokers"].as_array().is_some_and(|b| {
            b.iter()
                .any(|b| b["node_id"].as_u64() == Some(u64::from(me.0)))
        });
        if let (true, Some(id)) = (lists_me, view["cluster_id"].as_str()) {
            known_in = Some(id.to_string());
        }
        applied = applied.max(view["raft"]["last_applied_index"].as_u64().unwrap_or(0));
    }
    let Some(cluster_id) = known_in else {
        return Ok(None);
    };
    if config.rejoin_after_data_loss {
        return Ok(Some(applied));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} holds no cluster state, but cluster {cluster_id} knows broker {me}: its metadata \
             log was lost (a wiped directory or a new disk), and a voter with an empty log could \
             elect a leader that lacks committed metadata. Restore the directory, or start it \
             with --rejoin-after-data-loss: it then votes only once it has caught up",
            config.data_dir.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member_of_three(dir: &std::path::Path) -> BrokerConfig {
        BrokerConfig {
            node_id: 2,
            listen: "127.0.0.1:9002".parse().unwrap(),
            peers: "1=127.0.0.1:9001,2=127.0.0.1:9002,3=127.0.0.1:9003".into(),
            data_dir: dir.to_path_buf(),
            ..BrokerConfig::default()
        }
    }

    #[tokio::test]
    async fn a_member_is_not_ready_before_it_registers_and_no_controller_is_known_yet() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cluster::open(&member_of_three(dir.path())).await.unwrap();
        assert!(c.controller().is_none(), "no leader yet: nobody else runs");
        assert_eq!(c.known_controller(), None);
        assert_eq!(
            c.controller_id(),
            NodeId(1),
            "the fallback is the lowest id"
        );
        assert_eq!(c.not_ready(), Some("registering"));
        c.registered("ab".into(), BrokerEpoch(2));
        assert_eq!(
            c.not_ready(),
            Some("catching_up"),
            "the image lacks index 2"
        );
        assert!(dir.path().join(CLUSTER_DIR).join(RAFT_DIR).exists());
        c.local_controller().unwrap().raft().shutdown().await;
    }

    #[tokio::test]
    async fn a_member_that_lost_its_raft_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cluster_dir = dir.path().join(CLUSTER_DIR);
        identity::write_cluster_id(&cluster_dir, "00112233445566778899aabbccddeeff").unwrap();
        let e = Cluster::open(&member_of_three(dir.path()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("must not vote again"), "{e}");
        assert!(!cluster_dir.join(RAFT_DIR).exists(), "nothing was created");
    }

    #[tokio::test]
    async fn a_part_one_metadata_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cluster_dir = dir.path().join(CLUSTER_DIR);
        std::fs::create_dir_all(&cluster_dir).unwrap();
        std::fs::write(cluster_dir.join(controller::METADATA_JOURNAL_FILE), b"").unwrap();
        let e = Cluster::open(&member_of_three(dir.path()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("does not import it"), "{e}");
    }

    #[tokio::test]
    async fn a_broker_alone_is_a_cluster_of_one_and_always_ready() {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        };
        let c = Cluster::open(&config).await.unwrap();
        assert_eq!(c.not_ready(), None);
        assert_eq!(c.view()["cluster_id"], "tidelog-single-node");
        assert!(!dir.path().join(CLUSTER_DIR).exists());
    }
}
