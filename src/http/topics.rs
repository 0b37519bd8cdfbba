//! Topic admin: create, list, describe, change config, delete, expand, delete-records.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::body::{path_partition, read_json};
use super::cluster_topics;
use super::error::{ApiError, ApiResult};
use super::path::Path;
use crate::broker::{Broker, BrokerError, Partition, Topic};
use crate::config::TopicConfig;
use crate::log::Offset;

/// Body of `POST /v1/topics`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    pub name: String,
    pub partitions: Option<u32>,
    pub replication_factor: Option<u32>,
    /// Partial config: unset keys take the broker's topic defaults.
    pub config: Option<serde_json::Map<String, Value>>,
}

pub async fn create(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let broker = &node.broker;
    let req: CreateTopic =
        read_json(&headers, body, broker.limits().request_body_bytes_max).await?;
    if node.cluster.is_clustered() {
        return cluster_topics::create(&node, req).await;
    }
    if let Some(rf) = req.replication_factor
        && rf != 1
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_enough_brokers",
            format!("replication_factor {rf} needs {rf} brokers; this cluster has 1"),
        ));
    }
    let config = merge_config(broker.config.topic_defaults, req.config.unwrap_or_default())?;
    let partitions = req.partitions.unwrap_or(broker.config.default_partitions);
    let topic = broker
        .create_topic(&req.name, partitions, config, false)
        .await?;
    let view = describe_topic(&topic, node.cluster.node_id().0);
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

pub async fn list(State(node): State<AppState>) -> Response {
    if node.cluster.is_clustered() {
        return cluster_topics::list(&node);
    }
    let topics: Vec<Value> = node
        .broker
        .topics()
        .iter()
        .map(|t| json!({"name": &*t.name, "partitions": t.partition_count()}))
        .collect();
    axum::Json(json!({ "topics": topics })).into_response()
}

pub async fn describe(
    State(node): State<AppState>,
    Path(topic): Path<String>,
) -> ApiResult<Response> {
    if node.cluster.is_clustered() {
        return cluster_topics::describe(&node, &topic);
    }
    let topic = node.broker.topic(&topic)?;
    Ok(axum::Json(describe_topic(&topic, node.cluster.node_id().0)).into_response())
}

pub async fn update_config(
    State(node): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    refuse_internal(&topic)?;
    let broker = &node.broker;
    let patch: Value = read_json(&headers, body, broker.limits().request_body_bytes_max).await?;
    let Value::Object(mut patch) = patch else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    // Accept both `{"config": {...}}` and the bare config object, never the two mixed: which
    // of two values for one key would win is a guess the client should not have to make.
    match patch.remove("config") {
        Some(Value::Object(inner)) if patch.is_empty() => patch = inner,
        Some(Value::Object(_)) => {
            let beside: Vec<&str> = patch.keys().map(String::as_str).collect();
            return Err(ApiError::invalid(format!(
                "give the config either bare or as {{\"config\": {{...}}}}, not both \
                 ('config' with {})",
                beside.join(", ")
            )));
        }
        Some(_) => return Err(ApiError::invalid("'config' must be a JSON object")),
        None => {}
    }
    if node.cluster.is_clustered() {
        return cluster_topics::update_config(&node, &topic, patch).await;
    }
    // Merged onto what is there when it is applied: a change that lands meanwhile (another
    // PATCH, a delete and a new topic of the name) makes the merge start again. Each round
    // that starts again follows a change that succeeded, so this ends.
    loop {
        let current = broker.topic(&topic)?.config();
        let config = merge_config(current, patch.clone())?;
        if let Some(changed) = broker.update_topic_config(&topic, &current, config).await? {
            return Ok(
                axum::Json(describe_topic(&changed, node.cluster.node_id().0)).into_response(),
            );
        }
    }
}

pub async fn delete(
    State(node): State<AppState>,
    Path(topic): Path<String>,
) -> ApiResult<StatusCode> {
    refuse_internal(&topic)?;
    if node.cluster.is_clustered() {
        return cluster_topics::delete(&node, &topic).await;
    }
    node.broker.delete_topic(&topic).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expand {
    pub count: u32,
}

pub async fn expand(
    State(node): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    refuse_internal(&topic)?;
    let broker = &node.broker;
    let req: Expand = read_json(&headers, body, broker.limits().request_body_bytes_max).await?;
    if node.cluster.is_clustered() {
        return cluster_topics::expand(&node, &topic, req.count).await;
    }
    let topic = broker.expand_partitions(&topic, req.count).await?;
    Ok(axum::Json(describe_topic(&topic, node.cluster.node_id().0)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRecords {
    pub before_offset: u64,
}

pub async fn delete_records(
    State(broker): State<Arc<Broker>>,
    Path((topic, partition)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    refuse_internal(&topic)?;
    let req: DeleteRecords =
        read_json(&headers, body, broker.limits().request_body_bytes_max).await?;
    let partition = path_partition(&*broker.topic(&topic)?, &partition)?;
    let start = partition.delete_records_before(Offset(req.before_offset))?;
    Ok(axum::Json(json!({ "partition": partition.id, "log_start_offset": start })).into_response())
}

/// Topics named `__...` belong to the broker (`__consumer_offsets`): clients may read them,
/// never change them.
pub(super) fn refuse_internal(topic: &str) -> ApiResult<()> {
    if topic.starts_with("__") {
        return Err(BrokerError::InternalTopic(topic.to_string()).into());
    }
    Ok(())
}

/// Applies a partial config object to `base`; unknown keys and bad values are 400s.
pub(super) fn merge_config(
    base: TopicConfig,
    patch: serde_json::Map<String, Value>,
) -> ApiResult<TopicConfig> {
    let Value::Object(mut merged) = serde_json::to_value(base).expect("config serializes") else {
        unreachable!("a config is an object")
    };
    merged.extend(patch);
    let config: TopicConfig = serde_json::from_value(Value::Object(merged))
        .map_err(|e| ApiError::invalid(format!("invalid topic config: {e}")))?;
    config.validate().map_err(ApiError::invalid)?;
    Ok(config)
}

/// The describe document of a single broker's topic (`node_id` leads every partition).
pub fn describe_topic(topic: &Topic, node_id: u32) -> Value {
    let partitions: Vec<Value> = topic
        .partitions()
        .iter()
        .map(|p| {
            let mut view = json!({
                "partition": p.id,
                "leader": node_id,
                "leader_epoch": 0,
                "replicas": [node_id],
                "isr": [node_id],
                "elr": [],
            });
            add_local_stats(&mut view, Some(p));
            view
        })
        .collect();
    json!({
        "name": &*topic.name,
        "replication_factor": 1,
        "config": topic.config(),
        "partitions": partitions,
    })
}

/// Adds the figures of the local replica `p` to a partition's view (nulls without one).
pub(super) fn add_local_stats(view: &mut Value, p: Option<&Partition>) {
    let stats = p.map(|p| (p.stats(), p.write_refusal()));
    let fields = match stats {
        Some((s, failure)) => json!({
            "log_start_offset": s.log_start_offset,
            "high_watermark": s.high_watermark,
            "log_end_offset": s.log_end_offset,
            "segments": s.segments,
            "size_bytes": s.size_bytes,
            "failure": failure,
        }),
        None => json!({
            "log_start_offset": null,
            "high_watermark": null,
            "log_end_offset": null,
            "segments": null,
            "size_bytes": null,
            "failure": null,
        }),
    };
    if let (Value::Object(view), Value::Object(fields)) = (view, fields) {
        view.extend(fields);
    }
}
