//! Idempotent producers' state in one partition: for each producer id, its epoch and the
//! sequence numbers and offsets of its last few batches, so a retried produce is answered
//! with its original offsets instead of being written twice.
//!
//! The state is rebuilt from the log itself (every batch header carries producer id, epoch
//! and base sequence: `record` is called for each batch on recovery as on append), so it
//! survives restarts and, with replication, failover. Sequences are the producer's request
//! numbers: they grow with every request, and a partition sees the subset of them whose
//! requests had records for it, so within a partition they increase but may skip.
//!
//! Rules, checked before an append (`check`):
//! - an epoch older than the producer's current one is fenced;
//! - a newer epoch starts the producer afresh (its older batches no longer deduplicate);
//! - a sequence equal to one of the last `PRODUCER_BATCHES_KEPT` batches is a duplicate,
//!   answered with that batch's offsets and not written;
//! - a sequence above the last is appended;
//! - any other sequence is refused: older than every kept batch (`TooOld`: it may have been
//!   written, the outcome cannot be told) or between kept batches without matching one
//!   (`OutOfOrder`: a request retried after a later one was written).
//!
//! Invariant (property-tested): `check` never answers `Append` for a (producer, epoch,
//! sequence) this partition already holds; a `Duplicate` always carries the offsets the
//! batch was first given.

use std::collections::{HashMap, VecDeque};

use super::batch::BatchHeader;

/// Batches kept per producer for deduplication (Kafka keeps 5).
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// One batch of a producer: its sequence and where it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub sequence: i32,
    pub base_offset: u64,
    pub last_offset: u64,
}

#[derive(Debug, Clone)]
struct ProducerEntry {
    epoch: i16,
    /// Oldest first; at most `PRODUCER_BATCHES_KEPT`.
    batches: VecDeque<ProducerBatch>,
    /// The newest batch's timestamp, for expiry.
    last_timestamp_ms: i64,
}

/// What to do with a produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    Append,
    /// Already written: answer these offsets and write nothing.
    Duplicate(ProducerBatch),
}

/// Why a produce was refused; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceError {
    /// A newer epoch of this producer exists.
    Fenced { current_epoch: i16 },
    /// Older than every batch kept: it may or may not have been written.
    TooOld { oldest_kept: i32 },
    /// Between kept batches without matching one: a retry that comes after a later
    /// request of the same producer was written.
    OutOfOrder { last: i32 },
    /// A new producer while `producers_max` are tracked.
    TooManyProducers { max: usize },
}

/// The producers of one partition.
#[derive(Debug, Clone)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// Most producers tracked; a new one past it is refused until others expire.
    producers_max: usize,
}

impl ProducerStates {
    pub fn new(producers_max: usize) -> ProducerStates {
        ProducerStates {
            producers: HashMap::new(),
            producers_max,
        }
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Decides what a produce of `producer` at `epoch` with `sequence` does.
    pub fn check(
        &self,
        producer: i64,
        epoch: i16,
        sequence: i32,
    ) -> Result<SequenceCheck, SequenceError> {
        let Some(entry) = self.producers.get(&producer) else {
            if self.producers.len() >= self.producers_max {
                return Err(SequenceError::TooManyProducers {
                    max: self.producers_max,
                });
            }
            return Ok(SequenceCheck::Append);
        };
        if epoch < entry.epoch {
            return Err(SequenceError::Fenced {
                current_epoch: entry.epoch,
            });
        }
        if epoch > entry.epoch {
            return Ok(SequenceCheck::Append);
        }
        if let Some(b) = entry.batches.iter().find(|b| b.sequence == sequence) {
            return Ok(SequenceCheck::Duplicate(*b));
        }
        let (Some(oldest), Some(last)) = (entry.batches.front(), entry.batches.back()) else {
            return Ok(SequenceCheck::Append);
        };
        if sequence > last.sequence {
            Ok(SequenceCheck::Append)
        } else if sequence < oldest.sequence {
            Err(SequenceError::TooOld {
                oldest_kept: oldest.sequence,
            })
        } else {
            Err(SequenceError::OutOfOrder {
                last: last.sequence,
            })
        }
    }

    /// Records a batch written (or found on recovery) for `producer`.
    pub fn record(&mut self, producer: i64, epoch: i16, batch: ProducerBatch, timestamp_ms: i64) {
        let entry = self
            .producers
            .entry(producer)
            .or_insert_with(|| ProducerEntry {
                epoch,
                batches: VecDeque::with_capacity(PRODUCER_BATCHES_KEPT),
                last_timestamp_ms: timestamp_ms,
            });
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == PRODUCER_BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.batches.push_back(batch);
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(timestamp_ms);
    }

    /// [`Self::check`] for a batch about to be appended; a batch without a producer
    /// (`producer_id` -1) is always appended.
    pub fn check_header(&self, header: &BatchHeader) -> Result<SequenceCheck, SequenceError> {
        let p = header.producer;
        if p.producer_id < 0 {
            return Ok(SequenceCheck::Append);
        }
        self.check(p.producer_id, p.producer_epoch, p.base_sequence)
    }

    /// [`Self::record`] for a batch appended (or found on recovery); a batch without a
    /// producer is not recorded.
    pub fn record_header(&mut self, header: &BatchHeader, timestamp_ms: i64) {
        let p = header.producer;
        if p.producer_id < 0 {
            return;
        }
        let batch = ProducerBatch {
            sequence: p.base_sequence,
            base_offset: header.base_offset,
            last_offset: header.base_offset + u64::from(header.last_offset_delta),
        };
        self.record(p.producer_id, p.producer_epoch, batch, timestamp_ms);
    }

    /// Forgets producers whose newest batch is older than `idle_ms` before `now_ms`; returns
    /// how many.
    pub fn expire(&mut self, now_ms: i64, idle_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, e| now_ms.saturating_sub(e.last_timestamp_ms) <= idle_ms);
        before - self.producers.len()
    }

    /// The log was cut to end at `end_offset` (a follower truncating): batches at or past it
    /// are forgotten, and producers left with none.
    pub fn truncate_from(&mut self, end_offset: u64) {
        for entry in self.producers.values_mut() {
            entry.batches.retain(|b| b.last_offset < end_offset);
        }
        self.producers.retain(|_, e| !e.batches.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn batch(sequence: i32, base_offset: u64) -> ProducerBatch {
        ProducerBatch {
            sequence,
            base_offset,
            last_offset: base_offset + 1,
        }
    }

    #[test]
    fn retries_are_duplicates_old_epochs_fenced_and_gaps_allowed() {
        let mut s = ProducerStates::new(10);
        assert_eq!(s.check(7, 0, 0), Ok(SequenceCheck::Append));
        s.record(7, 0, batch(0, 0), 1);
        s.record(7, 0, batch(3, 2), 1);
        assert_eq!(s.check(7, 0, 3), Ok(SequenceCheck::Duplicate(batch(3, 2))));
        assert_eq!(
            s.check(7, 0, 5),
            Ok(SequenceCheck::Append),
            "sequences may skip"
        );
        assert_eq!(s.check(7, 0, 1), Err(SequenceError::OutOfOrder { last: 3 }));
        s.record(7, 1, batch(0, 4), 2);
        assert_eq!(
            s.check(7, 0, 9),
            Err(SequenceError::Fenced { current_epoch: 1 })
        );
        assert_eq!(s.check(7, 1, 0), Ok(SequenceCheck::Duplicate(batch(0, 4))));
    }

    #[test]
    fn only_the_last_batches_are_kept_and_older_sequences_are_too_old() {
        let mut s = ProducerStates::new(10);
        for seq in 0..(PRODUCER_BATCHES_KEPT as i32 + 2) {
            s.record(1, 0, batch(seq, seq as u64 * 2), 0);
        }
        assert_eq!(
            s.check(1, 0, 0),
            Err(SequenceError::TooOld { oldest_kept: 2 })
        );
        assert!(matches!(s.check(1, 0, 2), Ok(SequenceCheck::Duplicate(_))));
    }

    #[test]
    fn the_producer_limit_holds_and_idle_producers_expire() {
        let mut s = ProducerStates::new(2);
        s.record(1, 0, batch(0, 0), 100);
        s.record(2, 0, batch(0, 2), 5_000);
        assert_eq!(
            s.check(3, 0, 0),
            Err(SequenceError::TooManyProducers { max: 2 })
        );
        assert_eq!(
            s.check(1, 0, 1),
            Ok(SequenceCheck::Append),
            "known producers go on"
        );
        assert_eq!(s.expire(6_000, 1_000), 1);
        assert_eq!(s.check(3, 0, 0), Ok(SequenceCheck::Append));
    }

    #[test]
    fn truncation_forgets_batches_past_the_cut() {
        let mut s = ProducerStates::new(10);
        s.record(1, 0, batch(0, 0), 0);
        s.record(1, 0, batch(1, 2), 0);
        s.record(2, 0, batch(0, 4), 0);
        s.truncate_from(2);
        assert_eq!(
            s.check(1, 0, 1),
            Ok(SequenceCheck::Append),
            "batch 1 was cut: write it again"
        );
        assert_eq!(s.len(), 1);
    }

    proptest! {
        /// Producers sending increasing sequences (skipping some, as requests spread over
        /// partitions), retrying earlier ones at random and bumping epochs: nothing already
        /// held is ever appended again, and duplicates carry the original offsets.
        #[test]
        fn nothing_held_is_appended_twice(
            steps in proptest::collection::vec((0..3i64, 0..5u8, 0..4i32, 0..6i32), 1..150)
        ) {
            let mut s = ProducerStates::new(100);
            let mut held: BTreeMap<(i64, i16, i32), ProducerBatch> = BTreeMap::new();
            let mut epochs: BTreeMap<i64, i16> = BTreeMap::new();
            let mut next_seq: BTreeMap<(i64, i16), i32> = BTreeMap::new();
            let mut end = 0u64;
            for (producer, kind, skip, back) in steps {
                let epoch = *epochs.entry(producer).or_insert(0);
                let (epoch, sequence) = match kind {
                    0 => {
                        let e = epoch + 1;
                        epochs.insert(producer, e);
                        (e, 0)
                    }
                    1 => {
                        let next = next_seq.get(&(producer, epoch)).copied().unwrap_or(0);
                        (epoch, (next - 1 - back).max(0))
                    }
                    3 if epoch > 0 => {
                        // A zombie: the previous incarnation of the producer.
                        let fenced = s.check(producer, epoch - 1, back);
                        prop_assert_eq!(fenced, Err(SequenceError::Fenced { current_epoch: epoch }));
                        continue;
                    }
                    _ => {
                        let next = next_seq.entry((producer, epoch)).or_insert(0);
                        *next += skip;
                        let seq = *next;
                        *next += 1;
                        (epoch, seq)
                    }
                };
                match s.check(producer, epoch, sequence) {
                    Ok(SequenceCheck::Append) => {
                        prop_assert!(!held.contains_key(&(producer, epoch, sequence)), "appended twice");
                        let b = ProducerBatch { sequence, base_offset: end, last_offset: end };
                        end += 1;
                        s.record(producer, epoch, b, 0);
                        held.insert((producer, epoch, sequence), b);
                    }
                    Ok(SequenceCheck::Duplicate(b)) => {
                        prop_assert_eq!(held.get(&(producer, epoch, sequence)), Some(&b));
                    }
                    Err(SequenceError::Fenced { current_epoch }) => prop_assert!(current_epoch > epoch),
                    Err(_) => {}
                }
            }
        }
    }
}
