//! Partition-count benchmark: batched `acks=all` produce throughput as the records spread over
//! more partitions, and over many topics of one partition.
//!
//! `cargo bench --bench partitions` runs, in this process and on 127.0.0.1 only, a broker and
//! 8 keep-alive clients sending 1000-record batches (about 100-byte values), each request to
//! one partition, the next request of a client to the next partition, over every layout:
//! one topic of 8, 1, 100 and 1000 partitions, and 1000 topics of one partition. Layouts
//! alternate within each repeat; the summary gives the median records/s of each and its
//! ratio to the 8-partition layout measured in the same repeats.
//!
//! `cargo bench --bench partitions -- --help` lists the options.
// A load generator, not a test: it counts answers and never checks them against the spec,
// so reqwest's own client (which clippy.toml keeps out of the tests) is right here.
#![allow(clippy::disallowed_types)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tidelog::config::BrokerConfig;
use tidelog::node::Node;
use tokio::net::TcpListener;

const HELP: &str = "\
tidelog partition-count benchmark (all traffic on 127.0.0.1)

usage: cargo bench --bench partitions -- [--layouts LIST] [--duration-ms N] [--repeat N]
                                          [--clients N] [--batch N] [--data-dir DIR]

--layouts      comma-separated: N (one topic of N partitions) or topics:N (N topics of one
               partition); default 8,1,100,1000,topics:1000 (the first is the baseline)
--duration-ms  measured time per layout and repeat (default 3000)
--repeat       runs of every layout (default 3)
--clients      concurrent clients (default 8)
--batch        records per request (default 1000)
--data-dir     where the broker writes (default: a temp dir; it must be a real disk)
";

/// Bytes of each record's value (a JSON string, with its quotes).
const VALUE_BYTES: usize = 100;
/// Every request gives up after this long, so no client loop can hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most requests one client sends in one measurement, whatever the duration.
const REQUESTS_PER_CLIENT_MAX: u64 = 1_000_000;

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// One topic with this many partitions.
    Partitions(u32),
    /// This many topics of one partition.
    Topics(u32),
}

impl Layout {
    fn name(self) -> String {
        match self {
            Layout::Partitions(n) => format!("1 topic x {n} partitions"),
            Layout::Topics(n) => format!("{n} topics x 1 partition"),
        }
    }
}

struct Args {
    layouts: Vec<Layout>,
    duration: Duration,
    repeat: usize,
    clients: usize,
    batch: usize,
    data_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        layouts: vec![
            Layout::Partitions(8),
            Layout::Partitions(1),
            Layout::Partitions(100),
            Layout::Partitions(1000),
            Layout::Topics(1000),
        ],
        duration: Duration::from_millis(3000),
        repeat: 3,
        clients: 8,
        batch: 1000,
        data_dir: None,
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, name: &str| -> Result<u64, String> {
        v.ok_or(format!("{name} needs a value"))?
            .parse::<u64>()
            .map_err(|e| format!("{name}: {e}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--layouts" => {
                let list = it.next().ok_or("--layouts needs a value")?;
                args.layouts = list
                    .split(',')
                    .map(|l| {
                        let (topics, n) = match l.trim().strip_prefix("topics:") {
                            Some(n) => (true, n),
                            None => (false, l.trim()),
                        };
                        let n: u32 = n.parse().map_err(|e| format!("--layouts {l}: {e}"))?;
                        if !(1..=1000).contains(&n) {
                            return Err(format!("--layouts {l}: 1 to 1000"));
                        }
                        Ok(if topics {
                            Layout::Topics(n)
                        } else {
                            Layout::Partitions(n)
                        })
                    })
                    .collect::<Result<_, String>>()?;
            }
            "--duration-ms" => {
                args.duration = Duration::from_millis(number(it.next(), "--duration-ms")?)
            }
            "--repeat" => args.repeat = number(it.next(), "--repeat")? as usize,
            "--clients" => args.clients = number(it.next(), "--clients")? as usize,
            "--batch" => args.batch = number(it.next(), "--batch")? as usize,
            "--data-dir" => {
                args.data_dir = Some(it.next().ok_or("--data-dir needs a value")?.into())
            }
            // cargo bench passes --bench to harness=false targets.
            "--bench" => {}
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let ok = !args.layouts.is_empty()
        && (1..=600_000).contains(&args.duration.as_millis())
        && (1..=20).contains(&args.repeat)
        && (1..=256).contains(&args.clients)
        && (1..=10_000).contains(&args.batch);
    if !ok {
        return Err("a count or duration is out of range".into());
    }
    Ok(args)
}

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("partitions-{name}"))
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{HELP}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    let tmp = match &args.data_dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("a temp dir");
    let server_rt = runtime("broker");
    let client_rt = runtime("clients");
    let (base, node) = server_rt.block_on(start_broker(tmp.path().join("data")));
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(256)
        .build()
        .expect("http client");
    // rates[layout][repeat], records/s.
    let mut rates = vec![Vec::new(); args.layouts.len()];
    println!("repeat  layout                      records/s  requests  failed");
    for repeat in 0..args.repeat {
        for (i, &layout) in args.layouts.iter().enumerate() {
            let topics = client_rt.block_on(create(&http, &base, layout, repeat));
            let (rate, requests, failed) =
                client_rt.block_on(measure(&http, &base, &topics, &args));
            println!(
                "{repeat:>6}  {:<26}  {rate:>9.0}  {requests:>8}  {failed:>6}",
                layout.name()
            );
            rates[i].push(rate);
            client_rt.block_on(delete(&http, &base, &topics));
        }
    }
    println!("\nmedians over {} repeats:", args.repeat);
    let baseline = median(&rates[0]);
    for (layout, r) in args.layouts.iter().zip(&rates) {
        let m = median(r);
        println!(
            "{:<26}  {m:>9.0} records/s  {:.2}x {}",
            layout.name(),
            m / baseline,
            args.layouts[0].name()
        );
    }
    server_rt.block_on(async {
        node.begin_shutdown();
        let _ = node.close().await;
    });
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn start_broker(data_dir: PathBuf) -> (String, Node) {
    let config = BrokerConfig {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        data_dir,
        ..BrokerConfig::default()
    };
    let node = Node::open(config).await.expect("open the broker");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let serving = node.clone();
    tokio::spawn(async move {
        let never = std::future::pending::<()>();
        let _ = tidelog::http::serve(serving, listener, never).await;
    });
    (format!("http://{addr}"), node)
}

/// Where requests go: (topic, partition) for each target of the layout.
type Targets = Vec<(String, u32)>;

async fn create(http: &reqwest::Client, base: &str, layout: Layout, repeat: usize) -> Targets {
    let topics: Vec<(String, u32)> = match layout {
        Layout::Partitions(n) => vec![(format!("p{n}-{repeat}"), n)],
        Layout::Topics(n) => (0..n).map(|t| (format!("t{n}-{repeat}-{t}"), 1)).collect(),
    };
    for (name, partitions) in &topics {
        let r = http
            .post(format!("{base}/v1/topics"))
            .json(&json!({"name": name, "partitions": partitions}))
            .send()
            .await
            .expect("create a topic");
        assert_eq!(r.status().as_u16(), 201, "create {name}");
    }
    topics
        .into_iter()
        .flat_map(|(name, n)| (0..n).map(move |p| (name.clone(), p)))
        .collect()
}

async fn delete(http: &reqwest::Client, base: &str, targets: &Targets) {
    let mut names: Vec<&String> = targets.iter().map(|(t, _)| t).collect();
    names.dedup();
    for name in names {
        let r = http
            .delete(format!("{base}/v1/topics/{name}"))
            .send()
            .await
            .expect("delete a topic");
        assert!(r.status().is_success(), "delete {name}");
    }
}

/// Runs the clients over `targets` for the duration; returns records/s, requests answered
/// and requests failed.
async fn measure(
    http: &reqwest::Client,
    base: &str,
    targets: &Targets,
    args: &Args,
) -> (f64, u64, u64) {
    let value = format!("\"{}\"", "x".repeat(VALUE_BYTES - 2));
    let records = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| {
            let (http, base, value) = (http.clone(), base.to_string(), value.clone());
            let targets = targets.clone();
            let (records, requests, failed) = (
                Arc::clone(&records),
                Arc::clone(&requests),
                Arc::clone(&failed),
            );
            let (duration, batch, clients) = (args.duration, args.batch, args.clients);
            tokio::spawn(async move {
                let mut next = c;
                for _ in 0..REQUESTS_PER_CLIENT_MAX {
                    if started.elapsed() >= duration {
                        break;
                    }
                    let (topic, partition) = &targets[next % targets.len()];
                    next += clients;
                    let record = format!("{{\"partition\":{partition},\"value\":{value}}}");
                    let mut body = String::with_capacity(16 + batch * (record.len() + 1));
                    body.push_str("{\"records\":[");
                    for i in 0..batch {
                        if i > 0 {
                            body.push(',');
                        }
                        body.push_str(&record);
                    }
                    body.push_str("]}");
                    let answer = http
                        .post(format!("{base}/v1/topics/{topic}/records?acks=all"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status().is_success() => {
                            records.fetch_add(batch as u64, Ordering::Relaxed);
                            requests.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a client");
    }
    let elapsed = started.elapsed().as_secs_f64();
    (
        records.load(Ordering::Relaxed) as f64 / elapsed,
        requests.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    )
}
