//! tidelog: a Kafka-style partitioned commit log served over HTTP.
//!
//! Code map, bottom up (each layer talks only to the one below):
//! - [`log`]: the storage engine. Record batches with CRC-32, segment files, memory-mapped
//!   sparse indexes, append/read/roll/retention and crash recovery. No network, no HTTP.
//! - [`broker`]: topics and partition replicas in memory: high watermark, group-commit
//!   flusher, waiters, the produce and fetch paths, topic admin. Knows nothing of groups.
//! - [`metadata`]: the cluster metadata image and the pure `apply` of its commands (the
//!   state machine the controller replicates). No I/O.
//! - [`controller`]: the controller's decisions (replica placement), pure functions of the
//!   metadata image.
//! - [`replication`]: the leader's view of its followers: high watermark over the ISR, ISR
//!   shrink and expand (pure rules so far).
//! - [`cluster::raft`]: the openraft adapter: the metadata kept by a Raft quorum of the `--peers`
//!   brokers (log over the controller journal, snapshots, RPCs over HTTP).
//! - [`cluster`]: this process's part in a cluster: its Raft voter, membership (register,
//!   heartbeat) and the controller, which acts on the Raft leader.
//! - [`coordination`]: where the state kept in an internal topic (offsets, producer
//!   sessions, idempotency keys) is served: on a cluster, by its partition's leader once
//!   it replayed it.
//! - [`groups`]: the consumer group coordinator (holds the broker): membership, sticky
//!   assignment, generations, committed offsets stored in the internal topic
//!   `__consumer_offsets`.
//! - [`producers`]: producer sessions for idempotent produce (ids, names, epochs), stored in
//!   the internal topic `__producers`; the sequence checks live in the partitions.
//! - [`node`]: composes broker and coordinator, owns background tasks and shutdown.
//! - [`http`]: axum routes, one file per resource, and the problem+json error type; handlers
//!   reach the layers through the node.
//! - [`config`] and [`limits`]: every setting and every input limit, named once.
//! - [`metrics`]: metric names and the Prometheus recorder.
//! - `main.rs`: the command line (`tidelog serve`).

pub mod broker;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod coordination;
pub mod groups;
pub mod http;
pub mod limits;
pub mod log;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod producers;
pub mod replication;
