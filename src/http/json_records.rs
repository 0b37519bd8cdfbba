//! Parsing a JSON or NDJSON produce body into records the broker takes.
//!
//! The parser borrows from the body (keys and values are not copied: a value is kept as its
//! raw JSON text) and decodes each record as soon as it is parsed, so the records are never
//! held twice. It accepts exactly what the derived `Deserialize` of [`JsonRecord`] accepts,
//! with the same error messages (the tests below compare the two).

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::value::RawValue;

use axum::http::StatusCode;

use super::error::{ApiError, ApiResult};
use crate::broker::ProduceRecord;
use crate::limits::{Limit, Limits};
use crate::log::batch::RecordRef;
use crate::metadata::PartitionId;

/// One record of a JSON or NDJSON produce, borrowing from the body.
///
/// The produce path fills it field by field in [`RecordSeed`]; the derived `Deserialize`
/// is the reference that parser is tested against (same input accepted, same errors).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonRecord<'a> {
    /// The outer `Option` says whether the field is there at all (a `null` is there): a
    /// record giving both `key` and `key_b64` (or `value` and `value_b64`) is refused even
    /// when one of them is `null`, since which one was meant is a guess.
    #[serde(borrow, default, deserialize_with = "present")]
    pub key: Option<Option<Cow<'a, str>>>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub key_b64: Option<Option<Cow<'a, str>>>,
    /// Kept as raw JSON text; `null` or absent is a tombstone (no value).
    #[serde(borrow, default, deserialize_with = "present")]
    pub value: Option<Option<&'a RawValue>>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub value_b64: Option<Option<Cow<'a, str>>>,
    /// Boxed: most records have none, and the record is moved as it is parsed and decoded.
    #[serde(borrow, default)]
    pub headers: Option<Box<Headers<'a>>>,
    #[serde(default)]
    pub partition: Option<u32>,
    #[serde(default)]
    pub timestamp_ms: Option<i64>,
}

/// A field that is there, `null` or not (`default` covers the field left out).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A record's headers as a `BTreeMap` would hold them (sorted by name, the last of a
/// repeated name kept), in one vector: a tree node per record cost about 500 bytes.
/// Names and values borrow from the body where they have no escapes.
#[derive(Debug, Default)]
pub struct Headers<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> std::ops::Deref for Headers<'a> {
    type Target = [(Cow<'a, str>, Cow<'a, str>)];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Headers<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HeadersVisitor(std::marker::PhantomData))
    }
}

struct HeadersVisitor<'a>(std::marker::PhantomData<Headers<'a>>);

impl<'de: 'a, 'a> serde::de::Visitor<'de> for HeadersVisitor<'a> {
    type Value = Headers<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut headers = Vec::new();
        while let Some((name, value)) = map.next_entry::<BorrowedStr<'de>, BorrowedStr<'de>>()? {
            headers.push((name.0, value.0));
        }
        if headers.len() > 1 {
            // Newest first, then a stable sort: the first of each run of equal names is
            // the one given last, and `dedup_by` keeps the first.
            headers.reverse();
            headers.sort_by(|a, b| a.0.cmp(&b.0));
            headers.dedup_by(|later, kept| later.0 == kept.0);
        }
        Ok(Headers(headers))
    }
}

/// A record's decoded bytes, owned only where base64 had to be decoded or JSON unescaped.
struct Decoded<'a> {
    key: Option<Cow<'a, [u8]>>,
    key_is_utf8: bool,
    value: Option<Cow<'a, [u8]>>,
    value_is_json: bool,
    headers: Option<Box<Headers<'a>>>,
    partition: Option<u32>,
    timestamp_ms: i64,
}

/// Decodes one parsed record, taking over its strings (a key that had escapes, and so was
/// copied when parsed, is moved here, not copied again).
fn decode_record(r: JsonRecord<'_>, now: i64, line: Option<usize>) -> ApiResult<Decoded<'_>> {
    let at = |msg: String| match line {
        Some(l) => ApiError::invalid(format!("line {l}: {msg}")).with("line", l as u64),
        None => ApiError::invalid(msg),
    };
    let (key, key_is_utf8) = match (r.key, r.key_b64) {
        (Some(_), Some(_)) => {
            return Err(at("a record has either 'key' or 'key_b64', not both".into()));
        }
        (Some(Some(k)), None) => (Some(str_bytes(k)), true),
        (None, Some(Some(k))) => (
            Some(Cow::Owned(
                B64.decode(k.as_bytes())
                    .map_err(|e| at(format!("'key_b64' is not base64: {e}")))?,
            )),
            false,
        ),
        _ => (None, false),
    };
    let (value, value_is_json) = match (r.value, r.value_b64) {
        (Some(_), Some(_)) => {
            return Err(at(
                "a record has either 'value' or 'value_b64', not both".into()
            ));
        }
        (Some(Some(v)), None) => (Some(Cow::Borrowed(v.get().as_bytes())), true),
        (None, Some(Some(v))) => (
            Some(Cow::Owned(B64.decode(v.as_bytes()).map_err(|e| {
                at(format!("'value_b64' is not base64: {e}"))
            })?)),
            false,
        ),
        _ => (None, false),
    };
    Ok(Decoded {
        key,
        key_is_utf8,
        value,
        value_is_json,
        headers: r.headers,
        partition: r.partition,
        timestamp_ms: r.timestamp_ms.unwrap_or(now),
    })
}

fn str_bytes(s: Cow<'_, str>) -> Cow<'_, [u8]> {
    match s {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    }
}

/// What every record of a produce body is checked against while the body is parsed.
#[derive(Debug, Clone, Copy)]
pub(super) struct RecordRules {
    /// When the request arrived: the timestamp of a record that gives none, and the clock
    /// the timestamp bounds are measured from.
    pub(super) now: i64,
    /// `records_per_request_max`: the parse stops at the record past it.
    records_max: u32,
    json_depth_max: u32,
    timestamp_ms_ahead_max: u64,
    timestamp_ms_behind_max: u64,
}

impl RecordRules {
    pub(super) fn new(limits: &Limits, now: i64) -> RecordRules {
        RecordRules {
            now,
            records_max: limits.records_per_request_max,
            json_depth_max: limits.json_depth_max,
            timestamp_ms_ahead_max: limits.timestamp_ms_ahead_max,
            timestamp_ms_behind_max: limits.timestamp_ms_behind_max,
        }
    }

    /// The answer to a body with more than `records_max` records.
    pub(super) fn too_many_records(&self) -> ApiError {
        let max = self.records_max;
        ApiError::limit(
            StatusCode::BAD_REQUEST,
            "limit_exceeded",
            Limit::RecordsPerRequestMax,
            u64::from(max),
            format!("the body holds more than {max} records"),
        )
    }

    /// Refuses a `timestamp_ms` further from `now` than the limits allow.
    pub(super) fn check_timestamp(&self, timestamp_ms: i64, at: RecordPlace) -> ApiResult<()> {
        let ahead = i128::from(timestamp_ms) - i128::from(self.now);
        let (limit_name, limit, how) = if ahead > i128::from(self.timestamp_ms_ahead_max) {
            (
                Limit::TimestampMsAheadMax,
                self.timestamp_ms_ahead_max,
                "ahead of",
            )
        } else if -ahead > i128::from(self.timestamp_ms_behind_max) {
            (
                Limit::TimestampMsBehindMax,
                self.timestamp_ms_behind_max,
                "behind",
            )
        } else {
            return Ok(());
        };
        Err(at.name(ApiError::limit(
            StatusCode::BAD_REQUEST,
            "invalid_timestamp",
            limit_name,
            limit,
            format!(
                "{at}'timestamp_ms' {timestamp_ms} is more than {limit} ms {how} the broker's \
                 clock ({}; {limit_name})",
                self.now
            ),
        )))
    }

    /// Refuses a decoded record whose JSON value or timestamp the limits do not allow.
    fn check(&self, d: &Decoded<'_>, at: RecordPlace) -> ApiResult<()> {
        if d.value_is_json
            && let Some(value) = d.value.as_deref()
        {
            match json_value_fault(value, self.json_depth_max) {
                None => {}
                Some(JsonValueFault::TooDeep) => {
                    let max = self.json_depth_max;
                    return Err(at.name(ApiError::limit(
                        StatusCode::BAD_REQUEST,
                        "limit_exceeded",
                        Limit::JsonDepthMax,
                        u64::from(max),
                        format!(
                            "{at}'value' nests arrays and objects more than {max} deep ({})",
                            Limit::JsonDepthMax
                        ),
                    )));
                }
                Some(JsonValueFault::LoneSurrogate) => {
                    return Err(at.name(ApiError::invalid(format!(
                        "{at}'value' holds a string with a lone UTF-16 surrogate escape, \
                         which is not a character"
                    ))));
                }
                Some(JsonValueFault::NumberNotFinite) => {
                    return Err(at.name(ApiError::invalid(format!(
                        "{at}'value' holds a number too large for a double (not finite)"
                    ))));
                }
            }
        }
        self.check_timestamp(d.timestamp_ms, at)
    }
}

/// Where a record is in the request, to name it in a problem.
#[derive(Debug, Clone, Copy)]
pub(super) enum RecordPlace {
    /// The record's index in a JSON body's `records`, from 0.
    Index(u64),
    /// The NDJSON line, from 1.
    Line(usize),
    /// The one record of an octet-stream body.
    Only,
}

impl RecordPlace {
    /// Adds the place to the problem's members (`record_index` or `line`).
    fn name(self, e: ApiError) -> ApiError {
        match self {
            RecordPlace::Index(i) => e.with("record_index", i),
            RecordPlace::Line(l) => e.with("line", l as u64),
            RecordPlace::Only => e,
        }
    }
}

/// The prefix of a detail that names the record: `records[3]: `, `line 4: `, or nothing.
impl std::fmt::Display for RecordPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordPlace::Index(i) => write!(f, "records[{i}]: "),
            RecordPlace::Line(l) => write!(f, "line {l}: "),
            RecordPlace::Only => Ok(()),
        }
    }
}

/// Records decoded as they are parsed, and the first record that failed to decode.
///
/// A body that is not valid JSON is refused as such even when an earlier record also failed
/// to decode, as when the whole body was parsed before any record was decoded: so the first
/// decode failure is kept aside until the parse has finished. Crossing `records_max` is the
/// exception: it stops the parse at once, so a body of millions of tiny records never
/// becomes millions of decoded records.
struct DecodedRecords<'a> {
    records: Vec<Decoded<'a>>,
    /// Headers of all the records, so a batch without any skips gathering them.
    headers: usize,
    failed: Option<ApiError>,
    rules: RecordRules,
    /// Records of the request parsed so far, this batch's and any before it (NDJSON), the
    /// ones that failed to decode included.
    seen: u64,
}

/// The parse stopped at a record past `records_max`.
struct TooManyRecords;

impl<'a> DecodedRecords<'a> {
    fn new(rules: RecordRules, seen_before: u64, presized: usize) -> Self {
        DecodedRecords {
            records: Vec::with_capacity(presized),
            headers: 0,
            failed: None,
            rules,
            seen: seen_before,
        }
    }

    fn push(&mut self, record: JsonRecord<'a>, line: Option<usize>) -> Result<(), TooManyRecords> {
        self.push_decoded(line, |now| decode_record(record, now, line))
    }

    /// [`DecodedRecords::push`] of the record `decode` makes (given the request's clock).
    fn push_decoded(
        &mut self,
        line: Option<usize>,
        decode: impl FnOnce(i64) -> ApiResult<Decoded<'a>>,
    ) -> Result<(), TooManyRecords> {
        let index = self.seen;
        self.seen += 1;
        if self.seen > u64::from(self.rules.records_max) {
            return Err(TooManyRecords);
        }
        if self.failed.is_some() {
            return Ok(());
        }
        let place = match line {
            Some(l) => RecordPlace::Line(l),
            None => RecordPlace::Index(index),
        };
        let decoded = decode(self.rules.now).and_then(|d| self.rules.check(&d, place).map(|()| d));
        match decoded {
            Ok(d) => {
                self.headers += d.headers.as_ref().map_or(0, |h| h.len());
                self.records.push(d);
            }
            Err(e) => self.failed = Some(e),
        }
        Ok(())
    }

    fn finish(self) -> ApiResult<DecodedBatch<'a>> {
        match self.failed {
            Some(e) => Err(e),
            None => Ok(DecodedBatch {
                records: self.records,
                headers: self.headers,
            }),
        }
    }
}

/// The decoded records of a body (or of a batch of NDJSON lines).
pub(super) struct DecodedBatch<'a> {
    records: Vec<Decoded<'a>>,
    /// How many headers the records have in all.
    headers: usize,
}

impl DecodedBatch<'_> {
    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Bytes per record assumed to size the records vector before parsing (serde_json gives no
/// length): growing it by doubling moved every decoded record about twice. A body of
/// smaller records still parses; the vector then grows as usual.
const GUESSED_RECORD_BYTES: usize = 32;
/// Cap on that guess (16,384 decoded records, about 1.3 MB), so a large body does not
/// reserve far more than it needs; past it, doubling's copies are amortized anyway.
const RECORDS_PRESIZED_MAX: usize = 16 * 1024;

/// Bodies up to this size are parsed on the async worker thread; larger ones (up to
/// `request_body_bytes_max`, 64 MiB by default, a parse of tens of milliseconds or more)
/// with `block_in_place`, so the worker's other tasks move to another thread meanwhile.
const PARSE_ON_WORKER_BYTES_MAX: usize = 256 * 1024;

/// Runs `parse` of `len` bytes of body, off the async workers when it is large.
pub(super) fn parse_off_the_workers<T>(len: usize, parse: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if len > PARSE_ON_WORKER_BYTES_MAX && multi_thread {
        tokio::task::block_in_place(parse)
    } else {
        parse()
    }
}

/// Parses a JSON produce body, `{"records":[...]}`, decoding each record as soon as it is
/// parsed: the records are never held as [`JsonRecord`]s in a vector of their own.
pub(super) fn parse_json_body(bytes: &[u8], rules: RecordRules) -> ApiResult<DecodedBatch<'_>> {
    let mut out;
    let parsed = match one_plain_string_value(bytes) {
        Some(value) => {
            // The record serde would read: a value's JSON text, nothing else. Past
            // `records_max` it is counted as seen, as serde's parse counts it.
            out = DecodedRecords::new(rules, 0, 1);
            let _ = out.push_decoded(None, |now| {
                Ok(Decoded {
                    key: None,
                    key_is_utf8: false,
                    value: Some(Cow::Borrowed(value.as_bytes())),
                    value_is_json: true,
                    headers: None,
                    partition: None,
                    timestamp_ms: now,
                })
            });
            Ok(())
        }
        None => {
            let presized = (bytes.len() / GUESSED_RECORD_BYTES)
                .min(RECORDS_PRESIZED_MAX)
                .min(rules.records_max as usize);
            out = DecodedRecords::new(rules, 0, presized);
            parse_json_records(bytes, &mut out)
        }
    };
    if out.seen > u64::from(rules.records_max) {
        return Err(rules.too_many_records());
    }
    parsed.map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
    out.finish()
}

/// The value of the most common produce body, one record with a plain string value:
/// `{"records":[{"value":"..."}]}`, JSON whitespace allowed between tokens, the string
/// without escapes or control characters and valid UTF-8. Its JSON text, quotes included (as
/// a `RawValue` holds it); None for any other body, which serde reads (a test holds the two
/// to the same records and refusals).
fn one_plain_string_value(bytes: &[u8]) -> Option<&str> {
    let mut at = 0;
    for token in [
        &b"{"[..],
        b"\"records\"",
        b":",
        b"[",
        b"{",
        b"\"value\"",
        b":",
        b"\"",
    ] {
        at = after_token(bytes, at, token)?;
    }
    let start = at - 1;
    let end = at + memchr::memchr2(b'"', b'\\', &bytes[at..])?;
    // A fold, not `any`: no early exit, so it runs over whole vectors.
    let control = bytes[at..end]
        .iter()
        .fold(false, |seen, &b| seen | (b < 0x20));
    if bytes[end] != b'"' || control {
        return None;
    }
    let value = std::str::from_utf8(&bytes[start..=end]).ok()?;
    at = end + 1;
    for token in [b"}", b"]", b"}"] {
        at = after_token(bytes, at, token)?;
    }
    (skip_json_whitespace(bytes, at) == bytes.len()).then_some(value)
}

/// Where `bytes` goes on after `token`, the next thing after whitespace from `at`.
fn after_token(bytes: &[u8], at: usize, token: &[u8]) -> Option<usize> {
    let at = skip_json_whitespace(bytes, at);
    bytes
        .get(at..)?
        .starts_with(token)
        .then_some(at + token.len())
}

fn skip_json_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The parse of [`parse_json_body`], into `out`.
fn parse_json_records<'a>(bytes: &'a [u8], out: &mut DecodedRecords<'a>) -> serde_json::Result<()> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde::de::DeserializeSeed::deserialize(BodySeed { out }, &mut de).and_then(|()| de.end())
}

/// The body object: exactly one field, `records` (what a derived `deny_unknown_fields`
/// struct would accept, with the same error messages).
struct BodySeed<'s, 'a> {
    out: &'s mut DecodedRecords<'a>,
}

const BODY_FIELDS: &[&str] = &["records"];

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum BodyField {
    Records,
}

impl<'de> serde::de::DeserializeSeed<'de> for BodySeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_struct("JsonProduce", BODY_FIELDS, self)
    }
}

impl<'de> serde::de::Visitor<'de> for BodySeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("struct JsonProduce")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let records = RecordsSeed { out: self.out };
        match seq.next_element_seed(records)? {
            Some(()) => Ok(()),
            None => Err(serde::de::Error::invalid_length(
                0,
                &"struct JsonProduce with 1 element",
            )),
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(BodyField::Records) = map.next_key()? {
            if seen {
                return Err(serde::de::Error::duplicate_field("records"));
            }
            seen = true;
            map.next_value_seed(RecordsSeed {
                out: &mut *self.out,
            })?;
        }
        if !seen {
            return Err(serde::de::Error::missing_field("records"));
        }
        Ok(())
    }
}

/// The `records` array: each element is parsed as a [`JsonRecord`] and decoded at once.
struct RecordsSeed<'s, 'a> {
    out: &'s mut DecodedRecords<'a>,
}

impl<'de> serde::de::DeserializeSeed<'de> for RecordsSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RecordsSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.out;
        while let Some(()) = seq.next_element_seed(RecordSeed {
            out: &mut *out,
            line: None,
        })? {}
        Ok(())
    }
}

/// One record: its fields are read into a [`JsonRecord`] in place, which is then decoded
/// and appended, accepting what the derived `JsonRecord` accepts with the same errors.
struct RecordSeed<'s, 'a> {
    out: &'s mut DecodedRecords<'a>,
    line: Option<usize>,
}

const RECORD_FIELDS: &[&str] = &[
    "key",
    "key_b64",
    "value",
    "value_b64",
    "headers",
    "partition",
    "timestamp_ms",
];

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum RecordField {
    Key,
    KeyB64,
    Value,
    ValueB64,
    Headers,
    Partition,
    TimestampMs,
}

impl<'de> serde::de::DeserializeSeed<'de> for RecordSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_struct("JsonRecord", RECORD_FIELDS, self)
    }
}

/// Reads a field's value, once: a second occurrence, even after a `null`, is the derived
/// code's `duplicate field` error. `seen` has one bit per field of [`RECORD_FIELDS`].
fn set_once<'de, T: Deserialize<'de>, A: serde::de::MapAccess<'de>>(
    field: &mut Option<T>,
    index: usize,
    seen: &mut u8,
    map: &mut A,
) -> Result<(), A::Error> {
    first_time(index, seen)?;
    *field = map.next_value()?;
    Ok(())
}

/// [`set_once`] for a field whose presence matters: a `null` is `Some(None)`.
fn set_present<'de, T: Deserialize<'de>, A: serde::de::MapAccess<'de>>(
    field: &mut Option<Option<T>>,
    index: usize,
    seen: &mut u8,
    map: &mut A,
) -> Result<(), A::Error> {
    let mut value = None;
    set_once(&mut value, index, seen, map)?;
    *field = Some(value);
    Ok(())
}

fn first_time<E: serde::de::Error>(index: usize, seen: &mut u8) -> Result<(), E> {
    if *seen & (1 << index) != 0 {
        return Err(E::duplicate_field(RECORD_FIELDS[index]));
    }
    *seen |= 1 << index;
    Ok(())
}

/// A JSON string kept borrowed from the body when it has no escapes. `Cow<str>`'s own
/// `Deserialize` always copies into a `String`, one allocation per key or header.
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_string(BorrowedStrVisitor)
    }
}

struct BorrowedStrVisitor;

impl<'de> serde::de::Visitor<'de> for BorrowedStrVisitor {
    type Value = BorrowedStr<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(BorrowedStr(Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(BorrowedStr(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(BorrowedStr(Cow::Owned(v)))
    }
}

impl<'de> serde::de::Visitor<'de> for RecordSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("struct JsonRecord")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let record = JsonRecord {
            key: seq.next_element()?,
            key_b64: seq.next_element()?,
            value: seq.next_element()?,
            value_b64: seq.next_element()?,
            headers: seq.next_element()?.flatten(),
            partition: seq.next_element()?.flatten(),
            timestamp_ms: seq.next_element()?.flatten(),
        };
        self.out.push(record, self.line).map_err(too_many)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut r = JsonRecord {
            key: None,
            key_b64: None,
            value: None,
            value_b64: None,
            headers: None,
            partition: None,
            timestamp_ms: None,
        };
        let mut seen = 0u8;
        let s = &mut seen;
        while let Some(field) = map.next_key()? {
            match field {
                RecordField::Key => {
                    first_time(0, s)?;
                    r.key = Some(map.next_value::<Option<BorrowedStr<'de>>>()?.map(|k| k.0));
                }
                RecordField::KeyB64 => set_present(&mut r.key_b64, 1, s, &mut map)?,
                RecordField::Value => set_present(&mut r.value, 2, s, &mut map)?,
                RecordField::ValueB64 => set_present(&mut r.value_b64, 3, s, &mut map)?,
                RecordField::Headers => {
                    first_time(4, s)?;
                    r.headers = map.next_value::<Option<Headers<'de>>>()?.map(Box::new);
                }
                RecordField::Partition => set_once(&mut r.partition, 5, s, &mut map)?,
                RecordField::TimestampMs => set_once(&mut r.timestamp_ms, 6, s, &mut map)?,
            }
        }
        self.out.push(r, self.line).map_err(too_many)
    }
}

/// The records as the broker takes them, borrowing from `decoded`; `headers` holds every
/// record's headers, one after another, so a batch needs one header vector, not one per record.
pub(super) fn as_produce_records<'a>(
    decoded: &'a DecodedBatch<'a>,
    headers: &'a mut Vec<(&'a str, &'a [u8])>,
) -> Vec<ProduceRecord<'a>> {
    if decoded.headers > 0 {
        headers.reserve_exact(decoded.headers);
        for h in decoded.records.iter().filter_map(|d| d.headers.as_deref()) {
            headers.extend(
                h.iter()
                    .map(|(name, value)| (name.as_ref(), value.as_bytes())),
            );
        }
    }
    let mut rest: &'a [(&'a str, &'a [u8])] = headers;
    let mut records = Vec::with_capacity(decoded.records.len());
    for d in &decoded.records {
        let (own, after) = rest.split_at(d.headers.as_ref().map_or(0, |h| h.len()));
        rest = after;
        records.push(ProduceRecord {
            partition: d.partition.map(PartitionId),
            record: RecordRef {
                timestamp_ms: d.timestamp_ms,
                key: d.key.as_deref(),
                key_is_utf8: d.key_is_utf8,
                value: d.value.as_deref(),
                value_is_json: d.value_is_json,
                headers: own,
            },
        });
    }
    records
}

/// Parses and decodes each line; as for a JSON body, a line that is not valid JSON is
/// reported before an earlier line that failed to decode.
///
/// `seen_before` records of the body came in earlier batches: they count toward `records_max`.
pub(super) fn parse_ndjson_lines<'a>(
    bytes: &'a [u8],
    line_no: &mut usize,
    rules: RecordRules,
    seen_before: u64,
) -> ApiResult<DecodedBatch<'a>> {
    let mut out = DecodedRecords::new(rules, seen_before, 0);
    for line in bytes.split(|&b| b == b'\n') {
        *line_no += 1;
        let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
        if trimmed.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut de = serde_json::Deserializer::from_slice(trimmed);
        let seed = RecordSeed {
            out: &mut out,
            line: Some(*line_no),
        };
        let parsed = serde::de::DeserializeSeed::deserialize(seed, &mut de).and_then(|()| de.end());
        if out.seen > u64::from(rules.records_max) {
            return Err(rules.too_many_records());
        }
        parsed.map_err(|e| {
            ApiError::invalid(format!("line {}: invalid JSON record: {e}", *line_no))
                .with("line", *line_no as u64)
        })?;
    }
    // The split after a trailing newline yields one empty piece that is not a line.
    if bytes.last() == Some(&b'\n') {
        *line_no -= 1;
    }
    out.finish()
}

/// The serde error that stops a parse at the record past `records_max` (the caller answers
/// with [`RecordRules::too_many_records`], not with this text).
fn too_many<E: serde::de::Error>(_: TooManyRecords) -> E {
    E::custom(format_args!(
        "more records than {}",
        Limit::RecordsPerRequestMax
    ))
}

/// Why a record's JSON value is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonValueFault {
    /// Arrays and objects nested deeper than `json_depth_max`.
    TooDeep,
    /// A `\uD800`-`\uDFFF` escape that is not half of a surrogate pair: no character, and
    /// many parsers refuse the whole document.
    LoneSurrogate,
    /// A number too large for an IEEE double (`1e400`): most parsers read it as infinity or fail.
    NumberNotFinite,
}

/// Scans a value that serde_json has already accepted as JSON text, which the raw value
/// keeps unchecked for depth, surrogates and number range. One pass, no allocation.
fn json_value_fault(value: &[u8], depth_max: u32) -> Option<JsonValueFault> {
    let mut depth = 0u32;
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > depth_max {
                    return Some(JsonValueFault::TooDeep);
                }
                i += 1;
            }
            b']' | b'}' => {
                depth -= 1;
                i += 1;
            }
            b'"' => match string_end(value, i + 1) {
                Ok(end) => i = end,
                Err(fault) => return Some(fault),
            },
            b'-' | b'0'..=b'9' => {
                let end = value[i..]
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .map_or(value.len(), |n| i + n);
                if !number_is_finite(&value[i..end]) {
                    return Some(JsonValueFault::NumberNotFinite);
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    None
}

/// Walks a JSON string from just after its opening quote; returns the index just after its
/// closing quote, or the fault found in it.
fn string_end(value: &[u8], mut i: usize) -> Result<usize, JsonValueFault> {
    while i < value.len() {
        // Most of a value's bytes are string content: skip to the next quote or escape.
        i += memchr::memchr2(b'"', b'\\', &value[i..]).unwrap_or(value.len() - i);
        match value.get(i) {
            None => break,
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') if value.get(i + 1) == Some(&b'u') => {
                let unit = hex4(value, i + 2);
                i += 6;
                if (0xDC00..=0xDFFF).contains(&unit) {
                    return Err(JsonValueFault::LoneSurrogate);
                }
                if (0xD800..=0xDBFF).contains(&unit) {
                    let next_is_low = value.get(i..i + 2) == Some(&b"\\u"[..])
                        && (0xDC00..=0xDFFF).contains(&hex4(value, i + 2));
                    if !next_is_low {
                        return Err(JsonValueFault::LoneSurrogate);
                    }
                    i += 6;
                }
            }
            _ => i += 2,
        }
    }
    Ok(i)
}

/// The UTF-16 unit of the four hex digits at `at` (serde_json has checked they are hex).
fn hex4(value: &[u8], at: usize) -> u32 {
    value
        .get(at..at + 4)
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

/// Whether a JSON number reads as a finite double. Most numbers are short and have no
/// exponent, and those are always finite; only the rest are parsed.
fn number_is_finite(number: &[u8]) -> bool {
    let short = number.len() <= 300;
    if short && !number.iter().any(|&b| b == b'e' || b == b'E') {
        return true;
    }
    std::str::from_utf8(number)
        .ok()
        .and_then(|n| n.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// What the body parser replaced: the whole body parsed into `JsonRecord`s by derived
    /// code, then each record decoded in turn.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct JsonProduce<'a> {
        #[serde(borrow)]
        records: Vec<JsonRecord<'a>>,
    }

    fn rules(now: i64) -> RecordRules {
        RecordRules::new(&Limits::default(), now)
    }

    type Flat = (
        Option<Vec<u8>>,
        bool,
        Option<Vec<u8>>,
        bool,
        Vec<(String, String)>,
        Option<u32>,
        i64,
    );

    fn flat(d: &Decoded<'_>) -> Flat {
        (
            d.key.as_deref().map(<[u8]>::to_vec),
            d.key_is_utf8,
            d.value.as_deref().map(<[u8]>::to_vec),
            d.value_is_json,
            d.headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            d.partition,
            d.timestamp_ms,
        )
    }

    fn reference(body: &str) -> Result<Vec<Flat>, String> {
        reference_bytes(body.as_bytes())
    }

    fn reference_bytes(body: &[u8]) -> Result<Vec<Flat>, String> {
        let parsed: JsonProduce<'_> =
            serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
        parsed
            .records
            .into_iter()
            .map(|r| decode_record(r, 7, None).map(|d| flat(&d)))
            .collect::<ApiResult<_>>()
            .map_err(|e| e.detail)
    }

    #[test]
    fn json_body_parses_and_fails_as_derived_parse_then_decode() {
        let bodies = [
            r#"{"records":[{"value":"a"},{"value":{"x":[1,2]}},{"value":null},{}]}"#,
            r#"{"records":[{"key":"k\n\u00e9","value":1,"partition":3,"timestamp_ms":-5}]}"#,
            r#"{"records":[{"key_b64":"/w==","value_b64":"AAE="}]}"#,
            r#"{"records":[{"value":1,"headers":{"b":"2","a":"1","b":"3","\u0063":"x"}},{"value":2,"headers":null},{"headers":{"z":""}}]}"#,
            r#"{"records":[]}"#,
            r#"[[{"value":1}]]"#,
            r#"[]"#,
            r#"{}"#,
            r#"{"records":[],"records":[]}"#,
            r#"{"records":[],"other":1}"#,
            r#"{"records":{}}"#,
            r#"{"records":[{"value":1,"extra":2}]}"#,
            r#"{"records":[{"value":1,"value":2}]}"#,
            r#"{"records":[{"value":null,"value":2}]}"#,
            r#"{"records":[{"headers":null,"partition":1,"headers":{}}]}"#,
            r#"{"records":[["k",null,7,null,{"h":"v"},2,9],[null],[],["k","eA=="]]}"#,
            r#"{"records":[[null,null,1,null,null,0,0,"extra"]]}"#,
            r#"{"records":[{"partition":-1}]}"#,
            r#"{"records":[{"timestamp_ms":1.5}]}"#,
            r#"{"records":[{"key":5}]}"#,
            r#"{"records":[1]}"#,
            r#"{"records":[{"key":"a\"b","headers":{"x\ty":"v\u0041","x\ty":"w","n":null}}]}"#,
            r#"{"records":[{"key":"k","headers":[]}]}"#,
            r#"{"records":[{"headers":{"a":"1",}}]}"#,
            r#"{"records":[{"headers":{"a":"1","a":2}}]}"#,
            r#"{"records":[{"value":1,"headers":{"n":5}}]}"#,
            r#"{"records":[{"value":1,"timestamp_ms":"yesterday"}]}"#,
            r#"{"records":[{"key":"x","key_b64":"eA=="}]}"#,
            r#"{"records":[{"key":null,"key_b64":"eA==","value":1}]}"#,
            r#"{"records":[{"key_b64":null,"key":"x"}]}"#,
            r#"{"records":[{"value":null,"value_b64":"eA=="}]}"#,
            r#"{"records":[{"value_b64":null,"value":{"a":1}}]}"#,
            r#"{"records":[{"key":null,"value":null},{"key_b64":null,"value_b64":null}]}"#,
            r#"{"records":[{"value":1},{"value_b64":"***"},{"key_b64":"%%%"}]}"#,
            r#"{"records":[{"value":"x","value_b64":"eA=="},{"value":1} garbage"#,
            r#"{"records":[{"value_b64":"***"}]} trailing"#,
            r#"{"records":[{"value":1}]}"#,
        ];
        for body in bodies {
            let ours = parse_json_body(body.as_bytes(), rules(7))
                .map(|b| b.records.iter().map(flat).collect::<Vec<_>>())
                .map_err(|e| e.detail);
            assert_eq!(ours, reference(body), "{body}");
        }
    }

    /// Bodies around the one-plain-string shape the parse reads without serde: whitespace
    /// between the tokens, strings with quotes, escapes, control characters, non-ASCII or
    /// invalid UTF-8, other fields, more records, trailing bytes. Every one is read, or
    /// refused, as the derived parse reads it.
    #[test]
    fn the_one_plain_string_body_reads_as_serde_reads_it() {
        use proptest::prelude::*;
        let whitespace = prop::sample::select(vec!["", " ", "\n", "\t ", "\r\n", "\u{a0}", "\x0c"]);
        let string = prop::collection::vec(
            prop::sample::select(vec![
                "x",
                "é",
                "\"",
                "\\",
                "\\n",
                "\\u0041",
                "\u{1}",
                "\u{7f}",
                "\u{1F600}",
                " ",
                "/",
            ]),
            0..6,
        )
        .prop_map(|parts| parts.concat());
        let shape = (
            prop::collection::vec(whitespace, 16),
            string,
            prop::sample::select(vec!["records", "value", "extra", ""]),
            prop::sample::select(vec!["", ",{\"value\":1}", ",\"key\":\"k\"", "}", "]"]),
            prop::sample::select(vec!["value", "key", "valu"]),
        );
        let config = ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        proptest!(config, |((ws, value, outer, extra, field) in shape)| {
            let body = format!(
                "{}{{{}\"records\"{}:{}[{}{{{}\"{field}\"{}:{}\"{value}\"{}{}}}{}]{}}}{}{outer}",
                ws[0], ws[1], ws[2], ws[3], ws[4], ws[5], ws[6], ws[7], ws[8], extra, ws[9], ws[10],
                ws[11],
            );
            let ours = parse_json_body(body.as_bytes(), rules(7))
                .map(|b| b.records.iter().map(flat).collect::<Vec<_>>())
                .map_err(|e| e.detail);
            prop_assert_eq!(ours, reference(&body), "{}", body);
        });
        // Bytes that are not UTF-8 inside the value, and records_per_request_max of 0.
        let invalid = b"{\"records\":[{\"value\":\"\xff\xfe\"}]}";
        let ours = parse_json_body(invalid, rules(7))
            .map(|b| b.records.iter().map(flat).collect::<Vec<_>>())
            .map_err(|e| e.detail);
        assert_eq!(ours, reference_bytes(invalid));
        let limits = Limits {
            records_per_request_max: 0,
            ..Limits::default()
        };
        let e = parse_json_body(
            br#"{"records":[{"value":"a"}]}"#,
            RecordRules::new(&limits, 7),
        )
        .err()
        .expect("over records_per_request_max");
        assert_eq!(e.code, "limit_exceeded");
        let plain = br#" { "records" : [ { "value" : "a b" } ] } "#;
        assert_eq!(one_plain_string_value(plain), Some("\"a b\""));
    }

    #[test]
    fn a_record_with_both_forms_of_its_key_or_value_is_refused_even_with_one_null() {
        for record in [
            r#"{"key":null,"key_b64":"eA==","value":1}"#,
            r#"{"key":"x","key_b64":null}"#,
            r#"{"value":null,"value_b64":"eA=="}"#,
            r#"{"value_b64":null,"value":1}"#,
        ] {
            let body = format!(r#"{{"records":[{record}]}}"#);
            let e = parse_json_body(body.as_bytes(), rules(7))
                .err()
                .expect(record);
            assert!(e.detail.contains("not both"), "{record}: {}", e.detail);
            let e = parse_ndjson_lines(record.as_bytes(), &mut 0, rules(7), 0)
                .err()
                .expect(record);
            assert!(e.detail.contains("not both"), "{record}: {}", e.detail);
        }
        // One form, even null, is fine: a null key is no key, a null value a tombstone.
        let body = r#"{"records":[{"key":null,"value":null},{"key_b64":null,"value_b64":null}]}"#;
        let batch = parse_json_body(body.as_bytes(), rules(7)).expect(body);
        assert!(
            batch
                .records
                .iter()
                .all(|r| r.key.is_none() && r.value.is_none())
        );
    }

    #[test]
    fn ndjson_line_parses_and_fails_as_derived_parse_then_decode() {
        let lines = [
            r#"{"key":"k","value":{"a":1},"headers":{"b":"1","a":"2"},"partition":0}"#,
            r#"{"value":1,"value":null}"#,
            r#"{"value":1,"extra":true}"#,
            r#"{"key":"x","key_b64":"eA=="}"#,
            r#"{"value":null,"value_b64":"eA=="}"#,
            r#"{"value_b64":"***"}"#,
            r#"{"value":1} {"value":2}"#,
            r#"[null,null,1]"#,
            r#"{"value":"#,
            "7",
        ];
        for line in lines {
            let ours = parse_ndjson_lines(line.as_bytes(), &mut 0, rules(7), 0)
                .map(|b| b.records.iter().map(flat).collect::<Vec<_>>())
                .map_err(|e| e.detail);
            let reference = serde_json::from_str::<JsonRecord<'_>>(line)
                .map_err(|e| format!("line 1: invalid JSON record: {e}"))
                .and_then(|r| {
                    decode_record(r, 7, Some(1))
                        .map(|d| vec![flat(&d)])
                        .map_err(|e| e.detail)
                });
            assert_eq!(ours, reference, "{line}");
        }
    }

    #[test]
    fn headers_hold_what_a_btree_map_holds() {
        let objects = [
            r#"{}"#,
            r#"{"a":"1"}"#,
            r#"{"b":"2","a":"1","c":"3"}"#,
            r#"{"b":"1","a":"x","b":"2","a":"y","b":"3"}"#,
            r#"{"\u0062":"esc","b":"plain","B":"upper","":"empty","é":"e"}"#,
            r#"{"z":"1","y":"2","x":"3","w":"4","z":"5","w":"6"}"#,
        ];
        for object in objects {
            let ours: Headers<'_> = serde_json::from_str(object).expect("headers");
            let ours: Vec<(String, String)> = ours
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let tree: BTreeMap<String, String> = serde_json::from_str(object).expect("map");
            assert_eq!(ours, tree.into_iter().collect::<Vec<_>>(), "{object}");
        }
    }

    #[test]
    fn produce_records_take_each_record_own_headers() {
        let body = r#"{"records":[{"headers":{"b":"2","a":"1"}},{},{"headers":{"c":"3"}},{"headers":{}}]}"#;
        let decoded = parse_json_body(body.as_bytes(), rules(0)).expect("parses");
        assert_eq!(decoded.headers, 3);
        let borrowed = |c: &Cow<'_, str>| matches!(c, Cow::Borrowed(_));
        let first = decoded.records[0].headers.as_deref().expect("headers");
        assert!(first.iter().all(|(k, v)| borrowed(k) && borrowed(v)));
        let mut headers = Vec::new();
        let records = as_produce_records(&decoded, &mut headers);
        let got: Vec<Vec<(&str, &[u8])>> =
            records.iter().map(|r| r.record.headers.to_vec()).collect();
        let want: Vec<Vec<(&str, &[u8])>> = vec![
            vec![("a", b"1"), ("b", b"2")],
            vec![],
            vec![("c", b"3")],
            vec![],
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn ndjson_reports_a_bad_line_before_an_earlier_record_that_fails_to_decode() {
        let e = ndjson_refused(b"{\"value_b64\":\"***\"}\nnot json\n", rules(0), 0);
        assert_eq!(
            e.extra.get("line"),
            Some(&serde_json::json!(2)),
            "{}",
            e.detail
        );
        let e = ndjson_refused(b"{\"value\":1}\n{\"value_b64\":\"***\"}\n", rules(0), 0);
        assert!(
            e.detail.starts_with("line 2: 'value_b64' is not base64"),
            "{}",
            e.detail
        );
    }

    fn ndjson_refused(lines: &[u8], rules: RecordRules, seen_before: u64) -> ApiError {
        parse_ndjson_lines(lines, &mut 0, rules, seen_before)
            .err()
            .expect("refused")
    }

    fn refusal(e: &ApiError) -> (u16, &str, Option<&serde_json::Value>) {
        (e.status.as_u16(), e.code, e.extra.get("limit_name"))
    }

    #[test]
    fn a_body_over_records_per_request_max_stops_parsing_at_the_record_past_it() {
        let limits = Limits {
            records_per_request_max: 10,
            ..Limits::default()
        };
        let rules = RecordRules::new(&limits, 0);
        let ten = format!("{{\"records\":[{}{{}}]}}", "{},".repeat(9));
        assert_eq!(
            parse_json_body(ten.as_bytes(), rules)
                .map(|b| b.records.len())
                .ok(),
            Some(10)
        );
        // Eleven records, then bytes that are not JSON: a parse of the whole body would call it
        // invalid JSON; one that stops at the eleventh record answers with the limit.
        let eleven_then_garbage = format!("{{\"records\":[{}{{}}, garbage", "{},".repeat(10));
        let e = parse_json_body(eleven_then_garbage.as_bytes(), rules)
            .err()
            .expect("refused");
        let name = serde_json::json!("records_per_request_max");
        assert_eq!(
            refusal(&e),
            (400, "limit_exceeded", Some(&name)),
            "{}",
            e.detail
        );
        assert_eq!(e.extra.get("limit"), Some(&serde_json::json!(10)));

        let lines = format!("{}not json\n", "{}\n".repeat(11));
        let e = ndjson_refused(lines.as_bytes(), rules, 0);
        assert_eq!(
            refusal(&e),
            (400, "limit_exceeded", Some(&name)),
            "{}",
            e.detail
        );
        // Records of earlier batches count.
        let e = ndjson_refused(b"{}\n{}\nnot json\n", rules, 9);
        assert_eq!(
            refusal(&e),
            (400, "limit_exceeded", Some(&name)),
            "{}",
            e.detail
        );
        assert!(parse_ndjson_lines(b"{}\n", &mut 0, rules, 9).is_ok());

        // A body of 100,000 empty records decodes the first ten, and stops at the eleventh.
        let many = format!("{{\"records\":[{}{{}}]}}", "{},".repeat(99_999));
        let mut out = DecodedRecords::new(rules, 0, 0);
        assert!(parse_json_records(many.as_bytes(), &mut out).is_err());
        assert_eq!((out.seen, out.records.len()), (11, 10));
    }

    #[test]
    fn json_values_are_scanned_for_depth_lone_surrogates_and_infinite_numbers() {
        use JsonValueFault::*;
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let cases: Vec<(String, Option<JsonValueFault>)> = vec![
            ("1".into(), None),
            (r#""plain""#.into(), None),
            (deep(4), None),
            (deep(5), Some(TooDeep)),
            (r#"{"a":{"b":{"c":[1]}}}"#.into(), None),
            (r#"{"a":{"b":{"c":[{}]}}}"#.into(), Some(TooDeep)),
            // Brackets inside strings are not nesting.
            (r#"["[[[[[[[[{{{{{{"]"#.into(), None),
            (r#"["\"[[[[[[[[["]"#.into(), None),
            (r#""\ud83d\ude00""#.into(), None),
            (r#""\uD83D\uDE00 and \u00e9 \\ud800""#.into(), None),
            (r#""\ud800""#.into(), Some(LoneSurrogate)),
            (r#""a\ud800b""#.into(), Some(LoneSurrogate)),
            (r#""\ud800\u0041""#.into(), Some(LoneSurrogate)),
            (r#""\udc00""#.into(), Some(LoneSurrogate)),
            (r#"{"k\ud800":1}"#.into(), Some(LoneSurrogate)),
            (r#"["\ud800\ud800"]"#.into(), Some(LoneSurrogate)),
            ("1e308".into(), None),
            ("-1.5E-400".into(), None),
            ("12345678901234567890123456789".into(), None),
            ("1e400".into(), Some(NumberNotFinite)),
            ("[0, -1E+309]".into(), Some(NumberNotFinite)),
            (format!("1{}", "0".repeat(400)), Some(NumberNotFinite)),
            (format!("0.{}1", "0".repeat(400)), None),
        ];
        for (value, fault) in cases {
            serde_json::from_str::<&RawValue>(&value).expect("valid JSON");
            assert_eq!(json_value_fault(value.as_bytes(), 4), fault, "{value}");
        }
    }

    #[test]
    fn a_record_value_too_deep_with_a_lone_surrogate_or_an_infinite_number_is_refused() {
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let depth_name = serde_json::json!("json_depth_max");
        let cases = [
            (deep.as_str(), (400, "limit_exceeded", Some(&depth_name))),
            (r#""\ud800""#, (400, "invalid_request", None)),
            (r#"{"x":[1e400]}"#, (400, "invalid_request", None)),
        ];
        for (value, want) in cases {
            let body = format!(r#"{{"records":[{{"value":1}},{{"value":{value}}}]}}"#);
            let e = parse_json_body(body.as_bytes(), rules(0))
                .err()
                .expect("refused");
            assert_eq!(refusal(&e), want, "{}", e.detail);
            assert!(e.detail.starts_with("records[1]: "), "{}", e.detail);
            assert_eq!(e.extra.get("record_index"), Some(&serde_json::json!(1)));
            let line = format!("{{\"value\":1}}\n{{\"value\":{value}}}\n");
            let e = ndjson_refused(line.as_bytes(), rules(0), 0);
            assert_eq!(refusal(&e), want, "{}", e.detail);
            assert_eq!(e.extra.get("line"), Some(&serde_json::json!(2)));
        }
        let at_the_limit = format!("{}{}", "[".repeat(64), "]".repeat(64));
        let body = format!(r#"{{"records":[{{"value":{at_the_limit}}}]}}"#);
        assert!(parse_json_body(body.as_bytes(), rules(0)).is_ok());
    }

    #[test]
    fn a_timestamp_too_far_ahead_of_or_behind_the_clock_is_refused() {
        let limits = Limits {
            timestamp_ms_ahead_max: 1_000,
            timestamp_ms_behind_max: 5_000,
            ..Limits::default()
        };
        let now = 1_700_000_000_000;
        let rules = RecordRules::new(&limits, now);
        let ahead = serde_json::json!("timestamp_ms_ahead_max");
        let behind = serde_json::json!("timestamp_ms_behind_max");
        let cases = [
            (now, None),
            (now + 1_000, None),
            (now - 5_000, None),
            (now + 1_001, Some(&ahead)),
            (i64::MAX, Some(&ahead)),
            (now - 5_001, Some(&behind)),
            (0, Some(&behind)),
            (i64::MIN, Some(&behind)),
        ];
        for (ts, refused) in cases {
            let body = format!(r#"{{"records":[{{"value":1,"timestamp_ms":{ts}}}]}}"#);
            let got = parse_json_body(body.as_bytes(), rules).err();
            let got = got.as_ref().map(refusal);
            assert_eq!(
                got,
                refused.map(|name| (400, "invalid_timestamp", Some(name))),
                "{ts}"
            );
        }
    }

    /// A large body is parsed with the worker handed over (`block_in_place`): on a runtime of
    /// one worker, a task queued behind the parsing one still runs while the parse blocks.
    /// Parsed on the worker, the queued task would wait for the parse, which waits for it.
    #[test]
    fn a_large_body_is_parsed_off_the_async_worker_and_a_small_one_on_it() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let queued_task_ran_during_parse = |len: usize| {
            runtime.block_on(async {
                tokio::spawn(async move {
                    let (ran, ran_seen) = std::sync::mpsc::channel();
                    tokio::spawn(async move { ran.send(()) });
                    parse_off_the_workers(len, || {
                        ran_seen
                            .recv_timeout(std::time::Duration::from_secs(2))
                            .is_ok()
                    })
                })
                .await
                .unwrap()
            })
        };
        assert!(queued_task_ran_during_parse(PARSE_ON_WORKER_BYTES_MAX + 1));
        assert!(!queued_task_ran_during_parse(PARSE_ON_WORKER_BYTES_MAX));
    }
}
