//! Server-sent events: `GET .../partitions/{p}/stream?offset=`, one event per record.
//!
//! Each event's `id` is the record's offset, so a reconnecting client's `Last-Event-ID`
//! resumes right after the last record it saw. The stream waits on the partition's high
//! watermark (no polling) and ends cleanly on shutdown.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;

use super::body::{bounded, parse_query, path_partition};
use super::error::{ApiError, ApiResult};
use super::fetch::start_offset;
use super::path::Path;
use super::render::render_record;
use crate::broker::{Broker, BrokerError, Partition, ResponseBytes, WaitKind, WaitSlot};
use crate::limits::Limit;
use crate::log::Offset;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    pub offset: Option<String>,
    pub timestamp_ms: Option<String>,
    pub max_bytes: Option<String>,
}

/// Records fetched per read from the log.
const STREAM_FETCH_RECORDS: u32 = 500;
/// An event's bytes besides its data (`event: record`, `id: <offset>`, line ends).
const EVENT_FRAMING_BYTES: usize = 48;
/// What a stream ended past a limit asks its client to wait before reconnecting.
const OVERLOADED_RETRY: Duration = Duration::from_secs(1);

struct StreamState {
    broker: Arc<Broker>,
    partition: Arc<Partition>,
    /// The stream's place under `streams_max`; given back (gauge included) when the stream
    /// drops, however it ends.
    slot: WaitSlot,
    /// Next offset to read from the log.
    next: Offset,
    /// Rendered events waiting to be sent; bounded by one fetch.
    ready: VecDeque<Event>,
    /// The response budget `ready` holds, given back once it is sent.
    page: Option<ResponseBytes>,
    max_bytes: u64,
    /// Set after an error event: the stream ends.
    done: bool,
}

pub async fn sse(
    State(broker): State<Arc<Broker>>,
    Path((topic, partition)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q: StreamQuery = parse_query(query.as_deref())?;
    let limits = broker.limits();
    let max_bytes = bounded(
        "max_bytes",
        q.max_bytes.as_deref(),
        1024 * 1024,
        limits,
        Limit::FetchBytesMax,
    )?;
    let partition = path_partition(&*broker.topic(&topic)?, &partition)?;
    let resume = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid("'Last-Event-ID' must be a record offset"))
        })
        .transpose()?;
    let next = match resume {
        // Saturating: `Last-Event-ID: 18446744073709551615` is past the end (a 416), not a panic.
        Some(last) => Offset(last.saturating_add(1)),
        None => start_offset(&partition, q.offset.as_deref(), q.timestamp_ms.as_deref()).await?,
    };
    // Refuse a bad start now, with a problem, rather than inside the stream.
    partition.fetch(next, 1, 1).await?;
    // Refuse now, with a 503, when the response budget has no room for a page.
    drop(broker.reserve_response(max_bytes)?);
    let slot = broker.wait_slot(WaitKind::Stream)?;
    let state = StreamState {
        broker,
        partition,
        slot,
        next,
        ready: VecDeque::new(),
        page: None,
        max_bytes,
        done: false,
    };
    let events = stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.ready.pop_front() {
                if s.ready.is_empty() {
                    s.page = None;
                }
                return Some((Ok::<Event, Infallible>(event), s));
            }
            if s.done || s.broker.is_shutting_down() {
                return None;
            }
            let high_watermark = match s.read_events().await {
                Ok(hw) => hw,
                Err(e) => {
                    // Tell the client why, then end the stream; past a limit, when to retry.
                    s.done = true;
                    let mut event = Event::default().event("error").data(e.to_string());
                    if matches!(e, BrokerError::Overloaded { .. }) {
                        event = event.retry(OVERLOADED_RETRY);
                    }
                    return Some((Ok(event), s));
                }
            };
            if !s.ready.is_empty() || s.next < high_watermark {
                continue;
            }
            // Caught up. A failed (or deleted) partition's high watermark never moves again:
            // say why and end instead of waiting forever.
            if let Some(why) = s.partition.failure() {
                s.done = true;
                let why = format!("the partition stopped taking writes: {why}");
                return Some((Ok(Event::default().event("error").data(why)), s));
            }
            // Woken by the flusher, a failure or shutdown; never by a timer.
            s.broker
                .wait_for_records(&s.slot, &s.partition, s.next, None)
                .await;
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

impl StreamState {
    /// Reads one page at `next` and renders its records into `ready`; returns the high
    /// watermark the read saw.
    async fn read_events(&mut self) -> Result<Offset, BrokerError> {
        let mut page = self.broker.reserve_response(self.max_bytes)?;
        let fetched = self
            .partition
            .fetch(self.next, STREAM_FETCH_RECORDS, self.max_bytes)
            .await?;
        let partition_id = self.partition.id;
        let ready = &mut self.ready;
        let mut rendered = 0u64;
        self.next = fetched.for_each_record(|r| {
            let mut data = Vec::with_capacity(128);
            render_record(&mut data, partition_id, r);
            let data = String::from_utf8(data).unwrap_or_default();
            rendered += (data.len() + EVENT_FRAMING_BYTES) as u64;
            ready.push_back(
                Event::default()
                    .event("record")
                    .id(r.offset.to_string())
                    .data(data),
            );
            Ok(())
        })?;
        if !self.ready.is_empty() {
            page.settle(rendered);
            self.page = Some(page);
        }
        Ok(fetched.high_watermark)
    }
}
