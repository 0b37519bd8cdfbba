//! [`Offset`]: a record's position in one partition's log.
//!
//! Offsets only grow within a partition and never change meaning (see the crate's
//! ARCHITECTURE.md). The type carries that meaning through signatures: a function that takes
//! an `Offset` takes a position in a log, not a count, a byte position or a timestamp. The
//! only arithmetic is what a log needs: the next offset, advancing by a count of records, and
//! the count of offsets between two. The raw `u64` (`.0`) is used at the true boundaries: the
//! on-disk and wire encodings, file names, metrics, and the relative offsets inside a segment.

use std::fmt;
use std::ops::Add;

use serde::{Deserialize, Serialize};

/// A record's offset in a partition's log. Serialized as its number (JSON keeps its shape).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Offset(pub u64);

impl Offset {
    /// The first offset of a new log.
    pub const ZERO: Offset = Offset(0);

    /// The offset after this one.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }

    /// How many offsets lie from `earlier` up to this one; 0 when `earlier` is not earlier.
    pub fn saturating_distance_from(self, earlier: Offset) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Advances by a count of offsets.
impl Add<u64> for Offset {
    type Output = Offset;

    fn add(self, count: u64) -> Offset {
        Offset(self.0 + count)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::Offset;

    #[test]
    fn arithmetic_counts_offsets_and_json_keeps_the_number() {
        assert_eq!(Offset(7).next(), Offset(8));
        assert_eq!(Offset(7) + 3, Offset(10));
        assert_eq!(Offset(10).saturating_distance_from(Offset(7)), 3);
        assert_eq!(Offset(7).saturating_distance_from(Offset(10)), 0);
        assert_eq!(serde_json::to_string(&Offset(42)).unwrap(), "42");
        assert_eq!(serde_json::from_str::<Offset>("42").unwrap(), Offset(42));
        assert_eq!(Offset(42).to_string(), "42");
    }
}
