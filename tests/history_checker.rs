//! The history checker's own tests: each anomaly it must find, and a clean history it must
//! pass. (The fault tests rely on it; a checker that cannot fail would hide lost records.)

#[path = "common/checker.rs"]
mod checker;

use checker::{Anomaly, History, Outcome, ReplicaRead};

fn ack(partition: u32, offset: u64) -> Outcome {
    Outcome::Acknowledged { partition, offset }
}

fn replica(node: u32, high_watermark: u64, values: &[&str]) -> ReplicaRead {
    ReplicaRead {
        node,
        partition: 0,
        high_watermark,
        records: values
            .iter()
            .enumerate()
            .map(|(o, v)| (o as u64, v.to_string()))
            .collect(),
    }
}

fn history() -> History {
    let mut h = History::default();
    h.produced("a", ack(0, 0));
    h.produced("b", Outcome::Unknown);
    h.produced("b", ack(0, 1));
    h.produced("c", Outcome::Unknown);
    h.produced("d", Outcome::Failed);
    h
}

#[test]
fn a_history_that_kept_every_promise_has_no_anomaly() {
    let mut h = history();
    h.consumed(0, 0, "a");
    h.high_watermark(1, 0, 1);
    h.high_watermark(1, 0, 3);
    // "c" was unknown: stored or not, both are fine.
    let reads = [replica(1, 3, &["a", "b", "c"]), replica(2, 2, &["a", "b"])];
    assert_eq!(h.check(&reads), vec![]);
    assert_eq!(h.acknowledged(), 2);
}

/// A case: its name, the replicas read back, and the anomaly it must produce.
type Case = (&'static str, Vec<ReplicaRead>, fn(&Anomaly) -> bool);

#[test]
fn each_broken_promise_is_reported() {
    let cases: Vec<Case> = vec![
        ("lost", vec![replica(1, 2, &["a"])], |a| {
            matches!(a, Anomaly::LostAcknowledged { offset: 1, .. })
        }),
        ("wrong value", vec![replica(1, 2, &["a", "c"])], |a| {
            matches!(a, Anomaly::WrongValue { offset: 1, .. })
        }),
        ("duplicated", vec![replica(1, 3, &["a", "b", "b"])], |a| {
            matches!(a, Anomaly::Duplicated { .. })
        }),
        (
            "failed but stored",
            vec![replica(1, 3, &["a", "b", "d"])],
            |a| matches!(a, Anomaly::FailedButStored { .. }),
        ),
        (
            "replicas differ",
            vec![
                replica(1, 3, &["a", "b", "c"]),
                replica(2, 3, &["a", "b", "x"]),
            ],
            |a| matches!(a, Anomaly::ReplicasDiffer { offset: 2, .. }),
        ),
        (
            "beyond the high watermark",
            vec![replica(1, 1, &["a"])],
            |a| {
                matches!(
                    a,
                    Anomaly::AcknowledgedBeyondHighWatermark { offset: 1, .. }
                )
            },
        ),
    ];
    for (name, reads, expected) in cases {
        let anomalies = history().check(&reads);
        assert!(anomalies.iter().any(expected), "{name}: {anomalies:?}");
    }
}

#[test]
fn a_high_watermark_going_back_and_a_read_record_gone_are_reported() {
    let mut h = history();
    h.high_watermark(2, 0, 5);
    h.high_watermark(2, 0, 4);
    h.consumed(0, 1, "b");
    // Read as "y" first, as "a" later: the first read is the one gone.
    h.consumed(0, 0, "y");
    h.consumed(0, 0, "a");
    let anomalies = h.check(&[replica(1, 2, &["a", "z"])]);
    assert!(anomalies.contains(&Anomaly::HighWatermarkBackwards {
        partition: 0,
        node: 2,
        from: 5,
        to: 4
    }));
    assert!(
        anomalies
            .iter()
            .any(|a| matches!(a, Anomaly::ReadThenGone { offset: 1, .. }))
    );
    assert!(
        anomalies
            .iter()
            .any(|a| matches!(a, Anomaly::ReadThenGone { offset: 0, .. }))
    );
}
