//! Idempotency keys: a produce sent with `Idempotency-Key: <key>` (and no producer session)
//! is answered once; a retry with the same key and the same request gets that answer again,
//! byte for byte, and writes nothing.
//!
//! Storage: the internal topic `__idempotency_keys` (one partition, cleanup by time: its
//! retention is the keys' lifetime plus a margin, so a key's answer is on disk as long as the
//! key is honoured). A stored answer is one batch: a record with the key and a JSON head
//! (fingerprint, time, status, headers, how many body chunks) followed by the answer's body in
//! chunks that each fit `record_bytes_max`. Memory holds per key only its fingerprint, the
//! offset of its head and the time it was stored (a few hundred bytes at most); a replay reads
//! the answer back from the log. On open the topic is replayed, so keys survive restarts.
//!
//! Invariants:
//! - At most `idempotency_keys_max` keys (stored and in progress) are kept; a new key past it
//!   is refused (`limit_exceeded`) until keys expire, so a client sending keys by the million
//!   cannot grow the broker's memory or disk.
//! - A key is in progress from the moment its request is admitted until its answer is
//!   durable (or released); a second request with it meanwhile is refused, so two concurrent
//!   requests with one key write once.
//! - An answer is stored only if the produce stored (or may have stored) records: a success,
//!   or a failure whose problem reports appended or unconfirmed records. A failure that wrote
//!   nothing releases the key, so a retry runs anew.
//! - Memory changes only after the answer is durable (`acks=all` on the topic).
//!
//! Known limit: the answer is written after the produce it answers, so a crash between the
//! two (or a failure to write it) leaves the records stored and the key unknown; a retry then
//! writes again. Producer sessions have no such window (their sequence is in the batch).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::broker::{Acks, Broker, BrokerError, ProduceRecord, Topic, now_ms};
use crate::config::{CleanupPolicy, TopicConfig};
use crate::coordination::{InternalTopicMaker, LoadId, LoadedFromLog, Residence};
use crate::limits::Limit;
use crate::log::Offset;
use crate::log::batch::RecordRef;
use crate::metadata::PartitionId;
use crate::metrics as m;

/// The internal topic holding keys and their answers.
pub const IDEMPOTENCY_KEYS_TOPIC: &str = "__idempotency_keys";
/// Longest key, in bytes (as the IETF draft's examples and common APIs allow).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// How much longer than the keys' lifetime the topic keeps their answers, so retention never
/// removes an answer a key in memory still points at.
const RETENTION_MARGIN_MS: i64 = 3_600_000;
const KEYS_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Room left in each body chunk for the record's key and framing.
const CHUNK_OVERHEAD_BYTES: u64 = 1024;

/// Checks a key: 1 to 255 visible ASCII characters (`!` to `~`).
pub fn validate_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        return Err("an Idempotency-Key is empty".into());
    }
    if key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(format!(
            "an Idempotency-Key is at most {IDEMPOTENCY_KEY_BYTES_MAX} characters, got {}",
            key.len()
        ));
    }
    if let Some(i) = key.iter().position(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "an Idempotency-Key is visible ASCII ('!' to '~'); character {} is not",
            i + 1
        ));
    }
    Ok(())
}

/// What tells a retry from another request under the same key: a CRC-32 and a 64-bit FNV-1a
/// of the request's parts (each prefixed by its length). Stable across versions, since it is
/// stored; not a defence against a client that forges collisions with its own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    crc: u32,
    fnv: u64,
}

impl Fingerprint {
    pub fn of(parts: &[&[u8]]) -> Fingerprint {
        let mut crc = crc32fast::Hasher::new();
        let mut fnv: u64 = 0xcbf2_9ce4_8422_2325;
        for part in parts {
            let len = (part.len() as u64).to_le_bytes();
            for bytes in [&len[..], part] {
                crc.update(bytes);
                for &b in bytes {
                    fnv ^= u64::from(b);
                    fnv = fnv.wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
        }
        Fingerprint {
            crc: crc.finalize(),
            fnv,
        }
    }

    fn to_hex(self) -> String {
        format!("{:08x}{:016x}", self.crc, self.fnv)
    }

    fn from_hex(s: &str) -> Option<Fingerprint> {
        if s.len() != 24 || !s.is_ascii() {
            return None;
        }
        Some(Fingerprint {
            crc: u32::from_str_radix(&s[..8], 16).ok()?,
            fnv: u64::from_str_radix(&s[8..], 16).ok()?,
        })
    }
}

/// An answer as stored and replayed: status, the headers that matter, the body's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a keyed request cannot run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The key was used for another request (`idempotency_key_reused`, 422).
    Reused,
    /// A request with the key is still running (`idempotency_key_in_progress`, 409).
    InProgress,
    /// `idempotency_keys_max` keys are kept.
    TooMany { limit: u32 },
}

/// What to do with a keyed request.
#[derive(Debug)]
pub enum Begin {
    /// First time (or the key expired): run it, then [`IdempotencyKeys::finish`].
    Run(KeyTicket),
    /// Answered before: replay this.
    Replay(StoredAnswer),
}

/// A key in progress. Dropped without [`IdempotencyKeys::finish`] (a failure that wrote
/// nothing, a panic), it releases the key.
#[derive(Debug)]
pub struct KeyTicket {
    keys: Arc<IdempotencyKeys>,
    key: String,
    fingerprint: Fingerprint,
    done: bool,
    /// The load that admitted it: another load's memory does not hold its key.
    load: LoadId,
}

impl Drop for KeyTicket {
    fn drop(&mut self) {
        if !self.done && self.keys.residence.is_current(self.load) {
            let mut s = self.keys.state();
            if matches!(s.entries.get(&self.key), Some(Entry::InProgress(_))) {
                s.entries.remove(&self.key);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    InProgress(Fingerprint),
    Stored(StoredKey),
}

#[derive(Debug, Clone, Copy)]
struct StoredKey {
    fingerprint: Fingerprint,
    /// Offset of the answer's head record in the topic.
    offset: u64,
    stored_ms: i64,
    /// Bytes of the answer's batch, roughly: what a replay reads.
    bytes: u64,
}

#[derive(Debug, Default)]
struct KeysState {
    entries: HashMap<String, Entry>,
    /// Stored keys by the time they were stored (log order), for expiry; an item whose entry
    /// was replaced since is skipped.
    by_time: VecDeque<(i64, u64, String)>,
}

impl KeysState {
    fn expire(&mut self, now: i64, lifetime_ms: i64) {
        while let Some((stored_ms, offset, _)) = self.by_time.front() {
            if now.saturating_sub(*stored_ms) < lifetime_ms {
                break;
            }
            let offset = *offset;
            let (_, _, key) = self.by_time.pop_front().expect("front exists");
            if matches!(self.entries.get(&key), Some(Entry::Stored(s)) if s.offset == offset) {
                self.entries.remove(&key);
            }
        }
    }

    fn insert_stored(&mut self, key: String, stored: StoredKey) {
        self.by_time
            .push_back((stored.stored_ms, stored.offset, key.clone()));
        self.entries.insert(key, Entry::Stored(stored));
    }
}

/// The head record of a stored answer.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    fingerprint: String,
    stored_ms: i64,
    status: u16,
    headers: Vec<(String, String)>,
    /// Records after the head holding the body, in order.
    chunks: u32,
    body_bytes: u64,
}

#[derive(Debug)]
pub struct IdempotencyKeys {
    broker: Arc<Broker>,
    /// std mutex: lookups and updates only, never held across `.await`.
    state: Mutex<KeysState>,
    /// Whether the keys are served here: always alone; on a cluster by the leader of
    /// `__idempotency_keys` once it replayed it.
    residence: Residence,
}

impl IdempotencyKeys {
    /// The keys over `broker`. Alone, `__idempotency_keys` is replayed at once (blocking
    /// reads; call before serving), keeping the keys still within their lifetime; on a
    /// cluster (`clustered`) nothing is served until this broker leads the topic and has
    /// replayed it ([`crate::coordination::follow_leadership`]).
    pub fn open(broker: Arc<Broker>, clustered: bool) -> Result<IdempotencyKeys, BrokerError> {
        let (state, residence) = if clustered {
            (
                KeysState::default(),
                Residence::member(IDEMPOTENCY_KEYS_TOPIC),
            )
        } else {
            (
                replay_keys(&broker)?,
                Residence::alone(IDEMPOTENCY_KEYS_TOPIC),
            )
        };
        let keys = IdempotencyKeys {
            broker,
            state: Mutex::new(state),
            residence,
        };
        keys.refresh_metrics();
        Ok(keys)
    }

    /// On a cluster: how `__idempotency_keys` is made (in the cluster's metadata) the first
    /// time a key needs it. Set once, by the node, before any request is served.
    pub fn make_topic_with(&self, maker: InternalTopicMaker) {
        self.residence.make_topic_with(maker);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, KeysState> {
        self.state
            .lock()
            .expect("the idempotency keys lock is poisoned only after a panic")
    }

    /// Admits a keyed request: run it (the key is now in progress), replay its stored
    /// answer, or refuse it.
    pub async fn begin(
        self: &Arc<Self>,
        key: &str,
        fingerprint: Fingerprint,
    ) -> Result<Begin, BrokerError> {
        let missing = match self.broker.topic(IDEMPOTENCY_KEYS_TOPIC) {
            Ok(_) => None,
            Err(_) => Some(keys_topic_config(&self.broker)),
        };
        let load = self.residence.ready(missing).await?;
        // Twice at most: a stored answer the log no longer holds makes the key expired.
        loop {
            let Some(stored) = self.admit(key, fingerprint)? else {
                return Ok(Begin::Run(KeyTicket {
                    keys: Arc::clone(self),
                    key: key.to_string(),
                    fingerprint,
                    done: false,
                    load,
                }));
            };
            if let Some(answer) = self.read_answer(key, stored).await? {
                ::metrics::counter!(m::IDEMPOTENT_REPLAYS).increment(1);
                return Ok(Begin::Replay(answer));
            }
            // Gone from the log (its retention was shortened): the key has expired.
            let mut s = self.state();
            if matches!(s.entries.get(key), Some(Entry::Stored(k)) if k.offset == stored.offset) {
                s.entries.remove(key);
            }
        }
    }

    /// Under the lock: the stored key to replay, or `None` once the key is in progress here.
    fn admit(&self, key: &str, fingerprint: Fingerprint) -> Result<Option<StoredKey>, BrokerError> {
        let mut s = self.state();
        s.expire(now_ms(), lifetime_ms(&self.broker));
        match s.entries.get(key) {
            Some(Entry::InProgress(f)) | Some(Entry::Stored(StoredKey { fingerprint: f, .. }))
                if *f != fingerprint =>
            {
                Err(key_error(KeyError::Reused))
            }
            Some(Entry::InProgress(_)) => Err(key_error(KeyError::InProgress)),
            Some(Entry::Stored(stored)) => Ok(Some(*stored)),
            None => {
                let max = self.broker.limits().idempotency_keys_max;
                if s.entries.len() >= max as usize {
                    return Err(key_error(KeyError::TooMany { limit: max }));
                }
                s.entries
                    .insert(key.to_string(), Entry::InProgress(fingerprint));
                Ok(None)
            }
        }
    }

    /// Stores `answer` for the ticket's key if `keep` (the produce stored or may have stored
    /// records), durably, before it is given; otherwise releases the key. A failure to store
    /// it releases the key too (logged): the answer is still given.
    pub async fn finish(&self, mut ticket: KeyTicket, answer: &StoredAnswer, keep: bool) {
        if !keep {
            return; // the ticket's drop releases the key
        }
        let stored_ms = now_ms();
        match self
            .append(&ticket.key, ticket.fingerprint, stored_ms, answer)
            .await
        {
            // Durable: a new leader replays it. Memory takes it where this broker serves the
            // keys: the admitting load's, or a later load here (this broker led again) whose
            // replay may have come before this record, and then would run every retry again.
            // A later load that holds the key already (its replay read this record, or a
            // retry it admitted runs) keeps what it holds.
            Ok(stored) if self.residence.serving().is_ok() => {
                let mut s = self.state();
                if self.residence.is_current(ticket.load) || !s.entries.contains_key(&ticket.key) {
                    s.insert_stored(ticket.key.clone(), stored);
                }
                ticket.done = true;
                drop(s);
                self.refresh_metrics();
            }
            Ok(_) => ticket.done = true,
            Err(e) => tracing::warn!(
                error = %e,
                "could not store the answer of an Idempotency-Key; a retry will run again"
            ),
        }
    }

    /// Keys kept (stored and in progress).
    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Expires old keys and publishes the gauge (the node's metrics task calls it).
    pub fn refresh_metrics(&self) {
        let kept = {
            let mut s = self.state();
            s.expire(now_ms(), lifetime_ms(&self.broker));
            s.entries.len()
        };
        ::metrics::gauge!(m::IDEMPOTENCY_KEYS).set(kept as f64);
        ::metrics::counter!(m::IDEMPOTENT_REPLAYS).increment(0);
    }

    async fn append(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        stored_ms: i64,
        answer: &StoredAnswer,
    ) -> Result<StoredKey, BrokerError> {
        let topic = keys_topic(&self.broker, self.residence.maker()).await?;
        let chunk_bytes = self
            .broker
            .limits()
            .record_bytes_max
            .saturating_sub(CHUNK_OVERHEAD_BYTES + key.len() as u64)
            .max(1) as usize;
        let chunks: Vec<&[u8]> = answer.body.chunks(chunk_bytes).collect();
        let head = serde_json::to_vec(&Head {
            fingerprint: fingerprint.to_hex(),
            stored_ms,
            status: answer.status,
            headers: answer.headers.clone(),
            chunks: chunks.len() as u32,
            body_bytes: answer.body.len() as u64,
        })
        .expect("a head serializes");
        let mut records = vec![key_record(key, &head, true, stored_ms)];
        records.extend(chunks.iter().map(|c| key_record(key, c, false, stored_ms)));
        let timeout = Duration::from_millis(self.broker.limits().wait_ms_max);
        let outcome = self
            .broker
            .produce(&topic, &records, Acks::All, timeout)
            .await?;
        let offset = outcome.offsets.first().map_or(0, |&(_, o)| o.0);
        Ok(StoredKey {
            fingerprint,
            offset,
            stored_ms,
            bytes: batch_bytes_estimate(key.len(), answer.body.len() as u64, chunks.len() as u32),
        })
    }

    /// Reads a stored answer back; `None` if the log no longer holds it.
    async fn read_answer(
        &self,
        key: &str,
        stored: StoredKey,
    ) -> Result<Option<StoredAnswer>, BrokerError> {
        let topic = match self.broker.topic(IDEMPOTENCY_KEYS_TOPIC) {
            Ok(topic) => topic,
            Err(BrokerError::TopicNotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let partition = topic.partition(PartitionId(0))?;
        let key = key.to_string();
        // Past the batch itself, a read may start up to an index interval (and a batch)
        // before it: start with room for that and double while the answer is cut.
        let cap = self
            .broker
            .limits()
            .request_body_bytes_max
            .saturating_mul(2);
        let mut max_bytes = stored.bytes + 256 * 1024;
        loop {
            let p = Arc::clone(&partition);
            let key = key.clone();
            let read = tokio::task::spawn_blocking(move || {
                read_answer_at(&p, &key, stored.offset, max_bytes)
            })
            .await
            .map_err(|e| BrokerError::Io(e.to_string()))?;
            match read {
                Ok(Read::Whole(answer)) => return Ok(Some(answer)),
                Ok(Read::Cut) if max_bytes < cap => max_bytes = max_bytes.saturating_mul(2),
                Ok(Read::Cut) | Ok(Read::Missing) => return Ok(None),
                Err(BrokerError::OffsetOutOfRange { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

enum Read {
    Whole(StoredAnswer),
    /// The read ended before the answer's last chunk.
    Cut,
    Missing,
}

fn read_answer_at(
    partition: &crate::broker::Partition,
    key: &str,
    offset: u64,
    max_bytes: u64,
) -> Result<Read, BrokerError> {
    let fetched = partition.fetch_blocking(Offset(offset), u32::MAX, max_bytes)?;
    let mut head: Option<Head> = None;
    let mut body = Vec::new();
    let mut seen = 0u32;
    let mut bad = false;
    fetched.for_each_record(|r| {
        let in_answer = match &head {
            None => r.offset == offset,
            Some(h) => seen < h.chunks,
        };
        if !in_answer || bad {
            return Ok(());
        }
        if r.key != Some(key.as_bytes()) {
            bad = true;
            return Ok(());
        }
        let value = r.value.unwrap_or_default();
        match &head {
            None => match serde_json::from_slice::<Head>(value) {
                Ok(h) => head = Some(h),
                Err(_) => bad = true,
            },
            Some(_) => {
                body.extend_from_slice(value);
                seen += 1;
            }
        }
        Ok(())
    })?;
    Ok(match head {
        _ if bad => Read::Missing,
        None => Read::Cut,
        Some(h) if seen < h.chunks => Read::Cut,
        Some(h) => Read::Whole(StoredAnswer {
            status: h.status,
            headers: h.headers,
            body,
        }),
    })
}

fn key_record<'r>(key: &'r str, value: &'r [u8], is_json: bool, at_ms: i64) -> ProduceRecord<'r> {
    ProduceRecord {
        partition: Some(PartitionId(0)),
        record: RecordRef {
            timestamp_ms: at_ms,
            key: Some(key.as_bytes()),
            key_is_utf8: true,
            value: Some(value),
            value_is_json: is_json,
            headers: &[],
        },
    }
}

fn batch_bytes_estimate(key_bytes: usize, body_bytes: u64, chunks: u32) -> u64 {
    let per_record = 64 + key_bytes as u64;
    61 + 1024 + body_bytes + u64::from(chunks + 1) * per_record
}

fn lifetime_ms(broker: &Broker) -> i64 {
    i64::try_from(broker.limits().idempotency_key_lifetime_ms).unwrap_or(i64::MAX)
}

fn key_error(e: KeyError) -> BrokerError {
    match e {
        KeyError::Reused => BrokerError::IdempotencyKeyReused,
        KeyError::InProgress => BrokerError::IdempotencyKeyInProgress,
        KeyError::TooMany { limit } => BrokerError::LimitExceeded {
            limit_name: Limit::IdempotencyKeysMax,
            limit: u64::from(limit),
            detail: format!(
                "the broker keeps {limit} idempotency keys; new ones are refused until some \
                 expire"
            ),
        },
    }
}

/// `__idempotency_keys`' config: deleted by time, kept past the keys' lifetime.
fn keys_topic_config(broker: &Broker) -> TopicConfig {
    TopicConfig {
        retention_ms: lifetime_ms(broker).saturating_add(RETENTION_MARGIN_MS),
        retention_bytes: -1,
        cleanup_policy: CleanupPolicy::Delete,
        segment_bytes: KEYS_SEGMENT_BYTES,
        ..broker.config.topic_defaults
    }
}

/// The `__idempotency_keys` topic, created on first use: here (internal), or by `maker` on
/// a cluster.
async fn keys_topic(
    broker: &Broker,
    maker: Option<&InternalTopicMaker>,
) -> Result<Arc<Topic>, BrokerError> {
    match broker.topic(IDEMPOTENCY_KEYS_TOPIC) {
        Err(BrokerError::TopicNotFound(_)) => {}
        other => return other,
    }
    let config = keys_topic_config(broker);
    if let Some(maker) = maker {
        (maker.0)(IDEMPOTENCY_KEYS_TOPIC, config).await?;
        return broker.topic(IDEMPOTENCY_KEYS_TOPIC);
    }
    match broker
        .create_topic(IDEMPOTENCY_KEYS_TOPIC, 1, config, true)
        .await
    {
        Err(BrokerError::TopicExists(_)) => broker.topic(IDEMPOTENCY_KEYS_TOPIC),
        other => other,
    }
}

/// The keys within their lifetime, replayed from `__idempotency_keys` (blocking reads); the
/// oldest go first when there are more than `idempotency_keys_max` (a lower limit than
/// before a restart).
fn replay_keys(broker: &Broker) -> Result<KeysState, BrokerError> {
    let mut state = KeysState::default();
    let now = now_ms();
    let lifetime = lifetime_ms(broker);
    super::replay_topic(broker, IDEMPOTENCY_KEYS_TOPIC, |key, offset, value| {
        let Ok(head) = serde_json::from_slice::<Head>(value) else {
            return; // a body chunk
        };
        let (Ok(key), Some(fingerprint)) = (
            std::str::from_utf8(key),
            Fingerprint::from_hex(&head.fingerprint),
        ) else {
            tracing::warn!("skipping a bad record in {IDEMPOTENCY_KEYS_TOPIC}");
            return;
        };
        if now.saturating_sub(head.stored_ms) < lifetime {
            state.insert_stored(
                key.to_string(),
                StoredKey {
                    fingerprint,
                    offset,
                    stored_ms: head.stored_ms,
                    bytes: batch_bytes_estimate(key.len(), head.body_bytes, head.chunks),
                },
            );
        }
    })?;
    let max = broker.limits().idempotency_keys_max as usize;
    while state.entries.len() > max {
        let Some((_, _, key)) = state.by_time.pop_front() else {
            break;
        };
        state.entries.remove(&key);
    }
    Ok(state)
}

impl LoadedFromLog for IdempotencyKeys {
    fn residence(&self) -> &Residence {
        &self.residence
    }

    fn drop_state(&self) {
        *self.state() = KeysState::default();
        self.refresh_metrics();
    }

    fn replay(self: &Arc<Self>) -> Result<Box<dyn FnOnce(LoadId) + Send>, BrokerError> {
        let state = replay_keys(&self.broker)?;
        let me = Arc::clone(self);
        Ok(Box::new(move |_| {
            tracing::info!(keys = state.entries.len(), "idempotency keys loaded");
            *me.state() = state;
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keyed produce admitted under one load of the keys, whose answer is stored after this
    /// broker led the keys' partition again and loaded them before that record was written:
    /// the later load takes the answer, so a retry replays it rather than running again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_stored_after_this_broker_loaded_the_keys_again_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(crate::config::BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .await
        .unwrap();
        let keys = Arc::new(IdempotencyKeys::open(broker, true).unwrap());
        assert!(keys.residence().lead(1));
        assert!(keys.residence().loaded(1, |_| {}));
        let fingerprint = Fingerprint::of(&[b"POST /v1/topics/t/records", b"{}"]);
        let Begin::Run(ticket) = keys.begin("k", fingerprint).await.unwrap() else {
            panic!("a new key runs");
        };
        // Led again in a later epoch: the state is dropped and loaded again (before the
        // answer below was written, so the load holds nothing of it).
        keys.drop_state();
        assert!(keys.residence().lead(2));
        assert!(keys.residence().loaded(2, |_| {}));
        let answer = StoredAnswer {
            status: 200,
            headers: Vec::new(),
            body: b"{\"offsets\":[]}".to_vec(),
        };
        keys.finish(ticket, &answer, true).await;
        match keys.begin("k", fingerprint).await.unwrap() {
            Begin::Replay(replayed) => assert_eq!(replayed.body, answer.body),
            Begin::Run(_) => panic!("the retry ran again"),
        }
    }

    #[test]
    fn keys_are_one_to_255_visible_ascii_characters() {
        assert!(validate_key(b"a").is_ok());
        assert!(validate_key(b"order-17/retry:~!").is_ok());
        assert!(validate_key(&[b'x'; 255]).is_ok());
        for bad in [
            &b""[..],
            &[b'x'; 256],
            b"a b",
            b"tab\there",
            "é".as_bytes(),
            b"\x7f",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_tell_parts_apart_and_read_back_from_hex() {
        let a = Fingerprint::of(&[b"ab", b"c"]);
        assert_ne!(a, Fingerprint::of(&[b"a", b"bc"]), "lengths are hashed too");
        assert_ne!(a, Fingerprint::of(&[b"ab", b"d"]));
        assert_eq!(a, Fingerprint::of(&[b"ab", b"c"]));
        assert_eq!(Fingerprint::from_hex(&a.to_hex()), Some(a));
        assert_eq!(Fingerprint::from_hex("zz"), None);
    }

    #[test]
    fn expiry_removes_old_keys_in_time_order_but_not_a_newer_use_of_the_key() {
        let fp = Fingerprint::of(&[b"x"]);
        let stored = |offset, stored_ms| StoredKey {
            fingerprint: fp,
            offset,
            stored_ms,
            bytes: 0,
        };
        let mut s = KeysState::default();
        s.insert_stored("a".into(), stored(0, 1_000));
        s.insert_stored("b".into(), stored(2, 2_000));
        // "a" expired and was used again later.
        s.insert_stored("a".into(), stored(4, 5_000));
        s.expire(3_500, 1_000);
        assert!(s.entries.contains_key("a"), "the newer use of 'a' stays");
        assert!(!s.entries.contains_key("b"));
        s.expire(6_000, 1_000);
        assert!(s.entries.is_empty());
        assert!(s.by_time.is_empty());
    }
}
