//! Broker liveness as the controller sees it: heartbeats in, fence and unfence commands out.
//! Pure: times are milliseconds of the controller's monotonic clock, passed in.
//!
//! Rules (CLUSTER.md):
//! - A broker heartbeats with its broker epoch; a heartbeat from an older incarnation is
//!   refused (the process must register again).
//! - An unfenced broker silent for `broker_session_timeout_ms` is fenced.
//! - A new controller leader knows no heartbeat times: it grants every broker a full session
//!   from the moment it took over before it fences anyone, so a controller failover never
//!   fences brokers en masse.
//! - A fenced broker that is not shutting down is unfenced once it heartbeats on its current
//!   epoch and says it has caught up with the metadata.
//! - A broker that says it stopped (the end of a controlled shutdown) ends its session at
//!   once: it is no longer alive, so its next process registers without waiting for the
//!   session timeout.

use std::collections::BTreeMap;

use crate::metadata::{BrokerEpoch, Command, MetadataImage, NodeId};

/// Why a heartbeat was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatError {
    /// The broker never registered (or registered with a controller whose log was lost).
    UnknownBroker(NodeId),
    /// The heartbeat comes from an older incarnation: it must register again.
    StaleBrokerEpoch { current: BrokerEpoch },
}

/// The controller leader's session table.
#[derive(Debug, Clone)]
pub struct Sessions {
    timeout_ms: u64,
    /// Before this time nobody is fenced: the full session a new leader grants.
    grace_until_ms: u64,
    /// The last heartbeat of each broker on its current epoch.
    last: BTreeMap<NodeId, Heartbeat>,
}

#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    epoch: BrokerEpoch,
    at_ms: u64,
    caught_up: bool,
}

impl Sessions {
    /// The table of a controller that became leader at `now_ms`.
    pub fn new(timeout_ms: u64, now_ms: u64) -> Sessions {
        Sessions {
            timeout_ms,
            grace_until_ms: now_ms.saturating_add(timeout_ms),
            last: BTreeMap::new(),
        }
    }

    /// Records a heartbeat. `caught_up`: the broker has applied the metadata up to what the
    /// controller last told it.
    pub fn heartbeat(
        &mut self,
        image: &MetadataImage,
        node: NodeId,
        epoch: BrokerEpoch,
        caught_up: bool,
        now_ms: u64,
    ) -> Result<(), HeartbeatError> {
        let broker = image
            .brokers
            .get(&node)
            .ok_or(HeartbeatError::UnknownBroker(node))?;
        if broker.broker_epoch != epoch {
            return Err(HeartbeatError::StaleBrokerEpoch {
                current: broker.broker_epoch,
            });
        }
        let beat = Heartbeat {
            epoch,
            at_ms: now_ms,
            caught_up,
        };
        self.last.insert(node, beat);
        Ok(())
    }

    /// Ends the session of `node`'s incarnation `epoch`: its process said it stopped (and
    /// heartbeats no more). Refused like a heartbeat for an unknown node or an older epoch.
    pub fn end(
        &mut self,
        image: &MetadataImage,
        node: NodeId,
        epoch: BrokerEpoch,
    ) -> Result<(), HeartbeatError> {
        let broker = image
            .brokers
            .get(&node)
            .ok_or(HeartbeatError::UnknownBroker(node))?;
        if broker.broker_epoch != epoch {
            return Err(HeartbeatError::StaleBrokerEpoch {
                current: broker.broker_epoch,
            });
        }
        self.last.remove(&node);
        Ok(())
    }

    /// Whether `node`'s current incarnation heartbeated within the session timeout: another
    /// process registering under its id while it is alive is refused (two processes with
    /// one node id).
    pub fn is_alive(&self, image: &MetadataImage, node: NodeId, now_ms: u64) -> bool {
        let Some(broker) = image.brokers.get(&node) else {
            return false;
        };
        self.last.get(&node).is_some_and(|h| {
            h.epoch == broker.broker_epoch && now_ms.saturating_sub(h.at_ms) <= self.timeout_ms
        })
    }

    /// The fence and unfence commands due at `now_ms`, in node order.
    pub fn decisions(&self, image: &MetadataImage, now_ms: u64) -> Vec<Command> {
        let mut commands = Vec::new();
        for b in image.brokers.values() {
            let beat = self
                .last
                .get(&b.node_id)
                .filter(|h| h.epoch == b.broker_epoch);
            let alive = beat.is_some_and(|h| now_ms.saturating_sub(h.at_ms) <= self.timeout_ms);
            let in_grace = now_ms < self.grace_until_ms;
            if !b.fenced && !alive && !in_grace {
                commands.push(Command::FenceBroker {
                    node_id: b.node_id,
                    broker_epoch: b.broker_epoch,
                });
            } else if b.fenced && !b.shutting_down && alive && beat.is_some_and(|h| h.caught_up) {
                commands.push(Command::UnfenceBroker {
                    node_id: b.node_id,
                    broker_epoch: b.broker_epoch,
                });
            }
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::metadata::Outcome;

    const TIMEOUT: u64 = 6_000;

    fn registered(count: u32) -> MetadataImage {
        let mut image = MetadataImage::default();
        for id in 1..=count {
            let command = Command::RegisterBroker {
                node_id: NodeId(id),
                address: String::new(),
                incarnation: 1,
                data_lost: false,
            };
            let index = image.applied + 1;
            image.apply(index, &command).unwrap();
        }
        image
    }

    fn apply_all(image: &mut MetadataImage, commands: &[Command]) {
        for c in commands {
            let index = image.applied + 1;
            image.apply(index, c).unwrap();
        }
    }

    fn epoch(image: &MetadataImage, id: u32) -> BrokerEpoch {
        image.brokers[&NodeId(id)].broker_epoch
    }

    #[test]
    fn a_broker_caught_up_is_unfenced_and_a_silent_one_fenced_after_the_grace() {
        let mut image = registered(2);
        let mut s = Sessions::new(TIMEOUT, 0);
        s.heartbeat(&image, NodeId(1), epoch(&image, 1), false, 100)
            .unwrap();
        assert!(s.decisions(&image, 100).is_empty(), "not caught up yet");
        s.heartbeat(&image, NodeId(1), epoch(&image, 1), true, 200)
            .unwrap();
        s.heartbeat(&image, NodeId(2), epoch(&image, 2), true, 200)
            .unwrap();
        let unfence = s.decisions(&image, 200);
        assert_eq!(unfence.len(), 2);
        apply_all(&mut image, &unfence);
        s.heartbeat(&image, NodeId(1), epoch(&image, 1), true, 6_000)
            .unwrap();
        assert!(
            s.decisions(&image, 6_200).is_empty(),
            "2 heartbeated at 200: alive until 6,200"
        );
        let fence = s.decisions(&image, 6_201);
        assert_eq!(
            fence,
            vec![Command::FenceBroker {
                node_id: NodeId(2),
                broker_epoch: epoch(&image, 2)
            }]
        );
    }

    #[test]
    fn a_new_controller_fences_nobody_before_a_full_session() {
        let mut image = registered(3);
        let everyone: Vec<Command> = (1..=3)
            .map(|id| Command::UnfenceBroker {
                node_id: NodeId(id),
                broker_epoch: epoch(&image, id),
            })
            .collect();
        apply_all(&mut image, &everyone);
        let s = Sessions::new(TIMEOUT, 50_000);
        assert!(s.decisions(&image, 50_000 + TIMEOUT - 1).is_empty());
        assert_eq!(s.decisions(&image, 50_000 + TIMEOUT).len(), 3);
    }

    #[test]
    fn heartbeats_of_an_old_incarnation_are_refused_and_keep_nothing_alive() {
        let mut image = registered(1);
        let old = epoch(&image, 1);
        let mut s = Sessions::new(TIMEOUT, 0);
        s.heartbeat(&image, NodeId(1), old, true, 10).unwrap();
        let restart = Command::RegisterBroker {
            node_id: NodeId(1),
            address: String::new(),
            incarnation: 2,
            data_lost: false,
        };
        let index = image.applied + 1;
        let Ok(Outcome::Registered { broker_epoch }) = image.apply(index, &restart) else {
            panic!("registration refused");
        };
        assert_eq!(
            s.heartbeat(&image, NodeId(1), old, true, 20),
            Err(HeartbeatError::StaleBrokerEpoch {
                current: broker_epoch
            })
        );
        assert!(
            s.decisions(&image, 20).is_empty(),
            "the old heartbeat unfences nothing"
        );
        assert!(
            !s.is_alive(&image, NodeId(1), 20),
            "the old incarnation's heartbeat does not count for the new one"
        );
        s.heartbeat(&image, NodeId(1), broker_epoch, false, 30)
            .unwrap();
        assert!(s.is_alive(&image, NodeId(1), 30 + TIMEOUT));
        assert!(!s.is_alive(&image, NodeId(1), 31 + TIMEOUT));
        assert_eq!(
            s.heartbeat(&image, NodeId(9), old, true, 20),
            Err(HeartbeatError::UnknownBroker(NodeId(9)))
        );
    }

    #[test]
    fn a_stopped_broker_is_not_alive_and_is_fenced_at_once() {
        let mut image = registered(2);
        let everyone: Vec<Command> = (1..=2)
            .map(|id| Command::UnfenceBroker {
                node_id: NodeId(id),
                broker_epoch: epoch(&image, id),
            })
            .collect();
        apply_all(&mut image, &everyone);
        let mut s = Sessions::new(TIMEOUT, 0);
        for id in 1..=2 {
            s.heartbeat(&image, NodeId(id), epoch(&image, id), true, 7_000)
                .unwrap();
        }
        assert!(s.is_alive(&image, NodeId(2), 7_001));
        let stale = BrokerEpoch(epoch(&image, 2).0 - 1);
        assert_eq!(
            s.end(&image, NodeId(2), stale),
            Err(HeartbeatError::StaleBrokerEpoch {
                current: epoch(&image, 2)
            })
        );
        assert!(
            s.is_alive(&image, NodeId(2), 7_001),
            "a stale end ends nothing"
        );
        s.end(&image, NodeId(2), epoch(&image, 2)).unwrap();
        assert!(!s.is_alive(&image, NodeId(2), 7_001));
        assert_eq!(
            s.decisions(&image, 7_001),
            vec![Command::FenceBroker {
                node_id: NodeId(2),
                broker_epoch: epoch(&image, 2)
            }],
            "fenced at once, not a session later"
        );
        assert_eq!(
            s.end(&image, NodeId(9), epoch(&image, 2)),
            Err(HeartbeatError::UnknownBroker(NodeId(9)))
        );
    }

    proptest! {
        /// Whatever the heartbeat times: nobody is fenced during the grace, an unfenced
        /// broker is fenced exactly when its last heartbeat is older than the timeout, and
        /// a broker is unfenced only right after a caught-up heartbeat.
        #[test]
        fn fencing_follows_the_last_heartbeat(
            start in 0..10_000u64,
            beats in proptest::collection::vec((1..4u32, 0..4_000u64, any::<bool>()), 0..40),
        ) {
            let mut image = registered(3);
            let mut s = Sessions::new(TIMEOUT, start);
            let mut now = start;
            let mut last: BTreeMap<u32, u64> = BTreeMap::new();
            for (id, gap, caught_up) in beats {
                now += gap;
                s.heartbeat(&image, NodeId(id), epoch(&image, id), caught_up, now).unwrap();
                last.insert(id, now);
                let commands = s.decisions(&image, now);
                for c in &commands {
                    match c {
                        Command::FenceBroker { node_id, .. } => {
                            prop_assert!(now >= start + TIMEOUT);
                            let silent_since = last.get(&node_id.0).copied();
                            prop_assert!(silent_since.is_none_or(|t| now - t > TIMEOUT));
                        }
                        Command::UnfenceBroker { node_id, .. } => {
                            prop_assert!(last.get(&node_id.0).is_some_and(|t| now - t <= TIMEOUT));
                        }
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                apply_all(&mut image, &commands);
                for b in image.brokers.values().filter(|b| !b.fenced) {
                    let heard = last.get(&b.node_id.0).is_some_and(|t| now - t <= TIMEOUT);
                    prop_assert!(heard || now < start + TIMEOUT, "{:?} silent yet unfenced", b.node_id);
                }
            }
        }
    }
}
