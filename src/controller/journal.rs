//! The controller's durable command log: entries (index, term, payload) in one append-only
//! file, each fsynced before `append` returns.
//!
//! It is the storage a Raft log needs (part 2 puts openraft on it) and, until then, the
//! fixed controller's own log. An entry on disk is
//! `len:u32le crc:u32le index:u64le term:u64le payload`, `len` counting from `index` on and
//! the CRC-32 covering the same bytes.
//!
//! Invariants: indexes are contiguous and grow by one; `append` returns only after the
//! bytes and the file length are on disk (`sync_data`), so an acknowledged entry survives a
//! power cut. Recovery reads entries until the first one that is short, fails its CRC, is
//! longer than `ENTRY_BYTES_MAX` or breaks the index sequence, and cuts the file there (a
//! torn last write); nothing before it is lost. `truncate_from` (a Raft conflict) and
//! `purge_through` (after a snapshot) are durable before they return too.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// Bytes before an entry's CRC-covered part: its length and its CRC.
const FRAME_BYTES: usize = 8;
/// Index and term.
const ENTRY_HEADER_BYTES: usize = 16;
/// Largest entry (index, term and payload); a longer length field is damage.
pub const ENTRY_BYTES_MAX: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// (index, position in the file) of every entry, in order.
    positions: Vec<(u64, u64)>,
    /// Where the next entry goes.
    end: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path`, cutting a torn tail; returns it and every
    /// entry it holds.
    pub fn open(path: &Path) -> io::Result<(Journal, Vec<Entry>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (entries, positions, valid) = scan(&bytes);
        if valid < bytes.len() as u64 {
            file.set_len(valid)?;
            file.sync_all()?;
        }
        let journal = Journal {
            path: path.to_path_buf(),
            file,
            positions,
            end: valid,
        };
        Ok((journal, entries))
    }

    /// The index of the last entry, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.positions.last().map(|(i, _)| *i)
    }

    /// The index of the first entry, if any.
    pub fn first_index(&self) -> Option<u64> {
        self.positions.first().map(|(i, _)| *i)
    }

    /// Appends entries (their indexes must follow the last one) and fsyncs them.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let mut expected = self.last_index().map(|i| i + 1);
        let mut buf = Vec::new();
        let mut positions = Vec::with_capacity(entries.len());
        for e in entries {
            if expected.is_some_and(|x| x != e.index) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("entry {} does not follow {:?}", e.index, self.last_index()),
                ));
            }
            if ENTRY_HEADER_BYTES + e.payload.len() > ENTRY_BYTES_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "entry too large",
                ));
            }
            positions.push((e.index, self.end + buf.len() as u64));
            encode(e, &mut buf);
            expected = Some(e.index + 1);
        }
        self.file.seek(SeekFrom::Start(self.end))?;
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.end += buf.len() as u64;
        self.positions.extend(positions);
        Ok(())
    }

    /// Removes every entry at or after `index` (a Raft log conflict), durably.
    pub fn truncate_from(&mut self, index: u64) -> io::Result<()> {
        let keep = self.positions.partition_point(|(i, _)| *i < index);
        let Some(&(_, position)) = self.positions.get(keep) else {
            return Ok(());
        };
        self.file.set_len(position)?;
        self.file.sync_all()?;
        self.positions.truncate(keep);
        self.end = position;
        Ok(())
    }

    /// Removes every entry at or before `index` (covered by a snapshot), durably: the rest is
    /// written to a new file that replaces this one.
    pub fn purge_through(&mut self, index: u64) -> io::Result<()> {
        let first_kept = self.positions.partition_point(|(i, _)| *i <= index);
        if first_kept == 0 {
            return Ok(());
        }
        let from = self.positions.get(first_kept).map_or(self.end, |(_, p)| *p);
        let mut rest = vec![0; (self.end - from) as usize];
        self.file.seek(SeekFrom::Start(from))?;
        self.file.read_exact(&mut rest)?;
        let tmp = self.path.with_extension("tmp");
        let mut new = File::create(&tmp)?;
        new.write_all(&rest)?;
        new.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            crate::log::sync_dir(dir)?;
        }
        self.file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        self.positions.drain(..first_kept);
        for (_, p) in &mut self.positions {
            *p -= from;
        }
        self.end -= from;
        Ok(())
    }
}

fn encode(e: &Entry, out: &mut Vec<u8>) {
    let len = (ENTRY_HEADER_BYTES + e.payload.len()) as u32;
    let body_at = out.len() + FRAME_BYTES;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&e.index.to_le_bytes());
    out.extend_from_slice(&e.term.to_le_bytes());
    out.extend_from_slice(&e.payload);
    let crc = crc32fast::hash(&out[body_at..]);
    out[body_at - 4..body_at].copy_from_slice(&crc.to_le_bytes());
}

/// The entries of a journal file up to the first damage, their positions, and the length
/// of the valid part.
fn scan(bytes: &[u8]) -> (Vec<Entry>, Vec<(u64, u64)>, u64) {
    let mut entries: Vec<Entry> = Vec::new();
    let mut positions = Vec::new();
    let mut at = 0usize;
    while let Some(e) = decode(&bytes[at..]) {
        if entries
            .last()
            .is_some_and(|last| last.index + 1 != e.0.index)
        {
            break;
        }
        positions.push((e.0.index, at as u64));
        at += e.1;
        entries.push(e.0);
    }
    (entries, positions, at as u64)
}

/// One entry at the start of `bytes` and its encoded length, if it is whole and intact.
fn decode(bytes: &[u8]) -> Option<(Entry, usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if !(ENTRY_HEADER_BYTES..=ENTRY_BYTES_MAX).contains(&len) {
        return None;
    }
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(FRAME_BYTES..FRAME_BYTES + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let entry = Entry {
        index: u64::from_le_bytes(body[..8].try_into().ok()?),
        term: u64::from_le_bytes(body[8..16].try_into().ok()?),
        payload: body[16..].to_vec(),
    };
    Some((entry, FRAME_BYTES + len))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            payload: format!("command {index}").into_bytes(),
        }
    }

    #[test]
    fn entries_survive_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.journal");
        let (mut j, recovered) = Journal::open(&path).unwrap();
        assert!(recovered.is_empty());
        j.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        j.append(&[entry(3, 2)]).unwrap();
        assert!(j.append(&[entry(5, 2)]).is_err(), "a gap is refused");
        drop(j);
        let full = std::fs::metadata(&path).unwrap().len();
        // A torn last write: the file ends inside entry 3.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - 3).unwrap();
        let (mut j, recovered) = Journal::open(&path).unwrap();
        assert_eq!(recovered, vec![entry(1, 1), entry(2, 1)]);
        j.append(&[entry(3, 3)]).unwrap();
        drop(j);
        let (_, recovered) = Journal::open(&path).unwrap();
        assert_eq!(recovered.last(), Some(&entry(3, 3)));
    }

    #[test]
    fn a_flipped_bit_ends_the_valid_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).unwrap();
        drop(j);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = bytes.len() / 3 + 10;
        bytes[second] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let (_, recovered) = Journal::open(&path).unwrap();
        assert_eq!(recovered, vec![entry(1, 1)]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8, u64),
        TruncateFrom(u8),
        PurgeThrough(u8),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1..4u8, 1..3u64).prop_map(|(n, t)| Op::Append(n, t)),
            1 => any::<u8>().prop_map(Op::TruncateFrom),
            1 => any::<u8>().prop_map(Op::PurgeThrough),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        // Every step fsyncs: few cases, each long enough to mix every operation.
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Against a vector of entries: appends, conflicts, purges and reopens leave the
        /// journal holding exactly what the model holds.
        #[test]
        fn the_journal_holds_what_the_model_holds(ops in proptest::collection::vec(op(), 1..30)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("j");
            let (mut j, _) = Journal::open(&path).unwrap();
            let mut model: Vec<Entry> = Vec::new();
            let mut next = 1u64;
            for op in ops {
                match op {
                    Op::Append(n, term) => {
                        let batch: Vec<Entry> = (0..n as u64).map(|k| entry(next + k, term)).collect();
                        j.append(&batch).unwrap();
                        next += n as u64;
                        model.extend(batch);
                    }
                    Op::TruncateFrom(at) => {
                        let index = model.first().map_or(1, |e| e.index) + at as u64 % 8;
                        j.truncate_from(index).unwrap();
                        model.retain(|e| e.index < index);
                        next = model.last().map_or(next.min(index), |e| e.index + 1);
                    }
                    Op::PurgeThrough(at) => {
                        let index = model.first().map_or(0, |e| e.index) + at as u64 % 4;
                        j.purge_through(index).unwrap();
                        model.retain(|e| e.index > index);
                    }
                    Op::Reopen => {
                        drop(j);
                        let (reopened, recovered) = Journal::open(&path).unwrap();
                        prop_assert_eq!(&recovered, &model);
                        j = reopened;
                    }
                }
                prop_assert_eq!(j.last_index(), model.last().map(|e| e.index));
                prop_assert_eq!(j.first_index(), model.first().map(|e| e.index));
            }
            drop(j);
            let (_, recovered) = Journal::open(&path).unwrap();
            prop_assert_eq!(recovered, model);
        }
    }
}
