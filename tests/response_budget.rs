//! `response_bytes_in_flight_max`: clients that ask for big pages and never read them hold
//! the response budget (not unbounded memory); past it, a page is refused with a 503 and
//! `Retry-After`, health checks and small pages are still served, and the budget comes back
//! when those clients go.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::{Api, TestBroker};
use serde_json::json;

/// Each page reserves its `max_bytes` (16 MiB) to read, then settles to what it rendered
/// (about 12 MB): two settled pages leave less than a third needs.
const BUDGET_BYTES: u64 = 32 * 1024 * 1024;
const IN_FLIGHT: &str = "tidelog_responses_in_flight_bytes";
/// A page of every record: twelve of about 1 MB.
/// Larger than what the kernel buffers for a connection that is not read (`tcp_wmem` lets a
/// send buffer grow to 4 MiB), so most of each page stays in the broker.
const BIG_PAGE: &str = "/v1/topics/t/partitions/0/records?offset=0&max_bytes=16777216";

/// A client that asks for a big page and never reads it: a tiny receive buffer, so the
/// answer stays on the broker's side.
fn stalled_client(url: &str, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(url.trim_start_matches("http://")).expect("connect");
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket and a pointer to a c_int of the given length.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVBUF");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    stream
}

impl Api {
    async fn in_flight(&self) -> f64 {
        common::scrape_unlabelled_metric(&self.http, &self.url, IN_FLIGHT).await
    }
}

#[test]
fn clients_that_never_read_hold_the_budget_and_give_it_back_when_they_go() {
    let broker = TestBroker::start_with_config(&format!(
        "[limits]\nresponse_bytes_in_flight_max = {BUDGET_BYTES}\n"
    ));
    let api = Api::new(&broker);
    common::runtime().block_on(async {
        common::create_topic(&api.http, &api.url, "t", 1).await;
        let value = "v".repeat(1_000_000);
        let records: Vec<_> = (0..12).map(|_| json!({ "value": value })).collect();
        common::produce_json_acks_all(&api.http, &api.url, "t", json!(records)).await;

        let stalled: Vec<TcpStream> = (0..2).map(|_| stalled_client(&api.url, BIG_PAGE)).collect();
        common::wait_until(
            "two unread pages to hold their bytes",
            Duration::from_secs(20),
            || async { api.in_flight().await >= 23_000_000.0 },
        )
        .await;

        let joined = api
            .http
            .post(format!("{}/v1/groups/g/members", api.url))
            .json(&json!({"topics": ["t"]}))
            .send()
            .await
            .expect("the broker answers");
        assert_eq!(joined.status(), 201);
        let member: serde_json::Value = joined.json().await.expect("JSON");
        let member_page = format!(
            "/v1/groups/g/members/{}/records?max_bytes=16777216",
            member["member_id"].as_str().expect("a member id")
        );
        for path in [
            BIG_PAGE,
            "/v1/topics/t/partitions/0/stream?offset=0&max_bytes=16777216",
            &member_page,
        ] {
            common::assert_get_overloaded(
                &api.http,
                &api.url,
                path,
                "response_bytes_in_flight_max",
            )
            .await;
        }
        common::get_json_ok(&api.http, &api.url, "/healthz").await;
        let small = "/v1/topics/t/partitions/0/records?offset=0&max_bytes=65536";
        common::get_json_ok(&api.http, &api.url, small).await;

        drop(stalled);
        common::wait_until(
            "the budget to come back",
            Duration::from_secs(20),
            || async { api.in_flight().await == 0.0 },
        )
        .await;
        let page = common::get_json_ok(&api.http, &api.url, BIG_PAGE).await;
        assert_eq!(page["records"].as_array().expect("records").len(), 12);
    });
}
