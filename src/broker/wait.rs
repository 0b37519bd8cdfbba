//! Waiting for records: the one primitive behind long-polls, SSE streams and group member
//! fetches.
//!
//! A waiter first takes a [`WaitSlot`] (one of `long_polls_max` or `streams_max`), then
//! awaits [`Broker::wait_for_records`] as often as it likes while it holds the slot. The slot
//! owns the waiting gauge and the permit: both are given back when it drops, which happens
//! however the waiter ends (answered, timed out, or its future dropped because the client
//! went away). Nothing is raised before an `.await` and lowered after it.
//!
//! Invariants:
//! - A wait is woken by the partitions' `watch` channels (the flusher's one send per fsync),
//!   by shutdown, or by its deadline; never by a timer tick. Without progress a waiter makes
//!   no wake-ups at all.
//! - Long-polls and streams each have their own bound, so idle waiters cannot take every
//!   connection from producers; past it a waiter is refused at once
//!   ([`BrokerError::Overloaded`]), never queued.
//!
//! Failure policy: a long-poll on a failed partition waits out its deadline (answering at
//! once would spin the client in a tight loop, since the high watermark never moves again);
//! a stream is woken by the failure so it can tell its client and end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::partition::{Partition, Progress};
use super::{Broker, BrokerError};
use crate::limits::{Limit, Limits};
use crate::log::Offset;
use crate::metrics as m;

/// Who waits; decides the bound, the gauge and what ends the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitKind {
    /// A fetch with `wait_ms` or a group member fetch: ends at its deadline; a failed
    /// partition does not end it.
    LongPoll,
    /// An SSE stream: holds its slot for its whole life; a failed partition ends its wait.
    Stream,
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// A partition's high watermark passed the offset waited for.
    Records,
    /// A partition stopped taking writes (streams only): no record will come.
    Failed,
    /// The broker began shutdown.
    Shutdown,
    /// The deadline passed.
    Deadline,
}

/// The bounds on waiters, one semaphore per [`WaitKind`]; a field of [`Broker`].
#[derive(Debug)]
pub struct Waiters {
    /// `long_polls_max` permits; held only while a long-poll waits.
    long_polls: Arc<Semaphore>,
    long_polls_max: u32,
    /// `streams_max` permits; held for an SSE stream's whole life.
    streams: Arc<Semaphore>,
    streams_max: u32,
}

impl Waiters {
    pub fn new(limits: &Limits) -> Waiters {
        Waiters {
            long_polls: Arc::new(Semaphore::new(limits.long_polls_max as usize)),
            long_polls_max: limits.long_polls_max,
            streams: Arc::new(Semaphore::new(limits.streams_max as usize)),
            streams_max: limits.streams_max,
        }
    }
}

/// A waiter's place: a permit of its kind's bound and one count in its gauge, both given
/// back on drop.
#[derive(Debug)]
pub struct WaitSlot {
    kind: WaitKind,
    /// Returned to the semaphore on drop.
    _permit: OwnedSemaphorePermit,
}

impl WaitSlot {
    pub fn kind(&self) -> WaitKind {
        self.kind
    }

    fn gauge(kind: WaitKind) -> &'static str {
        match kind {
            WaitKind::LongPoll => m::LONG_POLLS_WAITING,
            WaitKind::Stream => m::SSE_STREAMS_OPEN,
        }
    }
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        ::metrics::gauge!(WaitSlot::gauge(self.kind)).decrement(1.0);
    }
}

impl Broker {
    /// Takes a waiter's slot, or refuses with `Overloaded` when `long_polls_max` or
    /// `streams_max` waiters already hold theirs.
    pub fn wait_slot(&self, kind: WaitKind) -> Result<WaitSlot, BrokerError> {
        let waiters = &self.waiters;
        let (semaphore, limit_name, limit) = match kind {
            WaitKind::LongPoll => (
                &waiters.long_polls,
                Limit::LongPollsMax,
                waiters.long_polls_max,
            ),
            WaitKind::Stream => (&waiters.streams, Limit::StreamsMax, waiters.streams_max),
        };
        let permit =
            Arc::clone(semaphore)
                .try_acquire_owned()
                .map_err(|_| BrokerError::Overloaded {
                    limit_name,
                    limit: u64::from(limit),
                })?;
        ::metrics::gauge!(WaitSlot::gauge(kind)).increment(1.0);
        Ok(WaitSlot {
            kind,
            _permit: permit,
        })
    }

    /// Waits until the high watermark of `partition` passes `offset` (records at or past it
    /// become visible), or shutdown, or `deadline`; a stream also wakes on failure.
    pub async fn wait_for_records(
        &self,
        slot: &WaitSlot,
        partition: &Partition,
        offset: Offset,
        deadline: Option<Instant>,
    ) -> Woken {
        let targets = [(partition.subscribe(), offset)];
        wait_any(slot.kind, targets, self.shutdown_signal(), deadline).await
    }

    /// Waits until any of `targets` (partition, offset) has records at or past its offset;
    /// otherwise as [`Broker::wait_for_records`].
    pub async fn wait_for_any_records<'a>(
        &self,
        slot: &WaitSlot,
        targets: impl IntoIterator<Item = (&'a Partition, Offset)>,
        deadline: Option<Instant>,
    ) -> Woken {
        let targets: Vec<_> = targets
            .into_iter()
            .map(|(p, offset)| (p.subscribe(), offset))
            .collect();
        wait_any(slot.kind, targets, self.shutdown_signal(), deadline).await
    }
}

type ProgressWait = Pin<Box<dyn Future<Output = Woken> + Send>>;

/// The primitive: the first of any target's progress, shutdown, or the deadline.
async fn wait_any(
    kind: WaitKind,
    targets: impl IntoIterator<Item = (watch::Receiver<Progress>, Offset)>,
    mut shutdown: watch::Receiver<bool>,
    deadline: Option<Instant>,
) -> Woken {
    let waits: Vec<ProgressWait> = targets
        .into_iter()
        .map(|(rx, offset)| Box::pin(progress_past(kind, rx, offset)) as ProgressWait)
        .collect();
    let any_progress = async move {
        if waits.is_empty() {
            std::future::pending().await
        } else {
            futures_util::future::select_all(waits).await.0
        }
    };
    let deadline = async move {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        woken = any_progress => woken,
        _ = shutdown.wait_for(|s| *s) => Woken::Shutdown,
        () = deadline => Woken::Deadline,
    }
}

/// One partition's part of a wait: records past `offset` (or, for a stream, a failure).
async fn progress_past(kind: WaitKind, mut rx: watch::Receiver<Progress>, offset: Offset) -> Woken {
    let ends_on_failure = kind == WaitKind::Stream;
    let seen = rx
        .wait_for(|p| p.high_watermark > offset || p.deleted || (ends_on_failure && p.failed))
        .await
        .map(|p| *p);
    match seen {
        Ok(p) if p.high_watermark > offset => Woken::Records,
        Ok(_) => Woken::Failed,
        // The partition is gone (dropped): a stream ends, a long-poll waits out its deadline
        // as on a failed partition. A deletion wakes both first, through `deleted`.
        Err(_) if ends_on_failure => Woken::Failed,
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Duration;

    use super::*;

    /// Counts wake-ups, so a test can see a waiter that nobody woke.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn progress(high_watermark: u64, failed: bool) -> Progress {
        Progress {
            log_start_offset: Offset(0),
            fsynced_offset: Offset(high_watermark),
            high_watermark: Offset(high_watermark),
            failed,
            deleted: false,
        }
    }

    /// The SSE wait has no tick: an hour without progress is no wake-up at all; the flusher's
    /// send wakes it once.
    #[tokio::test(start_paused = true)]
    async fn a_stream_wait_wakes_only_on_progress() {
        let (progress_tx, progress_rx) = watch::channel(progress(5, false));
        let (_shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut wait = Box::pin(wait_any(
            WaitKind::Stream,
            [(progress_rx, Offset(5))],
            shutdown_rx,
            None,
        ));
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        for _ in 0..60 {
            tokio::time::advance(Duration::from_secs(60)).await;
        }
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            0,
            "woken without progress"
        );
        progress_tx.send_replace(progress(6, false));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(Woken::Records));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_on_a_failed_partition_waits_out_its_deadline() {
        let (progress_tx, progress_rx) = watch::channel(progress(5, false));
        let (_shutdown_tx, shutdown_rx) = watch::channel(false);
        let deadline = Instant::now() + Duration::from_secs(2);
        let wait = tokio::spawn(wait_any(
            WaitKind::LongPoll,
            [(progress_rx, Offset(5))],
            shutdown_rx,
            Some(deadline),
        ));
        progress_tx.send_replace(progress(5, true));
        assert_eq!(wait.await.unwrap(), Woken::Deadline);
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_wakes_on_failure_and_any_target_wakes_a_wait_on_several() {
        let (_a_tx, a_rx) = watch::channel(progress(1, false));
        let (b_tx, b_rx) = watch::channel(progress(1, false));
        let (_shutdown_tx, shutdown_rx) = watch::channel(false);
        let wait = tokio::spawn(wait_any(
            WaitKind::Stream,
            [(a_rx, Offset(1)), (b_rx, Offset(1))],
            shutdown_rx,
            None,
        ));
        b_tx.send_replace(progress(1, true));
        assert_eq!(wait.await.unwrap(), Woken::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_wait() {
        let (_tx, rx) = watch::channel(progress(0, false));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let wait = tokio::spawn(wait_any(
            WaitKind::LongPoll,
            [(rx, Offset(0))],
            shutdown_rx,
            None,
        ));
        shutdown_tx.send_replace(true);
        assert_eq!(wait.await.unwrap(), Woken::Shutdown);
    }
}
