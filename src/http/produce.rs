//! Produce (`POST .../records`): the query, then the body by content type (JSON whole,
//! NDJSON streamed, octet-stream as one record), handed to the broker as one slice of records.

use std::borrow::Cow;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;

use super::AppState;
use super::body::{
    body_too_large, bounded, content_type, parse_query, parse_u64, read_limited,
    unsupported_media_type,
};
use super::error::{ApiError, ApiResult};
use super::idempotency_key::{key_of, produce_with_key};
use super::json_records::{
    RecordPlace, RecordRules, as_produce_records, parse_json_body, parse_off_the_workers,
};
use super::ndjson::produce_ndjson;
use super::path::Path;
use super::produce_split::{ProduceFailure, produce_records};
use super::producers::producer_from_query;
use super::render::render_produce;
use crate::broker::{Acks, Broker, ProduceOutcome, ProduceRecord, RecordFate, now_ms};
use crate::limits::Limit;
use crate::log::batch::{ProducerInfo, RecordRef};
use crate::metadata::PartitionId;

/// Query of a produce request. Its values borrow the query string where they can (always,
/// through [`ProduceQuery::parse`]'s plain path).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProduceQuery<'a> {
    #[serde(borrow)]
    pub acks: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub timeout_ms: Option<Cow<'a, str>>,
    /// For `application/octet-stream`: the record's key, partition and timestamp.
    #[serde(borrow)]
    pub key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub partition: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub timestamp_ms: Option<Cow<'a, str>>,
    /// An idempotent produce: the session's id and epoch, and the request's sequence.
    #[serde(borrow)]
    pub producer_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub producer_epoch: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub sequence: Option<Cow<'a, str>>,
}

impl<'a> ProduceQuery<'a> {
    /// The query of a produce. A plain one (each pair `name=value`, every name a field and
    /// given once, nothing to decode: no `%` or `+`) is read here, borrowing its values;
    /// anything else goes through `serde_urlencoded` ([`parse_query`]), which answers what
    /// it always did. Both read a plain query the same way (a unit test holds them to it).
    pub fn parse(raw: Option<&'a str>) -> ApiResult<ProduceQuery<'a>> {
        match raw.map_or(Some(ProduceQuery::default()), Self::plain) {
            Some(q) => Ok(q),
            None => parse_query(raw),
        }
    }

    fn plain(raw: &'a str) -> Option<ProduceQuery<'a>> {
        if raw.bytes().any(|b| b == b'%' || b == b'+') {
            return None;
        }
        let mut q = ProduceQuery::default();
        for pair in raw.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=')?;
            let field = match name {
                "acks" => &mut q.acks,
                "timeout_ms" => &mut q.timeout_ms,
                "key" => &mut q.key,
                "partition" => &mut q.partition,
                "timestamp_ms" => &mut q.timestamp_ms,
                "producer_id" => &mut q.producer_id,
                "producer_epoch" => &mut q.producer_epoch,
                "sequence" => &mut q.sequence,
                _ => return None,
            };
            if field.replace(Cow::Borrowed(value)).is_some() {
                return None;
            }
        }
        Some(q)
    }
}

pub(super) struct ProduceParams {
    pub(super) acks: Acks,
    pub(super) timeout: Duration,
    /// [`ProducerInfo::NONE`] unless the produce is idempotent.
    pub(super) producer: ProducerInfo,
}

/// Whether a produce with this query reads its whole body before anything can refuse it:
/// its query is valid and it has no producer session (checked before the body). The
/// connection lane (`lane_connection`) waits for such a body itself and leaves any other
/// request to hyper, so a refusal still comes without waiting for the body.
pub(super) fn reads_body_first(broker: &Broker, query: Option<&str>) -> bool {
    ProduceQuery::parse(query)
        .and_then(|q| produce_params(&q, broker))
        .is_ok_and(|p| p.producer.producer_id < 0)
}

pub(super) fn produce_params(q: &ProduceQuery, broker: &Broker) -> ApiResult<ProduceParams> {
    let acks = match q.acks.as_deref() {
        None | Some("all") | Some("-1") => Acks::All,
        Some("leader") | Some("1") => Acks::Leader,
        Some("none") | Some("0") => Acks::None,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "'acks' must be all, leader or none, got '{other}'"
            )));
        }
    };
    let limits = broker.limits();
    let timeout_ms = bounded(
        "timeout_ms",
        q.timeout_ms.as_deref(),
        limits.wait_ms_max,
        limits,
        Limit::WaitMsMax,
    )?;
    let producer = producer_from_query(
        q.producer_id.as_deref(),
        q.producer_epoch.as_deref(),
        q.sequence.as_deref(),
    )?;
    Ok(ProduceParams {
        acks,
        timeout: Duration::from_millis(timeout_ms),
        producer,
    })
}

pub async fn produce(
    State(node): State<AppState>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    match key_of(&headers)? {
        Some(key) => produce_with_key(node, key, topic, query, headers, body).await,
        None => {
            let body = ProduceBody::Streamed {
                headers: &headers,
                body,
            };
            produce_body(&node, &topic, query.as_deref(), body).await
        }
    }
}

/// A produce's body: still to be read (with the request's headers), or read whole with its
/// head by the connection lane (`lane_connection`), which takes only JSON and octet-stream
/// bodies within `request_body_bytes_max`.
pub(super) enum ProduceBody<'h> {
    Streamed {
        headers: &'h HeaderMap,
        body: Body,
    },
    /// `media_type` as [`super::body::media_type`] reads the request's `Content-Type`.
    Whole {
        media_type: &'static str,
        bytes: Bytes,
    },
}

impl ProduceBody<'_> {
    /// The body's bytes, at most `limit` of them (413 past it).
    async fn read(self, limit: u64) -> ApiResult<Bytes> {
        match self {
            ProduceBody::Streamed { headers, body } => read_limited(headers, body, limit).await,
            ProduceBody::Whole { bytes, .. } if bytes.len() as u64 > limit => {
                Err(body_too_large(limit))
            }
            ProduceBody::Whole { bytes, .. } => Ok(bytes),
        }
    }
}

/// A produce once its `Idempotency-Key` (if any) is dealt with.
pub(super) async fn produce_body(
    node: &AppState,
    topic: &str,
    query: Option<&str>,
    body: ProduceBody<'_>,
) -> ApiResult<Response> {
    let outcome = produce_outcome(node, topic, query, body).await?;
    Ok(render_produce(&outcome))
}

/// What [`produce_body`] answers, before it is rendered.
pub(super) async fn produce_outcome(
    node: &AppState,
    topic: &str,
    query: Option<&str>,
    body: ProduceBody<'_>,
) -> ApiResult<ProduceOutcome> {
    let broker = &node.broker;
    let q = ProduceQuery::parse(query)?;
    let params = produce_params(&q, broker)?;
    let ct = match &body {
        ProduceBody::Streamed { headers, .. } => content_type(headers),
        ProduceBody::Whole { media_type, .. } => Cow::Borrowed(*media_type),
    };
    let idempotent = params.producer.producer_id >= 0;
    // On a cluster the sessions live on the controller: the partitions' leaders still fence
    // older epochs and deduplicate, but unknown ids are not refused here.
    if idempotent && !node.cluster.is_clustered() {
        node.producers.check(params.producer, topic)?;
    }
    let limit = broker.limits().request_body_bytes_max;
    let rules = RecordRules::new(broker.limits(), now_ms());
    // The topic is looked up (and maybe auto-created) only once the body has parsed, so a
    // body refused as unreadable leaves no new topic behind.
    let offsets = match &*ct {
        "application/json" | "" => {
            let bytes = body.read(limit).await?;
            let decoded = parse_off_the_workers(bytes.len(), || parse_json_body(&bytes, rules))?;
            let mut headers = Vec::new();
            let records = as_produce_records(&decoded, &mut headers);
            produce_records(
                node,
                topic,
                &records,
                (params.acks, params.timeout),
                params.producer,
            )
            .await
            .map_err(with_record_fates)?
        }
        "application/x-ndjson" | "application/jsonl" if idempotent => {
            return Err(ApiError::invalid(
                "an idempotent produce is one request, one sequence: send application/json or \
                 application/octet-stream (an NDJSON body is appended in several batches)",
            ));
        }
        "application/x-ndjson" | "application/jsonl" => {
            // The lane never reads an NDJSON body whole; were it to, it is streamed as read.
            let (headers, body) = match body {
                ProduceBody::Streamed { headers, body } => (headers, body),
                ProduceBody::Whole { bytes, .. } => (&HeaderMap::new(), Body::from(bytes)),
            };
            produce_ndjson(node, topic, headers, body, &params, rules).await?
        }
        "application/octet-stream" => {
            let bytes = body.read(limit).await?;
            let partition = match q.partition.as_deref() {
                Some(p) => Some(
                    u32::try_from(parse_u64("partition", p)?)
                        .map_err(|_| ApiError::invalid("'partition' is too large"))?,
                ),
                None => None,
            };
            let timestamp_ms = match q.timestamp_ms.as_deref() {
                Some(t) => t
                    .parse::<i64>()
                    .map_err(|_| ApiError::invalid("'timestamp_ms' must be an integer"))?,
                None => rules.now,
            };
            rules.check_timestamp(timestamp_ms, RecordPlace::Only)?;
            let record = ProduceRecord {
                partition: partition.map(PartitionId),
                record: RecordRef {
                    timestamp_ms,
                    key: q.key.as_deref().map(str::as_bytes),
                    key_is_utf8: true,
                    value: Some(&bytes),
                    value_is_json: false,
                    headers: &[],
                },
            };
            // Its fate too (stored, unconfirmed): an `Idempotency-Key` keeps an answer that
            // says the record may be stored, and a retry then replays it.
            produce_records(
                node,
                topic,
                &[record],
                (params.acks, params.timeout),
                params.producer,
            )
            .await
            .map_err(with_record_fates)?
        }
        other => {
            return Err(unsupported_media_type(
                other,
                "application/json, application/x-ndjson or application/octet-stream",
            ));
        }
    };
    Ok(offsets)
}

/// The problem for a JSON produce that failed after an append: which records were stored.
///
/// A JSON body may span partitions, which take their records one partition at a time, so the
/// records stored are not always the first N of the body (as they are for NDJSON). `offsets`
/// has one entry per record of the body, in order: `{"partition":p,"offset":o}` if stored,
/// `{"partition":p,"unconfirmed":true}` if it may or may not have been, `null` if not; a
/// client resends the `null` ones (and decides about the unconfirmed ones).
pub(super) fn with_record_fates(failed: ProduceFailure) -> ApiError {
    record_fates(failed, true)
}

/// [`with_record_fates`], the detail saying the counts when `explain`. A leader's answer to
/// a part of a split produce does not explain: the broker that split it explains the whole
/// body's fates once (it said them twice before).
pub(super) fn record_fates(failed: ProduceFailure, explain: bool) -> ApiError {
    let e = failed.error;
    if failed.fates.is_empty() {
        return e;
    }
    let (mut stored, mut unconfirmed) = (0u64, 0u64);
    let offsets: Vec<serde_json::Value> = failed
        .fates
        .iter()
        .map(|fate| match *fate {
            RecordFate::Stored(p, o) => {
                stored += 1;
                serde_json::json!({"partition": p, "offset": o})
            }
            RecordFate::Unconfirmed(p) => {
                unconfirmed += 1;
                serde_json::json!({"partition": p, "unconfirmed": true})
            }
            RecordFate::NotStored => serde_json::Value::Null,
        })
        .collect();
    let detail = match explain {
        true => format!(
            "{} ({stored} of the body's {} records were stored and {unconfirmed} may or may \
             not have been; 'offsets' has one entry per record: its offset if stored, \
             'unconfirmed' if unsure, null if not stored)",
            e.detail,
            offsets.len()
        ),
        false => e.detail.clone(),
    };
    ApiError { detail, ..e }
        .with("appended_records", stored)
        .with("unconfirmed_records", unconfirmed)
        .with("offsets", offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_urlencoded makes of `raw` (the one reading before the plain path), as
    /// text: the fields, or the problem's detail.
    fn by_serde(raw: &str) -> String {
        match parse_query::<ProduceQuery>(Some(raw)) {
            Ok(q) => format!("{q:?}"),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn a_plain_query_reads_as_serde_urlencoded_reads_it() {
        let plain = [
            "",
            "acks=all",
            "acks=all&timeout_ms=500",
            "acks=",
            "&acks=leader&&",
            "key=k1&partition=2&timestamp_ms=7&acks=none",
            "producer_id=3&producer_epoch=0&sequence=9",
            "acks=a=b",
        ];
        for raw in plain {
            let q = ProduceQuery::plain(raw).unwrap_or_else(|| panic!("plain: {raw}"));
            assert_eq!(format!("{q:?}"), by_serde(raw), "{raw}");
            assert_eq!(
                format!("{:?}", ProduceQuery::parse(Some(raw))),
                format!("{:?}", parse_query::<ProduceQuery>(Some(raw))),
                "{raw}"
            );
        }
        // Not plain: serde_urlencoded decides, refusals included.
        let other = [
            "acks",
            "acks=all&acks=none",
            "ack=all",
            "key=a%20b",
            "key=a+b",
            "key=%FF",
            "acks=all&bogus=1",
        ];
        for raw in other {
            assert!(ProduceQuery::plain(raw).is_none(), "{raw}");
            assert_eq!(
                format!("{:?}", ProduceQuery::parse(Some(raw))),
                format!("{:?}", parse_query::<ProduceQuery>(Some(raw))),
                "{raw}"
            );
        }
        assert_eq!(
            format!("{:?}", ProduceQuery::parse(None).map(|q| q.acks)),
            "Ok(None)"
        );
    }
}
