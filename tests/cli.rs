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

/// Starts `tidelog serve` on `data` with `args` and waits for the address it prints.
fn serve_on(data: &std::path::Path, args: &[&str], stderr: Stdio) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("TIDELOG_LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("a line").unwrap();
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("no address: {line}"))
        .to_string();
    (child, url)
}

#[test]
fn a_second_broker_on_the_same_data_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shared");
    let (mut first, _) = serve_on(&data, &[], Stdio::null());

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

const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tidelog.toml");

/// Every key of a TOML table, as `section.key`.
fn toml_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        match value {
            toml::Value::Table(inner) => toml_keys(inner, &format!("{path}."), out),
            _ => out.push(path),
        }
    }
}

#[test]
fn the_example_config_lists_every_key_with_its_default() {
    let text = std::fs::read_to_string(EXAMPLE_CONFIG).expect("tidelog.toml in the repository");
    // Unknown keys are refused by the real type, and every value shown is the default.
    let parsed: tidelog::config::BrokerConfig = toml::from_str(&text).expect("the example parses");
    assert_eq!(
        parsed,
        tidelog::config::BrokerConfig::default(),
        "a value in tidelog.toml is not the default"
    );
    // Every key of the code is written out (a key added to the code and not here fails).
    let defaults = toml::Table::try_from(tidelog::config::BrokerConfig::default()).unwrap();
    let (mut in_code, mut in_example) = (Vec::new(), Vec::new());
    toml_keys(&defaults, "", &mut in_code);
    toml_keys(&toml::from_str(&text).unwrap(), "", &mut in_example);
    in_code.sort();
    in_example.sort();
    assert_eq!(
        in_code, in_example,
        "tidelog.toml and the config type list different keys"
    );
    // Each key is documented: a meaning, then its default, just above it.
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with('#') || line.starts_with('[') || !line.contains(" = ") {
            continue;
        }
        assert!(
            i >= 2 && lines[i - 1].starts_with("# Default: ") && lines[i - 2].starts_with("# "),
            "`{line}` lacks its meaning and `# Default:` comment"
        );
    }
}

#[test]
fn config_print_shows_the_effective_config_and_config_check_validates_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("small.toml");
    std::fs::write(&file, "default_partitions = 3\n[limits]\ntopics_max = 7\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .args(["config", "print", "--data-dir", "/srv/tidelog", "--config"])
        .arg(&file)
        .env_remove("TIDELOG_LISTEN")
        .env_remove("TIDELOG_DATA_DIR")
        .env_remove("TIDELOG_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let printed: tidelog::config::BrokerConfig =
        toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("config print is TOML");
    assert_eq!(printed.default_partitions, 3, "from the file");
    assert_eq!(printed.limits.topics_max, 7, "from the file");
    assert_eq!(
        printed.data_dir,
        std::path::Path::new("/srv/tidelog"),
        "from the flag"
    );

    let check = |path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_tidelog"))
            .args(["config", "check"])
            .arg(path)
            .output()
            .unwrap()
    };
    assert_eq!(check(&file).status.code(), Some(0));
    assert_eq!(
        check(std::path::Path::new(EXAMPLE_CONFIG)).status.code(),
        Some(0)
    );
    std::fs::write(&file, "[limits]\nconnections_max = 0\n").unwrap();
    let out = check(&file);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.connections_max"));
    std::fs::write(&file, "[limits]\nconnection_max = 10\n").unwrap();
    let out = check(&file);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection_max"));
}

/// Runs a broker with `args`, sends a few requests, stops it with SIGTERM; returns stderr.
fn broker_log(args: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let (child, url) = serve_on(&tmp.path().join("data"), args, Stdio::piped());
    common::runtime().block_on(async {
        let http = common::Client::new();
        common::create_topic(&http, &url, "logged", 1).await;
        for _ in 0..3 {
            http.get(format!("{url}/v1/topics/logged/partitions/0/records"))
                .send()
                .await
                .unwrap();
        }
        group_joins_leaves_and_expires(&http, &url).await;
        let grow = http
            .post(format!("{url}/v1/topics/logged/partitions"))
            .json(&serde_json::json!({"count": 2}))
            .send()
            .await
            .unwrap();
        assert!(grow.status().is_success());
        let gone = http
            .delete(format!("{url}/v1/topics/logged"))
            .send()
            .await
            .unwrap();
        assert!(gone.status().is_success());
    });
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// In group `audit` on topic `logged`: a member joins and lets its session expire, another
/// joins, fetches and leaves; returns once the expired member is gone.
async fn group_joins_leaves_and_expires(http: &common::Client, url: &str) {
    let join = |session_timeout_ms: u64| {
        http.post(format!("{url}/v1/groups/audit/members"))
            .json(&serde_json::json!({"topics": ["logged"], "session_timeout_ms": session_timeout_ms}))
            .send()
    };
    let expiring = join(1_000).await.unwrap();
    assert!(expiring.status().is_success());
    let leaving: serde_json::Value = join(30_000).await.unwrap().json().await.unwrap();
    let member = leaving["member_id"].as_str().expect("member_id");
    let members = format!("{url}/v1/groups/audit/members/{member}");
    let fetched = http.get(format!("{members}/records")).send().await.unwrap();
    assert!(fetched.status().is_success());
    assert!(
        http.delete(&members)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    common::wait_until(
        "the 1 s member to expire",
        Duration::from_secs(30),
        || async {
            let group = http
                .get(format!("{url}/v1/groups/audit"))
                .send()
                .await
                .unwrap();
            group.status() == reqwest::StatusCode::NOT_FOUND
                || group.json::<serde_json::Value>().await.unwrap()["members"]
                    .as_array()
                    .is_some_and(Vec::is_empty)
        },
    )
    .await;
}

#[test]
fn logs_are_one_line_per_event_in_text_or_json_and_none_per_request() {
    let json = broker_log(&["--log-format", "json"]);
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(messages.contains(&"tidelog started"), "{json}");
    assert!(messages.contains(&"stopped cleanly"), "{json}");
    // Topic changes are one line each, naming the topic.
    for change in ["topic created", "topic expanded", "topic deleted"] {
        let lines: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["message"] == change).collect();
        assert_eq!(lines.len(), 1, "{change}: {json}");
        assert_eq!(lines[0]["topic"], "logged", "{change}: {json}");
    }
    // Group membership changes are one line each, naming the group and the member.
    for (change, count) in [
        ("member joined", 2),
        ("member left", 1),
        ("member's session expired", 1),
    ] {
        let lines: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["message"] == change).collect();
        assert_eq!(lines.len(), count, "{change}: {json}");
        for line in lines {
            assert_eq!(line["level"], "INFO", "{change}: {json}");
            assert_eq!(line["group"], "audit", "{change}: {json}");
            assert!(
                line["member"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("member-")),
                "{json}"
            );
        }
    }
    let started = events
        .iter()
        .find(|e| e["message"] == "tidelog started")
        .unwrap();
    assert_eq!(started["level"], "INFO");
    assert!(
        started["listen"]
            .as_str()
            .is_some_and(|l| l.starts_with("127.0.0.1:"))
    );
    assert!(
        !json.contains("/records"),
        "a request was logged at the default level: {json}"
    );

    let text = broker_log(&[]);
    assert!(
        text.lines()
            .any(|l| l.contains("INFO") && l.contains("tidelog started")),
        "{text}"
    );
    // --log-level filters: at `warn`, the start and stop lines are gone.
    let quiet = broker_log(&["--log-level", "warn"]);
    assert!(!quiet.contains("tidelog started"), "{quiet}");
}

#[test]
fn the_example_systemd_unit_passes_systemd_analyze_verify() {
    let unit_file = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/tidelog.service");
    let unit = std::fs::read_to_string(unit_file).expect("deploy/tidelog.service");
    for line in ["User=tidelog", "Restart=on-failure", "LimitNOFILE="] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "no {line} in the unit"
        );
    }
    let check = "systemd-analyze verify of deploy/tidelog.service";
    let Some(analyze) = common::tool_or_skip(check, "systemd-analyze") else {
        return;
    };
    // verify wants ExecStart's program to exist: point it at the binary under test.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("tidelog.service");
    let here = unit.replace("/usr/local/bin/tidelog", env!("CARGO_BIN_EXE_tidelog"));
    std::fs::write(&copy, here).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown keys are only warnings to systemd: any output at all fails the check.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn a_data_directory_from_a_newer_format_is_refused_and_ours_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let envs = [
        ("TIDELOG_LISTEN", "127.0.0.1:0".to_string()),
        ("TIDELOG_DATA_DIR", data.display().to_string()),
    ];
    // A fresh directory records this build's format; a directory it wrote opens again.
    let (line, code) = run_bare_with_env(&envs, tmp.path());
    assert!(line.starts_with("listening on "), "{line}");
    assert_eq!(code, Some(0));
    let version = data.join("format-version");
    assert_eq!(std::fs::read_to_string(&version).unwrap(), "1\n");
    let (line, code) = run_bare_with_env(&envs, tmp.path());
    assert!(line.starts_with("listening on "), "{line}");
    assert_eq!(code, Some(0));

    // Written by a newer tidelog: refused with a clear message, before serving.
    std::fs::write(&version, "2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
    assert!(
        stderr.contains("data format 2, written by a newer tidelog"),
        "{stderr}"
    );
}

/// `OPTIONS` preflight from `origin`; returns (status, Access-Control-Allow-Origin).
async fn preflight(broker: &common::TestBroker, origin: &str) -> (u16, Option<String>) {
    let r = broker
        .client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/topics/t/records", broker.url),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    let allowed = r
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), allowed)
}

#[tokio::test]
async fn cors_is_off_by_default_and_answers_preflights_for_configured_origins() {
    let plain = common::TestBroker::start();
    let (status, allowed) = preflight(&plain, "https://app.example").await;
    assert_eq!((status, allowed), (405, None), "CORS is off by default");

    let broker =
        common::TestBroker::start_with_config("cors_allowed_origins = [\"https://app.example\"]\n");
    let (status, allowed) = preflight(&broker, "https://app.example").await;
    assert!((200..300).contains(&status), "preflight answered {status}");
    assert_eq!(allowed.as_deref(), Some("https://app.example"));
    let (_, allowed) = preflight(&broker, "https://evil.example").await;
    assert_eq!(allowed, None, "an origin not listed is not allowed");
    // A simple request from the page carries the header too.
    let r = broker
        .client()
        .get(format!("{}/healthz", broker.url))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers().get("access-control-allow-origin").unwrap(),
        "https://app.example"
    );
}
