//! Brokers of a cluster as processes on loopback, and blocking HTTP helpers for the tests
//! that drive them from plain threads.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::TestBroker;
use super::checker::ReplicaRead;
use super::client::{Client, RequestBuilder};

/// Generous: two shared cores, debug builds, other tests running.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// `n` ports free right now (bound together, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// `1=127.0.0.1:P1,2=...`: node ids from 1, in port order.
pub fn peers(ports: &[u16]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Brokers `1..=n` of one cluster, each with its data directory under one temporary root.
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub ports: Vec<u16>,
    /// `brokers[i]` is node `i + 1`.
    pub brokers: Vec<TestBroker>,
    /// The config file every broker gets.
    pub toml: String,
}

impl Cluster {
    /// Starts `n` brokers with `toml` as their config file and waits until each is ready
    /// (registered, caught up) and sees all of them alive.
    pub fn start(n: usize, toml: &str) -> Cluster {
        let ports = free_ports(n);
        let all = peers(&ports);
        Cluster::start_with_peers(ports, toml, |_| all.clone())
    }

    /// [`Cluster::start`] on `ports` (node `i + 1` listens on `ports[i]`), node `id` started
    /// with `peers_of(id)` as its `--peers`: a broker may reach some peers through a proxy
    /// (its own entry must stay its listen address, the controller checks it).
    pub fn start_with_peers(
        ports: Vec<u16>,
        toml: &str,
        peers_of: impl Fn(usize) -> String,
    ) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let n = ports.len();
        let brokers = (1..=n)
            .map(|id| start_member_with_peers(root.path(), &ports, id, toml, &peers_of(id)))
            .collect();
        let cluster = Cluster {
            root,
            ports,
            brokers,
            toml: toml.to_string(),
        };
        for id in 1..=n {
            cluster.wait_ready(id);
        }
        cluster
    }

    pub fn url(&self, id: usize) -> &str {
        &self.brokers[id - 1].url
    }

    pub fn data_dir(&self, id: usize) -> PathBuf {
        member_data_dir(self.root.path(), id)
    }

    /// Waits until broker `id` answers `/readyz` 200 and sees every broker alive.
    pub fn wait_ready(&self, id: usize) {
        let url = self.url(id).to_string();
        let n = self.brokers.len();
        wait_for(&format!("{url} ready with {n} brokers alive"), || {
            let (status, ready) = get(&format!("{url}/readyz"));
            if status != 200 {
                return Err(format!("readyz {status} {ready}"));
            }
            let (_, cluster) = get(&format!("{url}/v1/cluster"));
            let alive = cluster["brokers"]
                .as_array()
                .map_or(0, |bs| bs.iter().filter(|b| b["status"] == "alive").count());
            if alive == n {
                Ok(())
            } else {
                Err(format!("{cluster}"))
            }
        });
    }
}

/// `GET /v1/topics/{topic}` at broker `id` (null when it does not answer).
pub fn describe(c: &Cluster, id: usize, topic: &str) -> Value {
    get(&format!("{}/v1/topics/{topic}", c.url(id))).1
}

/// Partition `p`'s leader (0: none), leader epoch and ISR as broker `id` sees them.
pub fn partition_state(c: &Cluster, id: usize, topic: &str, p: u32) -> (usize, u64, Vec<u64>) {
    let d = describe(c, id, topic);
    let part = &d["partitions"][p as usize];
    let isr = part["isr"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    (
        part["leader"].as_u64().unwrap_or(0) as usize,
        part["leader_epoch"].as_u64().unwrap_or(0),
        isr,
    )
}

/// Records (offset, value), the next offset, the replica's high watermark.
pub type LocalPage = (Vec<(u64, String)>, u64, u64);

/// One page of broker `id`'s own replica (`replica=local`) of `topic`/`p` from `offset`
/// (None: from its log start), or the status and body of the refusal.
pub fn read_local(
    c: &Cluster,
    id: usize,
    topic: &str,
    p: u32,
    offset: Option<u64>,
) -> Result<LocalPage, (u16, Value)> {
    let offset = offset.map_or("earliest".to_string(), |o| o.to_string());
    let (status, page) = get(&format!(
        "{}/v1/topics/{topic}/partitions/{p}/records?offset={offset}&replica=local&max_records=1000",
        c.url(id)
    ));
    let parsed = (|| {
        let records = page["records"]
            .as_array()?
            .iter()
            .map(|r| {
                let value = r["value"].as_str().unwrap_or_default().to_string();
                Some((r["offset"].as_u64()?, value))
            })
            .collect::<Option<Vec<_>>>()?;
        Some((
            records,
            page["next_offset"].as_u64()?,
            page["high_watermark"].as_u64()?,
        ))
    })();
    match parsed {
        Some(local) if status == 200 => Ok(local),
        _ => Err((status, page)),
    }
}

/// Broker `id`'s replica of `topic`/`p` read from its log start to its own high watermark
/// (panics, naming the refusal, if a page is refused).
pub fn read_replica(c: &Cluster, id: usize, topic: &str, p: u32) -> ReplicaRead {
    let mut read = ReplicaRead {
        node: id as u32,
        partition: p,
        high_watermark: 0,
        records: Vec::new(),
    };
    let mut offset = None;
    for _ in 0..100_000 {
        let (records, next, hw) = read_local(c, id, topic, p, offset)
            .unwrap_or_else(|e| panic!("reading {topic}/{p} on {id}: {e:?}"));
        read.records.extend(records);
        read.high_watermark = hw;
        if next >= hw {
            break;
        }
        offset = Some(next);
    }
    read
}

/// The broker ids of a JSON list (`replicas`, `isr`, `elr`); empty when it is not one.
pub fn node_ids(v: &Value) -> Vec<usize> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|n| n as usize)
                .collect()
        })
        .unwrap_or_default()
}

/// The brokers holding a replica of `topic`/`p`, as broker `id`'s metadata says.
pub fn replicas_of(c: &Cluster, id: usize, topic: &str, p: u32) -> Vec<usize> {
    node_ids(&describe(c, id, topic)["partitions"][p as usize]["replicas"])
}

/// Waits until every replica of `topic`/`p` (as broker `id` names them) has a high
/// watermark at its leader's log end: every record a producer was answered for is on each
/// and visible.
pub fn wait_replicas_converged(c: &Cluster, id: usize, topic: &str, p: u32) {
    wait_for(&format!("{topic}/{p} converged"), || {
        let (leader, _, _) = partition_state(c, id, topic, p);
        if leader == 0 {
            return Err("no leader".to_string());
        }
        let end = describe(c, leader, topic)["partitions"][p as usize]["log_end_offset"]
            .as_u64()
            .unwrap_or(u64::MAX);
        let hws: Vec<u64> = replicas_of(c, id, topic, p)
            .into_iter()
            .map(|r| read_local(c, r, topic, p, None).map_or(0, |(_, _, hw)| hw))
            .collect();
        if !hws.is_empty() && hws.iter().all(|hw| *hw == end) {
            Ok(())
        } else {
            Err(format!("hws {hws:?}, leader {leader} end {end}"))
        }
    });
}

/// Every replica of every partition of `topic` (`partitions` of them), once converged
/// ([`wait_replicas_converged`]), each read to its own high watermark.
pub fn read_every_replica(
    c: &Cluster,
    id: usize,
    topic: &str,
    partitions: u32,
) -> Vec<ReplicaRead> {
    let mut reads = Vec::new();
    for p in 0..partitions {
        wait_replicas_converged(c, id, topic, p);
        for r in replicas_of(c, id, topic, p) {
            reads.push(read_replica(c, r, topic, p));
        }
    }
    reads
}

pub fn member_data_dir(root: &Path, id: usize) -> PathBuf {
    root.join(format!("n{id}")).join("data")
}

/// Starts node `id` of the cluster on `ports` (does not wait for it to be ready).
pub fn start_member(root: &Path, ports: &[u16], id: usize, toml: &str) -> TestBroker {
    start_member_with_peers(root, ports, id, toml, &peers(ports))
}

/// [`start_member`] with its own `--peers` value.
pub fn start_member_with_peers(
    root: &Path,
    ports: &[u16],
    id: usize,
    toml: &str,
    peers: &str,
) -> TestBroker {
    let args = [
        "--node-id".to_string(),
        id.to_string(),
        "--peers".to_string(),
        peers.to_string(),
    ];
    TestBroker::start_member(&member_data_dir(root, id), ports[id - 1], &args, toml)
}

/// The client of [`call`], for requests the helpers below do not build.
pub fn http() -> &'static Client {
    &runtime_and_client().1
}

/// One runtime and client for the tests' plain-thread calls.
fn runtime_and_client() -> &'static (tokio::runtime::Runtime, Client) {
    static HTTP: OnceLock<(tokio::runtime::Runtime, Client)> = OnceLock::new();
    HTTP.get_or_init(|| {
        let client = Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        (super::runtime(), client)
    })
}

/// Sends a request; `(0, null)` when the broker does not answer (not up yet, killed).
pub fn call(request: RequestBuilder) -> (u16, Value) {
    runtime_and_client().0.block_on(async move {
        match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    })
}

pub fn get(url: &str) -> (u16, Value) {
    call(http().get(url))
}

pub fn post(url: &str, body: Value) -> (u16, Value) {
    call(http().post(url).json(&body))
}

pub fn patch(url: &str, body: Value) -> (u16, Value) {
    call(http().patch(url).json(&body))
}

pub fn delete(url: &str) -> (u16, Value) {
    call(http().delete(url))
}

/// Asserts a problem answer: its status and stable code.
pub fn assert_problem(status: u16, problem: &Value, expected_status: u16, code: &str) {
    assert_eq!(
        (status, problem["code"].as_str()),
        (expected_status, Some(code)),
        "{problem}"
    );
}

/// Polls `check` until it gives a value or [`DEADLINE`] passes (then panics with `what` and
/// the last state seen).
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => panic!("{what}: still {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Runs `tidelog serve ARGS` until it exits (killed after [`DEADLINE`]); exit code, stderr.
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .arg("serve")
        .args(args)
        .env_remove("TIDELOG_LISTEN")
        .env_remove("TIDELOG_DATA_DIR")
        .env_remove("TIDELOG_CONFIG")
        .env_remove("TIDELOG_NODE_ID")
        .env_remove("TIDELOG_PEERS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (code, stderr)
}
