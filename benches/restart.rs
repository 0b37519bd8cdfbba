//! Restart benchmark: how long a broker holding a large log takes to serve again, after a
//! clean stop (SIGTERM) and after `kill -9`.
//!
//! `cargo bench --bench restart` fills a topic with `--gb` GiB of records (default 1; the
//! README's figure uses 10) through the release `tidelog` binary started as a process on
//! 127.0.0.1, then `--repeat` times: stops it (SIGTERM, or `kill -9` while producers are
//! writing), starts it again on the same data directory and measures the time from the
//! start of the process until it answers an `acks=all` produce and a fetch of what it
//! wrote before the stop. It prints each restart and the medians.
//!
//! `cargo bench --bench restart -- --help` lists the options.
// A load generator, not a test: it counts answers and never checks them against the spec,
// so reqwest's own client (which clippy.toml keeps out of the tests) is right here.
#![allow(clippy::disallowed_types)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const HELP: &str = "\
tidelog restart benchmark (all traffic on 127.0.0.1)

usage: cargo bench --bench restart -- [--gb N] [--partitions N] [--repeat N]
                                       [--value-bytes N] [--data-dir DIR]

--gb           GiB of log written before the restarts (default 1; fractions allowed)
--partitions   partitions of the topic (default 8)
--repeat       restarts of each kind (default 3)
--value-bytes  bytes of each record's value (default 1000)
--data-dir     where the broker writes (default: a temp dir under $TMPDIR; it must be a
               real disk for the figures to mean anything)
";

/// Records per produce request while filling the log.
const FILL_BATCH: usize = 500;
/// Producers filling the log at once.
const FILL_CLIENTS: usize = 4;
/// A start that does not serve within this long fails the benchmark.
const SERVE_TIMEOUT: Duration = Duration::from_secs(600);

struct Args {
    gib: f64,
    partitions: u32,
    repeat: usize,
    value_bytes: usize,
    data_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        gib: 1.0,
        partitions: 8,
        repeat: 3,
        value_bytes: 1_000,
        data_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--gb" => args.gib = value()?.parse().map_err(|e| format!("--gb: {e}"))?,
            "--partitions" => {
                args.partitions = value()?.parse().map_err(|e| format!("--partitions: {e}"))?
            }
            "--repeat" => args.repeat = value()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--value-bytes" => {
                args.value_bytes = value()?
                    .parse()
                    .map_err(|e| format!("--value-bytes: {e}"))?
            }
            "--data-dir" => args.data_dir = Some(value()?.into()),
            // cargo bench passes --bench to harness=false targets.
            "--bench" => {}
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !(args.gib > 0.0 && args.gib <= 100.0) {
        return Err("--gb must be above 0 and at most 100".into());
    }
    if args.partitions == 0 || args.partitions > 1_000 || args.repeat == 0 || args.repeat > 20 {
        return Err("--partitions must be 1..=1000 and --repeat 1..=20".into());
    }
    if !(10..=100_000).contains(&args.value_bytes) {
        return Err("--value-bytes must be 10..=100000".into());
    }
    Ok(args)
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
    let data_dir = tmp.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");

    let (mut broker, _) = Broker::start(&data_dir);
    let started = Instant::now();
    let written = runtime.block_on(fill(&http, &broker.url, &args));
    let gib = written as f64 / f64::from(1u32 << 30);
    println!(
        "filled {gib:.2} GiB of log ({} partitions, {}-byte values) in {:.1} s",
        args.partitions,
        args.value_bytes,
        started.elapsed().as_secs_f64()
    );
    let mut clean = Vec::new();
    let mut killed = Vec::new();
    println!("stop      start_to_listen_s  start_to_serve_s");
    for round in 0..args.repeat * 2 {
        let kill = round % 2 == 1;
        if kill {
            // kill -9 under load: producers are writing when the process dies.
            runtime.block_on(async {
                let load = tokio::spawn(keep_producing(http.clone(), broker.url.clone()));
                tokio::time::sleep(Duration::from_millis(500)).await;
                broker.kill9();
                load.abort();
            });
        } else {
            broker.stop();
        }
        let (next, listen) = Broker::start(&data_dir);
        broker = next;
        let serve = runtime.block_on(wait_serving(&http, &broker.url, broker.started));
        println!(
            "{:<8}  {:>17.2}  {:>16.2}",
            if kill { "kill -9" } else { "SIGTERM" },
            listen.as_secs_f64(),
            serve.as_secs_f64()
        );
        if kill { &mut killed } else { &mut clean }.push(serve.as_secs_f64());
    }
    broker.stop();
    println!(
        "median time to serve with {gib:.2} GiB: after SIGTERM {:.2} s, after kill -9 {:.2} s",
        median(&mut clean),
        median(&mut killed)
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Broker {
    child: Child,
    url: String,
    started: Instant,
}

impl Broker {
    /// Starts the release binary on `data_dir`; returns it with the time until it printed its
    /// address.
    fn start(data_dir: &Path) -> (Broker, Duration) {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidelog"))
            .args([
                "serve",
                "--log-level",
                "warn",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .env_remove("TIDELOG_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the tidelog binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.trim().to_string();
                    }
                }
                _ => panic!("the broker stopped before printing its address"),
            }
        };
        let listen = started.elapsed();
        // Keep draining stdout so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (
            Broker {
                child,
                url,
                started,
            },
            listen,
        )
    }

    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for the broker");
        assert!(status.success(), "the broker's clean stop failed: {status}");
    }

    fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }
}

/// Creates the topic and writes about `args.gib` GiB with `acks=leader` from a few producers;
/// returns the bytes of values written.
async fn fill(http: &reqwest::Client, url: &str, args: &Args) -> u64 {
    let r = http
        .post(format!("{url}/v1/topics"))
        .json(&json!({"name": "big", "partitions": args.partitions}))
        .send()
        .await
        .expect("create the topic");
    assert_eq!(r.status().as_u16(), 201, "create the topic");
    let target = (args.gib * f64::from(1u32 << 30)) as u64;
    let per_request = (FILL_BATCH * args.value_bytes) as u64;
    let requests = target.div_ceil(per_request);
    let value = "x".repeat(args.value_bytes - 2);
    // One body per partition, built once: request r writes partition r % partitions.
    let bodies: Vec<bytes::Bytes> = (0..args.partitions)
        .map(|p| {
            let records: Vec<Value> = (0..FILL_BATCH)
                .map(|_| json!({"partition": p, "value": value}))
                .collect();
            serde_json::to_vec(&json!({ "records": records }))
                .expect("a body")
                .into()
        })
        .collect();
    let clients: Vec<_> = (0..FILL_CLIENTS as u64)
        .map(|c| {
            let (http, url, bodies) = (http.clone(), url.to_string(), bodies.clone());
            tokio::spawn(async move {
                let mut r = c;
                while r < requests {
                    let body = &bodies[(r % bodies.len() as u64) as usize];
                    let answer = http
                        .post(format!("{url}/v1/topics/big/records?acks=leader"))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("produce");
                    assert_eq!(answer.status().as_u16(), 200, "produce");
                    r += FILL_CLIENTS as u64;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("a producer");
    }
    requests * per_request
}

/// Produces small batches until aborted (the load a `kill -9` interrupts).
async fn keep_producing(http: reqwest::Client, url: String) {
    let body = json!({"records": (0..100).map(|i| json!({"value": i})).collect::<Vec<_>>()});
    loop {
        let _ = http
            .post(format!("{url}/v1/topics/big/records?acks=leader"))
            .json(&body)
            .send()
            .await;
    }
}

/// Polls until an `acks=all` produce and a fetch of partition 0's first records both answer
/// 200; returns the time since the process started.
async fn wait_serving(http: &reqwest::Client, url: &str, started: Instant) -> Duration {
    loop {
        assert!(
            started.elapsed() < SERVE_TIMEOUT,
            "the broker did not serve within {SERVE_TIMEOUT:?}"
        );
        let produced = http
            .post(format!("{url}/v1/topics/big/records?acks=all"))
            .json(&json!({"records": [{"value": "after the restart"}]}))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let fetched = produced
            && http
                .get(format!(
                    "{url}/v1/topics/big/partitions/0/records?offset=0&max_records=10"
                ))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
        if fetched {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
