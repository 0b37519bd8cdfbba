//! Partitions a group reads that this broker holds no replica of (on a cluster with more
//! brokers than a topic has replicas, the coordinator, which leads `__consumer_offsets`,
//! holds only some of them): read at their leaders.
//!
//! The coordinator asks through [`RemotePartitions`], which the node gives it on a cluster
//! (the metadata says where each partition is led; the call is the internal route `POST
//! /internal/v1/partitions/read`, answered by the leader from its log up to its high
//! watermark, as a consumer's fetch is). The wire format of that call is here, shared by
//! both ends: a JSON [`RemoteRead`], and an answer of a fixed header then the batches as
//! stored ([`encode_answer`], [`decode_answer`]).

use std::fmt::Debug;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::group::OffsetReset;
use crate::broker::{BrokerError, Fetched};
use crate::log::Offset;
use crate::metadata::{NodeId, PartitionId};

/// The internal route a leader answers remote reads on.
pub const READ_PATH: &str = "/internal/v1/partitions/read";

/// The internal route a leader answers a member long-poll's wait on.
pub const WAIT_PATH: &str = "/internal/v1/partitions/wait";

/// The most partitions one [`RemoteWait`] names; a member waiting on more at one leader sends
/// several.
pub const WAIT_PARTS_MAX: usize = 1024;

/// What the coordinator needs of partitions it holds no replica of.
pub trait RemotePartitions: Send + Sync + Debug {
    /// `topic`'s partition count in the cluster's metadata; None when it has no such topic.
    fn partition_count(&self, topic: &str) -> Option<u32>;

    /// Reads `read` at the partition's leader.
    fn read(&self, read: RemoteRead) -> BoxFuture<'static, Result<RemoteAnswer, BrokerError>>;

    /// The broker the metadata names leader of the partition now; None: no leader, or no
    /// such partition.
    fn leader_of(&self, topic: &str, partition: PartitionId) -> Option<NodeId>;

    /// Waits at the leader of `wait`'s first partition (the caller groups the partitions by
    /// leader) until one of them has a record past its position (true) or `wait_ms` passes
    /// (false). An error when that leader cannot be asked, or leads one of them no more.
    fn wait(&self, wait: RemoteWait) -> BoxFuture<'static, Result<bool, BrokerError>>;
}

/// A member long-poll's wait at one leader, for every partition of its assignment that leader
/// leads: one request, and one long-poll slot there, however many partitions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWait {
    /// At most [`WAIT_PARTS_MAX`].
    pub parts: Vec<WaitPart>,
    /// The group's `auto_offset_reset`, for a part with no position.
    pub reset: OffsetReset,
    pub wait_ms: u64,
}

/// One partition of a [`RemoteWait`] and the group's position there (as [`RemoteRead`]'s).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WaitPart {
    pub topic: String,
    pub partition: PartitionId,
    pub position: Option<u64>,
}

impl WaitPart {
    pub fn new(tp: &super::assignor::TopicPartition, position: Option<Offset>) -> WaitPart {
        WaitPart {
            topic: tp.topic.clone(),
            partition: tp.partition,
            position: position.map(|p| p.0),
        }
    }
}

/// The leader's answer to a [`RemoteWait`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WaitAnswer {
    /// Some partition has a record past the group's position.
    pub ready: bool,
}

/// A read of one partition at its leader, from the group's position.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteRead {
    pub topic: String,
    pub partition: PartitionId,
    /// The group's committed (or pinned) offset; None: `reset` decides, as it does for an
    /// offset past the log end. One below the log start reads from the log start.
    pub position: Option<u64>,
    pub reset: OffsetReset,
    /// 0: no batches, only the offsets (after the wait, if any).
    pub max_records: u32,
    pub max_bytes: u64,
    /// How long the leader waits for a record past the position when there is none.
    pub wait_ms: u64,
    /// Read from the first offset whose timestamp is at or after this time instead (an
    /// offsets reset to a time); `position` and `reset` are then not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
}

impl RemoteRead {
    /// Its partition's leader cannot be asked now (none, down, moving): retryable.
    pub fn leader_not_available(&self, why: String) -> BrokerError {
        BrokerError::LeaderNotAvailable {
            topic: self.topic.clone(),
            partition: self.partition,
            why,
        }
    }

    /// The partition's offsets and the resolved position, no records, at once (a
    /// description's lag, an offsets reset).
    pub fn offsets(
        tp: &super::assignor::TopicPartition,
        position: Option<Offset>,
        reset: OffsetReset,
    ) -> RemoteRead {
        RemoteRead {
            topic: tp.topic.clone(),
            partition: tp.partition,
            position: position.map(|p| p.0),
            reset,
            max_records: 0,
            max_bytes: 0,
            wait_ms: 0,
            timestamp_ms: None,
        }
    }
}

/// The leader's answer: the records read (from the resolved position) and the partition's
/// offsets.
#[derive(Debug)]
pub struct RemoteAnswer {
    pub fetched: Fetched,
    /// Whether `reset` chose the position (nothing stored in range).
    pub reset: bool,
    pub log_end_offset: Offset,
}

/// Bytes of the answer's header: six u64 (from, high watermark, log start, log end, segment
/// end or u64::MAX, max records) and the reset flag.
const HEADER_BYTES: usize = 6 * 8 + 1;

/// Bytes an answer to a read of `max_bytes` may take: the leader sends at least one whole
/// batch, which may be as large as a request body (`batch_bytes_max`).
pub fn answer_bytes_max(max_bytes: u64, batch_bytes_max: u64) -> usize {
    HEADER_BYTES + max_bytes.saturating_add(batch_bytes_max) as usize + 64 * 1024
}

/// The answer's bytes: the header, then the batches as read.
pub fn encode_answer(answer: &RemoteAnswer) -> Vec<u8> {
    let f = &answer.fetched;
    let mut out = Vec::with_capacity(HEADER_BYTES + f.bytes.len());
    for n in [
        f.from.0,
        f.high_watermark.0,
        f.log_start_offset.0,
        answer.log_end_offset.0,
        f.segment_end.map_or(u64::MAX, |o| o.0),
        u64::from(f.max_records),
    ] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.push(u8::from(answer.reset));
    out.extend_from_slice(&f.bytes);
    out
}

/// Reads an answer made by [`encode_answer`]; None when it is too short.
pub fn decode_answer(bytes: &[u8]) -> Option<RemoteAnswer> {
    let header = bytes.get(..HEADER_BYTES)?;
    let n = |i: usize| u64::from_be_bytes(header[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Some(RemoteAnswer {
        fetched: Fetched {
            bytes: bytes[HEADER_BYTES..].to_vec(),
            from: Offset(n(0)),
            high_watermark: Offset(n(1)),
            log_start_offset: Offset(n(2)),
            segment_end: (n(4) != u64::MAX).then(|| Offset(n(4))),
            max_records: u32::try_from(n(5)).ok()?,
        },
        log_end_offset: Offset(n(3)),
        reset: header[HEADER_BYTES - 1] == 1,
    })
}

/// The position to read from and whether `reset` chose it (the rule of every read for a
/// group, here or at the leader). A stored position up to the log end stands: one past the
/// high watermark (a new leader's high watermark may start below what its predecessor
/// acknowledged and the group committed) reads nothing until the high watermark passes it.
/// Below the log start reads from the log start; none, or past the log end (the topic was
/// deleted and created again), goes where `reset` says.
pub fn resolve(
    position: Option<Offset>,
    reset: OffsetReset,
    log_start: Offset,
    high_watermark: Offset,
    log_end: Offset,
) -> (Offset, bool) {
    match position {
        Some(o) if o <= log_end => (o.max(log_start), false),
        _ => match reset {
            OffsetReset::Earliest => (log_start, true),
            OffsetReset::Latest => (high_watermark, true),
        },
    }
}

/// How long the coordinator gives a remote read beyond its own wait.
pub const READ_TIMEOUT_EXTRA: Duration = Duration::from_secs(5);

/// How long an offsets-only read that does not wait may take (a commit's check, a
/// description, a reset): a leader that cannot answer that fast is taken as unavailable.
pub const OFFSETS_TIMEOUT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_travels_whole() {
        let answer = RemoteAnswer {
            fetched: Fetched {
                bytes: vec![1, 2, 3],
                from: Offset(7),
                high_watermark: Offset(9),
                log_start_offset: Offset(2),
                max_records: 100,
                segment_end: None,
            },
            reset: true,
            log_end_offset: Offset(11),
        };
        let back = decode_answer(&encode_answer(&answer)).unwrap();
        assert_eq!(back.fetched.bytes, vec![1, 2, 3]);
        assert_eq!(
            (
                back.fetched.from,
                back.fetched.high_watermark,
                back.fetched.log_start_offset
            ),
            (Offset(7), Offset(9), Offset(2))
        );
        assert_eq!(
            (back.fetched.max_records, back.fetched.segment_end),
            (100, None)
        );
        assert_eq!((back.reset, back.log_end_offset), (true, Offset(11)));
        let mut with_end = encode_answer(&answer);
        with_end[32..40].copy_from_slice(&5u64.to_be_bytes());
        assert_eq!(
            decode_answer(&with_end).unwrap().fetched.segment_end,
            Some(Offset(5))
        );
        assert!(decode_answer(&with_end[..10]).is_none(), "too short");
    }

    #[test]
    fn a_read_names_every_field_it_needs_and_no_other() {
        let tp = super::super::assignor::TopicPartition::new("t", PartitionId(2));
        let read = RemoteRead::offsets(&tp, Some(Offset(7)), OffsetReset::Latest);
        let mut json = serde_json::to_value(&read).unwrap();
        assert!(json.get("timestamp_ms").is_none(), "left out when unset");
        assert_eq!(
            serde_json::from_value::<RemoteRead>(json.clone()).unwrap(),
            read
        );
        json["extra"] = serde_json::json!(1);
        assert!(
            serde_json::from_value::<RemoteRead>(json).is_err(),
            "unknown fields refused"
        );
    }

    #[test]
    fn a_position_resolves_as_a_local_read_does() {
        let r = |p: Option<u64>, reset| {
            resolve(p.map(Offset), reset, Offset(10), Offset(20), Offset(25))
        };
        assert_eq!(r(Some(15), OffsetReset::Latest), (Offset(15), false));
        assert_eq!(
            r(Some(3), OffsetReset::Latest),
            (Offset(10), false),
            "below the start"
        );
        assert_eq!(
            r(Some(20), OffsetReset::Earliest),
            (Offset(20), false),
            "at the HW"
        );
        assert_eq!(
            r(Some(24), OffsetReset::Earliest),
            (Offset(24), false),
            "past the HW, within the log: waits for the HW"
        );
        assert_eq!(
            r(Some(26), OffsetReset::Earliest),
            (Offset(10), true),
            "past the end"
        );
        assert_eq!(r(None, OffsetReset::Latest), (Offset(20), true));
        assert_eq!(r(None, OffsetReset::Earliest), (Offset(10), true));
    }
}
