//! The broker's error type: what went wrong, in terms a client can act on.
//!
//! The HTTP layer maps each variant to a status and a stable problem `code`
//! (`http::error`); nothing here knows about HTTP.

use std::fmt;

use crate::limits::Limit;
use crate::log::Offset;
use crate::metadata::PartitionId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    TopicNotFound(String),
    TopicExists(String),
    InvalidTopicName(String),
    /// Names starting with `__` belong to the broker.
    InternalTopic(String),
    PartitionNotFound {
        partition: u64,
        partitions: u32,
    },
    OffsetOutOfRange {
        offset: Offset,
        log_start_offset: Offset,
        high_watermark: Offset,
    },
    RecordTooLarge {
        bytes: u64,
        limit: u64,
    },
    /// A named limit was crossed.
    LimitExceeded {
        limit_name: Limit,
        limit: u64,
        detail: String,
    },
    InvalidRequest(String),
    /// The partition stopped taking writes (storage failure or deletion).
    StorageUnavailable(String),
    /// On a cluster member: this broker holds no replica of the partition.
    NotAReplica {
        topic: String,
        partition: PartitionId,
    },
    /// A record read back from disk failed its checks.
    CorruptLog(String),
    /// `acks=all` did not become durable within the request's timeout.
    Timeout,
    /// A producer's append reached a replica that follows a leader (or whose partition has
    /// none right now): only the leader takes appends.
    NotLeader {
        topic: String,
        partition: PartitionId,
    },
    /// On a cluster: the partition's leader cannot be reached or asked now (it has none, or
    /// it is moving, down or unreachable): a read for a group that needs it. Retryable.
    LeaderNotAvailable {
        topic: String,
        partition: PartitionId,
        why: String,
    },
    /// `acks=all` on a replicated partition whose in-sync replica set is below its
    /// minimum: nothing was appended.
    NotEnoughReplicas {
        isr: u32,
        min_insync_replicas: u32,
    },
    /// The partition's leadership changed after the append and before the records were
    /// replicated: they may or may not be kept.
    LeaderChangedAfterAppend {
        topic: String,
        partition: PartitionId,
    },
    /// The in-sync replica set fell below its minimum after the append and before the
    /// records were replicated: they may or may not be kept.
    NotEnoughReplicasAfterAppend {
        isr: u32,
        min_insync_replicas: u32,
    },
    /// This broker leads the partition but its controller session may have ended (no
    /// answered heartbeat within the lease, see [`crate::broker::lease`]): the controller may
    /// have moved the leadership. `appended`: the records were appended before it was seen,
    /// so whether they are kept is unknown.
    SessionLost {
        appended: bool,
    },
    ShuttingDown,
    /// Too many requests of one kind are in flight (a named limit); try again shortly.
    Overloaded {
        limit_name: Limit,
        limit: u64,
    },
    Io(String),
    /// A replica's log may not be cut below its high watermark (replication stops the
    /// replica rather than lose records consumers may have seen).
    BelowHighWatermark {
        offset: Offset,
        high_watermark: Offset,
    },
    /// An idempotent produce from an epoch older than the producer's current one.
    ProducerFenced {
        current_epoch: i16,
    },
    /// An idempotent produce whose sequence is older than every batch the partition keeps for
    /// its producer: it may or may not have been written, which can no longer be told.
    SequenceTooOld {
        sequence: i32,
        oldest_kept: i32,
    },
    /// An idempotent produce whose sequence falls between the producer's kept batches without
    /// matching one: never written, and a later request of the producer already was.
    SequenceOutOfOrder {
        sequence: i32,
        last: i32,
    },
    /// A sequence retried with another request: the partition holds a batch of `held` records
    /// for it, the request has `sent`.
    SequenceReused {
        sequence: i32,
        held: u64,
        sent: u64,
    },
    /// An `Idempotency-Key` sent again with another request (`idempotency_key_reused`).
    IdempotencyKeyReused,
    /// An `Idempotency-Key` whose first request is still running.
    IdempotencyKeyInProgress,
    /// This broker leads the internal topic that keeps the state a call needs (committed
    /// offsets, producer sessions, idempotency keys) and is still replaying it.
    CoordinatorLoading {
        topic: &'static str,
    },
    /// This broker does not lead the internal topic that keeps the state a call needs (the
    /// leadership moved, or no replica leads it now).
    NotCoordinator {
        topic: &'static str,
    },
}

impl BrokerError {
    /// An I/O error from the data directory, with what was being done. A full disk is
    /// `StorageUnavailable` (503 `storage_unavailable`: retry once there is room); anything
    /// else is `Io` (500).
    pub fn from_io(doing: impl fmt::Display, e: std::io::Error) -> BrokerError {
        if is_disk_full(&e) {
            BrokerError::StorageUnavailable(format!("{doing}: disk full: {e}"))
        } else {
            BrokerError::Io(format!("{doing}: {e}"))
        }
    }
}

/// Whether an I/O error means "no room" (ENOSPC, or a quota), which goes away once there is
/// room again, rather than a broken disk.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || e.raw_os_error() == Some(libc::ENOSPC)
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::TopicNotFound(t) => write!(f, "topic '{t}' does not exist"),
            BrokerError::TopicExists(t) => write!(f, "topic '{t}' already exists"),
            BrokerError::InvalidTopicName(why) => write!(f, "invalid topic name: {why}"),
            BrokerError::InternalTopic(t) => {
                write!(f, "topic '{t}' is internal; clients cannot write it")
            }
            BrokerError::PartitionNotFound {
                partition,
                partitions,
            } => {
                write!(
                    f,
                    "partition {partition} does not exist; the topic has {partitions}"
                )
            }
            BrokerError::OffsetOutOfRange {
                offset,
                log_start_offset,
                high_watermark,
            } => write!(
                f,
                "offset {offset} is outside the readable range [{log_start_offset}, {high_watermark}]"
            ),
            BrokerError::RecordTooLarge { bytes, limit } => {
                write!(
                    f,
                    "record of {bytes} bytes is larger than the limit of {limit} bytes"
                )
            }
            BrokerError::LimitExceeded { detail, .. } => write!(f, "{detail}"),
            BrokerError::InvalidRequest(why) => write!(f, "{why}"),
            BrokerError::StorageUnavailable(why) => {
                write!(f, "partition is not taking writes: {why}")
            }
            BrokerError::NotAReplica { topic, partition } => {
                write!(f, "this broker holds no replica of {topic}/{partition}")
            }
            BrokerError::CorruptLog(why) => write!(f, "stored data failed its checks: {why}"),
            BrokerError::Timeout => {
                write!(f, "records were not durable before the request timeout")
            }
            BrokerError::LeaderNotAvailable {
                topic,
                partition,
                why,
            } => write!(
                f,
                "the leader of {topic}/{partition} cannot be asked now: {why}"
            ),
            BrokerError::NotLeader { topic, partition } => write!(
                f,
                "this broker does not lead {topic}/{partition}: its replica here follows the leader"
            ),
            BrokerError::NotEnoughReplicas {
                isr,
                min_insync_replicas,
            } => write!(
                f,
                "{isr} in-sync replica(s), acks=all needs {min_insync_replicas}: nothing was written"
            ),
            BrokerError::SessionLost { appended: false } => write!(
                f,
                "this broker has not reached the controller within its session timeout, so another broker may lead the partition now: nothing was written"
            ),
            BrokerError::SessionLost { appended: true } => write!(
                f,
                "the records were appended, then this broker's controller session may have ended (another broker may lead the partition now): the outcome is unknown, a retry may duplicate them"
            ),
            BrokerError::LeaderChangedAfterAppend { topic, partition } => write!(
                f,
                "the records were appended, then this broker stopped leading {topic}/{partition} before they were replicated: the outcome is unknown, a retry may duplicate them"
            ),
            BrokerError::NotEnoughReplicasAfterAppend {
                isr,
                min_insync_replicas,
            } => write!(
                f,
                "the records were appended, then the in-sync replicas fell to {isr} (below {min_insync_replicas}) before they were replicated: the outcome is unknown, a retry may duplicate them"
            ),
            BrokerError::ShuttingDown => write!(f, "the broker is shutting down"),
            BrokerError::Overloaded { limit_name, limit } => write!(
                f,
                "the broker is at its limit {limit_name} = {limit}; retry shortly"
            ),
            BrokerError::Io(why) => write!(f, "I/O error: {why}"),
            BrokerError::ProducerFenced { current_epoch } => write!(
                f,
                "a newer incarnation of this producer (epoch {current_epoch}) has written; this one is fenced"
            ),
            BrokerError::SequenceTooOld {
                sequence,
                oldest_kept,
            } => write!(
                f,
                "sequence {sequence} is older than the oldest the partition keeps for this producer \
                 ({oldest_kept}); whether it was written can no longer be told"
            ),
            BrokerError::SequenceOutOfOrder { sequence, last } => write!(
                f,
                "sequence {sequence} was never written and the producer's later sequence {last} was: \
                 a producer's requests must be sent in sequence order"
            ),
            BrokerError::SequenceReused {
                sequence,
                held,
                sent,
            } => write!(
                f,
                "sequence {sequence} was written with {held} records to this partition, the request has \
                 {sent}: a retry must resend the same request"
            ),
            BrokerError::IdempotencyKeyReused => write!(
                f,
                "this Idempotency-Key was used for another request (another body, content type, \
                 topic or query); a retry must resend the same request, a new request needs a new key"
            ),
            BrokerError::IdempotencyKeyInProgress => write!(
                f,
                "a request with this Idempotency-Key is still running; retry once it has been answered"
            ),
            BrokerError::CoordinatorLoading { topic } => write!(
                f,
                "this broker just took the lead of {topic} and is replaying it before it serves \
                 (after a failover); retry shortly"
            ),
            BrokerError::NotCoordinator { topic } => write!(
                f,
                "this broker does not lead {topic}, which keeps the state this call needs (its \
                 leadership moved or no replica leads it now); retry shortly, through any broker"
            ),
            BrokerError::BelowHighWatermark {
                offset,
                high_watermark,
            } => write!(
                f,
                "the log may not be cut at {offset}, below its high watermark {high_watermark}"
            ),
        }
    }
}

impl std::error::Error for BrokerError {}
