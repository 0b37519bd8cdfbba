//! Log compaction: keep the latest record of every key, drop the rest.
//!
//! Only sealed segments are rewritten, and only below the high watermark: the active segment
//! and anything a consumer cannot see yet are left alone. Offsets never change: a kept record
//! keeps its offset (batches carry explicit offset deltas), so compaction leaves gaps, never
//! renumbers. A tombstone (a record with a null value) is kept until its segment is older than
//! `delete_retention_ms`, so that consumers that are behind still see the delete.
//!
//! The expensive part (reading every batch, writing the new files) runs without the partition
//! lock; sealed segments are immutable, so it reads a stable snapshot. Installing the result
//! takes the lock briefly: delete the old index files, rename the compacted log over the old
//! one, write the new (small) index files. A crash at any step leaves either the old log or
//! the new one, and indexes that are missing (rebuilt on open) or match.
//!
//! Memory is bounded, however many keys a partition holds: the map of latest offsets keeps a
//! 16-byte keyed digest of each key (two SipHash-1-3 with random keys, never the key itself)
//! and at most `compaction_keys_per_pass_max` of them. A partition with more keys is compacted
//! in passes: each pass maps the keys of one window of offsets, starting where the last one
//! stopped, and rewrites the sealed segments below the window's end against it. A record with
//! a later record of its key is dropped in the pass whose window holds that later record, so
//! after the last pass the log is as one unbounded pass would leave it.
//!
//! Invariant: a key's latest record at or below the high watermark is never removed (unless
//! two keys share a 128-bit digest, as Kafka's cleaner accepts of its MD5 digests).

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::batch::{BatchBuilder, BatchView, RecordRef, stamp_batch};
use super::index::{OffsetEntry, TimeEntry};
use super::segment::Compacted;
use super::walk::FileBatches;

/// A sealed segment as compaction sees it: an immutable file.
#[derive(Debug, Clone)]
pub struct SegmentSnapshot {
    pub base_offset: u64,
    pub next_offset: u64,
    pub size: u64,
    pub max_timestamp_ms: i64,
    pub created_ms: i64,
    pub last_written_ms: i64,
    /// The log file, opened only while compaction reads it, so a plan holds no descriptors.
    pub path: PathBuf,
}

/// What to compact, taken under the partition lock.
#[derive(Debug)]
pub struct CompactionPlan {
    /// Sealed segments, oldest first; these may be rewritten.
    pub sealed: Vec<SegmentSnapshot>,
    /// The active segment, read only to learn the latest offset of each key.
    pub active: SegmentSnapshot,
    /// Records at or past this offset are not considered (the high watermark).
    pub upto: u64,
}

/// A rewritten segment waiting to be installed.
#[derive(Debug)]
pub struct CompactedSegment {
    /// The new log file, next to the old one, named `<base>.log.compacted`.
    pub path: PathBuf,
    pub meta: Compacted,
    /// Records dropped from this segment.
    pub dropped_records: u64,
}

/// Where a compacted log is written before it replaces the original.
pub fn compacted_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log.compacted"))
}

/// Calls `each` for every batch of a segment, in order, until it returns `true` (then so does
/// this). A damaged batch is an error: the segment is left as it is rather than rewritten
/// without the batches after the damage.
fn for_each_batch(
    segment: &SegmentSnapshot,
    mut each: impl FnMut(BatchView<'_>) -> io::Result<bool>,
) -> io::Result<bool> {
    let file = match File::open(&segment.path) {
        Ok(f) => f,
        // Retention deleted the segment meanwhile: nothing to read, nothing to rewrite.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut walk = FileBatches::new(&file, 0, segment.size, segment.base_offset);
    while let Some((_, view)) = walk.next_batch()? {
        if each(view)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The latest offset of each key in one window of offsets, keyed by digest: what one pass
/// of compaction holds in memory.
#[derive(Debug)]
pub struct KeyWindow {
    digests: KeyDigests,
    latest: HashMap<[u64; 2], u64>,
    /// The first offset past the window: the record whose key did not fit, or the plan's end.
    pub end: u64,
}

impl KeyWindow {
    /// The latest offset of `key` in the window, if the key has a record there.
    fn latest(&self, key: &[u8]) -> Option<u64> {
        self.latest.get(&self.digests.of(key)).copied()
    }

    /// Keys mapped (at most the limit the window was built with).
    pub fn keys(&self) -> usize {
        self.latest.len()
    }
}

/// A 128-bit keyed digest of a record key. Keyed at random per window, so a client cannot
/// choose two keys that collide and have one's latest record dropped for the other's.
#[derive(Debug)]
struct KeyDigests([RandomState; 2]);

impl KeyDigests {
    fn new() -> KeyDigests {
        KeyDigests([RandomState::new(), RandomState::new()])
    }

    fn of(&self, key: &[u8]) -> [u64; 2] {
        [self.0[0].hash_one(key), self.0[1].hash_one(key)]
    }
}

/// Maps the latest offset of each key from offset `from` on, stopping before the first record
/// of a new key once `keys_max` keys are mapped, or at the plan's end (`upto`). Records
/// without a key are not compacted and are not in the map.
pub fn key_window(plan: &CompactionPlan, from: u64, keys_max: u32) -> io::Result<KeyWindow> {
    let keys_max = keys_max.max(1) as usize;
    let mut window = KeyWindow {
        digests: KeyDigests::new(),
        latest: HashMap::new(),
        end: plan.upto,
    };
    let segments = plan.sealed.iter().chain(std::iter::once(&plan.active));
    for segment in segments.filter(|s| s.next_offset > from) {
        let full = for_each_batch(segment, |batch| {
            for record in batch.records().flatten() {
                if record.offset < from {
                    continue;
                }
                if record.offset >= plan.upto {
                    return Ok(true);
                }
                let Some(key) = record.key else { continue };
                let digest = window.digests.of(key);
                if let Some(offset) = window.latest.get_mut(&digest) {
                    *offset = record.offset;
                } else if window.latest.len() < keys_max {
                    window.latest.insert(digest, record.offset);
                } else {
                    window.end = record.offset;
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        if full {
            break;
        }
    }
    Ok(window)
}

/// What one pass of compaction rewrote, to be installed under the partition lock.
#[derive(Debug)]
pub struct CompactionPass {
    pub rewritten: Vec<CompactedSegment>,
    pub dropped_records: u64,
    /// Where the next pass starts; at the plan's end (`upto`) there is no next pass.
    pub end: u64,
}

/// One pass: maps the keys from `from` on (at most `keys_max`) and rewrites every sealed
/// segment below the window's end against them. Tombstones in segments newer than
/// `delete_retention_ms` before `now_ms` are kept.
pub fn compaction_pass(
    dir: &Path,
    plan: &CompactionPlan,
    from: u64,
    keys_max: u32,
    (now_ms, delete_retention_ms): (i64, i64),
    index_interval_bytes: u64,
) -> io::Result<CompactionPass> {
    let window = key_window(plan, from, keys_max)?;
    let mut pass = CompactionPass {
        rewritten: Vec::new(),
        dropped_records: 0,
        end: window.end,
    };
    for segment in &plan.sealed {
        let keep_tombstones =
            segment.max_timestamp_ms >= now_ms.saturating_sub(delete_retention_ms);
        let compacted =
            compact_segment(dir, segment, &window, keep_tombstones, index_interval_bytes)?;
        if let Some(c) = compacted {
            pass.dropped_records += c.dropped_records;
            pass.rewritten.push(c);
        }
    }
    Ok(pass)
}

/// Rewrites one sealed segment against a window of keys, keeping only what compaction keeps:
/// a record at or past the window's end is kept, and so is one whose key has no later record
/// in the window. Returns `None` when nothing would be dropped (the segment is left as it is).
pub fn compact_segment(
    dir: &Path,
    segment: &SegmentSnapshot,
    window: &KeyWindow,
    keep_tombstones: bool,
    index_interval_bytes: u64,
) -> io::Result<Option<CompactedSegment>> {
    if segment.base_offset >= window.end {
        return Ok(None);
    }
    let keep = |offset: u64, key: Option<&[u8]>, value: Option<&[u8]>| -> bool {
        if offset >= window.end {
            return true;
        }
        let Some(key) = key else { return true };
        let latest_for_key = window.latest(key).is_none_or(|l| l == offset);
        latest_for_key && (value.is_some() || keep_tombstones)
    };
    // First pass: is there anything to drop at all?
    let mut droppable = 0u64;
    for_each_batch(segment, |batch| {
        for r in batch.records().flatten() {
            if !keep(r.offset, r.key, r.value) {
                droppable += 1;
            }
        }
        Ok(false)
    })?;
    if droppable == 0 {
        return Ok(None);
    }
    let path = compacted_path(dir, segment.base_offset);
    let mut out = io::BufWriter::new(File::create(&path)?);
    let mut meta = Compacted {
        base_offset: segment.base_offset,
        next_offset: segment.next_offset,
        size: 0,
        max_timestamp_ms: i64::MIN,
        created_ms: segment.created_ms,
        last_written_ms: segment.last_written_ms,
        offset_entries: Vec::new(),
        time_entries: Vec::new(),
    };
    let mut since_index = u64::MAX;
    let mut last_relative = 0u32;
    let mut headers_buf: Vec<(String, Vec<u8>)> = Vec::new();
    for_each_batch(segment, |batch| {
        let mut builder = BatchBuilder::with_capacity(batch.bytes.len());
        for r in batch.records() {
            let r = r.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if !keep(r.offset, r.key, r.value) {
                continue;
            }
            headers_buf.clear();
            for h in r.headers.clone() {
                let (name, value) = h.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                headers_buf.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
            }
            let headers: Vec<(&str, &[u8])> = headers_buf
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            let delta = (r.offset - batch.header.base_offset) as u32;
            builder.push_with_offset_delta(
                &RecordRef {
                    timestamp_ms: r.timestamp_ms,
                    key: r.key,
                    key_is_utf8: r.key_is_utf8,
                    value: r.value,
                    value_is_json: r.value_is_json,
                    headers: &headers,
                },
                delta,
            );
        }
        if builder.record_count() == 0 {
            return Ok(false);
        }
        // The batch keeps its whole offset range so the next batch still follows it.
        let mut bytes = builder.finish(batch.header.producer, Some(batch.header.last_offset_delta));
        stamp_batch(
            &mut bytes,
            batch.header.base_offset,
            batch.header.leader_epoch,
        );
        let relative = (batch.header.base_offset - segment.base_offset) as u32;
        if since_index >= index_interval_bytes {
            meta.offset_entries.push(OffsetEntry {
                relative_offset: relative,
                position: meta.size as u32,
            });
            let max_ts = meta.max_timestamp_ms.max(batch.header.max_timestamp_ms);
            if meta
                .time_entries
                .last()
                .is_none_or(|t| max_ts > t.timestamp_ms)
            {
                meta.time_entries.push(TimeEntry {
                    timestamp_ms: max_ts,
                    relative_offset: relative,
                });
            }
            since_index = 0;
        }
        since_index += bytes.len() as u64;
        meta.max_timestamp_ms = meta.max_timestamp_ms.max(batch.header.max_timestamp_ms);
        last_relative = relative;
        out.write_all(&bytes)?;
        meta.size += bytes.len() as u64;
        Ok(false)
    })?;
    // As when a segment is sealed: the time index ends with the segment's largest timestamp.
    if meta.size > 0
        && meta
            .time_entries
            .last()
            .is_none_or(|t| meta.max_timestamp_ms > t.timestamp_ms)
    {
        meta.time_entries.push(TimeEntry {
            timestamp_ms: meta.max_timestamp_ms,
            relative_offset: last_relative,
        });
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(Some(CompactedSegment {
        path,
        meta,
        dropped_records: droppable,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{BatchBuilder, ProducerInfo};
    use crate::log::walk::BufferBatches;
    use crate::log::{LogConfig, Offset, PartitionLog};

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 2048,
            index_interval_bytes: 256,
            retention_ms: None,
            ..LogConfig::default()
        }
    }

    fn append(log: &mut PartitionLog, key: &str, value: Option<&str>, ts: i64) -> u64 {
        let mut b = BatchBuilder::with_capacity(64);
        b.push(&RecordRef {
            timestamp_ms: ts,
            key: Some(key.as_bytes()),
            key_is_utf8: true,
            value: value.map(str::as_bytes),
            value_is_json: true,
            headers: &[("h", b"v")],
        });
        let mut batch = b.finish(ProducerInfo::NONE, None);
        log.append(&mut batch, 0, ts).unwrap().0.0
    }

    /// Every record from the log start, as (offset, key, value), following segment ends.
    fn read_all(log: &mut PartitionLog) -> Vec<(u64, String, Option<String>)> {
        let mut out = Vec::new();
        let mut offset = log.log_start_offset().0;
        while let Some(slice) = log.read_slice(Offset(offset)).unwrap() {
            let bytes = slice.read(u64::MAX).unwrap();
            let mut advanced = false;
            for batch in BufferBatches::new(&bytes) {
                for r in batch.unwrap().records().map(Result::unwrap) {
                    if r.offset >= offset {
                        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                        out.push((r.offset, text(r.key.unwrap()), r.value.map(text)));
                        offset = r.offset + 1;
                        advanced = true;
                    }
                }
            }
            if !advanced {
                offset = slice.segment_end;
            }
        }
        out
    }

    fn compact_now(log: &mut PartitionLog, now: i64, delete_retention_ms: i64) -> u64 {
        compact_in_passes(log, now, delete_retention_ms, u32::MAX).0
    }

    /// Compacts as the partition does, pass after pass. Returns the records dropped and the
    /// most keys one pass mapped.
    fn compact_in_passes(
        log: &mut PartitionLog,
        now: i64,
        delete_retention_ms: i64,
        keys_max: u32,
    ) -> (u64, usize) {
        let upto = log.log_end_offset().0;
        let (mut dropped, mut most_keys, mut from) = (0, 0, 0);
        while from < upto {
            let plan = log.compaction_plan(Offset(upto)).expect("sealed segments");
            most_keys = most_keys.max(key_window(&plan, from, keys_max).unwrap().keys());
            let times = (now, delete_retention_ms);
            let pass = compaction_pass(log.dir(), &plan, from, keys_max, times, 256).unwrap();
            dropped += pass.dropped_records;
            log.install_compacted(pass.rewritten).unwrap();
            from = pass.end;
        }
        (dropped, most_keys)
    }

    #[test]
    fn compaction_maps_at_most_keys_max_keys_and_leaves_what_one_unbounded_pass_would() {
        let fill = |dir: &Path| {
            let (mut log, _) = PartitionLog::open(dir, config(), false, 0).unwrap();
            for i in 0..400u64 {
                // 40 keys, newer keys arriving as older ones get their last values.
                let key = format!("k{}", (i * 7 + i / 50) % 40);
                append(&mut log, &key, Some(&format!("{i}")), 1_000 + i as i64);
            }
            append(&mut log, "k5", None, 2_000);
            log.roll(3_000).unwrap();
            log
        };
        let unbounded_dir = tempfile::tempdir().unwrap();
        let mut unbounded = fill(unbounded_dir.path());
        let (dropped_unbounded, keys_unbounded) =
            compact_in_passes(&mut unbounded, 3_000, 1_000_000, u32::MAX);
        assert_eq!(keys_unbounded, 40);
        let bounded_dir = tempfile::tempdir().unwrap();
        let mut bounded = fill(bounded_dir.path());
        let (dropped, most_keys) = compact_in_passes(&mut bounded, 3_000, 1_000_000, 6);
        assert!(most_keys <= 6, "a pass mapped {most_keys} keys");
        assert_eq!(dropped, dropped_unbounded);
        assert_eq!(dropped, 401 - 40, "all but the latest record of each key");
        assert_eq!(read_all(&mut bounded), read_all(&mut unbounded));
    }

    #[test]
    fn compaction_keeps_the_latest_record_per_key_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 0).unwrap();
        let mut expected = std::collections::BTreeMap::new();
        for i in 0..200u64 {
            let key = format!("k{}", i % 7);
            let value = format!("{i}");
            let offset = append(&mut log, &key, Some(&value), 1_000 + i as i64);
            expected.insert(key, (offset, Some(value)));
        }
        // k3 is deleted: a tombstone, then it must disappear once old enough.
        let tomb = append(&mut log, "k3", None, 2_000);
        expected.insert("k3".into(), (tomb, None));
        log.roll(3_000).unwrap();
        let end = log.log_end_offset().0;
        assert!(
            log.segment_count() > 3,
            "the test needs several sealed segments"
        );

        let dropped = compact_now(&mut log, 3_000, 1_000_000);
        assert_eq!(
            dropped,
            201 - 7,
            "all but the latest record of each of the 7 keys"
        );
        let got = read_all(&mut log);
        let want: Vec<_> = expected
            .iter()
            .map(|(k, (o, v))| (*o, k.clone(), v.clone()))
            .collect();
        let mut want = want;
        want.sort();
        assert_eq!(
            got, want,
            "latest per key, tombstone kept while young, offsets unchanged"
        );
        assert_eq!(log.log_end_offset().0, end, "compaction never renumbers");

        // Once the tombstone is older than delete_retention_ms it goes too.
        compact_now(&mut log, 10_000_000, 1_000);
        let got = read_all(&mut log);
        assert!(got.iter().all(|(_, k, _)| k != "k3"), "{got:?}");
        assert_eq!(got.len(), 6);

        // Appends continue at the same end; a crash-style reopen reads the same.
        let next = append(&mut log, "k0", Some("new"), 5_000);
        assert_eq!(next, end);
        let before = read_all(&mut log);
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 6_000).unwrap();
        assert_eq!(read_all(&mut log), before);
        assert_eq!(log.log_end_offset().0, end + 1);
    }

    #[test]
    fn a_damaged_sealed_segment_is_left_as_it_is_not_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 0).unwrap();
        for i in 0..40u64 {
            append(&mut log, &format!("k{}", i % 3), Some("v"), 1_000);
        }
        log.roll(2_000).unwrap();
        let plan = log.compaction_plan(log.log_end_offset()).unwrap();
        let first = &plan.sealed[0];
        // A flipped byte in the middle of the first segment: the batches after it must not be
        // lost by a rewrite that stops at the damage.
        let path = crate::log::segment::log_path(dir.path(), first.base_offset);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let window = key_window(&plan, 0, u32::MAX);
        assert!(window.is_err(), "damage is reported, not skipped");
        let empty = KeyWindow {
            digests: KeyDigests::new(),
            latest: HashMap::new(),
            end: plan.upto,
        };
        let rewritten = compact_segment(dir.path(), first, &empty, true, 256);
        assert_eq!(
            rewritten.unwrap_err().kind(),
            io::ErrorKind::InvalidData,
            "a damaged segment is not rewritten"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), before);
    }

    #[test]
    fn segments_compaction_empties_are_removed_and_offsets_keep_their_meaning() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 0).unwrap();
        for i in 0..300i64 {
            append(&mut log, "same", Some("v"), 1_000 + i);
        }
        let last = append(&mut log, "other", Some("w"), 2_000);
        log.roll(3_000).unwrap();
        let end = log.log_end_offset().0;
        let before = log.segment_count();
        assert!(before > 8, "{before} segments");
        compact_now(&mut log, 3_000, 1_000_000);
        // The first segment stays (it holds the log start); the emptied ones after it go.
        let logs = crate::log::tests::segment_files(dir.path(), "log").len();
        assert!(log.segment_count() <= 4, "{} segments", log.segment_count());
        assert_eq!(logs, log.segment_count());
        let want = vec![
            (last - 1, "same".to_string(), Some("v".to_string())),
            (last, "other".to_string(), Some("w".to_string())),
        ];
        assert_eq!(read_all(&mut log), want);
        assert_eq!(log.log_end_offset().0, end);
        assert_eq!(log.log_start_offset().0, 0);
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 4_000).unwrap();
        assert_eq!(read_all(&mut log), want);
        assert_eq!(log.log_end_offset().0, end);
        assert_eq!(log.log_start_offset().0, 0);
        let next = append(&mut log, "new", Some("x"), 5_000);
        assert_eq!(next, end, "appends go on at the same end");
    }
}
