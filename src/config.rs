//! Broker and topic configuration: embedded defaults, a TOML file, environment, flags.
//!
//! Precedence, lowest first: built-in defaults, `--config FILE`, `TIDELOG_*` environment
//! variables, command-line flags (clap merges the last two).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits::{Limit, Limits};
use crate::log::{LogConfig, SEGMENT_BYTES_MAX};

/// The largest integer a JSON number carries exactly in every client (2^53 - 1, JavaScript's
/// `Number.MAX_SAFE_INTEGER`): a topic's config is read back by clients that parse JSON numbers
/// as doubles, so a larger setting would read back rounded and could not be written back.
pub const JSON_INTEGER_MAX: i64 = (1 << 53) - 1;

/// Settings of one broker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address the HTTP API listens on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Origins whose web pages may call the API from a browser (CORS), as
    /// `scheme://host[:port]`, or `["*"]` for any; empty (the default) turns CORS off.
    pub cors_allowed_origins: Vec<String>,
    /// Directory holding all topics.
    pub data_dir: PathBuf,
    /// Create a topic on its first produce (off by default: a typo in a topic name would
    /// silently create a topic). Never re-creates a topic deleted in the last minute.
    pub auto_create_topics: bool,
    /// Partitions of an automatically created topic.
    pub default_partitions: u32,
    /// Config of topics that do not set their own.
    pub topic_defaults: TopicConfig,
    /// How often retention runs, in milliseconds.
    pub retention_check_interval_ms: u64,
    /// A metric series not updated for this long leaves `/metrics`: that is how the series
    /// of a deleted topic or group go. The node refreshes live ones every quarter of it.
    pub metrics_idle_timeout_ms: u64,
    /// Most threads of the pool that runs file work off the async workers (fsyncs, reads,
    /// segment rolls). Threads start on demand and stay while work comes; beyond this many
    /// busy ones, file work waits for a free thread. Each thread costs a stack and a share
    /// of the allocator's caches, so the pool's size bounds the broker's memory too.
    pub blocking_threads: u64,
    /// Lets a partition's fsync round of one `fdatasync` run on the async worker that asked
    /// for it rather than the blocking pool, when the runtime has two workers or more (see
    /// `broker::inline_sync`): fewer thread wake-ups per round. Off: every round goes to the
    /// pool.
    pub fsync_on_workers: bool,
    /// This broker's id in the cluster (`--node-id`, `TIDELOG_NODE_ID`).
    pub node_id: u32,
    /// The cluster's brokers, `ID=HOST:PORT,...` (`--peers`, `TIDELOG_PEERS`); empty: this
    /// broker runs alone, as a cluster of one with no controller machinery.
    pub peers: String,
    /// The controller fences a broker whose heartbeats stop for this long, in milliseconds.
    pub broker_session_timeout_ms: u64,
    /// The metadata Raft leader's heartbeat to the other voters, in milliseconds.
    pub raft_heartbeat_ms: u64,
    /// A voter that hears no leader for this long (drawn between it and twice it) starts an
    /// election, in milliseconds. Must be more than twice `raft_heartbeat_ms`.
    pub raft_election_timeout_ms: u64,
    /// Lets a voter start although its data directory lost its cluster state (wiped, or a new
    /// disk) while the other voters know its node id (`--rejoin-after-data-loss`): it then
    /// neither votes nor campaigns until its metadata log holds what they had applied when it
    /// started. Off, such a broker refuses to start.
    pub rejoin_after_data_loss: bool,
    /// A follower not caught up with its leader for this long leaves the in-sync replica
    /// set, in milliseconds. `acks=all` producers wait at most about this long on a dead
    /// follower before the set shrinks and their records are acknowledged without it.
    pub replica_lag_time_max_ms: u64,
    /// Longest a follower's fetch waits at the leader for new records, in milliseconds.
    pub replica_fetch_wait_max_ms: u64,
    /// How often every local replica's stored batches are read back and checked against
    /// their CRCs (a cluster only), in milliseconds; also once when the broker starts, before
    /// its followers fetch. A follower with damage cuts it and fetches it again.
    pub replica_scrub_interval_ms: u64,
    /// Longest a SIGTERM'd cluster member waits, in milliseconds, for the controller to move
    /// its leaderships to other in-sync replicas (controlled shutdown) before it stops
    /// anyway; 0 stops at once, as a broker alone does.
    pub controlled_shutdown_timeout_ms: u64,
    pub limits: Limits,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            cors_allowed_origins: Vec::new(),
            data_dir: PathBuf::from("./data"),
            auto_create_topics: false,
            default_partitions: 1,
            topic_defaults: TopicConfig::default(),
            retention_check_interval_ms: 30_000,
            metrics_idle_timeout_ms: 60_000,
            blocking_threads: 64,
            fsync_on_workers: true,
            node_id: 1,
            peers: String::new(),
            broker_session_timeout_ms: 9_000,
            raft_heartbeat_ms: 300,
            raft_election_timeout_ms: 1_500,
            rejoin_after_data_loss: false,
            replica_lag_time_max_ms: 10_000,
            replica_fetch_wait_max_ms: 500,
            replica_scrub_interval_ms: 86_400_000,
            controlled_shutdown_timeout_ms: 10_000,
            limits: Limits::default(),
        }
    }
}

impl BrokerConfig {
    /// Reads a TOML config file; every key is optional.
    pub fn from_toml_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Refuses a configuration that cannot work (a limit of 0 where nothing would pass, limits
    /// that contradict each other, an interval of 0); the message starts with the key, as it
    /// is written in the config file.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        let key = |limit: Limit| format!("limits.{limit}");
        let positive_limits = [
            Limit::RequestBodyBytesMax,
            Limit::RecordBytesMax,
            Limit::RecordsPerRequestMax,
            Limit::PartitionsPerTopicMax,
            Limit::TopicsMax,
            Limit::PartitionsMax,
            Limit::FetchRecordsMax,
            Limit::FetchBytesMax,
            Limit::JsonDepthMax,
            Limit::ConnectionsMax,
            Limit::HeaderReadTimeoutMs,
            Limit::BodyStallTimeoutMs,
            Limit::BodyReadTimeoutMs,
            Limit::NdjsonBatchBytes,
            Limit::GroupSessionTimeoutMsMax,
            Limit::GroupMembersMax,
            Limit::GroupsMax,
            Limit::GroupTopicsMax,
            Limit::GroupCommitOffsetsMax,
            Limit::CompactionKeysPerPassMax,
            Limit::ForwardTimeoutMs,
            Limit::ProducersPerPartitionMax,
            Limit::ProducerIdleTimeoutMs,
        ];
        let must_be_positive = positive_limits
            .map(|limit| (key(limit), l.get(limit)))
            .into_iter()
            .chain([
                (
                    "default_partitions".to_owned(),
                    self.default_partitions.into(),
                ),
                (
                    "retention_check_interval_ms".to_owned(),
                    self.retention_check_interval_ms,
                ),
                ("blocking_threads".to_owned(), self.blocking_threads),
                (
                    "replica_lag_time_max_ms".to_owned(),
                    self.replica_lag_time_max_ms,
                ),
                (
                    "replica_fetch_wait_max_ms".to_owned(),
                    self.replica_fetch_wait_max_ms,
                ),
                (
                    "replica_scrub_interval_ms".to_owned(),
                    self.replica_scrub_interval_ms,
                ),
                ("raft_heartbeat_ms".to_owned(), self.raft_heartbeat_ms),
            ]);
        for (key, value) in must_be_positive {
            if value == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        // Heartbeats must reach a follower several times within an election timeout, or it
        // starts elections against a live leader.
        if self.raft_election_timeout_ms <= 2 * self.raft_heartbeat_ms {
            return Err(format!(
                "raft_election_timeout_ms ({}) must be more than twice raft_heartbeat_ms ({})",
                self.raft_election_timeout_ms, self.raft_heartbeat_ms
            ));
        }
        // A follower waiting at the leader as long as it may lag would leave the ISR while
        // it is only waiting.
        if self.replica_fetch_wait_max_ms >= self.replica_lag_time_max_ms {
            return Err(format!(
                "replica_fetch_wait_max_ms must be below replica_lag_time_max_ms ({})",
                self.replica_lag_time_max_ms
            ));
        }
        // (key, value, the key it may not exceed, that key's value)
        let at_most = [
            (Limit::RecordBytesMax, Limit::RequestBodyBytesMax),
            (Limit::FetchBytesMax, Limit::ResponseBytesInFlightMax),
            (Limit::BodyStallTimeoutMs, Limit::BodyReadTimeoutMs),
            (
                Limit::GroupSessionTimeoutMsMin,
                Limit::GroupSessionTimeoutMsMax,
            ),
        ]
        .map(|(limit, bound)| (key(limit), l.get(limit), key(bound), l.get(bound)))
        .into_iter()
        .chain([(
            "default_partitions".to_owned(),
            self.default_partitions.into(),
            key(Limit::PartitionsPerTopicMax),
            l.get(Limit::PartitionsPerTopicMax),
        )]);
        for (key, value, bound_key, bound) in at_most {
            if value > bound {
                return Err(format!(
                    "{key} ({value}) must not exceed {bound_key} ({bound})"
                ));
            }
        }
        for origin in &self.cors_allowed_origins {
            let any = origin == "*" && self.cors_allowed_origins.len() == 1;
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let is_origin = host.is_some_and(|h| !h.is_empty() && !h.contains(['/', ' ']));
            if !(any || is_origin) {
                return Err(format!(
                    "cors_allowed_origins: {origin:?} is not an origin (scheme://host[:port], \
                     or \"*\" alone)"
                ));
            }
        }
        self.topic_defaults
            .validate()
            .map_err(|e| format!("topic_defaults.{e}"))
    }
}

/// When `acks=leader` data is synced (acks=all data is synced at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    pub flush_ms: u64,
    pub flush_bytes: u64,
}

/// What happens to old segments.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    /// Delete whole segments past `retention_ms` or `retention_bytes`.
    #[default]
    Delete,
    /// Keep the latest record per key (log compaction).
    Compact,
}

/// Per-topic settings, changeable with `PATCH /v1/topics/{topic}`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TopicConfig {
    /// Delete segments whose newest record is older than this; -1 keeps them forever.
    pub retention_ms: i64,
    /// Delete the oldest segments while a partition is larger than this; -1 for no limit.
    pub retention_bytes: i64,
    /// Roll a segment at this size.
    pub segment_bytes: u64,
    /// Roll a segment at this age.
    pub segment_ms: i64,
    pub cleanup_policy: CleanupPolicy,
    /// With `cleanup_policy = compact`: how long a tombstone (null value) is kept after its
    /// segment was written, so consumers that are behind still see the delete.
    pub delete_retention_ms: i64,
    /// With `acks=leader`, fsync at most this long after the write (acks=all syncs at once).
    pub flush_ms: u64,
    /// With `acks=leader`, fsync as soon as this many bytes are unsynced.
    pub flush_bytes: u64,
    /// Largest record accepted for this topic (capped by the broker's `record_bytes_max`).
    pub max_message_bytes: u64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        let log = LogConfig::default();
        TopicConfig {
            retention_ms: log.retention_ms.unwrap_or(-1),
            retention_bytes: -1,
            segment_bytes: log.segment_bytes,
            segment_ms: log.segment_ms,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: 24 * 3600 * 1000,
            flush_ms: 10,
            flush_bytes: 4 * 1024 * 1024,
            max_message_bytes: 1024 * 1024,
        }
    }
}

impl TopicConfig {
    /// Checks ranges; returns the first problem found, its message starting with the key.
    /// `flush_ms = 0` is allowed: it syncs as soon as the flusher runs, batching whatever
    /// arrived meanwhile.
    pub fn validate(&self) -> Result<(), String> {
        let in_range = [
            ("segment_bytes", self.segment_bytes, 1024, SEGMENT_BYTES_MAX),
            ("flush_ms", self.flush_ms, 0, 60_000),
            ("flush_bytes", self.flush_bytes, 1, SEGMENT_BYTES_MAX),
            (
                "max_message_bytes",
                self.max_message_bytes,
                1,
                SEGMENT_BYTES_MAX,
            ),
        ];
        for (key, value, min, max) in in_range {
            if !(min..=max).contains(&value) {
                return Err(format!("{key} must be between {min} and {max}"));
            }
        }
        if self.segment_ms < 1 {
            return Err("segment_ms must be at least 1".into());
        }
        for (key, value) in [
            ("retention_ms", self.retention_ms),
            ("retention_bytes", self.retention_bytes),
        ] {
            if value < -1 {
                return Err(format!("{key} is -1 (unlimited) or not negative"));
            }
        }
        if self.delete_retention_ms < 0 {
            return Err("delete_retention_ms must not be negative".into());
        }
        for (key, value) in [
            ("retention_ms", self.retention_ms),
            ("retention_bytes", self.retention_bytes),
            ("segment_ms", self.segment_ms),
            ("delete_retention_ms", self.delete_retention_ms),
        ] {
            if value > JSON_INTEGER_MAX {
                return Err(format!(
                    "{key} must be at most {JSON_INTEGER_MAX} (what a JSON number carries exactly)"
                ));
            }
        }
        Ok(())
    }

    pub fn flush_policy(&self) -> FlushPolicy {
        FlushPolicy {
            flush_ms: self.flush_ms,
            flush_bytes: self.flush_bytes,
        }
    }

    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            index_interval_bytes: 4096,
            retention_ms: (self.retention_ms >= 0).then_some(self.retention_ms),
            retention_bytes: (self.retention_bytes >= 0).then_some(self.retention_bytes as u64),
            ..LogConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each broken config file is refused, naming the key (the first word of the message).
    #[test]
    fn configurations_that_cannot_work_are_refused_with_their_key() {
        let cases = [
            ("[limits]\nconnections_max = 0", "limits.connections_max"),
            (
                "[limits]\nrecords_per_request_max = 0",
                "limits.records_per_request_max",
            ),
            ("[limits]\nfetch_bytes_max = 0", "limits.fetch_bytes_max"),
            (
                "[limits]\nheader_read_timeout_ms = 0",
                "limits.header_read_timeout_ms",
            ),
            (
                "[limits]\nbody_stall_timeout_ms = 9000\nbody_read_timeout_ms = 10",
                "limits.body_stall_timeout_ms",
            ),
            (
                "retention_check_interval_ms = 0",
                "retention_check_interval_ms",
            ),
            ("default_partitions = 0", "default_partitions"),
            ("blocking_threads = 0", "blocking_threads"),
            ("replica_lag_time_max_ms = 0", "replica_lag_time_max_ms"),
            (
                "replica_lag_time_max_ms = 500\nreplica_fetch_wait_max_ms = 500",
                "replica_fetch_wait_max_ms",
            ),
            (
                "cors_allowed_origins = [\"app.example\"]",
                "cors_allowed_origins:",
            ),
            (
                "cors_allowed_origins = [\"https://a.example/\"]",
                "cors_allowed_origins:",
            ),
            (
                "cors_allowed_origins = [\"*\", \"https://a.example\"]",
                "cors_allowed_origins:",
            ),
            (
                "[limits]\nrequest_body_bytes_max = 1000\nrecord_bytes_max = 2000",
                "limits.record_bytes_max",
            ),
            (
                "[limits]\ngroup_session_timeout_ms_min = 5000\ngroup_session_timeout_ms_max = 10",
                "limits.group_session_timeout_ms_min",
            ),
            (
                "default_partitions = 20\n[limits]\npartitions_per_topic_max = 10",
                "default_partitions",
            ),
            (
                "[topic_defaults]\nflush_bytes = 18446744073709551615",
                "topic_defaults.flush_bytes",
            ),
            (
                "[topic_defaults]\nmax_message_bytes = 18446744073709551615",
                "topic_defaults.max_message_bytes",
            ),
            (
                "[topic_defaults]\nflush_bytes = 0",
                "topic_defaults.flush_bytes",
            ),
            (
                "[limits]\nresponse_bytes_in_flight_max = 1024",
                "limits.fetch_bytes_max",
            ),
            (
                "[topic_defaults]\nflush_ms = 600000",
                "topic_defaults.flush_ms",
            ),
            (
                "[topic_defaults]\nsegment_bytes = 10",
                "topic_defaults.segment_bytes",
            ),
            (
                "[topic_defaults]\nretention_ms = -2",
                "topic_defaults.retention_ms",
            ),
            (
                "[topic_defaults]\nretention_bytes = -5",
                "topic_defaults.retention_bytes",
            ),
            (
                "[topic_defaults]\nretention_ms = 9007199254740992",
                "topic_defaults.retention_ms",
            ),
            (
                "[topic_defaults]\nsegment_ms = 9223372036854775807",
                "topic_defaults.segment_ms",
            ),
            (
                "[topic_defaults]\ndelete_retention_ms = 9007199254740992",
                "topic_defaults.delete_retention_ms",
            ),
            (
                "[topic_defaults]\nretention_bytes = 9007199254740992",
                "topic_defaults.retention_bytes",
            ),
        ];
        for (toml_text, key) in cases {
            let config: BrokerConfig = toml::from_str(toml_text).expect(toml_text);
            let error = config.validate().expect_err(toml_text);
            assert_eq!(
                error.split_whitespace().next(),
                Some(key),
                "{toml_text}: {error}"
            );
        }
        BrokerConfig::default()
            .validate()
            .expect("the defaults work");
        let flush_at_once: BrokerConfig = toml::from_str("[topic_defaults]\nflush_ms = 0").unwrap();
        flush_at_once
            .validate()
            .expect("flush_ms = 0 syncs at once");
        let largest: BrokerConfig =
            toml::from_str("[topic_defaults]\nsegment_ms = 9007199254740991").unwrap();
        largest
            .validate()
            .expect("2^53 - 1 is carried exactly by a JSON number");
    }
}
