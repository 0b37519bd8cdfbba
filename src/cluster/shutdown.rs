//! A member's controlled shutdown (SIGTERM), as Kafka's: before the broker stops serving it
//! asks the controller to move its leaderships to other in-sync replicas and take it out of
//! every in-sync set (`drain`), so producers find new leaders at once rather than after a
//! session timeout, and no leader waits on it as a follower; once it stopped serving and
//! heartbeating it tells the controller so (`stopped`), which fences it and ends its session
//! at once, so its next process registers without waiting for the session to expire.
//!
//! Failure policy: both are best effort within their bounds. A drain the controller did not
//! answer in time (no quorum, an election that lasts) leaves the broker to stop anyway, as
//! after `kill -9`: its session expires and the controller moves its leaderships then. A lost
//! `stopped` only delays its next registration by a session timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::Cluster;
use super::client::{CallError, InternalClient};
use super::protocol::{SHUTDOWN_PATH, ShutdownAnswer, ShutdownRequest, ShutdownStage};

/// Deadline of the `stopped` call: the process is on its way out.
const STOPPED_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Problem codes after which asking again cannot help: the registration is gone.
const GIVE_UP: [&str; 2] = ["stale_broker_epoch", "unknown_broker"];

impl Cluster {
    /// Asks the controller to move this broker's leaderships away and take it out of every
    /// in-sync set, retrying (no leader yet, an unreachable one) until it answers or
    /// `deadline` passes; the controller answers once the other brokers applied the change,
    /// or holds the answer for at most three quarters of the time left. None when it did not
    /// answer, or the broker is not registered (it leads nothing then).
    pub async fn drain_leaderships(&self, deadline: Instant) -> Option<ShutdownAnswer> {
        self.peers.as_ref()?;
        let client = InternalClient::default();
        let mut last_error = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "controlled shutdown: the controller did not answer in time ({last_error}); stopping anyway"
                );
                return None;
            }
            let epoch = self.broker_epoch()?;
            let Some(to) = self.controller_address() else {
                tokio::time::sleep(self.heartbeat_interval().min(left)).await;
                continue;
            };
            let request = ShutdownRequest {
                node_id: self.node_id,
                broker_epoch: epoch,
                stage: ShutdownStage::Drain,
                wait_ms: u64::try_from((left * 3 / 4).as_millis()).unwrap_or(u64::MAX),
            };
            match client.post(to, SHUTDOWN_PATH, &request, left).await {
                Ok(answer) => return Some(answer),
                Err(CallError::Refused { code, detail, .. })
                    if GIVE_UP.contains(&code.as_str()) =>
                {
                    tracing::warn!("controlled shutdown refused: {detail}; stopping anyway");
                    return None;
                }
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(self.heartbeat_interval().min(left)).await;
        }
    }

    /// Tells the controller that held this broker's session that the process stopped
    /// serving and heartbeating (call it once the membership task ended): it is fenced and
    /// its session ends at once. One try, bounded; nothing when this broker ran the
    /// controller itself (its metadata Raft has stopped: the others elect a new leader, which
    /// never heard of this process's session).
    pub async fn report_stopped(&self) {
        let Some(epoch) = self.broker_epoch() else {
            return;
        };
        let Some(to) = self.session_holder() else {
            return;
        };
        if to.to_string() == self.own_address() {
            return;
        }
        let request = ShutdownRequest {
            node_id: self.node_id,
            broker_epoch: epoch,
            stage: ShutdownStage::Stopped,
            wait_ms: 0,
        };
        let client = InternalClient::default();
        let answer: Result<ShutdownAnswer, _> = client
            .post(to, SHUTDOWN_PATH, &request, STOPPED_CALL_TIMEOUT)
            .await;
        match answer {
            Ok(a) => tracing::info!(
                controller = %to,
                index = a.index,
                "told the controller this broker stopped"
            ),
            Err(e) => tracing::info!(
                controller = %to,
                "could not tell the controller this broker stopped ({e}); its session expires instead"
            ),
        }
    }

    /// The controller that answered this broker's last heartbeat.
    fn session_holder(&self) -> Option<SocketAddr> {
        self.lock().session_holder
    }
}
