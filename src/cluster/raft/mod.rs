//! The openraft adapter: the cluster metadata kept by a Raft quorum of the `--peers` brokers.
//! Every openraft type stays in this folder; the rest of the crate sees [`MetadataRaft`]
//! (propose a [`Command`], who leads, the voters' view, the RPC handlers), [`MetadataState`]
//! (the applied image) and plain error enums.
//!
//! - `log_store`: the log over `controller::journal` (fsync before an append is reported
//!   flushed), the vote and the purge mark, each durable before the call returns.
//! - `state_machine`: the image, the cluster id, snapshots in `snapshot.json`.
//! - `network`: the RPCs over HTTP on the brokers' own port (`/internal/v1/raft/...`).
//! - `leader_clock`: which voters acknowledged this leader's AppendEntries sent since when,
//!   for [`MetadataRaft::confirm_leading_since`].
//!
//! Formation: the voters are the `--peers` brokers (1, 3 or 5). The lowest id initializes the
//! membership, only when its Raft state is empty; the others wait to be contacted. A broker
//! whose `--peers` differs from the membership in its log refuses to start, and RPCs carry the
//! sender's voter list, so brokers with different lists refuse each other (409
//! `peers_mismatch`) rather than form two quorums.
//!
//! openraft 0.9 (pinned with `=`): the stable line; 0.10 is still alpha. Timings come from the
//! config (`raft_heartbeat_ms`, `raft_election_timeout_ms`): defaults 300 ms and 1.5-3 s, as
//! the defaults of openraft flap on a busy 2-core machine.

mod leader_clock;
mod log_store;
pub use log_store::{LOG_FILE, VOTE_FILE};
mod network;
mod state_machine;

use std::collections::BTreeMap;
use std::io::{self, Cursor};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::cluster::client::InternalClient;
use crate::controller::peers::Peers;
use crate::metadata::{Command, MetadataError, NodeId, Outcome};
use leader_clock::LeaderClock;
pub use network::{APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};
use network::{Envelope, Network};
pub use state_machine::Shared as MetadataState;

const WITHHELD_LOCK: &str = "the vote gate lock is not poisoned";

/// The directory of the Raft files under `<data>/__cluster/`.
pub const RAFT_DIR: &str = "raft";

/// A snapshot of the image is taken every this many log entries; the log before it (but the
/// last [`LOG_KEPT_AFTER_SNAPSHOT`] entries) is then purged.
pub const SNAPSHOT_EVERY: u64 = 1000;
const LOG_KEPT_AFTER_SNAPSHOT: u64 = 200;

/// Largest Raft RPC body a broker reads: entries are capped at
/// `controller::journal::ENTRY_BYTES_MAX` and sent [`ENTRIES_PER_APPEND`] at a time.
pub const RPC_BYTES_MAX: u64 = 32 * 1024 * 1024;
const ENTRIES_PER_APPEND: u64 = 16;
const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// Longest a proposal waits for its entry to commit: a leader cut off from its quorum does
/// not hang its callers (the outcome is then unknown: the entry may still commit).
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

openraft::declare_raft_types!(
    /// The metadata Raft's types.
    pub TypeConfig:
        D = Request,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// An entry of the metadata log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Command(Command),
    /// The cluster's id, proposed once by the first leader (the first one applied wins).
    ClusterId {
        cluster_id: String,
    },
}

/// What applying an entry gave: `MetadataImage::apply`'s answer. Only the leader's proposer
/// reads it, in process; it never crosses the network (its serde form is a placeholder that
/// openraft's `serde` feature requires).
#[derive(Debug, Clone)]
pub struct Applied(pub Result<Outcome, MetadataError>);

impl Serialize for Applied {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for Applied {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "an apply result is never sent over the network",
        ))
    }
}

/// Raft timings, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    /// The election timeout is drawn between this and twice this.
    pub election_timeout_ms: u64,
}

/// Why a proposal did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This broker is not the leader (the leader, when known). Nothing was proposed.
    NotLeader(Option<NodeId>),
    /// The entry was handed to Raft but its fate is unknown (leadership lost, no quorum
    /// within [`PROPOSE_TIMEOUT`]): it may still commit.
    Unknown(String),
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NotLeader(Some(l)) => {
                write!(f, "not the controller leader (node {l} is)")
            }
            ProposeError::NotLeader(None) => write!(f, "no controller leader is elected right now"),
            ProposeError::Unknown(why) => write!(f, "the outcome is unknown: {why}"),
        }
    }
}

/// Why a Raft RPC was refused before openraft saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcRefusal {
    /// The sender's voter list differs from ours.
    PeersMismatch(String),
    /// The sender runs another cluster.
    ClusterIdMismatch { ours: String, theirs: String },
    /// The body is not the RPC the route takes.
    Invalid(String),
}

/// Which Raft RPC a route carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Append,
    Vote,
    Snapshot,
}

/// A voter as this broker sees it.
#[derive(Debug, Clone, Serialize)]
pub struct VoterView {
    pub node_id: NodeId,
    pub address: String,
    /// `leader` or `follower` (as far as this broker knows).
    pub role: &'static str,
    /// On the leader: the last log index the voter has stored (null: not known yet).
    pub matched_index: Option<u64>,
}

/// This broker's Raft state, for `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct RaftView {
    pub term: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: &'static str,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// This voter lost its state and has not caught up: it neither votes nor campaigns.
    pub votes_withheld: bool,
    pub voters: Vec<VoterView>,
}

/// One broker's member of the metadata quorum.
pub struct MetadataRaft {
    raft: openraft::Raft<TypeConfig>,
    state: Arc<MetadataState>,
    node_id: NodeId,
    peers: Peers,
    voters: Arc<str>,
    /// Set while a voter that lost its state catches up: it grants no vote until it has
    /// applied this index (see [`MetadataRaft::open`]).
    withheld_until: Arc<std::sync::Mutex<Option<u64>>>,
    clock: Arc<LeaderClock>,
}

impl std::fmt::Debug for MetadataRaft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataRaft")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// The voters of `--peers` in a canonical form: their ids in order, `1,2,3`. Addresses are
/// left out: a broker may reach a peer under another address (a proxy, another interface);
/// each reaches the others at the addresses of its own `--peers`.
fn canonical_voters(peers: &Peers) -> String {
    peers
        .ids()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn members(peers: &Peers) -> BTreeMap<u64, BasicNode> {
    peers
        .ids()
        .map(|id| {
            let address = peers.address(id).expect("an id of the list");
            (u64::from(id.0), BasicNode::new(address.to_string()))
        })
        .collect()
}

impl MetadataRaft {
    /// Opens this voter's Raft state in `dir` and starts it. The lowest id of `peers`
    /// initializes the cluster's membership when its state is empty.
    ///
    /// `rejoin_at`: this voter lost its state (its data directory was wiped) and the others
    /// had applied up to this index when it started. An empty log would grant its vote to
    /// any candidate, one that lacks entries this voter had acknowledged too (committed by
    /// its ack), so it neither votes nor campaigns nor initializes anything until it has
    /// applied that far; from then on its log holds every entry committed before the loss.
    pub async fn open(
        dir: &Path,
        node_id: NodeId,
        peers: &Peers,
        timing: Timing,
        rejoin_at: Option<u64>,
    ) -> io::Result<MetadataRaft> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let log = log_store::LogStore::open(dir)?;
        let fresh = log.is_fresh();
        let sm = state_machine::StateMachine::open(dir)?;
        let state = sm.shared();
        let voters: Arc<str> = canonical_voters(peers).into();
        if let Some(stored) = log.last_membership().or_else(|| sm.membership()) {
            let stored: Vec<String> = stored.keys().map(u64::to_string).collect();
            if stored.join(",") != *voters {
                return Err(invalid(format!(
                    "--peers names the voters {voters}, but this broker's metadata log has the \
                     voters {}: every broker must be started with the same voters",
                    stored.join(",")
                )));
            }
        }
        let election = timing.election_timeout_ms.max(2 * timing.heartbeat_ms + 1);
        let config = Config {
            cluster_name: "tidelog-metadata".into(),
            heartbeat_interval: timing.heartbeat_ms,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            max_payload_entries: ENTRIES_PER_APPEND,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
            max_in_snapshot_log_to_keep: LOG_KEPT_AFTER_SNAPSHOT,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            enable_elect: rejoin_at.is_none(),
            ..Config::default()
        }
        .validate()
        .map_err(|e| invalid(format!("raft timings: {e}")))?;
        let clock = Arc::new(LeaderClock::default());
        let network = Network {
            client: InternalClient::default(),
            voters: Arc::clone(&voters),
            addresses: Arc::new(
                peers
                    .ids()
                    .filter_map(|id| Some((u64::from(id.0), peers.address(id)?)))
                    .collect(),
            ),
            shared: Arc::clone(&state),
            clock: Arc::clone(&clock),
        };
        let raft = openraft::Raft::new(u64::from(node_id.0), Arc::new(config), network, log, sm)
            .await
            .map_err(|e| io::Error::other(format!("raft: {e}")))?;
        if fresh
            && rejoin_at.is_none()
            && peers.ids().next() == Some(node_id)
            && let Err(e) = raft.initialize(members(peers)).await
        {
            tracing::warn!("raft initialize: {e}");
        }
        let withheld_until = Arc::new(std::sync::Mutex::new(rejoin_at));
        if let Some(target) = rejoin_at {
            tracing::warn!(
                applied_elsewhere = target,
                "this voter lost its metadata state: it neither votes nor campaigns until it \
                 has applied what the other voters had"
            );
            let (raft, withheld) = (raft.clone(), Arc::clone(&withheld_until));
            tokio::spawn(async move {
                let mut metrics = raft.metrics();
                let caught_up = metrics
                    .wait_for(|m| m.last_applied.is_some_and(|l| l.index >= target))
                    .await
                    .is_ok();
                if caught_up {
                    *withheld.lock().expect(WITHHELD_LOCK) = None;
                    raft.runtime_config().elect(true);
                    tracing::info!(
                        applied = target,
                        "this voter caught up after losing its state: it votes again"
                    );
                }
            });
        }
        Ok(MetadataRaft {
            raft,
            state,
            node_id,
            peers: peers.clone(),
            voters,
            withheld_until,
            clock,
        })
    }

    /// Whether this voter still withholds its vote (it lost its state and has not caught up).
    pub fn withholds_votes(&self) -> bool {
        self.withheld_until.lock().expect(WITHHELD_LOCK).is_some()
    }

    /// The applied metadata.
    pub fn state(&self) -> &Arc<MetadataState> {
        &self.state
    }

    /// The current leader, as far as this broker knows.
    pub fn leader(&self) -> Option<NodeId> {
        let m = self.raft.metrics();
        let leader = m.borrow().current_leader;
        leader.and_then(|l| u32::try_from(l).ok()).map(NodeId)
    }

    /// The term of this broker's leadership, while it leads.
    pub fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader && m.current_leader == Some(u64::from(self.node_id.0)))
            .then_some(m.current_term)
    }

    /// Proposes `command`; answers its index and what `apply` made of it once it is
    /// committed and applied here.
    pub async fn propose(
        &self,
        command: Command,
    ) -> Result<(u64, Result<Outcome, MetadataError>), ProposeError> {
        let (index, applied) = self.write(Request::Command(command)).await?;
        Ok((index, applied.0))
    }

    /// Proposes the cluster id (the first applied wins).
    pub async fn propose_cluster_id(&self, cluster_id: String) -> Result<(), ProposeError> {
        self.write(Request::ClusterId { cluster_id })
            .await
            .map(|_| ())
    }

    async fn write(&self, request: Request) -> Result<(u64, Applied), ProposeError> {
        let written = tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.client_write(request)).await;
        match written {
            Err(_) => Err(ProposeError::Unknown(format!(
                "not committed within {} s",
                PROPOSE_TIMEOUT.as_secs()
            ))),
            Ok(Ok(answer)) => Ok((answer.log_id.index, answer.data)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ProposeError::NotLeader(
                    f.leader_id.and_then(|l| u32::try_from(l).ok()).map(NodeId),
                ))
            }
            Ok(Err(e)) => Err(ProposeError::Unknown(e.to_string())),
        }
    }

    /// Confirms this broker still leads: waits, at most `within`, until a quorum of voters
    /// acknowledged its leadership for AppendEntries sent at or after `since`, so no later
    /// leader was elected before `since` (see `leader_clock`); then until it has applied
    /// every entry its log held at that moment, every entry committed before `since` among
    /// them. Heartbeats go out at once rather than at the next interval. No extra round of
    /// requests is made: the replication streams' own AppendEntries count. Err when this
    /// broker does not lead, or when no quorum answered in time.
    pub async fn confirm_leading_since(
        &self,
        since: Instant,
        within: Duration,
    ) -> Result<(), ProposeError> {
        let deadline = tokio::time::Instant::now() + within;
        let me = u64::from(self.node_id.0);
        let mut metrics = self.raft.metrics();
        let mut acks = self.clock.subscribe();
        if self.raft.trigger().heartbeat().await.is_err() {
            return Err(ProposeError::NotLeader(None));
        }
        let last_log_index = loop {
            acks.mark_unchanged();
            metrics.mark_unchanged();
            {
                let m = metrics.borrow();
                if m.state != ServerState::Leader || m.current_leader != Some(me) {
                    let leader = m.current_leader.filter(|l| *l != me);
                    return Err(ProposeError::NotLeader(
                        leader.and_then(|l| u32::try_from(l).ok()).map(NodeId),
                    ));
                }
                let configs = m.membership_config.membership().get_joint_config();
                if self.clock.quorum_since(me, &m.vote, configs, since) {
                    break m.last_log_index;
                }
            }
            tokio::select! {
                _ = acks.changed() => {}
                _ = metrics.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ProposeError::Unknown(format!(
                        "no quorum confirmed this controller's leadership within {} ms",
                        within.as_millis()
                    )));
                }
            }
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(last_log_index, "confirm leading")
            .await
            .map_err(|e| ProposeError::Unknown(format!("applying the log: {e}")))?;
        Ok(())
    }

    /// Waits until this broker, as leader, has applied every entry committed before now (a
    /// new leader's image may lag its log for a moment).
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let checked = tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.ensure_linearizable()).await;
        match checked {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(e))) => match e {
                openraft::error::CheckIsLeaderError::ForwardToLeader(f) => {
                    Err(ProposeError::NotLeader(
                        f.leader_id.and_then(|l| u32::try_from(l).ok()).map(NodeId),
                    ))
                }
                other => Err(ProposeError::NotLeader(None)).inspect_err(|_| {
                    tracing::debug!("read barrier: {other}");
                }),
            },
            Ok(Err(e)) => Err(ProposeError::Unknown(e.to_string())),
            Err(_) => Err(ProposeError::Unknown(format!(
                "no quorum within {} s",
                PROPOSE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Hands a Raft RPC (the JSON body of its route) to openraft; answers its JSON answer.
    pub async fn handle(
        &self,
        rpc: Rpc,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, RpcRefusal> {
        let envelope: Envelope<serde_json::Value> =
            serde_json::from_value(body).map_err(|e| RpcRefusal::Invalid(e.to_string()))?;
        self.check(&envelope)?;
        fn open<T: serde::de::DeserializeOwned>(rpc: serde_json::Value) -> Result<T, RpcRefusal> {
            serde_json::from_value(rpc).map_err(|e| RpcRefusal::Invalid(e.to_string()))
        }
        let answer = match rpc {
            Rpc::Append => {
                serde_json::to_value(self.raft.append_entries(open(envelope.rpc)?).await)
            }
            Rpc::Vote if self.withholds_votes() => {
                // Refused, as a voter whose log is ahead refuses: the candidate counts no
                // vote here and sees nothing that makes it step down.
                let request: openraft::raft::VoteRequest<u64> = open(envelope.rpc)?;
                tracing::debug!(candidate = %request.vote, "vote withheld: catching up after losing state");
                let vote = self.raft.metrics().borrow().vote;
                let refusal: Result<openraft::raft::VoteResponse<u64>, RaftError<u64>> =
                    Ok(openraft::raft::VoteResponse {
                        vote,
                        vote_granted: false,
                        last_log_id: None,
                    });
                serde_json::to_value(refusal)
            }
            Rpc::Vote => serde_json::to_value(self.raft.vote(open(envelope.rpc)?).await),
            Rpc::Snapshot => {
                serde_json::to_value(self.raft.install_snapshot(open(envelope.rpc)?).await)
            }
        };
        Ok(answer.expect("a raft answer serializes"))
    }

    fn check<T>(&self, e: &Envelope<T>) -> Result<(), RpcRefusal> {
        if *e.voters != *self.voters {
            return Err(RpcRefusal::PeersMismatch(format!(
                "the sender's --peers names the voters {}, this broker's {}: every broker must \
                 be started with the same voters",
                e.voters, self.voters
            )));
        }
        if let (Some(theirs), Some(ours)) = (&e.cluster_id, self.state.cluster_id())
            && *theirs != ours
        {
            return Err(RpcRefusal::ClusterIdMismatch {
                ours,
                theirs: theirs.clone(),
            });
        }
        Ok(())
    }

    /// This broker's view of the quorum.
    pub fn view(&self) -> RaftView {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m
            .current_leader
            .and_then(|l| u32::try_from(l).ok())
            .map(NodeId);
        let voters = self
            .peers
            .ids()
            .map(|id| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&u64::from(id.0)).copied().flatten())
                    .map(|l| l.index);
                let matched = if leader == Some(id) && leader == Some(self.node_id) {
                    m.last_log_index
                } else {
                    matched
                };
                VoterView {
                    node_id: id,
                    address: self
                        .peers
                        .address(id)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    role: if leader == Some(id) {
                        "leader"
                    } else {
                        "follower"
                    },
                    matched_index: matched,
                }
            })
            .collect();
        RaftView {
            term: m.current_term,
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            leader,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            votes_withheld: self.withholds_votes(),
            voters,
        }
    }

    /// Takes a snapshot of the image now (tests; the policy takes one every
    /// [`SNAPSHOT_EVERY`] entries).
    pub async fn snapshot_now(&self) {
        let _ = self.raft.trigger().snapshot().await;
    }

    /// Stops this voter (at shutdown).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::MetadataImage;

    fn one_voter() -> Peers {
        Peers::parse(
            "1=127.0.0.1:9001",
            NodeId(1),
            "127.0.0.1:9001".parse().unwrap(),
        )
        .unwrap()
    }

    const FAST: Timing = Timing {
        heartbeat_ms: 50,
        election_timeout_ms: 200,
    };

    async fn leading(raft: &MetadataRaft) {
        for _ in 0..200 {
            if raft.leader_term().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("a single voter leads: {:?}", raft.view());
    }

    fn register(id: u32) -> Command {
        Command::RegisterBroker {
            node_id: NodeId(id),
            address: format!("127.0.0.1:{}", 9000 + id),
            incarnation: 5,
            data_lost: false,
        }
    }

    /// One voter: proposals commit and apply, a refusal is answered as `apply`'s, and the
    /// image survives a restart from a snapshot plus the log after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_single_voter_commits_snapshots_and_restarts_to_the_same_image() {
        let dir = tempfile::tempdir().unwrap();
        let raft = MetadataRaft::open(dir.path(), NodeId(1), &one_voter(), FAST, None)
            .await
            .unwrap();
        leading(&raft).await;
        let (index, applied) = raft.propose(register(1)).await.unwrap();
        assert!(
            matches!(applied, Ok(Outcome::Registered { .. })),
            "{applied:?}"
        );
        assert_eq!(raft.state().with_image(|i| i.applied), index);
        let stale = Command::UnfenceBroker {
            node_id: NodeId(1),
            broker_epoch: crate::metadata::BrokerEpoch(index + 100),
        };
        let (_, refused) = raft.propose(stale).await.unwrap();
        assert!(refused.is_err(), "apply's refusal comes back: {refused:?}");
        raft.propose_cluster_id("ab".into()).await.unwrap();
        raft.propose_cluster_id("cd".into()).await.unwrap();
        assert_eq!(
            raft.state().cluster_id().as_deref(),
            Some("ab"),
            "the first wins"
        );
        raft.snapshot_now().await;
        for _ in 0..200 {
            if raft.view().snapshot_index.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(raft.view().snapshot_index.is_some(), "{:?}", raft.view());
        // After the snapshot: one more command, only in the log.
        let (_, applied) = raft.propose(register(2)).await.unwrap();
        assert!(applied.is_ok(), "{applied:?}");
        let before: MetadataImage = raft.state().with_image(MetadataImage::clone);
        raft.shutdown().await;
        drop(raft);

        let raft = MetadataRaft::open(dir.path(), NodeId(1), &one_voter(), FAST, None)
            .await
            .unwrap();
        leading(&raft).await;
        raft.read_barrier().await.unwrap();
        assert_eq!(raft.state().with_image(MetadataImage::clone), before);
        assert_eq!(raft.state().cluster_id().as_deref(), Some("ab"));
        raft.shutdown().await;
        drop(raft);

        // Another voter list than the one in the log: refused at start.
        let three = Peers::parse(
            "1=127.0.0.1:9001,2=127.0.0.1:9002,3=127.0.0.1:9003",
            NodeId(1),
            "127.0.0.1:9001".parse().unwrap(),
        )
        .unwrap();
        let e = MetadataRaft::open(dir.path(), NodeId(1), &three, FAST, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("the same voters"), "{e}");
    }
}
