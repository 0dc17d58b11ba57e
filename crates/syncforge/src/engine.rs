//! The sync engine: its state, its clock, and the one read-merge-write loop
//! every write goes through.
//!
//! Local puts, deletes, syncs and imports all become *intents* on records
//! ([`Intent`]). A batch of them is read from the store (one `get_many`;
//! [`SyncEngine::apply_in_batches`] reads each batch while the one before it
//! is written), and [`SyncEngine::apply`] computes each new state in core (a
//! stamped put, a tombstone, a merge), writes them back conditionally (one
//! `put_batch`), and re-reads and re-applies the intents whose write lost a
//! race with another writer, until each is written, unchanged, or the race
//! budget is spent. The public operations on top of it live in
//! [`crate::collection`].

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join;
use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use syncforge_core::{
    classify, dedupe, merge, Causality, ChangeKind, ClientId, CollectionName, ConflictDetail,
    Content, Cursor, Error, Hlc, IfAbsent, Record, RecordId, Result, Stamp, StorageBackend, Stored,
    TimeSource, Write, WriteOutcome, MAX_RECEIVED_VERSION,
};
use tokio::task::JoinHandle;
use tracing::field::Empty;
use tracing::Instrument;

use crate::backends::STORE_ID_KEY;
use crate::config::Config;
use crate::distinct::all_distinct;
use crate::events::{EventKind, EventReceiver, Events, SyncEvent, SyncTrigger};
use crate::peer::SyncPeer;
use crate::result::SyncResult;
use crate::retry::{retry_transient, retry_transient_now, timer};

/// How many times one write is re-read and applied again after losing a
/// race against another writer before giving up with [`Error::Precondition`].
const MAX_RACE_ATTEMPTS: u32 = 64;
/// Races a write may lose in a row before it waits between attempts (see
/// [`race_back_off`]).
const FREE_RACE_ROUNDS: u32 = 3;
/// How long [`SyncEngine::close`] waits at most for an auto-sync window it
/// cancelled to stop.
const WINDOW_STOP_WAIT: Duration = Duration::from_secs(10);

/// The events a confirmed write may emit.
const WRITE_EVENTS: [EventKind; 4] = [
    EventKind::Conflict,
    EventKind::RecordAdded,
    EventKind::RecordUpdated,
    EventKind::RecordDeleted,
];

/// The most feed positions of echoes one sync collects. Past it an echo is
/// pushed back to the peer that sent it, which finds it unchanged: nothing
/// is lost, and the first sync of a huge collection does not keep a
/// position for every record it pulled.
const MAX_ECHOES: usize = 1 << 20;

/// Synchronises JSON records between replicas over a pluggable backend.
///
/// Cheap to clone: clones share one engine. Most work goes through a
/// [`Collection`](crate::Collection) handle ([`collection`](Self::collection));
/// the engine also offers every operation by collection name.
#[derive(Clone)]
pub struct SyncEngine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: Config,
    backend: Arc<dyn StorageBackend>,
    /// Identifies this store's change-feed numbering (see [`SyncPeer::feed_id`]).
    store_id: String,
    clock: Mutex<Hlc>,
    time: Arc<dyn TimeSource>,
    closed: AtomicBool,
    /// Whether the backend's `close` succeeded: a failed one is tried
    /// again by the next [`SyncEngine::close`].
    store_closed: AtomicBool,
    /// Held by a [`SyncEngine::close`] for its whole length: a second close
    /// waits for the first instead of returning while a window still runs.
    closing: tokio::sync::Mutex<()>,
    events: Events,
    /// The auto-sync timer task, when it runs.
    pub(crate) timer: Mutex<Option<JoinHandle<()>>>,
    /// Timer tasks `stop_auto_sync` cancelled, which [`SyncEngine::close`]
    /// waits for (those that ended are dropped at the next stop).
    pub(crate) stopped: Mutex<Vec<JoinHandle<()>>>,
    /// The peers each auto-sync window syncs with.
    pub(crate) peers: Mutex<Vec<Arc<dyn SyncPeer>>>,
    /// One lock per peer and collection being synced, so that two syncs of
    /// one peer and collection (an auto-sync window and a call, say) run one
    /// after the other.
    pub(crate) peer_syncs: Mutex<PeerSyncLocks>,
    /// The peers and collections whose refused records this engine has
    /// offered again (once per engine: see `sync_with`).
    pub(crate) reoffered: Mutex<std::collections::HashSet<(String, CollectionName)>>,
}

/// The locks of the peer syncs under way, by peer id and collection; a lock
/// nobody holds any more is forgotten when the next one is made.
pub(crate) type PeerSyncLocks =
    std::collections::HashMap<(String, CollectionName), std::sync::Weak<tokio::sync::Mutex<()>>>;

impl Drop for Inner {
    fn drop(&mut self) {
        // The engine is gone: stop the timer now rather than at its next tick.
        if let Some(timer) = self.timer.get_mut().take() {
            timer.abort();
        }
        for stopped in self.stopped.get_mut().drain(..) {
            stopped.abort();
        }
    }
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("config", &self.inner.config)
            .field("backend", &self.inner.backend.name())
            .finish_non_exhaustive()
    }
}

/// What a write of one record means to do. It is applied to the record's
/// stored state on every attempt, so a write that lost a race is applied
/// again to the state that won.
pub(crate) enum Intent {
    /// Replace the visible content (a local put).
    Put(Content),
    /// Soft-delete (a local delete).
    Delete,
    /// Merge a record from another replica (a sync).
    Merge(Record),
    /// Store exactly this state (an import).
    Replace(Record),
}

/// The kind of an [`Intent`]: with the state its write meant to store (and,
/// for a merge, the record received), all that is needed to rebuild it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IntentKind {
    Put,
    Delete,
    Merge,
    Replace,
}

impl Intent {
    fn kind(&self) -> IntentKind {
        match self {
            Intent::Put(_) => IntentKind::Put,
            Intent::Delete => IntentKind::Delete,
            Intent::Merge(_) => IntentKind::Merge,
            Intent::Replace(_) => IntentKind::Replace,
        }
    }
}

impl IntentKind {
    /// The intent to apply again after its write of `intended` lost a race.
    /// For a put, the content to apply is the visible content of what it
    /// meant to store, which is exactly what was put; a merge merges the
    /// incoming record again (`incoming`: kept when the merge had a stored
    /// record to merge it with; otherwise `intended` is the incoming record
    /// as received); an import stores the same state again.
    ///
    /// A merge does not go on from its merged state: that holds the stored
    /// record it read, and the state that won the race may have dropped it
    /// (a hard delete or a clear between the read and the write), which
    /// merging it again would bring back.
    fn again(self, intended: &Record, incoming: Option<&Record>) -> Result<Intent> {
        Ok(match self {
            IntentKind::Put => Intent::Put(Content::from_value(serde_json::Value::Object(
                intended.content(),
            ))?),
            IntentKind::Delete => Intent::Delete,
            IntentKind::Merge => Intent::Merge(incoming.unwrap_or(intended).clone()),
            IntentKind::Replace => Intent::Replace(intended.clone()),
        })
    }
}

/// The conflict found merging the states of one id given twice or more in
/// one call (at most one an id, see [`dedupe`]), by id, until the write of
/// their merge reports it ([`SyncEngine::apply_in_batches`]).
pub(crate) type InBatchConflicts = std::collections::HashMap<RecordId, ConflictDetail>;

/// How one intent ended.
#[derive(Debug)]
pub(crate) struct Applied {
    /// What it did to the record.
    pub(crate) kind: ChangeKind,
    /// The record as stored afterwards (`None`: a delete of an unknown id).
    pub(crate) record: Option<Record>,
    /// Set when the incoming record was written concurrently with the stored
    /// one. Boxed: conflicts are rare, and an outcome that carried one inline
    /// was four times the size, copied several times per record.
    pub(crate) conflict: Option<Box<ConflictDetail>>,
    /// The feed position of the write, when this call wrote and saw the answer.
    pub(crate) cursor: Option<Cursor>,
    /// For a merge: the stored state is exactly the incoming record, so the
    /// replica that sent it holds it already.
    pub(crate) echo: bool,
}

impl Applied {
    /// What fills an output entry until its intent ends.
    fn placeholder() -> Applied {
        Applied {
            kind: ChangeKind::Unchanged,
            record: None,
            conflict: None,
            cursor: None,
            echo: false,
        }
    }
}

/// A write that lost a race, on its way through [`SyncEngine::apply_again`];
/// its id is kept beside it, in the vector of ids read on the next attempt.
struct Pending {
    /// Where its result goes in the output.
    slot: usize,
    kind: IntentKind,
    /// What an earlier attempt meant to store, when that write lost a race
    /// or a transient failure hid its answer.
    intended: Option<Record>,
    /// The stored state before the write, kept for events.
    previous: Option<Record>,
    /// For a merge with a stored record: the record received.
    incoming: Option<Record>,
    /// The plan of the earlier attempt (kind, conflict, echo).
    planned: Option<Planned>,
    /// Whether the write of `intended` may have landed unseen: an attempt
    /// of it failed with an unknown outcome before the store refused it.
    maybe_landed: bool,
}

/// A write of the first attempt, beside it until the store answers: where
/// its outcome goes, how to rebuild its intent if it lost a race, and the
/// state it replaced (for events, kept only when someone listens).
struct Sent {
    slot: usize,
    kind: IntentKind,
    previous: Option<Record>,
    incoming: Option<Record>,
}

/// What the write of one intent is, kept beside it until the store answers.
struct Planned {
    kind: ChangeKind,
    conflict: Option<Box<ConflictDetail>>,
    echo: bool,
}

impl Planned {
    /// The outcome of this plan once the store holds `record` (at `cursor`,
    /// when this call saw the store's answer).
    fn into_applied(self, record: Option<Record>, cursor: Option<Cursor>) -> Applied {
        Applied {
            kind: self.kind,
            record,
            conflict: self.conflict,
            cursor,
            echo: self.echo,
        }
    }
}

impl SyncEngine {
    pub(crate) async fn open(
        config: Config,
        backend: Arc<dyn StorageBackend>,
        time: Arc<dyn TimeSource>,
    ) -> Result<SyncEngine> {
        let mut clock = Hlc::with_time(config.client_id.clone(), time.clone())
            .with_max_drift(config.max_clock_drift);
        let retries = config.max_retries;
        let newest = retry_transient(retries, "newest_stamp", || backend.newest_stamp()).await?;
        if let Some(stamp) = newest {
            // Taken all the same (the store's stamps were accepted once, or
            // written by a co-writer trusted with it), but said: every write
            // of this replica is stamped after it, and peers refuse them
            // until their own clocks come near.
            if let Some(ahead_ms) = clock.drift_excess(&stamp) {
                tracing::warn!(
                    stamp = %stamp,
                    ahead_ms,
                    "the store holds a stamp further ahead of this machine's clock than \
                     max_clock_drift: this replica's writes are stamped after it, and peers \
                     refuse them as stamped ahead until their clocks catch up"
                );
            }
            clock.seed(&stamp);
        }
        let fresh_id = ulid::Ulid::new().to_string();
        let store_id = retry_transient(retries, "set_meta_if_absent", || {
            backend.set_meta_if_absent(STORE_ID_KEY, &fresh_id)
        })
        .await?;
        let events = Events::new(config.event_capacity);
        Ok(SyncEngine {
            inner: Arc::new(Inner {
                config,
                backend,
                store_id,
                clock: Mutex::new(clock),
                time,
                closed: AtomicBool::new(false),
                store_closed: AtomicBool::new(false),
                closing: tokio::sync::Mutex::new(()),
                events,
                timer: Mutex::new(None),
                stopped: Mutex::new(Vec::new()),
                peers: Mutex::new(Vec::new()),
                peer_syncs: Mutex::new(PeerSyncLocks::new()),
                reoffered: Mutex::new(std::collections::HashSet::new()),
            }),
        })
    }

    /// The id of this engine's store, created on its first open: peers use it
    /// to notice that a replica's store (and so its change feed) was replaced.
    pub fn store_id(&self) -> &str {
        &self.inner.store_id
    }

    /// The id the store holds now, read from it: [`store_id`](Self::store_id)
    /// while the store is the one this engine opened. Another id, or `None`
    /// (no id at all), says the store was replaced under the engine — a Redis
    /// server restarted without persistence, a directory restored from a
    /// backup — and that cursors into its change feed mean nothing any more.
    pub async fn stored_id(&self) -> Result<Option<String>> {
        self.check_open()?;
        // Retried as every other read: each peer sync checks it, and one
        // transient failure here failed the whole sync.
        let backend = self.store();
        retry_transient(self.retries(), "get_meta", || {
            backend.get_meta(STORE_ID_KEY)
        })
        .await
    }

    /// Fails unless the store still holds the id this engine opened it
    /// with ([`stored_id`](Self::stored_id)): an engine whose store was
    /// replaced under it numbers its change feed afresh while naming it by
    /// the old id, and a peer that trusted that id would skip every change
    /// up to its cursor, for good. Such an engine serves peers again once
    /// reopened, with the store's new id.
    pub(crate) async fn check_store_identity(&self) -> Result<()> {
        let stored = self.stored_id().await?;
        if stored.as_deref() == Some(self.store_id()) {
            return Ok(());
        }
        Err(Error::storage(
            self.inner.backend.name(),
            format!(
                "the store was replaced under this engine: it holds the id {}, the engine opened \
                 it as {}; its change feed is numbered afresh, so peers cannot follow it until \
                 the engine is reopened",
                stored.as_deref().unwrap_or("none"),
                self.store_id()
            ),
        ))
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// This replica's id.
    pub fn client_id(&self) -> &ClientId {
        &self.inner.config.client_id
    }

    /// The storage backend.
    pub fn backend(&self) -> &Arc<dyn StorageBackend> {
        &self.inner.backend
    }

    /// The backend itself, to call: a call on the `Arc` goes through the
    /// `Arc`'s own forwarding implementation of the trait first, one more
    /// boxed future for every call.
    pub(crate) fn store(&self) -> &dyn StorageBackend {
        &*self.inner.backend
    }

    /// The event hub: closure handlers (`on`, `once`, `off`, ...) and
    /// receivers.
    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    /// A receiver of every event emitted from now on; shorthand for
    /// `events().subscribe()`.
    pub fn subscribe(&self) -> EventReceiver {
        self.inner.events.subscribe()
    }

    /// Milliseconds since the Unix epoch, from the engine's time source.
    pub(crate) fn now_millis(&self) -> u64 {
        self.inner.time.now_millis()
    }

    fn clock(&self) -> MutexGuard<'_, Hlc> {
        self.inner.clock.lock()
    }

    /// A stamp for a local write to `record`: newer than anything it holds.
    fn stamp_after(&self, record: Option<&Record>) -> Result<Stamp> {
        let mut clock = self.clock();
        if let Some(record) = record {
            clock.seed(record.newest_stamp());
        }
        clock.now()
    }

    /// Fails with [`Error::Closed`] once the engine is closed.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed {
                what: "sync engine",
            });
        }
        Ok(())
    }

    pub(crate) fn retries(&self) -> u32 {
        self.inner.config.max_retries
    }

    /// Refuses the whole batch if any stamp lies too far ahead, or any
    /// record counts more writes of a client than
    /// [`MAX_RECEIVED_VERSION`];
    /// otherwise moves the clock past every stamp in it, and says whether every id of
    /// the batch is certainly distinct (when not — repeats, or two ids with
    /// one hash — the caller merges the repeats, comparing ids). Both in one
    /// pass: in a batch larger than the cache, every pass over the records
    /// reads each of them from memory again.
    pub(crate) fn observe_batch(&self, remote: &[Record]) -> Result<bool> {
        let mut clock = self.clock();
        // Physical time is read once for the batch, not once per record: a
        // clock read cost more than the rest of the check.
        let physical = clock.physical_millis();
        let mut offenders = Vec::new();
        let mut worst = 0;
        let mut newest: Option<&Stamp> = None;
        let mut counted_past: Option<Error> = None;
        // Ids are told apart by their 64-bit hashes, written in order into
        // a vector, where a set of them missed the cache at nearly every
        // insert in a large batch (a million-record sync spent 18% of its
        // time there). Two ids that merely share a hash only send the batch
        // through `dedupe`, which compares the ids themselves.
        let ids = foldhash::fast::RandomState::default();
        let mut hashes: Vec<u64> = Vec::with_capacity(remote.len());
        for record in remote {
            hashes.push(ids.hash_one(record.id().as_str()));
            let stamp = record.newest_stamp();
            if let Some(ahead) = clock.drift_excess_at(stamp, physical) {
                offenders.push(record.id().to_string());
                worst = worst.max(ahead);
            }
            if newest.is_none_or(|n| stamp > n) {
                newest = Some(stamp);
            }
            // Compared in line: every received record passes here, and the
            // check's `Result` cost a record more than the comparison.
            if record.versions().largest_count() > MAX_RECEIVED_VERSION && counted_past.is_none() {
                counted_past = record.check_received_counts().err();
            }
        }
        if let Some(refusal) = counted_past {
            return Err(refusal);
        }
        if !offenders.is_empty() {
            return Err(Error::ClockDrift {
                ids: offenders,
                ahead_ms: worst,
                max_drift_ms: clock.max_drift_ms(),
            });
        }
        if let Some(stamp) = newest {
            clock.seed(stamp);
        }
        drop(clock);
        Ok(all_distinct(&hashes))
    }

    /// Applies `intents` (at most one per id) to `collection`, where
    /// `stored` holds what the store answered for their ids (one entry per
    /// intent, in order), and returns how each ended, in order. Emits the
    /// record and conflict events of the writes the store confirmed. With
    /// `track_echoes`, marks merges whose stored result is exactly the
    /// incoming record.
    ///
    /// The first attempt keeps nothing per intent beyond its write and where
    /// its outcome goes: almost every write ends there. Writes that lost a
    /// race go on in [`apply_again`](Self::apply_again).
    async fn apply(
        &self,
        collection: &CollectionName,
        intents: Vec<Intent>,
        stored: Vec<Option<Stored>>,
        track_echoes: bool,
    ) -> Result<Vec<Applied>> {
        // Checked once per call: without listeners nothing below copies a
        // record for an event.
        let listening = self.inner.events.wants_any(&WRITE_EVENTS);
        debug_assert_eq!(intents.len(), stored.len(), "one stored entry per intent");
        // One outcome per intent, in order: a write's outcome is the plan,
        // and the store's answer fills in its record and position.
        let mut done: Vec<Applied> = Vec::with_capacity(intents.len());
        let mut writes = Vec::with_capacity(intents.len());
        let mut sent: Vec<Sent> = Vec::with_capacity(intents.len());
        let mut intents = intents.into_iter();
        let mut stored = stored.into_iter();
        loop {
            let slot = done.len();
            if slot.is_multiple_of(PRELOAD) {
                preload(intents.as_slice(), stored.as_slice());
            }
            // `intents` and `stored` hold one entry per intent (`read_many`
            // checked the store's answer), so they end together.
            let (Some(intent), Some(stored)) = (intents.next(), stored.next()) else {
                break;
            };
            let (local, token) = match stored {
                Some(stored) => (Some(stored.record), Some(stored.token)),
                None => (None, None),
            };
            let kind = intent.kind();
            match self.plan(collection, intent, local, track_echoes)? {
                Step::Done(applied) => done.push(applied),
                Step::Write {
                    record,
                    planned,
                    previous,
                    incoming,
                } => {
                    // The outcome as planned; the record and its position
                    // are filled in once the store confirms the write.
                    done.push(planned.into_applied(None, None));
                    writes.push(Write {
                        record,
                        expected: token,
                    });
                    sent.push(Sent {
                        slot,
                        kind,
                        previous: if listening { previous } else { None },
                        incoming,
                    });
                }
            }
        }
        if writes.is_empty() {
            return Ok(done);
        }
        let (outcomes, maybe_landed) = self.write_many(collection, &writes, listening).await?;
        let mut ids = Vec::new();
        let mut pending = Vec::new();
        for ((write, sent), outcome) in writes.into_iter().zip(sent).zip(outcomes) {
            let outcome_slot = &mut done[sent.slot];
            match outcome {
                WriteOutcome::Written { cursor, .. } => {
                    outcome_slot.cursor = Some(cursor);
                    outcome_slot.record = Some(write.record);
                    if listening {
                        self.announce(collection, outcome_slot, sent.previous);
                    }
                }
                // Lost a race: apply the intent again to the state that
                // won. Merge is a join, so nothing of it is lost.
                WriteOutcome::Conflict => {
                    let planned = std::mem::replace(outcome_slot, Applied::placeholder());
                    ids.push(write.record.id().clone());
                    pending.push(Pending {
                        slot: sent.slot,
                        kind: sent.kind,
                        intended: Some(write.record),
                        previous: sent.previous,
                        incoming: sent.incoming,
                        planned: Some(Planned {
                            kind: planned.kind,
                            conflict: planned.conflict,
                            echo: planned.echo,
                        }),
                        maybe_landed,
                    });
                }
            }
        }
        if !pending.is_empty() {
            self.apply_again(collection, ids, pending, &mut done, listening)
                .await?;
        }
        Ok(done)
    }

    /// A write that began before anyone listened announces nothing, and a
    /// sync server's long poll that began watching while the write was on
    /// its way to the store slept through it until its deadline. So once a
    /// write that was not announced lands, syncforge's own handlers (the
    /// server's) are told of it, with its record, if any came meanwhile.
    /// User handlers are not: they came after the write began. Callers
    /// ask [`watched_late`](Self::watched_late) first, so that this costs
    /// a look at the listener counts while nobody listens.
    #[cold]
    #[inline(never)]
    fn wake_late_watchers(&self, collection: &CollectionName, record: &Record) {
        // Internal handlers read only the collection of the event.
        self.inner.events.emit_internal(&SyncEvent::RecordAdded {
            collection: collection.clone(),
            record: record.clone(),
        });
    }

    /// Whether a write that began with nobody `listening` has someone to
    /// wake now ([`wake_late_watchers`](Self::wake_late_watchers)).
    fn watched_late(&self, listening: bool) -> bool {
        !listening && self.inner.events.wants(EventKind::RecordAdded)
    }

    /// The part of a local put of `doc` that needs no waiting: checks,
    /// converts `doc`, and offers its record to a store that can insert it
    /// if absent in one step. A put of a new record into an in-process store
    /// ends here, without building or moving anything into a future; any
    /// other goes on in [`put_rest`](Self::put_rest).
    pub(crate) fn put_at_once<T: Serialize + ?Sized>(
        &self,
        collection: &CollectionName,
        doc: &T,
    ) -> Result<PutAtOnce> {
        self.check_open()?;
        // Measures each field's nesting as (or before) it is converted:
        // however deep `doc` nests, nothing recurses past the limit.
        let content = Content::from_serialize(doc)?;
        let id = content.id().clone();
        let listening = self.inner.events.wants_any(&WRITE_EVENTS);
        match self.insert_if_absent(collection, &id, content, listening) {
            Offer::Inserted(record) => Ok(PutAtOnce::Done(record)),
            Offer::Failed(error) => Err(error),
            Offer::Read(now, content) => Ok(PutAtOnce::Rest(Box::new(PutRest {
                id,
                content,
                now,
                listening,
            }))),
        }
    }

    /// The rest of a put that [`put_at_once`](Self::put_at_once) could not
    /// end: its content applied to the record the store holds.
    pub(crate) async fn put_rest(
        &self,
        collection: &CollectionName,
        rest: Box<PutRest>,
    ) -> Result<Record> {
        let PutRest {
            id,
            content,
            now,
            listening,
        } = *rest;
        let now = match now {
            // A store that cannot answer at once may still write a new
            // record in the same round trip that would have read it.
            None => match self
                .insert_if_absent_awaited(collection, &id, &content, listening)
                .await
            {
                Ok(settled) => return settled,
                Err(now) => now,
            },
            now => now,
        };
        let applied = self
            .apply_read(collection, &id, Intent::Put(content), now, listening)
            .await?;
        applied
            .record
            .ok_or_else(|| self.lost_record(collection, &id))
    }

    /// The error of a write the store confirmed without its record.
    fn lost_record(&self, collection: &CollectionName, id: &RecordId) -> Error {
        Error::storage(
            self.store().name(),
            format!(
                "the write of record {:?} in collection {:?} reported no outcome",
                id.as_str(),
                collection.as_str()
            ),
        )
    }

    /// [`apply`](Self::apply) for one intent (no echo tracking): one `get`
    /// and one `put`, with none of the vectors a batch needs. A local put or
    /// delete is one record, and building a batch of one for it was a third
    /// of its cost.
    pub(crate) async fn apply_single(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        intent: Intent,
    ) -> Result<Applied> {
        let listening = self.inner.events.wants_any(&WRITE_EVENTS);
        let now = self.store().get_now(collection, id);
        self.apply_read(collection, id, intent, now, listening)
            .await
    }

    /// [`apply_single`](Self::apply_single) once the store was asked for the
    /// record at once: `now` is its answer (`None`: it cannot answer at
    /// once, and is asked again and awaited). An answer that is no failure
    /// skips the retry machinery.
    async fn apply_read(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        intent: Intent,
        now: Option<Result<Option<Stored>>>,
        listening: bool,
    ) -> Result<Applied> {
        let backend = self.store();
        // A store that answers at once is asked without a boxed future.
        let stored = match now {
            Some(Ok(stored)) => stored,
            now => {
                retry_transient_now(now, self.retries(), "get", || backend.get(collection, id))
                    .await?
            }
        };
        let (local, token) = match stored {
            Some(stored) => (Some(stored.record), Some(stored.token)),
            None => (None, None),
        };
        let kind = intent.kind();
        let (record, planned, previous, incoming) =
            match self.plan(collection, intent, local, false)? {
                Step::Done(applied) => return Ok(applied),
                Step::Write {
                    record,
                    planned,
                    previous,
                    incoming,
                } => (record, planned, previous, incoming),
            };
        let write = Write {
            record,
            expected: token,
        };
        // Attempts made, the store's answer at once included: past the
        // first, an earlier one failed and its write may have landed.
        let mut attempts = 0u32;
        let outcome = match backend.put_now(collection, &write) {
            Some(Ok(outcome)) => outcome,
            now => {
                attempts = u32::from(now.is_some());
                retry_transient_now(now, self.retries(), "put", || {
                    attempts += 1;
                    backend.put(collection, &write)
                })
                .await?
            }
        };
        let previous = if listening { previous } else { None };
        match outcome {
            WriteOutcome::Written { cursor, .. } => {
                if self.watched_late(listening) {
                    self.wake_late_watchers(collection, &write.record);
                }
                Ok(self.confirm(
                    collection,
                    Some(write.record),
                    planned,
                    Some(cursor),
                    previous,
                    listening,
                ))
            }
            // Lost a race: go on as a batch of one would.
            WriteOutcome::Conflict => {
                let mut done = vec![Applied::placeholder()];
                let pending = vec![Pending {
                    slot: 0,
                    kind,
                    intended: Some(write.record),
                    previous,
                    incoming,
                    planned: Some(planned),
                    maybe_landed: attempts > 1,
                }];
                self.apply_again(collection, vec![id.clone()], pending, &mut done, listening)
                    .await?;
                // Its write, if any, went through `write_many`, which woke
                // late watchers.
                done.pop()
                    .ok_or_else(|| Error::storage(backend.name(), "a write lost its outcome"))
            }
        }
    }

    /// Offers a put of `content` to the store's insert-if-absent
    /// ([`StorageBackend::insert_if_absent_now`]), which builds the record
    /// only if the store holds none with its id: a put of a new record is
    /// then one call. Otherwise hands the content back with what stands for
    /// the store's `get_now` (the stored state, or the store's failure
    /// before it built anything, or `None` from a store that cannot answer
    /// at once), to go on as a put of a stored record.
    fn insert_if_absent(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        content: Content,
        listening: bool,
    ) -> Offer {
        let backend = self.store();
        let mut content = Some(content);
        let answer = backend.insert_if_absent_now(collection, id, &mut || {
            let content = content
                .take()
                .ok_or_else(|| Error::storage(backend.name(), "a record was built twice"))?;
            self.create(content)
        });
        let Some(content) = content else {
            // The record was built: the store wrote it, or failed.
            return match answer {
                Some(Ok(IfAbsent::Inserted { record, .. })) => {
                    // What `confirm` announces for a put of a new record: no
                    // conflict, nothing it replaced.
                    if listening {
                        self.emit_record_event(collection, ChangeKind::Added, record.clone(), None);
                    } else if self.watched_late(listening) {
                        self.wake_late_watchers(collection, &record);
                    }
                    Offer::Inserted(record)
                }
                Some(Err(error)) => Offer::Failed(error),
                Some(Ok(IfAbsent::Present(_))) | None => Offer::Failed(Error::storage(
                    backend.name(),
                    "insert_if_absent_now built a record and did not write it",
                )),
            };
        };
        match answer {
            Some(Ok(IfAbsent::Present(stored))) => Offer::Read(Some(Ok(Some(stored))), content),
            Some(Ok(IfAbsent::Inserted { .. })) => Offer::Failed(Error::storage(
                backend.name(),
                "insert_if_absent_now wrote a record it did not build",
            )),
            Some(Err(error)) => Offer::Read(Some(Err(error)), content),
            None => Offer::Read(backend.get_now(collection, id), content),
        }
    }

    /// Offers a put of `content` to the store's awaited insert-if-absent
    /// ([`StorageBackend::insert_if_absent`]): `Ok` when that settles the
    /// put, with the record as stored when it was new and is now written by
    /// this put, or with the error of the read that looked for it after a
    /// failure (those reads had their retries: the put's own read must not
    /// start them again). Otherwise `Err` with what stands for the store's
    /// `get_now` of the record to go on from: the stored state, the store's
    /// failure, or `None` from a store without that one step.
    ///
    /// The record this put built is kept to recognise it: a store that lost
    /// its answer may answer a second attempt with the record the first one
    /// wrote, and after a failure the record may have been written all the
    /// same, which a read then shows. Either way it is this put's write, and
    /// announced as such, once; applying the put to it again would find
    /// nothing to change and announce nothing.
    async fn insert_if_absent_awaited(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        content: &Content,
        listening: bool,
    ) -> std::result::Result<Result<Record>, Option<Result<Option<Stored>>>> {
        let backend = self.store();
        let mut built = None;
        // Built before the store answers, so from a copy: a record already
        // stored gets the put applied to it as any other put.
        let answer = backend
            .insert_if_absent(collection, id, &mut || {
                let record = self.create(content.clone())?;
                built = Some(record.clone());
                Ok(record)
            })
            .await;
        let stored = match (answer, built) {
            (Some(Ok(IfAbsent::Inserted { record, .. })), Some(built)) if record == built => record,
            (Some(Ok(IfAbsent::Inserted { .. })), _) => {
                return Err(Some(Err(Error::storage(
                    backend.name(),
                    "insert_if_absent wrote a record it did not build",
                ))))
            }
            // Sent again by the store's client after a lost answer: its own
            // record, or that record as a later writer changed it.
            (Some(Ok(IfAbsent::Present(stored))), Some(built))
                if holds_local_write(&stored.record, &built) =>
            {
                landed_put(stored.record, built)
            }
            (Some(Err(error)), Some(built)) => {
                // The write may have happened: read to find out.
                let read = retry_transient_now(Some(Err(error)), self.retries(), "get", || {
                    backend.get(collection, id)
                })
                .await;
                // Only the write's own stamps show it landed. A state that
                // merely absorbs it (`built_on`) may be one that was stored
                // before this put began: a new record counts one write of
                // this engine's, as its first write of the record did, and
                // a later state by a clock running ahead absorbs it whole.
                match read {
                    Ok(Some(stored)) if holds_local_write(&stored.record, &built) => {
                        landed_put(stored.record, built)
                    }
                    Ok(stored) => return Err(Some(Ok(stored))),
                    Err(error) => return Ok(Err(error)),
                }
            }
            (Some(Ok(IfAbsent::Present(stored))), _) => return Err(Some(Ok(Some(stored)))),
            // Nothing was built (or `make` failed): nothing was written.
            (Some(Err(error)), None) => return Err(Some(Err(error))),
            (None, _) => return Err(None),
        };
        // What `confirm` announces for a put of a new record.
        if listening {
            self.emit_record_event(collection, ChangeKind::Added, stored.clone(), None);
        } else if self.watched_late(listening) {
            self.wake_late_watchers(collection, &stored);
        }
        Ok(Ok(stored))
    }

    /// A new record of `content`, stamped now: what a put writes where the
    /// store holds no record of its id.
    fn create(&self, content: Content) -> Result<Record> {
        let stamp = self.stamp_after(None)?;
        Ok(Record::create(content, stamp))
    }

    /// The writes of [`apply`](Self::apply) that lost a race (their ids in
    /// `ids`, in the order of `pending`): each is read again and its intent
    /// applied again to the state that won, until it is written, unchanged,
    /// or the race budget is spent. Their outcomes go to `done`.
    async fn apply_again(
        &self,
        collection: &CollectionName,
        mut ids: Vec<RecordId>,
        mut pending: Vec<Pending>,
        done: &mut [Applied],
        listening: bool,
    ) -> Result<()> {
        let backend = self.store();
        // The first attempt was made by `apply`.
        for round in 1..MAX_RACE_ATTEMPTS {
            race_back_off(round).await;
            let stored = self.read_many(collection, &ids).await?;
            let mut writes = Vec::with_capacity(pending.len());
            let mut waiting = Vec::with_capacity(pending.len());
            for (mut item, stored) in pending.into_iter().zip(stored) {
                let (local, token) = match stored {
                    Some(stored) => (Some(stored.record), Some(stored.token)),
                    None => (None, None),
                };
                // After an attempt whose outcome is unknown, a store holding
                // exactly what it meant to write holds that write (its
                // answer was lost, and the resend was refused) or another
                // writer's identical change; the two cannot be told apart,
                // so it is reported as planned. With no such attempt the
                // refusal was definite (a store whose client resends by
                // itself reports a resend's refusal as a failure): the
                // identical state is another writer's, and applying the
                // intent again finds it unchanged. A put's or delete's
                // write landed when the store holds its fresh stamp, even
                // under a later writer's change, which applying the write
                // again would undo. After an attempt whose outcome is
                // unknown, so did a put or delete whose state the stored one
                // was built on: under the timestamp strategy a later state
                // that won whole keeps none of its stamps. (Not an import:
                // a backup restored over a state that had seen it would be
                // taken for landed when its write failed.)
                let landed = match (&item.intended, &local) {
                    (Some(intended), Some(stored)) => {
                        (item.maybe_landed && stored == intended)
                            || (matches!(item.kind, IntentKind::Put | IntentKind::Delete)
                                && (holds_local_write(stored, intended)
                                    || (item.maybe_landed && self.built_on(stored, intended))))
                    }
                    _ => false,
                };
                if landed {
                    if let Some(planned) = item.planned.take() {
                        // A put is reported as the store holds it now, with
                        // a later writer's change ([`landed_put`]); a delete
                        // as it was made, since a later put brings the
                        // record back and a delete's outcome must be a
                        // deleted record.
                        let record = match (item.kind, local, item.intended.take()) {
                            (IntentKind::Delete, _, intended) => intended,
                            (IntentKind::Put, Some(stored), Some(intended)) => {
                                Some(landed_put(stored, intended))
                            }
                            (_, local, _) => local,
                        };
                        done[item.slot] = self.confirm(
                            collection,
                            record,
                            planned,
                            None,
                            item.previous.take(),
                            listening,
                        );
                        continue;
                    }
                }
                // Echoes are recognised on the first attempt only: calling a
                // write "not an echo" only costs a resend, and lost races
                // are rare.
                let intended = item
                    .intended
                    .as_ref()
                    .ok_or_else(|| Error::storage(backend.name(), "a write lost its intent"))?;
                let intent = item.kind.again(intended, item.incoming.as_ref())?;
                match self.plan(collection, intent, local, false)? {
                    Step::Done(applied) => done[item.slot] = applied,
                    Step::Write {
                        record,
                        planned,
                        previous,
                        incoming,
                    } => {
                        // A merge that found no stored record the first
                        // time keeps the record received from now on.
                        if item.incoming.is_none() {
                            item.incoming = incoming;
                        }
                        writes.push(Write {
                            record,
                            expected: token,
                        });
                        item.planned = Some(planned);
                        if listening {
                            item.previous = previous;
                        }
                        waiting.push(item);
                    }
                }
            }
            if writes.is_empty() {
                return Ok(());
            }
            let (outcomes, maybe_landed) = self.write_many(collection, &writes, listening).await?;
            pending = Vec::new();
            ids = Vec::new();
            for ((write, mut item), outcome) in writes.into_iter().zip(waiting).zip(outcomes) {
                match outcome {
                    WriteOutcome::Written { cursor, .. } => {
                        let planned = item.planned.take().ok_or_else(|| {
                            Error::storage(backend.name(), "a write lost its plan")
                        })?;
                        done[item.slot] = self.confirm(
                            collection,
                            Some(write.record),
                            planned,
                            Some(cursor),
                            item.previous.take(),
                            listening,
                        );
                    }
                    WriteOutcome::Conflict => {
                        ids.push(write.record.id().clone());
                        item.intended = Some(write.record);
                        item.maybe_landed = maybe_landed;
                        pending.push(item);
                    }
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
        }
        let id = ids.first().map_or("", |id| id.as_str());
        tracing::warn!(
            collection = collection.as_str(),
            id,
            attempts = MAX_RACE_ATTEMPTS,
            "write kept losing races with other writers"
        );
        Err(Error::Precondition {
            collection: collection.to_string(),
            id: id.to_owned(),
        })
    }

    /// The stored states of `ids`, in order, transient failures retried.
    async fn read_many(
        &self,
        collection: &CollectionName,
        ids: &[RecordId],
    ) -> Result<Vec<Option<Stored>>> {
        let backend = self.store();
        let stored = retry_transient(self.retries(), "get_many", || {
            backend.get_many(collection, ids)
        })
        .await?;
        one_each(backend, "get_many", "entries", stored, "ids", ids.len())
    }

    /// The outcomes of `writes`, in order, transient failures retried, and
    /// whether an attempt failed before them: its writes may have landed
    /// (a failure's outcome is unknown), so a write refused now may be one
    /// that landed then.
    async fn write_many(
        &self,
        collection: &CollectionName,
        writes: &[Write],
        listening: bool,
    ) -> Result<(Vec<WriteOutcome>, bool)> {
        let backend = self.store();
        let mut attempts = 0u32;
        let outcomes = retry_transient(self.retries(), "put_batch", || {
            attempts += 1;
            backend.put_batch(collection, writes)
        })
        .await?;
        let outcomes = one_each(
            backend,
            "put_batch",
            "outcomes",
            outcomes,
            "writes",
            writes.len(),
        )?;
        // The watch is checked before the outcomes are searched.
        if self.watched_late(listening) {
            let written = writes
                .iter()
                .zip(&outcomes)
                .find(|(_, outcome)| matches!(outcome, WriteOutcome::Written { .. }));
            if let Some((write, _)) = written {
                self.wake_late_watchers(collection, &write.record);
            }
        }
        Ok((outcomes, attempts > 1))
    }

    /// Whether `stored` was built on the local write `intended`: it has
    /// seen every write `intended` has and more, and merging `intended`
    /// into it changes nothing. Asked only of a put or delete that may have
    /// landed unseen, planned on a state read before it: `intended` then
    /// carries a count of this engine's that no state from before the write
    /// has (another write of this engine's planned on the same state, at
    /// the same time, is concurrent with it, and may come after it). Not of
    /// a new record's first write, whose count of one every earlier first
    /// write of the record by this engine had too.
    fn built_on(&self, stored: &Record, intended: &Record) -> bool {
        stored.versions().compare(intended.versions()) == Causality::Dominates
            && merge(stored, intended, self.inner.config.conflict_strategy)
                .is_ok_and(|merged| merged == *stored)
    }

    /// What `intent` does to the stored state `local`.
    fn plan(
        &self,
        collection: &CollectionName,
        intent: Intent,
        local: Option<Record>,
        track_echo: bool,
    ) -> Result<Step> {
        let unchanged = |record: Option<Record>| {
            Step::Done(Applied {
                kind: ChangeKind::Unchanged,
                record,
                conflict: None,
                cursor: None,
                echo: false,
            })
        };
        let write = |record: Record, kind, conflict, echo, previous| Step::Write {
            incoming: None,
            record,
            planned: Planned {
                kind,
                conflict,
                echo,
            },
            previous,
        };
        Ok(match intent {
            Intent::Put(content) => match local {
                None => write(self.create(content)?, ChangeKind::Added, None, false, None),
                Some(local) => {
                    let mut record = local.clone();
                    let stamp = self.stamp_after(Some(&record))?;
                    let kind = if local.is_deleted() {
                        ChangeKind::Added
                    } else {
                        ChangeKind::Updated
                    };
                    if !record.apply_put(content, &stamp)? {
                        return Ok(unchanged(Some(local)));
                    }
                    write(record, kind, None, false, Some(local))
                }
            },
            Intent::Delete => match local {
                None => unchanged(None),
                Some(local) => {
                    let mut record = local.clone();
                    let stamp = self.stamp_after(Some(&record))?;
                    if !record.apply_delete(&stamp)? {
                        return Ok(unchanged(Some(local)));
                    }
                    write(record, ChangeKind::Deleted, None, false, Some(local))
                }
            },
            Intent::Merge(remote) => {
                // Most records of a sync are already held as received: the
                // stored record is handed on as it is, where classifying
                // would compare the same way and then copy it (two reference
                // counts touched per record).
                if local.as_ref() == Some(&remote) {
                    return Ok(unchanged(local));
                }
                // A record new here is stored as received, so it is an echo
                // without comparing; otherwise compare the merge with a copy,
                // which is also what a write that loses a race merges again.
                let incoming = local.is_some().then(|| remote.clone());
                let classified = classify(
                    collection,
                    local.as_ref(),
                    remote,
                    self.inner.config.conflict_strategy,
                )?;
                if classified.kind == ChangeKind::Unchanged {
                    return Ok(unchanged(Some(classified.merged)));
                }
                let echo = track_echo
                    && incoming
                        .as_ref()
                        .is_none_or(|sent| *sent == classified.merged);
                Step::Write {
                    record: classified.merged,
                    planned: Planned {
                        kind: classified.kind,
                        conflict: classified.conflict.map(Box::new),
                        echo,
                    },
                    previous: local,
                    incoming,
                }
            }
            Intent::Replace(record) => {
                if local.as_ref() == Some(&record) {
                    return Ok(unchanged(local));
                }
                let kind = match (local.as_ref().map(Record::is_deleted), record.is_deleted()) {
                    (None | Some(true), false) => ChangeKind::Added,
                    (None | Some(false), true) => ChangeKind::Deleted,
                    (Some(false), false) | (Some(true), true) => ChangeKind::Updated,
                };
                write(record, kind, None, false, local)
            }
        })
    }

    /// Reports a write the store holds and emits its events.
    fn confirm(
        &self,
        collection: &CollectionName,
        record: Option<Record>,
        planned: Planned,
        cursor: Option<Cursor>,
        previous: Option<Record>,
        listening: bool,
    ) -> Applied {
        let applied = planned.into_applied(record, cursor);
        if listening {
            self.announce(collection, &applied, previous);
        }
        applied
    }

    /// Emits the conflict and `record:*` events of a write the store holds.
    fn announce(&self, collection: &CollectionName, applied: &Applied, previous: Option<Record>) {
        let events = &self.inner.events;
        if let Some(conflict) = &applied.conflict {
            if events.wants(EventKind::Conflict) {
                events.emit(SyncEvent::Conflict(Arc::new(ConflictDetail::clone(
                    conflict,
                ))));
            }
        }
        if let Some(record) = &applied.record {
            self.emit_record_event(collection, applied.kind, record.clone(), previous);
        }
    }

    /// Emits the `record:*` event of a confirmed write of `kind`.
    fn emit_record_event(
        &self,
        collection: &CollectionName,
        kind: ChangeKind,
        record: Record,
        previous: Option<Record>,
    ) {
        let collection = collection.clone();
        let event = match (kind, previous) {
            (ChangeKind::Deleted, _) => SyncEvent::RecordDeleted { collection, record },
            // A deleted record whose tombstone or versions moved (two
            // replicas deleted it concurrently): nothing visible changed, and
            // `record:updated` is about visible records. The write is in the
            // feed all the same, which a server's long polls wait for.
            (ChangeKind::Updated, Some(previous))
                if previous.is_deleted() && record.is_deleted() =>
            {
                self.inner.events.emit_internal(&SyncEvent::RecordUpdated {
                    collection,
                    record,
                    previous,
                });
                return;
            }
            (ChangeKind::Updated, Some(previous)) => SyncEvent::RecordUpdated {
                collection,
                record,
                previous,
            },
            // An update of a record this replica did not hold shows as new.
            (ChangeKind::Added | ChangeKind::Updated, _) => {
                SyncEvent::RecordAdded { collection, record }
            }
            (ChangeKind::Unchanged, _) => return,
        };
        if self.inner.events.wants(event.kind()) {
            self.inner.events.emit(event);
        }
    }

    /// Merges `remote` into `collection`: the sync behind
    /// [`Collection::sync`](crate::Collection::sync), with its trigger named
    /// in `sync:start`. With `echoes`, collects the feed positions of writes
    /// whose result is exactly the incoming record: the sender holds those
    /// states already.
    pub(crate) async fn sync_records(
        &self,
        collection: &CollectionName,
        remote: Vec<Record>,
        trigger: SyncTrigger,
        echoes: Option<&mut HashSet<Cursor>>,
    ) -> Result<SyncResult> {
        // A closed engine starts no sync, and announces none.
        self.check_open()?;
        let events = &self.inner.events;
        if events.wants(EventKind::SyncStart) {
            events.emit(SyncEvent::SyncStart {
                collection: collection.clone(),
                record_count: remote.len(),
                timestamp: self.now_millis(),
                trigger,
            });
        }
        let span = tracing::info_span!(
            "sync",
            collection = collection.as_str(),
            records = remote.len(),
            added = Empty,
            updated = Empty,
            deleted = Empty,
            unchanged = Empty,
            conflicts = Empty,
            duration_ms = Empty,
        );
        let outcome = self
            .sync_unreported(collection, remote, echoes)
            .instrument(span.clone())
            .await;
        match &outcome {
            Ok(result) => {
                let duration_ms = millis(result.duration);
                span.record("added", result.added)
                    .record("updated", result.updated)
                    .record("deleted", result.deleted)
                    .record("unchanged", result.unchanged)
                    .record("conflicts", result.conflicts.len())
                    .record("duration_ms", duration_ms);
                tracing::info!(
                    parent: &span,
                    added = result.added,
                    updated = result.updated,
                    deleted = result.deleted,
                    unchanged = result.unchanged,
                    conflicts = result.conflicts.len(),
                    duration_ms,
                    "sync finished"
                );
                if events.wants(EventKind::SyncSuccess) {
                    events.emit(SyncEvent::SyncSuccess(Arc::new(result.clone())));
                }
            }
            Err(error) => {
                tracing::warn!(parent: &span, %error, "sync failed");
                self.emit_sync_error(collection, error);
            }
        }
        outcome
    }

    /// Emits `sync:error` for `error` if anyone listens.
    pub(crate) fn emit_sync_error(&self, collection: &CollectionName, error: &Error) {
        let events = &self.inner.events;
        if events.wants(EventKind::SyncError) {
            events.emit(SyncEvent::SyncError {
                collection: collection.clone(),
                error: Arc::new(error.clone()),
                timestamp: self.now_millis(),
            });
        }
    }

    async fn sync_unreported(
        &self,
        collection: &CollectionName,
        remote: Vec<Record>,
        echoes: Option<&mut HashSet<Cursor>>,
    ) -> Result<SyncResult> {
        self.check_open()?;
        let started = Instant::now();
        let mut in_batch = InBatchConflicts::default();
        let (incoming, echoes) = if self.observe_batch(&remote)? {
            (remote, echoes)
        } else {
            // Repeated ids are merged into records the sender never sent, so
            // none of this call's writes is reported as an echo: the sender
            // then pulls them back, a resend where an echo would be a miss.
            let deduped = dedupe(collection, remote, self.inner.config.conflict_strategy)?;
            in_batch.extend(
                deduped
                    .conflicts
                    .into_iter()
                    .map(|conflict| (conflict.record_id.clone(), conflict)),
            );
            (deduped.records, None)
        };
        let total = incoming.len();
        let mut result = SyncResult::new(collection);
        self.apply_in_batches(
            collection,
            incoming
                .into_iter()
                .map(|record| (record.id().clone(), Intent::Merge(record))),
            total,
            &mut result,
            echoes,
            &mut in_batch,
        )
        .await?;
        result.timestamp = self.now_millis();
        result.duration = started.elapsed();
        Ok(result)
    }

    /// Applies `intents` `batch_size` at a time, counting what each did in
    /// `result`, and emits `sync:progress` after each batch.
    ///
    /// Each batch is read from the store while the one before it is planned
    /// and written: a store across a network then answers the read and the
    /// write of two batches in one wait instead of two.
    ///
    /// The ids of `intents` must be distinct across the whole call (a sync
    /// merges repeated ids first, an import refuses them): a batch is read
    /// before the one ahead of it is written, so an id given twice could be
    /// planned on a state its earlier intent was about to replace.
    ///
    /// `in_batch` holds the conflicts found merging the call's repeated ids
    /// ([`dedupe`], one an id): each is reported (in `result`, and as an event) when
    /// the write of its merge changes the record, as a conflict with the
    /// stored state is; one whose merge the store held already was
    /// reported by whoever merged it first.
    pub(crate) async fn apply_in_batches(
        &self,
        collection: &CollectionName,
        mut intents: impl Iterator<Item = (RecordId, Intent)>,
        total: usize,
        result: &mut SyncResult,
        mut echoes: Option<&mut HashSet<Cursor>>,
        in_batch: &mut InBatchConflicts,
    ) -> Result<()> {
        let batch_size = self.inner.config.batch_size;
        // Batches come off the front of one iterator: splitting the rest
        // off a vector instead would move every remaining record once per
        // batch, quadratic in the size of the sync. The ids are moved into
        // the vector `get_many` reads, not cloned: each clone and drop of an
        // id touched memory the batch does not otherwise read.
        let mut next_batch =
            || -> (Vec<RecordId>, Vec<Intent>) { intents.by_ref().take(batch_size).unzip() };
        let (ids, mut batch) = next_batch();
        if batch.is_empty() {
            return Ok(());
        }
        let mut stored = self.read_many(collection, &ids).await?;
        drop(ids);
        let mut done = 0;
        loop {
            done += batch.len();
            let (following_ids, following) = next_batch();
            // The read is polled first, so that its request is on its way
            // before this batch is planned.
            let read_ahead = async {
                if following_ids.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.read_many(collection, &following_ids).await
                }
            };
            let (read, applied) = join(
                read_ahead,
                self.apply(collection, batch, stored, echoes.is_some()),
            )
            .await;
            for outcome in applied? {
                result.count(outcome.kind);
                result.conflicts.extend(outcome.conflict.map(|c| *c));
                // After the write's own conflict, in the result as in the
                // events (the write announced its own as it landed).
                if !in_batch.is_empty() && outcome.kind != ChangeKind::Unchanged {
                    let merged = outcome.record.as_ref().map(Record::id);
                    if let Some(found) = merged.and_then(|id| in_batch.remove(id)) {
                        self.report_in_batch(found, result);
                    }
                }
                if let (true, Some(cursor), Some(echoes)) =
                    (outcome.echo, outcome.cursor, echoes.as_deref_mut())
                {
                    if echoes.len() < MAX_ECHOES {
                        echoes.insert(cursor);
                    }
                }
            }
            if self.inner.events.wants(EventKind::SyncProgress) {
                self.inner.events.emit(SyncEvent::SyncProgress {
                    collection: collection.clone(),
                    done,
                    total,
                });
            }
            if following.is_empty() {
                return Ok(());
            }
            stored = read?;
            batch = following;
        }
    }

    /// Reports the conflict found merging two states of one record given
    /// in the same call, once the merge's write changed the record: its
    /// `conflict` event follows the write's own events.
    fn report_in_batch(&self, found: ConflictDetail, result: &mut SyncResult) {
        let events = &self.inner.events;
        if events.wants(EventKind::Conflict) {
            events.emit(SyncEvent::Conflict(Arc::new(found.clone())));
        }
        result.conflicts.push(found);
    }

    /// Closes the engine and its backend handle. Never deletes stored data.
    /// Stops auto-sync, and waits (at most 10 s) for a window in progress,
    /// or one `stop_auto_sync` cancelled, to stop: no window emits an event
    /// or starts a storage call after `close` returned; forgets
    /// its peers and removes every event handler added through
    /// [`events`](Self::events) (one added later is dropped at once);
    /// receivers see the stream end when the last handle on the engine is
    /// dropped. Later calls fail with [`Error::Closed`];
    /// closing twice is harmless, a close while another is under way
    /// returns when that one has ended, and a close whose store failed to
    /// close (its error returned) is tried again by the next.
    pub async fn close(&self) -> Result<()> {
        // Marked at once: every later call fails with `Closed`, even while
        // this one waits for another close to end.
        self.inner.closed.store(true, Ordering::Release);
        // A close from inside a window, while another close waits for that
        // window, waits here until that close aborts the window.
        let _closing = self.inner.closing.lock().await;
        if self.inner.store_closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut windows: Vec<JoinHandle<()>> = {
            // Under the timer's lock, as `stop_auto_sync` moves the running
            // window to the stopped ones: taken one after the other, a
            // window stopped in between was in neither.
            let mut timer = self.inner.timer.lock();
            let mut windows: Vec<JoinHandle<()>> = self.inner.stopped.lock().drain(..).collect();
            windows.extend(timer.take());
            windows
        };
        // A close from inside a window (a peer closing this engine) leaves
        // that window alone: it ends by itself, the engine being closed,
        // and aborting it would cancel this very close.
        let own = tokio::task::try_id();
        windows.retain(|window| Some(window.id()) != own);
        for window in &windows {
            window.abort();
        }
        if !windows.is_empty() {
            // A window stops at its next await; one that never awaits
            // anything pending (an in-process peer on a memory store) runs
            // to its end first. Waiting for it keeps its events, and its
            // next storage calls, from coming after `close` returned. At
            // most WINDOW_STOP_WAIT: a window on a runtime that is not
            // running (closed from another one) would never stop; and not
            // at all where no timer can be made.
            let mut waiting = Unjoined {
                windows,
                stopped: &self.inner.stopped,
                joined: false,
            };
            let ended =
                AssertUnwindSafe(futures_util::future::join_all(waiting.windows.iter_mut()));
            if let Some(bounded) = timer(move || tokio::time::timeout(WINDOW_STOP_WAIT, ended)) {
                let _ = bounded.await;
            }
            waiting.joined = true;
        }
        self.inner.peers.lock().clear();
        self.inner.events.close();
        self.close_store().await
    }

    /// Closes the backend, noting when that succeeded.
    async fn close_store(&self) -> Result<()> {
        self.inner.backend.close().await?;
        self.inner.store_closed.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }
}

/// Windows [`SyncEngine::close`] waits for. A close cancelled while it
/// waits (dropped by a timeout around it) hands the windows still running
/// back to the stopped ones, so that the next close waits for them instead
/// of returning under them.
struct Unjoined<'a> {
    windows: Vec<JoinHandle<()>>,
    stopped: &'a Mutex<Vec<JoinHandle<()>>>,
    /// Whether the wait ran its course (it is not taken up again).
    joined: bool,
}

impl Drop for Unjoined<'_> {
    fn drop(&mut self) {
        if !self.joined {
            let running = self
                .windows
                .drain(..)
                .filter(|window| !window.is_finished());
            self.stopped.lock().extend(running);
        }
    }
}

/// Where a local put stands after [`SyncEngine::put_at_once`].
pub(crate) enum PutAtOnce {
    /// Written (or found unchanged): the record as stored.
    Done(Record),
    /// To go on in [`SyncEngine::put_rest`]. Boxed: the common answer is
    /// `Done`, and an answer the size of a `PutRest` was copied whole at
    /// every step back to the caller.
    Rest(Box<PutRest>),
}

/// A put still to apply to the record the store holds.
pub(crate) struct PutRest {
    id: RecordId,
    content: Content,
    /// What stands for the store's `get_now` of the record.
    now: Option<Result<Option<Stored>>>,
    listening: bool,
}

/// How a put's offer to insert its record if absent ended
/// ([`SyncEngine::insert_if_absent`]).
enum Offer {
    /// The record was new: written, and announced; the record as stored.
    Inserted(Record),
    /// The record was built, and then not written: the put fails.
    Failed(Error),
    /// Nothing was built: the content back, and the answer of a `get_now`
    /// of the record to go on from.
    Read(Option<Result<Option<Stored>>>, Content),
}

/// What one intent comes to against the stored state.
enum Step {
    /// Nothing to write.
    Done(Applied),
    /// Write `record`.
    Write {
        record: Record,
        planned: Planned,
        previous: Option<Record>,
        /// For a merge with a stored record: the record received, to merge
        /// again if the write loses a race.
        incoming: Option<Record>,
    },
}

/// What a put whose write landed (its answer lost, or its race lost to a
/// later writer) reports: the record as the store holds it, with the later
/// writer's change, unless that change deleted it. A put's outcome is the
/// live record it wrote; the later delete is another writer's, announced
/// by that writer, and reporting the tombstone announced a put of a deleted
/// record.
fn landed_put(stored: Record, written: Record) -> Record {
    if stored.is_deleted() {
        written
    } else {
        stored
    }
}

/// Whether `stored` holds the local write (put or delete) `intended` meant
/// to make, exactly or as a later writer changed it since: every field the
/// write stamped is in `stored` as the write left it, or stamped later (the
/// later writer's change), and at least one is as the write left it; for a
/// delete, its tombstone is there. Comparing the states, not only the
/// stamp, keeps two processes that share a client id (and so may make equal
/// stamps) from taking each other's write for their own. A later writer
/// that rewrote every field the write stamped leaves no trace of it: the
/// write is then applied again. A put that stamped no field (a record with
/// no fields brought back) leaves only its write stamp, which a later
/// delete keeps: that stamp is then its trace, as long as no field carries
/// it (a write with that stamp and fields is another process's).
fn holds_local_write(stored: &Record, intended: &Record) -> bool {
    if stored == intended {
        return true;
    }
    let stamp = intended.newest_stamp();
    if intended.tombstone() == Some(stamp) {
        return stored.tombstone() == Some(stamp);
    }
    let now = stored.field_states();
    let mut stamped_any = false;
    let mut kept = false;
    for (name, state) in intended.field_states().iter() {
        if state.stamp() != stamp {
            continue;
        }
        stamped_any = true;
        match now.get(name) {
            Some(current) if current == state => kept = true,
            Some(current) if current.stamp() > stamp => {}
            _ => return false,
        }
    }
    if stamped_any {
        kept
    } else {
        stored.written() == stamp && now.iter().all(|(_, state)| state.stamp() != stamp)
    }
}

/// A backend's answer to a call about `asked` items, checked to hold one
/// answer per item: a store answering more or fewer is broken, and pairing
/// its answers with the items would misattribute them.
fn one_each<T>(
    backend: &dyn StorageBackend,
    call: &str,
    answers: &str,
    answered: Vec<T>,
    items: &str,
    asked: usize,
) -> Result<Vec<T>> {
    if answered.len() == asked {
        return Ok(answered);
    }
    Err(Error::storage(
        backend.name(),
        format!(
            "{call} answered {} {answers} for {asked} {items}",
            answered.len()
        ),
    ))
}

/// The bound of the random wait before attempt `round` of a write (which
/// follows `round` races lost in a row), or `None` for no wait: none until
/// [`FREE_RACE_ROUNDS`] are lost, then 1 ms, doubling up to 64 ms.
fn race_wait_bound_micros(round: u32) -> Option<u64> {
    let over = round.checked_sub(FREE_RACE_ROUNDS)?;
    Some(1_000u64 << over.min(6))
}

/// Before attempt `round` of a write that keeps losing races: nothing for
/// the first few, then a random wait below a bound that doubles from 1 ms
/// to 64 ms. Writers contending for one record (engines on one Redis or
/// S3 store) then spread out instead of spending every attempt within
/// milliseconds. No wait where no timer can be made.
async fn race_back_off(round: u32) {
    let Some(bound_micros) = race_wait_bound_micros(round) else {
        return;
    };
    // A fresh `RandomState` is seeded apart from every other: jitter
    // enough, without a random number crate.
    let jitter = std::collections::hash_map::RandomState::new().hash_one(round);
    let wait = Duration::from_micros(jitter % (bound_micros + 1));
    if let Some(sleep) = timer(|| tokio::time::sleep(wait)) {
        sleep.await;
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How many intents [`preload`] reads ahead of planning them.
const PRELOAD: usize = 32;

/// Reads every field and the version vector of the next [`PRELOAD`] stored
/// records, and of the incoming records they are compared with, so that
/// planning finds them in the cache. A record new to the store is not read:
/// planning only moves it.
///
/// Planning an unchanged record compares it field by field with the stored
/// one; in a sync larger than the cache each record's first read was a miss
/// that the processor waited out alone, since planning one record is too
/// long for it to look ahead to the next. Reading many records in a short
/// loop lets it wait for their misses together (a 100k-record CRDT sync
/// took a fifth less time).
fn preload(intents: &[Intent], stored: &[Option<Stored>]) {
    // The version vector of a record written by more than one replica is
    // an allocation of its own, read first by the comparison: reading its
    // first entry brings it into cache (a few clients fit in one line) at
    // less cost than summing it did.
    let read = |record: &Record| {
        let first = record
            .versions()
            .iter()
            .next()
            .map_or(0, |(_, count)| count);
        record
            .field_states()
            .values()
            .fold(first, |seen, state| seen ^ state.stamp().millis())
    };
    let mut seen = 0;
    for (intent, stored) in intents.iter().zip(stored).take(PRELOAD) {
        let Some(stored) = stored else { continue };
        seen ^= read(&stored.record);
        if let Intent::Merge(record) | Intent::Replace(record) = intent {
            seen ^= read(record);
        }
    }
    // Kept, so that the reads are not optimised away.
    std::hint::black_box(seen);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first wait came after four races lost in a row, where the docs
    /// (and `FREE_RACE_ROUNDS`) say three.
    #[test]
    fn a_write_waits_after_its_third_lost_race_in_a_row() {
        // Attempt `round` follows `round` lost races.
        assert_eq!(race_wait_bound_micros(1), None);
        assert_eq!(race_wait_bound_micros(FREE_RACE_ROUNDS - 1), None);
        assert_eq!(race_wait_bound_micros(FREE_RACE_ROUNDS), Some(1_000));
        assert_eq!(race_wait_bound_micros(FREE_RACE_ROUNDS + 1), Some(2_000));
        assert_eq!(race_wait_bound_micros(MAX_RACE_ATTEMPTS), Some(64_000));
    }

    /// On the default store, the memory backend, whose write reads the
    /// clock under its lock: a build without it refuses the engine.
    #[cfg(feature = "memory")]
    mod watched_during_a_put {
        use std::sync::atomic::AtomicUsize;

        use super::*;

        /// A clock that runs `hook` the first time it is read after the hook
        /// is set: the moment a put stamps its record, inside the store's write.
        #[derive(Default)]
        struct HookedClock {
            hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
        }

        impl std::fmt::Debug for HookedClock {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("HookedClock")
            }
        }

        impl TimeSource for HookedClock {
            fn now_millis(&self) -> u64 {
                let hook = self.hook.lock().take();
                if let Some(hook) = hook {
                    hook();
                }
                1_700_000_000_000
            }
        }

        /// A watcher (an HTTP server's long poll) that arrives while a put of a
        /// new record with no one listening is being inserted is woken by it,
        /// as by every other write; before, it slept until its wait ran out.
        #[tokio::test]
        async fn a_watcher_arriving_during_the_insert_of_a_new_record_is_woken() {
            let clock = Arc::new(HookedClock::default());
            let engine = SyncEngine::builder()
                .client_id("a")
                .time_source(clock.clone())
                .build()
                .await
                .unwrap();
            let woken = Arc::new(AtomicUsize::new(0));
            let (watched, seen) = (engine.clone(), Arc::clone(&woken));
            *clock.hook.lock() = Some(Box::new(move || {
                watched
                    .events()
                    .on_internal(EventKind::RecordAdded, move |_| {
                        seen.fetch_add(1, Ordering::Relaxed);
                    });
            }));
            engine
                .put("notes", &serde_json::json!({"id": "n1"}))
                .await
                .unwrap();
            assert!(clock.hook.lock().is_none(), "the put read no clock");
            assert_eq!(woken.load(Ordering::Relaxed), 1);
        }
    }
}
