//! Every answer a test receives, held against `openapi/tidelog.json`, in process.
//!
//! [`violations`] takes one exchange (method, path, status, headers, body) and says how it
//! breaks the spec: a status the operation does not document, a content type its response does
//! not list, a body its schema refuses, a documented header missing or malformed, or a problem
//! whose `status`, `type` or `code` disagree with the answer's status and the code table
//! (`x-tidelog-problem-codes`). Schemas are checked with the `jsonschema` crate (JSON Schema
//! 2020-12, the dialect of OpenAPI 3.1), one compiled validator per schema, kept for the
//! process.
//!
//! The test client (`common::client`) runs this on every answer; a break panics the request
//! that saw it and is remembered for the broker it came from, so a request in a spawned task
//! that swallowed the panic still fails its test when the broker handle drops.
//!
//! Outside the spec by design: CORS preflights (an `OPTIONS` with
//! `Access-Control-Request-Method`, answered by tower-http's CORS layer on every path).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use reqwest::header::HeaderMap;
use serde_json::Value;

const SPEC_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/tidelog.json");

/// How much of a body a violation message quotes.
const BODY_QUOTED_BYTES_MAX: usize = 600;

/// One answer as the client saw it.
pub struct Exchange<'a> {
    pub method: &'a str,
    /// The URL's path, still percent-encoded.
    pub path: &'a str,
    /// A CORS preflight (`OPTIONS` with `Access-Control-Request-Method`).
    pub preflight: bool,
    pub status: u16,
    pub headers: &'a HeaderMap,
    /// `None` when the body is a stream the test reads itself (server-sent events).
    pub body: Option<&'a [u8]>,
}

/// How the exchange breaks the spec; empty when it does not.
pub fn violations(exchange: &Exchange) -> Vec<String> {
    if exchange.preflight {
        return Vec::new();
    }
    let spec = Spec::get();
    let mut out = Vec::new();
    let response = match spec.response_for(exchange) {
        Ok(r) => r,
        Err(problem) => return vec![problem],
    };
    spec.check_headers(&response, exchange, &mut out);
    spec.check_content(&response, exchange, &mut out);
    out
}

/// The whole message for a broken exchange, with the body quoted.
pub fn describe(exchange: &Exchange, violations: &[String]) -> String {
    let body = match exchange.body {
        None => "(a stream, not read here)".to_string(),
        Some(b) => {
            let text = String::from_utf8_lossy(b);
            let cut = text.floor_char_boundary(BODY_QUOTED_BYTES_MAX.min(text.len()));
            let more = if cut < text.len() { " ..." } else { "" };
            format!("{}{more}", &text[..cut])
        }
    };
    format!(
        "the answer to {} {} breaks openapi/tidelog.json:\n  {}\nstatus {}, content-type {:?}, body: {body}",
        exchange.method,
        exchange.path,
        violations.join("\n  "),
        exchange.status,
        exchange
            .headers
            .get("content-type")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    )
}

/// For the tests that speak raw HTTP/1.1 over a socket: panics if `answer` (status line,
/// headers, body as received) to `method path` breaks the spec. A body shorter than its
/// `Content-Length` (the test read only part of it) is not checked, its status and headers are.
pub fn assert_raw_answer_keeps_the_spec(method: &str, path: &str, answer: &[u8]) {
    let path = path.split('?').next().unwrap_or(path);
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8_lossy(&answer[..head_end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').expect("a header line");
        headers.append(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).expect("a name"),
            reqwest::header::HeaderValue::from_str(value.trim()).expect("a value"),
        );
    }
    let body = &answer[head_end + 4..];
    let complete = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n);
    let body = complete.then(|| {
        let n: usize = headers["content-length"].to_str().unwrap().parse().unwrap();
        &body[..n]
    });
    let exchange = Exchange {
        method,
        path,
        preflight: false,
        status,
        headers: &headers,
        body,
    };
    let broken = violations(&exchange);
    assert!(broken.is_empty(), "{}", describe(&exchange, &broken));
}

/// Breaks seen, by the broker (`host:port`) that answered, until its handle takes them.
static BREAKS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

pub fn remember_break(authority: &str, message: &str) {
    BREAKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((authority.to_string(), message.to_string()));
}

/// The breaks seen in answers of the broker at `authority` (`127.0.0.1:PORT`), taken out.
pub fn take_breaks(authority: &str) -> Vec<String> {
    let mut all = BREAKS.lock().unwrap_or_else(|e| e.into_inner());
    let (mine, rest): (Vec<_>, Vec<_>) = all.drain(..).partition(|(a, _)| a == authority);
    *all = rest;
    mine.into_iter().map(|(_, m)| m).collect()
}

/// A response object of the spec, with where it lives (for schema pointers).
struct Response<'s> {
    /// JSON pointer of the response object, `$ref` followed.
    pointer: String,
    value: &'s Value,
    /// What the exchange matched: `GET /v1/topics → 200`, for messages.
    matched: String,
}

struct Spec {
    doc: Value,
    /// Path templates split into segments (`None` for a `{parameter}`).
    templates: Vec<(String, Vec<Option<String>>)>,
    /// Compiled validators by the JSON pointer of their schema.
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl Spec {
    fn get() -> &'static Spec {
        static SPEC: OnceLock<Spec> = OnceLock::new();
        SPEC.get_or_init(|| {
            let text = std::fs::read_to_string(SPEC_FILE).expect("read openapi/tidelog.json");
            let doc: Value = serde_json::from_str(&text).expect("openapi/tidelog.json is JSON");
            let templates = doc["paths"]
                .as_object()
                .expect("spec has paths")
                .keys()
                .map(|t| (t.clone(), split_template(t)))
                .collect();
            Spec {
                doc,
                templates,
                validators: Mutex::new(HashMap::new()),
            }
        })
    }

    /// The template serving `path`, as axum's router picks it: literal segments win over
    /// parameters, position by position.
    fn template_of(&self, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        self.templates
            .iter()
            .filter(|(_, t)| {
                t.len() == segments.len()
                    && t.iter().zip(&segments).all(|(t, s)| match t {
                        Some(lit) => lit == s,
                        None => !s.is_empty(),
                    })
            })
            .max_by_key(|(_, t)| t.iter().map(Option::is_some).collect::<Vec<_>>())
            .map(|(name, _)| name.as_str())
    }

    fn response_for(&self, exchange: &Exchange) -> Result<Response<'_>, String> {
        let method = exchange.method.to_ascii_lowercase();
        let status = exchange.status.to_string();
        let operation = self.template_of(exchange.path).and_then(|template| {
            let item = &self.doc["paths"][template];
            // axum answers HEAD with the GET route (and no body).
            let method = if method == "head" && item.get("head").is_none() {
                "get"
            } else {
                method.as_str()
            };
            item.get(method).map(|op| (template, method, op))
        });
        let Some((template, method, op)) = operation else {
            // No such route or method: the router's own problems (404 `not_found`, 405
            // `method_not_allowed`) or one any connection may get (503 `overloaded`).
            return Ok(self.component_response(
                "Problem",
                format!(
                    "{} {} (no operation) → {status}",
                    exchange.method, exchange.path
                ),
            ));
        };
        let responses = &op["responses"];
        let range = format!("{}XX", &status[..1]);
        let key = [status.as_str(), range.as_str(), "default"]
            .into_iter()
            .find(|k| responses.get(*k).is_some())
            .ok_or_else(|| {
                format!(
                    "{} {template}: status {status} is not documented (and there is no default)",
                    method.to_uppercase()
                )
            })?;
        let matched = format!("{} {template} → {key}", method.to_uppercase());
        let value = &responses[key];
        Ok(match value["$ref"].as_str() {
            Some(r) => self.follow(r, matched),
            None => Response {
                pointer: format!(
                    "/paths/{}/{method}/responses/{key}",
                    escape_pointer(template)
                ),
                value,
                matched,
            },
        })
    }

    fn component_response(&self, name: &str, matched: String) -> Response<'_> {
        self.follow(&format!("#/components/responses/{name}"), matched)
    }

    fn follow(&self, reference: &str, matched: String) -> Response<'_> {
        let pointer = reference
            .strip_prefix('#')
            .expect("a local $ref")
            .to_string();
        let value = self
            .doc
            .pointer(&pointer)
            .unwrap_or_else(|| panic!("$ref {reference} resolves"));
        Response {
            pointer,
            value,
            matched,
        }
    }

    fn check_headers(&self, response: &Response, exchange: &Exchange, out: &mut Vec<String>) {
        let Some(headers) = response.value["headers"].as_object() else {
            return;
        };
        for (name, header) in headers {
            let (pointer, header) = match header["$ref"].as_str() {
                Some(r) => {
                    let p = r.strip_prefix('#').expect("a local $ref");
                    (p.to_string(), self.doc.pointer(p).expect("$ref resolves"))
                }
                None => (
                    format!("{}/headers/{}", response.pointer, escape_pointer(name)),
                    header,
                ),
            };
            let Some(sent) = exchange.headers.get(name.as_str()) else {
                if header["required"] == true {
                    out.push(format!(
                        "{}: the required header {name} is missing",
                        response.matched
                    ));
                }
                continue;
            };
            let Ok(sent) = sent.to_str() else {
                out.push(format!("{}: header {name} is not text", response.matched));
                continue;
            };
            let schema_pointer = format!("{pointer}/schema");
            let schema = self.doc.pointer(&schema_pointer).unwrap_or(&Value::Null);
            let value = match self.resolve_schema(schema)["type"].as_str() {
                Some("integer" | "number") => match sent.parse::<serde_json::Number>() {
                    Ok(n) => Value::Number(n),
                    Err(_) => Value::String(sent.to_string()),
                },
                _ => Value::String(sent.to_string()),
            };
            for e in self.schema_errors(&schema_pointer, &value) {
                out.push(format!("{}: header {name}: {e}", response.matched));
            }
        }
    }

    fn check_content(&self, response: &Response, exchange: &Exchange, out: &mut Vec<String>) {
        let at = &response.matched;
        let content = response.value["content"].as_object();
        let declared: Vec<&String> = content.map(|c| c.keys().collect()).unwrap_or_default();
        if declared.is_empty() {
            if exchange.body.is_some_and(|b| !b.is_empty()) {
                out.push(format!("{at}: a body where the spec documents none"));
            }
            return;
        }
        let Some(content_type) = exchange.headers.get("content-type") else {
            if exchange.method != "HEAD" {
                out.push(format!(
                    "{at}: no Content-Type (the spec lists {declared:?})"
                ));
            }
            return;
        };
        let media = content_type
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let Some(media_key) = declared.iter().find(|d| media_matches(d, &media)) else {
            out.push(format!(
                "{at}: content type {media:?} is not one of {declared:?}"
            ));
            return;
        };
        let Some(body) = exchange.body else {
            return;
        };
        if exchange.method == "HEAD" {
            return;
        }
        let schema_pointer = format!(
            "{}/content/{}/schema",
            response.pointer,
            escape_pointer(media_key)
        );
        if self.doc.pointer(&schema_pointer).is_none() {
            return;
        }
        let value = if media == "application/json" || media.ends_with("+json") {
            match serde_json::from_slice::<Value>(body) {
                Ok(v) => v,
                Err(e) => {
                    out.push(format!("{at}: the body is not JSON: {e}"));
                    return;
                }
            }
        } else {
            Value::String(String::from_utf8_lossy(body).into_owned())
        };
        for e in self.schema_errors(&schema_pointer, &value) {
            out.push(format!("{at}: body: {e}"));
        }
        if media == "application/problem+json" {
            self.check_problem(at, exchange.status, &value, out);
            self.check_listed_code(at, &schema_pointer, &value, out);
        }
    }

    /// A problem's own `status`, its `type` and its `code` agree with the answer's status and
    /// the code table: what a client switching on `code` relies on, whichever response
    /// (per status or `default`) documents it.
    fn check_problem(&self, at: &str, status: u16, problem: &Value, out: &mut Vec<String>) {
        if problem["status"].as_u64() != Some(u64::from(status)) {
            out.push(format!(
                "{at}: the problem says status {}, the answer is {status}",
                problem["status"]
            ));
        }
        let Some(code) = problem["code"].as_str() else {
            return; // the schema check already said so
        };
        match self.doc["x-tidelog-problem-codes"][code]["status"].as_u64() {
            None => out.push(format!(
                "{at}: code {code} is not in x-tidelog-problem-codes"
            )),
            Some(s) if s != u64::from(status) => out.push(format!(
                "{at}: code {code} is listed with status {s}, answered with {status}"
            )),
            Some(_) => {}
        }
        let expected_type = format!("urn:tidelog:problem:{code}");
        if problem["type"] != expected_type.as_str() {
            out.push(format!(
                "{at}: type {} is not {expected_type}",
                problem["type"]
            ));
        }
    }

    /// The problem's `code` is one the operation lists for this status (issue 14: each
    /// operation's problem responses narrow `code` to what it answers). The schema check says
    /// so too; this names the operation's list. `default` lists every code.
    fn check_listed_code(
        &self,
        at: &str,
        schema_pointer: &str,
        problem: &Value,
        out: &mut Vec<String>,
    ) {
        let (Some(code), Some(schema)) =
            (problem["code"].as_str(), self.doc.pointer(schema_pointer))
        else {
            return;
        };
        let schema = self.resolve_schema(schema);
        let Some(listed) = schema["properties"]["code"]["enum"].as_array() else {
            return;
        };
        if !listed.iter().any(|c| c == code) {
            let listed: Vec<&str> = listed.iter().filter_map(Value::as_str).collect();
            out.push(format!(
                "{at}: code {code} is not one this operation lists for its status ({listed:?})"
            ));
        }
    }

    fn resolve_schema<'v>(&'v self, schema: &'v Value) -> &'v Value {
        match schema["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
            Some(p) => self
                .doc
                .pointer(p)
                .map_or(schema, |s| self.resolve_schema(s)),
            None => schema,
        }
    }

    /// The schema at `pointer` against `value`: its errors, at most a few.
    fn schema_errors(&self, pointer: &str, value: &Value) -> Vec<String> {
        let validator = self.validator(pointer);
        validator
            .iter_errors(value)
            .take(5)
            .map(|e| format!("{e} (at {:?})", e.instance_path().to_string()))
            .collect()
    }

    fn validator(&self, pointer: &str) -> Arc<jsonschema::Validator> {
        let mut cache = self.validators.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = cache.get(pointer) {
            return Arc::clone(v);
        }
        // The whole document is the root resource, so the spec's own `#/components/...`
        // references resolve; the root `$ref` points at the schema wanted.
        let mut root = self.doc.clone();
        root["$schema"] = Value::from("https://json-schema.org/draft/2020-12/schema");
        root["$ref"] = Value::from(format!("#{}", fragment(pointer)));
        let validator = Arc::new(
            jsonschema::validator_for(&root)
                .unwrap_or_else(|e| panic!("the schema at {pointer} compiles: {e}")),
        );
        cache.insert(pointer.to_string(), Arc::clone(&validator));
        validator
    }
}

fn split_template(template: &str) -> Vec<Option<String>> {
    template
        .split('/')
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                None
            } else {
                Some(s.to_string())
            }
        })
        .collect()
}

/// A media type of the spec (`text/plain`, `*/*`, `application/*`) against one answered.
fn media_matches(declared: &str, media: &str) -> bool {
    declared == media
        || declared == "*/*"
        || declared
            .strip_suffix("/*")
            .is_some_and(|kind| media.split('/').next() == Some(kind))
}

/// A JSON pointer as a URI fragment: what a fragment may not hold (`{`, `}` of a path
/// template, ...) percent-encoded.
fn fragment(pointer: &str) -> String {
    let mut out = String::with_capacity(pointer.len());
    for b in pointer.bytes() {
        if b.is_ascii_alphanumeric() || b"/~-._!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One JSON pointer token: `~` as `~0`, `/` as `~1`.
fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}
