//! `--cluster`: the release broker as processes on loopback, a single broker beside a
//! cluster of three (replication factor 3, `min_insync_replicas` 2), the same workloads
//! against each in alternating order.
//!
//! Both fleets run for the whole measurement; each scenario creates a fresh topic, finds each
//! partition's leader and sends each client to it (`--via leader`, what a Kafka client does)
//! or spreads the clients over every broker (`--via any`, forwarded to the leader). Per broker
//! it reads the process's CPU time (`/proc/PID/stat`) and its `/metrics` counters (fsyncs,
//! replica fetches served by leaders), so a run shows which broker is busy and how the
//! followers batch their fetches.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Args, Run, Scenario, e2e, fetch, http_client, produce, produce_body};

/// How long a broker may take to be ready (registered, caught up, every member alive).
const READY_MAX: Duration = Duration::from_secs(60);
/// How long a stopped broker may take to exit after SIGTERM before it is killed.
const STOP_MAX: Duration = Duration::from_secs(10);

/// Where the clients send a partition's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The partition's leader.
    Leader,
    /// Client `c` to broker `c % brokers` (the others forward to the leader).
    Any,
}

/// One broker: a process this run started, or one it only targets.
struct Member {
    node_id: u64,
    url: String,
    /// Started by this run (stopped at the end, CPU read from /proc).
    child: Option<Child>,
}

/// A single broker or a cluster.
pub struct Brokers {
    /// In node id order.
    members: Vec<Member>,
    /// A cluster: topics get replication factor 3 and min_insync_replicas 2.
    replicated: bool,
}

/// One broker's figures over one run.
#[derive(Debug, Clone, Default)]
pub struct BrokerFigures {
    pub node_id: u64,
    /// Process CPU seconds (user + system); None for a broker this run did not start.
    pub cpu_s: Option<f64>,
    pub fsyncs: u64,
    pub fsync_s: f64,
    /// Replica fetch requests this broker answered as a leader.
    pub replica_fetches: u64,
    /// The upper bound (ms) of the `tidelog_fsync_duration_seconds` bucket that holds the
    /// 99th percentile of this run's fsyncs.
    pub fsync_p99_ms: Option<f64>,
}

/// Counters of one broker at one moment.
#[derive(Clone, Default)]
struct Counters {
    cpu_s: Option<f64>,
    fsyncs: f64,
    fsync_s: f64,
    replica_fetches: f64,
    /// `(le, cumulative count)` of the fsync duration histogram, in bucket order.
    fsync_buckets: Vec<(f64, f64)>,
}

impl Brokers {
    /// Starts one broker without `--peers` under `root`.
    pub async fn start_single(root: &Path) -> Brokers {
        let port = free_ports(1)[0];
        let member = spawn(&root.join("single"), port, &[]);
        let brokers = Brokers {
            members: vec![Member {
                node_id: 1,
                url: format!("http://127.0.0.1:{port}"),
                child: Some(member),
            }],
            replicated: false,
        };
        brokers.wait_ready().await;
        brokers
    }

    /// Starts brokers 1..=`n` of one cluster under `root` and waits until each is ready and
    /// sees all of them alive.
    pub async fn start_cluster(root: &Path, n: usize) -> Brokers {
        let ports = free_ports(n);
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        let peers = peers.join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| {
                let id = (i + 1).to_string();
                let dir = root.join(format!("n{id}"));
                let args = ["--node-id", &id, "--peers", &peers];
                Member {
                    node_id: i as u64 + 1,
                    url: format!("http://127.0.0.1:{port}"),
                    child: Some(spawn(&dir, port, &args)),
                }
            })
            .collect();
        let brokers = Brokers {
            members,
            replicated: true,
        };
        brokers.wait_ready().await;
        brokers
    }

    /// A cluster started elsewhere (`deploy/three-brokers.sh`): its members from
    /// `GET /v1/cluster` on `url`.
    pub async fn external(url: &str) -> Brokers {
        let view = get_json(&format!("{url}/v1/cluster"))
            .await
            .unwrap_or_else(|e| panic!("GET {url}/v1/cluster: {e}"));
        let members: Vec<Member> = view["brokers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| Member {
                node_id: b["node_id"].as_u64().expect("a broker's node_id"),
                url: format!("http://{}", b["address"].as_str().expect("its address")),
                child: None,
            })
            .collect();
        assert!(!members.is_empty(), "{url}/v1/cluster lists no broker");
        let brokers = Brokers {
            replicated: members.len() > 1,
            members,
        };
        brokers.wait_ready().await;
        brokers
    }

    pub fn describe(&self) -> String {
        let urls: Vec<&str> = self.members.iter().map(|m| m.url.as_str()).collect();
        let started = if self.members.iter().all(|m| m.child.is_some()) {
            "started by this run"
        } else {
            "started elsewhere"
        };
        format!("{} ({started})", urls.join(" "))
    }

    /// Waits until every member answers `/readyz` 200 and sees all of them alive.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_MAX;
        for m in &self.members {
            loop {
                let ready = get_json(&format!("{}/readyz", m.url)).await.is_ok();
                let alive = get_json(&format!("{}/v1/cluster", m.url))
                    .await
                    .map(|c| {
                        c["brokers"]
                            .as_array()
                            .map_or(0, |bs| bs.iter().filter(|b| b["status"] == "alive").count())
                    })
                    .unwrap_or(0);
                if ready && alive >= self.members.len() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "broker {} at {} is not ready after {READY_MAX:?}",
                    m.node_id,
                    m.url
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Stops the brokers this run started: SIGTERM, then SIGKILL after [`STOP_MAX`].
    pub fn stop(self) {
        for m in &self.members {
            if let Some(child) = &m.child {
                // SAFETY: kill(2) on a child this process started and has not reaped.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + STOP_MAX;
        for mut m in self.members {
            let Some(child) = m.child.as_mut() else {
                continue;
            };
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates `topic` with `partitions` partitions (replicated 3 ways with
    /// `min_insync_replicas` 2 on a cluster) and answers each partition's leader's URL.
    async fn create_topic(&self, topic: &str, partitions: u32) -> Vec<String> {
        let mut body = json!({"name": topic, "partitions": partitions});
        if self.replicated {
            body["replication_factor"] = json!(3);
            body["config"] = json!({"min_insync_replicas": 2});
        } else {
            body["replication_factor"] = json!(1);
        }
        let response = http_client(1)
            .post(format!("{}/v1/topics", self.members[0].url))
            .json(&body)
            .send()
            .await
            .expect("create topic");
        let status = response.status();
        let view: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "create topic: {status} {view}");
        (0..partitions as usize)
            .map(|p| {
                let leader = view["partitions"][p]["leader"].as_u64();
                match leader.and_then(|id| self.members.iter().find(|m| m.node_id == id)) {
                    Some(m) => m.url.clone(),
                    None if !self.replicated => self.members[0].url.clone(),
                    None => panic!("partition {p} of {topic} has no known leader: {view}"),
                }
            })
            .collect()
    }

    async fn delete_topic(&self, topic: &str) {
        let _ = http_client(1)
            .delete(format!("{}/v1/topics/{topic}", self.members[0].url))
            .send()
            .await;
    }

    /// The URL client `c` sends partition `p`'s requests to.
    fn url_for(&self, via: Via, leaders: &[String], client: usize, p: usize) -> String {
        match via {
            Via::Leader => leaders[p].clone(),
            Via::Any => self.members[client % self.members.len()].url.clone(),
        }
    }

    async fn counters(&self) -> Vec<Counters> {
        let mut all = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let text = match http_client(1)
                .get(format!("{}/metrics", m.url))
                .send()
                .await
            {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            all.push(Counters {
                cpu_s: m.child.as_ref().and_then(|c| process_cpu_seconds(c.id())),
                fsyncs: metric_sum(&text, "tidelog_fsyncs_total"),
                fsync_s: metric_sum(&text, "tidelog_fsync_duration_seconds_sum"),
                replica_fetches: metric_sum(&text, "tidelog_replica_fetches_total"),
                fsync_buckets: buckets(&text, "tidelog_fsync_duration_seconds_bucket"),
            });
        }
        all
    }
}

/// Runs one scenario against `brokers` on a fresh topic.
pub async fn run_scenario(
    scenario: &Scenario,
    brokers: &Brokers,
    args: &Args,
    repeat: usize,
) -> Run {
    let topic = format!(
        "loadgen-{}-{}-{repeat}",
        if brokers.replicated { "rf3" } else { "single" },
        scenario.name().replace(':', "-")
    );
    let partitions = args.partitions;
    let mut durability = None;
    let (mut run, before) = match *scenario {
        Scenario::Produce {
            batch,
            clients,
            acks,
        } => {
            let leaders = brokers.create_topic(&topic, partitions).await;
            let probe = format!(
                "{}/v1/topics/{topic}/records?acks={}",
                leaders[0],
                acks.as_str()
            );
            durability = Some(probe_durability(&probe).await);
            let targets: Vec<(String, Bytes)> = (0..clients)
                .map(|c| {
                    let p = c % partitions as usize;
                    let url = brokers.url_for(args.via, &leaders, c, p);
                    let url = format!("{url}/v1/topics/{topic}/records?acks={}", acks.as_str());
                    (
                        url,
                        produce_body(batch, (partitions > 1).then_some(p as u32)),
                    )
                })
                .collect();
            let before = brokers.counters().await;
            (
                produce(targets, batch, args.duration, u64::MAX).await,
                before,
            )
        }
        Scenario::Fetch { clients } => {
            let leaders = brokers.create_topic(&topic, 1).await;
            let url = brokers.url_for(args.via, &leaders, 0, 0);
            let fill = format!("{url}/v1/topics/{topic}/records?acks=all");
            let requests = args.fetch_records.div_ceil(1000);
            let body = produce_body(1000, None);
            let filled = produce(
                vec![(fill, body); 8],
                1000,
                Duration::from_secs(120),
                requests,
            )
            .await;
            assert_eq!(filled.errors, 0, "filling the fetch topic failed");
            let before = brokers.counters().await;
            (
                fetch(&url, &topic, filled.records, clients, args.duration).await,
                before,
            )
        }
        Scenario::E2e { rate, consumer } => {
            let leaders = brokers.create_topic(&topic, 1).await;
            // Through another broker than the leader with `--via any` (one hop each way).
            let url = brokers.url_for(args.via, &leaders, 1, 0);
            let produce_url = format!("{url}/v1/topics/{topic}/records?acks=all");
            let partition_url = format!("{url}/v1/topics/{topic}/partitions/0");
            let before = brokers.counters().await;
            (
                e2e::run(&produce_url, &partition_url, consumer, rate, args.duration).await,
                before,
            )
        }
        Scenario::OneFsync { .. } => unreachable!("the baseline runs in process"),
        Scenario::Idempotent { .. } => unreachable!("idem runs on the in-process broker"),
    };
    let after = brokers.counters().await;
    run.brokers = brokers
        .members
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(m, (b, a))| BrokerFigures {
            node_id: m.node_id,
            cpu_s: a.cpu_s.zip(b.cpu_s).map(|(a, b)| a - b),
            fsyncs: (a.fsyncs - b.fsyncs).max(0.0) as u64,
            fsync_s: (a.fsync_s - b.fsync_s).max(0.0),
            replica_fetches: (a.replica_fetches - b.replica_fetches).max(0.0) as u64,
            fsync_p99_ms: p99_bucket(&b.fsync_buckets, &a.fsync_buckets).map(|s| s * 1000.0),
        })
        .collect();
    let fsyncs: u64 = run.brokers.iter().map(|b| b.fsyncs).sum();
    let fsync_s: f64 = run.brokers.iter().map(|b| b.fsync_s).sum();
    run.fsyncs = Some((fsyncs, fsync_s));
    // Unknown (NaN) for brokers this run did not start.
    run.server_cpu_s = run
        .brokers
        .iter()
        .map(|b| b.cpu_s.unwrap_or(f64::NAN))
        .sum();
    run.durability = durability;
    brokers.delete_topic(&topic).await;
    run
}

/// The `durability` a one-record produce to `url` is answered with (what the run's acks get).
async fn probe_durability(url: &str) -> String {
    let answer = http_client(1)
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"records":[{"value":"probe"}]}"#)
        .send()
        .await;
    match answer {
        Ok(r) => {
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            match body["durability"].as_str() {
                Some(d) => d.to_string(),
                None => format!("HTTP {status} {body}"),
            }
        }
        Err(e) => format!("no answer: {e}"),
    }
}

/// Per broker: CPU %, fsyncs/s and replica fetches answered per second, for a run's line.
pub fn broker_line(run: &Run) -> String {
    let secs = run.elapsed.as_secs_f64();
    let mut s = String::new();
    if let Some(d) = &run.durability {
        let _ = write!(s, "  durability {d}");
    }
    for b in &run.brokers {
        let _ = write!(s, "  n{}:", b.node_id);
        if let Some(cpu) = b.cpu_s {
            let _ = write!(s, " {:.0}% cpu", cpu * 100.0 / secs);
        }
        let _ = write!(s, " {:.0} fsyncs/s", b.fsyncs as f64 / secs);
        if let Some(ms) = b.fsync_p99_ms {
            let _ = write!(s, " (p99 <= {ms} ms)");
        }
        if b.replica_fetches > 0 {
            let _ = write!(
                s,
                " {:.0} replica fetches/s",
                b.replica_fetches as f64 / secs
            );
        }
    }
    s
}

/// Sum of every series of `name` (any labels) in a Prometheus text exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// `(le, count)` of every bucket of histogram `name` (no other labels), in exposition order.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix("{le=\"")?;
            let (le, rest) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// The smallest bucket bound under which 99% of the observations made between two scrapes
/// fall; None without observations.
fn p99_bucket(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let count_before = |le: f64| {
        before
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(0.0, |(_, c)| *c)
    };
    let total = after.last().map(|(le, c)| c - count_before(*le))?;
    if total <= 0.0 {
        return None;
    }
    after
        .iter()
        .find(|(le, c)| c - count_before(*le) >= total * 0.99)
        .map(|(le, _)| *le)
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3 of stat(5), utime 14 and stime 15.
    let at = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some((at(14)? + at(15)?) as f64 / TICKS_PER_SECOND)
}

pub(super) fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// `tidelog serve` (the binary cargo built with this bench) on `port` with data in `dir`.
pub(super) fn spawn(dir: &Path, port: u16, extra: &[&str]) -> Child {
    std::fs::create_dir_all(dir).expect("broker data directory");
    Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .arg("serve")
        .args(["--log-level", "warn", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .env_remove("TIDELOG_CONFIG")
        .env_remove("TIDELOG_NODE_ID")
        .env_remove("TIDELOG_PEERS")
        .env_remove("TIDELOG_LISTEN")
        .env_remove("TIDELOG_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join("broker.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::inherit()),
        )
        .spawn()
        .expect("start the tidelog binary")
}

pub(super) async fn get_json(url: &str) -> Result<Value, String> {
    let response = http_client(1)
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.json().await.map_err(|e| e.to_string())
}
