//! Broker tests with injected faults.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::*;
use crate::log::batch::RecordRef;

/// A `topic.json` write that announces it was reached, waits to be released, then fails.
#[derive(Debug, Default)]
pub(super) struct MetaWriteFault {
    reached: Notify,
    release: Notify,
}

impl MetaWriteFault {
    pub(super) async fn strike(&self) -> std::io::Result<()> {
        self.reached.notify_one();
        self.release.notified().await;
        Err(std::io::Error::other("injected topic.json write failure"))
    }
}

fn config(dir: &Path) -> BrokerConfig {
    BrokerConfig {
        data_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    }
}

/// A record with the JSON value `1`, for `partition`.
pub(crate) fn one_record(partition: u32) -> ProduceRecord<'static> {
    ProduceRecord {
        partition: Some(partition),
        record: RecordRef {
            timestamp_ms: 1,
            key: None,
            key_is_utf8: false,
            value: Some(b"1"),
            value_is_json: true,
            headers: &[],
        },
    }
}

/// Produces `count` records of value `1` to `partition` of `topic` with `acks=all`.
pub(crate) async fn produce_ones(broker: &Broker, topic: &str, partition: u32, count: usize) {
    let topic = broker.topic(topic).unwrap();
    let records = vec![one_record(partition); count];
    broker
        .produce(&topic, &records, Acks::All, Duration::from_secs(10))
        .await
        .unwrap();
}

/// Item 1 of the hardening issue: an expansion whose `topic.json` write fails must not have
/// let a producer write (and be acknowledged) on a partition the metadata never counted: a
/// restart would not open it and the next expansion would delete its directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_record_is_acknowledged_on_a_partition_whose_count_is_not_durable() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(config(dir.path())).await.unwrap();
    broker
        .create_topic("t", 1, TopicConfig::default(), false)
        .await
        .unwrap();
    let fault = Arc::new(MetaWriteFault::default());
    *broker.expansion_meta_fault.lock().unwrap() = Some(Arc::clone(&fault));
    let expanding = tokio::spawn({
        let broker = Arc::clone(&broker);
        async move { broker.expand_partitions("t", 2).await.map(|_| ()) }
    });
    fault.reached.notified().await;
    // The count is being written: a produce to the new partition now must not be answered
    // with an offset unless the partition is already counted durably.
    let topic = broker.topic("t").unwrap();
    let acked = broker
        .produce(&topic, &[one_record(1)], Acks::All, Duration::from_secs(10))
        .await;
    fault.release.notify_one();
    assert!(expanding.await.unwrap().is_err(), "the expansion failed");
    match &acked {
        Ok(_) => {}
        Err(BrokerError::PartitionNotFound { .. }) => {}
        Err(e) => panic!("unexpected produce error: {e}"),
    }
    broker.close().await.unwrap();
    drop(broker);

    let broker = Broker::open(config(dir.path())).await.unwrap();
    // The expansion is retried, as an operator would after the failure.
    broker.expand_partitions("t", 2).await.unwrap();
    let stored = broker
        .topic("t")
        .unwrap()
        .partition(1)
        .unwrap()
        .fetch(0, 10, 1 << 20)
        .await
        .unwrap();
    let mut records = 0;
    stored
        .for_each_record(|_| {
            records += 1;
            Ok(())
        })
        .unwrap();
    if acked.is_ok() {
        assert_eq!(records, 1, "an acknowledged record was lost");
    } else {
        assert_eq!(records, 0);
    }
}
