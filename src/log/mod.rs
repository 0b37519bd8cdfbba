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
//!   (except by an explicit truncation, which replication will need).
//! - Only the active segment is written; rolled segments are immutable and are synced before
//!   the flushed offset moves past them.
//!
//! Failure policy: I/O errors are returned to the caller, which stops taking writes for the
//! partition; recovery truncates a torn or corrupt tail and reports how many bytes it cut.

pub mod batch;
pub mod compact;
pub mod epoch_cache;
pub mod index;
pub mod producer_state;
pub mod segment;
#[cfg(test)]
mod tests;
pub mod walk;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::limits::SEALED_SEGMENTS_LOADED_PER_PARTITION_MAX;
use batch::{BATCH_HEADER_BYTES, BatchHeader};
use index::PendingSeal;
use segment::{OpenMode, ReadSlice, Segment};

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
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 128 * 1024 * 1024,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
        }
    }
}

/// Largest segment the format allows: positions in the offset index are `u32`.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

const CHECKPOINT_FILE: &str = "recovery-checkpoint";
const LOG_START_FILE: &str = "log-start-offset";

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
}

/// A recovery checkpoint taken under the lock and written outside it.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    flushed_offset: u64,
    /// The partition's checkpoint writes, one at a time (see [`Checkpoint::write`]).
    written: Arc<Mutex<u64>>,
}

impl Checkpoint {
    /// Writes the checkpoint unless a later one was written meanwhile. Writes of one
    /// partition take turns: the flusher's and a shutdown's may overlap, and two writes
    /// through one temporary file fail (the second rename finds it gone) or leave the older
    /// offset. The lock is held across the file write on purpose; no `.await` under it.
    pub fn write(&self) -> io::Result<()> {
        let mut written = self
            .written
            .lock()
            .expect("the checkpoint lock is not poisoned");
        if self.flushed_offset < *written {
            return Ok(());
        }
        write_u64_file(&self.path, self.flushed_offset)?;
        *written = self.flushed_offset;
        Ok(())
    }
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
    /// Everything below this offset is durable once the plan has run.
    pub target: u64,
}

impl FlushPlan {
    /// Syncs the files, trims and syncs the rolled indexes, syncs the directory. Blocking.
    pub fn run(&self) -> io::Result<()> {
        for file in &self.files {
            file.sync_data()?;
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

/// A rolled segment whose file work waits for the next flush.
#[derive(Debug)]
struct Unsynced {
    file: Arc<File>,
    seals: Vec<Arc<PendingSeal>>,
    /// The segment's end offset: a flush marked done at or past it covered this segment.
    end: u64,
}

#[derive(Debug)]
pub struct PartitionLog {
    /// The partition's directory; segments and checkpoints live here.
    dir: PathBuf,
    config: LogConfig,
    /// Sorted by base offset; the last one is the active segment. Never empty.
    segments: Vec<Segment>,
    /// First offset a consumer may read; moved by retention and delete-records.
    log_start_offset: u64,
    /// Every record below this offset has been fsynced.
    flushed_offset: u64,
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
    /// The last recovery checkpoint written, shared with the checkpoints taken to be written
    /// outside the lock, which take turns on it.
    checkpoint_written: Arc<Mutex<u64>>,
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
            let (segment, seg_report) = Segment::open(
                dir,
                base,
                mode,
                writable,
                config.index_interval_bytes,
                entries_max,
            )?;
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
            let cut = seg_report.truncated_bytes > 0;
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
        let log_end = segments.last().expect("never empty").next_offset;
        let log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            segments,
            log_start_offset,
            flushed_offset: log_end,
            unsynced: Vec::new(),
            rolls: 0,
            dir_synced_rolls: 0,
            loaded: Vec::new(),
            checkpoint_written: Arc::new(Mutex::new(0)),
        };
        log.write_checkpoint()?;
        Ok((log, report))
    }

    pub fn config(&self) -> LogConfig {
        self.config
    }

    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    pub fn log_start_offset(&self) -> u64 {
        self.log_start_offset
    }

    pub fn log_end_offset(&self) -> u64 {
        self.active().next_offset
    }

    pub fn flushed_offset(&self) -> u64 {
        self.flushed_offset
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
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
    ) -> io::Result<(u64, u64)> {
        let base = self.log_end_offset();
        batch::stamp_batch(batch, base, leader_epoch);
        let header = BatchHeader::parse(batch)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        assert_eq!(header.total_len(), batch.len(), "a batch is appended whole");
        self.maybe_roll(batch.len() as u64, header.last_offset_delta, now_ms)?;
        let interval = self.config.index_interval_bytes;
        self.segments
            .last_mut()
            .expect("never empty")
            .append(batch, &header, interval)?;
        Ok((base, header.next_offset()))
    }

    fn maybe_roll(&mut self, incoming: u64, last_delta: u32, now_ms: i64) -> io::Result<()> {
        let segment_bytes = self.config.segment_bytes.min(SEGMENT_BYTES_MAX);
        let active = self.active();
        if active.size == 0 {
            return Ok(());
        }
        let too_big = active.size + incoming > segment_bytes;
        let too_old = now_ms.saturating_sub(active.created_ms) > self.config.segment_ms;
        let offsets_overflow =
            active.next_offset - active.base_offset + u64::from(last_delta) >= u64::from(u32::MAX);
        if too_big || too_old || offsets_overflow || active.index_is_full() {
            self.roll(now_ms)?;
        }
        Ok(())
    }

    /// Cuts whatever a failed append left past the active segment's last whole batch (a
    /// partial write on a full disk), so the next append starts on a clean end.
    pub fn discard_unwritten(&mut self) -> io::Result<()> {
        let active = self.active();
        active.file().set_len(active.size)
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
        let created = Segment::create(&self.dir, next, entries_max, now_ms)?;
        let sealed = self.segments.last_mut().expect("never empty");
        let seals = sealed.seal_indexes_later();
        self.unsynced.push(Unsynced {
            file: Arc::clone(sealed.file()),
            seals: seals.into_iter().map(Arc::new).collect(),
            end: next,
        });
        sealed.unload();
        self.segments.push(created);
        self.rolls += 1;
        Ok(())
    }

    /// The bytes to read for `offset`, or `None` at the log end. The caller checks the range.
    /// Loads the segment if it is sealed and not loaded (opens one file, maps its indexes).
    pub fn read_slice(&mut self, offset: u64) -> io::Result<Option<ReadSlice>> {
        if offset >= self.log_end_offset() {
            return Ok(None);
        }
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
            target: self.log_end_offset(),
        }
    }

    /// Records that a [`FlushPlan`] has run.
    pub fn mark_flushed(&mut self, plan: &FlushPlan) {
        let target = plan.target;
        assert!(target <= self.log_end_offset(), "flushed past the log end");
        self.flushed_offset = self.flushed_offset.max(target);
        self.unsynced.retain(|u| u.end > target);
        if plan.dir.is_some() {
            self.dir_synced_rolls = self.dir_synced_rolls.max(plan.rolls);
        }
    }

    /// Deletes whole segments below `upto` that retention no longer keeps. Returns how many.
    pub fn apply_retention(&mut self, now_ms: i64, upto: u64) -> io::Result<usize> {
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
            let below_start = oldest.next_offset <= self.log_start_offset;
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
            self.log_start_offset = self.log_start_offset.max(self.segments[0].base_offset);
            write_u64_file(&self.dir.join(LOG_START_FILE), self.log_start_offset)?;
            sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }

    /// Moves the log start offset forward (Kafka's DeleteRecords). `offset` must not pass
    /// `upto` (the high watermark); whole segments below it are deleted.
    pub fn delete_records_before(&mut self, offset: u64, upto: u64) -> io::Result<u64> {
        let offset = offset.min(upto);
        if offset > self.log_start_offset {
            // Stored first: if the write fails, memory and disk still agree.
            write_u64_file(&self.dir.join(LOG_START_FILE), offset)?;
            self.log_start_offset = offset;
            self.apply_retention(i64::MIN, upto)?;
        }
        Ok(self.log_start_offset)
    }

    /// The sealed segments and the active one, for compaction (`None`: nothing sealed yet).
    pub fn compaction_plan(&self, upto: u64) -> Option<compact::CompactionPlan> {
        let snapshot = |s: &Segment| compact::SegmentSnapshot {
            base_offset: s.base_offset,
            next_offset: s.next_offset,
            size: s.size,
            max_timestamp_ms: s.max_timestamp_ms,
            created_ms: s.created_ms,
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
            self.segments[i] = Segment::from_compacted(&self.dir, c.meta)?;
        }
        Ok(())
    }

    /// Writes the recovery checkpoint: everything below the flushed offset's segment is synced.
    pub fn write_checkpoint(&self) -> io::Result<()> {
        self.checkpoint().write()
    }

    /// The recovery checkpoint to write, so the caller can write it without the log's lock.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            path: self.dir.join(CHECKPOINT_FILE),
            flushed_offset: self.flushed_offset,
            written: Arc::clone(&self.checkpoint_written),
        }
    }

    /// Seals every index (trims the files) for a clean shutdown. The log stays usable for reads.
    pub fn close(&mut self) -> io::Result<()> {
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
