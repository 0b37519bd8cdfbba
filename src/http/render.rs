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
    let durability = outcome.durability;
    let mut body = Vec::with_capacity(32 + outcome.offsets.len() * 32);
    let status = if durability == Durability::None {
        body.extend_from_slice(b"{\"durability\":\"none\"}");
        StatusCode::ACCEPTED
    } else {
        body.extend_from_slice(b"{\"offsets\":[");
        for (i, &(p, o)) in outcome.offsets.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"partition\":");
            push_u64(&mut body, u64::from(p.0));
            body.extend_from_slice(b",\"offset\":");
            push_u64(&mut body, o.0);
            body.push(b'}');
        }
        body.extend_from_slice(b"],\"durability\":\"");
        body.extend_from_slice(durability.as_str().as_bytes());
        body.extend_from_slice(b"\"}");
        StatusCode::OK
    };
    let mut response = json_response(status, body);
    response.headers_mut().insert(
        HeaderName::from_static("tidelog-durability"),
        HeaderValue::from_static(durability.as_str()),
    );
    response
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
        }
        for n in [0, -1, 1, -10, 1_700_000_000_000, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            push_i64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
