//! The OpenAPI document (`openapi/tidelog.json`) against the routes the broker really serves.
//!
//! The router is built from one table (`tidelog::http::route_table`), so these tests see every
//! route and method. They fail when a route exists that the spec lacks, when the spec lists an
//! operation the router does not serve, when an error code in the source is missing from the
//! spec's code table (or carries another status), and when the served document differs from
//! the file. The checker every test's client runs on each answer (`common::contract`) is tested
//! here on made-up answers, and against a fake server for the client's panic.
//!
//! Consumer-group operations (tag `groups`) come from the groups module. While the router has
//! no `/v1/groups` route at all they may be absent from it; once any exists, all must match.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

const SPEC_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/tidelog.json");
const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn spec() -> Value {
    let text = std::fs::read_to_string(SPEC_FILE).expect("read openapi/tidelog.json");
    serde_json::from_str(&text).expect("openapi/tidelog.json is JSON")
}

/// `(path, method)` pairs the router serves, methods lower-case.
fn served_operations() -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, methods) in tidelog::http::route_table() {
        assert!(!methods.is_empty(), "route {path} has no method");
        for method in methods {
            let fresh = ops.insert((path.to_string(), method.as_str().to_ascii_lowercase()));
            assert!(fresh, "route table lists {method} {path} twice");
        }
    }
    ops
}

/// `(path, method)` → tags, for every operation of the spec.
fn spec_operations(spec: &Value) -> BTreeMap<(String, String), Vec<String>> {
    let paths = spec["paths"].as_object().expect("spec has paths");
    let mut ops = BTreeMap::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for method in HTTP_METHODS {
            if let Some(op) = item.get(method) {
                let tags = op["tags"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(|t| t.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                ops.insert((path.clone(), method.to_string()), tags);
            }
        }
    }
    ops
}

fn is_groups_path(path: &str) -> bool {
    path == "/v1/groups" || path.starts_with("/v1/groups/")
}

/// The drift check itself, separate from the data so it can be tested on made-up tables.
fn route_drift(
    served: &BTreeSet<(String, String)>,
    spec_ops: &BTreeMap<(String, String), Vec<String>>,
) -> Vec<String> {
    let groups_served = served.iter().any(|(p, _)| is_groups_path(p));
    let mut problems = Vec::new();
    for (path, method) in served {
        if !spec_ops.contains_key(&(path.clone(), method.clone())) {
            problems.push(format!(
                "served but not in the spec: {} {path}",
                method.to_uppercase()
            ));
        }
    }
    for ((path, method), tags) in spec_ops {
        if served.contains(&(path.clone(), method.clone())) {
            continue;
        }
        let tolerated = !groups_served && tags.iter().any(|t| t == "groups");
        if !tolerated {
            problems.push(format!(
                "in the spec but not served: {} {path}",
                method.to_uppercase()
            ));
        }
    }
    problems
}

#[test]
fn every_served_route_is_in_the_spec_and_every_spec_operation_is_served() {
    let spec = spec();
    let problems = route_drift(&served_operations(), &spec_operations(&spec));
    assert!(
        problems.is_empty(),
        "the router and openapi/tidelog.json disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_drift_check_catches_missing_routes_both_ways_and_tolerates_groups_only_before_they_exist() {
    let op = |p: &str, m: &str| (p.to_string(), m.to_string());
    let spec_ops: BTreeMap<_, _> = [
        (op("/v1/topics", "get"), vec!["topics".to_string()]),
        (op("/v1/groups", "get"), vec!["groups".to_string()]),
        (op("/v1/groups/{group}", "get"), vec!["groups".to_string()]),
    ]
    .into_iter()
    .collect();
    let served: BTreeSet<_> = [op("/v1/topics", "get")].into_iter().collect();
    assert!(route_drift(&served, &spec_ops).is_empty());

    let served: BTreeSet<_> = [op("/v1/topics", "get"), op("/v1/topics", "post")]
        .into_iter()
        .collect();
    assert_eq!(
        route_drift(&served, &spec_ops),
        ["served but not in the spec: POST /v1/topics"]
    );

    let served: BTreeSet<_> = [op("/v1/groups", "get")].into_iter().collect();
    assert_eq!(
        route_drift(&served, &spec_ops),
        [
            "in the spec but not served: GET /v1/groups/{group}",
            "in the spec but not served: GET /v1/topics"
        ]
    );
}

#[test]
fn every_operation_documents_its_responses_and_every_path_parameter() {
    let spec = spec();
    for ((path, method), _) in spec_operations(&spec) {
        let op = &spec["paths"][&path][&method];
        assert!(
            op["operationId"].is_string(),
            "{method} {path} has no operationId"
        );
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path} documents no success response"
        );
        let declared: BTreeSet<String> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| resolve(&spec, p))
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().expect("parameter name").to_string())
                    .collect()
            })
            .unwrap_or_default();
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(String::from)
            .collect();
        assert_eq!(
            declared, in_template,
            "{method} {path}: path parameters differ from the template"
        );
    }
}

fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("local $ref");
            spec.pointer(pointer).expect("$ref resolves")
        }
        None => v,
    }
}

/// `code` → status for every `StatusCode::NAME, "code"` in the source: the shape in which the
/// HTTP layer names an error code (`ApiError::new` and `ApiError::limit`).
fn codes_in_source() -> BTreeMap<String, u16> {
    let mut codes = BTreeMap::new();
    for file in common::source_files() {
        let text = std::fs::read_to_string(&file).expect("read source");
        for (i, _) in text.match_indices("StatusCode::") {
            let rest = &text[i + "StatusCode::".len()..];
            let name_end = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..name_end];
            let Some(after) = rest[name_end..].trim_start().strip_prefix(',') else {
                continue;
            };
            let Some(lit) = after.trim_start().strip_prefix('"') else {
                continue;
            };
            let code = &lit[..lit.find('"').expect("closed literal")];
            if code.is_empty() || !code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                continue;
            }
            let status = status_of(name)
                .unwrap_or_else(|| panic!("{}: unknown StatusCode::{name}", file.display()));
            if let Some(old) = codes.insert(code.to_string(), status) {
                assert_eq!(old, status, "code {code} is used with two statuses");
            }
        }
    }
    codes
}

fn status_of(name: &str) -> Option<u16> {
    Some(match name {
        "BAD_REQUEST" => 400,
        "UNAUTHORIZED" => 401,
        "FORBIDDEN" => 403,
        "NOT_FOUND" => 404,
        "METHOD_NOT_ALLOWED" => 405,
        "REQUEST_TIMEOUT" => 408,
        "CONFLICT" => 409,
        "GONE" => 410,
        "PRECONDITION_FAILED" => 412,
        "PAYLOAD_TOO_LARGE" => 413,
        "UNSUPPORTED_MEDIA_TYPE" => 415,
        "RANGE_NOT_SATISFIABLE" => 416,
        "MISDIRECTED_REQUEST" => 421,
        "UNPROCESSABLE_ENTITY" => 422,
        "TOO_MANY_REQUESTS" => 429,
        "INTERNAL_SERVER_ERROR" => 500,
        "NOT_IMPLEMENTED" => 501,
        "BAD_GATEWAY" => 502,
        "SERVICE_UNAVAILABLE" => 503,
        "GATEWAY_TIMEOUT" => 504,
        _ => return None,
    })
}

#[test]
fn every_error_code_in_the_source_is_in_the_spec_with_its_status() {
    let spec = spec();
    let table = spec["x-tidelog-problem-codes"]
        .as_object()
        .expect("spec has x-tidelog-problem-codes");
    let in_source = codes_in_source();
    assert!(
        in_source.contains_key("topic_not_found") && in_source.contains_key("body_too_large"),
        "the source scan finds the codes it should: {in_source:?}"
    );
    let groups_served = served_operations().iter().any(|(p, _)| is_groups_path(p));
    for (code, status) in &in_source {
        let entry = table
            .get(code)
            .unwrap_or_else(|| panic!("error code {code} is not in the spec's code table"));
        assert_eq!(
            entry["status"].as_u64(),
            Some(u64::from(*status)),
            "code {code}: the spec's status differs from the source's"
        );
    }
    for (code, entry) in table {
        let from_groups = entry["module"] == "groups";
        if from_groups && !groups_served {
            continue;
        }
        assert!(
            in_source.contains_key(code),
            "the spec lists code {code}, which the source never answers"
        );
    }
    // Every status a code can have is a documented problem response of some operation.
    let documented: BTreeSet<String> = spec_operations(&spec)
        .keys()
        .flat_map(|(path, method)| {
            spec["paths"][path][method]["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    for (code, status) in &in_source {
        if matches!(code.as_str(), "not_found" | "method_not_allowed") {
            continue; // answered by the router's fallbacks, on no documented route
        }
        assert!(
            documented.contains(&status.to_string()),
            "code {code} ({status}) is not a documented response of any operation"
        );
    }
}

#[tokio::test]
async fn the_served_document_is_the_file() {
    let broker = common::TestBroker::start();
    let response = broker
        .client()
        .get(format!("{}/openapi.json", broker.url))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served = response.text().await.expect("body");
    let file = std::fs::read_to_string(SPEC_FILE).expect("read spec");
    assert_eq!(
        served, file,
        "GET /openapi.json differs from openapi/tidelog.json"
    );
}

/// A typed client switches on a problem's `code`: each problem response's schema lists, as an
/// enum, exactly the codes `x-tidelog-problem-codes` gives its status; `ProblemCode` lists them
/// all; and every operation has a `default` problem response (404 `not_found` and 405
/// `method_not_allowed` come from every route), so no generated error type is `never`.
#[test]
fn problem_responses_list_the_codes_of_their_status_and_every_operation_has_a_default() {
    let spec = spec();
    let table = spec["x-tidelog-problem-codes"]
        .as_object()
        .expect("code table");
    let strings = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("an enum: {v}"))
            .iter()
            .map(|c| c.as_str().expect("a code").to_string())
            .collect()
    };
    let all: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        strings(&spec["components"]["schemas"]["ProblemCode"]["enum"]),
        all,
        "ProblemCode differs from x-tidelog-problem-codes"
    );
    let codes_of = |status: u64| -> BTreeSet<String> {
        table
            .iter()
            .filter(|(_, e)| e["status"].as_u64() == Some(status))
            .map(|(c, _)| c.clone())
            .collect()
    };
    // The status each problem response stands for, from its schema's `status` const.
    let mut status_of_response = BTreeMap::new();
    for (name, response) in spec["components"]["responses"]
        .as_object()
        .expect("responses")
    {
        let schema = resolve(
            &spec,
            &response["content"]["application/problem+json"]["schema"],
        );
        if name == "Problem" {
            assert_eq!(
                response["content"]["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem"
            );
            continue;
        }
        let status = schema["properties"]["status"]["const"]
            .as_u64()
            .unwrap_or_else(|| panic!("response {name}: no status const in {schema}"));
        // Per operation (or route family): some of its status's codes, never another's.
        let listed = strings(&schema["properties"]["code"]["enum"]);
        let of_status = codes_of(status);
        let foreign: Vec<&String> = listed.difference(&of_status).collect();
        assert!(
            !listed.is_empty() && foreign.is_empty(),
            "response {name} ({status}): codes {foreign:?} are not codes of its status (or it lists none)"
        );
        status_of_response.insert(format!("#/components/responses/{name}"), status);
    }
    for (path, method) in spec_operations(&spec).keys() {
        let responses = spec["paths"][path][method]["responses"]
            .as_object()
            .expect("responses");
        assert_eq!(
            responses.get("default").map(|d| &d["$ref"]),
            Some(&Value::from("#/components/responses/Problem")),
            "{method} {path} has no default problem response"
        );
        for (status, response) in responses {
            let Ok(status) = status.parse::<u64>() else {
                continue;
            };
            // Not a problem: `/readyz` answers 503 with its own document.
            let is_problem = response.get("$ref").is_some()
                || response["content"]
                    .get("application/problem+json")
                    .is_some();
            if status < 400 || !is_problem {
                continue;
            }
            let target = response["$ref"].as_str().unwrap_or_default();
            assert_eq!(
                status_of_response.get(target),
                Some(&status),
                "{method} {path}: response {status} is {target}, not the problem response of its status"
            );
        }
    }
}

/// Every problem code an operation lists for a status (its per-status responses, not the
/// shared `default`), by `(path, method)`.
fn listed_codes(spec: &Value) -> BTreeMap<(String, String), BTreeMap<u16, BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    for (path, method) in spec_operations(spec).keys() {
        let mut by_status = BTreeMap::new();
        let responses = spec["paths"][path][method]["responses"]
            .as_object()
            .expect("responses");
        for (status, response) in responses {
            let Ok(status) = status.parse::<u16>() else {
                continue;
            };
            let response = resolve(spec, response);
            let schema = resolve(
                spec,
                &response["content"]["application/problem+json"]["schema"],
            );
            if let Some(codes) = schema["properties"]["code"]["enum"].as_array() {
                let codes = codes.iter().filter_map(Value::as_str).map(String::from);
                by_status.insert(status, codes.collect());
            }
        }
        out.insert((path.clone(), method.clone()), by_status);
    }
    out
}

/// Whether a schema (followed through `$ref`s) has a property named one of `names`.
fn has_property(spec: &Value, schema: &Value, names: &[&str], depth: usize) -> bool {
    let schema = resolve(spec, schema);
    if depth == 0 {
        return false;
    }
    let own = schema["properties"]
        .as_object()
        .is_some_and(|p| p.keys().any(|k| names.contains(&k.as_str())));
    own || match schema {
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| k.as_str() != "$ref")
            .any(|(_, v)| has_property(spec, v, names, depth - 1)),
        Value::Array(items) => items
            .iter()
            .any(|v| has_property(spec, v, names, depth - 1)),
        _ => false,
    }
}

fn has_parameter(spec: &Value, op: &Value, name: &str) -> bool {
    op["parameters"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| resolve(spec, p)["name"] == name))
}

/// Issue 14: each operation's problem responses list the codes it can answer, by status. Which
/// handler can produce which code is not derivable from the source; what is checked here is
/// that the lists are plausible and complete: no operation lists a code of another resource
/// family (each family read off the spec: the path, its parameters, its request body), each
/// code of the table is listed somewhere (only the router's own `not_found` and
/// `method_not_allowed` come from `default` alone), and the 421 codes follow where
/// `tidelog::http::forward::served_at` serves the route on a cluster. That no answer in the
/// suite carries a code its operation does not list is `common::contract`'s check.
#[test]
fn each_operation_lists_the_codes_of_its_own_resources_and_every_code_is_listed() {
    use tidelog::http::forward::{ServedAt, served_at};
    let spec = spec();
    let table: BTreeSet<String> = spec["x-tidelog-problem-codes"]
        .as_object()
        .expect("code table")
        .keys()
        .cloned()
        .collect();
    let families: [(&str, &[&str]); 5] = [
        (
            "group",
            &[
                "invalid_group_name",
                "group_not_found",
                "member_not_found",
                "stale_generation",
                "group_not_empty",
                "conflict",
            ],
        ),
        (
            "topic",
            &[
                "invalid_topic_name",
                "topic_not_found",
                "partition_not_found",
                "topic_exists",
                "internal_topic",
            ],
        ),
        (
            "producer",
            &[
                "unknown_producer",
                "producer_fenced",
                "producer_epoch_exhausted",
                "sequence_too_old",
                "sequence_out_of_order",
                "sequence_reused",
            ],
        ),
        (
            "idempotency key",
            &[
                "invalid_idempotency_key",
                "idempotency_key_reused",
                "idempotency_key_in_progress",
            ],
        ),
        (
            "broker",
            &[
                "unknown_broker",
                "stale_broker_epoch",
                "cluster_id_mismatch",
                "peers_mismatch",
                "broker_already_alive",
                "below_high_watermark",
            ],
        ),
    ];
    for (_, codes) in &families {
        for code in *codes {
            assert!(table.contains(*code), "{code} is not in the code table");
        }
    }
    let mut everywhere = BTreeSet::new();
    let mut broken = Vec::new();
    for ((path, method), by_status) in listed_codes(&spec) {
        let op = &spec["paths"][&path][&method];
        let body = &op["requestBody"]["content"];
        // Which resources the operation names: a family's codes only there.
        let names = |family: &str| match family {
            "group" => is_groups_path(&path),
            "topic" => {
                path.contains("{topic}")
                    || path == "/v1/topics"
                    || has_parameter(&spec, op, "topic")
                    || has_property(&spec, body, &["topic", "topics"], 12)
            }
            "producer" => path == "/v1/producers" || has_parameter(&spec, op, "producer_id"),
            "idempotency key" => has_parameter(&spec, op, "Idempotency-Key"),
            "broker" => path.starts_with("/internal/"),
            other => panic!("family {other}"),
        };
        for (status, codes) in &by_status {
            everywhere.extend(codes.iter().cloned());
            for (family, family_codes) in &families {
                for code in codes.iter().filter(|c| family_codes.contains(&c.as_str())) {
                    if !names(family) {
                        broken.push(format!(
                            "{method} {path} lists {status} {code}, a {family} code, but names no {family}"
                        ));
                    }
                }
            }
        }
        // The 421 codes follow where the route is served on a cluster.
        let Some(misdirected) = by_status.get(&421) else {
            continue;
        };
        let http_method = axum::http::Method::from_bytes(method.to_uppercase().as_bytes())
            .expect("an HTTP method");
        let at = served_at(&path, &http_method)
            .unwrap_or_else(|| panic!("{method} {path}: forward::served_at does not know it"));
        let internal = path.starts_with("/internal/");
        // The internal routes a partition's leader serves: a split produce's part, and a
        // group coordinator's read of (and a member long-poll's wait on) partitions it holds
        // no replica of.
        let leader_internal = path.starts_with("/internal/v1/append/")
            || path == "/internal/v1/partitions/read"
            || path == "/internal/v1/partitions/wait";
        let produce = path == "/v1/topics/{topic}/records";
        let controller = matches!(at, ServedAt::Controller | ServedAt::Coordinator(_))
            || (internal && !leader_internal)
            || produce; // a keyed produce goes to the controller while __idempotency_keys is not made
        let leader = at == ServedAt::PartitionLeader
            || produce
            || leader_internal
            || path.starts_with("/v1/groups/"); // the groups' reads and commits reach partitions
        for (code, allowed) in [
            ("not_controller", controller),
            ("not_leader", leader),
            ("not_a_replica", leader),
        ] {
            if misdirected.contains(code) && !allowed {
                broken.push(format!(
                    "{method} {path} lists 421 {code}, served at {at:?}"
                ));
            }
        }
        let first = if at == ServedAt::PartitionLeader {
            "not_leader"
        } else if matches!(at, ServedAt::Controller | ServedAt::Coordinator(_)) {
            "not_controller"
        } else {
            continue;
        };
        if !misdirected.contains(first) {
            broken.push(format!(
                "{method} {path} is served at {at:?} and its 421 lacks {first}"
            ));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    let unlisted: BTreeSet<&String> = table.difference(&everywhere).collect();
    assert_eq!(
        unlisted,
        BTreeSet::from([&"method_not_allowed".to_string(), &"not_found".to_string()]),
        "codes no operation lists (only the router's own come from `default` alone)"
    );
}

/// One made-up answer for the in-process checker of `common::contract`.
struct Answer {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    preflight: bool,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    /// `None`: a stream the checker does not read.
    body: Option<&'static str>,
    /// A piece of the violation expected, or `None` when the answer keeps the spec.
    breaks: Option<&'static str>,
}

const JSON: (&str, &str) = ("content-type", "application/json");
const PROBLEM: (&str, &str) = ("content-type", "application/problem+json");

fn answer(name: &'static str, method: &'static str, path: &'static str, status: u16) -> Answer {
    Answer {
        name,
        method,
        path,
        preflight: false,
        status,
        headers: &[],
        body: Some(""),
        breaks: None,
    }
}

impl Answer {
    fn headers(self, headers: &'static [(&'static str, &'static str)]) -> Self {
        Answer { headers, ..self }
    }
    fn body(self, body: &'static str) -> Self {
        Answer {
            body: Some(body),
            ..self
        }
    }
    fn streamed(self) -> Self {
        Answer { body: None, ..self }
    }
    fn preflight(self) -> Self {
        Answer {
            preflight: true,
            ..self
        }
    }
    fn breaks(self, because: &'static str) -> Self {
        Answer {
            breaks: Some(because),
            ..self
        }
    }
}

/// The checker every test's client runs (`common::contract`) passes answers that keep the spec
/// and names what is wrong with each that does not: status, content type, body, headers, and a
/// problem's code against its status.
#[test]
fn the_answer_checker_passes_answers_that_keep_the_spec_and_names_each_break() {
    let topic_not_found = r#"{"type":"urn:tidelog:problem:topic_not_found","title":"Not Found","status":404,"code":"topic_not_found","detail":"no topic x"}"#;
    let answers = [
        answer("health", "GET", "/healthz", 200)
            .headers(&[JSON])
            .body(r#"{"status":"ok"}"#),
        answer("health, a body of another shape", "GET", "/healthz", 200)
            .headers(&[JSON])
            .body(r#"{"status":"fine"}"#)
            .breaks("body"),
        answer("health, not JSON", "GET", "/healthz", 200)
            .headers(&[JSON])
            .body("ok")
            .breaks("not JSON"),
        answer("health, as HTML", "GET", "/healthz", 200)
            .headers(&[("content-type", "text/html")])
            .body("<p>ok</p>")
            .breaks("content type"),
        answer("a topic that is not there", "GET", "/v1/topics/x", 404)
            .headers(&[PROBLEM])
            .body(topic_not_found),
        answer("a 404 with a 409's code", "GET", "/v1/topics/x", 404)
            .headers(&[PROBLEM])
            .body(r#"{"type":"urn:tidelog:problem:topic_exists","title":"Not Found","status":404,"code":"topic_exists","detail":"x"}"#)
            .breaks("code"),
        answer("a topic route's 404 with a group's code", "GET", "/v1/topics/x", 404)
            .headers(&[PROBLEM])
            .body(r#"{"type":"urn:tidelog:problem:group_not_found","title":"Not Found","status":404,"code":"group_not_found","detail":"x"}"#)
            .breaks("code group_not_found is not one this operation lists for its status"),
        answer("a group route's 404 with its group's code", "GET", "/v1/groups/g", 404)
            .headers(&[PROBLEM])
            .body(r#"{"type":"urn:tidelog:problem:group_not_found","title":"Not Found","status":404,"code":"group_not_found","detail":"x"}"#),
        answer("a group route's 404 with a topic's code", "GET", "/v1/groups/g", 404)
            .headers(&[PROBLEM])
            .body(topic_not_found)
            .breaks("code topic_not_found is not one this operation lists"),
        answer("a problem whose status is not the answer's", "GET", "/v1/topics/x", 400)
            .headers(&[PROBLEM])
            .body(topic_not_found)
            .breaks("status"),
        answer("a problem under default with a code of another status", "GET", "/v1/topics", 500)
            .headers(&[PROBLEM])
            .body(r#"{"type":"urn:tidelog:problem:topic_not_found","title":"Internal Server Error","status":500,"code":"topic_not_found","detail":"x"}"#)
            .breaks("listed with status 404"),
        answer("a problem whose type is not its code's", "GET", "/v1/topics/x", 404)
            .headers(&[PROBLEM])
            .body(r#"{"type":"about:blank","title":"Not Found","status":404,"code":"topic_not_found","detail":"x"}"#)
            .breaks("type"),
        answer("a delete answered 200 instead of 204", "DELETE", "/v1/topics/x", 200)
            .breaks("Content-Type"),
        answer("a delete", "DELETE", "/v1/topics/x", 204),
        answer("a 204 with a body", "DELETE", "/v1/topics/x", 204)
            .headers(&[JSON])
            .body("{}")
            .breaks("a body where the spec documents none"),
        answer("a produce", "POST", "/v1/topics/x/records", 200)
            .headers(&[JSON, ("tidelog-durability", "fsync")])
            .body(r#"{"offsets":[{"partition":0,"offset":0}],"durability":"fsync"}"#),
        answer("a produce without its durability header", "POST", "/v1/topics/x/records", 200)
            .headers(&[JSON])
            .body(r#"{"offsets":[{"partition":0,"offset":0}],"durability":"fsync"}"#)
            .breaks("Tidelog-Durability is missing"),
        answer("a produce with a durability header of no known value", "POST", "/v1/topics/x/records", 200)
            .headers(&[JSON, ("tidelog-durability", "maybe")])
            .body(r#"{"offsets":[{"partition":0,"offset":0}],"durability":"fsync"}"#)
            .breaks("header Tidelog-Durability"),
        answer("a 200 produce saying none", "POST", "/v1/topics/x/records", 200)
            .headers(&[JSON, ("tidelog-durability", "none")])
            .body(r#"{"offsets":[],"durability":"none"}"#)
            .breaks("body"),
        answer("a fetch whose next offset is text", "GET", "/v1/topics/x/partitions/0/records", 200)
            .headers(&[JSON])
            .body(r#"{"records":[],"next_offset":"3","high_watermark":3,"log_start_offset":0}"#)
            .breaks("next_offset"),
        answer("an event stream", "GET", "/v1/topics/x/partitions/0/stream", 200)
            .headers(&[("content-type", "text/event-stream")])
            .streamed(),
        answer("no such route", "GET", "/v2/nothing", 404)
            .headers(&[PROBLEM])
            .body(r#"{"type":"urn:tidelog:problem:not_found","title":"Not Found","status":404,"code":"not_found","detail":"no route"}"#),
        answer("no such route, answered 200", "GET", "/v2/nothing", 200)
            .headers(&[JSON])
            .body("{}")
            .breaks("content type"),
        answer("a method the route lacks", "PUT", "/v1/topics", 405)
            .headers(&[PROBLEM])
            .body(r#"{"type":"urn:tidelog:problem:method_not_allowed","title":"Method Not Allowed","status":405,"code":"method_not_allowed","detail":"PUT"}"#),
        answer("overloaded, retry in a second", "GET", "/v1/topics/x/partitions/0/records", 503)
            .headers(&[PROBLEM, ("retry-after", "1")])
            .body(r#"{"type":"urn:tidelog:problem:overloaded","title":"Service Unavailable","status":503,"code":"overloaded","detail":"x"}"#),
        answer("a Retry-After that is no number of seconds", "GET", "/v1/topics/x/partitions/0/records", 503)
            .headers(&[PROBLEM, ("retry-after", "soon")])
            .body(r#"{"type":"urn:tidelog:problem:overloaded","title":"Service Unavailable","status":503,"code":"overloaded","detail":"x"}"#)
            .breaks("header Retry-After"),
        answer("a CORS preflight", "OPTIONS", "/v1/topics", 200).preflight(),
    ];
    for a in answers {
        let headers: reqwest::header::HeaderMap = a
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    reqwest::header::HeaderName::from_static(k),
                    reqwest::header::HeaderValue::from_static(v),
                )
            })
            .collect();
        let exchange = common::contract::Exchange {
            method: a.method,
            path: a.path,
            preflight: a.preflight,
            status: a.status,
            headers: &headers,
            body: a.body.map(str::as_bytes),
        };
        let found = common::contract::violations(&exchange);
        match a.breaks {
            None => assert!(found.is_empty(), "{}: {found:#?}", a.name),
            Some(piece) => assert!(
                found.iter().any(|v| v.contains(piece)),
                "{}: expected a break naming {piece:?}, got {found:#?}",
                a.name
            ),
        }
    }
}

/// The harness client really checks: an answer that breaks the spec (here from a fake server
/// on loopback) panics the request and is remembered for the broker it came from.
#[tokio::test]
async fn the_test_client_panics_on_an_answer_that_breaks_the_spec() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        let body = r#"{"status":"fine"}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.unwrap();
    });
    let url = format!("http://{authority}/healthz");
    let request = tokio::spawn(async move { common::Client::new().get(url).send().await });
    let joined = request.await;
    let panic = joined.expect_err("the request panics").into_panic();
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("GET /healthz") && message.contains("fine"),
        "{message}"
    );
    assert_eq!(common::contract::take_breaks(&authority).len(), 1);
    assert!(common::contract::take_breaks(&authority).is_empty());
}

/// The check for tests that read raw HTTP/1.1 from a socket parses the status, headers and
/// body, and leaves a body read only in part unchecked.
#[test]
fn the_raw_answer_check_reads_status_headers_and_body() {
    use common::contract::assert_raw_answer_keeps_the_spec as check;
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n";
    check(
        "GET",
        "/healthz",
        format!("{head}{{\"status\":\"ok\"}}").as_bytes(),
    );
    check("GET", "/healthz?x=1", format!("{head}{{\"stat").as_bytes());
    let bad_body = format!("{head}{{\"status\":\"no\"}}");
    assert!(std::panic::catch_unwind(|| check("GET", "/healthz", bad_body.as_bytes())).is_err());
    let bad_type = "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 2\r\n\r\nok";
    assert!(std::panic::catch_unwind(|| check("GET", "/healthz", bad_type.as_bytes())).is_err());
}

/// Where `text` (a test file) makes or names reqwest's own client, request builder or response,
/// whose answers nobody checks: `line: text` for each.
fn unchecked_client_uses(text: &str) -> Vec<String> {
    const TYPES: [&str; 4] = ["Client", "ClientBuilder", "RequestBuilder", "Response"];
    let crate_path = "reqwest::";
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let named = TYPES.iter().any(|t| {
            line.match_indices(&format!("{crate_path}{t}"))
                .any(|(at, m)| {
                    !line[at + m.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
                })
        }) || line.contains(&format!("{crate_path}get("));
        let imported = line.trim_start().starts_with(&format!("use {crate_path}"))
            && line
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|word| TYPES.contains(&word));
        if named || imported {
            found.push(format!("{}: {}", i + 1, line.trim()));
        }
    }
    found
}

/// Every test speaks HTTP through `common::Client`, so every answer is checked: no test file
/// makes reqwest's client itself (only `tests/common/client.rs` wraps it).
#[test]
fn no_test_sends_requests_around_the_checking_client() {
    assert_eq!(
        unchecked_client_uses(
            &[
                "use R::{Client, Method};",
                "let a = R::Client::new();",
                "fn f(r: R::RequestBuilder) {}",
                "let b = R::get(url);",
                "use R::{Method, StatusCode};",
                "let c = common::Client::new();",
                "let d = R::Body::from(x);",
            ]
            .join("\n")
            .replace("R::", "reqwest::")
        )
        .len(),
        4
    );
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read tests/") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut files = Vec::new();
    walk(&tests, &mut files);
    let wrapper = tests.join("common/client.rs");
    let mut found = Vec::new();
    for file in files.iter().filter(|f| **f != wrapper) {
        let text = std::fs::read_to_string(file).expect("read a test file");
        for use_ in unchecked_client_uses(&text) {
            found.push(format!("{}:{use_}", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "use common::Client (its answers are checked against the spec), not reqwest's:\n{}",
        found.join("\n")
    );
}

/// Every schema in `v` (walking objects and arrays), with its JSON pointer.
fn schemas_with_pointers<'v>(v: &'v Value, at: String, out: &mut Vec<(String, &'v Value)>) {
    match v {
        Value::Object(map) => {
            out.push((at.clone(), v));
            for (k, x) in map {
                schemas_with_pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                schemas_with_pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// What a JavaScript number carries exactly: 2^53 - 1.
const JSON_SAFE_INTEGER_MAX: i64 = 9_007_199_254_740_991;

/// Issue 14, item 1: an integer that may pass 2^31 says `format: int64` (a typed client then
/// knows it is 64-bit), and no bound passes what a JSON number carries exactly.
#[test]
fn every_integer_that_may_pass_2_to_the_31_says_int64_and_no_bound_passes_2_to_the_53() {
    let spec = spec();
    let mut all = Vec::new();
    schemas_with_pointers(&spec, String::new(), &mut all);
    let is_integer = |s: &Value| {
        s["type"] == "integer"
            || s["type"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "integer"))
    };
    let mut problems = Vec::new();
    for (at, schema) in all.iter().filter(|(_, s)| is_integer(s)) {
        let max = schema["maximum"].as_i64();
        let min = schema["minimum"].as_i64();
        let fits_32_bits = max.is_some_and(|m| m <= i64::from(i32::MAX))
            && min.is_none_or(|m| m >= i64::from(i32::MIN));
        if !fits_32_bits && schema["format"] != "int64" {
            problems.push(format!("{at}: may pass 2^31 and has no `format: int64`"));
        }
        for bound in ["maximum", "minimum"] {
            let b = &schema[bound];
            if !b.is_null() && b.as_i64().is_none_or(|b| b.abs() > JSON_SAFE_INTEGER_MAX) {
                problems.push(format!("{at}: {bound} {b} passes 2^53 - 1"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Issue 14, items 2 to 6, 8 and 9, as the spec must say them for a generated client to work
/// without casts (the TypeScript test compiles against them where node is found; this holds
/// them everywhere).
#[test]
fn the_spec_types_what_typed_clients_pass_back_and_switch_on() {
    let spec = spec();
    let schema_at = |pointer: &str| -> &Value {
        let v = spec.pointer(pointer).unwrap_or_else(|| panic!("{pointer}"));
        resolve(&spec, v)
    };
    let accepts = |pointer: &str, value: Value| -> bool {
        let mut root = spec.clone();
        root["$schema"] = Value::from("https://json-schema.org/draft/2020-12/schema");
        let fragment = pointer.replace('{', "%7B").replace('}', "%7D");
        root["$ref"] = Value::from(format!("#{fragment}"));
        jsonschema::validator_for(&root)
            .unwrap_or_else(|e| panic!("{pointer}: {e}"))
            .is_valid(&value)
    };
    // 3: a fetch's `next_offset` (an integer) passes back as `offset`, as do the two words.
    let offset = "/components/parameters/offset/schema";
    assert!(accepts(offset, json!(41)));
    assert!(accepts(offset, json!("earliest")) && accepts(offset, json!("latest")));
    assert!(!accepts(offset, json!("soonest")) && !accepts(offset, json!(-1)));
    // 4: `auto_commit` is a boolean.
    let fetch = &spec["paths"]["/v1/groups/{group}/members/{member}/records"]["get"];
    let auto_commit = fetch["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| resolve(&spec, p))
        .find(|p| p["name"] == "auto_commit")
        .expect("an auto_commit parameter");
    assert_eq!(auto_commit["schema"]["type"], "boolean");
    // 5: no `default` in a schema of a body (openapi-typescript makes such a property
    // required); a server default is said in the description. Parameters keep theirs
    // (their own `required` decides).
    let mut all = Vec::new();
    schemas_with_pointers(
        &spec["components"]["schemas"],
        "/components/schemas".into(),
        &mut all,
    );
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if let Some(content) = op["requestBody"]["content"].as_object() {
                for (media, c) in content {
                    let at = format!("{method} {path} {media}");
                    schemas_with_pointers(&c["schema"], at, &mut all);
                }
            }
        }
    }
    let defaults: Vec<&String> = all
        .iter()
        .filter(|(at, s)| s.get("default").is_some() && !at.ends_with("/properties"))
        .map(|(at, _)| at)
        .collect();
    assert!(
        defaults.is_empty(),
        "defaults in body schemas: {defaults:?}"
    );
    // 6: `GET /openapi.json` is typed as a document, not an empty object.
    let document =
        schema_at("/paths/~1openapi.json/get/responses/200/content/application~1json/schema");
    assert!(!accepts(
        "/paths/~1openapi.json/get/responses/200/content/application~1json/schema",
        json!({})
    ));
    assert!(
        document["required"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("paths")))
    );
    // 9: no authentication yet, said once for every operation; a 200 produce answer is never
    // `durability: none` (that is the 202), so a client narrows the union by it.
    assert_eq!(spec["security"], json!([]));
    let produced = "/paths/~1v1~1topics~1{topic}~1records/post/responses";
    let answer_200 = format!("{produced}/200/content/application~1json/schema");
    let answer_202 = format!("{produced}/202/content/application~1json/schema");
    let offsets = json!([{"partition": 0, "offset": 1}]);
    assert!(accepts(
        &answer_200,
        json!({"offsets": offsets, "durability": "fsync"})
    ));
    assert!(!accepts(
        &answer_200,
        json!({"offsets": offsets, "durability": "none"})
    ));
    assert!(accepts(&answer_202, json!({"durability": "none"})));
    assert!(!accepts(&answer_202, json!({"durability": "fsync"})));
    // 8: fields that exclude each other are modelled, so the schema refuses what the broker
    // refuses (and a generated type does not compile with both).
    let record = "/components/schemas/ProduceRecord";
    assert!(accepts(record, json!({"key": "k", "value": 1})));
    assert!(accepts(
        record,
        json!({"key_b64": "eA==", "value_b64": "eA=="})
    ));
    assert!(!accepts(
        record,
        json!({"key": null, "key_b64": "eA==", "value": 1})
    ));
    assert!(!accepts(
        record,
        json!({"value": null, "value_b64": "eA=="})
    ));
    let update = "/components/schemas/TopicConfigUpdate";
    assert!(accepts(update, json!({"retention_ms": 5})));
    assert!(accepts(update, json!({"config": {"retention_ms": 5}})));
    assert!(!accepts(
        update,
        json!({"retention_ms": 5, "config": {"retention_ms": 6}})
    ));
    // 2: the octet-stream produce body is bytes (generated as Blob | Uint8Array).
    let raw = schema_at(&format!(
        "{}/requestBody/content/application~1octet-stream/schema",
        "/paths/~1v1~1topics~1{topic}~1records/post"
    ));
    assert_eq!(
        (&raw["type"], &raw["format"]),
        (&json!("string"), &json!("binary"))
    );
}
