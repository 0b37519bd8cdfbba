//! The OpenAPI document as its consumers see it:
//! 1. in process, it parses as an OpenAPI 3.1 document (the `oas3` model), every `$ref`
//!    resolves, every operation has a unique id, and every path template names a required
//!    path parameter;
//! 2. with the outside tools, `openapi-spec-validator` validates it, `schemathesis` fuzzes a
//!    live broker with it (bounded) and finds no server error and no response that breaks the
//!    documented statuses, content types or schemas, and `openapi-python-client` generates a
//!    Python SDK that a script uses to create a topic, produce and consume (and, when the
//!    broker serves groups, join a group and commit).
//!
//! The tools are the versions pinned in `tests/openapi/requirements.txt`, installed by
//! `.ci/run` into the tools directory (see `common`); without them those checks are skipped
//! with one line each, and fail with CI=true.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn spec_path() -> PathBuf {
    Path::new(MANIFEST_DIR).join("openapi/tidelog.json")
}

fn tools_dir() -> PathBuf {
    Path::new(MANIFEST_DIR).join("tests/openapi")
}

/// What is wrong with an OpenAPI document, as far as a typed model and its references show.
fn spec_problems(text: &str) -> Vec<String> {
    let spec = match oas3::from_json(text) {
        Ok(spec) => spec,
        Err(e) => return vec![format!("not an OpenAPI document: {e}")],
    };
    let mut problems = Vec::new();
    match spec.validate_version() {
        Ok(v) if v.major == 3 && v.minor == 1 => {}
        Ok(v) => problems.push(format!("OpenAPI {v}, not 3.1")),
        Err(e) => problems.push(format!("bad openapi version: {e}")),
    }
    let mut operation_ids = BTreeSet::new();
    for (path, method, op) in spec.operations() {
        let at = format!("{method} {path}");
        match &op.operation_id {
            Some(id) if !operation_ids.insert(id.clone()) => {
                problems.push(format!("{at}: operationId {id} is used twice"))
            }
            Some(_) => {}
            None => problems.push(format!("{at}: no operationId")),
        }
        let mut path_params = BTreeSet::new();
        for param in &op.parameters {
            match param.resolve(&spec) {
                Ok(p) if p.location == oas3::spec::ParameterIn::Path => {
                    if p.required != Some(true) {
                        problems.push(format!("{at}: path parameter {} not required", p.name));
                    }
                    path_params.insert(p.name);
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("{at}: parameter: {e}")),
            }
        }
        let templated: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(String::from)
            .collect();
        if templated != path_params {
            problems.push(format!(
                "{at}: path template {templated:?} but path parameters {path_params:?}"
            ));
        }
        if let Err(e) = op.request_body(&spec) {
            problems.push(format!("{at}: request body: {e}"));
        }
        for (status, response) in op.responses.iter().flatten() {
            if let Err(e) = response.resolve(&spec) {
                problems.push(format!("{at}: response {status}: {e}"));
            }
        }
    }
    // Every reference anywhere (schemas included) points at something in the document.
    let raw: Value = serde_json::from_str(text).expect("JSON, since oas3 parsed it");
    let mut refs = Vec::new();
    collect_refs(&raw, &mut refs);
    for r in refs {
        let target = r.strip_prefix('#').and_then(|pointer| raw.pointer(pointer));
        if target.is_none() {
            problems.push(format!("$ref {r} points at nothing"));
        }
    }
    problems
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_spec_is_a_valid_openapi_3_1_document() {
    let text = std::fs::read_to_string(spec_path()).expect("read the spec");
    let problems = spec_problems(&text);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The check above finds each kind of mistake it claims to (one broken copy each).
#[test]
fn the_spec_check_finds_broken_documents() {
    let text = std::fs::read_to_string(spec_path()).expect("read the spec");
    let spec: Value = serde_json::from_str(&text).unwrap();
    let first_path = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(p, _)| p.contains('{'))
        .map(|(p, _)| p.clone())
        .expect("a templated path");
    /// Breaks the document; the second argument is a templated path.
    type Breakage = fn(&mut Value, &str);
    let cases: [(&str, Breakage); 5] = [
        ("version", |s, _| s["openapi"] = json!("2.0.0")),
        ("dangling ref", |s, _| {
            s["components"]["schemas"]["Dangling"] = json!({"$ref": "#/components/schemas/Nope"})
        }),
        ("missing path parameter", |s, p| {
            let item = s["paths"][p].as_object_mut().unwrap();
            for op in item.values_mut() {
                op["parameters"] = json!([]);
            }
        }),
        ("duplicate operationId", |s, p| {
            let ids: Vec<Value> = s["paths"]
                .as_object()
                .unwrap()
                .values()
                .flat_map(|item| item.as_object().unwrap().values())
                .map(|op| op["operationId"].clone())
                .collect();
            let item = s["paths"][p].as_object_mut().unwrap();
            let other = ids
                .into_iter()
                .find(|id| item.values().all(|op| op["operationId"] != *id));
            for op in item.values_mut() {
                op["operationId"] = other.clone().unwrap();
            }
        }),
        ("not a document", |s, _| *s = json!({"openapi": "3.1.0"})),
    ];
    for (what, break_it) in cases {
        let mut broken = spec.clone();
        break_it(&mut broken, &first_path);
        let problems = spec_problems(&broken.to_string());
        assert!(!problems.is_empty(), "the check missed: {what}");
    }
}

#[test]
fn openapi_spec_validator_accepts_the_spec() {
    let Some(validator) = common::tool_or_skip("openapi-spec-validator", "openapi-spec-validator")
    else {
        return;
    };
    let mut cmd = Command::new(validator);
    cmd.arg(spec_path());
    let (ok, out) = common::run_bounded(cmd, Duration::from_secs(60));
    assert!(ok && out.contains("OK"), "openapi-spec-validator:\n{out}");
}
/// Small limits keep the fuzzer's requests cheap: a long-poll waits at most 200 ms, and the
/// partitions it can create stay far below the process's file-descriptor limit. Values past
/// them get the documented 400 `limit_exceeded`.
const FUZZ_BROKER_CONFIG: &str = "[limits]\n\
    wait_ms_max = 200\n\
    partitions_per_topic_max = 8\n\
    topics_max = 64\n";

#[test]
fn schemathesis_finds_no_server_error_or_undocumented_response() {
    let Some(schemathesis) = common::tool_or_skip("schemathesis fuzzing", "schemathesis") else {
        return;
    };
    let broker = common::TestBroker::start_with_config(FUZZ_BROKER_CONFIG);
    let mut cmd = Command::new(schemathesis);
    // Its example database goes to the target dir, not the source tree.
    cmd.current_dir(common::target_dir())
        .env("SCHEMATHESIS_HOOKS", tools_dir().join("hooks.py"))
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(tools_dir().join("schemathesis.toml"))
        .arg("run")
        .arg(spec_path())
        .args(["--url", &broker.url])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        // An SSE stream stays open until the client leaves: nothing to fuzz request by request.
        .args(["--exclude-path-regex", "/stream$"])
        .args(["--max-examples", "25", "--request-timeout", "10"])
        // One worker: hypothesis's lambda introspection is not thread-safe.
        .args(["--workers", "1", "--no-color"]);
    if !common::consumer_group_routes_served() {
        cmd.args(["--exclude-tag", "groups"]);
    }
    let (ok, out) = common::run_bounded(cmd, Duration::from_secs(150));
    assert!(ok, "schemathesis found problems:\n{out}");
    let generated = out
        .lines()
        .find_map(|l| {
            let (n, _) = l.trim().split_once(" generated, ")?;
            n.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no test case count in the output:\n{out}"));
    assert!(
        generated >= 100,
        "schemathesis ran only {generated} cases:\n{out}"
    );
}

#[test]
fn a_generated_python_sdk_creates_produces_and_consumes() {
    let check = "the generated Python SDK";
    let Some(generator) = common::tool_or_skip(check, "openapi-python-client") else {
        return;
    };
    // The script runs with the Python of the generator's environment, which has its deps.
    let python = generator.with_file_name("python");
    if !python.exists() {
        return common::skip_or_fail(
            check,
            "no python beside openapi-python-client",
            common::ENABLE_TOOLS,
        );
    }
    let sdk_parent = tempfile::Builder::new()
        .prefix("openapi-sdk-")
        .tempdir_in(common::target_dir())
        .expect("temp dir under target");
    let package = sdk_parent.path().join("tidelog_client");
    let mut cmd = Command::new(generator);
    cmd.args(["generate", "--meta", "none", "--path"])
        .arg(spec_path())
        .arg("--output-path")
        .arg(&package);
    let (ok, out) = common::run_bounded(cmd, Duration::from_secs(120));
    assert!(ok, "openapi-python-client generate failed:\n{out}");
    assert!(package.join("api/records/produce.py").exists(), "{out}");

    let broker = common::TestBroker::start();
    // The SDK's answers are checked against the spec on their way back, as the tests' own.
    let proxy = common::checking_proxy::CheckingProxy::start(&broker.url);
    let mut cmd = Command::new(python);
    cmd.arg(tools_dir().join("sdk_smoke.py"))
        .arg(sdk_parent.path())
        .arg(&proxy.url)
        .arg(if common::consumer_group_routes_served() {
            "yes"
        } else {
            "no"
        });
    let (ok, out) = common::run_bounded(cmd, Duration::from_secs(60));
    println!("{out}");
    assert!(ok, "the SDK script failed:\n{out}");
    assert!(out.contains("sdk: create, produce"), "{out}");
}
