//! Serving connections: the accept loop, the connection bounds and the clocks on a client.
//!
//! Invariants:
//! - At most `connections_max` connections serve the API. Past it, `health_connections_max`
//!   more are accepted for probes, scrapes and admin calls only ([`reserve_serves`]: topic
//!   and group administration, never produce, fetch, streams or group members; anything else
//!   there is a 503 `overloaded` and the connection closes), so a broker full of clients can
//!   still be probed, scraped and administered. Past both, connections wait in the kernel's
//!   accept queue.
//! - A client must send a request's headers within `header_read_timeout_ms`, counted from the
//!   moment the connection waits for them: a fresh connection, or a keep-alive connection
//!   after its last answer (handed over whole, or its last bytes written). So the same clock
//!   closes slow headers and idle keep-alive connections. One timer per connection keeps it
//!   ([`super::head_clock`]), not one per request.
//! - A request body must make progress every `body_stall_timeout_ms` and be complete within
//!   `body_read_timeout_ms` of the request head; otherwise reading it fails with
//!   [`BodyTimeout`], which the handler answers with a 408 that closes the connection.
//!
//! A connection is served first by the produce lane (`lane_connection`), which hands it to
//! hyper at its first request that is not a plain produce; both keep the clocks above.
//!
//! Shutdown: when `shutdown` resolves the loop stops accepting, every connection finishes its
//! request in flight and closes, and [`serve`] returns once all have.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use super::error::ApiError;
use super::fast_lane::FastLane;
use super::head_clock::{HeadClock, Watched};
use super::lane_connection::{self, LaneEnd, Replayed};
use crate::broker::{BrokerError, now_ms};
use crate::limits::{Limit, Limits};
use crate::node::Node;

/// Whether a connection from the health reserve may make this call: a probe, a scrape, or
/// an admin call (topics and groups looked at or changed, the cluster's view). Client
/// traffic (produce, fetch, long-polls, streams, group members and their commits) and the
/// brokers' internal routes are not served there: they are what fills the general pool.
pub fn reserve_serves(method: &Method, path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = method == Method::GET;
    match segments.as_slice() {
        ["healthz" | "readyz" | "metrics" | "openapi.json"] => get,
        ["v1", "cluster"] => get,
        // List and create; describe, reconfigure and delete; expand; move.
        ["v1", "topics"] | ["v1", "topics", _] => true,
        ["v1", "topics", _, "partitions"] => true,
        [
            "v1",
            "topics",
            _,
            "partitions",
            _,
            "delete-records" | "elect" | "reassignment",
        ] => true,
        ["v1", "reassignments"] => get,
        // List, describe and delete groups; look at and reset their offsets (a member's
        // commit is a POST to `offsets`: client traffic).
        ["v1", "groups"] | ["v1", "groups", _] => true,
        ["v1", "groups", _, "offsets"] => get,
        ["v1", "groups", _, "offsets", "reset"] => true,
        _ => false,
    }
}

/// Serves the API until `shutdown` resolves; then finishes in-flight requests and returns.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = node.limits().clone();
    let (app, lane) = super::app(node);
    let slots = ConnectionSlots::new(&limits);
    // No timer for hyper: the header clock is the connection's own (`head_clock`).
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.keep_alive(true);
    let header_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let clocks = BodyClocks {
        stall: Duration::from_millis(limits.body_stall_timeout_ms),
        total: Duration::from_millis(limits.body_read_timeout_ms),
    };
    // Every connection task holds a receiver; `closed()` resolves when the last one ends.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, &slots) => accepted,
            () = &mut shutdown => break,
        };
        let (stream, slot) = accepted;
        let connection = Connection {
            app: app.clone(),
            lane: lane.clone(),
            slot,
            clocks,
            header_timeout,
            connections_max: limits.connections_max,
        };
        tokio::spawn(connection.serve(http1.clone(), stream, stop_rx.clone()));
    }
    drop(listener);
    drop(stop_rx);
    stop_tx.send_replace(true);
    stop_tx.closed().await;
    Ok(())
}

/// The two pools of connections.
struct ConnectionSlots {
    /// `connections_max` permits: connections that may call anything.
    general: Arc<Semaphore>,
    /// `health_connections_max` permits: connections past the limit, for probes, scrapes and
    /// admin calls.
    health: Arc<Semaphore>,
    /// For the log line when the general pool is full.
    general_max: u32,
}

/// When the "connections_max reached" line was last logged (ms since the epoch), so a flood
/// of connections logs one line every [`REFUSALS_LOGGED_EVERY_MS`], not one per connection.
static CONNECTIONS_FULL_LOGGED_MS: AtomicI64 = AtomicI64::new(i64::MIN);
/// The same for requests refused on a health-reserve connection.
static RESERVE_REFUSALS_LOGGED_MS: AtomicI64 = AtomicI64::new(i64::MIN);
const REFUSALS_LOGGED_EVERY_MS: i64 = 10_000;

/// True at most once every [`REFUSALS_LOGGED_EVERY_MS`] per `last`.
fn first_in_a_while(last: &AtomicI64) -> bool {
    let now = now_ms();
    let before = last.load(Ordering::Relaxed);
    now.saturating_sub(before) >= REFUSALS_LOGGED_EVERY_MS
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Which pool a connection's permit came from; given back when the connection closes.
enum Slot {
    General(#[allow(dead_code)] OwnedSemaphorePermit),
    Health(#[allow(dead_code)] OwnedSemaphorePermit),
}

impl ConnectionSlots {
    fn new(limits: &Limits) -> ConnectionSlots {
        ConnectionSlots {
            general: Arc::new(Semaphore::new(limits.connections_max as usize)),
            health: Arc::new(Semaphore::new(limits.health_connections_max as usize)),
            general_max: limits.connections_max,
        }
    }

    /// A general slot if one is free, else a health slot; waits while both pools are full.
    async fn acquire(&self) -> Slot {
        if let Ok(permit) = Arc::clone(&self.general).try_acquire_owned() {
            return Slot::General(permit);
        }
        if first_in_a_while(&CONNECTIONS_FULL_LOGGED_MS) {
            tracing::warn!(
                limit = Limit::ConnectionsMax.name(),
                value = self.general_max,
                "the connection limit is reached: new connections wait, or are served only for health and metrics"
            );
        }
        let closed = "connection semaphores are never closed";
        tokio::select! {
            biased;
            permit = Arc::clone(&self.general).acquire_owned() => Slot::General(permit.expect(closed)),
            permit = Arc::clone(&self.health).acquire_owned() => Slot::Health(permit.expect(closed)),
        }
    }
}

/// Takes a slot, then a connection (so connections past both pools wait in the kernel).
async fn accept(listener: &TcpListener, slots: &ConnectionSlots) -> (TcpStream, Slot) {
    let slot = slots.acquire().await;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Low produce latency: answers are written whole, Nagle only delays them.
                let _ = stream.set_nodelay(true);
                return (stream, slot);
            }
            // Out of file descriptors and the like: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Timeouts on reading a request body.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyClocks {
    /// `body_stall_timeout_ms`: longest wait for the next piece of the body.
    pub(super) stall: Duration,
    /// `body_read_timeout_ms`: longest time for the whole body, from the request head.
    pub(super) total: Duration,
}

impl BodyClocks {
    /// Why a body whose head came at `head` is out of time at `now`: past the total, or
    /// else stalled.
    pub(super) fn timeout(&self, head: Instant, now: Instant) -> BodyTimeout {
        if now >= head + self.total {
            BodyTimeout {
                limit_name: Limit::BodyReadTimeoutMs,
                limit_ms: self.total.as_millis() as u64,
            }
        } else {
            BodyTimeout {
                limit_name: Limit::BodyStallTimeoutMs,
                limit_ms: self.stall.as_millis() as u64,
            }
        }
    }
}

/// One accepted connection and what it needs to serve it.
struct Connection {
    app: Router,
    /// Produce requests, served outside the router (none with CORS configured).
    lane: Option<FastLane>,
    /// Held until the connection closes.
    slot: Slot,
    clocks: BodyClocks,
    /// `header_read_timeout_ms`.
    header_timeout: Duration,
    /// For the refusal on a health-reserve connection.
    connections_max: u32,
}

impl Connection {
    async fn serve(
        self,
        http1: hyper::server::conn::http1::Builder,
        stream: TcpStream,
        mut stop: watch::Receiver<bool>,
    ) {
        let _slot = &self.slot;
        let health_only = matches!(self.slot, Slot::Health(_));
        let (app, lane) = (self.app, self.lane);
        let (clocks, connections_max) = (self.clocks, self.connections_max);
        let head_clock = HeadClock::new();
        // Dropping the connection closes it, without an answer, as hyper's own clock did.
        let mut quiet = std::pin::pin!(head_clock.quiet_for(self.header_timeout));
        let mut stream = stream;
        let mut read = Bytes::new();
        if let Some(lane) = lane.as_ref().filter(|_| !health_only) {
            tokio::select! {
                end = lane_connection::serve(lane, &mut stream, &head_clock, clocks, &stop) => {
                    match end {
                        LaneEnd::Closed => return,
                        LaneEnd::HandOver(bytes) => read = bytes,
                    }
                }
                () = quiet.as_mut() => return,
            }
        }
        let service = hyper::service::service_fn({
            let head_clock = Arc::clone(&head_clock);
            move |request: Request<Incoming>| {
                let (app, lane) = (app.clone(), lane.clone());
                let busy = head_clock.enter();
                async move {
                    if health_only && !reserve_serves(request.method(), request.uri().path()) {
                        return Ok::<_, Infallible>(health_reserve_refusal(connections_max));
                    }
                    let mut request = request.map(|body| Body::new(TimedBody::new(body, clocks)));
                    if let Some(lane) = lane {
                        match lane.serve(request).await {
                            Ok(response) => return Ok(HeadClock::hand_over(busy, response)),
                            Err(not_taken) => request = not_taken,
                        }
                    }
                    let response = app.oneshot(request).await?;
                    Ok(HeadClock::hand_over(busy, response))
                }
            }
        });
        let io = Watched::new(
            TokioIo::new(Replayed::new(read, stream)),
            Arc::clone(&head_clock),
        );
        let connection = http1.serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => return,
            () = quiet.as_mut() => return,
            _ = stop.wait_for(|s| *s) => {}
        }
        connection.as_mut().graceful_shutdown();
        // A connection still waiting for a head is closed by the same clock.
        tokio::select! {
            _ = connection => {}
            () = quiet => {}
        }
    }
}

/// The answer on a health-reserve connection to anything but a probe, a scrape or an admin
/// call.
fn health_reserve_refusal(connections_max: u32) -> Response {
    if first_in_a_while(&RESERVE_REFUSALS_LOGGED_MS) {
        tracing::warn!(
            connections_max,
            limit = Limit::ConnectionsMax.name(),
            "refused a request on a health-reserve connection: the connection limit is reached"
        );
    }
    let mut response = ApiError::from(BrokerError::Overloaded {
        limit_name: Limit::ConnectionsMax,
        limit: u64::from(connections_max),
    })
    .into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// Reading a request body took too long: no progress for `body_stall_timeout_ms`, or not
/// complete within `body_read_timeout_ms`.
#[derive(Debug)]
pub struct BodyTimeout {
    pub limit_name: Limit,
    pub limit_ms: u64,
}

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.limit_name {
            Limit::BodyStallTimeoutMs => write!(
                f,
                "the request body made no progress for {} ms",
                self.limit_ms
            ),
            _ => write!(
                f,
                "the request body was not complete within {} ms",
                self.limit_ms
            ),
        }
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body on the clocks of [`BodyClocks`].
struct TimedBody {
    inner: Incoming,
    clocks: BodyClocks,
    /// When the whole body must be in.
    deadline: Instant,
    /// When the last piece arrived (the request head, at first).
    last_progress: Instant,
    /// The next of the two deadlines; made on the first wait, dropped on progress.
    timer: Option<Pin<Box<Sleep>>>,
}

impl TimedBody {
    fn new(inner: Incoming, clocks: BodyClocks) -> TimedBody {
        let now = Instant::now();
        TimedBody {
            inner,
            clocks,
            deadline: now + clocks.total,
            last_progress: now,
            timer: None,
        }
    }

    fn timeout(&self) -> BodyTimeout {
        self.clocks
            .timeout(self.deadline - self.clocks.total, Instant::now())
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.last_progress = Instant::now();
            this.timer = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let wake_at = (this.last_progress + this.clocks.stall).min(this.deadline);
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake_at)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(this.timeout().into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the API, with its placeholders filled in, is served on the reserve
    /// exactly when it is a probe, a scrape or an admin call.
    #[test]
    fn the_reserve_serves_probes_scrapes_and_admin_calls_and_no_client_traffic() {
        let admin: &[(&str, Method)] = &[
            ("/healthz", Method::GET),
            ("/readyz", Method::GET),
            ("/metrics", Method::GET),
            ("/openapi.json", Method::GET),
            ("/v1/cluster", Method::GET),
            ("/v1/topics", Method::GET),
            ("/v1/topics", Method::POST),
            ("/v1/topics/{topic}", Method::GET),
            ("/v1/topics/{topic}", Method::PATCH),
            ("/v1/topics/{topic}", Method::DELETE),
            ("/v1/topics/{topic}/partitions", Method::POST),
            (
                "/v1/topics/{topic}/partitions/{partition}/delete-records",
                Method::POST,
            ),
            (
                "/v1/topics/{topic}/partitions/{partition}/elect",
                Method::POST,
            ),
            (
                "/v1/topics/{topic}/partitions/{partition}/reassignment",
                Method::POST,
            ),
            (
                "/v1/topics/{topic}/partitions/{partition}/reassignment",
                Method::DELETE,
            ),
            ("/v1/reassignments", Method::GET),
            ("/v1/groups", Method::GET),
            ("/v1/groups/{group}", Method::GET),
            ("/v1/groups/{group}", Method::DELETE),
            ("/v1/groups/{group}/offsets", Method::GET),
            ("/v1/groups/{group}/offsets/reset", Method::POST),
        ];
        let mut seen_client_traffic = 0;
        for (template, methods) in super::super::route_table() {
            let path = template
                .replace("{topic}", "orders")
                .replace("{partition}", "0")
                .replace("{group}", "g")
                .replace("{member}", "m-1");
            for method in methods {
                let is_admin = admin.iter().any(|(t, m)| *t == template && *m == method);
                seen_client_traffic += usize::from(!is_admin);
                assert_eq!(
                    reserve_serves(&method, &path),
                    is_admin,
                    "{method} {template} on a health-reserve connection"
                );
            }
        }
        assert!(seen_client_traffic >= 8, "produce, fetch, streams, members");
    }
}
