//! One segment: a `<base offset>.log` file of batches and its two sparse indexes.
//!
//! Invariants: the log file holds whole, CRC-valid batches from byte 0 to `size`, with dense,
//! increasing offsets from `base_offset` to `next_offset`; every index entry points at the
//! start of a batch below `size`. Positions and relative offsets fit in `u32`, which the
//! partition log guarantees by rolling before either could overflow.
//!
//! Failure policy: appends report I/O errors to the caller (the partition then refuses writes);
//! recovery truncates at the first batch that does not decode and says how much it dropped.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Offset;
use super::batch::{BATCH_HEADER_BYTES, BatchHeader};
use super::epoch_cache::EpochCache;
use super::index::{IndexFile, OffsetEntry, PendingSeal, TimeEntry};
use super::sync_ledger;
use super::walk::{FileBatches, WalkError};

/// How far a segment's contents may be trusted when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Written before a clean shutdown or sealed long before a crash: trust the indexes, read
    /// only the tail after the last index entry to find the end.
    Trusted,
    /// Possibly torn by a crash: scan every batch, check every CRC, rebuild the indexes and
    /// truncate at the first damage.
    Recover,
}

/// What opening a segment found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes cut from the end of the log file because they did not decode. Zeros alone
    /// (written ahead of small appends, see [`PREFILL_STEP_BYTES`]) are cut but not counted.
    pub truncated_bytes: u64,
    /// Whether the indexes were rebuilt from the log.
    pub rebuilt_index: bool,
    /// A recovered batch's epoch was older than the epoch cache's latest before it: the
    /// cache must be rebuilt from every batch.
    pub epochs_contradicted: bool,
    /// Where the kept batches end when bytes were cut.
    pub cut_at: Option<u64>,
}

/// A segment rewritten by compaction, described for [`Segment::from_compacted`].
#[derive(Debug)]
pub struct Compacted {
    pub base_offset: u64,
    /// The original segment's end: compaction never renumbers, so the next segment still
    /// starts here even if the last records were dropped.
    pub next_offset: u64,
    pub size: u64,
    pub max_timestamp_ms: i64,
    pub created_ms: i64,
    pub last_written_ms: i64,
    pub offset_entries: Vec<OffsetEntry>,
    pub time_entries: Vec<TimeEntry>,
}

/// A byte range of a segment to read outside the partition lock.
#[derive(Debug, Clone)]
pub struct ReadSlice {
    /// The segment's file; an `Arc` keeps it readable even if retention deletes it meanwhile.
    pub file: Arc<File>,
    /// First byte to read: the batch found through the index, at or before the wanted offset.
    pub position: u64,
    /// Bytes that may be read (never past the end of the last complete batch).
    pub len: u64,
    /// Offset where the segment ends (the next segment's base): a reader that consumed the
    /// whole slice without finding its offset (a gap left by compaction) continues there.
    pub segment_end: u64,
}

impl ReadSlice {
    /// Moves the start past whole batches that end at or before `offset`, reading only their
    /// headers. The sparse index may point up to `index_interval_bytes` before the wanted
    /// batch; without this, those batches would use up a small `max_bytes` and the reader
    /// would get nothing at all while records are there.
    pub fn skip_before(&mut self, offset: u64) -> io::Result<()> {
        let end = self.position + self.len;
        let mut walk = FileBatches::new(&self.file, self.position, end, 0);
        loop {
            match walk.next_header() {
                Ok(Some(h)) if h.next_offset() <= offset => walk.skip(),
                // Damage is left for the read to report, where the reader sees it.
                Ok(_) | Err(WalkError::Damaged { .. }) => break,
                Err(WalkError::Io(e)) => return Err(e),
            }
        }
        self.position = walk.position();
        self.len = end - self.position;
        Ok(())
    }

    /// Reads the slice, up to `max_bytes`, but always at least the first batch whole.
    pub fn read(&self, max_bytes: u64) -> io::Result<Vec<u8>> {
        let mut want = self.len.min(max_bytes.max(BATCH_HEADER_BYTES as u64));
        let mut buf = vec![0u8; want as usize];
        self.file.read_exact_at(&mut buf, self.position)?;
        if let Ok(header) = BatchHeader::parse(&buf) {
            let first = header.total_len() as u64;
            if first > want && first <= self.len {
                want = first;
                buf.resize(want as usize, 0);
                self.file.read_exact_at(&mut buf, self.position)?;
            }
        }
        Ok(buf)
    }
}

#[derive(Debug)]
pub struct Segment {
    /// Offset of the first record; also the file name.
    pub base_offset: u64,
    /// Offset one past the last record written.
    pub next_offset: u64,
    /// Bytes of whole batches in the log file.
    pub size: u64,
    /// Largest record timestamp in the segment (`i64::MIN` when empty); drives time retention.
    pub max_timestamp_ms: i64,
    /// When the segment was created (wall clock, ms), for roll by age.
    pub created_ms: i64,
    /// When its file was last written before this process held it (wall clock, ms): the
    /// file's modification time at open; the creation time for a segment made since. Every
    /// batch in it was appended no later (give or take clock steps), which is what a
    /// rebuild of the producers' state needs to count a producer as seen then.
    pub last_written_ms: i64,
    /// The log file, shared so reads and fsyncs can proceed without the partition lock.
    /// Always open for the active segment; a sealed segment holds it (and its mapped
    /// indexes) only while loaded, so sealed segments do not each hold descriptors forever.
    file: Option<Arc<File>>,
    /// offset → position, one entry per `index_interval_bytes` of log.
    offset_index: IndexFile<OffsetEntry>,
    /// running max timestamp → offset, one entry per `index_interval_bytes` of log.
    time_index: IndexFile<TimeEntry>,
    /// Log bytes appended since the last index entry.
    bytes_since_index: u64,
    /// Relative offset of the last batch, for the final time index entry on seal.
    last_batch_relative: u32,
    /// Directory and base name, for deleting the files.
    dir: PathBuf,
    /// The log file's length: `size`, or more where zeros were written ahead of small
    /// appends (see [`Segment::append`]). A sealed segment is trimmed to `size`.
    file_len: u64,
    /// Writing zeros ahead failed (a full disk): this segment no longer tries.
    prefill_failed: bool,
}

/// Small appends write into zeros written ahead, in steps of this many bytes. An fsync
/// after an append that grew the file must also commit the new length to the file
/// system's journal; one after a write into space the file already holds does not. For
/// single-record `acks=all` produces that commit was about 55 µs of every fsync's 165 µs and
/// half its system CPU on this machine's ext4 (`benches/profile/fsync.py`). PostgreSQL
/// fills its WAL segments with zeros ahead for the same reason.
const PREFILL_STEP_BYTES: u64 = 128 * 1024;
/// Appends of batches up to this size write zeros ahead; a larger batch grows the file
/// itself, where the journal commit is a small part of its write.
const PREFILL_BATCH_BYTES_MAX: usize = 16 * 1024;
/// A block of zeros to write ahead from.
static ZEROS: [u8; 16 * 1024] = [0; 16 * 1024];

pub fn log_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}
fn offset_index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}
fn time_index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.timeindex"))
}

impl Segment {
    /// Creates an empty segment. The caller fsyncs the directory.
    pub fn create(
        dir: &Path,
        base_offset: u64,
        index_entries_max: usize,
        now_ms: i64,
    ) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(log_path(dir, base_offset))?;
        Ok(Segment {
            base_offset,
            next_offset: base_offset,
            size: 0,
            max_timestamp_ms: i64::MIN,
            created_ms: now_ms,
            last_written_ms: now_ms,
            file: Some(Arc::new(file)),
            offset_index: IndexFile::create(
                &offset_index_path(dir, base_offset),
                index_entries_max,
            )?,
            time_index: IndexFile::create(&time_index_path(dir, base_offset), index_entries_max)?,
            bytes_since_index: 0,
            last_batch_relative: 0,
            dir: dir.to_path_buf(),
            file_len: 0,
            prefill_failed: false,
        })
    }

    /// Opens an existing segment. `writable` segments get preallocated, mapped indexes.
    /// `recovered_epochs`, with [`OpenMode::Recover`]: the epoch cache, cut back to this
    /// segment's base and then given the epoch of every batch the scan keeps.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        dir: &Path,
        base_offset: u64,
        mode: OpenMode,
        writable: bool,
        index_interval_bytes: u64,
        index_entries_max: usize,
        recovered_epochs: Option<&mut EpochCache>,
    ) -> io::Result<(Self, RecoveryReport)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(log_path(dir, base_offset))?;
        let metadata = file.metadata()?;
        let file_len = metadata.len();
        // The age that rolls a segment counts from its creation. The last write time would
        // restart the count at every restart, and a topic whose broker restarts more often
        // than `segment_ms` would never roll, so time retention would never delete anything.
        // Only file systems without a creation time fall back to it.
        let wall_ms = |t: std::io::Result<std::time::SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64)
        };
        let created_ms = wall_ms(metadata.created().or_else(|_| metadata.modified()));
        let last_written_ms = wall_ms(metadata.modified()).max(created_ms);
        let mut report = RecoveryReport::default();
        let trusted = match mode {
            OpenMode::Trusted => Self::open_trusted(dir, base_offset, &file, file_len)?,
            OpenMode::Recover => None,
        };
        let (offset_index, time_index, scan) = match trusted {
            Some(found) => found,
            None => {
                report.rebuilt_index = true;
                let mut epochs = recovered_epochs;
                if let Some(epochs) = epochs.as_deref_mut() {
                    epochs.truncate_from_end(Offset(base_offset));
                }
                let capacity =
                    index_entries_max.max((file_len / index_interval_bytes.max(1)) as usize + 2);
                let mut offset_index =
                    IndexFile::create(&offset_index_path(dir, base_offset), capacity)?;
                let mut time_index =
                    IndexFile::create(&time_index_path(dir, base_offset), capacity)?;
                // Room for every entry the scan can add (see `IndexFile::reserve`).
                let most = (file_len / index_interval_bytes.max(1)) as usize + 2;
                offset_index.reserve(most)?;
                time_index.reserve(most)?;
                let scan = scan_log(&file, file_len, base_offset, 0, |pos, header, since| {
                    if let Some(epochs) = epochs.as_deref_mut()
                        && epochs
                            .assign(header.leader_epoch, Offset(header.base_offset))
                            .is_err()
                    {
                        report.epochs_contradicted = true;
                    }
                    if since == 0 || since >= index_interval_bytes {
                        let rel = (header.base_offset - base_offset) as u32;
                        offset_index.append(OffsetEntry {
                            relative_offset: rel,
                            position: pos as u32,
                        });
                        true
                    } else {
                        false
                    }
                })?;
                for (rel, ts) in &scan.time_points {
                    time_index.append(TimeEntry {
                        timestamp_ms: *ts,
                        relative_offset: *rel,
                    });
                }
                if scan.valid_len < file_len {
                    // Zeros written ahead of small appends are not counted as torn bytes,
                    // but they are a cut all the same: what follows it is treated as
                    // after any cut.
                    if !only_zeros(&file, scan.valid_len, file_len)? {
                        report.truncated_bytes = file_len - scan.valid_len;
                    }
                    report.cut_at = Some(scan.next_offset.unwrap_or(base_offset));
                    file.set_len(scan.valid_len)?;
                    sync_ledger::sync_all(&file)?;
                }
                (offset_index, time_index, scan)
            }
        };
        let mut segment = Segment {
            base_offset,
            next_offset: scan.next_offset.unwrap_or(base_offset),
            size: scan.valid_len,
            max_timestamp_ms: scan.max_timestamp_ms,
            created_ms,
            last_written_ms,
            file: Some(Arc::new(file)),
            offset_index,
            time_index,
            bytes_since_index: scan.bytes_since_index,
            last_batch_relative: scan.last_batch_relative,
            dir: dir.to_path_buf(),
            file_len: scan.valid_len,
            prefill_failed: false,
        };
        if writable {
            segment.offset_index = segment.offset_index.reopen_writable(index_entries_max)?;
            segment.time_index = segment.time_index.reopen_writable(index_entries_max)?;
        } else {
            segment.seal_indexes()?;
            segment.unload();
        }
        Ok((segment, report))
    }

    /// Opens trimmed indexes and scans only after the last indexed batch. `None` means the
    /// indexes cannot be trusted and the caller must rebuild them.
    #[allow(clippy::type_complexity)]
    fn open_trusted(
        dir: &Path,
        base_offset: u64,
        file: &File,
        file_len: u64,
    ) -> io::Result<Option<(IndexFile<OffsetEntry>, IndexFile<TimeEntry>, Scan)>> {
        let Some(offset_index) =
            IndexFile::<OffsetEntry>::open_sealed(&offset_index_path(dir, base_offset))?
        else {
            return Ok(None);
        };
        let Some(time_index) =
            IndexFile::<TimeEntry>::open_sealed(&time_index_path(dir, base_offset))?
        else {
            return Ok(None);
        };
        // Both indexes strictly increase in both fields; a preallocated index (never sealed,
        // zero-filled after its entries) fails this and is rebuilt.
        let time_ordered = time_index.validate(|_| true)
            && (1..time_index.len())
                .all(|i| time_index.get(i - 1).relative_offset < time_index.get(i).relative_offset);
        if !time_ordered || !offset_index.validate(|e| u64::from(e.position) < file_len) {
            return Ok(None);
        }
        let from = offset_index.last().map_or(0, |e| u64::from(e.position));
        let scan = scan_log(file, file_len, base_offset, from, |_, _, _| false)?;
        // A segment with a batch has an entry in each index (its first batch's); an empty
        // one is a file whose writes a crash lost (a compaction's, written in place), and
        // the segment's maximum timestamp, which time retention reads, would come from its
        // tail alone.
        if scan.valid_len != file_len
            || (file_len > 0 && (offset_index.is_empty() || time_index.is_empty()))
        {
            return Ok(None);
        }
        if time_index
            .last()
            .is_some_and(|e| file_len == 0 || e.relative_offset > scan.last_batch_relative)
        {
            return Ok(None);
        }
        let mut scan = scan;
        let indexed_max = time_index.last().map_or(i64::MIN, |e| e.timestamp_ms);
        scan.max_timestamp_ms = scan.max_timestamp_ms.max(indexed_max);
        Ok(Some((offset_index, time_index, scan)))
    }

    /// Builds a sealed segment from a compacted log file already renamed into place and the
    /// index entries computed while writing it. Writes the trimmed index files.
    pub fn from_compacted(dir: &Path, compacted: Compacted) -> io::Result<Self> {
        let base_offset = compacted.base_offset;
        let offset_index = IndexFile::create_sealed(
            &offset_index_path(dir, base_offset),
            &compacted.offset_entries,
        )?;
        let time_index =
            IndexFile::create_sealed(&time_index_path(dir, base_offset), &compacted.time_entries)?;
        Ok(Segment {
            base_offset,
            next_offset: compacted.next_offset,
            size: compacted.size,
            max_timestamp_ms: compacted.max_timestamp_ms,
            created_ms: compacted.created_ms,
            last_written_ms: compacted.last_written_ms,
            file: None,
            offset_index,
            time_index,
            bytes_since_index: 0,
            last_batch_relative: 0,
            dir: dir.to_path_buf(),
            file_len: compacted.size,
            prefill_failed: false,
        })
    }

    /// The log file. The segment must be active or loaded (a bug otherwise).
    pub fn file(&self) -> &Arc<File> {
        self.file.as_ref().expect("segment loaded")
    }

    pub fn log_path(&self) -> PathBuf {
        log_path(&self.dir, self.base_offset)
    }

    /// Whether reads can be answered now: active, or sealed and loaded.
    pub fn is_loaded(&self) -> bool {
        self.file.is_some()
    }

    /// Opens a sealed segment's log file and maps its indexes, for reads.
    pub fn load(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            self.offset_index.load()?;
            self.time_index.load()?;
            self.file = Some(Arc::new(File::open(self.log_path())?));
        }
        Ok(())
    }

    /// Closes a sealed segment's log file and unmaps its indexes. Readers that still hold
    /// the file's `Arc` finish first.
    pub fn unload(&mut self) {
        debug_assert!(self.is_sealed(), "the active segment stays loaded");
        self.file = None;
        self.offset_index.unload();
        self.time_index.unload();
    }

    /// fsyncs the log file, opening it for the call if the segment is not loaded.
    pub fn sync_file(&self) -> io::Result<()> {
        match &self.file {
            Some(f) => sync_ledger::sync_all(f),
            None => sync_ledger::sync_all(&File::open(self.log_path())?),
        }
    }

    /// Paths of the index files, deleted before a compacted log replaces this one.
    pub fn index_paths(&self) -> [PathBuf; 2] {
        [
            offset_index_path(&self.dir, self.base_offset),
            time_index_path(&self.dir, self.base_offset),
        ]
    }

    /// Whether the indexes were trimmed and made read-only.
    pub fn is_sealed(&self) -> bool {
        !self.offset_index.is_writable()
    }

    /// Whether the indexes have room for another entry.
    pub fn index_is_full(&self) -> bool {
        self.offset_index.is_full() || self.time_index.is_full()
    }

    /// Appends a stamped batch at the end of the log file. The file is written, not synced.
    pub fn append(
        &mut self,
        batch: &[u8],
        header: &BatchHeader,
        index_interval_bytes: u64,
    ) -> io::Result<()> {
        debug_assert!(header.base_offset >= self.next_offset, "offsets only grow");
        // Disk blocks for this batch's index entries (and the time entry a seal adds) first,
        // so a full disk fails the append before anything changed.
        self.offset_index.reserve(self.offset_index.len() + 1)?;
        self.time_index.reserve(self.time_index.len() + 2)?;
        let end = self.size + batch.len() as u64;
        if end > self.file_len && batch.len() <= PREFILL_BATCH_BYTES_MAX {
            self.prefill(end + PREFILL_STEP_BYTES);
        }
        self.file().write_all_at(batch, self.size)?;
        self.file_len = self.file_len.max(end);
        let relative = (header.base_offset - self.base_offset) as u32;
        self.max_timestamp_ms = self.max_timestamp_ms.max(header.max_timestamp_ms);
        if self.offset_index.is_empty() || self.bytes_since_index >= index_interval_bytes {
            self.offset_index.append(OffsetEntry {
                relative_offset: relative,
                position: self.size as u32,
            });
            self.bytes_since_index = 0;
            self.append_time_entry(relative);
        }
        self.bytes_since_index += batch.len() as u64;
        self.last_batch_relative = relative;
        self.size += batch.len() as u64;
        self.next_offset = header.next_offset();
        Ok(())
    }

    /// Writes zeros from the file's end up to `to` (see [`PREFILL_STEP_BYTES`]). Best effort:
    /// on a failure (a full disk) the segment stops trying, and its appends grow the file
    /// as before.
    fn prefill(&mut self, to: u64) {
        if self.prefill_failed {
            return;
        }
        let file = Arc::clone(self.file());
        while self.file_len < to {
            let n = (to - self.file_len).min(ZEROS.len() as u64) as usize;
            if file.write_all_at(&ZEROS[..n], self.file_len).is_err() {
                // Part of it may be written: a trim must still find those zeros.
                let len = file.metadata().map_or(self.file_len, |m| m.len());
                self.file_len = self.file_len.max(len);
                self.prefill_failed = true;
                return;
            }
            self.file_len += n as u64;
        }
    }

    /// Cuts the zeros written ahead (a roll seals the segment, a clean shutdown closes it).
    /// The next sync of the file makes the new length durable.
    pub fn trim(&mut self) -> io::Result<()> {
        if self.file_len > self.size {
            self.file().set_len(self.size)?;
            self.file_len = self.size;
        }
        Ok(())
    }

    /// Cuts whatever a failed write left past the last whole batch, zeros written ahead
    /// included, so the next append starts on a clean end.
    pub fn discard_unwritten(&mut self) -> io::Result<()> {
        self.file().set_len(self.size)?;
        self.file_len = self.size;
        Ok(())
    }

    /// Records the running maximum timestamp if it grew since the last time entry.
    fn append_time_entry(&mut self, relative: u32) {
        let grew = self
            .time_index
            .last()
            .is_none_or(|t| self.max_timestamp_ms > t.timestamp_ms && relative > t.relative_offset);
        // A sealed index takes no entry (a trusted open of a sealed segment whose time index
        // ends short of its maximum): seeks by time then scan a little further.
        if grew
            && self.max_timestamp_ms != i64::MIN
            && self.time_index.is_writable()
            && !self.time_index.is_full()
        {
            self.time_index.append(TimeEntry {
                timestamp_ms: self.max_timestamp_ms,
                relative_offset: relative,
            });
        }
    }

    /// Where to start reading for `offset`: the indexed batch at or before it, up to `end`.
    pub fn read_slice(&self, offset: u64) -> ReadSlice {
        let relative = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as i64;
        let position = self
            .offset_index
            .floor(relative)
            .map_or(0, |i| u64::from(self.offset_index.get(i).position));
        ReadSlice {
            file: Arc::clone(self.file()),
            position,
            len: self.size - position,
            segment_end: self.next_offset,
        }
    }

    /// Where to start scanning for the first record with a timestamp `>= timestamp_ms`.
    pub fn time_slice(&self, timestamp_ms: i64) -> ReadSlice {
        let start_relative = self
            .time_index
            .lower(timestamp_ms)
            .map_or(0, |i| self.time_index.get(i).relative_offset);
        self.read_slice(self.base_offset + u64::from(start_relative))
    }

    /// Where cutting at `offset` (below `next_offset`) falls: the byte position and the new
    /// end offset. That is the start of the first batch ending past `offset`, and its base
    /// offset, or `offset` itself where it falls in a compaction gap. A damaged header before
    /// that batch is cut too (a scrub found it: the cut removes it). The segment must be
    /// loaded.
    pub fn cut_point(&self, offset: u64) -> io::Result<(u64, u64)> {
        let relative = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as i64;
        let (from, mut good_end) =
            self.offset_index
                .floor(relative)
                .map_or((0, self.base_offset), |i| {
                    let entry = self.offset_index.get(i);
                    (
                        u64::from(entry.position),
                        self.base_offset + u64::from(entry.relative_offset),
                    )
                });
        let mut walk = FileBatches::new(self.file(), from, self.size, 0);
        loop {
            match walk.next_header() {
                Ok(Some(h)) if h.next_offset() <= offset => {
                    good_end = h.next_offset();
                    walk.skip();
                }
                Ok(Some(h)) => return Ok((walk.position(), h.base_offset.min(offset))),
                Ok(None) => return Ok((self.size, offset.min(self.next_offset))),
                Err(WalkError::Damaged { position, .. }) => {
                    return Ok((position, good_end.min(offset)));
                }
                Err(WalkError::Io(e)) => return Err(e),
            }
        }
    }

    /// Cuts the active segment at `offset` (see [`Segment::cut_point`]): the log file, its
    /// indexes and the bookkeeping of its tail. Returns the new end offset. The caller syncs.
    pub fn truncate(&mut self, offset: u64) -> io::Result<u64> {
        debug_assert!(!self.is_sealed(), "only the active segment is cut");
        if offset >= self.next_offset {
            return Ok(self.next_offset);
        }
        let (cut, end) = self.cut_point(offset)?;
        let offsets_kept = (0..self.offset_index.len())
            .take_while(|&i| u64::from(self.offset_index.get(i).position) < cut)
            .count();
        self.offset_index.truncate(offsets_kept);
        let cut_relative = (end - self.base_offset).min(u64::from(u32::MAX)) as u32;
        let times_kept = (0..self.time_index.len())
            .take_while(|&i| self.time_index.get(i).relative_offset < cut_relative)
            .count();
        self.time_index.truncate(times_kept);
        self.file().set_len(cut)?;
        self.file_len = cut;
        // The tail after the last index entry kept: its batches give the bookkeeping the
        // indexes do not hold (largest timestamp, last batch, bytes since the last entry).
        let from = self
            .offset_index
            .last()
            .map_or(0, |e| u64::from(e.position));
        let scan = scan_log(self.file(), cut, self.base_offset, from, |_, _, _| false)?;
        let indexed_max = self.time_index.last().map_or(i64::MIN, |e| e.timestamp_ms);
        self.max_timestamp_ms = scan.max_timestamp_ms.max(indexed_max);
        self.last_batch_relative = scan.last_batch_relative;
        self.bytes_since_index = scan.bytes_since_index;
        self.size = cut;
        self.next_offset = end;
        Ok(end)
    }

    /// Gives `epochs` the leader epoch of every batch, in order (reading headers only).
    pub fn assign_epochs(&self, epochs: &mut EpochCache) -> io::Result<()> {
        let file = match &self.file {
            Some(file) => Arc::clone(file),
            None => Arc::new(File::open(self.log_path())?),
        };
        let mut walk = FileBatches::new(&file, 0, self.size, self.base_offset);
        while let Some(h) = walk.next_header().map_err(io::Error::from)? {
            epochs
                .assign(h.leader_epoch, Offset(h.base_offset))
                .map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("the log's epochs: {e}"))
                })?;
            walk.skip();
        }
        Ok(())
    }

    /// Trims the indexes to their entries and makes them read-only (on shutdown and open).
    pub fn seal_indexes(&mut self) -> io::Result<()> {
        for pending in self.seal_indexes_later() {
            pending.run()?;
        }
        Ok(())
    }

    /// Makes the indexes read-only now and returns the file work of trimming and syncing
    /// them, for a roll to do outside the partition lock.
    pub fn seal_indexes_later(&mut self) -> Vec<PendingSeal> {
        if self.size > 0 {
            self.append_time_entry(self.last_batch_relative);
        }
        [self.offset_index.seal_later(), self.time_index.seal_later()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Removes the segment's files. Open readers keep their `Arc<File>` until done.
    pub fn delete_files(&self) -> io::Result<()> {
        for path in [
            log_path(&self.dir, self.base_offset),
            offset_index_path(&self.dir, self.base_offset),
            time_index_path(&self.dir, self.base_offset),
        ] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// What a scan of a log file found.
#[derive(Debug, Default)]
struct Scan {
    /// Bytes of whole, valid batches from the start of the file.
    valid_len: u64,
    /// Offset after the last valid batch (`None` if none was found after `from`).
    next_offset: Option<u64>,
    max_timestamp_ms: i64,
    /// Bytes since the last indexed batch.
    bytes_since_index: u64,
    /// Relative offset of the last valid batch.
    last_batch_relative: u32,
    /// (relative offset, running max timestamp) at each indexed batch where the max grew.
    time_points: Vec<(u32, i64)>,
}

/// Whether the file holds only zero bytes in `from..to`.
fn only_zeros(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Walks batches from `from` to the end of the file, checking each CRC; stops at the first
/// one that is damaged (see [`super::walk`]). `index` is told `(position, header, bytes since
/// last index entry)` and says whether it indexed the batch.
fn scan_log(
    file: &File,
    file_len: u64,
    base_offset: u64,
    from: u64,
    mut index: impl FnMut(u64, &BatchHeader, u64) -> bool,
) -> io::Result<Scan> {
    let mut scan = Scan {
        valid_len: from,
        max_timestamp_ms: i64::MIN,
        ..Scan::default()
    };
    let mut since_index = 0u64;
    let mut walk = FileBatches::new(file, from, file_len, base_offset);
    loop {
        let (pos, header) = match walk.next_batch() {
            Ok(Some((pos, view))) => (pos, view.header),
            Ok(None) | Err(WalkError::Damaged { .. }) => break,
            Err(WalkError::Io(e)) => return Err(e),
        };
        let indexed = index(pos, &header, since_index);
        if indexed {
            since_index = 0;
        }
        scan.max_timestamp_ms = scan.max_timestamp_ms.max(header.max_timestamp_ms);
        let relative = (header.base_offset - base_offset) as u32;
        if indexed
            && scan
                .time_points
                .last()
                .is_none_or(|&(_, ts)| scan.max_timestamp_ms > ts)
        {
            scan.time_points.push((relative, scan.max_timestamp_ms));
        }
        since_index += header.total_len() as u64;
        scan.last_batch_relative = relative;
        scan.next_offset = Some(header.next_offset());
        scan.valid_len = walk.position();
    }
    scan.bytes_since_index = since_index;
    Ok(scan)
}
