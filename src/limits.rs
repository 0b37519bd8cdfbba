//! Every limit on client input, named in one place, unit last.
//!
//! Crossing a limit is a 4xx problem that names the limit (`"limit": N`), never a crash or a
//! hang. Defaults are sane for one broker on a small machine; all can be changed in the
//! config file (`[limits]`).

use serde::{Deserialize, Serialize};

/// Topic names: Kafka's rule, `[a-zA-Z0-9._-]{1,249}`, not `.` or `..`.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Sealed segments per partition kept loaded for reads (log file open, two indexes mapped),
/// least recently used out first; every other sealed segment holds no file descriptor. With
/// the active segment's three files, a partition holds at most `3 + this` descriptors,
/// however many segments it has (see `partitions_max`).
pub const SEALED_SEGMENTS_LOADED_PER_PARTITION_MAX: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted on any route; more is a 413 and the connection closes.
    pub request_body_bytes_max: u64,
    /// Largest single record (key + value + headers as encoded).
    pub record_bytes_max: u64,
    /// Most records in one produce request.
    pub records_per_request_max: u32,
    /// Deepest nesting of arrays and objects in a record's JSON value: a value nested
    /// 100,000 deep would break common parsers on every fetch page that holds it.
    pub json_depth_max: u32,
    /// How far past the broker's clock a record's `timestamp_ms` may be (Kafka's
    /// `message.timestamp.after.max.ms`): a far-future record would hold off time retention
    /// of its segment for as long.
    pub timestamp_ms_ahead_max: u64,
    /// How far before the broker's clock a record's `timestamp_ms` may be (Kafka's
    /// `message.timestamp.before.max.ms`); large by default, finite so time arithmetic
    /// on timestamps cannot overflow.
    pub timestamp_ms_behind_max: u64,
    /// Largest record key.
    pub key_bytes_max: u32,
    /// Most headers on one record.
    pub headers_per_record_max: u32,
    /// Largest header name plus value.
    pub header_bytes_max: u32,
    /// Longest long-poll wait and produce timeout a client may ask for.
    pub wait_ms_max: u64,
    /// Most fetches waiting at once (long-polls and group member fetches); more get a 503
    /// with `Retry-After`, so idle waiters cannot hold every connection.
    pub long_polls_max: u32,
    /// Most SSE streams open at once; more get a 503 with `Retry-After`.
    pub streams_max: u32,
    /// Most partitions a topic may have.
    pub partitions_per_topic_max: u32,
    /// Most user topics a broker keeps (internal `__` topics are not counted).
    pub topics_max: u32,
    /// Most partitions a broker keeps over all its user topics (each holds open files;
    /// internal topics are not counted, so group commits are never refused for room).
    pub partitions_max: u32,
    /// Most records one fetch returns.
    pub fetch_records_max: u32,
    /// Most bytes one fetch reads from the log (one batch may exceed it, as in Kafka).
    pub fetch_bytes_max: u64,
    /// Most bytes of fetch and SSE pages read for consumers and not yet handed to their
    /// connections, over all of them (clients that do not read hold theirs); a page that does
    /// not fit gets a 503 with `Retry-After`.
    pub response_bytes_in_flight_max: u64,
    /// Most concurrent connections serving the API; more wait in the accept queue (past
    /// the health reserve below).
    pub connections_max: u32,
    /// Connections accepted past `connections_max` that serve only `/healthz`, `/readyz` and
    /// `/metrics`, so a full broker can still be probed and scraped.
    pub health_connections_max: u32,
    /// Longest wait for a request's headers, from the moment a connection waits for them (so
    /// also how long an idle keep-alive connection stays open).
    pub header_read_timeout_ms: u64,
    /// Longest a request body may make no progress before it is answered with a 408.
    pub body_stall_timeout_ms: u64,
    /// Longest a whole request body may take, from the request head, before a 408.
    pub body_read_timeout_ms: u64,
    /// NDJSON bodies are appended in batches of about this many bytes, so a large body is
    /// never buffered whole.
    pub ndjson_batch_bytes: u64,
    /// Shortest consumer-group session a member may ask for.
    pub group_session_timeout_ms_min: u64,
    /// Longest consumer-group session a member may ask for.
    pub group_session_timeout_ms_max: u64,
    /// Most members in one consumer group.
    pub group_members_max: u32,
    /// Most consumer groups a broker keeps (with members or committed offsets).
    pub groups_max: u32,
    /// Most topics one group member subscribes to.
    pub group_topics_max: u32,
    /// Most offsets in one commit (one commit is one batch in `__consumer_offsets`).
    pub group_commit_offsets_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_body_bytes_max: 64 * 1024 * 1024,
            record_bytes_max: 1024 * 1024,
            records_per_request_max: 100_000,
            json_depth_max: 64,
            timestamp_ms_ahead_max: 3_600_000,
            // 100 years (of 365.25 days).
            timestamp_ms_behind_max: 3_155_760_000_000,
            key_bytes_max: 16 * 1024,
            headers_per_record_max: 64,
            header_bytes_max: 16 * 1024,
            wait_ms_max: 30_000,
            long_polls_max: 1024,
            streams_max: 1024,
            partitions_per_topic_max: 1024,
            topics_max: 10_000,
            partitions_max: 2_000,
            fetch_records_max: 10_000,
            fetch_bytes_max: 16 * 1024 * 1024,
            response_bytes_in_flight_max: 256 * 1024 * 1024,
            connections_max: 4096,
            health_connections_max: 16,
            header_read_timeout_ms: 10_000,
            body_stall_timeout_ms: 10_000,
            body_read_timeout_ms: 120_000,
            ndjson_batch_bytes: 4 * 1024 * 1024,
            group_session_timeout_ms_min: 1_000,
            group_session_timeout_ms_max: 300_000,
            group_members_max: 1_000,
            groups_max: 10_000,
            group_topics_max: 100,
            group_commit_offsets_max: 1_000,
        }
    }
}
