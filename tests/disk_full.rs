//! A full disk is an environmental failure: the partition stops taking writes and says why,
//! acknowledged records stay readable, and the broker keeps serving.
//!
//! The data directory is a 2 MiB tmpfs mounted by the test, which needs root (CI runs as
//! root): elsewhere the test is skipped with one line, and with CI=true it fails instead.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

struct Mount(std::path::PathBuf);

/// How to run the tmpfs test.
const ENABLE_TMPFS: &str = "run `cargo test` as root, as `.ci/run` does in CI";

impl Mount {
    /// Mounts a tmpfs of `size` at `dir`, or says that `check` is skipped (see `common`).
    fn tmpfs_or_skip(check: &str, dir: &std::path::Path, size: &str) -> Option<Mount> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            common::skip_or_fail(check, "mounting a tmpfs needs root", ENABLE_TMPFS);
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        let failed = match &out {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(failed) = failed {
            let why = format!("mount -t tmpfs failed: {failed}");
            common::skip_or_fail(check, &why, ENABLE_TMPFS);
            return None;
        }
        Some(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_partition_cleanly_and_keeps_what_was_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let check = "the full-disk test on a 2 MiB tmpfs";
    let Some(mount) = Mount::tmpfs_or_skip(check, &tmp.path().join("small"), "2m") else {
        return;
    };
    // Room to give back later, so the shutdown below is not refused for lack of space.
    let filler = mount.0.join("filler");
    std::fs::write(&filler, vec![0u8; 256 * 1024]).unwrap();
    let mut broker = common::TestBroker::start_at(&mount.0.join("data"));
    let (http, url) = (broker.client(), broker.url.clone());
    common::create_topic(&http, &url, "full", 1).await;
    let value = "x".repeat(60_000);
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..100 {
        let r = http
            .post(format!("{url}/v1/topics/full/records"))
            .json(&json!({"records": [{"key": format!("{i}"), "value": value}]}))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let body: Value = r.json().await.unwrap();
            acknowledged.push((i, body["offsets"][0]["offset"].as_u64().unwrap()));
        } else {
            refused = Some((r.status().as_u16(), r.json::<Value>().await.unwrap()));
            break;
        }
    }
    let (status, problem) = refused.expect("a 2 MiB disk fills up within 100 records of 60 kB");
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "storage_unavailable");
    assert!(
        acknowledged.len() >= 10,
        "some records fit before the disk filled"
    );

    // Further writes are refused with the same answer, not acknowledged into a broken log.
    let r = http
        .post(format!("{url}/v1/topics/full/records"))
        .json(&json!({"records": [{"value": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // The broker keeps serving, says it is not ready, and counts the failure.
    assert_eq!(
        http.get(format!("{url}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let metrics = common::scrape_metrics(&http, &url).await;
    assert!(
        metrics.contains("tidelog_storage_errors_total"),
        "{metrics}"
    );
    // Every acknowledged record is readable at its offset.
    let page = common::get_json_ok(
        &http,
        &url,
        "/v1/topics/full/partitions/0/records?max_records=1000&max_bytes=16000000",
    )
    .await;
    let records = page["records"].as_array().unwrap();
    for (i, offset) in &acknowledged {
        let r = &records[*offset as usize];
        assert_eq!(r["offset"].as_u64().unwrap(), *offset);
        assert_eq!(r["key"], format!("{i}"));
    }
    // A long-poll at the end of the failed partition waits out its wait_ms like any other
    // (nothing can arrive), instead of answering at once and spinning its client.
    let hw = page["high_watermark"].as_u64().unwrap();
    let poll = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.get(format!(
                "{url}/v1/topics/full/partitions/0/records?offset={hw}&wait_ms=20000"
            ))
            .send()
            .await
            .unwrap()
            .status()
        }
    });
    common::wait_until(
        "the long-poll to be waiting",
        Duration::from_secs(10),
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                common::scrape_metrics(&http, &url)
                    .await
                    .lines()
                    .any(|l| l == "tidelog_long_polls_waiting 1")
            }
        },
    )
    .await;
    // Still waiting a moment later (before the fix it was answered within milliseconds).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the long-poll answered at once");
    poll.abort();
    // With space back, SIGTERM still must not call the failed partition clean: the next start
    // has to recover it rather than trust its indexes.
    std::fs::remove_file(&filler).unwrap();
    let code = broker.terminate();
    assert_ne!(
        code,
        Some(0),
        "a broker with a failed partition does not stop cleanly"
    );
    assert!(!mount.0.join("data/clean-shutdown").exists());
}

/// A JSON body spanning two partitions, the second of which runs out of space: the answer
/// says, record by record, which were stored, so a retry resends only the others.
#[tokio::test]
async fn a_json_produce_that_fails_part_way_reports_each_record_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut broker = common::TestBroker::start_at(&data);
    common::create_topic(&broker.client(), &broker.url, "split", 2).await;
    assert_eq!(broker.terminate(), Some(0));
    // Partition 1's directory moves onto a 256 KiB tmpfs; partition 0 keeps the roomy disk.
    let partition_1 = data.join("topics/split/1");
    let saved = tmp.path().join("partition-1");
    std::fs::rename(&partition_1, &saved).unwrap();
    let check = "the part-way produce test on a 256 KiB tmpfs";
    let Some(_mount) = Mount::tmpfs_or_skip(check, &partition_1, "256k") else {
        return;
    };
    for file in std::fs::read_dir(&saved).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), partition_1.join(file.file_name())).unwrap();
    }
    broker.restart();
    let (http, url) = (broker.client(), broker.url.clone());

    let too_big_for_partition_1 = "x".repeat(400_000);
    let r = http
        .post(format!("{url}/v1/topics/split/records"))
        .json(&json!({"records": [
            {"partition": 0, "value": "first"},
            {"partition": 1, "value": too_big_for_partition_1},
            {"partition": 0, "value": "third"},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "storage_unavailable", "{problem}");
    assert_eq!(problem["appended_records"], 2, "{problem}");
    assert_eq!(problem["unconfirmed_records"], 1, "{problem}");
    assert_eq!(
        problem["offsets"],
        json!([
            {"partition": 0, "offset": 0},
            {"partition": 1, "unconfirmed": true},
            {"partition": 0, "offset": 1},
        ]),
        "{problem}"
    );
    // The records reported stored are there, durable (served below the high watermark).
    let page = common::get_json_ok(&http, &url, "/v1/topics/split/partitions/0/records").await;
    let values: Vec<&Value> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["value"])
        .collect();
    assert_eq!(values, [&json!("first"), &json!("third")], "{page}");

    // A failure in the first partition a body touches stores nothing of it.
    let r = http
        .post(format!("{url}/v1/topics/split/records"))
        .json(&json!({"records": [{"partition": 1, "value": 1}, {"partition": 0, "value": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["appended_records"], 0, "{problem}");
    assert_eq!(
        problem["offsets"],
        json!([{"partition": 1, "unconfirmed": true}, null]),
        "{problem}"
    );
    broker.kill9();
}

/// A partition whose disk filled up takes writes again once there is room, without a restart:
/// the append that failed left nothing behind, `readyz` follows, and the broker still stops
/// cleanly afterwards.
#[tokio::test]
async fn a_partition_takes_writes_again_once_the_disk_has_room() {
    let tmp = tempfile::tempdir().unwrap();
    let check = "the full-disk recovery test on a 2 MiB tmpfs";
    let Some(mount) = Mount::tmpfs_or_skip(check, &tmp.path().join("small"), "2m") else {
        return;
    };
    let filler = mount.0.join("filler");
    std::fs::write(&filler, vec![0u8; 512 * 1024]).unwrap();
    let mut broker = common::TestBroker::start_at(&mount.0.join("data"));
    let (http, url) = (broker.client(), broker.url.clone());
    common::create_topic(&http, &url, "refill", 1).await;
    let produce = |value: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http
                .post(format!("{url}/v1/topics/refill/records"))
                .json(&json!({"records": [{"value": value}]}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let value = "x".repeat(60_000);
    let mut acknowledged = 0u64;
    let mut refused = None;
    for _ in 0..100 {
        match produce(value.clone()).await {
            (200, _) => acknowledged += 1,
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    let (status, problem) = refused.expect("a 2 MiB disk fills up within 100 records of 60 kB");
    assert_eq!(
        (status, &problem["code"]),
        (503, &json!("storage_unavailable"))
    );
    let ready = |http: common::Client, url: String| async move {
        http.get(format!("{url}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(ready(http.clone(), url.clone()).await, 503);

    std::fs::remove_file(&filler).unwrap();
    common::wait_until(
        "a produce to be taken again",
        Duration::from_secs(30),
        || {
            let produce = produce("small".to_string());
            async move { produce.await.0 == 200 }
        },
    )
    .await;
    assert_eq!(ready(http.clone(), url.clone()).await, 200);
    // Every record taken is there, dense, the last one after the refused ones.
    let contents = common::read_partition_to_high_watermark(&http, &url, "refill", 0).await;
    let offsets = common::offsets_of_records(&contents.records);
    assert_eq!(offsets, (0..acknowledged + 1).collect::<Vec<u64>>());
    assert_eq!(contents.records.last().unwrap()["value"], "small");
    assert_eq!(
        broker.terminate(),
        Some(0),
        "a recovered partition stops cleanly"
    );
}

/// Creating a topic on a full disk is a 503 `storage_unavailable` (worth retrying once there
/// is room), not a 500.
#[tokio::test]
async fn creating_a_topic_on_a_full_disk_is_storage_unavailable() {
    let tmp = tempfile::tempdir().unwrap();
    let check = "the full-disk topic creation test on a 1 MiB tmpfs";
    let Some(mount) = Mount::tmpfs_or_skip(check, &tmp.path().join("small"), "1m") else {
        return;
    };
    let broker = common::TestBroker::start_at(&mount.0.join("data"));
    let (http, url) = (broker.client(), broker.url.clone());
    // Fill the disk to the last block.
    let mut filler = std::fs::File::create(mount.0.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    let r = http
        .post(format!("{url}/v1/topics"))
        .json(&json!({"name": "nowhere", "partitions": 1}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let problem: Value = r.json().await.unwrap();
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "storage_unavailable", "{problem}");
}
