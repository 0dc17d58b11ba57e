//! Opening the stores a command names, and a store as the peer of another.

use std::num::NonZeroUsize;

use anyhow::{Context, Result};
use async_trait::async_trait;
use syncforge::{
    BackendConfig, ChangePage, Collection, CollectionName, ConflictStrategy, Cursor, Record,
    RecordId, StoreUrl, SyncEngine, SyncPeer,
};

use crate::failure::usage;

/// Reads a store argument. The message names the argument and never repeats
/// the URL (it may hold a password).
pub(crate) fn parse_url(argument: &str, url: &str) -> Result<StoreUrl> {
    StoreUrl::parse(url).map_err(|error| usage(format!("{argument}: {error}")))
}

/// Reads a collection name argument.
pub(crate) fn parse_collection(name: &str) -> Result<CollectionName> {
    CollectionName::new(name).map_err(|error| usage(error.to_string()))
}

/// Reads a record id argument.
pub(crate) fn parse_id(id: &str) -> Result<RecordId> {
    RecordId::new(id).map_err(|error| usage(error.to_string()))
}

/// How the engine over a store is set up.
#[derive(Debug, Clone, Default)]
pub(crate) struct EngineOptions {
    pub(crate) client_id: Option<String>,
    pub(crate) strategy: ConflictStrategy,
    pub(crate) batch_size: Option<usize>,
}

/// Why `url` names no store yet — a directory that is not there, a
/// directory, Redis key prefix or S3 prefix that holds none — or `None` when
/// it holds one (a memory store is new and empty: reading it shows nothing,
/// and leaves nothing behind).
async fn missing(url: &StoreUrl) -> Result<Option<&'static str>> {
    let Some(config) = url.backend_config() else {
        return Ok(None);
    };
    let why = match config {
        BackendConfig::Memory => return Ok(None),
        // A file given where the store goes (arguments swapped, say) is
        // neither a store to read nor a place to create one.
        BackendConfig::Filesystem { directory } if directory.exists() && !directory.is_dir() => {
            anyhow::bail!("there is no store at {url}: it is not a directory")
        }
        BackendConfig::Filesystem { directory } if !directory.is_dir() => {
            return Ok(Some("no such directory"))
        }
        BackendConfig::Filesystem { .. } => "the directory holds none",
        _ => "it holds no store id and no collection",
    };
    let held = syncforge::holds_store(config)
        .await
        .with_context(|| format!("cannot open the store {url}"))?;
    Ok((!held).then_some(why))
}

/// The store a command writes into, which it creates if there is none. A
/// directory that holds no store is created only by [`open`](Self::open),
/// once the command's arguments are known to be good, so that a refused
/// command leaves no store behind; so is a Redis or S3 store that holds
/// nothing yet.
pub(crate) enum Destination {
    /// The store, which existed.
    Existing(Store),
    /// A store to create.
    New {
        url: StoreUrl,
        options: EngineOptions,
    },
}

impl Destination {
    /// Opens the store at `url` if there is one.
    pub(crate) async fn prepare(url: StoreUrl, options: &EngineOptions) -> Result<Destination> {
        Ok(if missing(&url).await?.is_some() {
            Destination::New {
                url,
                options: options.clone(),
            }
        } else {
            Destination::Existing(Store::open(url, options).await?)
        })
    }

    /// The store's URL, as it may be shown.
    pub(crate) fn url(&self) -> &StoreUrl {
        match self {
            Destination::Existing(store) => store.url(),
            Destination::New { url, .. } => url,
        }
    }

    /// The id of the store, if it exists.
    pub(crate) fn store_id(&self) -> Option<&str> {
        match self {
            Destination::Existing(store) => Some(store.engine().store_id()),
            Destination::New { .. } => None,
        }
    }

    /// The collections holding records, sorted by name (none in a store
    /// not created yet).
    pub(crate) async fn collections(&self) -> Result<Vec<CollectionName>> {
        match self {
            Destination::Existing(store) => store.collections().await,
            Destination::New { .. } => Ok(Vec::new()),
        }
    }

    /// Closes the store if it existed; one not created yet stays so.
    pub(crate) async fn close(self) -> Result<()> {
        match self {
            Destination::Existing(store) => store.close().await,
            Destination::New { .. } => Ok(()),
        }
    }

    /// The store, created if it did not exist.
    pub(crate) async fn open(self) -> Result<Store> {
        match self {
            Destination::Existing(store) => Ok(store),
            Destination::New { url, options } => Store::open(url, &options).await,
        }
    }
}

/// A store a command works on: an engine over the backend its URL names.
pub(crate) struct Store {
    url: StoreUrl,
    engine: SyncEngine,
    /// A filesystem store's own handle, which counts the corrupt record
    /// files its reads skipped.
    #[cfg(feature = "fs")]
    fs: Option<std::sync::Arc<syncforge::FsBackend>>,
}

impl EngineOptions {
    /// A builder with these options.
    fn builder(&self) -> syncforge::EngineBuilder {
        let mut builder = SyncEngine::builder().conflict_strategy(self.strategy);
        if let Some(client_id) = &self.client_id {
            builder = builder.client_id(client_id.as_str());
        }
        if let Some(batch_size) = self.batch_size {
            builder = builder.batch_size(batch_size);
        }
        builder
    }

    /// Checks the options as opening a store does, without opening one: a
    /// command whose input is long refuses them before reading it.
    pub(crate) fn check(&self) -> Result<()> {
        self.builder().validate().map_err(refused_option)
    }
}

/// Settings the engine refuses (a batch size out of range, a bad client
/// id) are usage errors.
fn refused_option(error: syncforge::Error) -> anyhow::Error {
    match error {
        syncforge::Error::InvalidConfig {
            option: "client_id" | "batch_size",
            ..
        } => usage(error.to_string()),
        other => anyhow::Error::new(other),
    }
}

impl Store {
    /// Opens the store `url` names. Settings the engine refuses are usage
    /// errors ([`EngineOptions::check`]).
    pub(crate) async fn open(url: StoreUrl, options: &EngineOptions) -> Result<Store> {
        let Some(config) = url.backend_config() else {
            return Err(usage(format!("{url} is not a store this command can open")));
        };
        options.check()?;
        let builder = options.builder();
        #[cfg(feature = "fs")]
        let (builder, fs) = match config {
            BackendConfig::Filesystem { directory } => {
                let fs = std::sync::Arc::new(
                    syncforge::FsBackend::open(directory)
                        .await
                        .with_context(|| format!("cannot open the store {url}"))?,
                );
                (builder.backend(std::sync::Arc::clone(&fs)), Some(fs))
            }
            other => (builder.backend_config(other.clone()), None),
        };
        #[cfg(not(feature = "fs"))]
        let builder = builder.backend_config(config.clone());
        let engine = builder
            .build()
            .await
            .with_context(|| format!("cannot open the store {url}"))?;
        Ok(Store {
            url,
            engine,
            #[cfg(feature = "fs")]
            fs,
        })
    }

    /// The corrupt record files of `collection` in this store, as they are
    /// now (reading the whole collection): none for a store of another kind.
    pub(crate) async fn corrupt_files(
        &self,
        collection: &CollectionName,
    ) -> Result<Vec<std::path::PathBuf>> {
        #[cfg(feature = "fs")]
        if let Some(fs) = &self.fs {
            let found = fs
                .corrupt_files(collection)
                .await
                .with_context(|| format!("cannot list the corrupt files of {}", self.url))?;
            return Ok(found.into_iter().map(|file| file.path).collect());
        }
        let _ = collection;
        Ok(Vec::new())
    }

    /// How many corrupt record files reads of this store skipped (each named
    /// in a warning on stderr): 0 for a store of another kind.
    pub(crate) fn corrupt_skipped(&self) -> u64 {
        #[cfg(feature = "fs")]
        if let Some(fs) = &self.fs {
            return fs.corrupt_skipped();
        }
        0
    }

    /// Opens a store that must exist already: reading a directory that is
    /// not there, or holds no store, is a typo far more often than a wish
    /// for an empty store, and opening it would write a store's files into
    /// it; it is refused instead. Commands that write create stores
    /// ([`open`](Self::open)).
    pub(crate) async fn open_existing(url: StoreUrl, options: &EngineOptions) -> Result<Store> {
        if let Some(missing) = missing(&url).await? {
            anyhow::bail!("there is no store at {url}: {missing} (put and import create one)");
        }
        Store::open(url, options).await
    }

    /// The store's URL, as it may be shown.
    pub(crate) fn url(&self) -> &StoreUrl {
        &self.url
    }

    pub(crate) fn engine(&self) -> &SyncEngine {
        &self.engine
    }

    /// The collections holding records, sorted by name.
    pub(crate) async fn collections(&self) -> Result<Vec<CollectionName>> {
        let mut names = self
            .engine
            .list_collections()
            .await
            .with_context(|| format!("cannot list the collections of {}", self.url))?;
        names.sort();
        Ok(names)
    }

    /// A collection that must already exist: an unknown one is an error
    /// listing those the store has.
    pub(crate) async fn existing(&self, name: &CollectionName) -> Result<Collection> {
        let known = self.collections().await?;
        if !known.contains(name) {
            anyhow::bail!(
                "{} has no collection {:?} ({})",
                self.url,
                name.as_str(),
                listing(&known)
            );
        }
        Ok(self.engine.collection(name.clone())?)
    }

    /// A handle on a collection, existing or not (for writes).
    pub(crate) fn collection(&self, name: &CollectionName) -> Result<Collection> {
        Ok(self.engine.collection(name.clone())?)
    }

    /// Closes the engine, releasing the store's locks; never deletes data.
    pub(crate) async fn close(self) -> Result<()> {
        self.engine
            .close()
            .await
            .with_context(|| format!("cannot close the store {}", self.url))
    }
}

/// "its collections: a, b" or "it holds no collection".
pub(crate) fn listing(names: &[CollectionName]) -> String {
    if names.is_empty() {
        return "it holds no collection".to_owned();
    }
    let names: Vec<&str> = names.iter().map(CollectionName::as_str).collect();
    format!("its collections: {}", names.join(", "))
}

/// A store as the peer of another, known by its store id rather than by the
/// client id of the engine this run happens to open on it: the cursors kept
/// for it then stay valid from one run to the next.
pub(crate) struct StorePeer {
    engine: SyncEngine,
    peer_id: String,
}

impl StorePeer {
    pub(crate) fn new(store: &Store) -> StorePeer {
        StorePeer {
            engine: store.engine.clone(),
            peer_id: format!("store:{}", store.engine.store_id()),
        }
    }
}

#[async_trait]
impl SyncPeer for StorePeer {
    fn peer_id(&self) -> &str {
        &self.peer_id
    }

    async fn feed_id(&self) -> syncforge::Result<Option<String>> {
        self.engine.feed_id().await
    }

    async fn pull(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> syncforge::Result<ChangePage> {
        self.engine.pull(collection, after, limit).await
    }

    async fn push(
        &self,
        collection: &CollectionName,
        records: Vec<Record>,
    ) -> syncforge::Result<syncforge::PushOutcome> {
        self.engine.push(collection, records).await
    }
}
