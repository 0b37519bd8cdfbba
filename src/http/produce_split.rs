//! A produce on a cluster: split per partition where it lands, each part appended by the
//! partition's leader (issue 9). Both sides are here: [`produce_records`], the one seam of
//! every produce body (JSON, NDJSON, octet-stream), and [`append`], the internal route a
//! leader serves for the parts other brokers send it.
//!
//! Invariants:
//! - Same key, same partition on every broker: the partition count comes from the metadata
//!   and the hash is [`partition_for_key`], as on a single broker.
//! - Every record is checked against the limits and the topic's `max_message_bytes` before
//!   any part is appended anywhere, so a refused record stores nothing.
//! - A part led here goes through `Broker::produce_reporting`, and a leader appends a part it
//!   receives the same way, so both take the same path as any produce on that leader
//!   (durability wait, refusals). Each part is one batch: all its records or none.
//! - The answer keeps per-record fates: a record is stored (its offset), unconfirmed (its
//!   part was sent and then the exchange broke or timed out, or the leader said it may have
//!   stored it), or not stored (its part was refused, or never reached its leader).
//! - One hop: a part carries `Tidelog-Forwarded`; a broker that does not lead the partition
//!   answers 421 `not_leader` rather than sending it on.
//! - On a broker alone, or for a topic the metadata does not know, the produce is local,
//!   exactly as before.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::{join, join_all};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::body::read_limited;
use super::error::{ApiError, ApiResult};
use super::forward::{
    FORWARDED_HEADER, PartitionHome, TopicHomes, leader_not_available, not_leader, partition_home,
    topic_homes,
};
use super::path::Path;
use super::produce::{ProduceQuery, produce_params, record_fates};
use crate::broker::{
    Acks, BrokerError, Durability, FailedProduce, ProduceOutcome, ProduceRecord, RecordFate,
    choose_partition, is_internal_topic,
};
use crate::limits::Limits;
use crate::log::Offset;
use crate::log::batch::{
    BATCH_HEADER_BYTES, BatchBuilder, BatchView, ProducerInfo, RECORD_FIXED_BYTES, RecordRef,
    stamp_batch,
};
use crate::metadata::{NodeId, PartitionId};

/// The internal append route; a part goes to `{APPEND_PATH}/{topic}/{partition}`.
pub const APPEND_ROUTE: &str = "/internal/v1/append/{topic}/{partition}";
const APPEND_PATH: &str = "/internal/v1/append";

/// Largest answer to an internal append read (a success is a few dozen bytes; a problem a
/// few hundred).
const APPEND_ANSWER_BYTES_MAX: usize = 64 * 1024;

/// Next partition for unkeyed records of a split produce (one counter for every topic: it
/// only spreads them).
static ROUND_ROBIN: AtomicU64 = AtomicU64::new(0);

/// A produce that failed: the problem, and where each record stands (empty: none stored).
#[derive(Debug)]
pub(super) struct ProduceFailure {
    pub(super) error: ApiError,
    pub(super) fates: Vec<RecordFate>,
}

impl From<FailedProduce> for ProduceFailure {
    fn from(failed: FailedProduce) -> Self {
        ProduceFailure {
            error: failed.error.into(),
            fates: failed.fates,
        }
    }
}

impl From<BrokerError> for ProduceFailure {
    fn from(e: BrokerError) -> Self {
        ProduceFailure {
            error: e.into(),
            fates: Vec::new(),
        }
    }
}

/// Produces `records` to the topic `name`: split per partition on a cluster, else locally
/// (the topic looked up, or auto-created, as on a single broker). An idempotent `producer`
/// goes with every part, so each partition's leader deduplicates it.
pub(super) async fn produce_records(
    node: &AppState,
    name: &str,
    records: &[ProduceRecord<'_>],
    (acks, timeout): (Acks, Duration),
    producer: ProducerInfo,
) -> Result<ProduceOutcome, ProduceFailure> {
    let homes = match node.cluster.is_clustered() {
        true => topic_homes(&node.cluster, name),
        false => None,
    };
    let Some(homes) = homes else {
        let topic = node.broker.topic_for_produce(name, records).await?;
        return Ok(node
            .broker
            .produce_as(&topic, records, acks, timeout, producer)
            .await?);
    };
    split(node, name, &homes, records, (acks, timeout), producer).await
}

/// What became of one partition's part of a split produce.
#[derive(Debug)]
enum PartResult {
    /// Stored from this offset on, with this durability.
    Stored(u64, Durability),
    /// Failed; its records are unconfirmed (`true`) or not stored.
    Failed(ApiError, bool),
}

async fn split(
    node: &AppState,
    name: &str,
    homes: &TopicHomes,
    records: &[ProduceRecord<'_>],
    (acks, timeout): (Acks, Duration),
    producer: ProducerInfo,
) -> Result<ProduceOutcome, ProduceFailure> {
    let broker = &node.broker;
    if is_internal_topic(name) {
        return Err(BrokerError::InternalTopic(name.to_string()).into());
    }
    if broker.is_shutting_down() {
        return Err(BrokerError::ShuttingDown.into());
    }
    let count = homes.partitions.len() as u32;
    let record_max = broker
        .limits()
        .record_bytes_max
        .min(homes.max_message_bytes);
    broker.check_records(records, record_max, count)?;
    let unkeyed = records
        .iter()
        .filter(|r| r.partition.is_none() && r.record.key.is_none())
        .count() as u64;
    // As on one broker: an idempotent retry spreads its unkeyed records as the first try did.
    let mut next_rr = match producer.producer_id >= 0 {
        true => producer.base_sequence.unsigned_abs().into(),
        false => ROUND_ROBIN.fetch_add(unkeyed, Ordering::Relaxed),
    };
    let assignment: Vec<PartitionId> = records
        .iter()
        .map(|r| choose_partition(r, count, &mut next_rr))
        .collect();
    let home = |p: PartitionId| homes.partitions[p.index()];
    // The parts led here go in one local produce, their partitions explicit.
    let local: Vec<ProduceRecord<'_>> = records
        .iter()
        .zip(&assignment)
        .filter(|(_, p)| matches!(home(**p), PartitionHome::Here | PartitionHome::Unknown))
        .map(|(r, &p)| ProduceRecord {
            partition: Some(p),
            record: r.record,
        })
        .collect();
    let mut parts: Vec<PartitionId> = Vec::new();
    for &p in &assignment {
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    let remote = parts.iter().filter_map(|&p| match home(p) {
        PartitionHome::Remote(id, address) => Some(append_remote(
            node,
            name,
            (p, id, address),
            records,
            &assignment,
            (acks, timeout, producer),
        )),
        _ => None,
    });
    let local_produce = async {
        if local.is_empty() {
            return None;
        }
        let result = match broker.topic(name) {
            Ok(topic) => broker
                .produce_as(&topic, &local, acks, timeout, producer)
                .await
                .map_err(ProduceFailure::from),
            Err(e) => Err(e.into()),
        };
        Some(result)
    };
    let (local_result, remote_results) = join(local_produce, join_all(remote)).await;

    // Per record, in request order.
    let mut fates = vec![RecordFate::NotStored; records.len()];
    let mut durability: Option<Durability> = None;
    let mut errors: Vec<(PartitionId, ApiError)> = Vec::new();
    let local_indexes = assignment
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(home(**p), PartitionHome::Here | PartitionHome::Unknown))
        .map(|(i, _)| i);
    match local_result {
        None => {}
        Some(Ok(outcome)) => {
            for (i, &(p, offset)) in local_indexes.zip(&outcome.offsets) {
                fates[i] = RecordFate::Stored(p, offset);
            }
            durability = Some(outcome.durability);
        }
        Some(Err(failure)) => {
            let failed_partition = failure
                .fates
                .iter()
                .find_map(|f| match f {
                    RecordFate::Unconfirmed(p) => Some(*p),
                    _ => None,
                })
                .or_else(|| local.first().and_then(|r| r.partition))
                .unwrap_or(PartitionId(0));
            for (i, fate) in local_indexes.zip(&failure.fates) {
                fates[i] = *fate;
            }
            errors.push((failed_partition, failure.error));
        }
    }
    for (p, result) in remote_results {
        let members = assignment.iter().enumerate().filter(|(_, a)| **a == p);
        match result {
            PartResult::Stored(base, d) => {
                for (k, (i, _)) in members.enumerate() {
                    fates[i] = RecordFate::Stored(p, Offset(base) + k as u64);
                }
                durability = Some(durability.map_or(d, |old| old.weaker(d)));
            }
            PartResult::Failed(e, unconfirmed) => {
                if unconfirmed {
                    for (i, _) in members {
                        fates[i] = RecordFate::Unconfirmed(p);
                    }
                }
                errors.push((p, e));
            }
        }
    }
    for &p in &parts {
        if home(p) == PartitionHome::Offline {
            errors.push((p, leader_not_available()));
        }
    }
    // The problem of the failed part that comes first in the request.
    let first_failed = parts
        .iter()
        .find_map(|p| errors.iter().position(|(q, _)| q == p));
    if let Some(k) = first_failed {
        let (_, error) = errors.swap_remove(k);
        let any_stored = fates.iter().any(|f| *f != RecordFate::NotStored);
        let fates = if any_stored { fates } else { Vec::new() };
        return Err(ProduceFailure { error, fates });
    }
    let offsets = fates
        .iter()
        .map(|f| match *f {
            RecordFate::Stored(p, o) => (p, o),
            other => unreachable!("a part without error stored its records, not {other:?}"),
        })
        .collect();
    Ok(ProduceOutcome {
        offsets,
        durability: durability.unwrap_or(Durability::None),
    })
}

/// The answer of an internal append.
#[derive(Debug, Serialize, Deserialize)]
struct Appended {
    base_offset: u64,
    records: u32,
    durability: String,
}

/// Sends partition `p`'s records to its leader `id` at `address` as one batch.
async fn append_remote(
    node: &AppState,
    topic: &str,
    (p, id, address): (PartitionId, NodeId, SocketAddr),
    records: &[ProduceRecord<'_>],
    assignment: &[PartitionId],
    (acks, timeout, producer): (Acks, Duration, ProducerInfo),
) -> (PartitionId, PartResult) {
    let members = || {
        assignment
            .iter()
            .zip(records)
            .filter(move |(a, _)| **a == p)
            .map(|(_, r)| &r.record)
    };
    let bytes = members().map(RecordRef::encoded_len).sum();
    let mut builder = BatchBuilder::with_capacity(bytes);
    members().for_each(|r| builder.push(r));
    let sent_records = builder.record_count();
    let mut batch = builder.finish(producer, None);
    // Sealed with a CRC so the leader can check the part arrived whole.
    stamp_batch(&mut batch, 0, 0);
    let acks = match acks {
        Acks::All => "all",
        Acks::Leader => "leader",
        Acks::None => "none",
    };
    let uri = format!(
        "http://{address}{APPEND_PATH}/{topic}/{p}?acks={acks}&timeout_ms={}",
        timeout.as_millis()
    );
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            HeaderName::from_static(FORWARDED_HEADER),
            HeaderValue::from(node.cluster.node_id().0),
        )
        .body(Body::from(batch));
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            return (
                p,
                PartResult::Failed(ApiError::invalid(e.to_string()), false),
            );
        }
    };
    let forwarder = &node.forward;
    let deadline = forwarder.deadline(timeout);
    let exchange = async {
        let answer = forwarder.client().request(request).await?;
        let status = answer.status();
        let retry_after = answer
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
        let body = Limited::new(answer.into_body(), APPEND_ANSWER_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, Exchange>((status, retry_after, body))
    };
    let result = match tokio::time::timeout(deadline, exchange).await {
        Err(_) => {
            let why = format!("no answer within {} ms", deadline.as_millis());
            PartResult::Failed(super::forward::forward_timeout(id, address, &why), true)
        }
        Ok(Err(Exchange::Connect(e))) => {
            PartResult::Failed(super::forward::broker_unavailable(id, address, &e), false)
        }
        Ok(Err(Exchange::Broken(why))) => PartResult::Failed(
            super::forward::forward_failed(id, address, &format!("the exchange broke: {why}")),
            true,
        ),
        Ok(Ok((status, retry_after, body))) => {
            let answer = PartAnswer {
                status,
                retry_after,
                body: &body,
            };
            part_answer(&answer, sent_records, (id, address))
        }
    };
    (p, result)
}

/// How an exchange with a leader failed.
enum Exchange {
    /// No connection: nothing was sent.
    Connect(String),
    /// Sent, then broken: the leader may have appended it.
    Broken(String),
}

impl From<hyper_util::client::legacy::Error> for Exchange {
    fn from(e: hyper_util::client::legacy::Error) -> Self {
        if e.is_connect() {
            Exchange::Connect(e.to_string())
        } else {
            Exchange::Broken(e.to_string())
        }
    }
}

impl From<String> for Exchange {
    fn from(why: String) -> Self {
        Exchange::Broken(why)
    }
}

/// A leader's answer to one part.
struct PartAnswer<'a> {
    status: StatusCode,
    /// Its `Retry-After`, in seconds.
    retry_after: Option<u32>,
    body: &'a [u8],
}

/// Reads a leader's answer to one part.
fn part_answer(
    answer: &PartAnswer<'_>,
    sent_records: u32,
    (id, address): (NodeId, SocketAddr),
) -> PartResult {
    let (status, body) = (answer.status, answer.body);
    let bad = |why: String| {
        let e = super::forward::forward_failed(id, address, &why);
        PartResult::Failed(e, true)
    };
    if status.is_success() {
        return match serde_json::from_slice::<Appended>(body) {
            Ok(a) if a.records == sent_records => match Durability::parse(&a.durability) {
                Some(d) => PartResult::Stored(a.base_offset, d),
                None => bad(format!("it answered durability '{}'", a.durability)),
            },
            Ok(a) => bad(format!("it stored {} of {sent_records} records", a.records)),
            Err(e) => bad(format!("its answer did not parse: {e}")),
        };
    }
    let Ok(Value::Object(mut problem)) = serde_json::from_slice::<Value>(body) else {
        return bad(format!("it answered {status} without a problem"));
    };
    let text = |problem: &serde_json::Map<String, Value>, k: &str| {
        problem
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let unconfirmed = problem
        .get("unconfirmed_records")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 0);
    let code = intern_code(&text(&problem, "code"));
    let detail = text(&problem, "detail");
    let mut e = ApiError::new(status, code, detail);
    // The fate fields describe the part alone; the split reports the whole body's.
    for k in [
        "type",
        "title",
        "status",
        "code",
        "detail",
        "appended_records",
        "unconfirmed_records",
        "offsets",
    ] {
        problem.remove(k);
    }
    e.extra = problem;
    if let Some(s) = answer.retry_after {
        e = e.retry_after(s);
    }
    PartResult::Failed(e, unconfirmed)
}

/// Most distinct problem codes a leader's answers may carry before the rest are reported
/// as `forward_failed` (the codes are the API's own, a few dozen).
const REMOTE_CODES_MAX: usize = 256;

/// A leader's problem code as a `&'static str`, as `ApiError` holds it: each distinct code
/// is leaked once, at most [`REMOTE_CODES_MAX`] of them, and only names shaped like a code.
fn intern_code(code: &str) -> &'static str {
    static CODES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let shaped = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if !shaped {
        return "forward_failed";
    }
    // std mutex: a short search and push, no `.await` under it.
    let mut codes = CODES.lock().expect("the code table lock is not poisoned");
    if let Some(known) = codes.iter().find(|c| **c == code) {
        return known;
    }
    if codes.len() >= REMOTE_CODES_MAX {
        return "forward_failed";
    }
    let leaked: &'static str = Box::leak(code.to_string().into_boxed_str());
    codes.push(leaked);
    leaked
}

/// `POST /internal/v1/append/{topic}/{partition}?acks=&timeout_ms=`: one part of a split
/// produce, sent by the broker it landed on. The body is one batch (sealed with its CRC at
/// offset 0); this broker must lead the partition. Answers `{"base_offset", "records",
/// "durability"}`, or the problem a produce of those records here would answer.
pub async fn append(
    State(node): State<AppState>,
    Path((topic, partition)): Path<(String, PartitionId)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let q = ProduceQuery::parse(query.as_deref())?;
    let params = produce_params(&q, &node.broker)?;
    match partition_home(&node.cluster, &topic, partition) {
        PartitionHome::Here | PartitionHome::Unknown => {}
        PartitionHome::Remote(id, address) => return Err(not_leader(id, address)),
        PartitionHome::Offline => return Err(leader_not_available()),
    }
    let bytes = read_limited(&headers, body, part_bytes_max(node.limits())).await?;
    let batch = BatchView::parse(&bytes)
        .map_err(|e| ApiError::invalid(format!("the body is not one whole batch: {e}")))?;
    if batch.bytes.len() != bytes.len() {
        return Err(ApiError::invalid("the body holds more than one batch"));
    }
    let mut header_pairs = Vec::new();
    let records = records_of_batch(&batch, partition, &mut header_pairs)?;
    let topic = node.broker.topic(&topic)?;
    // The part's producer (if idempotent) is checked against this partition's state here.
    let producer = batch.header.producer;
    let outcome = node
        .broker
        .produce_as(&topic, &records, params.acks, params.timeout, producer)
        .await
        .map_err(|f| part_problem(f.into()))?;
    let answer = Appended {
        base_offset: outcome.offsets.first().map_or(0, |&(_, o)| o.0),
        records: records.len() as u32,
        durability: outcome.durability.as_str().to_string(),
    };
    Ok(axum::Json(answer).into_response())
}

/// The most bytes a part can take, as one batch, for a produce body within the limits: the
/// body's keys, values and header names and values are in the body already; the framing a
/// batch adds is a batch header, a fixed size per record, and 6 bytes per header (fewer than
/// any header takes in a JSON body). So a part of small records may be several times its
/// share of the body (`{"value":1}` is 12 bytes of JSON and 39 as a record), and a leader
/// that read parts only up to `request_body_bytes_max` refused with 413 a body it takes
/// when sent to it directly.
fn part_bytes_max(limits: &Limits) -> u64 {
    let framing = RECORD_FIXED_BYTES as u64 * u64::from(limits.records_per_request_max);
    (2 * limits.request_body_bytes_max)
        .saturating_add(framing)
        .saturating_add(BATCH_HEADER_BYTES as u64)
}

/// A leader's problem for a part that failed: the produce's, with the counts of its records'
/// fates but not one entry per record (`offsets`), which the broker that split the body
/// rebuilds for the whole body and drops from the part's answer anyway. With them a large
/// part's problem passed `APPEND_ANSWER_BYTES_MAX` (about 1,800 records), and the splitting
/// broker reported `forward_failed`, losing the leader's code (`request_timeout`, ...).
fn part_problem(failure: ProduceFailure) -> ApiError {
    let mut e = record_fates(failure, false);
    e.extra.remove("offsets");
    e
}

/// The records of a part, for `partition`, borrowing from the batch; every record's headers
/// go into `headers` (one buffer for all of them).
fn records_of_batch<'a>(
    batch: &BatchView<'a>,
    partition: PartitionId,
    headers: &'a mut Vec<(&'a str, &'a [u8])>,
) -> ApiResult<Vec<ProduceRecord<'a>>> {
    let broken = |e: &dyn std::fmt::Display| ApiError::invalid(format!("a record is broken: {e}"));
    let mut counts = Vec::with_capacity(batch.header.record_count as usize);
    for record in batch.records() {
        let record = record.map_err(|e| broken(&e))?;
        let before = headers.len();
        for h in record.headers {
            let (name, value) = h.map_err(|e| broken(&e))?;
            let name = std::str::from_utf8(name).map_err(|e| broken(&e))?;
            headers.push((name, value));
        }
        counts.push(headers.len() - before);
    }
    let mut rest: &'a [(&'a str, &'a [u8])] = headers;
    let mut records = Vec::with_capacity(counts.len());
    for (record, count) in batch.records().zip(counts) {
        let record = record.map_err(|e| broken(&e))?;
        let (own, after) = rest.split_at(count);
        rest = after;
        records.push(ProduceRecord {
            partition: Some(partition),
            record: RecordRef {
                timestamp_ms: record.timestamp_ms,
                key: record.key,
                key_is_utf8: record.key_is_utf8,
                value: record.value,
                value_is_json: record.value_is_json,
                headers: own,
            },
        });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body within the limits makes parts the leader reads whole, however small its
    /// records: 60,000 `{"value":1}` records are 720 KB of JSON under a 1 MiB body limit,
    /// and 2.3 MB as one part.
    #[test]
    fn a_leader_reads_any_part_a_body_within_the_limits_makes() {
        let limits = Limits {
            request_body_bytes_max: 1 << 20,
            ..Limits::default()
        };
        let record = RecordRef {
            timestamp_ms: 1_000,
            key: None,
            key_is_utf8: false,
            value: Some(b"1"),
            value_is_json: true,
            headers: &[],
        };
        let mut builder = BatchBuilder::with_capacity(1 << 20);
        for _ in 0..60_000 {
            builder.push(&record);
        }
        let part = builder.finish(ProducerInfo::NONE, None).len() as u64;
        assert!(part > limits.request_body_bytes_max, "{part} bytes");
        assert!(part <= part_bytes_max(&limits), "{part} bytes");
    }

    /// A failed part of any size answers within what the splitting broker reads of it.
    #[test]
    fn a_failed_parts_problem_keeps_its_code_and_counts_within_the_answer_limit() {
        let failure = ProduceFailure {
            error: ApiError::new(StatusCode::GATEWAY_TIMEOUT, "request_timeout", "too slow"),
            fates: vec![RecordFate::Unconfirmed(PartitionId(3)); 100_000],
        };
        let e = part_problem(failure);
        assert_eq!(e.code, "request_timeout");
        assert_eq!(e.extra["unconfirmed_records"], 100_000);
        assert!(!e.extra.contains_key("offsets"));
        let body = serde_json::to_vec(&e.extra).unwrap();
        assert!(body.len() < APPEND_ANSWER_BYTES_MAX, "{} bytes", body.len());
    }

    #[test]
    fn a_part_travels_as_one_sealed_batch_and_decodes_to_the_same_records() {
        let headers = [("source", &b"web"[..]), ("trace", &b"42"[..])];
        let sent = [
            RecordRef {
                timestamp_ms: 1_000,
                key: Some(b"alice"),
                key_is_utf8: true,
                value: Some(br#"{"qty":1}"#),
                value_is_json: true,
                headers: &headers,
            },
            RecordRef {
                timestamp_ms: 1_005,
                key: None,
                key_is_utf8: false,
                value: None,
                value_is_json: false,
                headers: &[],
            },
        ];
        let mut builder = BatchBuilder::with_capacity(1024);
        sent.iter().for_each(|r| builder.push(r));
        let mut batch = builder.finish(ProducerInfo::NONE, None);
        stamp_batch(&mut batch, 0, 0);
        let view = BatchView::parse(&batch).unwrap();
        let mut pairs = Vec::new();
        let got = records_of_batch(&view, PartitionId(7), &mut pairs).unwrap();
        assert_eq!(got.len(), 2);
        for (g, s) in got.iter().zip(&sent) {
            assert_eq!(g.partition, Some(PartitionId(7)));
            assert_eq!(
                (g.record.timestamp_ms, g.record.key, g.record.value),
                (s.timestamp_ms, s.key, s.value)
            );
            assert_eq!(g.record.headers, s.headers);
            assert_eq!(g.record.value_is_json, s.value_is_json);
        }
        batch[70] ^= 1;
        assert!(BatchView::parse(&batch).is_err(), "a flipped bit is caught");
    }

    #[test]
    fn a_leaders_problem_keeps_its_code_and_says_whether_the_part_may_be_stored() {
        let at = (NodeId(2), "127.0.0.1:1".parse().unwrap());
        let body = br#"{"code":"not_enough_replicas","detail":"too few","status":503}"#;
        let answer = |status, body| PartAnswer {
            status,
            retry_after: Some(1),
            body,
        };
        match part_answer(&answer(StatusCode::SERVICE_UNAVAILABLE, body), 3, at) {
            PartResult::Failed(e, unconfirmed) => {
                assert_eq!((e.code, unconfirmed), ("not_enough_replicas", false));
                assert_eq!(e.retry_after_s, Some(1));
            }
            other => panic!("{other:?}"),
        }
        let body = br#"{"code":"request_timeout","detail":"slow","unconfirmed_records":3}"#;
        match part_answer(&answer(StatusCode::GATEWAY_TIMEOUT, body), 3, at) {
            PartResult::Failed(e, unconfirmed) => {
                assert_eq!((e.code, unconfirmed), ("request_timeout", true));
                assert!(!e.extra.contains_key("unconfirmed_records"));
            }
            other => panic!("{other:?}"),
        }
        let body = br#"{"base_offset":10,"records":3,"durability":"fsync"}"#;
        assert!(matches!(
            part_answer(&answer(StatusCode::OK, body), 3, at),
            PartResult::Stored(10, Durability::Fsync)
        ));
        assert!(matches!(
            part_answer(&answer(StatusCode::OK, body), 4, at),
            PartResult::Failed(_, true)
        ));
        assert_eq!(intern_code("Not A Code"), "forward_failed");
        assert_eq!(
            intern_code("topic_not_found"),
            intern_code("topic_not_found")
        );
    }
}
