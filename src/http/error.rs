//! The one error type of the HTTP API: RFC 9457 problem details with a stable `code`.
//!
//! Every failure a client can cause becomes an [`ApiError`]; its `code` is part of the API
//! contract and never changes meaning. A 413 also closes the connection, so a keep-alive
//! client is not left with half a body on the wire.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::broker::BrokerError;
use crate::limits::Limit;
use crate::metrics as m;

/// How long a client refused with `overloaded` is asked to wait: long enough for a waiter or
/// a response in flight to finish, short enough to feel like a pause.
const OVERLOADED_RETRY_AFTER_S: u32 = 1;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable: `topic_not_found`, `record_too_large`, ...
    pub code: &'static str,
    pub detail: String,
    /// Extra members of the problem object (`limit`, `log_start_offset`, ...).
    pub extra: Map<String, Value>,
    /// Seconds for a `Retry-After` header (a 503 the client should simply retry).
    pub retry_after_s: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            extra: Map::new(),
            retry_after_s: None,
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// Adds a `Retry-After` header.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// A crossed limit: names it and reports its value.
    pub fn limit(
        status: StatusCode,
        code: &'static str,
        limit_name: Limit,
        limit: u64,
        detail: impl Into<String>,
    ) -> Self {
        ApiError::new(status, code, detail)
            .with("limit_name", limit_name.name())
            .with("limit", limit)
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let detail = e.to_string();
        match e {
            BrokerError::TopicNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "topic_not_found", detail)
            }
            BrokerError::TopicExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "topic_exists", detail)
            }
            BrokerError::InvalidTopicName(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_topic_name", detail)
            }
            BrokerError::InternalTopic(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "internal_topic", detail)
            }
            BrokerError::PartitionNotFound { partitions, .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "partition_not_found", detail)
                    .with("partitions", partitions)
            }
            BrokerError::OffsetOutOfRange {
                log_start_offset,
                high_watermark,
                ..
            } => ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "offset_out_of_range",
                detail,
            )
            .with("log_start_offset", log_start_offset.0)
            .with("high_watermark", high_watermark.0),
            BrokerError::RecordTooLarge { limit, .. } => ApiError::limit(
                StatusCode::PAYLOAD_TOO_LARGE,
                "record_too_large",
                Limit::RecordBytesMax,
                limit,
                detail,
            ),
            BrokerError::LimitExceeded {
                limit_name, limit, ..
            } => ApiError::limit(
                StatusCode::BAD_REQUEST,
                "limit_exceeded",
                limit_name,
                limit,
                detail,
            ),
            BrokerError::InvalidRequest(_) => ApiError::invalid(detail),
            BrokerError::StorageUnavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                detail,
            ),
            BrokerError::NotAReplica { partition, .. } => {
                ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_a_replica", detail)
                    .with("partition", partition.0)
            }
            BrokerError::CorruptLog(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt_log", detail)
            }
            BrokerError::Timeout => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "request_timeout", detail)
            }
            BrokerError::NotLeader { .. } => {
                ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", detail)
            }
            BrokerError::LeaderNotAvailable { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "leader_not_available",
                detail,
            )
            .retry_after(super::forward::UNAVAILABLE_RETRY_AFTER_S),
            BrokerError::NotEnoughReplicas {
                isr,
                min_insync_replicas,
            } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_enough_replicas",
                detail,
            )
            .with("isr", isr)
            .with("min_insync_replicas", min_insync_replicas)
            .retry_after(1),
            BrokerError::LeaderChangedAfterAppend { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "leader_changed_after_append",
                detail,
            )
            .with("outcome", "unknown")
            .retry_after(1),
            BrokerError::SessionLost { appended } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "session_lost", detail)
                    .with("outcome", if appended { "unknown" } else { "not_written" })
                    .retry_after(1)
            }
            BrokerError::NotEnoughReplicasAfterAppend {
                isr,
                min_insync_replicas,
            } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_enough_replicas_after_append",
                detail,
            )
            .with("isr", isr)
            .with("min_insync_replicas", min_insync_replicas)
            .with("outcome", "unknown")
            .retry_after(1),
            // Retryable: on a cluster another broker serves the request meanwhile, and a
            // restarted broker soon again.
            BrokerError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", detail)
                    .retry_after(1)
            }
            BrokerError::Overloaded { limit_name, limit } => ApiError::limit(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                limit_name,
                limit,
                detail,
            )
            .retry_after(OVERLOADED_RETRY_AFTER_S),
            BrokerError::Io(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "io_error", detail)
            }
            BrokerError::ProducerFenced { current_epoch } => {
                ApiError::new(StatusCode::CONFLICT, "producer_fenced", detail)
                    .with("producer_epoch", current_epoch)
            }
            BrokerError::SequenceTooOld { oldest_kept, .. } => {
                ApiError::new(StatusCode::CONFLICT, "sequence_too_old", detail)
                    .with("oldest_sequence", oldest_kept)
            }
            BrokerError::SequenceOutOfOrder { last, .. } => {
                ApiError::new(StatusCode::CONFLICT, "sequence_out_of_order", detail)
                    .with("last_sequence", last)
            }
            BrokerError::SequenceReused { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "sequence_reused", detail)
            }
            BrokerError::IdempotencyKeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                detail,
            ),
            BrokerError::IdempotencyKeyInProgress => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_key_in_progress", detail)
                    .retry_after(1)
            }
            BrokerError::CoordinatorLoading { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "coordinator_loading",
                detail,
            )
            .retry_after(1),
            BrokerError::NotCoordinator { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_coordinator", detail)
                    .retry_after(1)
            }
            BrokerError::BelowHighWatermark { high_watermark, .. } => {
                ApiError::new(StatusCode::CONFLICT, "below_high_watermark", detail)
                    .with("high_watermark", high_watermark.0)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        ::metrics::counter!(m::PROBLEMS, "code" => self.code).increment(1);
        let mut body = json!({
            "type": format!("urn:tidelog:problem:{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        if let Value::Object(obj) = &mut body {
            obj.extend(self.extra);
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // The rest of the body may still be on the wire: close rather than read it as the
        // next request.
        if self.status == StatusCode::PAYLOAD_TOO_LARGE
            || self.status == StatusCode::REQUEST_TIMEOUT
        {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
