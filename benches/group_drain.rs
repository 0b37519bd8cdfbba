//! Consumer-group drain benchmark: N members consume a backlog, committing after each batch.
//!
//! `cargo bench --bench group_drain` produces the backlog once (1,000,000 records of about
//! 100 bytes over 4 partitions, `acks=leader`), then for each member count (1, 2, 4) a fresh
//! group drains all of it from the start: every member joins first (so no rebalance happens
//! during the measurement), then loops fetch (`max_records` per batch) → commit `next_offsets`
//! with its generation (fsynced before the answer) until the group has committed every record.
//! It prints records/s and the time to drain for each member count.
//!
//! Everything runs in this process on 127.0.0.1: the broker on one tokio runtime, the members
//! on another (two worker threads each), sharing the machine's cores, so the figures compare
//! member counts within one run rather than measure a deployment.
//!
//! `cargo bench --bench group_drain -- --help` lists the options.
// A load generator, not a test: it counts answers and never checks them against the spec,
// so reqwest's own client (which clippy.toml keeps out of the tests) is right here.
#![allow(clippy::disallowed_types)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tidelog::config::BrokerConfig;
use tidelog::node::Node;
use tokio::net::TcpListener;

/// A drain gives up after this long, so the bench cannot hang.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Records per produce request while building the backlog.
const PRODUCE_BATCH: u64 = 5_000;

const HELP: &str = "\
tidelog consumer-group drain benchmark (all traffic on 127.0.0.1)

usage: cargo bench --bench group_drain -- [--records N] [--members LIST] [--batch N]
                                           [--partitions N] [--data-dir DIR]

--records     backlog size (default 1000000)
--members     comma-separated member counts, one drain each (default 1,2,4)
--batch       max_records per fetch; each batch is committed before the next (default 1000)
--partitions  partitions of the topic (default 4)
--data-dir    where the broker writes (default: a temp dir); use a real disk for fsync costs
";

struct Args {
    records: u64,
    members: Vec<usize>,
    batch: u64,
    partitions: u32,
    data_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        records: 1_000_000,
        members: vec![1, 2, 4],
        batch: 1_000,
        partitions: 4,
        data_dir: None,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, name: &str| -> Result<u64, String> {
        v.ok_or(format!("{name} needs a value"))?
            .parse::<u64>()
            .map_err(|e| format!("{name}: {e}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--records" => args.records = num(it.next(), "--records")?,
            "--batch" => args.batch = num(it.next(), "--batch")?,
            "--partitions" => args.partitions = num(it.next(), "--partitions")? as u32,
            "--members" => {
                args.members = it
                    .next()
                    .ok_or("--members needs a value")?
                    .split(',')
                    .map(|m| {
                        m.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--members: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--data-dir" => {
                args.data_dir = Some(it.next().ok_or("--data-dir needs a value")?.into())
            }
            // cargo bench passes --bench to harness=false targets.
            "--bench" => {}
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.records == 0 || args.batch == 0 || args.partitions == 0 || args.members.contains(&0) {
        return Err("counts must be positive".into());
    }
    Ok(args)
}

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("group-drain-{name}"))
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
    let tmp = tempfile::tempdir().expect("temp dir");
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("data"));
    let server_rt = runtime("broker");
    let client_rt = runtime("members");
    let (base, node) = server_rt.block_on(start_broker(data_dir));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()
        .expect("http client");
    client_rt.block_on(async {
        let started = Instant::now();
        produce_backlog(&http, &base, &args).await;
        println!(
            "backlog: {} records over {} partitions in {:.1} s",
            args.records,
            args.partitions,
            started.elapsed().as_secs_f64()
        );
        println!("members  batch  records/s  drain_s  commits");
        for (run, &members) in args.members.iter().enumerate() {
            let group = format!("drain-{run}-{members}");
            let (elapsed, commits) = drain(&http, &base, &args, &group, members).await;
            println!(
                "{members:>7}  {:>5}  {:>9.0}  {:>7.2}  {commits:>7}",
                args.batch,
                args.records as f64 / elapsed.as_secs_f64(),
                elapsed.as_secs_f64(),
            );
        }
    });
    server_rt.block_on(async {
        node.begin_shutdown();
        let _ = node.close().await;
    });
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

async fn produce_backlog(http: &reqwest::Client, base: &str, args: &Args) {
    let r = http
        .post(format!("{base}/v1/topics"))
        .json(&json!({"name": "backlog", "partitions": args.partitions}))
        .send()
        .await
        .expect("create topic");
    assert_eq!(r.status().as_u16(), 201, "create topic");
    let value = "x".repeat(90);
    let mut n = 0u64;
    while n < args.records {
        let end = (n + PRODUCE_BATCH).min(args.records);
        let records: Vec<Value> = (n..end)
            .map(|i| json!({"value": {"n": i, "pad": value}, "partition": i % u64::from(args.partitions)}))
            .collect();
        let r = http
            .post(format!("{base}/v1/topics/backlog/records?acks=leader"))
            .json(&json!({ "records": records }))
            .send()
            .await
            .expect("produce");
        assert_eq!(r.status().as_u16(), 200, "produce");
        n = end;
    }
}

#[derive(Deserialize)]
struct Batch {
    generation: u64,
    next_offsets: Vec<Value>,
    records: Vec<IgnoredAny>,
}

/// Joins `members` members to a fresh group, then drains the backlog; returns the time from
/// the first fetch until every record was committed, and the number of commits.
async fn drain(
    http: &reqwest::Client,
    base: &str,
    args: &Args,
    group: &str,
    members: usize,
) -> (Duration, u64) {
    let mut ids = Vec::new();
    for _ in 0..members {
        let r: Value = http
            .post(format!("{base}/v1/groups/{group}/members"))
            .json(&json!({"topics": ["backlog"], "session_timeout_ms": 60_000}))
            .send()
            .await
            .expect("join")
            .json()
            .await
            .expect("join answer");
        ids.push(r["member_id"].as_str().expect("member id").to_string());
    }
    let committed = Arc::new(AtomicU64::new(0));
    let commits = Arc::new(AtomicU64::new(0));
    // Set by the commit that completes the drain (leaving is not measured).
    let drained_at = Arc::new(std::sync::OnceLock::new());
    let started = Instant::now();
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let http = http.clone();
            let base = base.to_string();
            let group = group.to_string();
            let committed = Arc::clone(&committed);
            let commits = Arc::clone(&commits);
            let drained_at = Arc::clone(&drained_at);
            let (total, batch) = (args.records, args.batch);
            tokio::spawn(async move {
                while committed.load(Ordering::Relaxed) < total {
                    assert!(started.elapsed() < DRAIN_TIMEOUT, "drain timed out");
                    let url = format!(
                        "{base}/v1/groups/{group}/members/{id}/records?max_records={batch}&wait_ms=100"
                    );
                    let bytes = http
                        .get(url)
                        .send()
                        .await
                        .expect("fetch")
                        .bytes()
                        .await
                        .expect("fetch body");
                    let b: Batch = serde_json::from_slice(&bytes).expect("a batch");
                    if b.records.is_empty() {
                        continue;
                    }
                    let r = http
                        .post(format!("{base}/v1/groups/{group}/offsets"))
                        .json(&json!({"member_id": id, "generation": b.generation, "offsets": b.next_offsets}))
                        .send()
                        .await
                        .expect("commit");
                    assert_eq!(r.status().as_u16(), 200, "commit");
                    commits.fetch_add(1, Ordering::Relaxed);
                    let n = b.records.len() as u64;
                    if committed.fetch_add(n, Ordering::Relaxed) + n >= total {
                        let _ = drained_at.set(started.elapsed());
                    }
                }
                // Leave, so the group is empty when the next drain starts.
                let _ = http
                    .delete(format!("{base}/v1/groups/{group}/members/{id}"))
                    .send()
                    .await;
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("member task");
    }
    let elapsed = *drained_at.get().expect("the drain finished");
    (elapsed, commits.load(Ordering::Relaxed))
}
