//! Every limit on client input, named in one place ([`Limit`]), unit last.
//!
//! Crossing a limit is a 4xx problem that names the limit (`"limit": N`), never a crash or a
//! hang. Defaults are sane for one broker on a small machine; all can be changed in the
//! config file (`[limits]`).

use std::fmt;

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
    /// Connections accepted past `connections_max` that serve only probes (`/healthz`,
    /// `/readyz`), scrapes (`/metrics`) and admin calls (topics, groups and their offsets
    /// looked at or changed; never produce, fetch, streams or group members), so a broker
    /// full of clients can still be probed, scraped and administered.
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
    /// Most distinct keys one compaction pass maps (a 16-byte digest and an offset each: 25 to
    /// 55 bytes a key with the hash map's spare room, at most about 50 MiB at the default); a
    /// partition with more keys is compacted in passes, so a client writing ever new keys
    /// cannot grow the broker's memory. Compaction runs one partition at a time.
    pub compaction_keys_per_pass_max: u32,
    /// On a cluster, longest a broker waits for the broker it forwards a request to (the
    /// controller, a partition's leader) to begin its answer, on top of the wait the request
    /// itself asks for (`wait_ms`, `timeout_ms`); past it the client gets a 504.
    pub forward_timeout_ms: u64,
    /// Most idempotent producers one partition tracks (their last sequences and offsets); a
    /// new producer past it is refused until idle ones expire.
    pub producers_per_partition_max: u32,
    /// How long a partition keeps an idempotent producer that has not written to it; after
    /// that, a retry of its old requests is no longer recognized.
    pub producer_idle_timeout_ms: u64,
    /// Most named producers (`POST /v1/producers` with a `name`) a broker keeps.
    pub producer_names_max: u32,
    /// How long an `Idempotency-Key` is honoured after its answer was stored: a retry within
    /// it is answered again, one after it runs as a new request.
    pub idempotency_key_lifetime_ms: u64,
    /// Most `Idempotency-Key`s a broker keeps (stored and in progress), a few hundred bytes
    /// of memory each and their answers on disk; a new key past it is refused until keys
    /// expire.
    pub idempotency_keys_max: u32,
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
            compaction_keys_per_pass_max: 1_000_000,
            forward_timeout_ms: 10_000,
            producers_per_partition_max: 10_000,
            producer_idle_timeout_ms: 86_400_000,
            producer_names_max: 100_000,
            idempotency_key_lifetime_ms: 86_400_000,
            idempotency_keys_max: 100_000,
        }
    }
}

/// One field of [`Limits`], so a check names the limit it enforces by value, not by a string
/// repeated at each check: [`Limit::name`] is the field's key in the config's `[limits]`
/// table, and the `limit_name` of every problem that crosses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    RequestBodyBytesMax,
    RecordBytesMax,
    RecordsPerRequestMax,
    JsonDepthMax,
    TimestampMsAheadMax,
    TimestampMsBehindMax,
    KeyBytesMax,
    HeadersPerRecordMax,
    HeaderBytesMax,
    WaitMsMax,
    LongPollsMax,
    StreamsMax,
    PartitionsPerTopicMax,
    TopicsMax,
    PartitionsMax,
    FetchRecordsMax,
    FetchBytesMax,
    ResponseBytesInFlightMax,
    ConnectionsMax,
    HealthConnectionsMax,
    HeaderReadTimeoutMs,
    BodyStallTimeoutMs,
    BodyReadTimeoutMs,
    NdjsonBatchBytes,
    GroupSessionTimeoutMsMin,
    GroupSessionTimeoutMsMax,
    GroupMembersMax,
    GroupsMax,
    GroupTopicsMax,
    GroupCommitOffsetsMax,
    CompactionKeysPerPassMax,
    ForwardTimeoutMs,
    ProducersPerPartitionMax,
    ProducerIdleTimeoutMs,
    ProducerNamesMax,
    IdempotencyKeyLifetimeMs,
    IdempotencyKeysMax,
}

impl Limit {
    /// Every limit, in the order of the fields of [`Limits`].
    pub const ALL: [Limit; 37] = [
        Limit::RequestBodyBytesMax,
        Limit::RecordBytesMax,
        Limit::RecordsPerRequestMax,
        Limit::JsonDepthMax,
        Limit::TimestampMsAheadMax,
        Limit::TimestampMsBehindMax,
        Limit::KeyBytesMax,
        Limit::HeadersPerRecordMax,
        Limit::HeaderBytesMax,
        Limit::WaitMsMax,
        Limit::LongPollsMax,
        Limit::StreamsMax,
        Limit::PartitionsPerTopicMax,
        Limit::TopicsMax,
        Limit::PartitionsMax,
        Limit::FetchRecordsMax,
        Limit::FetchBytesMax,
        Limit::ResponseBytesInFlightMax,
        Limit::ConnectionsMax,
        Limit::HealthConnectionsMax,
        Limit::HeaderReadTimeoutMs,
        Limit::BodyStallTimeoutMs,
        Limit::BodyReadTimeoutMs,
        Limit::NdjsonBatchBytes,
        Limit::GroupSessionTimeoutMsMin,
        Limit::GroupSessionTimeoutMsMax,
        Limit::GroupMembersMax,
        Limit::GroupsMax,
        Limit::GroupTopicsMax,
        Limit::GroupCommitOffsetsMax,
        Limit::CompactionKeysPerPassMax,
        Limit::ForwardTimeoutMs,
        Limit::ProducersPerPartitionMax,
        Limit::ProducerIdleTimeoutMs,
        Limit::ProducerNamesMax,
        Limit::IdempotencyKeyLifetimeMs,
        Limit::IdempotencyKeysMax,
    ];

    /// The limit's key in `[limits]`, as problems and messages name it.
    pub const fn name(self) -> &'static str {
        match self {
            Limit::RequestBodyBytesMax => "request_body_bytes_max",
            Limit::RecordBytesMax => "record_bytes_max",
            Limit::RecordsPerRequestMax => "records_per_request_max",
            Limit::JsonDepthMax => "json_depth_max",
            Limit::TimestampMsAheadMax => "timestamp_ms_ahead_max",
            Limit::TimestampMsBehindMax => "timestamp_ms_behind_max",
            Limit::KeyBytesMax => "key_bytes_max",
            Limit::HeadersPerRecordMax => "headers_per_record_max",
            Limit::HeaderBytesMax => "header_bytes_max",
            Limit::WaitMsMax => "wait_ms_max",
            Limit::LongPollsMax => "long_polls_max",
            Limit::StreamsMax => "streams_max",
            Limit::PartitionsPerTopicMax => "partitions_per_topic_max",
            Limit::TopicsMax => "topics_max",
            Limit::PartitionsMax => "partitions_max",
            Limit::FetchRecordsMax => "fetch_records_max",
            Limit::FetchBytesMax => "fetch_bytes_max",
            Limit::ResponseBytesInFlightMax => "response_bytes_in_flight_max",
            Limit::ConnectionsMax => "connections_max",
            Limit::HealthConnectionsMax => "health_connections_max",
            Limit::HeaderReadTimeoutMs => "header_read_timeout_ms",
            Limit::BodyStallTimeoutMs => "body_stall_timeout_ms",
            Limit::BodyReadTimeoutMs => "body_read_timeout_ms",
            Limit::NdjsonBatchBytes => "ndjson_batch_bytes",
            Limit::GroupSessionTimeoutMsMin => "group_session_timeout_ms_min",
            Limit::GroupSessionTimeoutMsMax => "group_session_timeout_ms_max",
            Limit::GroupMembersMax => "group_members_max",
            Limit::GroupsMax => "groups_max",
            Limit::GroupTopicsMax => "group_topics_max",
            Limit::GroupCommitOffsetsMax => "group_commit_offsets_max",
            Limit::CompactionKeysPerPassMax => "compaction_keys_per_pass_max",
            Limit::ForwardTimeoutMs => "forward_timeout_ms",
            Limit::ProducersPerPartitionMax => "producers_per_partition_max",
            Limit::ProducerIdleTimeoutMs => "producer_idle_timeout_ms",
            Limit::ProducerNamesMax => "producer_names_max",
            Limit::IdempotencyKeyLifetimeMs => "idempotency_key_lifetime_ms",
            Limit::IdempotencyKeysMax => "idempotency_keys_max",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Limits {
    /// The value of `limit`.
    pub fn get(&self, limit: Limit) -> u64 {
        match limit {
            Limit::RequestBodyBytesMax => self.request_body_bytes_max,
            Limit::RecordBytesMax => self.record_bytes_max,
            Limit::RecordsPerRequestMax => u64::from(self.records_per_request_max),
            Limit::JsonDepthMax => u64::from(self.json_depth_max),
            Limit::TimestampMsAheadMax => self.timestamp_ms_ahead_max,
            Limit::TimestampMsBehindMax => self.timestamp_ms_behind_max,
            Limit::KeyBytesMax => u64::from(self.key_bytes_max),
            Limit::HeadersPerRecordMax => u64::from(self.headers_per_record_max),
            Limit::HeaderBytesMax => u64::from(self.header_bytes_max),
            Limit::WaitMsMax => self.wait_ms_max,
            Limit::LongPollsMax => u64::from(self.long_polls_max),
            Limit::StreamsMax => u64::from(self.streams_max),
            Limit::PartitionsPerTopicMax => u64::from(self.partitions_per_topic_max),
            Limit::TopicsMax => u64::from(self.topics_max),
            Limit::PartitionsMax => u64::from(self.partitions_max),
            Limit::FetchRecordsMax => u64::from(self.fetch_records_max),
            Limit::FetchBytesMax => self.fetch_bytes_max,
            Limit::ResponseBytesInFlightMax => self.response_bytes_in_flight_max,
            Limit::ConnectionsMax => u64::from(self.connections_max),
            Limit::HealthConnectionsMax => u64::from(self.health_connections_max),
            Limit::HeaderReadTimeoutMs => self.header_read_timeout_ms,
            Limit::BodyStallTimeoutMs => self.body_stall_timeout_ms,
            Limit::BodyReadTimeoutMs => self.body_read_timeout_ms,
            Limit::NdjsonBatchBytes => self.ndjson_batch_bytes,
            Limit::GroupSessionTimeoutMsMin => self.group_session_timeout_ms_min,
            Limit::GroupSessionTimeoutMsMax => self.group_session_timeout_ms_max,
            Limit::GroupMembersMax => u64::from(self.group_members_max),
            Limit::GroupsMax => u64::from(self.groups_max),
            Limit::GroupTopicsMax => u64::from(self.group_topics_max),
            Limit::GroupCommitOffsetsMax => u64::from(self.group_commit_offsets_max),
            Limit::CompactionKeysPerPassMax => u64::from(self.compaction_keys_per_pass_max),
            Limit::ForwardTimeoutMs => self.forward_timeout_ms,
            Limit::ProducersPerPartitionMax => u64::from(self.producers_per_partition_max),
            Limit::ProducerIdleTimeoutMs => self.producer_idle_timeout_ms,
            Limit::ProducerNamesMax => u64::from(self.producer_names_max),
            Limit::IdempotencyKeyLifetimeMs => self.idempotency_key_lifetime_ms,
            Limit::IdempotencyKeysMax => u64::from(self.idempotency_keys_max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `Limit` names a distinct key of `[limits]`, every key has its `Limit`, and
    /// `Limits::get` reads the field of that key: each field set to its own value through its
    /// name reads back as that value.
    #[test]
    fn every_limit_is_its_config_key() {
        let keys: Vec<String> = match serde_json::to_value(Limits::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            other => panic!("limits serialize to an object, got {other:?}"),
        };
        let mut names: Vec<String> = Limit::ALL.iter().map(|l| l.name().to_owned()).collect();
        names.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(names, keys);

        let distinct: serde_json::Map<String, serde_json::Value> = Limit::ALL
            .iter()
            .zip(1u64..)
            .map(|(l, n)| (l.name().to_owned(), n.into()))
            .collect();
        let limits: Limits = serde_json::from_value(distinct.into()).expect("every name is a key");
        for (l, n) in Limit::ALL.iter().zip(1u64..) {
            assert_eq!(limits.get(*l), n, "{l}");
        }
    }
}
