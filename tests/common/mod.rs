//! Test harness: real broker processes on loopback ports, spoken to over HTTP.
//!
//! Every test gets its own data directory and an ephemeral port (`--listen 127.0.0.1:0`);
//! the broker prints the address it bound and the harness reads it. Brokers are killed when
//! the handle drops, so a failing test leaves no process behind.
#![allow(dead_code)]

pub mod checker;
pub mod checking_proxy;
pub mod client;
pub mod cluster;
pub mod contract;
pub mod proxy;
pub mod rng;

pub use client::Client;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct TestBroker {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub data_dir: PathBuf,
    /// Keeps the temporary directory alive (and removes it at the end) when we made it.
    _tmp: Option<tempfile::TempDir>,
    /// Extra lines of the config file, kept for restarts.
    config: Option<String>,
    /// The port asked for (0: any) and extra command-line arguments, kept for restarts.
    port: u16,
    args: Vec<String>,
    /// Extra environment variables of the process, kept for restarts.
    env: Vec<(String, String)>,
}

impl TestBroker {
    /// Starts a broker with a fresh data directory and default settings.
    pub fn start() -> TestBroker {
        Self::start_with_config("")
    }

    /// Starts a broker with `toml` appended to its config file.
    pub fn start_with_config(toml: &str) -> TestBroker {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        let mut broker = Self::spawn(&data_dir, Some(toml.to_string()), 0, &[]);
        broker._tmp = Some(tmp);
        broker
    }

    /// Starts a broker on a data directory the caller owns (kept after the broker stops).
    pub fn start_at(data_dir: &Path) -> TestBroker {
        Self::spawn(data_dir, None, 0, &[])
    }

    /// Starts a broker on `data_dir` whose process may have at most `open_files_max` file
    /// descriptors (`RLIMIT_NOFILE`, set in the child before it runs).
    pub fn start_at_with_open_files_max(data_dir: &Path, open_files_max: u64) -> TestBroker {
        Self::spawn_limited(data_dir, None, 0, &[], Some(open_files_max))
    }

    /// Starts a broker on a data directory the caller owns, on a fixed port, with extra
    /// arguments (`--node-id`, `--peers`) and `toml` as its config file; a restart keeps all.
    pub fn start_member(data_dir: &Path, port: u16, args: &[String], toml: &str) -> TestBroker {
        Self::spawn(data_dir, Some(toml.to_string()), port, args)
    }

    /// [`TestBroker::start_member`] with extra environment variables (kept for restarts),
    /// such as the sync ledger of [`cut_to_synced`].
    pub fn start_member_with_env(
        data_dir: &Path,
        port: u16,
        args: &[String],
        toml: &str,
        env: &[(String, String)],
    ) -> TestBroker {
        let mut broker =
            Self::spawn_with_env(data_dir, Some(toml.to_string()), port, args, None, env);
        broker.env = env.to_vec();
        broker
    }

    fn spawn(data_dir: &Path, config: Option<String>, port: u16, args: &[String]) -> TestBroker {
        Self::spawn_limited(data_dir, config, port, args, None)
    }

    fn spawn_limited(
        data_dir: &Path,
        config: Option<String>,
        port: u16,
        args: &[String],
        open_files_max: Option<u64>,
    ) -> TestBroker {
        Self::spawn_with_env(data_dir, config, port, args, open_files_max, &[])
    }

    fn spawn_with_env(
        data_dir: &Path,
        config: Option<String>,
        port: u16,
        args: &[String],
        open_files_max: Option<u64>,
        env: &[(String, String)],
    ) -> TestBroker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidelog"));
        if let Some(max) = open_files_max {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    let limit = libc::rlimit {
                        rlim_cur: max,
                        rlim_max: max,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("TIDELOG_LISTEN")
            .env_remove("TIDELOG_DATA_DIR")
            .env_remove("TIDELOG_CONFIG")
            .env_remove("TIDELOG_NODE_ID")
            .env_remove("TIDELOG_PEERS")
            .env_remove(tidelog::log::sync_ledger::SYNC_LEDGER_ENV)
            .env_remove(tidelog::log::sync_ledger::SYNC_DELAY_ENV)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(args);
        if let Some(toml) = config.as_deref().filter(|t| !t.trim().is_empty()) {
            std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
            let path = data_dir.parent().unwrap().join("tidelog-test.toml");
            std::fs::write(&path, toml).unwrap();
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd.spawn().expect("start the tidelog binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(START_TIMEOUT)
            .expect("the broker printed its address");
        TestBroker {
            child: Some(child),
            url,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            config,
            port,
            args: args.to_vec(),
            env: env.to_vec(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The process id while it runs (not killed).
    pub fn running_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no flush, no clean-shutdown marker.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGSTOP and waits until every thread of the process has stopped. `kill`
    /// returns before that: Linux wakes one thread to take the signal, and the others run
    /// on until it does, which on two busy cores can be milliseconds in which the "paused"
    /// broker still answers requests sent after the pause.
    pub fn pause(&self) {
        let pid = self.pid();
        signal(pid, "STOP");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !every_thread_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "process {pid} did not stop within 30 s of SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Starts the broker again on the same data directory (a new port, unless it was started
    /// on a fixed one).
    pub fn restart(&mut self) {
        self.kill9();
        self.assert_answers_kept_the_spec();
        let fresh = Self::spawn_with_env(
            &self.data_dir,
            self.config.clone(),
            self.port,
            &self.args,
            None,
            &self.env,
        );
        let mut fresh = fresh;
        self.child = fresh.child.take();
        self.url = fresh.url.clone();
    }

    /// A client whose every answer is checked against the spec (`client`, `contract`).
    pub fn client(&self) -> Client {
        Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client")
    }

    /// Panics if an answer of this broker broke the spec, even one whose request ran in a
    /// task that swallowed the client's panic.
    fn assert_answers_kept_the_spec(&self) {
        let authority = self.url.trim_start_matches("http://");
        let breaks = contract::take_breaks(authority);
        if !breaks.is_empty() && !std::thread::panicking() {
            panic!(
                "{} answer(s) of the broker at {authority} broke the spec:\n{}",
                breaks.len(),
                breaks.join("\n")
            );
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill9();
        self.assert_answers_kept_the_spec();
    }
}

/// Whether every thread of `pid` is in the stopped state (`T`, or `t` when traced), as
/// `/proc/PID/task/*/stat` say (the state follows the command name's closing parenthesis).
fn every_thread_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state == 'T' || state == 't')
        })
    })
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A client bound to one broker. Each test file adds the calls it needs in its own
/// `impl Api` block.
pub struct Api {
    pub http: Client,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl Api {
    pub fn new(broker: &TestBroker) -> Api {
        Api {
            http: broker.client(),
            url: broker.url.clone(),
        }
    }
}

/// What a power cut would have left of `data_dir` after a `kill -9`: every segment file
/// (`<20 digits>.log`, in any folder below) is cut back to the length the sync ledger at
/// `ledger` last recorded for it, or emptied if no sync of it was recorded. The broker must
/// have run with `TIDELOG_TEST_SYNC_LEDGER=<ledger>` and be stopped. Returns the bytes cut.
pub fn cut_to_synced(data_dir: &Path, ledger: &Path) -> u64 {
    let synced: std::collections::HashMap<PathBuf, u64> = tidelog::log::sync_ledger::read(ledger)
        .unwrap_or_default()
        .into_iter()
        .map(|(path, length)| (path.canonicalize().unwrap_or(path), length))
        .collect();
    let mut cut = 0;
    let mut folders = vec![data_dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("list a data folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let is_segment = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".log"))
                .is_some_and(|stem| stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()));
            if !is_segment {
                continue;
            }
            let canonical = path.canonicalize().expect("a segment path");
            let keep = synced.get(&canonical).copied().unwrap_or(0);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open a segment");
            let length = file.metadata().expect("a segment's size").len();
            if length > keep {
                file.set_len(keep).expect("cut a segment");
                cut += length - keep;
            }
        }
    }
    cut
}

/// A small runtime for tests that are plain `#[test]` functions.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------
// HTTP calls shared by the test binaries. Each panics with the answer it got when the
// broker does not answer as the test expects, so a failure names what went wrong.
// ---------------------------------------------------------------------------------------

/// `POST /v1/topics` with `body`; asserts a 201 and returns the topic's description.
pub async fn create_topic_from_body(
    http: &Client,
    url: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let response = http
        .post(format!("{url}/v1/topics"))
        .json(&body)
        .send()
        .await
        .expect("the broker answers");
    let status = response.status();
    let text = response.text().await.expect("a body");
    assert_eq!(status, 201, "create {body}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Creates `name` with `partitions` partitions and default config; returns its description.
pub async fn create_topic(
    http: &Client,
    url: &str,
    name: &str,
    partitions: u32,
) -> serde_json::Value {
    create_topic_from_body(
        http,
        url,
        serde_json::json!({"name": name, "partitions": partitions}),
    )
    .await
}

/// Produces `{"records": records}` as JSON with `acks=all`; asserts a 200 that says the
/// records were fsynced, and returns the answer.
pub async fn produce_json_acks_all(
    http: &Client,
    url: &str,
    topic: &str,
    records: serde_json::Value,
) -> serde_json::Value {
    let response = http
        .post(format!("{url}/v1/topics/{topic}/records?acks=all"))
        .json(&serde_json::json!({ "records": records }))
        .send()
        .await
        .expect("the broker answers");
    let status = response.status();
    let text = response.text().await.expect("a body");
    assert_eq!(status, 200, "produce to {topic}: {text}");
    let answer: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(answer["durability"], "fsync", "{answer}");
    answer
}

/// The `(partition, offset)` pairs of a produce answer (or of a problem that reports the
/// records stored before it), in request order.
pub fn produced_partition_offsets(produce_answer: &serde_json::Value) -> Vec<(u64, u64)> {
    produce_answer["offsets"]
        .as_array()
        .unwrap_or_else(|| panic!("no offsets in {produce_answer}"))
        .iter()
        .map(|o| {
            (
                o["partition"].as_u64().expect("a partition"),
                o["offset"].as_u64().expect("an offset"),
            )
        })
        .collect()
}

/// A raw socket to the broker at `url` (`http://127.0.0.1:PORT`), reads timing out after 20 s,
/// for tests of what crosses the wire.
pub fn connect_raw(url: &str) -> std::net::TcpStream {
    let addr = url.trim_start_matches("http://");
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    stream
}

/// `GET {url}{path}`; asserts a 200 and returns the JSON body.
pub async fn get_json_ok(http: &Client, url: &str, path: &str) -> serde_json::Value {
    let response = http
        .get(format!("{url}{path}"))
        .send()
        .await
        .expect("the broker answers");
    let status = response.status();
    let text = response.text().await.expect("a body");
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// What a partition served from its log start to its high watermark.
pub struct PartitionContents {
    /// Every record, in offset order, as the fetch answers gave them.
    pub records: Vec<serde_json::Value>,
    /// The high watermark the last fetch reported.
    pub high_watermark: u64,
}

/// Reads a whole partition from `earliest`, following `next_offset` until it reaches the
/// high watermark. Every fetch must be a 200 and move forward; the loop is bounded.
pub async fn read_partition_to_high_watermark(
    http: &Client,
    url: &str,
    topic: &str,
    partition: u64,
) -> PartitionContents {
    let mut records = Vec::new();
    let mut offset = "earliest".to_string();
    for _ in 0..10_000 {
        let page = get_json_ok(
            http,
            url,
            &format!(
                "/v1/topics/{topic}/partitions/{partition}/records?offset={offset}&max_records=10000"
            ),
        )
        .await;
        records.extend(page["records"].as_array().expect("records").iter().cloned());
        let next = page["next_offset"].as_u64().expect("next_offset");
        let high_watermark = page["high_watermark"].as_u64().expect("high_watermark");
        if next >= high_watermark {
            return PartitionContents {
                records,
                high_watermark,
            };
        }
        if let Ok(previous) = offset.parse::<u64>() {
            assert!(next > previous, "a fetch at {previous} made no progress");
        }
        offset = next.to_string();
    }
    panic!("{topic}/{partition} never reached its high watermark");
}

/// The text of `GET /metrics` (asserts a 200).
pub async fn scrape_metrics(http: &Client, url: &str) -> String {
    let response = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("the broker answers");
    assert_eq!(response.status(), 200, "GET /metrics");
    response.text().await.expect("a body")
}

/// The value of the unlabelled metric `name` in `GET /metrics` (0 when it is absent).
pub async fn scrape_unlabelled_metric(http: &Client, url: &str, name: &str) -> f64 {
    unlabelled_metric(&scrape_metrics(http, url).await, name).unwrap_or(0.0)
}

/// The value of the unlabelled metric `name` in an exposition, if it is there.
pub fn unlabelled_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `GET {url}{path}`; asserts the answer is a 503 `overloaded` problem naming `limit_name`,
/// with `Retry-After: 1`.
pub async fn assert_get_overloaded(http: &Client, url: &str, path: &str, limit_name: &str) {
    let response = http
        .get(format!("{url}{path}"))
        .send()
        .await
        .expect("the broker answers");
    let status = response.status();
    let retry_after = response.headers().get("retry-after").cloned();
    let mut text = response.text().await.expect("a body");
    // A page that was served by mistake is megabytes: only its start goes into the message.
    text.truncate(text.floor_char_boundary(300));
    assert_eq!(status, 503, "GET {path}: {text}");
    assert_eq!(
        retry_after.as_ref().map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "GET {path}"
    );
    let problem: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(problem["code"], "overloaded", "{problem}");
    assert_eq!(problem["limit_name"], limit_name, "{problem}");
}

/// Polls `check` every 50 ms until it holds; panics naming `what` once `limit` has passed.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `offset` of each fetched record, in the order they were served.
pub fn offsets_of_records(records: &[serde_json::Value]) -> Vec<u64> {
    records
        .iter()
        .map(|r| {
            r["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("no offset in {r}"))
        })
        .collect()
}

/// Whether this build serves the consumer-group routes (`/v1/groups…`); checks of what only
/// groups produce are skipped while it does not.
pub fn consumer_group_routes_served() -> bool {
    tidelog::http::route_table()
        .iter()
        .any(|(path, _)| path.starts_with("/v1/groups"))
}

// ---------------------------------------------------------------------------------------
// Outside tools. A check that needs a program cargo does not build (promtool, the Python
// tools pinned in tests/openapi/requirements.txt, a tmpfs mount) runs when the program is
// there and is otherwise skipped with one line on stderr that says how to enable it. With
// CI=true a missing tool fails the test instead. Tests never install anything: `.ci/run`
// does, into the tools directory below.
// ---------------------------------------------------------------------------------------

/// The environment variable naming the tools directory (a Python virtualenv whose `bin/`
/// also holds `promtool`); by default `<target>/tools-venv`, where `.ci/run` creates it.
pub const TOOLS_VENV_VAR: &str = "TIDELOG_TOOLS_VENV";

/// How to get every outside tool, said by each skip line.
pub const ENABLE_TOOLS: &str = "run `bash .ci/run` once (as root), or set TIDELOG_TOOLS_VENV";

/// Whether a missing tool is a failure (`CI=true`) rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Every `.rs` file under the crate's `src/`, for tests that read the source.
pub fn source_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    files
}

/// `<target>/`: a test binary is `<target>/<profile>/deps/<name>-<hash>`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary sits three levels under the target dir")
        .to_path_buf()
}

/// The tools directory, whether or not it exists.
pub fn tools_venv() -> PathBuf {
    std::env::var_os(TOOLS_VENV_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("tools-venv"))
}

/// Skips the check `check` (one line on stderr, past the test harness's capture) or, in CI,
/// fails it. `why` says what is missing, `enable` how to get it.
pub fn skip_or_fail(check: &str, why: &str, enable: &str) {
    let line = format!("SKIPPED {check}: {why}; to run it, {enable}");
    assert!(!in_ci(), "CI=true and a tool is missing: {line}");
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The path of `program` in the tools directory or on PATH, looked up once per test process
/// (a missing tool is remembered, not searched again by every test).
pub fn find_tool(program: &'static str) -> Option<PathBuf> {
    static FOUND: std::sync::Mutex<Vec<(&str, Option<PathBuf>)>> =
        std::sync::Mutex::new(Vec::new());
    // No .await in this file's helpers: a std Mutex is fine.
    let mut found = FOUND.lock().expect("tool cache");
    if let Some((_, path)) = found.iter().find(|(p, _)| *p == program) {
        return path.clone();
    }
    let in_venv = tools_venv().join("bin").join(program);
    let path = if is_executable(&in_venv) {
        Some(in_venv)
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| is_executable(p))
        })
    };
    found.push((program, path.clone()));
    path
}

/// The path of `program`, or `None` after [`skip_or_fail`] said that `check` is skipped.
pub fn tool_or_skip(check: &str, program: &'static str) -> Option<PathBuf> {
    let path = find_tool(program);
    if path.is_none() {
        skip_or_fail(
            check,
            &format!(
                "`{program}` is neither in {}/bin nor on PATH",
                tools_venv().display()
            ),
            ENABLE_TOOLS,
        );
    }
    path
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `cmd` to completion within `limit`, killing it past that. Returns (success, output).
pub fn run_bounded(mut cmd: Command, limit: Duration) -> (bool, String) {
    let shown = format!("{cmd:?}");
    let log = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.reopen().expect("reopen log"))
        .stderr(log.reopen().expect("reopen log"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {shown}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(log.path()).unwrap_or_default();
    match status {
        Some(s) => (s.success(), output),
        None => (
            false,
            format!("{output}\n--- killed after {limit:?}: {shown}"),
        ),
    }
}
