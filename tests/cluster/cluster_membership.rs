//! Cluster membership: three broker processes on loopback elect a controller (the metadata
//! Raft's leader), register with it and heartbeat; a killed broker is fenced after its
//! session, and comes back with a new broker epoch; a killed controller leader is replaced
//! by another voter, which keeps the cluster and fences nobody at once; bad `--peers` and a
//! data directory of another cluster stop the process with a clear error.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::TestBroker;
use common::cluster::{assert_problem, free_ports, get, peers, post, run_to_exit, wait_for};
use serde_json::{Value, json};

/// Short sessions keep the test quick; heartbeats go every quarter of it.
const SESSION_TIMEOUT_MS: u64 = 3_000;

fn start_member(root: &Path, ports: &[u16], id: usize) -> TestBroker {
    let toml = format!("broker_session_timeout_ms = {SESSION_TIMEOUT_MS}\n");
    common::cluster::start_member(root, ports, id, &toml)
}

/// Each broker's status as `url`'s broker sees it, by node id.
fn statuses(cluster: &Value) -> Vec<(u64, String)> {
    cluster["brokers"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| {
                    let id = b["node_id"].as_u64().unwrap_or(0);
                    (id, b["status"].as_str().unwrap_or("").to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn broker_epoch(cluster: &Value, node: u64) -> u64 {
    cluster["brokers"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["node_id"] == node))
        .and_then(|b| b["broker_epoch"].as_u64())
        .unwrap_or_else(|| panic!("broker {node} in {cluster}"))
}

fn wait_until_statuses(url: &str, expected: &[(u64, &str)]) -> Value {
    let expected: Vec<(u64, String)> = expected.iter().map(|(i, s)| (*i, s.to_string())).collect();
    wait_for(&format!("{url}/v1/cluster shows {expected:?}"), || {
        let (status, cluster) = get(&format!("{url}/v1/cluster"));
        if status == 200 && statuses(&cluster) == expected {
            Ok(cluster)
        } else {
            Err(format!("{status} {cluster}"))
        }
    })
}

#[test]
fn three_brokers_join_a_killed_one_is_fenced_and_rejoins_with_a_new_epoch() {
    let root = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    // Any start order: the controller (node 1) comes second.
    let n3 = start_member(root.path(), &ports, 3);
    let n1 = start_member(root.path(), &ports, 1);
    let n2 = start_member(root.path(), &ports, 2);
    let all_alive = [(1, "alive"), (2, "alive"), (3, "alive")];
    let mut cluster_ids = Vec::new();
    let mut controllers = Vec::new();
    for b in [&n1, &n2, &n3] {
        let cluster = wait_until_statuses(&b.url, &all_alive);
        controllers.push(cluster["controller"].as_u64().unwrap_or(0));
        let voters = cluster["raft"]["voters"].as_array().map_or(0, Vec::len);
        assert_eq!(voters, 3, "{cluster}");
        cluster_ids.push(cluster["cluster_id"].as_str().unwrap().to_string());
        wait_for(&format!("{} ready", b.url), || {
            match get(&format!("{}/readyz", b.url)) {
                (200, _) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }
    assert_eq!(cluster_ids[0].len(), 32);
    assert!(
        cluster_ids.iter().all(|c| *c == cluster_ids[0]),
        "{cluster_ids:?}"
    );
    let leader = wait_for("every broker names the same controller", || {
        let seen: Vec<u64> = [&n1, &n2, &n3]
            .iter()
            .map(|b| {
                get(&format!("{}/v1/cluster", b.url)).1["controller"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .collect();
        if seen[0] > 0 && seen.iter().all(|c| *c == seen[0]) {
            Ok(seen[0] as usize)
        } else {
            Err(format!("{seen:?} (first seen {controllers:?})"))
        }
    });
    // The test kills broker 3 below as a follower: it must not be the leader.
    // From here on `n1` is the controller leader, `n3` a follower, `id1`.. their node ids.
    let (mut n1, mut n2, mut n3) = match leader {
        3 => (n3, n2, n1),
        1 => (n1, n2, n3),
        _ => (n2, n1, n3),
    };
    let id = |b: &TestBroker| {
        let at = ports.iter().position(|p| b.url.ends_with(&format!(":{p}")));
        at.expect("a broker of the cluster") as u64 + 1
    };
    let (id1, id2, id3) = (id(&n1), id(&n2), id(&n3));
    let before = get(&format!("{}/v1/cluster", n1.url)).1;
    assert_eq!(before["controller"], id1, "{before}");
    assert_eq!(before["raft"]["state"], "leader", "{before}");
    let old_epoch = broker_epoch(&before, id3);

    // Internal routes: only the controller serves them; unknown nodes and stale epochs are
    // refused with stable codes.
    let (status, problem) = post(
        &format!("{}/internal/v1/brokers/heartbeat", n2.url),
        json!({"node_id": id2, "broker_epoch": 1, "caught_up": true}),
    );
    assert_problem(status, &problem, 421, "not_controller");
    assert_eq!(problem["controller"], id1);
    let (status, problem) = post(
        &format!("{}/internal/v1/brokers/heartbeat", n1.url),
        json!({"node_id": id3, "broker_epoch": old_epoch - 1, "caught_up": true}),
    );
    assert_problem(status, &problem, 409, "stale_broker_epoch");
    let (status, problem) = post(
        &format!("{}/internal/v1/brokers/register", n1.url),
        json!({"node_id": 7, "address": "127.0.0.1:1", "incarnation": 1}),
    );
    assert_problem(status, &problem, 404, "unknown_broker");
    let (status, problem) = post(
        &format!("{}/internal/v1/brokers/register", n1.url),
        json!({"node_id": id3, "address": format!("127.0.0.1:{}", ports[id3 as usize - 1]), "incarnation": 1}),
    );
    // Another process under node 3's id while it lives.
    assert_problem(status, &problem, 409, "broker_already_alive");
    // A Raft message from a broker with another voter list is refused.
    let (status, problem) = post(
        &format!("{}/internal/v1/raft/vote", n2.url),
        json!({"voters": "1,2", "cluster_id": null, "rpc": {}}),
    );
    assert_problem(status, &problem, 409, "peers_mismatch");

    // kill -9 a broker that is not the controller: fenced once its session expires.
    n3.kill9();
    let mut fenced = vec![(id1, "alive"), (id2, "alive"), (id3, "fenced")];
    fenced.sort();
    wait_until_statuses(&n1.url, &fenced);
    wait_until_statuses(&n2.url, &fenced);

    // Restarted on the same directory: a new incarnation, a new broker epoch, alive again.
    n3.restart();
    for b in [&n1, &n2, &n3] {
        let cluster = wait_until_statuses(&b.url, &all_alive);
        assert!(broker_epoch(&cluster, id3) > old_epoch, "{cluster}");
        assert_eq!(
            cluster["cluster_id"].as_str(),
            Some(cluster_ids[0].as_str())
        );
    }

    // kill -9 the controller leader: another voter is elected, keeps the cluster id, and
    // fences nobody but the dead one while it grants every broker a full session; the
    // others keep their epochs. Restarted, the old leader rejoins as a follower.
    let epoch_2 = broker_epoch(&wait_until_statuses(&n2.url, &all_alive), id2);
    let epoch_3 = broker_epoch(&wait_until_statuses(&n2.url, &all_alive), id3);
    n1.kill9();
    let new_leader = wait_for("a new controller leader", || {
        let c = get(&format!("{}/v1/cluster", n2.url)).1;
        match c["controller"].as_u64() {
            Some(l) if l != id1 => Ok(l),
            other => Err(format!("{other:?} {c}")),
        }
    });
    assert!(new_leader == id2 || new_leader == id3);
    n1.restart();
    for b in [&n1, &n2, &n3] {
        let cluster = wait_until_statuses(&b.url, &all_alive);
        assert_eq!(broker_epoch(&cluster, id2), epoch_2, "{cluster}");
        assert_eq!(broker_epoch(&cluster, id3), epoch_3, "{cluster}");
        assert_eq!(
            cluster["cluster_id"].as_str(),
            Some(cluster_ids[0].as_str())
        );
    }

    // The same directory with another cluster's id: the broker refuses to join and exits.
    n3.kill9();
    let id_file = n3.data_dir.join("__cluster").join("cluster_id");
    std::fs::write(&id_file, "00112233445566778899aabbccddeeff\n").unwrap();
    let (code, stderr) = run_to_exit(&[
        "--node-id",
        &id3.to_string(),
        "--peers",
        &peers(&ports),
        "--listen",
        &format!("127.0.0.1:{}", ports[id3 as usize - 1]),
        "--data-dir",
        n3.data_dir.to_str().unwrap(),
    ]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("belongs to cluster 00112233445566778899aabbccddeeff"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&id_file).unwrap(),
        "00112233445566778899aabbccddeeff\n",
        "the refused directory is left as it was"
    );

    // SIGTERM stops a member cleanly, the controller too.
    assert_eq!(n2.terminate(), Some(0));
    assert_eq!(n1.terminate(), Some(0));
}

#[test]
fn bad_peers_stop_the_broker_at_start_naming_the_fault() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "--node-id",
                "4",
                "--peers",
                "1=127.0.0.1:9001,2=127.0.0.1:9002,3=127.0.0.1:9003",
                "--listen",
                "127.0.0.1:9004",
            ],
            "does not name this broker's --node-id 4",
        ),
        (
            &[
                "--node-id",
                "1",
                "--peers",
                "1=127.0.0.1:9001,1=127.0.0.1:9002,3=127.0.0.1:9003",
                "--listen",
                "127.0.0.1:9001",
            ],
            "node id 1 is named twice",
        ),
        (
            &[
                "--node-id",
                "1",
                "--peers",
                "1=localhost:9001",
                "--listen",
                "127.0.0.1:9001",
            ],
            "'localhost:9001' is not an IP address and port",
        ),
        (
            &[
                "--node-id",
                "1",
                "--peers",
                "1=127.0.0.1:9001",
                "--listen",
                "127.0.0.1:0",
            ],
            "listens on 127.0.0.1:0",
        ),
        (
            &[
                "--node-id",
                "0",
                "--peers",
                "1=127.0.0.1:9001",
                "--listen",
                "127.0.0.1:9001",
            ],
            "--node-id must be a positive integer",
        ),
    ];
    for (args, expected) in cases {
        let mut all = args.to_vec();
        all.extend(["--data-dir", data]);
        let (code, stderr) = run_to_exit(&all);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(
        !Path::new(data).exists(),
        "nothing is opened before the peers are checked"
    );
    // The environment names the same settings.
    let output = Command::new(env!("CARGO_BIN_EXE_tidelog"))
        .env_remove("TIDELOG_CONFIG")
        .env("TIDELOG_NODE_ID", "2")
        .env(
            "TIDELOG_PEERS",
            "1=127.0.0.1:9001,3=127.0.0.1:9003,5=127.0.0.1:9005",
        )
        .env("TIDELOG_LISTEN", "127.0.0.1:9002")
        .env("TIDELOG_DATA_DIR", data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--node-id 2"), "{stderr}");
    // And so does the config file.
    let config = tmp.path().join("tidelog.toml");
    std::fs::write(
        &config,
        "node_id = 5\npeers = \"1=127.0.0.1:9001,2=127.0.0.1:9002,3=127.0.0.1:9003\"\nlisten = \"127.0.0.1:9005\"\n",
    )
    .unwrap();
    let (code, stderr) = run_to_exit(&["--config", config.to_str().unwrap(), "--data-dir", data]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--node-id 5"), "{stderr}");
}

#[test]
fn a_broker_without_peers_is_a_cluster_of_one_and_writes_no_cluster_files() {
    let broker = TestBroker::start();
    let (status, cluster) = get(&format!("{}/v1/cluster", broker.url));
    assert_eq!(status, 200);
    assert_eq!(
        statuses(&cluster),
        vec![(1, "alive".to_string())],
        "{cluster}"
    );
    assert_eq!(cluster["controller"], 1);
    let (status, problem) = post(
        &format!("{}/internal/v1/brokers/heartbeat", broker.url),
        json!({"node_id": 1, "broker_epoch": 1, "caught_up": true}),
    );
    assert_problem(status, &problem, 421, "not_controller");
    assert!(!broker.data_dir.join("__cluster").exists());
}

/// The README's "Three brokers on one machine" block, run as written but for the ports
/// (free ones) and the data directories (temporary ones): its three `tidelog serve` lines
/// form a cluster and its curl line shows three brokers alive.
#[test]
fn the_readme_three_broker_commands_form_a_cluster() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Three brokers on one machine")
        .nth(1)
        .expect("the README has the section");
    let block = section
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section starts with a text block");
    let ports = free_ports(3);
    let with_ports = |line: &str| {
        (1..=3).fold(line.to_string(), |l, i| {
            l.replace(
                &format!("127.0.0.1:900{i}"),
                &format!("127.0.0.1:{}", ports[i - 1]),
            )
        })
    };
    let root = tempfile::tempdir().unwrap();
    let mut brokers = Vec::new();
    for (i, line) in block
        .lines()
        .filter(|l| l.starts_with("tidelog serve"))
        .enumerate()
    {
        // --listen and --data-dir come from the harness (the same port, a temporary directory).
        let words: Vec<String> = with_ports(line)
            .split_whitespace()
            .map(String::from)
            .collect();
        let mut args = Vec::new();
        let mut rest = words[2..].iter();
        while let Some(flag) = rest.next() {
            let value = rest.next().expect("each flag has a value").clone();
            if flag != "--listen" && flag != "--data-dir" {
                args.extend([flag.clone(), value]);
            }
        }
        let data = root.path().join(format!("d{}", i + 1)).join("data");
        brokers.push(TestBroker::start_member(&data, ports[i], &args, ""));
    }
    assert_eq!(brokers.len(), 3, "{block}");
    let curl = block
        .lines()
        .find(|l| l.starts_with("curl"))
        .expect("a curl line");
    let curl = with_ports(curl);
    wait_for(&format!("`{curl}` shows three brokers alive"), || {
        let out = Command::new("bash").arg("-c").arg(&curl).output().unwrap();
        let cluster: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let alive = statuses(&cluster)
            .iter()
            .filter(|(_, s)| s == "alive")
            .count();
        if alive == 3 {
            Ok(())
        } else {
            Err(cluster.to_string())
        }
    });
}
