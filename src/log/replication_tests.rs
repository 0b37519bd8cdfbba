//! Tests of the log's replication operations that the model test (tests/log_model.rs) does
//! not reach: compaction gaps in replicated batches, flush plans across a truncation, the
//! epoch checkpoint's absence, damage and ordering.

use super::batch::{BatchBuilder, ProducerInfo, RecordRef, stamp_batch};
use super::epoch_cache::{EpochCache, EpochEntry};
use super::{EPOCH_CHECKPOINT_FILE, LogConfig, Offset, PartitionLog};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        segment_ms: i64::MAX,
        index_interval_bytes: 128,
        retention_ms: None,
        retention_bytes: None,
        ..LogConfig::default()
    }
}

/// A batch of `records` records, stamped at `base` with `epoch` as a leader stores it.
fn leader_batch(base: u64, records: usize, epoch: u32) -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(64);
    for i in 0..records {
        builder.push(&RecordRef {
            timestamp_ms: 1_000 + i as i64,
            key: None,
            key_is_utf8: false,
            value: Some(b"replicated value"),
            value_is_json: false,
            headers: &[],
        });
    }
    let mut batch = builder.finish(ProducerInfo::NONE, None);
    stamp_batch(&mut batch, base, epoch);
    batch
}

fn entries(log: &PartitionLog) -> Vec<(u32, u64)> {
    log.epoch_cache()
        .entries()
        .iter()
        .map(|e| (e.epoch, e.start_offset.0))
        .collect()
}

#[test]
fn replicated_batches_keep_offsets_past_a_compaction_gap_and_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 0).unwrap();
    let batches = [
        leader_batch(0, 3, 1),
        leader_batch(10, 2, 1),
        leader_batch(12, 1, 4),
    ]
    .concat();
    assert_eq!(log.append_replicated(&batches, 0).map(|o| o.0).unwrap(), 13);
    assert_eq!(entries(&log), vec![(1, 0), (4, 12)]);
    assert_eq!(
        log.epoch_end(2).map(|e| (e.epoch, e.end_offset.0)),
        Some((1, 12))
    );
    assert_eq!(log.epoch_end(4).map(|e| e.end_offset.0), Some(13));
    // An offset in the gap reads from the next batch on.
    let slice = log.read_slice(Offset(5)).unwrap().expect("a slice");
    let mut slice = slice;
    slice.skip_before(5).unwrap();
    let bytes = slice.read(1 << 20).unwrap();
    assert_eq!(
        super::batch::BatchHeader::parse(&bytes)
            .unwrap()
            .base_offset,
        10
    );
    // Cutting inside the gap ends the log there; the epoch that started after goes.
    assert_eq!(log.truncate_to(Offset(7)).map(|o| o.0).unwrap(), 7);
    assert_eq!(entries(&log), vec![(1, 0)]);
    assert_eq!(
        log.append_replicated(&leader_batch(9, 1, 5), 0)
            .map(|o| o.0)
            .unwrap(),
        10
    );
    drop(log);
    let (log, _) = PartitionLog::open(dir.path(), config(), false, 0).unwrap();
    assert_eq!(log.log_end_offset().0, 10);
    assert_eq!(entries(&log), vec![(1, 0), (5, 9)]);
}

#[test]
fn a_leader_append_under_an_older_epoch_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 0).unwrap();
    log.append_replicated(&leader_batch(0, 2, 3), 0)
        .map(|o| o.0)
        .unwrap();
    let mut older = leader_batch(0, 1, 0);
    let refused = log.append(&mut older, 2, 0).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(log.log_end_offset().0, 2);
    let mut newer = leader_batch(0, 1, 0);
    assert_eq!(
        log.append(&mut newer, 3, 0)
            .map(|(b, n)| (b.0, n.0))
            .unwrap(),
        (2, 3)
    );
    assert_eq!(log.latest_epoch(), Some(3));
}

#[test]
fn a_flush_planned_before_a_truncation_counts_for_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 0).unwrap();
    log.append_replicated(&leader_batch(0, 5, 1), 0)
        .map(|o| o.0)
        .unwrap();
    let plan = log.flush_plan();
    plan.run().unwrap();
    assert_eq!(log.truncate_to(Offset(0)).map(|o| o.0).unwrap(), 0);
    log.append_replicated(&leader_batch(0, 7, 2), 0)
        .map(|o| o.0)
        .unwrap();
    assert!(
        !log.mark_flushed(&plan),
        "the plan synced bytes that were cut"
    );
    assert_eq!(log.flushed_offset().0, 0);
    let plan = log.flush_plan();
    plan.run().unwrap();
    assert!(log.mark_flushed(&plan));
    assert_eq!(log.flushed_offset().0, 7);
}

#[test]
fn a_log_without_an_epoch_checkpoint_is_epoch_0_and_a_damaged_one_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 0).unwrap();
    for i in 0..30 {
        log.append_replicated(&leader_batch(i * 2, 2, 0), 0)
            .map(|o| o.0)
            .unwrap();
    }
    log.delete_records_before(Offset(5), Offset(60))
        .map(|o| o.0)
        .unwrap();
    log.close().unwrap();
    drop(log);
    let path = dir.path().join(EPOCH_CHECKPOINT_FILE);
    // Written before epochs were kept: no file, every batch at epoch 0.
    std::fs::remove_file(&path).unwrap();
    for clean in [true, false] {
        let (log, _) = PartitionLog::open(dir.path(), config(), clean, 0).unwrap();
        assert_eq!(entries(&log), vec![(0, 5)], "clean: {clean}");
        drop(log);
        std::fs::remove_file(&path).unwrap();
    }
    // A log written under epochs 0 and 7, whose checkpoint is then damaged.
    let (mut log, _) = PartitionLog::open(dir.path(), config(), true, 0).unwrap();
    log.append_replicated(&leader_batch(60, 3, 7), 0)
        .map(|o| o.0)
        .unwrap();
    log.close().unwrap();
    drop(log);
    std::fs::write(&path, "0\n9\n1 2\n").unwrap();
    let (log, _) = PartitionLog::open(dir.path(), config(), true, 0).unwrap();
    assert_eq!(entries(&log), vec![(0, 5), (7, 60)]);
}

#[test]
fn an_older_checkpoint_never_replaces_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 0).unwrap();
    log.append_replicated(&leader_batch(0, 2, 1), 0)
        .map(|o| o.0)
        .unwrap();
    let older = log.checkpoint();
    log.append_replicated(&leader_batch(2, 2, 2), 0)
        .map(|o| o.0)
        .unwrap();
    let plan = log.flush_plan();
    plan.run().unwrap();
    log.mark_flushed(&plan);
    let newer = log.checkpoint();
    newer.write().unwrap();
    older.write().unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(read("recovery-checkpoint"), "4");
    let on_disk = EpochCache::read(&dir.path().join(EPOCH_CHECKPOINT_FILE)).unwrap();
    assert_eq!(
        on_disk.entries(),
        &[
            EpochEntry {
                epoch: 1,
                start_offset: Offset(0)
            },
            EpochEntry {
                epoch: 2,
                start_offset: Offset(2)
            }
        ]
    );
}

#[test]
fn truncating_into_a_sealed_segment_reopens_it_for_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 0).unwrap();
    for i in 0..40 {
        log.append_replicated(&leader_batch(i * 3, 3, (i / 10) as u32), 0)
            .map(|o| o.0)
            .unwrap();
    }
    let segments = log.segment_count();
    assert!(segments > 4, "{segments} segments");
    // Offset 31 is inside the batch at 30, the first of epoch 1: the epoch goes with it.
    assert_eq!(log.truncate_to(Offset(31)).map(|o| o.0).unwrap(), 30);
    assert!(log.segment_count() < segments);
    assert_eq!(entries(&log), vec![(0, 0)]);
    assert!(log.flushed_offset().0 <= 30);
    log.append_replicated(&leader_batch(30, 2, 9), 0)
        .map(|o| o.0)
        .unwrap();
    for clean in [false, true] {
        if clean {
            log.close().unwrap();
        }
        drop(log);
        let (reopened, report) = PartitionLog::open(dir.path(), config(), clean, 0).unwrap();
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(reopened.log_end_offset().0, 32);
        assert_eq!(entries(&reopened), vec![(0, 0), (9, 30)]);
        log = reopened;
    }
}

/// Flips one bit of the segment file `path` at byte `at`.
fn flip(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x04;
    std::fs::write(path, bytes).unwrap();
}

fn segment_path(dir: &std::path::Path, base: u64) -> std::path::PathBuf {
    dir.join(format!("{base:020}.log"))
}

#[test]
fn fsynced_data_that_fails_its_crc_on_recovery_is_reported_and_a_torn_tail_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let big = LogConfig {
        segment_bytes: 1 << 20,
        ..config()
    };
    let (mut log, _) = PartitionLog::open(dir.path(), big, false, 0).unwrap();
    for i in 0..10 {
        log.append_replicated(&leader_batch(i * 2, 2, 1), 0)
            .map(|o| o.0)
            .unwrap();
    }
    let plan = log.flush_plan();
    plan.run().unwrap();
    log.mark_flushed(&plan);
    log.write_checkpoint().unwrap();
    // Past the checkpoint, unsynced: a torn write of it is an ordinary crash.
    log.append_replicated(&leader_batch(20, 2, 1), 0)
        .map(|o| o.0)
        .unwrap();
    // The batches' end: the file may go on with zeros written ahead.
    let length = log.segments.last().unwrap().size;
    drop(log);
    let path = segment_path(dir.path(), 0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(length - 3)
        .unwrap();
    let (log, report) = PartitionLog::open(dir.path(), big, false, 0).unwrap();
    assert!(report.truncated_bytes > 0);
    assert_eq!(report.synced_data_lost_at, None, "a torn unsynced tail");
    assert_eq!(log.log_end_offset().0, 20);
    drop(log);
    // A flipped bit in the batch at offset 6, which was fsynced before the crash.
    let batch_bytes = leader_batch(0, 2, 1).len();
    flip(&path, 3 * batch_bytes + batch_bytes / 2);
    let (log, report) = PartitionLog::open(dir.path(), big, false, 0).unwrap();
    assert_eq!(report.synced_data_lost_at, Some(Offset(6)));
    assert_eq!(log.log_end_offset().0, 6);
}

#[test]
fn a_scrub_finds_a_flipped_bit_where_a_clean_open_trusts_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(), false, 0).unwrap();
    for i in 0..40 {
        log.append_replicated(&leader_batch(i * 2, 2, 1), 0)
            .map(|o| o.0)
            .unwrap();
    }
    assert!(log.segment_count() > 3);
    assert_eq!(log.scrub_plan().run().unwrap(), None);
    log.close().unwrap();
    drop(log);
    // The second batch of the first segment, long sealed: no open reads it.
    let batch_bytes = leader_batch(0, 2, 1).len();
    flip(&segment_path(dir.path(), 0), batch_bytes + 10);
    let (mut log, report) = PartitionLog::open(dir.path(), config(), true, 0).unwrap();
    assert_eq!(
        (report.truncated_bytes, report.synced_data_lost_at),
        (0, None)
    );
    assert_eq!(log.scrub_plan().run().unwrap(), Some(Offset(2)));
    // Cut there, the follower fetches the rest again; the log checks clean.
    assert_eq!(log.truncate_to(Offset(2)).map(|o| o.0).unwrap(), 2);
    assert_eq!(log.scrub_plan().run().unwrap(), None);
}
