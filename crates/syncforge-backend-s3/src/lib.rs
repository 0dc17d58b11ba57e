//! # syncforge-backend-s3
//!
//! [`S3Backend`]: a syncforge [`StorageBackend`] on an object store — Amazon
//! S3 and S3-compatible servers through [`S3Config`], any
//! [`object_store::ObjectStore`] that does conditional writes on ETags
//! (Azure, object_store's `InMemory`; not Google Cloud Storage, whose store
//! conditions updates on generations) through
//! [`S3Backend::from_store`], or a directory of this machine through
//! [`S3Backend::local_directory`] (on [`LocalDirectory`], which adds the
//! conditional updates object_store's `LocalFileSystem` lacks, under a lock
//! file shared by every process). Many writers on many machines can share one
//! bucket: every write is a compare-and-swap on the record's ETag, so no
//! update is lost, and the change feed never misses a change even when a
//! writer dies between two requests or clocks disagree.
//!
//! ```
//! use std::sync::Arc;
//! use object_store::memory::InMemory;
//! use serde_json::json;
//! use syncforge_backend_s3::S3Backend;
//! use syncforge_core::{ClientId, CollectionName, Content, Cursor, Hlc, Record, StorageBackend, Write};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> syncforge_core::Result<()> {
//! // Any object store; S3Backend::new(S3Config::new("bucket")) for a bucket.
//! let store = S3Backend::from_store(Arc::new(InMemory::new()), "dse")?;
//! let mut clock = Hlc::new(ClientId::new("sensor-3")?);
//! let reading = Record::create(Content::from_value(json!({"id": "r-1", "celsius": 4.5}))?, &clock.now()?);
//!
//! let readings = CollectionName::new("readings")?;
//! store.put(&readings, &Write::create(reading.clone())).await?;
//! let page = store.changes(&readings, Cursor::START, 100.try_into().unwrap()).await?;
//! assert_eq!(page.records().next(), Some(&reading));
//! # Ok(())
//! # }
//! ```
//!
//! How records, the feed and its compaction are laid out in the bucket, and
//! why no change is missed: docs/backends.md, section "S3".

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;

use object_store::ObjectStore;
use syncforge_core::{
    async_trait, ChangePage, CollectionName, Cursor, Error, Record, RecordId, Result, Stamp,
    StorageBackend, Stored, Write, WriteOutcome,
};

mod config;
mod feed;
mod format;
mod io;
mod keys;
mod local;
mod store;

pub use config::{S3Config, StoreOptions, DEFAULT_PREFIX, DEFAULT_REGION};
pub use local::LocalDirectory;

/// The backend's name in messages and errors.
pub(crate) const BACKEND_NAME: &str = "s3";

/// A storage backend on S3 or any conditional-write object store.
///
/// Each value is one handle: it remembers the feed's head and the newest
/// stamp it wrote to save requests, and [`close`](StorageBackend::close)
/// closes only it. Open another handle on the same bucket (as another
/// process would) with another `new` or `from_store`. All requests of a
/// handle share one bound on how many are in flight
/// ([`StoreOptions::max_in_flight`]).
pub struct S3Backend {
    store: store::Store,
    description: String,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the object store's own Debug: it can show credentials.
        f.debug_struct("S3Backend")
            .field("store", &self.description)
            .field("prefix", &self.store.keys.prefix())
            .field("options", &self.store.options)
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// A handle on the bucket `config` names. Nothing is requested yet: a
    /// wrong endpoint or credentials show at the first call, as
    /// [`Error::Unavailable`] or [`Error::Storage`] naming what to check.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a bucket name, prefix, credentials or
    /// timeout that cannot work.
    // By value, as every backend's constructor takes its configuration.
    #[allow(clippy::needless_pass_by_value)]
    pub fn new(config: S3Config) -> Result<Self> {
        let client = config.build()?;
        let description = format!(
            "s3://{}{}",
            config.bucket,
            config
                .endpoint()
                .map(|endpoint| format!(" at {endpoint}"))
                .unwrap_or_default()
        );
        Self::assemble(
            Arc::new(client),
            &config.prefix,
            config.options,
            description,
        )
    }

    /// A handle on any object store, keeping everything under `prefix`.
    /// The store must support conditional puts (`PutMode::Create` and
    /// `PutMode::Update` on ETags): S3, Azure, `InMemory` and
    /// [`LocalDirectory`] do; object_store's GCS store conditions an update
    /// on the object's generation instead, and does not work here. object_store's own `LocalFileSystem` does not
    /// support `PutMode::Update`, and the first write that needs it fails
    /// with [`Error::Storage`] saying so: for a local directory use
    /// [`local_directory`](Self::local_directory). Its listings must come in
    /// key order, as S3's, Azure's, `InMemory`'s and
    /// [`LocalDirectory`]'s do: a page of a listing is taken to hold the
    /// first keys after its offset.
    ///
    /// A [`LocalDirectory`], or a wrapper whose `Display` shows it (as
    /// object_store's `LimitStore` does), is known by that text: its handle
    /// refuses ids too long for a file name before writing anything. Behind
    /// a wrapper that hides it (`PrefixStore`), such an id's write fails
    /// after its feed entry and is void.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a prefix that is empty, too long, or not
    /// plain key characters.
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self> {
        let description = store.to_string();
        Self::assemble(store, prefix, StoreOptions::default(), description)
    }

    /// A handle on a directory of this machine (created if missing),
    /// keeping everything under `prefix` in it: [`from_store`](Self::from_store)
    /// on a [`LocalDirectory`], whose writes are durable when they return.
    /// Handles and processes on this machine that open the same directory
    /// share it safely, as writers on many machines share a bucket: each
    /// conditional write runs under an advisory lock in the directory.
    ///
    /// ```
    /// use syncforge_backend_s3::S3Backend;
    ///
    /// # fn main() -> syncforge_core::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = S3Backend::local_directory(dir.path(), "dse")?;
    /// # drop(store);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the directory cannot be created or
    /// opened for writing, or for a prefix that
    /// [`from_store`](Self::from_store) refuses.
    pub fn local_directory(path: impl AsRef<std::path::Path>, prefix: &str) -> Result<Self> {
        let path = path.as_ref();
        let directory = LocalDirectory::new(path).map_err(|e| Error::InvalidConfig {
            option: "path",
            reason: format!("cannot use {} as a store: {e}", path.display()),
        })?;
        let description = directory.to_string();
        Self::assemble(
            Arc::new(directory),
            prefix,
            StoreOptions::default(),
            description,
        )
    }

    /// The same handle with other tuning; a closed handle stays closed.
    pub fn with_options(self, options: StoreOptions) -> Self {
        let io = io::Io::new(
            Arc::clone(self.store.io.store()),
            options.max_in_flight.get(),
            self.store.keys.probes(),
        );
        let store = store::Store::new(io, self.store.keys.clone(), options);
        if self.store.check_open().is_err() {
            store.close();
        }
        S3Backend {
            store,
            description: self.description,
        }
    }

    fn assemble(
        object_store: Arc<dyn ObjectStore>,
        prefix: &str,
        options: StoreOptions,
        description: String,
    ) -> Result<Self> {
        let mut keys = keys::Keys::new(prefix)?;
        // A `LocalDirectory`, given by `local_directory` or to `from_store`,
        // also inside a wrapper that shows the store it wraps.
        if description.contains(&format!("{}(", local::STORE)) {
            keys = keys.in_local_files();
        }
        let io = io::Io::new(object_store, options.max_in_flight.get(), keys.probes());
        Ok(S3Backend {
            store: store::Store::new(io, keys, options),
            description,
        })
    }
}

#[async_trait]
impl StorageBackend for S3Backend {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    async fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<Stored>> {
        self.store.check_open()?;
        self.store.get(collection, id).await
    }

    async fn get_many(
        &self,
        collection: &CollectionName,
        ids: &[RecordId],
    ) -> Result<Vec<Option<Stored>>> {
        self.store.check_open()?;
        self.store.get_many(collection, ids).await
    }

    async fn get_all(&self, collection: &CollectionName) -> Result<Vec<Record>> {
        self.store.check_open()?;
        self.store.get_all(collection).await
    }

    async fn put_batch(
        &self,
        collection: &CollectionName,
        writes: &[Write],
    ) -> Result<Vec<WriteOutcome>> {
        self.store.check_open()?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        self.store.put_batch(collection, writes).await
    }

    async fn delete(&self, collection: &CollectionName, id: &RecordId) -> Result<bool> {
        self.store.check_open()?;
        self.store.delete(collection, id).await
    }

    async fn changes(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        self.store.check_open()?;
        self.store.changes(collection, after, limit).await
    }

    /// Time-based and not incremental: reads every record of the collection
    /// (object stores keep no index by time). Prefer
    /// [`changes`](StorageBackend::changes).
    async fn changes_since_timestamp(
        &self,
        collection: &CollectionName,
        millis: u64,
    ) -> Result<Vec<Record>> {
        self.store.check_open()?;
        let mut all = self.store.get_all(collection).await?;
        all.retain(|record| record.timestamp() > millis);
        Ok(all)
    }

    async fn list_collections(&self) -> Result<Vec<CollectionName>> {
        self.store.check_open()?;
        self.store.list_collections().await
    }

    async fn clear_collection(&self, collection: &CollectionName) -> Result<()> {
        self.store.check_open()?;
        self.store.clear(collection).await
    }

    async fn newest_stamp(&self) -> Result<Option<Stamp>> {
        self.store.check_open()?;
        self.store.newest_stamp().await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.store.check_open()?;
        self.store.get_meta(key).await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.store.check_open()?;
        self.store.set_meta(key, value).await
    }

    async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<String> {
        self.store.check_open()?;
        self.store.set_meta_if_absent(key, value).await
    }

    async fn close(&self) -> Result<()> {
        self.store.close();
        Ok(())
    }
}
