//! Producer sessions: who may write idempotently, under which id and epoch.
//!
//! `POST /v1/producers` hands out a producer id (and epoch 0); with a `name`, the same name
//! gets the same id with the next epoch each time, which fences every older incarnation: the
//! registry refuses their produces here, and a partition refuses them too once the newer
//! epoch has written to it (`log::producer_state`). The sequence numbers themselves live in
//! the partitions, rebuilt from the log; this registry only knows ids, names and epochs.
//!
//! Storage: the internal topic `__producers` (one partition, compacted), appended with
//! `acks=all` before an answer is given. Ids are reserved in blocks of
//! [`PRODUCER_ID_BLOCK`] (a record keyed `ids` with the end of the block), so an anonymous
//! session costs a write only once per block; a named session writes `name/<name>` with its
//! id and epoch. On open the topic is replayed: ids start after the last reserved block, so
//! no id is ever handed out twice, even after a crash.
//!
//! Invariants: an id below `next_id` was handed out at most once; a name's epoch only grows;
//! memory follows log order (writes are serialized by `writes`, and memory changes only after
//! the write is durable).
//!
//! `idempotency_keys`: the other way to retry without duplicates, `Idempotency-Key` on a
//! produce, stored with its answer in the internal topic `__idempotency_keys`.
//!
//! On a cluster, `__producers` is a replicated topic like `__consumer_offsets`, and the
//! registry is served by its partition's leader only (`crate::coordination`): it replays the
//! topic before it serves, and `POST /v1/producers` is forwarded there (`http::forward`). A
//! block is reserved with `acks=all` before any id of it is handed out, so a new leader,
//! which holds every acknowledged record, starts after every block its predecessor used: no
//! id is handed out twice across a failover, and a name's epoch keeps growing. A deposed
//! leader cannot get a write acknowledged, so it cannot bump an epoch either. The produce
//! path does not ask the registry on a cluster (it is on one broker, the produce anywhere):
//! the partitions fence older epochs that wrote to them and deduplicate sequences, and the
//! split produce sends the producer with each part (`http::produce_split`).

pub mod error;
pub mod idempotency_keys;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::ProducerError;

use crate::broker::{Acks, Broker, BrokerError, ProduceRecord, Topic, now_ms};
use crate::config::{CleanupPolicy, TopicConfig};
use crate::coordination::{InternalTopicMaker, LoadId, LoadedFromLog, Residence};
use crate::limits::Limit;
use crate::log::batch::{ProducerInfo, RecordRef};
use crate::metadata::PartitionId;

/// The internal topic holding producer ids and names.
pub const PRODUCERS_TOPIC: &str = "__producers";
/// Ids reserved by one durable write.
pub const PRODUCER_ID_BLOCK: i64 = 1000;
/// Longest producer name, in bytes (names follow the topic-name rule).
pub const PRODUCER_NAME_BYTES_MAX: usize = 249;
const IDS_KEY: &str = "ids";
const NAME_KEY_PREFIX: &str = "name/";
const PRODUCERS_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// What a session gets: the id and epoch to send with every produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerSession {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

#[derive(Debug, Serialize, Deserialize)]
struct IdsValue {
    /// Every id below this is reserved.
    reserved_to: i64,
}

#[derive(Debug, Default)]
struct RegistryState {
    /// The next id to hand out; every id below it was handed out or skipped.
    next_id: i64,
    /// Ids below this are durably reserved; `next_id` may reach it, then a block is written.
    reserved_to: i64,
    /// Named producers: name → current session.
    names: HashMap<String, ProducerSession>,
    /// The ids of named producers → their current epoch, for fencing.
    named_epochs: HashMap<i64, i16>,
}

impl RegistryState {
    /// Replays a block reservation.
    fn apply_ids(&mut self, reserved_to: i64) {
        self.reserved_to = self.reserved_to.max(reserved_to);
        // A restart skips what is left of the last block: those ids may have been handed out.
        self.next_id = self.next_id.max(self.reserved_to);
    }

    fn apply_name(&mut self, name: String, session: ProducerSession) {
        self.named_epochs
            .insert(session.producer_id, session.producer_epoch);
        self.names.insert(name, session);
        self.next_id = self.next_id.max(session.producer_id + 1);
    }
}

#[derive(Debug)]
pub struct ProducerRegistry {
    broker: Arc<Broker>,
    /// std mutex: lookups and updates only, never held across `.await`.
    state: Mutex<RegistryState>,
    /// Serializes session creation, held across its durable write, so memory follows the log.
    writes: tokio::sync::Mutex<()>,
    /// Whether the registry is served here: always alone; on a cluster by the leader of
    /// `__producers` once it replayed it.
    residence: Residence,
}

impl ProducerRegistry {
    /// A registry over `broker`. Alone, `__producers` is replayed at once (blocking reads;
    /// call before serving); on a cluster (`clustered`) nothing is served until the node
    /// tells it this broker leads `__producers` ([`crate::coordination::follow_leadership`]).
    pub fn open(broker: Arc<Broker>, clustered: bool) -> Result<ProducerRegistry, BrokerError> {
        let (state, residence) = if clustered {
            (RegistryState::default(), Residence::member(PRODUCERS_TOPIC))
        } else {
            (replay_state(&broker)?, Residence::alone(PRODUCERS_TOPIC))
        };
        Ok(ProducerRegistry {
            broker,
            state: Mutex::new(state),
            writes: tokio::sync::Mutex::new(()),
            residence,
        })
    }

    /// On a cluster: how `__producers` is made (in the cluster's metadata) the first time a
    /// session needs it. Set once, by the node, before any request is served.
    pub fn make_topic_with(&self, maker: InternalTopicMaker) {
        self.residence.make_topic_with(maker);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RegistryState> {
        self.state
            .lock()
            .expect("the producer registry lock is poisoned only after a panic")
    }

    /// Starts a session: a new id, or for a `name` its id with the next epoch.
    pub async fn create_session(
        &self,
        name: Option<&str>,
    ) -> Result<ProducerSession, ProducerError> {
        if let Some(name) = name {
            validate_producer_name(name)?;
        }
        let missing = match self.broker.topic(PRODUCERS_TOPIC) {
            Ok(_) => None,
            Err(_) => Some(producers_topic_config(&self.broker)),
        };
        let load = self.residence.ready(missing).await?;
        let _writes = self.writes.lock().await;
        if !self.residence.is_current(load) {
            let moved = BrokerError::NotCoordinator {
                topic: PRODUCERS_TOPIC,
            };
            return Err(moved.into());
        }
        let current = name.and_then(|n| self.state().names.get(n).copied());
        let session = match current {
            Some(s) => ProducerSession {
                producer_id: s.producer_id,
                producer_epoch: s.producer_epoch.checked_add(1).ok_or_else(|| {
                    ProducerError::EpochExhausted(name.unwrap_or_default().to_string())
                })?,
            },
            None => {
                if name.is_some() {
                    let max = self.broker.limits().producer_names_max;
                    if self.state().names.len() >= max as usize {
                        return Err(ProducerError::Broker(BrokerError::LimitExceeded {
                            limit_name: Limit::ProducerNamesMax,
                            limit: u64::from(max),
                            detail: format!("the broker keeps {max} named producers"),
                        }));
                    }
                }
                ProducerSession {
                    producer_id: self.next_id(load).await?,
                    producer_epoch: 0,
                }
            }
        };
        if let Some(name) = name {
            let value = serde_json::to_vec(&session).expect("a session serializes");
            self.append(&format!("{NAME_KEY_PREFIX}{name}"), &value)
                .await?;
            // Durable: a new leader replays it. Memory is this load's only.
            if self.residence.is_current(load) {
                self.state().apply_name(name.to_string(), session);
            }
        }
        Ok(session)
    }

    /// Hands out the next id, reserving a block durably first when the last one is used up.
    /// Called with `writes` held, by the current `load`.
    async fn next_id(&self, load: LoadId) -> Result<i64, BrokerError> {
        let (next, reserved_to) = {
            let s = self.state();
            (s.next_id, s.reserved_to)
        };
        if next >= reserved_to {
            let block_end = next + PRODUCER_ID_BLOCK;
            let value = serde_json::to_vec(&IdsValue {
                reserved_to: block_end,
            })
            .expect("ids serialize");
            self.append(IDS_KEY, &value).await?;
            if !self.residence.is_current(load) {
                // Another load replays the block and starts after it; this one hands out
                // nothing from memory it no longer owns.
                return Err(BrokerError::NotCoordinator {
                    topic: PRODUCERS_TOPIC,
                });
            }
            let mut s = self.state();
            s.reserved_to = s.reserved_to.max(block_end);
        }
        let mut s = self.state();
        let id = s.next_id;
        s.next_id += 1;
        Ok(id)
    }

    /// Whether `producer_id` at `producer_epoch` may write (to `topic`): handed out, and not
    /// fenced by a newer epoch of its name.
    pub fn check(&self, producer: ProducerInfo, topic: &str) -> Result<(), ProducerError> {
        let s = self.state();
        let unknown = || ProducerError::Unknown {
            producer_id: producer.producer_id,
            producer_epoch: producer.producer_epoch,
        };
        if producer.producer_id < 0 || producer.producer_id >= s.next_id {
            return Err(unknown());
        }
        let current = s
            .named_epochs
            .get(&producer.producer_id)
            .copied()
            .unwrap_or(0);
        if producer.producer_epoch < current {
            ::metrics::counter!(crate::metrics::PRODUCERS_FENCED, "topic" => topic.to_string())
                .increment(1);
            return Err(ProducerError::Broker(BrokerError::ProducerFenced {
                current_epoch: current,
            }));
        }
        if producer.producer_epoch > current {
            return Err(unknown());
        }
        Ok(())
    }

    /// Named producers kept.
    pub fn names(&self) -> usize {
        self.state().names.len()
    }

    async fn append(&self, key: &str, value: &[u8]) -> Result<(), BrokerError> {
        let topic = producers_topic(&self.broker, self.residence.maker()).await?;
        let record = ProduceRecord {
            partition: Some(PartitionId(0)),
            record: RecordRef {
                timestamp_ms: now_ms(),
                key: Some(key.as_bytes()),
                key_is_utf8: true,
                value: Some(value),
                value_is_json: true,
                headers: &[],
            },
        };
        let timeout = Duration::from_millis(self.broker.limits().wait_ms_max);
        self.broker
            .produce(&topic, &[record], Acks::All, timeout)
            .await
            .map(|_| ())
    }
}

/// Producer names follow the topic-name rule: `[a-zA-Z0-9._-]{1,249}`.
pub fn validate_producer_name(name: &str) -> Result<(), ProducerError> {
    let ok = !name.is_empty()
        && name.len() <= PRODUCER_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProducerError::InvalidName(format!(
            "a producer name is 1 to {PRODUCER_NAME_BYTES_MAX} ASCII letters, digits, '.', '_' or '-'"
        )))
    }
}

/// `__producers`' config: compacted, kept forever.
fn producers_topic_config(broker: &Broker) -> TopicConfig {
    TopicConfig {
        retention_ms: -1,
        retention_bytes: -1,
        cleanup_policy: CleanupPolicy::Compact,
        segment_bytes: PRODUCERS_SEGMENT_BYTES,
        ..broker.config.topic_defaults
    }
}

/// The `__producers` topic, created on first use: here (internal), or by `maker` on a
/// cluster.
async fn producers_topic(
    broker: &Broker,
    maker: Option<&InternalTopicMaker>,
) -> Result<Arc<Topic>, BrokerError> {
    match broker.topic(PRODUCERS_TOPIC) {
        Err(BrokerError::TopicNotFound(_)) => {}
        other => return other,
    }
    let config = producers_topic_config(broker);
    if let Some(maker) = maker {
        (maker.0)(PRODUCERS_TOPIC, config).await?;
        return broker.topic(PRODUCERS_TOPIC);
    }
    match broker.create_topic(PRODUCERS_TOPIC, 1, config, true).await {
        Err(BrokerError::TopicExists(_)) => broker.topic(PRODUCERS_TOPIC),
        other => other,
    }
}

/// Calls `apply(key, value)` for every keyed record with a value of an internal topic, in
/// log order, up to its high watermark.
pub(crate) fn replay_topic(
    broker: &Broker,
    name: &str,
    mut apply: impl FnMut(&[u8], u64, &[u8]),
) -> Result<(), BrokerError> {
    let topic = match broker.topic(name) {
        Err(BrokerError::TopicNotFound(_)) => return Ok(()),
        other => other?,
    };
    for partition in topic.partitions() {
        let mut offset = partition.progress().log_start_offset;
        loop {
            let fetched = partition.fetch_blocking(offset, 10_000, 4 * 1024 * 1024)?;
            let next = fetched.for_each_record(|r| {
                if let (Some(key), Some(value)) = (r.key, r.value) {
                    apply(key, r.offset, value);
                }
                Ok(())
            })?;
            if next <= offset {
                break;
            }
            offset = next;
        }
    }
    Ok(())
}

/// The registry's state replayed from `__producers` (blocking reads).
fn replay_state(broker: &Broker) -> Result<RegistryState, BrokerError> {
    let mut state = RegistryState::default();
    replay(broker, |key, value| {
        if key == IDS_KEY {
            if let Ok(v) = serde_json::from_slice::<IdsValue>(value) {
                state.apply_ids(v.reserved_to);
                return;
            }
        } else if let Some(name) = key.strip_prefix(NAME_KEY_PREFIX)
            && let Ok(s) = serde_json::from_slice::<ProducerSession>(value)
        {
            state.apply_name(name.to_string(), s);
            return;
        }
        tracing::warn!(key, "skipping a bad record in {PRODUCERS_TOPIC}");
    })?;
    state.next_id = state.next_id.max(state.reserved_to);
    Ok(state)
}

impl LoadedFromLog for ProducerRegistry {
    fn residence(&self) -> &Residence {
        &self.residence
    }

    fn drop_state(&self) {
        *self.state() = RegistryState::default();
    }

    fn replay(self: &Arc<Self>) -> Result<Box<dyn FnOnce(LoadId) + Send>, BrokerError> {
        let state = replay_state(&self.broker)?;
        let me = Arc::clone(self);
        Ok(Box::new(move |_| {
            tracing::info!(
                next_id = state.next_id,
                names = state.names.len(),
                "producer sessions loaded"
            );
            *me.state() = state;
        }))
    }
}

fn replay(broker: &Broker, mut apply: impl FnMut(&str, &[u8])) -> Result<(), BrokerError> {
    replay_topic(
        broker,
        PRODUCERS_TOPIC,
        |key, _, value| match std::str::from_utf8(key) {
            Ok(key) => apply(key, value),
            Err(_) => tracing::warn!("skipping a record with a bad key in {PRODUCERS_TOPIC}"),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_topic_name_rule() {
        assert!(validate_producer_name("billing-1.v2_x").is_ok());
        for bad in ["", "a/b", "é", &"x".repeat(250)] {
            assert!(validate_producer_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_restart_skips_the_rest_of_the_last_block_and_names_keep_their_ids() {
        let mut s = RegistryState::default();
        s.apply_ids(1000);
        s.apply_name(
            "a".into(),
            ProducerSession {
                producer_id: 3,
                producer_epoch: 2,
            },
        );
        assert_eq!(s.next_id, 1000, "ids 0..1000 may have been handed out");
        assert_eq!(s.named_epochs.get(&3), Some(&2));
    }
}
