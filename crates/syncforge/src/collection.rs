//! [`Collection`]: a handle on one collection of an engine, and the
//! engine-level operations by collection name that go through it.

use std::future::Future;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;
use syncforge_core::{
    ChangePage, CollectionName, Cursor, Error, IntoName, Record, RecordId, Result,
};

use crate::engine::{Intent, PutAtOnce, SyncEngine};
use crate::events::SyncTrigger;
use crate::feed::PageOptions;
use crate::result::SyncResult;
use crate::retry::retry_transient;

/// One collection of a [`SyncEngine`]: every operation on its records.
///
/// Made by [`SyncEngine::collection`], which validates the name once. Cheap
/// to clone (a shared engine and a shared name).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> syncforge::Result<()> {
/// use serde_json::json;
/// use syncforge::SyncEngine;
///
/// let engine = SyncEngine::builder().client_id("phone").build().await?;
/// let notes = engine.collection("notes")?;
/// notes.put(&json!({"id": "n1", "title": "Q3"})).await?;
/// let note = notes.get("n1").await?.expect("just written");
/// assert_eq!(note.get("title"), Some(json!("Q3")));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Collection {
    engine: SyncEngine,
    name: CollectionName,
}

impl SyncEngine {
    /// A handle on collection `name`: validates the name (1 to 1024 bytes,
    /// no control characters) and fails with [`Error::InvalidCollection`]
    /// otherwise. Creating a handle touches no storage.
    pub fn collection(&self, name: impl IntoName<CollectionName>) -> Result<Collection> {
        Ok(Collection {
            engine: self.clone(),
            name: name.into_name()?,
        })
    }

    /// [`Collection::put`] on collection `collection`.
    pub async fn put<T: Serialize + ?Sized>(
        &self,
        collection: impl IntoName<CollectionName>,
        doc: &T,
    ) -> Result<Record> {
        // The name is lent, not made into a handle or even copied: a handle
        // holds a clone of the engine, and a copy of the name a shared
        // reference, each a count changed twice a put (atomically, after
        // the put's writes, so waiting for them). A put the store cannot
        // end at once copies it to go on.
        let at_once = collection.with_name(|collection| {
            self.put_at_once(collection, doc).map(|put| match put {
                PutAtOnce::Done(record) => Ok(record),
                PutAtOnce::Rest(rest) => Err((collection.clone(), rest)),
            })
        })??;
        match at_once {
            Ok(record) => Ok(record),
            Err((collection, rest)) => self.put_rest(&collection, rest).await,
        }
    }

    /// [`Collection::get`] on collection `collection`.
    pub async fn get(
        &self,
        collection: impl IntoName<CollectionName>,
        id: impl IntoName<RecordId>,
    ) -> Result<Option<Record>> {
        self.collection(collection)?.get(id).await
    }

    /// [`Collection::get_as`] on collection `collection`.
    pub async fn get_as<T: DeserializeOwned>(
        &self,
        collection: impl IntoName<CollectionName>,
        id: impl IntoName<RecordId>,
    ) -> Result<Option<T>> {
        self.collection(collection)?.get_as(id).await
    }

    /// [`Collection::get_all`] on collection `collection`.
    pub async fn get_all(&self, collection: impl IntoName<CollectionName>) -> Result<Vec<Record>> {
        self.collection(collection)?.get_all().await
    }

    /// [`Collection::get_all_as`] on collection `collection`.
    pub async fn get_all_as<T: DeserializeOwned>(
        &self,
        collection: impl IntoName<CollectionName>,
    ) -> Result<Vec<T>> {
        self.collection(collection)?.get_all_as().await
    }

    /// [`Collection::delete`] on collection `collection`.
    pub async fn delete(
        &self,
        collection: impl IntoName<CollectionName>,
        id: impl IntoName<RecordId>,
    ) -> Result<Option<Record>> {
        self.collection(collection)?.delete(id).await
    }

    /// [`Collection::changes`] on collection `collection`.
    pub async fn changes(
        &self,
        collection: impl IntoName<CollectionName>,
        after: Cursor,
        options: PageOptions,
    ) -> Result<ChangePage> {
        self.collection(collection)?.changes(after, options).await
    }

    /// [`Collection::get_changes_since`] on collection `collection`.
    pub async fn get_changes_since(
        &self,
        collection: impl IntoName<CollectionName>,
        millis: u64,
    ) -> Result<Vec<Record>> {
        self.collection(collection)?.get_changes_since(millis).await
    }

    /// [`Collection::sync`] on collection `collection`.
    pub fn sync(
        &self,
        collection: impl IntoName<CollectionName>,
        records: impl IntoIterator<Item = Record>,
    ) -> impl Future<Output = Result<SyncResult>> + Send + 'static {
        let handle = self.collection(collection);
        let records: Vec<Record> = records.into_iter().collect();
        async move { handle?.sync_vec(records).await }
    }

    /// [`Collection::import`] on collection `collection`.
    pub fn import(
        &self,
        collection: impl IntoName<CollectionName>,
        records: impl IntoIterator<Item = Record>,
    ) -> impl Future<Output = Result<SyncResult>> + Send + 'static {
        let handle = self.collection(collection);
        let records: Vec<Record> = records.into_iter().collect();
        async move { handle?.import_vec(records).await }
    }

    /// Names of the collections holding at least one record.
    pub async fn list_collections(&self) -> Result<Vec<CollectionName>> {
        self.check_open()?;
        let backend = self.store();
        retry_transient(self.retries(), "list_collections", || {
            backend.list_collections()
        })
        .await
    }
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &CollectionName {
        &self.name
    }

    /// The engine this collection belongs to.
    pub fn engine(&self) -> &SyncEngine {
        &self.engine
    }

    /// Stores `doc` (any value serialising to a JSON object with a string
    /// `id`), replacing the record's content: afterwards the visible record is
    /// exactly `doc`. Only changed fields get a new stamp; left-out fields are
    /// removed. A put that changes nothing writes nothing and returns the
    /// stored record. Metadata keys (`_version`, ...) in `doc` are checked for
    /// type and ignored, so a record read from the engine can be put back.
    ///
    /// A field nested deeper than [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH)
    /// is refused with [`Error::InvalidRecord`] naming the record and field,
    /// before `doc` is converted to JSON: however deep `doc` nests, the put
    /// fails and writes nothing, it never overflows the stack.
    ///
    /// `doc`'s `Serialize` may be called more than once for one put (a
    /// field is offered to a writer of plain values before one of nested
    /// ones, and is measured before it is converted), so it must describe
    /// the same value every time, as every derived implementation does.
    pub async fn put<T: Serialize + ?Sized>(&self, doc: &T) -> Result<Record> {
        match self.engine.put_at_once(&self.name, doc)? {
            PutAtOnce::Done(record) => Ok(record),
            PutAtOnce::Rest(rest) => self.engine.put_rest(&self.name, rest).await,
        }
    }

    /// One record, soft-deleted ones included (`is_deleted()` tells).
    pub async fn get(&self, id: impl IntoName<RecordId>) -> Result<Option<Record>> {
        self.engine.check_open()?;
        let id = id.into_name()?;
        let backend = self.engine.store();
        let stored = retry_transient(self.engine.retries(), "get", || {
            backend.get(&self.name, &id)
        })
        .await?;
        Ok(stored.map(|s| s.record))
    }

    /// One record's content deserialised as `T` (metadata left out), or
    /// `None` when the record is unknown or soft-deleted: typed access reads
    /// live records only, like [`get_all_as`](Self::get_all_as).
    pub async fn get_as<T: DeserializeOwned>(
        &self,
        id: impl IntoName<RecordId>,
    ) -> Result<Option<T>> {
        self.get(id)
            .await?
            .filter(|record| !record.is_deleted())
            .map(|record| record.get_as())
            .transpose()
    }

    /// Every record of the collection, soft-deleted ones included.
    pub async fn get_all(&self) -> Result<Vec<Record>> {
        self.engine.check_open()?;
        let backend = self.engine.store();
        retry_transient(self.engine.retries(), "get_all", || {
            backend.get_all(&self.name)
        })
        .await
    }

    /// The content of every live (not soft-deleted) record deserialised as
    /// `T`, like [`get_as`](Self::get_as).
    pub async fn get_all_as<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.get_all()
            .await?
            .iter()
            .filter(|record| !record.is_deleted())
            .map(Record::get_as)
            .collect()
    }

    /// Soft-deletes a record: it stays stored, marked deleted, so the deletion
    /// travels in syncs. Returns the deleted record, or `None` (writing
    /// nothing) when the id is unknown. Deleting a deleted record writes
    /// nothing.
    pub async fn delete(&self, id: impl IntoName<RecordId>) -> Result<Option<Record>> {
        self.engine.check_open()?;
        let id = id.into_name()?;
        self.apply_one(id, Intent::Delete).await
    }

    /// The changes after `after` ([`Cursor::START`] for the beginning), at
    /// most `options.get_limit()` of them: every change applied to this replica,
    /// local or synced, in the order applied, each record at most once at its
    /// latest change. Continue from the page's `next`.
    ///
    /// A limit of 0 is refused with [`Error::InvalidArgument`]: a page that
    /// can hold nothing would never let a reader advance. So is a cursor past
    /// [`Cursor::LARGEST`], which no store hands out. A page the store
    /// answers out of order, or saying more without advancing, is
    /// [`Error::Storage`]: a reader following it would read back over what
    /// it read, or ask the same page for ever.
    pub async fn changes(&self, after: Cursor, options: PageOptions) -> Result<ChangePage> {
        self.engine.check_open()?;
        let limit = options.checked_limit()?;
        // The caller's mistake, not the store's: without this, the store's
        // page (whose `next` cannot be before `after`) would be refused
        // below as a storage fault.
        if after > Cursor::LARGEST {
            return Err(Error::InvalidArgument {
                name: "after",
                reason: format!(
                    "cursor {after} is past {}, the largest any store hands out",
                    Cursor::LARGEST
                ),
            });
        }
        let backend = self.engine.store();
        let page = retry_transient(self.engine.retries(), "changes", || {
            backend.changes(&self.name, after, limit)
        })
        .await?;
        // A reader following `next` would go back over what it read, or ask
        // the same page for ever: a store's fault, not the reader's.
        page.check_after(after)
            .map_err(|reason| Error::storage(backend.name(), reason))?;
        Ok(page)
    }

    /// Records whose `_timestamp` is later than `millis`. Time-based: it
    /// misses records that arrive by sync carrying older timestamps. Prefer
    /// [`changes`](Self::changes) for incremental sync.
    pub async fn get_changes_since(&self, millis: u64) -> Result<Vec<Record>> {
        self.engine.check_open()?;
        let backend = self.engine.store();
        retry_transient(self.engine.retries(), "changes_since_timestamp", || {
            backend.changes_since_timestamp(&self.name, millis)
        })
        .await
    }

    /// Merges records from another replica into the collection with the
    /// configured strategy. A [`ChangePage`] can be passed as it is.
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
    /// of `sync:success` or `sync:error` (the error is also returned). A sync
    /// cancelled by dropping its future (a timeout around it, or
    /// `stop_auto_sync` and `close` during an auto-sync window) emits
    /// neither: it did not end, it stopped at an await (a write already
    /// sent may land without its event). A
    /// failed sync leaves every record either as it was or fully merged: the
    /// batches written before the failure stay, and syncing the same records
    /// again completes the rest.
    pub fn sync(
        &self,
        records: impl IntoIterator<Item = Record>,
    ) -> impl Future<Output = Result<SyncResult>> + Send + 'static {
        let records: Vec<Record> = records.into_iter().collect();
        let handle = self.clone();
        async move { handle.sync_vec(records).await }
    }

    async fn sync_vec(&self, records: Vec<Record>) -> Result<SyncResult> {
        self.engine
            .sync_records(&self.name, records, SyncTrigger::Call, None)
            .await
    }

    /// Stores each record exactly as given, replacing what the store holds
    /// for its id, without a merge. For seeding a store in tests,
    /// restoring an export, or migrating data the caller vouches for; to
    /// combine records with what replicas already hold, use
    /// [`sync`](Self::sync). The engine's clock moves past every imported
    /// stamp, so later local writes still win over them. Writes go through
    /// the same conditional write path as every other write and emit the same
    /// record events. Refused before anything is written: repeated ids
    /// ([`Error::InvalidArgument`]), and, as by [`sync`](Self::sync), stamps
    /// further ahead of local time than the allowed drift
    /// ([`Error::ClockDrift`]; the clock would carry them into every later
    /// local write).
    pub fn import(
        &self,
        records: impl IntoIterator<Item = Record>,
    ) -> impl Future<Output = Result<SyncResult>> + Send + 'static {
        let records: Vec<Record> = records.into_iter().collect();
        let handle = self.clone();
        async move { handle.import_vec(records).await }
    }

    async fn import_vec(&self, records: Vec<Record>) -> Result<SyncResult> {
        self.engine.check_open()?;
        let started = Instant::now();
        let mut seen = std::collections::HashSet::with_capacity(records.len());
        if let Some(twice) = records.iter().find(|r| !seen.insert(r.id())) {
            return Err(Error::InvalidArgument {
                name: "records",
                reason: format!("record {:?} is given more than once", twice.id().as_str()),
            });
        }
        drop(seen);
        self.engine.observe_batch(&records)?;
        let total = records.len();
        let mut result = SyncResult::new(&self.name);
        self.engine
            .apply_in_batches(
                &self.name,
                records
                    .into_iter()
                    .map(|record| (record.id().clone(), Intent::Replace(record))),
                total,
                &mut result,
                None,
                // An import refuses repeated ids: nothing was merged before.
                &mut Default::default(),
            )
            .await?;
        result.timestamp = self.engine.now_millis();
        result.duration = started.elapsed();
        Ok(result)
    }

    /// Applies one intent and returns the record as stored afterwards.
    async fn apply_one(&self, id: RecordId, intent: Intent) -> Result<Option<Record>> {
        let applied = self.engine.apply_single(&self.name, &id, intent).await?;
        Ok(applied.record)
    }
}
