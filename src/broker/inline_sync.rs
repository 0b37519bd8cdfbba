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
//! - no such round's sync (inline or on the pool, the sync itself timed, not the wait for a
//!   pool thread) took [`SLOW_INLINE`] or longer in the last [`SLOW_BACKOFF`]: a struggling
//!   disk sends every round back to the pool, where a stall blocks no worker, and keeps them
//!   there while it stays slow. The first slow sync still stops one worker for as long as it
//!   takes.
//! - the flusher yielded just before (see `Partition::flush_now`): the tasks it woke last are
//!   then run, not left in the worker's LIFO slot, which no other worker can take them from.
//!
//! The answer to a producer still comes after its fsync either way: only the thread that
//! runs the sync differs.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A sync at least this long sends rounds back to the pool for [`SLOW_BACKOFF`].
pub const SLOW_INLINE: Duration = Duration::from_millis(20);
/// How long a slow sync keeps rounds on the pool.
pub const SLOW_BACKOFF: Duration = Duration::from_secs(10);

/// The broker's one gate (process-wide: the runtime's workers are).
static GATE: Gate = Gate::new();

/// `fsync_on_workers` of the config (process-wide, set when a node starts; on by default).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Sets `fsync_on_workers`: off, every round goes to the pool.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// How many inline syncs may run at once on a runtime of `workers` workers: none on one
/// worker, else up to half of them.
pub fn limit(workers: usize) -> usize {
    if workers < 2 { 0 } else { workers / 2 }
}

/// Whether a slow sync that ended `since_slow` ago (None: none ever did) still keeps rounds
/// on the pool.
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

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Whether a round may try to run inline at all: checked before it yields and takes its plan.
pub fn worth_trying() -> bool {
    ENABLED.load(Ordering::Relaxed) && GATE.worth_trying(workers())
}

/// Takes a place for an inline sync (see [`Gate::take`]).
pub fn take() -> Option<Slot<'static>> {
    GATE.take(workers())
}

/// Records how long a round's sync took (see [`Gate::observed`]).
pub fn observed(took: Duration, on_worker: bool) {
    GATE.observed(took, on_worker);
}

/// Who is inside an inline sync, and when a sync was last slow.
#[derive(Debug)]
pub struct Gate {
    /// Workers inside an inline sync right now.
    running: AtomicUsize,
    /// When the last slow sync ended, in nanoseconds after [`epoch`] plus one (0: never).
    slow_at: AtomicU64,
}

impl Gate {
    pub const fn new() -> Gate {
        Gate {
            running: AtomicUsize::new(0),
            slow_at: AtomicU64::new(0),
        }
    }

    fn since_slow(&self) -> Option<Duration> {
        match self.slow_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(
                epoch()
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(at - 1)),
            ),
        }
    }

    /// Whether a round on a runtime of `workers` workers may try to run inline.
    pub fn worth_trying(&self, workers: usize) -> bool {
        let limit = limit(workers);
        limit > 0 && self.running.load(Ordering::Relaxed) < limit && !backed_off(self.since_slow())
    }

    /// A place in an inline sync, when fewer than the limit run and no slow sync keeps rounds
    /// on the pool.
    pub fn take(&self, workers: usize) -> Option<Slot<'_>> {
        if !self.worth_trying(workers) {
            return None;
        }
        let limit = limit(workers);
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot { gate: self })
    }

    /// Records how long a round's one `fdatasync` took, on a worker (`on_worker`) or on the
    /// pool: a slow one keeps rounds on the pool for [`SLOW_BACKOFF`] from now. Rounds on the
    /// pool count too, so a disk that stays slow keeps them there, and they come back to the
    /// workers [`SLOW_BACKOFF`] after it recovered.
    pub fn observed(&self, took: Duration, on_worker: bool) {
        if took < SLOW_INLINE {
            return;
        }
        let at = epoch().elapsed().as_nanos() as u64;
        self.slow_at
            .fetch_max(at.saturating_add(1), Ordering::Relaxed);
        if on_worker {
            tracing::warn!(
                seconds = took.as_secs_f64(),
                backoff_s = SLOW_BACKOFF.as_secs(),
                "slow fsync on a runtime worker: fsyncs go to the blocking pool for a while"
            );
        }
    }
}

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

/// A worker's place in an inline sync; the place is given back on drop.
#[derive(Debug)]
pub struct Slot<'a> {
    gate: &'a Gate,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.gate.running.fetch_sub(1, Ordering::AcqRel);
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
    fn a_slow_sync_keeps_rounds_on_the_pool_for_the_backoff() {
        assert!(!backed_off(None));
        assert!(backed_off(Some(Duration::ZERO)));
        assert!(backed_off(Some(SLOW_BACKOFF - Duration::from_millis(1))));
        assert!(!backed_off(Some(SLOW_BACKOFF)));
    }

    #[test]
    fn outside_a_multi_thread_runtime_no_round_syncs_inline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(workers(), 0);
            assert!(!worth_trying());
            assert!(take().is_none());
        });
        assert_eq!(workers(), 0, "outside a runtime");
    }

    #[test]
    fn places_are_limited_given_back_and_refused_after_a_slow_sync() {
        let gate = Gate::new();
        assert!(gate.take(1).is_none(), "one worker: never");
        assert!(gate.worth_trying(4));
        let first = gate.take(4).expect("a place");
        let second = gate.take(4).expect("a second of four workers");
        assert!(!gate.worth_trying(4));
        assert!(gate.take(4).is_none(), "half of four at most");
        drop(first);
        let third = gate.take(4).expect("a place given back is taken again");
        drop((second, third));
        gate.observed(SLOW_INLINE - Duration::from_micros(1), false);
        assert!(gate.take(4).is_some(), "a fast sync changes nothing");
        gate.observed(SLOW_INLINE, false);
        assert!(!gate.worth_trying(4));
        assert!(
            gate.take(4).is_none(),
            "a slow sync on the pool backs off too"
        );
    }
}
