//! The sync engine: local writes, reads, the change feed and merging remote records.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use syncforge_core::{
    classify, dedupe, validate_collection, validate_id, validate_page_limit, ChangeKind,
    ChangePage, ClientId, ConflictDetail, Content, Error, Hlc, Record, Result, Stamp,
    StorageBackend, TimeSource, Write, WriteOutcome,
};
use tracing::field::Empty;
use tracing::Instrument;

use crate::auto_sync::AutoSync;
use crate::builder::{Config, EngineBuilder};
use crate::events::{EventKind, EventReceiver, Events, SyncEvent, SyncTrigger};
use crate::retry::retry_transient;

/// How many times one write is re-read and merged again after losing a race
/// against another writer before giving up with [`Error::Precondition`].
const MAX_RACE_ATTEMPTS: u32 = 64;

/// The events a sync batch emits per written record.
const RECORD_EVENTS: [EventKind; 4] = [
    EventKind::Conflict,
    EventKind::RecordAdded,
    EventKind::RecordUpdated,
    EventKind::RecordDeleted,
];

/// What a [`SyncEngine::sync`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncResult {
    /// The collection synced.
    pub collection: String,
    /// Records that became visible.
    pub added: usize,
    /// Records that changed.
    pub updated: usize,
    /// Records that became deleted.
    pub deleted: usize,
    /// Records that changed nothing.
    pub unchanged: usize,
    /// Concurrent edits found and how each was resolved.
    pub conflicts: Vec<ConflictDetail>,
    /// When the sync finished, milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// How long it took.
    pub duration: Duration,
}

impl SyncResult {
    pub(crate) fn new(collection: &str) -> Self {
        SyncResult {
            collection: collection.to_owned(),
            added: 0,
            updated: 0,
            deleted: 0,
            unchanged: 0,
            conflicts: Vec::new(),
            timestamp: 0,
            duration: Duration::ZERO,
        }
    }

    fn count(&mut self, kind: ChangeKind) {
        match kind {
            ChangeKind::Added => self.added += 1,
            ChangeKind::Updated => self.updated += 1,
            ChangeKind::Deleted => self.deleted += 1,
            ChangeKind::Unchanged => self.unchanged += 1,
        }
    }

    /// Adds the counts and conflicts of a later sync of the same collection.
    pub(crate) fn absorb(&mut self, later: SyncResult) {
        self.added += later.added;
        self.updated += later.updated;
        self.deleted += later.deleted;
        self.unchanged += later.unchanged;
        self.conflicts.extend(later.conflicts);
        self.timestamp = later.timestamp;
        self.duration += later.duration;
    }
}

/// The metadata key of the store's id.
const STORE_ID_KEY: &str = "syncforge/store-id/v1";

/// Reads the store's id, creating it on the store's first open.
async fn load_store_id(backend: &dyn StorageBackend, retries: u32) -> Result<String> {
    let existing = retry_transient(retries, "get_meta", || backend.get_meta(STORE_ID_KEY)).await?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let id = ulid::Ulid::new().to_string();
    retry_transient(retries, "set_meta", || backend.set_meta(STORE_ID_KEY, &id)).await?;
    Ok(id)
}

/// What one write of a sync batch is, kept beside the write until the store
/// confirms it.
struct Planned {
    kind: ChangeKind,
    conflict: Option<ConflictDetail>,
    /// The local state before the write, kept only when someone listens.
    previous: Option<Record>,
    /// The merged state is exactly the incoming record (see `sync_batch`).
    echo: bool,
}

/// Synchronises JSON records between replicas over a pluggable backend.
///
/// Cheap to clone: clones share one engine.
#[derive(Clone)]
pub struct SyncEngine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: Config,
    backend: Arc<dyn StorageBackend>,
    /// Identifies this store's change-feed numbering (see [`SyncPeer::feed_id`](crate::SyncPeer::feed_id)).
    store_id: String,
    clock: Mutex<Hlc>,
    time: Arc<dyn TimeSource>,
    closed: AtomicBool,
    pub(crate) events: Events,
    pub(crate) auto_sync: AutoSync,
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("config", &self.inner.config)
            .field("backend", &self.inner.backend.name())
            .finish_non_exhaustive()
    }
}

impl SyncEngine {
    /// A builder with the original library's defaults.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    pub(crate) async fn open(
        config: Config,
        backend: Arc<dyn StorageBackend>,
        time: Arc<dyn TimeSource>,
    ) -> Result<SyncEngine> {
        let mut clock = Hlc::with_time(config.client_id.clone(), time.clone())
            .with_max_drift(config.max_clock_drift);
        let newest = retry_transient(config.max_retries, "newest_stamp", || {
            backend.newest_stamp()
        })
        .await?;
        if let Some(stamp) = newest {
            clock.seed(&stamp);
        }
        let store_id = load_store_id(backend.as_ref(), config.max_retries).await?;
        let config_event_capacity = config.event_capacity;
        Ok(SyncEngine {
            inner: Arc::new(Inner {
                config,
                backend,
                store_id,
                clock: Mutex::new(clock),
                time,
                closed: AtomicBool::new(false),
                events: Events::new(config_event_capacity),
                auto_sync: AutoSync::default(),
            }),
        })
    }

    /// The id of this engine's store, created on its first open: peers use it
    /// to notice that a replica's store (and so its change feed) was replaced.
    pub fn store_id(&self) -> &str {
        &self.inner.store_id
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// This replica's id.
    pub fn client_id(&self) -> &ClientId {
        &self.inner.config.client_id
    }

    /// The storage backend (the original's `getBackend()`).
    pub fn backend(&self) -> &Arc<dyn StorageBackend> {
        &self.inner.backend
    }

    /// The event hub: closure handlers (`on`, `once`, `off`, ...) and
    /// receivers (the original's `engine.events`).
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
        // The clock's state is two integers updated together; a panic elsewhere
        // cannot leave it torn, so a poisoned lock is still usable.
        self.inner
            .clock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A stamp for a local write to `record`: newer than anything it holds.
    fn stamp_after(&self, record: Option<&Record>) -> Stamp {
        let mut clock = self.clock();
        if let Some(record) = record {
            clock.seed(record.newest_stamp());
        }
        clock.now()
    }

    pub(crate) fn check_open(&self, collection: &str) -> Result<()> {
        self.check_open_engine()?;
        validate_collection(collection)
    }

    pub(crate) fn check_open_engine(&self) -> Result<()> {
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

    /// Stores `doc` (any value serialising to a JSON object with a string
    /// `id`), replacing the record's content: afterwards the visible record is
    /// exactly `doc`. Only changed fields get a new stamp; left-out fields are
    /// removed. A put that changes nothing writes nothing and returns the
    /// stored record. Metadata keys (`_version`, ...) in `doc` are checked for
    /// type and ignored, so a record read from the engine can be put back.
    pub async fn put<T: Serialize + ?Sized>(&self, collection: &str, doc: &T) -> Result<Record> {
        self.check_open(collection)?;
        let value = serde_json::to_value(doc).map_err(|e| {
            Error::invalid_record(None, format!("cannot be serialised to JSON: {e}"))
        })?;
        let mut content = Content::from_value(value)?;
        let backend = &self.inner.backend;
        let listening = self
            .inner
            .events
            .wants_any(&[EventKind::RecordAdded, EventKind::RecordUpdated]);
        // A write that lost a race, or whose answer a transient failure hid:
        // what it meant to store and the state it replaced.
        let mut raced: Option<(Record, Option<Record>)> = None;
        for _ in 0..MAX_RACE_ATTEMPTS {
            let stored = retry_transient(self.retries(), "get", || {
                backend.get(collection, content.id())
            })
            .await?;
            if let Some((intended, previous)) = raced.take() {
                if stored.as_ref().is_some_and(|s| s.record == intended) {
                    // It happened after all (or someone made the same change).
                    if listening {
                        self.emit_put_event(collection, intended.clone(), previous);
                    }
                    return Ok(intended);
                }
            }
            let mut previous = None;
            let write = match stored {
                None => {
                    let stamp = self.stamp_after(None);
                    Write::create(Record::create(content, &stamp))
                }
                Some(stored) => {
                    let mut record = stored.record;
                    if listening {
                        previous = Some(record.clone());
                    }
                    let stamp = self.stamp_after(Some(&record));
                    if !record.apply_put(content, &stamp)? {
                        return Ok(record);
                    }
                    Write::replace(record, stored.token)
                }
            };
            match retry_transient(self.retries(), "put", || backend.put(collection, &write)).await?
            {
                WriteOutcome::Written { .. } => {
                    if listening {
                        self.emit_put_event(collection, write.record.clone(), previous);
                    }
                    return Ok(write.record);
                }
                // Lost a race: the visible record is exactly what was put, so
                // its content is the content to apply again on the new state.
                WriteOutcome::Conflict => {
                    content =
                        Content::from_value(serde_json::Value::Object(write.record.content()))?;
                    raced = Some((write.record, previous));
                }
            }
        }
        Err(self.lost_races(collection, content.id()))
    }

    /// Emits `record:added` or `record:updated` for a put that replaced
    /// `previous` (none, or a deleted record: added).
    fn emit_put_event(&self, collection: &str, record: Record, previous: Option<Record>) {
        let kind = match &previous {
            Some(p) if !p.is_deleted() => ChangeKind::Updated,
            _ => ChangeKind::Added,
        };
        self.emit_record_event(collection, kind, record, previous);
    }

    fn lost_races(&self, collection: &str, id: &str) -> Error {
        tracing::warn!(
            collection,
            id,
            attempts = MAX_RACE_ATTEMPTS,
            "write kept losing races with other writers"
        );
        Error::Precondition {
            collection: collection.to_owned(),
            id: id.to_owned(),
        }
    }

    /// One record, soft-deleted ones included (`is_deleted()` tells).
    pub async fn get(&self, collection: &str, id: &str) -> Result<Option<Record>> {
        self.check_open(collection)?;
        validate_id(id)?;
        let backend = &self.inner.backend;
        let stored = retry_transient(self.retries(), "get", || backend.get(collection, id)).await?;
        Ok(stored.map(|s| s.record))
    }

    /// One record's content deserialised as `T` (metadata left out).
    pub async fn get_as<T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<T>> {
        self.get(collection, id)
            .await?
            .map(|r| r.get_as())
            .transpose()
    }

    /// Every record of the collection, soft-deleted ones included.
    pub async fn get_all(&self, collection: &str) -> Result<Vec<Record>> {
        self.check_open(collection)?;
        let backend = &self.inner.backend;
        retry_transient(self.retries(), "get_all", || backend.get_all(collection)).await
    }

    /// The content of every live (not deleted) record deserialised as `T`.
    pub async fn get_all_as<T: DeserializeOwned>(&self, collection: &str) -> Result<Vec<T>> {
        self.get_all(collection)
            .await?
            .iter()
            .filter(|r| !r.is_deleted())
            .map(Record::get_as)
            .collect()
    }

    /// Soft-deletes a record: it stays stored, marked deleted, so the deletion
    /// travels in syncs. Returns the deleted record, or `None` (writing
    /// nothing) when the id is unknown. Deleting a deleted record writes nothing.
    pub async fn delete(&self, collection: &str, id: &str) -> Result<Option<Record>> {
        self.check_open(collection)?;
        validate_id(id)?;
        let backend = &self.inner.backend;
        let listening = self.inner.events.wants(EventKind::RecordDeleted);
        // The tombstone of a write that lost a race or whose answer was lost.
        let mut raced: Option<Record> = None;
        for _ in 0..MAX_RACE_ATTEMPTS {
            let Some(stored) =
                retry_transient(self.retries(), "get", || backend.get(collection, id)).await?
            else {
                return Ok(None);
            };
            if raced
                .take()
                .is_some_and(|intended| intended == stored.record)
            {
                // It happened after all (or someone made the same change).
                if listening {
                    self.emit_record_event(
                        collection,
                        ChangeKind::Deleted,
                        stored.record.clone(),
                        None,
                    );
                }
                return Ok(Some(stored.record));
            }
            let mut record = stored.record;
            let stamp = self.stamp_after(Some(&record));
            if !record.apply_delete(&stamp)? {
                return Ok(Some(record));
            }
            let write = Write::replace(record, stored.token);
            match retry_transient(self.retries(), "put", || backend.put(collection, &write)).await?
            {
                WriteOutcome::Written { .. } => {
                    if listening {
                        self.emit_record_event(
                            collection,
                            ChangeKind::Deleted,
                            write.record.clone(),
                            None,
                        );
                    }
                    return Ok(Some(write.record));
                }
                WriteOutcome::Conflict => raced = Some(write.record),
            }
        }
        Err(self.lost_races(collection, id))
    }

    /// Changes after the sequence `cursor` (0 for the beginning), at most
    /// `limit`: every change applied to this replica, local or synced, in the
    /// order applied. Continue from the returned page's `next`.
    ///
    /// A `limit` of 0 is refused with [`Error::InvalidArgument`]: a page that
    /// can hold nothing would never let a reader advance.
    pub async fn changes(&self, collection: &str, cursor: u64, limit: usize) -> Result<ChangePage> {
        self.check_open(collection)?;
        validate_page_limit(limit)?;
        let backend = &self.inner.backend;
        retry_transient(self.retries(), "changes", || {
            backend.changes(collection, cursor, limit)
        })
        .await
    }

    /// Records whose `_timestamp` is later than `millis`. Time-based, as in the
    /// original: it misses records that arrive by sync carrying older
    /// timestamps. Prefer [`changes`](Self::changes) for incremental sync.
    pub async fn get_changes_since(&self, collection: &str, millis: u64) -> Result<Vec<Record>> {
        self.check_open(collection)?;
        let backend = &self.inner.backend;
        retry_transient(self.retries(), "changes_since_timestamp", || {
            backend.changes_since_timestamp(collection, millis)
        })
        .await
    }

    /// Merges remote records into the collection with the configured strategy.
    ///
    /// The batch is checked whole first: a record with a stamp further ahead
    /// of local time than the allowed drift fails the sync with
    /// [`Error::ClockDrift`] naming the records, and nothing is written.
    /// Records are then merged and written `batch_size` at a time, each write
    /// conditional on what was read (a lost race is re-read and merged again),
    /// transient backend failures retried with back-off. Reads only the
    /// records the batch names, never the whole collection.
    ///
    /// Emits `sync:start`, then per batch the record and conflict events of
    /// the writes the store confirmed and a `sync:progress`, then exactly one
    /// of `sync:success` or `sync:error` (the error is also returned). A
    /// failed sync leaves every record either as it was or fully merged: the
    /// batches written before the failure stay, and syncing the same records
    /// again completes the rest.
    pub async fn sync(&self, collection: &str, remote: Vec<Record>) -> Result<SyncResult> {
        self.sync_triggered(collection, remote, SyncTrigger::Call, None)
            .await
    }

    /// [`sync`](Self::sync) with its trigger named in `sync:start`. With
    /// `echoes`, collects the change sequences of writes whose result is
    /// exactly the incoming record: the sender already holds those states.
    pub(crate) async fn sync_triggered(
        &self,
        collection: &str,
        remote: Vec<Record>,
        trigger: SyncTrigger,
        echoes: Option<&mut HashSet<u64>>,
    ) -> Result<SyncResult> {
        let events = &self.inner.events;
        if events.wants(EventKind::SyncStart) {
            events.emit(SyncEvent::SyncStart {
                collection: collection.to_owned(),
                record_count: remote.len(),
                timestamp: self.now_millis(),
                trigger,
            });
        }
        let span = tracing::info_span!(
            "sync",
            collection,
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
    pub(crate) fn emit_sync_error(&self, collection: &str, error: &Error) {
        let events = &self.inner.events;
        if events.wants(EventKind::SyncError) {
            events.emit(SyncEvent::SyncError {
                collection: collection.to_owned(),
                error: error.to_string(),
                transient: error.is_transient(),
                timestamp: self.now_millis(),
            });
        }
    }

    async fn sync_unreported(
        &self,
        collection: &str,
        remote: Vec<Record>,
        mut echoes: Option<&mut HashSet<u64>>,
    ) -> Result<SyncResult> {
        self.check_open(collection)?;
        let started = Instant::now();
        self.observe_batch(&remote)?;
        let strategy = self.inner.config.conflict_strategy;
        let mut incoming = dedupe(remote, strategy)?.into_iter();
        let total = incoming.len();
        let mut done = 0;
        let mut result = SyncResult::new(collection);
        loop {
            // Batches come off the front of one iterator: splitting the rest
            // off the vector instead moved every remaining record once per
            // batch, quadratic in the size of the sync.
            let batch: Vec<Record> = incoming
                .by_ref()
                .take(self.inner.config.batch_size)
                .collect();
            if batch.is_empty() {
                break;
            }
            done += batch.len();
            self.sync_batch(collection, batch, &mut result, echoes.as_deref_mut())
                .await?;
            if self.inner.events.wants(EventKind::SyncProgress) {
                self.inner.events.emit(SyncEvent::SyncProgress {
                    collection: collection.to_owned(),
                    done,
                    total,
                });
            }
        }
        result.timestamp = self.now_millis();
        result.duration = started.elapsed();
        Ok(result)
    }

    /// Refuses the whole batch if any stamp lies too far ahead; otherwise moves
    /// the clock past every stamp in it.
    fn observe_batch(&self, remote: &[Record]) -> Result<()> {
        let mut clock = self.clock();
        let mut offenders = Vec::new();
        let mut worst = 0;
        let mut newest: Option<&Stamp> = None;
        for record in remote {
            let stamp = record.newest_stamp();
            if let Some(ahead) = clock.drift_excess(stamp) {
                offenders.push(record.id().to_owned());
                worst = worst.max(ahead);
            }
            if newest.is_none_or(|n| stamp > n) {
                newest = Some(stamp);
            }
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
        Ok(())
    }

    async fn sync_batch(
        &self,
        collection: &str,
        incoming: Vec<Record>,
        result: &mut SyncResult,
        mut echoes: Option<&mut HashSet<u64>>,
    ) -> Result<()> {
        // Each record to merge, with the plan of a write of it that lost a
        // race (or whose outcome a transient failure hid).
        let mut pending: Vec<(Record, Option<Planned>)> =
            incoming.into_iter().map(|record| (record, None)).collect();
        let strategy = self.inner.config.conflict_strategy;
        let backend = &self.inner.backend;
        // Checked once per batch: without listeners nothing below copies a
        // record for an event.
        let listening = self.inner.events.wants_any(&RECORD_EVENTS);
        for attempt in 0..MAX_RACE_ATTEMPTS {
            // Echoes are recognised on the first attempt only: after a lost
            // race the pending record is our own merge, not what the sender
            // holds, and calling a write "not an echo" only costs a resend.
            let track_echoes = echoes.is_some() && attempt == 0;
            let ids: Vec<&str> = pending.iter().map(|(record, _)| record.id()).collect();
            let locals = retry_transient(self.retries(), "get_many", || {
                backend.get_many(collection, &ids)
            })
            .await?;
            drop(ids);
            let mut writes = Vec::with_capacity(pending.len());
            let mut plans = Vec::with_capacity(pending.len());
            for ((remote, raced), local) in pending.into_iter().zip(locals) {
                let (local, token) = match local {
                    Some(stored) => (Some(stored.record), Some(stored.token)),
                    None => (None, None),
                };
                if let Some(plan) = raced {
                    // The store holds exactly what we meant to write: the
                    // write whose answer was lost did happen (or another
                    // writer made the same change). Report it as planned.
                    if local.as_ref() == Some(&remote) {
                        self.confirm(collection, remote, plan, result, listening);
                        continue;
                    }
                }
                // A record new here is stored as received, so it is an echo
                // without comparing; otherwise compare the merge with a copy.
                let sent = (track_echoes && local.is_some()).then(|| remote.clone());
                let classified = classify(collection, local.as_ref(), remote, strategy)?;
                if classified.kind == ChangeKind::Unchanged {
                    result.count(ChangeKind::Unchanged);
                    continue;
                }
                let echo = track_echoes && sent.is_none_or(|sent| sent == classified.merged);
                writes.push(Write {
                    record: classified.merged,
                    expected: token,
                });
                plans.push(Planned {
                    kind: classified.kind,
                    conflict: classified.conflict,
                    previous: if listening { local } else { None },
                    echo,
                });
            }
            if writes.is_empty() {
                return Ok(());
            }
            let outcomes = retry_transient(self.retries(), "put_batch", || {
                backend.put_batch(collection, &writes)
            })
            .await?;
            if outcomes.len() != writes.len() {
                return Err(Error::storage(
                    backend.name(),
                    format!(
                        "put_batch answered {} outcomes for {} writes",
                        outcomes.len(),
                        writes.len()
                    ),
                ));
            }
            pending = Vec::new();
            for ((write, plan), outcome) in writes.into_iter().zip(plans).zip(outcomes) {
                match outcome {
                    WriteOutcome::Written { sequence, .. } => {
                        if plan.echo {
                            if let Some(echoes) = echoes.as_deref_mut() {
                                echoes.insert(sequence);
                            }
                        }
                        self.confirm(collection, write.record, plan, result, listening);
                    }
                    // Lost a race: merge what we meant to write (local ⊔ remote)
                    // into the new stored state. Merge is a join, so nothing of
                    // the remote record is lost.
                    WriteOutcome::Conflict => pending.push((write.record, Some(plan))),
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
        }
        let id = pending.first().map_or("", |(record, _)| record.id());
        Err(self.lost_races(collection, id))
    }

    /// Counts a write the store holds and emits its events.
    fn confirm(
        &self,
        collection: &str,
        written: Record,
        plan: Planned,
        result: &mut SyncResult,
        listening: bool,
    ) {
        result.count(plan.kind);
        if let Some(conflict) = plan.conflict {
            if listening && self.inner.events.wants(EventKind::Conflict) {
                self.inner
                    .events
                    .emit(SyncEvent::Conflict(Arc::new(conflict.clone())));
            }
            result.conflicts.push(conflict);
        }
        if listening {
            self.emit_record_event(collection, plan.kind, written, plan.previous);
        }
    }

    /// Emits the `record:*` event of a confirmed write of `kind`.
    fn emit_record_event(
        &self,
        collection: &str,
        kind: ChangeKind,
        record: Record,
        previous: Option<Record>,
    ) {
        let collection = collection.to_owned();
        let event = match (kind, previous) {
            (ChangeKind::Deleted, _) => SyncEvent::RecordDeleted { collection, record },
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

    /// Closes the engine and its backend handle. Never deletes stored data.
    /// Stops auto-sync, forgets its peers and removes every event handler (as
    /// the original's `destroy` does); receivers see the stream end when the
    /// last handle on the engine is dropped. Later calls fail with
    /// [`Error::Closed`]; closing twice is harmless.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_auto_sync();
        self.inner.auto_sync.clear_peers();
        self.inner.events.remove_all_listeners(None);
        self.inner.backend.close().await
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
