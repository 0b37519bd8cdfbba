//! The membership task of one broker process: register with the controller (with a random
//! incarnation chosen once per process), then heartbeat and follow the metadata log at the
//! same time; when the controller says the registration is stale or unknown, register again.
//! Failures to reach the controller are retried every heartbeat interval, so brokers may
//! start in any order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Cluster;
use super::client::{CallError, InternalClient};
use super::identity;
use super::protocol::{
    HEARTBEAT_PATH, HeartbeatAnswer, HeartbeatRequest, METADATA_PATH, MetadataAnswer,
    REGISTER_PATH, RegisterAnswer, RegisterRequest,
};
use crate::metadata::BrokerEpoch;

/// How long a metadata long-poll waits at the controller.
const METADATA_WAIT: Duration = Duration::from_secs(5);
/// Deadline of a register or heartbeat call.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Problem codes after which the broker registers again.
const REGISTER_AGAIN: [&str; 2] = ["stale_broker_epoch", "unknown_broker"];

pub(super) async fn run(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let client = InternalClient::default();
    let incarnation = identity::random_u64();
    loop {
        let registration = register(&cluster, &client, incarnation);
        let epoch = tokio::select! {
            epoch = registration => epoch,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Some(epoch) = epoch else { return };
        tokio::select! {
            _ = heartbeats(&cluster, &client, epoch) => {}
            _ = follow(&cluster, &client, epoch) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        cluster.lost_registration();
    }
}

/// Registers until it succeeds; None when the broker must stop (another cluster's data).
async fn register(
    cluster: &Cluster,
    client: &InternalClient,
    incarnation: u64,
) -> Option<BrokerEpoch> {
    let to = cluster.controller_address();
    let mut last_error = String::new();
    loop {
        let stored = cluster.stored_cluster_id();
        let request = RegisterRequest {
            node_id: cluster.node_id,
            address: cluster.own_address(),
            incarnation,
            cluster_id: stored.clone(),
        };
        let answer: Result<RegisterAnswer, _> =
            client.post(to, REGISTER_PATH, &request, CALL_TIMEOUT).await;
        match answer {
            Ok(a) => {
                if stored.is_none() {
                    let dir = cluster.dir.clone();
                    let id = a.cluster_id.clone();
                    let written =
                        tokio::task::spawn_blocking(move || identity::write_cluster_id(&dir, &id))
                            .await
                            .expect("writing the cluster id does not panic");
                    if let Err(e) = written {
                        cluster.fail(format!("cannot store the cluster id: {e}"));
                        return None;
                    }
                }
                tracing::info!(
                    node_id = cluster.node_id.0,
                    controller = %to,
                    cluster_id = %a.cluster_id,
                    broker_epoch = a.broker_epoch.0,
                    "registered with the controller"
                );
                cluster.registered(a.cluster_id, a.broker_epoch);
                return Some(a.broker_epoch);
            }
            Err(CallError::Refused { code, detail, .. }) if code == "cluster_id_mismatch" => {
                cluster.fail(format!("refusing to join: {detail}"));
                return None;
            }
            Err(e) => {
                let why = e.to_string();
                if why != last_error {
                    tracing::warn!(controller = %to, "registering with the controller: {why}; retrying");
                    last_error = why;
                }
            }
        }
        tokio::time::sleep(cluster.heartbeat_interval()).await;
    }
}

/// Heartbeats until the controller says the registration is stale or unknown.
/// Besides every interval, a heartbeat goes at once when the local replicas caught up with
/// more of the metadata, so an admin call waiting on every broker is answered promptly.
async fn heartbeats(cluster: &Cluster, client: &InternalClient, epoch: BrokerEpoch) {
    let to = cluster.controller_address();
    let mut reconciled = cluster.reconciled.subscribe();
    loop {
        reconciled.mark_unchanged();
        let request = HeartbeatRequest {
            node_id: cluster.node_id,
            broker_epoch: epoch,
            caught_up: cluster.caught_up(),
            reconciled: cluster.reconciled(),
        };
        let answer: Result<HeartbeatAnswer, _> = client
            .post(to, HEARTBEAT_PATH, &request, CALL_TIMEOUT)
            .await;
        match answer {
            Ok(a) => cluster.saw_last_index(a.last_index),
            Err(CallError::Refused { code, .. }) if REGISTER_AGAIN.contains(&code.as_str()) => {
                return;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(cluster.heartbeat_interval()) => {}
            _ = reconciled.changed() => {}
        }
    }
}

/// Follows the metadata log (long-polls) until the registration goes stale.
async fn follow(cluster: &Cluster, client: &InternalClient, epoch: BrokerEpoch) {
    let to = cluster.controller_address();
    loop {
        let after = cluster.applied();
        let path = format!(
            "{METADATA_PATH}?node_id={}&broker_epoch={}&after={after}&wait_ms={}",
            cluster.node_id,
            epoch.0,
            METADATA_WAIT.as_millis()
        );
        let answer: Result<MetadataAnswer, _> =
            client.get(to, &path, METADATA_WAIT + CALL_TIMEOUT).await;
        match answer {
            Ok(page) => cluster.apply_page(after, page),
            Err(CallError::Refused { code, .. }) if REGISTER_AGAIN.contains(&code.as_str()) => {
                return;
            }
            Err(_) => tokio::time::sleep(cluster.heartbeat_interval()).await,
        }
    }
}
