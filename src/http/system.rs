//! Health, readiness, cluster view and the OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::broker::Broker;

/// The OpenAPI spec, embedded at build time from `openapi/tidelog.json`.
pub const OPENAPI_JSON: &str = include_str!("../../openapi/tidelog.json");

pub async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// Ready while not shutting down and no partition has stopped taking writes.
pub async fn readyz(State(broker): State<Arc<Broker>>) -> Response {
    let failed: Vec<String> = broker
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .filter(|p| p.failure().is_some())
        .map(|p| format!("{}/{}", p.topic, p.id))
        .collect();
    if broker.is_shutting_down() || !failed.is_empty() {
        let body = json!({"status": "unavailable", "shutting_down": broker.is_shutting_down(), "failed_partitions": failed});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    axum::Json(json!({"status": "ready"})).into_response()
}

pub async fn cluster(State(broker): State<Arc<Broker>>) -> Response {
    axum::Json(json!({
        "cluster_id": "tidelog-single-node",
        "controller": 1,
        "brokers": [{"node_id": 1, "address": broker.config.listen.to_string(), "status": "alive"}],
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
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
