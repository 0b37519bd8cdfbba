//! Broker and topic configuration: embedded defaults, a TOML file, environment, flags.
//!
//! Precedence, lowest first: built-in defaults, `--config FILE`, `TIDELOG_*` environment
//! variables, command-line flags (clap merges the last two).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits::Limits;
use crate::log::{LogConfig, SEGMENT_BYTES_MAX};

/// Settings of one broker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address the HTTP API listens on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
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
    pub limits: Limits,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            data_dir: PathBuf::from("./data"),
            auto_create_topics: false,
            default_partitions: 1,
            topic_defaults: TopicConfig::default(),
            retention_check_interval_ms: 30_000,
            metrics_idle_timeout_ms: 300_000,
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
    /// Checks ranges; returns the first problem found.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < 1024 || self.segment_bytes > SEGMENT_BYTES_MAX {
            return Err(format!(
                "segment_bytes must be between 1024 and {SEGMENT_BYTES_MAX}"
            ));
        }
        if self.segment_ms < 1 {
            return Err("segment_ms must be at least 1".into());
        }
        if self.retention_ms < -1 || self.retention_bytes < -1 {
            return Err("retention_ms and retention_bytes are -1 (unlimited) or positive".into());
        }
        if self.delete_retention_ms < 0 {
            return Err("delete_retention_ms must not be negative".into());
        }
        if self.flush_ms > 60_000 {
            return Err("flush_ms must be at most 60000".into());
        }
        if self.flush_bytes == 0 {
            return Err("flush_bytes must be positive".into());
        }
        if self.max_message_bytes == 0 {
            return Err("max_message_bytes must be positive".into());
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
        }
    }
}
