//! Consumer groups over HTTP: join, member fetch, heartbeat, leave, commit, offsets, reset,
//! describe, list, delete. Thin: parse, call [`crate::groups::GroupCoordinator`], render.
//!
//! Problem codes: `group_not_found` (404), `member_not_found` (404: the client must join
//! again), `stale_generation` (409: the member did not own a partition it commits since the
//! generation it gives), `group_not_empty` (409: reset, delete and commits without membership
//! need a group without members), `invalid_group_name` (400), `conflict` (409, retry),
//! plus the broker's codes (`topic_not_found`, `offset_out_of_range`, `limit_exceeded`, ...).
//! On a cluster every call first waits for the groups to be served here
//! (`GroupCoordinator::ready`): 503 `coordinator_loading` or `not_coordinator` otherwise.

use std::io::Write as _;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::body::{parse_query, read_json};
use super::budgeted_body::budgeted_json_response;
use super::error::{ApiError, ApiResult};
use super::fetch::FetchBounds;
use super::path::Path;
use super::render::render_record;
use crate::groups::{GroupError, OffsetReset, ResetTo, TopicPartition};
use crate::log::Offset;
use crate::metadata::PartitionId;
use crate::metrics as m;

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        let detail = e.to_string();
        match e {
            GroupError::InvalidGroupName(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_group_name", detail)
            }
            GroupError::GroupNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "group_not_found", detail)
            }
            GroupError::MemberNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "member_not_found", detail)
            }
            GroupError::StaleGeneration { generation, .. } => {
                ApiError::new(StatusCode::CONFLICT, "stale_generation", detail)
                    .with("generation", generation)
            }
            GroupError::GroupNotEmpty { members, .. } => {
                ApiError::new(StatusCode::CONFLICT, "group_not_empty", detail)
                    .with("members", members)
            }
            GroupError::LimitExceeded {
                limit_name, limit, ..
            } => ApiError::limit(
                StatusCode::BAD_REQUEST,
                "limit_exceeded",
                limit_name,
                limit,
                detail,
            ),
            GroupError::InvalidRequest(_) => ApiError::invalid(detail),
            GroupError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", detail),
            GroupError::Broker(b) => b.into(),
        }
    }
}

/// Body of `POST /v1/groups/{group}/members`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    pub topics: Vec<String>,
    pub session_timeout_ms: Option<u64>,
    pub auto_offset_reset: Option<OffsetReset>,
}

pub async fn join(
    State(node): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    node.groups.ready().await?;
    let req: JoinBody = read_json(&headers, body, node.limits().request_body_bytes_max).await?;
    let member = node.groups.join(
        &group,
        &req.topics,
        req.session_timeout_ms,
        req.auto_offset_reset,
    )?;
    Ok((StatusCode::CREATED, axum::Json(member)).into_response())
}

pub async fn heartbeat(
    State(node): State<AppState>,
    Path((group, member)): Path<(String, String)>,
) -> ApiResult<Response> {
    node.groups.ready().await?;
    let view = node.groups.heartbeat(&group, &member)?;
    Ok(axum::Json(view).into_response())
}

pub async fn leave(
    State(node): State<AppState>,
    Path((group, member)): Path<(String, String)>,
) -> ApiResult<Response> {
    node.groups.ready().await?;
    node.groups.leave(&group, &member)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Query of a member fetch.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberFetchQuery {
    pub max_records: Option<String>,
    pub max_bytes: Option<String>,
    pub wait_ms: Option<String>,
    /// `true`: commit what is returned before answering (at-most-once).
    pub auto_commit: Option<String>,
}

/// `GET /v1/groups/{group}/members/{member}/records`: records of all the member's partitions
/// from the group's positions, each tagged with topic, partition and offset, plus
/// `next_offsets` to commit once they are processed.
pub async fn member_fetch(
    State(node): State<AppState>,
    Path((group, member)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    node.groups.ready().await?;
    let q: MemberFetchQuery = parse_query(query.as_deref())?;
    let bounds = FetchBounds::from_query(
        q.max_records.as_deref(),
        q.max_bytes.as_deref(),
        q.wait_ms.as_deref(),
        node.limits(),
    )?;
    let auto_commit = match q.auto_commit.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "'auto_commit' must be true or false, got '{other}'"
            )));
        }
    };
    // Admission only: the member fetch may wait before it reads, and a waiter holds no
    // budget; what it read is charged once rendered.
    drop(node.broker.reserve_response(bounds.max_bytes)?);
    let fetched = node
        .groups
        .fetch(
            &group,
            &member,
            bounds.max_records,
            bounds.max_bytes,
            Duration::from_millis(bounds.wait_ms),
        )
        .await?;
    let mut records = Vec::new();
    let mut scratch = Vec::with_capacity(256);
    let mut next_offsets: Vec<(TopicPartition, Offset)> = Vec::new();
    let mut count = 0u64;
    for (tp, part) in &fetched.parts {
        let mut topic_json = Vec::with_capacity(tp.topic.len() + 12);
        topic_json.extend_from_slice(b"{\"topic\":");
        let _ = serde_json::to_writer(&mut topic_json, &tp.topic);
        topic_json.push(b',');
        let mut shown = 0u64;
        let next = part.for_each_record(|r| {
            if count > 0 {
                records.push(b',');
            }
            count += 1;
            shown += 1;
            scratch.clear();
            render_record(&mut scratch, tp.partition, r);
            // render_record opens with `{"partition":..`; put the topic first.
            records.extend_from_slice(&topic_json);
            records.extend_from_slice(&scratch[1..]);
            Ok(())
        })?;
        ::metrics::counter!(m::RECORDS_FETCHED, "topic" => tp.topic.clone()).increment(shown);
        if shown > 0 {
            next_offsets.push((tp.clone(), next));
        }
    }
    let view = &fetched.member;
    if auto_commit && !next_offsets.is_empty() {
        node.groups
            .commit(
                &group,
                Some((&view.member_id, view.generation)),
                &next_offsets,
            )
            .await?;
    }
    let next_json: Vec<serde_json::Value> = next_offsets
        .iter()
        .map(|(tp, o)| json!({"topic": tp.topic, "partition": tp.partition, "offset": o}))
        .collect();
    let mut body = Vec::with_capacity(records.len() + 256);
    let _ = write!(
        body,
        "{{\"group\":{},\"member_id\":{},\"generation\":{},\"assignment\":{},\"delivery\":\"{}\",\"auto_committed\":{},\"next_offsets\":{},\"unavailable\":{},\"records\":[",
        json!(view.group),
        json!(view.member_id),
        view.generation,
        json!(view.assignment),
        if auto_commit {
            "at_most_once"
        } else {
            "at_least_once"
        },
        auto_commit && !next_offsets.is_empty(),
        json!(next_json),
        json!(fetched.unavailable),
    );
    body.extend_from_slice(&records);
    body.extend_from_slice(b"]}");
    let page = node.broker.charge_response(body.len() as u64);
    Ok(budgeted_json_response(StatusCode::OK, body, page))
}

/// One offset of a commit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffsetEntry {
    pub topic: String,
    pub partition: PartitionId,
    /// The next offset to read.
    pub offset: Offset,
}

/// Body of `POST /v1/groups/{group}/offsets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitBody {
    pub member_id: Option<String>,
    pub generation: Option<u32>,
    pub offsets: Vec<OffsetEntry>,
}

pub async fn commit(
    State(node): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    node.groups.ready().await?;
    let req: CommitBody = read_json(&headers, body, node.limits().request_body_bytes_max).await?;
    let fence = match (&req.member_id, req.generation) {
        (Some(member), Some(generation)) => Some((member.as_str(), generation)),
        (None, None) => None,
        _ => {
            return Err(ApiError::invalid(
                "give both 'member_id' and 'generation', or neither (commits without membership)",
            ));
        }
    };
    let offsets: Vec<(TopicPartition, Offset)> = req
        .offsets
        .iter()
        .map(|o| (TopicPartition::new(o.topic.clone(), o.partition), o.offset))
        .collect();
    node.groups.commit(&group, fence, &offsets).await?;
    Ok(axum::Json(json!({"group": group, "committed": offsets_json(&offsets)})).into_response())
}

pub async fn committed(
    State(node): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Response> {
    node.groups.ready().await?;
    let offsets = node.groups.committed(&group)?;
    Ok(axum::Json(json!({"group": group, "offsets": offsets})).into_response())
}

/// Body of `POST /v1/groups/{group}/offsets/reset`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    /// `earliest`, `latest`, `timestamp` (with `timestamp_ms`) or `offset` (with `offset`).
    pub to: String,
    pub timestamp_ms: Option<i64>,
    pub offset: Option<Offset>,
    /// Topics whose every partition is reset; default: those the group has offsets for.
    pub topics: Option<Vec<String>>,
}

pub async fn reset(
    State(node): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    node.groups.ready().await?;
    let req: ResetBody = read_json(&headers, body, node.limits().request_body_bytes_max).await?;
    let to = match (req.to.as_str(), req.timestamp_ms, req.offset) {
        ("earliest", None, None) => ResetTo::Earliest,
        ("latest", None, None) => ResetTo::Latest,
        ("timestamp", Some(ts), None) => ResetTo::Timestamp(ts),
        ("offset", None, Some(o)) => ResetTo::Offset(o),
        _ => {
            return Err(ApiError::invalid(
                "'to' is earliest, latest, timestamp (with 'timestamp_ms') or offset (with 'offset')",
            ));
        }
    };
    let offsets = node
        .groups
        .reset_offsets(&group, req.topics.as_deref(), to)
        .await?;
    Ok(axum::Json(json!({"group": group, "committed": offsets_json(&offsets)})).into_response())
}

pub async fn describe(
    State(node): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Response> {
    node.groups.ready().await?;
    Ok(axum::Json(node.groups.describe(&group).await?).into_response())
}

pub async fn list(State(node): State<AppState>) -> ApiResult<Response> {
    node.groups.ready().await?;
    Ok(axum::Json(json!({"groups": node.groups.list()})).into_response())
}

pub async fn delete(
    State(node): State<AppState>,
    Path(group): Path<String>,
) -> ApiResult<Response> {
    node.groups.ready().await?;
    node.groups.delete_group(&group).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn offsets_json(offsets: &[(TopicPartition, Offset)]) -> Vec<serde_json::Value> {
    offsets
        .iter()
        .map(|(tp, o)| json!({"topic": tp.topic, "partition": tp.partition, "offset": o}))
        .collect()
}
