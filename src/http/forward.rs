//! Any broker answers any request (issue 9): a one-hop proxy to the broker that serves it.
//!
//! On a cluster ([`Cluster::is_clustered`]) every matched route is classified by
//! [`served_at`]: topic admin goes to the controller; consumer groups, producer sessions and
//! produces with an `Idempotency-Key` to their coordinator, the leader of the internal topic
//! that keeps their state (`__consumer_offsets`, `__producers`, `__idempotency_keys`; the
//! controller while the metadata has no such topic yet, which makes it: see
//! `crate::coordination`); a partition's reads (fetch, long-poll, SSE) and `delete-records`
//! to the partition's leader as this broker's metadata names it; everything else is served
//! where it lands. A produce is not proxied whole: it is split per partition
//! (`produce_split`). On a broker alone nothing here runs but one check.
//!
//! Invariants:
//! - One hop. A proxied request carries [`FORWARDED_HEADER`]; a broker that would proxy such a
//!   request again answers 421 (`not_leader` with the leader's id and address, or
//!   `not_controller`) instead, so stale metadata on two brokers can never bounce a request
//!   between them.
//! - Nothing is buffered whole: the request body streams to the target (cut at
//!   `request_body_bytes_max`), the answer streams back frame by frame as the target writes
//!   it, so an SSE stream or a long-poll holds one frame at a time, paced by the client.
//! - Bounded: the target must begin its answer within `forward_timeout_ms` plus the wait the
//!   request asks for (`wait_ms`, `timeout_ms`, capped at `wait_ms_max`); connections come
//!   from one pool per node with a connect timeout and a bounded idle set; each proxied
//!   request holds one inbound connection (`connections_max`) and one outbound one.
//! - `replica=local` reads are never proxied: they read this broker's own replica.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::Route;
use axum::routing::future::RouteFuture;
use futures_util::future::{BoxFuture, Either};
use http_body_util::Limited;
use serde::Deserialize;
use tower::{Layer, Service};

use super::AppState;
use super::body::check_declared_length;
use super::error::ApiError;
use crate::broker::BrokerError;
use crate::cluster::Cluster;
use crate::groups::OFFSETS_TOPIC;
use crate::metadata::{NodeId, PartitionId};
use crate::producers::PRODUCERS_TOPIC;
use crate::producers::idempotency_keys::IDEMPOTENCY_KEYS_TOPIC;

/// Marks a request one broker proxied to another; its value is the proxying broker's id.
pub const FORWARDED_HEADER: &str = "tidelog-forwarded";

/// What a client refused because a broker is unreachable is asked to wait.
pub(super) const UNAVAILABLE_RETRY_AFTER_S: u32 = 1;

/// Where a route is served on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedAt {
    /// Where the request lands.
    Here,
    /// The controller (topic admin).
    Controller,
    /// The leader of this internal topic's partition, which serves the state it keeps
    /// (consumer groups, producer sessions, idempotency keys).
    Coordinator(&'static str),
    /// The leader of the route's `{topic}`/`{partition}`.
    PartitionLeader,
}

/// Where the route `template` with `method` is served on a cluster; `None` for a route this
/// table does not know (a test keeps every route of the API in it).
pub fn served_at(template: &str, method: &Method) -> Option<ServedAt> {
    use ServedAt::*;
    let at = match (template, method) {
        ("/v1/topics", &Method::POST) => Controller,
        ("/v1/topics", &Method::GET) => Here,
        ("/v1/topics/{topic}", &Method::GET) => Here,
        ("/v1/topics/{topic}", &Method::PATCH | &Method::DELETE) => Controller,
        ("/v1/topics/{topic}/partitions", _) => Controller,
        ("/v1/topics/{topic}/partitions/{partition}/delete-records", _) => PartitionLeader,
        ("/v1/topics/{topic}/partitions/{partition}/elect", _) => Controller,
        ("/v1/topics/{topic}/partitions/{partition}/reassignment", _) => Controller,
        // From this broker's copy of the metadata, as the topic views.
        ("/v1/reassignments", _) => Here,
        // Split per partition where it lands (`produce_split`).
        ("/v1/topics/{topic}/records", _) => Here,
        ("/v1/topics/{topic}/partitions/{partition}/records", _) => PartitionLeader,
        ("/v1/topics/{topic}/partitions/{partition}/stream", _) => PartitionLeader,
        // One registry hands out producer ids, so none is handed out twice.
        ("/v1/producers", _) => Coordinator(PRODUCERS_TOPIC),
        (t, _) if t == "/v1/groups" || t.starts_with("/v1/groups/") => Coordinator(OFFSETS_TOPIC),
        ("/v1/cluster" | "/healthz" | "/readyz" | "/openapi.json" | "/metrics", _) => Here,
        (t, _) if t.starts_with("/internal/") => Here,
        _ => return None,
    };
    Some(at)
}

/// A produce with an `Idempotency-Key` is served by the leader of `__idempotency_keys`, where
/// the keys are stored: one place decides whether a key was seen, and the produce is split
/// from there like any other. (Keys checked where they land would let two brokers each run a
/// retry.)
fn keyed_produce_at(at: ServedAt, request: &Request) -> ServedAt {
    let is_produce = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|t| t.as_str() == "/v1/topics/{topic}/records");
    if is_produce
        && request
            .headers()
            .contains_key(super::idempotency_key::HEADER)
    {
        ServedAt::Coordinator(IDEMPOTENCY_KEYS_TOPIC)
    } else {
        at
    }
}

/// Who serves a partition, as this broker's metadata says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionHome {
    /// The metadata has no such topic or partition (a broker alone, or a topic only on
    /// this broker's disk): served here, as on a single broker.
    Unknown,
    /// This broker leads it.
    Here,
    /// Another broker leads it, listening at this address.
    Remote(NodeId, SocketAddr),
    /// No replica may lead it now.
    Offline,
}

/// A topic's partitions, for splitting a produce (see [`topic_homes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicHomes {
    /// Indexed by partition id.
    pub partitions: Vec<PartitionHome>,
    /// The topic's `max_message_bytes`.
    pub max_message_bytes: u64,
}

/// Who serves `topic`'s `partition`, as this broker's metadata says.
pub fn partition_home(cluster: &Cluster, topic: &str, partition: PartitionId) -> PartitionHome {
    let leader = cluster.with_image(|image| Some(image.partition(topic, partition)?.leader));
    match leader {
        None => PartitionHome::Unknown,
        Some(leader) => home_of(cluster, leader),
    }
}

/// A topic's partitions as the metadata knows them; `None` when it has no such topic.
pub fn topic_homes(cluster: &Cluster, topic: &str) -> Option<TopicHomes> {
    let (leaders, max_message_bytes) = cluster.with_image(|image| {
        let t = image.topics.get(topic)?;
        let leaders: Vec<Option<NodeId>> = t.partitions.iter().map(|p| p.leader).collect();
        Some((leaders, t.config.max_message_bytes))
    })?;
    Some(TopicHomes {
        partitions: leaders.into_iter().map(|l| home_of(cluster, l)).collect(),
        max_message_bytes,
    })
}

fn home_of(cluster: &Cluster, leader: Option<NodeId>) -> PartitionHome {
    match leader {
        None => PartitionHome::Offline,
        Some(node) if node == cluster.node_id() => PartitionHome::Here,
        Some(node) => match cluster.peer_address(node) {
            Some(address) => PartitionHome::Remote(node, address),
            None => PartitionHome::Offline,
        },
    }
}

/// Wraps every route and fallback in [`Forward`].
#[derive(Debug, Clone)]
pub struct ForwardLayer {
    /// Where the cluster's metadata and the forwarding client are.
    node: AppState,
    /// Each route template's methods, from the router's table: only a request that one of
    /// them serves is forwarded (a 404 or a 405 is answered where it lands).
    routes: Arc<HashMap<&'static str, Vec<Method>>>,
}

impl ForwardLayer {
    pub fn new(
        node: AppState,
        routes: impl IntoIterator<Item = (&'static str, Vec<Method>)>,
    ) -> ForwardLayer {
        ForwardLayer {
            node,
            routes: Arc::new(routes.into_iter().collect()),
        }
    }
}

impl Layer<Route> for ForwardLayer {
    type Service = Forward;

    fn layer(&self, route: Route) -> Forward {
        Forward {
            node: self.node.clone(),
            routes: Arc::clone(&self.routes),
            route,
        }
    }
}

/// A route that serves a request here, or proxies it one hop to the broker that serves it.
/// A tower service of its own rather than `axum::middleware::from_fn_with_state`, which
/// clones the state and boxes the route, a `Next` and a future on every request: on a broker
/// alone the route is called as it is, with nothing boxed.
#[derive(Clone)]
pub struct Forward {
    /// Where the cluster's metadata and the forwarding client are.
    node: AppState,
    /// Each route template's methods (see [`ForwardLayer`]).
    routes: Arc<HashMap<&'static str, Vec<Method>>>,
    /// The route, always ready (`Route::poll_ready` is `Ready`), so it is called as it is.
    route: Route,
}

impl Forward {
    /// Whether the request matched a route template and one of its methods (a `GET` route
    /// serves `HEAD` too).
    fn is_routed(&self, request: &Request) -> bool {
        let Some(methods) = request
            .extensions()
            .get::<MatchedPath>()
            .and_then(|t| self.routes.get(t.as_str()))
        else {
            return false;
        };
        let method = request.method();
        methods.contains(method) || (method == Method::HEAD && methods.contains(&Method::GET))
    }
}

impl Service<Request> for Forward {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<RouteFuture<Infallible>, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.route, cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if !self.node.cluster.is_clustered() || !self.is_routed(&request) {
            return Either::Left(self.route.call(request));
        }
        let node = self.node.clone();
        let next = Next(self.route.clone());
        Either::Right(Box::pin(async move {
            Ok(route_request(node, request, next).await)
        }))
    }
}

/// The route under [`Forward`], for a request served here.
struct Next(Route);

impl Next {
    async fn run(mut self, request: Request) -> Response {
        let Ok(response) = self.0.call(request).await;
        response
    }
}

/// Serves a request here, or proxies it one hop to the broker that serves it (on a cluster).
async fn route_request(node: AppState, request: Request, next: Next) -> Response {
    let served = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|t| served_at(t.as_str(), request.method()))
        .map(|at| keyed_produce_at(at, &request));
    match served {
        None | Some(ServedAt::Here) => next.run(request).await,
        Some(ServedAt::Controller) => {
            let controller = node.cluster.controller_id();
            to_node(&node, controller, Miss::Controller, request, next).await
        }
        Some(ServedAt::Coordinator(topic)) => {
            match partition_home(&node.cluster, topic, PartitionId(0)) {
                // No such topic yet: the controller makes it, with itself as preferred leader.
                PartitionHome::Unknown => {
                    let controller = node.cluster.controller_id();
                    to_node(&node, controller, Miss::Controller, request, next).await
                }
                PartitionHome::Here => next.run(request).await,
                PartitionHome::Remote(leader, _) => {
                    to_node(&node, leader, Miss::Coordinator(topic), request, next).await
                }
                PartitionHome::Offline => {
                    ApiError::from(BrokerError::NotCoordinator { topic }).into_response()
                }
            }
        }
        Some(ServedAt::PartitionLeader) => {
            let (mut parts, body) = request.into_parts();
            let home = home_of_request(&node, &mut parts).await;
            let request = Request::from_parts(parts, body);
            match home {
                PartitionHome::Unknown | PartitionHome::Here => next.run(request).await,
                PartitionHome::Offline => leader_not_available().into_response(),
                PartitionHome::Remote(leader, _) => {
                    to_node(&node, leader, Miss::Leader, request, next).await
                }
            }
        }
    }
}

/// What a broker answers a forwarded request it would forward again.
#[derive(Debug, Clone, Copy)]
enum Miss {
    Leader,
    Controller,
    /// The leader of this internal topic, as this broker's metadata names it.
    Coordinator(&'static str),
}

/// Serves the request here if `id` is this broker; else proxies it there, once.
async fn to_node(
    node: &AppState,
    id: NodeId,
    miss: Miss,
    request: Request,
    next: Next,
) -> Response {
    if id == node.cluster.node_id() {
        return next.run(request).await;
    }
    let Some(address) = node.cluster.peer_address(id) else {
        return leader_not_available().into_response();
    };
    if request.headers().contains_key(FORWARDED_HEADER) {
        return second_miss(miss, id, address).into_response();
    }
    proxy(node, request, id, address).await
}

/// The partition a leader route names, and where it is served; a `replica=local` read, or a
/// path that does not parse (the handler answers that), is served here.
async fn home_of_request(node: &AppState, parts: &mut axum::http::request::Parts) -> PartitionHome {
    if wants_local_replica(parts.uri.query()) {
        return PartitionHome::Unknown;
    }
    let params = axum::extract::Path::<HashMap<String, String>>::from_request_parts(parts, &())
        .await
        .ok();
    let named = params.as_ref().and_then(|axum::extract::Path(p)| {
        let partition = PartitionId(p.get("partition")?.parse::<u32>().ok()?);
        Some((p.get("topic")?.clone(), partition))
    });
    match named {
        Some((topic, partition)) => partition_home(&node.cluster, &topic, partition),
        None => PartitionHome::Unknown,
    }
}

/// The query parameters the proxy reads; every other one passes through untouched.
#[derive(Debug, Default, Deserialize)]
struct ProxiedQuery {
    replica: Option<String>,
    wait_ms: Option<String>,
    timeout_ms: Option<String>,
}

fn proxied_query(query: Option<&str>) -> ProxiedQuery {
    serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default()
}

fn wants_local_replica(query: Option<&str>) -> bool {
    proxied_query(query).replica.as_deref() == Some("local")
}

/// The wait a request asks the target for (`wait_ms` of a long-poll, `timeout_ms` of a
/// produce or an admin call), capped at `wait_ms_max`; a value that does not parse is the
/// target's to refuse, and waits nothing here.
fn requested_wait(query: Option<&str>, wait_ms_max: u64) -> Duration {
    let q = proxied_query(query);
    let ms = [q.wait_ms, q.timeout_ms]
        .iter()
        .flatten()
        .filter_map(|v| v.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Duration::from_millis(ms.min(wait_ms_max))
}

/// Headers that describe one connection, never passed on by a proxy (RFC 9110, 7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Proxies `request` to broker `id` at `address` and streams its answer back.
async fn proxy(node: &AppState, request: Request, id: NodeId, address: SocketAddr) -> Response {
    let limits = node.limits();
    let (mut parts, body) = request.into_parts();
    // A body declared too large is refused here, as the target would, before anything is sent.
    if let Err(e) = check_declared_length(&parts.headers, limits.request_body_bytes_max) {
        return e.into_response();
    }
    let wait = requested_wait(parts.uri.query(), limits.wait_ms_max);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("http://{address}{path}").parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => return ApiError::invalid(format!("cannot forward {path}: {e}")).into_response(),
    };
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    parts.headers.insert(
        HeaderName::from_static(FORWARDED_HEADER),
        HeaderValue::from(node.cluster.node_id().0),
    );
    let body = Body::new(Limited::new(body, limits.request_body_bytes_max as usize));
    let forwarder = &node.forward;
    let deadline = forwarder.deadline(wait);
    let sent = tokio::time::timeout(
        deadline,
        forwarder.client().request(Request::from_parts(parts, body)),
    )
    .await;
    match sent {
        Ok(Ok(answer)) => {
            let (mut parts, incoming) = answer.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(incoming))
        }
        Ok(Err(e)) if e.is_connect() => broker_unavailable(id, address, &e).into_response(),
        Ok(Err(e)) => {
            forward_failed(id, address, &format!("the exchange broke: {e}")).into_response()
        }
        Err(_) => {
            let why = format!("no answer within {} ms", deadline.as_millis());
            forward_timeout(id, address, &why).into_response()
        }
    }
}

/// A broker that serves the request could not be reached: nothing was sent to it.
pub(super) fn broker_unavailable(
    id: NodeId,
    address: SocketAddr,
    e: &dyn std::fmt::Display,
) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker_unavailable",
        format!(
            "broker {} at {address}, which serves this request, cannot be reached ({e}); \
             nothing was sent to it",
            id.0
        ),
    )
    .with("node_id", id.0)
    .with("address", address.to_string())
    .retry_after(UNAVAILABLE_RETRY_AFTER_S)
}

/// The broker that serves the request was sent it and did not answer in time.
pub(super) fn forward_timeout(id: NodeId, address: SocketAddr, why: &str) -> ApiError {
    sent_but(
        StatusCode::GATEWAY_TIMEOUT,
        "forward_timeout",
        id,
        address,
        why,
    )
}

/// The broker that serves the request was sent it and the exchange broke, or it answered
/// something that is not a tidelog answer.
pub(super) fn forward_failed(id: NodeId, address: SocketAddr, why: &str) -> ApiError {
    sent_but(StatusCode::BAD_GATEWAY, "forward_failed", id, address, why)
}

fn sent_but(
    status: StatusCode,
    code: &'static str,
    id: NodeId,
    address: SocketAddr,
    why: &str,
) -> ApiError {
    ApiError::new(
        status,
        code,
        format!(
            "broker {} at {address}, which serves this request, was sent it but {why}; \
             whether it took effect is unknown",
            id.0
        ),
    )
    .with("node_id", id.0)
    .with("address", address.to_string())
}

/// The partition has no leader now: no in-sync or eligible replica is alive (Kafka's
/// `LEADER_NOT_AVAILABLE`). Retryable: a returning eligible replica is elected at once.
pub(super) fn leader_not_available() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "leader_not_available",
        "the partition has no leader now: none of its in-sync or eligible replicas is alive \
         (one is elected as soon as it returns; an operator may force an unclean election)",
    )
    .retry_after(UNAVAILABLE_RETRY_AFTER_S)
}

/// A request for a partition this broker does not lead, that it must not forward again.
pub(super) fn not_leader(id: NodeId, address: SocketAddr) -> ApiError {
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "not_leader",
        format!(
            "this broker does not lead the partition; broker {} at {address} does, as far as \
             this broker knows (a forwarded request is not forwarded again)",
            id.0
        ),
    )
    .with("leader", id.0)
    .with("leader_address", address.to_string())
}

/// The answer to a forwarded request that this broker does not serve either.
fn second_miss(miss: Miss, id: NodeId, address: SocketAddr) -> ApiError {
    match miss {
        Miss::Leader => not_leader(id, address),
        Miss::Coordinator(topic) => ApiError::from(BrokerError::NotCoordinator { topic })
            .with("coordinator", id.0)
            .with("coordinator_address", address.to_string()),
        Miss::Controller => ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "not_controller",
            format!(
                "this broker does not run the controller; broker {} at {address} does \
                 (a forwarded request is not forwarded again)",
                id.0
            ),
        )
        .with("controller", id.0)
        .with("controller_address", address.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_api_says_where_it_is_served() {
        for (template, methods) in super::super::route_table() {
            for method in methods {
                assert!(
                    served_at(template, &method).is_some(),
                    "{method} {template} is not in forward::served_at"
                );
            }
        }
    }

    #[test]
    fn admin_goes_to_the_controller_reads_to_the_leader_produce_stays() {
        let cases = [
            ("/v1/topics", Method::POST, ServedAt::Controller),
            ("/v1/topics/{topic}", Method::DELETE, ServedAt::Controller),
            ("/v1/topics/{topic}", Method::GET, ServedAt::Here),
            (
                "/v1/topics/{topic}/partitions/{partition}/stream",
                Method::GET,
                ServedAt::PartitionLeader,
            ),
            ("/v1/topics/{topic}/records", Method::POST, ServedAt::Here),
            (
                "/v1/groups/{group}/offsets",
                Method::POST,
                ServedAt::Coordinator(OFFSETS_TOPIC),
            ),
            (
                "/v1/producers",
                Method::POST,
                ServedAt::Coordinator(PRODUCERS_TOPIC),
            ),
        ];
        for (template, method, expected) in cases {
            assert_eq!(served_at(template, &method), Some(expected), "{template}");
        }
    }

    #[test]
    fn the_wait_a_request_asks_for_is_capped_and_replica_local_is_seen() {
        let max = 30_000;
        assert_eq!(requested_wait(None, max), Duration::ZERO);
        assert_eq!(
            requested_wait(Some("offset=3&wait_ms=1500"), max),
            Duration::from_millis(1500)
        );
        assert_eq!(
            requested_wait(Some("timeout_ms=999999"), max),
            Duration::from_millis(max)
        );
        assert_eq!(requested_wait(Some("wait_ms=x"), max), Duration::ZERO);
        assert!(wants_local_replica(Some("offset=0&replica=local")));
        assert!(!wants_local_replica(Some("offset=0")));
    }
}
