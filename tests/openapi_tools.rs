//! The OpenAPI document checked by outside tools, against live brokers:
//! 1. `openapi-spec-validator` validates it;
//! 2. `schemathesis` fuzzes a live broker with it (bounded) and finds no server error and no
//!    response that breaks the documented statuses, content types or schemas;
//! 3. `openapi-python-client` generates a Python SDK, and a script uses it to create a topic,
//!    produce and consume (and, when the broker serves groups, join a group and commit).
//!
//! The tools live in a virtualenv under the target directory, installed from PyPI at the
//! versions pinned in `tests/openapi/requirements.txt` the first time (and whenever the pins
//! change). Installing is part of the test, never skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn spec_path() -> PathBuf {
    Path::new(MANIFEST_DIR).join("openapi/tidelog.json")
}

fn tools_dir() -> PathBuf {
    Path::new(MANIFEST_DIR).join("tests/openapi")
}

/// `<target>/`: the test binary is `<target>/<profile>/deps/openapi_tools-<hash>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary sits three levels under the target dir")
        .to_path_buf()
}

/// Runs `cmd` to completion within `limit`, killing it past that. Returns (success, output).
fn run(mut cmd: Command, limit: Duration) -> (bool, String) {
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

/// The virtualenv with the pinned tools, created or updated once per test process.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = target_dir().join("openapi-venv");
        let requirements = tools_dir().join("requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).expect("read requirements.txt");
        let marker = venv.join("tidelog-requirements.txt");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
            return venv;
        }
        if !venv.join("bin/python").exists() {
            let mut cmd = Command::new("python3");
            cmd.args(["-m", "venv"]).arg(&venv);
            let (ok, out) = run(cmd, Duration::from_secs(120));
            assert!(ok, "python3 -m venv failed:\n{out}");
        }
        let mut cmd = Command::new(venv.join("bin/pip"));
        cmd.args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements);
        let (ok, out) = run(cmd, Duration::from_secs(600));
        assert!(
            ok,
            "pip install -r {} failed:\n{out}",
            requirements.display()
        );
        std::fs::write(&marker, wanted).expect("write the venv marker");
        venv
    })
}

#[test]
fn the_spec_is_valid_openapi() {
    let mut cmd = Command::new(venv().join("bin/openapi-spec-validator"));
    cmd.arg(spec_path());
    let (ok, out) = run(cmd, Duration::from_secs(60));
    assert!(ok && out.contains("OK"), "openapi-spec-validator:\n{out}");
}

/// Small limits keep the fuzzer's requests cheap: a long-poll waits at most 200 ms, and the
/// partitions it can create stay far below the process's file-descriptor limit. Values past
/// them get the documented 400 `limit_exceeded`.
const FUZZ_BROKER_CONFIG: &str = "[limits]\n\
    wait_ms_max = 200\n\
    partitions_per_topic_max = 8\n\
    topics_max = 64\n";

#[test]
fn schemathesis_finds_no_server_error_or_undocumented_response() {
    let venv = venv();
    let broker = common::TestBroker::start_with_config(FUZZ_BROKER_CONFIG);
    let mut cmd = Command::new(venv.join("bin/schemathesis"));
    // Its example database goes to the target dir, not the source tree.
    cmd.current_dir(target_dir())
        .env("SCHEMATHESIS_HOOKS", tools_dir().join("hooks.py"))
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(tools_dir().join("schemathesis.toml"))
        .arg("run")
        .arg(spec_path())
        .args(["--url", &broker.url])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        // An SSE stream stays open until the client leaves: nothing to fuzz request by request.
        .args(["--exclude-path-regex", "/stream$"])
        .args(["--max-examples", "25", "--request-timeout", "10"])
        // One worker: hypothesis's lambda introspection is not thread-safe.
        .args(["--workers", "1", "--no-color"]);
    if !common::consumer_group_routes_served() {
        cmd.args(["--exclude-tag", "groups"]);
    }
    let (ok, out) = run(cmd, Duration::from_secs(150));
    assert!(ok, "schemathesis found problems:\n{out}");
    let generated = out
        .lines()
        .find_map(|l| {
            let (n, _) = l.trim().split_once(" generated, ")?;
            n.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no test case count in the output:\n{out}"));
    assert!(
        generated >= 100,
        "schemathesis ran only {generated} cases:\n{out}"
    );
}

#[test]
fn a_generated_python_sdk_creates_produces_and_consumes() {
    let venv = venv();
    let sdk_parent = tempfile::Builder::new()
        .prefix("openapi-sdk-")
        .tempdir_in(target_dir())
        .expect("temp dir under target");
    let package = sdk_parent.path().join("tidelog_client");
    let mut cmd = Command::new(venv.join("bin/openapi-python-client"));
    cmd.args(["generate", "--meta", "none", "--path"])
        .arg(spec_path())
        .arg("--output-path")
        .arg(&package);
    let (ok, out) = run(cmd, Duration::from_secs(120));
    assert!(ok, "openapi-python-client generate failed:\n{out}");
    assert!(package.join("api/records/produce.py").exists(), "{out}");

    let broker = common::TestBroker::start();
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(tools_dir().join("sdk_smoke.py"))
        .arg(sdk_parent.path())
        .arg(&broker.url)
        .arg(if common::consumer_group_routes_served() {
            "yes"
        } else {
            "no"
        });
    let (ok, out) = run(cmd, Duration::from_secs(60));
    println!("{out}");
    assert!(ok, "the SDK script failed:\n{out}");
    assert!(out.contains("sdk: create, produce"), "{out}");
}
