//! Health, readiness, cluster view and the OpenAPI document.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::node::Node;

/// The OpenAPI spec, embedded at build time from `openapi/tidelog.json`.
pub const OPENAPI_JSON: &str = include_str!("../../openapi/tidelog.json");

pub async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// Ready while not shutting down, no partition has stopped taking writes, and (in a
/// cluster) the broker has registered and caught up with the metadata.
pub async fn readyz(State(node): State<Node>) -> Response {
    let broker = &node.broker;
    let failed: Vec<String> = broker
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .filter(|p| p.write_refusal().is_some())
        .map(|p| format!("{}/{}", p.topic, p.id))
        .collect();
    let cluster = node.cluster.not_ready();
    if broker.is_shutting_down() || !failed.is_empty() || cluster.is_some() {
        let body = json!({"status": "unavailable", "shutting_down": broker.is_shutting_down(), "failed_partitions": failed, "cluster": cluster});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    axum::Json(json!({"status": "ready"})).into_response()
}

/// The cluster as this broker knows it (alone: a cluster of one, itself alive).
pub async fn cluster(State(node): State<Node>) -> Response {
    axum::Json(node.cluster.view()).into_response()
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// The Prometheus text exposition of every metric.
pub async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::install().render(),
    )
        .into_response()
}
