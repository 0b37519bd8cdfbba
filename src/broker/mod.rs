//! The broker: topics, their partitions, and the produce and fetch paths.
//!
//! Architecture invariant: the broker knows nothing of HTTP. It takes parsed records and
//! returns offsets, records and [`BrokerError`]s; `http` renders them.
//!
//! Invariants kept here:
//! - A topic's metadata (`topic.json`) is written atomically (temp file, fsync, rename,
//!   directory fsync) before the topic, or a partition an expansion adds, is visible; a
//!   partition count only grows.
//! - A produce to one partition is one batch: all of its records or none get offsets.
//!   A produce spanning partitions is one batch per partition (as in Kafka).
//! - Every record is validated against the limits before any is appended, and before a
//!   produce auto-creates its topic, so a refused produce leaves no topic behind.
//! - `clean-shutdown` exists in the data directory only between a clean shutdown and the next
//!   start; its presence lets the next start trust the indexes.

pub mod error;
pub mod inline_sync;
pub mod lease;
pub mod partition;
pub mod response_budget;
#[cfg(test)]
pub(crate) mod tests;
pub mod wait;

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use error::BrokerError;
pub use lease::SessionLease;
pub use partition::{
    Fetched, IsrGate, Partition, PartitionLocksForbidden, PartitionStats, Progress, now_ms,
};
pub use response_budget::{ResponseBudget, ResponseBytes};
pub use wait::{WaitKind, WaitSlot, Waiters, Woken};

use crate::config::{BrokerConfig, CleanupPolicy, TopicConfig};
use crate::limits::{Limit, Limits, TOPIC_NAME_BYTES_MAX};
use crate::log::batch::{BatchBuilder, ProducerInfo, RecordRef};
use crate::log::{Offset, sync_dir, write_file_atomic};
use crate::metadata::PartitionId;
use crate::metrics as m;

const CLEAN_SHUTDOWN_MARKER: &str = "clean-shutdown";
/// A lock is poisoned only if a thread panicked holding it, and a panic stops the process
/// (see `node::install_panic_hook`): state behind a poisoned lock is never trusted.
const POISONED: &str = "a lock is poisoned only after a panic, which stops the process";
const TOPIC_META_FILE: &str = "topic.json";

thread_local! {
    /// One batch buffer per thread, reused from produce to produce (taken and put back with no
    /// `.await` in between): building each batch in a fresh buffer of 100+ KiB cost page
    /// faults on every request, about 5% of a 1000-record produce.
    static BATCH_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A batch buffer larger than this is freed after its append rather than kept, so one huge
/// produce does not pin memory on a worker thread.
const BATCH_BUFFER_KEEP_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How much durability a producer asks for before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// Answered once the records are fsynced (on one node: this node). Survives power loss.
    #[default]
    All,
    /// Answered once the records are in the page cache; fsynced within the topic's
    /// `flush_ms`. Survives a process crash, not a power loss in that window.
    Leader,
    /// Answered when the request is accepted; no offsets are returned.
    None,
}

/// What durability actually held when a produce was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    None,
    Leader,
    Fsync,
    /// Fsynced on every member of the in-sync replica set, which had at least
    /// `min_insync_replicas` members.
    IsrFsync,
}

impl Durability {
    /// Every durability, weakest first.
    const ALL: [Durability; 4] = [
        Durability::None,
        Durability::Leader,
        Durability::Fsync,
        Durability::IsrFsync,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Leader => "leader",
            Durability::Fsync => "fsync",
            Durability::IsrFsync => "isr-fsync",
        }
    }

    /// The durability named `name` (as [`Durability::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Durability> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// The weaker of two: what a produce that reached partitions with each can promise.
    pub fn weaker(self, other: Durability) -> Durability {
        let rank = |d: Durability| Self::ALL.iter().position(|x| *x == d);
        if rank(other) < rank(self) {
            other
        } else {
            self
        }
    }
}

/// One record of a produce request, borrowing from the request body.
#[derive(Debug, Clone, Copy)]
pub struct ProduceRecord<'a> {
    /// Explicit partition; otherwise chosen from the key or round-robin.
    pub partition: Option<PartitionId>,
    pub record: RecordRef<'a>,
}

/// The answer to a produce: one `(partition, offset)` per record, in request order.
#[derive(Debug)]
pub struct ProduceOutcome {
    pub offsets: Vec<(PartitionId, Offset)>,
    pub durability: Durability,
}

/// Where one record of a produce that failed part-way stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFate {
    /// Appended, and durable as `acks` asked: its partition and offset.
    Stored(PartitionId, Offset),
    /// Its partition's append or durability wait failed in a way that may have stored it
    /// anyway (a storage failure, a timeout).
    Unconfirmed(PartitionId),
    /// Never handed to its partition: a partition before it failed.
    NotStored,
}

/// A produce that failed: the error, and where each record stands.
#[derive(Debug)]
pub struct FailedProduce {
    pub error: BrokerError,
    /// One per record, in request order; empty when the produce failed before any append
    /// (then no record was stored).
    pub fates: Vec<RecordFate>,
}

/// A topic: its config and its partitions.
#[derive(Debug)]
pub struct Topic {
    pub name: Arc<str>,
    /// The topic's directory.
    dir: PathBuf,
    /// On a cluster member: the metadata's id of the topic (the index of the command that
    /// created it), which tells a re-created topic of the same name from this one. None: a
    /// topic of this broker alone.
    topic_id: Option<u64>,
    config: RwLock<TopicConfig>,
    /// Indexed by partition id, as many as the topic has; `None` where this broker holds no
    /// replica (only on a cluster member). Only grows (online expansion); std lock, never
    /// held across `.await`.
    partitions: RwLock<Vec<Option<Arc<Partition>>>>,
    /// Next partition for unkeyed records.
    round_robin: AtomicU64,
}

/// One partition a produce appends to.
pub(crate) struct PartAppend {
    id: PartitionId,
    partition: Arc<Partition>,
    /// acks=all on a replicated partition: the leadership its wait belongs to.
    gate: Option<IsrGate>,
    /// The offset after its batch, once appended.
    next: Offset,
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    name: String,
    partitions: u32,
    config: TopicConfig,
    /// Cluster members only (absent in a single broker's files, which stay as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topic_id: Option<u64>,
    /// Cluster members only: the partitions this broker holds a replica of (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    local_partitions: Option<Vec<PartitionId>>,
}

impl Topic {
    pub fn config(&self) -> TopicConfig {
        *self.config.read().expect(POISONED)
    }

    /// The metadata's id of the topic on a cluster member; None on a single broker.
    pub fn topic_id(&self) -> Option<u64> {
        self.topic_id
    }

    /// The partitions this broker holds a replica of (on a single broker: all), by id.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        let slots = self.partitions.read().expect(POISONED);
        slots.iter().flatten().cloned().collect()
    }

    /// Every partition of the topic by id, `None` where this broker holds no replica.
    pub fn partition_slots(&self) -> Vec<Option<Arc<Partition>>> {
        self.partitions.read().expect(POISONED).clone()
    }

    /// The distinct partitions of `assignment`, in the order they first appear, with their
    /// local replicas; `Err` names the first one this broker holds no replica of. Only these
    /// replicas are cloned (not the whole topic's), and a produce to one partition allocates
    /// one entry.
    pub(crate) fn replicas_for(
        &self,
        assignment: &[PartitionId],
    ) -> Result<Vec<PartAppend>, PartitionId> {
        /// Past this many distinct partitions, repeats are found in a table, not by a scan.
        const SCAN_MAX: usize = 16;
        let slots = self.partitions.read().expect(POISONED);
        let mut parts: Vec<PartAppend> = Vec::with_capacity(1);
        let mut seen: Vec<bool> = Vec::new();
        for &p in assignment {
            let repeat = if parts.len() < SCAN_MAX {
                parts.iter().any(|part| part.id == p)
            } else {
                if seen.is_empty() {
                    seen = vec![false; slots.len()];
                    for part in &parts {
                        seen[part.id.index()] = true;
                    }
                }
                std::mem::replace(&mut seen[p.index()], true)
            };
            if repeat {
                continue;
            }
            let partition = slots[p.index()].as_ref().ok_or(p)?;
            parts.push(PartAppend {
                id: p,
                partition: Arc::clone(partition),
                gate: None,
                next: Offset::ZERO,
            });
        }
        Ok(parts)
    }

    /// How many partitions the topic has (on a cluster: on every broker, local or not).
    pub fn partition_count(&self) -> u32 {
        self.partitions.read().expect(POISONED).len() as u32
    }

    /// The local replica of partition `id`: `PartitionNotFound` past the topic's partitions,
    /// `NotAReplica` when this broker holds no replica of it (a cluster member).
    pub fn partition(&self, id: PartitionId) -> Result<Arc<Partition>, BrokerError> {
        let partitions = self.partitions.read().expect(POISONED);
        let slot = partitions
            .get(id.index())
            .ok_or(BrokerError::PartitionNotFound {
                partition: u64::from(id.0),
                partitions: partitions.len() as u32,
            })?;
        slot.clone().ok_or_else(|| BrokerError::NotAReplica {
            topic: self.name.to_string(),
            partition: id,
        })
    }

    fn write_meta(&self) -> std::io::Result<()> {
        self.write_meta_counting(self.partition_count())
    }

    /// Writes `topic.json` saying the topic has `partitions` partitions.
    fn write_meta_counting(&self, partitions: u32) -> std::io::Result<()> {
        let local = self.topic_id.map(|_| {
            let slots = self.partitions.read().expect(POISONED);
            slots.iter().flatten().map(|p| p.id).collect()
        });
        self.write_meta_as(partitions, local)
    }

    /// Writes `topic.json`: `partitions` partitions, of which `local` are held here (None:
    /// all, a single broker's topic).
    fn write_meta_as(
        &self,
        partitions: u32,
        local: Option<Vec<PartitionId>>,
    ) -> std::io::Result<()> {
        let meta = TopicMeta {
            name: self.name.to_string(),
            partitions,
            config: self.config(),
            topic_id: self.topic_id,
            local_partitions: local,
        };
        let json = serde_json::to_vec_pretty(&meta).expect("topic meta serializes");
        write_file_atomic(&self.dir.join(TOPIC_META_FILE), &json)
    }
}

/// How long after a topic is deleted a produce may not auto-create it again: producers still
/// running when it was deleted must not resurrect it with the defaults. An explicit create
/// is always allowed.
pub const AUTO_CREATE_AFTER_DELETE: Duration = Duration::from_secs(60);

/// How a topic comes to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Creation {
    /// `POST /v1/topics`.
    Explicit,
    /// A produce to a missing topic, with `auto_create_topics` on.
    Auto,
    /// The broker's own (`__consumer_offsets`).
    Internal,
}

/// What the admin paths share, under the admin lock.
#[derive(Debug, Default)]
struct AdminState {
    /// Names deleted within [`AUTO_CREATE_AFTER_DELETE`], with when: auto-creation refuses
    /// them. Pruned on every deletion and at most `topics_max` long.
    recently_deleted: HashMap<String, std::time::Instant>,
}

impl AdminState {
    fn deleted_recently(&self, name: &str) -> bool {
        self.recently_deleted
            .get(name)
            .is_some_and(|at| at.elapsed() < AUTO_CREATE_AFTER_DELETE)
    }

    fn remember_deleted(&mut self, name: &str, topics_max: u32) {
        self.recently_deleted
            .retain(|_, at| at.elapsed() < AUTO_CREATE_AFTER_DELETE);
        if self.recently_deleted.len() >= topics_max as usize
            && let Some(oldest) = self
                .recently_deleted
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(n, _)| n.clone())
        {
            self.recently_deleted.remove(&oldest);
        }
        self.recently_deleted
            .insert(name.to_string(), std::time::Instant::now());
    }
}

/// A topic as the cluster metadata describes it to one broker (see
/// [`Broker::ensure_replica_topic`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaTopic {
    pub name: String,
    /// The metadata's id of the topic: another id under the same name is another topic.
    pub topic_id: u64,
    /// The topic's partition count.
    pub partitions: u32,
    /// The partitions this broker holds a replica of.
    pub local: Vec<PartitionId>,
    pub config: TopicConfig,
}

/// Which partitions of a topic this broker opens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TopicShape {
    /// The topic's partition count.
    partitions: u32,
    topic_id: Option<u64>,
    /// The partitions held here; None: all of them (a single broker's topic).
    local: Option<Vec<PartitionId>>,
}

impl TopicShape {
    fn all(partitions: u32) -> TopicShape {
        TopicShape {
            partitions,
            topic_id: None,
            local: None,
        }
    }

    fn is_local(&self, partition: PartitionId) -> bool {
        self.local.as_ref().is_none_or(|l| l.contains(&partition))
    }
}

#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    /// std lock: lookups are short and never span an `.await`.
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serializes topic creation, deletion and expansion (admin paths, not the hot path), and
    /// guards what they share.
    admin: tokio::sync::Mutex<AdminState>,
    /// Flipped once on shutdown; long-polls, streams and background tasks end when they see it.
    shutdown: watch::Sender<bool>,
    /// Bounds on long-polls and SSE streams (`long_polls_max`, `streams_max`).
    waiters: Waiters,
    /// Bytes read for consumers and not yet handed out (`response_bytes_in_flight_max`).
    responses: Arc<ResponseBudget>,
    /// On a cluster member: the lease on its controller session; produces are refused
    /// while it is not held. Unset on a broker alone.
    session_lease: OnceLock<Arc<SessionLease>>,
    /// Tests only: a fault the next expansion's `topic.json` write waits on and fails with.
    #[cfg(test)]
    expansion_meta_fault: std::sync::Mutex<Option<Arc<tests::MetaWriteFault>>>,
}

impl Broker {
    /// Opens the data directory, recovering every topic found there.
    pub async fn open(config: BrokerConfig) -> Result<Arc<Self>, BrokerError> {
        let io = |e: std::io::Error| BrokerError::Io(e.to_string());
        let topics_dir = config.data_dir.join("topics");
        std::fs::create_dir_all(&topics_dir).map_err(io)?;
        std::fs::create_dir_all(config.data_dir.join("trash")).map_err(io)?;
        let marker = config.data_dir.join(CLEAN_SHUTDOWN_MARKER);
        let clean = marker.exists();
        if clean {
            std::fs::remove_file(&marker).map_err(io)?;
            sync_dir(&config.data_dir).map_err(io)?;
        }
        let waiters = Waiters::new(&config.limits);
        let responses = ResponseBudget::new(config.limits.response_bytes_in_flight_max);
        let broker = Arc::new(Broker {
            config,
            waiters,
            responses,
            session_lease: OnceLock::new(),
            topics: RwLock::new(HashMap::new()),
            admin: tokio::sync::Mutex::new(AdminState::default()),
            shutdown: watch::Sender::new(false),
            #[cfg(test)]
            expansion_meta_fault: std::sync::Mutex::new(None),
        });
        for entry in std::fs::read_dir(&topics_dir).map_err(io)? {
            let dir = entry.map_err(io)?.path();
            let Ok(text) = std::fs::read(dir.join(TOPIC_META_FILE)) else {
                continue;
            };
            let meta: TopicMeta = serde_json::from_slice(&text)
                .map_err(|e| BrokerError::Io(format!("{}: {e}", dir.display())))?;
            let shape = TopicShape {
                partitions: meta.partitions,
                topic_id: meta.topic_id,
                local: meta.local_partitions,
            };
            let topic = broker.open_topic(&dir, &meta.name, &shape, meta.config, clean)?;
            broker.topics_write().insert(meta.name, topic);
        }
        // Leftovers of deletions interrupted by a crash: what the trash holds now, entry by
        // entry. The trash itself stays: a deletion right after the start moves its files
        // into it (removing and making the trash again raced with that rename).
        let leftovers: Vec<(PathBuf, bool)> =
            std::fs::read_dir(broker.config.data_dir.join("trash"))
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| (e.path(), e.file_type().is_ok_and(|t| t.is_dir())))
                        .collect()
                })
                .unwrap_or_default();
        if !leftovers.is_empty() {
            tokio::task::spawn_blocking(move || {
                for (path, is_dir) in leftovers {
                    let _ = if is_dir {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            });
        }
        Ok(broker)
    }

    fn topics_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics.read().expect(POISONED)
    }

    fn topics_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics.write().expect(POISONED)
    }

    /// Makes produces depend on the lease of this cluster member's controller session.
    pub fn set_session_lease(&self, lease: Arc<SessionLease>) {
        let _ = self.session_lease.set(lease);
    }

    /// False while this cluster member's controller session may have ended.
    fn session_held(&self) -> bool {
        self.session_lease.get().is_none_or(|l| l.held())
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// On a cluster member (`--peers` set) topics come from the cluster metadata
    /// ([`Self::ensure_replica_topic`]); a produce never auto-creates one locally.
    pub fn topics_from_metadata(&self) -> bool {
        !self.config.peers.trim().is_empty()
    }

    /// A topic's log settings with the broker's limits on idempotent producers.
    fn log_config(&self, config: &TopicConfig) -> crate::log::LogConfig {
        let limits = self.limits();
        crate::log::LogConfig {
            producers_max: limits.producers_per_partition_max,
            producer_idle_timeout_ms: i64::try_from(limits.producer_idle_timeout_ms)
                .unwrap_or(i64::MAX),
            ..config.log_config()
        }
    }

    fn open_topic(
        &self,
        dir: &Path,
        name: &str,
        shape: &TopicShape,
        config: TopicConfig,
        clean: bool,
    ) -> Result<Arc<Topic>, BrokerError> {
        let name: Arc<str> = Arc::from(name);
        let mut opened = Vec::with_capacity(shape.partitions as usize);
        for p in PartitionId::all(shape.partitions) {
            if !shape.is_local(p) {
                // A replica topic's directory of a partition `topic.json` does not count: a
                // removal (a reassignment moved it away) or an addition cut short by a crash.
                // Never opened, so never served: its files go.
                let stray = dir.join(p.to_string());
                if shape.topic_id.is_some() && stray.exists() {
                    tracing::info!(topic = %name, partition = p.0, "removing the files of a replica this broker does not hold");
                    std::fs::remove_dir_all(&stray).map_err(|e| {
                        BrokerError::from_io(format_args!("removing {name}/{p}"), e)
                    })?;
                }
                opened.push(None);
                continue;
            }
            let (partition, report) = Partition::open(
                Arc::clone(&name),
                p,
                &dir.join(p.to_string()),
                self.log_config(&config),
                config.flush_policy(),
                clean,
            )
            .map_err(|e| BrokerError::from_io(format_args!("opening {name}/{p}"), e))?;
            if shape.topic_id.is_some() {
                partition.await_role();
            }
            if report.truncated_bytes > 0 || report.dropped_segments > 0 {
                tracing::warn!(
                    topic = %name,
                    partition = p.0,
                    truncated_bytes = report.truncated_bytes,
                    dropped_segments = report.dropped_segments,
                    rebuilt_indexes = report.rebuilt_indexes,
                    "recovery cut a torn or corrupt tail"
                );
                ::metrics::counter!(m::RECOVERY_TRUNCATIONS, "topic" => name.to_string())
                    .increment(1);
            }
            opened.push(Some(partition));
        }
        Ok(Arc::new(Topic {
            name,
            dir: dir.to_path_buf(),
            topic_id: shape.topic_id,
            config: RwLock::new(config),
            partitions: RwLock::new(opened),
            round_robin: AtomicU64::new(0),
        }))
    }

    /// The topic `name`; a name that breaks the naming rule is `InvalidTopicName` (the
    /// client's mistake), not `TopicNotFound` (a topic that may exist later).
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        if let Some(topic) = self.topics_read().get(name) {
            return Ok(Arc::clone(topic));
        }
        validate_topic_name(name)?;
        Err(BrokerError::TopicNotFound(name.to_string()))
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut topics: Vec<_> = self.topics_read().values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    /// Creates a topic. `internal` allows names starting with `__`.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
        internal: bool,
    ) -> Result<Arc<Topic>, BrokerError> {
        let creation = if internal {
            Creation::Internal
        } else {
            Creation::Explicit
        };
        self.create_topic_as(name, partitions, config, creation)
            .await
    }

    async fn create_topic_as(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
        creation: Creation,
    ) -> Result<Arc<Topic>, BrokerError> {
        let internal = creation == Creation::Internal;
        self.check_new_topic(name, partitions, config, internal)?;
        let mut admin = self.admin.lock().await;
        if self.is_shutting_down() {
            return Err(BrokerError::ShuttingDown);
        }
        if self.topics_read().contains_key(name) {
            return Err(BrokerError::TopicExists(name.to_string()));
        }
        // Checked under the admin lock, so a produce that saw the topic missing while its
        // deletion ran cannot bring it back once the deletion is done.
        if creation == Creation::Auto && admin.deleted_recently(name) {
            return Err(BrokerError::TopicNotFound(name.to_string()));
        }
        admin.recently_deleted.remove(name);
        // Internal topics are the broker's own and never refused for room user topics took
        // (a full broker must still store group commits); they are not counted either.
        if !internal {
            let topics_max = self.limits().topics_max;
            let user_topics = self
                .topics_read()
                .keys()
                .filter(|t| !is_internal_topic(t))
                .count();
            if user_topics as u64 >= u64::from(topics_max) {
                return Err(BrokerError::LimitExceeded {
                    limit_name: Limit::TopicsMax,
                    limit: u64::from(topics_max),
                    detail: format!("the broker already has {topics_max} topics"),
                });
            }
            self.check_partitions_max(partitions)?;
        }
        let io = |e: std::io::Error| BrokerError::from_io(format_args!("creating {name}"), e);
        let dir = self.config.data_dir.join("topics").join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io)?;
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        let topic = self.open_topic(&dir, name, &TopicShape::all(partitions), config, false)?;
        topic.write_meta().map_err(io)?;
        sync_dir(&self.config.data_dir.join("topics")).map_err(io)?;
        self.topics_write()
            .insert(name.to_string(), Arc::clone(&topic));
        tracing::info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    /// The checks of a new topic that need nothing but its request: the name (`internal`
    /// allows `__` names), the partition count, the config. A cluster's controller runs
    /// them too before it proposes a topic.
    pub fn check_new_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
        internal: bool,
    ) -> Result<(), BrokerError> {
        validate_topic_name(name)?;
        if is_internal_topic(name) && !internal {
            return Err(BrokerError::InternalTopic(name.to_string()));
        }
        self.check_partitions_per_topic(partitions)?;
        config.validate().map_err(BrokerError::InvalidRequest)
    }

    /// A topic has between 1 and `partitions_per_topic_max` partitions; none at all is a
    /// malformed request, not a crossed limit.
    pub fn check_partitions_per_topic(&self, partitions: u32) -> Result<(), BrokerError> {
        if partitions == 0 {
            return Err(BrokerError::InvalidRequest(
                "partitions must be at least 1".into(),
            ));
        }
        let max = self.limits().partitions_per_topic_max;
        if partitions > max {
            return Err(BrokerError::LimitExceeded {
                limit_name: Limit::PartitionsPerTopicMax,
                limit: u64::from(max),
                detail: format!("partitions must be between 1 and {max}"),
            });
        }
        Ok(())
    }

    /// Every partition holds open files (a log and two indexes per segment): the broker-wide
    /// partition count is capped so the process stays well inside its file-descriptor limit.
    /// Counts user topics only: the few internal partitions are room kept for the broker.
    fn check_partitions_max(&self, adding: u32) -> Result<(), BrokerError> {
        let max = self.limits().partitions_max;
        let current: u64 = self
            .topics_read()
            .values()
            .filter(|t| !is_internal_topic(&t.name))
            .map(|t| u64::from(t.partition_count()))
            .sum();
        if current + u64::from(adding) > u64::from(max) {
            return Err(BrokerError::LimitExceeded {
                limit_name: Limit::PartitionsMax,
                limit: u64::from(max),
                detail: format!(
                    "the broker has {current} partitions; {adding} more would pass {max}"
                ),
            });
        }
        Ok(())
    }

    /// Deletes a topic: it disappears at once, its files go in the background.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        let mut admin = self.admin.lock().await;
        self.delete_topic_locked(&mut admin, name)
    }

    fn delete_topic_locked(&self, admin: &mut AdminState, name: &str) -> Result<(), BrokerError> {
        let topic = self.topic(name)?;
        let io = |e: std::io::Error| BrokerError::Io(e.to_string());
        let trash = self.trash_path(name, "");
        // Rename first: if it fails, the topic is still fully there rather than gone from the
        // list but back again at the next start.
        std::fs::rename(&topic.dir, &trash).map_err(io)?;
        sync_dir(&self.config.data_dir.join("topics")).map_err(io)?;
        self.topics_write().remove(name);
        admin.remember_deleted(name, self.limits().topics_max);
        for p in topic.partitions() {
            p.mark_deleted();
        }
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(trash));
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Grows a topic to `count` partitions while it serves.
    pub async fn expand_partitions(
        &self,
        name: &str,
        count: u32,
    ) -> Result<Arc<Topic>, BrokerError> {
        let _admin = self.admin.lock().await;
        if self.is_shutting_down() {
            return Err(BrokerError::ShuttingDown);
        }
        let topic = self.topic(name)?;
        let current = topic.partition_count();
        let max = self.limits().partitions_per_topic_max;
        if count > max {
            return Err(BrokerError::LimitExceeded {
                limit_name: Limit::PartitionsPerTopicMax,
                limit: u64::from(max),
                detail: format!("partitions must be at most {max}"),
            });
        }
        if count <= current {
            return Err(BrokerError::InvalidRequest(format!(
                "count must be larger than the current {current} partitions"
            )));
        }
        self.check_partitions_max(count - current)?;
        let config = topic.config();
        let io = |e: std::io::Error| BrokerError::Io(e.to_string());
        // Open every new partition before any becomes visible. A directory left by an
        // expansion that failed or crashed before `topic.json` counted it is not a partition:
        // it is removed, so a new partition always starts empty.
        let mut opened = Vec::with_capacity((count - current) as usize);
        for p in (current..count).map(PartitionId) {
            match open_empty_partition(&topic, p, config, self.log_config(&config)) {
                Ok(partition) => opened.push(partition),
                Err(e) => {
                    opened.iter().for_each(|p| p.mark_deleted());
                    return Err(io(e));
                }
            }
        }
        // Durable first, then visible: `topic.json` counts the new partitions before any
        // producer can reach them, so no acknowledged record ever lives in a partition that a
        // restart would not open (and the next expansion would wipe). A failed write leaves
        // them unseen; a crash after it leaves them counted and empty.
        if let Err(e) = self.write_expansion_meta(&topic, count).await {
            opened.iter().for_each(|p| p.mark_deleted());
            return Err(io(e));
        }
        topic
            .partitions
            .write()
            .expect(POISONED)
            .extend(opened.into_iter().map(Some));
        tracing::info!(topic = name, partitions = count, "topic expanded");
        Ok(topic)
    }

    /// On a cluster member: makes the local topic match the metadata's `spec` (the replica
    /// manager calls it). Creates the topic, or replaces one of the same name with another
    /// `topic_id` (a re-created topic: the old one's data goes), grows its partition count,
    /// opens the partitions newly held here, and takes a changed config. Limits were checked
    /// by the controller, so none are checked here. Returns the topic and whether anything
    /// changed.
    ///
    /// A topic of a single broker's (no `topic_id`) under the same name is never replaced:
    /// that is refused with `TopicExists`, nothing changed.
    pub async fn ensure_replica_topic(
        &self,
        spec: &ReplicaTopic,
    ) -> Result<(Arc<Topic>, bool), BrokerError> {
        let mut admin = self.admin.lock().await;
        if self.is_shutting_down() {
            return Err(BrokerError::ShuttingDown);
        }
        let name = spec.name.as_str();
        let io = |e: std::io::Error| BrokerError::from_io(format_args!("replica of {name}"), e);
        let existing = self.topics_read().get(name).cloned();
        let topic = match existing {
            Some(t) if t.topic_id == Some(spec.topic_id) => t,
            Some(t) if t.topic_id.is_none() => {
                return Err(BrokerError::TopicExists(name.to_string()));
            }
            other => {
                if other.is_some() {
                    self.delete_topic_locked(&mut admin, name)?;
                }
                let topic = self.create_replica_topic(spec).map_err(io)?;
                self.topics_write()
                    .insert(name.to_string(), Arc::clone(&topic));
                tracing::info!(topic = name, topic_id = spec.topic_id, local = ?spec.local, "replica topic created");
                return Ok((topic, true));
            }
        };
        let mut changed = false;
        if topic.config() != spec.config {
            *topic.config.write().expect(POISONED) = spec.config;
            for p in topic.partitions() {
                p.set_config(self.log_config(&spec.config), spec.config.flush_policy());
            }
            topic.write_meta().map_err(io)?;
            changed = true;
        }
        let slots = topic.partition_slots();
        let count = spec.partitions.max(slots.len() as u32);
        let adding: Vec<PartitionId> = spec
            .local
            .iter()
            .copied()
            .filter(|p| p.0 < count && slots.get(p.index()).is_none_or(Option::is_none))
            .collect();
        if count == slots.len() as u32 && adding.is_empty() {
            return Ok((topic, changed));
        }
        // Opened, then counted durably in `topic.json`, then visible (as an expansion).
        let mut opened = Vec::with_capacity(adding.len());
        for &p in &adding {
            match open_empty_partition(&topic, p, spec.config, self.log_config(&spec.config)) {
                Ok(partition) => opened.push(partition),
                Err(e) => {
                    opened.iter().for_each(|p| p.mark_deleted());
                    return Err(io(e));
                }
            }
        }
        let mut local: Vec<PartitionId> = slots.iter().flatten().map(|p| p.id).collect();
        local.extend(&adding);
        local.sort_unstable();
        if let Err(e) = topic.write_meta_as(count, Some(local)) {
            opened.iter().for_each(|p| p.mark_deleted());
            return Err(io(e));
        }
        let mut slots = topic.partitions.write().expect(POISONED);
        slots.resize(count as usize, None);
        for partition in opened {
            let at = partition.id.index();
            slots[at] = Some(partition);
        }
        drop(slots);
        tracing::info!(topic = name, partitions = count, added = ?adding, "replica topic grew");
        Ok((topic, true))
    }

    /// A new path in the data directory's trash for files of topic `name` (`suffix` after
    /// it). The whole name plus a suffix could pass the file system's 255-byte limit (names
    /// go up to 249): a short prefix and a sequence number keep the trash name short and
    /// unique.
    fn trash_path(&self, name: &str, suffix: &str) -> PathBuf {
        static TRASH_SEQ: AtomicU64 = AtomicU64::new(0);
        self.config.data_dir.join("trash").join(format!(
            "{}{suffix}-{}-{}",
            &name[..name.len().min(64)],
            now_ms(),
            TRASH_SEQ.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Removes this broker's replica of one partition of a replica topic (a reassignment
    /// moved it away) while it keeps others of the topic. `topic.json` stops counting it
    /// first, so a crash after it leaves a directory no start opens; then the partition is
    /// closed (its waiters and readers fail as for a deleted topic) and its directory goes
    /// to the trash. Nothing to do if the topic (of that `topic_id`) or the replica is gone.
    pub async fn remove_replica(
        &self,
        name: &str,
        topic_id: u64,
        p: PartitionId,
    ) -> Result<(), BrokerError> {
        let _admin = self.admin.lock().await;
        let Some(topic) = self
            .topics_read()
            .get(name)
            .filter(|t| t.topic_id == Some(topic_id))
            .cloned()
        else {
            return Ok(());
        };
        let slots = topic.partition_slots();
        let Some(Some(partition)) = slots.get(p.index()) else {
            return Ok(());
        };
        let io = |e: std::io::Error| BrokerError::from_io(format_args!("removing {name}/{p}"), e);
        let local: Vec<PartitionId> = slots
            .iter()
            .flatten()
            .map(|q| q.id)
            .filter(|q| *q != p)
            .collect();
        topic
            .write_meta_as(slots.len() as u32, Some(local))
            .map_err(io)?;
        topic.partitions.write().expect(POISONED)[p.index()] = None;
        // It leads nothing from now on, so a producer waiting on it is told the leadership
        // changed after its append (outcome unknown: the new leader may hold its records),
        // not that the storage failed.
        partition.set_follower(true);
        partition.set_isr_gate(None);
        partition.mark_deleted();
        let trash = self.trash_path(name, &format!("-{p}"));
        std::fs::rename(topic.dir.join(p.to_string()), &trash).map_err(io)?;
        sync_dir(&topic.dir).map_err(io)?;
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(trash));
        tracing::info!(
            topic = name,
            partition = p.0,
            "replica removed: a reassignment moved it away"
        );
        Ok(())
    }

    /// A new replica topic's directory, partitions and `topic.json`; not yet visible.
    fn create_replica_topic(&self, spec: &ReplicaTopic) -> std::io::Result<Arc<Topic>> {
        let topics = self.config.data_dir.join("topics");
        let dir = topics.join(&spec.name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let shape = TopicShape {
            partitions: spec.partitions,
            topic_id: Some(spec.topic_id),
            local: Some(spec.local.clone()),
        };
        let topic = self
            .open_topic(&dir, &spec.name, &shape, spec.config, false)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Err(e) = topic.write_meta().and_then(|()| sync_dir(&topics)) {
            topic.partitions().iter().for_each(|p| p.mark_deleted());
            return Err(e);
        }
        Ok(topic)
    }

    /// The `topic.json` write of an expansion to `count` partitions (a fault point in tests).
    async fn write_expansion_meta(&self, topic: &Topic, count: u32) -> std::io::Result<()> {
        #[cfg(test)]
        {
            let fault = self.expansion_meta_fault.lock().expect(POISONED).take();
            if let Some(fault) = fault {
                return fault.strike().await;
            }
        }
        topic.write_meta_counting(count)
    }

    /// Replaces a topic's config (the HTTP layer merges a PATCH into the current one).
    /// Sets a topic's config to `config`, if it is still `expected` (what the caller read and
    /// changed); `None` when a change was made since (another PATCH, or the topic deleted
    /// and made again with another config): it is not overwritten, and the caller merges
    /// again onto what is there now.
    pub async fn update_topic_config(
        &self,
        name: &str,
        expected: &TopicConfig,
        config: TopicConfig,
    ) -> Result<Option<Arc<Topic>>, BrokerError> {
        config.validate().map_err(BrokerError::InvalidRequest)?;
        let _admin = self.admin.lock().await;
        let topic = self.topic(name)?;
        if topic.config() != *expected {
            return Ok(None);
        }
        *topic.config.write().expect(POISONED) = config;
        for p in topic.partitions() {
            p.set_config(self.log_config(&config), config.flush_policy());
        }
        topic
            .write_meta()
            .map_err(|e| BrokerError::Io(e.to_string()))?;
        tracing::info!(topic = name, ?config, "topic config changed");
        Ok(Some(topic))
    }

    /// The topic to produce `records` to, created with the defaults if `auto_create_topics`
    /// is on and the name was not deleted in the last [`AUTO_CREATE_AFTER_DELETE`] (live
    /// producers must not bring a deleted topic back).
    ///
    /// A topic is created only for records it would take: they are checked first against the
    /// defaults it would get, so a refused produce leaves no new topic behind. [`Self::produce`]
    /// checks them again against the topic it is given.
    pub async fn topic_for_produce(
        &self,
        name: &str,
        records: &[ProduceRecord<'_>],
    ) -> Result<Arc<Topic>, BrokerError> {
        if is_internal_topic(name) {
            validate_topic_name(name)?;
            return Err(BrokerError::InternalTopic(name.to_string()));
        }
        match self.topic(name) {
            Err(BrokerError::TopicNotFound(_))
                if self.config.auto_create_topics && !self.topics_from_metadata() =>
            {
                validate_topic_name(name)?;
                if self.is_shutting_down() {
                    return Err(BrokerError::ShuttingDown);
                }
                let record_max = self
                    .limits()
                    .record_bytes_max
                    .min(self.config.topic_defaults.max_message_bytes);
                self.check_records(records, record_max, self.config.default_partitions)?;
                let created = self
                    .create_topic_as(
                        name,
                        self.config.default_partitions,
                        self.config.topic_defaults,
                        Creation::Auto,
                    )
                    .await;
                match created {
                    // Another request created it meanwhile.
                    Err(BrokerError::TopicExists(_)) => self.topic(name),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Appends records to a topic and waits for the durability `acks` asks for.
    pub async fn produce(
        &self,
        topic: &Topic,
        records: &[ProduceRecord<'_>],
        acks: Acks,
        timeout: Duration,
    ) -> Result<ProduceOutcome, BrokerError> {
        self.produce_reporting(topic, records, acks, timeout)
            .await
            .map_err(|failed| failed.error)
    }

    /// [`Self::produce`], saying on failure which records were stored.
    ///
    /// Records go to their partitions one partition at a time, in the order the partitions
    /// first appear in the request, and the first failed append stops the rest. Partitions
    /// already appended are still waited on (`acks=all`), so a record reported
    /// [`RecordFate::Stored`] is as durable as a success would have said.
    pub async fn produce_reporting(
        &self,
        topic: &Topic,
        records: &[ProduceRecord<'_>],
        acks: Acks,
        timeout: Duration,
    ) -> Result<ProduceOutcome, FailedProduce> {
        self.produce_as(topic, records, acks, timeout, ProducerInfo::NONE)
            .await
    }

    /// [`Self::produce_reporting`] as an idempotent `producer` (or [`ProducerInfo::NONE`]):
    /// each partition's batch carries its id, epoch and sequence, and a partition that
    /// already holds that sequence answers the offsets it gave it and writes nothing.
    ///
    /// Unkeyed records without a partition go round-robin from a start chosen by the
    /// sequence, not by the topic's counter, so a retry puts every record where its first
    /// attempt did.
    pub async fn produce_as(
        &self,
        topic: &Topic,
        records: &[ProduceRecord<'_>],
        acks: Acks,
        timeout: Duration,
        producer: ProducerInfo,
    ) -> Result<ProduceOutcome, FailedProduce> {
        let before_any_append = |error| FailedProduce {
            error,
            fates: Vec::new(),
        };
        if *self.shutdown.borrow() {
            return Err(before_any_append(BrokerError::ShuttingDown));
        }
        if !self.session_held() {
            return Err(before_any_append(BrokerError::SessionLost {
                appended: false,
            }));
        }
        let count = topic.partition_count();
        let round_robin_from =
            (producer.producer_id >= 0).then(|| producer.base_sequence.unsigned_abs().into());
        let assignment = self
            .assign_partitions(topic, count, records, round_robin_from)
            .map_err(before_any_append)?;
        // On a cluster member, a record for a partition held elsewhere fails the whole
        // produce before anything is appended (the HTTP layer splits produces by leader).
        let mut parts = topic.replicas_for(&assignment).map_err(|p| {
            before_any_append(BrokerError::NotAReplica {
                topic: topic.name.to_string(),
                partition: p,
            })
        })?;
        // acks=all on a replicated partition: refused before anything is appended when its
        // in-sync replica set is below the minimum; else each producer is counted on its
        // partitions (before the append, so the leader's next answer to its followers asks
        // them to fsync at once).
        let mut replicated = false;
        let mut waiters = Vec::new();
        if acks == Acks::All {
            for part in &mut parts {
                if let Some(gate) = part.partition.isr_gate() {
                    if !gate.open() {
                        return Err(before_any_append(BrokerError::NotEnoughReplicas {
                            isr: gate.isr,
                            min_insync_replicas: gate.min_insync_replicas,
                        }));
                    }
                    replicated = true;
                    part.gate = Some(gate);
                    waiters.push(part.partition.acks_all_waiter());
                }
            }
        }
        let mut offsets = vec![(PartitionId(0), Offset::ZERO); records.len()];
        // `parts[..appended]` were appended, each up to its `next`.
        let mut appended = 0;
        let mut failed_append = None;
        for part in &mut parts {
            let p = part.id;
            let members = || {
                assignment
                    .iter()
                    .enumerate()
                    .filter(move |(_, a)| **a == p)
                    .map(|(i, _)| i)
            };
            let bytes: usize = members().map(|i| records[i].record.encoded_len()).sum();
            let mut builder = BatchBuilder::reusing(BATCH_BUFFER.take(), bytes);
            for i in members() {
                builder.push(&records[i].record);
            }
            let record_count = builder.record_count();
            let mut batch = builder.finish(producer, None);
            let result = part
                .partition
                .append(&mut batch, record_count, acks == Acks::All);
            if batch.capacity() <= BATCH_BUFFER_KEEP_BYTES_MAX {
                BATCH_BUFFER.set(batch);
            }
            let (base, next) = match result {
                Ok(range) => range,
                Err(e) => {
                    failed_append = Some((p, e));
                    break;
                }
            };
            for (j, i) in members().enumerate() {
                offsets[i] = (p, base + j as u64);
            }
            part.next = next;
            appended += 1;
        }
        // How many of the appended parts are durable as `acks` asked, and why the next one
        // is not.
        let mut confirmed = appended;
        let mut failed_wait = None;
        if acks == Acks::All {
            for (k, part) in parts[..appended].iter().enumerate() {
                let waited = part
                    .partition
                    .wait_replicated(part.next, timeout, part.gate)
                    .await;
                if let Err(e) = waited {
                    (confirmed, failed_wait) = (k, Some(e));
                    break;
                }
            }
        }
        drop(waiters);
        // A leader whose session ran out meanwhile may have been replaced by one without
        // these records: nothing is reported stored.
        if failed_append.is_none() && failed_wait.is_none() && !self.session_held() {
            (confirmed, failed_wait) = (0, Some(BrokerError::SessionLost { appended: true }));
        }
        let (error, failed_partition) = match (failed_append, failed_wait) {
            (None, None) => {
                let durability = match acks {
                    Acks::All if replicated => Durability::IsrFsync,
                    Acks::All => Durability::Fsync,
                    Acks::Leader => Durability::Leader,
                    Acks::None => Durability::None,
                };
                return Ok(ProduceOutcome {
                    offsets,
                    durability,
                });
            }
            (Some((p, e)), _) => (e, Some(p)),
            (None, Some(e)) => (e, None),
        };
        // Per partition: `Some(true)` stored, `Some(false)` unconfirmed, `None` never tried.
        let mut stored: Vec<Option<bool>> = vec![None; count as usize];
        for (k, part) in parts[..appended].iter().enumerate() {
            stored[part.id.index()] = Some(k < confirmed);
        }
        if let Some(p) = failed_partition {
            stored[p.index()] = Some(false);
        }
        let fates = assignment
            .iter()
            .zip(&offsets)
            .map(|(&p, &(_, offset))| match stored[p.index()] {
                Some(true) => RecordFate::Stored(p, offset),
                Some(false) => RecordFate::Unconfirmed(p),
                None => RecordFate::NotStored,
            })
            .collect();
        Err(FailedProduce { error, fates })
    }

    /// Validates every record and picks its partition: explicit, by key hash, or round-robin
    /// (from `round_robin_from` if given, else from the topic's counter).
    fn assign_partitions(
        &self,
        topic: &Topic,
        count: u32,
        records: &[ProduceRecord<'_>],
        round_robin_from: Option<u64>,
    ) -> Result<Vec<PartitionId>, BrokerError> {
        let record_max = self
            .limits()
            .record_bytes_max
            .min(topic.config().max_message_bytes);
        self.check_records(records, record_max, count)?;
        let unkeyed = records
            .iter()
            .filter(|r| r.partition.is_none() && r.record.key.is_none())
            .count();
        let mut next_rr = round_robin_from.unwrap_or_else(|| {
            topic
                .round_robin
                .fetch_add(unkeyed as u64, Ordering::Relaxed)
        });
        Ok(records
            .iter()
            .map(|r| choose_partition(r, count, &mut next_rr))
            .collect())
    }

    /// Validates a produce's records against the limits, a topic's `record_max` and its
    /// partition `count`, without touching the topic.
    pub fn check_records(
        &self,
        records: &[ProduceRecord<'_>],
        record_max: u64,
        count: u32,
    ) -> Result<(), BrokerError> {
        let limits = self.limits();
        if records.is_empty() {
            return Err(BrokerError::InvalidRequest(
                "a produce request needs at least one record".into(),
            ));
        }
        if records.len() as u64 > u64::from(limits.records_per_request_max) {
            return Err(BrokerError::LimitExceeded {
                limit_name: Limit::RecordsPerRequestMax,
                limit: u64::from(limits.records_per_request_max),
                detail: format!("{} records in one request", records.len()),
            });
        }
        for r in records {
            check_record_limits(&r.record, record_max, limits)?;
            if let Some(p) = r.partition
                && p.0 >= count
            {
                return Err(BrokerError::PartitionNotFound {
                    partition: u64::from(p.0),
                    partitions: count,
                });
            }
        }
        Ok(())
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Begins shutdown: long-polls and streams end, new produces are refused.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Finishes a clean shutdown: every partition synced and sealed, then the marker.
    pub async fn close(&self) -> Result<(), BrokerError> {
        self.begin_shutdown();
        // Waits for a topic creation or expansion in progress; later ones see the shutdown.
        let _admin = self.admin.lock().await;
        let io = |e: std::io::Error| BrokerError::Io(e.to_string());
        // Every partition is closed even if one fails; the marker is written only if all
        // closed cleanly (a failed partition must be recovered, not trusted, next time).
        let mut first_error = None;
        for topic in self.topics() {
            for p in topic.partitions() {
                if let Err(e) = p.close().await {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(io(e));
        }
        let marker = self.config.data_dir.join(CLEAN_SHUTDOWN_MARKER);
        write_file_atomic(&marker, b"clean\n").map_err(io)?;
        Ok(())
    }

    /// Refreshes the metric series of every topic and partition (see
    /// [`Partition::refresh_metrics`]); the node calls it well within the idle timeout.
    pub fn refresh_metrics(&self) {
        for topic in self.topics() {
            for p in topic.partitions() {
                p.refresh_metrics();
            }
        }
    }

    /// The retention and compaction task; ends at shutdown. The node spawns and owns it.
    pub async fn run_retention(self: Arc<Self>) {
        let mut shutdown = self.shutdown_signal();
        let every = Duration::from_millis(self.config.retention_check_interval_ms.max(10));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let keys_max = self.limits().compaction_keys_per_pass_max;
            for topic in self.topics() {
                let config = topic.config();
                for p in topic.partitions() {
                    let p2 = Arc::clone(&p);
                    let result = tokio::task::spawn_blocking(move || {
                        p2.expire_producers(now_ms());
                        match config.cleanup_policy {
                            CleanupPolicy::Delete => p2.apply_retention(now_ms()).map(|_| ()),
                            CleanupPolicy::Compact => p2
                                .compact(now_ms(), config.delete_retention_ms, keys_max)
                                .map(|_| ()),
                        }
                    })
                    .await;
                    if let Ok(Err(e)) = result {
                        tracing::error!(topic = %p.topic, partition = p.id.0, "retention or compaction failed: {e}");
                    }
                }
            }
        }
    }
}

/// Names starting with `__` belong to the broker (`__consumer_offsets`): clients cannot
/// create or produce to them, and they do not count against `topics_max`/`partitions_max`.
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with("__")
}

/// Kafka's topic name rule.
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    let bad = |why: &str| Err(BrokerError::InvalidTopicName(why.to_string()));
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return bad("the name is longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not topic names");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// The partition of one record of a topic with `count` partitions: its explicit one, by its
/// key's hash, or else the next round-robin one (`next_round_robin` moves on).
pub fn choose_partition(
    record: &ProduceRecord<'_>,
    count: u32,
    next_round_robin: &mut u64,
) -> PartitionId {
    match (record.partition, record.record.key) {
        (Some(p), _) => p,
        (None, Some(key)) => partition_for_key(key, count),
        (None, None) => {
            *next_round_robin += 1;
            PartitionId(((*next_round_robin - 1) % u64::from(count.max(1))) as u32)
        }
    }
}

/// Same key, same partition: a stable hash (CRC-32 of the key bytes) modulo the count.
pub fn partition_for_key(key: &[u8], partitions: u32) -> PartitionId {
    PartitionId(crc32fast::hash(key) % partitions.max(1))
}

fn check_record_limits(
    r: &RecordRef<'_>,
    record_max: u64,
    limits: &Limits,
) -> Result<(), BrokerError> {
    let size = r.encoded_len() as u64;
    if size > record_max {
        return Err(BrokerError::RecordTooLarge {
            bytes: size,
            limit: record_max,
        });
    }
    if let Some(key) = r.key
        && key.len() as u64 > u64::from(limits.key_bytes_max)
    {
        return Err(BrokerError::LimitExceeded {
            limit_name: Limit::KeyBytesMax,
            limit: u64::from(limits.key_bytes_max),
            detail: format!("key of {} bytes", key.len()),
        });
    }
    if r.headers.len() as u64 > u64::from(limits.headers_per_record_max) {
        return Err(BrokerError::LimitExceeded {
            limit_name: Limit::HeadersPerRecordMax,
            limit: u64::from(limits.headers_per_record_max),
            detail: format!("{} headers on one record", r.headers.len()),
        });
    }
    for (name, value) in r.headers {
        let bytes = name.len() + value.len();
        if bytes as u64 > u64::from(limits.header_bytes_max) || name.len() > usize::from(u16::MAX) {
            return Err(BrokerError::LimitExceeded {
                limit_name: Limit::HeaderBytesMax,
                limit: u64::from(limits.header_bytes_max),
                detail: format!("header '{name}' of {bytes} bytes"),
            });
        }
    }
    Ok(())
}

/// Opens partition `p` of `topic` as a new, empty log: a directory left there by an expansion
/// that failed or crashed before `topic.json` counted it is not a partition and is removed.
fn open_empty_partition(
    topic: &Topic,
    p: PartitionId,
    config: TopicConfig,
    log_config: crate::log::LogConfig,
) -> std::io::Result<Arc<Partition>> {
    let dir = topic.dir.join(p.to_string());
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let (partition, _) = Partition::open(
        Arc::clone(&topic.name),
        p,
        &dir,
        log_config,
        config.flush_policy(),
        false,
    )?;
    if topic.topic_id.is_some() {
        partition.await_role();
    }
    Ok(partition)
}
