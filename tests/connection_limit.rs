//! `connections_max`: connections past the limit wait in the accept queue and are served as
//! soon as another connection closes; the broker neither refuses nor crashes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn connect(url: &str) -> TcpStream {
    let addr = url.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Sends a keep-alive `GET /healthz` and reads the answer's status line.
fn healthz(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string())
}

#[test]
fn a_connection_past_connections_max_waits_until_one_closes() {
    let broker = common::TestBroker::start_with_config("[limits]\nconnections_max = 3\n");
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(&broker.url)).collect();
    for stream in &mut held {
        assert!(
            healthz(stream).unwrap().contains("200"),
            "each of the first three is served"
        );
    }
    // The fourth is accepted by the kernel but not by the broker: no answer while all three
    // permits are held.
    let mut fourth = connect(&broker.url);
    fourth
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let waited = healthz(&mut fourth);
    assert!(
        waited.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "a fourth connection must wait, got {waited:?}"
    );
    // Closing one lets the waiting connection in; its request is answered.
    drop(held.pop());
    fourth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = fourth.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "served after a slot freed"
    );
}
