//! State kept in the one partition of an internal topic (committed offsets in
//! `__consumer_offsets`, producer sessions in `__producers`, idempotency keys in
//! `__idempotency_keys`) and where it is served.
//!
//! On a broker alone the state is replayed when the broker opens and always served. On a
//! cluster, as in Kafka, it is served by the leader of the topic's partition and only there:
//! the node tells each owner of such state when this broker starts or stops leading the
//! partition ([`Residence::lead`], [`Residence::step_down`]); on a new leadership the owner
//! drops what it had, waits until the partition's high watermark reaches the log end it had
//! when it took the lead (every record the leader holds is then committed:
//! [`wait_committed`]), replays the log up to there and only then serves
//! ([`Residence::loaded`]). Meanwhile a call is answered 503 `coordinator_loading`; on a
//! broker that does not lead the partition, 503 `not_coordinator`. Both carry `Retry-After`,
//! and the HTTP layer forwards each call to the leader the metadata names
//! (`http::forward`), so a client's retry through any broker reaches the new leader.
//!
//! Writes are `acks=all` into the replicated partition, stamped with the leader's epoch: a
//! broker that lost the leadership cannot have them acknowledged, and a new leader (elected
//! from the in-sync replicas) holds every acknowledged one, so it replays every answered
//! commit, session and key.
//!
//! Invariants:
//! - State is served only in [`Gate::Alone`] or [`Gate::Serving`]; a serving broker leads
//!   the partition at the epoch it loaded under.
//! - Memory changes after a write only if the load that served the write is still the
//!   current one ([`Residence::is_current`]): a write begun under one leadership never
//!   lands in memory rebuilt by another.
//!
//! Lock: `gate` is a std mutex held only to read or replace the gate, never across `.await`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::broker::{BrokerError, Partition};
use crate::config::TopicConfig;

/// How long a call waits for a load in progress before it is answered `coordinator_loading`.
pub const LOAD_WAIT: Duration = Duration::from_secs(5);

/// Makes an internal topic on a cluster: the node proposes it in the cluster's metadata
/// (replicated on min(3, active brokers), this broker first, so it is the preferred leader)
/// and returns once this broker holds its replica. Given the topic's name and config. On a
/// broker alone there is none: the topic is local.
#[derive(Clone)]
pub struct InternalTopicMaker(
    #[allow(clippy::type_complexity)]
    pub  Arc<
        dyn Fn(&'static str, TopicConfig) -> BoxFuture<'static, Result<(), BrokerError>>
            + Send
            + Sync,
    >,
);

impl std::fmt::Debug for InternalTopicMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalTopicMaker")
    }
}

/// Whether this broker serves the state of one internal topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// A broker alone: loaded when it opened, always served.
    Alone,
    /// A cluster member that does not lead the partition: nothing is served.
    Elsewhere,
    /// Leads the partition in this leader epoch and is replaying it.
    Loading { epoch: u32 },
    /// Leads the partition in this leader epoch, loaded; `load` numbers the loads of this
    /// process, so a write can tell whether memory was rebuilt under it.
    Serving { epoch: u32, load: u64 },
}

/// Which load served a call: memory may change after its write only while it is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadId(u64);

/// Where one internal topic's state is served (see the module's documentation).
#[derive(Debug)]
pub struct Residence {
    /// The internal topic whose partition 0 keeps the state.
    topic: &'static str,
    /// std mutex: read or replaced only, never held across `.await`.
    gate: Mutex<Gate>,
    /// Moves at every change of the gate, so waiting calls and loads wake.
    changes: watch::Sender<u64>,
    /// Loads so far (the next one's [`LoadId`]).
    loads: std::sync::atomic::AtomicU64,
    /// On a cluster: makes the topic the first time a call needs it.
    maker: OnceLock<InternalTopicMaker>,
}

impl Residence {
    /// A broker alone: served at once (the owner replayed the topic when it opened).
    pub fn alone(topic: &'static str) -> Residence {
        Residence::with_gate(topic, Gate::Alone)
    }

    /// A cluster member: nothing served until it leads the partition and has loaded it.
    pub fn member(topic: &'static str) -> Residence {
        Residence::with_gate(topic, Gate::Elsewhere)
    }

    fn with_gate(topic: &'static str, gate: Gate) -> Residence {
        Residence {
            topic,
            gate: Mutex::new(gate),
            changes: watch::Sender::new(0),
            loads: std::sync::atomic::AtomicU64::new(1),
            maker: OnceLock::new(),
        }
    }

    pub fn topic(&self) -> &'static str {
        self.topic
    }

    pub fn gate(&self) -> Gate {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate
            .lock()
            .expect("a residence lock is poisoned only after a panic")
    }

    fn set(&self, gate: Gate) {
        *self.lock() = gate;
        self.changes.send_modify(|v| *v += 1);
    }

    /// On a cluster: how the topic is made the first time a call needs it. Set once, by the
    /// node, before any request is served.
    pub fn make_topic_with(&self, maker: InternalTopicMaker) {
        let _ = self.maker.set(maker);
    }

    pub fn maker(&self) -> Option<&InternalTopicMaker> {
        self.maker.get()
    }

    /// This broker now leads the partition in `epoch`. True when a load must start (the
    /// owner drops its state and loads); false when it already loads or serves that
    /// leadership (another field of the role changed, an in-sync set say).
    pub fn lead(&self, epoch: u32) -> bool {
        let mut gate = self.lock();
        match *gate {
            Gate::Alone => return false,
            Gate::Loading { epoch: e } | Gate::Serving { epoch: e, .. } if e == epoch => {
                return false;
            }
            _ => *gate = Gate::Loading { epoch },
        }
        drop(gate);
        self.changes.send_modify(|v| *v += 1);
        tracing::info!(topic = self.topic, epoch, "leading: loading the state");
        true
    }

    /// This broker no longer leads the partition (a follower, offline, or gone): nothing is
    /// served; the owner drops its state. True if it served or loaded before.
    pub fn step_down(&self) -> bool {
        let before = self.gate();
        if matches!(before, Gate::Alone | Gate::Elsewhere) {
            return false;
        }
        self.set(Gate::Elsewhere);
        tracing::info!(topic = self.topic, "no longer leading: state dropped");
        true
    }

    /// The load for `epoch` finished: serve, if that leadership is still the current one.
    /// `install` puts the loaded state in place first, under the gate's lock, so no call sees
    /// the gate open on the state of another load.
    pub fn loaded(&self, epoch: u32, install: impl FnOnce(LoadId)) -> bool {
        let mut gate = self.lock();
        if *gate != (Gate::Loading { epoch }) {
            return false;
        }
        let load = self
            .loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        install(LoadId(load));
        *gate = Gate::Serving { epoch, load };
        drop(gate);
        self.changes.send_modify(|v| *v += 1);
        tracing::info!(topic = self.topic, epoch, "loaded: serving");
        true
    }

    /// Whether this load still serves (always, on a broker alone).
    pub fn is_current(&self, load: LoadId) -> bool {
        match self.gate() {
            Gate::Alone => true,
            Gate::Serving { load: l, .. } => l == load.0,
            _ => false,
        }
    }

    /// Whether a load for `epoch` is still wanted.
    pub fn is_loading(&self, epoch: u32) -> bool {
        self.gate() == (Gate::Loading { epoch })
    }

    /// The load serving now, or why nothing is served.
    pub fn serving(&self) -> Result<LoadId, BrokerError> {
        match self.gate() {
            Gate::Alone => Ok(LoadId(0)),
            Gate::Serving { load, .. } => Ok(LoadId(load)),
            Gate::Loading { .. } => Err(BrokerError::CoordinatorLoading { topic: self.topic }),
            Gate::Elsewhere => Err(BrokerError::NotCoordinator { topic: self.topic }),
        }
    }

    /// Waits (up to [`LOAD_WAIT`]) for the state to be served here. `missing`: this broker
    /// holds no replica of the topic, which the owner would have made with this config: on a
    /// cluster the call was forwarded here (the controller) because the metadata has no such
    /// topic yet, so it is made first.
    pub async fn ready(&self, missing: Option<TopicConfig>) -> Result<LoadId, BrokerError> {
        let made = match (self.serving(), missing, self.maker.get()) {
            (Err(BrokerError::NotCoordinator { .. }), Some(config), Some(maker)) => {
                (maker.0)(self.topic, config).await?;
                true
            }
            _ => false,
        };
        let mut changes = self.changes.subscribe();
        let wait = async {
            loop {
                match self.serving() {
                    Err(BrokerError::CoordinatorLoading { .. }) => {}
                    // Just made: the role reaches the gate a moment after the replica exists.
                    Err(BrokerError::NotCoordinator { .. }) if made => {}
                    other => return other,
                }
                if changes.changed().await.is_err() {
                    return self.serving();
                }
            }
        };
        match tokio::time::timeout(LOAD_WAIT, wait).await {
            Ok(answer) => answer,
            Err(_) => self.serving(),
        }
    }
}

/// State an owner keeps in memory and rebuilds from its internal topic.
pub trait LoadedFromLog: Send + Sync + 'static {
    fn residence(&self) -> &Residence;
    /// Drops every piece of the state (and retires its metric series).
    fn drop_state(&self);
    /// Replays the topic up to its high watermark (blocking reads); the closure puts the
    /// result in place (called under the gate's lock, given the load it belongs to).
    #[allow(clippy::type_complexity)]
    fn replay(self: &Arc<Self>) -> Result<Box<dyn FnOnce(LoadId) + Send>, BrokerError>;
}

/// What an owner does when this broker's role for its topic's partition changes: a new
/// leadership (`leader_epoch`) drops the state and starts a load of `partition`; anything
/// else drops the state. Called from the replica manager's role hook: it does not block.
pub fn follow_leadership<S: LoadedFromLog>(
    state: &Arc<S>,
    leader_epoch: Option<u32>,
    partition: Arc<Partition>,
) {
    match leader_epoch {
        Some(epoch) => {
            if state.residence().lead(epoch) {
                state.drop_state();
                tokio::spawn(load(Arc::clone(state), epoch, partition));
            }
        }
        None => {
            if state.residence().step_down() {
                state.drop_state();
            }
        }
    }
}

/// How long a load that failed to read the topic waits before it tries again.
const LOAD_RETRY: Duration = Duration::from_secs(1);

/// Loads the state of a new leadership: once every record the leader holds is committed,
/// replays the topic and serves, unless the leadership ended meanwhile.
async fn load<S: LoadedFromLog>(state: Arc<S>, epoch: u32, partition: Arc<Partition>) {
    let topic = state.residence().topic();
    while wait_committed(&partition, state.residence(), epoch).await {
        let replaying = Arc::clone(&state);
        match tokio::task::spawn_blocking(move || replaying.replay()).await {
            Ok(Ok(install)) => {
                state.residence().loaded(epoch, install);
                return;
            }
            Ok(Err(e)) => tracing::error!(topic, epoch, "replaying the topic: {e}; trying again"),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
        tokio::time::sleep(LOAD_RETRY).await;
    }
}

/// Waits until `partition`'s high watermark reaches the log end it had when this broker
/// took its lead in `epoch`: every record the new leader holds is then committed (on every
/// in-sync replica), so a replay up to the high watermark sees every acknowledged write and
/// nothing a later leader could cut. False if the leadership ended meanwhile.
pub async fn wait_committed(partition: &Partition, residence: &Residence, epoch: u32) -> bool {
    let end = partition.log_end_offset();
    let mut progress = partition.subscribe();
    let mut changes = residence.changes.subscribe();
    loop {
        if !residence.is_loading(epoch) {
            return false;
        }
        if progress.borrow_and_update().high_watermark >= end {
            return true;
        }
        tokio::select! {
            moved = progress.changed() => if moved.is_err() { return false },
            moved = changes.changed() => if moved.is_err() { return false },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_serves_only_the_load_of_its_current_leadership() {
        let r = Residence::member("__t");
        assert!(matches!(
            r.serving(),
            Err(BrokerError::NotCoordinator { .. })
        ));
        assert!(r.lead(3));
        assert!(!r.lead(3), "the same leadership does not load twice");
        assert!(matches!(
            r.serving(),
            Err(BrokerError::CoordinatorLoading { .. })
        ));
        assert!(!r.loaded(2, |_| panic!("an older leadership installs nothing")));
        let mut installed = None;
        assert!(r.loaded(3, |load| installed = Some(load)));
        let load = r.serving().expect("serving");
        assert_eq!(Some(load), installed);
        assert!(r.is_current(load));
        // Lost and led again: the old load is no longer current, even once reloaded.
        assert!(r.step_down());
        assert!(matches!(
            r.serving(),
            Err(BrokerError::NotCoordinator { .. })
        ));
        assert!(r.lead(5));
        assert!(r.loaded(5, |_| {}));
        assert!(!r.is_current(load));
        assert!(r.is_current(r.serving().unwrap()));
    }

    #[test]
    fn a_broker_alone_always_serves() {
        let r = Residence::alone("__t");
        assert!(r.serving().is_ok());
        assert!(!r.lead(1));
        assert!(!r.step_down());
        assert!(r.is_current(r.serving().unwrap()));
    }
}
