//! The controller's decisions, as pure functions of the metadata image: where replicas go
//! (`placement`), which brokers to fence and unfence from their heartbeats (`liveness`).
//! The controller proposes the commands these produce; `metadata::apply` validates and
//! records them. `peers` is the `--peers` list that names the cluster's voters; `journal`
//! the durable command log the metadata Raft's log is stored in (`crate::cluster::raft`).

pub mod journal;
pub mod liveness;
pub mod peers;
pub mod placement;
