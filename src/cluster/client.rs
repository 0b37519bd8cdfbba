//! The HTTP client a broker uses for the controller's internal routes (`/internal/v1/`):
//! JSON in, JSON out, every call under a deadline, every answer bounded in size.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest internal answer read (a page of metadata commands is far below it).
const ANSWER_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No answer (connection refused, timeout, a body that did not parse): retry later.
    Unreachable(String),
    /// The controller answered a problem: its status, stable code and detail.
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(why) => write!(f, "unreachable: {why}"),
            CallError::Refused {
                status,
                code,
                detail,
            } => write!(f, "{status} {code}: {detail}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct InternalClient {
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Default for InternalClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        InternalClient {
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }
}

impl InternalClient {
    /// `POST http://{to}{path}` with `body` as JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        to: SocketAddr,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let body = serde_json::to_vec(body).expect("a request body serializes");
        self.call(Method::POST, to, path, Some(body), timeout).await
    }

    /// `GET http://{to}{path_and_query}`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        to: SocketAddr,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<T, CallError> {
        self.call(Method::GET, to, path_and_query, None, timeout)
            .await
    }

    /// `POST http://{to}{path}` with `body` as JSON; answers the raw bytes of a successful
    /// answer of at most `answer_bytes_max` (the replica fetch's binary answer).
    pub async fn post_for_bytes<B: Serialize>(
        &self,
        to: SocketAddr,
        path: &str,
        body: &B,
        timeout: Duration,
        answer_bytes_max: usize,
    ) -> Result<Bytes, CallError> {
        let body = serde_json::to_vec(body).expect("a request body serializes");
        let (status, bytes) = self
            .exchange(
                Method::POST,
                to,
                path,
                Some(body),
                timeout,
                answer_bytes_max,
            )
            .await?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(refused(status, &bytes))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        to: SocketAddr,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let (status, bytes) = self
            .exchange(method, to, path, body, timeout, ANSWER_BYTES_MAX)
            .await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| CallError::Unreachable(format!("{to}: {e}")));
        }
        Err(refused(status, &bytes))
    }

    /// One request and its whole answer, under `timeout`.
    async fn exchange(
        &self,
        method: Method,
        to: SocketAddr,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
        answer_bytes_max: usize,
    ) -> Result<(hyper::StatusCode, Bytes), CallError> {
        let unreachable = |e: &dyn std::fmt::Display| CallError::Unreachable(format!("{to}: {e}"));
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{to}{path}"));
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(&e))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| unreachable(&e))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), answer_bytes_max)
                .collect()
                .await
                .map_err(|e| unreachable(&e))?
                .to_bytes();
            Ok::<_, CallError>((status, bytes))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| unreachable(&"no answer in time"))?
    }
}

/// A problem answer as a [`CallError::Refused`].
fn refused(status: hyper::StatusCode, bytes: &[u8]) -> CallError {
    let problem: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let text = |k: &str| problem[k].as_str().unwrap_or_default().to_string();
    CallError::Refused {
        status: status.as_u16(),
        code: text("code"),
        detail: text("detail"),
    }
}
