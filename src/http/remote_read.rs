//! `POST /internal/v1/partitions/read`: a group coordinator reads a partition it holds no
//! replica of at its leader (`crate::groups::remote`). Answered by the partition's leader
//! from its log up to its high watermark, as a consumer's fetch is (long-poll included), from
//! the group's position resolved here against this log's range; the answer is the fixed
//! header of `groups::remote::encode_answer`, then the batches as stored. `max_records` 0
//! reads no batches: the offsets only (a description's lag, a reset), or, with `wait_ms`,
//! after a wait for the high watermark to pass the position. A member's long-poll waits with
//! [`wait`] instead: one wait per leader for all its partitions there.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::body::read_json;
use super::error::{ApiError, ApiResult};
use super::fetch::fetch_waiting;
use super::forward::{PartitionHome, leader_not_available, not_leader, partition_home};
use axum::Json;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::{Fetched, Partition, WaitKind};
use crate::groups::remote::{
    RemoteAnswer, RemoteRead, RemoteWait, WAIT_PARTS_MAX, WaitAnswer, encode_answer, resolve,
};
use crate::log::Offset;
use crate::metadata::PartitionId;

/// The replica of a partition this broker leads: 421 `not_leader` where the metadata names
/// another leader, 503 `leader_not_available` where it names none, or where it names this
/// broker but the replica has not taken the role yet (its range may still trail the
/// leader's).
fn led_here(node: &AppState, topic: &str, partition: PartitionId) -> ApiResult<Arc<Partition>> {
    match partition_home(&node.cluster, topic, partition) {
        PartitionHome::Here | PartitionHome::Unknown => {}
        PartitionHome::Remote(id, address) => return Err(not_leader(id, address)),
        PartitionHome::Offline => return Err(leader_not_available()),
    }
    let replica = node.broker.topic(topic)?.partition(partition)?;
    if replica.is_follower() {
        return Err(leader_not_available());
    }
    Ok(replica)
}

pub async fn read(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let limits = node.limits();
    let read: RemoteRead = read_json(&headers, body, limits.request_body_bytes_max).await?;
    let partition = led_here(&node, &read.topic, read.partition)?;
    let progress = partition.progress();
    let (from, reset) = match read.timestamp_ms {
        Some(ts) => (partition.offset_for_timestamp(ts).await?, false),
        None => resolve(
            read.position.map(Offset),
            read.reset,
            progress.log_start_offset,
            progress.high_watermark,
            partition.log_end_offset(),
        ),
    };
    let wait_ms = read.wait_ms.min(limits.wait_ms_max);
    let fetched = if read.max_records == 0 {
        // Offsets only: no batches, after waiting (if asked) for the high watermark to pass
        // the position.
        if wait_ms > 0 && from >= progress.high_watermark {
            let slot = node.broker.wait_slot(WaitKind::LongPoll)?;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
            node.broker
                .wait_for_records(&slot, &partition, from, Some(deadline))
                .await;
        }
        let progress = partition.progress();
        Fetched {
            bytes: Vec::new(),
            from,
            high_watermark: progress.high_watermark,
            log_start_offset: progress.log_start_offset,
            max_records: 0,
            segment_end: None,
        }
    } else {
        fetch_waiting(
            &node.broker,
            &partition,
            from,
            read.max_records.min(limits.fetch_records_max),
            read.max_bytes.clamp(1, limits.fetch_bytes_max),
            wait_ms,
        )
        .await?
        .0
    };
    let answer = RemoteAnswer {
        fetched,
        reset,
        log_end_offset: partition.log_end_offset(),
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        encode_answer(&answer),
    )
        .into_response())
}

/// `POST /internal/v1/partitions/wait`: a member long-poll's wait at this leader for any of
/// the group's partitions it leads (`groups::remote::RemoteWait`), in one long-poll slot.
/// Answers `{"ready":true}` at once when one of them has a record past the group's position
/// (resolved here as a read resolves it), else once one does or `wait_ms` (at most
/// `wait_ms_max`) passes. A partition this broker does not lead makes the whole wait 421
/// `not_leader` (503 while its replica has not taken the role): the coordinator groups them
/// again by leader.
pub async fn wait(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let limits = node.limits();
    let wait: RemoteWait = read_json(&headers, body, limits.request_body_bytes_max).await?;
    if wait.parts.len() > WAIT_PARTS_MAX {
        return Err(ApiError::invalid(format!(
            "a wait names at most {WAIT_PARTS_MAX} partitions, got {}",
            wait.parts.len()
        )));
    }
    let mut parts = Vec::with_capacity(wait.parts.len());
    for part in &wait.parts {
        let partition = led_here(&node, &part.topic, part.partition)?;
        let progress = partition.progress();
        let (from, _) = resolve(
            part.position.map(Offset),
            wait.reset,
            progress.log_start_offset,
            progress.high_watermark,
            partition.log_end_offset(),
        );
        parts.push((partition, from));
    }
    let ready = |parts: &[(Arc<Partition>, Offset)]| {
        parts
            .iter()
            .any(|(p, from)| p.progress().high_watermark > *from)
    };
    let wait_ms = wait.wait_ms.min(limits.wait_ms_max);
    if !ready(&parts) && wait_ms > 0 {
        let slot = node.broker.wait_slot(WaitKind::LongPoll)?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let targets = parts.iter().map(|(p, from)| (&**p, *from));
        node.broker
            .wait_for_any_records(&slot, targets, Some(deadline))
            .await;
    }
    Ok(Json(WaitAnswer {
        ready: ready(&parts),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::config::{BrokerConfig, TopicConfig};
    use crate::groups::OffsetReset;
    use crate::groups::remote::{READ_PATH, WAIT_PATH, WaitPart};
    use crate::node::Node;

    /// Status and problem `code` (empty for a 200) of an internal call.
    async fn call(app: &axum::Router, path: &str, body: Vec<u8>) -> (u16, String) {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let code = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        (status, code)
    }

    /// A replica opened on a cluster member refuses producers until the metadata gives it a
    /// role (`Partition::await_role`); a coordinator's read or wait there must not be served
    /// from it meanwhile: its range may trail the leader's. It answers 503
    /// `leader_not_available` (the coordinator retries) until it takes the leader's role.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_that_has_not_taken_its_role_answers_reads_and_waits_503() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        })
        .await
        .unwrap();
        node.broker
            .create_topic("t", 1, TopicConfig::default(), false)
            .await
            .unwrap();
        let replica = node
            .broker
            .topic("t")
            .unwrap()
            .partition(PartitionId(0))
            .unwrap();
        let (app, _) = super::super::app(node.clone());
        let read = serde_json::to_vec(&RemoteRead {
            topic: "t".into(),
            partition: PartitionId(0),
            position: None,
            reset: OffsetReset::Earliest,
            max_records: 10,
            max_bytes: 1 << 16,
            wait_ms: 0,
            timestamp_ms: None,
        })
        .unwrap();
        let wait = serde_json::to_vec(&RemoteWait {
            parts: vec![WaitPart {
                topic: "t".into(),
                partition: PartitionId(0),
                position: None,
            }],
            reset: OffsetReset::Earliest,
            wait_ms: 0,
        })
        .unwrap();

        assert_eq!(
            call(&app, READ_PATH, read.clone()).await,
            (200, String::new())
        );
        replica.await_role();
        let unavailable = (503, "leader_not_available".to_string());
        assert_eq!(call(&app, READ_PATH, read.clone()).await, unavailable);
        assert_eq!(call(&app, WAIT_PATH, wait.clone()).await, unavailable);
        replica.set_follower(false);
        assert_eq!(call(&app, READ_PATH, read).await, (200, String::new()));
        assert_eq!(call(&app, WAIT_PATH, wait).await.0, 200);
    }
}
