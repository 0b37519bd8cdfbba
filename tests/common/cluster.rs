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
