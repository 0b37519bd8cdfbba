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

use memmap2::{Mmap, MmapMut, MmapOptions};

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
///
/// A writable index keeps its file and a writable map of the whole preallocated file. A sealed
/// index keeps neither a file descriptor nor its entries on the heap: its entries are mapped
/// read-only on demand ([`IndexFile::load`]) and unmapped again ([`IndexFile::unload`]) by
/// the partition's bounded set of loaded sealed segments.
#[derive(Debug)]
pub struct IndexFile<E: IndexEntry> {
    /// Where the index lives, for loading, trimming and deleting.
    path: PathBuf,
    /// The open file while writable, so the map can be flushed and the file trimmed; `None`
    /// once sealed: a sealed index holds no file descriptor.
    file: Option<File>,
    /// The mapping of the whole preallocated file; `None` once sealed.
    map: Option<MmapMut>,
    /// A sealed index's entries, mapped read-only while loaded.
    sealed: Option<Mmap>,
    /// Valid entries at the front of the file.
    entries: usize,
    /// Capacity of the map in entries.
    capacity: usize,
    /// The last entry, kept so a sealed index answers `last()` without being loaded.
    last: Option<E>,
    /// Bytes at the front of a writable index's file known to have disk blocks (see
    /// [`IndexFile::reserve`]); the rest of the preallocated file is sparse.
    reserved: usize,
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
            sealed: None,
            entries: 0,
            capacity: capacity.max(1),
            last: None,
            reserved: 0,
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
            sealed: None,
            entries: entries.len(),
            capacity: entries.len(),
            last: entries.last().copied(),
            reserved: 0,
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
        let entries = len / E::BYTES;
        let mut index = IndexFile {
            path: path.to_path_buf(),
            file: None,
            map: None,
            sealed: map_entries::<E>(&file, entries)?,
            entries,
            capacity: entries,
            last: None,
            reserved: 0,
        };
        index.last = (entries > 0).then(|| index.get(entries - 1));
        Ok(Some(index))
    }

    /// Maps a sealed index's entries (read-only) so that lookups can be answered. The file is
    /// closed again at once: a map needs no descriptor.
    pub fn load(&mut self) -> io::Result<()> {
        if self.map.is_none() && self.sealed.is_none() && self.entries > 0 {
            let file = File::open(&self.path)?;
            self.sealed = map_entries::<E>(&file, self.entries)?;
        }
        Ok(())
    }

    /// Unmaps a sealed index's entries; [`IndexFile::load`] maps them again.
    pub fn unload(&mut self) {
        self.sealed = None;
    }

    /// Turns a sealed index back into a writable one (the active segment after a clean start).
    pub fn reopen_writable(mut self, capacity: usize) -> io::Result<Self> {
        if self.map.is_some() {
            return Ok(self);
        }
        self.load()?;
        let entries: Vec<E> = (0..self.entries).map(|i| self.get(i)).collect();
        drop(self.sealed.take());
        let mut index = IndexFile::create(&self.path, capacity.max(entries.len() + 1))?;
        index.reserve(entries.len() + 1)?;
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

    /// Entry `i`. A sealed index must be loaded (a bug otherwise).
    pub fn get(&self, i: usize) -> E {
        debug_assert!(i < self.entries);
        let bytes: &[u8] = match (&self.map, &self.sealed) {
            (Some(map), _) => map,
            (None, Some(sealed)) => sealed,
            (None, None) => panic!("lookup in an unloaded sealed index"),
        };
        E::decode(&bytes[i * E::BYTES..(i + 1) * E::BYTES])
    }

    pub fn last(&self) -> Option<E> {
        self.last
    }

    /// Makes sure the disk has blocks for the first `entries` entries of a writable index
    /// (rounded up to `INDEX_RESERVE_BYTES`). The preallocated file is sparse: on a full disk
    /// a store into a page without blocks would kill the process with SIGBUS, where this
    /// fails the caller's append with ENOSPC before anything was written.
    pub fn reserve(&mut self, entries: usize) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let whole = self.capacity * E::BYTES;
        let want = (entries.min(self.capacity) * E::BYTES)
            .next_multiple_of(INDEX_RESERVE_BYTES)
            .min(whole);
        if want <= self.reserved {
            return Ok(());
        }
        // SAFETY: a plain system call on a descriptor this index owns.
        let failed = unsafe {
            libc::posix_fallocate(
                std::os::fd::AsRawFd::as_raw_fd(file),
                self.reserved as libc::off_t,
                (want - self.reserved) as libc::off_t,
            )
        };
        if failed != 0 {
            return Err(io::Error::from_raw_os_error(failed));
        }
        self.reserved = want;
        Ok(())
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
        self.last = Some(entry);
    }

    /// Keeps the first `entries` entries of a writable index (a truncated segment); the rest
    /// of the map is zeroed, as in a fresh file.
    pub fn truncate(&mut self, entries: usize) {
        let map = self.map.as_mut().expect("truncate a sealed index");
        if entries >= self.entries {
            return;
        }
        map[entries * E::BYTES..self.entries * E::BYTES].fill(0);
        self.entries = entries;
        self.last = (entries > 0).then(|| self.get(entries - 1));
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
        self.capacity = self.entries;
        Some(PendingSeal {
            state: Mutex::new(SealState {
                map: Some(map),
                done: false,
            }),
            file: self.file.take().expect("a writable index has its file"),
            len: (self.entries * E::BYTES) as u64,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How much of an index file [`IndexFile::reserve`] gives blocks at a time.
const INDEX_RESERVE_BYTES: usize = 64 * 1024;

/// Maps the first `entries` entries of an index file read-only (`None` for an empty index:
/// there is nothing to map).
fn map_entries<E: IndexEntry>(file: &File, entries: usize) -> io::Result<Option<Mmap>> {
    if entries == 0 {
        return Ok(None);
    }
    // SAFETY: the file is private to this broker's data directory. It is only ever trimmed
    // down to its entries, never below, so the mapped bytes stay backed; a file replaced by
    // compaction or deleted by retention is unlinked, which leaves the map valid.
    let map = unsafe { MmapOptions::new().len(entries * E::BYTES).map(file)? };
    Ok(Some(map))
}

/// The file work of sealing an index: flush the map, trim the file to its entries, sync it.
/// Done once: overlapping flushes may both hold it, and the first run does it, under the
/// seal's lock; a later run (a flush plan taken before a truncation that reopened the index
/// for writing, the same file, and ran the seal itself first) does nothing, so it never
/// trims an index mapped for writing again.
#[derive(Debug)]
pub struct PendingSeal {
    state: Mutex<SealState>,
    file: File,
    /// Bytes of the index's entries: the file is trimmed to this.
    len: u64,
}

#[derive(Debug)]
struct SealState {
    /// Taken (and unmapped) by the first run.
    map: Option<MmapMut>,
    /// The file was trimmed and synced.
    done: bool,
}

impl PendingSeal {
    pub fn run(&self) -> io::Result<()> {
        let mut state = self.state.lock().expect("seal lock poisoned");
        if state.done {
            return Ok(());
        }
        if let Some(map) = state.map.take() {
            map.flush()?;
        }
        self.file.set_len(self.len)?;
        self.file.sync_all()?;
        state.done = true;
        Ok(())
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
