//! The follower side: one fetcher task per source leader broker, every partition followed
//! from that broker in one long-poll (`POST /internal/v1/replica/fetch`).
//!
//! Per partition and answer: truncate where the leader says the logs diverge (never below
//! this replica's high watermark: a replica asked to do that stops, loudly), append the
//! batches as the leader stored them, fsync at once when the leader says an `acks=all`
//! producer waits and this replica holds anything unsynced (then fetch again at once, so the
//! leader learns the fsynced offset), and move this replica's high watermark to
//! min(leader's HW, own fsynced end). An answer is applied only while the replica still
//! follows that leader in the fetch's leader epoch: after a role change (this replica may
//! lead now) an answer of the old leadership is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Replicator;
use super::manager::Role;
use super::wire::{self, FetchError, FetchRequest, PartitionAnswer, PartitionFetch};
use crate::broker::{BrokerError, Partition};
use crate::cluster::client::CallError;
use crate::log::Offset;
use crate::metadata::{LeaderEpoch, NodeId, PartitionId};
use crate::metrics as m;

/// The replica fetch route.
pub const REPLICA_FETCH_PATH: &str = "/internal/v1/replica/fetch";
/// Most record bytes one fetch asks for over all its partitions.
const FETCH_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// How long a partition whose fetch failed (stale metadata on either side) waits before it
/// is asked for again; also the pause after a leader did not answer.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// The long-poll wait while this follower holds appended data not yet fsynced: short, so the
/// leader learns the fsync (and moves the high watermark) soon after it completes.
const UNSYNCED_WAIT: Duration = Duration::from_millis(20);

/// The offset `request` asked `f`'s partition from.
fn asked_at(request: &FetchRequest, f: &Followed) -> Option<Offset> {
    request
        .partitions
        .iter()
        .find(|p| *p.topic == *f.topic && p.partition == f.partition)
        .map(|p| p.fetch_offset)
}

/// Moves the replica's high watermark to the leader's, as far as it has fsynced. A replica
/// that lost data holds every acknowledged record again once it reaches the leader's.
fn caught_up(f: &Followed, leader_hw: Offset) {
    if f.replica.advance_high_watermark(leader_hw) >= leader_hw {
        f.replica.refetched_lost_data();
    }
}

/// One partition followed from a leader.
#[derive(Debug, Clone)]
pub struct Followed {
    pub topic: Arc<str>,
    pub partition: PartitionId,
    pub replica: Arc<Partition>,
    pub leader_epoch: LeaderEpoch,
}

/// Follows every partition in `set` from `leader` until the set's sender is dropped or the
/// broker shuts down.
pub async fn run(
    replicator: Arc<Replicator>,
    leader: NodeId,
    mut set: watch::Receiver<Vec<Followed>>,
) {
    let mut shutdown = replicator.broker.shutdown_signal();
    let mut fetcher = Fetcher {
        replicator,
        leader,
        retry_at: HashMap::new(),
        stopped: HashMap::new(),
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        let followed = set.borrow_and_update().clone();
        let round = fetcher.round(&followed);
        let pause = tokio::select! {
            pause = round => pause,
            // The followed set changed: start over with it (the long-poll is dropped).
            changed = set.changed() => match changed {
                Ok(()) => None,
                Err(_) => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                changed = set.changed() => if changed.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

struct Fetcher {
    replicator: Arc<Replicator>,
    leader: NodeId,
    /// Partitions not asked for until then.
    retry_at: HashMap<(Arc<str>, PartitionId), Instant>,
    /// Replicas stopped in a leader epoch (asked to cut below their high watermark).
    stopped: HashMap<(Arc<str>, PartitionId), LeaderEpoch>,
}

impl Fetcher {
    /// One fetch and its answer. Returns how long to pause before the next one, if at all.
    async fn round(&mut self, followed: &[Followed]) -> Option<Duration> {
        let now = Instant::now();
        self.retry_at.retain(|_, at| *at > now);
        let mut asked = Vec::new();
        let mut unsynced = false;
        for f in followed {
            let key = (Arc::clone(&f.topic), f.partition);
            if self.retry_at.contains_key(&key) || self.stopped.get(&key) == Some(&f.leader_epoch) {
                continue;
            }
            // Not before every batch below its log end passed a CRC check (`scrub`): a
            // damaged replica must not catch up and rejoin the ISR over its damage.
            if !f.replica.scrubbed() {
                continue;
            }
            let end = f.replica.log_end_offset();
            let flushed = f.replica.progress().fsynced_offset;
            unsynced |= flushed < end;
            asked.push(PartitionFetch {
                topic: f.topic.to_string(),
                partition: f.partition,
                leader_epoch: f.leader_epoch,
                fetch_offset: end,
                last_fetched_epoch: f.replica.latest_epoch(),
                flushed_offset: flushed,
            });
        }
        if asked.is_empty() {
            return Some(RETRY_AFTER);
        }
        let r = &self.replicator;
        let (Some(broker_epoch), Some(to)) = (
            r.cluster.broker_epoch(),
            r.cluster.peer_address(self.leader),
        ) else {
            return Some(RETRY_AFTER);
        };
        let wait = if unsynced {
            UNSYNCED_WAIT.min(r.settings.fetch_wait_max)
        } else {
            r.settings.fetch_wait_max
        };
        let request = FetchRequest {
            replica: r.node_id,
            broker_epoch,
            max_wait_ms: wait.as_millis() as u64,
            max_bytes: FETCH_BYTES_MAX,
            partitions: asked,
        };
        let started = Instant::now();
        let answer = self.call(to, &request, wait).await;
        ::metrics::histogram!(m::REPLICA_FETCH_SECONDS).record(started.elapsed().as_secs_f64());
        let bytes = match answer {
            Ok(bytes) => bytes,
            Err(e) => {
                ::metrics::counter!(m::REPLICA_FETCH_ERRORS).increment(1);
                tracing::debug!(leader = self.leader.0, "replica fetch: {e}");
                return Some(RETRY_AFTER);
            }
        };
        ::metrics::counter!(m::REPLICA_FETCHES).increment(1);
        // Kept alive (at its value) while fetches go well, so rate() sees it before a failure.
        ::metrics::counter!(m::REPLICA_FETCH_ERRORS).increment(0);
        let parts = match wire::decode_answer(&bytes) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(leader = self.leader.0, "replica fetch answer: {e}");
                return Some(RETRY_AFTER);
            }
        };
        let mut synced = Vec::new();
        for (answer, records) in parts {
            let Some(f) = followed
                .iter()
                .find(|f| *f.topic == *answer.topic && f.partition == answer.partition)
            else {
                continue;
            };
            let Some(fetched_at) = asked_at(&request, f) else {
                continue;
            };
            // Everything unsynced, not only what this answer brought: records appended from
            // an earlier answer (one without `sync_now`, or whose fsync a role change dropped)
            // would otherwise wait for the flusher's `flush_ms` while `acks=all` waits on them.
            if self.apply(f, fetched_at, &answer, records).await
                && answer.sync_now
                && f.replica.fsynced_offset() < f.replica.log_end_offset()
            {
                synced.push((f, answer.high_watermark));
            }
        }
        // The leader waits on these: fsync now, then fetch again at once to say so.
        for (f, leader_hw) in &synced {
            if let Err(e) = f.replica.flush_now().await {
                tracing::error!(topic = %f.topic, partition = f.partition.0, "fsync of replicated data: {e}");
            }
            if self.still_follows(f) {
                caught_up(f, *leader_hw);
            }
        }
        None
    }

    async fn call(
        &self,
        to: SocketAddr,
        request: &FetchRequest,
        wait: Duration,
    ) -> Result<bytes::Bytes, CallError> {
        // Room for the leader's wait, its reads, and a busy machine.
        let deadline = wait + self.replicator.settings.fetch_timeout;
        self.replicator
            .client
            .post_for_bytes(
                to,
                REPLICA_FETCH_PATH,
                request,
                deadline,
                (FETCH_BYTES_MAX as usize).saturating_mul(2) + (1 << 20),
            )
            .await
    }

    /// This replica still follows this fetcher's leader in `f`'s leader epoch, as the
    /// manager's roles say (they change before the replica takes a new role).
    fn still_follows(&self, f: &Followed) -> bool {
        matches!(
            self.replicator.manager.role_of(&f.topic, f.partition),
            Some(Role::Follower { leader, leader_epoch })
                if leader == self.leader && leader_epoch == f.leader_epoch
        )
    }

    /// Applies one partition's answer to a fetch from `fetched_at`. Returns true when the
    /// answer was applied in full (records, if any, appended; the high watermark moved).
    /// An answer that reaches a replica no longer following this leader in `f`'s epoch is
    /// dropped: its records and high watermark belong to the old leadership.
    async fn apply(
        &mut self,
        f: &Followed,
        fetched_at: Offset,
        answer: &PartitionAnswer,
        records: &[u8],
    ) -> bool {
        let key = (Arc::clone(&f.topic), f.partition);
        if !self.still_follows(f) {
            tracing::debug!(topic = %f.topic, partition = f.partition.0, "answer of an ended leadership dropped");
            return false;
        }
        if let Some(error) = answer.error {
            if error == FetchError::OffsetOutOfRange
                && f.replica.log_end_offset() < answer.log_start_offset
            {
                // Everything this replica holds precedes the leader's log: start over there.
                self.stop_on(f, f.replica.reset_to(answer.log_start_offset).await);
                return false;
            }
            tracing::debug!(topic = %f.topic, partition = f.partition.0, ?error, "replica fetch refused");
            self.retry_at.insert(key, Instant::now() + RETRY_AFTER);
            return false;
        }
        if let Some(d) = answer.diverging {
            let own = f
                .replica
                .epoch_end(d.epoch)
                .map_or(Offset::ZERO, |e| e.end_offset);
            let cut = d.end_offset.min(own);
            tracing::info!(
                topic = %f.topic,
                partition = f.partition.0,
                leader_epoch = d.epoch,
                cut = cut.0,
                "log diverges from the leader's: truncating"
            );
            self.stop_on(f, f.replica.truncate_to(cut).await.map(|_| ()));
            return false;
        }
        if !records.is_empty() {
            // Only onto the log end the fetch asked from: a scrub may have cut the log since.
            match f.replica.append_replicated_at(records, fetched_at, false) {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(topic = %f.topic, partition = f.partition.0, "appending replicated batches: {e}");
                    self.retry_at.insert(key, Instant::now() + RETRY_AFTER);
                    return false;
                }
            }
        }
        caught_up(f, answer.high_watermark);
        true
    }

    /// A truncation or reset refused below the high watermark stops this replica for the
    /// leader epoch (it would drop records acknowledged as replicated); other failures are
    /// retried.
    fn stop_on(&mut self, f: &Followed, result: Result<(), BrokerError>) {
        let key = (Arc::clone(&f.topic), f.partition);
        match result {
            Ok(()) => {}
            Err(e @ BrokerError::BelowHighWatermark { .. }) => {
                tracing::error!(
                    topic = %f.topic,
                    partition = f.partition.0,
                    leader_epoch = f.leader_epoch.0,
                    "replica stopped: {e}"
                );
                self.stopped.insert(key, f.leader_epoch);
            }
            Err(e) => {
                tracing::warn!(topic = %f.topic, partition = f.partition.0, "{e}");
                self.retry_at.insert(key, Instant::now() + RETRY_AFTER);
            }
        }
    }
}
