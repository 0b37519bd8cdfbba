//! The HTTP API (v1): axum routes, one file per resource.
//!
//! Architecture invariant: the HTTP layer never touches a file. Handlers parse and check the
//! request, call the [`Broker`] or the group coordinator (both reached through the
//! [`Node`], the handlers' state), and render its answer; every failure leaves as
//! `application/problem+json` ([`error::ApiError`]).
//!
//! Body limits: no extractor buffers a body on its own; [`body::read_limited`] reads it with
//! the `request_body_bytes_max` limit, and a 413 closes the connection.

pub mod body;
pub mod budgeted_body;
pub mod cluster_topics;
mod content_length;
pub mod elect;
pub mod error;
mod fast_lane;
pub mod fetch;
pub mod forward;
pub mod groups;
mod head_clock;
pub mod idempotency_key;
pub mod internal;
pub mod json_records;
mod lane_connection;
pub mod ndjson;
pub mod path;
pub mod produce;
pub mod produce_split;
pub mod producers;
pub mod reassign;
pub mod remote_read;
pub mod render;
mod request_metrics;
pub mod serve;
pub mod stream;
pub mod system;
pub mod topics;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter};

use crate::broker::Broker;
use crate::groups::GroupCoordinator;
use crate::node::Node;
use crate::producers::ProducerRegistry;
use error::ApiError;

/// Shared state of every handler: the node, behind one `Arc`. A handler that needs one
/// layer extracts it (`State<Arc<Broker>>`, `State<Arc<GroupCoordinator>>`).
///
/// The router clones its state for every request it hands a handler (and the handler's
/// `State` extractor clones it again): one increment here, where a [`Node`] is eight `Arc`s
/// and the forwarding client's pool.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Node>);

impl std::ops::Deref for AppState {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.0
    }
}

pub use serve::serve;

impl FromRef<AppState> for Node {
    fn from_ref(state: &AppState) -> Node {
        Node::clone(state)
    }
}

impl FromRef<AppState> for Arc<Broker> {
    fn from_ref(state: &AppState) -> Arc<Broker> {
        Arc::clone(&state.broker)
    }
}

impl FromRef<AppState> for Arc<ProducerRegistry> {
    fn from_ref(state: &AppState) -> Arc<ProducerRegistry> {
        Arc::clone(&state.producers)
    }
}

impl FromRef<AppState> for Arc<GroupCoordinator> {
    fn from_ref(state: &AppState) -> Arc<GroupCoordinator> {
        Arc::clone(&state.groups)
    }
}

/// Every route of the API: path template, then each method with its handler.
///
/// This one table builds the [`Router`] and answers [`route_table`], so the OpenAPI contract
/// test compares the spec with the routes that are really served.
fn routes() -> Vec<(&'static str, Vec<MethodHandler>)> {
    vec![
        (
            "/v1/topics",
            vec![
                on(Method::POST, topics::create),
                on(Method::GET, topics::list),
            ],
        ),
        (
            "/v1/topics/{topic}",
            vec![
                on(Method::GET, topics::describe),
                on(Method::PATCH, topics::update_config),
                on(Method::DELETE, topics::delete),
            ],
        ),
        (
            "/v1/topics/{topic}/partitions",
            vec![on(Method::POST, topics::expand)],
        ),
        (
            "/v1/topics/{topic}/partitions/{partition}/delete-records",
            vec![on(Method::POST, topics::delete_records)],
        ),
        (
            "/v1/topics/{topic}/partitions/{partition}/elect",
            vec![on(Method::POST, elect::elect)],
        ),
        (
            "/v1/topics/{topic}/partitions/{partition}/reassignment",
            vec![
                on(Method::POST, reassign::start),
                on(Method::DELETE, reassign::cancel),
            ],
        ),
        ("/v1/reassignments", vec![on(Method::GET, reassign::list)]),
        (
            fast_lane::PRODUCE_ROUTE,
            vec![on(Method::POST, produce::produce)],
        ),
        ("/v1/producers", vec![on(Method::POST, producers::create)]),
        (
            "/v1/topics/{topic}/partitions/{partition}/records",
            vec![on(Method::GET, fetch::fetch)],
        ),
        (
            "/v1/topics/{topic}/partitions/{partition}/stream",
            vec![on(Method::GET, stream::sse)],
        ),
        ("/v1/groups", vec![on(Method::GET, groups::list)]),
        (
            "/v1/groups/{group}",
            vec![
                on(Method::GET, groups::describe),
                on(Method::DELETE, groups::delete),
            ],
        ),
        (
            "/v1/groups/{group}/members",
            vec![on(Method::POST, groups::join)],
        ),
        (
            "/v1/groups/{group}/members/{member}",
            vec![on(Method::DELETE, groups::leave)],
        ),
        (
            "/v1/groups/{group}/members/{member}/heartbeat",
            vec![on(Method::POST, groups::heartbeat)],
        ),
        (
            "/v1/groups/{group}/members/{member}/records",
            vec![on(Method::GET, groups::member_fetch)],
        ),
        (
            "/v1/groups/{group}/offsets",
            vec![
                on(Method::POST, groups::commit),
                on(Method::GET, groups::committed),
            ],
        ),
        (
            "/v1/groups/{group}/offsets/reset",
            vec![on(Method::POST, groups::reset)],
        ),
        ("/v1/cluster", vec![on(Method::GET, system::cluster)]),
        ("/healthz", vec![on(Method::GET, system::healthz)]),
        ("/readyz", vec![on(Method::GET, system::readyz)]),
        ("/openapi.json", vec![on(Method::GET, system::openapi)]),
        ("/metrics", vec![on(Method::GET, system::metrics)]),
        (
            crate::cluster::protocol::REGISTER_PATH,
            vec![on(Method::POST, internal::register)],
        ),
        (
            crate::cluster::protocol::HEARTBEAT_PATH,
            vec![on(Method::POST, internal::heartbeat)],
        ),
        (
            crate::cluster::protocol::SHUTDOWN_PATH,
            vec![on(Method::POST, internal::shutdown)],
        ),
        (
            crate::cluster::raft::APPEND_PATH,
            vec![on(Method::POST, internal::raft_append)],
        ),
        (
            crate::cluster::raft::VOTE_PATH,
            vec![on(Method::POST, internal::raft_vote)],
        ),
        (
            crate::cluster::raft::SNAPSHOT_PATH,
            vec![on(Method::POST, internal::raft_snapshot)],
        ),
        (
            produce_split::APPEND_ROUTE,
            vec![on(Method::POST, produce_split::append)],
        ),
        (
            crate::cluster::protocol::ALTER_PARTITION_PATH,
            vec![on(Method::POST, internal::alter_partition)],
        ),
        (
            crate::replication::fetcher::REPLICA_FETCH_PATH,
            vec![on(Method::POST, internal::replica_fetch)],
        ),
        (
            crate::groups::remote::READ_PATH,
            vec![on(Method::POST, remote_read::read)],
        ),
        (
            crate::groups::remote::WAIT_PATH,
            vec![on(Method::POST, remote_read::wait)],
        ),
    ]
}

/// A method and the handler that serves it.
type MethodHandler = (Method, MethodRouter<AppState>);

/// One method of a route with its handler; the method is named once, so the table cannot
/// claim a method the router does not serve.
fn on<H, T>(method: Method, handler: H) -> MethodHandler
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a standard HTTP method");
    (method, axum::routing::on(filter, handler))
}

/// Every route's path template and methods, as served (for the OpenAPI drift test).
pub fn route_table() -> Vec<(&'static str, Vec<Method>)> {
    routes()
        .into_iter()
        .map(|(path, methods)| (path, methods.into_iter().map(|(m, _)| m).collect()))
        .collect()
}

/// Builds the router with every route of the API.
pub fn router(node: Node) -> Router {
    app(node).0
}

/// The router, and the lane that serves produce requests outside it (see [`fast_lane`]).
fn app(node: Node) -> (Router, Option<fast_lane::FastLane>) {
    let node = AppState(Arc::new(node));
    let lane = fast_lane::FastLane::new(node.clone());
    // Installed before the first request so nothing recorded is lost.
    crate::metrics::install();
    let mut router = Router::new();
    let routes = routes();
    request_metrics::set_routes(routes.iter().map(|(path, _)| *path));
    let forward = forward::ForwardLayer::new(
        node.clone(),
        routes
            .iter()
            .map(|(path, methods)| (*path, methods.iter().map(|(m, _)| m.clone()).collect())),
    );
    for (path, methods) in routes {
        let mut method_router = MethodRouter::new();
        for (_, handler) in methods {
            method_router = method_router.merge(handler);
        }
        router = router.route(path, method_router);
    }
    // One axum layer for both, metrics outside forwarding: each axum layer boxes the
    // service under it and its future again on every request.
    let mut router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer((request_metrics::RequestMetricsLayer, forward));
    if let Some(cors) = cors_layer(&node.broker.config.cors_allowed_origins) {
        router = router.layer(cors);
    }
    (router.with_state(node), lane)
}

/// CORS for the configured origins (validated in `BrokerConfig::validate`); `None` when the
/// list is empty, so by default no request is answered differently.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow_origin = match origins {
        [] => return None,
        [any] if any == "*" => AllowOrigin::any(),
        list => AllowOrigin::list(list.iter().filter_map(|o| o.parse().ok())),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::POST,
                axum::http::Method::PATCH,
                axum::http::Method::DELETE,
            ])
            .allow_headers([
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([axum::http::header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// A JSON response from pre-rendered bytes; a small one has its `content-length` already
/// (see [`content_length`]).
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let length = content_length::static_content_length(body.len());
    // Built directly: `Vec<u8>::into_response` would first set an octet-stream content type
    // that the JSON one then replaces, one more header-map insert on every answer.
    let mut response = Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    if let Some(length) = length {
        headers.insert(axum::http::header::CONTENT_LENGTH, length);
    }
    response
}
