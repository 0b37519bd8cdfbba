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

use super::error::{ApiError, ApiResult};
use crate::broker::ProduceRecord;
use crate::log::batch::RecordRef;

/// One record of a JSON or NDJSON produce, borrowing from the body.
///
/// The produce path fills it field by field in [`RecordSeed`]; the derived `Deserialize`
/// is the reference that parser is tested against (same input accepted, same errors).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonRecord<'a> {
    #[serde(borrow, default)]
    pub key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub key_b64: Option<Cow<'a, str>>,
    /// Kept as raw JSON text; `null` or absent is a tombstone (no value).
    #[serde(borrow, default)]
    pub value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub value_b64: Option<Cow<'a, str>>,
    /// Boxed: most records have none, and the record is moved as it is parsed and decoded.
    #[serde(borrow, default)]
    pub headers: Option<Box<Headers<'a>>>,
    #[serde(default)]
    pub partition: Option<u32>,
    #[serde(default)]
    pub timestamp_ms: Option<i64>,
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
        (Some(k), None) => (Some(str_bytes(k)), true),
        (None, Some(k)) => (
            Some(Cow::Owned(
                B64.decode(k.as_bytes())
                    .map_err(|e| at(format!("'key_b64' is not base64: {e}")))?,
            )),
            false,
        ),
        (None, None) => (None, false),
    };
    let (value, value_is_json) = match (r.value, r.value_b64) {
        (Some(_), Some(_)) => {
            return Err(at(
                "a record has either 'value' or 'value_b64', not both".into()
            ));
        }
        (Some(v), None) => (Some(Cow::Borrowed(v.get().as_bytes())), true),
        (None, Some(v)) => (
            Some(Cow::Owned(B64.decode(v.as_bytes()).map_err(|e| {
                at(format!("'value_b64' is not base64: {e}"))
            })?)),
            false,
        ),
        (None, None) => (None, false),
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

/// Records decoded as they are parsed, and the first record that failed to decode.
///
/// A body that is not valid JSON is refused as such even when an earlier record also failed
/// to decode, as when the whole body was parsed before any record was decoded: so the first
/// decode failure is kept aside until the parse has finished.
#[derive(Default)]
struct DecodedRecords<'a> {
    records: Vec<Decoded<'a>>,
    /// Headers of all the records, so a batch without any skips gathering them.
    headers: usize,
    failed: Option<ApiError>,
}

impl<'a> DecodedRecords<'a> {
    fn push(&mut self, record: JsonRecord<'a>, now: i64, line: Option<usize>) {
        if self.failed.is_some() {
            return;
        }
        match decode_record(record, now, line) {
            Ok(d) => {
                self.headers += d.headers.as_ref().map_or(0, |h| h.len());
                self.records.push(d);
            }
            Err(e) => self.failed = Some(e),
        }
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

/// Parses a JSON produce body, `{"records":[...]}`, decoding each record as soon as it is
/// parsed: the records are never held as [`JsonRecord`]s in a vector of their own.
pub(super) fn parse_json_body(bytes: &[u8], now: i64) -> ApiResult<DecodedBatch<'_>> {
    let presized = (bytes.len() / GUESSED_RECORD_BYTES).min(RECORDS_PRESIZED_MAX);
    let mut out = DecodedRecords {
        records: Vec::with_capacity(presized),
        ..DecodedRecords::default()
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde::de::DeserializeSeed::deserialize(BodySeed { out: &mut out, now }, &mut de)
        .and_then(|()| de.end())
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
    out.finish()
}

/// The body object: exactly one field, `records` (what a derived `deny_unknown_fields`
/// struct would accept, with the same error messages).
struct BodySeed<'s, 'a> {
    out: &'s mut DecodedRecords<'a>,
    now: i64,
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
        let records = RecordsSeed {
            out: self.out,
            now: self.now,
        };
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
                now: self.now,
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
    now: i64,
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
            now: self.now,
            line: None,
        })? {}
        Ok(())
    }
}

/// One record: its fields are read into a [`JsonRecord`] in place, which is then decoded
/// and appended, accepting what the derived `JsonRecord` accepts with the same errors.
struct RecordSeed<'s, 'a> {
    out: &'s mut DecodedRecords<'a>,
    now: i64,
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
            key: seq.next_element()?.flatten(),
            key_b64: seq.next_element()?.flatten(),
            value: seq.next_element()?.flatten(),
            value_b64: seq.next_element()?.flatten(),
            headers: seq.next_element()?.flatten(),
            partition: seq.next_element()?.flatten(),
            timestamp_ms: seq.next_element()?.flatten(),
        };
        self.out.push(record, self.now, self.line);
        Ok(())
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
                    r.key = map.next_value::<Option<BorrowedStr<'de>>>()?.map(|k| k.0);
                }
                RecordField::KeyB64 => set_once(&mut r.key_b64, 1, s, &mut map)?,
                RecordField::Value => set_once(&mut r.value, 2, s, &mut map)?,
                RecordField::ValueB64 => set_once(&mut r.value_b64, 3, s, &mut map)?,
                RecordField::Headers => {
                    first_time(4, s)?;
                    r.headers = map.next_value::<Option<Headers<'de>>>()?.map(Box::new);
                }
                RecordField::Partition => set_once(&mut r.partition, 5, s, &mut map)?,
                RecordField::TimestampMs => set_once(&mut r.timestamp_ms, 6, s, &mut map)?,
            }
        }
        self.out.push(r, self.now, self.line);
        Ok(())
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
            partition: d.partition,
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
pub(super) fn parse_ndjson_lines<'a>(
    bytes: &'a [u8],
    line_no: &mut usize,
    now: i64,
) -> ApiResult<DecodedBatch<'a>> {
    let mut out = DecodedRecords::default();
    for line in bytes.split(|&b| b == b'\n') {
        *line_no += 1;
        let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
        if trimmed.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut de = serde_json::Deserializer::from_slice(trimmed);
        let seed = RecordSeed {
            out: &mut out,
            now,
            line: Some(*line_no),
        };
        serde::de::DeserializeSeed::deserialize(seed, &mut de)
            .and_then(|()| de.end())
            .map_err(|e| {
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
        let parsed: JsonProduce<'_> = serde_json::from_slice(body.as_bytes())
            .map_err(|e| format!("invalid JSON body: {e}"))?;
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
            r#"{"records":[{"value":1},{"value_b64":"***"},{"key_b64":"%%%"}]}"#,
            r#"{"records":[{"value":"x","value_b64":"eA=="},{"value":1} garbage"#,
            r#"{"records":[{"value_b64":"***"}]} trailing"#,
            r#"{"records":[{"value":1}]}"#,
        ];
        for body in bodies {
            let ours = parse_json_body(body.as_bytes(), 7)
                .map(|b| b.records.iter().map(flat).collect::<Vec<_>>())
                .map_err(|e| e.detail);
            assert_eq!(ours, reference(body), "{body}");
        }
    }

    #[test]
    fn ndjson_line_parses_and_fails_as_derived_parse_then_decode() {
        let lines = [
            r#"{"key":"k","value":{"a":1},"headers":{"b":"1","a":"2"},"partition":0}"#,
            r#"{"value":1,"value":null}"#,
            r#"{"value":1,"extra":true}"#,
            r#"{"key":"x","key_b64":"eA=="}"#,
            r#"{"value_b64":"***"}"#,
            r#"{"value":1} {"value":2}"#,
            r#"[null,null,1]"#,
            r#"{"value":"#,
            "7",
        ];
        for line in lines {
            let ours = parse_ndjson_lines(line.as_bytes(), &mut 0, 7)
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
        let decoded = parse_json_body(body.as_bytes(), 0).expect("parses");
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
        let mut line_no = 0;
        let e = parse_ndjson_lines(b"{\"value_b64\":\"***\"}\nnot json\n", &mut line_no, 0)
            .err()
            .expect("refused");
        assert_eq!(
            e.extra.get("line"),
            Some(&serde_json::json!(2)),
            "{}",
            e.detail
        );
        let mut line_no = 0;
        let e = parse_ndjson_lines(b"{\"value\":1}\n{\"value_b64\":\"***\"}\n", &mut line_no, 0)
            .err()
            .expect("refused");
        assert!(
            e.detail.starts_with("line 2: 'value_b64' is not base64"),
            "{}",
            e.detail
        );
    }
}
