//! Sparse, memory-mapped indexes of one segment: offset → file position, and time → offset.
//!
//! Both are files of fixed-width little-endian entries, preallocated to their maximum size and
//! mapped with `memmap2`, so an append is a store into the map. When a segment is sealed or the
//! broker shuts down cleanly the file is trimmed to its entries; a file that is still
//! preallocated at startup therefore belongs to a segment that was active during a crash, and
//! is rebuilt from the log rather than trusted.
//!
//! Invariants: entries are strictly increasing in relative offset (offset index) and in
//! timestamp (time index, which stores the running maximum only when it grew); an entry never
//! points past the log bytes it was written for. [`IndexFile::validate`] checks both on open;
//! strictness is what tells a sealed index from one still preallocated (zero-filled entries
//! after the real ones), which must be rebuilt.
//!
//! Failure policy: an index is a cache of the log. Any doubt (bad size, unordered entries,
//! an entry past the end of the log) means "rebuild", never an error to the client.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use memmap2::MmapMut;

/// One offset index entry: the batch starting at `relative_offset` begins at `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One time index entry: from the batch at `relative_offset` on, the largest timestamp seen in
/// the segment is `timestamp_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp_ms: i64,
    pub relative_offset: u32,
}

/// A fixed-width entry that can live in an [`IndexFile`].
pub trait IndexEntry: Copy {
    const BYTES: usize;
    fn encode(&self, out: &mut [u8]);
    fn decode(bytes: &[u8]) -> Self;
    /// The key entries are ordered by.
    fn key(&self) -> i64;
}

impl IndexEntry for OffsetEntry {
    const BYTES: usize = 8;
    fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.relative_offset.to_le_bytes());
        out[4..8].copy_from_slice(&self.position.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        OffsetEntry {
            relative_offset: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            position: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
        }
    }
    fn key(&self) -> i64 {
        i64::from(self.relative_offset)
    }
}

impl IndexEntry for TimeEntry {
    const BYTES: usize = 12;
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        out[8..12].copy_from_slice(&self.relative_offset.to_le_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        TimeEntry {
            timestamp_ms: i64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            relative_offset: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
        }
    }
    fn key(&self) -> i64 {
        self.timestamp_ms
    }
}

/// A memory-mapped index file of entries of type `E`.
#[derive(Debug)]
pub struct IndexFile<E: IndexEntry> {
    /// Where the index lives, for trimming and deleting.
    path: PathBuf,
    /// The open file while writable, so the map can be flushed and the file trimmed; `None`
    /// once sealed: a sealed index holds no file descriptor.
    file: Option<File>,
    /// The mapping of the whole preallocated file; `None` once sealed (entries then live in
    /// `sealed`), so a sealed index holds no writable map.
    map: Option<MmapMut>,
    /// Entries of a sealed index, read once when sealed or opened trimmed.
    sealed: Vec<E>,
    /// Valid entries at the front of the map.
    entries: usize,
    /// Capacity of the map in entries.
    capacity: usize,
}

impl<E: IndexEntry> IndexFile<E> {
    /// Creates (or re-creates, empty) a writable index with room for `capacity` entries.
    pub fn create(path: &Path, capacity: usize) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len((capacity.max(1) * E::BYTES) as u64)?;
        // SAFETY: the file is private to this broker's data directory and only this process
        // maps it; it is never truncated while mapped.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(IndexFile {
            path: path.to_path_buf(),
            file: Some(file),
            map: Some(map),
            sealed: Vec::new(),
            entries: 0,
            capacity: capacity.max(1),
        })
    }

    /// Writes a sealed index holding exactly `entries` (compaction builds them in memory).
    pub fn create_sealed(path: &Path, entries: &[E]) -> io::Result<Self> {
        let mut bytes = vec![0u8; entries.len() * E::BYTES];
        for (i, e) in entries.iter().enumerate() {
            e.encode(&mut bytes[i * E::BYTES..(i + 1) * E::BYTES]);
        }
        std::fs::write(path, &bytes)?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?
            .sync_all()?;
        Ok(IndexFile {
            path: path.to_path_buf(),
            file: None,
            map: None,
            sealed: entries.to_vec(),
            entries: entries.len(),
            capacity: entries.len(),
        })
    }

    /// Opens a trimmed (sealed) index. Returns `None` if the file is absent or its size is not
    /// a whole number of entries, meaning it must be rebuilt.
    pub fn open_sealed(path: &Path) -> io::Result<Option<Self>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len() as usize;
        if !len.is_multiple_of(E::BYTES) {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(len);
        io::Read::read_to_end(&mut &file, &mut bytes)?;
        let sealed: Vec<E> = bytes.chunks_exact(E::BYTES).map(E::decode).collect();
        Ok(Some(IndexFile {
            path: path.to_path_buf(),
            file: None,
            map: None,
            entries: sealed.len(),
            capacity: sealed.len(),
            sealed,
        }))
    }

    /// Turns a sealed index back into a writable one (the active segment after a clean start).
    pub fn reopen_writable(self, capacity: usize) -> io::Result<Self> {
        if self.map.is_some() {
            return Ok(self);
        }
        let entries = self.sealed.clone();
        let mut index = IndexFile::create(&self.path, capacity.max(entries.len() + 1))?;
        for e in entries {
            index.append(e);
        }
        Ok(index)
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn is_writable(&self) -> bool {
        self.map.is_some()
    }

    pub fn is_full(&self) -> bool {
        self.map.is_some() && self.entries >= self.capacity
    }

    pub fn get(&self, i: usize) -> E {
        debug_assert!(i < self.entries);
        match &self.map {
            Some(map) => E::decode(&map[i * E::BYTES..(i + 1) * E::BYTES]),
            None => self.sealed[i],
        }
    }

    pub fn last(&self) -> Option<E> {
        (self.entries > 0).then(|| self.get(self.entries - 1))
    }

    /// Appends an entry. The caller keeps entries ordered and checks [`IndexFile::is_full`].
    pub fn append(&mut self, entry: E) {
        if let Some(last) = self.last() {
            assert!(entry.key() >= last.key(), "index entries must stay ordered");
        }
        let map = self.map.as_mut().expect("append to a sealed index");
        assert!(self.entries < self.capacity, "append to a full index");
        let at = self.entries * E::BYTES;
        entry.encode(&mut map[at..at + E::BYTES]);
        self.entries += 1;
    }

    /// Index of the last entry whose key is `<= key`, if any.
    pub fn floor(&self, key: i64) -> Option<usize> {
        // partition_point: first entry with key > `key`.
        let (mut lo, mut hi) = (0usize, self.entries);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.get(mid).key() <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    /// Index of the last entry whose key is `< key`, if any.
    pub fn lower(&self, key: i64) -> Option<usize> {
        self.floor(key.saturating_sub(1))
    }

    /// Drops every entry from `keep` on.
    pub fn truncate_entries(&mut self, keep: usize) {
        self.entries = self.entries.min(keep);
        self.sealed.truncate(self.entries);
    }

    /// Checks that keys strictly increase, and that `in_bounds` accepts every entry.
    pub fn validate(&self, in_bounds: impl Fn(&E) -> bool) -> bool {
        let mut prev: Option<i64> = None;
        for i in 0..self.entries {
            let e = self.get(i);
            if prev.is_some_and(|p| e.key() <= p) || !in_bounds(&e) {
                return false;
            }
            prev = Some(e.key());
        }
        true
    }

    /// Flushes the map and trims the file to its entries; the index becomes read-only.
    pub fn seal(&mut self) -> io::Result<()> {
        match self.seal_later() {
            Some(pending) => pending.run(),
            None => Ok(()),
        }
    }

    /// Makes the index read-only now (its entries are copied out of the map) and returns the
    /// file work, flushing the map and trimming and syncing the file, to do outside the
    /// partition lock. `None` if it was sealed already.
    pub fn seal_later(&mut self) -> Option<PendingSeal> {
        let map = self.map.take()?;
        self.sealed = (0..self.entries)
            .map(|i| E::decode(&map[i * E::BYTES..(i + 1) * E::BYTES]))
            .collect();
        self.capacity = self.entries;
        Some(PendingSeal {
            map: Mutex::new(Some(map)),
            file: self.file.take().expect("a writable index has its file"),
            len: (self.entries * E::BYTES) as u64,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The file work of sealing an index: flush the map, trim the file to its entries, sync it.
/// Running it twice is harmless, so overlapping flushes may both run it.
#[derive(Debug)]
pub struct PendingSeal {
    /// Taken (and unmapped) by the first run.
    map: Mutex<Option<MmapMut>>,
    file: File,
    /// Bytes of the index's entries: the file is trimmed to this.
    len: u64,
}

impl PendingSeal {
    pub fn run(&self) -> io::Result<()> {
        let map = self.map.lock().expect("seal lock poisoned").take();
        if let Some(map) = map {
            map.flush()?;
        }
        self.file.set_len(self.len)?;
        self.file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rel: u32, pos: u32) -> OffsetEntry {
        OffsetEntry {
            relative_offset: rel,
            position: pos,
        }
    }

    #[test]
    fn floor_finds_the_entry_at_or_before_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = IndexFile::<OffsetEntry>::create(&dir.path().join("a.index"), 16).unwrap();
        assert_eq!(idx.floor(5), None);
        for (rel, pos) in [(0, 0), (10, 100), (20, 250)] {
            idx.append(entry(rel, pos));
        }
        assert_eq!(idx.floor(0), Some(0));
        assert_eq!(idx.floor(9), Some(0));
        assert_eq!(idx.floor(10), Some(1));
        assert_eq!(idx.floor(15), Some(1));
        assert_eq!(idx.floor(20), Some(2));
        assert_eq!(idx.floor(1_000), Some(2));
        assert_eq!(idx.lower(10), Some(0));
        assert_eq!(idx.lower(0), None);
    }

    #[test]
    fn sealed_index_reopens_with_the_same_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.timeindex");
        let mut idx = IndexFile::<TimeEntry>::create(&path, 1024).unwrap();
        for i in 0..10 {
            idx.append(TimeEntry {
                timestamp_ms: 1_000 + i,
                relative_offset: i as u32 * 3,
            });
        }
        idx.seal().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10 * 12);
        let reopened = IndexFile::<TimeEntry>::open_sealed(&path).unwrap().unwrap();
        assert_eq!(reopened.len(), 10);
        assert_eq!(reopened.get(4).relative_offset, 12);
        assert_eq!(reopened.floor(1_004), Some(4));
    }

    #[test]
    fn validate_rejects_entries_past_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = IndexFile::<OffsetEntry>::create(&dir.path().join("c.index"), 4).unwrap();
        idx.append(entry(0, 0));
        idx.append(entry(5, 4_000));
        assert!(idx.validate(|e| e.position < 5_000));
        assert!(!idx.validate(|e| e.position < 4_000));
        // A preallocated file read as sealed: zero entries after the real ones.
        idx.append(entry(5, 4_000));
        assert!(
            !idx.validate(|e| e.position < 5_000),
            "keys must strictly increase"
        );
        assert!(
            IndexFile::<OffsetEntry>::open_sealed(&dir.path().join("missing"))
                .unwrap()
                .is_none()
        );
    }
}
