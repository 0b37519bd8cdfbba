//! The replica scrub (issue 9 item 7): every local replica's stored batches are read back
//! and checked against their CRCs, once when the broker starts (or a replica is first held
//! here) and then every `replica_scrub_interval_ms`. Recovery checks only what follows the
//! recovery checkpoint, and a clean start trusts the segments; a flipped bit below that is
//! found here.
//!
//! What a damaged replica does:
//! - A follower cuts its log at the first damaged batch ([`Partition::cut_damaged`], below
//!   its high watermark if it must: the high watermark drops with it, so the damaged range
//!   is never served from it) and fetches the records again from its leader. Its next fetch
//!   asks for an offset below the leader's high watermark, which takes it out of the ISR at
//!   once (`isr`); it joins again once it has fsynced up to the high watermark.
//! - A leader (or a replica of a partition without one) stops taking writes: it cannot
//!   fetch the records back, and cutting them would hand their offsets out again.
//!
//! Until its first check is done a follower does not fetch (`fetcher`), so a replica never
//! rejoins the ISR with damage below its log end, and its high watermark (which drops to
//! its log start when replication takes it over) stays there, so `replica=local` serves
//! nothing of it meanwhile. The checks run one replica at a time, on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::manager::{LocalReplica, ReplicaManager, Role};
use crate::broker::Broker;

/// After a check failed (an I/O error), the pause before the replicas still unchecked are
/// tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Checks the local replicas until shutdown: those not checked yet whenever the roles
/// change, all of them every `every`.
pub async fn run(broker: Arc<Broker>, manager: Arc<ReplicaManager>, every: Duration) {
    let mut roles = manager.subscribe();
    let mut shutdown = broker.shutdown_signal();
    let mut next_full = Instant::now() + every;
    loop {
        roles.borrow_and_update();
        let mut unchecked = false;
        for r in manager.all() {
            if *shutdown.borrow() {
                return;
            }
            if !r.replica.scrubbed() {
                check(&manager, &r).await;
                unchecked |= !r.replica.scrubbed();
            }
        }
        if Instant::now() >= next_full {
            for r in manager.all() {
                if *shutdown.borrow() {
                    return;
                }
                check(&manager, &r).await;
            }
            next_full = Instant::now() + every;
        }
        let wake = if unchecked {
            next_full.min(Instant::now() + RETRY_AFTER)
        } else {
            next_full
        };
        tokio::select! {
            changed = roles.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Checks one replica and acts on the damage found, if any. A replica that stopped taking
/// writes is left alone (a leader found damaged stays so until an operator steps in).
///
/// The check reads the whole replica first, and its role may change meanwhile: the action
/// follows the role the replica has when the damage is found, not the one it had when the
/// pass listed it, and the cut itself is refused under the log lock if the replica leads by
/// then ([`Partition::cut_damaged`], [`Partition::take_lead`]).
///
/// [`Partition::cut_damaged`]: crate::broker::Partition::cut_damaged
/// [`Partition::take_lead`]: crate::broker::Partition::take_lead
async fn check(manager: &ReplicaManager, r: &LocalReplica) {
    if r.replica.failure().is_some() {
        return;
    }
    let found = match r.replica.scrub().await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(topic = %r.topic, partition = r.partition.0, "replica scrub: {e}");
            return;
        }
    };
    let Some(offset) = found else {
        return;
    };
    // The same replica still, in whatever role it has now (gone: nothing to do).
    let now = manager
        .replica(&r.topic, r.partition)
        .filter(|now| Arc::ptr_eq(&now.replica, &r.replica));
    let Some(now) = now else {
        return;
    };
    match now.role {
        Role::Follower { .. } => match r.replica.cut_damaged(offset).await {
            Ok(Some(_)) => {}
            // It took the lead since: damage in a leader stops its writes.
            Ok(None) => {
                r.replica.fail_damaged(offset);
            }
            Err(e) => {
                tracing::error!(
                    topic = %r.topic,
                    partition = r.partition.0,
                    offset = offset.0,
                    "cutting a damaged replica: {e}"
                );
            }
        },
        Role::Leader { .. } | Role::Offline => {
            r.replica.fail_damaged(offset);
        }
    }
}
