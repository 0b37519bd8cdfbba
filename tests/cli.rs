//! The command line: `tidelog` alone serves, and `TIDELOG_*` variables set what flags would.

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
