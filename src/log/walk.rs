//! Walking batches: [`BufferBatches`] over the batches in a buffer, [`FileBatches`] over a
//! range of a file. Everything that reads batches back uses one of them: recovery, a
//! consumer's fetch, finding an offset by time, skipping to an offset, and compaction.
//!
//! One policy at a bad batch: a walk yields the good batches before it, then reports the
//! damage once (and where it starts) and ends. What to do about it is the caller's: recovery
//! truncates the log there, compaction leaves the segment as it is and reports an error, a
//! fetch answers `corrupt_log`. A bad batch is one whose header or CRC does not check, or whose
//! offsets go backwards (it starts below the previous batch's end, or below `min_base_offset`):
//! compaction leaves gaps between batches, never overlaps.
//!
//! The two walks differ in one point, which follows from what they read. A file range is
//! expected to hold whole batches (a segment up to its size, or a whole file on recovery), so a
//! batch that runs past its end is damage (a torn write). A buffer may have been cut anywhere
//! by a read that stopped at `max_bytes`, so a batch that runs past its end ends the walk
//! quietly; [`BufferBatches::rest`] is then not empty and the next read starts there.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::batch::{BATCH_HEADER_BYTES, BatchError, BatchHeader, BatchView};

/// The batches in a buffer, in order. Yields `Err` once at the first bad batch, then ends.
#[derive(Debug, Clone)]
pub struct BufferBatches<'a> {
    /// Bytes not walked yet.
    rest: &'a [u8],
    /// The next batch must start at or after this offset.
    expected: u64,
    /// Set after damage was reported.
    done: bool,
}

impl<'a> BufferBatches<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BufferBatches {
            rest: bytes,
            expected: 0,
            done: false,
        }
    }

    /// The bytes after the last batch yielded: empty when the walk reached the buffer's end,
    /// a cut batch when the read stopped inside one, the bad batch after damage.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for BufferBatches<'a> {
    type Item = Result<BatchView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.is_empty() {
            return None;
        }
        let checked = BatchView::parse(self.rest).and_then(|view| {
            if view.header.base_offset < self.expected {
                return Err(BatchError::Malformed("offsets go backwards"));
            }
            Ok(view)
        });
        match checked {
            Ok(view) => {
                self.rest = &self.rest[view.bytes.len()..];
                self.expected = view.header.next_offset();
                Some(Ok(view))
            }
            Err(BatchError::Truncated) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Why a walk over a file stopped early.
#[derive(Debug)]
pub enum WalkError {
    /// The file could not be read.
    Io(io::Error),
    /// The bytes at `position` are not a good batch.
    Damaged { position: u64, error: BatchError },
}

impl From<WalkError> for io::Error {
    fn from(e: WalkError) -> Self {
        match e {
            WalkError::Io(e) => e,
            WalkError::Damaged { position, error } => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad batch at byte {position}: {error}"),
            ),
        }
    }
}

/// The batches in `[from, end)` of a file, in order. Reports damage once, then ends.
///
/// Not an `Iterator`: a batch borrows the walk's read buffer. [`FileBatches::next_header`]
/// with [`FileBatches::skip`] walks headers only (no batch body is read);
/// [`FileBatches::next_batch`] reads and checks whole batches.
#[derive(Debug)]
pub struct FileBatches<'f> {
    file: &'f File,
    /// Start of the next batch: the end of the last batch walked.
    position: u64,
    /// Where the range ends; a batch must end at or before it.
    end: u64,
    /// The next batch must start at or after this offset.
    expected: u64,
    /// The header of the batch at `position`, read but not walked past yet.
    pending: Option<BatchHeader>,
    /// Holds the batch returned by `next_batch`; reused from batch to batch.
    buf: Vec<u8>,
    /// Set after damage was reported.
    done: bool,
}

impl<'f> FileBatches<'f> {
    pub fn new(file: &'f File, from: u64, end: u64, min_base_offset: u64) -> Self {
        FileBatches {
            file,
            position: from,
            end,
            expected: min_base_offset,
            pending: None,
            buf: Vec::new(),
            done: false,
        }
    }

    /// Where the next batch starts: the end of the last good batch walked.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Reads and checks the header of the next batch (not its CRC: that needs the body).
    /// The walk stays at that batch until [`FileBatches::skip`] or [`FileBatches::next_batch`].
    pub fn next_header(&mut self) -> Result<Option<BatchHeader>, WalkError> {
        if let Some(header) = self.pending {
            return Ok(Some(header));
        }
        if self.done || self.position >= self.end {
            return Ok(None);
        }
        let mut bytes = [0u8; BATCH_HEADER_BYTES];
        let header = if self.end - self.position < BATCH_HEADER_BYTES as u64 {
            Err(BatchError::Truncated)
        } else {
            self.file
                .read_exact_at(&mut bytes, self.position)
                .map_err(WalkError::Io)?;
            BatchHeader::parse(&bytes)
        };
        let header = header.and_then(|h| {
            if self.position + h.total_len() as u64 > self.end {
                Err(BatchError::Truncated)
            } else if h.base_offset < self.expected {
                Err(BatchError::Malformed("offsets go backwards"))
            } else {
                Ok(h)
            }
        });
        match header {
            Ok(h) => {
                self.pending = Some(h);
                Ok(Some(h))
            }
            Err(error) => Err(self.damaged(error)),
        }
    }

    /// Moves past the batch whose header [`FileBatches::next_header`] returned, unread.
    pub fn skip(&mut self) {
        if let Some(h) = self.pending.take() {
            self.position += h.total_len() as u64;
            self.expected = h.next_offset();
        }
    }

    /// The next batch, read whole with its CRC checked, and the position it starts at.
    pub fn next_batch(&mut self) -> Result<Option<(u64, BatchView<'_>)>, WalkError> {
        let Some(header) = self.next_header()? else {
            return Ok(None);
        };
        let at = self.position;
        self.buf.resize(header.total_len(), 0);
        self.file
            .read_exact_at(&mut self.buf, at)
            .map_err(WalkError::Io)?;
        if let Err(error) = BatchView::parse(&self.buf) {
            return Err(self.damaged(error));
        }
        self.skip();
        let view = BatchView::parse(&self.buf).expect("checked above");
        Ok(Some((at, view)))
    }

    fn damaged(&mut self, error: BatchError) -> WalkError {
        self.done = true;
        self.pending = None;
        WalkError::Damaged {
            position: self.position,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{BatchBuilder, ProducerInfo, RecordRef, stamp_batch};

    fn batch(base: u64, records: u32) -> Vec<u8> {
        let mut b = BatchBuilder::with_capacity(64);
        for _ in 0..records {
            b.push(&RecordRef {
                timestamp_ms: 1,
                key: None,
                key_is_utf8: false,
                value: Some(b"v"),
                value_is_json: false,
                headers: &[],
            });
        }
        let mut bytes = b.finish(ProducerInfo::NONE, None);
        stamp_batch(&mut bytes, base, 0);
        bytes
    }

    /// Three good batches at offsets 0, 2, 4, then whatever `tail` is.
    fn log_with(tail: &[u8]) -> Vec<u8> {
        let mut bytes = [batch(0, 2), batch(2, 2), batch(4, 1)].concat();
        bytes.extend_from_slice(tail);
        bytes
    }

    fn walk_file(bytes: &[u8]) -> (Vec<u64>, Option<(u64, BatchError)>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walk.log");
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        let mut walk = FileBatches::new(&file, 0, bytes.len() as u64, 0);
        let mut bases = Vec::new();
        loop {
            match walk.next_batch() {
                Ok(Some((_, view))) => bases.push(view.header.base_offset),
                Ok(None) => return (bases, None, walk.position()),
                Err(WalkError::Damaged { position, error }) => {
                    assert!(walk.next_batch().unwrap().is_none(), "damage ends the walk");
                    return (bases, Some((position, error)), walk.position());
                }
                Err(WalkError::Io(e)) => panic!("{e}"),
            }
        }
    }

    fn walk_buffer(bytes: &[u8]) -> (Vec<u64>, Option<BatchError>, usize) {
        let mut walk = BufferBatches::new(bytes);
        let mut bases = Vec::new();
        let mut damage = None;
        for b in walk.by_ref() {
            match b {
                Ok(view) => bases.push(view.header.base_offset),
                Err(e) => damage = Some(e),
            }
        }
        (bases, damage, walk.rest().len())
    }

    #[test]
    fn both_walks_yield_every_batch_of_a_good_log() {
        let bytes = log_with(&[]);
        assert_eq!(walk_file(&bytes), (vec![0, 2, 4], None, bytes.len() as u64));
        assert_eq!(walk_buffer(&bytes), (vec![0, 2, 4], None, 0));
    }

    #[test]
    fn a_cut_batch_is_damage_in_a_file_and_the_end_of_a_read_in_a_buffer() {
        let good = log_with(&[]).len();
        let bytes = log_with(&batch(5, 3)[..40]);
        let (bases, damage, position) = walk_file(&bytes);
        assert_eq!(bases, vec![0, 2, 4]);
        assert_eq!(damage, Some((good as u64, BatchError::Truncated)));
        assert_eq!(position, good as u64);
        assert_eq!(walk_buffer(&bytes), (vec![0, 2, 4], None, 40));
    }

    #[test]
    fn a_bad_crc_or_offsets_going_back_is_damage_in_both_walks() {
        let good = log_with(&[]).len();
        let mut flipped = batch(5, 1);
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        for tail in [flipped, batch(3, 1)] {
            let bytes = log_with(&[tail.clone(), batch(9, 1)].concat());
            let (bases, damage, position) = walk_file(&bytes);
            assert_eq!(bases, vec![0, 2, 4]);
            assert_eq!(damage.map(|d| d.0), Some(good as u64));
            assert_eq!(position, good as u64);
            let (bases, damage, rest) = walk_buffer(&bytes);
            assert_eq!(bases, vec![0, 2, 4]);
            assert!(damage.is_some());
            assert_eq!(rest, bytes.len() - good);
        }
    }

    #[test]
    fn headers_can_be_walked_without_reading_bodies() {
        let bytes = log_with(&[]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.log");
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let mut walk = FileBatches::new(&file, 0, bytes.len() as u64, 0);
        while let Some(h) = walk.next_header().unwrap() {
            if h.next_offset() > 3 {
                break;
            }
            walk.skip();
        }
        let (at, view) = walk.next_batch().unwrap().unwrap();
        assert_eq!((at, view.header.base_offset), (batch(0, 2).len() as u64, 2));
    }
}
