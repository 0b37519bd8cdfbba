//! Soak: a real broker process under mixed traffic for a long, bounded time, sampling its
//! resident memory and open file descriptors.
//!
//! `cargo bench --bench soak` runs 10 minutes; `cargo bench --bench soak -- --help` lists the
//! options. All traffic goes to 127.0.0.1. It starts the release `tidelog` binary on a
//! temporary data directory and runs, concurrently and each bounded by the duration:
//! - producers: JSON batches with `acks=all` into a topic kept small by size retention;
//! - fetchers: long-polls at the end of each partition;
//! - SSE: streams opened, read for a few events (or none) and dropped;
//! - groups: join, member fetch, commit, leave and delete a group of a new name each round;
//! - admin: create a topic of a new name, produce to it, delete it.
//!
//! Every `--sample-s` seconds it prints the broker's VmRSS, open descriptors and threads
//! (`/proc/PID/status`, `/proc/PID/fd`) and the requests done; the summary compares the
//! samples after the first minute (warm-up) with the first one after it. Nothing is
//! asserted: it is a measurement, read by a person.
// A load generator, not a test: it counts answers and never checks them against the spec,
// so reqwest's own client (which clippy.toml keeps out of the tests) is right here.
#![allow(clippy::disallowed_types)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Every request gives up after this long, so no loop can hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Records per produce request.
const BATCH_RECORDS: usize = 100;
/// Partitions of the steady topic.
const PARTITIONS: u32 = 4;
/// The warm-up excluded from the "flat" comparison.
const WARMUP: Duration = Duration::from_secs(60);

const HELP: &str = "\
tidelog soak benchmark (all traffic on 127.0.0.1)

usage: cargo bench --bench soak -- [--duration-s N] [--sample-s N] [--data-dir DIR]
                                   [--workloads LIST]

--duration-s  how long the mixed traffic runs (default 600)
--sample-s    seconds between samples of memory and descriptors (default 10)
--data-dir    where the broker writes (default: a temp dir under $TMPDIR)
--workloads   comma-separated subset of produce,long-poll,sse,groups,topic-churn (default:
              all), to find which one a growth comes from

environment: SOAK_BROKER_BIN runs that broker binary instead of this build's
";

struct Args {
    duration: Duration,
    sample: Duration,
    data_dir: Option<String>,
    /// Names from `WORKLOADS` to run.
    workloads: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        duration: Duration::from_secs(600),
        sample: Duration::from_secs(10),
        data_dir: None,
        workloads: WORKLOADS.iter().map(|w| w.to_string()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--duration-s" => args.duration = Duration::from_secs(seconds(&value()?)?),
            "--sample-s" => args.sample = Duration::from_secs(seconds(&value()?)?.max(1)),
            "--data-dir" => args.data_dir = Some(value()?),
            "--workloads" => {
                let list = value()?;
                args.workloads = list.split(',').map(str::to_string).collect();
                if let Some(bad) = args
                    .workloads
                    .iter()
                    .find(|w| !WORKLOADS.contains(&w.as_str()))
                {
                    return Err(format!("unknown workload {bad}"));
                }
            }
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn seconds(s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("not a number of seconds: {s}"))
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n\n{HELP}");
            std::process::exit(2);
        }
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let data_dir = match &args.data_dir {
        Some(d) => Path::new(d).to_path_buf(),
        None => tmp.path().join("data"),
    };
    let mut broker = start_broker(&data_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    let samples = runtime.block_on(soak(&broker.url, broker.child.id(), &args));
    let _ = broker.child.kill();
    let _ = broker.child.wait();
    println!("{}", summary(&samples));
}

struct Broker {
    child: Child,
    url: String,
}

fn start_broker(data_dir: &Path) -> Broker {
    // `SOAK_BROKER_BIN` runs another build of the broker (a copy kept from before a change)
    // under the same traffic.
    let bin =
        std::env::var_os("SOAK_BROKER_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tidelog").into());
    let mut child = Command::new(bin)
        // Warnings only: topic churn and group rounds are events the broker logs at info.
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
    // Keep draining stdout so the broker never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Broker { child, url }
}

/// The workloads, in the order of `Tally::failed_by_workload`.
const WORKLOADS: [&str; 5] = ["produce", "long-poll", "sse", "groups", "topic-churn"];

/// Requests answered and failed, over all workloads, and failures per workload.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    failed_by_workload: [AtomicU64; WORKLOADS.len()],
}

impl Tally {
    fn count(&self, workload: usize, ok: bool) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed_by_workload[workload].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn failures(&self) -> String {
        let by: Vec<String> = WORKLOADS
            .iter()
            .zip(&self.failed_by_workload)
            .map(|(name, n)| format!("{name} {}", n.load(Ordering::Relaxed)))
            .collect();
        by.join(", ")
    }
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    /// The broker's threads (`Threads:`): the tokio workers and its blocking pool.
    threads: u64,
    ok: u64,
    failed: u64,
}

async fn soak(base: &str, pid: u32, args: &Args) -> Vec<Sample> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client");
    let config = json!({"retention_bytes": 4 * 1024 * 1024, "segment_bytes": 1024 * 1024});
    let created = create_topic(&client, base, "soak", PARTITIONS, config).await;
    assert!(created, "could not create the soak topic");
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    let on = |w: &str| args.workloads.iter().any(|x| x == w);
    for producer in (0..4u32).filter(|_| on("produce")) {
        let w = Worker::new("produce", &client, base, &tally, deadline);
        tasks.push(tokio::spawn(async move { w.produce(producer).await }));
    }
    for partition in (0..PARTITIONS).filter(|_| on("long-poll")) {
        let w = Worker::new("long-poll", &client, base, &tally, deadline);
        tasks.push(tokio::spawn(async move { w.long_poll(partition).await }));
    }
    for streamer in (0..2u32).filter(|_| on("sse")) {
        let w = Worker::new("sse", &client, base, &tally, deadline);
        tasks.push(tokio::spawn(async move { w.sse(streamer).await }));
    }
    if on("groups") {
        let w = Worker::new("groups", &client, base, &tally, deadline);
        tasks.push(tokio::spawn(async move { w.groups().await }));
    }
    if on("topic-churn") {
        let w = Worker::new("topic-churn", &client, base, &tally, deadline);
        tasks.push(tokio::spawn(async move { w.topic_churn().await }));
    }

    let mut samples = Vec::new();
    println!(
        "{:>6}  {:>9}  {:>5}  {:>7}  {:>9}  {:>7}",
        "s", "rss_MiB", "fds", "threads", "ok", "failed"
    );
    loop {
        let s = sample(pid, started, &tally);
        println!(
            "{:>6}  {:>9.1}  {:>5}  {:>7}  {:>9}  {:>7}",
            s.at.as_secs(),
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.threads,
            s.ok,
            s.failed
        );
        samples.push(s);
        if Instant::now() >= deadline {
            break;
        }
        let next = (Instant::now() + args.sample).min(deadline);
        tokio::time::sleep_until(next.into()).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    println!("failed requests by workload: {}", tally.failures());
    samples
}

fn sample(pid: u32, started: Instant, tally: &Tally) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let rss_kib = field("VmRSS:");
    let threads = field("Threads:");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    Sample {
        at: started.elapsed(),
        rss_kib,
        fds,
        threads,
        ok: tally.ok.load(Ordering::Relaxed),
        failed: tally.failed.load(Ordering::Relaxed),
    }
}

/// One workload loop's handles: the client, the broker, the tally and the deadline.
struct Worker {
    /// Index into `WORKLOADS`.
    workload: usize,
    client: reqwest::Client,
    base: String,
    tally: Arc<Tally>,
    deadline: Instant,
}

impl Worker {
    fn new(
        workload: &str,
        client: &reqwest::Client,
        base: &str,
        tally: &Arc<Tally>,
        deadline: Instant,
    ) -> Self {
        Worker {
            workload: WORKLOADS
                .iter()
                .position(|w| *w == workload)
                .expect("a workload"),
            client: client.clone(),
            base: base.to_string(),
            tally: tally.clone(),
            deadline,
        }
    }

    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Sends and counts the request; the answer's JSON body (`Null` for an empty one) if it
    /// succeeded.
    async fn send(&self, request: reqwest::RequestBuilder) -> Option<Value> {
        let answer = match request.send().await {
            Ok(r) if r.status().is_success() => r
                .bytes()
                .await
                .ok()
                .map(|body| serde_json::from_slice(&body).unwrap_or(Value::Null)),
            _ => None,
        };
        self.tally.count(self.workload, answer.is_some());
        answer
    }

    async fn produce(&self, producer: u32) {
        let records: Vec<Value> = (0..BATCH_RECORDS)
            .map(|i| json!({"key": format!("p{producer}-{i}"), "value": "x".repeat(100)}))
            .collect();
        let body = json!({ "records": records });
        let url = format!("{}/v1/topics/soak/records?acks=all", self.base);
        while self.running() {
            self.send(self.client.post(&url).json(&body)).await;
        }
    }

    async fn long_poll(&self, partition: u32) {
        let mut offset = "latest".to_string();
        while self.running() {
            let url = format!(
                "{}/v1/topics/soak/partitions/{partition}/records?offset={offset}&max_records=500&wait_ms=1000",
                self.base
            );
            match self.send(self.client.get(&url)).await {
                Some(page) => offset = page["next_offset"].to_string(),
                // Retention may have passed the position: start again at the end.
                None => offset = "latest".to_string(),
            }
        }
    }

    /// Opens a stream, reads up to `streamer * 3` chunks (0: drops it unread), drops it.
    async fn sse(&self, streamer: u32) {
        let mut round = 0u32;
        while self.running() {
            let partition = round % PARTITIONS;
            round += 1;
            let url = format!(
                "{}/v1/topics/soak/partitions/{partition}/stream?offset=latest",
                self.base
            );
            let response = self.client.get(&url).send().await;
            let Ok(mut response) = response else {
                self.tally.count(self.workload, false);
                continue;
            };
            self.tally
                .count(self.workload, response.status().is_success());
            for _ in 0..streamer * 3 {
                let chunk = tokio::time::timeout(Duration::from_secs(2), response.chunk()).await;
                if !matches!(chunk, Ok(Ok(Some(_)))) {
                    break;
                }
            }
        }
    }

    /// A new group each round: join, fetch, commit what was fetched, leave, delete.
    async fn groups(&self) {
        let mut round = 0u64;
        while self.running() {
            round += 1;
            let group = format!("{}/v1/groups/soak-{round}", self.base);
            let join = json!({"topics": ["soak"], "session_timeout_ms": 10_000});
            let Some(member) = self
                .send(self.client.post(format!("{group}/members")).json(&join))
                .await
            else {
                continue;
            };
            let member_id = member["member_id"].as_str().unwrap_or_default().to_string();
            let fetch = format!("{group}/members/{member_id}/records?max_records=100&wait_ms=100");
            let page = self.send(self.client.get(fetch)).await;
            if let Some(page) =
                page.filter(|p| p["next_offsets"].as_array().is_some_and(|o| !o.is_empty()))
            {
                let offsets = &page["next_offsets"];
                let commit = json!({"member_id": member_id, "generation": page["generation"], "offsets": offsets});
                self.send(self.client.post(format!("{group}/offsets")).json(&commit))
                    .await;
            }
            self.send(self.client.delete(format!("{group}/members/{member_id}")))
                .await;
            // A group left empty without commits is gone already: 404 is the expected answer.
            let deleted = self.client.delete(&group).send().await;
            let gone = deleted.is_ok_and(|r| {
                r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND
            });
            self.tally.count(self.workload, gone);
        }
    }

    /// A new topic each round: create, produce, read back, delete.
    async fn topic_churn(&self) {
        let mut round = 0u64;
        while self.running() {
            round += 1;
            let name = format!("churn-{round}");
            if !create_topic(&self.client, &self.base, &name, 2, json!({})).await {
                self.tally.count(self.workload, false);
                continue;
            }
            let body = json!({"records": [{"value": round}, {"key": "k", "value": "v"}]});
            let topic = format!("{}/v1/topics/{name}", self.base);
            self.send(self.client.post(format!("{topic}/records")).json(&body))
                .await;
            let read = format!("{topic}/partitions/0/records?offset=earliest");
            self.send(self.client.get(read)).await;
            self.send(self.client.delete(&topic)).await;
        }
    }
}

async fn create_topic(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    partitions: u32,
    config: Value,
) -> bool {
    let body = json!({"name": name, "partitions": partitions, "config": config});
    let answer = client
        .post(format!("{base}/v1/topics"))
        .json(&body)
        .send()
        .await;
    answer.is_ok_and(|r| r.status().is_success())
}

fn summary(samples: &[Sample]) -> String {
    let Some(last) = samples.last() else {
        return "no samples".to_string();
    };
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at >= WARMUP).collect();
    let mut out = format!(
        "\nsoak: {} s, {} requests answered, {} failed\n",
        last.at.as_secs(),
        last.ok,
        last.failed
    );
    let Some(first) = steady.first() else {
        out.push_str("shorter than the warm-up: nothing to compare\n");
        return out;
    };
    let rss_max = steady.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let fds_max = steady.iter().map(|s| s.fds).max().unwrap_or(0);
    out.push_str(&format!(
        "after warm-up ({} s): rss {:.1} MiB at {} s, {:.1} MiB at the end, max {:.1} MiB ({:+.1}%)\n",
        WARMUP.as_secs(),
        first.rss_kib as f64 / 1024.0,
        first.at.as_secs(),
        last.rss_kib as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        percent(first.rss_kib, last.rss_kib)
    ));
    out.push_str(&format!(
        "open descriptors: {} at {} s, {} at the end, max {} ({:+.1}%)\n",
        first.fds,
        first.at.as_secs(),
        last.fds,
        fds_max,
        percent(first.fds, last.fds)
    ));
    out
}

fn percent(from: u64, to: u64) -> f64 {
    if from == 0 {
        return 0.0;
    }
    (to as f64 - from as f64) * 100.0 / from as f64
}
