//! Runs every `sh` command of README.md against a live broker, so the walkthrough cannot rot.

mod common;

use std::process::Command;

/// The `sh` code blocks of the README, one command per line, in order.
fn readme_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && !l.is_empty() && !l.starts_with('#') => commands.push(l.to_string()),
            _ => {}
        }
    }
    commands
}

#[test]
fn every_readme_command_works_as_written() {
    let broker = common::TestBroker::start();
    let cwd = tempfile::tempdir().unwrap();
    let commands = readme_commands();
    assert!(
        commands.len() >= 10,
        "the walkthrough lost its examples: {commands:?}"
    );
    for command in &commands {
        let runnable = command.replace("http://localhost:8080", &broker.url);
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; {runnable}"))
            .current_dir(cwd.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let code = out.status.code();
        // curl's exit 28 is the --max-time the SSE example asks for.
        let expected_exit = code == Some(0) || (command.contains("--max-time") && code == Some(28));
        assert!(
            expected_exit,
            "`{command}` exited {code:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if command.contains("offset=999999") {
            assert!(
                stdout.contains("\"code\":\"offset_out_of_range\""),
                "`{command}` printed {stdout}"
            );
            continue;
        }
        if command.starts_with("curl") || command.contains("| curl") {
            assert!(!stdout.trim().is_empty(), "`{command}` printed nothing");
            assert!(
                !stdout.contains("\"code\":"),
                "`{command}` answered a problem: {stdout}"
            );
        }
        if command.contains("/stream") {
            assert!(
                stdout.contains("event: record") && stdout.contains("id: 0"),
                "`{command}` printed {stdout}"
            );
        }
    }
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
