//! The metadata log of a controller that runs on one fixed broker (part 1 of the cluster):
//! commands are written to the journal (fsynced) first, then applied to the image, exactly
//! as a Raft log commits an entry before its state machine applies it. A command `apply`
//! refuses still holds its index, and replays refused again: the image after a restart is
//! the image before it.
//!
//! Brokers follow the log by index (`commands_after`) or take the whole image (`image`). Part 2 replaces the journal-then-apply step by openraft;
//! the image and `apply` stay.

use std::io;
use std::path::Path;

use super::journal::{Entry, Journal};
use crate::metadata::{Command, MetadataError, MetadataImage, Outcome};

/// Why a proposal failed.
#[derive(Debug)]
pub enum ProposeError {
    /// Written and applied, but `apply` refused it: the image did not change.
    Refused { index: u64, error: MetadataError },
    /// Not written: the journal could not be appended to (nothing changed).
    Io(io::Error),
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::Refused { error, .. } => write!(f, "{error}"),
            ProposeError::Io(e) => write!(f, "the metadata log could not be written: {e}"),
        }
    }
}

impl std::error::Error for ProposeError {}

#[derive(Debug)]
pub struct MetadataLog {
    journal: Journal,
    image: MetadataImage,
    /// Every command since the journal's first entry, by index order, so a broker a little
    /// behind fetches only what it missed.
    commands: Vec<(u64, Command)>,
}

impl MetadataLog {
    /// Opens the journal at `path` and replays it into a fresh image. An entry that does not
    /// decode as a command is damage the journal's CRC did not catch (a bug): refused loudly.
    pub fn open(path: &Path) -> io::Result<MetadataLog> {
        let (journal, entries) = Journal::open(path)?;
        let mut log = MetadataLog {
            journal,
            image: MetadataImage::default(),
            commands: Vec::with_capacity(entries.len()),
        };
        for entry in entries {
            let command: Command = serde_json::from_slice(&entry.payload).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("metadata log entry {}: {e}", entry.index),
                )
            })?;
            // Refused commands replay refused: the result is not needed again.
            let _ = log.image.apply(entry.index, &command);
            log.commands.push((entry.index, command));
        }
        Ok(log)
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// Writes `command` durably, then applies it.
    pub fn propose(&mut self, command: Command) -> Result<(u64, Outcome), ProposeError> {
        let index = self.image.applied + 1;
        let payload = serde_json::to_vec(&command).expect("a command always serializes");
        let entry = Entry {
            index,
            term: 0,
            payload,
        };
        self.journal.append(&[entry]).map_err(ProposeError::Io)?;
        let result = self.image.apply(index, &command);
        self.commands.push((index, command));
        match result {
            Ok(outcome) => Ok((index, outcome)),
            Err(error) => Err(ProposeError::Refused { index, error }),
        }
    }

    /// The commands after `index`. Every command is kept (the journal is not purged until
    /// snapshots come with part 2).
    pub fn commands_after(&self, index: u64) -> &[(u64, Command)] {
        let from = self.commands.partition_point(|(i, _)| *i <= index);
        &self.commands[from..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TopicConfig;
    use crate::metadata::{BrokerEpoch, NodeId};

    fn register(id: u32) -> Command {
        Command::RegisterBroker {
            node_id: NodeId(id),
            address: format!("127.0.0.1:{}", 9000 + id),
            incarnation: 1,
        }
    }

    #[test]
    fn a_reopened_log_replays_to_the_same_image_refusals_included() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.journal");
        let mut log = MetadataLog::open(&path).unwrap();
        let (_, outcome) = log.propose(register(1)).unwrap();
        let Outcome::Registered { broker_epoch } = outcome else {
            panic!("{outcome:?}");
        };
        log.propose(Command::UnfenceBroker {
            node_id: NodeId(1),
            broker_epoch,
        })
        .unwrap();
        let stale = Command::UnfenceBroker {
            node_id: NodeId(1),
            broker_epoch: BrokerEpoch(99),
        };
        assert!(matches!(
            log.propose(stale),
            Err(ProposeError::Refused { index: 3, .. })
        ));
        log.propose(Command::CreateTopic {
            name: "t".into(),
            config: TopicConfig::default(),
            min_insync_replicas: 1,
            assignment: vec![vec![NodeId(1)]],
        })
        .unwrap();
        let before = log.image().clone();
        assert_eq!(before.applied, 4);
        drop(log);
        let log = MetadataLog::open(&path).unwrap();
        assert_eq!(log.image(), &before);
        assert_eq!(log.commands_after(2).len(), 2);
        assert_eq!(log.commands_after(4).len(), 0);
    }
}
