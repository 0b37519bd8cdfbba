//! The server side of one produce or fetch, in process: requests go straight into the axum
//! router (no sockets, no client), so the figure is the handler path's own cost (JSON parse,
//! checks, batch encoding, CRC, the page-cache write, rendering the answer).
//!
//! Run: `cargo bench --bench produce`. End-to-end figures with clients, fsync and a baseline
//! come from `cargo bench --bench loadgen`; this one is steady enough to judge a hot-path
//! change that the load generator's noise on a shared machine would hide.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::BodyExt as _;
use tidelog::config::BrokerConfig;
use tidelog::node::Node;
use tokio::runtime::Runtime;
use tower::ServiceExt as _;

const TOPIC: &str = "bench";
const VALUE_BYTES: usize = 100;
/// Records produced before the fetch benchmark reads them back.
const RECORDS_TO_FETCH: u64 = 200_000;

struct Server {
    rt: Runtime,
    app: Router,
    /// Kept open for the whole run; its data directory goes with `_dir`.
    _node: Node,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        };
        let node = rt.block_on(Node::open(config)).expect("open the broker");
        let app = tidelog::http::router(node.clone());
        let server = Server {
            rt,
            app,
            _node: node,
            _dir: dir,
        };
        let created = server.send(
            Request::post("/v1/topics")
                .header("content-type", "application/json")
                .body(Body::from(format!(
                    "{{\"name\":\"{TOPIC}\",\"partitions\":1,\"replication_factor\":1}}"
                )))
                .expect("request"),
        );
        assert_eq!(created.0, StatusCode::CREATED);
        server
    }

    /// Sends one request through the router and reads the whole answer.
    fn send(&self, request: Request<Body>) -> (StatusCode, axum::body::Bytes) {
        self.rt.block_on(async {
            let response = self.app.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("answer body")
                .to_bytes();
            (status, body)
        })
    }

    fn produce(&self, body: &axum::body::Bytes) -> axum::body::Bytes {
        let (status, answer) = self.send(
            Request::post(format!("/v1/topics/{TOPIC}/records?acks=leader"))
                .header("content-type", "application/json")
                .body(Body::from(body.clone()))
                .expect("request"),
        );
        assert_eq!(status, StatusCode::OK, "{answer:?}");
        answer
    }
}

/// `{"records":[{"value":"xx..."}, ...]}`: `batch` JSON string values of `VALUE_BYTES` each.
fn produce_body(batch: usize) -> axum::body::Bytes {
    let value = format!("\"{}\"", "x".repeat(VALUE_BYTES - 2));
    let mut body = String::from("{\"records\":[");
    for i in 0..batch {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(body, "{{\"value\":{value}}}");
    }
    body.push_str("]}");
    axum::body::Bytes::from(body)
}

fn bench_produce(c: &mut Criterion) {
    let server = Server::start();
    let mut group = c.benchmark_group("http_produce_acks_leader");
    for batch in [1usize, 1000] {
        let body = produce_body(batch);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("{batch}x{VALUE_BYTES}B"), |b| {
            b.iter(|| black_box(server.produce(&body)))
        });
    }
    group.finish();
}

fn bench_fetch(c: &mut Criterion) {
    let server = Server::start();
    let body = produce_body(1000);
    for _ in 0..RECORDS_TO_FETCH / 1000 {
        server.produce(&body);
    }
    // The flusher moves the high watermark within flush_ms; wait for all of it to be visible.
    let uri = |offset: u64| {
        format!("/v1/topics/{TOPIC}/partitions/0/records?offset={offset}&max_records=1000")
    };
    for _ in 0..200 {
        let (_, answer) = server.send(Request::get(uri(0)).body(Body::empty()).expect("request"));
        if std::str::from_utf8(&answer)
            .is_ok_and(|a| a.contains(&format!("\"high_watermark\":{RECORDS_TO_FETCH}")))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut group = c.benchmark_group("http_fetch");
    group.throughput(Throughput::Elements(1000));
    let mut offset = 0u64;
    group.bench_function("1000_records", |b| {
        b.iter(|| {
            let (status, answer) = server.send(
                Request::get(uri(offset))
                    .body(Body::empty())
                    .expect("request"),
            );
            assert_eq!(status, StatusCode::OK);
            offset = (offset + 1000) % RECORDS_TO_FETCH;
            black_box(answer)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench_produce, bench_fetch
}
criterion_main!(benches);
