//! The Raft state machine: the [`MetadataImage`] (and the cluster id) with openraft's
//! applied log id and membership, and snapshots of it.
//!
//! The state lives in memory; a snapshot is written to `snapshot.json` (atomically, fsynced)
//! before openraft is told it exists, so a restart rebuilds the state from the snapshot and
//! replays the log after it. Each application of a command is `MetadataImage::apply` at the
//! entry's Raft index: the same entries give the same image on every voter.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Applied, Request, TypeConfig};
use crate::metadata::{MetadataImage, Outcome};

const SNAPSHOT_FILE: &str = "snapshot.json";

/// The replicated state, shared with the rest of the broker (read under a short std lock).
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    /// Moves whenever the image changes (an applied command, an installed snapshot).
    version: watch::Sender<u64>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) last_applied: Option<LogId<u64>>,
    pub(super) membership: StoredMembership<u64, BasicNode>,
    pub(super) data: Data,
    /// The last snapshot: its meta and bytes (small: one image).
    snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

/// What a snapshot carries besides openraft's meta.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Data {
    pub(super) image: MetadataImage,
    pub(super) cluster_id: Option<String>,
}

/// `snapshot.json`.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Data,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the state machine lock is not poisoned")
    }

    /// Runs `f` on the image (keep it short: the lock is held).
    pub fn with_image<T>(&self, f: impl FnOnce(&MetadataImage) -> T) -> T {
        f(&self.lock().data.image)
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.lock().data.cluster_id.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

#[derive(Debug, Clone)]
pub(super) struct StateMachine {
    shared: Arc<Shared>,
    dir: PathBuf,
}

impl StateMachine {
    /// The state of the last snapshot in `dir` (empty without one).
    pub(super) fn open(dir: &Path) -> io::Result<StateMachine> {
        let mut state = State::default();
        match std::fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => {
                let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("{SNAPSHOT_FILE}: {e}"))
                })?;
                let data = serde_json::to_vec(&file.data).expect("a snapshot serializes");
                state.last_applied = file.meta.last_log_id;
                state.membership = file.meta.last_membership.clone();
                state.data = file.data;
                state.snapshot = Some((file.meta, data));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(StateMachine {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                version: watch::Sender::new(0),
            }),
            dir: dir.to_path_buf(),
        })
    }

    /// The voters of the membership the snapshot holds, if any.
    pub(super) fn membership(&self) -> Option<std::collections::BTreeMap<u64, BasicNode>> {
        let state = self.shared.lock();
        state.membership.log_id().as_ref()?;
        Some(
            state
                .membership
                .nodes()
                .map(|(id, node)| (*id, node.clone()))
                .collect(),
        )
    }

    pub(super) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Writes `meta` and `data` as the current snapshot, durably.
    async fn store_snapshot(
        &self,
        meta: SnapshotMeta<u64, BasicNode>,
        data: Data,
    ) -> io::Result<Vec<u8>> {
        let path = self.dir.join(SNAPSHOT_FILE);
        let file = SnapshotFile { meta, data };
        tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&file).expect("a snapshot serializes");
            crate::log::write_file_atomic(&path, &bytes)?;
            Ok(serde_json::to_vec(&file.data).expect("a snapshot serializes"))
        })
        .await
        .map_err(|e| io::Error::other(format!("snapshot task: {e}")))?
    }
}

fn snapshot_error(e: &io::Error) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, AnyError::new(e)).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (meta, data) = {
            let mut state = self.shared.lock();
            state.snapshots_built += 1;
            let index = state.last_applied.map_or(0, |l| l.index);
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
                snapshot_id: format!("{index}-{}", state.snapshots_built),
            };
            (meta, state.data.clone())
        };
        let bytes = self
            .store_snapshot(meta.clone(), data)
            .await
            .map_err(|e| snapshot_error(&e))?;
        self.shared.lock().snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let state = self.shared.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<u64>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut answers = Vec::new();
        let mut changed = false;
        {
            let mut state = self.shared.lock();
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                let answer = match entry.payload {
                    EntryPayload::Blank => Ok(Outcome::Applied),
                    EntryPayload::Normal(Request::Command(command)) => {
                        changed = true;
                        state.data.image.apply(entry.log_id.index, &command)
                    }
                    EntryPayload::Normal(Request::ClusterId { cluster_id }) => {
                        // The first one proposed wins; a later one changes nothing.
                        if state.data.cluster_id.is_none() {
                            state.data.cluster_id = Some(cluster_id);
                            changed = true;
                        }
                        Ok(Outcome::Applied)
                    }
                    EntryPayload::Membership(m) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), m);
                        Ok(Outcome::Applied)
                    }
                };
                answers.push(Applied(answer));
            }
        }
        if changed {
            self.shared.changed();
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let data: Data = serde_json::from_slice(&bytes).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        let stored = self
            .store_snapshot(meta.clone(), data.clone())
            .await
            .map_err(|e| snapshot_error(&e))?;
        {
            let mut state = self.shared.lock();
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            state.data = data;
            state.snapshot = Some((meta.clone(), stored));
        }
        self.shared.changed();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let state = self.shared.lock();
        Ok(state.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}
