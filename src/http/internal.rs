//! Internal routes (`/internal/v1/`, OpenAPI tag `internal`): brokers call them on the
//! controller leader's port to register, heartbeat, shut down under control and change ISRs (any other broker answers
//! 421 `not_controller` naming the leader), on every voter's port for the metadata Raft's
//! RPCs (`/internal/v1/raft/{append,vote,snapshot}`), and on a leader's port to fetch
//! replicated data (every broker).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::body::read_json;
use super::error::{ApiError, ApiResult};
use crate::cluster::controller::{ControlError, Controller, Registration};
use crate::cluster::protocol::{
    AlterPartitionAnswer, AlterPartitionRequest, HeartbeatAnswer, HeartbeatRequest, RegisterAnswer,
    RegisterRequest, ShutdownAnswer, ShutdownRequest, ShutdownStage,
};
use crate::cluster::raft::{RPC_BYTES_MAX, Rpc, RpcRefusal};
use crate::metadata::{Command, MetadataError, NodeId};
use crate::replication::wire::{self, FetchRequest};

/// The controller, if this broker's metadata Raft leads; else 421 `not_controller` naming
/// the leader this broker knows (`controller`, `controller_address`; null during an
/// election, with `Retry-After`).
pub(super) fn controller(node: &AppState) -> ApiResult<Arc<Controller>> {
    let cluster = &node.cluster;
    match cluster.controller() {
        Some(c) => Ok(Arc::clone(c)),
        None => {
            let leader = cluster
                .known_controller()
                .filter(|l| *l != cluster.node_id());
            Err(not_controller(node, leader))
        }
    }
}

/// 421 `not_controller` naming `leader` (if known) and its address.
fn not_controller(node: &AppState, leader: Option<NodeId>) -> ApiError {
    let cluster = &node.cluster;
    let address = leader
        .and_then(|l| cluster.peer_address(l))
        .map(|a| a.to_string());
    let detail = match (leader, &address) {
        (Some(l), Some(a)) => format!(
            "broker {} is not the controller leader (broker {l} is, at {a})",
            cluster.node_id()
        ),
        _ => format!(
            "broker {} is not the controller leader, and no leader is elected right now; \
             retry shortly",
            cluster.node_id()
        ),
    };
    let problem = ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_controller", detail)
        .with("controller", leader.map(|l| l.0))
        .with("controller_address", address);
    if leader.is_none() {
        problem.retry_after(1)
    } else {
        problem
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let detail = e.to_string();
        match e {
            ControlError::UnknownBroker(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_broker", detail)
            }
            ControlError::StaleBrokerEpoch { current, .. } => {
                ApiError::new(StatusCode::CONFLICT, "stale_broker_epoch", detail)
                    .with("broker_epoch", current.0)
            }
            ControlError::ClusterIdMismatch { ours, .. } => {
                ApiError::new(StatusCode::CONFLICT, "cluster_id_mismatch", detail)
                    .with("cluster_id", ours)
            }
            ControlError::PeersMismatch(_) => {
                ApiError::new(StatusCode::CONFLICT, "peers_mismatch", detail)
            }
            ControlError::BrokerAlreadyAlive(_) => {
                ApiError::new(StatusCode::CONFLICT, "broker_already_alive", detail).retry_after(1)
            }
            ControlError::Io(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                detail,
            ),
            ControlError::Invalid(_) => ApiError::invalid(detail),
            ControlError::NotEnoughBrokers { active_brokers, .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "not_enough_brokers", detail)
                    .with("alive_brokers", active_brokers)
            }
            ControlError::Refused(e) => refused(e, detail),
            ControlError::NotController { leader } => {
                ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_controller", detail)
                    .with("controller", leader.map(|l| l.0))
                    .retry_after(1)
            }
            ControlError::OutcomeUnknown(_) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "request_timeout", detail)
            }
        }
    }
}

/// `POST /internal/v1/brokers/register`.
pub async fn register(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let controller = controller(&node)?;
    let r: RegisterRequest =
        read_json(&headers, body, node.limits().request_body_bytes_max).await?;
    let registration = Registration {
        node_id: r.node_id,
        address: r.address,
        incarnation: r.incarnation,
        cluster_id: r.cluster_id,
        data_lost: r.data_lost,
    };
    let (cluster_id, broker_epoch) = controller.register(registration).await?;
    let answer = RegisterAnswer {
        cluster_id,
        broker_epoch,
    };
    Ok(axum::Json(answer).into_response())
}

/// `POST /internal/v1/brokers/heartbeat`.
pub async fn heartbeat(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let controller = controller(&node)?;
    let h: HeartbeatRequest =
        read_json(&headers, body, node.limits().request_body_bytes_max).await?;
    let last_index = controller
        .heartbeat(h.node_id, h.broker_epoch, h.caught_up, h.reconciled)
        .await?;
    Ok(axum::Json(HeartbeatAnswer { last_index }).into_response())
}

/// Longest the controller holds a `drain` answer while the other brokers take over.
const SHUTDOWN_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// `POST /internal/v1/brokers/shutdown`: a broker's controlled shutdown. `drain`: its
/// leaderships move to other in-sync replicas and it leaves every in-sync set, answered once
/// the other brokers applied that (or `wait_ms` passed: `brokers_behind` names who had not);
/// `stopped`: it stopped serving, so its session ends and it is fenced at once.
pub async fn shutdown(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let controller = controller(&node)?;
    let r: ShutdownRequest =
        read_json(&headers, body, node.limits().request_body_bytes_max).await?;
    let answer = match r.stage {
        ShutdownStage::Drain => {
            let wait = std::time::Duration::from_millis(r.wait_ms).min(SHUTDOWN_WAIT_MAX);
            let mut shutdown = node.broker.shutdown_signal();
            let (index, brokers_behind) = controller
                .begin_shutdown(r.node_id, r.broker_epoch, wait, &mut shutdown)
                .await?;
            ShutdownAnswer {
                index,
                brokers_behind,
            }
        }
        ShutdownStage::Stopped => ShutdownAnswer {
            index: controller.broker_stopped(r.node_id, r.broker_epoch).await?,
            brokers_behind: Vec::new(),
        },
    };
    Ok(axum::Json(answer).into_response())
}

/// A command `apply` refused, as the problem a client can act on.
fn refused(e: MetadataError, detail: String) -> ApiError {
    match e {
        MetadataError::TopicExists(_) => {
            ApiError::new(StatusCode::CONFLICT, "topic_exists", detail)
        }
        MetadataError::TopicNotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "topic_not_found", detail)
        }
        MetadataError::PartitionNotFound { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "partition_not_found", detail)
        }
        MetadataError::InvalidMinInsync { .. } | MetadataError::InvalidAssignment(_) => {
            ApiError::invalid(detail)
        }
        MetadataError::NotInReplicaSet { replica } => {
            ApiError::new(StatusCode::CONFLICT, "not_in_replica_set", detail)
                .with("replica", replica.0)
        }
        MetadataError::ReplicaFenced { replica } => {
            ApiError::new(StatusCode::CONFLICT, "replica_fenced", detail).with("replica", replica.0)
        }
        MetadataError::PartitionHasLeader { leader } => {
            ApiError::new(StatusCode::CONFLICT, "partition_has_leader", detail)
                .with("leader", leader.0)
        }
        MetadataError::PreferredLeaderNotAvailable { replica } => ApiError::new(
            StatusCode::CONFLICT,
            "preferred_leader_not_available",
            detail,
        )
        .with("replica", replica.0),
        MetadataError::ReassignmentInProgress { adding, removing } => {
            ApiError::new(StatusCode::CONFLICT, "reassignment_in_progress", detail)
                .with("adding", adding.iter().map(|n| n.0).collect::<Vec<_>>())
                .with("removing", removing.iter().map(|n| n.0).collect::<Vec<_>>())
        }
        MetadataError::NoReassignment => {
            ApiError::new(StatusCode::CONFLICT, "no_reassignment", detail)
        }
        MetadataError::CancelWouldLoseLeader => {
            ApiError::new(StatusCode::CONFLICT, "cancel_would_lose_leader", detail)
        }
        MetadataError::ReplicaBeingAdded { replica } => {
            ApiError::new(StatusCode::CONFLICT, "replica_being_added", detail)
                .with("replica", replica.0)
        }
        // The epochs matched (they are checked first): the change itself was refused, so no
        // earlier attempt of it committed (a leader forgets it: `replicator::after_alter_failure`).
        MetadataError::IneligibleReplica { .. } | MetadataError::InvalidIsr(_) => {
            ApiError::new(StatusCode::CONFLICT, "isr_change_refused", detail)
        }
        _ => ApiError::new(StatusCode::CONFLICT, "metadata_conflict", detail),
    }
}

/// `POST /internal/v1/partitions/alter`: a leader changes its partition's ISR
/// (compare-and-swap on the partition epoch); served by the controller.
pub async fn alter_partition(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let controller = controller(&node)?;
    let r: AlterPartitionRequest =
        read_json(&headers, body, node.limits().request_body_bytes_max).await?;
    controller.check_member(r.node_id, r.broker_epoch)?;
    let index = controller
        .propose(Command::AlterPartition {
            topic: r.topic,
            partition: r.partition,
            leader: r.node_id,
            leader_epoch: r.leader_epoch,
            partition_epoch: r.partition_epoch,
            isr: r.isr,
            high_watermark: r.high_watermark,
        })
        .await?;
    Ok(axum::Json(AlterPartitionAnswer { index }).into_response())
}

/// `POST /internal/v1/replica/fetch`: a follower's long-poll for the partitions it follows
/// from this broker (JSON request, binary answer: `replication::wire`). A node not in
/// `--peers` is 404 `unknown_broker`, an older broker epoch than the metadata's 409
/// `stale_broker_epoch`; per partition, leader-epoch fencing and non-replicas are errors in
/// the answer.
pub async fn replica_fetch(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let request: FetchRequest =
        read_json(&headers, body, node.limits().request_body_bytes_max).await?;
    if request.partitions.len() as u64 > u64::from(wire::FETCH_PARTITIONS_MAX) {
        return Err(ApiError::invalid(format!(
            "{} partitions in one replica fetch (at most {})",
            request.partitions.len(),
            wire::FETCH_PARTITIONS_MAX
        )));
    }
    // Whole-request refusals, as problems: a node outside the cluster, or an incarnation the
    // metadata has replaced. A broker epoch newer than this broker's image is served per
    // partition (`not_a_follower`): the follower retries once this broker caught up.
    let replica = request.replica;
    if node.cluster.peer_address(replica).is_none() {
        return Err(
            ControlError::UnknownBroker(format!("node {replica} is not in --peers")).into(),
        );
    }
    let current = node
        .cluster
        .with_image(|i| i.brokers.get(&replica).map(|b| b.broker_epoch));
    if let Some(current) = current.filter(|c| *c > request.broker_epoch) {
        return Err(ControlError::StaleBrokerEpoch {
            node_id: replica,
            current,
        }
        .into());
    }
    let answer = node.replication.serve_fetch(&request).await;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        answer,
    )
        .into_response())
}

/// `POST /internal/v1/raft/append`: the metadata Raft leader's AppendEntries.
pub async fn raft_append(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    raft_rpc(&node, Rpc::Append, &headers, body).await
}

/// `POST /internal/v1/raft/vote`: a candidate's RequestVote.
pub async fn raft_vote(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    raft_rpc(&node, Rpc::Vote, &headers, body).await
}

/// `POST /internal/v1/raft/snapshot`: a chunk of the leader's snapshot of the image.
pub async fn raft_snapshot(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    raft_rpc(&node, Rpc::Snapshot, &headers, body).await
}

/// Hands a Raft RPC to this broker's voter. A broker alone has none (409 `peers_mismatch`:
/// it was started without `--peers`).
async fn raft_rpc(
    node: &AppState,
    rpc: Rpc,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let Some(controller) = node.cluster.local_controller() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "peers_mismatch",
            "this broker runs alone (no --peers): it is no voter of a cluster",
        ));
    };
    let body: serde_json::Value = read_json(headers, body, RPC_BYTES_MAX).await?;
    match controller.raft().handle(rpc, body).await {
        Ok(answer) => Ok(axum::Json(answer).into_response()),
        Err(RpcRefusal::PeersMismatch(why)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "peers_mismatch", why))
        }
        Err(RpcRefusal::ClusterIdMismatch { ours, theirs }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "cluster_id_mismatch",
            format!("the sender runs cluster {theirs}, this broker belongs to cluster {ours}"),
        )
        .with("cluster_id", ours)),
        Err(RpcRefusal::Invalid(why)) => {
            Err(ApiError::invalid(format!("not a raft message: {why}")))
        }
    }
}
