//! The per-request HTTP series (`tidelog_http_requests_total`, `..._request_seconds`) through
//! cached handles.
//!
//! Looking a series up through the `metrics` macros on every request builds its key (an
//! `Arc` of cloned labels), hashes and compares it in the registry and drops it again: about
//! twenty allocations per request with owned label strings. The labels here are `'static`
//! (route templates from the router's table, the standard methods) and the handles are
//! kept per (route, method, status), so a request costs one map lookup.
//!
//! A kept handle would count into nothing once the exporter dropped its series as idle (see
//! [`crate::metrics::install_with_idle_timeout`]). So a handle is looked up again through the
//! registry when it is older than [`RESOLVE_EVERY`], which is shorter than the shortest idle
//! timeout: a handle used without a new look-up was resolved, and so its series updated,
//! less than the idle timeout ago, and its series is still there.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use metrics::{Counter, Histogram};

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

/// Remembers the router's route templates (the only values the `route` label takes).
pub(super) fn set_routes(paths: impl IntoIterator<Item = &'static str>) {
    let _ = ROUTES.set(paths.into_iter().collect());
}

/// The `route` label: the matched template, or `unmatched`.
pub(super) fn route_label(matched: Option<&str>) -> &'static str {
    matched
        .and_then(|p| ROUTES.get()?.get(p).copied())
        .unwrap_or("unmatched")
}

/// The `method` label: extension methods are any token a client likes, so only the
/// standard ones become labels.
pub(super) fn method_label(method: &Method) -> &'static str {
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
