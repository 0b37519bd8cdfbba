//! The header clock of one connection: `header_read_timeout_ms`, kept by one timer per
//! connection instead of one per request.
//!
//! hyper's own `header_read_timeout` boxes a fresh sleep for every request head it waits for,
//! registers it with the runtime's timer wheel and takes it out again once the head is in:
//! an allocation and two trips through the timer driver's lock on every request, about one
//! instruction in twenty of a single-record produce (`benches/profile/produce.sh`). Here a
//! connection counts its requests in flight and remembers when it last went quiet; one
//! watchdog per connection wakes at most once per `header_read_timeout_ms` and closes the
//! connection if it has been quiet that long.
//!
//! Invariants:
//! - A connection is *busy* from the moment a request's head is in until its answer is
//!   handed over whole: an answer of known length when the handler returns it, a streamed
//!   answer (server-sent events, NDJSON) when its last frame is taken. A busy connection is
//!   never closed by this clock (its body has the body clocks; a long-poll its own timeout).
//! - A connection that is not busy is *quiet* since the later of: its start, its last
//!   answer handed over, its last bytes written to the socket (a large answer still being
//!   written to a client that reads it keeps the connection).
//! - A connection quiet for `header_read_timeout_ms` is closed without an answer, as hyper
//!   closed it: so the same clock closes slow request heads and idle keep-alive connections.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::time::Instant;

/// One connection's clock (see the module's invariants).
#[derive(Debug)]
pub(super) struct HeadClock {
    /// When the connection started; the origin of `quiet_since_ms`.
    started: Instant,
    /// Requests in flight (see [`Busy`]).
    busy: AtomicU32,
    /// When the connection last went quiet or wrote, in ms since `started`.
    quiet_since_ms: AtomicU64,
}

impl HeadClock {
    pub(super) fn new() -> Arc<HeadClock> {
        Arc::new(HeadClock {
            started: Instant::now(),
            busy: AtomicU32::new(0),
            quiet_since_ms: AtomicU64::new(0),
        })
    }

    /// Marks the connection quiet as of now (if it is not busy; a busy one ignores it).
    pub(super) fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.quiet_since_ms.store(now, Ordering::Release);
    }

    /// A request whose head is in: the connection is busy until the guard drops.
    pub(super) fn enter(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// When to look again, or None when the connection has been quiet for `timeout`.
    fn next_look(&self, timeout: Duration, now: Instant) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return Some(now + timeout);
        }
        let quiet_since =
            self.started + Duration::from_millis(self.quiet_since_ms.load(Ordering::Acquire));
        let deadline = quiet_since + timeout;
        (deadline > now).then_some(deadline)
    }

    /// Resolves when the connection has been quiet for `timeout`; wakes at most once per
    /// `timeout` while it is not.
    pub(super) async fn quiet_for(&self, timeout: Duration) {
        let mut look = self.started + timeout;
        loop {
            tokio::time::sleep_until(look).await;
            match self.next_look(timeout, Instant::now()) {
                Some(next) => look = next,
                None => return,
            }
        }
    }

    /// The answer as handed to hyper: an answer of known length ends the request now; a
    /// streamed one carries `busy` until its last frame is taken.
    pub(super) fn hand_over(busy: Busy, response: Response) -> Response {
        if response.body().size_hint().exact().is_some() {
            drop(busy);
            return response;
        }
        response.map(|inner| Body::new(BusyBody { inner, _busy: busy }))
    }
}

/// A request in flight on its connection; the connection goes quiet when the last drops.
#[derive(Debug)]
pub(super) struct Busy(Arc<HeadClock>);

impl Drop for Busy {
    fn drop(&mut self) {
        // Quiet since now, written before the count drops so a watchdog that reads no
        // request in flight reads this time or a later one.
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A streamed answer, holding its request's [`Busy`] until hyper drops it (its end).
struct BusyBody {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for BusyBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket, marking its clock on every write that moves bytes.
pub(super) struct Watched<T> {
    io: T,
    clock: Arc<HeadClock>,
}

impl<T> Watched<T> {
    pub(super) fn new(io: T, clock: Arc<HeadClock>) -> Watched<T> {
        Watched { io, clock }
    }
}

impl<T: Read + Unpin> Read for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Watched<T> {
    fn wrote(&self, written: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            self.clock.touch();
        }
        written
    }
}

impl<T: Write + Unpin> Write for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(300);

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_due_after_the_timeout_and_not_before() {
        let clock = HeadClock::new();
        let start = clock.started;
        assert_eq!(clock.next_look(TIMEOUT, start), Some(start + TIMEOUT));
        assert_eq!(clock.next_look(TIMEOUT, start + TIMEOUT), None);
        tokio::time::advance(Duration::from_millis(200)).await;
        clock.touch();
        let now = Instant::now();
        assert_eq!(
            clock.next_look(TIMEOUT, now),
            Some(start + Duration::from_millis(500)),
            "a write moves the deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_never_due_and_goes_quiet_when_its_last_request_ends() {
        let clock = HeadClock::new();
        let first = clock.enter();
        let second = clock.enter();
        tokio::time::advance(TIMEOUT * 5).await;
        let now = Instant::now();
        assert_eq!(clock.next_look(TIMEOUT, now), Some(now + TIMEOUT));
        drop(first);
        assert_eq!(
            clock.next_look(TIMEOUT, now),
            Some(now + TIMEOUT),
            "one left"
        );
        drop(second);
        assert_eq!(
            clock.next_look(TIMEOUT, now),
            Some(now + TIMEOUT),
            "quiet now"
        );
        assert_eq!(clock.next_look(TIMEOUT, now + TIMEOUT), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_answer_keeps_the_connection_busy_until_it_is_dropped() {
        let clock = HeadClock::new();
        let sized = HeadClock::hand_over(clock.enter(), Response::new(Body::from("done")));
        assert_eq!(clock.busy.load(Ordering::Acquire), 0, "known length: over");
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stream = tokio_stream_of(rx);
        let streamed =
            HeadClock::hand_over(clock.enter(), Response::new(Body::from_stream(stream)));
        assert_eq!(
            clock.busy.load(Ordering::Acquire),
            1,
            "streamed: still busy"
        );
        drop(tx);
        drop(streamed);
        assert_eq!(clock.busy.load(Ordering::Acquire), 0);
        drop(sized);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_wakes_once_per_timeout_while_writes_keep_coming() {
        let clock = HeadClock::new();
        let watchdog = tokio::spawn({
            let clock = Arc::clone(&clock);
            async move { clock.quiet_for(TIMEOUT).await }
        });
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(100)).await;
            clock.touch();
        }
        assert!(!watchdog.is_finished(), "written every 100 ms");
        tokio::time::advance(TIMEOUT).await;
        tokio::time::timeout(Duration::from_secs(1), watchdog)
            .await
            .expect("due once quiet for the timeout")
            .unwrap();
    }

    /// A stream of the receiver's items.
    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
