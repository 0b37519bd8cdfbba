//! The multi-broker suites, one module per file, in one test binary.
//!
//! Each suite starts brokers as processes on loopback ports, so the suites share nothing but
//! the machine. In one binary the test harness runs them side by side (as many at a time as
//! it runs tests, the machine's core count by default) instead of one binary after another:
//! most of a cluster test's time is waiting for session, lag and election timeouts, so this
//! keeps the whole `cargo test` within its budget, and one link replaces twelve.
//!
//! One suite alone: `cargo test --test cluster replication::` (a module path filters).

#[path = "../common/mod.rs"]
mod common;

mod cluster_faults;
mod cluster_membership;
mod cluster_power_cut;
mod cluster_topics;
mod controller_failover;
mod coordinator_failover;
mod exactly_once_across_failover;
mod forwarding;
mod groups_off_coordinator;
mod reassignment;
mod replica_damage;
mod replication;
mod replication_hw;
mod rolling_restart;
mod unclean_election;
mod wiped_voter;
