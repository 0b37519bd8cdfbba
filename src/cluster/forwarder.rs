//! The pooled HTTP client a broker proxies requests through to the broker that serves them
//! (the controller, a group coordinator, a partition's leader). It lives here, below
//! [`crate::node`], so the node can own it while the HTTP layer that drives it
//! (`http::forward`, `http::produce_split`) stays the only layer above the node.

use std::time::Duration;

use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Idle connections kept per target broker; more are closed once their answer is done.
const POOL_IDLE_PER_BROKER_MAX: usize = 64;
/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening a connection to another broker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The HTTP client that proxies requests to other brokers: one pool, bounded.
#[derive(Debug, Clone)]
pub struct Forwarder {
    /// One pool for every target broker, with a connect timeout and a bounded idle set.
    http: Client<HttpConnector, Body>,
    /// `forward_timeout_ms`: how long a target has to begin its answer, beyond the wait the
    /// request asks for.
    timeout: Duration,
}

impl Forwarder {
    pub fn new(timeout: Duration) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_IDLE_PER_BROKER_MAX)
            .build(connector);
        Forwarder { http, timeout }
    }

    /// The pooled client, for proxied requests and the internal calls of a split produce.
    pub fn client(&self) -> &Client<HttpConnector, Body> {
        &self.http
    }

    /// How long a target may take to begin answering a request that itself asks to wait up
    /// to `wait`.
    pub fn deadline(&self, wait: Duration) -> Duration {
        self.timeout + wait
    }
}
