//! Connections: `connections_max` general connections, `health_connections_max` more for
//! probes, scrapes and admin calls, then the accept queue; and the clocks that close a
//! connection whose client is too slow (headers, idle keep-alive, a stalled or endless body).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::connect_raw as connect;

/// Sends a keep-alive `GET path` and reads the answer (one read: these answers are small).
fn get(stream: &mut TcpStream, path: &str) -> std::io::Result<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    send(stream, &request)
}

/// Sends a keep-alive `POST path` with a JSON body and reads the answer (one read).
fn post_json(stream: &mut TcpStream, path: &str, body: &str) -> std::io::Result<String> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    send(stream, &request)
}

fn send(stream: &mut TcpStream, request: &str) -> std::io::Result<String> {
    stream.write_all(request.as_bytes())?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf)?;
    if n > 0 {
        let mut request_line = request.split(' ');
        let (method, path) = (request_line.next(), request_line.next());
        common::contract::assert_raw_answer_keeps_the_spec(
            method.unwrap_or_default(),
            path.unwrap_or_default(),
            &buf[..n],
        );
    }
    Ok(String::from_utf8_lossy(&buf[..n]).to_string())
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

/// Reads until the broker closes the connection; returns what it sent. Panics if it is still
/// open after the read timeout.
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return String::from_utf8_lossy(&got).to_string(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return String::from_utf8_lossy(&got).to_string();
            }
            Err(e) => panic!(
                "the broker kept the connection open ({e}); got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

#[test]
fn past_connections_max_the_health_reserve_serves_probes_and_admin_calls_then_connections_wait() {
    let broker = common::TestBroker::start_with_config(
        "[limits]\nconnections_max = 2\nhealth_connections_max = 1\n",
    );
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect(&broker.url)).collect();
    for stream in &mut held {
        let answer = get(stream, "/v1/topics").unwrap();
        assert!(status_line(&answer).contains("200"), "{answer}");
    }
    // The third connection comes from the health reserve: an operator can still look at and
    // change topics there, but client traffic is refused and the connection closed, which
    // frees the reserve slot again.
    let mut reserve = connect(&broker.url);
    let answer = get(&mut reserve, "/v1/topics").unwrap();
    assert!(status_line(&answer).contains("200"), "{answer}");
    let answer = post_json(&mut reserve, "/v1/topics", r#"{"name":"t","partitions":1}"#).unwrap();
    assert!(status_line(&answer).contains("201"), "{answer}");
    let answer = get(&mut reserve, "/v1/topics/t").unwrap();
    assert!(status_line(&answer).contains("200"), "{answer}");
    let answer = post_json(
        &mut reserve,
        "/v1/topics/t/records",
        r#"{"records":[{"value":1}]}"#,
    )
    .unwrap();
    assert!(status_line(&answer).contains("503"), "{answer}");
    assert!(answer.contains("\"code\":\"overloaded\""), "{answer}");
    assert!(
        answer.contains("\"limit_name\":\"connections_max\""),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    read_until_closed(&mut reserve);
    let mut probe = connect(&broker.url);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let answer = get(&mut probe, path).unwrap();
        assert!(status_line(&answer).contains("200"), "{path}: {answer}");
    }
    // Past both pools a connection is accepted by the kernel, not by the broker.
    let mut waiting = connect(&broker.url);
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let waited = get(&mut waiting, "/healthz");
    assert!(
        waited.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "a connection past both pools must wait, got {waited:?}"
    );
    // Closing a general connection lets the waiting one in; its request is answered.
    drop(held.pop());
    waiting
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = waiting.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "served after a slot freed"
    );
}

/// Connections short on time: header and body clocks of a fraction of a second.
const QUICK_CLOCKS: &str = "[limits]\nheader_read_timeout_ms = 300\nbody_stall_timeout_ms = 300\nbody_read_timeout_ms = 1500\n";

#[test]
fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let broker = common::TestBroker::start_with_config(QUICK_CLOCKS);
    let mut slow = connect(&broker.url);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    read_until_closed(&mut slow);

    let mut idle = connect(&broker.url);
    let answer = get(&mut idle, "/healthz").unwrap();
    assert!(status_line(&answer).contains("200"), "{answer}");
    read_until_closed(&mut idle);
}

/// Sends a produce request head for a JSON body of `declared` bytes (or chunked).
fn start_produce(url: &str, declared: Option<usize>) -> TcpStream {
    let mut stream = connect(url);
    let length = match declared {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_string(),
    };
    let head = format!(
        "POST /v1/topics/t/records HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/json\r\n{length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
}

fn assert_body_timeout(answer: &str, limit_name: &str) {
    assert!(status_line(answer).contains("408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    assert!(
        answer.contains(&format!("\"limit_name\":\"{limit_name}\"")),
        "{answer}"
    );
}

#[test]
fn a_stalled_body_and_an_endless_chunked_body_get_408_and_the_connection_closes() {
    let broker = common::TestBroker::start_with_config(QUICK_CLOCKS);
    common::runtime().block_on(async {
        common::create_topic(&broker.client(), &broker.url, "t", 1).await;
    });

    let mut stalled = start_produce(&broker.url, Some(100));
    stalled.write_all(b"{\"records\":").unwrap();
    assert_body_timeout(&read_until_closed(&mut stalled), "body_stall_timeout_ms");

    // A chunk of whitespace every 50 ms: always progressing, never ending. Bounded by count
    // and time; the broker must answer long before either runs out.
    let mut endless = start_produce(&broker.url, None);
    endless.write_all(b"b\r\n{\"records\":\r\n").unwrap();
    let mut reader = endless.try_clone().unwrap();
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        for _ in 0..400 {
            if endless.write_all(b"1\r\n \r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let answer = read_until_closed(&mut reader);
    assert_body_timeout(&answer, "body_read_timeout_ms");
    assert!(started.elapsed() < Duration::from_secs(20));
    writer.join().unwrap();
}

/// The header clock runs only while a connection waits for a request: a long-poll and an
/// event stream, each quiet for several times `header_read_timeout_ms`, are answered, and
/// the long-poll's connection serves the next request.
#[test]
fn a_long_poll_and_an_event_stream_outlive_the_header_clock() {
    let broker = common::TestBroker::start_with_config(QUICK_CLOCKS);
    common::runtime().block_on(async {
        common::create_topic(&broker.client(), &broker.url, "t", 1).await;
    });

    let mut poll = connect(&broker.url);
    let started = Instant::now();
    let answer = get(
        &mut poll,
        "/v1/topics/t/partitions/0/records?offset=0&wait_ms=1200",
    )
    .unwrap();
    assert!(status_line(&answer).contains("200"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(1100),
        "it waited"
    );
    let again = get(&mut poll, "/healthz").unwrap();
    assert!(status_line(&again).contains("200"), "still open: {again}");

    let mut stream = connect(&broker.url);
    stream
        .write_all(
            b"GET /v1/topics/t/partitions/0/stream?offset=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        )
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(1200));
    let mut producer = connect(&broker.url);
    let produced = post_json(
        &mut producer,
        "/v1/topics/t/records",
        r#"{"records":[{"value":"after a quiet second"}]}"#,
    )
    .unwrap();
    assert!(status_line(&produced).contains("200"), "{produced}");
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("after a quiet second") {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the stream closed: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// A graceful shutdown waits for requests in flight, and a request whose head is still
/// coming in counts as one to hyper: without the header clock after the shutdown began, a
/// client trickling a head a byte at a time would hold the broker open for as long as it
/// liked. The clock closes that connection and the broker stops cleanly.
#[test]
fn a_head_trickling_in_does_not_hold_a_graceful_shutdown_open() {
    let mut broker =
        common::TestBroker::start_with_config("[limits]\nheader_read_timeout_ms = 1000\n");
    let mut slow = connect(&broker.url);
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let mut writer = slow.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        // One header byte every 50 ms, at most 30 s, until the broker closes the connection.
        for _ in 0..600 {
            if writer.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let stopping = Instant::now();
    assert_eq!(broker.terminate(), Some(0), "a clean stop within 30 s");
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "stopped {:?} after SIGTERM",
        stopping.elapsed()
    );
    read_until_closed(&mut slow);
    trickle.join().unwrap();
}
