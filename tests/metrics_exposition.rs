//! `/metrics` of a live broker after real traffic: valid Prometheus exposition (parsed in
//! process, and linted as `promtool check metrics` would), every name `tidelog_*` with help
//! text, the required series present with bounded labels, the metric table in the OpenAPI
//! document complete, and every metric the Grafana dashboard queries actually exposed.
//!
//! `promtool` (Debian's `prometheus` package; `.ci/run` puts it in the tools directory) adds
//! its own `check metrics`, and `check rules` parses the dashboard's PromQL: both run when it
//! is found, are skipped with one line when not, and fail in CI (see `common`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const SPEC_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/tidelog.json");
const DASHBOARD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/tidelog.json");

/// Series the broker must expose after produce, fetch, long-poll and rejected requests.
const REQUIRED: [&str; 21] = [
    "tidelog_http_requests_total",
    "tidelog_http_request_duration_seconds",
    "tidelog_http_problems_total",
    "tidelog_records_produced_total",
    "tidelog_produced_bytes_total",
    "tidelog_records_fetched_total",
    "tidelog_fetched_bytes_total",
    "tidelog_fsyncs_total",
    "tidelog_fsyncs_inline_total",
    "tidelog_fsync_duration_seconds",
    "tidelog_fsync_covered_records",
    "tidelog_partition_log_end_offset",
    "tidelog_partition_high_watermark_offset",
    "tidelog_partition_log_start_offset",
    "tidelog_partition_segments",
    "tidelog_partition_size_bytes",
    "tidelog_long_polls_waiting",
    "tidelog_sse_streams_open",
    "tidelog_storage_errors_total",
    "tidelog_segments_deleted_total",
    "tidelog_recovery_truncations_total",
];

/// Label names allowed anywhere: all bounded (no offsets, no member ids).
const ALLOWED_LABELS: [&str; 9] = [
    "route",
    "method",
    "status",
    "code",
    "topic",
    "partition",
    "group",
    "le",
    "quantile",
];

/// One parsed exposition: metric family name → type, help, and its samples.
///
/// The text is parsed by `openmetrics-parser`, which refuses what Prometheus would refuse
/// (bad names, bad escapes, a sample outside its family, two samples with one label set, a
/// family whose samples disagree on their label names).
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    helps: BTreeMap<String, String>,
    /// (family name, labels, value); a histogram's or summary's value is its count.
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        Self::try_parse(text)
            .unwrap_or_else(|e| panic!("not valid Prometheus exposition: {e}\n{text}"))
    }

    fn try_parse(text: &str) -> Result<Exposition, String> {
        let parsed =
            openmetrics_parser::prometheus::parse_prometheus(text).map_err(|e| e.to_string())?;
        let mut out = Exposition::default();
        for (name, family) in &parsed.families {
            out.types
                .insert(name.clone(), family.family_type.to_string());
            out.helps.insert(name.clone(), family.help.clone());
            for sample in family.iter_samples() {
                let labels = sample
                    .get_labelset()
                    .expect("a sample's labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                out.samples
                    .push((name.clone(), labels, sample_value(&sample.value)));
            }
        }
        Ok(out)
    }

    /// The family a sample name belongs to (`x_bucket` of histogram `x` → `x`).
    fn family_of(&self, sample_name: &str) -> Option<String> {
        if self.types.contains_key(sample_name) {
            return Some(sample_name.to_string());
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample_name.strip_suffix(suffix)
                && matches!(
                    self.types.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                )
            {
                return Some(base.to_string());
            }
        }
        None
    }

    fn has_sample(&self, family: &str, labels: &[(&str, &str)]) -> bool {
        self.value(family, labels).is_some()
    }

    fn value(&self, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == family
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    }

    /// What `promtool check metrics` lints, checked here so it needs no outside tool: help
    /// text, counters (and only counters) named `_total`, base units, and no `_bucket`,
    /// `_sum` or `_count` on a family that is not a histogram or summary.
    fn lint(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, kind) in &self.types {
            if self.helps.get(name).is_none_or(|h| h.trim().is_empty()) {
                problems.push(format!("{name}: no help text"));
            }
            if (kind == "counter") != name.ends_with("_total") {
                problems.push(format!("{name}: a {kind}; only counters end in _total"));
            }
            let non_base = [
                "_milliseconds",
                "_microseconds",
                "_nanoseconds",
                "_minutes",
                "_hours",
                "_days",
                "_kilobytes",
                "_megabytes",
                "_gigabytes",
            ];
            if let Some(unit) = non_base.iter().find(|u| name.contains(*u)) {
                problems.push(format!("{name}: {unit} is not a base unit"));
            }
            let summary_like = matches!(kind.as_str(), "histogram" | "summary");
            if !summary_like
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.ends_with(s))
            {
                problems.push(format!("{name}: a {kind} with a histogram suffix"));
            }
        }
        problems
    }
}

fn sample_value(value: &openmetrics_parser::PrometheusValue) -> f64 {
    use openmetrics_parser::PrometheusValue as V;
    match value {
        V::Unknown(n) | V::Gauge(n) => n.as_f64(),
        V::Counter(c) => c.value.as_f64(),
        V::Histogram(h) => h.count.unwrap_or(0) as f64,
        V::Summary(s) => s.count.unwrap_or(0) as f64,
    }
}

/// The checks of this file that need `promtool` run when it is found; see `common`.
fn promtool(check: &str) -> Option<std::path::PathBuf> {
    common::tool_or_skip(check, "promtool")
}

/// The in-process checks refuse what `promtool check metrics` refuses (one case each).
#[test]
fn the_exposition_checks_find_broken_expositions() {
    let good =
        "# HELP tidelog_x_total Things.\n# TYPE tidelog_x_total counter\ntidelog_x_total 1\n";
    let exposition = Exposition::try_parse(good).expect("a valid exposition");
    assert_eq!(exposition.lint(), Vec::<String>::new());
    let unparsable = [
        "tidelog_x{a=\"1} 1\n",
        "# TYPE tidelog_x gauge\ntidelog_x{a=\"1\"} 1\ntidelog_x{a=\"1\"} 2\n",
        "tidelog x 1\n",
    ];
    for text in unparsable {
        assert!(Exposition::try_parse(text).is_err(), "parsed: {text}");
    }
    let linted = [
        "# TYPE tidelog_x counter\ntidelog_x 1\n",
        "# HELP tidelog_x_total Things.\n# TYPE tidelog_x_total gauge\ntidelog_x_total 1\n",
        "# TYPE tidelog_x_total counter\ntidelog_x_total 1\n",
        "# HELP tidelog_t_milliseconds T.\n# TYPE tidelog_t_milliseconds gauge\ntidelog_t_milliseconds 1\n",
    ];
    for text in linted {
        let exposition = Exposition::try_parse(text).expect("parses");
        assert!(!exposition.lint().is_empty(), "no lint for: {text}");
    }
}

/// Drives traffic through every path that records a metric; returns the scrape and how many
/// records a group member read (none while groups are not served).
async fn scrape_after_traffic(broker: &common::TestBroker) -> (String, u64) {
    let http = broker.client();
    let url = &broker.url;
    common::create_topic(&http, url, "orders", 2).await;
    let records: Vec<Value> = (0..20)
        .map(|i| json!({"key": format!("k{i}"), "value": {"n": i}}))
        .collect();
    common::produce_json_acks_all(&http, url, "orders", json!(records)).await;
    let r = http
        .post(format!("{url}/v1/topics/orders/records?acks=all"))
        .header("content-type", "application/x-ndjson")
        .body("{\"value\":1,\"partition\":0}\n{\"value\":2,\"partition\":1}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Both partitions read whole, a long-poll that ends empty (the waiting gauge goes up and
    // back down), and rejected input (counted by code).
    for (path, status) in [
        ("/v1/topics/orders/partitions/0/records", 200),
        ("/v1/topics/orders/partitions/1/records", 200),
        (
            "/v1/topics/orders/partitions/0/records?offset=latest&wait_ms=50",
            200,
        ),
        ("/v1/topics/nope/partitions/0/records", 404),
        (
            "/v1/topics/orders/partitions/0/records?max_records=ten",
            400,
        ),
    ] {
        let r = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), status, "GET {path}");
    }
    let group_fetched = if common::consumer_group_routes_served() {
        join_and_commit(&http, url).await
    } else {
        0
    };
    // A made-up method must not become a label value of its own (unbounded cardinality).
    let brew = reqwest::Method::from_bytes(b"BREW-7f3a").unwrap();
    let r = http
        .request(brew, format!("{url}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // The log end offset gauge is published after each fsync; wait until it caught up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = common::scrape_metrics(&http, url).await;
        let scraped = Exposition::parse(&text);
        let flushed = (0..2).all(|p| {
            let p = p.to_string();
            let labels = [("topic", "orders"), ("partition", p.as_str())];
            let hw = scraped.value("tidelog_partition_high_watermark_offset", &labels);
            let leo = scraped.value("tidelog_partition_log_end_offset", &labels);
            hw.is_some() && hw == leo
        });
        if flushed || tokio::time::Instant::now() > deadline {
            return (text, group_fetched);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes the consumer-group series appear: a member joins, reads and commits (the shapes are
/// the spec's: `member_id`, `generation`, `offsets`).
async fn join_and_commit(http: &common::Client, url: &str) -> u64 {
    let r = http
        .post(format!("{url}/v1/groups/dashboard/members"))
        .json(&json!({"topics": ["orders"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "join: {}", r.text().await.unwrap());
    let joined: Value = r.json().await.unwrap();
    let member = joined["member_id"].as_str().expect("member_id");
    let r = http
        .get(format!(
            "{url}/v1/groups/dashboard/members/{member}/records?max_records=5"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "group fetch: {}", r.text().await.unwrap());
    let fetched: Value = r.json().await.unwrap();
    let read = fetched["records"].as_array().expect("records").len() as u64;
    let r = http
        .post(format!("{url}/v1/groups/dashboard/offsets"))
        .json(&json!({
            "member_id": member,
            "generation": joined["generation"],
            "offsets": [{"topic": "orders", "partition": 0, "offset": 1}],
        }))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "commit: {}",
        r.text().await.unwrap()
    );
    read
}

#[tokio::test]
async fn a_live_broker_exposes_valid_complete_bounded_metrics() {
    let broker = common::TestBroker::start();
    let (text, group_fetched) = scrape_after_traffic(&broker).await;
    let scraped = Exposition::parse(&text);

    let lint = scraped.lint();
    assert!(
        lint.is_empty(),
        "the exposition fails lint: {lint:#?}\n{text}"
    );
    promtool_check_metrics(&text);

    for name in scraped.types.keys() {
        assert!(
            name.starts_with("tidelog_"),
            "{name} lacks the tidelog_ prefix"
        );
        assert!(
            scraped.helps.get(name).is_some_and(|h| !h.is_empty()),
            "{name} has no help text"
        );
    }
    for name in REQUIRED {
        assert!(scraped.types.contains_key(name), "{name} is not exposed");
    }
    for (name, labels, _) in &scraped.samples {
        for label in labels.keys() {
            assert!(
                ALLOWED_LABELS.contains(&label.as_str()),
                "{name} has label {label}, which is not known to be bounded"
            );
        }
    }

    // The traffic above is visible where it should be.
    let orders = [("topic", "orders")];
    assert_eq!(
        scraped.value("tidelog_records_produced_total", &orders),
        Some(22.0),
        "20 JSON records + 2 NDJSON records"
    );
    assert_eq!(
        scraped.value("tidelog_records_fetched_total", &orders),
        Some(22.0 + group_fetched as f64),
        "both partitions read whole, plus what the group member read"
    );
    assert!(scraped.has_sample(
        "tidelog_http_problems_total",
        &[("code", "topic_not_found")]
    ));
    assert!(scraped.has_sample(
        "tidelog_http_problems_total",
        &[("code", "invalid_request")]
    ));
    assert!(scraped.has_sample(
        "tidelog_http_requests_total",
        &[
            ("route", "/v1/topics/{topic}/records"),
            ("method", "POST"),
            ("status", "200")
        ]
    ));
    assert!(scraped.has_sample(
        "tidelog_http_request_duration_seconds",
        &[("route", "/v1/topics/{topic}/partitions/{partition}/records")]
    ));
    assert!(
        !text.contains("BREW"),
        "a client's method name became a label value"
    );
    assert!(scraped.has_sample(
        "tidelog_http_requests_total",
        &[("method", "other"), ("status", "405")]
    ));
    let hw: f64 = ["0", "1"]
        .iter()
        .filter_map(|p| {
            scraped.value(
                "tidelog_partition_high_watermark_offset",
                &[("topic", "orders"), ("partition", p)],
            )
        })
        .sum();
    assert_eq!(hw, 22.0, "the high watermarks add up to every record");
    assert_eq!(scraped.value("tidelog_long_polls_waiting", &[]), Some(0.0));
    assert_eq!(scraped.value("tidelog_sse_streams_open", &[]), Some(0.0));
    assert!(scraped.value("tidelog_fsyncs_total", &[]).unwrap_or(0.0) >= 1.0);

    // The metric table of the OpenAPI document matches what is exposed.
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(SPEC_FILE).unwrap()).unwrap();
    let documented: BTreeMap<String, (String, bool)> = spec["x-tidelog-metrics"]
        .as_array()
        .expect("x-tidelog-metrics")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                (
                    m["type"].as_str().unwrap().to_string(),
                    m["module"] == "groups" || m["module"] == "replication",
                ),
            )
        })
        .collect();
    for (name, kind) in &scraped.types {
        let (doc_kind, _) = documented
            .get(name)
            .unwrap_or_else(|| panic!("{name} is exposed but not in x-tidelog-metrics"));
        assert_eq!(doc_kind, kind, "{name}: documented type differs");
    }
    for (name, (_, from_groups)) in &documented {
        if m_is_replication(&spec, name) {
            // Emitted only on a cluster (tests/cluster/replication.rs scrapes them there).
            continue;
        }
        if *from_groups && !common::consumer_group_routes_served() {
            // Emitted by the groups module; the traffic joins a group once it exists.
            continue;
        }
        assert!(
            scraped.types.contains_key(name),
            "{name} is documented but not exposed"
        );
    }
}

/// True for a metric of the replication module (documented, exposed only on a cluster).
fn m_is_replication(spec: &Value, name: &str) -> bool {
    spec["x-tidelog-metrics"]
        .as_array()
        .expect("x-tidelog-metrics")
        .iter()
        .any(|m| m["name"] == name && m["module"] == "replication")
}

/// [`m_is_replication`] for a name the dashboard queries (a histogram's `_bucket` too).
fn replication_only(name: &str) -> bool {
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(SPEC_FILE).unwrap()).unwrap();
    let family = name.strip_suffix("_bucket").unwrap_or(name);
    m_is_replication(&spec, family)
}

/// Every `tidelog_*` name in the dashboard's queries, mapped to its metric family.
fn dashboard_metric_names(dashboard: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, key: Option<&str>, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(v, Some(k), out)),
            Value::Array(items) => items.iter().for_each(|v| walk(v, key, out)),
            Value::String(s) if matches!(key, Some("expr" | "query" | "definition")) => {
                for (i, _) in s.match_indices("tidelog_") {
                    let name: String = s[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    out.insert(name);
                }
            }
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    walk(dashboard, None, &mut names);
    names
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exposed() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD_FILE).unwrap()).unwrap();
    let templating = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        templating
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "the dashboard has a Prometheus datasource variable"
    );
    let used = dashboard_metric_names(&dashboard);
    assert!(used.len() >= 15, "the scan found the queries: {used:?}");

    let broker = common::TestBroker::start();
    let scraped = Exposition::parse(&scrape_after_traffic(&broker).await.0);
    let groups = common::consumer_group_routes_served();
    let mut missing = Vec::new();
    for name in &used {
        if scraped.family_of(name).is_some() {
            continue;
        }
        if !groups && name.starts_with("tidelog_consumer_group_") {
            continue;
        }
        if replication_only(name) {
            // Exposed only on a cluster: tests/cluster/replication.rs scrapes them there.
            continue;
        }
        missing.push(name.clone());
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the broker does not expose: {missing:?}"
    );
}

/// Issue 9: the dashboard shows replication: under-replicated partitions, ISR size,
/// follower lag in records and bytes, replica fetch rate (and failures) and latency; every
/// metric of the replication module is queried by some panel.
#[test]
fn the_dashboard_shows_every_replication_metric() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD_FILE).unwrap()).unwrap();
    let used: BTreeSet<String> = dashboard_metric_names(&dashboard)
        .into_iter()
        .map(|n| n.strip_suffix("_bucket").unwrap_or(&n).to_string())
        .collect();
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(SPEC_FILE).unwrap()).unwrap();
    let replication: BTreeSet<String> = spec["x-tidelog-metrics"]
        .as_array()
        .expect("x-tidelog-metrics")
        .iter()
        .filter(|m| m["module"] == "replication")
        .map(|m| m["name"].as_str().expect("a name").to_string())
        .collect();
    for name in [
        "tidelog_partition_under_replicated",
        "tidelog_partition_in_sync_replicas",
        "tidelog_follower_lag_records",
        "tidelog_follower_lag_bytes",
        "tidelog_replica_fetches_total",
        "tidelog_replica_fetch_errors_total",
        "tidelog_replica_fetch_duration_seconds",
    ] {
        assert!(
            replication.contains(name),
            "{name} is a documented replication metric"
        );
    }
    let missing: Vec<&String> = replication.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "replication metrics no dashboard panel shows: {missing:?}"
    );
}

/// Every query of the dashboard as Prometheus would see it: Grafana's variables replaced by
/// plain values.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    walk(dashboard, &mut queries);
    queries
        .into_iter()
        .map(|q| {
            q.replace("$__rate_interval", "1m")
                .replace("$topic", ".*")
                .replace("$group", ".*")
        })
        .collect()
}

/// Prometheus's own linter over the exposition, where `promtool` is available.
fn promtool_check_metrics(text: &str) {
    let Some(promtool) = promtool("promtool check metrics") else {
        return;
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD_FILE).unwrap()).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "the scan found the panels' queries");
    for q in &queries {
        assert!(!q.contains('$'), "an unknown dashboard variable in: {q}");
    }
    let Some(promtool) = promtool("promtool check rules (the dashboard's PromQL)") else {
        return;
    };
    // A rules file (JSON is YAML) with one recording rule per query: `promtool check rules`
    // parses each expression with Prometheus's own PromQL parser.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| json!({"record": format!("dashboard:query_{i}"), "expr": q}))
        .collect();
    let file = tempfile::Builder::new()
        .suffix(".yml")
        .tempfile()
        .expect("temp rules file");
    std::fs::write(
        file.path(),
        json!({"groups": [{"name": "tidelog-dashboard", "rules": rules}]}).to_string(),
    )
    .unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(file.path())
        .output()
        .expect("run promtool check rules");
    assert!(
        out.status.success(),
        "promtool check rules rejected a dashboard query:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One name's life: a topic and a group named `name` created, used and deleted.
async fn create_use_and_delete(http: &common::Client, url: &str, name: &str) {
    common::create_topic(http, url, name, 2).await;
    common::produce_json_acks_all(http, url, name, json!([{"value": 1}, {"value": 2}])).await;
    let commit = http
        .post(format!("{url}/v1/groups/{name}/offsets"))
        .json(&json!({"offsets": [{"topic": name, "partition": 0, "offset": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(commit.status(), 200, "commit for {name}");
    for path in [format!("/v1/groups/{name}"), format!("/v1/topics/{name}")] {
        let r = http.delete(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 204, "DELETE {path}");
    }
}

/// Item 7 (metric series): names a client creates and deletes in a loop must not grow
/// `/metrics` without bound. A deleted topic's and group's series leave the exposition once
/// idle (`metrics_idle_timeout_ms`, short here); a live topic's stay, however quiet it is.
#[tokio::test]
async fn deleted_topics_and_groups_leave_metrics_and_the_exposition_stays_flat() {
    let broker = common::TestBroker::start_with_config("metrics_idle_timeout_ms = 1000\n");
    let (http, url) = (broker.client(), broker.url.clone());
    common::create_topic(&http, &url, "quiet", 1).await;
    let churned_gone = |http: common::Client, url: String| async move {
        !common::scrape_metrics(&http, &url).await.contains("churn-")
    };
    create_use_and_delete(&http, &url, "churn-0").await;
    common::wait_until("churn-0's series to leave", Duration::from_secs(15), || {
        churned_gone(http.clone(), url.clone())
    })
    .await;
    let baseline = common::scrape_metrics(&http, &url).await.len();
    for i in 1..=10 {
        create_use_and_delete(&http, &url, &format!("churn-{i}")).await;
    }
    assert!(
        common::scrape_metrics(&http, &url)
            .await
            .contains("topic=\"churn-10\""),
        "a used topic has series"
    );
    common::wait_until(
        "every deleted name's series to leave",
        Duration::from_secs(15),
        || churned_gone(http.clone(), url.clone()),
    )
    .await;
    let after = common::scrape_metrics(&http, &url).await;
    assert!(
        after.contains("topic=\"quiet\""),
        "a live topic keeps its series while idle"
    );
    assert!(
        after.len() <= baseline + baseline / 10,
        "the exposition grew from {baseline} to {} bytes over 10 create/delete cycles",
        after.len()
    );
}
