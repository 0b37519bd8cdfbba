//! The tests' HTTP client: reqwest's, with every answer held against the spec.
//!
//! [`Client`], [`RequestBuilder`] and [`Response`] have the calls of reqwest's types that the
//! tests use, so a test reads as with reqwest. On `send` the answer's status and headers are
//! checked against `openapi/tidelog.json` (`common::contract`); its body is read at once and
//! checked too, except a `text/event-stream`, which the test reads as it arrives. A break
//! panics there, naming the request, what the spec says and the body.
//!
//! A test that means to see raw, unchecked answers has no business with this client: the
//! point is that no answer of the broker escapes the contract. `clippy.toml` forbids reqwest's
//! own types everywhere else.
#![allow(clippy::disallowed_types)]

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{IntoUrl, Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::contract;

/// A `reqwest::Client` whose answers are checked against the spec.
#[derive(Clone, Debug)]
pub struct Client {
    inner: reqwest::Client,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client::from(reqwest::Client::new())
    }

    /// reqwest's builder, for clients with their own settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            inner: reqwest::Client::builder(),
        }
    }

    pub fn get(&self, url: impl IntoUrl) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    pub fn post(&self, url: impl IntoUrl) -> RequestBuilder {
        self.request(Method::POST, url)
    }

    pub fn put(&self, url: impl IntoUrl) -> RequestBuilder {
        self.request(Method::PUT, url)
    }

    pub fn patch(&self, url: impl IntoUrl) -> RequestBuilder {
        self.request(Method::PATCH, url)
    }

    pub fn delete(&self, url: impl IntoUrl) -> RequestBuilder {
        self.request(Method::DELETE, url)
    }

    pub fn head(&self, url: impl IntoUrl) -> RequestBuilder {
        self.request(Method::HEAD, url)
    }

    pub fn request(&self, method: Method, url: impl IntoUrl) -> RequestBuilder {
        RequestBuilder {
            inner: self.inner.request(method, url),
        }
    }
}

impl From<reqwest::Client> for Client {
    fn from(inner: reqwest::Client) -> Client {
        Client { inner }
    }
}

/// reqwest's `ClientBuilder`, building a checking [`Client`].
pub struct ClientBuilder {
    inner: reqwest::ClientBuilder,
}

impl ClientBuilder {
    pub fn timeout(self, timeout: Duration) -> Self {
        self.map(|b| b.timeout(timeout))
    }

    pub fn pool_max_idle_per_host(self, max: usize) -> Self {
        self.map(|b| b.pool_max_idle_per_host(max))
    }

    pub fn http1_only(self) -> Self {
        self.map(|b| b.http1_only())
    }

    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.map(|b| b.connect_timeout(timeout))
    }

    pub fn no_proxy(self) -> Self {
        self.map(|b| b.no_proxy())
    }

    /// Any other setting of reqwest's builder.
    pub fn map(self, f: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder) -> Self {
        ClientBuilder {
            inner: f(self.inner),
        }
    }

    pub fn build(self) -> reqwest::Result<Client> {
        self.inner.build().map(Client::from)
    }
}

/// reqwest's `RequestBuilder`; [`RequestBuilder::send`] checks the answer.
pub struct RequestBuilder {
    inner: reqwest::RequestBuilder,
}

impl RequestBuilder {
    pub fn header<K, V>(self, key: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        self.map(|b| b.header(key, value))
    }

    pub fn headers(self, headers: HeaderMap) -> Self {
        self.map(|b| b.headers(headers))
    }

    pub fn body(self, body: impl Into<reqwest::Body>) -> Self {
        self.map(|b| b.body(body))
    }

    pub fn json<T: Serialize + ?Sized>(self, json: &T) -> Self {
        self.map(|b| b.json(json))
    }

    pub fn timeout(self, timeout: Duration) -> Self {
        self.map(|b| b.timeout(timeout))
    }

    pub fn version(self, version: reqwest::Version) -> Self {
        self.map(|b| b.version(version))
    }

    pub fn try_clone(&self) -> Option<Self> {
        self.inner.try_clone().map(|inner| RequestBuilder { inner })
    }

    /// Any other setting of reqwest's request builder.
    pub fn map(self, f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder) -> Self {
        RequestBuilder {
            inner: f(self.inner),
        }
    }

    /// Sends the request and checks the answer (the whole body, unless it is an event
    /// stream). Errors are reqwest's: no answer, or a body cut off.
    pub async fn send(self) -> reqwest::Result<Response> {
        let (client, request) = self.inner.build_split();
        let request = request?;
        let method = request.method().clone();
        let url = request.url().clone();
        let preflight = method == Method::OPTIONS
            && request
                .headers()
                .contains_key("access-control-request-method");
        let answer = client.execute(request).await?;
        let status = answer.status();
        let headers = answer.headers().clone();
        let streamed = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = if streamed {
            Body::Stream(answer)
        } else {
            Body::Read(answer.bytes().await?)
        };
        let exchange = contract::Exchange {
            method: method.as_str(),
            path: url.path(),
            preflight,
            status: status.as_u16(),
            headers: &headers,
            body: match &body {
                Body::Read(b) => Some(b),
                Body::Stream(_) => None,
            },
        };
        let broken = contract::violations(&exchange);
        if !broken.is_empty() {
            let message = contract::describe(&exchange, &broken);
            contract::remember_break(&authority(&url), &message);
            panic!("{message}");
        }
        Ok(Response {
            status,
            headers,
            url,
            body,
        })
    }
}

fn authority(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// An answer the spec allowed; its body already read unless it is an event stream.
#[derive(Debug)]
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    url: Url,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Read(Bytes),
    /// A `text/event-stream`, read by the test as it arrives.
    Stream(reqwest::Response),
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The body's length when it was read (an event stream has none).
    pub fn content_length(&self) -> Option<u64> {
        match &self.body {
            Body::Read(b) => Some(b.len() as u64),
            Body::Stream(r) => r.content_length(),
        }
    }

    pub async fn bytes(self) -> reqwest::Result<Bytes> {
        match self.body {
            Body::Read(b) => Ok(b),
            Body::Stream(r) => r.bytes().await,
        }
    }

    /// The body as text (invalid UTF-8 replaced, as reqwest does).
    pub async fn text(self) -> reqwest::Result<String> {
        match self.body {
            Body::Read(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Body::Stream(r) => r.text().await,
        }
    }

    pub async fn json<T: DeserializeOwned>(self) -> Result<T, JsonError> {
        let bytes = self.bytes().await.map_err(JsonError::Read)?;
        serde_json::from_slice(&bytes).map_err(JsonError::Decode)
    }

    /// The next piece of the body: all of a read body at once, then `None`.
    pub async fn chunk(&mut self) -> reqwest::Result<Option<Bytes>> {
        match &mut self.body {
            Body::Read(b) if b.is_empty() => Ok(None),
            Body::Read(b) => Ok(Some(std::mem::take(b))),
            Body::Stream(r) => r.chunk().await,
        }
    }

    pub fn bytes_stream(self) -> BoxStream<'static, reqwest::Result<Bytes>> {
        match self.body {
            Body::Read(b) => futures_util::stream::once(async move { Ok(b) }).boxed(),
            Body::Stream(r) => r.bytes_stream().boxed(),
        }
    }
}

/// Why [`Response::json`] failed: the body did not arrive, or is not the type asked for.
#[derive(Debug)]
pub enum JsonError {
    Read(reqwest::Error),
    Decode(serde_json::Error),
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonError::Read(e) => write!(f, "reading the body: {e}"),
            JsonError::Decode(e) => write!(f, "decoding the body: {e}"),
        }
    }
}

impl std::error::Error for JsonError {}
