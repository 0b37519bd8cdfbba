//! Test harness: real broker processes on loopback ports, spoken to over HTTP.
//!
//! Every test gets its own data directory and an ephemeral port (`--listen 127.0.0.1:0`);
//! the broker prints the address it bound and the harness reads it. Brokers are killed when
//! the handle drops, so a failing test leaves no process behind.
#![allow(dead_code)]

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
        let mut broker = Self::spawn(&data_dir, Some(toml.to_string()), 0);
        broker._tmp = Some(tmp);
        broker
    }

    /// Starts a broker on a data directory the caller owns (kept after the broker stops).
    pub fn start_at(data_dir: &Path) -> TestBroker {
        Self::spawn(data_dir, None, 0)
    }

    fn spawn(data_dir: &Path, config: Option<String>, port: u16) -> TestBroker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidelog"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("TIDELOG_LISTEN")
            .env_remove("TIDELOG_DATA_DIR")
            .env_remove("TIDELOG_CONFIG");
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
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
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

    /// Sends SIGSTOP / SIGCONT.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Starts the broker again on the same data directory (a new port).
    pub fn restart(&mut self) {
        self.kill9();
        let fresh = Self::spawn(&self.data_dir, self.config.clone(), 0);
        let mut fresh = fresh;
        self.child = fresh.child.take();
        self.url = fresh.url.clone();
    }

    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client")
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A small runtime for tests that are plain `#[test]` functions.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
