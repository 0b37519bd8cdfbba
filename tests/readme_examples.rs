//! Runs every `sh` command of README.md against a live broker, so the walkthrough cannot rot;
//! and the section "Three brokers on one machine" (its `sh cluster` lines, then the whole
//! single-broker walkthrough sent round-robin to the three) against the cluster its script,
//! `deploy/three-brokers.sh`, starts (issue 9: everything that works on one broker works
//! through any broker of three).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The commands of the README's code blocks fenced as "```{fence}", one per line, in order.
fn readme_commands_in(fence: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let opening = format!("```{fence}");
    let mut commands = Vec::new();
    let mut inside = false;
    for line in readme.lines() {
        match line.trim() {
            l if l == opening => inside = true,
            "```" => inside = false,
            l if inside && !l.is_empty() && !l.starts_with('#') => commands.push(l.to_string()),
            _ => {}
        }
    }
    commands
}

/// The `sh` code blocks of the README: the single-broker walkthrough.
fn readme_commands() -> Vec<String> {
    readme_commands_in("sh")
}

#[test]
fn every_readme_command_works_as_written() {
    let broker = common::TestBroker::start();
    // curl talks to the broker through a proxy that checks every answer against the spec.
    let proxy = common::checking_proxy::CheckingProxy::start(&broker.url);
    let commands = readme_commands();
    assert!(
        commands.len() >= 10,
        "the walkthrough lost its examples: {commands:?}"
    );
    let cwd = tempfile::tempdir().unwrap();
    run_walkthrough(&commands, cwd.path(), |command, _| {
        command.replace("http://localhost:8080", &proxy.url)
    });
}

#[test]
fn the_three_broker_walkthrough_and_the_whole_single_broker_one_work_through_any_broker() {
    let cluster = ScriptCluster::start();
    let cluster_commands = readme_commands_in("sh cluster");
    assert!(
        cluster_commands.len() >= 5,
        "the three-broker section lost its examples: {cluster_commands:?}"
    );
    let cwd = tempfile::tempdir().unwrap();
    // Every answer checked against the spec on its way back, as in the single-broker test.
    let proxies: Vec<_> = cluster
        .ports
        .iter()
        .map(|p| common::checking_proxy::CheckingProxy::start(&format!("http://127.0.0.1:{p}")))
        .collect();
    let with_ports = |command: &str, _| {
        (0..3).fold(command.to_string(), |c, i| {
            c.replace(&format!("http://127.0.0.1:900{}", i + 1), &proxies[i].url)
        })
    };
    run_walkthrough(&cluster_commands, cwd.path(), with_ports);
    // Every command of the single-broker walkthrough, each sent to the next broker in turn
    // (the first to broker 2, which neither runs the controller nor leads everything).
    run_walkthrough(&readme_commands(), cwd.path(), |command, i| {
        command.replace("http://localhost:8080", &proxies[(i + 1) % 3].url)
    });
}

/// Runs each command (as `runnable` rewrites it, given its index) with bash in `cwd`, and
/// checks what it printed: no problem (but where one is the point), records on a stream.
fn run_walkthrough(
    commands: &[String],
    cwd: &std::path::Path,
    runnable: impl Fn(&str, usize) -> String,
) {
    for (i, command) in commands.iter().enumerate() {
        let runnable = runnable(command, i);
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; {runnable}"))
            .current_dir(cwd)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let code = out.status.code();
        // curl's exit 28 is the --max-time the SSE example asks for.
        let expected_exit = code == Some(0) || (command.contains("--max-time") && code == Some(28));
        assert!(
            expected_exit,
            "`{runnable}` exited {code:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if command.contains("offset=999999") {
            assert!(
                stdout.contains("\"code\":\"offset_out_of_range\""),
                "`{runnable}` printed {stdout}"
            );
            continue;
        }
        if command.contains("acks=all") && command.contains("127.0.0.1:900") {
            assert!(
                stdout.contains("\"durability\":\""),
                "`{runnable}` printed {stdout}"
            );
        }
        if command.starts_with("curl") || command.contains("| curl") {
            assert!(!stdout.trim().is_empty(), "`{runnable}` printed nothing");
            assert!(
                !stdout.contains("\"code\":"),
                "`{runnable}` answered a problem: {stdout}"
            );
        }
        if command.contains("/stream") {
            assert!(
                stdout.contains("event: record") && stdout.contains("id: 0"),
                "`{runnable}` printed {stdout}"
            );
        }
    }
}

/// The three brokers `deploy/three-brokers.sh` starts, on free ports; the script and its
/// brokers are stopped (SIGTERM to its process group, then SIGKILL) when this drops.
struct ScriptCluster {
    script: Child,
    ports: [u16; 3],
    _root: tempfile::TempDir,
}

impl ScriptCluster {
    fn start() -> ScriptCluster {
        let root = tempfile::tempdir().unwrap();
        let ports = free_ports();
        let mut script = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/three-brokers.sh"
            ))
            .arg(root.path().join("cluster-data"))
            .env("TIDELOG_BIN", env!("CARGO_BIN_EXE_tidelog"))
            .env(
                "TIDELOG_PORTS",
                format!("{} {} {}", ports[0], ports[1], ports[2]),
            )
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("run deploy/three-brokers.sh");
        let stdout = script.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("three brokers ready") {
                    let _ = tx.send(());
                }
            }
        });
        let cluster = ScriptCluster {
            script,
            ports,
            _root: root,
        };
        rx.recv_timeout(Duration::from_secs(90))
            .expect("the script says the three brokers are ready");
        cluster
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        let group = format!("-{}", self.script.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        for _ in 0..300 {
            if let Ok(Some(_)) = self.script.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.script.wait();
    }
}

/// Three ports free right now (bound together, then released).
fn free_ports() -> [u16; 3] {
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let port = |i: usize| listeners[i].local_addr().unwrap().port();
    [port(0), port(1), port(2)]
}

/// The README and every local file it links to, as one text.
fn readme_and_linked_pages() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut text = readme.clone();
    for link in readme.split("](").skip(1) {
        let target = link.split([')', '#']).next().unwrap_or_default();
        if !target.is_empty() && !target.contains("://") {
            let page = root.join(target);
            text.push('\n');
            text.push_str(
                &std::fs::read_to_string(&page)
                    .unwrap_or_else(|e| panic!("README links {target}, which cannot be read: {e}")),
            );
        }
    }
    text
}

/// The method of each `curl` call on a line, in order: its `-X`, else POST with a body, else GET.
fn curl_methods(line: &str) -> Vec<(usize, String)> {
    line.match_indices("curl ")
        .map(|(at, _)| {
            let call = &line[at..];
            let call = call[5..]
                .find("curl ")
                .map_or(call, |next| &call[..next + 5]);
            let words: Vec<&str> = call.split_whitespace().collect();
            let method = match words.iter().position(|w| *w == "-X") {
                Some(i) => words[i + 1].to_string(),
                None if words
                    .iter()
                    .any(|w| w.starts_with("-d") || w.starts_with("--data")) =>
                {
                    "POST".to_string()
                }
                None => "GET".to_string(),
            };
            (at, method)
        })
        .collect()
}

/// Every (method, path) the text shows: a `curl` call to a URL, or prose such as
/// `` `DELETE /v1/topics/{topic}` `` (a method word, then a path, possibly across a line break).
/// Paths keep their example values (`orders`, `0`) and lose their query strings.
fn documented_calls(text: &str) -> Vec<(String, String)> {
    const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
    let mut calls = Vec::new();
    let mut previous_word = String::new();
    for line in text.lines() {
        let curls = curl_methods(line);
        let mut at = 0;
        for word in line.split(|c: char| c.is_whitespace() || "`'\"()".contains(c)) {
            let start = at;
            at += word.len() + 1;
            if word.is_empty() {
                continue;
            }
            let path = match word.find("://") {
                Some(scheme) => word[scheme + 3..]
                    .find('/')
                    .map(|p| &word[scheme + 3 + p..]),
                None => word.starts_with('/').then_some(word),
            };
            if let Some(path) = path {
                let path = path.split('?').next().unwrap_or_default();
                let path = path.trim_end_matches(['.', ',', ':', ';']);
                let method = curls
                    .iter()
                    .rev()
                    .find(|(curl_at, _)| *curl_at < start)
                    .map(|(_, m)| m.clone())
                    .or_else(|| {
                        METHODS
                            .contains(&previous_word.as_str())
                            .then(|| previous_word.clone())
                    });
                if let Some(method) = method {
                    calls.push((method, path.to_string()));
                }
            }
            previous_word = word.to_string();
        }
    }
    calls
}

/// Whether `path` (with example values) is an instance of the route `template`.
fn path_matches(template: &str, path: &str) -> bool {
    let template: Vec<&str> = template.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    template.len() == path.len()
        && template
            .iter()
            .zip(&path)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

/// Every public route (not the brokers' `/internal/` calls to each other) and each of its
/// methods is shown in the README or a page it links, so a route added without docs fails.
#[test]
fn every_public_route_and_method_is_documented_in_the_readme_or_a_page_it_links() {
    let calls = documented_calls(&readme_and_linked_pages());
    let mut undocumented = Vec::new();
    for (template, methods) in tidelog::http::route_table() {
        if template.starts_with("/internal/") {
            continue;
        }
        for method in methods {
            let shown = calls
                .iter()
                .any(|(m, path)| m == method.as_str() && path_matches(template, path));
            if !shown {
                undocumented.push(format!("{method} {template}"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "routes with no example or mention (`METHOD /path`) in the README or a page it links: \
         {undocumented:#?}"
    );
}

#[test]
fn documented_calls_reads_curl_lines_and_prose() {
    let text = "curl -s http://localhost:8080/v1/topics/orders\n\
                x=$(curl -s -X POST http://h:1/v1/a -d '{}'); curl -s 'http://h:1/v1/b?x=1'\n\
                `POST /v1/groups/billing/offsets` with, then `DELETE\n\
                /v1/groups/billing/members/{member}` leaves; /readyz alone names no method.";
    let calls = documented_calls(text);
    let want = [
        ("GET", "/v1/topics/orders"),
        ("POST", "/v1/a"),
        ("GET", "/v1/b"),
        ("POST", "/v1/groups/billing/offsets"),
        ("DELETE", "/v1/groups/billing/members/{member}"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(calls, want);
    assert!(path_matches("/v1/topics/{topic}", "/v1/topics/orders"));
    assert!(!path_matches(
        "/v1/topics/{topic}",
        "/v1/topics/orders/records"
    ));
}
