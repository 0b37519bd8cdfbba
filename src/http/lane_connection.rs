//! Produce connections served without hyper: a keep-alive connection that sends only plain
//! produce requests (the single-record producer's connection) is read, answered and kept here.
//!
//! hyper's HTTP/1 connection costs a single-record produce about a third of its
//! instructions (`benches/profile/produce.sh`): the request's `HeaderMap` and `Uri`, the
//! body channel and its clocks, the dispatcher's state machine, the response's encoding. Here
//! the head is parsed with `httparse` (hyper's own parser) into a few ranges of the read
//! buffer, the body is the rest of that buffer, and the answer is encoded as hyper encodes it.
//!
//! Invariants:
//! - The lane serves a request only when it is whole in what has been read and is the
//!   fast lane's produce (`fast_lane`): `POST /v1/topics/{topic}/records` over HTTP/1.1, a
//!   target of plain characters, one `Content-Length` within `request_body_bytes_max`, a JSON
//!   or octet-stream body, no `Connection` but `keep-alive`, and none of
//!   `Transfer-Encoding`, `Expect`, `Upgrade` or `Idempotency-Key`. A body not yet whole is
//!   waited for (on the body clocks, as `serve::TimedBody` keeps them) only when nothing
//!   could refuse the request before reading it (`produce::reads_body_first`). At the first request it does not serve, the connection
//!   goes to hyper for good, with every byte read and not yet served ([`Replayed`]): so hyper
//!   answers every other request, refusal and malformed head exactly as before, and each
//!   byte is served once, by one of the two, in order.
//! - The answer is the one the router's produce gives, encoded as hyper encodes it: status
//!   line, the answer's headers in order, `connection: close` when a stop has begun,
//!   `content-length` if the answer has none, `date`, then the body (a test compares the
//!   bytes of both paths).
//! - The header clock (`head_clock`) holds as under hyper: the connection is busy from a
//!   served request's whole head until its answer is handed over, then quiet since its last
//!   write that moved bytes; the connection's watchdog closes it when quiet.
//! - A stop (graceful shutdown) closes a connection waiting for a request; a request being
//!   served is answered first, with `connection: close`, as hyper does.

use std::borrow::Cow;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::body::body_read_failed;
use super::content_length::static_content_length;
use super::fast_lane::{FastLane, count, produce_topic};
use super::head_clock::HeadClock;
use super::produce::ProduceBody;
use super::render::{
    DURABILITY_HEADER, produce_answer_bytes, produce_status, write_produce_answer,
};
use super::serve::{BodyClocks, BodyTimeout};
use crate::broker::ProduceOutcome;

/// Most bytes of one request (head and body) the lane reads before it leaves the request to
/// hyper: single records and small batches; larger bodies cost their parse, not their head.
const REQUEST_BYTES_MAX: usize = 16 * 1024;
/// Most header fields of a request the lane parses (hyper takes up to 100).
const HEADERS_MAX: usize = 32;

/// How a connection left the lane.
pub(super) enum LaneEnd {
    /// The client closed it, a read or write failed, or a stop closed it.
    Closed,
    /// A request the lane does not serve: hyper serves the connection from these bytes on
    /// (read from the socket, not served).
    HandOver(Bytes),
}

/// A produce head the lane serves: where its parts are in the read buffer.
#[derive(Debug, PartialEq)]
struct Head {
    /// Bytes of the head, up to and including its blank line.
    len: usize,
    topic: Range<usize>,
    query: Option<Range<usize>>,
    /// The media type as `body::media_type` reads the `Content-Type` (one the lane takes).
    media_type: &'static str,
    content_length: usize,
}

#[derive(Debug, PartialEq)]
enum Parsed {
    /// The head is not whole yet.
    Partial,
    /// A request (or malformed bytes) for hyper.
    Other,
    Produce(Head),
}

/// Serves `stream`'s produce requests until it closes or sends a request for hyper.
pub(super) async fn serve(
    lane: &FastLane,
    stream: &mut TcpStream,
    clock: &Arc<HeadClock>,
    clocks: BodyClocks,
    stop: &watch::Receiver<bool>,
) -> LaneEnd {
    let body_max = lane.body_bytes_max();
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(512);
    // One wait for the stop per connection, not one per read: each is a waiter on the
    // channel every connection shares.
    let mut stop_seen = stop.clone();
    let mut stopped = std::pin::pin!(stop_seen.wait_for(|stopping| *stopping));
    loop {
        let head = match parse(&buf, body_max) {
            Parsed::Produce(head) => head,
            Parsed::Other => return LaneEnd::HandOver(buf.freeze()),
            Parsed::Partial if buf.len() >= REQUEST_BYTES_MAX => {
                return LaneEnd::HandOver(buf.freeze());
            }
            Parsed::Partial => {
                buf.reserve(4096);
                let read = tokio::select! {
                    read = stream.read_buf(&mut buf) => read,
                    _ = &mut stopped => return LaneEnd::Closed,
                };
                match read {
                    Ok(0) | Err(_) => return LaneEnd::Closed,
                    Ok(_) => continue,
                }
            }
        };
        let whole = head.len + head.content_length;
        if buf.len() < whole {
            // Waited for here only when nothing could refuse the request before its body,
            // so the answer is the one hyper's path gives once the body is read.
            let query = head.query.as_ref().map(|q| ascii(&buf[q.clone()]));
            if whole > REQUEST_BYTES_MAX || !lane.reads_body_first(query.as_deref()) {
                return LaneEnd::HandOver(buf.freeze());
            }
        }
        let busy = clock.enter();
        let started = Instant::now();
        let response = match read_body(stream, &mut buf, whole, clocks).await {
            BodyRead::Whole => {
                let request = buf.split_to(whole).freeze();
                answer(lane, &request, &head, started).await
            }
            BodyRead::Closed => return LaneEnd::Closed,
            // As hyper's path answers a body out of time: a 408 whose `connection: close`
            // (`error`) closes the connection.
            BodyRead::OutOfTime(timeout) => {
                let response = body_read_failed(axum::Error::new(timeout)).into_response();
                count(started, response.status());
                Err(response)
            }
        };
        let stopping = *stop.borrow();
        let close = match response {
            Ok(outcome) => {
                encode_produce(&outcome, stopping, &mut out);
                false
            }
            Err(response) => match encode(response, stopping, &mut out).await {
                Some(close) => close,
                None => return LaneEnd::Closed,
            },
        };
        // The answer is handed over: from here the connection is quiet unless bytes move,
        // so a client that does not read its answers is closed by the header clock.
        drop(busy);
        if write_all(stream, &out, clock).await.is_err() || close || stopping {
            return LaneEnd::Closed;
        }
    }
}

/// Writes `out`, marking the clock at every write that moves bytes (as `head_clock::Watched`
/// does under hyper).
async fn write_all(stream: &mut TcpStream, mut out: &[u8], clock: &HeadClock) -> io::Result<()> {
    while !out.is_empty() {
        match stream.write(out).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => out = &out[n..],
        }
        clock.touch();
    }
    Ok(())
}

/// How waiting for a request's body ended.
enum BodyRead {
    /// The request is whole in the buffer.
    Whole,
    /// The client closed the connection, or the read failed.
    Closed,
    OutOfTime(BodyTimeout),
}

/// Reads until `buf` holds `whole` bytes, on the body clocks counted from now (the head).
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    whole: usize,
    clocks: BodyClocks,
) -> BodyRead {
    if buf.len() >= whole {
        return BodyRead::Whole;
    }
    let head = tokio::time::Instant::now();
    let deadline = head + clocks.total;
    buf.reserve(whole - buf.len());
    while buf.len() < whole {
        let wake_at = (tokio::time::Instant::now() + clocks.stall).min(deadline);
        match tokio::time::timeout_at(wake_at, stream.read_buf(buf)).await {
            Ok(Ok(0) | Err(_)) => return BodyRead::Closed,
            Ok(Ok(_)) => {}
            Err(_) => {
                return BodyRead::OutOfTime(clocks.timeout(head, tokio::time::Instant::now()));
            }
        }
    }
    BodyRead::Whole
}

/// A part of the request line as text: plain ASCII, checked by `parse`, so borrowed.
fn ascii(part: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(part)
}

/// The produce's outcome for `request`, whose head `parse` read as `head`, or the answer
/// that refuses it.
async fn answer(
    lane: &FastLane,
    request: &Bytes,
    head: &Head,
    started: Instant,
) -> Result<ProduceOutcome, Response> {
    let topic = ascii(&request[head.topic.clone()]);
    let query = head.query.as_ref().map(|q| ascii(&request[q.clone()]));
    let body = ProduceBody::Whole {
        media_type: head.media_type,
        bytes: request.slice(head.len..),
    };
    lane.produce_outcome(started, &topic, query.as_deref(), body)
        .await
}

/// Parses the head at the start of `buf` (see the module's invariant for what the lane takes).
fn parse(buf: &[u8], body_max: u64) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    // Left uninitialized until parsed, as hyper does (an initialized array is a kilobyte
    // written per request).
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if request.method != Some("POST") || request.version != Some(1) {
        return Parsed::Other;
    }
    let Some(target) = request.path else {
        return Parsed::Other;
    };
    if !target.bytes().all(|b| PLAIN_TARGET_BYTES[usize::from(b)]) {
        return Parsed::Other;
    }
    let at = offset_in(buf, target.as_bytes());
    let (path, query) = match target.split_once('?') {
        Some((path, _)) => (path, Some(at + path.len() + 1..at + target.len())),
        None => (target, None),
    };
    let Some(topic) = produce_topic(path) else {
        return Parsed::Other;
    };
    let mut content_length = None;
    let mut content_type = None;
    for field in request.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case(header::CONTENT_LENGTH.as_str()) {
            let digits = field.value;
            let declared =
                (!digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit))
                    .then(|| {
                        digits
                            .iter()
                            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))
                    });
            match (content_length, declared) {
                (None, Some(n)) if n <= body_max => content_length = Some(n as usize),
                _ => return Parsed::Other,
            }
        } else if name.eq_ignore_ascii_case(header::CONTENT_TYPE.as_str()) {
            // The first, as `HeaderMap::get` reads it; a value `to_str` refuses is none.
            if content_type.is_none() {
                content_type = Some(match field.value {
                    b"application/json" => Some("application/json"),
                    value => visible_ascii(value)
                        .then(|| std::str::from_utf8(value).ok())
                        .flatten(),
                });
            }
        } else if name.eq_ignore_ascii_case(header::CONNECTION.as_str()) {
            // `keep-alive` says what HTTP/1.1 means anyway (hyper answers it no differently);
            // anything else (`close`, `upgrade`, hop-by-hop names) is hyper's to serve.
            let keep_alive = field
                .value
                .split(|&b| b == b',')
                .all(|token| token.trim_ascii().eq_ignore_ascii_case(b"keep-alive"));
            if !keep_alive {
                return Parsed::Other;
            }
        } else if [
            header::TRANSFER_ENCODING.as_str(),
            header::EXPECT.as_str(),
            header::UPGRADE.as_str(),
            super::idempotency_key::HEADER,
        ]
        .iter()
        .any(|other| name.eq_ignore_ascii_case(other))
        {
            return Parsed::Other;
        }
    }
    let Some(content_length) = content_length else {
        return Parsed::Other;
    };
    let media_type = match &*super::body::media_type(content_type.flatten()) {
        "application/json" => "application/json",
        "" => "",
        "application/octet-stream" => "application/octet-stream",
        _ => return Parsed::Other,
    };
    Parsed::Produce(Head {
        len,
        topic: at + topic.start..at + topic.end,
        query,
        media_type,
        content_length,
    })
}

/// Where `part`, a slice of `buf`, starts in it.
fn offset_in(buf: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - buf.as_ptr() as usize
}

/// Bytes of a request target the lane takes: unreserved and sub-delimiter characters, `/`,
/// `?`, `:`, `@` and `%` (each also valid in hyper's URI); anything else goes to hyper.
const PLAIN_TARGET_BYTES: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        plain[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~/?:@!$&'()*+,;=%";
    let mut i = 0;
    while i < others.len() {
        plain[others[i] as usize] = true;
        i += 1;
    }
    plain
};

/// What `HeaderValue::to_str` takes: visible ASCII, spaces and tabs.
fn visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Writes `response` into `out` as hyper would; `Some(true)` if the connection closes after
/// it (the answer says `connection: close`), `None` if its body failed.
async fn encode(response: Response, stopping: bool, out: &mut Vec<u8>) -> Option<bool> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    out.clear();
    status_line(parts.status, out);
    let mut close = false;
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
        close |= name == header::CONNECTION && connection_close(value.as_bytes());
    }
    // hyper adds `connection: close` to an HTTP/1.1 answer once keep-alive is off.
    if stopping && !close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let bodiless =
        parts.status == StatusCode::NO_CONTENT || parts.status == StatusCode::NOT_MODIFIED;
    if !parts.headers.contains_key(header::CONTENT_LENGTH) && !bodiless {
        content_length(body.len(), out);
    }
    if !parts.headers.contains_key(header::DATE) {
        date(out);
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        out.extend_from_slice(&body);
    }
    Some(close)
}

/// Writes the answer to a produce that succeeded into `out`: what [`encode`] writes for
/// `render::render_produce`'s answer (a unit test holds the two to the same bytes), with no
/// `Response`, header map or body buffer in between.
fn encode_produce(outcome: &ProduceOutcome, stopping: bool, out: &mut Vec<u8>) {
    out.clear();
    status_line(produce_status(outcome), out);
    // The answer's headers in `render_produce`'s order: the type, a length from the static
    // table, the durability; then those `encode` adds.
    let len = produce_answer_bytes(outcome);
    let static_length = static_content_length(len);
    out.extend_from_slice(b"content-type: application/json\r\n");
    if let Some(length) = &static_length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(length.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(DURABILITY_HEADER.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(outcome.durability.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    if stopping {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if static_length.is_none() {
        content_length(len, out);
    }
    date(out);
    out.extend_from_slice(b"\r\n");
    write_produce_answer(outcome, out);
}

/// `HTTP/1.1 <code> <reason>`, as hyper writes it.
fn status_line(status: StatusCode, out: &mut Vec<u8>) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn content_length(len: usize, out: &mut Vec<u8>) {
    // Writing to a `Vec` cannot fail.
    let _ = write!(out, "content-length: {len}\r\n");
}

fn date(out: &mut Vec<u8>) {
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&http_date());
    out.extend_from_slice(b"\r\n");
}

/// Whether a `Connection` value names `close` (as hyper reads it).
fn connection_close(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// The `date` value of now, formatted once a second per thread (hyper caches it the same
/// way).
fn http_date() -> [u8; 29] {
    thread_local! {
        static DATE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let (at, text) = cached.get();
        if at == second {
            return text;
        }
        let mut text = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        let n = formatted.len().min(text.len());
        text[..n].copy_from_slice(&formatted.as_bytes()[..n]);
        cached.set((second, text));
        text
    })
}

/// A connection's socket for hyper after the lane: the bytes the lane read and did not
/// serve are read first, then the socket.
pub(super) struct Replayed {
    read: Bytes,
    io: TcpStream,
}

impl Replayed {
    pub(super) fn new(read: Bytes, io: TcpStream) -> Replayed {
        Replayed { read, io }
    }
}

impl AsyncRead for Replayed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1 << 20;

    fn produce(head_fields: &str, body: &str) -> String {
        format!(
            "POST /v1/topics/orders/records?acks=all HTTP/1.1\r\nhost: x\r\n{head_fields}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn a_plain_produce_is_the_lanes_with_its_parts_where_they_are() {
        let request = produce("Content-Type: application/JSON; charset=utf-8\r\n", "{}");
        let Parsed::Produce(head) = parse(request.as_bytes(), MAX) else {
            panic!("not taken: {request}");
        };
        assert_eq!(&request[head.topic.clone()], "orders");
        assert_eq!(head.query.map(|q| &request[q]), Some("acks=all"));
        assert_eq!(head.media_type, "application/json");
        assert_eq!(head.content_length, 2);
        assert_eq!(&request[head.len..], "{}");
        assert_eq!(parse(&request.as_bytes()[..30], MAX), Parsed::Partial);
        let keep_alive = produce("Connection: Keep-Alive\r\n", "{}");
        assert!(matches!(
            parse(keep_alive.as_bytes(), MAX),
            Parsed::Produce(_)
        ));
    }

    #[test]
    fn anything_but_a_plain_produce_goes_to_hyper() {
        let other = [
            produce("transfer-encoding: chunked\r\n", "{}"),
            produce("Connection: close\r\n", "{}"),
            produce("Connection: keep-alive, Upgrade\r\n", "{}"),
            produce("expect: 100-continue\r\n", "{}"),
            produce("upgrade: h2c\r\n", "{}"),
            produce("idempotency-key: k\r\n", "{}"),
            produce("content-length: 2\r\n", "{}"),
            produce("content-type: application/x-ndjson\r\n", "{}"),
            produce("content-type: text/plain\r\n", "{}"),
            "POST /v1/topics/orders/records HTTP/1.1\r\n\r\n".into(),
            "POST /v1/topics/orders/records HTTP/1.1\r\ncontent-length: +2\r\n\r\n{}".into(),
            "POST /v1/topics/orders/records HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n".into(),
            "POST /v1/topics/orders/records HTTP/1.0\r\ncontent-length: 2\r\n\r\n{}".into(),
            "PUT /v1/topics/orders/records HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}".into(),
            "POST /v1/topics/orders HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}".into(),
            "POST /v1/topics/or%64ers/records HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}".into(),
            "POST /v1/topics/orders/records?k=\"x\" HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}".into(),
            "POST http://h/v1/topics/orders/records HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}".into(),
            "POST /v1/topics/orders/records HTTP/1.1\r\nbad header\r\n\r\n".into(),
        ];
        for request in other {
            assert_eq!(parse(request.as_bytes(), MAX), Parsed::Other, "{request}");
        }
        let over = produce("", "{\"records\":[]}");
        assert_eq!(
            parse(over.as_bytes(), 4),
            Parsed::Other,
            "over the body limit"
        );
    }

    #[test]
    fn a_content_type_hyper_would_not_read_as_text_is_none() {
        let request = produce("content-type: application/json\u{e9}\r\n", "{}");
        let Parsed::Produce(head) = parse(request.as_bytes(), MAX) else {
            panic!("not taken");
        };
        assert_eq!(
            head.media_type, "",
            "read as JSON, as hyper's path reads it"
        );
    }

    /// The lane's own rendering of a produce's answer is the bytes `encode` writes for the
    /// router's (`render_produce`), for every durability, answers below and above the static
    /// `content-length` table, and during a stop.
    #[tokio::test]
    async fn a_produce_answer_is_encoded_as_the_routers_answer_is() {
        use crate::broker::Durability;
        use crate::log::Offset;
        use crate::metadata::PartitionId;
        let durabilities = [
            Durability::None,
            Durability::Leader,
            Durability::Fsync,
            Durability::IsrFsync,
        ];
        for durability in durabilities {
            for records in [1u64, 3, 200] {
                for stopping in [false, true] {
                    let outcome = ProduceOutcome {
                        offsets: (0..records)
                            .map(|i| (PartitionId((i % 7) as u32), Offset(u64::MAX - i * 99_991)))
                            .collect(),
                        durability,
                    };
                    let (mut direct, mut routed) = (Vec::new(), Vec::new());
                    encode_produce(&outcome, stopping, &mut direct);
                    let response = crate::http::render::render_produce(&outcome);
                    let close = encode(response, stopping, &mut routed).await;
                    assert_eq!(close, Some(false));
                    // The `date` may cross a second between the two.
                    let undated = |bytes: &[u8]| {
                        let text = String::from_utf8_lossy(bytes).into_owned();
                        let at = text.find("\r\ndate: ").expect("a date") + 8;
                        format!("{}{}", &text[..at], &text[at + 29..])
                    };
                    assert_eq!(
                        undated(&direct),
                        undated(&routed),
                        "{durability:?}, {records} records, stopping {stopping}"
                    );
                }
            }
        }
    }

    #[test]
    fn connection_close_is_read_among_tokens() {
        assert!(connection_close(b"close"));
        assert!(connection_close(b"keep-alive, Close"));
        assert!(!connection_close(b"keep-alive"));
    }
}
