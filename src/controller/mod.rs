//! The controller's decisions, as pure functions of the metadata image: where replicas go
//! (`placement`), which brokers to fence and unfence from their heartbeats (`liveness`).
//! The controller proposes the commands these produce; `metadata::apply` validates and
//! records them. `peers` is the `--peers` list that names the cluster's voters; `journal`
//! the durable command log, and `metadata_log` the journal-then-apply log of a controller on
//! one fixed broker.

pub mod journal;
pub mod liveness;
pub mod metadata_log;
pub mod peers;
pub mod placement;
