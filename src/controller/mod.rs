//! The controller's decisions, as pure functions of the metadata image: where replicas go
//! (`placement`), and which brokers to fence and unfence from their heartbeats
//! (`liveness`). The controller proposes the commands these produce; `metadata::apply`
//! validates and records them.

pub mod liveness;
pub mod placement;
