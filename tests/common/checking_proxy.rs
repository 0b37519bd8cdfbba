//! A reverse proxy on loopback that sends every request on to a broker through the checking
//! client ([`super::Client`]), for programs the tests run that speak HTTP themselves (the
//! README's curl lines): their answers are checked against the spec like the tests' own.
//!
//! Request bodies are read whole before they go on (the programs send small ones); an answer
//! comes back as the client gives it, an event stream chunk by chunk; no answer from the broker
//! closes the program's connection. An answer that breaks
//! the spec panics the proxy's task for that request (the program sees the connection close)
//! and is remembered for the broker, so the proxy's drop fails the test with the reason.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use tokio::sync::oneshot;

use super::{Client, contract};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Headers that belong to one connection, not to the exchange.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "host",
];

pub struct CheckingProxy {
    /// `http://127.0.0.1:PORT`, to use in place of the broker's URL.
    pub url: String,
    /// `127.0.0.1:PORT` of the broker, under which breaks are remembered.
    upstream_authority: String,
    /// Ends the accept loop when the proxy drops.
    _stop: oneshot::Sender<()>,
    /// Runs the proxy; dropped (and with it every connection) after the accept loop.
    _runtime: tokio::runtime::Runtime,
}

impl CheckingProxy {
    /// A proxy in front of the broker at `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> CheckingProxy {
        let runtime = super::runtime();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let (stop, mut stopped) = oneshot::channel();
        let upstream = Arc::new(upstream.trim_end_matches('/').to_string());
        let client = Client::new();
        let upstream_for_loop = Arc::clone(&upstream);
        runtime.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = &mut stopped => return,
                };
                let Ok((socket, _)) = accepted else { continue };
                let (upstream, client) = (Arc::clone(&upstream_for_loop), client.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        forward(request, Arc::clone(&upstream), client.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        CheckingProxy {
            url,
            upstream_authority: upstream.trim_start_matches("http://").to_string(),
            _stop: stop,
            _runtime: runtime,
        }
    }
}

impl Drop for CheckingProxy {
    fn drop(&mut self) {
        let breaks = contract::take_breaks(&self.upstream_authority);
        if !breaks.is_empty() && !std::thread::panicking() {
            panic!(
                "{} answer(s) through the proxy broke the spec:\n{}",
                breaks.len(),
                breaks.join("\n")
            );
        }
    }
}

async fn forward(
    request: Request<Incoming>,
    upstream: Arc<String>,
    client: Client,
) -> Result<Response<UnsyncBoxBody<Bytes, Error>>, Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = client.request(parts.method, format!("{upstream}{target}"));
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && name != "content-length" {
            outgoing = outgoing.header(name, value);
        }
    }
    // Checked here: a break panics this task. No answer from the broker (it is restarting,
    // say) closes the program's connection without one, as the broker's absence would: an
    // EventSource then reconnects, where a 502 would end it.
    let answer = outgoing.body(body).send().await?;
    let mut back = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            back = back.header(name, value);
        }
    }
    let streamed = answer
        .bytes_stream()
        .map(|chunk| chunk.map(Frame::data).map_err(Error::from));
    Ok(back
        .body(BodyExt::boxed_unsync(StreamBody::new(streamed)))
        .expect("an answer"))
}
