//! A panic in a background task is a bug: the whole broker must stop, loudly and non-zero,
//! instead of serving on with a dead task (a frozen high watermark, groups that never expire)
//! while `readyz` says ready.
//!
//! Debug builds of `tidelog` panic in the group session task when
//! `TIDELOG_DEBUG_PANIC_IN_SESSIONS` is set (see `groups::sessions`); the panic hook installed
//! by `main` turns that into an abort.
//!
//! For the same reason no lock's poisoning is recovered: a lock is poisoned only by a panic
//! under it, what it guards may be half-changed, and the process is stopping anyway. A scan
//! of `src/` finds no `PoisonError` handling and no `unwrap_or_else(|e| e.into_inner())`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

#[test]
fn a_panic_in_a_background_task_stops_the_process() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("TIDELOG_DEBUG_PANIC_IN_SESSIONS", "1")
        .env_remove("TIDELOG_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the tidelog binary");
    let stderr = child.stderr.take().unwrap();
    let said = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(status) = status else {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("the broker kept running after its session task panicked");
    };
    assert!(!status.success(), "a panic must not exit 0: {status:?}");
    let said = said.join().unwrap().join("\n");
    assert!(
        said.contains("panics on purpose") && said.contains("a bug stopped the process"),
        "the panic and the stop are reported on stderr:\n{said}"
    );
}

#[test]
fn no_poisoned_lock_is_recovered_in_src() {
    let files = common::source_files();
    assert!(files.len() > 10, "found the sources");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for (n, line) in text.lines().enumerate() {
            if recovers_poison(line) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "poisoned locks recovered (a panic stops the process; expect() instead):\n{}",
        found.join("\n")
    );
}

/// The scan sees the ways a poisoned lock is taken anyway, in code, not in comments.
#[test]
fn the_poison_scan_finds_recoveries_and_ignores_comments() {
    assert!(recovers_poison(
        "let g = m.lock().unwrap_or_else(|e| e.into_inner());"
    ));
    assert!(recovers_poison(
        "    .unwrap_or_else(|poisoned| poisoned.into_inner())"
    ));
    assert!(recovers_poison("Err(e: PoisonError<_>) => e.into_inner(),"));
    assert!(recovers_poison("m.clear_poison();"));
    assert!(!recovers_poison(
        "let g = m.lock().expect(\"poisoned only after a panic\");"
    ));
    assert!(!recovers_poison(
        "let file = out.into_inner().map_err(|e| e.into_error())?;"
    ));
    assert!(!recovers_poison(
        "// never .unwrap_or_else(|e| e.into_inner()) here"
    ));
}

fn recovers_poison(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default();
    if code.contains("PoisonError") || code.contains("clear_poison") {
        return true;
    }
    // `unwrap_or_else(|x| x.into_inner())` for any binding `x`.
    code.split("unwrap_or_else(|").skip(1).any(|rest| {
        rest.split_once('|').is_some_and(|(binding, body)| {
            body.trim_start()
                .starts_with(&format!("{}.into_inner()", binding.trim()))
        })
    })
}
