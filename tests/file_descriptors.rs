//! File descriptors stay bounded however many segments a partition has (issue 8, item 9):
//! sealed segments are opened on demand and closed again, so a broker with thousands of small
//! segments starts under a low `RLIMIT_NOFILE` and serves all of them.

mod common;

use common::{TestBroker, create_topic_from_body, read_partition_to_high_watermark, runtime};

/// Open descriptors of a process, from `/proc/<pid>/fd`.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list /proc/<pid>/fd")
        .count()
}

fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("partition dir")
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count()
}

#[test]
fn a_broker_with_many_small_segments_restarts_under_a_low_open_files_limit() {
    const REQUESTS: usize = 240;
    const OPEN_FILES_MAX: u64 = 128;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let mut broker = TestBroker::start_at(&data_dir);
    let rt = runtime();
    let http = broker.client();
    let before = open_files(broker.pid());
    rt.block_on(async {
        create_topic_from_body(
            &http,
            &broker.url,
            serde_json::json!({"name": "tiny", "partitions": 1,
                "config": {"segment_bytes": 1024, "retention_ms": -1}}),
        )
        .await;
        // Each request is one batch of about 700 bytes: one segment per request.
        let value = "v".repeat(600);
        for i in 0..REQUESTS {
            // The last one waits for the fsync that also syncs (and lets go of) every segment
            // rolled before it.
            let acks = if i + 1 == REQUESTS { "all" } else { "leader" };
            let response = http
                .post(format!("{}/v1/topics/tiny/records?acks={acks}", broker.url))
                .json(&serde_json::json!({"records": [{"key": format!("k{i}"), "value": value}]}))
                .send()
                .await
                .expect("the broker answers");
            assert_eq!(response.status(), 200);
        }
    });
    let segments = segment_files(&data_dir.join("topics").join("tiny").join("0"));
    assert!(segments >= REQUESTS - 1, "{segments} segments");
    let serving = open_files(broker.pid());
    assert!(
        serving < before + 32,
        "{segments} segments hold {serving} descriptors (started with {before})"
    );
    assert_eq!(broker.terminate(), Some(0));

    // Three descriptors per segment would be far past the limit.
    let broker = TestBroker::start_at_with_open_files_max(&data_dir, OPEN_FILES_MAX);
    let http = broker.client();
    let read = rt.block_on(read_partition_to_high_watermark(
        &http,
        &broker.url,
        "tiny",
        0,
    ));
    assert_eq!(read.records.len(), REQUESTS);
    let after = open_files(broker.pid());
    assert!(
        after < before + 32,
        "after reading {segments} segments: {after} descriptors"
    );
}
