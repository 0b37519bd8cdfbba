//! End-to-end latency: single-record produces sent at a fixed rate, each record's value the
//! microseconds since the run's start at which it was sent, read back by one consumer on the
//! same partition (a long-poll loop or an SSE stream). A record's latency is when the
//! consumer saw it minus when it was sent: the produce, its acknowledgement path up to the
//! high watermark (on a cluster: the followers' fetch and fsync) and the consumer's wake-up.
//!
//! The producer is open-loop: a send is due every `1 / rate` seconds whatever the answers
//! (tokio's timer wakes at most once per millisecond, so sends go out in small bursts), with
//! at most [`IN_FLIGHT_MAX`] requests outstanding. Before the measurement a few warm-up
//! records are sent and the run waits until the consumer has seen them, so the consumer is
//! connected and waiting when the measured records start.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{ClientTally, Run, http_client, micros};

/// Records sent (one at a time) before the measured ones; the consumer ignores them.
const WARMUP_RECORDS: u64 = 10;
/// Most produce requests outstanding at once; past it the producer waits (and falls behind
/// its rate, which the report shows).
const IN_FLIGHT_MAX: usize = 512;
/// How long the run waits for the consumer to see the warm-up records, and after the last
/// send for it to see every acknowledged record.
const SETTLE_MAX: Duration = Duration::from_secs(15);
/// A long-poll's `wait_ms`.
const LONG_POLL_WAIT_MS: u64 = 1000;

/// How the consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// `GET .../records?offset=N&wait_ms=...` in a loop.
    LongPoll,
    /// One `GET .../stream?offset=0` (server-sent events).
    Sse,
}

impl Consumer {
    pub fn as_str(self) -> &'static str {
        match self {
            Consumer::LongPoll => "poll",
            Consumer::Sse => "sse",
        }
    }

    pub fn parse(s: &str) -> Option<Consumer> {
        match s {
            "poll" => Some(Consumer::LongPoll),
            "sse" => Some(Consumer::Sse),
            _ => None,
        }
    }
}

/// What the consumer task shares with the run.
struct Seen {
    /// Offsets below this were seen (records arrive in offset order on one partition).
    next_offset: AtomicU64,
    /// End-to-end latencies of the measured records, in microseconds.
    latencies_us: std::sync::Mutex<Vec<u32>>,
}

/// Produces at `rate` records/s to `produce_url` (a fresh topic's records URL with its
/// `acks`) for `duration`, while a consumer reads `partition_url` (`.../partitions/0`).
pub async fn run(
    produce_url: &str,
    partition_url: &str,
    consumer: Consumer,
    rate: u32,
    duration: Duration,
) -> Run {
    let epoch = Instant::now();
    let seen = Arc::new(Seen {
        next_offset: AtomicU64::new(0),
        latencies_us: std::sync::Mutex::new(Vec::new()),
    });
    let (stop, stopped) = watch::channel(false);
    let reader = tokio::spawn(consume(
        partition_url.to_string(),
        consumer,
        epoch,
        Arc::clone(&seen),
        stopped,
    ));
    let client = http_client(64);
    let mut warmup = ClientTally::default();
    for _ in 0..WARMUP_RECORDS {
        send_one(&client, produce_url, epoch, &mut warmup).await;
    }
    let warm = wait_until(|| seen.next_offset.load(Ordering::Acquire) >= WARMUP_RECORDS).await;
    let mut run = if warm && warmup.errors == 0 {
        produce_at_rate(&client, produce_url, epoch, rate, duration).await
    } else {
        Run {
            errors: warmup.errors.max(1),
            first_error: Some(
                warmup
                    .first_error
                    .unwrap_or_else(|| "the consumer never saw the warm-up records".into()),
            ),
            ..Run::default()
        }
    };
    let end = WARMUP_RECORDS + run.records;
    let caught_up = wait_until(|| seen.next_offset.load(Ordering::Acquire) >= end).await;
    let _ = stop.send(true);
    if let Err(e) = reader.await.unwrap_or(Ok(())) {
        run.errors += 1;
        run.first_error.get_or_insert(format!("consumer: {e}"));
    }
    let seen_end = seen.next_offset.load(Ordering::Acquire);
    if !caught_up {
        run.missing = end.saturating_sub(seen_end);
    }
    // The produce answers' latencies become the ack figures; the run's own latencies (and
    // records) are what the consumer saw.
    run.ack_latencies_us = std::mem::take(&mut run.latencies_us);
    let mut latencies =
        std::mem::take(&mut *seen.latencies_us.lock().unwrap_or_else(|e| e.into_inner()));
    latencies.sort_unstable();
    run.records = latencies.len() as u64;
    run.bytes = 0;
    run.latencies_us = latencies;
    run
}

/// Polls `done` every millisecond until it holds (true) or [`SETTLE_MAX`] passes (false).
async fn wait_until(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + SETTLE_MAX;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// The open-loop producer: send `i` is due at `i / rate` seconds after the start.
async fn produce_at_rate(
    client: &reqwest::Client,
    url: &str,
    epoch: Instant,
    rate: u32,
    duration: Duration,
) -> Run {
    let period = Duration::from_secs(1) / rate.max(1);
    let sends = (duration.as_secs_f64() * f64::from(rate)).ceil() as u64;
    let started = tokio::time::Instant::now();
    let mut in_flight = JoinSet::new();
    let mut tally = ClientTally::default();
    let mut behind_ms_max = 0u32;
    for i in 0..sends {
        let due = started + period * i as u32;
        tokio::time::sleep_until(due).await;
        while in_flight.len() >= IN_FLIGHT_MAX {
            if let Some(Ok(t)) = in_flight.join_next().await {
                absorb(&mut tally, t);
            }
        }
        behind_ms_max = behind_ms_max.max(micros(due.elapsed()) / 1000);
        let (client, url) = (client.clone(), url.to_string());
        in_flight.spawn(async move {
            let mut t = ClientTally::default();
            send_one(&client, &url, epoch, &mut t).await;
            t
        });
    }
    let elapsed = started.elapsed();
    while let Some(t) = in_flight.join_next().await {
        if let Ok(t) = t {
            absorb(&mut tally, t);
        }
    }
    let mut run = super::merge(vec![tally], elapsed);
    run.behind_ms_max = Some(behind_ms_max);
    run
}

fn absorb(into: &mut ClientTally, t: ClientTally) {
    into.requests += t.requests;
    into.records += t.records;
    into.bytes += t.bytes;
    into.errors += t.errors;
    if into.first_error.is_none() {
        into.first_error = t.first_error;
    }
    into.latencies_us.extend(t.latencies_us);
}

/// One single-record produce whose value is the send time; counted in `tally`.
async fn send_one(client: &reqwest::Client, url: &str, epoch: Instant, tally: &mut ClientTally) {
    let sent = Instant::now();
    let body = format!(
        "{{\"records\":[{{\"value\":{}}}]}}",
        sent.duration_since(epoch).as_micros()
    );
    let len = body.len() as u64;
    let outcome = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let answered = match outcome {
        Ok(r) if r.status().is_success() => r.bytes().await.map_err(|e| e.to_string()),
        Ok(r) => Err(format!("HTTP {}", r.status())),
        Err(e) => Err(e.to_string()),
    };
    match answered {
        Ok(_) => tally.answered(sent.elapsed(), 1, len),
        Err(e) => tally.failed(e),
    }
}

/// Reads the partition from offset 0 until told to stop, recording each measured record's
/// latency. Returns an error only for a failure that ended the consumer early.
async fn consume(
    partition_url: String,
    consumer: Consumer,
    epoch: Instant,
    seen: Arc<Seen>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), String> {
    let reading = async {
        match consumer {
            Consumer::LongPoll => long_poll(&partition_url, epoch, &seen).await,
            Consumer::Sse => sse(&partition_url, epoch, &seen).await,
        }
    };
    tokio::select! {
        result = reading => result,
        _ = stopped.wait_for(|s| *s) => Ok(()),
    }
}

/// Counts one record the consumer saw at `offset` with `value` (its send time).
fn saw(seen: &Seen, epoch: Instant, offset: u64, value: Option<u64>) {
    if offset >= WARMUP_RECORDS
        && let Some(sent_us) = value
    {
        let now_us = epoch.elapsed().as_micros() as u64;
        let latency = now_us.saturating_sub(sent_us).min(u64::from(u32::MAX)) as u32;
        seen.latencies_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(latency);
    }
    seen.next_offset.fetch_max(offset + 1, Ordering::AcqRel);
}

async fn long_poll(partition_url: &str, epoch: Instant, seen: &Seen) -> Result<(), String> {
    // No overall timeout: a long-poll's own wait bounds each request.
    let client = http_client(1);
    let mut offset = 0u64;
    loop {
        let url = format!(
            "{partition_url}/records?offset={offset}&max_records=1000&wait_ms={LONG_POLL_WAIT_MS}"
        );
        let response = client.get(&url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("long-poll: HTTP {}", response.status()));
        }
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        for record in body["records"].as_array().into_iter().flatten() {
            if let Some(o) = record["offset"].as_u64() {
                saw(seen, epoch, o, record["value"].as_u64());
            }
        }
        offset = body["next_offset"]
            .as_u64()
            .ok_or("long-poll answer without next_offset")?;
    }
}

async fn sse(partition_url: &str, epoch: Instant, seen: &Seen) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(format!("{partition_url}/stream?offset=0"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("SSE: HTTP {}", response.status()));
    }
    let mut body = response.bytes_stream();
    let mut buffer: VecDeque<u8> = VecDeque::new();
    while let Some(chunk) = body.next().await {
        buffer.extend(chunk.map_err(|e| e.to_string())?.iter());
        while let Some(event) = next_event(&mut buffer) {
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            let record: Value = serde_json::from_str(data.trim()).map_err(|e| e.to_string())?;
            if let Some(o) = record["offset"].as_u64() {
                saw(seen, epoch, o, record["value"].as_u64());
            }
        }
    }
    Err("the SSE stream ended".into())
}

/// Takes one complete event (up to a blank line) off the front of `buffer`.
fn next_event(buffer: &mut VecDeque<u8>) -> Option<String> {
    let bytes = buffer.make_contiguous();
    let end = bytes.windows(2).position(|w| w == b"\n\n")?;
    let event = String::from_utf8_lossy(&bytes[..end]).into_owned();
    buffer.drain(..end + 2);
    Some(event)
}
