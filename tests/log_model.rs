//! Model test of the storage engine: random appends, reads, rolls, time seeks, record
//! deletions, clean reopens and crashes (drop without close), and the replication
//! operations (new leader epochs, replicated appends good and bad, truncations, resets),
//! checked against a `Vec`.
//!
//! The model is the list of every record appended, indexed by offset, and the batches with
//! their leader epochs. After every step the log end offset must match it and the
//! leader-epoch cache must be the one the batches imply; reads must return each record at
//! its offset with the same key, value and timestamp, across segments and across reopens.

use std::path::Path;

use proptest::prelude::*;
use tidelog::log::batch::{BatchBuilder, BatchView, ProducerInfo, RecordRef, stamp_batch};
use tidelog::log::{LogConfig, Offset, PartitionLog};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    timestamp_ms: i64,
}

#[derive(Debug, Clone)]
enum Op {
    /// One batch: `(key, value length)` per record, and a timestamp step from the last batch.
    Append(Vec<(Option<u8>, usize)>, i64),
    /// Read from `offset = log_start + pick % (log_end - log_start)` onwards.
    Read(usize),
    Roll,
    /// Seek the first record stamped at or after `first timestamp + pick`.
    SeekTime(i64),
    /// Move the log start to `log_start + pick % (length + 1)`.
    DeleteBefore(usize),
    CloseReopen,
    CrashReopen,
    /// Crash, then damage the last segment file at byte `pick % length`: cut it there
    /// (`flip: false`) or flip a bit there (`flip: true`).
    CrashDamaged {
        pick: usize,
        flip: bool,
    },
    /// Later appends are stamped with a leader epoch this much newer.
    NewEpoch(u32),
    /// One batch as a leader stored it, appended with `append_replicated`.
    Replicate(Vec<(Option<u8>, usize)>),
    /// A good batch then a bad one (`how`: flipped bit, offset below the end, older epoch,
    /// cut short) in one `append_replicated`: refused, nothing appended.
    ReplicateBad(Vec<(Option<u8>, usize)>, u8),
    /// Cut the log at `log_start + pick % (length + 1)`.
    Truncate(usize),
    /// Empty the log and start it at `log_start + pick % (length + 4)`.
    Reset(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let record = (proptest::option::of(0u8..6), 0usize..90);
    prop_oneof![
        8 => (prop::collection::vec(record.clone(), 1..5), -50i64..200).prop_map(|(r, dt)| Op::Append(r, dt)),
        3 => any::<usize>().prop_map(Op::Read),
        1 => Just(Op::Roll),
        1 => (0i64..8_000).prop_map(Op::SeekTime),
        1 => any::<usize>().prop_map(Op::DeleteBefore),
        1 => Just(Op::CloseReopen),
        2 => Just(Op::CrashReopen),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, flip)| Op::CrashDamaged { pick, flip }),
        1 => (1u32..3).prop_map(Op::NewEpoch),
        3 => prop::collection::vec(record.clone(), 1..5).prop_map(Op::Replicate),
        1 => (prop::collection::vec(record.clone(), 1..3), 0u8..4).prop_map(|(r, how)| Op::ReplicateBad(r, how)),
        1 => any::<usize>().prop_map(Op::Truncate),
        1 => any::<usize>().prop_map(Op::Reset),
    ]
}

struct Harness<'a> {
    dir: &'a Path,
    config: LogConfig,
    log: Option<PartitionLog>,
    model: Vec<Rec>,
    /// `(base offset, next offset, leader epoch)` of every batch, in order.
    batches: Vec<(u64, u64, u32)>,
    /// The leader epoch new batches get.
    epoch: u32,
    log_start: u64,
    clock_ms: i64,
}

impl Harness<'_> {
    fn log(&mut self) -> &mut PartitionLog {
        self.log.as_mut().expect("open")
    }

    fn reopen(&mut self, clean: bool) {
        if clean {
            self.log().close().expect("close");
        }
        self.log = None;
        let (log, report) =
            PartitionLog::open(self.dir, self.config, clean, self.clock_ms).expect("reopen");
        assert_eq!(report.truncated_bytes, 0, "nothing was damaged");
        assert_eq!(report.dropped_segments, 0);
        assert_eq!(
            log.log_start_offset().0,
            self.log_start,
            "log start survives"
        );
        self.log = Some(log);
        self.check_all();
    }

    /// Crashes, damages the last segment, and reopens: recovery must keep exactly the batches
    /// that end before the damaged byte, and everything before them.
    fn crash_damaged(&mut self, pick: usize, flip: bool) {
        self.log = None;
        let path = last_log_file(self.dir);
        let mut bytes = std::fs::read(&path).expect("read segment");
        // The file may go on with zeros written ahead of small appends (a crash leaves
        // them); the damage falls among the batches before them, which are dropped here as
        // a crash before their write reached the disk could.
        let mut data_end = 0;
        while data_end < bytes.len() && bytes[data_end..].iter().any(|b| *b != 0) {
            data_end += BatchView::parse(&bytes[data_end..])
                .expect("batches, then zeros")
                .bytes
                .len();
        }
        bytes.truncate(data_end);
        if bytes.is_empty() {
            std::fs::write(&path, &bytes).expect("write segment");
            return self.reopen(false);
        }
        let at = pick % bytes.len();
        // Batch boundaries of the intact file: the first batch reaching past `at` is cut.
        let mut position = 0;
        let mut kept_end = None;
        while position < bytes.len() {
            let batch = BatchView::parse(&bytes[position..]).expect("intact before damage");
            if position + batch.bytes.len() > at {
                kept_end = Some(batch.header.base_offset);
                break;
            }
            position += batch.bytes.len();
        }
        let kept_end = kept_end.expect("the damaged byte is inside a batch");
        if flip {
            bytes[at] ^= 1 << (pick % 8);
        } else {
            bytes.truncate(at);
        }
        std::fs::write(&path, &bytes).expect("write segment");
        let (log, report) =
            PartitionLog::open(self.dir, self.config, false, self.clock_ms).expect("reopen");
        // Torn bytes that are all zeros cannot be told from zeros written ahead: cut, not
        // counted.
        let torn = &bytes[position..];
        let counted = if torn.iter().all(|b| *b == 0) {
            0
        } else {
            torn.len()
        };
        assert_eq!(report.truncated_bytes, counted as u64, "bytes cut");
        if kept_end >= self.log_start {
            assert_eq!(std::fs::metadata(&path).unwrap().len(), position as u64);
        } else {
            assert!(!path.exists(), "segments below the log start are dropped");
        }
        // A cut below the log start restarts the log, empty, at the log start: offsets
        // below it are never given again. (Records below the start stay in the model
        // unread.)
        self.model.truncate(kept_end.max(self.log_start) as usize);
        self.batches.retain(|b| b.0 < kept_end);
        assert_eq!(log.log_start_offset().0, self.log_start, "log start");
        self.log = Some(log);
        self.check_all();
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Append(records, dt) => self.append(&records, dt),
            Op::Read(pick) => {
                let (start, end) = (self.log_start, self.model.len() as u64);
                if end > start {
                    let from = start + pick as u64 % (end - start);
                    self.check_from(from, 12);
                }
            }
            Op::Roll => {
                let (segments, now) = (self.log().segment_count(), self.clock_ms);
                self.log().roll(now).expect("roll");
                let rolled = self.log().segment_count();
                assert!(rolled <= segments + 1);
                // The new active segment is empty: rolling it again changes nothing.
                self.log().roll(now).expect("roll");
                assert_eq!(self.log().segment_count(), rolled);
            }
            Op::SeekTime(pick) => self.seek_time(pick),
            Op::DeleteBefore(pick) => {
                let end = self.model.len() as u64;
                let target = self.log_start + pick as u64 % (end - self.log_start + 1);
                let start = self
                    .log()
                    .delete_records_before(Offset(target), Offset(end))
                    .expect("delete")
                    .0;
                assert_eq!(start, target.max(self.log_start));
                self.log_start = start;
            }
            Op::CloseReopen => self.reopen(true),
            Op::CrashReopen => self.reopen(false),
            Op::CrashDamaged { pick, flip } => self.crash_damaged(pick, flip),
            Op::NewEpoch(step) => self.epoch += step,
            Op::Replicate(records) => self.replicate(&records),
            Op::ReplicateBad(records, how) => self.replicate_bad(&records, how),
            Op::Truncate(pick) => self.truncate(pick),
            Op::Reset(pick) => self.reset(pick),
        }
        assert_eq!(
            self.log().log_end_offset().0,
            self.model.len() as u64,
            "LEO"
        );
        self.check_epochs();
    }

    /// The epoch cache must be what the batches say: each epoch from its first offset still
    /// in the log (the log start for the one in force there); nothing for an empty log.
    fn check_epochs(&mut self) {
        let (start, end) = (self.log_start, self.model.len() as u64);
        let mut expected: Vec<(u32, u64)> = Vec::new();
        for &(base, next, epoch) in &self.batches {
            if next <= start || base >= end || start >= end {
                continue;
            }
            if expected.last().map(|e| e.0) != Some(epoch) {
                expected.push((epoch, base.max(start)));
            }
        }
        let cache: Vec<(u32, u64)> = self
            .log()
            .epoch_cache()
            .entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset.0))
            .collect();
        assert_eq!(cache, expected, "epoch cache");
        assert_eq!(self.log().latest_epoch(), expected.last().map(|e| e.0));
    }

    /// A batch of `records` as the leader would have stored it at the log end.
    fn leader_batch(&mut self, records: &[(Option<u8>, usize)]) -> (Vec<u8>, Vec<Rec>) {
        let (mut batch, recs) = self.build(records);
        stamp_batch(&mut batch, self.model.len() as u64, self.epoch);
        (batch, recs)
    }

    fn replicate(&mut self, records: &[(Option<u8>, usize)]) {
        let (batch, recs) = self.leader_batch(records);
        let first = self.model.len() as u64;
        self.clock_ms += 1;
        let now = self.clock_ms;
        let end = self
            .log()
            .append_replicated(&batch, now)
            .expect("replicate")
            .0;
        assert_eq!(end, first + recs.len() as u64);
        self.batches.push((first, end, self.epoch));
        self.model.extend(recs);
    }

    fn replicate_bad(&mut self, records: &[(Option<u8>, usize)], how: u8) {
        let (good, _) = self.leader_batch(records);
        let next = self.model.len() as u64 + records.len() as u64;
        let (mut bad, _) = self.build(records);
        match how {
            0 => {
                stamp_batch(&mut bad, next, self.epoch);
                let at = bad.len() / 2;
                bad[at] ^= 0x10;
            }
            1 => stamp_batch(&mut bad, next - 1, self.epoch),
            2 if self.epoch > 0 => stamp_batch(&mut bad, next, self.epoch - 1),
            _ => {
                stamp_batch(&mut bad, next, self.epoch);
                bad.pop();
            }
        }
        let (end, latest) = (self.model.len() as u64, self.log().latest_epoch());
        let now = self.clock_ms;
        let refused = self
            .log()
            .append_replicated(&[good, bad].concat(), now)
            .expect_err("a bad batch is refused");
        assert!(
            matches!(
                refused.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            ),
            "{refused}"
        );
        assert_eq!(self.log().log_end_offset().0, end, "nothing appended");
        assert_eq!(self.log().latest_epoch(), latest);
    }

    fn truncate(&mut self, pick: usize) {
        let end = self.model.len() as u64;
        let offset = self.log_start + pick as u64 % (end - self.log_start + 1);
        let expected = self
            .batches
            .iter()
            .find(|b| b.0 <= offset && offset < b.1)
            .map_or(end, |b| b.0);
        let cut = self.log().truncate_to(Offset(offset)).map(|end| end.0);
        if expected < self.log_start {
            cut.expect_err("a cut below the log start is refused");
            return;
        }
        assert_eq!(
            cut.expect("truncate"),
            expected,
            "cut at the batch boundary"
        );
        self.model.truncate(expected as usize);
        self.batches.retain(|b| b.0 < expected);
    }

    fn reset(&mut self, pick: usize) {
        let end = self.model.len() as u64;
        let offset = self.log_start + pick as u64 % (end - self.log_start + 4);
        let now = self.clock_ms;
        self.log().reset_to(Offset(offset), now).expect("reset");
        self.model.truncate(offset as usize);
        while (self.model.len() as u64) < offset {
            // Offsets below the new start: never read again.
            self.model.push(Rec {
                key: None,
                value: Vec::new(),
                timestamp_ms: 0,
            });
        }
        self.batches.clear();
        self.log_start = offset;
    }

    fn append(&mut self, records: &[(Option<u8>, usize)], dt: i64) {
        let (mut batch, recs) = self.build_at(records, dt);
        let first = self.model.len();
        self.clock_ms += 1;
        let now = self.clock_ms;
        let epoch = self.epoch;
        let (base, next) = self.log().append(&mut batch, epoch, now).expect("append");
        assert_eq!(base.0, first as u64, "dense offsets");
        assert_eq!(next.0, (first + recs.len()) as u64);
        self.batches.push((base.0, next.0, epoch));
        self.model.extend(recs);
    }

    fn build(&self, records: &[(Option<u8>, usize)]) -> (Vec<u8>, Vec<Rec>) {
        self.build_at(records, 1)
    }

    /// A batch of `records` stamped `dt` after the last record, and the records.
    fn build_at(&self, records: &[(Option<u8>, usize)], dt: i64) -> (Vec<u8>, Vec<Rec>) {
        let last_ts = self
            .model
            .last()
            .map_or(1_000, |r| r.timestamp_ms.max(1_000));
        let timestamp_ms = last_ts + dt;
        let first = self.model.len();
        let recs: Vec<Rec> = records
            .iter()
            .enumerate()
            .map(|(i, &(key, len))| Rec {
                key: key.map(|k| format!("k{k}").into_bytes()),
                value: (0..len).map(|j| (first + i + j) as u8).collect(),
                timestamp_ms: timestamp_ms + i as i64,
            })
            .collect();
        let mut builder = BatchBuilder::with_capacity(128);
        for r in &recs {
            builder.push(&RecordRef {
                timestamp_ms: r.timestamp_ms,
                key: r.key.as_deref(),
                key_is_utf8: true,
                value: Some(&r.value),
                value_is_json: false,
                headers: &[],
            });
        }
        (builder.finish(ProducerInfo::NONE, None), recs)
    }

    /// Reads up to `limit` records from `from` and compares them with the model.
    fn check_from(&mut self, from: u64, limit: usize) {
        let read = read_from(self.log.as_mut().expect("open"), from, limit);
        let end = self.model.len() as u64;
        let expected = (end - from).min(limit as u64) as usize;
        assert!(read.len() >= expected, "read {} of {expected}", read.len());
        for (i, (offset, rec)) in read.iter().enumerate() {
            assert_eq!(*offset, from + i as u64, "offsets dense in reads");
            assert_eq!(rec, &self.model[*offset as usize], "record at {offset}");
        }
    }

    fn check_all(&mut self) {
        let start = self.log_start;
        let len = self.model.len();
        self.check_from(start, len);
    }

    /// Seeks like the broker: the time index gives a start, records are scanned from there.
    /// Only records at or past the log start count (the broker clamps to it).
    fn seek_time(&mut self, pick: i64) {
        let Some(first_ts) = self.model.first().map(|r| r.timestamp_ms) else {
            return;
        };
        let t = first_ts - 100 + pick;
        let start = self.log_start;
        let expected = (start as usize..self.model.len())
            .find(|&i| self.model[i].timestamp_ms >= t)
            .map(|i| i as u64);
        let log = self.log.as_mut().expect("open");
        let found = log.time_slice(t).expect("load").and_then(|slice| {
            let bytes = slice.read(u64::MAX).expect("read");
            let base = BatchView::parse(&bytes).expect("batch").header.base_offset;
            read_from(log, base.max(start), usize::MAX)
                .into_iter()
                .find(|(_, r)| r.timestamp_ms >= t)
                .map(|(o, _)| o)
        });
        assert_eq!(found, expected, "seek to {t}");
    }
}

fn last_log_file(dir: &Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a segment")
}

/// Reads records from `from` on, in small reads that end mid-batch, across segments.
fn read_from(log: &mut PartitionLog, from: u64, limit: usize) -> Vec<(u64, Rec)> {
    let mut out = Vec::new();
    let mut offset = from;
    while out.len() < limit {
        let Some(mut slice) = log.read_slice(Offset(offset)).expect("load") else {
            break;
        };
        slice.skip_before(offset).expect("skip");
        let bytes = slice.read(300).expect("read");
        let mut rest = &bytes[..];
        let before = offset;
        while let Ok(batch) = BatchView::parse(rest) {
            rest = &rest[batch.bytes.len()..];
            for record in batch.records() {
                let record = record.expect("record decodes");
                if record.offset >= offset {
                    out.push((
                        record.offset,
                        Rec {
                            key: record.key.map(<[u8]>::to_vec),
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
    out
}

/// A directory on tmpfs when there is one: the model checks contents, not fsync, and every
/// reopen syncs every segment, which on a real disk makes each case take a second.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("temp dir")
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_a_vec_model(
        ops in prop::collection::vec(op(), 1..80),
        segment_bytes in prop_oneof![Just(1_024u64), Just(4_096)],
        index_interval_bytes in 1u64..600,
    ) {
        let dir = scratch_dir();
        let config = LogConfig {
            segment_bytes,
            segment_ms: i64::MAX,
            index_interval_bytes,
            retention_ms: None,
            retention_bytes: None,
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open(dir.path(), config, false, 0).unwrap();
        let mut h = Harness {
            dir: dir.path(),
            config,
            log: Some(log),
            model: Vec::new(),
            batches: Vec::new(),
            epoch: 0,
            log_start: 0,
            clock_ms: 0,
        };
        for op in ops {
            h.step(op);
        }
        h.reopen(false);
        h.reopen(true);
    }
}
