//! The test-only ledger of synced lengths, for simulating a power cut.
//!
//! With the environment variable `TIDELOG_TEST_SYNC_LEDGER=<file>` set when the process
//! starts, every completed sync of a segment's log file appends one line `<path> <length>` to
//! that file: `length` bytes of `path` were on disk when the sync returned. A test harness
//! kills the broker with `kill -9`, cuts every segment file back to the last length recorded
//! for it (to nothing when none was), and restarts it: that is what a machine losing power
//! would have left, page cache gone. Without the variable it costs one load of an initialized
//! `OnceLock` per sync, nothing per append.
//!
//! The length is taken before the sync starts: bytes written while it runs may or may not be
//! covered, so they do not count. For the active segment it is where its batches end, not
//! the file's length: zeros written ahead of small appends follow them (`log::segment`), and
//! the batches later written over those zeros are not synced yet. The path is the one the
//! kernel knows for the open file (`/proc/self/fd`), so a segment renamed since it was
//! opened (compaction) is recorded under its current name, and one already deleted is not
//! recorded at all.
//!
//! Failure policy: the ledger is a test aid; failing to write it panics (a test that cannot
//! trust its ledger must not pass).
//!
//! A second test aid lives here: with `TIDELOG_TEST_SYNC_DELAY_MS=<ms>` set when the process
//! starts, every sync of a segment file first sleeps that long (a slow disk), so a test can
//! see the flusher move its rounds off the runtime workers (`broker::inline_sync`). Without
//! the variable it costs one load of an initialized `OnceLock` per sync.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// The environment variable naming the ledger file.
pub const SYNC_LEDGER_ENV: &str = "TIDELOG_TEST_SYNC_LEDGER";

/// The environment variable naming a delay, in milliseconds, added before every sync.
pub const SYNC_DELAY_ENV: &str = "TIDELOG_TEST_SYNC_DELAY_MS";

/// The delay of [`SYNC_DELAY_ENV`], when it is set (a value that is no number panics: a test
/// that asked for a slow disk must not run on a fast one).
fn delay() -> Option<std::time::Duration> {
    static DELAY: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    *DELAY.get_or_init(|| {
        let ms = std::env::var(SYNC_DELAY_ENV).ok()?;
        let ms: u64 = ms
            .parse()
            .unwrap_or_else(|e| panic!("{SYNC_DELAY_ENV}: {ms:?} is no number of ms: {e}"));
        Some(std::time::Duration::from_millis(ms))
    })
}

/// The open ledger, when the variable is set. Std mutex: held for one `write` call.
static LEDGER: OnceLock<Option<Mutex<File>>> = OnceLock::new();

fn ledger() -> Option<&'static Mutex<File>> {
    LEDGER
        .get_or_init(|| {
            let path = std::env::var_os(SYNC_LEDGER_ENV)?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("{SYNC_LEDGER_ENV}: cannot open {path:?}: {e}"));
            Some(Mutex::new(file))
        })
        .as_ref()
}

/// `file.sync_data()`, recorded in the ledger when there is one.
pub fn sync_data(file: &File) -> io::Result<()> {
    recorded(file, u64::MAX, File::sync_data)
}

/// `file.sync_data()` of a file whose batches end at `data_len` (zeros written ahead follow
/// them, see `log::segment`): the ledger records at most that much, since zeros are no data
/// a power cut could keep or lose.
pub fn sync_data_upto(file: &File, data_len: u64) -> io::Result<()> {
    recorded(file, data_len, File::sync_data)
}

/// `file.sync_all()`, recorded in the ledger when there is one.
pub fn sync_all(file: &File) -> io::Result<()> {
    recorded(file, u64::MAX, File::sync_all)
}

fn recorded(file: &File, data_len: u64, sync: fn(&File) -> io::Result<()>) -> io::Result<()> {
    if let Some(delay) = delay() {
        std::thread::sleep(delay);
    }
    if ledger().is_none() {
        return sync(file);
    }
    let length = file.metadata()?.len().min(data_len);
    sync(file)?;
    let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
        return Ok(());
    };
    if path.to_string_lossy().ends_with(" (deleted)") {
        return Ok(());
    }
    record_synced(&path, length);
    Ok(())
}

/// Records that `length` bytes of `path` are on disk (a file synced under another name and
/// renamed since: compaction's rewritten segments).
pub fn record_synced(path: &std::path::Path, length: u64) {
    let Some(ledger) = ledger() else { return };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let line = format!("{} {length}\n", path.display());
    ledger
        .lock()
        .expect("ledger lock poisoned")
        .write_all(line.as_bytes())
        .expect("write the sync ledger");
}

/// Reads a ledger: the last synced length recorded for each path.
pub fn read(ledger: &std::path::Path) -> io::Result<std::collections::HashMap<PathBuf, u64>> {
    let text = std::fs::read_to_string(ledger)?;
    let mut synced = std::collections::HashMap::new();
    for line in text.lines() {
        let Some((path, length)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Ok(length) = length.parse() {
            synced.insert(PathBuf::from(path), length);
        }
    }
    Ok(synced)
}
