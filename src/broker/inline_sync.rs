//! When a partition's fsync runs on the runtime worker that asked for it.
//!
//! The flusher hands its fsync to tokio's blocking pool by default: the runtime keeps
//! serving while the disk works, however slow the disk is. That hand-off costs, per fsync
//! round, a wake-up of a pool thread and, when the sync is done, a wake-up of a worker to run
//! the flusher again: thread switches that, with single-record `acks=all` produce, cost more
//! than the rest of the round (README, "Beside Redis Streams").
//!
//! So a round runs its `fdatasync` on the worker itself, as Redis runs its AOF fsync on its
//! one thread, when all of these hold:
//! - the runtime has at least two workers, and fewer than half of them are in an inline sync
//!   (the others keep serving the network, timers and the cluster's heartbeats);
//! - the round syncs only the active segment's file, one `fdatasync` (a round after a roll
//!   also trims indexes and syncs the directory: that goes to the pool);
//! - no such round (inline or on the pool) took [`SLOW_INLINE`] or longer in the last
//!   [`SLOW_BACKOFF`]: a struggling disk sends every round back to the pool, where a stall
//!   blocks no worker, and keeps them there while it stays slow. The first slow sync still
//!   stops one worker for as long as it takes.
//!
//! The answer to a producer still comes after its fsync either way: only the thread that
//! runs the sync differs.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// An inline sync at least this long sends rounds back to the pool for [`SLOW_BACKOFF`].
pub const SLOW_INLINE: Duration = Duration::from_millis(20);
/// How long a slow inline sync keeps rounds on the pool.
pub const SLOW_BACKOFF: Duration = Duration::from_secs(10);

/// Workers inside an inline sync right now.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
/// When the last slow inline sync ended, in nanoseconds after [`epoch`] plus one (0: never).
static SLOW_AT: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// How many inline syncs may run at once on a runtime of `workers` workers: none on one
/// worker, else up to half of them.
pub fn limit(workers: usize) -> usize {
    if workers < 2 { 0 } else { workers / 2 }
}

/// Whether a slow inline sync that ended `since_slow` ago (None: none ever did) still keeps
/// rounds on the pool.
pub fn backed_off(since_slow: Option<Duration>) -> bool {
    since_slow.is_some_and(|d| d < SLOW_BACKOFF)
}

/// The workers of the current multi-thread runtime; 0 outside one (a current-thread runtime
/// has one thread, which an inline sync would stop).
fn workers() -> usize {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            h.metrics().num_workers()
        }
        _ => 0,
    }
}

fn since_slow() -> Option<Duration> {
    match SLOW_AT.load(Ordering::Relaxed) {
        0 => None,
        at => Some(
            epoch()
                .elapsed()
                .saturating_sub(Duration::from_nanos(at - 1)),
        ),
    }
}

/// Whether a round may try to run inline at all: checked before it takes its plan, so a round
/// that will go to the pool does not yield first.
pub fn worth_trying() -> bool {
    let limit = limit(workers());
    limit > 0 && RUNNING.load(Ordering::Relaxed) < limit && !backed_off(since_slow())
}

/// A worker's place in an inline sync; the place is given back on drop.
#[derive(Debug)]
pub struct Slot {
    _private: (),
}

impl Slot {
    /// Takes a place when fewer than the limit run and no slow sync keeps rounds on the pool.
    pub fn take() -> Option<Slot> {
        let limit = limit(workers());
        if limit == 0 || backed_off(since_slow()) {
            return None;
        }
        RUNNING
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot { _private: () })
    }
}

/// Records how long a round of one `fdatasync` took, on a worker (`on_worker`) or on the pool:
/// a slow one keeps rounds on the pool for [`SLOW_BACKOFF`] from now. Rounds on the pool count
/// too, so a disk that stays slow keeps them there, and they come back to the workers
/// [`SLOW_BACKOFF`] after it recovered.
pub fn observed(took: Duration, on_worker: bool) {
    if took < SLOW_INLINE {
        return;
    }
    let at = epoch().elapsed().as_nanos() as u64;
    SLOW_AT.store(at.saturating_add(1), Ordering::Relaxed);
    if on_worker {
        tracing::warn!(
            seconds = took.as_secs_f64(),
            backoff_s = SLOW_BACKOFF.as_secs(),
            "slow fsync on a runtime worker: fsyncs go to the blocking pool for a while"
        );
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_of_one_worker_never_syncs_inline_and_more_keep_half_free() {
        assert_eq!(limit(0), 0);
        assert_eq!(limit(1), 0);
        assert_eq!(limit(2), 1);
        assert_eq!(limit(3), 1);
        assert_eq!(limit(8), 4);
    }

    #[test]
    fn a_slow_inline_sync_keeps_rounds_on_the_pool_for_the_backoff() {
        assert!(!backed_off(None));
        assert!(backed_off(Some(Duration::ZERO)));
        assert!(backed_off(Some(SLOW_BACKOFF - Duration::from_millis(1))));
        assert!(!backed_off(Some(SLOW_BACKOFF)));
    }

    #[test]
    fn a_current_thread_runtime_takes_no_slot() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(!worth_trying());
            assert!(Slot::take().is_none());
        });
        assert!(Slot::take().is_none(), "outside a runtime");
    }

    #[test]
    fn a_two_worker_runtime_gives_one_slot_at_a_time() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            // Other tests in this binary may hold the slot for a moment, or have backed
            // inline syncs off with a slow one: wait for it, within a bound.
            let deadline = Instant::now() + SLOW_BACKOFF * 3;
            let _first = loop {
                if let Some(slot) = Slot::take() {
                    break slot;
                }
                assert!(Instant::now() < deadline, "the slot never came free");
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            assert!(Slot::take().is_none(), "one of two workers at most");
        });
    }
}
