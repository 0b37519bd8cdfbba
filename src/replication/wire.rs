//! The replica fetch protocol on the wire (`POST /internal/v1/replica/fetch`).
//!
//! A follower asks for many partitions in one long-poll. The request is small JSON. The
//! answer is binary so batches travel exactly as the leader stored them (CRC and all, never
//! re-encoded), and the follower appends them as they are:
//!
//! ```text
//! "TLRF" version:u8 partitions:u32le
//! per partition: header_len:u32le header(JSON PartitionAnswer) records_len:u32le records
//! ```
//!
//! Offsets in the JSON headers are plain numbers (`Offset` is serde-transparent): the
//! format is the same as when they were `u64`.
//!
//! Decoding checks every length against what is left and against its maximum before it
//! borrows or allocates anything, so a damaged or hostile answer is an error, never a panic
//! or a large allocation. The records are borrowed from the answer's buffer.

use serde::{Deserialize, Serialize};

use crate::log::Offset;
use crate::metadata::{BrokerEpoch, LeaderEpoch, NodeId, PartitionId};

const MAGIC: &[u8; 4] = b"TLRF";
const VERSION: u8 = 1;
/// Most partitions one answer may carry.
pub const FETCH_PARTITIONS_MAX: u32 = 100_000;
/// Largest per-partition header (JSON).
const HEADER_BYTES_MAX: u32 = 64 * 1024;

/// The follower's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    pub replica: NodeId,
    /// The follower's current incarnation: a fetch from an older one is refused.
    pub broker_epoch: BrokerEpoch,
    /// Answer at once when any partition has data or the leader wants a sync; otherwise
    /// wait this long.
    pub max_wait_ms: u64,
    /// Most record bytes over all partitions (one batch may exceed it, so a large batch
    /// cannot stall replication).
    pub max_bytes: u64,
    pub partitions: Vec<PartitionFetch>,
}

/// One partition of a follower's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionFetch {
    pub topic: String,
    pub partition: PartitionId,
    /// The leader epoch the follower believes current: older is fenced, newer is unknown
    /// to this leader yet (retry).
    pub leader_epoch: LeaderEpoch,
    /// The follower's log end: the first offset it wants.
    pub fetch_offset: Offset,
    /// Epoch of the follower's last batch, checked against the leader's epoch cache
    /// (None: the follower's log is empty).
    pub last_fetched_epoch: Option<u32>,
    /// Everything before this offset is fsynced on the follower: what counts for the high
    /// watermark.
    pub flushed_offset: Offset,
}

/// Why a partition of a fetch was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchError {
    /// The follower's leader epoch is older than the leader's.
    FencedLeaderEpoch,
    /// The follower's leader epoch is newer: this broker has not seen the change yet.
    UnknownLeaderEpoch,
    NotLeader,
    UnknownTopicOrPartition,
    /// Below the log start: the follower restarts from `log_start_offset`.
    OffsetOutOfRange,
    /// The fetch came from a broker that is not a replica, or from an old incarnation.
    NotAFollower,
    StorageUnavailable,
}

/// Where a follower's log leaves the leader's: it truncates to `end_offset` and fetches
/// again (KIP-279).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diverging {
    pub epoch: u32,
    pub end_offset: Offset,
}

/// The leader's answer for one partition; its batches follow it on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionAnswer {
    pub topic: String,
    pub partition: PartitionId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<FetchError>,
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverging: Option<Diverging>,
    /// `acks=all` producers wait on this follower, or it waits outside the ISR for its own
    /// fsync to join: fsync everything it holds now, and fetch again at once.
    #[serde(default)]
    pub sync_now: bool,
}

/// Why an answer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    BadMagic,
    UnknownVersion(u8),
    Truncated,
    TooManyPartitions(u32),
    HeaderTooLarge(u32),
    BadHeader(String),
    TrailingBytes,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::BadMagic => write!(f, "not a replica fetch answer"),
            WireError::UnknownVersion(v) => write!(f, "unknown replica fetch version {v}"),
            WireError::Truncated => write!(f, "replica fetch answer cut short"),
            WireError::TooManyPartitions(n) => write!(f, "{n} partitions in one answer"),
            WireError::HeaderTooLarge(n) => write!(f, "a partition header of {n} bytes"),
            WireError::BadHeader(e) => write!(f, "bad partition header: {e}"),
            WireError::TrailingBytes => write!(f, "bytes after the last partition"),
        }
    }
}

impl std::error::Error for WireError {}

/// Writes an answer: each partition's header, then its batches as stored.
pub fn encode_answer<'a>(
    parts: impl ExactSizeIterator<Item = (&'a PartitionAnswer, &'a [u8])>,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    for (answer, records) in parts {
        let header = serde_json::to_vec(answer).expect("a partition answer always serializes");
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&(records.len() as u32).to_le_bytes());
        out.extend_from_slice(records);
    }
    out
}

/// Reads an answer, borrowing each partition's batches from `bytes`.
pub fn decode_answer(bytes: &[u8]) -> Result<Vec<(PartitionAnswer, &[u8])>, WireError> {
    let mut r = Reader(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let count = r.u32()?;
    if count > FETCH_PARTITIONS_MAX {
        return Err(WireError::TooManyPartitions(count));
    }
    // Each partition takes at least its two length fields: a count beyond that is a lie,
    // found before anything is allocated for it.
    if count as usize > r.0.len() / 8 {
        return Err(WireError::Truncated);
    }
    let mut parts = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let header_len = r.u32()?;
        if header_len > HEADER_BYTES_MAX {
            return Err(WireError::HeaderTooLarge(header_len));
        }
        let header = r.take(header_len as usize)?;
        let answer: PartitionAnswer =
            serde_json::from_slice(header).map_err(|e| WireError::BadHeader(e.to_string()))?;
        let records_len = r.u32()?;
        parts.push((answer, r.take(records_len as usize)?));
    }
    if !r.0.is_empty() {
        return Err(WireError::TrailingBytes);
    }
    Ok(parts)
}

/// The unread rest of an answer.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.0.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn answer() -> impl Strategy<Value = PartitionAnswer> {
        let error = prop_oneof![
            Just(None),
            Just(Some(FetchError::FencedLeaderEpoch)),
            Just(Some(FetchError::OffsetOutOfRange)),
        ];
        let diverging = proptest::option::of((any::<u32>(), any::<u64>()).prop_map(
            |(epoch, end_offset)| Diverging {
                epoch,
                end_offset: Offset(end_offset),
            },
        ));
        (
            "[a-z._-]{1,20}",
            any::<u32>(),
            error,
            any::<u64>(),
            any::<u64>(),
            diverging,
            any::<bool>(),
        )
            .prop_map(
                |(
                    topic,
                    partition,
                    error,
                    high_watermark,
                    log_start_offset,
                    diverging,
                    sync_now,
                )| PartitionAnswer {
                    topic,
                    partition: PartitionId(partition),
                    error,
                    high_watermark: Offset(high_watermark),
                    log_start_offset: Offset(log_start_offset),
                    diverging,
                    sync_now,
                },
            )
    }

    proptest! {
        #[test]
        fn answers_round_trip_with_their_batches_borrowed(
            parts in proptest::collection::vec((answer(), proptest::collection::vec(any::<u8>(), 0..200)), 0..8)
        ) {
            let bytes = encode_answer(parts.iter().map(|(a, r)| (a, r.as_slice())));
            let decoded = decode_answer(&bytes).unwrap();
            prop_assert_eq!(decoded.len(), parts.len());
            for ((a, r), (da, dr)) in parts.iter().zip(&decoded) {
                prop_assert_eq!(a, da);
                prop_assert_eq!(r.as_slice(), *dr);
            }
        }

        #[test]
        fn a_cut_or_damaged_answer_is_an_error_never_a_panic(
            parts in proptest::collection::vec((answer(), proptest::collection::vec(any::<u8>(), 0..50)), 1..4),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0..8u8,
        ) {
            let bytes = encode_answer(parts.iter().map(|(a, r)| (a, r.as_slice())));
            let at = cut.index(bytes.len());
            prop_assert!(decode_answer(&bytes[..at]).is_err(), "a prefix of {} bytes decoded", at);
            let mut damaged = bytes.clone();
            damaged[flip.index(bytes.len())] ^= 1 << bit;
            // A flipped bit in a batch decodes (the batch CRC catches it later); elsewhere it
            // must not panic.
            let _ = decode_answer(&damaged);
        }
    }

    #[test]
    fn lying_counts_and_lengths_are_refused_before_allocating() {
        let mut bytes = MAGIC.to_vec();
        bytes.push(VERSION);
        bytes.extend_from_slice(&FETCH_PARTITIONS_MAX.to_le_bytes());
        assert_eq!(decode_answer(&bytes), Err(WireError::Truncated));
        bytes.truncate(5);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_answer(&bytes),
            Err(WireError::TooManyPartitions(u32::MAX))
        );
        bytes.truncate(5);
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(
            decode_answer(&bytes),
            Err(WireError::HeaderTooLarge(u32::MAX))
        );
        assert_eq!(decode_answer(b"HTTP/1.1"), Err(WireError::BadMagic));
    }

    #[test]
    fn the_request_is_json_and_refuses_unknown_fields() {
        let request = FetchRequest {
            replica: NodeId(2),
            broker_epoch: BrokerEpoch(7),
            max_wait_ms: 500,
            max_bytes: 1 << 20,
            partitions: vec![PartitionFetch {
                topic: "t".into(),
                partition: PartitionId(0),
                leader_epoch: LeaderEpoch(3),
                fetch_offset: Offset(10),
                last_fetched_epoch: Some(2),
                flushed_offset: Offset(9),
            }],
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            serde_json::from_str::<FetchRequest>(&text).unwrap(),
            request
        );
        let extra = text.replacen('{', "{\"x\":1,", 1);
        assert!(serde_json::from_str::<FetchRequest>(&extra).is_err());
    }
}
