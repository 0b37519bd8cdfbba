//! Producer sessions (`POST /v1/producers`) and the idempotence parameters of a produce.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::body::{content_type, read_limited, unsupported_media_type};
use super::error::{ApiError, ApiResult};
use crate::log::batch::ProducerInfo;
use crate::producers::ProducerError;

/// Body of `POST /v1/producers`; an empty body is an anonymous session.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    name: Option<String>,
}

/// Bytes a session request body may have: a name and some JSON around it.
const SESSION_BODY_BYTES_MAX: u64 = 4096;

pub async fn create(
    State(node): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let ct = content_type(&headers);
    if !ct.is_empty() && ct != "application/json" {
        return Err(unsupported_media_type(&ct, "application/json"));
    }
    let limit = node
        .limits()
        .request_body_bytes_max
        .min(SESSION_BODY_BYTES_MAX);
    let bytes = read_limited(&headers, body, limit).await?;
    let req: SessionBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        SessionBody::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?
    };
    let session = node.producers.create_session(req.name.as_deref()).await?;
    Ok((StatusCode::CREATED, axum::Json(session)).into_response())
}

/// The idempotence parameters of a produce's query: all three or none.
pub(super) fn producer_from_query(
    producer_id: Option<&str>,
    producer_epoch: Option<&str>,
    sequence: Option<&str>,
) -> ApiResult<ProducerInfo> {
    let (id, epoch, sequence) = match (producer_id, producer_epoch, sequence) {
        (None, None, None) => return Ok(ProducerInfo::NONE),
        (Some(id), Some(epoch), Some(sequence)) => (id, epoch, sequence),
        _ => {
            return Err(ApiError::invalid(
                "an idempotent produce needs all of 'producer_id', 'producer_epoch' and 'sequence'",
            ));
        }
    };
    let id: i64 = id
        .parse()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| ApiError::invalid("'producer_id' must be an integer of at least 0"))?;
    let epoch: i16 = epoch.parse().ok().filter(|e| *e >= 0).ok_or_else(|| {
        ApiError::invalid(format!(
            "'producer_epoch' must be an integer from 0 to {}",
            i16::MAX
        ))
    })?;
    let sequence: i32 = sequence.parse().ok().filter(|s| *s >= 0).ok_or_else(|| {
        ApiError::invalid(format!(
            "'sequence' must be an integer from 0 to {}",
            i32::MAX
        ))
    })?;
    Ok(ProducerInfo {
        producer_id: id,
        producer_epoch: epoch,
        base_sequence: sequence,
    })
}

impl From<ProducerError> for ApiError {
    fn from(e: ProducerError) -> Self {
        let detail = e.to_string();
        match e {
            ProducerError::InvalidName(_) => ApiError::invalid(detail),
            ProducerError::Unknown { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "unknown_producer", detail)
            }
            ProducerError::EpochExhausted(_) => {
                ApiError::new(StatusCode::CONFLICT, "producer_epoch_exhausted", detail)
            }
            ProducerError::Broker(e) => ApiError::from(e),
        }
    }
}
