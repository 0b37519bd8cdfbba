//! The HTTP API (v1): axum routes, one file per resource.
//!
//! Architecture invariant: the HTTP layer never touches a file. Handlers parse and check the
//! request, call the [`Broker`], and render its answer; every failure leaves as
//! `application/problem+json` ([`error::ApiError`]).
//!
//! Body limits: no extractor buffers a body on its own; [`body::read_limited`] reads it with
//! the `request_body_bytes_max` limit, and a 413 closes the connection.

pub mod body;
pub mod error;
pub mod groups;
pub mod records;
pub mod stream;
pub mod system;
pub mod topics;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::broker::Broker;
use crate::metrics as m;
use error::ApiError;

/// Shared state of every handler.
pub type AppState = Arc<Broker>;

/// Builds the router with every route of the API.
pub fn router(broker: Arc<Broker>) -> Router {
    let prometheus = crate::metrics::install();
    Router::new()
        .route("/v1/topics", post(topics::create).get(topics::list))
        .route(
            "/v1/topics/{topic}",
            get(topics::describe)
                .patch(topics::update_config)
                .delete(topics::delete),
        )
        .route("/v1/topics/{topic}/partitions", post(topics::expand))
        .route(
            "/v1/topics/{topic}/partitions/{partition}/delete-records",
            post(topics::delete_records),
        )
        .route("/v1/topics/{topic}/records", post(records::produce))
        .route(
            "/v1/topics/{topic}/partitions/{partition}/records",
            get(records::fetch),
        )
        .route(
            "/v1/topics/{topic}/partitions/{partition}/stream",
            get(stream::sse),
        )
        .route("/v1/groups", get(groups::list))
        .route(
            "/v1/groups/{group}",
            get(groups::describe).delete(groups::delete),
        )
        .route("/v1/groups/{group}/members", post(groups::join))
        .route("/v1/groups/{group}/members/{member}", delete(groups::leave))
        .route(
            "/v1/groups/{group}/members/{member}/heartbeat",
            post(groups::heartbeat),
        )
        .route(
            "/v1/groups/{group}/members/{member}/records",
            get(groups::member_fetch),
        )
        .route(
            "/v1/groups/{group}/offsets",
            post(groups::commit).get(groups::committed),
        )
        .route("/v1/groups/{group}/offsets/reset", post(groups::reset))
        .route("/v1/cluster", get(system::cluster))
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/openapi.json", get(system::openapi))
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(record_metrics))
        .with_state(broker)
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

/// Counts requests and times them by route template (bounded cardinality) and status.
async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    ::metrics::counter!(m::HTTP_REQUESTS, &labels).increment(1);
    ::metrics::histogram!(m::HTTP_REQUEST_SECONDS, &labels[..2])
        .record(started.elapsed().as_secs_f64());
    response
}

/// Serves the API until `shutdown` resolves; then finishes in-flight requests and returns.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limit = Arc::new(Semaphore::new(broker.limits().connections_max as usize));
    let app = router(broker);
    let listener = LimitedListener {
        inner: listener,
        limit,
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A TCP listener that holds at most `connections_max` connections open; further ones wait
/// in the kernel's accept queue. Also turns off Nagle for low produce latency.
struct LimitedListener {
    inner: TcpListener,
    limit: Arc<Semaphore>,
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = Arc::clone(&self.limit)
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        LimitedStream {
                            stream,
                            _permit: permit,
                        },
                        addr,
                    );
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that gives its permit back when dropped.
struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A JSON response from pre-rendered bytes.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
