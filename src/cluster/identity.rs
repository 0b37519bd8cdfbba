//! What identifies a cluster and a broker process: the cluster id stored in the data
//! directory, and the random incarnation each process start picks.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::Path;

use crate::log::write_file_atomic;

/// The file under `<data>/__cluster/` that holds the cluster id.
pub const CLUSTER_ID_FILE: &str = "cluster_id";

/// A random 64-bit number. std's `RandomState` is seeded from the operating system's
/// randomness once per process, and each instance differs; the clock and process id are
/// mixed in too, so two starts never share an incarnation in practice.
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// A fresh cluster id: 32 hex digits.
pub fn new_cluster_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// The cluster id stored in `dir`, if any. A file that is there but empty or not one line of
/// hex is damage, refused.
pub fn read_cluster_id(dir: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(dir.join(CLUSTER_ID_FILE)) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is damaged", dir.join(CLUSTER_ID_FILE).display()),
                ));
            }
            Ok(Some(id.to_string()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Stores the cluster id durably (temp file, fsync, rename, directory fsync).
pub fn write_cluster_id(dir: &Path, id: &str) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_file_atomic(&dir.join(CLUSTER_ID_FILE), format!("{id}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_id_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_cluster_id(dir.path()).unwrap(), None);
        let id = new_cluster_id();
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_cluster_id());
        write_cluster_id(dir.path(), &id).unwrap();
        assert_eq!(read_cluster_id(dir.path()).unwrap(), Some(id));
        std::fs::write(dir.path().join(CLUSTER_ID_FILE), "not hex\n").unwrap();
        assert!(read_cluster_id(dir.path()).is_err());
    }
}
