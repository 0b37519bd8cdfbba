//! Record batch encoding: the unit that is written, checksummed, replicated and read.
//!
//! A batch is a fixed-width little-endian header followed by length-prefixed records:
//!
//! ```text
//! offset  size  field
//!  0      8     base_offset        u64   offset of the first record
//!  8      4     batch_length       u32   bytes after this field (header rest + records)
//! 12      4     leader_epoch       u32   epoch of the leader that appended the batch
//! 16      1     magic              u8    format version, currently 1
//! 17      4     crc                u32   CRC-32 (IEEE) of every other byte of the batch
//! 21      2     attributes         u16   reserved (compression, transactions)
//! 23      4     last_offset_delta  u32   last record's offset minus base_offset
//! 27      8     first_timestamp_ms i64
//! 35      8     max_timestamp_ms   i64
//! 43      8     producer_id        i64   -1 when not idempotent
//! 51      2     producer_epoch     i16
//! 53      4     base_sequence      i32
//! 57      4     record_count       u32
//! 61            records...
//! ```
//!
//! Each record: `length u32` (bytes after it), `attributes u8`, `offset_delta u32`,
//! `timestamp_delta_ms i64`, `key_length i32` (-1 = null) and key, `value_length i32`
//! (-1 = null, a tombstone) and value, `header_count u16`, then per header
//! `name_length u16`, name, `value_length u32`, value.
//!
//! Offset deltas are explicit (not implied by position) so that compaction can drop records
//! from a batch without renumbering the ones it keeps.
//!
//! The CRC covers the header fields before it too: the log stamps the base offset and the
//! leader epoch and computes the CRC in the same step ([`stamp_batch`]), so a flipped bit in the
//! base offset is caught like any other instead of silently renumbering the batch's records.
//!
//! Failure policy: every decode is bounded. A length read from disk or the network is checked
//! against the bytes that are actually there before anything is sliced or allocated; a
//! malformed batch is a [`BatchError`], never a panic.

use std::fmt;

/// Size of the fixed batch header in bytes.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes of the header that precede the `batch_length`-counted part.
pub const BATCH_LOG_OVERHEAD_BYTES: usize = 12;
/// Current batch format version.
pub const MAGIC: u8 = 1;
/// Where the CRC field starts and ends; the CRC covers every byte outside it.
const CRC_FIELD_OFFSET: usize = 17;
const CRC_FIELD_END: usize = 21;
/// Fixed bytes of one record before its key.
pub const RECORD_FIXED_BYTES: usize = 4 + 1 + 4 + 8 + 4 + 4 + 2;

/// Record attribute bit: the value is JSON text (otherwise opaque bytes).
pub const RECORD_VALUE_JSON: u8 = 0b0000_0001;
/// Record attribute bit: the key is UTF-8 text (otherwise opaque bytes).
pub const RECORD_KEY_UTF8: u8 = 0b0000_0010;

/// Why a batch could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes are present than the batch claims: a torn write or a short read.
    Truncated,
    /// The checksum does not match the contents.
    CrcMismatch { expected: u32, actual: u32 },
    /// A field holds a value no encoder writes.
    Malformed(&'static str),
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Truncated => write!(f, "batch is truncated"),
            BatchError::CrcMismatch { expected, actual } => {
                write!(
                    f,
                    "batch CRC mismatch: stored {expected:#010x}, computed {actual:#010x}"
                )
            }
            BatchError::Malformed(what) => write!(f, "malformed batch: {what}"),
        }
    }
}

impl std::error::Error for BatchError {}

/// Producer identity carried by a batch, kept for idempotent producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerInfo {
    /// A batch written by a producer that did not ask for idempotence.
    pub const NONE: ProducerInfo = ProducerInfo {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// One record to be appended, borrowing its bytes from the request.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub key_is_utf8: bool,
    pub value: Option<&'a [u8]>,
    pub value_is_json: bool,
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl RecordRef<'_> {
    /// Bytes this record occupies inside a batch.
    pub fn encoded_len(&self) -> usize {
        RECORD_FIXED_BYTES
            + self.key.map_or(0, <[u8]>::len)
            + self.value.map_or(0, <[u8]>::len)
            + self
                .headers
                .iter()
                .map(|(name, value)| 2 + name.len() + 4 + value.len())
                .sum::<usize>()
    }
}

/// Builds one batch in a single buffer; the base offset and epoch are stamped on append.
///
/// Records are written straight into the buffer, so encoding a batch costs one allocation
/// however many records it holds.
#[derive(Debug)]
pub struct BatchBuilder {
    /// The encoded batch, header first; the header is filled in by [`BatchBuilder::finish`].
    buf: Vec<u8>,
    /// Records added so far.
    record_count: u32,
    /// Timestamp of the first record; deltas are relative to it.
    first_timestamp_ms: i64,
    /// Largest timestamp seen, for the time index and retention.
    max_timestamp_ms: i64,
}

impl BatchBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        Self::reusing(Vec::new(), bytes)
    }

    /// Like [`BatchBuilder::with_capacity`], but builds in `buf` (cleared first), so a caller
    /// that appends batch after batch can keep one buffer rather than fault in fresh pages for
    /// every batch.
    pub fn reusing(mut buf: Vec<u8>, bytes: usize) -> Self {
        buf.clear();
        buf.reserve(BATCH_HEADER_BYTES + bytes);
        buf.resize(BATCH_HEADER_BYTES, 0);
        BatchBuilder {
            buf,
            record_count: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: i64::MIN,
        }
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Bytes the batch will take when finished.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    pub fn push(&mut self, record: &RecordRef<'_>) {
        let offset_delta = self.record_count;
        self.push_with_offset_delta(record, offset_delta);
    }

    /// Adds a record at an explicit offset delta (compaction keeps the original offsets).
    pub fn push_with_offset_delta(&mut self, record: &RecordRef<'_>, offset_delta: u32) {
        if self.record_count == 0 {
            self.first_timestamp_ms = record.timestamp_ms;
        }
        let length = (record.encoded_len() - 4) as u32;
        let mut attributes = 0u8;
        if record.value_is_json {
            attributes |= RECORD_VALUE_JSON;
        }
        if record.key_is_utf8 {
            attributes |= RECORD_KEY_UTF8;
        }
        let buf = &mut self.buf;
        buf.extend_from_slice(&length.to_le_bytes());
        buf.push(attributes);
        buf.extend_from_slice(&offset_delta.to_le_bytes());
        let delta = record.timestamp_ms.wrapping_sub(self.first_timestamp_ms);
        buf.extend_from_slice(&delta.to_le_bytes());
        put_optional_bytes(buf, record.key);
        put_optional_bytes(buf, record.value);
        buf.extend_from_slice(&(record.headers.len() as u16).to_le_bytes());
        for (name, value) in record.headers {
            buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
            buf.extend_from_slice(value);
        }
        self.record_count += 1;
        self.max_timestamp_ms = self.max_timestamp_ms.max(record.timestamp_ms);
    }

    /// Fills in the header. The base offset and leader epoch are placeholders until the log
    /// stamps them with [`stamp_batch`]; `last_offset_delta` is `record_count - 1` unless
    /// records were pushed with explicit deltas.
    pub fn finish(mut self, producer: ProducerInfo, last_offset_delta: Option<u32>) -> Vec<u8> {
        assert!(self.record_count > 0, "an empty batch is never written");
        let last_offset_delta = last_offset_delta.unwrap_or(self.record_count - 1);
        let batch_length = (self.buf.len() - BATCH_LOG_OVERHEAD_BYTES) as u32;
        let h = &mut self.buf[..BATCH_HEADER_BYTES];
        h[8..12].copy_from_slice(&batch_length.to_le_bytes());
        h[16] = MAGIC;
        h[21..23].copy_from_slice(&0u16.to_le_bytes());
        h[23..27].copy_from_slice(&last_offset_delta.to_le_bytes());
        h[27..35].copy_from_slice(&self.first_timestamp_ms.to_le_bytes());
        h[35..43].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        h[43..51].copy_from_slice(&producer.producer_id.to_le_bytes());
        h[51..53].copy_from_slice(&producer.producer_epoch.to_le_bytes());
        h[53..57].copy_from_slice(&producer.base_sequence.to_le_bytes());
        h[57..61].copy_from_slice(&self.record_count.to_le_bytes());
        self.buf
    }
}

fn put_optional_bytes(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            buf.extend_from_slice(&(b.len() as i32).to_le_bytes());
            buf.extend_from_slice(b);
        }
        None => buf.extend_from_slice(&(-1i32).to_le_bytes()),
    }
}

/// Writes the base offset and leader epoch into a finished batch and seals it with its CRC.
pub fn stamp_batch(batch: &mut [u8], base_offset: u64, leader_epoch: u32) {
    batch[0..8].copy_from_slice(&base_offset.to_le_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_le_bytes());
    let crc = batch_crc(batch);
    batch[CRC_FIELD_OFFSET..CRC_FIELD_END].copy_from_slice(&crc.to_le_bytes());
}

/// CRC-32 of a whole batch except its CRC field.
fn batch_crc(batch: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&batch[..CRC_FIELD_OFFSET]);
    hasher.update(&batch[CRC_FIELD_END..]);
    hasher.finalize()
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub batch_length: u32,
    pub leader_epoch: u32,
    pub crc: u32,
    pub attributes: u16,
    pub last_offset_delta: u32,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer: ProducerInfo,
    pub record_count: u32,
}

impl BatchHeader {
    /// Total bytes the batch occupies in the log.
    pub fn total_len(&self) -> usize {
        BATCH_LOG_OVERHEAD_BYTES + self.batch_length as usize
    }

    /// Offset one past the batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta) + 1
    }

    /// Parses the header from the start of `bytes`, checking only the fixed fields.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::Truncated);
        }
        let header = BatchHeader {
            base_offset: read_u64(bytes, 0),
            batch_length: read_u32(bytes, 8),
            leader_epoch: read_u32(bytes, 12),
            crc: read_u32(bytes, 17),
            attributes: u16::from_le_bytes([bytes[21], bytes[22]]),
            last_offset_delta: read_u32(bytes, 23),
            first_timestamp_ms: read_u64(bytes, 27) as i64,
            max_timestamp_ms: read_u64(bytes, 35) as i64,
            producer: ProducerInfo {
                producer_id: read_u64(bytes, 43) as i64,
                producer_epoch: i16::from_le_bytes([bytes[51], bytes[52]]),
                base_sequence: read_u32(bytes, 53) as i32,
            },
            record_count: read_u32(bytes, 57),
        };
        if bytes[16] != MAGIC {
            return Err(BatchError::Malformed("unknown magic"));
        }
        if (header.batch_length as usize) < BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD_BYTES {
            return Err(BatchError::Malformed("batch length below header size"));
        }
        if header.record_count == 0 || header.record_count > header.last_offset_delta + 1 {
            return Err(BatchError::Malformed(
                "record count does not fit the offset range",
            ));
        }
        Ok(header)
    }
}

/// A whole batch, checked, borrowed from a buffer.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    pub header: BatchHeader,
    /// The batch's bytes, header included.
    pub bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Decodes the batch at the start of `bytes` and verifies its CRC.
    pub fn parse(bytes: &'a [u8]) -> Result<BatchView<'a>, BatchError> {
        let header = BatchHeader::parse(bytes)?;
        let total = header.total_len();
        if bytes.len() < total {
            return Err(BatchError::Truncated);
        }
        let bytes = &bytes[..total];
        let actual = batch_crc(bytes);
        if actual != header.crc {
            return Err(BatchError::CrcMismatch {
                expected: header.crc,
                actual,
            });
        }
        Ok(BatchView { header, bytes })
    }

    /// Iterates the records; every length is checked against the batch's bytes.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter {
            rest: &self.bytes[BATCH_HEADER_BYTES..],
            remaining: self.header.record_count,
            base_offset: self.header.base_offset,
            first_timestamp_ms: self.header.first_timestamp_ms,
        }
    }
}

/// A decoded record, borrowing from the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub key_is_utf8: bool,
    pub value: Option<&'a [u8]>,
    pub value_is_json: bool,
    /// Raw header block: `count u16` then name/value pairs; decode with [`HeaderIter`].
    pub headers: HeaderIter<'a>,
}

/// Iterator over a batch's records.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    remaining: u32,
    base_offset: u64,
    first_timestamp_ms: i64,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let result = self.decode_one();
        if result.is_err() {
            self.remaining = 0;
        }
        Some(result)
    }
}

impl<'a> RecordIter<'a> {
    fn decode_one(&mut self) -> Result<RecordView<'a>, BatchError> {
        let mut cur = Cursor { bytes: self.rest };
        let length = cur.u32()? as usize;
        let mut body = Cursor {
            bytes: cur.take(length)?,
        };
        self.rest = cur.bytes;
        let attributes = body.u8()?;
        let offset_delta = body.u32()?;
        let timestamp_delta = body.u64()? as i64;
        let key = body.optional_bytes()?;
        let value = body.optional_bytes()?;
        let header_count = body.u16()?;
        let header_block = body.bytes;
        // Validate the header block now so iteration later cannot fail.
        let mut check = HeaderIter {
            rest: header_block,
            remaining: header_count,
        };
        for item in check.by_ref() {
            item?;
        }
        if !check.rest.is_empty() {
            return Err(BatchError::Malformed("trailing bytes after record headers"));
        }
        Ok(RecordView {
            offset: self.base_offset + u64::from(offset_delta),
            timestamp_ms: self.first_timestamp_ms.wrapping_add(timestamp_delta),
            key,
            key_is_utf8: attributes & RECORD_KEY_UTF8 != 0,
            value,
            value_is_json: attributes & RECORD_VALUE_JSON != 0,
            headers: HeaderIter {
                rest: header_block,
                remaining: header_count,
            },
        })
    }
}

/// Iterator over a record's headers as `(name, value)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
    remaining: u16,
}

impl<'a> HeaderIter<'a> {
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let mut cur = Cursor { bytes: self.rest };
        let item = (|| {
            let name_len = cur.u16()? as usize;
            let name = cur.take(name_len)?;
            let value_len = cur.u32()? as usize;
            let value = cur.take(value_len)?;
            Ok((name, value))
        })();
        self.rest = cur.bytes;
        if item.is_err() {
            self.remaining = 0;
        }
        Some(item)
    }
}

/// Bounded reader over a byte slice: every read checks the remaining length first.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BatchError> {
        if self.bytes.len() < n {
            return Err(BatchError::Malformed(
                "length field past the end of the batch",
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, BatchError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, BatchError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, BatchError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, BatchError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn optional_bytes(&mut self) -> Result<Option<&'a [u8]>, BatchError> {
        let len = self.u32()? as i32;
        match len {
            -1 => Ok(None),
            n if n < 0 => Err(BatchError::Malformed("negative length")),
            n => Ok(Some(self.take(n as usize)?)),
        }
    }
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(key: Option<&'a [u8]>, value: &'a [u8], ts: i64) -> RecordRef<'a> {
        RecordRef {
            timestamp_ms: ts,
            key,
            key_is_utf8: true,
            value: Some(value),
            value_is_json: true,
            headers: &[],
        }
    }

    fn build(records: &[RecordRef<'_>], base: u64, epoch: u32) -> Vec<u8> {
        let mut b = BatchBuilder::with_capacity(128);
        for r in records {
            b.push(r);
        }
        let mut bytes = b.finish(ProducerInfo::NONE, None);
        stamp_batch(&mut bytes, base, epoch);
        bytes
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let headers: [(&str, &[u8]); 2] = [("trace", b"abc"), ("empty", b"")];
        let with_headers = RecordRef {
            timestamp_ms: 1_700_000_000_500,
            key: None,
            key_is_utf8: false,
            value: None,
            value_is_json: false,
            headers: &headers,
        };
        let records = [
            record(Some(b"k1"), b"{\"a\":1}", 1_700_000_000_000),
            with_headers,
            record(Some(b""), b"\"x\"", 1_699_999_999_000),
        ];
        let bytes = build(&records, 42, 7);
        let view = BatchView::parse(&bytes).unwrap();
        assert_eq!(view.header.base_offset, 42);
        assert_eq!(view.header.leader_epoch, 7);
        assert_eq!(view.header.record_count, 3);
        assert_eq!(view.header.next_offset(), 45);
        assert_eq!(view.header.max_timestamp_ms, 1_700_000_000_500);
        let decoded: Vec<_> = view.records().map(Result::unwrap).collect();
        assert_eq!(decoded[0].offset, 42);
        assert_eq!(decoded[0].key, Some(&b"k1"[..]));
        assert_eq!(decoded[0].value, Some(&b"{\"a\":1}"[..]));
        assert_eq!(decoded[1].offset, 43);
        assert_eq!(decoded[1].key, None);
        assert_eq!(decoded[1].value, None);
        assert_eq!(decoded[1].timestamp_ms, 1_700_000_000_500);
        let hs: Vec<_> = decoded[1].headers.clone().map(Result::unwrap).collect();
        assert_eq!(
            hs,
            vec![(&b"trace"[..], &b"abc"[..]), (&b"empty"[..], &b""[..])]
        );
        assert_eq!(decoded[2].timestamp_ms, 1_699_999_999_000);
        assert_eq!(decoded[2].key, Some(&b""[..]));
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        // The base offset and leader epoch (before the CRC field) included: a flip there must
        // not renumber records unnoticed.
        let bytes = build(&[record(Some(b"k"), b"1", 5)], 1_000, 3);
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(
                BatchView::parse(&damaged).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn short_buffers_are_truncated_not_panics() {
        let bytes = build(&[record(None, b"12345", 5)], 0, 0);
        for len in 0..bytes.len() {
            assert!(BatchView::parse(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn lying_record_length_is_malformed() {
        let mut bytes = build(&[record(None, b"12345", 5)], 0, 0);
        // Claim a record far longer than the batch, then re-seal so only the bound can catch it.
        bytes[BATCH_HEADER_BYTES..BATCH_HEADER_BYTES + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        stamp_batch(&mut bytes, 0, 0);
        let view = BatchView::parse(&bytes).unwrap();
        assert!(view.records().next().unwrap().is_err());
    }
}
