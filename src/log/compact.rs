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
//! Invariant: a key's latest record at or below the high watermark is never removed.

use std::collections::HashMap;
use std::fs::File;
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

/// Calls `each` for every batch of a segment, in order. A damaged batch is an error: the
/// segment is left as it is rather than rewritten without the batches after the damage.
fn for_each_batch(
    segment: &SegmentSnapshot,
    mut each: impl FnMut(BatchView<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let file = match File::open(&segment.path) {
        Ok(f) => f,
        // Retention deleted the segment meanwhile: nothing to read, nothing to rewrite.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut walk = FileBatches::new(&file, 0, segment.size, segment.base_offset);
    while let Some((_, view)) = walk.next_batch()? {
        each(view)?;
    }
    Ok(())
}

/// The offset of the latest record of every key below `upto`, over all segments of the plan.
/// Records without a key are not compacted and are not in the map.
pub fn latest_offsets(plan: &CompactionPlan) -> io::Result<HashMap<Vec<u8>, u64>> {
    let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
    for segment in plan.sealed.iter().chain(std::iter::once(&plan.active)) {
        for_each_batch(segment, |batch| {
            for record in batch.records().flatten() {
                if record.offset >= plan.upto {
                    break;
                }
                if let Some(key) = record.key {
                    match latest.get_mut(key) {
                        Some(offset) => *offset = record.offset,
                        None => {
                            latest.insert(key.to_vec(), record.offset);
                        }
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(latest)
}

/// Rewrites one sealed segment keeping only what compaction keeps. Returns `None` when
/// nothing would be dropped (the segment is left as it is).
pub fn compact_segment(
    dir: &Path,
    segment: &SegmentSnapshot,
    latest: &HashMap<Vec<u8>, u64>,
    upto: u64,
    keep_tombstones: bool,
    index_interval_bytes: u64,
) -> io::Result<Option<CompactedSegment>> {
    let keep = |offset: u64, key: Option<&[u8]>, value: Option<&[u8]>| -> bool {
        if offset >= upto {
            return true;
        }
        let Some(key) = key else { return true };
        let latest_for_key = latest.get(key).is_none_or(|&l| l == offset);
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
        Ok(())
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
            return Ok(());
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
        Ok(())
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
    use crate::log::{LogConfig, PartitionLog};

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
        log.append(&mut batch, 0, ts).unwrap().0
    }

    /// Every record from the log start, as (offset, key, value), following segment ends.
    fn read_all(log: &mut PartitionLog) -> Vec<(u64, String, Option<String>)> {
        let mut out = Vec::new();
        let mut offset = log.log_start_offset();
        while let Some(slice) = log.read_slice(offset).unwrap() {
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
        let upto = log.log_end_offset();
        let plan = log.compaction_plan(upto).expect("sealed segments");
        let latest = latest_offsets(&plan).unwrap();
        let mut done = Vec::new();
        let mut dropped = 0;
        for s in &plan.sealed {
            let keep = s.max_timestamp_ms >= now - delete_retention_ms;
            if let Some(c) = compact_segment(log.dir(), s, &latest, upto, keep, 256).unwrap() {
                dropped += c.dropped_records;
                done.push(c);
            }
        }
        log.install_compacted(done).unwrap();
        dropped
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
        let end = log.log_end_offset();
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
        assert_eq!(log.log_end_offset(), end, "compaction never renumbers");

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
        assert_eq!(log.log_end_offset(), end + 1);
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
        let latest = latest_offsets(&plan);
        assert!(latest.is_err(), "damage is reported, not skipped");
        let rewritten = compact_segment(dir.path(), first, &HashMap::new(), plan.upto, true, 256);
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
        let end = log.log_end_offset();
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
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.log_start_offset(), 0);
        drop(log);
        let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 4_000).unwrap();
        assert_eq!(read_all(&mut log), want);
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.log_start_offset(), 0);
        let next = append(&mut log, "new", Some("x"), 5_000);
        assert_eq!(next, end, "appends go on at the same end");
    }
}
