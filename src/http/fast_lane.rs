//! The produce route served without the router: `POST /v1/topics/{topic}/records`, the
//! request every producer sends, most often with one record.
//!
//! Through axum's router a request is matched, given a `MatchedPath` extension (a map of its
//! own), and passed through the metrics and forwarding layers and the route's boxed service
//! and future; the handler's extractors then copy the path parameter, the query and every
//! header. That is about a third of a single-record produce's allocations and a tenth of
//! its instructions (`benches/profile/produce.sh`). Here the path is matched by hand and the
//! handler's body, `produce::produce_outcome`, reads the request where it lies.
//!
//! Invariant: the lane answers exactly what the router would. It takes only requests whose
//! route, forwarding and answer it knows to be the router's:
//! - the method is `POST` and the path is `/v1/topics/{topic}/records` with a topic segment
//!   that is not empty and needs no percent-decoding (anything else goes to the router, which
//!   matches or refuses it; a unit test holds the lane's match to the router's);
//! - no `Idempotency-Key` header (on a cluster such a produce is forwarded, see `forward`);
//! - no CORS configured (the CORS layer decorates answers; with it, there is no lane).
//!
//! On a cluster a produce without a key is served where it lands and split per partition
//! (`produce_split`), as the forwarding layer does for it. The request is counted and timed
//! in the same series as through the router.

use std::ops::Range;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::produce::{ProduceBody, produce_outcome, reads_body_first};
use super::render::{produce_status, render_produce};
use super::request_metrics;
use crate::broker::ProduceOutcome;

/// The produce route's template, as the router and the metrics name it.
pub(super) const PRODUCE_ROUTE: &str = "/v1/topics/{topic}/records";

/// What serves produce requests outside the router.
#[derive(Debug, Clone)]
pub(super) struct FastLane {
    node: AppState,
}

impl FastLane {
    /// The lane, unless CORS is configured.
    pub(super) fn new(node: AppState) -> Option<FastLane> {
        node.broker
            .config
            .cors_allowed_origins
            .is_empty()
            .then_some(FastLane { node })
    }

    /// Serves `request` if the lane takes it (see the module's invariant); gives it back
    /// otherwise, untouched, for the router.
    pub(super) async fn serve(&self, request: Request<Body>) -> Result<Response, Request<Body>> {
        if request.method() != Method::POST
            || request
                .headers()
                .contains_key(super::idempotency_key::HEADER)
        {
            return Err(request);
        }
        let Some(topic) = produce_topic(request.uri().path()) else {
            return Err(request);
        };
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let topic = &parts.uri.path()[topic];
        let body = ProduceBody::Streamed {
            headers: &parts.headers,
            body,
        };
        let outcome = self.produce_outcome(started, topic, parts.uri.query(), body);
        Ok(outcome
            .await
            .map_or_else(|refused| refused, |o| render_produce(&o)))
    }

    /// The lane's produce, counted and timed in the produce route's series: the outcome
    /// (rendered by the caller: the connection lane writes it itself), or the refusal's
    /// answer.
    pub(super) async fn produce_outcome(
        &self,
        started: Instant,
        topic: &str,
        query: Option<&str>,
        body: ProduceBody<'_>,
    ) -> Result<ProduceOutcome, Response> {
        let outcome = produce_outcome(&self.node, topic, query, body)
            .await
            .map_err(IntoResponse::into_response);
        let status = match &outcome {
            Ok(outcome) => produce_status(outcome),
            Err(response) => response.status(),
        };
        count(started, status);
        outcome
    }

    /// Whether a produce with `query` is refused, if at all, only once its body is read
    /// ([`reads_body_first`]).
    pub(super) fn reads_body_first(&self, query: Option<&str>) -> bool {
        reads_body_first(&self.node.broker, query)
    }

    /// `request_body_bytes_max`.
    pub(super) fn body_bytes_max(&self) -> u64 {
        self.node.limits().request_body_bytes_max
    }
}

/// Counts and times a produce that began at `started` in the produce route's series.
pub(super) fn count(started: Instant, status: StatusCode) {
    request_metrics::record(
        PRODUCE_ROUTE,
        "POST",
        status,
        started.elapsed().as_secs_f64(),
    );
}

/// Where the topic is in a produce path the lane takes: `/v1/topics/{topic}/records` with a
/// topic that is not empty and holds no `%` (so it reads the same percent-decoded).
pub(super) fn produce_topic(path: &str) -> Option<Range<usize>> {
    const BEFORE: &str = "/v1/topics/";
    let topic = path.strip_prefix(BEFORE)?.strip_suffix("/records")?;
    let plain = !topic.is_empty() && !topic.contains(['/', '%']);
    plain.then(|| BEFORE.len()..BEFORE.len() + topic.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::Path;
    use axum::routing::post;
    use tower::ServiceExt;

    /// What the router does with a path: the topic it hands the produce handler, or `None`
    /// if the produce route does not match.
    async fn routed_topic(path: &str) -> Option<String> {
        let router = Router::new().route(
            PRODUCE_ROUTE,
            post(|Path(topic): Path<String>| async move { topic }),
        );
        let request = Request::post(path).body(Body::empty()).ok()?;
        let response = router.oneshot(request).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .ok()?;
        Some(String::from_utf8(body.to_vec()).expect("a topic the handler echoed"))
    }

    /// The lane takes a path only where the router would serve the produce route, with the
    /// same topic; and it takes the plain ones.
    #[tokio::test]
    async fn the_lane_matches_only_what_the_router_routes_to_produce_with_the_same_topic() {
        let paths = [
            "/v1/topics/orders/records",
            "/v1/topics/a.b_c-D9/records",
            "/v1/topics//records",
            "/v1/topics/orders/records/",
            "/v1/topics/orders/records/x",
            "/v1/topics/orders//records",
            "/v1/topics/a/b/records",
            "/v1/topics/or%64ers/records",
            "/v1/topics/%2F/records",
            "/v1/topics/records",
            "/v1/topics/orders/partitions/0/records",
            "/v1/topics/ord+ers/records",
            "/v1/topics/ord:ers/records",
            "//v1/topics/orders/records",
            "/V1/topics/orders/records",
            "/v1/topics/orders/Records",
        ];
        for path in paths {
            let lane = produce_topic(path).map(|range| &path[range]);
            let routed = routed_topic(path).await;
            if let Some(topic) = lane {
                assert_eq!(Some(topic), routed.as_deref(), "{path}");
            }
        }
        for plain in ["/v1/topics/orders/records", "/v1/topics/a.b_c-D9/records"] {
            assert!(produce_topic(plain).is_some(), "{plain}");
        }
    }
}
