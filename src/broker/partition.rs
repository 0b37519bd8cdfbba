//! One partition replica in memory: its log, its high watermark, and the waiters on it.
//!
//! Invariants kept here:
//! - `log_start_offset <= high_watermark <= log_end_offset` (asserted where the HW moves).
//! - On a single broker the high watermark is the fsynced end of the log: a consumer never
//!   sees a record a crash could take back, and an `acks=all` producer is answered only when
//!   the high watermark has passed its records.
//! - The partition lock (`std::sync::Mutex`) is held across the page-cache write of an append
//!   and across in-memory bookkeeping, never across an fsync, a file read for a consumer, or
//!   an `.await`. File reads for consumers and every sync run on the blocking pool: plan under
//!   the lock, do the I/O outside it, publish after. It is taken last: never under a caller's
//!   lock that forbids it ([`PartitionLocksForbidden`], held with the groups registry lock;
//!   debug builds assert).
//! - One fsync covers every append made before it started (group commit): the flusher task
//!   takes the log end offset, syncs outside the lock, then moves the HW to that offset and
//!   wakes every waiter with one `watch` send.
//!
//! - Replication (the layer above drives it): `append_replicated` stores a leader's batches as
//!   they are, `truncate_to`/`reset_to` cut a follower's log but never below its high
//!   watermark, `end_watch` moves on every change of the log end, and in
//!   [`HwMode::External`] the high watermark is whatever the replication layer says, never
//!   above this broker's own fsynced offset: `high_watermark <= fsynced_offset <= log end`.
//!
//! Failure policy: an I/O error on append or fsync marks the partition failed; it then refuses
//! writes with `storage_error`, wakes its waiters with the failure, and keeps serving reads of
//! what was durable before. A full disk on append is the exception: the partial write is cut,
//! writes are refused for a growing pause, and the first append that succeeds afterwards ends
//! it (see [`Partition::write_refusal`]).

use std::cell::Cell;
use std::io;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::error::{BrokerError, is_disk_full};
use super::inline_sync;
use crate::config::FlushPolicy;
use crate::limits::Limit;
use crate::log::batch::{BatchHeader, RecordView};
use crate::log::epoch_cache::EpochEnd;
use crate::log::producer_state::{SequenceCheck, SequenceError};
use crate::log::segment::ReadSlice;
use crate::log::walk::BufferBatches;
use crate::log::{LogConfig, Offset, OpenReport, PartitionLog, compact};
use crate::metadata::PartitionId;
use crate::metrics as m;

/// Where the partition's visible range stands; published through a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub log_start_offset: Offset,
    /// Every record below this offset is fsynced on this broker; moved by the flusher.
    pub fsynced_offset: Offset,
    /// Consumers see records below this offset only; `acks=all` waits for it. On a standalone
    /// broker it follows `fsynced_offset` ([`Progress::follow_fsync`]); with replication it
    /// will be the offset fsynced on every in-sync replica, which may lag this broker's own.
    pub high_watermark: Offset,
    /// Set when the partition stops taking writes (storage failure or deletion).
    pub failed: bool,
    /// Set when its topic is deleted: every waiter wakes, and a consumer is told the topic is
    /// gone (`TopicNotFound`) instead of being served an empty page.
    pub deleted: bool,
}

impl Progress {
    /// Records a finished fsync up to `target`. Two flushes may overlap (the flusher and
    /// `close()`) and finish in either order: both offsets only grow. On a standalone broker
    /// the high watermark is the fsynced offset; with `HwMode::External` it stays.
    fn follow_fsync(&mut self, target: Offset, mode: HwMode) {
        self.fsynced_offset = self.fsynced_offset.max(target);
        if mode == HwMode::Standalone {
            self.high_watermark = self.high_watermark.max(self.fsynced_offset);
        }
    }
}

/// Who moves a partition's high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HwMode {
    /// It follows this broker's fsync (a single broker, or a replica of a topic with one).
    Standalone,
    /// The replication layer sets it ([`Partition::advance_high_watermark`]): the offset
    /// fsynced on every in-sync replica (leader), or the leader's, capped (follower).
    External,
}

/// How long after the last append an idle flusher keeps its task around: forever; it exits
/// only when the partition is closed.
#[derive(Debug)]
pub struct Partition {
    /// The topic's name, for metrics labels and errors.
    pub topic: Arc<str>,
    pub id: PartitionId,
    /// The log; std mutex because no `.await` happens under it (see module docs).
    log: Mutex<PartitionLog>,
    /// HW and log start, watched by long-polls, SSE streams and `acks=all` producers.
    progress: watch::Sender<Progress>,
    /// Wakes the flusher; a stored permit means "appends happened since the last sync".
    flush_wanted: Notify,
    /// An `acks=all` producer is waiting: sync now rather than after `flush_ms`.
    flush_urgent: AtomicBool,
    /// `flush_ms` of the topic, for `acks=leader` data.
    flush_ms: AtomicU64,
    /// `flush_bytes` of the topic: this much unsynced data makes the next sync urgent.
    flush_bytes: AtomicU64,
    /// Bytes appended since the flusher last started a sync.
    unflushed_bytes: AtomicU64,
    /// Why the partition stopped taking writes for good, once it has.
    failure: OnceLock<String>,
    /// Set while the disk is full: writes are refused until `retry_at`, then the next append
    /// tries again, and the first that succeeds clears it. Never held across `.await`.
    storage_full: Mutex<Option<StorageFull>>,
    /// Set when the partition is closed or deleted; the flusher exits.
    closed: AtomicBool,
    /// On the leader of a replicated partition: its in-sync replica set against the minimum
    /// `acks=all` needs. None on a standalone broker and on followers.
    isr_gate: watch::Sender<Option<IsrGate>>,
    /// `acks=all` producers appending to or waiting on this partition right now: the leader
    /// asks its followers to fsync at once while there are any.
    acks_all_waiters: AtomicU64,
    /// The leader epoch `append` stamps; only grows (the replication layer sets it).
    leader_epoch: AtomicU32,
    /// Set in [`HwMode::External`]: the flusher no longer moves the high watermark.
    hw_external: AtomicBool,
    /// The log end offset, sent under the partition lock at every change (the leader's
    /// replica fetch long-polls on it).
    end: watch::Sender<Offset>,
    /// Where recovery cut fsynced data that failed its checks, at open (see
    /// [`Partition::synced_data_lost_at`]).
    synced_data_lost_at: Option<Offset>,
    /// Set while this replica follows a leader (or its partition has none): producers'
    /// appends are refused (`not_leader`), only the leader's batches are appended.
    follower: AtomicBool,
    /// The handles of the partition's series, looked up once rather than on every append and
    /// fsync; looked up again at each [`Partition::refresh_metrics`], so a series the exporter
    /// dropped as idle comes back. Taken with no other lock held.
    series: Mutex<PartitionSeries>,
    /// Every batch has been checked against its CRC since the partition was opened (or it
    /// opened empty): see [`Partition::scrubbed`].
    scrubbed: AtomicBool,
    /// This replica lost fsynced records (at open, or cut by [`Partition::cut_damaged`]) and
    /// has not fetched them back since: see [`Partition::lost_data`].
    lost_data: AtomicBool,
}

/// The in-sync replica count of a replicated partition's leader and its minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsrGate {
    pub isr: u32,
    pub min_insync_replicas: u32,
    /// The leadership the gate belongs to: a producer's wait ends when it does.
    pub leader_epoch: u32,
}

impl IsrGate {
    /// Enough in-sync replicas for `acks=all`.
    pub fn open(&self) -> bool {
        self.isr >= self.min_insync_replicas
    }
}

/// Counts one `acks=all` producer on a partition while alive.
#[derive(Debug)]
pub struct AcksAllWaiter(Arc<Partition>);

impl Drop for AcksAllWaiter {
    fn drop(&mut self) {
        self.0.acks_all_waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Records read for a consumer: whole batches plus the range to show from them.
#[derive(Debug)]
pub struct Fetched {
    /// Raw batches as read from the log.
    pub bytes: Vec<u8>,
    /// First offset to show.
    pub from: Offset,
    /// Offset to stop at: the high watermark at the time of the read.
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
    /// Most records to show.
    pub max_records: u32,
    /// Set when the read covered the rest of its segment: where the next segment begins.
    pub segment_end: Option<Offset>,
}

impl Fetched {
    /// Calls `each` for every visible record in order; returns the offset after the last one.
    pub fn for_each_record(
        &self,
        mut each: impl FnMut(&RecordView<'_>) -> Result<(), BrokerError>,
    ) -> Result<Offset, BrokerError> {
        let mut next = self.from;
        let mut shown = 0u32;
        let mut batches = BufferBatches::new(&self.bytes);
        while shown < self.max_records {
            // The walk ends quietly where max_bytes cut the read in the middle of a batch.
            let Some(batch) = batches.next() else { break };
            let batch = batch.map_err(|e| BrokerError::CorruptLog(e.to_string()))?;
            let batch_end = Offset(batch.header.next_offset());
            if batch_end <= self.from {
                continue;
            }
            for record in batch.records() {
                let record = record.map_err(|e| BrokerError::CorruptLog(e.to_string()))?;
                let offset = Offset(record.offset);
                if offset < self.from {
                    continue;
                }
                if offset >= self.high_watermark || shown >= self.max_records {
                    return Ok(next);
                }
                each(&record)?;
                shown += 1;
                next = offset.next();
            }
            // Compaction may leave offset gaps at the end of a batch; skip them.
            next = next.max(batch_end.min(self.high_watermark));
        }
        // Everything to the segment's end was read (maybe nothing, after compaction): go on
        // from the next segment rather than asking for the same gap again.
        if batches.rest().is_empty()
            && shown < self.max_records
            && let Some(end) = self.segment_end
        {
            next = next.max(end.min(self.high_watermark));
        }
        Ok(next)
    }
}

/// In a partition's directory while its replica lacks fsynced records it has not fetched
/// back ([`Partition::lost_data`]).
const LOST_DATA_FILE: &str = "lost-data";

/// Records durably that the replica in `dir` lost fsynced records.
fn mark_lost_data(dir: &Path) -> io::Result<()> {
    let path = dir.join(LOST_DATA_FILE);
    if path.exists() {
        return Ok(());
    }
    std::fs::File::create(&path)?.sync_all()?;
    crate::log::sync_dir(dir)
}

/// The error for a batch its producer's state refuses.
fn sequence_refusal(e: SequenceError, batch: &[u8]) -> BrokerError {
    let sequence = BatchHeader::parse(batch).map_or(-1, |h| h.producer.base_sequence);
    match e {
        SequenceError::Fenced { current_epoch } => BrokerError::ProducerFenced { current_epoch },
        SequenceError::TooOld { oldest_kept } => BrokerError::SequenceTooOld {
            sequence,
            oldest_kept,
        },
        SequenceError::OutOfOrder { last } => BrokerError::SequenceOutOfOrder { sequence, last },
        SequenceError::TooManyProducers { max } => BrokerError::LimitExceeded {
            limit_name: Limit::ProducersPerPartitionMax,
            limit: max as u64,
            detail: format!(
                "the partition tracks {max} idempotent producers; a new one may write once idle ones expire"
            ),
        },
    }
}

/// An fsync at least this long is logged (the disk or the machine is struggling).
const SLOW_FSYNC: Duration = Duration::from_secs(1);

/// The flusher writes a partition's recovery checkpoint (two fsyncs: the file and its
/// directory) at most once per `CHECKPOINT_INTERVAL_MIN`, and then only once
/// `CHECKPOINT_BYTES` were appended since the last one or `CHECKPOINT_INTERVAL_MAX` passed. A
/// restart after a crash scans what follows the checkpoint, so a busy partition still
/// checkpoints every second. Without the byte bound, 1,000 partitions each written a few
/// times a second made 2,000 extra fsyncs a second: batched throughput over 1,000
/// partitions fell to 0.58x that over 8 (`cargo bench --bench partitions`).
const CHECKPOINT_INTERVAL_MIN: Duration = Duration::from_secs(1);
const CHECKPOINT_INTERVAL_MAX: Duration = Duration::from_secs(10);
const CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;

/// Whether the flusher writes the recovery checkpoint now: `since` the last one, with
/// `appended` bytes appended meanwhile (see [`CHECKPOINT_BYTES`]).
fn checkpoint_due(since: Duration, appended: u64) -> bool {
    since >= CHECKPOINT_INTERVAL_MIN
        && (appended >= CHECKPOINT_BYTES || since >= CHECKPOINT_INTERVAL_MAX)
}

/// The handles of a partition's series: its topic's produced counters and its gauges (see
/// `Partition::series`).
#[derive(Debug)]
struct PartitionSeries {
    records_produced: ::metrics::Counter,
    bytes_produced: ::metrics::Counter,
    high_watermark: ::metrics::Gauge,
    log_start_offset: ::metrics::Gauge,
    log_end_offset: ::metrics::Gauge,
    segments: ::metrics::Gauge,
    size_bytes: ::metrics::Gauge,
    producers: ::metrics::Gauge,
}

impl PartitionSeries {
    fn resolve(topic: &Arc<str>, id: PartitionId) -> Self {
        let labels = [("topic", topic.to_string()), ("partition", id.to_string())];
        PartitionSeries {
            records_produced: ::metrics::counter!(m::RECORDS_PRODUCED, "topic" => Arc::clone(topic)),
            bytes_produced: ::metrics::counter!(m::BYTES_PRODUCED, "topic" => Arc::clone(topic)),
            high_watermark: ::metrics::gauge!(m::HIGH_WATERMARK, &labels),
            log_start_offset: ::metrics::gauge!(m::LOG_START_OFFSET, &labels),
            log_end_offset: ::metrics::gauge!(m::LOG_END_OFFSET, &labels),
            segments: ::metrics::gauge!(m::PARTITION_SEGMENTS, &labels),
            size_bytes: ::metrics::gauge!(m::PARTITION_BYTES, &labels),
            producers: ::metrics::gauge!(m::PRODUCERS_TRACKED, &labels),
        }
    }
}

impl Partition {
    /// Opens the partition's log and starts its flusher task on the current runtime.
    pub fn open(
        topic: Arc<str>,
        id: PartitionId,
        dir: &Path,
        log_config: LogConfig,
        flush: FlushPolicy,
        clean: bool,
    ) -> io::Result<(Arc<Self>, OpenReport)> {
        let (log, report) = PartitionLog::open(dir, log_config, clean, now_ms())?;
        // Lost records are remembered on disk until fetched back: after a restart the cut
        // log looks whole, and a replica that forgot would lead without them.
        let lost_data = report.synced_data_lost_at.is_some() || dir.join(LOST_DATA_FILE).exists();
        if lost_data {
            mark_lost_data(dir)?;
        }
        let leader_epoch = log.latest_epoch().unwrap_or(0);
        let end_offset = log.log_end_offset();
        let end = watch::Sender::new(end_offset);
        let progress = Progress {
            log_start_offset: log.log_start_offset(),
            fsynced_offset: log.flushed_offset(),
            high_watermark: log.flushed_offset(),
            failed: false,
            deleted: false,
        };
        let topic_label = Arc::clone(&topic);
        let partition = Arc::new(Partition {
            topic,
            id,
            log: Mutex::new(log),
            progress: watch::Sender::new(progress),
            flush_wanted: Notify::new(),
            flush_urgent: AtomicBool::new(false),
            flush_ms: AtomicU64::new(flush.flush_ms),
            flush_bytes: AtomicU64::new(flush.flush_bytes),
            unflushed_bytes: AtomicU64::new(0),
            failure: OnceLock::new(),
            storage_full: Mutex::new(None),
            closed: AtomicBool::new(false),
            isr_gate: watch::Sender::new(None),
            acks_all_waiters: AtomicU64::new(0),
            leader_epoch: AtomicU32::new(leader_epoch),
            hw_external: AtomicBool::new(false),
            end,
            synced_data_lost_at: report.synced_data_lost_at,
            follower: AtomicBool::new(false),
            scrubbed: AtomicBool::new(progress.log_start_offset == end_offset),
            lost_data: AtomicBool::new(lost_data),
            series: Mutex::new(PartitionSeries::resolve(&topic_label, id)),
        });
        if let Some(offset) = report.synced_data_lost_at {
            tracing::warn!(
                topic = %partition.topic,
                partition = id.0,
                offset = offset.0,
                "fsynced data failed its checks on recovery; the log was cut there"
            );
        }
        partition.register_counters();
        partition.publish_gauges();
        tokio::spawn(Arc::clone(&partition).run_flusher());
        Ok((partition, report))
    }

    fn lock(&self) -> MutexGuard<'_, PartitionLog> {
        debug_assert_eq!(
            PARTITION_LOCKS_FORBIDDEN.get(),
            0,
            "a partition lock taken while a lock that must not wait on partitions is held"
        );
        // Poisoned only by a panic under the lock, and a panic stops the process: a half-done
        // append is never trusted.
        self.log
            .lock()
            .expect("the partition lock is poisoned only after a panic")
    }

    /// The series' handles. Held for a few stores into atomics, never across I/O; poisoned
    /// only by a panic, which stops the process.
    fn series(&self) -> MutexGuard<'_, PartitionSeries> {
        self.series
            .lock()
            .expect("the series lock is poisoned only after a panic")
    }

    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Why the partition stopped taking writes for good (a failed fsync, an I/O error other
    /// than a full disk, deletion).
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Why the partition refuses writes now: [`Partition::failure`], or a full disk it will
    /// recover from once an append succeeds again. `readyz` reports these partitions.
    pub fn write_refusal(&self) -> Option<String> {
        if let Some(why) = self.failure() {
            return Some(why.to_string());
        }
        self.full().as_ref().map(|f| f.why.clone())
    }

    fn full(&self) -> MutexGuard<'_, Option<StorageFull>> {
        self.storage_full
            .lock()
            .expect("storage-full lock poisoned")
    }

    /// Snapshot for describe: (log_start, high_watermark, log_end, segments, bytes).
    pub fn stats(&self) -> PartitionStats {
        let log = self.lock();
        PartitionStats {
            log_start_offset: log.log_start_offset(),
            high_watermark: self.progress().high_watermark,
            log_end_offset: log.log_end_offset(),
            segments: log.segment_count() as u64,
            size_bytes: log.size_bytes(),
        }
    }

    pub fn set_config(&self, log_config: LogConfig, flush: FlushPolicy) {
        self.lock().set_config(log_config);
        self.flush_ms.store(flush.flush_ms, Ordering::Relaxed);
        self.flush_bytes.store(flush.flush_bytes, Ordering::Relaxed);
    }

    /// Appends one built batch, stamped with the current leader epoch. Returns
    /// `(base_offset, next_offset)`. `urgent` asks the flusher to sync now (an `acks=all`
    /// producer will wait for it).
    pub fn append(
        &self,
        batch: &mut [u8],
        records: u32,
        urgent: bool,
    ) -> Result<(Offset, Offset), BrokerError> {
        self.check_writable()?;
        let result = {
            let mut log = self.lock();
            // The role and the epoch are read under the log lock, where `take_lead` and
            // `set_leader_epoch` change them: read before it, a producer could stamp an
            // epoch a newer leadership of this replica had already passed (the log refuses
            // it, and the refusal would fail the partition), or append after a demotion.
            if self.follower.load(Ordering::Acquire) {
                return Err(BrokerError::NotLeader {
                    topic: self.topic.to_string(),
                    partition: self.id,
                });
            }
            let epoch = self.leader_epoch.load(Ordering::Acquire);
            if let Some(original) = self.replayed(&log, batch, records)? {
                return Ok(original);
            }
            let appended = log.append(batch, epoch, now_ms());
            if let Ok((_, next)) = appended {
                self.publish_end(next);
            }
            appended
        };
        match result {
            Ok(range) => {
                self.appended(batch.len() as u64, urgent);
                let series = self.series();
                series.records_produced.increment(u64::from(records));
                series.bytes_produced.increment(batch.len() as u64);
                Ok(range)
            }
            Err(e) => Err(self.append_failed(e)),
        }
    }

    /// Appends whole batches exactly as the leader stored them (a follower): offsets and
    /// epochs are kept. Returns the new log end. Refused like [`Partition::append`] while the
    /// partition does not take writes; a batch that fails its CRC or is cut is `CorruptLog`,
    /// offsets or epochs out of order are `InvalidRequest`, and then nothing was appended.
    /// `urgent` asks the flusher to sync now (the leader asked for `sync_now`).
    pub fn append_replicated(&self, batches: &[u8], urgent: bool) -> Result<Offset, BrokerError> {
        self.append_replicated_onto(batches, None, urgent)
    }

    /// [`Partition::append_replicated`] of batches fetched from `fetched_at`: refused
    /// (`InvalidRequest`, nothing appended) unless the log still ends there. The log may
    /// have been cut meanwhile ([`Partition::cut_damaged`]); batches from past the cut
    /// would leave a hole in it.
    pub fn append_replicated_at(
        &self,
        batches: &[u8],
        fetched_at: Offset,
        urgent: bool,
    ) -> Result<Offset, BrokerError> {
        self.append_replicated_onto(batches, Some(fetched_at), urgent)
    }

    fn append_replicated_onto(
        &self,
        batches: &[u8],
        expected_end: Option<Offset>,
        urgent: bool,
    ) -> Result<Offset, BrokerError> {
        self.check_writable()?;
        if batches.is_empty() {
            return Ok(self.log_end_offset());
        }
        let result = {
            let mut log = self.lock();
            if let Some(expected) = expected_end
                && log.log_end_offset() != expected
            {
                return Err(BrokerError::InvalidRequest(format!(
                    "the log ends at {}, not at {expected} where the batches were fetched from",
                    log.log_end_offset()
                )));
            }
            let appended = log.append_replicated(batches, now_ms());
            // Even a failed append may have written whole batches before the failure.
            self.publish_end(log.log_end_offset());
            appended
        };
        match result {
            Ok(end) => {
                self.appended(batches.len() as u64, urgent);
                Ok(end)
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Err(BrokerError::CorruptLog(format!("replicated batches: {e}")))
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err(BrokerError::InvalidRequest(
                format!("replicated batches: {e}"),
            )),
            Err(e) => Err(self.append_failed(e)),
        }
    }

    /// Refuses writes while the partition failed, or while a full disk's pause lasts.
    fn check_writable(&self) -> Result<(), BrokerError> {
        if let Some(why) = self.failure() {
            return Err(BrokerError::StorageUnavailable(why.to_string()));
        }
        if let Some(full) = self.full().as_ref()
            && Instant::now() < full.retry_at
        {
            return Err(BrokerError::StorageUnavailable(full.why.clone()));
        }
        Ok(())
    }

    /// After a successful append of `len` bytes: a full disk is over, the flusher is woken.
    fn appended(&self, len: u64, urgent: bool) {
        if self.full().take().is_some() {
            tracing::info!(
                topic = %self.topic,
                partition = self.id.0,
                "partition takes writes again: the disk has room"
            );
        }
        let unflushed = self.unflushed_bytes.fetch_add(len, Ordering::Relaxed) + len;
        if urgent || unflushed >= self.flush_bytes.load(Ordering::Relaxed) {
            self.flush_urgent.store(true, Ordering::Release);
        }
        self.flush_wanted.notify_one();
    }

    fn append_failed(&self, e: io::Error) -> BrokerError {
        if is_disk_full(&e) {
            self.disk_full(e)
        } else {
            self.fail(format!("append failed: {e}"))
        }
    }

    /// Sets the leader epoch `append` stamps from now on. An epoch below the log's latest is
    /// refused (a leader never writes under an older epoch than its log holds).
    pub fn set_leader_epoch(&self, epoch: u32) -> Result<(), BrokerError> {
        let log = self.lock();
        if let Some(latest) = log.latest_epoch()
            && epoch < latest
        {
            return Err(BrokerError::InvalidRequest(format!(
                "leader epoch {epoch} is older than the log's latest, {latest}"
            )));
        }
        self.leader_epoch.store(epoch, Ordering::Release);
        Ok(())
    }

    /// The leader epoch `append` stamps.
    pub fn leader_epoch(&self) -> u32 {
        self.leader_epoch.load(Ordering::Acquire)
    }

    /// The epoch of the log's last batch (a follower's `last_fetched_epoch`).
    pub fn latest_epoch(&self) -> Option<u32> {
        self.lock().latest_epoch()
    }

    /// The leader's answer to "where does epoch `epoch` end in your log" (KIP-279).
    pub fn epoch_end(&self, epoch: u32) -> Option<EpochEnd> {
        self.lock().epoch_end(epoch)
    }

    /// Bytes stored from the batch holding `offset` to the log end (a follower's lag in
    /// bytes; see [`crate::log::PartitionLog::bytes_from`]). Takes the partition lock briefly,
    /// reads no file.
    pub fn bytes_from(&self, offset: Offset) -> u64 {
        self.lock().bytes_from(offset)
    }

    /// The log end offset (no lock: the last value sent on [`Partition::end_watch`]).
    pub fn log_end_offset(&self) -> Offset {
        *self.end.borrow()
    }

    /// The log end offset, moved on every append, replicated append, truncation and reset.
    /// It is sent under the partition lock: never call into the partition while holding a
    /// `borrow()` of it. Read the end (`borrow`, or [`Partition::log_end_offset`]) after
    /// subscribing: an append that finds no receiver sets the value without waking anyone
    /// ([`Partition::publish_end`]).
    pub fn end_watch(&self) -> watch::Receiver<Offset> {
        self.end.subscribe()
    }

    /// Sets the log end after an append. Waking a watch's receivers takes its eight
    /// waiter-list locks even when none waits, on every produce: so with no receiver the value
    /// is set and nobody woken. What makes that safe is the watch's own lock: a receiver reads
    /// the end (`borrow`, under the watch's read lock) after it subscribed. If that read came
    /// before this write, its subscription was counted here and it is woken; if after, it
    /// read the new end. A receiver must not rely on reading the log instead.
    fn publish_end(&self, end: Offset) {
        self.end.send_if_modified(|value| {
            *value = end;
            self.end.receiver_count() > 0
        });
    }

    /// Every record below this offset is fsynced on this broker.
    pub fn fsynced_offset(&self) -> Offset {
        self.progress().fsynced_offset
    }

    /// Who moves the high watermark from now on. Into `External` from `Standalone`, the
    /// high watermark drops to the log start, once: a replica opened after a crash set it to
    /// its recovered end, which may hold an unreplicated tail its leader will have it cut
    /// (never below the high watermark); the replication layer raises it again. Setting the
    /// mode it already has changes nothing. Back to `Standalone`, the high watermark catches
    /// up with the fsynced offset at once.
    pub fn set_hw_mode(&self, mode: HwMode) {
        let was_external = self
            .hw_external
            .swap(mode == HwMode::External, Ordering::AcqRel);
        if mode == HwMode::External && !was_external {
            self.progress.send_if_modified(|p| {
                let before = p.high_watermark;
                p.high_watermark = p.log_start_offset;
                p.high_watermark != before
            });
        }
        if mode == HwMode::Standalone {
            self.progress.send_if_modified(|p| {
                let before = p.high_watermark;
                p.high_watermark = p.high_watermark.max(p.fsynced_offset);
                p.high_watermark != before
            });
        }
    }

    fn hw_mode(&self) -> HwMode {
        if self.hw_external.load(Ordering::Acquire) {
            HwMode::External
        } else {
            HwMode::Standalone
        }
    }

    /// Raises the high watermark to `offset` (the replication layer, in
    /// [`HwMode::External`]), capped at this broker's fsynced offset; it never goes back.
    /// Wakes consumers and `acks=all` waiters when it moved. Returns the high watermark.
    pub fn advance_high_watermark(&self, offset: Offset) -> Offset {
        let mut hw = Offset::ZERO;
        self.progress.send_if_modified(|p| {
            let before = p.high_watermark;
            p.high_watermark = p.high_watermark.max(offset.min(p.fsynced_offset));
            hw = p.high_watermark;
            p.high_watermark != before
        });
        hw
    }

    /// Cuts the log at the batch boundary at or below `offset` (a follower dropping a
    /// divergent tail). Returns the new end. Refused with `BelowHighWatermark` if the cut
    /// would go below the high watermark: the caller stops the replica. Runs on the
    /// blocking pool (the cut is synced, the checkpoints written).
    pub async fn truncate_to(self: &Arc<Self>, offset: Offset) -> Result<Offset, BrokerError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.truncate_blocking(offset))
            .await
            .map_err(|e| BrokerError::Io(e.to_string()))?
    }

    fn truncate_blocking(&self, offset: Offset) -> Result<Offset, BrokerError> {
        let mut log = self.lock();
        let end = log
            .truncation_point(offset)
            .map_err(|e| BrokerError::from_io("truncating the log", e))?;
        if end == log.log_end_offset() {
            return Ok(end);
        }
        // Checked and lowered in one step, so a concurrent `advance_high_watermark` (capped
        // at the fsynced offset) cannot pass the cut.
        self.lower_fsynced_unless_below_hw(offset, end)?;
        let end = match log.truncate_to(offset) {
            Ok(end) => end,
            Err(e) => return Err(self.fail(format!("truncation failed: {e}"))),
        };
        self.end.send_replace(end);
        drop(log);
        tracing::info!(
            topic = %self.topic,
            partition = self.id.0,
            offset = end.0,
            "log truncated"
        );
        Ok(end)
    }

    /// Refuses a cut to `end` below the high watermark; else lowers the fsynced offset to it.
    fn lower_fsynced_unless_below_hw(
        &self,
        offset: Offset,
        end: Offset,
    ) -> Result<(), BrokerError> {
        let mut refused = None;
        self.progress.send_if_modified(|p| {
            if end < p.high_watermark {
                refused = Some(p.high_watermark);
                return false;
            }
            p.fsynced_offset = p.fsynced_offset.min(end);
            true
        });
        match refused {
            Some(high_watermark) => Err(BrokerError::BelowHighWatermark {
                offset,
                high_watermark,
            }),
            None => Ok(()),
        }
    }

    /// Empties the log and starts it at `offset` (a follower below its leader's log start,
    /// or wholly divergent). Refused with `BelowHighWatermark` for an offset below the high
    /// watermark. Runs on the blocking pool.
    pub async fn reset_to(self: &Arc<Self>, offset: Offset) -> Result<(), BrokerError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.reset_blocking(offset))
            .await
            .map_err(|e| BrokerError::Io(e.to_string()))?
    }

    fn reset_blocking(&self, offset: Offset) -> Result<(), BrokerError> {
        let mut log = self.lock();
        self.lower_fsynced_unless_below_hw(offset, offset.min(log.log_end_offset()))?;
        if let Err(e) = log.reset_to(offset, now_ms()) {
            return Err(self.fail(format!("reset failed: {e}")));
        }
        self.end.send_replace(offset);
        self.progress.send_modify(|p| {
            p.log_start_offset = offset;
            p.fsynced_offset = offset;
            p.high_watermark = offset;
        });
        drop(log);
        tracing::info!(
            topic = %self.topic,
            partition = self.id.0,
            offset = offset.0,
            "log reset: it is empty and starts at the offset"
        );
        self.publish_gauges();
        Ok(())
    }

    /// Where recovery cut data that had been fsynced, because it failed its checks (a
    /// flipped bit on disk, not a torn write), if it did when the partition was opened. The
    /// records from there on are gone from this replica: a follower fetches them again from
    /// its leader, and replication must not count this replica as holding what it acknowledged
    /// before the crash (issue 9 item 7).
    pub fn synced_data_lost_at(&self) -> Option<Offset> {
        self.synced_data_lost_at
    }

    /// Reads every batch of the log and checks its CRC (recovery only checks what follows the
    /// recovery checkpoint). Returns where the first damaged batch is: the offset to cut the
    /// log at ([`Partition::cut_damaged`] on a follower, which then fetches again from its
    /// leader), or None. The reads run on the blocking pool, outside the partition lock;
    /// appends go on meanwhile. Once a scrub has run, [`Partition::scrubbed`] is true.
    pub async fn scrub(self: &Arc<Self>) -> Result<Option<Offset>, BrokerError> {
        let plan = self.lock().scrub_plan();
        let found = tokio::task::spawn_blocking(move || plan.run())
            .await
            .map_err(|e| BrokerError::Io(e.to_string()))?
            .map_err(|e| BrokerError::from_io("checking the log", e))?;
        match found {
            Some(offset) => {
                ::metrics::counter!(m::DAMAGED_BATCHES_FOUND, "topic" => Arc::clone(&self.topic))
                    .increment(1);
                tracing::warn!(
                    topic = %self.topic,
                    partition = self.id.0,
                    offset = offset.0,
                    "a stored batch failed its CRC check"
                );
            }
            None => self.scrubbed.store(true, Ordering::Release),
        }
        Ok(found)
    }

    /// Every batch has passed a CRC check since this replica was opened ([`Partition::scrub`]
    /// found nothing, or the damage it found was cut), or the log opened empty. Recovery
    /// checks only what follows the recovery checkpoint: until this is true a follower does
    /// not fetch, so it cannot rejoin the in-sync replica set with damage below it.
    pub fn scrubbed(&self) -> bool {
        self.scrubbed.load(Ordering::Acquire)
    }

    /// This replica lost fsynced records (recovery cut data that failed its checks, or a
    /// scrub found damage and [`Partition::cut_damaged`] cut it) and has not fetched back
    /// up to its leader's high watermark since ([`Partition::refetched_lost_data`]). Such a
    /// replica must not lead: records acknowledged to producers are missing from it.
    pub fn lost_data(&self) -> bool {
        self.lost_data.load(Ordering::Acquire)
    }

    /// A follower that lost data has fetched and fsynced everything up to its leader's high
    /// watermark: it holds every acknowledged record again.
    pub fn refetched_lost_data(&self) {
        if self.lost_data.swap(false, Ordering::AcqRel) {
            let marker = self.lock().dir().join(LOST_DATA_FILE);
            // Left behind, it only makes the next start wait for a fetch before leading.
            if let Err(e) = std::fs::remove_file(&marker)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %marker.display(), "removing the lost-data mark: {e}");
            }
            tracing::info!(
                topic = %self.topic,
                partition = self.id.0,
                "the records this replica lost are fetched back from the leader"
            );
        }
    }

    /// Cuts a follower's log where a scrub found damage (`offset`, from
    /// [`Partition::scrub`]), below its high watermark if it must: the high watermark drops
    /// to the cut, so nothing past it is served from this replica, and the replica counts
    /// as having lost data ([`Partition::lost_data`]) until it has fetched the records back.
    /// A cut at or below the log start empties the log there. Returns the new log end, or
    /// None, and nothing is cut, when the replica leads by then ([`Partition::take_lead`]).
    /// Runs on the blocking pool (the cut is synced, the checkpoints written).
    pub async fn cut_damaged(
        self: &Arc<Self>,
        offset: Offset,
    ) -> Result<Option<Offset>, BrokerError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.cut_damaged_blocking(offset))
            .await
            .map_err(|e| BrokerError::Io(e.to_string()))?
    }

    fn cut_damaged_blocking(&self, offset: Offset) -> Result<Option<Offset>, BrokerError> {
        let mut log = self.lock();
        // Under the lock, as [`Partition::take_lead`] decides: a replica that took the lead
        // since the scrub found the damage keeps its records (its high watermark counts them
        // as acknowledged); it is failed instead, as a damaged leader is.
        if !self.is_follower() {
            return Ok(None);
        }
        let start = log.log_start_offset();
        let end = if offset > start {
            log.truncation_point(offset)
                .map_err(|e| BrokerError::from_io("cutting damaged data", e))?
        } else {
            start
        };
        self.lost_data.store(true, Ordering::Release);
        // Lowered before the cut, in one step: a concurrent `advance_high_watermark` is capped
        // at the fsynced offset, so it cannot pass the cut.
        let end = end.max(start);
        self.progress.send_modify(|p| {
            p.fsynced_offset = p.fsynced_offset.min(end);
            p.high_watermark = p.high_watermark.min(end);
        });
        let cut = if end > start {
            log.truncate_to(offset)
        } else {
            log.reset_to(start, now_ms()).map(|()| start)
        };
        let end = match cut {
            Ok(end) => end,
            Err(e) => return Err(self.fail(format!("cutting damaged data failed: {e}"))),
        };
        let marked = mark_lost_data(log.dir());
        self.end.send_replace(end);
        drop(log);
        if let Err(e) = marked {
            return Err(self.fail(format!("recording the damaged data's cut failed: {e}")));
        }
        self.scrubbed.store(true, Ordering::Release);
        tracing::warn!(
            topic = %self.topic,
            partition = self.id.0,
            offset = end.0,
            "damaged data cut: this replica fetches it again from its leader"
        );
        self.publish_gauges();
        Ok(Some(end))
    }

    /// Makes this replica its partition's leader (producers' appends taken), unless it lost
    /// fsynced records it has not fetched back ([`Partition::lost_data`]): leading would hand
    /// their offsets out again. Decided under the log lock, as
    /// [`Partition::cut_damaged`] decides, so a scrub's cut and a new leadership never
    /// overlap: either the cut comes first and the replica does not lead, or the lead does
    /// and nothing is cut. Returns whether it leads.
    pub fn take_lead(&self) -> bool {
        let _log = self.lock();
        if self.lost_data() {
            return false;
        }
        self.set_follower(false);
        true
    }

    /// A leader whose fsynced data failed its CRC check stops taking writes: it cannot fetch
    /// the records back, and cutting them would hand their offsets out again.
    pub fn fail_damaged(&self, offset: Offset) -> BrokerError {
        self.scrubbed.store(true, Ordering::Release);
        self.fail(format!(
            "a stored batch at offset {offset} failed its CRC check"
        ))
    }

    /// Whole batches for a follower, from the one holding `offset` up to the log end (not
    /// the high watermark), about `max_bytes` but at least one batch, never a cut one.
    /// Compaction gaps are skipped; at the log end the answer is empty. `offset` outside
    /// `[log start, log end]` is `OffsetOutOfRange`. The file reads run on the blocking pool.
    pub async fn read_for_replica(
        self: &Arc<Self>,
        offset: Offset,
        max_bytes: u64,
    ) -> Result<Vec<u8>, BrokerError> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.read_for_replica_blocking(offset, max_bytes))
            .await
            .map_err(|e| BrokerError::Io(e.to_string()))?
    }

    fn read_for_replica_blocking(
        &self,
        offset: Offset,
        max_bytes: u64,
    ) -> Result<Vec<u8>, BrokerError> {
        let mut from = offset;
        loop {
            let slice = {
                let mut log = self.lock();
                if from < log.log_start_offset() || from > log.log_end_offset() {
                    return Err(BrokerError::OffsetOutOfRange {
                        offset,
                        log_start_offset: log.log_start_offset(),
                        high_watermark: self.progress().high_watermark,
                    });
                }
                log.read_slice(from)
                    .map_err(|e| BrokerError::Io(e.to_string()))?
            };
            let Some(mut slice) = slice else {
                return Ok(Vec::new());
            };
            slice
                .skip_before(from.0)
                .map_err(|e| BrokerError::Io(e.to_string()))?;
            if slice.len == 0 {
                // The rest of the segment is a compaction gap: go on at the next one.
                from = Offset(slice.segment_end);
                continue;
            }
            let mut bytes = slice
                .read(max_bytes)
                .map_err(|e| BrokerError::Io(e.to_string()))?;
            let mut walk = BufferBatches::new(&bytes);
            for batch in walk.by_ref() {
                batch.map_err(|e| BrokerError::CorruptLog(e.to_string()))?;
            }
            let whole = bytes.len() - walk.rest().len();
            bytes.truncate(whole);
            return Ok(bytes);
        }
    }

    /// Under the partition lock, before an append: `Some(range)` if `batch` is a retry of an
    /// idempotent producer's batch this partition holds (the range it was given; nothing is
    /// written), an error if its producer state refuses it, `None` to append it.
    fn replayed(
        &self,
        log: &PartitionLog,
        batch: &[u8],
        records: u32,
    ) -> Result<Option<(Offset, Offset)>, BrokerError> {
        let original = match log.check_producer(batch) {
            Ok(SequenceCheck::Append) => return Ok(None),
            Ok(SequenceCheck::Duplicate(original)) => original,
            Err(e) => {
                if let SequenceError::Fenced { .. } = e {
                    ::metrics::counter!(m::PRODUCERS_FENCED, "topic" => Arc::clone(&self.topic))
                        .increment(1);
                }
                return Err(sequence_refusal(e, batch));
            }
        };
        let held = original.last_offset - original.base_offset + 1;
        if held != u64::from(records) {
            return Err(BrokerError::SequenceReused {
                sequence: original.sequence,
                held,
                sent: u64::from(records),
            });
        }
        ::metrics::counter!(m::DUPLICATES_SUPPRESSED, "topic" => Arc::clone(&self.topic))
            .increment(u64::from(records));
        // The original may still wait for its fsync; an `acks=all` retry waits for it too.
        self.flush_urgent.store(true, Ordering::Release);
        self.flush_wanted.notify_one();
        Ok(Some((
            Offset(original.base_offset),
            Offset(original.last_offset).next(),
        )))
    }

    /// An append found the disk full. Nothing was appended (the log's state did not move) but
    /// the file may hold part of the batch: cut it back to the last good batch, then refuse
    /// writes for a while and try again, with a growing pause. If the cut fails too, the
    /// partition fails for good.
    fn disk_full(&self, e: io::Error) -> BrokerError {
        if let Err(cut) = self.lock().discard_unwritten() {
            return self.fail(format!(
                "append failed: {e}; cutting the partial write: {cut}"
            ));
        }
        let why = format!("disk full: {e}");
        let mut full = self.full();
        let pause = full.as_ref().map_or(STORAGE_FULL_RETRY_MIN, |f| {
            (f.pause * 2).min(STORAGE_FULL_RETRY_MAX)
        });
        if full.is_none() {
            ::metrics::counter!(m::STORAGE_ERRORS, "topic" => Arc::clone(&self.topic)).increment(1);
            tracing::warn!(
                topic = %self.topic,
                partition = self.id.0,
                "partition refuses writes until the disk has room: {e}"
            );
        }
        *full = Some(StorageFull {
            why: why.clone(),
            retry_at: Instant::now() + pause,
            pause,
        });
        BrokerError::StorageUnavailable(why)
    }

    /// Waits until the high watermark reaches `offset`, the partition fails, or `timeout`.
    pub async fn wait_durable(&self, offset: Offset, timeout: Duration) -> Result<(), BrokerError> {
        let mut rx = self.progress.subscribe();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|p| p.high_watermark >= offset || p.failed),
        )
        .await;
        match waited {
            Err(_) => Err(BrokerError::Timeout),
            Ok(Err(_)) => Err(BrokerError::StorageUnavailable("partition closed".into())),
            Ok(Ok(p)) if p.high_watermark >= offset => Ok(()),
            Ok(Ok(_)) => Err(BrokerError::StorageUnavailable(
                self.failure().unwrap_or("partition failed").to_string(),
            )),
        }
    }

    /// Sets (or, with None, clears) the in-sync replica gate of a replicated partition's
    /// leader. Producers waiting on it are woken when it closes.
    pub fn set_isr_gate(&self, gate: Option<IsrGate>) {
        self.isr_gate
            .send_if_modified(|g| std::mem::replace(g, gate) != gate);
    }

    /// A replica of a cluster member, just opened: it refuses producers until the
    /// replication layer gives it a role from the metadata ([`Partition::set_follower`]).
    /// Opened from disk after a restart it may be a deposed leader's log, and the metadata
    /// that says so may not be replayed yet: taking a write then would stamp it at this log's
    /// end, with the local fsync as its only high watermark, offsets the partition's leader
    /// has given to other records (issue 11, item 5). For the same reason its high
    /// watermark is the replication layer's to raise from the start: its recovered end may
    /// hold a tail no in-sync replica has, which consumers must never be served (its
    /// replayed metadata may still name it leader, so reads are served here).
    pub fn await_role(&self) {
        self.set_follower(true);
        self.set_hw_mode(HwMode::External);
    }

    /// Makes this replica a follower (producers' appends refused) or a leader again.
    pub fn set_follower(&self, follower: bool) {
        self.follower.store(follower, Ordering::Release);
    }

    /// Whether this replica follows a leader (or waits for its role): its high watermark may
    /// trail the leader's by a fetch, or restart at its log start after a restart.
    pub fn is_follower(&self) -> bool {
        self.follower.load(Ordering::Acquire)
    }

    pub fn isr_gate(&self) -> Option<IsrGate> {
        *self.isr_gate.borrow()
    }

    /// Registers an `acks=all` producer until the guard drops (taken before its append, so
    /// a follower fetch woken by that append already sees it).
    pub fn acks_all_waiter(self: &Arc<Self>) -> AcksAllWaiter {
        self.acks_all_waiters.fetch_add(1, Ordering::AcqRel);
        AcksAllWaiter(Arc::clone(self))
    }

    /// True while an `acks=all` producer appends to or waits on this partition.
    pub fn acks_all_waiting(&self) -> bool {
        self.acks_all_waiters.load(Ordering::Acquire) > 0
    }

    /// [`Partition::wait_durable`] for `acks=all`. On a replicated leader (`leader`: its
    /// gate when the records were appended) it also ends when the in-sync replica set falls
    /// below its minimum ([`BrokerError::NotEnoughReplicasAfterAppend`]: the high watermark
    /// freezes then) or the leadership of that epoch ends
    /// ([`BrokerError::LeaderChangedAfterAppend`]: as a follower this replica's high
    /// watermark follows another leader's log, which may hold other records at these
    /// offsets). Either way the outcome is unknown.
    pub async fn wait_replicated(
        &self,
        offset: Offset,
        timeout: Duration,
        leader: Option<IsrGate>,
    ) -> Result<(), BrokerError> {
        let Some(leader) = leader else {
            return self.wait_durable(offset, timeout).await;
        };
        let epoch = leader.leader_epoch;
        let leads = |g: &Option<IsrGate>| g.is_some_and(|g| g.leader_epoch == epoch);
        let mut gate = self.isr_gate.subscribe();
        let closed = async {
            let closed = gate
                .wait_for(|g| !(leads(g) && g.is_some_and(|g| g.open())))
                .await
                .map(|g| *g);
            match closed {
                Ok(g) => g,
                // The partition is gone; `wait_durable` ends the wait.
                Err(_) => std::future::pending().await,
            }
        };
        let changed = || BrokerError::LeaderChangedAfterAppend {
            topic: self.topic.to_string(),
            partition: self.id,
        };
        tokio::select! {
            biased;
            durable = self.wait_durable(offset, timeout) => match durable {
                Ok(()) if !leads(&self.isr_gate()) => Err(changed()),
                // The replica was closed after it stopped leading (a reassignment removed
                // it): the records may live on at the new leader.
                Err(BrokerError::StorageUnavailable(_)) if !leads(&self.isr_gate()) => {
                    Err(changed())
                }
                other => other,
            },
            g = closed => match g {
                // Still the leader of that epoch: the set shrank. The high watermark may
                // have passed the records just before.
                Some(g) if g.leader_epoch == epoch => {
                    if self.progress().high_watermark >= offset {
                        return Ok(());
                    }
                    Err(BrokerError::NotEnoughReplicasAfterAppend {
                        isr: g.isr,
                        min_insync_replicas: g.min_insync_replicas,
                    })
                }
                _ => Err(changed()),
            },
        }
    }

    /// Reads records from `offset` for a consumer. Only records below the HW are shown.
    /// The file read (up to `fetch_bytes_max`) runs on the blocking pool, not on the async
    /// worker: the lock is taken only to find the bytes to read.
    pub async fn fetch(
        &self,
        offset: Offset,
        max_records: u32,
        max_bytes: u64,
    ) -> Result<Fetched, BrokerError> {
        if self.progress.borrow().deleted {
            return Err(BrokerError::TopicNotFound(self.topic.to_string()));
        }
        let plan = self.plan_fetch(offset, max_records, max_bytes)?;
        // Nothing to read (a long-poll at the high watermark): no trip to the blocking pool.
        if plan.slice.is_none() {
            return plan.read();
        }
        tokio::task::spawn_blocking(move || plan.read())
            .await
            .map_err(|e| BrokerError::Io(e.to_string()))?
    }

    /// [`Partition::fetch`] for callers that may block their thread (startup replay).
    pub fn fetch_blocking(
        &self,
        offset: Offset,
        max_records: u32,
        max_bytes: u64,
    ) -> Result<Fetched, BrokerError> {
        self.plan_fetch(offset, max_records, max_bytes)?.read()
    }

    /// Under the lock: checks `offset` and finds the bytes to read for it.
    fn plan_fetch(
        &self,
        offset: Offset,
        max_records: u32,
        max_bytes: u64,
    ) -> Result<FetchPlan, BrokerError> {
        let mut log = self.lock();
        let progress = self.progress();
        // Up to the log end, not the HW: an `acks=leader` producer already holds offsets
        // past the HW, and a long-poll there waits for them rather than being refused.
        if offset < progress.log_start_offset || offset > log.log_end_offset() {
            return Err(BrokerError::OffsetOutOfRange {
                offset,
                log_start_offset: progress.log_start_offset,
                high_watermark: progress.high_watermark,
            });
        }
        let slice = if offset < progress.high_watermark {
            log.read_slice(offset)
                .map_err(|e| BrokerError::Io(e.to_string()))?
        } else {
            None
        };
        Ok(FetchPlan {
            topic: Arc::clone(&self.topic),
            slice,
            progress,
            offset,
            max_records,
            max_bytes,
        })
    }

    /// The first offset whose record timestamp is `>= timestamp_ms`, or the HW if none.
    /// As for a fetch, the lock is taken only to find the bytes to read; the file read (up
    /// to the rest of a segment) runs on the blocking pool.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Offset, BrokerError> {
        let (slice, progress) = {
            let mut log = self.lock();
            let slice = log
                .time_slice(timestamp_ms)
                .map_err(|e| BrokerError::Io(e.to_string()))?;
            (slice, self.progress())
        };
        let Some(slice) = slice else {
            return Ok(progress.high_watermark);
        };
        let found =
            tokio::task::spawn_blocking(move || first_offset_at_or_after(&slice, timestamp_ms))
                .await
                .map_err(|e| BrokerError::Io(e.to_string()))??;
        Ok(found.map_or(progress.high_watermark, |offset| {
            offset
                .max(progress.log_start_offset)
                .min(progress.high_watermark)
        }))
    }

    /// Moves the log start offset forward (`delete-records`). Returns the new log start.
    pub fn delete_records_before(&self, offset: Offset) -> Result<Offset, BrokerError> {
        let hw = self.progress().high_watermark;
        if offset > hw {
            return Err(BrokerError::OffsetOutOfRange {
                offset,
                log_start_offset: self.progress().log_start_offset,
                high_watermark: hw,
            });
        }
        let start = self
            .lock()
            .delete_records_before(offset, hw)
            .map_err(|e| BrokerError::Io(e.to_string()))?;
        // Retention and delete-records may race: the published start only moves forward.
        self.progress
            .send_modify(|p| p.log_start_offset = p.log_start_offset.max(start));
        self.publish_gauges();
        Ok(start)
    }

    /// Deletes segments retention no longer keeps. Returns how many were deleted.
    pub fn apply_retention(&self, now_ms: i64) -> io::Result<usize> {
        let hw = self.progress().high_watermark;
        let (deleted, start) = {
            let mut log = self.lock();
            // Deleted: its directory path may name a topic made again since (`mark_deleted`).
            if self.closed.load(Ordering::Acquire) {
                return Ok(0);
            }
            (log.apply_retention(now_ms, hw)?, log.log_start_offset())
        };
        if deleted > 0 {
            self.progress
                .send_modify(|p| p.log_start_offset = p.log_start_offset.max(start));
            ::metrics::counter!(m::SEGMENTS_DELETED, "topic" => Arc::clone(&self.topic))
                .increment(deleted as u64);
        }
        self.publish_gauges();
        Ok(deleted)
    }

    /// Forgets idempotent producers idle for `producer_idle_timeout_ms`; returns how many.
    pub fn expire_producers(&self, now_ms: i64) -> usize {
        self.lock().expire_producers(now_ms)
    }

    /// Compacts the sealed segments below the high watermark: the latest record per key is
    /// kept, tombstones older than `delete_retention_ms` go. Returns the records dropped.
    /// Passes of at most `keys_max` keys each (see [`compact`]) read and write the files
    /// without the partition lock; each installs its result under it.
    pub fn compact(&self, now_ms: i64, delete_retention_ms: i64, keys_max: u32) -> io::Result<u64> {
        let hw = self.progress().high_watermark;
        let mut from = 0;
        let mut dropped = 0;
        while from < hw.0 {
            let (plan, dir, interval) = {
                let log = self.lock();
                if self.closed.load(Ordering::Acquire) {
                    break;
                }
                let Some(plan) = log.compaction_plan(hw) else {
                    break;
                };
                (
                    plan,
                    log.dir().to_path_buf(),
                    log.config().index_interval_bytes,
                )
            };
            let times = (now_ms, delete_retention_ms);
            let pass = compact::compaction_pass(&dir, &plan, from, keys_max, times, interval)?;
            if !pass.rewritten.is_empty() {
                let mut log = self.lock();
                if self.closed.load(Ordering::Acquire) {
                    break;
                }
                log.install_compacted(pass.rewritten)?;
            }
            dropped += pass.dropped_records;
            from = pass.end;
        }
        if dropped > 0 {
            ::metrics::counter!(m::COMPACTED_RECORDS, "topic" => Arc::clone(&self.topic))
                .increment(dropped);
            self.publish_gauges();
        }
        Ok(dropped)
    }

    /// Marks the partition failed and wakes every waiter. Returns the error to report.
    fn fail(&self, why: String) -> BrokerError {
        let _ = self.failure.set(why.clone());
        ::metrics::counter!(m::STORAGE_ERRORS, "topic" => Arc::clone(&self.topic)).increment(1);
        tracing::error!(
            topic = %self.topic,
            partition = self.id.0,
            "partition failed, it stops taking writes: {why}"
        );
        self.progress.send_modify(|p| p.failed = true);
        BrokerError::StorageUnavailable(why)
    }

    /// Stops the flusher after one last sync, seals the indexes (clean shutdown).
    pub async fn close(self: &Arc<Self>) -> io::Result<()> {
        if let Some(why) = self.write_refusal() {
            // After a failed fsync, a later successful one proves nothing: never let this
            // partition be sealed and trusted as cleanly shut down.
            self.closed.store(true, Ordering::Release);
            self.flush_wanted.notify_one();
            return Err(io::Error::other(format!(
                "{}/{} failed earlier: {why}",
                self.topic, self.id
            )));
        }
        self.flush_now().await?;
        self.closed.store(true, Ordering::Release);
        self.flush_wanted.notify_one();
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || me.lock().close())
            .await
            .map_err(io::Error::other)?
    }

    /// Closes the partition for deletion: fails waiters, stops the flusher, removes files.
    ///
    /// `closed` is set under the log lock, and every later file work by path (retention,
    /// a compaction's install, the recovery checkpoint) checks it under that lock first: the
    /// partition's directory path is the topic's, and once a topic of the same name is made
    /// again (after this call, under the broker's admin lock) it names the new topic's files.
    pub fn mark_deleted(&self) {
        let _ = self.failure.set("topic deleted".into());
        {
            let _log = self.lock();
            self.closed.store(true, Ordering::Release);
        }
        // Wakes the flusher out of an `acks=leader` wait too, and it returns.
        self.flush_urgent.store(true, Ordering::Release);
        self.flush_wanted.notify_one();
        self.progress.send_modify(|p| {
            p.failed = true;
            p.deleted = true;
        });
    }

    /// The flusher: one task per partition, one fsync for every append made before it starts.
    async fn run_flusher(self: Arc<Self>) {
        let mut last_checkpoint = Instant::now();
        // Bytes appended since the last recovery checkpoint: what a restart after a crash
        // would scan beyond it.
        let mut since_checkpoint: u64 = 0;
        loop {
            self.flush_wanted.notified().await;
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            if !self.flush_urgent.swap(false, Ordering::AcqRel) {
                let delay = Duration::from_millis(self.flush_ms.load(Ordering::Relaxed));
                // acks=leader data: wait out flush_ms unless an acks=all producer arrives.
                let _ = tokio::time::timeout(delay, async {
                    while !self.flush_urgent.load(Ordering::Acquire) {
                        self.flush_wanted.notified().await;
                    }
                })
                .await;
                self.flush_urgent.store(false, Ordering::Release);
            }
            since_checkpoint =
                since_checkpoint.saturating_add(self.unflushed_bytes.swap(0, Ordering::Relaxed));
            if self.flush_now().await.is_err() || self.closed.load(Ordering::Acquire) {
                return;
            }
            if checkpoint_due(last_checkpoint.elapsed(), since_checkpoint) {
                last_checkpoint = Instant::now();
                since_checkpoint = 0;
                let me = Arc::clone(&self);
                // Read the offset under the lock, write the file (and fsync) outside it.
                let checkpoint = {
                    let mut log = me.lock();
                    if self.closed.load(Ordering::Acquire) {
                        return;
                    }
                    log.checkpoint()
                };
                let _ = tokio::task::spawn_blocking(move || checkpoint.write()).await;
            }
        }
    }

    /// Syncs everything appended so far and moves the HW. Errors fail the partition.
    pub async fn flush_now(self: &Arc<Self>) -> io::Result<()> {
        if self.failure().is_some() {
            return Ok(());
        }
        // An inline sync stops this worker: it runs only right after a yield, which lets the
        // tasks already woken here (producers the last round answered, requests read) run
        // first, and their appends join it; none is left in this worker's LIFO slot.
        let yielded = inline_sync::worth_trying();
        if yielded {
            tokio::task::yield_now().await;
        }
        let plan = Arc::new(self.lock().flush_plan());
        let synced_before = self.progress().fsynced_offset;
        if plan.target <= synced_before && plan.only_active() {
            return Ok(());
        }
        let started = Instant::now();
        let inline = if yielded && plan.only_active() {
            inline_sync::take()
        } else {
            None
        };
        // The sync's own time (not the wait for a pool thread) decides the back-off.
        let (synced, sync_took) = match &inline {
            Some(_) => {
                let synced = plan.run();
                ::metrics::counter!(m::FSYNCS_INLINE).increment(1);
                (synced, started.elapsed())
            }
            None => {
                let running = Arc::clone(&plan);
                tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    (running.run(), started.elapsed())
                })
                .await
                .unwrap_or_else(|e| (Err(io::Error::other(e)), Duration::ZERO))
            }
        };
        let took = started.elapsed();
        if plan.only_active() {
            inline_sync::observed(sync_took, inline.is_some());
        }
        drop(inline);
        ::metrics::histogram!(m::FSYNC_SECONDS).record(took.as_secs_f64());
        if took >= SLOW_FSYNC {
            tracing::warn!(
                topic = %self.topic,
                partition = self.id.0,
                seconds = took.as_secs_f64(),
                "slow fsync"
            );
        }
        ::metrics::counter!(m::FSYNCS).increment(1);
        if let Err(e) = synced {
            self.fail(format!("fsync failed: {e}"));
            return Err(e);
        }
        ::metrics::histogram!(m::FSYNC_RECORDS)
            .record(plan.target.saturating_distance_from(synced_before) as f64);
        {
            let mut log = self.lock();
            // A plan from before a truncation proves nothing about what is there now.
            if log.mark_flushed(&plan) {
                let start = log.log_start_offset();
                assert!(
                    start <= plan.target && plan.target <= log.log_end_offset(),
                    "HW out of range"
                );
                let mode = self.hw_mode();
                self.progress
                    .send_modify(|p| p.follow_fsync(plan.target, mode));
            }
        }
        self.publish_gauges();
        Ok(())
    }

    /// Publishes the partition's offsets and disk use. Called where they change: open, after
    /// each fsync (so the log end offset lags appends by at most the flush interval, without
    /// a metrics update on every produce), retention, delete-records and compaction.
    fn publish_gauges(&self) {
        let p = self.progress();
        let (log_end_offset, segments, size_bytes, producers) = {
            let log = self.lock();
            let producers = log.producers_tracked();
            (
                log.log_end_offset(),
                log.segment_count(),
                log.size_bytes(),
                producers,
            )
        };
        let series = self.series();
        series.high_watermark.set(p.high_watermark.0 as f64);
        series.log_start_offset.set(p.log_start_offset.0 as f64);
        series.log_end_offset.set(log_end_offset.0 as f64);
        series.segments.set(segments as f64);
        series.size_bytes.set(size_bytes as f64);
        series.producers.set(producers as f64);
    }

    /// Re-publishes every series of the partition (and its topic's counters) without changing
    /// a value, so a live partition's series never go idle; idle series leave `/metrics`,
    /// which is how a deleted topic's go.
    pub fn refresh_metrics(&self) {
        self.register_counters();
        // A series the exporter dropped as idle (its handle then counts into nothing) is
        // registered again here; take its new handles.
        let series = PartitionSeries::resolve(&self.topic, self.id);
        *self.series() = series;
        self.publish_gauges();
    }

    /// Makes the partition's counters visible at zero from the start, so `rate()` and alerts
    /// see a series before the first event.
    fn register_counters(&self) {
        let topic = self.topic.to_string();
        for name in [
            m::RECORDS_PRODUCED,
            m::BYTES_PRODUCED,
            m::RECORDS_FETCHED,
            m::BYTES_FETCHED,
            m::SEGMENTS_DELETED,
            m::COMPACTED_RECORDS,
            m::STORAGE_ERRORS,
            m::RECOVERY_TRUNCATIONS,
            m::DAMAGED_BATCHES_FOUND,
            m::DUPLICATES_SUPPRESSED,
            m::PRODUCERS_FENCED,
        ] {
            ::metrics::counter!(name, "topic" => topic.clone()).increment(0);
        }
    }
}

/// A fetch planned under the partition lock, read without it.
#[derive(Debug)]
struct FetchPlan {
    /// For the fetched-bytes metric.
    topic: Arc<str>,
    /// The bytes to read; `None` when nothing below the high watermark is there yet.
    slice: Option<ReadSlice>,
    /// The high watermark and log start when the plan was made.
    progress: Progress,
    offset: Offset,
    max_records: u32,
    max_bytes: u64,
}

impl FetchPlan {
    /// The blocking part of a fetch: reads the bytes from the batch holding `offset` on (up to
    /// `max_bytes`, a whole first batch at least) and notes where the segment ends if the read
    /// reached it.
    fn read(self) -> Result<Fetched, BrokerError> {
        let (bytes, segment_end) = match self.slice {
            Some(mut slice) => {
                #[cfg(test)]
                tests::FILE_READS_ON_THIS_THREAD.set(tests::FILE_READS_ON_THIS_THREAD.get() + 1);
                let io = |e: io::Error| BrokerError::Io(e.to_string());
                slice.skip_before(self.offset.0).map_err(io)?;
                let bytes = slice.read(self.max_bytes).map_err(io)?;
                let whole = bytes.len() as u64 >= slice.len;
                (bytes, whole.then_some(Offset(slice.segment_end)))
            }
            None => (Vec::new(), None),
        };
        ::metrics::counter!(m::BYTES_FETCHED, "topic" => self.topic).increment(bytes.len() as u64);
        Ok(Fetched {
            bytes,
            from: self.offset,
            high_watermark: self.progress.high_watermark,
            log_start_offset: self.progress.log_start_offset,
            max_records: self.max_records,
            segment_end,
        })
    }
}

/// The blocking part of [`Partition::offset_for_timestamp`]: the offset of the first record
/// in `slice` stamped at or after `timestamp_ms`, read a chunk at a time.
fn first_offset_at_or_after(
    slice: &ReadSlice,
    timestamp_ms: i64,
) -> Result<Option<Offset>, BrokerError> {
    #[cfg(test)]
    tests::FILE_READS_ON_THIS_THREAD.set(tests::FILE_READS_ON_THIS_THREAD.get() + 1);
    const CHUNK_BYTES: u64 = 1 << 20;
    let mut position = slice.position;
    let end = slice.position + slice.len;
    while position < end {
        let chunk = ReadSlice {
            file: Arc::clone(&slice.file),
            position,
            len: end - position,
            segment_end: slice.segment_end,
        }
        .read(CHUNK_BYTES)
        .map_err(|e| BrokerError::Io(e.to_string()))?;
        let mut batches = BufferBatches::new(&chunk);
        for batch in batches.by_ref() {
            let batch = batch.map_err(|e| BrokerError::CorruptLog(e.to_string()))?;
            if batch.header.max_timestamp_ms < timestamp_ms {
                continue;
            }
            for record in batch.records() {
                let record = record.map_err(|e| BrokerError::CorruptLog(e.to_string()))?;
                if record.timestamp_ms >= timestamp_ms {
                    return Ok(Some(Offset(record.offset)));
                }
            }
        }
        let consumed = (chunk.len() - batches.rest().len()) as u64;
        if consumed == 0 {
            break;
        }
        position += consumed;
    }
    Ok(None)
}

/// First pause before an append is tried again on a full disk; it doubles up to the max.
const STORAGE_FULL_RETRY_MIN: Duration = Duration::from_millis(100);
const STORAGE_FULL_RETRY_MAX: Duration = Duration::from_secs(5);

/// A partition's full-disk state: writes wait until `retry_at`.
#[derive(Debug)]
struct StorageFull {
    why: String,
    /// The next append after this instant tries the disk again.
    retry_at: Instant,
    /// The pause that set `retry_at`; doubled after each failed try.
    pause: Duration,
}

/// Numbers shown by describe.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PartitionStats {
    pub log_start_offset: Offset,
    pub high_watermark: Offset,
    pub log_end_offset: Offset,
    pub segments: u64,
    pub size_bytes: u64,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

thread_local! {
    /// How many [`PartitionLocksForbidden`] scopes are open on this thread.
    static PARTITION_LOCKS_FORBIDDEN: Cell<u32> = const { Cell::new(0) };
}

/// While alive, taking a partition's lock on this thread is a bug (asserted in debug builds).
///
/// A caller that holds a registry lock (the groups registry) keeps one beside its guard, so
/// partition locks, which slow file work can hold, are never waited on under it. Not `Send`:
/// it belongs to the thread that holds the guard, like a `std` mutex guard.
#[derive(Debug)]
pub struct PartitionLocksForbidden {
    _this_thread: PhantomData<*const ()>,
}

impl PartitionLocksForbidden {
    pub fn enter() -> PartitionLocksForbidden {
        PARTITION_LOCKS_FORBIDDEN.set(PARTITION_LOCKS_FORBIDDEN.get() + 1);
        PartitionLocksForbidden {
            _this_thread: PhantomData,
        }
    }
}

impl Drop for PartitionLocksForbidden {
    fn drop(&mut self) {
        PARTITION_LOCKS_FORBIDDEN.set(PARTITION_LOCKS_FORBIDDEN.get() - 1);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::log::batch::{BatchBuilder, ProducerInfo, RecordRef};

    thread_local! {
        /// File reads done for fetches and seeks by time on this thread.
        pub(super) static FILE_READS_ON_THIS_THREAD: Cell<u32> = const { Cell::new(0) };
    }

    #[test]
    fn a_checkpoint_is_due_after_8_mib_or_10_s_and_never_twice_within_a_second() {
        let s = Duration::from_secs;
        assert!(
            !checkpoint_due(s(0), u64::MAX),
            "never twice within a second"
        );
        assert!(!checkpoint_due(
            Duration::from_millis(999),
            CHECKPOINT_BYTES
        ));
        assert!(
            checkpoint_due(s(1), CHECKPOINT_BYTES),
            "a busy partition: every second"
        );
        assert!(!checkpoint_due(s(1), CHECKPOINT_BYTES - 1));
        assert!(!checkpoint_due(s(9), 1), "a quiet partition waits");
        assert!(checkpoint_due(s(10), 1), "but not past 10 s");
        assert!(checkpoint_due(s(10), 0));
    }

    /// A standalone partition `t`/0 in `dir` that fsyncs at once.
    pub(crate) fn open(dir: &Path) -> Arc<Partition> {
        let flush = FlushPolicy {
            flush_ms: 1,
            flush_bytes: 1,
        };
        Partition::open(
            "t".into(),
            PartitionId(0),
            dir,
            LogConfig::default(),
            flush,
            false,
        )
        .unwrap()
        .0
    }

    /// One batch of `records` small records, built as a producer's.
    pub(crate) fn batch_of(records: usize) -> Vec<u8> {
        let mut builder = BatchBuilder::with_capacity(64);
        for _ in 0..records {
            builder.push(&RecordRef {
                timestamp_ms: 1,
                key: None,
                key_is_utf8: false,
                value: Some(b"value"),
                value_is_json: false,
                headers: &[],
            });
        }
        builder.finish(ProducerInfo::NONE, None)
    }

    #[tokio::test]
    async fn an_append_nobody_watches_moves_the_end_and_a_watcher_is_woken_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let partition = open(dir.path());
        partition.append(&mut batch_of(2), 2, false).unwrap();
        assert_eq!(
            partition.log_end_offset(),
            Offset(2),
            "unwatched, still set"
        );
        let mut end = partition.end_watch();
        assert_eq!(
            *end.borrow_and_update(),
            Offset(2),
            "a new watcher reads it"
        );
        let woken = tokio::spawn(async move {
            end.changed().await.unwrap();
            *end.borrow_and_update()
        });
        tokio::task::yield_now().await;
        partition.append(&mut batch_of(1), 1, false).unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("the watcher is woken")
            .unwrap();
        assert_eq!(seen, Offset(3));
    }

    #[tokio::test]
    async fn an_external_high_watermark_is_set_by_replication_and_capped_by_the_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let partition = open(dir.path());
        partition.append(&mut batch_of(2), 2, true).unwrap();
        partition.flush_now().await.unwrap();
        partition.close().await.unwrap();
        drop(partition);
        // Reopened, the HW is the recovered end; replication takes it from the log start.
        let partition = open(dir.path());
        assert_eq!(partition.progress().high_watermark, Offset(2));
        partition.set_hw_mode(HwMode::External);
        assert_eq!(partition.progress().high_watermark, Offset(0));
        partition.advance_high_watermark(Offset(1));
        partition.set_hw_mode(HwMode::External);
        assert_eq!(
            partition.progress().high_watermark,
            Offset(1),
            "once, at the change of mode"
        );
        let dir = tempfile::tempdir().unwrap();
        let partition = open(dir.path());
        partition.set_hw_mode(HwMode::External);
        let mut end = partition.end_watch();
        partition.append(&mut batch_of(3), 3, true).unwrap();
        assert!(end.has_changed().unwrap());
        assert_eq!(*end.borrow_and_update(), Offset(3));
        partition.flush_now().await.unwrap();
        let p = partition.progress();
        assert_eq!(
            (p.fsynced_offset, p.high_watermark),
            (Offset(3), Offset(0)),
            "the fsync moves no HW"
        );
        partition.append(&mut batch_of(2), 2, false).unwrap();
        assert_eq!(
            partition.advance_high_watermark(Offset(5)),
            Offset(3),
            "capped at the fsynced offset"
        );
        assert_eq!(
            partition.advance_high_watermark(Offset(1)),
            Offset(3),
            "never back"
        );
        // A follower reads past the high watermark, to the log end, whole batches.
        let bytes = partition.read_for_replica(Offset(0), 1).await.unwrap();
        let walked: Vec<u64> = BufferBatches::new(&bytes)
            .map(|b| b.unwrap().header.base_offset)
            .collect();
        assert_eq!(walked, vec![0], "one whole batch, however small max_bytes");
        let bytes = partition
            .read_for_replica(Offset(1), 1 << 20)
            .await
            .unwrap();
        assert_eq!(BufferBatches::new(&bytes).count(), 2);
        assert!(
            partition
                .read_for_replica(Offset(5), 100)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            partition.read_for_replica(Offset(6), 100).await,
            Err(BrokerError::OffsetOutOfRange { .. })
        ));
        // Back to standalone: the HW catches up with the fsync.
        partition.set_hw_mode(HwMode::Standalone);
        partition.flush_now().await.unwrap();
        assert_eq!(partition.progress().high_watermark, Offset(5));
    }

    #[tokio::test]
    async fn a_flipped_bit_in_fsynced_data_is_cut_on_open_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let partition = open(dir.path());
        for _ in 0..4 {
            partition.append(&mut batch_of(2), 2, true).unwrap();
        }
        partition.flush_now().await.unwrap();
        partition.close().await.unwrap();
        drop(partition);
        let path = dir.path().join(format!("{:020}.log", 0));
        let mut bytes = std::fs::read(&path).unwrap();
        let third_batch = 2 * batch_of(2).len();
        bytes[third_batch + 70] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        let partition = Partition::open(
            "t".into(),
            PartitionId(0),
            dir.path(),
            LogConfig::default(),
            FlushPolicy {
                flush_ms: 1,
                flush_bytes: 1,
            },
            true,
        )
        .unwrap()
        .0;
        // The open reads the active segment from its last index entry, here its start: the
        // damage is found, cut, and reported as fsynced data lost.
        assert_eq!(partition.synced_data_lost_at(), Some(Offset(4)));
        assert_eq!(partition.log_end_offset(), Offset(4));
        assert_eq!(partition.scrub().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_damaged_follower_is_cut_below_its_high_watermark_and_counts_as_lost_until_caught_up()
    {
        let dir = tempfile::tempdir().unwrap();
        let partition = open(dir.path());
        assert!(partition.scrubbed(), "an empty log needs no check");
        partition.set_hw_mode(HwMode::External);
        partition.set_follower(true);
        let mut stored = Vec::new();
        for (base, records) in [(0u64, 2usize), (2, 3), (5, 1)] {
            let mut batch = batch_of(records);
            crate::log::batch::stamp_batch(&mut batch, base, 4);
            stored.extend_from_slice(&batch);
        }
        assert!(matches!(
            partition.append_replicated_at(&stored, Offset(3), false),
            Err(BrokerError::InvalidRequest(_))
        ));
        assert_eq!(
            partition.log_end_offset(),
            Offset(0),
            "not onto another end"
        );
        assert_eq!(
            partition
                .append_replicated_at(&stored, Offset(0), true)
                .unwrap(),
            Offset(6)
        );
        partition.flush_now().await.unwrap();
        assert_eq!(partition.advance_high_watermark(Offset(6)), Offset(6));
        // A scrub found the batch at 2 damaged: the cut goes below the high watermark.
        assert_eq!(
            partition.cut_damaged(Offset(2)).await.unwrap(),
            Some(Offset(2))
        );
        let p = partition.progress();
        assert_eq!((p.high_watermark, p.fsynced_offset), (Offset(2), Offset(2)));
        assert_eq!(partition.log_end_offset(), Offset(2));
        assert!(partition.lost_data() && partition.scrubbed());
        // A fetch answer from before the cut is not appended past it.
        assert!(
            partition
                .append_replicated_at(&stored[..0], Offset(6), false)
                .is_ok()
        );
        let mut rest = batch_of(3);
        crate::log::batch::stamp_batch(&mut rest, 2, 4);
        assert!(
            partition
                .append_replicated_at(&rest, Offset(6), false)
                .is_err()
        );
        assert_eq!(
            partition
                .append_replicated_at(&rest, Offset(2), true)
                .unwrap(),
            Offset(5)
        );
        partition.flush_now().await.unwrap();
        assert_eq!(partition.advance_high_watermark(Offset(5)), Offset(5));
        assert!(partition.lost_data(), "caught up only with its leader's HW");
        partition.refetched_lost_data();
        assert!(!partition.lost_data());
        // At the log start, the log is emptied there.
        assert_eq!(
            partition.cut_damaged(Offset(0)).await.unwrap(),
            Some(Offset(0))
        );
        assert_eq!(partition.progress().high_watermark, Offset(0));
    }

    /// Producers appending while the leader epoch moves on (this broker led again in a
    /// later epoch) stamp the epoch current under the log lock: none stamps one the log has
    /// already passed, which the log would refuse and which failed the partition for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_racing_a_new_leader_epoch_never_fail_the_partition() {
        let dir = tempfile::tempdir().unwrap();
        let partition = open(dir.path());
        partition.set_leader_epoch(1).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        tokio::task::block_in_place(|| {
            std::thread::scope(|s| {
                let producers: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            for _ in 0..20_000 {
                                if stop.load(Ordering::Relaxed) {
                                    break;
                                }
                                partition.append(&mut batch_of(1), 1, false).unwrap();
                            }
                        })
                    })
                    .collect();
                for epoch in 2..2_000 {
                    partition.set_leader_epoch(epoch).unwrap();
                    std::thread::yield_now();
                }
                stop.store(true, Ordering::Relaxed);
                for p in producers {
                    p.join().unwrap();
                }
            })
        });
        assert_eq!(partition.failure(), None);
    }

    /// A follower holding one replicated batch of three records, fsynced, its high watermark
    /// at 3.
    async fn follower_of_three_records(dir: &Path) -> Arc<Partition> {
        let partition = open(dir);
        partition.set_hw_mode(HwMode::External);
        partition.set_follower(true);
        let mut batch = batch_of(3);
        crate::log::batch::stamp_batch(&mut batch, 0, 4);
        partition
            .append_replicated_at(&batch, Offset(0), true)
            .unwrap();
        partition.flush_now().await.unwrap();
        assert_eq!(partition.advance_high_watermark(Offset(3)), Offset(3));
        partition
    }

    /// A replica that lost fsynced records remembers it across a restart (the cut log looks
    /// whole then), so it does not lead until it has fetched them back; once it has, a
    /// restart finds it whole again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_that_lost_records_still_knows_it_after_a_restart_until_fetched_back() {
        let dir = tempfile::tempdir().unwrap();
        let partition = follower_of_three_records(dir.path()).await;
        partition.cut_damaged(Offset(1)).await.unwrap();
        partition.close().await.unwrap();

        let partition = open(dir.path());
        assert!(partition.lost_data(), "remembered");
        assert!(!partition.take_lead());
        partition.refetched_lost_data();
        partition.close().await.unwrap();

        let partition = open(dir.path());
        assert!(!partition.lost_data(), "fetched back before the restart");
        partition.close().await.unwrap();
    }

    /// A scrub reads a replica for a while before it acts, and the replica's role may change
    /// meanwhile. A cut and taking the lead are decided under the log lock: a replica that
    /// took the lead is not cut (its high watermark counted those records as acknowledged),
    /// and one that was cut does not take the lead until it has fetched them back.
    #[tokio::test]
    async fn a_damaged_replica_is_cut_or_leads_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let partition = follower_of_three_records(dir.path()).await;

        // It took the lead after the scrub found damage at 1: nothing is cut.
        assert!(partition.take_lead());
        assert_eq!(partition.cut_damaged(Offset(1)).await.unwrap(), None);
        assert_eq!(partition.log_end_offset(), Offset(3));
        assert_eq!(partition.progress().high_watermark, Offset(3));
        assert!(!partition.lost_data());

        // A follower again, then cut: it cannot take the lead until it fetched them back.
        partition.set_follower(true);
        assert_eq!(
            partition.cut_damaged(Offset(1)).await.unwrap(),
            Some(Offset(0))
        );
        assert!(!partition.take_lead());
        assert!(partition.is_follower());
        partition.refetched_lost_data();
        assert!(partition.take_lead());
        assert!(!partition.is_follower());
    }

    #[tokio::test]
    async fn a_follower_log_is_cut_and_reset_but_never_below_its_high_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let partition = open(dir.path());
        partition.set_hw_mode(HwMode::External);
        let mut stored = Vec::new();
        for (base, records) in [(0u64, 2usize), (2, 3), (5, 1)] {
            let mut batch = batch_of(records);
            crate::log::batch::stamp_batch(&mut batch, base, 4);
            stored.extend_from_slice(&batch);
        }
        assert_eq!(
            partition.append_replicated(&stored, true).unwrap(),
            Offset(6)
        );
        assert_eq!(partition.latest_epoch(), Some(4));
        assert_eq!(
            partition.epoch_end(4).map(|e| e.end_offset),
            Some(Offset(6))
        );
        assert!(matches!(
            partition.append_replicated(&stored, false),
            Err(BrokerError::InvalidRequest(_))
        ));
        let mut damaged = batch_of(1);
        crate::log::batch::stamp_batch(&mut damaged, 6, 4);
        *damaged.last_mut().unwrap() ^= 1;
        assert!(matches!(
            partition.append_replicated(&damaged, false),
            Err(BrokerError::CorruptLog(_))
        ));
        assert_eq!(partition.log_end_offset(), Offset(6));
        partition.flush_now().await.unwrap();
        partition.advance_high_watermark(Offset(2));
        let mut end = partition.end_watch();
        assert!(matches!(
            partition.truncate_to(Offset(1)).await,
            Err(BrokerError::BelowHighWatermark {
                high_watermark: Offset(2),
                ..
            })
        ));
        assert_eq!(
            partition.log_end_offset(),
            Offset(6),
            "a refused cut cuts nothing"
        );
        // Offset 3 is inside the batch at 2: the whole batch goes.
        assert_eq!(partition.truncate_to(Offset(3)).await.unwrap(), Offset(2));
        assert_eq!(*end.borrow_and_update(), Offset(2));
        assert_eq!(partition.fsynced_offset(), Offset(2));
        assert!(matches!(
            partition.reset_to(Offset(1)).await,
            Err(BrokerError::BelowHighWatermark { .. })
        ));
        partition.reset_to(Offset(40)).await.unwrap();
        let p = partition.progress();
        assert_eq!(
            (p.log_start_offset, p.fsynced_offset, p.high_watermark),
            (Offset(40), Offset(40), Offset(40))
        );
        assert_eq!(
            (partition.log_end_offset(), partition.latest_epoch()),
            (Offset(40), None)
        );
        // A leader epoch below the log's latest is refused; the current one stamps appends.
        let mut batch = batch_of(1);
        crate::log::batch::stamp_batch(&mut batch, 40, 6);
        partition.append_replicated(&batch, false).unwrap();
        assert!(partition.set_leader_epoch(5).is_err());
        partition.set_leader_epoch(7).unwrap();
        partition.append(&mut batch_of(1), 1, false).unwrap();
        assert_eq!(partition.latest_epoch(), Some(7));
    }

    /// Sixteen records of 64 KiB, stamped 1 to 16, flushed: a megabyte to read.
    async fn sixteen_large_records(partition: &Arc<Partition>) {
        let value = vec![b'x'; 64 * 1024];
        let mut builder = BatchBuilder::with_capacity(16 * value.len());
        for timestamp_ms in 1..=16 {
            builder.push(&RecordRef {
                timestamp_ms,
                key: None,
                key_is_utf8: false,
                value: Some(&value),
                value_is_json: false,
                headers: &[],
            });
        }
        let mut batch = builder.finish(ProducerInfo::NONE, None);
        partition.append(&mut batch, 16, true).unwrap();
        partition.flush_now().await.unwrap();
    }

    // A current-thread runtime runs every task on this thread: a read done here would stall
    // them all meanwhile. It must run on the blocking pool.
    #[tokio::test(flavor = "current_thread")]
    async fn a_fetch_reads_the_file_off_the_runtime_thread() {
        let dir = tempfile::tempdir().unwrap();
        let partition = open(dir.path());
        sixteen_large_records(&partition).await;
        let fetched = partition.fetch(Offset(0), 100, 16 << 20).await.unwrap();
        assert_eq!(
            FILE_READS_ON_THIS_THREAD.get(),
            0,
            "the read ran on the runtime thread"
        );
        partition.fetch_blocking(Offset(0), 100, 16 << 20).unwrap();
        assert_eq!(FILE_READS_ON_THIS_THREAD.get(), 1, "the hook counts reads");
        let mut records = 0;
        fetched
            .for_each_record(|_| {
                records += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(records, 16);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_seek_by_time_reads_the_file_off_the_runtime_thread() {
        let dir = tempfile::tempdir().unwrap();
        let partition = open(dir.path());
        sixteen_large_records(&partition).await;
        assert_eq!(partition.offset_for_timestamp(9).await.unwrap(), Offset(8));
        assert_eq!(
            partition.offset_for_timestamp(17).await.unwrap(),
            Offset(16)
        );
        assert_eq!(
            FILE_READS_ON_THIS_THREAD.get(),
            0,
            "the read ran on the runtime thread"
        );
    }
}
