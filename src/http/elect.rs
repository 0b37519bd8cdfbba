//! `POST /v1/topics/{topic}/partitions/{partition}/elect`: leader elections an operator asks
//! for, run by the controller (`forward` brings the call there).
//!
//! - `{"type":"preferred"}`: leadership moves to the first replica when it is an alive
//!   in-sync replica (409 `preferred_leader_not_available` otherwise); already there, the
//!   answer says nothing changed.
//! - `{"type":"unclean","replica":N}`: the one way a replica outside the ISR and the ELR
//!   becomes leader, and only of a partition that has no leader (409 `partition_has_leader`),
//!   never a replica a reassignment is still adding (409 `replica_being_added`).
//!   Records the new leader lacks are given up; the answer reports the range, the log says
//!   it at WARN, and the new leader epoch makes every other replica truncate to the new
//!   leader's log when it comes back (KIP-279).
//!
//! What an unclean election gives up: the offsets from the new leader's log end (asked from
//! the replica itself, over its own `GET /v1/topics/{topic}`, before the election; an
//! offline partition has no leader to feed it, so it cannot grow meanwhile) to the high
//! watermark the metadata last recorded for the partition (`PartitionRecord::high_watermark`:
//! the highest one its leaders reported with an in-sync set change). The high watermark does
//! not move while the in-sync set is below `min_insync_replicas`, and a leader reports it as
//! it stops (`replication::isr`), so when the last leader lived to see its in-sync set below
//! the minimum (the usual road here: its followers died first) the range is exact; when the
//! in-sync replicas died together its end is a lower bound. Records past the high watermark
//! were never acknowledged with `acks=all` and are dropped too (not counted).
//!
//! On a broker alone every partition has its leader: `preferred` changes nothing and
//! `unclean` is refused like on a cluster.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::body::{parse_u64, partition_id, read_json};
use super::cluster_topics::wait_every_broker;
use super::error::{ApiError, ApiResult};
use super::forward::broker_unavailable;
use super::internal::controller;
use super::path::Path;
use crate::cluster::client::{CallError, InternalClient};
use crate::cluster::controller::ControlError;
use crate::metadata::{Command, Election, MetadataError, MetadataImage, NodeId, PartitionId};

/// How long the controller waits for the chosen replica to say where its log ends.
const REPLICA_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the request body asks for.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ElectRequest {
    Preferred,
    Unclean { replica: u32 },
}

/// The range an unclean election gave up, and what it was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GivenUp {
    /// The new leader's log end offset when it was elected: the first offset given up.
    start_offset: u64,
    /// The partition's last recorded high watermark (never below `start_offset`).
    end_offset: u64,
    high_watermark: u64,
}

/// `POST /v1/topics/{topic}/partitions/{partition}/elect`.
pub async fn elect(
    State(node): State<AppState>,
    Path((topic, partition)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let request: ElectRequest =
        read_json(&headers, body, node.limits().request_body_bytes_max).await?;
    let partition = parse_u64("partition", &partition)?;
    if !node.cluster.is_clustered() {
        return alone(&node, &topic, partition, request);
    }
    let partition = metadata_partition(&topic, partition)?;
    let controller = controller(&node)?;
    let before = controller.image();
    let replica = match request {
        ElectRequest::Preferred => None,
        ElectRequest::Unclean { replica } => Some(NodeId(replica)),
    };
    let election = |log_end_offset| match replica {
        None => Election::Preferred,
        Some(replica) => Election::Unclean {
            replica,
            log_end_offset,
        },
    };
    // Refused at once (as `apply` would) before the replica is asked anything.
    dry_run(&before, &topic, partition, election(0))?;
    let log_end_offset = match replica {
        None => 0,
        Some(replica) => replica_log_end(&node, &before, &topic, partition, replica).await?,
    };
    let command = Command::ElectLeader {
        topic: topic.clone(),
        partition,
        election: election(log_end_offset),
    };
    let index = controller.propose(command).await?;
    let after = controller.image();
    let old = before
        .partition(&topic, partition)
        .expect("the dry run found it");
    let new = after
        .partition(&topic, partition)
        .ok_or(ControlError::Refused(MetadataError::PartitionNotFound {
            topic: topic.clone(),
            partition,
        }))?;
    let given_up = replica.map(|replica| {
        let given_up = GivenUp {
            start_offset: log_end_offset,
            end_offset: old.high_watermark.max(log_end_offset),
            high_watermark: old.high_watermark,
        };
        tracing::warn!(
            topic = %topic,
            partition = partition.0,
            replica = replica.0,
            leader_epoch = new.leader_epoch.0,
            given_up_start = given_up.start_offset,
            given_up_end = given_up.end_offset,
            "unclean leader election: broker {replica} leads without being in sync; offsets \
             {}..{} (the last recorded high watermark) are given up, and records the other \
             replicas hold past its log end will be truncated when they return",
            given_up.start_offset,
            given_up.end_offset,
        );
        given_up
    });
    let changed = old.leader != new.leader;
    let leader = new.leader.map(|l| l.0);
    let leader_epoch = new.leader_epoch.0;
    wait_every_broker(&node, &controller, index, "the leader is elected").await?;
    Ok(axum::Json(answer(
        &topic,
        partition,
        request,
        leader,
        leader_epoch,
        changed,
        given_up,
    ))
    .into_response())
}

/// A path's partition number as a partition of `topic` in the cluster's metadata: a
/// number too large for a partition id names one the topic does not have.
pub(super) fn metadata_partition(topic: &str, number: u64) -> Result<PartitionId, ApiError> {
    u32::try_from(number).map(PartitionId).map_err(|_| {
        ApiError::from(ControlError::Refused(MetadataError::PartitionNotFound {
            topic: topic.to_string(),
            partition: PartitionId(u32::MAX),
        }))
    })
}

/// The election applied to a copy of the image: its refusal, if `apply` would refuse it.
fn dry_run(
    image: &MetadataImage,
    topic: &str,
    partition: PartitionId,
    election: Election,
) -> Result<(), ControlError> {
    let mut copy = image.clone();
    let command = Command::ElectLeader {
        topic: topic.to_string(),
        partition,
        election,
    };
    copy.apply(image.applied + 1, &command)
        .map(|_| ())
        .map_err(ControlError::Refused)
}

/// Asks broker `replica` where its replica of the partition ends (its own view of the
/// topic: the figures of its replica). A replica that cannot be asked is not elected.
async fn replica_log_end(
    node: &AppState,
    image: &MetadataImage,
    topic: &str,
    partition: PartitionId,
    replica: NodeId,
) -> ApiResult<u64> {
    let address = node
        .cluster
        .peer_address(replica)
        .ok_or(ControlError::Refused(MetadataError::ReplicaFenced {
            replica,
        }))?;
    let topic_id = image.topics.get(topic).map(|t| t.topic_id);
    let path = format!("/v1/topics/{}", percent_encode(topic));
    let view: Value = InternalClient::default()
        .get(address, &path, REPLICA_QUERY_TIMEOUT)
        .await
        .map_err(|e| match e {
            CallError::Unreachable(why) => broker_unavailable(replica, address, &why),
            CallError::Refused { detail, .. } => broker_unavailable(replica, address, &detail),
        })?;
    let end = view["partitions"][partition.index()]["log_end_offset"].as_u64();
    match end {
        Some(end) if view["topic_id"].as_u64() == topic_id => Ok(end),
        _ => Err(broker_unavailable(
            replica,
            address,
            &"it holds no replica of the partition yet (it is still starting)",
        )),
    }
}

/// A topic name as a path segment (names are `[a-zA-Z0-9._-]`, but the metadata is not
/// trusted to have checked).
fn percent_encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A broker alone leads every partition it has.
fn alone(
    node: &AppState,
    topic: &str,
    partition: u64,
    request: ElectRequest,
) -> ApiResult<Response> {
    let topic_held = node.broker.topic(topic)?;
    let held = topic_held.partition(partition_id(&topic_held, partition)?)?;
    let me = node.cluster.node_id();
    if let ElectRequest::Unclean { replica } = request {
        let refusal = if replica == me.0 {
            MetadataError::PartitionHasLeader { leader: me }
        } else {
            MetadataError::NotInReplicaSet {
                replica: NodeId(replica),
            }
        };
        return Err(ControlError::Refused(refusal).into());
    }
    Ok(axum::Json(answer(topic, held.id, request, Some(me.0), 0, false, None)).into_response())
}

fn answer(
    topic: &str,
    partition: PartitionId,
    request: ElectRequest,
    leader: Option<u32>,
    leader_epoch: u32,
    changed: bool,
    given_up: Option<GivenUp>,
) -> Value {
    let kind = match request {
        ElectRequest::Preferred => "preferred",
        ElectRequest::Unclean { .. } => "unclean",
    };
    let given_up = given_up.map(|g| {
        json!({
            "start_offset": g.start_offset,
            "end_offset": g.end_offset,
            "high_watermark": g.high_watermark,
            "how": "from the new leader's log end offset to the high watermark the partition's \
                    leaders last reported to the controller: exact when the last leader saw its \
                    in-sync set below min_insync_replicas before it died (the high watermark \
                    stops there and the leader reports it), a lower bound when the in-sync \
                    replicas died together; records past that high watermark were never \
                    acknowledged with acks=all and are dropped too",
        })
    });
    json!({
        "topic": topic,
        "partition": partition,
        "type": kind,
        "leader": leader,
        "leader_epoch": leader_epoch,
        "changed": changed,
        "given_up": given_up,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_name_is_one_path_segment() {
        assert_eq!(percent_encode("orders.v1_a-b"), "orders.v1_a-b");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }
}
