//! The replication data path of one broker: follows the local replicas' roles from the
//! replica manager; for each led partition a [`Led`] and its task (high watermark on the
//! leader's own fsync, ISR checks on a timer); for each broker this one follows partitions
//! from, a fetcher task ([`super::fetcher`]); and the leader's answer to follower fetches.
//!
//! Locks: `leaders` and `fetchers` are std locks held for map bookkeeping only, never across
//! an `.await`, never while a `Partition` or `Led` lock is taken.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::fetcher::{self, Followed};
use super::leader::{CopyProgress, IsrProposal, IsrRecord, Led};
use super::manager::{LocalReplica, ReplicaManager, Role, RoleChange};
use super::wire::{self, FetchError, FetchRequest, PartitionAnswer, PartitionFetch};
use crate::broker::partition::HwMode;
use crate::broker::{Broker, IsrGate};
use crate::cluster::Cluster;
use crate::cluster::client::{CallError, InternalClient};
use crate::cluster::protocol::{ALTER_PARTITION_PATH, AlterPartitionAnswer, AlterPartitionRequest};
use crate::config::BrokerConfig;
use crate::log::Offset;
use crate::metadata::{BrokerEpoch, NodeId, PartitionId};
use crate::metrics as m;

/// Replication settings (`replica_lag_time_max_ms`, `replica_fetch_wait_max_ms`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A follower not caught up for this long leaves the ISR.
    pub lag_max_ms: u64,
    /// Longest a follower's fetch waits at the leader for data.
    pub fetch_wait_max: Duration,
    /// A fetch's deadline beyond its wait: a leader that does not answer by then is
    /// treated as unreachable (its partitions are asked again).
    pub fetch_timeout: Duration,
    /// How often every local replica is checked against its CRCs (`scrub`).
    pub scrub_every: Duration,
}

impl Settings {
    pub fn from_config(config: &BrokerConfig) -> Settings {
        Settings {
            lag_max_ms: config.replica_lag_time_max_ms,
            fetch_wait_max: Duration::from_millis(config.replica_fetch_wait_max_ms),
            fetch_timeout: Duration::from_millis(config.replica_lag_time_max_ms / 2)
                .max(Duration::from_millis(500)),
            scrub_every: Duration::from_millis(config.replica_scrub_interval_ms),
        }
    }

    /// How often a leader checks its followers for ISR changes: a quarter of the lag
    /// bound, so a dead follower leaves within 1.25 times it.
    fn isr_check_every(&self) -> Duration {
        Duration::from_millis((self.lag_max_ms / 4).clamp(10, 1_000))
    }
}

type PartitionKey = (Arc<str>, PartitionId);

#[derive(Debug)]
pub struct Replicator {
    pub(super) node_id: NodeId,
    pub(super) broker: Arc<Broker>,
    pub(super) cluster: Arc<Cluster>,
    pub(super) manager: Arc<ReplicaManager>,
    pub(super) settings: Settings,
    pub(super) client: InternalClient,
    /// The replication clock (monotonic) starts here.
    started: Instant,
    leaders: RwLock<HashMap<PartitionKey, Arc<Led>>>,
    /// One fetcher per source leader; dropping its sender ends it.
    fetchers: Mutex<HashMap<NodeId, watch::Sender<Vec<Followed>>>>,
}

impl Replicator {
    pub fn new(
        broker: Arc<Broker>,
        cluster: Arc<Cluster>,
        manager: Arc<ReplicaManager>,
        settings: Settings,
    ) -> Arc<Replicator> {
        // Synchronously, as the manager publishes each role: from then on the replica takes
        // producers' appends under the right leader epoch, or refuses them.
        manager.on_role_change(apply_role);
        Arc::new(Replicator {
            node_id: cluster.node_id(),
            broker,
            cluster,
            manager,
            settings,
            client: InternalClient::default(),
            started: Instant::now(),
            leaders: RwLock::new(HashMap::new()),
            fetchers: Mutex::new(HashMap::new()),
        })
    }

    /// Starts following roles (nothing on a broker that runs alone).
    pub fn start(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        if !self.cluster.is_clustered() {
            return Vec::new();
        }
        vec![
            tokio::spawn(Arc::clone(self).run_roles()),
            tokio::spawn(super::scrub::run(
                Arc::clone(&self.broker),
                Arc::clone(&self.manager),
                self.settings.scrub_every,
            )),
        ]
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run_roles(self: Arc<Self>) {
        let mut roles = self.manager.subscribe();
        let mut shutdown = self.broker.shutdown_signal();
        loop {
            roles.borrow_and_update();
            self.reconcile();
            tokio::select! {
                changed = roles.changed() => if changed.is_err() { break },
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        for led in self.leaders_lock_write().drain().map(|(_, l)| l) {
            led.retire();
        }
        self.fetchers_lock().clear();
    }

    fn leaders_lock_write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<PartitionKey, Arc<Led>>> {
        self.leaders
            .write()
            .expect("the leaders lock is not poisoned")
    }

    fn fetchers_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<NodeId, watch::Sender<Vec<Followed>>>> {
        self.fetchers
            .lock()
            .expect("the fetchers lock is not poisoned")
    }

    /// Per follower, how far its copy is (see `Led::copy_progress`), where this broker leads
    /// the partition.
    pub fn copy_progress(&self, topic: &str, partition: PartitionId) -> Option<Vec<CopyProgress>> {
        self.led(topic, partition).map(|l| l.copy_progress())
    }

    fn led(&self, topic: &str, partition: PartitionId) -> Option<Arc<Led>> {
        let leaders = self
            .leaders
            .read()
            .expect("the leaders lock is not poisoned");
        leaders.get(&(Arc::from(topic), partition)).cloned()
    }

    /// Brings the led partitions and the fetchers in line with the manager's roles.
    fn reconcile(self: &Arc<Self>) {
        let now = self.now_ms();
        let mut started = Vec::new();
        let mut retired = Vec::new();
        let mut replaced = Vec::new();
        {
            let mut leaders = self.leaders_lock_write();
            let mut next: HashMap<PartitionKey, Arc<Led>> = HashMap::new();
            for r in self.manager.led() {
                let Role::Leader {
                    leader_epoch,
                    replicas,
                    isr,
                    min_insync_replicas,
                    partition_epoch,
                    recorded_high_watermark,
                    throttle,
                } = &r.role
                else {
                    continue;
                };
                let record = IsrRecord {
                    replicas: replicas.clone(),
                    isr: isr.clone(),
                    min_insync_replicas: *min_insync_replicas,
                    partition_epoch: *partition_epoch,
                    recorded_high_watermark: *recorded_high_watermark,
                    throttle: throttle.clone(),
                };
                if r.replica.lost_data() {
                    // Refused in `apply_role`: no follower fetches from it either.
                    continue;
                }
                let key = (Arc::clone(&r.topic), r.partition);
                let kept = match leaders.remove(&key) {
                    Some(l)
                        if l.leader_epoch == *leader_epoch
                            && Arc::ptr_eq(&l.replica, &r.replica) =>
                    {
                        Some(l)
                    }
                    // Led again in a later epoch (or a topic made again under the name)
                    // within one pass: the old leadership's task stops, or it would go on
                    // proposing ISR changes from its frozen followers. Its replica keeps the
                    // gate the role hook set for the new leadership.
                    Some(l) => {
                        replaced.push(l);
                        None
                    }
                    None => None,
                };
                let led = match kept {
                    Some(l) => {
                        l.confirm(&record, now);
                        l
                    }
                    None => {
                        r.replica.set_hw_mode(HwMode::External);
                        let l = Arc::new(Led::new(
                            Arc::clone(&r.topic),
                            r.partition,
                            Arc::clone(&r.replica),
                            self.node_id,
                            *leader_epoch,
                            &record,
                            now,
                        ));
                        tracing::info!(
                            topic = %r.topic,
                            partition = r.partition.0,
                            leader_epoch = leader_epoch.0,
                            isr = ?isr,
                            "leading the partition"
                        );
                        started.push(Arc::clone(&l));
                        l
                    }
                };
                next.insert(key, led);
            }
            retired.extend(leaders.drain().map(|(_, l)| l));
            *leaders = next;
        }
        for l in retired {
            l.retire();
            l.replica.set_isr_gate(None);
        }
        for l in replaced {
            l.retire();
        }
        for l in started {
            tokio::spawn(Arc::clone(self).run_leader(l));
        }
        self.reconcile_fetchers(self.manager.followed());
    }

    fn reconcile_fetchers(self: &Arc<Self>, followed: Vec<LocalReplica>) {
        let mut by_leader: HashMap<NodeId, Vec<Followed>> = HashMap::new();
        for r in followed {
            let Role::Follower {
                leader,
                leader_epoch,
            } = r.role
            else {
                continue;
            };
            r.replica.set_isr_gate(None);
            r.replica.set_hw_mode(HwMode::External);
            by_leader.entry(leader).or_default().push(Followed {
                topic: r.topic,
                partition: r.partition,
                replica: r.replica,
                leader_epoch,
            });
        }
        let mut fetchers = self.fetchers_lock();
        fetchers.retain(|leader, _| by_leader.contains_key(leader));
        for (leader, set) in by_leader {
            if let Some(sender) = fetchers.get(&leader) {
                sender.send_if_modified(|old| {
                    let same = old.len() == set.len()
                        && old.iter().zip(&set).all(|(a, b)| {
                            a.topic == b.topic
                                && a.partition == b.partition
                                && a.leader_epoch == b.leader_epoch
                                && Arc::ptr_eq(&a.replica, &b.replica)
                        });
                    if !same {
                        *old = set;
                    }
                    !same
                });
            } else {
                let (sender, receiver) = watch::channel(set);
                tokio::spawn(fetcher::run(Arc::clone(self), leader, receiver));
                fetchers.insert(leader, sender);
            }
        }
    }

    /// A led partition's task: moves the high watermark when the leader's own fsync
    /// completes, checks the ISR on a timer, publishes the partition's replication metrics.
    async fn run_leader(self: Arc<Self>, led: Arc<Led>) {
        let mut progress = led.replica.subscribe();
        let mut retired = led.retired();
        let mut shutdown = self.broker.shutdown_signal();
        let mut tick = tokio::time::interval(self.settings.isr_check_every());
        let mut fsynced = progress.borrow_and_update().fsynced_offset;
        led.advance();
        loop {
            tokio::select! {
                changed = progress.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Only a new fsync moves it (the HW's own publication wakes us too).
                    let now = progress.borrow_and_update().fsynced_offset;
                    if now != fsynced {
                        fsynced = now;
                        led.advance();
                    }
                }
                _ = tick.tick() => {
                    led.advance();
                    self.check_isr(&led, &self.eligible());
                    publish_metrics(&led);
                }
                _ = retired.wait_for(|r| *r) => break,
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        // Replaced by a later leadership of the same partition: the gauges are its now.
        if self.led(&led.topic, led.partition).is_none() {
            forget_metrics(&led);
        }
    }

    /// The brokers that may join an ISR: active ones (unfenced, not shutting down), each on
    /// its current broker epoch.
    fn eligible(&self) -> Vec<(NodeId, BrokerEpoch)> {
        self.cluster.with_image(|i| {
            i.active_brokers()
                .map(|b| (b.node_id, b.broker_epoch))
                .collect()
        })
    }

    /// Proposes the ISR change the partition's followers call for, if any.
    fn check_isr(self: &Arc<Self>, led: &Arc<Led>, eligible: &[(NodeId, BrokerEpoch)]) {
        if let Some(p) = led.isr_check(self.now_ms(), self.settings.lag_max_ms, eligible) {
            tokio::spawn(Arc::clone(self).propose(Arc::clone(led), p));
        }
    }

    /// Sends an ISR change to the controller. A refusal forgets it (the next check proposes
    /// again). An attempt whose outcome is unknown (no answer, or the controller's own
    /// proposal timed out) may still commit, so its additions go on counting toward the high
    /// watermark (`LeaderReplicas::maximal_isr`): the same change is asked again until the controller
    /// answers, and after such an attempt only the metadata's next partition epoch
    /// (`Led::confirm`) settles it. Forgetting it there would let the high watermark pass a
    /// replica the controller then adds to the ISR.
    async fn propose(self: Arc<Self>, led: Arc<Led>, p: IsrProposal) {
        let mut unknown = false;
        let mut retired = led.retired();
        loop {
            let failure = match (
                self.cluster.broker_epoch(),
                self.cluster.peer_address(self.cluster.controller_id()),
            ) {
                (Some(broker_epoch), Some(to)) => {
                    let request = AlterPartitionRequest {
                        node_id: self.node_id,
                        broker_epoch,
                        topic: led.topic.to_string(),
                        partition: led.partition,
                        leader_epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                        isr: p.isr.clone(),
                        high_watermark: led.replica.progress().high_watermark.0,
                    };
                    let answer: Result<AlterPartitionAnswer, _> = self
                        .client
                        .post(to, ALTER_PARTITION_PATH, &request, ALTER_PARTITION_TIMEOUT)
                        .await;
                    match answer {
                        Ok(_) => {
                            tracing::info!(
                                topic = %led.topic,
                                partition = led.partition.0,
                                isr = ?p.isr,
                                "in-sync replica set changed"
                            );
                            return;
                        }
                        Err(e) => e,
                    }
                }
                // No controller known now: nothing was sent.
                _ => CallError::Refused {
                    status: 503,
                    code: "no_controller".into(),
                    detail: "no controller known".into(),
                },
            };
            let outcome = after_alter_failure(unknown, &failure);
            tracing::warn!(
                topic = %led.topic,
                partition = led.partition.0,
                isr = ?p.isr,
                ?outcome,
                "in-sync replica change not confirmed: {failure}"
            );
            match outcome {
                AlterFailure::Forget => {
                    led.proposal_failed(&p);
                    return;
                }
                AlterFailure::AwaitMetadata => {
                    // Bounded: a change the controller never applied must not hold the
                    // high watermark back for good.
                    let deadline = tokio::time::Instant::now() + ALTER_PARTITION_SETTLE_MAX;
                    while led.still_pending(&p) && tokio::time::Instant::now() < deadline {
                        if !pause_unless_retired(&mut retired).await {
                            return;
                        }
                    }
                    led.proposal_failed(&p);
                    return;
                }
                AlterFailure::AskAgain => unknown = true,
            }
            if !pause_unless_retired(&mut retired).await || !led.still_pending(&p) {
                return;
            }
        }
    }

    /// Answers a follower's fetch: per partition its position is checked and recorded (the
    /// high watermark moves), then the batches after it are read. With nothing to send it
    /// waits (up to the request's `max_wait_ms`, capped) for an append, a new high
    /// watermark, or shutdown.
    pub async fn serve_fetch(self: &Arc<Self>, request: &FetchRequest) -> Vec<u8> {
        let known = self.cluster.with_image(|i| {
            i.brokers
                .get(&request.replica)
                .is_some_and(|b| b.broker_epoch == request.broker_epoch)
        });
        let wait = Duration::from_millis(request.max_wait_ms).min(self.settings.fetch_wait_max);
        let deadline = tokio::time::Instant::now() + wait;
        let mut shutdown = self.broker.shutdown_signal();
        let mut first_hws: Option<Vec<Offset>> = None;
        loop {
            let leds: Vec<Option<Arc<Led>>> = request
                .partitions
                .iter()
                .map(|p| self.led(&p.topic, p.partition))
                .collect();
            // Subscribed before reading, so a change in between ends the wait at once.
            let mut ends = Vec::new();
            let mut progresses = Vec::new();
            for l in leds.iter().flatten() {
                ends.push(l.replica.end_watch());
                progresses.push(l.replica.subscribe());
            }
            let now = self.now_ms();
            let eligible = self.eligible();
            let mut budget = request.max_bytes;
            let mut ready = false;
            // The soonest a throttled move's bucket lets a replica that got nothing have more.
            let mut refill: Option<Duration> = None;
            let mut parts: Vec<(PartitionAnswer, Vec<u8>)> = Vec::with_capacity(leds.len());
            for (fetch, led) in request.partitions.iter().zip(&leds) {
                let (mut answer, from) = match led {
                    Some(l) if known => {
                        l.on_fetch(request.replica, request.broker_epoch, fetch, now)
                    }
                    Some(_) => (refusal(fetch, FetchError::NotAFollower), None),
                    None => (refusal(fetch, self.not_led(fetch)), None),
                };
                let mut bytes = Vec::new();
                if let (Some(l), Some(from)) = (led, from) {
                    // A replica a throttled move adds gets what the move's bucket holds.
                    let allowed = match budget {
                        0 => 0,
                        _ => l
                            .throttle_allowance(request.replica, budget)
                            .unwrap_or(budget),
                    };
                    if budget > 0 && allowed > 0 {
                        bytes = l.read(&mut answer, from, budget.min(allowed)).await;
                        budget = budget.saturating_sub(bytes.len() as u64);
                        l.sent(request.replica, bytes.len() as u64);
                    }
                    if bytes.is_empty()
                        && from < l.replica.log_end_offset()
                        && let Some(wait) = l.throttle_refill_in(request.replica)
                    {
                        refill = Some(refill.map_or(wait, |r: Duration| r.min(wait)));
                    }
                    self.check_isr(l, &eligible);
                    ready |= answer.sync_now && fetch.flushed_offset < fetch.fetch_offset;
                }
                ready |= answer.error.is_some() || answer.diverging.is_some() || !bytes.is_empty();
                parts.push((answer, bytes));
            }
            let hws: Vec<Offset> = parts.iter().map(|(a, _)| a.high_watermark).collect();
            match &first_hws {
                Some(first) => ready |= *first != hws,
                None => first_hws = Some(hws),
            }
            if ready || tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
                return wire::encode_answer(parts.iter().map(|(a, b)| (a, b.as_slice())));
            }
            let mut changes: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::new();
            for rx in &mut ends {
                changes.push(Box::pin(changed(rx)));
            }
            for rx in &mut progresses {
                changes.push(Box::pin(changed(rx)));
            }
            if let Some(refill) = refill {
                changes.push(Box::pin(tokio::time::sleep(refill)));
            }
            if changes.is_empty() {
                changes.push(Box::pin(std::future::pending()));
            }
            tokio::select! {
                _ = futures_util::future::select_all(changes) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
        }
    }

    fn not_led(&self, fetch: &PartitionFetch) -> FetchError {
        match self.manager.role_of(&fetch.topic, fetch.partition) {
            None => FetchError::UnknownTopicOrPartition,
            Some(_) => FetchError::NotLeader,
        }
    }
}

/// How long a leader waits for the controller's answer to an ISR change: past the
/// controller's own proposal timeout, so the controller's answer, not this clock, usually
/// decides.
const ALTER_PARTITION_TIMEOUT: Duration = Duration::from_secs(12);
/// The pause before an ISR change whose outcome is unknown is asked again.
const ALTER_PARTITION_RETRY: Duration = Duration::from_secs(1);
/// How long a change refused after an attempt of unknown outcome waits for the metadata to
/// settle it before it is forgotten: past two of the controller's proposal timeouts.
const ALTER_PARTITION_SETTLE_MAX: Duration = Duration::from_secs(30);

/// Waits [`ALTER_PARTITION_RETRY`]; false, at once, if the leadership retires meanwhile.
async fn pause_unless_retired(retired: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(ALTER_PARTITION_RETRY) => true,
        _ = retired.wait_for(|r| *r) => false,
    }
}

/// What a leader does after an ISR change was not confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlterFailure {
    /// Refused, and no earlier attempt's outcome is unknown: forget the pending change.
    Forget,
    /// Its outcome is unknown (no answer, or the controller's proposal timed out): keep it
    /// pending and ask again.
    AskAgain,
    /// Refused after an attempt whose outcome is unknown: that attempt may have committed
    /// (a stale-epoch refusal even says something did); keep it pending until the metadata
    /// shows the partition's next epoch (at most [`ALTER_PARTITION_SETTLE_MAX`]).
    AwaitMetadata,
}

fn after_alter_failure(unknown_before: bool, failure: &CallError) -> AlterFailure {
    let (unknown_now, nothing_asked) = match failure {
        CallError::Unreachable(_) => (true, false),
        CallError::Refused { status, code, .. } => (
            *status == 504 || code == "request_timeout" || code == "storage_unavailable",
            // No controller known, or not the controller: nothing was proposed.
            code == "no_controller" || code == "not_controller",
        ),
    };
    // Refused with the epochs matching (`isr_change_refused`: checked after them, at apply,
    // after everything proposed before it): no earlier attempt committed.
    let epochs_matched =
        matches!(failure, CallError::Refused { code, .. } if code == "isr_change_refused");
    match (unknown_before, unknown_now, nothing_asked) {
        (_, true, _) | (true, _, true) => AlterFailure::AskAgain,
        (false, _, _) => AlterFailure::Forget,
        (true, false, false) if epochs_matched => AlterFailure::Forget,
        (true, false, false) => AlterFailure::AwaitMetadata,
    }
}

/// Makes a local replica act its new role: a leader stamps its leader epoch on appends and
/// gates `acks=all` on its ISR; a follower (or a replica of a partition without a leader)
/// refuses producers. Either way the replication layer moves the high watermark.
fn apply_role(change: &RoleChange) {
    let replica = &change.replica;
    match &change.after {
        Some(Role::Leader { leader_epoch, .. }) if replica.lost_data() => {
            // Records it acknowledged are missing from it (a flipped bit cut at recovery, or
            // not yet fetched back after a scrub cut them): leading would hand their offsets
            // out again. The partition stays without a working leader instead.
            replica.set_follower(true);
            replica.set_isr_gate(None);
            replica.set_hw_mode(HwMode::External);
            tracing::error!(
                topic = %change.topic,
                partition = change.partition.0,
                leader_epoch = leader_epoch.0,
                "cannot lead: this replica lost fsynced records it has not fetched back"
            );
        }
        Some(Role::Leader {
            leader_epoch,
            isr,
            min_insync_replicas,
            ..
        }) => {
            replica.set_hw_mode(HwMode::External);
            replica.set_isr_gate(Some(IsrGate {
                isr: isr.len() as u32,
                min_insync_replicas: *min_insync_replicas,
                leader_epoch: leader_epoch.0,
            }));
            match replica.set_leader_epoch(leader_epoch.0) {
                // A scrub cut it since the guard above looked: as the guard's arm.
                Ok(()) if !replica.take_lead() => {
                    replica.set_isr_gate(None);
                    tracing::error!(
                        topic = %change.topic,
                        partition = change.partition.0,
                        leader_epoch = leader_epoch.0,
                        "cannot lead: this replica lost fsynced records it has not fetched back"
                    );
                }
                Ok(()) => {}
                Err(e) => {
                    replica.set_follower(true);
                    tracing::error!(
                        topic = %change.topic,
                        partition = change.partition.0,
                        leader_epoch = leader_epoch.0,
                        "cannot lead: {e}"
                    );
                }
            }
        }
        Some(Role::Follower { .. } | Role::Offline) => {
            replica.set_follower(true);
            replica.set_isr_gate(None);
            replica.set_hw_mode(HwMode::External);
        }
        None => {}
    }
}

/// Waits for the next value of `rx`; forever once its sender is gone.
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// An answer refusing one partition of a fetch.
fn refusal(fetch: &PartitionFetch, error: FetchError) -> PartitionAnswer {
    PartitionAnswer {
        topic: fetch.topic.clone(),
        partition: fetch.partition,
        error: Some(error),
        high_watermark: Offset::ZERO,
        log_start_offset: Offset::ZERO,
        diverging: None,
        sync_now: false,
    }
}

fn labels(led: &Led) -> [(&'static str, String); 2] {
    [
        ("topic", led.topic.to_string()),
        ("partition", led.partition.to_string()),
    ]
}

/// The leader's view of a partition's replication: ISR size, under-replicated, lag.
fn publish_metrics(led: &Led) {
    let (isr, replicas) = led.isr_and_replicas();
    let l = labels(led);
    ::metrics::gauge!(m::ISR_SIZE, &l).set(isr as f64);
    ::metrics::gauge!(m::UNDER_REPLICATED, &l).set(if isr < replicas { 1.0 } else { 0.0 });
    for (follower, records, bytes) in led.follower_lags() {
        let l = [
            ("topic", led.topic.to_string()),
            ("partition", led.partition.to_string()),
            ("follower", follower.0.to_string()),
        ];
        ::metrics::gauge!(m::FOLLOWER_LAG_RECORDS, &l).set(records as f64);
        ::metrics::gauge!(m::FOLLOWER_LAG_BYTES, &l).set(bytes as f64);
    }
}

/// A leadership ended: its series stop (the next leader publishes its own).
fn forget_metrics(led: &Led) {
    let l = labels(led);
    ::metrics::gauge!(m::ISR_SIZE, &l).set(0.0);
    ::metrics::gauge!(m::UNDER_REPLICATED, &l).set(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, code: &str) -> CallError {
        CallError::Refused {
            status,
            code: code.into(),
            detail: String::new(),
        }
    }

    /// A refused ISR change is forgotten only while no attempt of it went unanswered: one
    /// that did may have committed, so the leader asks again (no answer, a timed-out
    /// proposal, no controller) or waits for the metadata (a refusal, which cannot say what
    /// became of the earlier attempt).
    #[test]
    fn an_isr_change_of_unknown_outcome_is_not_forgotten_on_a_later_refusal() {
        use AlterFailure::*;
        let unreachable = CallError::Unreachable("timed out".into());
        let timed_out = refused(504, "request_timeout");
        let conflict = refused(409, "metadata_conflict");
        let moved = refused(421, "not_controller");
        assert_eq!(after_alter_failure(false, &conflict), Forget);
        assert_eq!(after_alter_failure(false, &moved), Forget);
        assert_eq!(after_alter_failure(false, &unreachable), AskAgain);
        assert_eq!(after_alter_failure(false, &timed_out), AskAgain);
        assert_eq!(after_alter_failure(true, &unreachable), AskAgain);
        assert_eq!(after_alter_failure(true, &moved), AskAgain);
        assert_eq!(after_alter_failure(true, &conflict), AwaitMetadata);
        assert_eq!(
            after_alter_failure(true, &refused(409, "replica_fenced")),
            AwaitMetadata
        );
        // A member fenced or shutting down: refused with the epochs matching, so the
        // attempt of unknown outcome never committed (a rolling restart waited 30 s here).
        let refused_itself = refused(409, "isr_change_refused");
        assert_eq!(after_alter_failure(true, &refused_itself), Forget);
    }
}
