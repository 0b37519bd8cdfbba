//! The OpenAPI document as a TypeScript user sees it: types generated from
//! `openapi/tidelog.json` by openapi-typescript (`tests/typescript/generate.mjs`), a program
//! (`tests/typescript/client.ts`) calling a live broker with openapi-fetch, compiled by `tsc`
//! with `strict` and `noUncheckedIndexedAccess` and without type assertions or `any`, then
//! run: create, produce JSON, binary and NDJSON, fetch by offset and long-poll, SSE, a group's
//! join/fetch/commit, and problems read through their typed `code`. With the same tools,
//! Redocly's lint engine (`tests/typescript/lint.mjs`) finds no problem in the spec under its
//! `recommended` rules (the one rule turned off says why there). The README's TypeScript
//! example (bytes as a produce body) is `tests/typescript/readme.ts`: compiled and run the
//! same way, and its call must read as the README shows it (a test without node checks that).
//!
//! The tools are the versions pinned in `tests/typescript/package.json` (and its lock file),
//! installed by `.ci/run` with `npm ci` into `<target>/ts-tools` (or `TIDELOG_TS_TOOLS`).
//! Without node or them the test is skipped with one line; with CI=true it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PROGRAM_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/typescript");
const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/tidelog.json");
const PROGRAM_FILES: [&str; 6] = [
    "client.ts",
    "readme.ts",
    "generate.mjs",
    "lint.mjs",
    "tsconfig.json",
    "package.json",
];
const ENABLE: &str = "run `bash .ci/run` once, or `npm ci` in a copy of tests/typescript and set TIDELOG_TS_TOOLS to it";

/// `<target>/ts-tools`, where `.ci/run` installs the pinned npm packages, or `TIDELOG_TS_TOOLS`.
fn ts_tools() -> PathBuf {
    std::env::var_os("TIDELOG_TS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::target_dir().join("ts-tools"))
}

/// The words of a TypeScript program outside its `//` comments.
fn code_words(program: &str) -> Vec<(usize, String)> {
    program
        .lines()
        .enumerate()
        .flat_map(|(i, line)| {
            let code = line.split("//").next().unwrap_or_default();
            code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .map(move |w| (i + 1, w.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Type assertions (`x as T`) and `any` would let the program compile whatever the spec says.
fn escapes_from_the_types(program: &str) -> Vec<String> {
    code_words(program)
        .into_iter()
        .filter(|(_, w)| w == "as" || w == "any")
        .map(|(line, w)| format!("line {line}: `{w}`"))
        .collect()
}

#[test]
fn the_escape_check_finds_casts_and_any() {
    assert!(escapes_from_the_types("const x = 1; // cast as any in a comment").is_empty());
    assert_eq!(
        escapes_from_the_types("const x = y as Foo;\nlet z: any = 1;"),
        ["line 1: `as`", "line 2: `any`"]
    );
    for file in ["client.ts", "readme.ts"] {
        let program = std::fs::read_to_string(Path::new(PROGRAM_DIR).join(file)).unwrap();
        let escapes = escapes_from_the_types(&program);
        assert!(escapes.is_empty(), "{file} escapes the types: {escapes:?}");
    }
}

/// `text` with every run of whitespace made one space.
fn one_spaced(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The call between `// README begin` and `// README end` in readme.ts.
fn readme_ts_call() -> String {
    let program = std::fs::read_to_string(Path::new(PROGRAM_DIR).join("readme.ts")).unwrap();
    let begin = program
        .find("// README begin")
        .expect("a README begin mark")
        + 15;
    let end = program.find("// README end").expect("a README end mark");
    one_spaced(program[begin..end].trim().trim_start_matches("await "))
}

/// README item 2 of issue 14: how to send bytes from TypeScript. The README's example is the
/// call readme.ts makes (which the node test compiles strictly and runs), word for word.
#[test]
fn the_readme_sends_bytes_from_typescript_with_the_call_the_test_compiles() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let readme = one_spaced(&readme);
    let call = readme_ts_call();
    assert!(call.starts_with("client.POST("), "{call}");
    assert!(
        readme.contains(&format!("`{call}`")),
        "the README's TypeScript example is not readme.ts's call:\n{call}"
    );
}

/// `node` and the installed packages, or `None` after the check was skipped (or failed in CI).
fn node_and_packages(check: &str) -> Option<(PathBuf, PathBuf)> {
    let Some(node) = common::find_tool("node") else {
        common::skip_or_fail(check, "`node` is not on PATH", ENABLE);
        return None;
    };
    let modules = ts_tools().join("node_modules");
    let installed = [
        "typescript",
        "openapi-fetch",
        "openapi-typescript",
        "@redocly/openapi-core",
    ];
    if !installed.iter().all(|p| modules.join(p).exists()) {
        let why = format!("the npm packages are not in {}", modules.display());
        common::skip_or_fail(check, &why, ENABLE);
        return None;
    }
    Some((node, modules))
}

/// A scratch directory under target/ holding the program files next to a link to the
/// installed packages (node resolves imports from there).
fn program_dir(modules: &Path) -> tempfile::TempDir {
    let work = tempfile::Builder::new()
        .prefix("ts-client-")
        .tempdir_in(common::target_dir())
        .expect("temp dir under target");
    for file in PROGRAM_FILES {
        std::fs::copy(Path::new(PROGRAM_DIR).join(file), work.path().join(file))
            .unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    std::os::unix::fs::symlink(modules, work.path().join("node_modules")).expect("link");
    work
}

#[test]
fn the_spec_passes_redocly_lint_with_its_recommended_rules() {
    let Some((node, modules)) = node_and_packages("Redocly's lint of the spec") else {
        return;
    };
    let work = program_dir(&modules);
    let mut lint = Command::new(&node);
    lint.current_dir(work.path()).args(["lint.mjs", SPEC]);
    let (ok, out) = common::run_bounded(lint, Duration::from_secs(120));
    assert!(ok && out.contains(": 0 problems"), "redocly lint:\n{out}");
}

#[test]
fn a_strict_typescript_client_generated_from_the_spec_runs_against_a_broker() {
    let Some((node, modules)) = node_and_packages("the TypeScript client") else {
        return;
    };
    let work = program_dir(&modules);
    let tsc = modules.join("typescript/bin/tsc");
    let mut generate = Command::new(&node);
    generate
        .current_dir(work.path())
        .args(["generate.mjs", SPEC, "tidelog.d.ts"]);
    let (ok, out) = common::run_bounded(generate, Duration::from_secs(120));
    assert!(ok, "openapi-typescript failed:\n{out}");

    let mut compile = Command::new(&node);
    compile.current_dir(work.path()).arg(&tsc).args(["-p", "."]);
    let (ok, out) = common::run_bounded(compile, Duration::from_secs(180));
    assert!(ok, "tsc --strict refused the program:\n{out}");

    let broker = common::TestBroker::start();
    // Every answer the program gets is checked against the spec on its way back.
    let proxy = common::checking_proxy::CheckingProxy::start(&broker.url);
    let mut run = Command::new(&node);
    run.current_dir(work.path())
        .args(["out/client.js", &proxy.url]);
    let (ok, out) = common::run_bounded(run, Duration::from_secs(120));
    println!("{out}");
    assert!(ok, "the TypeScript client failed:\n{out}");
    assert!(out.contains("ts-client: topics, produce"), "{out}");

    // The README's example stores the bytes themselves (0, 1, 255), not a JSON string.
    let rt = common::runtime();
    let http = broker.client();
    rt.block_on(common::create_topic(&http, &broker.url, "ts-readme", 1));
    let mut readme = Command::new(&node);
    readme
        .current_dir(work.path())
        .args(["out/readme.js", &proxy.url, "ts-readme"]);
    let (ok, out) = common::run_bounded(readme, Duration::from_secs(120));
    assert!(ok, "the README's example failed:\n{out}");
    let page = rt.block_on(common::get_json_ok(
        &http,
        &broker.url,
        "/v1/topics/ts-readme/partitions/0/records?offset=earliest",
    ));
    let record = &page["records"][0];
    assert_eq!(
        (&record["key"], &record["value_b64"]),
        (&serde_json::json!("k"), &serde_json::json!("AAH/")),
        "{page}"
    );
}
