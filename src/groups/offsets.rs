//! The committed-offsets store: the internal topic `__consumer_offsets`.
//!
//! Every commit is a record keyed `group/topic/partition` (names cannot hold `/`) with a JSON
//! value `{"offset":N,"committed_at_ms":T,"member_id":..,"generation":..}`; a deleted group
//! leaves a tombstone (no value) per key. Records are appended with `acks=all`, so a commit
//! is answered only once it is fsynced. On start the coordinator replays the topic from its
//! log start to its high watermark; the last record per key wins.
//!
//! The topic has one partition and every commit goes to partition 0: the log's total order
//! is then the order commits were made in, which makes the replay trivially right (no
//! cross-partition ordering to reconstruct). Group commit in the partition flusher still
//! lets concurrent commits share one fsync.
//!
//! Failure policy: an append that is not durable is an error to the committer and is not
//! applied in memory. A record that does not parse on replay is skipped with a log line:
//! the broker wrote it, so that is a bug or a hand-edited log, not a reason to refuse to start.
//!
//! The topic is compacted (`cleanup_policy = compact`, 8 MiB segments): only the latest
//! record per key survives in sealed segments, so the replay reads about one record per
//! committed partition plus the active segment. Compaction keeps offsets, so the replay
//! skips gaps; tombstones go after `delete_retention_ms`, and a missing key means "no commit",
//! which is what a tombstone says too.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::assignor::TopicPartition;
use crate::broker::{Acks, Broker, BrokerError, ProduceRecord, Topic, now_ms};
use crate::config::{CleanupPolicy, TopicConfig};
use crate::coordination::InternalTopicMaker;
use crate::log::Offset;
use crate::log::batch::RecordRef;
use crate::metadata::PartitionId;

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Segments roll at this size so compaction (sealed segments only) has work to do.
const OFFSETS_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// Offset records appended per produce (one batch each).
pub const OFFSET_RECORDS_PER_BATCH: usize = 1000;

/// A committed offset as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OffsetValue {
    /// The next offset to read.
    pub offset: Offset,
    pub committed_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
}

/// One entry to write: a commit (`Some`) or a tombstone (`None`).
pub type OffsetWrite = (TopicPartition, Option<OffsetValue>);

pub fn offset_key(group: &str, tp: &TopicPartition) -> String {
    format!("{group}/{}/{}", tp.topic, tp.partition)
}

/// Splits `group/topic/partition`; `None` if the key is not one the broker writes.
pub fn parse_offset_key(key: &[u8]) -> Option<(String, TopicPartition)> {
    let key = std::str::from_utf8(key).ok()?;
    let mut parts = key.splitn(3, '/');
    let group = parts.next()?;
    let topic = parts.next()?;
    let partition = PartitionId(parts.next()?.parse::<u32>().ok()?);
    Some((group.to_string(), TopicPartition::new(topic, partition)))
}

/// The offsets topic's config: kept forever, compacted.
pub fn offsets_topic_config(defaults: TopicConfig) -> TopicConfig {
    TopicConfig {
        retention_ms: -1,
        retention_bytes: -1,
        cleanup_policy: CleanupPolicy::Compact,
        segment_bytes: OFFSETS_SEGMENT_BYTES,
        ..defaults
    }
}

/// The offsets topic, created on first use (internal, kept forever, one partition): here, or
/// by `maker` on a cluster.
pub async fn offsets_topic(
    broker: &Broker,
    maker: Option<&InternalTopicMaker>,
) -> Result<Arc<Topic>, BrokerError> {
    match broker.topic(OFFSETS_TOPIC) {
        Ok(topic) => return Ok(topic),
        Err(BrokerError::TopicNotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let config = offsets_topic_config(broker.config.topic_defaults);
    if let Some(maker) = maker {
        (maker.0)(OFFSETS_TOPIC, config).await?;
        return broker.topic(OFFSETS_TOPIC);
    }
    match broker.create_topic(OFFSETS_TOPIC, 1, config, true).await {
        Ok(topic) => Ok(topic),
        Err(BrokerError::TopicExists(_)) => broker.topic(OFFSETS_TOPIC),
        Err(e) => Err(e),
    }
}

/// Appends the writes durably (`acks=all`), at most [`OFFSET_RECORDS_PER_BATCH`] per batch.
pub async fn append(
    broker: &Broker,
    maker: Option<&InternalTopicMaker>,
    group: &str,
    writes: &[OffsetWrite],
) -> Result<(), BrokerError> {
    let topic = offsets_topic(broker, maker).await?;
    let timeout = Duration::from_millis(broker.limits().wait_ms_max);
    let now = now_ms();
    for chunk in writes.chunks(OFFSET_RECORDS_PER_BATCH) {
        let encoded: Vec<(String, Option<Vec<u8>>)> = chunk
            .iter()
            .map(|(tp, value)| {
                let value = value
                    .as_ref()
                    .map(|v| serde_json::to_vec(v).expect("offset values serialize"));
                (offset_key(group, tp), value)
            })
            .collect();
        let records: Vec<ProduceRecord<'_>> = encoded
            .iter()
            .map(|(key, value)| ProduceRecord {
                partition: Some(PartitionId(0)),
                record: RecordRef {
                    timestamp_ms: now,
                    key: Some(key.as_bytes()),
                    key_is_utf8: true,
                    value: value.as_deref(),
                    value_is_json: value.is_some(),
                    headers: &[],
                },
            })
            .collect();
        broker.produce(&topic, &records, Acks::All, timeout).await?;
    }
    Ok(())
}

/// Replays the offsets topic up to its high watermark; calls `apply` per record in log order.
pub fn replay(
    broker: &Broker,
    mut apply: impl FnMut(String, TopicPartition, Option<OffsetValue>),
) -> Result<u64, BrokerError> {
    let topic = match broker.topic(OFFSETS_TOPIC) {
        Ok(t) => t,
        Err(BrokerError::TopicNotFound(_)) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut replayed = 0u64;
    for partition in topic.partitions() {
        let mut offset = partition.progress().log_start_offset;
        loop {
            let fetched = partition.fetch_blocking(offset, 10_000, 4 * 1024 * 1024)?;
            let next = fetched.for_each_record(|r| {
                replayed += 1;
                let Some((group, tp)) = r.key.and_then(parse_offset_key) else {
                    tracing::warn!(
                        offset = r.offset,
                        "skipping a committed-offset record with a bad key"
                    );
                    return Ok(());
                };
                match r.value.map(serde_json::from_slice::<OffsetValue>) {
                    None => apply(group, tp, None),
                    Some(Ok(v)) => apply(group, tp, Some(v)),
                    Some(Err(e)) => {
                        tracing::warn!(
                            offset = r.offset,
                            "skipping a bad committed-offset record: {e}"
                        )
                    }
                }
                Ok(())
            })?;
            if next <= offset {
                break;
            }
            offset = next;
        }
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_junk_is_refused() {
        let tp = TopicPartition::new("orders.v1", PartitionId(7));
        let key = offset_key("billing-workers", &tp);
        assert_eq!(key, "billing-workers/orders.v1/7");
        assert_eq!(
            parse_offset_key(key.as_bytes()),
            Some(("billing-workers".to_string(), tp))
        );
        assert_eq!(parse_offset_key(b"g/t"), None);
        assert_eq!(parse_offset_key(b"g/t/x"), None);
        assert_eq!(parse_offset_key(&[0xff, b'/', b'a', b'/', b'1']), None);
    }
}
