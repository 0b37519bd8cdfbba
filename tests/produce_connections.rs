//! Connections that only produce: served by the broker's own produce lane until their first
//! other request, then by hyper for good (`src/http/lane_connection.rs`). Raw sockets, so
//! the bytes on the wire are what is checked: the same answers as hyper's path, every
//! pipelined request answered once and in order, the body and header clocks kept.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::connect_raw as connect;

/// A produce request to `topic`, with `fields` (whole header lines) and `body`.
fn produce(topic: &str, query: &str, fields: &str, body: &str) -> String {
    format!(
        "POST /v1/topics/{topic}/records{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n{fields}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn json(topic: &str, body: &str) -> String {
    produce(
        topic,
        "?acks=all",
        "Content-Type: application/json\r\n",
        body,
    )
}

const GET_HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Reads `n` whole answers (each with a `content-length`) and nothing more.
fn read_answers(stream: &mut TcpStream, n: usize) -> Vec<String> {
    let mut got: Vec<u8> = Vec::new();
    let mut answers = Vec::new();
    let mut buf = [0u8; 4096];
    while answers.len() < n {
        if let Some((head_len, body_len)) = whole_answer(&got) {
            let answer: Vec<u8> = got.drain(..head_len + body_len).collect();
            answers.push(String::from_utf8(answer).expect("a text answer"));
            continue;
        }
        let read = stream.read(&mut buf).expect("an answer");
        assert!(read > 0, "closed after {answers:?}");
        got.extend_from_slice(&buf[..read]);
    }
    assert!(got.is_empty(), "more than {n} answers: {got:?}");
    answers
}

/// The head's length and the body's, once the first answer in `got` is whole.
fn whole_answer(got: &[u8]) -> Option<(usize, usize)> {
    let head_len = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&got[..head_len]).ok()?;
    let body_len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length")
        .parse()
        .unwrap();
    (got.len() >= head_len + body_len).then_some((head_len, body_len))
}

/// The answer with its `date` value masked (it moves with the second).
fn masked(answer: &str) -> String {
    answer
        .lines()
        .map(|l| match l.starts_with("date: ") {
            true => "date: <masked>",
            false => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads until the broker closes; what it sent.
fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("still open ({e}) after {:?}", String::from_utf8_lossy(&got)),
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn create_topics(broker: &common::TestBroker, names: &[&str]) {
    common::runtime().block_on(async {
        let http = broker.client();
        for name in names {
            common::create_topic(&http, &broker.url, name, 1).await;
        }
    });
}

/// The same requests, on a connection that only produces (the lane) and on one whose first
/// request was a `GET` (hyper's for good), to two fresh topics of names of one length:
/// the same bytes back, but the `date`.
#[test]
fn the_lane_answers_byte_for_byte_as_hyper_does() {
    let broker = common::TestBroker::start();
    create_topics(&broker, &["lane-t", "hypr-t"]);
    let requests = |topic: &str| {
        vec![
            json(topic, r#"{"records":[{"value":"a"}]}"#),
            json(
                topic,
                r#"{"records":[{"key":"k","value":{"n":1}},{"value":null}]}"#,
            ),
            produce(
                topic,
                "?acks=leader&key=k",
                "Content-Type: application/octet-stream\r\n",
                "raw",
            ),
            produce(topic, "", "", r#"{"records":[{"value":2}]}"#),
            produce(
                topic,
                "",
                "Content-Type: Application/JSON; charset=utf-8\r\n",
                r#"{"records":[{"value":3}]}"#,
            ),
            json(topic, r#"{"records":[{"value":"#),
            json(topic, r#"{"records":[{"value":1,"bogus":2}]}"#),
            produce(
                topic,
                "?acks=some",
                "Content-Type: application/json\r\n",
                r#"{"records":[]}"#,
            ),
            json(&format!("none-{topic}"), r#"{"records":[{"value":1}]}"#),
        ]
    };
    let mut lane = connect(&broker.url);
    let mut hyper = connect(&broker.url);
    hyper.write_all(GET_HEALTHZ.as_bytes()).unwrap();
    read_answers(&mut hyper, 1);
    for (by_lane, by_hyper) in requests("lane-t").into_iter().zip(requests("hypr-t")) {
        lane.write_all(by_lane.as_bytes()).unwrap();
        hyper.write_all(by_hyper.as_bytes()).unwrap();
        let from_lane = read_answers(&mut lane, 1).remove(0);
        let from_hyper = read_answers(&mut hyper, 1)
            .remove(0)
            .replace("hypr-t", "lane-t");
        assert_eq!(masked(&from_lane), masked(&from_hyper), "{by_lane}");
        assert!(from_lane.contains("\r\ndate: "), "{from_lane}");
        common::contract::assert_raw_answer_keeps_the_spec(
            "POST",
            "/v1/topics/lane-t/records",
            from_lane.as_bytes(),
        );
    }
}

/// Requests written back to back are answered once each, in order, also across the hand-over
/// to hyper at the first request that is not the lane's.
#[test]
fn pipelined_requests_are_answered_once_each_in_order_across_the_hand_over() {
    let broker = common::TestBroker::start();
    create_topics(&broker, &["p"]);
    let mut stream = connect(&broker.url);
    let one = |n: u32| json("p", &format!(r#"{{"records":[{{"value":{n}}}]}}"#));
    let burst = [one(0), one(1), one(2)].concat();
    stream.write_all(burst.as_bytes()).unwrap();
    let answers = read_answers(&mut stream, 3);
    for (n, answer) in answers.iter().enumerate() {
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains(&format!(r#""offset":{n}"#)), "{answer}");
    }
    // A produce, a topic's description (hyper's from here), a produce: one write.
    let mixed = [
        one(3),
        "GET /v1/topics/p HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_string(),
        one(4),
    ]
    .concat();
    stream.write_all(mixed.as_bytes()).unwrap();
    let answers = read_answers(&mut stream, 3);
    assert!(answers[0].contains(r#""offset":3"#), "{}", answers[0]);
    assert!(answers[1].contains(r#""name":"p""#), "{}", answers[1]);
    assert!(answers[2].contains(r#""offset":4"#), "{}", answers[2]);
    // And a request split mid-head, then mid-body, still on the same connection.
    let split = one(5);
    let (head, rest) = split.split_at(20);
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(rest.as_bytes()).unwrap();
    let answer = read_answers(&mut stream, 1).remove(0);
    assert!(answer.contains(r#""offset":5"#), "{answer}");

    // The log holds each record once, in order.
    let records = common::runtime().block_on(async {
        let http = broker.client();
        common::get_json_ok(
            &http,
            &broker.url,
            "/v1/topics/p/partitions/0/records?offset=0",
        )
        .await
    });
    let values: Vec<i64> = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_i64().unwrap())
        .collect();
    assert_eq!(values, [0, 1, 2, 3, 4, 5]);
}

/// A body written after its head (as many clients write it) is waited for on the lane, and
/// the connection stays there: its next requests are answered too.
#[test]
fn a_body_written_after_its_head_is_waited_for() {
    let broker = common::TestBroker::start();
    create_topics(&broker, &["b"]);
    let mut stream = connect(&broker.url);
    for n in 0..3 {
        let request = json("b", &format!(r#"{{"records":[{{"value":{n}}}]}}"#));
        let at = request.find("\r\n\r\n").unwrap() + 4;
        stream.write_all(&request.as_bytes()[..at]).unwrap();
        stream.flush().unwrap();
        // The body in a later segment: the broker has read the head alone by then.
        std::thread::sleep(Duration::from_millis(30));
        stream.write_all(&request.as_bytes()[at..]).unwrap();
        let answer = read_answers(&mut stream, 1).remove(0);
        assert!(answer.contains(&format!(r#""offset":{n}"#)), "{answer}");
    }
}

const QUICK_CLOCKS: &str = "[limits]\nheader_read_timeout_ms = 300\nbody_stall_timeout_ms = 300\nbody_read_timeout_ms = 1500\n";

/// A body that stops coming gets the same 408 on both paths, and the connection closes; an
/// idle connection after a produce is closed by the header clock.
#[test]
fn the_clocks_hold_on_the_lane_as_under_hyper() {
    let broker = common::TestBroker::start_with_config(QUICK_CLOCKS);
    create_topics(&broker, &["c"]);
    let stalled = json("c", r#"{"records":[{"value":1}]}"#);
    let partial = &stalled[..stalled.len() - 5];

    let mut lane = connect(&broker.url);
    lane.write_all(partial.as_bytes()).unwrap();
    let from_lane = read_until_closed(&mut lane);

    let mut hyper = connect(&broker.url);
    hyper.write_all(GET_HEALTHZ.as_bytes()).unwrap();
    read_answers(&mut hyper, 1);
    hyper.write_all(partial.as_bytes()).unwrap();
    let from_hyper = read_until_closed(&mut hyper);

    assert!(from_lane.starts_with("HTTP/1.1 408 "), "{from_lane}");
    assert!(
        from_lane.contains(r#""limit_name":"body_stall_timeout_ms""#),
        "{from_lane}"
    );
    assert_eq!(masked(&from_lane), masked(&from_hyper));

    let mut idle = connect(&broker.url);
    idle.write_all(json("c", r#"{"records":[{"value":2}]}"#).as_bytes())
        .unwrap();
    let answer = read_answers(&mut idle, 1).remove(0);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(
        read_until_closed(&mut idle),
        "",
        "closed once idle, nothing more sent"
    );
}

/// A graceful stop closes a produce connection waiting for its next request at once, and
/// answers a request in flight (its body still coming) before closing, with
/// `connection: close`, as hyper does.
#[test]
fn a_stop_closes_a_waiting_produce_connection_and_answers_the_one_in_flight() {
    let broker =
        common::TestBroker::start_with_config("[limits]\nheader_read_timeout_ms = 60000\n");
    create_topics(&broker, &["s"]);
    let mut idle = connect(&broker.url);
    idle.write_all(json("s", r#"{"records":[{"value":1}]}"#).as_bytes())
        .unwrap();
    read_answers(&mut idle, 1);
    let mut in_flight = connect(&broker.url);
    let request = json("s", r#"{"records":[{"value":"last"}]}"#);
    let at = request.find("\r\n\r\n").unwrap() + 4;
    in_flight.write_all(&request.as_bytes()[..at]).unwrap();
    // The head in, the body not yet: the broker waits for it when the stop comes.
    std::thread::sleep(Duration::from_millis(100));
    let stopping = std::time::Instant::now();
    let mut broker = broker;
    let stopper = std::thread::spawn(move || {
        let code = broker.terminate();
        (code, broker)
    });
    assert_eq!(read_until_closed(&mut idle), "", "closed without an answer");
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "closed {:?} after the stop, long before the header clock's 60 s",
        stopping.elapsed()
    );
    in_flight.write_all(&request.as_bytes()[at..]).unwrap();
    // Answered, not dropped: stored, or refused as the broker refuses any produce once its
    // stop began (its partitions are closing).
    let answer = read_until_closed(&mut in_flight);
    let refused =
        answer.starts_with("HTTP/1.1 503 ") && answer.contains(r#""code":"shutting_down""#);
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") || refused,
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    let (code, _broker) = stopper.join().unwrap();
    assert_eq!(code, Some(0), "a clean stop");
}

/// What the lane leaves to hyper mid-connection is still answered, on the same connection:
/// a body past the lane's 16 KiB that arrives after its head, a head past 16 KiB, and a
/// request whose query refuses it before its body comes (answered at once, not after a
/// body that never arrives).
#[test]
fn requests_past_the_lanes_sizes_or_refused_before_their_body_are_answered() {
    let broker = common::TestBroker::start();
    create_topics(&broker, &["big"]);
    let write_in_two = |stream: &mut TcpStream, request: &str| {
        let at = request.find("\r\n\r\n").unwrap() + 4;
        stream.write_all(&request.as_bytes()[..at]).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        stream.write_all(&request.as_bytes()[at..]).unwrap();
    };

    let mut stream = connect(&broker.url);
    let value = "v".repeat(20 * 1024);
    write_in_two(
        &mut stream,
        &json("big", &format!(r#"{{"records":[{{"value":"{value}"}}]}}"#)),
    );
    let answer = read_answers(&mut stream, 1).remove(0);
    assert!(answer.contains(r#""offset":0"#), "{answer}");

    let mut stream = connect(&broker.url);
    let long_field = format!("X-Padding: {}\r\n", "p".repeat(17 * 1024));
    let request = produce(
        "big",
        "?acks=all",
        &long_field,
        r#"{"records":[{"value":1}]}"#,
    );
    stream.write_all(request.as_bytes()).unwrap();
    let answer = read_answers(&mut stream, 1).remove(0);
    assert!(answer.contains(r#""offset":1"#), "{answer}");

    let mut stream = connect(&broker.url);
    let refused = produce(
        "big",
        "?acks=bogus",
        "Content-Type: application/json\r\n",
        "{}",
    );
    let at = refused.find("\r\n\r\n").unwrap() + 4;
    stream.write_all(&refused.as_bytes()[..at]).unwrap();
    let answer = read_answers(&mut stream, 1).remove(0);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains("'acks' must be all, leader or none"),
        "{answer}"
    );
}
