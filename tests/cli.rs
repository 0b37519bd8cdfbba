//! The command line: `tidelog` alone serves, and `TIDELOG_*` variables set what flags would.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts `tidelog` with no arguments and the given environment; returns the address it
/// printed, then stops it with SIGTERM and returns its exit code too.
fn run_bare_with_env(envs: &[(&str, String)], cwd: &std::path::Path) -> (String, Option<i32>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidelog"));
    cmd.current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_remove("TIDELOG_LISTEN")
        .env_remove("TIDELOG_DATA_DIR")
        .env_remove("TIDELOG_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the broker printed a line");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let mut code = None;
    for _ in 0..300 {
        if let Ok(Some(status)) = child.try_wait() {
            code = status.code();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if code.is_none() {
        let _ = child.kill();
    }
    (line, code)
}

#[test]
fn bare_tidelog_serves_with_listen_and_data_dir_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("from-env");
    let (line, code) = run_bare_with_env(
        &[
            ("TIDELOG_LISTEN", "127.0.0.1:0".into()),
            ("TIDELOG_DATA_DIR", data.display().to_string()),
        ],
        tmp.path(),
    );
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    assert!(
        !line.ends_with(":0"),
        "the bound port is printed, not 0: {line}"
    );
    assert!(
        data.join("topics").is_dir(),
        "the data directory came from TIDELOG_DATA_DIR"
    );
    assert!(
        data.join("clean-shutdown").exists(),
        "SIGTERM stops cleanly"
    );
    assert_eq!(code, Some(0));
}

#[test]
fn a_config_file_from_the_environment_sets_the_listen_address() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tidelog.toml");
    let data = tmp.path().join("from-file");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let (line, code) = run_bare_with_env(
        &[("TIDELOG_CONFIG", config.display().to_string())],
        tmp.path(),
    );
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");
    assert!(data.join("topics").is_dir());
    assert_eq!(code, Some(0));
}

#[test]
fn a_config_file_with_an_unknown_key_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nlisten_port = 9\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .arg("--config")
        .arg(&config)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listen_port"),
        "the error names the bad key: {stderr}"
    );
}

#[test]
fn a_second_broker_on_the_same_data_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shared");
    let mut first = Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    let line = lines.next().expect("a line").unwrap();
    assert!(line.starts_with("listening on "), "{line}");

    // Bounded: before the lock, the second broker served (and would run forever).
    let mut second = Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = first.kill();
    let _ = first.wait();
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read as _;
    second
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = status.unwrap_or_else(|| panic!("the second broker kept running: {stdout}"));
    assert_ne!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(status.code().is_some(), "it exits, not killed");
    assert!(
        !stdout.contains("listening on"),
        "the second one served: {stdout}"
    );
    assert!(
        stderr.contains("in use by another tidelog process"),
        "the refusal says why: {stderr}"
    );

    // The lock goes with the process: once the first is gone (even killed), a broker starts.
    let (line, code) = run_bare_with_env(
        &[
            ("TIDELOG_LISTEN", "127.0.0.1:0".into()),
            ("TIDELOG_DATA_DIR", data.display().to_string()),
        ],
        tmp.path(),
    );
    assert!(line.starts_with("listening on "), "{line}");
    assert_eq!(code, Some(0));
}

#[test]
fn a_config_that_cannot_work_is_refused_at_start_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("zero.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n[limits]\nconnections_max = 0\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .arg("--config")
        .arg(&config)
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("limits.connections_max"), "{stderr}");
}

#[tokio::test]
async fn a_topic_config_that_cannot_work_is_refused_by_patch_naming_the_key() {
    let broker = common::TestBroker::start();
    let http = broker.client();
    common::create_topic(&http, &broker.url, "patched", 1).await;
    for (key, value) in [
        ("flush_bytes", serde_json::json!(u64::MAX)),
        ("max_message_bytes", serde_json::json!(u64::MAX)),
        ("flush_bytes", serde_json::json!(0)),
    ] {
        let r = http
            .patch(format!("{}/v1/topics/patched", broker.url))
            .json(&serde_json::json!({ key: value }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let problem: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{key} = {value}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap_or("").starts_with(key),
            "{key} = {value}: {problem}"
        );
    }
}
