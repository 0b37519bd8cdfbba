//! The per-request HTTP series (`tidelog_http_requests_total`, `..._request_seconds`) through
//! cached handles.
//!
//! Looking a series up through the `metrics` macros on every request builds its key (an
//! `Arc` of cloned labels), hashes and compares it in the registry and drops it again: about
//! twenty allocations per request with owned label strings. The labels here are `'static`
//! (route templates from the router's table, the standard methods) and the handles are
//! kept per (route, method, status), so a request costs one map lookup.
//!
//! [`RequestMetricsLayer`] wraps every route and fallback (around the forwarding layer, in
//! one axum layer): a tower service of its own, not `axum::middleware::from_fn`, which boxes
//! a clone of the inner service, a `Next` and its own future on every request. Here the
//! inner future is wrapped as it is (no box), and the series is recorded when it yields the
//! answer.
//!
//! A kept handle would count into nothing once the exporter dropped its series as idle (see
//! [`crate::metrics::install_with_idle_timeout`]). So a handle is looked up again through the
//! registry when it is older than [`RESOLVE_EVERY`], which is shorter than the shortest idle
//! timeout: a handle used without a new look-up was resolved, and so its series updated,
//! less than the idle timeout ago, and its series is still there.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use metrics::{Counter, Histogram};
use tower::{Layer, Service};

use crate::metrics as m;

/// Shorter than the shortest series idle timeout a broker runs with (100 ms).
const RESOLVE_EVERY: Duration = Duration::from_millis(50);

/// Route templates as `'static` labels, filled by [`super::router`].
static ROUTES: OnceLock<HashSet<&'static str>> = OnceLock::new();

/// A request series: route template, method and status. The labels are `'static` and few,
/// so a key is known by where its strings are, not by their bytes: hashing and comparing the
/// addresses is a few instructions where SipHash over the bytes was a few hundred. (Two
/// copies of one string would only make two entries holding handles of the same series.)
#[derive(Debug, Clone, Copy)]
struct SeriesKey {
    route: &'static str,
    method: &'static str,
    status: u16,
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.route, other.route)
            && std::ptr::eq(self.method, other.method)
            && self.status == other.status
    }
}

impl Eq for SeriesKey {}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.route.as_ptr() as usize);
        state.write_usize(self.method.as_ptr() as usize);
        state.write_u16(self.status);
    }
}

/// Mixes the few words of a [`SeriesKey`] (multiply and rotate, as FxHash does).
#[derive(Default)]
struct SeriesHasher(u64);

impl SeriesHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for SeriesHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.mix(u64::from(b)));
    }
    fn write_u16(&mut self, n: u16) {
        self.mix(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

struct Handles {
    requests: Counter,
    seconds: Histogram,
    resolved: Instant,
}

type HandleMap = HashMap<SeriesKey, Handles, BuildHasherDefault<SeriesHasher>>;

thread_local! {
    /// Each thread's own handles: a request takes no lock shared with the other workers.
    static HANDLES: RefCell<HandleMap> = RefCell::new(HandleMap::default());
}

/// Counts requests and times them by route template (bounded cardinality) and status.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestMetricsLayer;

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> RequestMetrics<S> {
        RequestMetrics { inner }
    }
}

/// A route (or fallback) whose requests are counted and timed.
#[derive(Clone)]
pub(super) struct RequestMetrics<S> {
    /// What serves the request.
    inner: S,
}

impl<S> Service<Request> for RequestMetrics<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Timed<S::Future> {
        let started = Instant::now();
        let route = route_label(
            request
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str()),
        );
        let method = method_label(request.method());
        Timed {
            answer: self.inner.call(request),
            started,
            route,
            method,
        }
    }
}

/// A request's answer on its way; recorded when it is ready (not if the request is dropped
/// first, as with a client gone).
pub(super) struct Timed<F> {
    /// The answer's future (`Unpin`: the services under it box what they must).
    answer: F,
    /// When the request reached the route.
    started: Instant,
    /// The `route` label.
    route: &'static str,
    /// The `method` label.
    method: &'static str,
}

impl<F> Future for Timed<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(response) = ready!(Pin::new(&mut self.answer).poll(cx));
        let took = self.started.elapsed().as_secs_f64();
        record(self.route, self.method, response.status(), took);
        Poll::Ready(Ok(response))
    }
}

/// Remembers the router's route templates (the only values the `route` label takes).
pub(super) fn set_routes(paths: impl IntoIterator<Item = &'static str>) {
    let _ = ROUTES.set(paths.into_iter().collect());
}

/// The `route` label: the matched template, or `unmatched`.
fn route_label(matched: Option<&str>) -> &'static str {
    matched
        .and_then(|p| ROUTES.get()?.get(p).copied())
        .unwrap_or("unmatched")
}

/// The `method` label: extension methods are any token a client likes, so only the
/// standard ones become labels.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts one request and records its duration.
pub(super) fn record(route: &'static str, method: &'static str, status: StatusCode, took: f64) {
    let now = Instant::now();
    let key = SeriesKey {
        route,
        method,
        status: status.as_u16(),
    };
    HANDLES.with_borrow_mut(|map| {
        let handles = map.entry(key).or_insert_with(|| resolve(key, now));
        if now.saturating_duration_since(handles.resolved) >= RESOLVE_EVERY {
            *handles = resolve(key, now);
        }
        handles.requests.increment(1);
        handles.seconds.record(took);
    });
}

/// The series' handles, looked up in the registry now.
fn resolve(key: SeriesKey, now: Instant) -> Handles {
    let SeriesKey {
        route,
        method,
        status,
    } = key;
    let status = status.to_string();
    Handles {
        requests: ::metrics::counter!(
            m::HTTP_REQUESTS, "route" => route, "method" => method, "status" => status
        ),
        seconds: ::metrics::histogram!(m::HTTP_REQUEST_SECONDS, "route" => route, "method" => method),
        resolved: now,
    }
}
