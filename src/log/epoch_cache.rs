//! The leader-epoch cache: for each leader epoch, the first offset written in it.
//!
//! It answers the question replication asks after a leader change (KIP-101, KIP-279):
//! "where does my log stop agreeing with the leader's?". A follower sends the epoch of its
//! last batch; the leader answers with the end offset of that epoch in its own log (the
//! start of the next epoch it knows, or its log end), and the follower truncates there
//! before it fetches. Offsets below the high watermark are never affected, because every
//! replica that can become leader holds them under the same epochs.
//!
//! Invariants: epochs strictly increase along the entries and start offsets never
//! decrease; an epoch in which no record was written is replaced by the next one (no
//! batch can name it). The cache is kept in a small text file (`leader-epoch-checkpoint`),
//! replaced atomically; a damaged or missing file is rebuilt from the batches' epochs
//! during recovery, so it is never trusted further than the log itself.

use std::io;
use std::path::Path;

use super::Offset;

/// Format version of the checkpoint file's first line.
const CHECKPOINT_VERSION: u32 = 0;
/// Most entries a checkpoint may hold; a longer one is damaged (it is rebuilt).
const CHECKPOINT_ENTRIES_MAX: usize = 1 << 20;

/// One epoch and the first offset written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: u32,
    pub start_offset: Offset,
}

/// What a replica answers for "the end of epoch E in your log" (`end_offset_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEnd {
    /// The largest epoch of this log that is at most the asked one.
    pub epoch: u32,
    /// The first offset after that epoch's records in this log.
    pub end_offset: Offset,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<EpochEntry>,
}

impl EpochCache {
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The epoch of the last batch written, if any.
    pub fn latest_epoch(&self) -> Option<u32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Records that a batch of `epoch` starts at `start_offset`. Called for every appended
    /// batch (it does nothing unless the epoch is new). An epoch older than the latest is a
    /// bug in the caller (a leader never writes under an old epoch; a follower truncates
    /// first), refused with `InvalidInput`.
    pub fn assign(&mut self, epoch: u32, start_offset: Offset) -> io::Result<()> {
        match self.entries.last_mut() {
            Some(last) if epoch == last.epoch => return Ok(()),
            Some(last) if epoch < last.epoch || start_offset < last.start_offset => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "epoch {epoch} at offset {start_offset} comes after epoch {} at offset {}",
                        last.epoch, last.start_offset
                    ),
                ));
            }
            Some(last) if start_offset == last.start_offset => {
                *last = EpochEntry {
                    epoch,
                    start_offset,
                };
            }
            _ => self.entries.push(EpochEntry {
                epoch,
                start_offset,
            }),
        }
        Ok(())
    }

    /// The end of `epoch` in a log ending at `log_end_offset`: the largest known epoch at
    /// most `epoch`, and where it ends. None when every known epoch is newer (the asker's
    /// records all predate this log's: it truncates to this log's start).
    pub fn end_offset_for(&self, epoch: u32, log_end_offset: Offset) -> Option<EpochEnd> {
        let at = self.entries.partition_point(|e| e.epoch <= epoch);
        let found = self.entries.get(at.checked_sub(1)?)?;
        let end_offset = self
            .entries
            .get(at)
            .map_or(log_end_offset, |next| next.start_offset);
        Some(EpochEnd {
            epoch: found.epoch,
            end_offset,
        })
    }

    /// The log was cut to end at `end_offset`: forget epochs that started at or after it.
    pub fn truncate_from_end(&mut self, end_offset: Offset) {
        let keep = self
            .entries
            .partition_point(|e| e.start_offset < end_offset);
        self.entries.truncate(keep);
    }

    /// The log now starts at `start_offset` (retention, delete-records): the epoch in force
    /// there now starts there, older ones are forgotten.
    pub fn truncate_from_start(&mut self, start_offset: Offset) {
        let first_kept = self
            .entries
            .partition_point(|e| e.start_offset <= start_offset);
        if first_kept == 0 {
            return;
        }
        self.entries.drain(..first_kept - 1);
        self.entries[0].start_offset = start_offset;
    }

    /// The checkpoint text: a version line, a count line, then `epoch start_offset` lines.
    pub fn encode(&self) -> String {
        let mut out = format!("{CHECKPOINT_VERSION}\n{}\n", self.entries.len());
        for e in &self.entries {
            out.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        out
    }

    /// Parses a checkpoint; any damage (version, count, order) is an `InvalidData` error.
    pub fn decode(text: &str) -> io::Result<EpochCache> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        let mut lines = text.lines();
        let version: u32 = parse(lines.next()).ok_or_else(|| bad("no version"))?;
        if version != CHECKPOINT_VERSION {
            return Err(bad("unknown checkpoint version"));
        }
        let count: usize = parse(lines.next()).ok_or_else(|| bad("no entry count"))?;
        if count > CHECKPOINT_ENTRIES_MAX {
            return Err(bad("too many entries"));
        }
        let mut cache = EpochCache::default();
        for _ in 0..count {
            let line = lines
                .next()
                .ok_or_else(|| bad("fewer entries than counted"))?;
            let (epoch, offset) = line.split_once(' ').ok_or_else(|| bad("bad entry"))?;
            let epoch = parse(Some(epoch)).ok_or_else(|| bad("bad epoch"))?;
            let offset = Offset(parse(Some(offset)).ok_or_else(|| bad("bad offset"))?);
            if cache.latest_epoch().is_some_and(|last| epoch <= last) {
                return Err(bad("epochs out of order"));
            }
            cache
                .assign(epoch, offset)
                .map_err(|_| bad("offsets out of order"))?;
        }
        if lines.next().is_some() {
            return Err(bad("more entries than counted"));
        }
        Ok(cache)
    }

    /// Reads the checkpoint at `path`; a missing file is an empty cache.
    pub fn read(path: &Path) -> io::Result<EpochCache> {
        match std::fs::read_to_string(path) {
            Ok(text) => EpochCache::decode(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(EpochCache::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the checkpoint at `path` atomically: temp file, fsync, rename, directory
    /// fsync.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut &file, self.encode().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        match path.parent() {
            Some(dir) => super::sync_dir(dir),
            None => Ok(()),
        }
    }
}

fn parse<T: std::str::FromStr>(s: Option<&str>) -> Option<T> {
    s?.trim().parse().ok()
}

/// Where a follower must cut its log before fetching from a leader, or None when its log
/// agrees with the leader's up to its end (KIP-101, KIP-279). The follower asked the leader
/// for the end of the epoch of its last batch; `leader` is the answer. When the leader
/// answers with an older epoch (it never had the follower's), the follower also looks that
/// epoch up in its own cache, and cuts at the smaller of the two ends. Applied repeatedly
/// (asking again with the epoch at the new end), this converges on the longest common
/// prefix of the two logs, and every step cuts something.
pub fn divergence(
    follower: &EpochCache,
    follower_end: Offset,
    leader: Option<EpochEnd>,
) -> Option<Offset> {
    let Some(leader) = leader else {
        return (follower_end > Offset::ZERO).then_some(Offset::ZERO);
    };
    let own_end = follower
        .end_offset_for(leader.epoch, follower_end)
        .map_or(Offset::ZERO, |own| own.end_offset);
    let cut = leader.end_offset.min(own_end);
    (cut < follower_end).then_some(cut)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cache(entries: &[(u32, u64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for (epoch, offset) in entries {
            c.assign(*epoch, Offset(*offset)).unwrap();
        }
        c
    }

    #[test]
    fn end_offset_for_answers_the_start_of_the_next_known_epoch() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        let end = |epoch| {
            c.end_offset_for(epoch, Offset(40))
                .map(|e| (e.epoch, e.end_offset.0))
        };
        assert_eq!(end(0), None);
        assert_eq!(end(1), Some((1, 10)));
        assert_eq!(
            end(2),
            Some((1, 10)),
            "epoch 2 is unknown here: the largest before it"
        );
        assert_eq!(end(3), Some((3, 25)));
        assert_eq!(end(4), Some((4, 40)));
        assert_eq!(end(9), Some((4, 40)));
    }

    #[test]
    fn an_epoch_without_records_is_replaced_and_an_older_one_is_refused() {
        let mut c = cache(&[(1, 0), (2, 5)]);
        c.assign(3, Offset(5)).unwrap();
        assert_eq!(
            c.entries(),
            &[
                EpochEntry {
                    epoch: 1,
                    start_offset: Offset(0)
                },
                EpochEntry {
                    epoch: 3,
                    start_offset: Offset(5)
                }
            ]
        );
        assert!(c.assign(2, Offset(9)).is_err());
        assert!(c.assign(4, Offset(4)).is_err());
        c.assign(3, Offset(7)).unwrap();
        assert_eq!(c.latest_epoch(), Some(3));
    }

    #[test]
    fn truncation_from_either_end() {
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        c.truncate_from_end(Offset(25));
        assert_eq!(c.latest_epoch(), Some(3));
        c.truncate_from_start(Offset(12));
        assert_eq!(
            c.entries(),
            &[EpochEntry {
                epoch: 3,
                start_offset: Offset(12)
            }]
        );
        c.truncate_from_start(Offset(5));
        assert_eq!(
            c.entries(),
            &[EpochEntry {
                epoch: 3,
                start_offset: Offset(12)
            }]
        );
    }

    #[test]
    fn checkpoints_round_trip_and_damage_is_refused() {
        let c = cache(&[(1, 0), (3, 10)]);
        assert_eq!(EpochCache::decode(&c.encode()).unwrap(), c);
        for damaged in [
            "",
            "1\n0\n",
            "0\n2\n1 0\n",
            "0\n2\n3 10\n1 0\n",
            "0\n1\n1 x\n",
            "0\n1\n1 0\n2 5\n",
        ] {
            assert!(EpochCache::decode(damaged).is_err(), "{damaged:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader-epoch-checkpoint");
        assert_eq!(EpochCache::read(&path).unwrap(), EpochCache::default());
        c.write(&path).unwrap();
        assert_eq!(EpochCache::read(&path).unwrap(), c);
    }

    /// A log as the epoch of each offset's record.
    fn epochs_cache(log: &[u32]) -> EpochCache {
        let mut c = EpochCache::default();
        for (offset, epoch) in log.iter().enumerate() {
            c.assign(*epoch, Offset(offset as u64)).unwrap();
        }
        c
    }

    /// Two logs that share a prefix, then each goes on under epochs of its own, the way a
    /// leader and a deposed leader's follower diverge: epochs grow along each log, and an
    /// epoch names one leader, so an epoch both logs use past the prefix is the same
    /// records in both only where one was copied from the other.
    fn diverged_logs() -> impl Strategy<Value = (Vec<u32>, Vec<u32>)> {
        let runs = || proptest::collection::vec((1..4u32, 1..6usize), 0..5);
        (runs(), runs(), runs()).prop_map(|(common, a, b)| {
            let mut epoch = 0;
            let mut shared = Vec::new();
            for (step, len) in common {
                epoch += step;
                shared.extend(std::iter::repeat_n(epoch, len));
            }
            // The two branches use disjoint epochs past the prefix: odd for one, even for
            // the other, like two leaders elected in turn.
            let branch = |runs: Vec<(u32, usize)>, parity: u32| {
                let mut log = shared.clone();
                let mut e = epoch;
                for (step, len) in runs {
                    e += step;
                    if e % 2 != parity {
                        e += 1;
                    }
                    log.extend(std::iter::repeat_n(e, len));
                }
                log
            };
            (branch(a, 0), branch(b, 1))
        })
    }

    proptest! {
        #[test]
        fn repeated_divergence_checks_cut_the_follower_to_the_common_prefix(
            (leader, follower) in diverged_logs()
        ) {
            let leader_cache = epochs_cache(&leader);
            let mut follower = follower;
            for _ in 0..100 {
                let Some(&epoch) = follower.last() else { break };
                let answer = leader_cache.end_offset_for(epoch, Offset(leader.len() as u64));
                let own = epochs_cache(&follower);
                match divergence(&own, Offset(follower.len() as u64), answer) {
                    Some(cut) => {
                        prop_assert!(cut.0 < follower.len() as u64, "each step cuts something");
                        follower.truncate(cut.0 as usize);
                    }
                    None => break,
                }
            }
            prop_assert!(leader.starts_with(&follower), "follower {:?} not a prefix of leader {:?}", follower, leader);
            let common = leader.iter().zip(&follower).take_while(|(a, b)| a == b).count();
            prop_assert_eq!(follower.len(), common, "nothing of the common prefix was cut");
        }
    }
}
