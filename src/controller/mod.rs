//! The controller's decisions, as pure functions of the metadata image: where replicas go
//! (`placement`). The controller proposes the commands these produce; `metadata::apply`
//! validates and records them.

pub mod placement;
