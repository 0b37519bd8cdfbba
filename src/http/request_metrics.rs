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

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
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

type SeriesKey = (&'static str, &'static str, u16);

struct Handles {
    requests: Counter,
    seconds: Histogram,
    resolved: Instant,
}

static HANDLES: OnceLock<Mutex<HashMap<SeriesKey, Handles>>> = OnceLock::new();

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
    let key = (route, method, status.as_u16());
    let map = HANDLES.get_or_init(Default::default);
    let mut map = map
        .lock()
        .expect("the request series lock is poisoned only after a panic");
    let fresh = |h: &Handles| now.saturating_duration_since(h.resolved) < RESOLVE_EVERY;
    let handles = match map.get(&key) {
        Some(h) if fresh(h) => h,
        _ => {
            let status = status.as_u16().to_string();
            let requests = ::metrics::counter!(
                m::HTTP_REQUESTS, "route" => route, "method" => method, "status" => status
            );
            let seconds = ::metrics::histogram!(m::HTTP_REQUEST_SECONDS, "route" => route, "method" => method);
            map.insert(
                key,
                Handles {
                    requests,
                    seconds,
                    resolved: now,
                },
            );
            &map[&key]
        }
    };
    handles.requests.increment(1);
    handles.seconds.record(took);
}
