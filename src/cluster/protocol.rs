//! The bodies of the internal membership routes (`/internal/v1/`), shared by the handlers
//! (`http::internal`) and the broker's client (`cluster::member`).

use serde::{Deserialize, Serialize};

use crate::metadata::{BrokerEpoch, LeaderEpoch, NodeId, PartitionEpoch, PartitionId};

pub const REGISTER_PATH: &str = "/internal/v1/brokers/register";
pub const HEARTBEAT_PATH: &str = "/internal/v1/brokers/heartbeat";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub node_id: NodeId,
    /// `host:port` as `--peers` names this broker.
    pub address: String,
    /// Random, chosen at each process start.
    pub incarnation: u64,
    /// The cluster id in the broker's data directory; absent on a fresh directory.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// The broker ran in this cluster before and its data directory lost everything
    /// (started with `rejoin_after_data_loss`).
    #[serde(default)]
    pub data_lost: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterAnswer {
    pub cluster_id: String,
    pub broker_epoch: BrokerEpoch,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub node_id: NodeId,
    pub broker_epoch: BrokerEpoch,
    /// The broker applied the metadata up to the last index the controller told it.
    pub caught_up: bool,
    /// The metadata index up to which the broker's local replicas match the image.
    #[serde(default)]
    pub reconciled: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    /// The index of the last command of the controller's image, once a quorum confirmed it
    /// led when the heartbeat arrived and the image held every entry its log did then: the
    /// broker renews its lease only once its replicas match that much of the metadata.
    pub last_index: u64,
}

pub const SHUTDOWN_PATH: &str = "/internal/v1/brokers/shutdown";

/// A broker's controlled shutdown, in two stages (see [`ShutdownStage`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    pub node_id: NodeId,
    pub broker_epoch: BrokerEpoch,
    pub stage: ShutdownStage,
    /// `drain` only: how long the controller waits for the other brokers to take over the
    /// leaderships before it answers (capped by the controller).
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownStage {
    /// The broker is about to stop: it leaves every in-sync set and its leaderships move to
    /// other in-sync replicas (`Command::BeginShutdown`); answered once the other active
    /// brokers applied that, or `wait_ms` passed.
    Drain,
    /// The broker stopped serving and heartbeating: its session ends and it is fenced at
    /// once, so its next process registers without waiting for the session timeout.
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShutdownAnswer {
    /// The metadata log index of the change.
    pub index: u64,
    /// Active brokers that had not applied the change when the answer was sent (`drain`).
    #[serde(default)]
    pub brokers_behind: Vec<NodeId>,
}

pub const ALTER_PARTITION_PATH: &str = "/internal/v1/partitions/alter";

/// A leader asks the controller to change its partition's ISR (compare-and-swap on the
/// partition epoch; the new ISR comes back through the metadata).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlterPartitionRequest {
    /// The leader asking, on its current registration.
    pub node_id: NodeId,
    pub broker_epoch: BrokerEpoch,
    pub topic: String,
    pub partition: PartitionId,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: PartitionEpoch,
    pub isr: Vec<NodeId>,
    /// The leader's high watermark now (the metadata keeps the highest reported).
    #[serde(default)]
    pub high_watermark: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlterPartitionAnswer {
    /// The metadata log index of the change.
    pub index: u64,
}
