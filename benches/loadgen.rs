//! End-to-end HTTP load generator: tidelog against a bare baseline, in the same run.
//!
//! `cargo bench --bench loadgen` runs the default set (about a minute);
//! `cargo bench --bench loadgen -- --help` lists the options and scenario names.
//!
//! It starts, in this process and only on 127.0.0.1:
//! - a tidelog broker (`Node::open` + `http::serve`, temp data directory), and
//! - the baseline: a bare axum handler that parses the same JSON body with serde_json,
//!   appends the body to one file and fsyncs before answering. With group commit (the normal
//!   baseline) one fsync covers every request waiting at that moment; without it
//!   (`baseline-1fsync`) each request holds the file for its own write + fsync, which gives
//!   the one-fsync-per-request figure.
//!
//! With `--cluster` it starts instead, as processes of the release binary on loopback
//! ports, a single broker and a cluster of three (topics with replication factor 3 and
//! `min_insync_replicas` 2), and runs every scenario against both, alternating which goes
//! first (`cluster` module). The `e2e` scenarios measure end-to-end latency from produce to a
//! long-polling or SSE consumer at a fixed rate (`e2e` module).
//!
//! Each scenario drives each target with N keep-alive clients for a bounded time and count,
//! and prints records/s, MB/s, p50/p99/max latency, fsyncs/s and their mean duration (for
//! tidelog from `tidelog_fsyncs_total` and `tidelog_fsync_duration_seconds` in `/metrics`). Servers and clients run on separate tokio runtimes
//! (two worker threads each) but share the machine's cores, so figures are only comparable
//! within one run: the summary gives medians over the repeats and tidelog/baseline ratios
//! measured in the same repeat.
// A load generator, not a test: it counts answers and never checks them against the spec,
// so reqwest's own client (which clippy.toml keeps out of the tests) is right here.
#![allow(clippy::disallowed_types)]

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::value::RawValue;
use tidelog::config::BrokerConfig;
use tidelog::node::Node;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot, watch};

#[path = "loadgen/cluster.rs"]
mod cluster;
#[path = "loadgen/e2e.rs"]
mod e2e;
#[path = "loadgen/failover.rs"]
mod failover;
#[path = "loadgen/rolling.rs"]
mod rolling;

/// Bytes of each record's value as stored (a JSON string of this many bytes with its quotes).
const VALUE_BYTES: usize = 100;
/// Every request gives up after this long, so no client loop can hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most requests one client sends in one measurement, whatever the duration.
const REQUESTS_PER_CLIENT_MAX: u64 = 2_000_000;
/// Runtime thread names start with this, then `server` or `client`.
const THREAD_PREFIX: &str = "loadgen-";
const SERVER_THREADS: &str = "loadgen-server";
const CLIENT_THREADS: &str = "loadgen-client";
/// A scenario stops early once this many requests failed.
const ERRORS_MAX: u64 = 100;

const HELP: &str = "\
tidelog load generator (all traffic on 127.0.0.1)

usage: cargo bench --bench loadgen -- [--scenarios LIST] [--duration-ms N] [--repeat N]
                                      [--fetch-records N] [--data-dir DIR]
                                      [--cluster] [--cluster-url URL] [--via leader|any]
                                      [--partitions N] [--rolling-restart]
       cargo bench --bench loadgen -- --failover KILLS [--failover-timings test|default]

--scenarios   comma-separated; presets: default, matrix, group-commit, replication, all;
              or single scenarios:
                produce:BATCH:CLIENTS:ACKS   ACKS is all or leader; runs tidelog and baseline
                1fsync:BATCH:CLIENTS         baseline with one fsync per request (acks=all)
                fetch:CLIENTS                reads back --fetch-records records, max_records=1000
                e2e:RATE:poll|sse            RATE single records/s (acks=all), end-to-end
                                             latency to a long-polling or SSE consumer
              default = produce:1000:8:all,produce:1000:8:leader,produce:1:32:all,
                        1fsync:1:32,fetch:8
              matrix  = produce:{1,100,1000}:{1,8,32}:{all,leader}
              replication = produce:1000:8:all,produce:1:32:all,e2e:2000:poll,e2e:2000:sse
                        (the default with --cluster)
--cluster     targets are broker processes of the release binary instead of the in-process
              broker and baseline: a single broker and a cluster of three (replication
              factor 3, min_insync_replicas 2), each scenario on both in alternating order
--cluster-url with --cluster: measure the cluster that answers at URL (for example one of
              deploy/three-brokers.sh) instead of starting one
--via         with --cluster: send each client to its partition's leader (default) or
              spread the clients over every broker (`any`: forwarded to the leader)
--partitions  with --cluster: partitions of the produce topics (default 1); client c
              writes to partition c % N
--failover    instead of the scenarios: kill -9 the leader of a busy partition of a
              three-broker cluster KILLS times (restarting it each time) and print the time
              to a new leader and to the first produce it acknowledges, with medians
--failover-timings  test (default: broker session 1.5 s, Raft 100/500 ms, as the fault
              tests) or default (the broker's defaults: 9 s, 300/1500 ms)
--rolling-restart instead of the scenarios: a cluster of three release brokers under
              acks=all load, each restarted in turn with SIGTERM; records/s before, during
              and after (--duration-ms each side), errors seen (`rolling` module)
--fsync-on-pool  the in-process broker with fsync_on_workers = false: every fsync round on
              the blocking pool (to compare with the default, rounds on the workers)
--duration-ms measured time per scenario and target (default 2000)
--repeat      runs of the whole set; the summary shows medians (default 3)
--fetch-records records produced before the fetch scenario (default 1000000)
--data-dir    where the broker and the baseline write (default: a temp dir under $TMPDIR;
              it must be a real disk for fsync figures to mean anything)
";

fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n\n{HELP}");
            std::process::exit(2);
        }
    };
    if args.help {
        print!("{HELP}");
        return;
    }
    let dir = match &args.data_dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("create the data directory");
    let server_rt = runtime("server");
    let client_rt = runtime("client");
    if let Some(kills) = args.failover {
        client_rt.block_on(failover::run(dir.path(), kills, &args.failover_timings));
        return;
    }
    if args.rolling_restart {
        client_rt.block_on(rolling::run(&args, dir.path()));
        return;
    }
    let tidelog = (!args.cluster).then(|| {
        server_rt.block_on(start_tidelog(
            &dir.path().join("tidelog"),
            !args.fsync_on_pool,
        ))
    });
    let fleets = args.cluster.then(|| {
        client_rt.block_on(async {
            let single = cluster::Brokers::start_single(dir.path()).await;
            let rf3 = match &args.cluster_url {
                Some(url) => cluster::Brokers::external(url).await,
                None => cluster::Brokers::start_cluster(&dir.path().join("cluster"), 3).await,
            };
            (single, rf3)
        })
    });
    match (&tidelog, &fleets) {
        (Some(t), _) => println!("tidelog on http://{} (in process)", t.addr),
        (_, Some((single, rf3))) => {
            println!("single broker: {}", single.describe());
            println!(
                "cluster: {} (replication factor 3, min_insync_replicas 2, --via {:?}, {} partition(s))",
                rf3.describe(),
                args.via,
                args.partitions
            );
        }
        _ => {}
    }
    println!(
        "data in {}, {} cores, {} ms per measurement, {} repeats",
        dir.path().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.duration.as_millis(),
        args.repeat
    );
    let mut results: Vec<Measured> = Vec::new();
    for repeat in 0..args.repeat {
        for scenario in &args.scenarios {
            for target in scenario.targets(args.cluster, repeat) {
                let client_cpu = thread_cpu_seconds(CLIENT_THREADS);
                let mut run = match (target, &tidelog, &fleets) {
                    (Target::Single, _, Some((single, _))) => {
                        client_rt.block_on(cluster::run_scenario(scenario, single, &args, repeat))
                    }
                    (Target::Rf3, _, Some((_, rf3))) => {
                        client_rt.block_on(cluster::run_scenario(scenario, rf3, &args, repeat))
                    }
                    (Target::Tidelog | Target::TidelogIdempotent, Some(t), _) => {
                        client_rt.block_on(run_scenario(scenario, target, t, &args, repeat))
                    }
                    (Target::Baseline { group_commit }, _, _) => {
                        let server = server_rt
                            .block_on(start_baseline(&dir.path().join("baseline"), group_commit));
                        let run = client_rt
                            .block_on(run_scenario(scenario, target, &server, &args, repeat));
                        server_rt.block_on(server.stop());
                        run
                    }
                    _ => unreachable!("a target without its servers"),
                };
                run.client_cpu_s = thread_cpu_seconds(CLIENT_THREADS) - client_cpu;
                run.load_average = load_average();
                println!(
                    "[{}/{}] {:<22} {:<16} {}",
                    repeat + 1,
                    args.repeat,
                    scenario.name(),
                    target.name(),
                    run.line()
                );
                results.push(Measured {
                    scenario: scenario.name(),
                    target,
                    repeat,
                    run,
                });
            }
        }
    }
    print!("{}", summary(&args, &results));
    if let Some(t) = tidelog {
        server_rt.block_on(t.stop());
    }
    if let Some((single, rf3)) = fleets {
        single.stop();
        rf3.stop();
    }
}

/// The machine's 1-minute load average (`/proc/loadavg`), NaN where unknown: how many other
/// jobs shared the cores during a measurement.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system) used so far by this process's threads whose name starts
/// with `prefix`, from `/proc/self/task/*/stat`. Threads that exited are not counted.
fn thread_cpu_seconds(prefix: &str) -> f64 {
    // USER_HZ; 100 on every Linux this runs on.
    const TICKS_PER_SECOND: f64 = 100.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`; comm may hold spaces, so split at the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        if !comm.starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the comm: state is field 3 of stat(5), utime 14 and stime 15.
        let at = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
        ticks += at(14).unwrap_or(0) + at(15).unwrap_or(0);
    }
    ticks as f64 / TICKS_PER_SECOND
}

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("{THREAD_PREFIX}{name}"))
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

// ---------------------------------------------------------------------------------------------
// Arguments and scenarios

struct Args {
    scenarios: Vec<Scenario>,
    duration: Duration,
    repeat: usize,
    fetch_records: u64,
    data_dir: Option<PathBuf>,
    help: bool,
    /// Broker processes: a single broker beside a cluster of three.
    cluster: bool,
    /// A running cluster to measure instead of starting one.
    cluster_url: Option<String>,
    /// Where clients send (cluster targets).
    via: cluster::Via,
    /// Partitions of the produce topics (cluster targets).
    partitions: u32,
    /// `--failover KILLS`: the failover measurement instead of the scenarios.
    failover: Option<usize>,
    /// The broker timings of the failover measurement: `test` or `default`.
    failover_timings: String,
    /// A rolling restart of a three-broker cluster instead of the scenarios.
    rolling_restart: bool,
    /// The in-process broker keeps every fsync round on the blocking pool.
    fsync_on_pool: bool,
}

impl Args {
    fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut args = Args {
            scenarios: Vec::new(),
            duration: Duration::from_millis(2000),
            repeat: 3,
            fetch_records: 1_000_000,
            data_dir: None,
            help: false,
            cluster: false,
            cluster_url: None,
            via: cluster::Via::Leader,
            partitions: 1,
            failover: None,
            failover_timings: "test".to_string(),
            rolling_restart: false,
            fsync_on_pool: false,
        };
        let mut list = None;
        while let Some(a) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match a.as_str() {
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                "--help" | "-h" => args.help = true,
                "--scenarios" => list = Some(value(&a)?),
                "--duration-ms" => args.duration = Duration::from_millis(number(&value(&a)?)?),
                "--repeat" => args.repeat = number(&value(&a)?)?.clamp(1, 100) as usize,
                "--fetch-records" => args.fetch_records = number(&value(&a)?)?.max(1000),
                "--data-dir" => args.data_dir = Some(PathBuf::from(value(&a)?)),
                "--cluster" => args.cluster = true,
                "--fsync-on-pool" => args.fsync_on_pool = true,
                "--cluster-url" => {
                    args.cluster = true;
                    args.cluster_url = Some(value(&a)?.trim_end_matches('/').to_string());
                }
                "--via" => {
                    args.via = match value(&a)?.as_str() {
                        "leader" => cluster::Via::Leader,
                        "any" => cluster::Via::Any,
                        other => return Err(format!("--via '{other}' is not leader or any")),
                    }
                }
                "--partitions" => args.partitions = number(&value(&a)?)?.clamp(1, 64) as u32,
                "--failover" => args.failover = Some(number(&value(&a)?)?.clamp(1, 1000) as usize),
                "--failover-timings" => {
                    let timings = value(&a)?;
                    failover::config(&timings)?;
                    args.failover_timings = timings;
                }
                "--rolling-restart" => args.rolling_restart = true,
                other => return Err(format!("unknown argument '{other}'")),
            }
        }
        if args.duration.is_zero() || args.duration > Duration::from_secs(600) {
            return Err("--duration-ms must be between 1 and 600000".into());
        }
        let list = list.unwrap_or_else(|| {
            if args.cluster {
                "replication"
            } else {
                "default"
            }
            .to_string()
        });
        for name in list.split(',').filter(|s| !s.is_empty()) {
            args.scenarios.extend(Scenario::parse_list(name)?);
        }
        Ok(args)
    }
}

fn number(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("'{s}' is not a number"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acks {
    All,
    Leader,
}

impl Acks {
    fn as_str(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "leader",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Produce `batch` records per request from `clients` clients, to tidelog and baseline.
    Produce {
        batch: usize,
        clients: usize,
        acks: Acks,
    },
    /// The baseline with group commit off: one fsync per request.
    OneFsync { batch: usize, clients: usize },
    /// Read back records produced beforehand, 1,000 per request.
    Fetch { clients: usize },
    /// Single records at `rate` per second (acks=all) and one consumer: end-to-end latency.
    E2e { rate: u32, consumer: e2e::Consumer },
    /// Produce `batch` records per request with acks=all, plain and idempotent (a producer
    /// session per client, a sequence per request), on the in-process broker.
    Idempotent { batch: usize, clients: usize },
}

impl Scenario {
    fn parse_list(spec: &str) -> Result<Vec<Scenario>, String> {
        let produce = |batch, clients, acks| Scenario::Produce {
            batch,
            clients,
            acks,
        };
        let preset = match spec {
            "default" => vec![
                produce(1000, 8, Acks::All),
                produce(1000, 8, Acks::Leader),
                produce(1, 32, Acks::All),
                Scenario::OneFsync {
                    batch: 1,
                    clients: 32,
                },
                Scenario::Fetch { clients: 8 },
            ],
            "group-commit" => vec![
                produce(1, 32, Acks::All),
                Scenario::OneFsync {
                    batch: 1,
                    clients: 32,
                },
            ],
            "matrix" => matrix(),
            "idempotent" => vec![
                Scenario::Idempotent {
                    batch: 1000,
                    clients: 8,
                },
                Scenario::Idempotent {
                    batch: 1,
                    clients: 32,
                },
            ],
            "replication" => vec![
                produce(1000, 8, Acks::All),
                produce(1, 32, Acks::All),
                Scenario::E2e {
                    rate: 2000,
                    consumer: e2e::Consumer::LongPoll,
                },
                Scenario::E2e {
                    rate: 2000,
                    consumer: e2e::Consumer::Sse,
                },
            ],
            "all" => {
                let mut all = matrix();
                all.push(Scenario::OneFsync {
                    batch: 1,
                    clients: 32,
                });
                all.push(Scenario::Fetch { clients: 8 });
                all
            }
            _ => return Scenario::parse_one(spec).map(|s| vec![s]),
        };
        Ok(preset)
    }

    fn parse_one(spec: &str) -> Result<Scenario, String> {
        let parts: Vec<&str> = spec.split(':').collect();
        let n = |i: usize| -> Result<usize, String> {
            let v = number(parts.get(i).ok_or(format!("'{spec}' is incomplete"))?)?;
            if v == 0 || v > 100_000 {
                return Err(format!("'{spec}': numbers must be between 1 and 100000"));
            }
            Ok(v as usize)
        };
        match (parts[0], parts.len()) {
            ("produce", 4) => Ok(Scenario::Produce {
                batch: n(1)?,
                clients: n(2)?.min(1024),
                acks: match parts[3] {
                    "all" => Acks::All,
                    "leader" => Acks::Leader,
                    other => return Err(format!("acks '{other}' is not all or leader")),
                },
            }),
            ("1fsync", 3) => Ok(Scenario::OneFsync {
                batch: n(1)?,
                clients: n(2)?.min(1024),
            }),
            ("fetch", 2) => Ok(Scenario::Fetch {
                clients: n(1)?.min(1024),
            }),
            ("idem", 3) => Ok(Scenario::Idempotent {
                batch: n(1)?,
                clients: n(2)?.min(1024),
            }),
            ("e2e", 3) => Ok(Scenario::E2e {
                rate: n(1)? as u32,
                consumer: e2e::Consumer::parse(parts[2])
                    .ok_or(format!("consumer '{}' is not poll or sse", parts[2]))?,
            }),
            _ => Err(format!("unknown scenario '{spec}'")),
        }
    }

    fn name(&self) -> String {
        match *self {
            Scenario::Produce {
                batch,
                clients,
                acks,
            } => format!("produce:{batch}:{clients}:{}", acks.as_str()),
            Scenario::OneFsync { batch, clients } => format!("1fsync:{batch}:{clients}"),
            Scenario::Fetch { clients } => format!("fetch:{clients}"),
            Scenario::E2e { rate, consumer } => format!("e2e:{rate}:{}", consumer.as_str()),
            Scenario::Idempotent { batch, clients } => format!("idem:{batch}:{clients}"),
        }
    }

    /// The targets this scenario runs on; with `--cluster` the single broker and the cluster
    /// take turns going first, by `repeat`.
    fn targets(&self, cluster: bool, repeat: usize) -> Vec<Target> {
        match self {
            Scenario::OneFsync { .. } => vec![Target::Baseline {
                group_commit: false,
            }],
            Scenario::Idempotent { .. } if cluster => Vec::new(),
            Scenario::Idempotent { .. } if repeat.is_multiple_of(2) => {
                vec![Target::Tidelog, Target::TidelogIdempotent]
            }
            Scenario::Idempotent { .. } => vec![Target::TidelogIdempotent, Target::Tidelog],
            _ if cluster && repeat.is_multiple_of(2) => vec![Target::Single, Target::Rf3],
            _ if cluster => vec![Target::Rf3, Target::Single],
            Scenario::Produce { .. } => {
                vec![Target::Tidelog, Target::Baseline { group_commit: true }]
            }
            Scenario::Fetch { .. } | Scenario::E2e { .. } => vec![Target::Tidelog],
        }
    }
}

fn matrix() -> Vec<Scenario> {
    let mut all = Vec::new();
    for acks in [Acks::All, Acks::Leader] {
        for batch in [1, 100, 1000] {
            for clients in [1, 8, 32] {
                all.push(Scenario::Produce {
                    batch,
                    clients,
                    acks,
                });
            }
        }
    }
    all
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Tidelog,
    /// The in-process broker, produced to idempotently (`idem` scenarios).
    TidelogIdempotent,
    Baseline {
        group_commit: bool,
    },
    /// `--cluster`: one broker process, no `--peers`.
    Single,
    /// `--cluster`: three broker processes, topics replicated 3 ways.
    Rf3,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Tidelog => "tidelog",
            Target::TidelogIdempotent => "tidelog-idempotent",
            Target::Baseline { group_commit: true } => "baseline",
            Target::Baseline {
                group_commit: false,
            } => "baseline-1fsync",
            Target::Single => "single",
            Target::Rf3 => "rf3",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Servers

struct Server {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    /// The broker, closed cleanly on stop (tidelog only).
    node: Option<Node>,
    /// The baseline's state, for its fsync counters (baseline only).
    baseline: Option<Arc<Baseline>>,
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        if let Some(node) = self.node {
            let _ = node.close().await;
        }
    }
}

async fn start_tidelog(data_dir: &Path, fsync_on_workers: bool) -> Server {
    let config = BrokerConfig {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        data_dir: data_dir.to_path_buf(),
        fsync_on_workers,
        ..BrokerConfig::default()
    };
    let node = Node::open(config).await.expect("open the broker");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = node.clone();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        tidelog::http::serve(serving, listener, shutdown)
            .await
            .expect("serve");
    });
    Server {
        addr,
        stop,
        task,
        node: Some(node),
        baseline: None,
    }
}

/// The baseline's shared state: one file, written under a lock, synced by a flusher task.
struct Baseline {
    /// Shared with the flusher and blocking tasks, which sync it outside the lock.
    file: Arc<File>,
    /// End of the file; std lock, held only for the page-cache write.
    end: Mutex<u64>,
    /// Requests written so far; a request's number is taken under `end`'s lock after its write.
    written: AtomicU64,
    /// Highest request number covered by a completed fsync.
    synced: watch::Sender<u64>,
    /// Wakes the flusher.
    wanted: Notify,
    group_commit: bool,
    /// Without group commit: held across one request's write and fsync, so no fsync is shared.
    one_at_a_time: tokio::sync::Mutex<()>,
    /// fsyncs done, and their total duration in nanoseconds, for the report.
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
}

impl Baseline {
    /// Syncs the file on the blocking pool; timed like tidelog's fsync metric (the blocking
    /// pool round trip included).
    async fn sync_counted(self: &Arc<Self>) -> std::io::Result<()> {
        let started = Instant::now();
        let me = Arc::clone(self);
        let synced = tokio::task::spawn_blocking(move || me.file.sync_data())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        synced
    }
}

/// The same record shape tidelog accepts, borrowing from the body.
#[derive(Deserialize)]
struct BaselineRecord<'a> {
    #[serde(borrow, default)]
    #[allow(dead_code)]
    key: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    #[allow(dead_code)]
    partition: Option<u32>,
}

#[derive(Deserialize)]
struct BaselineProduce<'a> {
    #[serde(borrow)]
    records: Vec<BaselineRecord<'a>>,
}

async fn start_baseline(dir: &Path, group_commit: bool) -> Server {
    std::fs::create_dir_all(dir).expect("baseline dir");
    let path = dir.join(if group_commit {
        "group.log"
    } else {
        "1fsync.log"
    });
    let file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(path)
        .expect("baseline file");
    let state = Arc::new(Baseline {
        file: Arc::new(file),
        end: Mutex::new(0),
        written: AtomicU64::new(0),
        synced: watch::Sender::new(0),
        wanted: Notify::new(),
        group_commit,
        one_at_a_time: tokio::sync::Mutex::new(()),
        fsyncs: AtomicU64::new(0),
        fsync_nanos: AtomicU64::new(0),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let flusher = tokio::spawn(baseline_flusher(Arc::clone(&state)));
    let app = Router::new()
        .route("/v1/topics/{topic}/records", post(baseline_produce))
        .with_state(Arc::clone(&state));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .expect("serve the baseline");
        flusher.abort();
    });
    Server {
        addr,
        stop,
        task,
        node: None,
        baseline: Some(state),
    }
}

async fn baseline_produce(
    State(b): State<Arc<Baseline>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let records = match serde_json::from_slice::<BaselineProduce<'_>>(&body) {
        Ok(p) => p.records.len(),
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let wait_for_fsync = !query.is_some_and(|q| q.contains("acks=leader"));
    let result = if b.group_commit {
        baseline_group_append(&b, &body, wait_for_fsync).await
    } else {
        baseline_append_and_sync(&b, body).await
    };
    match result {
        Ok(()) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            format!("{{\"records\":{records}}}"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn baseline_group_append(b: &Baseline, body: &[u8], wait: bool) -> std::io::Result<()> {
    let number = {
        let mut end = b.end.lock().unwrap_or_else(|e| e.into_inner());
        b.file.write_all_at(body, *end)?;
        *end += body.len() as u64;
        b.written.fetch_add(1, Ordering::AcqRel) + 1
    };
    b.wanted.notify_one();
    if wait {
        let mut synced = b.synced.subscribe();
        synced
            .wait_for(|s| *s >= number)
            .await
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

async fn baseline_append_and_sync(b: &Arc<Baseline>, body: Bytes) -> std::io::Result<()> {
    let _alone = b.one_at_a_time.lock().await;
    let offset = {
        let mut end = b.end.lock().unwrap_or_else(|e| e.into_inner());
        let at = *end;
        *end += body.len() as u64;
        at
    };
    let file = Arc::clone(&b.file);
    tokio::task::spawn_blocking(move || file.write_all_at(&body, offset))
        .await
        .map_err(std::io::Error::other)??;
    b.sync_counted().await
}

/// One fsync for every request written before it starts.
async fn baseline_flusher(b: Arc<Baseline>) {
    loop {
        b.wanted.notified().await;
        let target = b.written.load(Ordering::Acquire);
        if target <= *b.synced.borrow() {
            continue;
        }
        match b.sync_counted().await {
            Ok(()) => {
                b.synced.send_modify(|s| *s = (*s).max(target));
            }
            // Waiters then hang until their client's timeout; the run reports the errors.
            _ => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// What one scenario on one target measured.
#[derive(Debug, Default, Clone)]
struct Run {
    requests: u64,
    records: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    /// Per-request latencies in microseconds, sorted.
    latencies_us: Vec<u32>,
    /// fsyncs done by the server during the run, and their summed duration in seconds.
    fsyncs: Option<(u64, f64)>,
    /// CPU seconds used by the server: the in-process runtime's threads (workers and
    /// blocking pool), or the broker processes this run started.
    server_cpu_s: f64,
    /// CPU seconds used by the client runtime's threads (the load generator itself).
    client_cpu_s: f64,
    /// Broker processes (`--cluster`): each one's CPU, fsyncs and replica fetches.
    brokers: Vec<cluster::BrokerFigures>,
    /// End-to-end runs: the produce answers' latencies (the run's own are the consumer's).
    ack_latencies_us: Vec<u32>,
    /// End-to-end runs: acknowledged records the consumer had not seen when the run gave up.
    missing: u64,
    /// End-to-end runs: how far (ms) the fixed-rate producer fell behind its schedule.
    behind_ms_max: Option<u32>,
    /// Broker processes: the `durability` a produce with the run's acks was answered with.
    durability: Option<String>,
    /// The machine's 1-minute load average just after the run.
    load_average: f64,
}

impl Run {
    fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
    fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
    fn fsyncs_per_s(&self) -> Option<f64> {
        self.fsyncs
            .map(|(n, _)| n as f64 / self.elapsed.as_secs_f64())
    }
    /// Server CPU per request in microseconds: what the handler path costs, whatever the noise.
    fn server_cpu_us_per_request(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.requests as f64
    }
    /// Records per second of server CPU (per core, so comparable on a loaded machine).
    fn records_per_cpu_s(&self) -> f64 {
        self.records as f64 / self.server_cpu_s
    }
    fn fsync_mean_ms(&self) -> Option<f64> {
        self.fsyncs
            .filter(|(n, _)| *n > 0)
            .map(|(n, secs)| secs * 1000.0 / n as f64)
    }
    fn latency_ms(&self, percentile: f64) -> f64 {
        percentile_ms(&self.latencies_us, percentile)
    }
    fn ack_latency_ms(&self, percentile: f64) -> f64 {
        percentile_ms(&self.ack_latencies_us, percentile)
    }

    fn line(&self) -> String {
        let mut s = format!(
            "{:>11.0} rec/s {:>8.0} req/s {:>7.1} MB/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms",
            self.records_per_s(),
            self.requests_per_s(),
            self.mb_per_s(),
            self.latency_ms(50.0),
            self.latency_ms(99.0),
            self.latency_ms(99.9),
            self.latency_ms(100.0),
        );
        if let Some(f) = self.fsyncs_per_s() {
            let _ = write!(s, "  {f:>6.0} fsyncs/s");
        }
        if let Some(ms) = self.fsync_mean_ms() {
            let _ = write!(s, " of {ms:.2} ms");
        }
        if self.server_cpu_s.is_finite() {
            let _ = write!(
                s,
                "  server {:.0}% cpu, {:.0} us cpu/req, {:.0} rec/cpu-s,",
                self.server_cpu_s * 100.0 / self.elapsed.as_secs_f64(),
                self.server_cpu_us_per_request(),
                self.records_per_cpu_s(),
            );
        }
        let _ = write!(
            s,
            "  client {:.0}% cpu",
            self.client_cpu_s * 100.0 / self.elapsed.as_secs_f64(),
        );
        if self.load_average.is_finite() {
            let _ = write!(s, ", load {:.1}", self.load_average);
        }
        if !self.ack_latencies_us.is_empty() {
            let _ = write!(
                s,
                "  (end to end; produce answered p50 {:.2} ms p99 {:.2} ms)",
                self.ack_latency_ms(50.0),
                self.ack_latency_ms(99.0)
            );
        }
        if let Some(ms) = self.behind_ms_max.filter(|ms| *ms > 1) {
            let _ = write!(s, "  producer up to {ms} ms behind its rate");
        }
        if self.missing > 0 {
            let _ = write!(s, "  {} RECORDS NOT SEEN", self.missing);
        }
        s.push_str(&cluster::broker_line(self));
        if self.errors > 0 {
            let _ = write!(
                s,
                "  {} ERRORS (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        s
    }
}

/// The `percentile` of sorted microsecond latencies, in milliseconds (NaN when empty).
fn percentile_ms(sorted_us: &[u32], percentile: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() - 1) as f64 * percentile / 100.0).round() as usize;
    f64::from(sorted_us[i]) / 1000.0
}

fn http_client(clients: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(clients)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build the HTTP client")
}

/// `{"records":[{"value":"xx..."}, ...]}` with `batch` records of `VALUE_BYTES` each, each
/// with `"partition"` when one is given.
fn produce_body(batch: usize, partition: Option<u32>) -> Bytes {
    let value = format!("\"{}\"", "x".repeat(VALUE_BYTES - 2));
    let mut body = String::with_capacity(16 + batch * (VALUE_BYTES + 12));
    body.push_str("{\"records\":[");
    for i in 0..batch {
        if i > 0 {
            body.push(',');
        }
        match partition {
            Some(p) => {
                let _ = write!(body, "{{\"partition\":{p},\"value\":{value}}}");
            }
            None => {
                let _ = write!(body, "{{\"value\":{value}}}");
            }
        }
    }
    body.push_str("]}");
    Bytes::from(body)
}

async fn run_scenario(
    scenario: &Scenario,
    target: Target,
    server: &Server,
    args: &Args,
    repeat: usize,
) -> Run {
    let base = format!("http://{}", server.addr);
    let topic = format!("loadgen-{}-{repeat}", scenario.name().replace(':', "-"));
    match *scenario {
        Scenario::Produce {
            batch,
            clients,
            acks,
        } => {
            let is_tidelog = target == Target::Tidelog;
            if is_tidelog {
                create_topic(&base, &topic).await;
            }
            let url = format!("{base}/v1/topics/{topic}/records?acks={}", acks.as_str());
            let before = fsyncs(server).await;
            let cpu = thread_cpu_seconds(SERVER_THREADS);
            let targets = vec![(url, produce_body(batch, None)); clients];
            let mut run = produce(targets, batch, args.duration, u64::MAX).await;
            run.server_cpu_s = thread_cpu_seconds(SERVER_THREADS) - cpu;
            run.fsyncs = Some(fsyncs_since(server, before).await);
            if is_tidelog {
                delete_topic(&base, &topic).await;
            }
            run
        }
        Scenario::Idempotent { batch, clients } => {
            let topic = format!("{topic}-{}", target.name());
            create_topic(&base, &topic).await;
            let url = format!("{base}/v1/topics/{topic}/records?acks=all");
            let targets = if target == Target::TidelogIdempotent {
                producer_sessions(&base, &url, clients).await
            } else {
                vec![url; clients]
            };
            let targets = targets
                .into_iter()
                .map(|url| (url, produce_body(batch, None)))
                .collect();
            let numbered = target == Target::TidelogIdempotent;
            let before = fsyncs(server).await;
            let cpu = thread_cpu_seconds(SERVER_THREADS);
            let mut run = produce_numbered(targets, batch, args.duration, u64::MAX, numbered).await;
            run.server_cpu_s = thread_cpu_seconds(SERVER_THREADS) - cpu;
            run.fsyncs = Some(fsyncs_since(server, before).await);
            delete_topic(&base, &topic).await;
            run
        }
        Scenario::OneFsync { batch, clients } => {
            let url = format!("{base}/v1/topics/{topic}/records?acks=all");
            let before = fsyncs(server).await;
            let cpu = thread_cpu_seconds(SERVER_THREADS);
            let targets = vec![(url, produce_body(batch, None)); clients];
            let mut run = produce(targets, batch, args.duration, u64::MAX).await;
            run.server_cpu_s = thread_cpu_seconds(SERVER_THREADS) - cpu;
            run.fsyncs = Some(fsyncs_since(server, before).await);
            run
        }
        Scenario::E2e { rate, consumer } => {
            create_topic(&base, &topic).await;
            let produce_url = format!("{base}/v1/topics/{topic}/records?acks=all");
            let partition_url = format!("{base}/v1/topics/{topic}/partitions/0");
            let before = fsyncs(server).await;
            let cpu = thread_cpu_seconds(SERVER_THREADS);
            let mut run =
                e2e::run(&produce_url, &partition_url, consumer, rate, args.duration).await;
            run.server_cpu_s = thread_cpu_seconds(SERVER_THREADS) - cpu;
            run.fsyncs = Some(fsyncs_since(server, before).await);
            delete_topic(&base, &topic).await;
            run
        }
        Scenario::Fetch { clients } => {
            create_topic(&base, &topic).await;
            let url = format!("{base}/v1/topics/{topic}/records?acks=all");
            let requests = args.fetch_records.div_ceil(1000);
            let targets = vec![(url, produce_body(1000, None)); 8];
            let filled = produce(targets, 1000, Duration::from_secs(120), requests).await;
            assert_eq!(filled.errors, 0, "filling the fetch topic failed");
            let before = fsyncs(server).await;
            let cpu = thread_cpu_seconds(SERVER_THREADS);
            let mut run = fetch(&base, &topic, filled.records, clients, args.duration).await;
            run.server_cpu_s = thread_cpu_seconds(SERVER_THREADS) - cpu;
            run.fsyncs = Some(fsyncs_since(server, before).await);
            delete_topic(&base, &topic).await;
            run
        }
    }
}

async fn create_topic(base: &str, topic: &str) {
    let response = http_client(1)
        .post(format!("{base}/v1/topics"))
        .json(&serde_json::json!({"name": topic, "partitions": 1, "replication_factor": 1}))
        .send()
        .await
        .expect("create topic");
    assert!(
        response.status().is_success(),
        "create topic: {}",
        response.status()
    );
}

async fn delete_topic(base: &str, topic: &str) {
    let _ = http_client(1)
        .delete(format!("{base}/v1/topics/{topic}"))
        .send()
        .await;
}

/// fsyncs done so far and their total duration in seconds: for tidelog `tidelog_fsyncs_total`
/// and `tidelog_fsync_duration_seconds_sum` from `/metrics` (0 before the first fsync).
async fn fsyncs(server: &Server) -> (u64, f64) {
    if let Some(b) = &server.baseline {
        return (
            b.fsyncs.load(Ordering::Relaxed),
            b.fsync_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
    }
    let text = http_client(1)
        .get(format!("http://{}/metrics", server.addr))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("read /metrics");
    let metric = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        metric("tidelog_fsyncs_total") as u64,
        metric("tidelog_fsync_duration_seconds_sum"),
    )
}

async fn fsyncs_since(server: &Server, before: (u64, f64)) -> (u64, f64) {
    let after = fsyncs(server).await;
    (
        after.0.saturating_sub(before.0),
        (after.1 - before.1).max(0.0),
    )
}

/// What one client task saw.
#[derive(Default)]
struct ClientTally {
    requests: u64,
    records: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

impl ClientTally {
    /// Counts one answered request: its latency, records and bytes.
    fn answered(&mut self, latency: Duration, records: u64, bytes: u64) {
        self.latencies_us.push(micros(latency));
        self.requests += 1;
        self.records += records;
        self.bytes += bytes;
    }

    /// Counts one failed request, keeping the first error to show.
    fn failed(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

/// Waits for every client task and merges what they saw.
async fn join_clients(tasks: Vec<tokio::task::JoinHandle<ClientTally>>, started: Instant) -> Run {
    let mut tallies = Vec::with_capacity(tasks.len());
    for t in tasks {
        tallies.push(t.await.expect("client task"));
    }
    merge(tallies, started.elapsed())
}

fn merge(tallies: Vec<ClientTally>, elapsed: Duration) -> Run {
    let mut run = Run {
        elapsed,
        ..Run::default()
    };
    for t in tallies {
        run.requests += t.requests;
        run.records += t.records;
        run.bytes += t.bytes;
        run.errors += t.errors;
        run.first_error = run.first_error.or(t.first_error);
        run.latencies_us.extend(t.latencies_us);
    }
    run.latencies_us.sort_unstable();
    run
}

/// One task per `(url, body)` target POSTs its body to its URL back to back until `duration`
/// has passed or `requests_max` requests were sent in all.
async fn produce(
    targets: Vec<(String, Bytes)>,
    batch: usize,
    duration: Duration,
    requests_max: u64,
) -> Run {
    produce_numbered(targets, batch, duration, requests_max, false).await
}

/// One producer session per client (`POST /v1/producers`): each client's URL, ending in
/// `sequence=` for [`produce_numbered`] to number its requests.
async fn producer_sessions(base: &str, url: &str, clients: usize) -> Vec<String> {
    let client = http_client(1);
    let mut urls = Vec::with_capacity(clients);
    for _ in 0..clients {
        let session: serde_json::Value = client
            .post(format!("{base}/v1/producers"))
            .send()
            .await
            .expect("POST /v1/producers")
            .json()
            .await
            .expect("a producer session");
        let id = session["producer_id"].as_u64().expect("a producer id");
        let epoch = session["producer_epoch"].as_u64().expect("an epoch");
        urls.push(format!(
            "{url}&producer_id={id}&producer_epoch={epoch}&sequence="
        ));
    }
    urls
}

/// [`produce`]; with `numbered`, each client appends its request's number (0, 1, ...) to its
/// URL, the sequence of an idempotent produce.
async fn produce_numbered(
    targets: Vec<(String, Bytes)>,
    batch: usize,
    duration: Duration,
    requests_max: u64,
    numbered: bool,
) -> Run {
    let client = http_client(targets.len());
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(targets.len());
    for (url, body) in targets {
        let (client, issued) = (client.clone(), Arc::clone(&issued));
        tasks.push(tokio::spawn(async move {
            let mut tally = ClientTally::default();
            for n in 0..REQUESTS_PER_CLIENT_MAX {
                if Instant::now() >= deadline
                    || issued.fetch_add(1, Ordering::Relaxed) >= requests_max
                    || tally.errors >= ERRORS_MAX
                {
                    break;
                }
                let numbered_url;
                let url = if numbered {
                    numbered_url = format!("{url}{n}");
                    &numbered_url
                } else {
                    &url
                };
                let sent = Instant::now();
                let outcome = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let ok = match outcome {
                    Ok(r) if r.status().is_success() => r.bytes().await.map_err(|e| e.to_string()),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                match ok {
                    Ok(_) => tally.answered(sent.elapsed(), batch as u64, body.len() as u64),
                    Err(e) => tally.failed(e),
                }
            }
            tally
        }));
    }
    join_clients(tasks, started).await
}

/// `clients` tasks read the topic's `records` records, 1,000 per request, each starting at a
/// different offset and wrapping around, until `duration` has passed.
async fn fetch(base: &str, topic: &str, records: u64, clients: usize, duration: Duration) -> Run {
    let client = http_client(clients);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let client = client.clone();
        let url = format!("{base}/v1/topics/{topic}/partitions/0/records");
        let mut offset = records / clients as u64 * c as u64;
        tasks.push(tokio::spawn(async move {
            let mut tally = ClientTally::default();
            for _ in 0..REQUESTS_PER_CLIENT_MAX {
                if Instant::now() >= deadline || tally.errors >= ERRORS_MAX {
                    break;
                }
                let sent = Instant::now();
                let outcome = client
                    .get(format!("{url}?offset={offset}&max_records=1000"))
                    .send()
                    .await;
                let body = match outcome {
                    Ok(r) if r.status().is_success() => r.bytes().await.map_err(|e| e.to_string()),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                match body.and_then(|b| next_offset(&b).map(|n| (n, b.len()))) {
                    Ok((next, len)) => {
                        tally.answered(sent.elapsed(), next.saturating_sub(offset), len as u64);
                        offset = if next >= records { 0 } else { next };
                    }
                    Err(e) => tally.failed(e),
                }
            }
            tally
        }));
    }
    join_clients(tasks, started).await
}

/// The `next_offset` of a fetch answer, found near its end without parsing the records.
fn next_offset(body: &[u8]) -> Result<u64, String> {
    let tail = &body[body.len().saturating_sub(200)..];
    let tail = std::str::from_utf8(tail).unwrap_or("");
    tail.rsplit_once("\"next_offset\":")
        .and_then(|(_, rest)| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .ok_or_else(|| "fetch answer without next_offset".to_string())
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

// ---------------------------------------------------------------------------------------------
// Summary

struct Measured {
    scenario: String,
    target: Target,
    repeat: usize,
    run: Run,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs of one scenario on one target, in repeat order.
fn runs<'a>(results: &'a [Measured], scenario: &str, target: Target) -> Vec<&'a Run> {
    results
        .iter()
        .filter(|m| m.scenario == scenario && m.target == target)
        .map(|m| &m.run)
        .collect()
}

/// Median over repeats of `f(run of a) / f(run of b)`, pairing runs of the same repeat.
fn median_ratio(
    results: &[Measured],
    a: (&str, Target),
    b: (&str, Target),
    f: impl Fn(&Run) -> f64,
) -> Option<f64> {
    let ratios = ratios(results, a, b, f);
    (!ratios.is_empty()).then(|| median(ratios))
}

/// `f(run of a) / f(run of b)` for each repeat that measured both, in repeat order.
fn ratios(
    results: &[Measured],
    a: (&str, Target),
    b: (&str, Target),
    f: impl Fn(&Run) -> f64,
) -> Vec<f64> {
    results
        .iter()
        .filter(|m| m.scenario == a.0 && m.target == a.1)
        .filter_map(|ma| {
            results
                .iter()
                .find(|mb| mb.scenario == b.0 && mb.target == b.1 && mb.repeat == ma.repeat)
                .map(|mb| f(&ma.run) / f(&mb.run))
        })
        .collect()
}

fn summary(args: &Args, results: &[Measured]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nMedians over {} repeats ({} ms each); ratio = tidelog/baseline (rf3/single with \
         --cluster) records/s and cpu ratio = the same for server CPU per request, each the \
         median of per-repeat ratios (tidelog-idempotent: over plain tidelog in the same idem \
         scenario); e2e rows: records/s and latencies are the consumer's\n",
        args.repeat,
        args.duration.as_millis()
    );
    let _ = writeln!(
        out,
        "| scenario | target | records/s | requests/s | MB/s | p50 ms | p99 ms | p99.9 ms | max ms | fsyncs/s | fsync ms | server cpu us/req | records/cpu-s | ratio | cpu ratio |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for scenario in &args.scenarios {
        let name = scenario.name();
        for target in scenario.targets(args.cluster, 0) {
            let rs = runs(results, &name, target);
            if rs.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&Run) -> f64| median(rs.iter().map(|r| f(r)).collect());
            let fsyncs = med(&|r| r.fsyncs_per_s().unwrap_or(f64::NAN));
            let fsync_ms = med(&|r| r.fsync_mean_ms().unwrap_or(f64::NAN));
            let against = match target {
                Target::Tidelog => Some(Target::Baseline { group_commit: true }),
                Target::TidelogIdempotent => Some(Target::Tidelog),
                Target::Rf3 => Some(Target::Single),
                _ => None,
            };
            let ratio_of = |f: fn(&Run) -> f64| {
                against
                    .and_then(|b| median_ratio(results, (&name, target), (&name, b), f))
                    .filter(|r| r.is_finite())
            };
            let ratio = ratio_of(Run::records_per_s);
            let cpu_ratio = ratio_of(Run::server_cpu_us_per_request);
            let errors: u64 = rs.iter().map(|r| r.errors).sum();
            let _ = writeln!(
                out,
                "| {name} | {}{} | {:.0} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.0} | {:.0} | {} | {} |",
                target.name(),
                if errors > 0 {
                    format!(" ({errors} errors)")
                } else {
                    String::new()
                },
                med(&Run::records_per_s),
                med(&Run::requests_per_s),
                med(&Run::mb_per_s),
                med(&|r| r.latency_ms(50.0)),
                med(&|r| r.latency_ms(99.0)),
                med(&|r| r.latency_ms(99.9)),
                med(&|r| r.latency_ms(100.0)),
                if fsyncs.is_finite() {
                    format!("{fsyncs:.0}")
                } else {
                    "-".into()
                },
                if fsync_ms.is_finite() {
                    format!("{fsync_ms:.2}")
                } else {
                    "-".into()
                },
                med(&Run::server_cpu_us_per_request),
                med(&Run::records_per_cpu_s),
                ratio.map_or("-".into(), |r| format!("{r:.2}")),
                cpu_ratio.map_or("-".into(), |r| format!("{r:.2}")),
            );
        }
    }
    out.push_str(&details(args, results));
    out.push_str(&targets(results));
    out
}

/// Medians the main table has no room for: end-to-end runs' produce answers, and each
/// broker process's CPU, fsyncs and replica fetches.
fn details(args: &Args, results: &[Measured]) -> String {
    let mut out = String::new();
    for scenario in &args.scenarios {
        let name = scenario.name();
        for target in scenario.targets(args.cluster, 0) {
            let rs = runs(results, &name, target);
            let Some(first) = rs.first() else {
                continue;
            };
            let med = |f: &dyn Fn(&Run) -> f64| median(rs.iter().map(|r| f(r)).collect());
            if !first.ack_latencies_us.is_empty() {
                let missing: u64 = rs.iter().map(|r| r.missing).sum();
                let _ = writeln!(
                    out,
                    "- {name} {}: end to end p50 {:.2} ms p99 {:.2} ms; produce answered p50 {:.2} ms p99 {:.2} ms; {} produced/s{}",
                    target.name(),
                    med(&|r| r.latency_ms(50.0)),
                    med(&|r| r.latency_ms(99.0)),
                    med(&|r| r.ack_latency_ms(50.0)),
                    med(&|r| r.ack_latency_ms(99.0)),
                    med(&Run::requests_per_s).round(),
                    if missing > 0 {
                        format!("; {missing} acknowledged records NOT SEEN")
                    } else {
                        String::new()
                    },
                );
            }
            if first.brokers.is_empty() {
                continue;
            }
            let _ = write!(out, "- {name} {}:", target.name());
            if let Some(d) = &first.durability {
                let _ = write!(out, " answered with durability {d};");
            }
            let _ = write!(out, " per broker");
            for (i, b) in first.brokers.iter().enumerate() {
                let secs = |r: &Run| r.elapsed.as_secs_f64();
                let at = |r: &Run| r.brokers.get(i).cloned().unwrap_or_default();
                let cpu = med(&|r| at(r).cpu_s.map_or(f64::NAN, |c| c * 100.0 / secs(r)));
                let fsync_p99 = med(&|r| at(r).fsync_p99_ms.unwrap_or(f64::NAN));
                let _ = write!(
                    out,
                    "; n{} {} cpu, {:.0} fsyncs/s (p99 <= {fsync_p99} ms), {:.0} replica fetches/s",
                    b.node_id,
                    if cpu.is_finite() {
                        format!("{cpu:.0}%")
                    } else {
                        "-".into()
                    },
                    med(&|r| at(r).fsyncs as f64 / secs(r)),
                    med(&|r| at(r).replica_fetches as f64 / secs(r)),
                );
            }
            let _ = writeln!(
                out,
                "; client {:.0}% cpu; load average {:.1}",
                med(&|r| r.client_cpu_s * 100.0 / r.elapsed.as_secs_f64()),
                med(&|r| r.load_average)
            );
        }
    }
    if out.is_empty() {
        return out;
    }
    format!("\nDetails (medians):\n{out}")
}

/// The targets, checked against the medians of this run where it measured them.
fn targets(results: &[Measured]) -> String {
    let mut out = String::from(
        "\nTargets from the issue (medians of this run; ratios are medians of per-repeat ratios):\n",
    );
    let tidelog = Target::Tidelog;
    let one_fsync = Target::Baseline {
        group_commit: false,
    };
    let med = |scenario: &str, target: Target, f: fn(&Run) -> f64| {
        let rs = runs(results, scenario, target);
        (!rs.is_empty()).then(|| median(rs.iter().map(|r| f(r)).collect()))
    };
    let mut check = |what: &str, got: Option<f64>, goal: f64, unit: &str| {
        if let Some(got) = got {
            let verdict = if got >= goal { "met" } else { "NOT met" };
            let _ = writeln!(
                out,
                "- {what}: {got:.2}{unit} (goal >= {goal}{unit}): {verdict}"
            );
        }
    };
    check(
        "produce 1000x100B, 8 clients, acks=all, records/s",
        med("produce:1000:8:all", tidelog, Run::records_per_s),
        1_000_000.0,
        "",
    );
    check(
        "single-record acks=all from 32 clients, requests/s",
        med("produce:1:32:all", tidelog, Run::requests_per_s),
        15_000.0,
        "",
    );
    check(
        "fetch records/s over produce records/s (1000x100B, 8 clients)",
        median_ratio(
            results,
            ("fetch:8", tidelog),
            ("produce:1000:8:all", tidelog),
            Run::records_per_s,
        ),
        1.0,
        "x",
    );
    check(
        "group commit over one fsync per request (32 single-record acks=all producers)",
        median_ratio(
            results,
            ("produce:1:32:all", tidelog),
            ("1fsync:1:32", one_fsync),
            Run::records_per_s,
        ),
        10.0,
        "x",
    );
    check(
        "batch-1000 acks=all over acks=leader records/s (8 clients)",
        median_ratio(
            results,
            ("produce:1000:8:all", tidelog),
            ("produce:1000:8:leader", tidelog),
            Run::records_per_s,
        ),
        0.8,
        "x",
    );
    check(
        "RF=3 over single broker records/s, batches of 1000x100B from 8 clients, acks=all",
        median_ratio(
            results,
            ("produce:1000:8:all", Target::Rf3),
            ("produce:1000:8:all", Target::Single),
            Run::records_per_s,
        ),
        0.33,
        "x",
    );
    let each = ratios(
        results,
        ("produce:1000:8:all", Target::Rf3),
        ("produce:1000:8:all", Target::Single),
        Run::records_per_s,
    );
    if each.len() > 1 {
        let each: Vec<String> = each.iter().map(|r| format!("{r:.2}")).collect();
        let _ = writeln!(out, "  (per repeat: {})", each.join(", "));
    }
    for consumer in ["poll", "sse"] {
        let scenario = format!("e2e:2000:{consumer}");
        if let Some(p99) = med(&scenario, Target::Rf3, |r| r.latency_ms(99.0)) {
            let verdict = if p99 < 5.0 { "met" } else { "NOT met" };
            let _ = writeln!(
                out,
                "- RF=3 end-to-end p99 at 2,000 records/s ({consumer} consumer): {p99:.2} ms (goal < 5 ms): {verdict}"
            );
        }
    }
    out
}
