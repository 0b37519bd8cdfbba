//! Metric names, in one place, and the Prometheus recorder.
//!
//! Every name starts with `tidelog_` and ends with its unit. Labels are bounded: topic,
//! partition, route template, standard HTTP method, status code, error code, group; never an
//! offset or a member id. Every metric has help text (`describe`); the table of metrics in
//! `openapi/tidelog.json` (`x-tidelog-metrics`) and `grafana/tidelog.json` are checked against
//! a live scrape by `tests/metrics_exposition.rs`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::limits::Limit;

pub const HTTP_REQUESTS: &str = "tidelog_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "tidelog_http_request_duration_seconds";
pub const PROBLEMS: &str = "tidelog_http_problems_total";
pub const RECORDS_PRODUCED: &str = "tidelog_records_produced_total";
pub const BYTES_PRODUCED: &str = "tidelog_produced_bytes_total";
pub const RECORDS_FETCHED: &str = "tidelog_records_fetched_total";
pub const BYTES_FETCHED: &str = "tidelog_fetched_bytes_total";
pub const FSYNCS: &str = "tidelog_fsyncs_total";
pub const FSYNCS_INLINE: &str = "tidelog_fsyncs_inline_total";
pub const FSYNC_SECONDS: &str = "tidelog_fsync_duration_seconds";
pub const FSYNC_RECORDS: &str = "tidelog_fsync_covered_records";
pub const HIGH_WATERMARK: &str = "tidelog_partition_high_watermark_offset";
pub const LOG_START_OFFSET: &str = "tidelog_partition_log_start_offset";
pub const LOG_END_OFFSET: &str = "tidelog_partition_log_end_offset";
pub const PARTITION_SEGMENTS: &str = "tidelog_partition_segments";
pub const PARTITION_BYTES: &str = "tidelog_partition_size_bytes";
pub const SEGMENTS_DELETED: &str = "tidelog_segments_deleted_total";
pub const COMPACTED_RECORDS: &str = "tidelog_compaction_dropped_records_total";
pub const STORAGE_ERRORS: &str = "tidelog_storage_errors_total";
pub const RECOVERY_TRUNCATIONS: &str = "tidelog_recovery_truncations_total";
pub const DAMAGED_BATCHES_FOUND: &str = "tidelog_damaged_batches_found_total";
pub const LONG_POLLS_WAITING: &str = "tidelog_long_polls_waiting";
pub const SSE_STREAMS_OPEN: &str = "tidelog_sse_streams_open";
pub const RESPONSE_BYTES_IN_FLIGHT: &str = "tidelog_responses_in_flight_bytes";
pub const GROUP_LAG: &str = "tidelog_consumer_group_lag_records";
pub const GROUP_REBALANCES: &str = "tidelog_consumer_group_rebalances_total";
pub const GROUP_MEMBERS: &str = "tidelog_consumer_group_members";
pub const ISR_SIZE: &str = "tidelog_partition_in_sync_replicas";
pub const UNDER_REPLICATED: &str = "tidelog_partition_under_replicated";
pub const FOLLOWER_LAG_RECORDS: &str = "tidelog_follower_lag_records";
pub const FOLLOWER_LAG_BYTES: &str = "tidelog_follower_lag_bytes";
pub const REPLICA_FETCHES: &str = "tidelog_replica_fetches_total";
pub const REPLICA_FETCH_ERRORS: &str = "tidelog_replica_fetch_errors_total";
pub const REPLICA_FETCH_SECONDS: &str = "tidelog_replica_fetch_duration_seconds";
pub const DUPLICATES_SUPPRESSED: &str = "tidelog_duplicate_records_suppressed_total";
pub const PRODUCERS_FENCED: &str = "tidelog_producers_fenced_total";
pub const PRODUCERS_TRACKED: &str = "tidelog_partition_producers";
pub const IDEMPOTENCY_KEYS: &str = "tidelog_idempotency_keys";
pub const IDEMPOTENT_REPLAYS: &str = "tidelog_idempotency_key_replays_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How long a series may go without an update before it leaves the exposition, unless the
/// broker's `metrics_idle_timeout_ms` says otherwise.
pub const SERIES_IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

/// The global Prometheus recorder's handle, installed with the default idle timeout if
/// [`install_with_idle_timeout`] was not called first.
pub fn install() -> PrometheusHandle {
    install_with_idle_timeout(SERIES_IDLE_TIMEOUT_DEFAULT)
}

/// Installs the global Prometheus recorder once per process and returns its handle.
///
/// Series labelled by a client-chosen name (topic, group) must not outlive the name: a
/// client creating and deleting names in a loop would grow the exposition (and the memory
/// behind it) without bound. The exporter cannot unregister one series, but it drops every
/// series not updated within `idle`; the node refreshes the series of every live topic,
/// partition and group well within that (`Broker::refresh_metrics` and the
/// group coordinator's), so only the series of deleted names go.
pub fn install_with_idle_timeout(idle: Duration) -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency_buckets = [
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ];
            let count_buckets = [
                1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1_000.0, 10_000.0, 100_000.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(FSYNC_RECORDS.into()), &count_buckets)
                })
                .expect("valid buckets")
                .idle_timeout(MetricKindMask::ALL, Some(idle))
                .install_recorder()
                .inspect(|_| {
                    describe();
                    // Process-wide series start at zero rather than appearing on first use.
                    ::metrics::gauge!(LONG_POLLS_WAITING).set(0.0);
                    ::metrics::gauge!(SSE_STREAMS_OPEN).set(0.0);
                    ::metrics::gauge!(RESPONSE_BYTES_IN_FLIGHT).set(0.0);
                    refresh_process_series();
                })
                .expect("the metrics recorder is installed once")
        })
        .clone()
}

/// Folds buffered histogram samples into their buckets (bounded memory between scrapes).
pub fn upkeep() {
    install().run_upkeep();
}

/// Drops the series idle past the timeout. The exporter does that only while it renders,
/// so a broker nobody scrapes would otherwise keep the series of every deleted topic and
/// group.
pub fn drop_idle_series() {
    // Rendering into a sink is the exporter's one way to run its idle check.
    let _ = install().render_to_write(&mut std::io::sink());
}

/// Touches the process-wide series (no value change) so they never go idle: a gauge that
/// went idle while non-zero would come back from zero.
pub fn refresh_process_series() {
    ::metrics::gauge!(LONG_POLLS_WAITING).increment(0.0);
    ::metrics::gauge!(SSE_STREAMS_OPEN).increment(0.0);
    ::metrics::counter!(FSYNCS).increment(0);
    ::metrics::counter!(FSYNCS_INLINE).increment(0);
}

/// Help text and units for every metric, rendered as `# HELP` lines.
fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests answered, by route template, method and status."
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "Time to produce an HTTP response head, by route template and method."
    );
    describe_counter!(
        PROBLEMS,
        Unit::Count,
        "Problem responses (rejected input and failures), by stable error code."
    );
    describe_counter!(RECORDS_PRODUCED, Unit::Count, "Records appended, by topic.");
    describe_counter!(
        BYTES_PRODUCED,
        Unit::Bytes,
        "Batch bytes appended, by topic."
    );
    describe_counter!(
        RECORDS_FETCHED,
        Unit::Count,
        "Records returned to consumers, by topic."
    );
    describe_counter!(
        BYTES_FETCHED,
        Unit::Bytes,
        "Log bytes read for consumers, by topic."
    );
    describe_counter!(
        FSYNCS,
        Unit::Count,
        "fsync rounds of the partition flushers; one round covers every producer waiting."
    );
    describe_counter!(
        FSYNCS_INLINE,
        Unit::Count,
        "fsync rounds run on a runtime worker rather than the blocking pool (a share of tidelog_fsyncs_total)."
    );
    describe_histogram!(FSYNC_SECONDS, Unit::Seconds, "Time of one fsync round.");
    describe_histogram!(
        FSYNC_RECORDS,
        Unit::Count,
        "Records made durable by one fsync round (group commit size)."
    );
    describe_gauge!(
        HIGH_WATERMARK,
        Unit::Count,
        "High watermark offset: records below it are durable and visible to consumers."
    );
    describe_gauge!(
        LOG_START_OFFSET,
        Unit::Count,
        "First offset still readable in the partition."
    );
    describe_gauge!(
        LOG_END_OFFSET,
        Unit::Count,
        "Offset the next appended record gets (published after each fsync)."
    );
    describe_gauge!(
        PARTITION_SEGMENTS,
        Unit::Count,
        "Segment files of the partition."
    );
    describe_gauge!(
        PARTITION_BYTES,
        Unit::Bytes,
        "Bytes of the partition's segment files on disk."
    );
    describe_counter!(
        SEGMENTS_DELETED,
        Unit::Count,
        "Segments removed by retention, by topic."
    );
    describe_counter!(
        COMPACTED_RECORDS,
        Unit::Count,
        "Records dropped by log compaction, by topic."
    );
    describe_counter!(
        STORAGE_ERRORS,
        Unit::Count,
        "Append or fsync failures, by topic; the partition then refuses writes."
    );
    describe_counter!(
        RECOVERY_TRUNCATIONS,
        Unit::Count,
        "Torn or corrupt log tails truncated at startup, by topic."
    );
    describe_counter!(
        DAMAGED_BATCHES_FOUND,
        Unit::Count,
        "Stored batches a replica scrub found failing their CRC check, by topic."
    );
    describe_gauge!(
        LONG_POLLS_WAITING,
        Unit::Count,
        "Fetches waiting for new records (long-polls and group member fetches)."
    );
    describe_gauge!(
        SSE_STREAMS_OPEN,
        Unit::Count,
        format!(
            "Server-sent event streams open (each holds a slot of {}).",
            Limit::StreamsMax
        )
    );
    describe_gauge!(
        RESPONSE_BYTES_IN_FLIGHT,
        Unit::Bytes,
        "Bytes of fetch and SSE pages read and not yet handed to their connections."
    );
    describe_gauge!(
        GROUP_LAG,
        Unit::Count,
        "Records between a group's committed offset and the high watermark."
    );
    describe_counter!(
        GROUP_REBALANCES,
        Unit::Count,
        "Consumer group rebalances, by group."
    );
    describe_gauge!(
        GROUP_MEMBERS,
        Unit::Count,
        "Active members of a consumer group."
    );
    describe_gauge!(
        ISR_SIZE,
        Unit::Count,
        "In-sync replicas of a partition this broker leads, by topic and partition."
    );
    describe_gauge!(
        UNDER_REPLICATED,
        Unit::Count,
        "1 when a partition this broker leads has fewer in-sync replicas than replicas."
    );
    describe_gauge!(
        FOLLOWER_LAG_RECORDS,
        Unit::Count,
        "Records a follower is behind the leader's log end, by topic, partition and follower."
    );
    describe_gauge!(
        FOLLOWER_LAG_BYTES,
        Unit::Bytes,
        "Bytes a follower is behind the leader's log end, by topic, partition and follower."
    );
    describe_counter!(
        REPLICA_FETCHES,
        Unit::Count,
        "Replica fetches this broker made as a follower and the leader answered."
    );
    describe_counter!(
        REPLICA_FETCH_ERRORS,
        Unit::Count,
        "Replica fetches this broker made as a follower that got no answer."
    );
    describe_histogram!(
        REPLICA_FETCH_SECONDS,
        Unit::Seconds,
        "Time of a follower's replica fetch (a long-poll: includes the leader's wait)."
    );
    describe_counter!(
        DUPLICATES_SUPPRESSED,
        Unit::Count,
        "Records of retried idempotent produces answered with their original offsets and not written again, by topic."
    );
    describe_counter!(
        PRODUCERS_FENCED,
        Unit::Count,
        "Produces refused because a newer epoch of their producer exists, by topic."
    );
    describe_gauge!(
        PRODUCERS_TRACKED,
        Unit::Count,
        format!(
            "Idempotent producers a partition tracks (at most {}).",
            Limit::ProducersPerPartitionMax
        )
    );
    describe_gauge!(
        IDEMPOTENCY_KEYS,
        Unit::Count,
        format!(
            "Idempotency-Keys the broker keeps, stored and in progress (at most {}).",
            Limit::IdempotencyKeysMax
        )
    );
    describe_counter!(
        IDEMPOTENT_REPLAYS,
        Unit::Count,
        "Produces with an Idempotency-Key answered with their stored answer and not written again."
    );
}
