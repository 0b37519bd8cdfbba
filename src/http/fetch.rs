//! Fetch (`GET .../partitions/{p}/records`): the fetch query, its bounds, and the long-poll.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::body::{bounded, parse_query, parse_u64, path_partition};
use super::budgeted_body::budgeted_json_response;
use super::error::{ApiError, ApiResult};
use super::path::Path;
use super::render::render_record;
use crate::broker::{Broker, BrokerError, Fetched, Partition, ResponseBytes, WaitKind};
use crate::limits::{Limit, Limits};
use crate::log::Offset;
use crate::metrics as m;

/// Query of a fetch.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchQuery {
    pub offset: Option<String>,
    pub timestamp_ms: Option<String>,
    pub max_records: Option<String>,
    pub max_bytes: Option<String>,
    pub wait_ms: Option<String>,
    /// `local`: read this broker's own replica up to its own high watermark (on a cluster
    /// such a fetch is never forwarded to the leader; a broker without a replica answers
    /// `not_a_replica`).
    pub replica: Option<String>,
}

/// Resolves `offset=N|earliest|latest` or `timestamp_ms=T` to an offset.
pub async fn start_offset(
    partition: &Partition,
    offset: Option<&str>,
    timestamp_ms: Option<&str>,
) -> ApiResult<Offset> {
    if offset.is_some() && timestamp_ms.is_some() {
        return Err(ApiError::invalid(
            "give either 'offset' or 'timestamp_ms', not both",
        ));
    }
    if let Some(ts) = timestamp_ms {
        let ts = ts.parse::<i64>().map_err(|_| {
            ApiError::invalid(format!("'timestamp_ms' must be an integer, got '{ts}'"))
        })?;
        return Ok(partition.offset_for_timestamp(ts).await?);
    }
    let progress = partition.progress();
    match offset {
        None | Some("earliest") => Ok(progress.log_start_offset),
        Some("latest") => Ok(progress.high_watermark),
        Some(n) => parse_u64("offset", n).map(Offset),
    }
}

/// The size and wait bounds of a fetch (`max_records`, `max_bytes`, `wait_ms`), checked
/// against their limits; shared by partition fetches and group member fetches.
#[derive(Debug, Clone, Copy)]
pub struct FetchBounds {
    pub max_records: u32,
    pub max_bytes: u64,
    pub wait_ms: u64,
}

impl FetchBounds {
    pub fn from_query(
        max_records: Option<&str>,
        max_bytes: Option<&str>,
        wait_ms: Option<&str>,
        limits: &Limits,
    ) -> ApiResult<FetchBounds> {
        let max_records = bounded(
            "max_records",
            max_records,
            500,
            limits,
            Limit::FetchRecordsMax,
        )?;
        let max_bytes = bounded(
            "max_bytes",
            max_bytes,
            1024 * 1024,
            limits,
            Limit::FetchBytesMax,
        )?;
        let wait_ms = bounded("wait_ms", wait_ms, 0, limits, Limit::WaitMsMax)?;
        if max_records == 0 || max_bytes == 0 {
            return Err(ApiError::invalid(
                "'max_records' and 'max_bytes' must be positive",
            ));
        }
        Ok(FetchBounds {
            max_records: max_records as u32,
            max_bytes,
            wait_ms,
        })
    }
}

pub async fn fetch(
    State(broker): State<Arc<Broker>>,
    Path((topic, partition)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let q: FetchQuery = parse_query(query.as_deref())?;
    let bounds = FetchBounds::from_query(
        q.max_records.as_deref(),
        q.max_bytes.as_deref(),
        q.wait_ms.as_deref(),
        broker.limits(),
    )?;
    if let Some(r) = q.replica.as_deref().filter(|r| *r != "local") {
        return Err(ApiError::invalid(format!(
            "'replica' can only be 'local', got '{r}'"
        )));
    }
    let partition = path_partition(&*broker.topic(&topic)?, &partition)?;
    let offset = start_offset(&partition, q.offset.as_deref(), q.timestamp_ms.as_deref()).await?;
    let (fetched, mut page) = fetch_waiting(
        &broker,
        &partition,
        offset,
        bounds.max_records,
        bounds.max_bytes,
        bounds.wait_ms,
    )
    .await?;
    let mut body = Vec::with_capacity(fetched.bytes.len() + 64);
    body.extend_from_slice(b"{\"records\":[");
    let mut count = 0u64;
    let next = fetched.for_each_record(|r| {
        if count > 0 {
            body.push(b',');
        }
        count += 1;
        render_record(&mut body, partition.id, r);
        Ok(())
    })?;
    ::metrics::counter!(m::RECORDS_FETCHED, "topic" => std::sync::Arc::clone(&partition.topic))
        .increment(count);
    let _ = write!(
        body,
        "],\"next_offset\":{next},\"high_watermark\":{},\"log_start_offset\":{}}}",
        fetched.high_watermark, fetched.log_start_offset
    );
    page.settle(body.len() as u64);
    Ok(budgeted_json_response(StatusCode::OK, body, page))
}

/// Fetches at `offset`; if nothing is there yet, waits up to `wait_ms` for the high watermark
/// to pass it (woken by the flusher, not by polling) or for shutdown. Each read first reserves
/// its page (`max_bytes`) of the response budget; the reservation comes back with the records,
/// and a long-poll waits without one.
pub async fn fetch_waiting(
    broker: &Broker,
    partition: &Partition,
    offset: Offset,
    max_records: u32,
    max_bytes: u64,
    wait_ms: u64,
) -> Result<(Fetched, ResponseBytes), BrokerError> {
    let page = broker.reserve_response(max_bytes)?;
    let fetched = partition.fetch(offset, max_records, max_bytes).await?;
    if wait_ms == 0 || offset < fetched.high_watermark {
        return Ok((fetched, page));
    }
    drop(page);
    let slot = broker.wait_slot(WaitKind::LongPoll)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    broker
        .wait_for_records(&slot, partition, offset, Some(deadline))
        .await;
    drop(slot);
    let page = broker.reserve_response(max_bytes)?;
    Ok((partition.fetch(offset, max_records, max_bytes).await?, page))
}
