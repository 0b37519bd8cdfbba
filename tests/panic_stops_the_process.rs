//! A panic in a background task is a bug: the whole broker must stop, loudly and non-zero,
//! instead of serving on with a dead task (a frozen high watermark, groups that never expire)
//! while `readyz` says ready.
//!
//! Debug builds of `tidelog` panic in the group session task when
//! `TIDELOG_DEBUG_PANIC_IN_SESSIONS` is set (see `groups::sessions`); the panic hook installed
//! by `main` turns that into an abort.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
