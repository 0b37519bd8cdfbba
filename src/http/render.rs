//! Rendering records and produce answers as JSON, byte by byte (no `serde` on the hot path).

use std::io::Write as _;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::json_response;
use crate::broker::{Durability, ProduceOutcome};
use crate::log::batch::RecordView;
use crate::metadata::PartitionId;

/// `{"offsets":[{"partition":p,"offset":o},...],"durability":"..."}` with the durability header.
pub(super) fn render_produce(outcome: &ProduceOutcome) -> Response {
    let (status, body) = produce_answer(outcome);
    let mut response = json_response(status, body);
    response.headers_mut().insert(
        DURABILITY_HEADER,
        HeaderValue::from_static(outcome.durability.as_str()),
    );
    response
}

/// The status and body of [`render_produce`]'s answer.
fn produce_answer(outcome: &ProduceOutcome) -> (StatusCode, Vec<u8>) {
    let mut body = Vec::with_capacity(produce_answer_bytes(outcome));
    let status = write_produce_answer(outcome, &mut body);
    debug_assert_eq!(body.len(), body.capacity(), "produce_answer_bytes is exact");
    (status, body)
}

/// The status of [`render_produce`]'s answer: 202 when nothing was waited for (`acks=none`).
pub(super) fn produce_status(outcome: &ProduceOutcome) -> StatusCode {
    match outcome.durability {
        Durability::None => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    }
}

/// Appends [`render_produce`]'s body to `body` (the connection lane writes it after its head,
/// with no buffer of its own); its status.
pub(super) fn write_produce_answer(outcome: &ProduceOutcome, body: &mut Vec<u8>) -> StatusCode {
    let durability = outcome.durability;
    if durability == Durability::None {
        body.extend_from_slice(NONE_ANSWER);
    } else {
        body.extend_from_slice(OFFSETS_OPEN);
        for (i, &(p, o)) in outcome.offsets.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(PARTITION_OPEN);
            push_u64(body, u64::from(p.0));
            body.extend_from_slice(OFFSET_FIELD);
            push_u64(body, o.0);
            body.push(b'}');
        }
        body.extend_from_slice(DURABILITY_FIELD);
        body.extend_from_slice(durability.as_str().as_bytes());
        body.extend_from_slice(ANSWER_CLOSE);
    }
    produce_status(outcome)
}

/// Which durability held, on every produce answer. A `const`, so the name is checked at
/// compile time rather than on every answer (`from_static` is a `const fn`). The lint warns
/// that each use is a fresh copy; that is the point, and a static name is never mutated.
#[allow(clippy::declare_interior_mutable_const)]
pub(super) const DURABILITY_HEADER: HeaderName = HeaderName::from_static("tidelog-durability");

/// The pieces of the produce answer, written by [`render_produce`] and counted by
/// [`produce_answer_bytes`].
const NONE_ANSWER: &[u8] = b"{\"durability\":\"none\"}";
const OFFSETS_OPEN: &[u8] = b"{\"offsets\":[";
const PARTITION_OPEN: &[u8] = b"{\"partition\":";
const OFFSET_FIELD: &[u8] = b",\"offset\":";
const DURABILITY_FIELD: &[u8] = b"],\"durability\":\"";
const ANSWER_CLOSE: &[u8] = b"\"}";

/// The produce answer's length in bytes, so its buffer is allocated once, at exactly that
/// size: a `Vec` whose capacity is its length becomes the response body as it is, where a
/// longer one costs another allocation (`Bytes` keeps the capacity in a shared header) and
/// a buffer that grows one more (an answer with a five-digit offset outgrew the old guess).
pub(super) fn produce_answer_bytes(outcome: &ProduceOutcome) -> usize {
    if outcome.durability == Durability::None {
        return NONE_ANSWER.len();
    }
    let offsets: usize = outcome
        .offsets
        .iter()
        .map(|&(p, o)| {
            PARTITION_OPEN.len()
                + decimal_digits(u64::from(p.0))
                + OFFSET_FIELD.len()
                + decimal_digits(o.0)
                + 1
        })
        .sum();
    let commas = outcome.offsets.len().saturating_sub(1);
    OFFSETS_OPEN.len()
        + offsets
        + commas
        + DURABILITY_FIELD.len()
        + outcome.durability.as_str().len()
        + ANSWER_CLOSE.len()
}

/// How many digits [`push_u64`] writes for `n`.
fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Writes one record as a JSON object. A JSON value is written as-is; bytes as base64.
pub fn render_record(out: &mut Vec<u8>, partition: PartitionId, r: &RecordView<'_>) {
    out.extend_from_slice(b"{\"partition\":");
    push_u64(out, u64::from(partition.0));
    out.extend_from_slice(b",\"offset\":");
    push_u64(out, r.offset);
    out.extend_from_slice(b",\"timestamp_ms\":");
    push_i64(out, r.timestamp_ms);
    out.push(b',');
    match r.key {
        None => out.extend_from_slice(b"\"key\":null"),
        Some(k) => match std::str::from_utf8(k) {
            Ok(s) if r.key_is_utf8 => {
                out.extend_from_slice(b"\"key\":");
                let _ = serde_json::to_writer(&mut *out, s);
            }
            _ => {
                let _ = write!(out, "\"key_b64\":\"{}\"", B64.encode(k));
            }
        },
    }
    match r.value {
        None => out.extend_from_slice(b",\"value\":null"),
        Some(v) if r.value_is_json => {
            out.extend_from_slice(b",\"value\":");
            out.extend_from_slice(v);
        }
        Some(v) => {
            let _ = write!(out, ",\"value_b64\":\"{}\"", B64.encode(v));
        }
    }
    out.extend_from_slice(b",\"headers\":{");
    for (i, (name, value)) in r.headers.clone().flatten().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(name));
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(value));
    }
    out.extend_from_slice(b"}}");
}

/// Appends `n` in decimal. The produce answer holds one offset per record and a fetch one
/// object per record, so this skips `fmt`'s machinery on the hot path.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Offset;

    #[test]
    fn the_produce_answer_fills_its_buffer_exactly() {
        let cases = [
            (vec![], Durability::None),
            (vec![(0, 0)], Durability::Fsync),
            (vec![(3, 9), (12, 10)], Durability::IsrFsync),
            (vec![(0, 12_345), (1, u64::MAX)], Durability::Leader),
            (vec![(u32::MAX, 99_999_999)], Durability::Fsync),
        ];
        for (offsets, durability) in cases {
            let offsets = offsets
                .into_iter()
                .map(|(p, o)| (PartitionId(p), Offset(o)))
                .collect();
            let outcome = ProduceOutcome {
                offsets,
                durability,
            };
            // render_produce asserts it too (debug builds); the length here, the value
            // of the header.
            let response = render_produce(&outcome);
            let length = response.headers()[axum::http::header::CONTENT_LENGTH].clone();
            assert_eq!(
                length.to_str().unwrap(),
                produce_answer_bytes(&outcome).to_string()
            );
        }
    }

    #[test]
    fn decimal_writers_match_display() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
            assert_eq!(decimal_digits(n), out.len());
        }
        for n in [0, -1, 1, -10, 1_700_000_000_000, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            push_i64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
