//! Tests of the partition log as a whole: lookups, rolls, time seeks, retention, and reopening
//! after a clean close or a crash (a drop without close, or bytes damaged on disk).
//!
//! Every test keeps an in-memory copy of what it appended (`Model`) and reads the log back
//! through the same path a consumer uses: `read_slice` → `ReadSlice::read` → `BatchView`.

use std::path::Path;

use super::batch::{BatchBuilder, BatchView, ProducerInfo, RecordRef};
use super::walk::BufferBatches;
use super::{LogConfig, Offset, OpenReport, PartitionLog};

/// One record as the test appended it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    key: Vec<u8>,
    value: Vec<u8>,
    timestamp_ms: i64,
}

/// Everything appended, indexed by offset.
#[derive(Debug, Default)]
struct Model {
    records: Vec<Rec>,
    /// `(base_offset, next_offset)` of every batch, in order.
    batches: Vec<(u64, u64)>,
}

fn config(segment_bytes: u64, index_interval_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        segment_ms: i64::MAX,
        index_interval_bytes,
        retention_ms: None,
        retention_bytes: None,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, config: LogConfig, clean: bool) -> (PartitionLog, OpenReport) {
    PartitionLog::open(dir, config, clean, 0).expect("open the log")
}

fn encode(records: &[Rec]) -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(64);
    for r in records {
        builder.push(&RecordRef {
            timestamp_ms: r.timestamp_ms,
            key: Some(&r.key),
            key_is_utf8: true,
            value: Some(&r.value),
            value_is_json: false,
            headers: &[],
        });
    }
    builder.finish(ProducerInfo::NONE, None)
}

impl Model {
    /// Appends `count` records stamped `timestamp_ms` as one batch, to the log and the model.
    fn append(&mut self, log: &mut PartitionLog, count: usize, timestamp_ms: i64, now_ms: i64) {
        let start = self.records.len();
        let records: Vec<Rec> = (start..start + count)
            .map(|i| Rec {
                key: format!("key-{}", i % 7).into_bytes(),
                value: format!("value-{i}-{}", "x".repeat(i % 13)).into_bytes(),
                timestamp_ms,
            })
            .collect();
        let mut batch = encode(&records);
        let (base, next) = log
            .append(&mut batch, 0, now_ms)
            .map(|(b, n)| (b.0, n.0))
            .expect("append");
        assert_eq!(base, start as u64, "offsets are dense");
        assert_eq!(next, (start + count) as u64);
        self.records.extend(records);
        self.batches.push((base, next));
    }

    fn log_end(&self) -> u64 {
        self.records.len() as u64
    }

    /// Forgets batches from `offset` on (they were cut by recovery).
    fn truncate(&mut self, offset: u64) {
        self.records.truncate(offset as usize);
        self.batches.retain(|&(_, next)| next <= offset);
        assert_eq!(self.batches.last().map_or(0, |b| b.1), offset);
    }
}

/// Reads every record from `from` to the log end, in small reads, across segments.
fn read_from(log: &mut PartitionLog, from: u64) -> Vec<(u64, Rec)> {
    let mut out = Vec::new();
    let mut offset = from;
    for _ in 0..100_000 {
        let Some(mut slice) = log.read_slice(Offset(offset)).expect("load") else {
            return out;
        };
        slice.skip_before(offset).expect("skip");
        let bytes = slice.read(700).expect("read");
        let before = offset;
        for batch in BufferBatches::new(&bytes) {
            let batch = batch.expect("no damage");
            for record in batch.records() {
                let record = record.expect("record decodes");
                if record.offset >= offset {
                    out.push((
                        record.offset,
                        Rec {
                            key: record.key.expect("key").to_vec(),
                            value: record.value.expect("value").to_vec(),
                            timestamp_ms: record.timestamp_ms,
                        },
                    ));
                }
            }
            offset = offset.max(batch.header.next_offset());
        }
        assert!(offset > before, "a read at {before} made no progress");
    }
    panic!("read loop did not end");
}

/// Asserts the log holds exactly the model's records from `from` on, each at its offset.
fn assert_matches(log: &mut PartitionLog, model: &Model, from: u64) {
    assert_eq!(log.log_end_offset().0, model.log_end(), "log end offset");
    let read = read_from(log, from);
    assert_eq!(read.len() as u64, model.log_end() - from, "records read");
    for (offset, rec) in read {
        assert_eq!(&rec, &model.records[offset as usize], "record at {offset}");
    }
}

pub(super) fn segment_files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

fn last_log_file(dir: &Path) -> std::path::PathBuf {
    segment_files(dir, "log").pop().expect("a segment")
}

/// A log with `batches` batches of 1 to 4 records in small segments; returns it and its model.
fn filled(dir: &Path, config: LogConfig, batches: usize) -> (PartitionLog, Model) {
    let (mut log, _) = open(dir, config, false);
    let mut model = Model::default();
    for i in 0..batches {
        model.append(&mut log, 1 + i % 4, 1_000 + i as i64 * 10, 0);
    }
    (log, model)
}

#[test]
fn every_offset_is_found_through_the_sparse_index() {
    let dir = tempfile::tempdir().unwrap();
    let interval = 300;
    let (mut log, model) = filled(dir.path(), config(1 << 20, interval), 120);
    assert_eq!(log.segment_count(), 1);
    let largest_batch = 4 * 64 + 61;
    for offset in 0..model.log_end() {
        let slice = log
            .read_slice(Offset(offset))
            .unwrap()
            .expect("a slice below the log end");
        let bytes = slice.read(u64::MAX).unwrap();
        let mut rest = &bytes[..];
        let mut skipped = 0u64;
        let first = BatchView::parse(rest).unwrap().header.base_offset;
        assert!(first <= offset, "the index points past {offset}");
        loop {
            let batch = BatchView::parse(rest).expect("batches up to the wanted one");
            if batch.header.next_offset() > offset {
                assert!(batch.header.base_offset <= offset);
                break;
            }
            skipped += batch.bytes.len() as u64;
            rest = &rest[batch.bytes.len()..];
        }
        // Sparse, not absent: at most one interval (plus the batch that crossed it) is skipped.
        assert!(
            skipped < interval + largest_batch,
            "{skipped} bytes skipped to reach {offset}"
        );
    }
    assert!(log.read_slice(Offset(model.log_end())).unwrap().is_none());
    assert_matches(&mut log, &model, 0);
}

#[test]
fn reads_cross_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, model) = filled(dir.path(), config(1024, 128), 100);
    assert!(log.segment_count() > 5, "{} segments", log.segment_count());
    for from in [0, 1, 17, 99, model.log_end() - 1] {
        assert_matches(&mut log, &model, from);
    }
    // Segment boundaries: each segment starts where the previous one ended.
    let bases: Vec<u64> = log.segments.iter().map(|s| s.base_offset).collect();
    for pair in log.segments.windows(2) {
        assert_eq!(pair[0].next_offset, pair[1].base_offset);
    }
    for base in bases {
        assert_eq!(read_from(&mut log, base)[0].0, base);
    }
}

/// A follower's lag in bytes: from the batch holding an offset to the log end, exact to
/// the index granularity in loaded segments, prorated in unloaded ones, never growing with
/// the offset.
#[test]
fn bytes_from_an_offset_to_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let interval = 128;
    let (mut log, model) = filled(dir.path(), config(1024, interval), 100);
    assert!(log.segment_count() > 5, "{} segments", log.segment_count());
    let end = model.log_end();
    assert_eq!(log.bytes_from(Offset(0)), log.size_bytes());
    assert_eq!(log.bytes_from(Offset(end)), 0);
    assert_eq!(log.bytes_from(Offset(end + 10)), 0);
    // Exact: the bytes of every batch that ends past the offset.
    let mut batches = Vec::new(); // (next offset, bytes)
    for segment in 0..log.segment_count() {
        let base = log.segments[segment].base_offset;
        let slice = log.read_slice(Offset(base)).unwrap().unwrap();
        let bytes = slice.read(u64::MAX).unwrap();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let batch = BatchView::parse(rest).unwrap();
            batches.push((batch.header.next_offset(), batch.bytes.len() as u64));
            rest = &rest[batch.bytes.len()..];
        }
    }
    let largest_batch = 4 * 64 + 61;
    let mut last = u64::MAX;
    for offset in 0..end {
        let exact: u64 = batches
            .iter()
            .filter(|(next, _)| *next > offset)
            .map(|(_, b)| b)
            .sum();
        let i = log
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let got = log.bytes_from(Offset(offset));
        assert!(got <= last, "grows at {offset}: {got} after {last}");
        last = got;
        let later: u64 = log.segments[i + 1..].iter().map(|s| s.size).sum();
        assert!(
            got >= later && got <= later + log.segments[i].size,
            "{offset}: {got} outside the segment holding it"
        );
        if log.segments[i].is_loaded() {
            assert!(
                got >= exact && got < exact + interval + largest_batch,
                "{offset}: {got} bytes, exactly {exact}"
            );
        }
    }
}

#[test]
fn roll_of_an_empty_active_segment_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), config(1 << 20, 128), false);
    let mut model = Model::default();
    log.roll(0).unwrap();
    model.append(&mut log, 3, 5, 0);
    log.roll(0).unwrap();
    log.roll(0).unwrap();
    model.append(&mut log, 2, 6, 0);
    assert_eq!(log.segment_count(), 2);
    assert_matches(&mut log, &model, 0);
    drop(log);
    let (mut log, _) = open(dir.path(), config(1 << 20, 128), false);
    assert_matches(&mut log, &model, 0);
}

/// The first offset (in log order) of a record stamped at or after `t`.
fn expected_for_time(model: &Model, t: i64) -> Option<u64> {
    model
        .records
        .iter()
        .position(|r| r.timestamp_ms >= t)
        .map(|i| i as u64)
}

/// Seeks like the broker does: the time index gives a start, then records are scanned.
fn seek_time(log: &mut PartitionLog, t: i64) -> Option<u64> {
    let slice = log.time_slice(t).unwrap()?;
    let first = BatchView::parse(&slice.read(u64::MAX).unwrap())
        .unwrap()
        .header
        .base_offset;
    read_from(log, first)
        .into_iter()
        .find(|(_, r)| r.timestamp_ms >= t)
        .map(|(o, _)| o)
}

#[test]
fn seek_by_time_across_segments_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1024, 200);
    let (mut log, _) = open(dir.path(), cfg, false);
    let mut model = Model::default();
    // Mostly rising timestamps with some that go back in time.
    for i in 0..90i64 {
        let ts = 10_000 + i * 100 - if i % 5 == 3 { 450 } else { 0 };
        model.append(&mut log, 1 + (i as usize % 3), ts, 0);
    }
    assert!(log.segment_count() > 3);
    let check = |log: &mut PartitionLog, model: &Model| {
        for t in (9_000..19_500).step_by(37) {
            assert_eq!(
                seek_time(log, t),
                expected_for_time(model, t),
                "seek to {t}"
            );
        }
    };
    check(&mut log, &model);
    log.close().unwrap();
    drop(log);
    let (mut log, _) = open(dir.path(), cfg, true);
    check(&mut log, &model);
    drop(log);
    let (mut log, report) = open(dir.path(), cfg, false);
    assert!(report.rebuilt_indexes >= 1);
    check(&mut log, &model);
}

#[test]
fn rolls_by_age_with_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms: 1_000,
        ..config(1 << 20, 128)
    };
    let (mut log, _) = PartitionLog::open(dir.path(), cfg, false, 0).unwrap();
    let mut model = Model::default();
    model.append(&mut log, 2, 1, 10);
    model.append(&mut log, 2, 2, 1_000);
    assert_eq!(log.segment_count(), 1, "not older than segment_ms yet");
    model.append(&mut log, 2, 3, 1_001);
    assert_eq!(log.segment_count(), 2, "older than segment_ms: rolled");
    model.append(&mut log, 1, 4, 1_500);
    assert_eq!(
        log.segment_count(),
        2,
        "the new segment's age counts from its creation"
    );
    model.append(&mut log, 1, 5, 2_002);
    assert_eq!(log.segment_count(), 3);
    assert_matches(&mut log, &model, 0);
}

#[test]
fn retention_by_time_deletes_old_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_ms: Some(1_000),
        ..config(600, 128)
    };
    let (mut log, _) = open(dir.path(), cfg, false);
    let mut model = Model::default();
    for i in 0..40i64 {
        model.append(&mut log, 2, i * 100, 0);
    }
    let before = log.segment_count();
    assert!(before > 4);
    let now = 3_000;
    // Not past the high watermark: nothing at or past `upto` may go.
    let upto = log.segments[1].next_offset;
    assert_eq!(log.apply_retention(now, Offset(upto)).unwrap(), 2);
    assert_eq!(log.log_start_offset().0, upto);
    let deleted = log.apply_retention(now, Offset(model.log_end())).unwrap();
    for s in &log.segments[..log.segments.len() - 1] {
        assert!(
            s.max_timestamp_ms >= now - 1_000,
            "kept only fresh segments"
        );
    }
    assert_eq!(log.segment_count(), before - 2 - deleted);
    let start = log.log_start_offset().0;
    assert_eq!(start, log.segments[0].base_offset);
    assert!(model.records[start as usize - 1].timestamp_ms < now - 1_000);
    assert_matches(&mut log, &model, start);
    // The active segment stays, however old.
    assert!(
        log.apply_retention(i64::MAX, Offset(model.log_end()))
            .unwrap()
            > 0
    );
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.log_start_offset().0, log.segments[0].base_offset);
    let start = log.log_start_offset().0;
    drop(log);
    let (mut log, _) = open(dir.path(), cfg, false);
    assert_eq!(
        log.log_start_offset().0,
        start,
        "log start survives a crash"
    );
    assert_matches(&mut log, &model, start);
    model.append(&mut log, 3, 9_999, 0);
    assert_matches(&mut log, &model, start);
}

#[test]
fn retention_by_size_keeps_the_newest_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes: Some(2_000),
        ..config(600, 128)
    };
    let (mut log, model) = filled(dir.path(), cfg, 60);
    let total = log.size_bytes();
    assert!(total > 4_000);
    let sizes_before: Vec<u64> = log.segments.iter().map(|s| s.size).collect();
    let deleted = log.apply_retention(0, Offset(model.log_end())).unwrap();
    assert!(deleted > 0);
    assert!(log.size_bytes() <= 2_000, "{} bytes left", log.size_bytes());
    // Keeping the newest segment that went would have been too much: nothing extra went.
    let last_deleted = sizes_before[deleted - 1];
    assert!(
        log.size_bytes() + last_deleted > 2_000,
        "deleted no more than needed: {} bytes kept, the last deleted segment had {last_deleted}",
        log.size_bytes()
    );
    let start = log.log_start_offset().0;
    assert_eq!(start, log.segments[0].base_offset);
    assert_matches(&mut log, &model, start);
    log.close().unwrap();
    drop(log);
    let (mut log, _) = open(dir.path(), cfg, true);
    assert_eq!(log.log_start_offset().0, start);
    assert_matches(&mut log, &model, start);
}

#[test]
fn delete_records_before_moves_the_start_and_drops_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(600, 128);
    let (mut log, mut model) = filled(dir.path(), cfg, 50);
    let segments = log.segment_count();
    let target = log.segments[2].base_offset + 1;
    assert_eq!(
        log.delete_records_before(Offset(target), Offset(model.log_end()))
            .map(|o| o.0)
            .unwrap(),
        target
    );
    assert_eq!(log.log_start_offset().0, target);
    assert_eq!(
        log.segment_count(),
        segments - 2,
        "segments wholly below go"
    );
    assert_matches(&mut log, &model, target);
    // Never backwards, never past `upto`.
    assert_eq!(
        log.delete_records_before(Offset(3), Offset(model.log_end()))
            .map(|o| o.0)
            .unwrap(),
        target
    );
    let upto = target + 5;
    assert_eq!(
        log.delete_records_before(Offset(upto + 100), Offset(upto))
            .map(|o| o.0)
            .unwrap(),
        upto
    );
    drop(log);
    let (mut log, _) = open(dir.path(), cfg, false);
    assert_eq!(log.log_start_offset().0, upto);
    assert_matches(&mut log, &model, upto);
    model.append(&mut log, 2, 1, 0);
    assert_matches(&mut log, &model, upto);
}

#[test]
fn clean_reopen_trusts_the_indexes_and_keeps_offsets_dense() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1024, 128);
    let (mut log, mut model) = filled(dir.path(), cfg, 40);
    log.close().unwrap();
    drop(log);
    for index in segment_files(dir.path(), "index") {
        assert_eq!(std::fs::metadata(&index).unwrap().len() % 8, 0);
    }
    let (mut log, report) = open(dir.path(), cfg, true);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(
        report.rebuilt_indexes, 0,
        "a clean close leaves trusted indexes"
    );
    assert_matches(&mut log, &model, 0);
    for round in 0..3 {
        model.append(&mut log, 3, 5_000 + round, 0);
        log.close().unwrap();
        drop(log);
        log = open(dir.path(), cfg, true).0;
        assert_matches(&mut log, &model, 0);
    }
}

#[test]
fn unclean_reopen_rebuilds_preallocated_indexes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1024, 128);
    let (log, mut model) = filled(dir.path(), cfg, 40);
    let active_index = segment_files(dir.path(), "index").pop().unwrap();
    let preallocated = std::fs::metadata(&active_index).unwrap().len();
    drop(log);
    assert_eq!(
        std::fs::metadata(&active_index).unwrap().len(),
        preallocated,
        "a crash leaves the active index preallocated"
    );
    let (mut log, report) = open(dir.path(), cfg, false);
    assert_eq!(report.truncated_bytes, 0);
    assert!(report.rebuilt_indexes >= 1);
    assert_matches(&mut log, &model, 0);
    // Crash again right after a reopen, and again after more appends.
    for round in 0..3 {
        model.append(&mut log, 2, 7_000 + round, 0);
        drop(log);
        log = open(dir.path(), cfg, false).0;
        assert_matches(&mut log, &model, 0);
        drop(log);
        log = open(dir.path(), cfg, false).0;
        assert_matches(&mut log, &model, 0);
    }
    // A crash after a clean start: the active index was reopened writable (preallocated).
    log.close().unwrap();
    drop(log);
    let (mut log, _) = open(dir.path(), cfg, true);
    model.append(&mut log, 4, 8_000, 0);
    drop(log);
    let (mut log, report) = open(dir.path(), cfg, false);
    assert!(report.rebuilt_indexes >= 1);
    assert_matches(&mut log, &model, 0);
}

/// Byte position where the batch `(base, next)` starts in its segment's log file.
fn batch_position(log: &mut PartitionLog, base: u64) -> u64 {
    let slice = log.read_slice(Offset(base)).unwrap().unwrap();
    let bytes = slice.read(u64::MAX).unwrap();
    let mut rest = &bytes[..];
    let mut position = slice.position;
    loop {
        let batch = BatchView::parse(rest).unwrap();
        if batch.header.base_offset == base {
            return position;
        }
        position += batch.bytes.len() as u64;
        rest = &rest[batch.bytes.len()..];
    }
}

/// Damages the log file of the active segment with `damage(file bytes, last batch position)`,
/// reopens after a crash, and checks that exactly the last batch was cut.
fn last_batch_damage_is_cut(what: &str, damage: impl Fn(&mut Vec<u8>, usize)) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 128);
    let (mut log, mut model) = filled(dir.path(), cfg, 30);
    let &(last_base, _) = model.batches.last().unwrap();
    let position = batch_position(&mut log, last_base) as usize;
    // The batches' end: the file may go on with zeros written ahead, which a crash leaves.
    let end = log.segments.last().unwrap().size as usize;
    drop(log);
    let path = last_log_file(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(end);
    let len_before = bytes.len();
    damage(&mut bytes, position);
    std::fs::write(&path, &bytes).unwrap();
    let (mut log, report) = open(dir.path(), cfg, false);
    model.truncate(last_base);
    assert_eq!(
        report.truncated_bytes,
        (bytes.len() - position) as u64,
        "{what}: bytes cut"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), position as u64);
    assert!(len_before > position);
    assert_matches(&mut log, &model, 0);
    model.append(&mut log, 3, 1, 0);
    assert_matches(&mut log, &model, 0);
    drop(log);
    let (mut log, report) = open(dir.path(), cfg, false);
    assert_eq!(report.truncated_bytes, 0);
    assert_matches(&mut log, &model, 0);
}

#[test]
fn torn_last_batch_is_cut() {
    last_batch_damage_is_cut("cut in the header", |bytes, position| {
        bytes.truncate(position + 30)
    });
    last_batch_damage_is_cut("cut in the records", |bytes, position| {
        bytes.truncate(position + 70)
    });
    last_batch_damage_is_cut("last byte missing", |bytes, _| {
        bytes.pop();
    });
}

#[test]
fn flipped_bytes_in_the_last_batch_are_cut() {
    // The record area, the CRC itself, and the header fields before the CRC: the stamped base
    // offset and leader epoch must be checked too, or a flip there renumbers records.
    for at in [70, 18, 1, 0, 13, 9] {
        last_batch_damage_is_cut(&format!("flip at byte {at}"), |bytes, position| {
            bytes[position + at] ^= 0x40
        });
    }
}

#[test]
fn garbage_after_the_last_batch_is_cut() {
    // Garbage bytes after an intact batch: the cut is exactly the garbage.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 128);
    let (log, mut model) = filled(dir.path(), cfg, 30);
    let intact = log.segments.last().unwrap().size as usize;
    drop(log);
    let path = last_log_file(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(intact);
    bytes.extend((0..500u32).map(|i| (i * 7 + 3) as u8));
    std::fs::write(&path, &bytes).unwrap();
    let (mut log, report) = open(dir.path(), cfg, false);
    assert_eq!(report.truncated_bytes, 500);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), intact as u64);
    assert_matches(&mut log, &model, 0);
    model.append(&mut log, 2, 2, 0);
    assert_matches(&mut log, &model, 0);
}

#[test]
fn damage_in_a_sealed_segment_drops_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1024, 128);
    let (mut log, mut model) = filled(dir.path(), cfg, 60);
    let victim = &log.segments[2];
    let (victim_base, victim_end) = (victim.base_offset, victim.next_offset);
    let &(cut_base, _) = model
        .batches
        .iter()
        .rfind(|b| b.1 <= victim_end && b.0 >= victim_base)
        .unwrap();
    let position = batch_position(&mut log, cut_base);
    let segments = log.segment_count();
    drop(log);
    let path = segment_files(dir.path(), "log")[2].clone();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xff; 4], position + 40).unwrap();
    let (mut log, report) = open(dir.path(), cfg, false);
    assert_eq!(report.dropped_segments, segments - 3);
    assert_eq!(log.segment_count(), 3);
    model.truncate(cut_base);
    assert_matches(&mut log, &model, 0);
    model.append(&mut log, 2, 3, 0);
    assert_matches(&mut log, &model, 0);
    assert_eq!(segment_files(dir.path(), "log").len(), log.segment_count());
}

#[test]
fn deleted_index_files_are_rebuilt_after_clean_and_unclean_stops() {
    for clean in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1024, 128);
        let (mut log, mut model) = filled(dir.path(), cfg, 40);
        if clean {
            log.close().unwrap();
        }
        drop(log);
        for ext in ["index", "timeindex"] {
            for path in segment_files(dir.path(), ext) {
                std::fs::remove_file(path).unwrap();
            }
        }
        let (mut log, report) = open(dir.path(), cfg, clean);
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(report.rebuilt_indexes, log.segment_count());
        assert_matches(&mut log, &model, 0);
        for t in (900..1_500).step_by(50) {
            assert_eq!(seek_time(&mut log, t), expected_for_time(&model, t));
        }
        model.append(&mut log, 2, 3_000, 0);
        assert_matches(&mut log, &model, 0);
    }
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn roll_by_age_counts_from_creation_across_restarts() {
    const DAY_MS: i64 = 24 * 3600 * 1000;
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms: 7 * DAY_MS,
        ..config(1 << 20, 128)
    };
    let created = wall_clock_ms();
    let (mut log, _) = PartitionLog::open(dir.path(), cfg, false, created).unwrap();
    let mut model = Model::default();
    model.append(&mut log, 2, 1, created);
    drop(log);
    let path = last_log_file(dir.path());
    if std::fs::metadata(&path).unwrap().created().is_err() {
        eprintln!("this file system keeps no creation time; skipping");
        return;
    }
    // The segment was last written three days after it was created.
    let written =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis((created + 3 * DAY_MS) as u64);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(written)
        .unwrap();
    // A restart must not reset the segment's age to its last write: eight days after its
    // creation it is due, even if it was written five days ago.
    let (mut log, _) = PartitionLog::open(dir.path(), cfg, false, created + 8 * DAY_MS).unwrap();
    model.append(&mut log, 1, 2, created + 8 * DAY_MS);
    assert_eq!(log.segment_count(), 2, "rolled by age after a restart");
    assert_matches(&mut log, &model, 0);
}

#[test]
fn a_cut_below_the_log_start_never_gives_old_offsets_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 128);
    let (mut log, mut model) = filled(dir.path(), cfg, 10);
    let end = model.log_end();
    let start = end - 2;
    assert_eq!(
        log.delete_records_before(Offset(start), Offset(end))
            .map(|o| o.0)
            .unwrap(),
        start
    );
    drop(log);
    // Damage below the log start: recovery cuts the log to offset 0.
    let path = last_log_file(dir.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(30)
        .unwrap();
    let (mut log, _) = open(dir.path(), cfg, false);
    assert_eq!(log.log_start_offset().0, start);
    assert_eq!(
        log.log_end_offset().0,
        start,
        "the log restarts empty at its start"
    );
    // New records get offsets the old ones never had, and stay visible across reopens.
    let mut batch = encode(&model.records[..3]);
    assert_eq!(
        log.append(&mut batch, 0, 0)
            .map(|(b, n)| (b.0, n.0))
            .unwrap(),
        (start, start + 3)
    );
    drop(log);
    let (mut log, _) = open(dir.path(), cfg, false);
    assert_eq!(
        log.log_start_offset().0,
        start,
        "the log start did not move"
    );
    assert_eq!(log.log_end_offset().0, start + 3);
    model.records.truncate(start as usize);
    model.records.extend_from_within(..3);
    let read = read_from(&mut log, start);
    assert_eq!(read.len(), 3);
    for (offset, rec) in read {
        assert_eq!(rec, model.records[offset as usize]);
    }
}

#[test]
fn a_rolled_segment_stays_in_every_flush_plan_until_one_is_marked_done() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut model) = filled(dir.path(), config(1 << 20, 128), 3);
    log.roll(0).unwrap();
    model.append(&mut log, 2, 5, 0);
    // Two flushes overlap (the flusher and a shutdown): the later plan must still sync the
    // rolled segment, or finishing first it would mark data flushed that is not yet synced.
    let first = log.flush_plan();
    let second = log.flush_plan();
    assert_eq!(first.files.len(), 2);
    assert_eq!(second.files.len(), 2, "the rolled segment is in both plans");
    assert!(second.dir.is_some() && second.seals.len() == 2);
    log.mark_flushed(&second);
    assert!(log.flush_plan().only_active(), "synced once, forgotten");
    log.mark_flushed(&first);
    assert_eq!(log.flushed_offset().0, model.log_end());
}

#[test]
fn a_clean_open_of_preallocated_indexes_still_reads_and_seeks_right() {
    // A partition that was never closed but is opened as clean (say, created while the
    // broker was shutting down): its indexes are preallocated, zero-filled past the entries.
    for batches in [1, 2, 40] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(1 << 20, 128);
        let (log, mut model) = filled(dir.path(), cfg, batches);
        drop(log);
        let (mut log, _) = open(dir.path(), cfg, true);
        assert_matches(&mut log, &model, 0);
        for t in (900..1_500).step_by(25) {
            assert_eq!(
                seek_time(&mut log, t),
                expected_for_time(&model, t),
                "seek {t}"
            );
        }
        for i in 0..30 {
            model.append(&mut log, 2, 2_000 + i, 0);
        }
        assert_matches(&mut log, &model, 0);
        log.close().unwrap();
        drop(log);
        let (mut log, _) = open(dir.path(), cfg, true);
        assert_matches(&mut log, &model, 0);
        for t in (900..2_100).step_by(25) {
            assert_eq!(
                seek_time(&mut log, t),
                expected_for_time(&model, t),
                "seek {t}"
            );
        }
    }
}

#[test]
fn a_crash_between_deleting_segments_and_storing_the_start_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(600, 128);
    let (log, model) = filled(dir.path(), cfg, 40);
    let second = log.segments[1].base_offset;
    drop(log);
    // Retention removed the oldest segment, then the process died before the new log start
    // was stored.
    let oldest = segment_files(dir.path(), "log")[0].clone();
    std::fs::remove_file(&oldest).unwrap();
    let (mut log, _) = open(dir.path(), cfg, false);
    assert_eq!(log.log_start_offset().0, second);
    assert_matches(&mut log, &model, second);
    let stored = std::fs::read_to_string(dir.path().join(super::LOG_START_FILE)).unwrap();
    assert_eq!(
        stored.trim(),
        second.to_string(),
        "the repaired start is stored"
    );
}

#[test]
fn a_full_index_rolls_the_segment_after_a_config_change() {
    let dir = tempfile::tempdir().unwrap();
    // Every batch indexed, in an index sized for 1 KiB segments.
    let (mut log, _) = open(dir.path(), config(1024, 1), false);
    let mut model = Model::default();
    model.append(&mut log, 1, 1, 0);
    log.set_config(config(1 << 20, 1));
    for i in 0..60 {
        model.append(&mut log, 1 + i % 2, 2 + i as i64, 0);
    }
    assert!(log.segment_count() > 1, "the full index rolled the segment");
    assert_matches(&mut log, &model, 0);
    drop(log);
    let (mut log, _) = open(dir.path(), config(1 << 20, 1), false);
    assert_matches(&mut log, &model, 0);
}

#[test]
fn a_roll_leaves_its_file_work_to_the_next_flush_plan() {
    // A roll runs under the partition lock: it must not trim or sync the sealed segment's
    // indexes there. The next flush plan does that, outside the lock.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut model) = filled(dir.path(), config(1 << 20, 128), 3);
    log.roll(0).unwrap();
    model.append(&mut log, 2, 5, 0);
    let sealed_index = segment_files(dir.path(), "index")[0].clone();
    let preallocated = std::fs::metadata(&sealed_index).unwrap().len();
    assert!(
        preallocated > 4096,
        "untouched by the roll: {preallocated} bytes"
    );
    assert_matches(&mut log, &model, 0);
    let plan = log.flush_plan();
    assert!(!plan.only_active());
    plan.run().unwrap();
    log.mark_flushed(&plan);
    let trimmed = std::fs::metadata(&sealed_index).unwrap().len();
    assert!(
        trimmed < 4096 && trimmed.is_multiple_of(8),
        "trimmed by the plan: {trimmed}"
    );
    assert!(log.flush_plan().only_active());
    assert_matches(&mut log, &model, 0);
}

#[test]
fn a_crash_between_a_roll_and_its_flush_loses_nothing_synced() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut model) = filled(dir.path(), config(1 << 20, 128), 3);
    log.roll(0).unwrap();
    model.append(&mut log, 2, 5, 0);
    drop(log);
    let (mut log, report) = open(dir.path(), config(1 << 20, 128), false);
    assert!(
        report.rebuilt_indexes >= 1,
        "the untrimmed index is rebuilt: {report:?}"
    );
    assert_matches(&mut log, &model, 0);
}

/// Descriptors this process holds on files under `dir`.
fn open_files_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

#[test]
fn sealed_segments_hold_no_files_beyond_the_loaded_bound() {
    use crate::limits::SEALED_SEGMENTS_LOADED_PER_PARTITION_MAX as LOADED_MAX;
    let dir = tempfile::tempdir().unwrap();
    let (mut log, model) = filled(dir.path(), config(1024, 128), 200);
    let segments = log.segment_count();
    assert!(segments > 3 * LOADED_MAX, "{segments} segments");
    // Rolled segments keep their files until the next flush has synced them.
    let plan = log.flush_plan();
    plan.run().unwrap();
    log.mark_flushed(&plan);
    drop(plan);
    // The active segment holds its log and two index files; sealed ones hold nothing.
    assert_eq!(open_files_under(dir.path()), 3);
    assert_matches(&mut log, &model, 0);
    assert!(log.loaded_segments() <= LOADED_MAX);
    assert!(open_files_under(dir.path()) <= 3 + LOADED_MAX);
    drop(log);
    for clean in [false, true] {
        let (mut log, _) = open(dir.path(), config(1024, 128), clean);
        assert_eq!(
            open_files_under(dir.path()),
            3,
            "after open (clean: {clean})"
        );
        assert_matches(&mut log, &model, 0);
        assert!(open_files_under(dir.path()) <= 3 + LOADED_MAX);
        log.close().unwrap();
    }
}

/// The flusher's checkpoint write and a shutdown's may overlap: neither fails, and the later
/// checkpoint is the one left, whichever write ends last.
#[test]
fn overlapping_checkpoint_writes_take_turns_and_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut model) = filled(dir.path(), config(4096, 256), 1);
    let older = log.checkpoint();
    model.append(&mut log, 3, 2_000, 0);
    let plan = log.flush_plan();
    plan.run().unwrap();
    log.mark_flushed(&plan);
    let newer = log.checkpoint();
    assert!(newer.flushed_offset > older.flushed_offset);
    std::thread::scope(|s| {
        for checkpoint in [&older, &newer] {
            s.spawn(move || {
                for _ in 0..100 {
                    checkpoint.write().expect("a checkpoint write");
                }
            });
        }
    });
    older.write().unwrap();
    let stored = super::read_u64_file(&dir.path().join(super::CHECKPOINT_FILE)).unwrap();
    assert_eq!(stored, newer.flushed_offset.0);
}

/// A batch of `records` one-byte records from producer 7 at epoch 0 with `sequence`.
fn idempotent_batch(sequence: i32, records: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(64);
    for _ in 0..records {
        builder.push(&RecordRef {
            timestamp_ms: 1_000,
            key: None,
            key_is_utf8: false,
            value: Some(b"v"),
            value_is_json: false,
            headers: &[],
        });
    }
    let producer = ProducerInfo {
        producer_id: 7,
        producer_epoch: 0,
        base_sequence: sequence,
    };
    builder.finish(producer, None)
}

/// The producer state follows the log on every path that changes it: a leader's appends,
/// a follower's replicated batches, a reopen (rebuilt from the headers, recent segments
/// only) and a truncation (cut batches no longer deduplicate).
#[test]
fn producer_state_is_rebuilt_from_appends_replicas_reopens_and_truncations() {
    use super::producer_state::{ProducerBatch, SequenceCheck};
    let leader_dir = tempfile::tempdir().unwrap();
    let (mut leader, _) = open(leader_dir.path(), config(1 << 20, 128), false);
    let mut stored = Vec::new();
    for (sequence, records) in [(0, 2), (1, 3)] {
        let mut batch = idempotent_batch(sequence, records);
        leader
            .append(&mut batch, 0, 1_000)
            .map(|(b, n)| (b.0, n.0))
            .unwrap();
        stored.extend_from_slice(&batch);
    }
    let duplicate = |base_offset, last_offset, sequence| {
        Ok(SequenceCheck::Duplicate(ProducerBatch {
            sequence,
            base_offset,
            last_offset,
        }))
    };
    assert_eq!(
        leader.check_producer(&idempotent_batch(1, 3)),
        duplicate(2, 4, 1)
    );

    let follower_dir = tempfile::tempdir().unwrap();
    let (mut follower, _) = open(follower_dir.path(), config(1 << 20, 128), false);
    follower
        .append_replicated(&stored, 1_000)
        .map(|o| o.0)
        .unwrap();
    assert_eq!(
        follower.check_producer(&idempotent_batch(1, 3)),
        duplicate(2, 4, 1)
    );
    drop(follower);

    let (mut follower, _) = open(follower_dir.path(), config(1 << 20, 128), false);
    assert_eq!(
        follower.check_producer(&idempotent_batch(0, 2)),
        duplicate(0, 1, 0)
    );
    assert_eq!(follower.producers_tracked(), 1);
    follower.truncate_to(Offset(2)).map(|o| o.0).unwrap();
    assert_eq!(
        follower.check_producer(&idempotent_batch(1, 3)),
        Ok(SequenceCheck::Append),
        "the cut batch is written again"
    );
    assert_eq!(
        follower.check_producer(&idempotent_batch(0, 2)),
        duplicate(0, 1, 0)
    );

    // Opened after the producer has been idle for longer than the timeout (segment creation
    // times are the files' own, on the wall clock): it is forgotten.
    drop(follower);
    let idle = config(1 << 20, 128).producer_idle_timeout_ms;
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let later = wall_ms + 3 * idle;
    let (follower, _) =
        PartitionLog::open(follower_dir.path(), config(1 << 20, 128), false, later).unwrap();
    assert_eq!(follower.producers_tracked(), 0);
}

/// A producer counts as seen when its segment's file was last written before the open, not
/// at its records' own timestamps (the client's, possibly long past) or the segment's
/// creation (a quiet partition's active segment may be days old): one that wrote just
/// before a crash is still recognized when it retries after the restart.
#[test]
fn a_producer_that_wrote_just_before_a_restart_is_kept_however_old_its_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 128);
    let idle = cfg.producer_idle_timeout_ms;
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (mut log, _) = open(dir.path(), cfg, false);
    // Records stamped in 1970 by their producer.
    log.append(&mut idempotent_batch(0, 2), 0, wall_ms).unwrap();
    drop(log);
    // The file was last written three idle timeouts after its segment was created.
    let written = wall_ms + 3 * idle;
    std::fs::File::options()
        .write(true)
        .open(last_log_file(dir.path()))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_millis(written as u64))
        .unwrap();
    let (log, _) = PartitionLog::open(dir.path(), cfg, false, written + 1_000).unwrap();
    assert_eq!(
        log.producers_tracked(),
        1,
        "seen when the file was last written"
    );
}

/// Small appends write into zeros written ahead, so an fsync need not commit a new file
/// length. The zeros never count as data: a crash leaves them and recovery cuts them without
/// calling them a torn write; a roll trims the sealed segment's file to its batches, and a
/// clean shutdown the active one's, so a clean start trusts both.
#[test]
fn zeros_written_ahead_of_small_appends_are_cut_at_a_roll_a_shutdown_and_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(10_000, 256);
    let file_len = |path: &Path| std::fs::metadata(path).unwrap().len();
    let (log, mut model) = filled(dir.path(), cfg, 30);
    let size = log.segments.last().unwrap().size;
    let active = last_log_file(dir.path());
    assert!(
        file_len(&active) > size,
        "zeros ahead: file {} bytes, batches {size}",
        file_len(&active)
    );
    // A crash: the zeros stay on disk; recovery cuts them, reports no torn bytes.
    drop(log);
    let (mut log, report) = open(dir.path(), cfg, false);
    assert_eq!(report.truncated_bytes, 0, "zeros are no torn write");
    assert_eq!(file_len(&active), size);
    assert_matches(&mut log, &model, 0);
    // Rolls: every sealed segment's file ends at its last batch.
    for i in 0..400 {
        model.append(&mut log, 1 + i % 4, 2_000 + i as i64, 0);
    }
    assert!(log.segment_count() > 2, "rolled: {}", log.segment_count());
    let files = segment_files(dir.path(), "log");
    for (segment, path) in log.segments.iter().zip(&files).take(files.len() - 1) {
        assert_eq!(file_len(path), segment.size, "{}", path.display());
    }
    assert_matches(&mut log, &model, 0);
    // A clean shutdown trims the active segment too, and a clean start rebuilds nothing.
    log.close().unwrap();
    let active = last_log_file(dir.path());
    assert_eq!(file_len(&active), log.segments.last().unwrap().size);
    drop(log);
    let (mut log, report) = open(dir.path(), cfg, true);
    assert_eq!(report.rebuilt_indexes, 0);
    assert_eq!(report.truncated_bytes, 0);
    assert_matches(&mut log, &model, 0);
}

/// A flush plan taken before a roll synced the rolled segment's file while it was active
/// and held none of its index seals: marking it done must not count the rolled segment as
/// synced. The next plan still trims and syncs its indexes (and its cut length). Before, the
/// rolled segment left the unsynced list at once, its indexes were never trimmed, and a power
/// cut before the file system committed the cut length could leave zeros below the
/// checkpoint.
#[test]
fn a_plan_taken_before_a_roll_does_not_settle_the_rolled_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(10_000, 256);
    let (mut log, mut model) = filled(dir.path(), cfg, 3);
    let before_roll = log.flush_plan();
    before_roll.run().unwrap();
    log.roll(0).unwrap();
    model.append(&mut log, 2, 5, 0);
    assert!(log.mark_flushed(&before_roll));
    let next = log.flush_plan();
    assert!(
        !next.seals.is_empty(),
        "the rolled segment's seals are still to run"
    );
    next.run().unwrap();
    assert!(log.mark_flushed(&next));
    // A 10,000-byte segment indexed every 256 bytes holds at most 40 entries of 8 bytes;
    // untrimmed, the file keeps its reserved blocks (64 KiB).
    let sealed_index = segment_files(dir.path(), "index")[0].clone();
    let len = std::fs::metadata(&sealed_index).unwrap().len();
    assert!(
        len <= 40 * 8 && len.is_multiple_of(8),
        "trimmed to its entries: {len}"
    );
    assert!(
        log.flush_plan().seals.is_empty(),
        "settled by the plan after the roll"
    );
}

/// A flush plan still running may hold the seal of an index that a truncation has since
/// reopened for writing (the same file). The truncation runs the seal first, so the plan's
/// run does nothing: it never trims the mapped, writable index under the appends (which
/// then die of SIGBUS past the cut).
#[test]
fn a_stale_seal_never_trims_an_index_reopened_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, 64);
    let (mut log, mut model) = filled(dir.path(), cfg, 40);
    log.roll(0).unwrap();
    model.append(&mut log, 2, 5, 0);
    let in_flight = log.flush_plan();
    let end = log.truncate_to(Offset(1)).unwrap();
    model.truncate(end.0);
    let index = segment_files(dir.path(), "index")[0].clone();
    let len = std::fs::metadata(&index).unwrap().len();
    in_flight.run().unwrap();
    assert_eq!(std::fs::metadata(&index).unwrap().len(), len, "not trimmed");
    for i in 0..1_000 {
        model.append(&mut log, 1, 3_000 + i, 0);
    }
    assert_matches(&mut log, &model, 0);
}

/// A sealed segment whose time index a crash left empty (compaction writes its indexes in
/// place) is not trusted at a start: it is rebuilt, so the segment's maximum timestamp (what
/// time retention reads) covers all its batches, and the start does not panic sealing it.
#[test]
fn an_empty_time_index_of_a_sealed_segment_is_rebuilt_at_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(4096, 256);
    let (mut log, model) = filled(dir.path(), cfg, 60);
    let max = log.segments[0].max_timestamp_ms;
    log.close().unwrap();
    drop(log);
    let time_index = segment_files(dir.path(), "timeindex")[0].clone();
    std::fs::File::options()
        .write(true)
        .open(&time_index)
        .unwrap()
        .set_len(0)
        .unwrap();
    let (mut log, report) = open(dir.path(), cfg, true);
    assert!(report.rebuilt_indexes >= 1, "{report:?}");
    assert_eq!(log.segments[0].max_timestamp_ms, max);
    assert_matches(&mut log, &model, 0);
}
