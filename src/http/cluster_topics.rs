//! Topic admin on a cluster: topics live in the cluster metadata, so create, delete, expand
//! and config changes are proposed at the controller (`forward` brings them there; one that
//! reaches another broker anyway is 421 `not_controller` with the controller's id and
//! address), and answered only once every active
//! broker has made its local replicas match (heartbeats carry how far each got). The views
//! (`GET /v1/topics`, `GET /v1/topics/{t}`) come from this broker's copy of the metadata,
//! with the figures of its own replicas.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::internal::controller;
use super::topics::{CreateTopic, add_local_stats, merge_config};
use crate::broker::{BrokerError, Partition, is_internal_topic};
use crate::cluster::controller::{Controller, NewTopic};
use crate::limits::Limit;
use crate::metadata::{Command, MetadataError, MetadataImage, TopicRecord};

/// How long an admin call waits for every active broker to make its replicas match the
/// change before it answers 504 (the change itself is made, and stays).
const PROPAGATION_WAIT: Duration = Duration::from_secs(15);

/// The topic config key that the metadata keeps beside the config (fixed at creation).
const MIN_INSYNC_REPLICAS: &str = "min_insync_replicas";

/// `POST /v1/topics` on a cluster.
pub async fn create(node: &AppState, req: CreateTopic) -> ApiResult<Response> {
    let controller = controller(node)?;
    let broker = &node.broker;
    let partitions = req.partitions.unwrap_or(broker.config.default_partitions);
    let mut patch = req.config.unwrap_or_default();
    let min_insync_replicas = match patch.remove(MIN_INSYNC_REPLICAS) {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "invalid topic config: min_insync_replicas must be a positive integer",
                    )
                })?,
        ),
    };
    let config = merge_config(broker.config.topic_defaults, patch)?;
    broker.check_new_topic(&req.name, partitions, config, false)?;
    check_cluster_limits(node, &controller.image(), partitions, true)?;
    let index = controller
        .create_topic(NewTopic {
            name: req.name.clone(),
            partitions,
            replication_factor: req.replication_factor,
            min_insync_replicas,
            config,
        })
        .await?;
    wait_every_broker(node, &controller, index, "the topic is created").await?;
    let view = describe_in(node, &controller.image(), &req.name)?;
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

/// `DELETE /v1/topics/{t}` on a cluster.
pub async fn delete(node: &AppState, topic: &str) -> ApiResult<StatusCode> {
    let controller = controller(node)?;
    let name = topic.to_string();
    let index = controller
        .propose_built(move |image| {
            exists(image, &name)?;
            Ok(Command::DeleteTopic { name })
        })
        .await?;
    wait_every_broker(node, &controller, index, "the topic is deleted").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/topics/{t}/partitions` on a cluster.
pub async fn expand(node: &AppState, topic: &str, count: u32) -> ApiResult<Response> {
    let controller = controller(node)?;
    let max = node.limits().partitions_per_topic_max;
    if count > max {
        return Err(BrokerError::LimitExceeded {
            limit_name: Limit::PartitionsPerTopicMax,
            limit: u64::from(max),
            detail: format!("partitions must be at most {max}"),
        }
        .into());
    }
    let image = controller.image();
    let current = exists(&image, topic)?.partitions.len() as u32;
    check_cluster_limits(node, &image, count.saturating_sub(current), false)?;
    let index = controller
        .create_partitions(topic.to_string(), count)
        .await?;
    wait_every_broker(node, &controller, index, "the partitions are added").await?;
    Ok(axum::Json(describe_in(node, &controller.image(), topic)?).into_response())
}

/// `PATCH /v1/topics/{t}` on a cluster (`patch` is the bare config object).
pub async fn update_config(
    node: &AppState,
    topic: &str,
    patch: Map<String, Value>,
) -> ApiResult<Response> {
    let controller = controller(node)?;
    if patch.contains_key(MIN_INSYNC_REPLICAS) {
        return Err(ApiError::invalid(
            "min_insync_replicas is fixed when the topic is created",
        ));
    }
    let name = topic.to_string();
    // Checked here, for the answer's problem; merged again in the proposal's turn onto the
    // config then current, so a change that landed meanwhile (another PATCH, the topic made
    // again) is neither lost nor overwritten with the old topic's config.
    merge_config(exists(&controller.image(), topic)?.config, patch.clone())?;
    let index = controller
        .propose_built(move |image| {
            let current = exists(image, &name)?.config;
            let config = merge_config(current, patch)
                .map_err(|e| crate::cluster::controller::ControlError::Invalid(e.detail))?;
            Ok(Command::UpdateConfig {
                topic: name,
                config,
            })
        })
        .await?;
    wait_every_broker(node, &controller, index, "the config is changed").await?;
    Ok(axum::Json(describe_in(node, &controller.image(), topic)?).into_response())
}

/// `GET /v1/topics` on a cluster: the metadata's topics, then any of this broker's own.
pub fn list(node: &AppState) -> Response {
    let image = node.cluster.with_image(MetadataImage::clone);
    let mut topics: Vec<Value> = image
        .topics
        .values()
        .map(|t| json!({"name": t.name, "partitions": t.partitions.len(), "replication_factor": t.replication_factor}))
        .collect();
    for t in node.broker.topics() {
        if t.topic_id().is_none() && !image.topics.contains_key(&*t.name) {
            topics.push(json!({"name": &*t.name, "partitions": t.partition_count(), "replication_factor": 1}));
        }
    }
    axum::Json(json!({ "topics": topics })).into_response()
}

/// `GET /v1/topics/{t}` on a cluster, as this broker's copy of the metadata has it.
pub fn describe(node: &AppState, topic: &str) -> ApiResult<Response> {
    let image = node.cluster.with_image(MetadataImage::clone);
    if !image.topics.contains_key(topic)
        && let Ok(local) = node.broker.topic(topic)
        && local.topic_id().is_none()
    {
        let view = super::topics::describe_topic(&local, node.cluster.node_id().0);
        return Ok(axum::Json(view).into_response());
    }
    Ok(axum::Json(describe_in(node, &image, topic)?).into_response())
}

/// A topic's view from `image`: each partition's leader (null: offline), epoch, replicas, ISR
/// and ELR (KIP-966 eligible leader replicas), with the
/// figures of this broker's own replica where it holds one (nulls elsewhere).
fn describe_in(node: &AppState, image: &MetadataImage, topic: &str) -> ApiResult<Value> {
    let record = exists(image, topic)?;
    let local = node
        .broker
        .topic(topic)
        .ok()
        .filter(|t| t.topic_id() == Some(record.topic_id));
    let slots: Vec<Option<Arc<Partition>>> = local
        .as_ref()
        .map(|t| t.partition_slots())
        .unwrap_or_default();
    let partitions: Vec<Value> = record
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut view = json!({
                "partition": i,
                "leader": p.leader,
                "leader_epoch": p.leader_epoch,
                "replicas": p.replicas,
                "isr": p.isr,
                "elr": p.elr,
            });
            add_local_stats(&mut view, slots.get(i).and_then(Option::as_deref));
            view
        })
        .collect();
    let mut config = serde_json::to_value(record.config).expect("a config serializes");
    config[MIN_INSYNC_REPLICAS] = json!(record.min_insync_replicas);
    Ok(json!({
        "name": record.name,
        "topic_id": record.topic_id,
        "replication_factor": record.replication_factor,
        "config": config,
        "partitions": partitions,
    }))
}

/// The topic, or a refusal the client sees as `topic_not_found`.
fn exists<'a>(
    image: &'a MetadataImage,
    topic: &str,
) -> Result<&'a TopicRecord, crate::cluster::controller::ControlError> {
    image.topics.get(topic).ok_or_else(|| {
        crate::cluster::controller::ControlError::Refused(MetadataError::TopicNotFound(
            topic.to_string(),
        ))
    })
}

/// `topics_max` and `partitions_max` over the cluster's user topics (internal ones, `__`,
/// are not counted, as on a single broker).
fn check_cluster_limits(
    node: &AppState,
    image: &MetadataImage,
    adding: u32,
    new_topic: bool,
) -> ApiResult<()> {
    let limits = node.limits();
    let user = || {
        image
            .topics
            .values()
            .filter(|t| !is_internal_topic(&t.name))
    };
    if new_topic && user().count() as u64 >= u64::from(limits.topics_max) {
        return Err(BrokerError::LimitExceeded {
            limit_name: Limit::TopicsMax,
            limit: u64::from(limits.topics_max),
            detail: format!("the cluster already has {} topics", limits.topics_max),
        }
        .into());
    }
    let current: u64 = user().map(|t| t.partitions.len() as u64).sum();
    if current + u64::from(adding) > u64::from(limits.partitions_max) {
        return Err(BrokerError::LimitExceeded {
            limit_name: Limit::PartitionsMax,
            limit: u64::from(limits.partitions_max),
            detail: format!(
                "the cluster has {current} partitions; {adding} more would pass {}",
                limits.partitions_max
            ),
        }
        .into());
    }
    Ok(())
}

/// Waits until every active broker made its replicas match the metadata up to `index`.
pub(super) async fn wait_every_broker(
    node: &AppState,
    controller: &Controller,
    index: u64,
    done: &str,
) -> ApiResult<()> {
    let mut shutdown = node.broker.shutdown_signal();
    controller
        .wait_reconciled(index, PROPAGATION_WAIT, &mut shutdown)
        .await
        .map_err(|behind| {
            let behind: Vec<String> = behind.iter().map(ToString::to_string).collect();
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "request_timeout",
                format!(
                    "{done}, but brokers {} have not applied it yet",
                    behind.join(", ")
                ),
            )
        })
}
