//! Request inputs with limits: bodies, query strings, path numbers.

use std::borrow::Cow;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ApiResult};
use super::serve::BodyTimeout;
use crate::broker::{BrokerError, Partition, Topic};
use crate::limits::{Limit, Limits};
use crate::metadata::PartitionId;

/// The 413 for a body over `request_body_bytes_max`.
pub fn body_too_large(limit: u64) -> ApiError {
    ApiError::limit(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        Limit::RequestBodyBytesMax,
        limit,
        format!("the request body is larger than {limit} bytes"),
    )
}

/// Rejects a body whose declared length is over the limit before reading any of it.
/// Returns the declared length, if any (within the limit).
pub fn check_declared_length(headers: &HeaderMap, limit: u64) -> ApiResult<Option<u64>> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(body_too_large(limit)),
        other => Ok(other),
    }
}

/// Reads a whole body, refusing more than `limit` bytes; a client that disconnects mid-body
/// gets (if anyone is listening) a 400 and nothing is appended.
pub async fn read_limited(headers: &HeaderMap, body: Body, limit: u64) -> ApiResult<Bytes> {
    let declared = check_declared_length(headers, limit)?;
    let mut stream = body.into_data_stream();
    // A body that comes in one chunk (a small one, read with its head) is that chunk, not a
    // copy. Past the first, one allocation for a body of known length (already bounded by
    // the limit) instead of regrowing chunk by chunk.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(body_read_failed)?;
        let so_far = first.as_ref().map_or(buf.len(), Bytes::len);
        if (so_far + chunk.len()) as u64 > limit {
            return Err(body_too_large(limit));
        }
        if let Some(whole) = first.take() {
            buf.reserve((declared.unwrap_or(0) as usize).max(whole.len() + chunk.len()));
            buf.extend_from_slice(&whole);
        } else if buf.is_empty() {
            first = Some(chunk);
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// The problem for a body that could not be read: a 408 naming the limit when a body clock
/// ran out ([`BodyTimeout`]), else a 400 (the client went away or sent a broken body).
pub fn body_read_failed(e: axum::Error) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(error) = source {
        if let Some(timeout) = error.downcast_ref::<BodyTimeout>() {
            return ApiError::limit(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                timeout.limit_name,
                timeout.limit_ms,
                timeout.to_string(),
            );
        }
        source = error.source();
    }
    ApiError::invalid(format!("reading the request body failed: {e}"))
}

/// The media type of the request, lower-cased, without parameters.
pub fn content_type(headers: &HeaderMap) -> Cow<'_, str> {
    media_type(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )
}

/// The media type of a `Content-Type` value that is visible ASCII and tabs (what
/// `HeaderValue::to_str` lets through; none or another is read as no media type), lower-cased,
/// without parameters.
pub fn media_type(value: Option<&str>) -> Cow<'_, str> {
    let Some(v) = value else {
        return Cow::Borrowed("");
    };
    // Visible ASCII and tabs only: ASCII trimming is all there is.
    let v = v
        .split_once(';')
        .map_or(v, |(media_type, _)| media_type)
        .trim_ascii();
    // Borrowed in the usual case, so a request does not allocate for its media type.
    if v.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(v.to_ascii_lowercase())
    } else {
        Cow::Borrowed(v)
    }
}

pub fn unsupported_media_type(got: &str, expected: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("content type '{got}' is not supported here; use {expected}"),
    )
}

/// Parses a query string into `T`, answering a problem that names the bad parameter.
pub fn parse_query<'a, T: Deserialize<'a> + Default>(raw: Option<&'a str>) -> ApiResult<T> {
    match raw {
        None | Some("") => Ok(T::default()),
        Some(q) if !percent_decodes_to_utf8(q) => Err(ApiError::invalid(
            "the query string percent-decodes to invalid UTF-8",
        )),
        Some(q) => serde_urlencoded::from_str(q)
            .map_err(|e| ApiError::invalid(format!("bad query string: {e}"))),
    }
}

/// serde_urlencoded replaces invalid UTF-8 with U+FFFD; a record key silently changed
/// (`?key=%FF`) is worse than a 400, so the decoded bytes are checked first. A query with no
/// escape is the `str` it came as (the usual `?acks=all`: nothing decoded, nothing allocated).
fn percent_decodes_to_utf8(query: &str) -> bool {
    if !query.contains('%') {
        return true;
    }
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = query.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match escaped {
            Some(b) => {
                decoded.push(b);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// Parses an unsigned number parameter, naming it in the error.
pub fn parse_u64(name: &str, value: &str) -> ApiResult<u64> {
    value.parse::<u64>().map_err(|_| {
        ApiError::invalid(format!(
            "'{name}' must be a non-negative integer, got '{value}'"
        ))
    })
}

/// The local replica of the partition of `topic` a path names (`value`, its number). A
/// number too large for a partition id names a partition the topic does not have.
pub fn path_partition(topic: &Topic, value: &str) -> ApiResult<std::sync::Arc<Partition>> {
    Ok(topic.partition(partition_id(topic, parse_u64("partition", value)?)?)?)
}

/// `number` as one of `topic`'s partition ids: `PartitionNotFound` when it cannot be one.
pub fn partition_id(topic: &Topic, number: u64) -> Result<PartitionId, BrokerError> {
    u32::try_from(number)
        .map(PartitionId)
        .map_err(|_| BrokerError::PartitionNotFound {
            partition: number,
            partitions: topic.partition_count(),
        })
}

/// Parses an optional numeric parameter against its maximum. The default is bounded by the
/// maximum too: a limit configured below it still holds for a request that names no value.
pub fn bounded(
    name: &str,
    value: Option<&str>,
    default: u64,
    limits: &Limits,
    limit: Limit,
) -> ApiResult<u64> {
    let max = limits.get(limit);
    let Some(v) = value else {
        return Ok(default.min(max));
    };
    let n = parse_u64(name, v)?;
    if n > max {
        return Err(ApiError::limit(
            StatusCode::BAD_REQUEST,
            "limit_exceeded",
            limit,
            max,
            format!("'{name}' is {n}; the most allowed is {max}"),
        ));
    }
    Ok(n)
}

/// Reads a JSON body into `T` with the body limit.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> ApiResult<T> {
    let ct = content_type(headers);
    if !ct.is_empty() && ct != "application/json" {
        return Err(unsupported_media_type(&ct, "application/json"));
    }
    let bytes = read_limited(headers, body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}
