//! `Idempotency-Key` on a produce (the IETF httpapi draft): a retry with the same key and the
//! same request is answered with the first answer, byte for byte, and writes nothing.
//!
//! The request's fingerprint covers the topic, the query string, the content type and the
//! body, so a key sent with anything else is refused (422 `idempotency_key_reused`). The
//! produce runs in a task of its own, so a client that disconnects mid-request does not cut
//! it between its append and the storing of its answer; the key stays in progress (409
//! `idempotency_key_in_progress`) until then. The keys themselves are kept by
//! `producers::idempotency_keys`. On a cluster the request is served by the leader of
//! `__idempotency_keys`, which holds the keys (`forward`).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::body::{content_type, read_limited};
use super::error::{ApiError, ApiResult};
use super::produce::{ProduceBody, ProduceQuery, produce_body};
use crate::producers::idempotency_keys::{Begin, Fingerprint, StoredAnswer, validate_key};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on a replayed answer (`true`); the first answer has no such header.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// The headers of an answer stored and replayed with it (the rest describe the connection).
const KEPT_HEADERS: [&str; 2] = ["content-type", "tidelog-durability"];
/// Largest produce answer kept (one offset per record: far less than any body).
const ANSWER_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The request's key, checked; `None` without the header.
pub fn key_of(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad_key(
            "send one Idempotency-Key header, not several".into(),
        ));
    }
    validate_key(value.as_bytes()).map_err(bad_key)?;
    let key = value
        .to_str()
        .map_err(|_| bad_key("an Idempotency-Key is visible ASCII".into()))?;
    Ok(Some(key.to_string()))
}

fn bad_key(detail: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", detail)
}

/// A produce with an `Idempotency-Key`: run once, answered the same way ever after.
pub(super) async fn produce_with_key(
    node: AppState,
    key: String,
    topic: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let q = ProduceQuery::parse(query.as_deref())?;
    if q.producer_id.is_some() || q.producer_epoch.is_some() || q.sequence.is_some() {
        return Err(ApiError::invalid(
            "a produce carries an Idempotency-Key or a producer session (producer_id, \
             producer_epoch, sequence), not both",
        ));
    }
    let bytes = read_limited(&headers, body, node.limits().request_body_bytes_max).await?;
    let fingerprint = Fingerprint::of(&[
        topic.as_bytes(),
        query.as_deref().unwrap_or("").as_bytes(),
        content_type(&headers).as_bytes(),
        &bytes,
    ]);
    let ticket = match node.idempotency_keys.begin(&key, fingerprint).await? {
        Begin::Replay(answer) => return Ok(into_response(answer, true)),
        Begin::Run(ticket) => ticket,
    };
    let task = tokio::spawn(async move {
        let body = ProduceBody::Streamed {
            headers: &headers,
            body: Body::from(bytes),
        };
        let response = produce_body(&node, &topic, query.as_deref(), body)
            .await
            .into_response();
        let answer = stored_answer(response).await;
        let keep = stored_records(&answer);
        node.idempotency_keys.finish(ticket, &answer, keep).await;
        answer
    });
    match task.await {
        Ok(answer) => Ok(into_response(answer, false)),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(ApiError::from(crate::broker::BrokerError::Io(format!(
            "the produce task ended: {e}"
        )))),
    }
}

/// The answer as it will be stored: its status, the kept headers, the whole body.
async fn stored_answer(response: Response) -> StoredAnswer {
    let (parts, body) = response.into_parts();
    let headers = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = parts.headers.get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    let body = match axum::body::to_bytes(body, ANSWER_BYTES_MAX).await {
        Ok(bytes) => bytes.to_vec(),
        Err(e) => {
            let e = ApiError::from(crate::broker::BrokerError::Io(format!(
                "reading the produce answer: {e}"
            )));
            return Box::pin(stored_answer(e.into_response())).await;
        }
    };
    StoredAnswer {
        status: parts.status.as_u16(),
        headers,
        body,
    }
}

/// Whether the produce stored, or may have stored, records: then its answer is kept for the
/// key. A success did; a problem did if it reports appended or unconfirmed records.
fn stored_records(answer: &StoredAnswer) -> bool {
    if (200..300).contains(&answer.status) {
        return true;
    }
    let Ok(problem) = serde_json::from_slice::<serde_json::Value>(&answer.body) else {
        return false;
    };
    ["appended_records", "unconfirmed_records"]
        .iter()
        .any(|field| problem[field].as_u64().is_some_and(|n| n > 0))
}

fn into_response(answer: StoredAnswer, replayed: bool) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    if replayed {
        headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}
