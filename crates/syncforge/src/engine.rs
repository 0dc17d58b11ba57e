//! The sync engine: local writes, reads, the change feed and merging remote records.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use syncforge_core::{
    classify, dedupe, validate_collection, validate_id, ChangeKind, ChangePage, ClientId,
    ConflictDetail, Content, Error, Hlc, Record, Result, Stamp, StorageBackend, TimeSource, Write,
    WriteOutcome,
};

use crate::builder::{Config, EngineBuilder};
use crate::retry::retry_transient;

/// How many times one write is re-read and merged again after losing a race
/// against another writer before giving up with [`Error::Precondition`].
const MAX_RACE_ATTEMPTS: u32 = 64;

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
    fn new(collection: &str) -> Self {
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
}

/// Synchronises JSON records between replicas over a pluggable backend.
///
/// Cheap to clone: clones share one engine.
#[derive(Clone)]
pub struct SyncEngine {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    backend: Arc<dyn StorageBackend>,
    clock: Mutex<Hlc>,
    time: Arc<dyn TimeSource>,
    closed: AtomicBool,
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
        Ok(SyncEngine {
            inner: Arc::new(Inner {
                config,
                backend,
                clock: Mutex::new(clock),
                time,
                closed: AtomicBool::new(false),
            }),
        })
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

    fn check_open(&self, collection: &str) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed {
                what: "sync engine",
            });
        }
        validate_collection(collection)
    }

    fn retries(&self) -> u32 {
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
        for _ in 0..MAX_RACE_ATTEMPTS {
            let stored = retry_transient(self.retries(), "get", || {
                backend.get(collection, content.id())
            })
            .await?;
            let write = match stored {
                None => {
                    let stamp = self.stamp_after(None);
                    Write::create(Record::create(content, &stamp))
                }
                Some(stored) => {
                    let mut record = stored.record;
                    let stamp = self.stamp_after(Some(&record));
                    if !record.apply_put(content, &stamp)? {
                        return Ok(record);
                    }
                    Write::replace(record, stored.token)
                }
            };
            match retry_transient(self.retries(), "put", || backend.put(collection, &write)).await?
            {
                WriteOutcome::Written { .. } => return Ok(write.record),
                // Lost a race: the visible record is exactly what was put, so
                // its content is the content to apply again on the new state.
                WriteOutcome::Conflict => {
                    content =
                        Content::from_value(serde_json::Value::Object(write.record.content()))?
                }
            }
        }
        Err(self.lost_races(collection, content.id()))
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
        for _ in 0..MAX_RACE_ATTEMPTS {
            let Some(stored) =
                retry_transient(self.retries(), "get", || backend.get(collection, id)).await?
            else {
                return Ok(None);
            };
            let mut record = stored.record;
            let stamp = self.stamp_after(Some(&record));
            if !record.apply_delete(&stamp)? {
                return Ok(Some(record));
            }
            let write = Write::replace(record, stored.token);
            match retry_transient(self.retries(), "put", || backend.put(collection, &write)).await?
            {
                WriteOutcome::Written { .. } => return Ok(Some(write.record)),
                WriteOutcome::Conflict => continue,
            }
        }
        Err(self.lost_races(collection, id))
    }

    /// Changes after the sequence `cursor` (0 for the beginning), at most
    /// `limit`: every change applied to this replica, local or synced, in the
    /// order applied. Continue from the returned page's `next`.
    pub async fn changes(&self, collection: &str, cursor: u64, limit: usize) -> Result<ChangePage> {
        self.check_open(collection)?;
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
    /// transient backend failures retried with back-off.
    pub async fn sync(&self, collection: &str, remote: Vec<Record>) -> Result<SyncResult> {
        self.check_open(collection)?;
        let started = Instant::now();
        self.observe_batch(&remote)?;
        let strategy = self.inner.config.conflict_strategy;
        let mut incoming = dedupe(remote, strategy)?;
        let mut result = SyncResult::new(collection);
        while !incoming.is_empty() {
            let rest = incoming.split_off(incoming.len().min(self.inner.config.batch_size));
            self.sync_batch(collection, incoming, &mut result).await?;
            incoming = rest;
        }
        result.timestamp = self.inner.time.now_millis();
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
        mut pending: Vec<Record>,
        result: &mut SyncResult,
    ) -> Result<()> {
        let strategy = self.inner.config.conflict_strategy;
        let backend = &self.inner.backend;
        for _ in 0..MAX_RACE_ATTEMPTS {
            let ids: Vec<&str> = pending.iter().map(Record::id).collect();
            let locals = retry_transient(self.retries(), "get_many", || {
                backend.get_many(collection, &ids)
            })
            .await?;
            drop(ids);
            let mut writes = Vec::with_capacity(pending.len());
            let mut plans = Vec::with_capacity(pending.len());
            for (remote, local) in pending.into_iter().zip(locals) {
                let (local, token) = match local {
                    Some(stored) => (Some(stored.record), Some(stored.token)),
                    None => (None, None),
                };
                let classified = classify(collection, local.as_ref(), remote, strategy)?;
                if classified.kind == ChangeKind::Unchanged {
                    result.count(ChangeKind::Unchanged);
                    continue;
                }
                writes.push(Write {
                    record: classified.merged,
                    expected: token,
                });
                plans.push((classified.kind, classified.conflict));
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
            for ((write, (kind, conflict)), outcome) in writes.into_iter().zip(plans).zip(outcomes)
            {
                match outcome {
                    WriteOutcome::Written { .. } => {
                        result.count(kind);
                        result.conflicts.extend(conflict);
                    }
                    // Lost a race: merge what we meant to write (local ⊔ remote)
                    // into the new stored state. Merge is a join, so nothing of
                    // the remote record is lost.
                    WriteOutcome::Conflict => pending.push(write.record),
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
        }
        let id = pending.first().map_or("", Record::id);
        Err(self.lost_races(collection, id))
    }

    /// Closes the engine and its backend handle. Never deletes stored data.
    /// Later calls fail with [`Error::Closed`]; closing twice is harmless.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.backend.close().await
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }
}
