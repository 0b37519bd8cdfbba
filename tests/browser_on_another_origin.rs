//! A page of another origin, in a real headless Chromium, uses the API: it produces with
//! `fetch()` (a CORS preflight, since the body is JSON) and receives the record through an
//! `EventSource`, which after the broker restarts reconnects with `Last-Event-ID` and gets
//! only what it had not seen.
//!
//! Needs Debian's `chromium` (installed by `.ci/run`); skipped with one line without it, a
//! failure with `CI=true`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use common::TestBroker;

/// How long the page may take to report something (Chromium starts slowly on a busy machine;
/// an `EventSource` waits about 3 s before it reconnects).
const REPORT_TIMEOUT: Duration = Duration::from_secs(90);

/// The page: opens the stream, then produces one record; every event is reported to the
/// page's own server (same origin, so reporting needs no CORS).
const PAGE: &str = r#"<!doctype html>
<html><body><script>
const broker = "BROKER";
const report = (what) => fetch("/report?what=" + encodeURIComponent(what));
const stream = new EventSource(broker + "/v1/topics/browser/partitions/0/stream?offset=0");
stream.addEventListener("record", (e) => report("record " + e.lastEventId + " " + e.data));
stream.onerror = () => report("stream error, readyState " + stream.readyState);
fetch(broker + "/v1/topics/browser/records?acks=all", {
  method: "POST",
  headers: {"content-type": "application/json"},
  body: JSON.stringify({records: [{key: "k", value: {from: "page"}}]}),
}).then((r) => r.text().then((t) => report("produced " + r.status + " " + t)))
  .catch((e) => report("produce failed " + e));
</script></body></html>
"#;

/// A Chromium process, killed when dropped (a failing test leaves none behind).
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_page_of_another_origin_produces_with_fetch_and_follows_with_event_source() {
    let check = "the headless Chromium CORS and EventSource test";
    let Some(chromium) = common::tool_or_skip(check, "chromium") else {
        return;
    };
    let (origin, reports) = serve_page();
    // A fixed port, so the page's EventSource finds the broker again after the restart.
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let config = format!("cors_allowed_origins = [\"{origin}\"]\n");
    let mut broker = TestBroker::start_member(&tmp.path().join("data"), port, &[], &config);
    let rt = common::runtime();
    let http = broker.client();
    rt.block_on(common::create_topic(&http, &broker.url, "browser", 1));
    // The page reaches the broker through a proxy that checks every answer against the spec
    // (CORS preflights pass unchecked: the CORS layer answers them on every path).
    let proxy = common::checking_proxy::CheckingProxy::start(&broker.url);

    let profile = tempfile::tempdir().unwrap();
    let _browser = Browser(
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("{origin}/?broker={}", proxy.url))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium"),
    );
    let mut seen = Vec::new();
    wait_for_report(&reports, &mut seen, |r| r.starts_with("record 0 "));
    wait_for_report(&reports, &mut seen, |r| r.starts_with("produced "));
    let produced = seen.iter().find(|r| r.starts_with("produced ")).unwrap();
    assert!(produced.starts_with("produced 200 "), "{seen:#?}");
    let first = seen.iter().find(|r| r.starts_with("record 0 ")).unwrap();
    assert!(first.contains(r#""value":{"from":"page"}"#), "{seen:#?}");

    // The broker goes away and comes back on the same port; the page's stream reconnects by
    // itself with Last-Event-ID: 0, so it gets the next record and not the first again.
    broker.restart();
    rt.block_on(common::produce_json_acks_all(
        &http,
        &broker.url,
        "browser",
        serde_json::json!([{"key": "k", "value": {"from": "test"}}]),
    ));
    wait_for_report(&reports, &mut seen, |r| r.starts_with("record 1 "));
    let records: Vec<&String> = seen.iter().filter(|r| r.starts_with("record ")).collect();
    assert_eq!(records.len(), 2, "each record once: {seen:#?}");
    assert!(
        records[1].contains(r#""value":{"from":"test"}"#),
        "{seen:#?}"
    );
}

/// Waits until a report satisfies `wanted`, keeping every report in `seen`.
fn wait_for_report(
    reports: &Receiver<String>,
    seen: &mut Vec<String>,
    wanted: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + REPORT_TIMEOUT;
    while !seen.iter().any(|r| wanted(r)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match reports.recv_timeout(left) {
            Ok(report) => seen.push(report),
            Err(_) => panic!("the page did not report what was expected; it reported {seen:#?}"),
        }
    }
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves [`PAGE`] (with the broker's address from its `broker` query) and collects what it
/// reports. Returns the page's origin and the reports.
fn serve_page() -> (String, Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            // One thread per connection: Chromium may open a connection it sends nothing on.
            std::thread::spawn(move || answer(stream, &tx));
        }
    });
    (origin, rx)
}

/// Answers one request: the page, a report (204), or 404.
fn answer(mut stream: TcpStream, reports: &Sender<String>) {
    let _ = stream.set_read_timeout(Some(REPORT_TIMEOUT));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, content_type, body) = match path {
        "/" => {
            let broker = query_value(query, "broker");
            ("200 OK", "text/html", PAGE.replace("BROKER", &broker))
        }
        "/report" => {
            let _ = reports.send(query_value(query, "what"));
            ("204 No Content", "text/plain", String::new())
        }
        _ => ("404 Not Found", "text/plain", String::new()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The value of `name` in a query string (`%XX` decoded), or nothing.
fn query_value(query: &str, name: &str) -> String {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    pairs
        .into_iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
        .unwrap_or_default()
}
