//! Member sessions: every member call is a heartbeat; this task removes members whose session
//! ran out and rebalances their groups, notices partition expansion and refreshes lag gauges.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::coordinator::GroupCoordinator;
use super::views::plan_lag;

/// Debug builds only: set in the environment, the session task panics on its first pass, so
/// a test can check that a panicked background task stops the process (`node`'s panic hook).
#[cfg(debug_assertions)]
pub const DEBUG_PANIC_IN_SESSIONS_ENV: &str = "TIDELOG_DEBUG_PANIC_IN_SESSIONS";

/// The session task wakes at least this often (expansion checks, lag gauges).
const SESSION_TICK: Duration = Duration::from_secs(1);

/// The session task: wakes at the earliest deadline (at least every [`SESSION_TICK`]) and
/// expires members. Ends at shutdown. Driven by tokio time, so tests run it with paused time.
pub async fn run_sessions(groups: Arc<GroupCoordinator>) {
    let mut shutdown = groups.broker.shutdown_signal();
    #[cfg(debug_assertions)]
    if std::env::var_os(DEBUG_PANIC_IN_SESSIONS_ENV).is_some() {
        panic!("the session task panics on purpose (debug builds, a test of the panic policy)");
    }
    let mut ticks = 0u64;
    // The lag of partitions led elsewhere, read at their leaders beside this loop (a slow
    // leader must not hold up expiry); one at a time.
    let mut remote_lag: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        ticks += 1;
        // Lag gauges every fifth tick: they are for dashboards, not for control.
        let publish = ticks.is_multiple_of(5);
        let next = groups.tick(Instant::now(), publish);
        if publish
            && groups.remote().is_some()
            && remote_lag.as_ref().is_none_or(|t| t.is_finished())
        {
            let groups = Arc::clone(&groups);
            remote_lag = Some(tokio::spawn(async move {
                groups.publish_remote_lag().await;
            }));
        }
        let cap = Instant::now() + SESSION_TICK;
        let wake = next.map_or(cap, |d| d.min(cap));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

impl GroupCoordinator {
    /// One pass of the session task: expires members, notices expansions, refreshes lag
    /// (read after the registry lock is released). Returns the earliest session deadline left.
    pub fn tick(&self, now: Instant, publish: bool) -> Option<Instant> {
        let mut groups = self.lock();
        let mut emptied = Vec::new();
        let mut lags = Vec::new();
        for (name, g) in groups.iter_mut() {
            if g.members.is_empty() {
                // Kept while a commit was in flight, which then failed.
                if g.removable() {
                    emptied.push(name.clone());
                }
                continue;
            }
            g.expire(name, self, now);
            g.refresh(name, self);
            if g.removable() {
                emptied.push(name.clone());
            } else if publish {
                lags.push(plan_lag(name, g, self));
            }
        }
        for name in emptied {
            if let Some(mut g) = groups.remove(&name) {
                g.retire_gauges(&name);
            }
        }
        let next = groups
            .values()
            .flat_map(|g| g.members.values().map(|m| m.deadline))
            .min();
        drop(groups);
        for lag in lags {
            lag.publish();
        }
        next
    }

    /// On a cluster: the lag gauges of the partitions led elsewhere, from their leaders'
    /// offsets (the session pass publishes the local ones).
    pub(super) async fn publish_remote_lag(&self) {
        let Some(remote) = self.remote() else {
            return;
        };
        let plans: Vec<_> = {
            let mut groups = self.lock();
            groups
                .iter_mut()
                .filter(|(_, g)| !g.members.is_empty() || !g.committed.is_empty())
                .map(|(name, g)| plan_lag(name, g, self))
                .collect()
        };
        for plan in plans {
            plan.publish_elsewhere(remote).await;
        }
    }

    /// Refreshes every group's series (members, rebalances, lag), without changing what they
    /// say, so a live group's series never go idle; a deleted group's do, and leave
    /// `/metrics`. Lag is read after the registry lock is released.
    pub fn refresh_metrics(&self) {
        let mut lags = Vec::new();
        {
            let mut groups = self.lock();
            for (name, g) in groups.iter_mut() {
                g.refresh_gauges(name);
                lags.push(plan_lag(name, g, self));
            }
        }
        for lag in lags {
            lag.publish();
        }
    }
}
