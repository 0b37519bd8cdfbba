//! Internal routes (`/internal/v1/`, OpenAPI tag `internal`): brokers call them on the
//! controller's port to register, heartbeat, follow the metadata log and change ISRs (only
//! the controller serves those; any other broker answers 421 `not_controller` with the
//! controller's id), and on a leader's port to fetch replicated data (every broker).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::body::{parse_query, read_json};
use super::error::{ApiError, ApiResult};
use crate::cluster::controller::{ControlError, Controller, Registration};
use crate::cluster::protocol::{
    AlterPartitionAnswer, AlterPartitionRequest, HeartbeatAnswer, HeartbeatRequest, IndexedCommand,
    MetadataAnswer, MetadataQuery, RegisterAnswer, RegisterRequest,
};
use crate::metadata::{Command, MetadataError};
use crate::replication::wire::{self, FetchRequest};

/// Most commands one metadata answer carries.
const METADATA_PAGE_COMMANDS: usize = 1000;

/// The controller, if this broker runs it; else 421 `not_controller` naming the broker that
/// does (`controller`, `controller_address`).
pub(super) fn controller(node: &AppState) -> ApiResult<Arc<Controller>> {
    let cluster = &node.cluster;
    cluster.controller().cloned().ok_or_else(|| {
        let address = cluster.controller_addr().map(|a| a.to_string());
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "not_controller",
            format!(
                "broker {} does not run the controller (broker {} does, at {})",
                cluster.node_id(),
                cluster.controller_id(),
                address.as_deref().unwrap_or("an unknown address")
            ),
        )
        .with("controller", cluster.controller_id().0)
        .with("controller_address", address)
    })
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
    };
    let broker_epoch = controller.register(registration).await?;
    let answer = RegisterAnswer {
        cluster_id: controller.cluster_id().to_string(),
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

/// `GET /internal/v1/metadata?node_id=&broker_epoch=&after=&wait_ms=`: the commands after
/// `after`; when there are none yet, waits up to `wait_ms` (capped at `wait_ms_max`) for one.
pub async fn metadata(
    State(node): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let controller = controller(&node)?;
    let q: MetadataQuery = parse_query(query.as_deref())?;
    let (Some(node_id), Some(epoch)) = (q.node_id, q.broker_epoch) else {
        return Err(ApiError::invalid(
            "'node_id' and 'broker_epoch' are required",
        ));
    };
    controller.check_member(node_id, epoch)?;
    let after = q.after.unwrap_or(0);
    let wait_ms = q.wait_ms.unwrap_or(0).min(node.limits().wait_ms_max);
    let (mut commands, mut last_index) = controller.commands_after(after, METADATA_PAGE_COMMANDS);
    if commands.is_empty() && last_index >= after && wait_ms > 0 {
        let mut shutdown = node.broker.shutdown_signal();
        controller
            .wait_after(after, Duration::from_millis(wait_ms), &mut shutdown)
            .await;
        (commands, last_index) = controller.commands_after(after, METADATA_PAGE_COMMANDS);
    }
    let answer = MetadataAnswer {
        cluster_id: controller.cluster_id().to_string(),
        commands: commands
            .into_iter()
            .map(|(index, command)| IndexedCommand { index, command })
            .collect(),
        last_index,
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
