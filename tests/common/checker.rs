//! The history checker of the fault tests: what producers were told, what consumers saw and
//! what every replica holds afterwards, and the anomalies that contradict the durability
//! promise.
//!
//! A test records each produce as acknowledged (with its offset), definitely failed (the
//! answer said nothing was written) or unknown (timeout, dropped connection, an answer that
//! says the outcome is unknown). Record values must be unique per test (e.g. "p3-17"), so a
//! value names one produce. After the faults, the test reads every replica of every
//! partition (up to its high watermark) and hands the reads to [`History::check`], which
//! reports:
//! - an acknowledged record missing from its offset, or another value there;
//! - a value stored at two offsets (a retry that duplicated, or a replayed batch);
//! - a definitely failed record that is stored anyway;
//! - two replicas that differ below the lower of their high watermarks;
//! - a high watermark observed going backwards on one replica;
//! - a record a consumer read (below the high watermark) that is later gone or different.
#![allow(dead_code)]

use std::collections::BTreeMap;

/// What a producer was told about one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Acknowledged { partition: u32, offset: u64 },
    Failed,
    Unknown,
}

/// One replica of one partition as read back after the run: `records` are (offset, value)
/// below `high_watermark`, in offset order.
#[derive(Debug, Clone)]
pub struct ReplicaRead {
    pub node: u32,
    pub partition: u32,
    pub high_watermark: u64,
    pub records: Vec<(u64, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    LostAcknowledged {
        value: String,
        partition: u32,
        offset: u64,
        node: u32,
    },
    WrongValue {
        partition: u32,
        offset: u64,
        node: u32,
        expected: String,
        found: String,
    },
    Duplicated {
        value: String,
        partition: u32,
        offsets: Vec<u64>,
        node: u32,
    },
    FailedButStored {
        value: String,
        partition: u32,
        offset: u64,
        node: u32,
    },
    ReplicasDiffer {
        partition: u32,
        offset: u64,
        nodes: (u32, u32),
    },
    HighWatermarkBackwards {
        partition: u32,
        node: u32,
        from: u64,
        to: u64,
    },
    ReadThenGone {
        partition: u32,
        offset: u64,
        value: String,
        node: u32,
        /// What the replica holds there now (None: nothing).
        found: Option<String>,
    },
    /// Acknowledged, yet no replica's high watermark covers it.
    AcknowledgedBeyondHighWatermark {
        value: String,
        partition: u32,
        offset: u64,
        high_watermark: u64,
    },
}

/// Everything the test observed during the run.
#[derive(Debug, Default)]
pub struct History {
    produced: BTreeMap<String, Outcome>,
    /// (partition, offset) -> value, as consumers read it below the high watermark.
    consumed: BTreeMap<(u32, u64), String>,
    /// (node, partition) -> high watermarks in the order observed.
    high_watermarks: BTreeMap<(u32, u32), Vec<u64>>,
}

impl History {
    /// Records what the producer of `value` was told. A later outcome for the same value
    /// (a retry) overrides an unknown one, never an acknowledgement.
    pub fn produced(&mut self, value: &str, outcome: Outcome) {
        let entry = self.produced.entry(value.to_string()).or_insert(outcome);
        if matches!(entry, Outcome::Unknown | Outcome::Failed) {
            *entry = outcome;
        }
    }

    /// Records a record a consumer read (served, so below the high watermark). The first
    /// value read at an offset is kept: a later read of another value there must not hide
    /// that the first is gone.
    pub fn consumed(&mut self, partition: u32, offset: u64, value: &str) {
        self.consumed
            .entry((partition, offset))
            .or_insert_with(|| value.to_string());
    }

    /// Records a high watermark one replica reported.
    pub fn high_watermark(&mut self, node: u32, partition: u32, hw: u64) {
        self.high_watermarks
            .entry((node, partition))
            .or_default()
            .push(hw);
    }

    pub fn acknowledged(&self) -> usize {
        self.produced
            .values()
            .filter(|o| matches!(o, Outcome::Acknowledged { .. }))
            .count()
    }

    /// Every acknowledged record of `partition` as (offset, value), in offset order.
    pub fn acknowledged_in(&self, partition: u32) -> Vec<(u64, String)> {
        let mut records: Vec<(u64, String)> = self
            .produced
            .iter()
            .filter_map(|(value, outcome)| match outcome {
                Outcome::Acknowledged {
                    partition: p,
                    offset,
                } if *p == partition => Some((*offset, value.clone())),
                _ => None,
            })
            .collect();
        records.sort();
        records
    }

    /// Every anomaly, in a stable order; empty when the run kept every promise.
    pub fn check(&self, reads: &[ReplicaRead]) -> Vec<Anomaly> {
        let mut anomalies = Vec::new();
        for read in reads {
            self.check_replica(read, &mut anomalies);
        }
        check_replicas_agree(reads, &mut anomalies);
        self.check_covered(reads, &mut anomalies);
        for (&(node, partition), hws) in &self.high_watermarks {
            for pair in hws.windows(2) {
                if pair[1] < pair[0] {
                    anomalies.push(Anomaly::HighWatermarkBackwards {
                        partition,
                        node,
                        from: pair[0],
                        to: pair[1],
                    });
                }
            }
        }
        anomalies
    }

    /// Every acknowledged record of a partition that was read is below the highest high
    /// watermark of its replicas.
    fn check_covered(&self, reads: &[ReplicaRead], anomalies: &mut Vec<Anomaly>) {
        let mut highest: BTreeMap<u32, u64> = BTreeMap::new();
        for r in reads {
            let hw = highest.entry(r.partition).or_default();
            *hw = (*hw).max(r.high_watermark);
        }
        for (value, outcome) in &self.produced {
            let Outcome::Acknowledged { partition, offset } = *outcome else {
                continue;
            };
            if let Some(&high_watermark) = highest.get(&partition)
                && offset >= high_watermark
            {
                anomalies.push(Anomaly::AcknowledgedBeyondHighWatermark {
                    value: value.clone(),
                    partition,
                    offset,
                    high_watermark,
                });
            }
        }
    }

    fn check_replica(&self, read: &ReplicaRead, anomalies: &mut Vec<Anomaly>) {
        let (node, partition) = (read.node, read.partition);
        let stored: BTreeMap<u64, &str> =
            read.records.iter().map(|(o, v)| (*o, v.as_str())).collect();
        let mut offsets_of: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (offset, value) in &stored {
            offsets_of.entry(value).or_default().push(*offset);
            if self.produced.get(*value) == Some(&Outcome::Failed) {
                anomalies.push(Anomaly::FailedButStored {
                    value: value.to_string(),
                    partition,
                    offset: *offset,
                    node,
                });
            }
        }
        for (value, offsets) in offsets_of.into_iter().filter(|(_, o)| o.len() > 1) {
            anomalies.push(Anomaly::Duplicated {
                value: value.to_string(),
                partition,
                offsets,
                node,
            });
        }
        for (value, outcome) in &self.produced {
            let Outcome::Acknowledged {
                partition: p,
                offset,
            } = *outcome
            else {
                continue;
            };
            if p != partition || offset >= read.high_watermark {
                continue;
            }
            match stored.get(&offset) {
                None => anomalies.push(Anomaly::LostAcknowledged {
                    value: value.clone(),
                    partition,
                    offset,
                    node,
                }),
                Some(found) if found != value => anomalies.push(Anomaly::WrongValue {
                    partition,
                    offset,
                    node,
                    expected: value.clone(),
                    found: found.to_string(),
                }),
                Some(_) => {}
            }
        }
        for (&(p, offset), value) in &self.consumed {
            if p == partition
                && offset < read.high_watermark
                && stored.get(&offset) != Some(&value.as_str())
            {
                anomalies.push(Anomaly::ReadThenGone {
                    partition,
                    offset,
                    value: value.clone(),
                    node,
                    found: stored.get(&offset).map(|v| v.to_string()),
                });
            }
        }
    }
}

/// Replicas of one partition hold the same records below the lower of their high
/// watermarks.
fn check_replicas_agree(reads: &[ReplicaRead], anomalies: &mut Vec<Anomaly>) {
    for (i, a) in reads.iter().enumerate() {
        for b in reads[i + 1..].iter().filter(|b| b.partition == a.partition) {
            let below = a.high_watermark.min(b.high_watermark);
            let part = |r: &ReplicaRead| -> BTreeMap<u64, String> {
                r.records
                    .iter()
                    .filter(|(o, _)| *o < below)
                    .cloned()
                    .collect()
            };
            let (ra, rb) = (part(a), part(b));
            let first_difference = (0..below).find(|o| ra.get(o) != rb.get(o));
            if let Some(offset) = first_difference {
                anomalies.push(Anomaly::ReplicasDiffer {
                    partition: a.partition,
                    offset,
                    nodes: (a.node, b.node),
                });
            }
        }
    }
}
