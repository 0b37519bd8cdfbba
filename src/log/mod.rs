//! The storage engine: one partition's log as a sequence of segment files.
//!
//! Architecture invariant: `log` never does network I/O and knows nothing of HTTP, topics or
//! clients. It appends stamped batches, hands out byte ranges to read, syncs, rolls, deletes
//! old segments and recovers after a crash.
//!
//! Invariants kept here:
//! - Offsets are dense: segment `i` ends exactly where segment `i + 1` begins, and the active
//!   (last) segment ends at the log end offset.
//! - `log_start_offset <= flushed_offset <= log_end_offset`, and `flushed_offset` only grows
//!   except by an explicit truncation (`truncate_to`, `reset_to`: replication), after which a
//!   flush planned before it counts for nothing.
//! - Only the active segment is written; rolled segments are immutable and are synced before
//!   the flushed offset moves past them.
//! - The leader-epoch cache covers every batch of the log: each append records its batch's
//!   epoch, and epochs never go down along the log. On disk, every epoch that starts below the
//!   recovery checkpoint is in the epoch checkpoint (it is written first), so recovery, which
//!   scans from that checkpoint's segment on, fills in the rest from the batches themselves.
//!
//! Failure policy: I/O errors are returned to the caller, which stops taking writes for the
//! partition; recovery truncates a torn or corrupt tail and reports how many bytes it cut.

pub mod batch;
pub mod compact;
pub mod epoch_cache;
pub mod index;
mod offset;
pub mod producer_state;
#[cfg(test)]
mod replication_tests;
pub mod segment;
pub mod sync_ledger;
#[cfg(test)]
mod tests;
pub mod walk;

pub use offset::Offset;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::limits::SEALED_SEGMENTS_LOADED_PER_PARTITION_MAX;
use batch::{BATCH_HEADER_BYTES, BatchHeader};
use epoch_cache::{EpochCache, EpochEnd};
use index::PendingSeal;
use producer_state::{ProducerStates, SequenceCheck, SequenceError};
use segment::{OpenMode, ReadSlice, Segment};
use walk::{FileBatches, WalkError};

/// Per-partition storage settings (a topic's config, resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment when another batch would make it larger than this.
    pub segment_bytes: u64,
    /// Roll the active segment when it is older than this.
    pub segment_ms: i64,
    /// Log bytes between two sparse index entries.
    pub index_interval_bytes: u64,
    /// Delete whole segments whose newest record is older than this (`None`: keep forever).
    pub retention_ms: Option<i64>,
    /// Delete the oldest segments while the log is larger than this (`None`: no size limit).
    pub retention_bytes: Option<u64>,
    /// Most idempotent producers tracked (`producers_per_partition_max`).
    pub producers_max: u32,
    /// A producer that has not written for this long is forgotten
    /// (`producer_idle_timeout_ms`); on open, only segments written to within it are scanned.
    pub producer_idle_timeout_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 128 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            producers_max: 10_000,
            producer_idle_timeout_ms: 24 * 3600 * 1000,
        }
    }
}

/// Largest segment the format allows: positions in the offset index are `u32`.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

const CHECKPOINT_FILE: &str = "recovery-checkpoint";
const LOG_START_FILE: &str = "log-start-offset";
/// The leader-epoch cache's checkpoint (`epoch_cache`).
pub const EPOCH_CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";

/// What opening a partition log found, for the log line and the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub truncated_bytes: u64,
    pub rebuilt_indexes: usize,
    /// Segments dropped because they followed a truncation or a gap.
    pub dropped_segments: usize,
    /// Empty sealed segments (left by compaction) removed.
    pub empty_segments_removed: usize,
    /// Recovery cut the log at this offset, below the recovery checkpoint: data that had been
    /// fsynced failed its checks (a flipped bit, not a torn write) and is gone. Replication
    /// must not count this replica as holding what it held (issue 9 item 7).
    pub synced_data_lost_at: Option<Offset>,
}

/// A recovery checkpoint (and the epoch cache, when it changed) taken under the lock and
/// written outside it.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    flushed_offset: Offset,
    /// Taken in this order under the partition lock: a write never replaces a later one.
    seq: u64,
    /// The epoch cache and its version, when that version is not known to be on disk.
    epochs: Option<(EpochCache, u64)>,
    files: Arc<CheckpointFiles>,
}

impl Checkpoint {
    /// Writes the epoch checkpoint (if it changed) and then the recovery checkpoint, unless a
    /// checkpoint taken later was written already. Blocking.
    pub fn write(&self) -> io::Result<()> {
        let mut written = self
            .files
            .written
            .lock()
            .expect("checkpoint lock poisoned only after a panic");
        if self.seq <= *written {
            return Ok(());
        }
        if let Some((epochs, version)) = &self.epochs {
            epochs.write(&self.dir.join(EPOCH_CHECKPOINT_FILE))?;
            self.files
                .epochs_written
                .fetch_max(*version, Ordering::AcqRel);
        }
        write_u64_file(&self.dir.join(CHECKPOINT_FILE), self.flushed_offset.0)?;
        *written = self.seq;
        Ok(())
    }
}

/// What is on disk of a partition's checkpoints, shared by the checkpoints in flight.
#[derive(Debug, Default)]
struct CheckpointFiles {
    /// The `seq` of the last checkpoint written. Std mutex held across the file writes (on
    /// the blocking pool, or under the partition lock for a truncation), never an `.await`;
    /// it never waits for the partition lock.
    written: Mutex<u64>,
    /// The version of the epoch cache on disk (read under the partition lock, no waiting).
    epochs_written: AtomicU64,
}

/// File work taken under the partition lock and done outside it (by [`FlushPlan::run`]), so
/// that everything appended before the plan was taken becomes durable.
#[derive(Debug)]
pub struct FlushPlan {
    /// Log files to sync: rolled segments not known to be synced, then the active one.
    files: Vec<Arc<File>>,
    /// Indexes of rolled segments to trim and sync (a roll leaves them to the next flush).
    seals: Vec<Arc<PendingSeal>>,
    /// The partition directory, to sync when a roll created a segment since the last plan
    /// that synced it was marked done.
    dir: Option<PathBuf>,
    /// Rolls counted when the plan was taken: a synced directory covers those.
    rolls: u64,
    /// Truncations counted when the plan was taken: a plan from before one counts for nothing.
    truncations: u64,
    /// Everything below this offset is durable once the plan has run.
    pub target: Offset,
    /// The active segment's batches end here in its file (the last of `files`); zeros
    /// written ahead may follow.
    active_size: u64,
}

impl FlushPlan {
    /// Syncs the files, trims and syncs the rolled indexes, syncs the directory. Blocking.
    pub fn run(&self) -> io::Result<()> {
        if let Some((active, rolled)) = self.files.split_last() {
            for file in rolled {
                sync_ledger::sync_data(file)?;
            }
            sync_ledger::sync_data_upto(active, self.active_size)?;
        }
        for seal in &self.seals {
            seal.run()?;
        }
        match &self.dir {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }

    /// Whether the plan syncs nothing but the active segment's file.
    pub fn only_active(&self) -> bool {
        self.files.len() == 1 && self.seals.is_empty() && self.dir.is_none()
    }
}

/// The segments to check batch by batch, taken under the lock and run outside it.
#[derive(Debug)]
pub struct ScrubPlan {
    /// Each segment's log file, base offset and size when the plan was taken.
    segments: Vec<(PathBuf, u64, u64)>,
}

impl ScrubPlan {
    /// Reads every batch and checks its CRC. Returns where the first damage is: the offset
    /// after the last good batch before it, where the log must be cut. A segment deleted or
    /// rewritten (retention, compaction) since the plan was taken is skipped. Blocking.
    pub fn run(&self) -> io::Result<Option<Offset>> {
        for (path, base, size) in &self.segments {
            let file = match File::open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if file.metadata()?.len() < *size {
                continue;
            }
            let mut walk = walk::FileBatches::new(&file, 0, *size, *base);
            let mut good_end = *base;
            loop {
                match walk.next_batch() {
                    Ok(Some((_, batch))) => good_end = batch.header.next_offset(),
                    Ok(None) => break,
                    Err(walk::WalkError::Damaged { .. }) => return Ok(Some(Offset(good_end))),
                    Err(walk::WalkError::Io(e)) => return Err(e),
                }
            }
        }
        Ok(None)
    }
}

/// A rolled segment whose file work waits for the next flush.
#[derive(Debug)]
struct Unsynced {
    file: Arc<File>,
    seals: Vec<Arc<PendingSeal>>,
    /// The segment's end offset.
    end: Offset,
    /// The roll that sealed it (`PartitionLog::rolls` after it). A flush covered this
    /// segment only if marked done at or past `end` *and* taken after this roll: a plan
    /// taken before it synced the file while it was still active (perhaps with zeros
    /// written ahead, which the roll then cut) and held none of its seals.
    roll: u64,
}

#[derive(Debug)]
pub struct PartitionLog {
    /// The partition's directory; segments and checkpoints live here.
    dir: PathBuf,
    config: LogConfig,
    /// Sorted by base offset; the last one is the active segment. Never empty.
    segments: Vec<Segment>,
    /// First offset a consumer may read; moved by retention and delete-records.
    log_start_offset: Offset,
    /// Every record below this offset has been fsynced.
    flushed_offset: Offset,
    /// Rolled segments whose data has not been synced yet (or whose indexes are not trimmed
    /// yet). Each stays until a flush reaching its end is marked done, so overlapping flushes
    /// (the flusher and a shutdown) all sync it.
    unsynced: Vec<Unsynced>,
    /// Segments created by rolls so far, and how many of those a synced directory covers:
    /// every plan syncs the directory while they differ.
    rolls: u64,
    dir_synced_rolls: u64,
    /// Base offsets of the sealed segments loaded for reads (file open, indexes mapped),
    /// least recently used first; at most [`SEALED_SEGMENTS_LOADED_PER_PARTITION_MAX`].
    loaded: Vec<u64>,
    /// Leader epoch -> first offset, for every batch of the log (KIP-101, KIP-279).
    epochs: EpochCache,
    /// Bumped at every change of `epochs`; a checkpoint carries the cache while the version
    /// on disk is older.
    epochs_version: u64,
    /// Truncations so far (`truncate_to`, `reset_to`): flush plans taken before one are void.
    truncations: u64,
    /// Checkpoints taken so far (their order), and what is on disk.
    checkpoints_taken: u64,
    checkpoint_files: Arc<CheckpointFiles>,
    /// Idempotent producers' last batches, rebuilt from the batch headers on open and kept
    /// by every append (replicated ones too), so a retried batch is recognized after a
    /// restart and on a new leader.
    producers: ProducerStates,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`. With `clean`, the indexes written at the last clean
    /// shutdown are trusted; otherwise segments past the recovery checkpoint are scanned.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        clean: bool,
        now_ms: i64,
    ) -> io::Result<(Self, OpenReport)> {
        std::fs::create_dir_all(dir)?;
        let mut bases = list_segment_bases(dir)?;
        let checkpoint = read_u64_file(&dir.join(CHECKPOINT_FILE)).unwrap_or(0);
        let stored_start = read_u64_file(&dir.join(LOG_START_FILE)).unwrap_or(0);
        let (mut epochs, mut epochs_rebuild) = read_epochs(dir);
        let entries_max = index_entries_max(&config);
        let mut report = OpenReport::default();
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
        if bases.is_empty() {
            segments.push(Segment::create(dir, stored_start, entries_max, now_ms)?);
            sync_dir(dir)?;
            bases.clear();
        }
        for (i, &base) in bases.iter().enumerate() {
            let next_base = bases.get(i + 1).copied();
            let sealed_before_checkpoint = next_base.is_some_and(|n| n <= checkpoint);
            let mode = if clean || sealed_before_checkpoint {
                OpenMode::Trusted
            } else {
                OpenMode::Recover
            };
            let writable = next_base.is_none();
            let recovered_epochs = (mode == OpenMode::Recover).then_some(&mut epochs);
            let (segment, seg_report) = Segment::open(
                dir,
                base,
                mode,
                writable,
                config.index_interval_bytes,
                entries_max,
                recovered_epochs,
            )?;
            epochs_rebuild |= seg_report.epochs_contradicted;
            if let Some(cut) = seg_report.cut_at
                && cut < checkpoint
            {
                let cut = Offset(cut);
                report.synced_data_lost_at =
                    Some(report.synced_data_lost_at.unwrap_or(cut).min(cut));
            }
            report.truncated_bytes += seg_report.truncated_bytes;
            report.rebuilt_indexes += usize::from(seg_report.rebuilt_index);
            // Compaction may drop a segment's last records: a gap before the next segment is
            // fine, an overlap is not.
            let continues = segments
                .last()
                .is_none_or(|prev| prev.next_offset <= segment.base_offset);
            if continues && let Some(prev) = segments.last_mut() {
                prev.next_offset = segment.base_offset;
            }
            if !continues {
                report.dropped_segments += bases.len() - i;
                for b in &bases[i..] {
                    drop_segment_files(dir, *b)?;
                }
                break;
            }
            let cut = seg_report.cut_at.is_some();
            if segment.size == 0 && !cut && !segments.is_empty() && next_base.is_some() {
                // A sealed segment compaction emptied (before emptied ones were removed at
                // once): it goes, and the segment before it reaches to the next one's base.
                drop(segment);
                drop_segment_files(dir, base)?;
                report.empty_segments_removed += 1;
                continue;
            }
            segments.push(segment);
            if cut && i + 1 < bases.len() {
                report.dropped_segments += bases.len() - i - 1;
                for b in &bases[i + 1..] {
                    drop_segment_files(dir, *b)?;
                }
                break;
            }
        }
        // The active segment might have been sealed by a truncation above; make sure the last
        // one is writable.
        let last = segments.pop().expect("at least one segment");
        let last = if last.index_is_full() || last.is_sealed() {
            let base = last.base_offset;
            drop(last);
            Segment::open(
                dir,
                base,
                OpenMode::Trusted,
                true,
                config.index_interval_bytes,
                entries_max,
                None,
            )?
            .0
        } else {
            last
        };
        segments.push(last);
        // Whatever survived recovery may still sit only in the page cache (the process died,
        // not the machine): sync it before calling it flushed.
        if !clean {
            for s in &segments {
                s.sync_file()?;
            }
            sync_dir(dir)?;
        }
        if epochs_rebuild {
            epochs = epochs_from_batches(&segments)?;
        }
        // Retention deletes segments before it stores the new start; a crash between the two
        // leaves a stored start below the first segment.
        let log_start_offset = stored_start.max(segments[0].base_offset);
        if log_start_offset > segments.last().expect("never empty").next_offset {
            // Recovery cut the log below its start (damage in records already deleted). The
            // offsets up to the start were given once and must not be given again: start an
            // empty log at the log start, as Kafka does.
            report.dropped_segments += segments.len();
            for s in segments.drain(..) {
                let base = s.base_offset;
                drop(s);
                drop_segment_files(dir, base)?;
            }
            segments.push(Segment::create(dir, log_start_offset, entries_max, now_ms)?);
            sync_dir(dir)?;
        }
        if log_start_offset != stored_start {
            write_u64_file(&dir.join(LOG_START_FILE), log_start_offset)?;
        }
        report.segments = segments.len();
        let log_end = Offset(segments.last().expect("never empty").next_offset);
        let log_start_offset = Offset(log_start_offset);
        epochs.truncate_from_end(log_end);
        epochs.truncate_from_start(log_start_offset);
        if log_start_offset == log_end {
            epochs = EpochCache::default();
        }
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset,
            flushed_offset: log_end,
            unsynced: Vec::new(),
            rolls: 0,
            dir_synced_rolls: 0,
            loaded: Vec::new(),
            epochs,
            // Version 1 against 0 on disk: the first checkpoint writes the cache as recovered.
            epochs_version: 1,
            truncations: 0,
            checkpoints_taken: 0,
            checkpoint_files: Arc::default(),
            producers: ProducerStates::new(config.producers_max as usize),
        };
        log.write_checkpoint()?;
        log.rebuild_producers(now_ms)?;
        Ok((log, report))
    }

    /// Rebuilds the idempotent producers' state from the batch headers (no batch body is
    /// read). A segment is scanned only if it may hold a batch appended within
    /// `producer_idle_timeout_ms`: the active one, and those whose successor was created
    /// since (a segment is created at the append that follows the last one of the segment
    /// before). A batch counts as written when its segment's file was last written before
    /// the open (`Segment::last_written_ms`): no earlier than its append, so a producer that
    /// wrote within the timeout is kept, however old the timestamps it gave its records or
    /// the segment it wrote into. At worst a producer is kept up to a segment's write span
    /// longer than the timeout.
    fn rebuild_producers(&mut self, now_ms: i64) -> io::Result<()> {
        let since = now_ms.saturating_sub(self.config.producer_idle_timeout_ms);
        let last = self.segments.len() - 1;
        let first = (0..last)
            .find(|&i| self.segments[i + 1].created_ms >= since)
            .unwrap_or(last);
        for i in first..=last {
            let segment = &self.segments[i];
            if segment.size == 0 {
                continue;
            }
            // A sealed segment's file is opened for the walk only: it does not join the loaded
            // set, so opening a log still holds one descriptor at a time.
            let sealed_file;
            let file: &File = if segment.is_loaded() {
                segment.file()
            } else {
                sealed_file = File::open(segment.log_path())?;
                &sealed_file
            };
            let mut walk = FileBatches::new(file, 0, segment.size, segment.base_offset);
            loop {
                match walk.next_header() {
                    Ok(Some(header)) => {
                        let written_ms = segment.last_written_ms;
                        self.producers.record_header(&header, written_ms);
                        walk.skip();
                    }
                    // Opening checked every segment it does not trust; a damaged trusted one
                    // is reported by the reads that reach it.
                    Ok(None) | Err(WalkError::Damaged { .. }) => break,
                    Err(WalkError::Io(e)) => return Err(e),
                }
            }
        }
        self.producers
            .expire(now_ms, self.config.producer_idle_timeout_ms);
        Ok(())
    }

    /// What an append of `batch` (built, not stamped yet) should do given its producer's
    /// earlier batches: append it, answer a duplicate's original offsets, or refuse it.
    pub fn check_producer(&self, batch: &[u8]) -> Result<SequenceCheck, SequenceError> {
        match BatchHeader::parse(batch) {
            Ok(header) => self.producers.check_header(&header),
            // `append` refuses it with the reason.
            Err(_) => Ok(SequenceCheck::Append),
        }
    }

    /// Forgets producers idle for `producer_idle_timeout_ms`; returns how many.
    pub fn expire_producers(&mut self, now_ms: i64) -> usize {
        self.producers
            .expire(now_ms, self.config.producer_idle_timeout_ms)
    }

    /// Idempotent producers tracked.
    pub fn producers_tracked(&self) -> usize {
        self.producers.len()
    }

    pub fn config(&self) -> LogConfig {
        self.config
    }

    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    pub fn log_start_offset(&self) -> Offset {
        self.log_start_offset
    }

    pub fn log_end_offset(&self) -> Offset {
        Offset(self.active().next_offset)
    }

    pub fn flushed_offset(&self) -> Offset {
        self.flushed_offset
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The epoch of the last batch written (a follower's `last_fetched_epoch`), if any.
    pub fn latest_epoch(&self) -> Option<u32> {
        self.epochs.latest_epoch()
    }

    /// The end of `epoch` in this log (KIP-279, as a leader answers a follower): the largest
    /// epoch here at most `epoch` and the first offset after its records. `None` when every
    /// epoch here is newer (or the log is empty).
    pub fn epoch_end(&self, epoch: u32) -> Option<EpochEnd> {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    pub fn epoch_cache(&self) -> &EpochCache {
        &self.epochs
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Bytes stored from the batch holding `offset` to the log end: what a reader at
    /// `offset` (a follower) has still to read. In a loaded segment it starts at the offset
    /// index entry at or before `offset` (at most `index_interval_bytes` and a batch more
    /// than exact); in a sealed segment that is not loaded it is prorated by offsets, so no
    /// file is opened. 0 at or past the log end.
    pub fn bytes_from(&self, offset: Offset) -> u64 {
        if offset >= self.log_end_offset() {
            return 0;
        }
        let offset = offset.0;
        let i = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let segment = &self.segments[i];
        let first = if offset < segment.base_offset || offset >= segment.next_offset {
            // Below the log start, or in a compaction gap at a segment's end.
            if offset < segment.base_offset {
                segment.size
            } else {
                0
            }
        } else if segment.is_loaded() {
            segment.read_slice(offset).len
        } else {
            let span = segment.next_offset - segment.base_offset;
            let left = segment.next_offset - offset;
            (u128::from(segment.size) * u128::from(left) / u128::from(span)) as u64
        };
        first + self.segments[i + 1..].iter().map(|s| s.size).sum::<u64>()
    }

    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    /// Stamps `batch` (built by [`batch::BatchBuilder`]) with the next offset and `leader_epoch`,
    /// and writes it to the page cache. Returns `(base_offset, next_offset)`.
    pub fn append(
        &mut self,
        batch: &mut [u8],
        leader_epoch: u32,
        now_ms: i64,
    ) -> io::Result<(Offset, Offset)> {
        if let Some(latest) = self.epochs.latest_epoch()
            && leader_epoch < latest
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("leader epoch {leader_epoch} is older than the log's latest, {latest}"),
            ));
        }
        let base = self.log_end_offset();
        batch::stamp_batch(batch, base.0, leader_epoch);
        let header = BatchHeader::parse(batch)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        assert_eq!(header.total_len(), batch.len(), "a batch is appended whole");
        self.append_stamped(batch, &header, now_ms)?;
        Ok((base, Offset(header.next_offset())))
    }

    /// Appends whole batches exactly as a leader stored them (replication): offsets and
    /// leader epochs are kept, and the epoch cache follows. Every batch is checked before
    /// anything is written: its CRC and that it is whole (`InvalidData`), that offsets start
    /// at or past the log end and grow (gaps are fine: compaction), and that epochs never go
    /// below the log's latest nor down (`InvalidInput`). Returns the new log end.
    pub fn append_replicated(&mut self, batches: &[u8], now_ms: i64) -> io::Result<Offset> {
        self.check_replicated(batches)?;
        let mut rest = batches;
        while !rest.is_empty() {
            let header = BatchHeader::parse(rest).expect("checked above");
            let (batch, after) = rest.split_at(header.total_len());
            self.append_stamped(batch, &header, now_ms)?;
            rest = after;
        }
        Ok(self.log_end_offset())
    }

    /// The checks of [`PartitionLog::append_replicated`], on every batch, writing nothing.
    fn check_replicated(&self, batches: &[u8]) -> io::Result<()> {
        let invalid = |kind, why: String| Err(io::Error::new(kind, why));
        let mut next = self.log_end_offset().0;
        let mut epoch = self.epochs.latest_epoch().unwrap_or(0);
        let mut walk = walk::BufferBatches::new(batches);
        for view in walk.by_ref() {
            let header = match view {
                Ok(view) => view.header,
                Err(e) => return invalid(io::ErrorKind::InvalidData, e.to_string()),
            };
            if header.base_offset < next {
                return invalid(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a batch at offset {} where the log is at {next}",
                        header.base_offset
                    ),
                );
            }
            if header.leader_epoch < epoch {
                return invalid(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a batch of leader epoch {} after epoch {epoch}",
                        header.leader_epoch
                    ),
                );
            }
            next = header.next_offset();
            epoch = header.leader_epoch;
        }
        if !walk.rest().is_empty() {
            return invalid(
                io::ErrorKind::InvalidData,
                format!("{} bytes of a cut batch at the end", walk.rest().len()),
            );
        }
        Ok(())
    }

    /// Writes a stamped, checked batch at `header.base_offset` (at or past the log end) and
    /// records its epoch.
    fn append_stamped(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        now_ms: i64,
    ) -> io::Result<()> {
        self.maybe_roll(batch.len() as u64, header, now_ms)?;
        let interval = self.config.index_interval_bytes;
        self.segments
            .last_mut()
            .expect("never empty")
            .append(batch, header, interval)?;
        self.producers.record_header(header, now_ms);
        if self.epochs.latest_epoch() != Some(header.leader_epoch) {
            self.epochs
                .assign(header.leader_epoch, Offset(header.base_offset))
                .expect("epochs were checked before the write");
            self.epochs_version += 1;
        }
        Ok(())
    }

    fn maybe_roll(&mut self, incoming: u64, header: &BatchHeader, now_ms: i64) -> io::Result<()> {
        let segment_bytes = self.config.segment_bytes.min(SEGMENT_BYTES_MAX);
        let active = self.active();
        // Relative offsets are u32: the batch's last offset must fit (a replicated batch may
        // start past the log end, after a compaction gap).
        let offsets_overflow = header.next_offset() - active.base_offset >= u64::from(u32::MAX);
        if active.size == 0 {
            if offsets_overflow {
                self.restart_empty_active_at(header.base_offset, now_ms)?;
            }
            return Ok(());
        }
        let too_big = active.size + incoming > segment_bytes;
        let too_old = now_ms.saturating_sub(active.created_ms) > self.config.segment_ms;
        if too_big || too_old || offsets_overflow || active.index_is_full() {
            self.roll(now_ms)?;
            if header.next_offset() - self.active().base_offset >= u64::from(u32::MAX) {
                self.restart_empty_active_at(header.base_offset, now_ms)?;
            }
        }
        Ok(())
    }

    /// Replaces the empty active segment by one based at `base` (past a gap too wide for one
    /// segment's relative offsets). The next flush plan syncs the directory.
    fn restart_empty_active_at(&mut self, base: u64, now_ms: i64) -> io::Result<()> {
        let entries_max = index_entries_max(&self.config);
        let created = Segment::create(&self.dir, base, entries_max, now_ms)?;
        let empty = std::mem::replace(self.segments.last_mut().expect("never empty"), created);
        empty.delete_files()?;
        if let Some(before) = self.segments.len().checked_sub(2) {
            self.segments[before].next_offset = base;
        }
        self.rolls += 1;
        Ok(())
    }

    /// Cuts whatever a failed append left past the active segment's last whole batch (a
    /// partial write on a full disk), so the next append starts on a clean end.
    pub fn discard_unwritten(&mut self) -> io::Result<()> {
        self.segments
            .last_mut()
            .expect("never empty")
            .discard_unwritten()
    }

    /// Seals the active segment and starts a new one at the log end offset.
    /// An empty active segment stays: a new one would have the same base offset (file name).
    ///
    /// Runs under the partition lock, so it syncs nothing: the sealed segment is immutable,
    /// and the next [`FlushPlan`] syncs its file, trims and syncs its indexes and syncs the
    /// directory, outside the lock. A crash before that leaves untrimmed indexes, which
    /// recovery rebuilds.
    pub fn roll(&mut self, now_ms: i64) -> io::Result<()> {
        if self.active().size == 0 {
            return Ok(());
        }
        let next = self.log_end_offset();
        let entries_max = index_entries_max(&self.config);
        self.segments.last_mut().expect("never empty").trim()?;
        let created = Segment::create(&self.dir, next.0, entries_max, now_ms)?;
        let sealed = self.segments.last_mut().expect("never empty");
        let seals = sealed.seal_indexes_later();
        self.rolls += 1;
        self.unsynced.push(Unsynced {
            file: Arc::clone(sealed.file()),
            seals: seals.into_iter().map(Arc::new).collect(),
            end: next,
            roll: self.rolls,
        });
        sealed.unload();
        self.segments.push(created);
        Ok(())
    }

    /// The bytes to read for `offset`, or `None` at the log end. The caller checks the range.
    /// Loads the segment if it is sealed and not loaded (opens one file, maps its indexes).
    pub fn read_slice(&mut self, offset: Offset) -> io::Result<Option<ReadSlice>> {
        if offset >= self.log_end_offset() {
            return Ok(None);
        }
        let offset = offset.0;
        let Some(mut i) = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .checked_sub(1)
        else {
            return Ok(None);
        };
        if offset >= self.segments[i].next_offset {
            i += 1;
        }
        if i >= self.segments.len() {
            return Ok(None);
        }
        self.load(i)?;
        Ok(Some(self.segments[i].read_slice(offset)))
    }

    /// Where to scan for the first record with timestamp `>= timestamp_ms`; `None` if no
    /// segment holds one.
    pub fn time_slice(&mut self, timestamp_ms: i64) -> io::Result<Option<ReadSlice>> {
        let Some(i) = self
            .segments
            .iter()
            .position(|s| s.size > 0 && s.max_timestamp_ms >= timestamp_ms)
        else {
            return Ok(None);
        };
        self.load(i)?;
        Ok(Some(self.segments[i].time_slice(timestamp_ms)))
    }

    /// Makes segment `i` answer reads. A sealed segment joins the loaded set; past
    /// [`SEALED_SEGMENTS_LOADED_PER_PARTITION_MAX`], the least recently used one is unloaded.
    fn load(&mut self, i: usize) -> io::Result<()> {
        if i + 1 == self.segments.len() {
            return Ok(());
        }
        let base = self.segments[i].base_offset;
        self.loaded.retain(|&b| b != base);
        self.segments[i].load()?;
        self.loaded.push(base);
        if self.loaded.len() > SEALED_SEGMENTS_LOADED_PER_PARTITION_MAX {
            let evicted = self.loaded.remove(0);
            if let Some(j) = self.segment_index(evicted) {
                self.segments[j].unload();
            }
        }
        Ok(())
    }

    /// Where the segment with base offset `base` is in the list.
    fn segment_index(&self, base: u64) -> Option<usize> {
        self.segments
            .binary_search_by_key(&base, |s| s.base_offset)
            .ok()
    }

    /// How many sealed segments are loaded (a file open and indexes mapped each).
    pub fn loaded_segments(&self) -> usize {
        self.loaded.len()
    }

    /// The file work that makes everything appended so far durable.
    pub fn flush_plan(&mut self) -> FlushPlan {
        let mut files: Vec<Arc<File>> = self.unsynced.iter().map(|u| Arc::clone(&u.file)).collect();
        files.push(Arc::clone(self.active().file()));
        let seals = self
            .unsynced
            .iter()
            .flat_map(|u| u.seals.iter().map(Arc::clone))
            .collect();
        FlushPlan {
            files,
            seals,
            dir: (self.rolls > self.dir_synced_rolls).then(|| self.dir.clone()),
            rolls: self.rolls,
            truncations: self.truncations,
            target: self.log_end_offset(),
            active_size: self.active().size,
        }
    }

    /// Records that a [`FlushPlan`] has run. Returns false, and records nothing, for a plan
    /// taken before a truncation: what it synced may since have been cut and rewritten.
    pub fn mark_flushed(&mut self, plan: &FlushPlan) -> bool {
        if plan.truncations != self.truncations {
            return false;
        }
        let target = plan.target;
        assert!(target <= self.log_end_offset(), "flushed past the log end");
        self.flushed_offset = self.flushed_offset.max(target);
        self.unsynced
            .retain(|u| u.end > target || u.roll > plan.rolls);
        if plan.dir.is_some() {
            self.dir_synced_rolls = self.dir_synced_rolls.max(plan.rolls);
        }
        true
    }

    /// The end [`PartitionLog::truncate_to`] would leave for `offset`: the start of the batch
    /// holding `offset` (or `offset` itself where it falls in a compaction gap), and the log
    /// end for any offset at or past it.
    pub fn truncation_point(&mut self, offset: Offset) -> io::Result<Offset> {
        if offset >= self.log_end_offset() {
            return Ok(self.log_end_offset());
        }
        let i = self.segment_holding(offset)?;
        self.load(i)?;
        Ok(Offset(self.segments[i].cut_point(offset.0)?.1))
    }

    /// Cuts the log at the batch boundary at or below `offset` (replication: a follower
    /// dropping a tail its leader does not have). Returns the new end. The epoch cache and the
    /// flushed offset follow, the cut file is synced and both checkpoints are written before
    /// it returns, so no crash can bring the cut batches back or trust what replaces them
    /// unsynced. Blocking (small file work under the partition lock; truncations are rare).
    pub fn truncate_to(&mut self, offset: Offset) -> io::Result<Offset> {
        if offset >= self.log_end_offset() {
            return Ok(self.log_end_offset());
        }
        let i = self.segment_holding(offset)?;
        self.load(i)?;
        let end = Offset(self.segments[i].cut_point(offset.0)?.1);
        if end < self.log_start_offset {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cutting at {offset} would end the log at {end}, below its start {} \
                     (a batch straddles the start): reset it instead",
                    self.log_start_offset
                ),
            ));
        }
        if i + 1 < self.segments.len() {
            self.make_active(i)?;
        }
        let active = self.segments.last_mut().expect("never empty");
        let end = Offset(active.truncate(offset.0)?);
        sync_ledger::sync_all(active.file())?;
        self.after_truncation(end)?;
        Ok(end)
    }

    /// Empties the log and starts it at `offset` (replication: a follower whose log is below
    /// its leader's start or wholly divergent). Every segment goes; log start, end and
    /// flushed offset become `offset`, the epoch cache empties. Blocking.
    pub fn reset_to(&mut self, offset: Offset, now_ms: i64) -> io::Result<()> {
        // The start first: a crash part way leaves a start past the data, which opening
        // turns into an empty log there.
        write_u64_file(&self.dir.join(LOG_START_FILE), offset.0)?;
        self.log_start_offset = offset;
        self.unsynced.clear();
        self.loaded.clear();
        for segment in self.segments.drain(..) {
            segment.delete_files()?;
        }
        let entries_max = index_entries_max(&self.config);
        self.segments
            .push(Segment::create(&self.dir, offset.0, entries_max, now_ms)?);
        sync_dir(&self.dir)?;
        self.epochs = EpochCache::default();
        self.flushed_offset = offset;
        self.after_truncation(offset)
    }

    /// The index of the segment holding `offset`, which must be within the log.
    fn segment_holding(&self, offset: Offset) -> io::Result<usize> {
        if offset.0 < self.segments[0].base_offset || offset < self.log_start_offset {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "offset {offset} is below the log start {}",
                    self.log_start_offset
                ),
            ));
        }
        Ok(self.segments.partition_point(|s| s.base_offset <= offset.0) - 1)
    }

    /// Makes sealed segment `i` the active one: the segments after it go, and it is opened
    /// for writing again (its pending index seal is run first, so its indexes are trusted).
    fn make_active(&mut self, i: usize) -> io::Result<()> {
        let base = self.segments[i].base_offset;
        // Rolled segments from `i` on: their index seals run now (the later ones' files go
        // anyway), so none can trim an index file reopened for writing.
        for u in self.unsynced.iter().filter(|u| u.end.0 > base) {
            for seal in &u.seals {
                seal.run()?;
            }
        }
        self.unsynced.retain(|u| u.end.0 <= base);
        for removed in self.segments.drain(i..) {
            self.loaded.retain(|&b| b != removed.base_offset);
            if removed.base_offset != base {
                removed.delete_files()?;
            }
        }
        let interval = self.config.index_interval_bytes;
        let entries_max = index_entries_max(&self.config);
        let (segment, _) = Segment::open(
            &self.dir,
            base,
            OpenMode::Trusted,
            true,
            interval,
            entries_max,
            None,
        )?;
        self.segments.push(segment);
        sync_dir(&self.dir)
    }

    /// The bookkeeping after the log was cut to end at `end`: flushed offset, epoch cache,
    /// plans in flight voided, both checkpoints written now.
    fn after_truncation(&mut self, end: Offset) -> io::Result<()> {
        self.flushed_offset = self.flushed_offset.min(end);
        // A cut batch no longer deduplicates: a retry of it is written again.
        self.producers.truncate_from(end.0);
        self.truncations += 1;
        self.epochs.truncate_from_end(end);
        self.epochs_version += 1;
        self.write_checkpoint()
    }

    /// Deletes whole segments below `upto` that retention no longer keeps. Returns how many.
    pub fn apply_retention(&mut self, now_ms: i64, upto: Offset) -> io::Result<usize> {
        let upto = upto.0;
        let mut total: u64 = self.size_bytes();
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            if oldest.next_offset > upto {
                break;
            }
            let expired = self
                .config
                .retention_ms
                .is_some_and(|ms| oldest.max_timestamp_ms < now_ms.saturating_sub(ms));
            let oversize = self.config.retention_bytes.is_some_and(|max| total > max);
            let below_start = oldest.next_offset <= self.log_start_offset.0;
            if !(expired || oversize || below_start) {
                break;
            }
            total -= oldest.size;
            let removed = self.segments.remove(0);
            self.loaded.retain(|&b| b != removed.base_offset);
            removed.delete_files()?;
            deleted += 1;
        }
        if deleted > 0 {
            self.log_start_offset = self
                .log_start_offset
                .max(Offset(self.segments[0].base_offset));
            write_u64_file(&self.dir.join(LOG_START_FILE), self.log_start_offset.0)?;
            sync_dir(&self.dir)?;
            self.epochs_start_at_log_start();
        }
        Ok(deleted)
    }

    /// Moves the log start offset forward (Kafka's DeleteRecords). `offset` must not pass
    /// `upto` (the high watermark); whole segments below it are deleted.
    pub fn delete_records_before(&mut self, offset: Offset, upto: Offset) -> io::Result<Offset> {
        let offset = offset.min(upto);
        if offset > self.log_start_offset {
            // Stored first: if the write fails, memory and disk still agree.
            write_u64_file(&self.dir.join(LOG_START_FILE), offset.0)?;
            self.log_start_offset = offset;
            self.epochs_start_at_log_start();
            self.apply_retention(i64::MIN, upto)?;
        }
        Ok(self.log_start_offset)
    }

    /// The log start moved: the epoch in force there now starts there. An empty log keeps
    /// no epoch (as opening one finds).
    fn epochs_start_at_log_start(&mut self) {
        let before = self.epochs.entries().first().copied();
        self.epochs.truncate_from_start(self.log_start_offset);
        if self.log_start_offset >= self.log_end_offset() {
            self.epochs = EpochCache::default();
        }
        if self.epochs.entries().first().copied() != before {
            self.epochs_version += 1;
        }
    }

    /// The sealed segments and the active one, for compaction (`None`: nothing sealed yet).
    pub fn compaction_plan(&self, upto: Offset) -> Option<compact::CompactionPlan> {
        let upto = upto.0;
        let snapshot = |s: &Segment| compact::SegmentSnapshot {
            base_offset: s.base_offset,
            next_offset: s.next_offset,
            size: s.size,
            max_timestamp_ms: s.max_timestamp_ms,
            created_ms: s.created_ms,
            last_written_ms: s.last_written_ms,
            path: s.log_path(),
        };
        let (active, sealed) = self.segments.split_last()?;
        let sealed: Vec<_> = sealed
            .iter()
            .filter(|s| s.next_offset <= upto)
            .map(snapshot)
            .collect();
        (!sealed.is_empty()).then(|| compact::CompactionPlan {
            sealed,
            active: snapshot(active),
            upto,
        })
    }

    /// Replaces sealed segments by their compacted versions. A segment that retention deleted
    /// meanwhile is skipped (its compacted file removed).
    pub fn install_compacted(
        &mut self,
        compacted: Vec<compact::CompactedSegment>,
    ) -> io::Result<()> {
        for c in compacted {
            let base = c.meta.base_offset;
            let Some(i) = self.segments[..self.segments.len() - 1]
                .iter()
                .position(|s| s.base_offset == base)
            else {
                std::fs::remove_file(&c.path)?;
                continue;
            };
            self.loaded.retain(|&b| b != base);
            if c.meta.size == 0 && i > 0 {
                // Compaction emptied the segment: remove it rather than keep an empty file
                // (and its descriptors) forever. The segment before it now reaches to where
                // the removed one ended, the next segment's base: no offset changes meaning,
                // and a reopen finds the same gap. The first segment stays, so the log start
                // keeps its file.
                std::fs::remove_file(&c.path)?;
                let removed = self.segments.remove(i);
                drop_segment_files(&self.dir, base)?;
                sync_dir(&self.dir)?;
                self.segments[i - 1].next_offset = removed.next_offset;
                continue;
            }
            // Old indexes go first (and durably), so a crash can never pair them with the new
            // log: missing indexes are rebuilt on open.
            for path in self.segments[i].index_paths() {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            sync_dir(&self.dir)?;
            std::fs::rename(&c.path, segment::log_path(&self.dir, base))?;
            sync_dir(&self.dir)?;
            // Synced under its temporary name: the ledger learns it under the real one.
            sync_ledger::record_synced(&segment::log_path(&self.dir, base), c.meta.size);
            self.segments[i] = Segment::from_compacted(&self.dir, c.meta)?;
        }
        Ok(())
    }

    /// Every segment's file and size, to check every batch's CRC outside the lock
    /// ([`ScrubPlan::run`]).
    pub fn scrub_plan(&self) -> ScrubPlan {
        ScrubPlan {
            segments: self
                .segments
                .iter()
                .map(|s| (s.log_path(), s.base_offset, s.size))
                .collect(),
        }
    }

    /// Writes the recovery checkpoint: everything below the flushed offset's segment is synced.
    /// The epoch checkpoint first, when the cache changed.
    pub fn write_checkpoint(&mut self) -> io::Result<()> {
        self.checkpoint().write()
    }

    /// The checkpoints to write, so the caller can write them without the log's lock.
    pub fn checkpoint(&mut self) -> Checkpoint {
        self.checkpoints_taken += 1;
        let on_disk = self.checkpoint_files.epochs_written.load(Ordering::Acquire);
        Checkpoint {
            dir: self.dir.clone(),
            flushed_offset: self.flushed_offset,
            seq: self.checkpoints_taken,
            epochs: (self.epochs_version > on_disk)
                .then(|| (self.epochs.clone(), self.epochs_version)),
            files: Arc::clone(&self.checkpoint_files),
        }
    }

    /// Seals every index (trims the files) for a clean shutdown. The log stays usable for reads.
    pub fn close(&mut self) -> io::Result<()> {
        // The zeros written ahead go, and the plan's sync makes the length durable.
        self.segments.last_mut().expect("never empty").trim()?;
        let plan = self.flush_plan();
        plan.run()?;
        self.mark_flushed(&plan);
        self.segments
            .last_mut()
            .expect("never empty")
            .seal_indexes()?;
        self.write_checkpoint()
    }

    /// Removes the partition's directory (topic deletion). Consumes the log.
    pub fn delete(self) -> io::Result<()> {
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The epoch cache from its checkpoint, and whether it must be rebuilt from the batches (the
/// file is damaged). Without a file (a log written before epochs were kept, when every
/// batch was written at epoch 0) every offset is epoch 0 until recovery says otherwise;
/// opening trims the cache to the log's range.
fn read_epochs(dir: &Path) -> (EpochCache, bool) {
    let path = dir.join(EPOCH_CHECKPOINT_FILE);
    if !path.exists() {
        let mut epochs = EpochCache::default();
        epochs.assign(0, Offset::ZERO).expect("the first entry");
        return (epochs, false);
    }
    match EpochCache::read(&path) {
        Ok(epochs) => (epochs, false),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "leader-epoch checkpoint rebuilt from the log: {e}");
            (EpochCache::default(), true)
        }
    }
}

/// The epoch cache read from every batch header of the log.
fn epochs_from_batches(segments: &[Segment]) -> io::Result<EpochCache> {
    let mut epochs = EpochCache::default();
    for segment in segments {
        segment.assign_epochs(&mut epochs)?;
    }
    Ok(epochs)
}

/// How many index entries a segment may need at most.
fn index_entries_max(config: &LogConfig) -> usize {
    let segment = config.segment_bytes.min(SEGMENT_BYTES_MAX);
    let interval = config.index_interval_bytes.max(BATCH_HEADER_BYTES as u64);
    (segment / interval + 2).min(1 << 22) as usize
}

fn list_segment_bases(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        // A compaction interrupted by a crash: the original segment is still in place.
        if name.ends_with(".log.compacted") {
            std::fs::remove_file(dir.join(&*name))?;
            continue;
        }
        if let Some(stem) = name.strip_suffix(".log")
            && stem.len() == 20
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn drop_segment_files(dir: &Path, base: u64) -> io::Result<()> {
    for ext in ["log", "index", "timeindex"] {
        match std::fs::remove_file(dir.join(format!("{base:020}.{ext}"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// fsyncs a directory so that created, renamed or deleted entries survive a power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn read_u64_file(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Replaces a small file atomically: write a temporary, sync it, rename over the old one.
pub fn write_file_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        io::Write::write_all(&mut f, contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn write_u64_file(path: &Path, value: u64) -> io::Result<()> {
    write_file_atomic(path, value.to_string().as_bytes())
}
