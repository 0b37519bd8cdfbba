//! The Raft log and vote on disk: openraft's `RaftLogStorage` over the controller's
//! [`Journal`] (one CRC-framed entry per Raft entry, fsynced before `append` reports the
//! entries flushed), the vote in `vote.json` and the last purged log id in `purged.json`
//! (each replaced atomically and fsynced before the call returns).
//!
//! Every file operation runs on tokio's blocking pool; the std mutex is never held across an
//! `.await`. An I/O error is a `StorageError`: openraft stops the node (a voter that cannot
//! write its log must not vote or acknowledge).
//!
//! Memory: the entries since the last purge are also kept decoded in memory (the metadata log
//! is small, and a snapshot every [`super::SNAPSHOT_EVERY`] entries lets the log be purged).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, LogState, RaftLogReader, StorageError,
    StorageIOError, Vote,
};

use super::TypeConfig;
use crate::controller::journal::{self, Journal};

type Entry = openraft::Entry<TypeConfig>;

/// The log's file in the Raft directory.
pub const LOG_FILE: &str = "log.journal";
/// The vote's file in the Raft directory.
pub const VOTE_FILE: &str = "vote.json";
const PURGED_FILE: &str = "purged.json";

#[derive(Debug, Clone)]
pub(super) struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    journal: Journal,
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote<u64>>,
    purged: Option<LogId<u64>>,
}

fn io_error(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io_error(&path.display().to_string(), e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl LogStore {
    /// Opens (or creates) the log, the vote and the purge mark in `dir`.
    pub(super) fn open(dir: &Path) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let (journal, stored) = Journal::open(&dir.join(LOG_FILE))?;
        let mut entries = BTreeMap::new();
        for e in stored {
            let entry: Entry = serde_json::from_slice(&e.payload)
                .map_err(|err| io_error(&format!("raft log entry {}", e.index), err))?;
            if entry.log_id.index != e.index {
                return Err(io_error(
                    "raft log",
                    format!("entry {} is framed as {}", entry.log_id.index, e.index),
                ));
            }
            entries.insert(e.index, entry);
        }
        let vote = read_json(&dir.join(VOTE_FILE))?;
        let purged = read_json(&dir.join(PURGED_FILE))?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_path_buf(),
                journal,
                entries,
                vote,
                purged,
            })),
        })
    }

    /// True when nothing was ever stored: no vote, no entry, no purge (a fresh voter).
    pub(super) fn is_fresh(&self) -> bool {
        let inner = self.lock();
        inner.vote.is_none() && inner.entries.is_empty() && inner.purged.is_none()
    }

    /// The voters of the last membership entry in the log, if it holds one.
    pub(super) fn last_membership(&self) -> Option<BTreeMap<u64, BasicNode>> {
        let inner = self.lock();
        inner.entries.values().rev().find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(
                m.nodes()
                    .map(|(id, node)| (*id, node.clone()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            _ => None,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("the raft log lock is not poisoned")
    }

    /// Runs `f` on the store on the blocking pool (it may fsync).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().expect("the raft log lock is not poisoned");
            f(&mut inner)
        })
        .await
        .map_err(|e| io::Error::other(format!("raft log task: {e}")))?
    }
}

fn write_logs(e: io::Error) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last.or(inner.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let vote = *vote;
        self.blocking(move |inner| {
            let bytes = serde_json::to_vec(&vote).expect("a vote serializes");
            crate::log::write_file_atomic(&inner.dir.join(VOTE_FILE), &bytes)?;
            inner.vote = Some(vote);
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let written = self
            .blocking(move |inner| {
                let framed: Vec<journal::Entry> = entries
                    .iter()
                    .map(|e| journal::Entry {
                        index: e.log_id.index,
                        term: e.log_id.leader_id.term,
                        payload: serde_json::to_vec(e).expect("an entry serializes"),
                    })
                    .collect();
                // fsynced before it returns.
                inner.journal.append(&framed)?;
                for e in entries {
                    inner.entries.insert(e.log_id.index, e);
                }
                Ok(())
            })
            .await;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(write_logs(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.blocking(move |inner| {
            inner.journal.truncate_from(log_id.index)?;
            inner.entries.split_off(&log_id.index);
            Ok(())
        })
        .await
        .map_err(write_logs)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.blocking(move |inner| {
            // The mark first: a crash between the two leaves entries the mark covers, which
            // are read as purged; never a log whose start is unknown.
            let bytes = serde_json::to_vec(&log_id).expect("a log id serializes");
            crate::log::write_file_atomic(&inner.dir.join(PURGED_FILE), &bytes)?;
            inner.purged = Some(log_id);
            inner.journal.purge_through(log_id.index)?;
            let kept = inner.entries.split_off(&(log_id.index + 1));
            inner.entries = kept;
            Ok(())
        })
        .await
        .map_err(write_logs)
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn log_vote_and_purge_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert!(store.is_fresh());
        store.save_vote(&Vote::new(3, 1)).await.unwrap();
        {
            let mut inner = store.lock();
            let framed: Vec<journal::Entry> = (1..=5)
                .map(|i| journal::Entry {
                    index: i,
                    term: 3,
                    payload: serde_json::to_vec(&entry(i, 3)).unwrap(),
                })
                .collect();
            inner.journal.append(&framed).unwrap();
            for i in 1..=5 {
                inner.entries.insert(i, entry(i, 3));
            }
        }
        store.truncate(entry(5, 3).log_id).await.unwrap();
        store.purge(entry(2, 3).log_id).await.unwrap();
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert!(!store.is_fresh());
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(2, 3).log_id));
        assert_eq!(state.last_log_id, Some(entry(4, 3).log_id));
        let got = store.try_get_log_entries(0..10).await.unwrap();
        let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![3, 4]);
        // Everything purged: the last log id is the purge mark.
        store.purge(entry(4, 3).log_id).await.unwrap();
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(entry(4, 3).log_id));
    }
}
