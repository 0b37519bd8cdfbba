//! Streamed NDJSON produce: complete lines are parsed and appended in batches of about
//! `ndjson_batch_bytes`, so a large body is never held whole.

use axum::body::Body;
use axum::http::HeaderMap;
use bytes::BytesMut;
use futures_util::StreamExt;

use super::AppState;
use super::body::{body_read_failed, body_too_large, check_declared_length};
use super::error::{ApiError, ApiResult};
use super::json_records::{
    RecordRules, as_produce_records, parse_ndjson_lines, parse_off_the_workers,
};
use super::produce::ProduceParams;
use super::produce_split::produce_records;
use crate::broker::{Durability, ProduceOutcome, RecordFate};
use crate::log::batch::ProducerInfo;

/// Streams an NDJSON body: complete lines are parsed and appended in batches.
///
/// A body within one batch is all or nothing: every line is checked before any is appended.
/// A failure after a batch was appended does not undo it: the problem says which records
/// were stored (`appended_records`, always the first ones of the body, and their `offsets`),
/// so a client resends only the rest instead of duplicating them.
pub(super) async fn produce_ndjson(
    node: &AppState,
    topic_name: &str,
    headers: &HeaderMap,
    body: Body,
    params: &ProduceParams,
    rules: RecordRules,
) -> ApiResult<ProduceOutcome> {
    let mut progress = NdjsonProgress {
        stored: ProduceOutcome {
            offsets: Vec::new(),
            durability: Durability::None,
        },
        unconfirmed: 0,
    };
    let request = NdjsonRequest {
        node,
        topic_name,
        params,
        rules,
    };
    let appended = append_ndjson_batches(request, headers, body, &mut progress).await;
    match appended {
        Ok(()) => Ok(progress.stored),
        Err(e) => Err(with_stored_records(e, &progress)),
    }
}

/// What an NDJSON body has stored so far: the answer on success, reported on failure.
struct NdjsonProgress {
    /// The appended batches' offsets, in request order.
    stored: ProduceOutcome,
    /// Records of the batch whose append failed in a way that may have stored it anyway
    /// (a timeout, a storage failure); 0 otherwise.
    unconfirmed: usize,
}

/// What the batches of an NDJSON produce are appended with.
struct NdjsonRequest<'a> {
    node: &'a AppState,
    topic_name: &'a str,
    params: &'a ProduceParams,
    rules: RecordRules,
}

/// The body of [`produce_ndjson`]: appends batch after batch, recording each in `progress`.
async fn append_ndjson_batches(
    request: NdjsonRequest<'_>,
    headers: &HeaderMap,
    body: Body,
    progress: &mut NdjsonProgress,
) -> ApiResult<()> {
    let NdjsonRequest {
        node,
        topic_name,
        params,
        rules,
    } = request;
    let limits = node.limits();
    check_declared_length(headers, limits.request_body_bytes_max)?;
    let batch_bytes = limits.ndjson_batch_bytes.max(1) as usize;
    let mut stream = body.into_data_stream();
    let mut pending = BytesMut::new();
    let mut total: u64 = 0;
    let mut line_no = 0usize;
    let mut finished = false;
    while !finished {
        match stream.next().await {
            Some(chunk) => {
                let chunk = chunk.map_err(body_read_failed)?;
                total += chunk.len() as u64;
                if total > limits.request_body_bytes_max {
                    return Err(body_too_large(limits.request_body_bytes_max));
                }
                pending.extend_from_slice(&chunk);
                if pending.len() < batch_bytes {
                    continue;
                }
            }
            None => finished = true,
        }
        // Take whole lines; at the end of the body the last line needs no newline.
        let cut = if finished {
            pending.len()
        } else {
            match pending.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => continue,
            }
        };
        let lines = pending.split_to(cut).freeze();
        let seen_before = progress.stored.offsets.len() as u64;
        let decoded = parse_off_the_workers(lines.len(), || {
            parse_ndjson_lines(&lines, &mut line_no, rules, seen_before)
        })?;
        if decoded.is_empty() {
            continue;
        }
        let mut headers = Vec::new();
        let records = as_produce_records(&decoded, &mut headers);
        let outcome = produce_records(
            node,
            topic_name,
            &records,
            (params.acks, params.timeout),
            ProducerInfo::NONE,
        )
        .await
        .map_err(|failure| {
            let maybe_stored = failure.fates.iter().any(|f| *f != RecordFate::NotStored);
            if maybe_stored
                || matches!(
                    failure.error.code,
                    "request_timeout" | "storage_unavailable" | "io_error"
                )
            {
                progress.unconfirmed = records.len();
            }
            failure.error
        })?;
        // What the whole body can promise: the weakest of its batches'.
        progress.stored.durability = match progress.stored.offsets.is_empty() {
            true => outcome.durability,
            false => progress.stored.durability.weaker(outcome.durability),
        };
        progress.stored.offsets.extend(outcome.offsets);
    }
    if progress.stored.offsets.is_empty() {
        return Err(ApiError::invalid("the NDJSON body holds no records"));
    }
    Ok(())
}

/// Adds to an NDJSON failure what the body stored before it: `appended_records`, their
/// `offsets` (as in a success answer) and `unconfirmed_records`, and says so in the detail.
fn with_stored_records(e: ApiError, progress: &NdjsonProgress) -> ApiError {
    let offsets = &progress.stored.offsets;
    let (n, m) = (offsets.len(), progress.unconfirmed);
    let first = match n {
        1 => "the first record of the body was stored (its offset is in 'offsets')".to_string(),
        n => format!("the first {n} records of the body were stored (offsets in 'offsets')"),
    };
    let what = match (n, m) {
        (0, 0) => "no records of the body were stored".to_string(),
        (0, m) => format!(
            "the first {m} records of the body may or may not have been stored, none after them"
        ),
        (_, 0) => format!("{first}; none after them were"),
        (_, m) => format!("{first}; the next {m} may or may not have been, none after those"),
    };
    let json_offsets: Vec<serde_json::Value> = offsets
        .iter()
        .map(|(p, o)| serde_json::json!({"partition": p, "offset": o}))
        .collect();
    let detail = format!("{} ({what})", e.detail);
    ApiError { detail, ..e }
        .with("appended_records", n as u64)
        .with("unconfirmed_records", m as u64)
        .with("offsets", json_offsets)
}
