//! The leader's lease on its controller session.
//!
//! On a cluster the controller fences a broker whose heartbeats stopped for
//! `broker_session_timeout_ms`, then moves its leaderships to other in-sync replicas. A
//! leader that was paused or cut off does not know it was replaced, so it must stop
//! acknowledging on its own before that can happen: the membership task renews the lease
//! with the instant a heartbeat was SENT (the controller received it later, so its session
//! ends later than the lease), and only once the broker's metadata image holds everything
//! the controller had at that heartbeat (a leadership it lost is then known). The lease is
//! shorter than the session by a tenth, for clock rate differences. Produces to a broker
//! whose lease ran out are refused ([`crate::broker::BrokerError::SessionLost`]), and one
//! whose lease ran out while its records were appended answers "outcome unknown".
//!
//! The clock is the monotonic one: a paused (SIGSTOP) process finds its lease expired.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct SessionLease {
    /// How long after a heartbeat was sent the lease holds.
    length: Duration,
    /// None: never renewed, or revoked (the registration went stale).
    until: Mutex<Option<Instant>>,
}

impl SessionLease {
    /// An expired lease for a session of `session_timeout`.
    pub fn new(session_timeout: Duration) -> SessionLease {
        SessionLease {
            length: session_timeout - session_timeout / 10,
            until: Mutex::new(None),
        }
    }

    /// A heartbeat sent at `sent` was answered and the image caught up with the controller.
    pub fn renew(&self, sent: Instant) {
        let mut until = self.until.lock().expect("the lease lock is not poisoned");
        let end = sent + self.length;
        if until.is_none_or(|u| u < end) {
            *until = Some(end);
        }
    }

    /// The controller no longer knows this registration: no lease until the next one.
    pub fn revoke(&self) {
        *self.until.lock().expect("the lease lock is not poisoned") = None;
    }

    /// Whether the controller cannot have fenced this broker yet.
    pub fn held(&self) -> bool {
        self.until
            .lock()
            .expect("the lease lock is not poisoned")
            .is_some_and(|u| Instant::now() < u)
    }

    /// How long the lease still holds (zero when it does not).
    pub fn remaining(&self) -> Duration {
        self.until
            .lock()
            .expect("the lease lock is not poisoned")
            .map_or(Duration::ZERO, |u| {
                u.saturating_duration_since(Instant::now())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_from_the_heartbeat_sent_not_answered_and_ends_at_revocation() {
        let lease = SessionLease::new(Duration::from_millis(1000));
        assert!(!lease.held(), "no lease before the first heartbeat");
        let long_ago = Instant::now() - Duration::from_millis(950);
        lease.renew(long_ago);
        assert!(
            !lease.held(),
            "900 ms from a heartbeat sent 950 ms ago is over"
        );
        lease.renew(Instant::now());
        assert!(lease.held());
        assert!(lease.remaining() <= Duration::from_millis(900));
        lease.renew(long_ago);
        assert!(lease.held(), "an older heartbeat never shortens the lease");
        lease.revoke();
        assert!(!lease.held());
        assert_eq!(lease.remaining(), Duration::ZERO);
    }
}
