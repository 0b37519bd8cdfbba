//! The leader side of replication: one [`Led`] per partition this broker leads, fed by the
//! followers' fetches (`POST /internal/v1/replica/fetch`), which moves the partition's high
//! watermark and decides ISR changes (rules in [`super::isr`]).
//!
//! Locks: a `Led`'s state is a std mutex held for bookkeeping only, never across an
//! `.await` and never while a `Partition` method runs (the partition's own lock is taken
//! after it is released).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::isr::{LeaderReplicas, PendingIsr};
use super::manager::MoveThrottle;
use super::wire::{Diverging, FetchError, PartitionAnswer, PartitionFetch};
use crate::broker::{BrokerError, IsrGate, Partition};
use crate::log::Offset;
use crate::metadata::{BrokerEpoch, LeaderEpoch, NodeId, PartitionEpoch, PartitionId};

/// One partition this broker leads, in one leader epoch.
#[derive(Debug)]
pub struct Led {
    pub topic: Arc<str>,
    pub partition: PartitionId,
    pub replica: Arc<Partition>,
    pub leader_epoch: LeaderEpoch,
    state: Mutex<LedState>,
    /// Flipped when the leadership ends; the partition's leader task stops.
    retired: watch::Sender<bool>,
}

#[derive(Debug)]
struct LedState {
    replicas: LeaderReplicas,
    /// The partition epoch of the ISR in `replicas.isr`: an ISR change names it (CAS).
    partition_epoch: PartitionEpoch,
    /// A throttled move under way, and its bucket.
    throttle: Option<Bucket>,
    /// Bytes sent to each follower in this leadership, for a move's copy rate.
    sent: HashMap<NodeId, Sent>,
}

impl LedState {
    /// Whether a throttled move throttles `follower`: a replica it adds, not in the ISR.
    fn throttles(&self, follower: NodeId) -> bool {
        self.throttle
            .as_ref()
            .is_some_and(|b| b.throttle.adding.contains(&follower))
            && !self.replicas.maximal_isr().contains(&follower)
    }
}

/// The token bucket of a throttled move: bytes the leader may still send the replicas it
/// adds, refilled at the move's rate up to one second's worth. A read sends at least one
/// whole batch, so the bucket may go below zero; the replicas then wait until it refills.
/// What a fetch is allowed is taken out of the bucket at once and settled when it is sent
/// ([`Led::sent`]), so two added replicas fetching at the same moment share one
/// bucket instead of each being allowed all of it.
#[derive(Debug)]
struct Bucket {
    throttle: MoveThrottle,
    tokens: f64,
    refilled: Instant,
    /// Allowed to a replica's fetch and not yet settled: at most one per replica (a fetch
    /// dropped before it sent gives its allowance back at the replica's next fetch).
    allowed: Vec<(NodeId, u64)>,
}

impl Bucket {
    fn new(throttle: MoveThrottle) -> Bucket {
        Bucket {
            tokens: throttle.bytes_per_s as f64,
            throttle,
            refilled: Instant::now(),
            allowed: Vec::new(),
        }
    }

    /// Puts back what `follower` was allowed and has not settled.
    fn give_back(&mut self, follower: NodeId) {
        if let Some(i) = self.allowed.iter().position(|(n, _)| *n == follower) {
            self.tokens += self.allowed.swap_remove(i).1 as f64;
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let rate = self.throttle.bytes_per_s as f64;
        let earned = now.duration_since(self.refilled).as_secs_f64() * rate;
        // A second's worth in all, what is out on allowances included: given back, those
        // must not lift the bucket past it.
        let out: u64 = self.allowed.iter().map(|(_, a)| a).sum();
        self.tokens = (self.tokens + earned).min(rate - out as f64);
        self.refilled = now;
    }
}

impl Bucket {
    /// How long until the bucket holds a tenth of a second's worth again (None: it does).
    fn refill_in(&self) -> Option<Duration> {
        let rate = self.throttle.bytes_per_s as f64;
        let missing = rate / 10.0 - self.tokens;
        (missing > 0.0).then(|| Duration::from_secs_f64(missing / rate))
    }
}

/// How long the bytes sent to a follower are counted before its rate is taken again.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// The bytes a leader sent one follower in its leadership, and the rate over the last
/// whole window of [`RATE_WINDOW`]: what a move's progress and its time left are told from.
#[derive(Debug)]
struct Sent {
    total: u64,
    window_start: Instant,
    at_window_start: u64,
    last_rate: Option<f64>,
}

impl Sent {
    fn new(now: Instant) -> Sent {
        Sent {
            total: 0,
            window_start: now,
            at_window_start: 0,
            last_rate: None,
        }
    }

    fn add(&mut self, bytes: u64, now: Instant) {
        self.total += bytes;
        let elapsed = now.duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            self.last_rate = Some(self.window_rate(elapsed));
            self.window_start = now;
            self.at_window_start = self.total;
        }
    }

    fn window_rate(&self, elapsed: Duration) -> f64 {
        (self.total - self.at_window_start) as f64 / elapsed.as_secs_f64()
    }

    /// Bytes per second: over the last whole window, or over the current one once it is
    /// longer than a window (a follower that stopped fetching slows down to 0) or, before
    /// the first window ends, over what there is of it after a tenth of a second.
    fn rate(&self, now: Instant) -> Option<f64> {
        let elapsed = now.duration_since(self.window_start);
        if elapsed >= RATE_WINDOW || (self.last_rate.is_none() && elapsed >= RATE_WINDOW / 20) {
            return Some(self.window_rate(elapsed));
        }
        self.last_rate
    }
}

/// How far one follower's copy of the leader's log is (see [`Led::copy_progress`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CopyProgress {
    pub replica: NodeId,
    /// Records and bytes between its fetch position and the leader's log end.
    pub records_left: u64,
    pub bytes_left: u64,
    /// Bytes of the leader's log (from its start) below its fetch position.
    pub bytes_copied: u64,
    /// What the leader sent it per second lately; None before it fetched anything.
    pub bytes_per_s: Option<f64>,
}

impl CopyProgress {
    /// Seconds until it holds the leader's log end at its recent rate: 0 when it does,
    /// None when the rate is unknown or nothing moves.
    pub fn eta_s(&self) -> Option<f64> {
        if self.bytes_left == 0 {
            return Some(0.0);
        }
        let rate = self.bytes_per_s.filter(|r| *r > 0.0)?;
        Some(self.bytes_left as f64 / rate)
    }
}

/// The confirmed ISR of a partition as the metadata gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrRecord {
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
    pub min_insync_replicas: u32,
    pub partition_epoch: PartitionEpoch,
    /// The high watermark the metadata holds (see `LeaderReplicas::recorded_high_watermark`).
    pub recorded_high_watermark: Offset,
    /// A throttled move under way.
    pub throttle: Option<MoveThrottle>,
}

/// An ISR change to propose to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrProposal {
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
    pub isr: Vec<NodeId>,
}

impl Led {
    /// A new leadership of `replica` by `me`. Its high watermark starts where the replica's
    /// is; it moves only as the in-sync replicas fsync.
    pub fn new(
        topic: Arc<str>,
        partition: PartitionId,
        replica: Arc<Partition>,
        me: NodeId,
        leader_epoch: LeaderEpoch,
        record: &IsrRecord,
        now_ms: u64,
    ) -> Led {
        let hw = replica.progress().high_watermark;
        let mut replicas = LeaderReplicas::new(
            me,
            &record.replicas,
            record.isr.clone(),
            record.min_insync_replicas,
            hw,
            now_ms,
        );
        replicas.recorded_high_watermark = record.recorded_high_watermark;
        replicas.epoch_start_offset = replica.log_end_offset();
        let led = Led {
            topic,
            partition,
            replica,
            leader_epoch,
            state: Mutex::new(LedState {
                replicas,
                partition_epoch: record.partition_epoch,
                throttle: record.throttle.clone().map(Bucket::new),
                sent: HashMap::new(),
            }),
            retired: watch::Sender::new(false),
        };
        led.publish_gate();
        led
    }

    fn lock(&self) -> MutexGuard<'_, LedState> {
        self.state
            .lock()
            .expect("a leader state lock is not poisoned")
    }

    /// The metadata brought a new ISR or replica set (or the same under a new partition
    /// epoch): it is the confirmed state now, and a pending change is settled either way.
    pub fn confirm(&self, record: &IsrRecord, now_ms: u64) {
        {
            let mut s = self.lock();
            s.replicas.recorded_high_watermark = record.recorded_high_watermark;
            // Taken whatever else changed (a throttle change need not bump the epoch).
            s.throttle = match (s.throttle.take(), &record.throttle) {
                // The same rate: the bucket keeps what it holds.
                (Some(mut b), Some(t)) if b.throttle.bytes_per_s == t.bytes_per_s => {
                    b.throttle = t.clone();
                    Some(b)
                }
                (_, t) => t.clone().map(Bucket::new),
            };
            if s.partition_epoch == record.partition_epoch
                && s.replicas.isr == record.isr
                && s.replicas.min_insync_replicas == record.min_insync_replicas
            {
                return;
            }
            s.replicas.set_replicas(&record.replicas, now_ms);
            s.replicas.isr = record.isr.clone();
            s.replicas.min_insync_replicas = record.min_insync_replicas;
            s.replicas.pending = None;
            s.partition_epoch = record.partition_epoch;
        }
        self.publish_gate();
        self.advance();
    }

    /// Whether `p` is still this leadership's pending ISR change (the metadata has not moved
    /// the partition's epoch since).
    pub fn still_pending(&self, p: &IsrProposal) -> bool {
        let s = self.lock();
        s.partition_epoch == p.partition_epoch
            && s.replicas
                .pending
                .as_ref()
                .is_some_and(|pending| pending.proposed == p.isr)
    }

    /// The proposal `failed` was refused or unanswered: the next check proposes again. Only
    /// that proposal is forgotten: a late failure of an older one leaves a newer one pending
    /// (its additions still count toward the high watermark, since the controller may apply
    /// it).
    pub fn proposal_failed(&self, failed: &IsrProposal) {
        let mut s = self.lock();
        let same = s.partition_epoch == failed.partition_epoch
            && s.replicas
                .pending
                .as_ref()
                .is_some_and(|p| p.proposed == failed.isr);
        if same {
            s.replicas.pending = None;
        }
    }

    /// What a throttled move lets `follower` be sent now, in bytes, at most `wanted`; taken
    /// out of the bucket until [`Led::sent`] settles it. None when it is not
    /// throttled (it gets what its fetch asks for): not a replica a throttled move adds, or
    /// one that joined the ISR (pending additions included), whose fsyncs the high watermark
    /// waits for, as Kafka's throttle spares in-sync replicas.
    pub fn throttle_allowance(&self, follower: NodeId, wanted: u64) -> Option<u64> {
        let mut s = self.lock();
        if !s.throttles(follower) {
            return None;
        }
        let bucket = s.throttle.as_mut()?;
        bucket.refill();
        bucket.give_back(follower);
        let allowed = (bucket.tokens.max(0.0) as u64).min(wanted);
        bucket.tokens -= allowed as f64;
        bucket.allowed.push((follower, allowed));
        Some(allowed)
    }

    /// How long a throttled `follower` that got nothing should wait for the bucket to
    /// refill (None: it is not throttled, or the bucket holds enough): its fetch then waits
    /// that long at most, not the whole long-poll.
    pub fn throttle_refill_in(&self, follower: NodeId) -> Option<Duration> {
        let s = self.lock();
        if !s.throttles(follower) {
            return None;
        }
        s.throttle.as_ref()?.refill_in()
    }

    /// Counts `bytes` sent to `follower` (its copy rate), and takes them out of the move's
    /// bucket if it is throttled.
    pub fn sent(&self, follower: NodeId, bytes: u64) {
        let now = Instant::now();
        let mut s = self.lock();
        s.sent
            .entry(follower)
            .or_insert_with(|| Sent::new(now))
            .add(bytes, now);
        let throttled = s.throttles(follower);
        if let Some(bucket) = s.throttle.as_mut() {
            // Settled: what was allowed goes back, what was sent comes out.
            bucket.give_back(follower);
            if throttled {
                bucket.tokens -= bytes as f64;
            }
        }
    }

    /// Bytes per second sent to `follower` lately (see [`Sent::rate`]); None before it
    /// fetched anything in this leadership.
    pub fn send_rate(&self, follower: NodeId) -> Option<f64> {
        let now = Instant::now();
        self.lock().sent.get(&follower).and_then(|s| s.rate(now))
    }

    /// Tells producers how many replicas are in sync: the confirmed set, less the members
    /// whose fetches show they lost acknowledged records (on their way out).
    fn publish_gate(&self) {
        let gate = {
            let s = self.lock();
            IsrGate {
                isr: s.replicas.in_sync(),
                min_insync_replicas: s.replicas.min_insync_replicas,
                leader_epoch: self.leader_epoch.0,
            }
        };
        self.replica.set_isr_gate(Some(gate));
    }

    /// Moves the high watermark from what the ISR fsynced (the leader's own fsync included)
    /// and publishes it to the partition. Returns it.
    pub fn advance(&self) -> Offset {
        let fsynced = self.replica.progress().fsynced_offset;
        let hw = self.lock().replicas.advance_high_watermark(fsynced);
        self.replica.advance_high_watermark(hw)
    }

    /// The ISR change to propose now, if any (and marks it pending). `eligible` says which
    /// followers may join: active brokers, each on its current broker epoch, which must be
    /// the one the follower's last fetch came with.
    pub fn isr_check(
        &self,
        now_ms: u64,
        lag_max_ms: u64,
        eligible: &[(NodeId, BrokerEpoch)],
    ) -> Option<IsrProposal> {
        let mut s = self.lock();
        let replicas = &s.replicas;
        let next = replicas.isr_change(now_ms, lag_max_ms, |n| {
            replicas
                .followers
                .get(&n)
                .is_some_and(|f| eligible.contains(&(n, BrokerEpoch(f.broker_epoch))))
        })?;
        s.replicas.pending = Some(PendingIsr {
            proposed: next.clone(),
        });
        Some(IsrProposal {
            leader_epoch: self.leader_epoch,
            partition_epoch: s.partition_epoch,
            isr: next,
        })
    }

    /// Per follower: records and bytes behind the leader's log end (for the lag metrics).
    pub fn follower_lags(&self) -> Vec<(NodeId, u64, u64)> {
        let end = self.replica.log_end_offset();
        let positions: Vec<(NodeId, Offset)> = self
            .lock()
            .replicas
            .followers
            .iter()
            .map(|(n, f)| (*n, f.fetch_offset))
            .collect();
        // The Led's lock is released: the partition's is taken for the bytes. A follower
        // that has not fetched yet is at 0, which may be below the log start.
        let start = self.replica.progress().log_start_offset;
        positions
            .into_iter()
            .map(|(n, at)| {
                let at = at.max(start);
                let records = end.saturating_distance_from(at);
                (n, records, self.replica.bytes_from(at))
            })
            .collect()
    }

    /// Per follower: how far its copy of the log is, and how fast it goes (a move's progress).
    pub fn copy_progress(&self) -> Vec<CopyProgress> {
        let lags = self.follower_lags();
        let start = self.replica.progress().log_start_offset;
        let total = self.replica.bytes_from(start);
        lags.into_iter()
            .map(|(replica, records_left, bytes_left)| CopyProgress {
                replica,
                records_left,
                bytes_left,
                bytes_copied: total.saturating_sub(bytes_left),
                bytes_per_s: self.send_rate(replica),
            })
            .collect()
    }

    /// The confirmed ISR's size and the replication factor.
    pub fn isr_and_replicas(&self) -> (usize, usize) {
        let s = self.lock();
        (s.replicas.isr.len(), s.replicas.followers.len() + 1)
    }

    pub fn retire(&self) {
        self.retired.send_replace(true);
    }

    pub fn retired(&self) -> watch::Receiver<bool> {
        self.retired.subscribe()
    }

    /// Checks one partition of a follower's fetch and records its position. Answers the
    /// partition's header (no records yet) and, when the fetch is valid, the offset to read
    /// from. `now_ms` is the replication clock.
    pub fn on_fetch(
        &self,
        follower: NodeId,
        broker_epoch: BrokerEpoch,
        fetch: &PartitionFetch,
        now_ms: u64,
    ) -> (PartitionAnswer, Option<Offset>) {
        let progress = self.replica.progress();
        let mut answer = PartitionAnswer {
            topic: fetch.topic.clone(),
            partition: fetch.partition,
            error: None,
            high_watermark: progress.high_watermark,
            log_start_offset: progress.log_start_offset,
            diverging: None,
            sync_now: false,
        };
        if fetch.leader_epoch < self.leader_epoch {
            answer.error = Some(FetchError::FencedLeaderEpoch);
            return (answer, None);
        }
        if fetch.leader_epoch > self.leader_epoch {
            answer.error = Some(FetchError::UnknownLeaderEpoch);
            return (answer, None);
        }
        if fetch.fetch_offset < progress.log_start_offset {
            answer.error = Some(FetchError::OffsetOutOfRange);
            return (answer, None);
        }
        let end = self.replica.log_end_offset();
        if let Some(diverging) = self.divergence(fetch, end) {
            answer.diverging = Some(diverging);
            return (answer, None);
        }
        let (in_sync, joining) = {
            let mut s = self.lock();
            let before = s.replicas.in_sync();
            if !s.replicas.on_fetch(
                follower,
                fetch.fetch_offset,
                fetch.flushed_offset,
                end,
                now_ms,
            ) {
                answer.error = Some(FetchError::NotAFollower);
                return (answer, None);
            }
            if let Some(f) = s.replicas.followers.get_mut(&follower) {
                f.broker_epoch = broker_epoch.0;
            }
            // Outside the ISR, holding everything it must hold to join (the high watermark,
            // and the log end when this leadership began) but not fsynced: it joins only once
            // fsynced, so it is told to sync now (not after its own `flush_ms`).
            let need = s
                .replicas
                .high_watermark()
                .max(s.replicas.epoch_start_offset);
            let joining = !s.replicas.maximal_isr().contains(&follower)
                && fetch.fetch_offset >= need
                && fetch.flushed_offset < need;
            ((before, s.replicas.in_sync()), joining)
        };
        if in_sync.0 != in_sync.1 {
            if in_sync.1 < in_sync.0 {
                tracing::warn!(
                    topic = %self.topic,
                    partition = self.partition.0,
                    follower = follower.0,
                    fetch_offset = fetch.fetch_offset.0,
                    "an in-sync follower fetches below the high watermark: it lost records, \
                     it leaves the ISR"
                );
            }
            self.publish_gate();
        }
        answer.high_watermark = self.advance();
        answer.sync_now = self.replica.acks_all_waiting() || joining;
        (answer, Some(fetch.fetch_offset))
    }

    /// Where the follower's log leaves this one (KIP-101, KIP-279), if it does.
    fn divergence(&self, fetch: &PartitionFetch, end: Offset) -> Option<Diverging> {
        let Some(epoch) = fetch.last_fetched_epoch else {
            // An empty follower log (or one reset to a start offset): it only diverges by
            // being ahead of this log.
            return (fetch.fetch_offset > end).then(|| Diverging {
                epoch: self.replica.latest_epoch().unwrap_or(0),
                end_offset: end,
            });
        };
        match self.replica.epoch_end(epoch) {
            Some(e) if e.epoch == epoch && e.end_offset >= fetch.fetch_offset => None,
            Some(e) => Some(Diverging {
                epoch: e.epoch,
                end_offset: e.end_offset,
            }),
            // Every epoch here is newer than the follower's last: none of its records past
            // this log's start are ours. It keeps at most what precedes our log start.
            None => Some(Diverging {
                epoch,
                end_offset: self.replica.progress().log_start_offset,
            }),
        }
    }

    /// Reads the batches a fetch asked for: up to the log end, at most `max_bytes` (at
    /// least one batch). A read error becomes the partition's answer's error.
    pub async fn read(
        &self,
        answer: &mut PartitionAnswer,
        from: Offset,
        max_bytes: u64,
    ) -> Vec<u8> {
        if from >= self.replica.log_end_offset() {
            return Vec::new();
        }
        match self.replica.read_for_replica(from, max_bytes).await {
            Ok(bytes) => bytes,
            Err(BrokerError::OffsetOutOfRange {
                log_start_offset, ..
            }) => {
                answer.error = Some(FetchError::OffsetOutOfRange);
                answer.log_start_offset = log_start_offset;
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(
                    topic = %self.topic,
                    partition = self.partition.0,
                    "reading for a follower: {e}"
                );
                answer.error = Some(FetchError::StorageUnavailable);
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::broker::partition::tests::batch_of;

    fn n(id: u32) -> NodeId {
        NodeId(id)
    }

    async fn open(dir: &Path) -> Arc<Partition> {
        let p = crate::broker::partition::tests::open(dir);
        p.set_hw_mode(crate::broker::partition::HwMode::External);
        p
    }

    /// Appends `records` records under `epoch` and fsyncs them.
    async fn append(p: &Arc<Partition>, epoch: u32, records: u32) {
        p.set_leader_epoch(epoch).unwrap();
        let mut batch = batch_of(records as usize);
        p.append(&mut batch, records, true).unwrap();
        p.flush_now().await.unwrap();
    }

    /// Broker 1's leadership of `p` in epoch 0, from `record`.
    fn led_of(p: &Arc<Partition>, record: &IsrRecord) -> Led {
        Led::new(
            "t".into(),
            PartitionId(0),
            Arc::clone(p),
            n(1),
            LeaderEpoch(0),
            record,
            0,
        )
    }

    /// Replicas 1, 2 and 3 with 3 outside the ISR.
    fn isr_of_1_and_2() -> IsrRecord {
        IsrRecord {
            replicas: vec![n(1), n(2), n(3)],
            isr: vec![n(1), n(2)],
            min_insync_replicas: 2,
            partition_epoch: PartitionEpoch(0),
            recorded_high_watermark: Offset(0),
            throttle: None,
        }
    }

    fn led(p: &Arc<Partition>, epoch: u32) -> Led {
        let record = IsrRecord {
            replicas: vec![n(1), n(2), n(3)],
            isr: vec![n(1), n(2), n(3)],
            min_insync_replicas: 2,
            partition_epoch: PartitionEpoch(0),
            recorded_high_watermark: Offset(0),
            throttle: None,
        };
        Led::new(
            "t".into(),
            PartitionId(0),
            Arc::clone(p),
            n(1),
            LeaderEpoch(epoch),
            &record,
            0,
        )
    }

    fn fetch(epoch: u32, offset: u64, last: Option<u32>, flushed: u64) -> PartitionFetch {
        PartitionFetch {
            topic: "t".into(),
            partition: PartitionId(0),
            leader_epoch: LeaderEpoch(epoch),
            fetch_offset: Offset(offset),
            last_fetched_epoch: last,
            flushed_offset: Offset(flushed),
        }
    }

    #[tokio::test]
    async fn the_high_watermark_moves_as_the_isr_fsyncs_and_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path()).await;
        append(&p, 0, 3).await;
        let l = led(&p, 0);
        assert_eq!(
            p.progress().high_watermark,
            Offset(0),
            "no follower fetched yet"
        );
        let (a, from) = l.on_fetch(n(2), BrokerEpoch(1), &fetch(0, 3, Some(0), 3), 1);
        assert_eq!((a.error, from), (None, Some(Offset(3))));
        assert_eq!(a.high_watermark, Offset(0), "follower 3 has nothing yet");
        let (a, _) = l.on_fetch(n(3), BrokerEpoch(1), &fetch(0, 3, Some(0), 1), 1);
        assert_eq!(a.high_watermark, Offset(1), "follower 3 fsynced only 1");
        l.on_fetch(n(3), BrokerEpoch(1), &fetch(0, 3, Some(0), 3), 2);
        assert_eq!(
            p.progress().high_watermark,
            Offset(3),
            "published to consumers"
        );
        assert_eq!(
            p.isr_gate(),
            Some(IsrGate {
                isr: 3,
                min_insync_replicas: 2,
                leader_epoch: 0
            })
        );
    }

    /// A follower joins the ISR on a fetch of its current incarnation only: one restarted
    /// since its last fetch (a new broker epoch, perhaps an emptied disk) does not join on
    /// what its previous incarnation fetched (KIP-903).
    #[tokio::test]
    async fn a_follower_joins_the_isr_only_on_a_fetch_of_its_current_broker_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path()).await;
        append(&p, 0, 3).await;
        let l = led_of(&p, &isr_of_1_and_2());
        l.on_fetch(n(2), BrokerEpoch(1), &fetch(0, 3, Some(0), 3), 1);
        l.on_fetch(n(3), BrokerEpoch(1), &fetch(0, 3, Some(0), 3), 1);
        // Broker 3 registered again (epoch 2) before fetching: not on its old fetch.
        let now = [(n(2), BrokerEpoch(1)), (n(3), BrokerEpoch(2))];
        assert_eq!(l.isr_check(2, 30_000, &now), None);
        l.on_fetch(n(3), BrokerEpoch(2), &fetch(0, 3, Some(0), 3), 3);
        let p = l
            .isr_check(3, 30_000, &now)
            .expect("joins on its own fetch");
        assert_eq!(p.isr, vec![n(1), n(2), n(3)]);
    }

    #[tokio::test]
    async fn stale_and_future_epochs_and_strangers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path()).await;
        append(&p, 4, 1).await;
        let l = led(&p, 4);
        let error = |node, f: PartitionFetch| l.on_fetch(n(node), BrokerEpoch(1), &f, 0).0.error;
        assert_eq!(
            error(2, fetch(3, 0, None, 0)),
            Some(FetchError::FencedLeaderEpoch)
        );
        assert_eq!(
            error(2, fetch(5, 0, None, 0)),
            Some(FetchError::UnknownLeaderEpoch)
        );
        assert_eq!(
            error(7, fetch(4, 0, None, 0)),
            Some(FetchError::NotAFollower)
        );
        assert_eq!(error(2, fetch(4, 0, None, 0)), None);
    }

    /// A follower outside the ISR that holds the high watermark but has not fsynced it is
    /// asked to fsync now: it would otherwise join only after its own `flush_ms`.
    #[tokio::test]
    async fn a_follower_outside_the_isr_holding_the_high_watermark_is_asked_to_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path()).await;
        append(&p, 0, 3).await;
        let l = led_of(&p, &isr_of_1_and_2());
        let (a, _) = l.on_fetch(n(2), BrokerEpoch(1), &fetch(0, 3, Some(0), 3), 1);
        assert_eq!((a.high_watermark, a.sync_now), (Offset(3), false));
        let sync_now = |offset, flushed| {
            l.on_fetch(n(3), BrokerEpoch(1), &fetch(0, offset, Some(0), flushed), 2)
                .0
                .sync_now
        };
        assert!(!sync_now(1, 0), "still fetching below the high watermark");
        assert!(
            sync_now(3, 0),
            "holds the high watermark, fsynced none of it"
        );
        assert!(!sync_now(3, 3), "fsynced: nothing to ask");
    }

    /// A throttled move's bucket limits only the replicas it adds while they are out of the
    /// ISR; it holds a second's worth, goes below zero on a whole batch, and refills; a new
    /// replica set without a throttle lifts it.
    #[tokio::test]
    async fn a_move_throttles_only_its_added_replicas_outside_the_isr() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path()).await;
        let throttled = |epoch: u32, isr: Vec<NodeId>| IsrRecord {
            replicas: vec![n(4), n(2), n(1)],
            isr,
            min_insync_replicas: 1,
            partition_epoch: PartitionEpoch(epoch),
            recorded_high_watermark: Offset(0),
            throttle: Some(MoveThrottle {
                adding: vec![n(4)],
                bytes_per_s: 1_000,
            }),
        };
        let l = led_of(&p, &throttled(0, vec![n(1), n(2)]));
        let all = u64::MAX;
        assert_eq!(
            l.throttle_allowance(n(2), all),
            None,
            "not added by the move"
        );
        assert_eq!(
            l.throttle_allowance(n(4), all),
            Some(1_000),
            "a second's worth"
        );
        assert_eq!(l.send_rate(n(4)), None, "nothing sent yet");
        l.sent(n(4), 1_100);
        assert_eq!(
            l.throttle_allowance(n(4), all),
            Some(0),
            "in debt after a whole batch"
        );
        // A fetch that got nothing waits for a tenth of a second's worth: 100 bytes of debt
        // and 100 more at 1,000 bytes a second.
        let wait = l.throttle_refill_in(n(4)).unwrap();
        assert!(
            (Duration::from_millis(150)..=Duration::from_millis(200)).contains(&wait),
            "{wait:?}"
        );
        assert_eq!(l.throttle_refill_in(n(2)), None, "not throttled");
        l.sent(n(2), 1_000_000);
        // The refill is the clock's: 100 bytes of debt, then 1,000 bytes a second.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let refilled = l.throttle_allowance(n(4), all).unwrap();
        assert!((150..=1_000).contains(&refilled), "{refilled}");
        l.sent(n(4), 0);
        assert_eq!(l.throttle_refill_in(n(4)), None, "it holds enough again");
        // 1,100 bytes in the 300 ms or more since the first: at most 3,667 bytes a second.
        let rate = l.send_rate(n(4)).unwrap();
        assert!((500.0..=3_667.0).contains(&rate), "{rate}");

        // In the ISR, it is spared: the high watermark waits for its fsyncs.
        l.confirm(&throttled(1, vec![n(1), n(2), n(4)]), 1);
        assert_eq!(l.throttle_allowance(n(4), all), None);
        // Cancelled: no throttle, and 4 is no replica any more.
        let cancelled = IsrRecord {
            throttle: None,
            replicas: vec![n(2), n(1)],
            ..throttled(2, vec![n(1), n(2)])
        };
        l.confirm(&cancelled, 2);
        assert_eq!(l.throttle_allowance(n(4), all), None);
    }

    /// Two replicas a throttled move adds, fetching at the same moment, share the bucket:
    /// what one is allowed is out of it until its send settles; a fetch dropped before it
    /// sent gives its allowance back at that replica's next fetch.
    #[tokio::test]
    async fn replicas_a_move_adds_share_one_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path()).await;
        let record = IsrRecord {
            replicas: vec![n(4), n(5), n(1)],
            isr: vec![n(1)],
            min_insync_replicas: 1,
            partition_epoch: PartitionEpoch(0),
            recorded_high_watermark: Offset(0),
            throttle: Some(MoveThrottle {
                adding: vec![n(4), n(5)],
                bytes_per_s: 1_000,
            }),
        };
        let l = led_of(&p, &record);
        let all = u64::MAX;
        assert_eq!(l.throttle_allowance(n(4), 600), Some(600), "what it wants");
        let second = l.throttle_allowance(n(5), all).unwrap();
        assert!(second <= 410, "the rest, not a second bucket: {second}");
        // 4 sent 300 of its 600: the other 300 go back.
        l.sent(n(4), 300);
        l.sent(n(5), 0);
        let now = l.throttle_allowance(n(5), all).unwrap();
        assert!((700..=710).contains(&now), "{now}");
        // 5's fetch is dropped before it sends; its next fetch finds the bucket as it was.
        let again = l.throttle_allowance(n(5), all).unwrap();
        assert!((now..=now + 10).contains(&again), "{now} then {again}");
        // What is out on an allowance counts toward the second's worth while the bucket
        // refills: given back, it does not lift the bucket past it.
        std::thread::sleep(Duration::from_millis(400));
        let full = l.throttle_allowance(n(5), all).unwrap();
        assert!(full <= 1_000, "at most a second's worth: {full}");
    }

    /// KIP-101/279: the leader answers where the follower's log leaves its own.
    #[tokio::test]
    async fn a_follower_that_diverges_is_told_where_to_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let p = open(dir.path()).await;
        append(&p, 0, 5).await;
        append(&p, 2, 3).await;
        let l = led(&p, 2);
        let diverging = |f: PartitionFetch| {
            let (a, from) = l.on_fetch(n(2), BrokerEpoch(1), &f, 0);
            assert!(a.diverging.is_none() || from.is_none());
            a.diverging.map(|d| (d.epoch, d.end_offset.0))
        };
        // It wrote offsets 5 and 6 under epoch 1, which this log never had: cut at 5.
        assert_eq!(diverging(fetch(2, 7, Some(1), 7)), Some((0, 5)));
        // More of epoch 0 than this log has.
        assert_eq!(diverging(fetch(2, 6, Some(0), 6)), Some((0, 5)));
        // Ahead of this log's end in the current epoch.
        assert_eq!(diverging(fetch(2, 10, Some(2), 10)), Some((2, 8)));
        // Agreeing logs.
        assert_eq!(diverging(fetch(2, 5, Some(0), 5)), None);
        assert_eq!(diverging(fetch(2, 8, Some(2), 8)), None);
        assert_eq!(diverging(fetch(2, 0, None, 0)), None);
    }

    /// A copy's time left is its bytes left at its recent rate; unknown without a rate.
    #[test]
    fn a_copys_time_left_comes_from_its_rate() {
        let copy = |bytes_left: u64, bytes_per_s: Option<f64>| CopyProgress {
            replica: n(4),
            records_left: bytes_left / 100,
            bytes_left,
            bytes_copied: 0,
            bytes_per_s,
        };
        assert_eq!(copy(5_000, Some(1_000.0)).eta_s(), Some(5.0));
        assert_eq!(copy(0, None).eta_s(), Some(0.0), "caught up");
        assert_eq!(copy(5_000, None).eta_s(), None, "no rate yet");
        assert_eq!(copy(5_000, Some(0.0)).eta_s(), None, "stalled");
    }
}
