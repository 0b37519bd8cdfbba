//! The membership task of one broker process: register with the controller leader (with a
//! random incarnation chosen once per process), then heartbeat to it; when the controller
//! says the registration is stale or unknown, register again. Each call goes to the leader
//! this broker's Raft knows now, so the task follows a failover by itself; failures (no
//! leader yet, a leader that lost its place, an unreachable one) are retried every heartbeat
//! interval, so brokers may start in any order. The metadata itself comes from the local
//! Raft state machine, not from the controller.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Cluster;
use super::client::{CallError, InternalClient};
use super::identity;
use super::protocol::{
    HEARTBEAT_PATH, HeartbeatAnswer, HeartbeatRequest, REGISTER_PATH, RegisterAnswer,
    RegisterRequest,
};
use crate::metadata::BrokerEpoch;

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
    let mut last_error = String::new();
    loop {
        let Some(to) = cluster.controller_address() else {
            tokio::time::sleep(cluster.heartbeat_interval()).await;
            continue;
        };
        let stored = cluster.stored_cluster_id();
        let request = RegisterRequest {
            node_id: cluster.node_id,
            address: cluster.own_address(),
            incarnation,
            cluster_id: stored.clone(),
            data_lost: cluster.data_lost(),
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
    let mut reconciled = cluster.reconciled.subscribe();
    loop {
        reconciled.mark_unchanged();
        let Some(to) = cluster.controller_address() else {
            tokio::time::sleep(cluster.heartbeat_interval()).await;
            continue;
        };
        let request = HeartbeatRequest {
            node_id: cluster.node_id,
            broker_epoch: epoch,
            caught_up: cluster.caught_up(),
            reconciled: cluster.reconciled(),
        };
        let sent = std::time::Instant::now();
        let answer: Result<HeartbeatAnswer, _> = client
            .post(to, HEARTBEAT_PATH, &request, CALL_TIMEOUT)
            .await;
        match answer {
            Ok(a) => cluster.heartbeat_answered(to, sent, a.last_index).await,
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
