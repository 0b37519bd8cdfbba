//! Partition reassignment (KIP-455): moving a partition's replicas to other brokers while it
//! serves, run by the controller (`forward` brings the calls there).
//!
//! - `POST /v1/topics/{topic}/partitions/{partition}/reassignment` `{"replicas":[...]}`: the
//!   target replica set, preferred leader first, as many as the topic's replication factor.
//!   The replicas it adds copy the leader's log as followers outside the in-sync set; once
//!   every target replica is in sync the metadata makes the target the replica set in one
//!   step, leadership moves to the target if the leader was removed, and each removed
//!   broker puts its copy in its trash (`replication::manager`). Answered once every alive
//!   broker applied the start: 202 while the move runs, 200 when the partition is not
//!   moving by then (nothing had to move, as for the same replicas in another order, or the
//!   move finished at once).
//!   `"throttle_bytes_per_s": N` caps what the leader sends the added replicas (a token
//!   bucket of one second's worth at the leader, `replication::leader`); the throttle lives
//!   as long as the move, in the metadata. The target of the move under way, sent again,
//!   sets its throttle (left out: none) and changes nothing else; another target is 409
//!   `reassignment_in_progress`.
//! - `DELETE` on the same path cancels the move under way: the partition gets its original
//!   replicas back, in their order (409 `cancel_would_lose_leader` when none of them is in sync or eligible
//!   any more).
//! - `GET /v1/reassignments`: the moves under way, from this broker's copy of the metadata;
//!   on the partition's leader each also says, per added replica, how far behind it is
//!   (`lag`: records and bytes left, bytes copied, the rate the leader sent it lately, its
//!   time left), and the move's time left (`eta_s`, the slowest replica's); null on the
//!   other brokers.
//!
//! A move is Raft state, so it survives any failover of the controller or the leader, and a
//! removed broker that was down deletes its copy when it comes back. No acknowledged record is
//! lost on the way: removed replicas leave only when every target replica is in the ISR,
//! which holds every record acknowledged with `acks=all`.
//!
//! On a broker alone there is one replica per partition and nothing to move: the calls are
//! refused (`invalid_request`) and the list is empty. Internal topics (`__consumer_offsets`,
//! `__producers`, `__idempotency_keys`) move like any other, as in Kafka (a broker being
//! retired may hold them): the state they keep is served by their leader
//! (`crate::coordination`), so when a move takes leadership away, the next leader replays the
//! topic before it serves, as after a failover (calls meanwhile answer 503
//! `coordinator_loading`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::body::{parse_u64, read_json};
use super::cluster_topics::wait_every_broker;
use super::elect::metadata_partition;
use super::error::{ApiError, ApiResult};
use super::internal::controller;
use super::path::Path;
use crate::cluster::controller::ControlError;
use crate::metadata::{
    Command, MetadataError, MetadataImage, NodeId, PartitionId, PartitionRecord,
};

/// The body of a reassignment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReassignRequest {
    /// The target replica set, preferred leader first.
    replicas: Vec<u32>,
    /// The most bytes per second the leader sends the replicas the move adds.
    #[serde(default)]
    throttle_bytes_per_s: Option<u64>,
}

/// `POST /v1/topics/{topic}/partitions/{partition}/reassignment`.
pub async fn start(
    State(node): State<AppState>,
    Path((topic, partition)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let request: ReassignRequest =
        read_json(&headers, body, node.limits().request_body_bytes_max).await?;
    if request.throttle_bytes_per_s == Some(0) {
        return Err(ApiError::invalid(
            "'throttle_bytes_per_s' must be positive (leave it out for no throttle)",
        ));
    }
    let target: Vec<NodeId> = request.replicas.into_iter().map(NodeId).collect();
    let throttle = request.throttle_bytes_per_s;
    alter(&node, &topic, &partition, Some((target, throttle))).await
}

/// `DELETE /v1/topics/{topic}/partitions/{partition}/reassignment`.
pub async fn cancel(
    State(node): State<AppState>,
    Path((topic, partition)): Path<(String, String)>,
) -> ApiResult<Response> {
    alter(&node, &topic, &partition, None).await
}

/// `GET /v1/reassignments`: every move under way, as this broker's metadata has it.
pub async fn list(State(node): State<AppState>) -> Response {
    let image = node.cluster.with_image(MetadataImage::clone);
    let moves: Vec<Value> = image
        .topics
        .values()
        .flat_map(|t| {
            t.partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| p.is_moving())
                .map(|(i, p)| {
                    let id = PartitionId(i as u32);
                    let mut v = view(&t.name, id, p);
                    let (lag, eta) = progress(&node, &t.name, id, p);
                    v["lag"] = lag;
                    v["eta_s"] = eta;
                    v
                })
        })
        .collect();
    axum::Json(json!({ "reassignments": moves })).into_response()
}

/// Starts (`Some`: the target and the throttle) or cancels (`None`) a move at the
/// controller, then answers once every alive broker applied it.
async fn alter(
    node: &AppState,
    topic: &str,
    partition: &str,
    start: Option<(Vec<NodeId>, Option<u64>)>,
) -> ApiResult<Response> {
    let partition = parse_u64("partition", partition)?;
    if !node.cluster.is_clustered() {
        return Err(ApiError::invalid(
            "a broker alone holds the one replica of each partition: there is nothing to move \
             (reassignment needs a cluster, started with --peers)",
        ));
    }
    let partition = metadata_partition(topic, partition)?;
    let controller = controller(node)?;
    let starting = start.is_some();
    let (target, throttle_bytes_per_s) = match start {
        Some((target, throttle)) => (Some(target), throttle),
        None => (None, None),
    };
    let command = Command::AlterReassignment {
        topic: topic.to_string(),
        partition,
        target,
        throttle_bytes_per_s,
    };
    let index = controller.propose(command).await?;
    let done = match starting {
        true => "the reassignment is started",
        false => "the reassignment is cancelled",
    };
    wait_every_broker(node, &controller, index, done).await?;
    let image = controller.image();
    let record = image.partition(topic, partition).ok_or_else(|| {
        ApiError::from(ControlError::Refused(MetadataError::PartitionNotFound {
            topic: topic.to_string(),
            partition,
        }))
    })?;
    let status = match record.is_moving() {
        true => StatusCode::ACCEPTED,
        false => StatusCode::OK,
    };
    Ok((status, axum::Json(view(topic, partition, record))).into_response())
}

/// How far each replica the move adds has copied the leader's log, and the move's time
/// left: known where the partition's leader answers (null elsewhere: ask the broker named
/// `leader`). Returns the `lag` list and the move's `eta_s` (the slowest replica's; null
/// when one's rate is unknown).
fn progress(
    node: &AppState,
    topic: &str,
    partition: PartitionId,
    p: &PartitionRecord,
) -> (Value, Value) {
    let Some(copies) = node.replication.copy_progress(topic, partition) else {
        return (Value::Null, Value::Null);
    };
    let adding: Vec<_> = copies
        .into_iter()
        .filter(|c| p.adding.contains(&c.replica))
        .collect();
    let eta = adding
        .iter()
        .map(|c| c.eta_s())
        .try_fold(0.0_f64, |slowest, eta| eta.map(|e| slowest.max(e)));
    let lag = adding
        .iter()
        .map(|c| {
            json!({
                "replica": c.replica.0,
                "in_sync": p.isr.contains(&c.replica),
                "records": c.records_left,
                "bytes": c.bytes_left,
                "bytes_copied": c.bytes_copied,
                "bytes_per_s": c.bytes_per_s.map(|r| r.round() as u64),
                "eta_s": c.eta_s().map(tenths),
            })
        })
        .collect();
    (Value::Array(lag), eta.map(tenths).into())
}

/// Seconds to a tenth.
fn tenths(s: f64) -> f64 {
    (s * 10.0).ceil() / 10.0
}

/// A partition's replica sets and leadership, with the move under way if any.
fn view(topic: &str, partition: PartitionId, p: &PartitionRecord) -> Value {
    json!({
        "topic": topic,
        "partition": partition.0,
        "moving": p.is_moving(),
        "replicas": p.replicas,
        "target": p.target(),
        "adding": p.adding,
        "removing": p.removing,
        "isr": p.isr,
        "leader": p.leader,
        "leader_epoch": p.leader_epoch,
        "throttle_bytes_per_s": p.throttle_bytes_per_s,
    })
}
