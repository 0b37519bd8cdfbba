//! Raft RPCs over the brokers' HTTP port: `POST /internal/v1/raft/{append,vote,snapshot}`,
//! JSON bodies. Each request is an [`Envelope`]: the sender's voter list and cluster id with
//! the openraft message, so a broker started with another `--peers` or another cluster's data
//! is refused (409 `peers_mismatch` / `cluster_id_mismatch`) instead of joining the quorum.
//! The answer is openraft's `Result<answer, RaftError>` as JSON.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use super::leader_clock::LeaderClock;
use super::state_machine::Shared;
use crate::cluster::client::{CallError, InternalClient};

pub const APPEND_PATH: &str = "/internal/v1/raft/append";
pub const VOTE_PATH: &str = "/internal/v1/raft/vote";
pub const SNAPSHOT_PATH: &str = "/internal/v1/raft/snapshot";

/// A Raft RPC with what the receiver checks before it hands it to openraft.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Envelope<T> {
    /// The voter ids of the sender's `--peers`, canonical (`1,2,3`).
    pub(super) voters: String,
    /// The cluster id the sender's state machine holds, once it has one.
    pub(super) cluster_id: Option<String>,
    pub(super) rpc: T,
}

/// What every connection needs: the client, the voter list, the state machine (cluster id).
#[derive(Debug, Clone)]
pub(super) struct Network {
    pub(super) client: InternalClient,
    pub(super) voters: Arc<str>,
    /// Where this broker reaches each voter: its own `--peers` (the addresses in the Raft
    /// membership are the first leader's, only a fallback).
    pub(super) addresses: Arc<BTreeMap<u64, SocketAddr>>,
    pub(super) shared: Arc<Shared>,
    /// What the other voters acknowledged of this node's leadership.
    pub(super) clock: Arc<LeaderClock>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            target,
            address: self
                .addresses
                .get(&target)
                .copied()
                .or_else(|| node.addr.parse().ok()),
            network: self.clone(),
        }
    }
}

pub(super) struct Peer {
    target: u64,
    address: Option<SocketAddr>,
    network: Network,
}

#[derive(Debug)]
struct Failure(String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        rpc: Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<u64, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(address) = self.address else {
            let why = Failure(format!("node {} has no usable address", self.target));
            return Err(RPCError::Unreachable(Unreachable::new(&why)));
        };
        let envelope = Envelope {
            voters: self.network.voters.to_string(),
            cluster_id: self.network.shared.cluster_id(),
            rpc,
        };
        let answer: Result<Result<Resp, E>, CallError> = self
            .network
            .client
            .post(address, path, &envelope, ttl)
            .await;
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(CallError::Unreachable(why)) => {
                Err(RPCError::Unreachable(Unreachable::new(&Failure(why))))
            }
            Err(refused @ CallError::Refused { .. }) => {
                tracing::warn!(target_node = self.target, "raft rpc refused: {refused}");
                let why = Failure(refused.to_string());
                Err(RPCError::Network(NetworkError::new(&why)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let (vote, sent) = (rpc.vote, std::time::Instant::now());
        let answer = self.call(APPEND_PATH, rpc, option.hard_ttl()).await;
        if let Ok(
            AppendEntriesResponse::Success
            | AppendEntriesResponse::PartialSuccess(_)
            | AppendEntriesResponse::Conflict,
        ) = &answer
        {
            self.network.clock.acknowledged(self.target, &vote, sent);
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(SNAPSHOT_PATH, rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(VOTE_PATH, rpc, option.hard_ttl()).await
    }
}
