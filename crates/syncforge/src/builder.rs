//! Configuring and opening a [`SyncEngine`].

use std::sync::Arc;
use std::time::Duration;

use syncforge_core::{
    ClientId, CollectionName, ConflictStrategy, Error, Result, StorageBackend, SystemClock,
    TimeSource, DEFAULT_MAX_DRIFT,
};

use crate::backends::{create_backend, BackendConfig};
use crate::config::{
    Config, DEFAULT_AUTO_SYNC_INTERVAL, DEFAULT_AUTO_SYNC_PEER_TIMEOUT, DEFAULT_BATCH_SIZE,
    DEFAULT_EVENT_CAPACITY, DEFAULT_MAX_RETRIES, MAX_AUTO_SYNC_INTERVAL, MAX_BATCH_SIZE,
    MAX_CLOCK_DRIFT, MAX_EVENT_CAPACITY, MAX_RETRIES, MIN_AUTO_SYNC_INTERVAL, MIN_CLOCK_DRIFT,
};
use crate::engine::SyncEngine;

impl SyncEngine {
    /// A builder with the original library's defaults.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }
}

enum BackendChoice {
    Default,
    Config(BackendConfig),
    Ready(Arc<dyn StorageBackend>),
}

/// Builds a [`SyncEngine`]; every option has the original library's default.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> syncforge::Result<()> {
/// use syncforge::{ConflictStrategy, MemoryBackend, SyncEngine};
/// let engine = SyncEngine::builder()
///     .client_id("phone")
///     .conflict_strategy(ConflictStrategy::Crdt)
///     .backend(MemoryBackend::new())
///     .batch_size(100)
///     .max_retries(3)
///     .build()
///     .await?;
/// assert_eq!(engine.client_id().as_str(), "phone");
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct EngineBuilder {
    client_id: Option<String>,
    conflict_strategy: ConflictStrategy,
    batch_size: usize,
    max_retries: u32,
    auto_sync: bool,
    auto_sync_interval: Duration,
    auto_sync_peer_timeout: Duration,
    auto_sync_collections: Option<Vec<String>>,
    event_capacity: usize,
    max_clock_drift: Duration,
    time: Arc<dyn TimeSource>,
    backend: BackendChoice,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            client_id: None,
            conflict_strategy: ConflictStrategy::default(),
            batch_size: DEFAULT_BATCH_SIZE,
            max_retries: DEFAULT_MAX_RETRIES,
            auto_sync: false,
            auto_sync_interval: DEFAULT_AUTO_SYNC_INTERVAL,
            auto_sync_peer_timeout: DEFAULT_AUTO_SYNC_PEER_TIMEOUT,
            auto_sync_collections: None,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            max_clock_drift: DEFAULT_MAX_DRIFT,
            time: Arc::new(SystemClock),
            backend: BackendChoice::Default,
        }
    }
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("client_id", &self.client_id)
            .field("conflict_strategy", &self.conflict_strategy)
            .field("batch_size", &self.batch_size)
            .field("max_retries", &self.max_retries)
            .field("auto_sync", &self.auto_sync)
            .field("auto_sync_interval", &self.auto_sync_interval)
            .field("auto_sync_peer_timeout", &self.auto_sync_peer_timeout)
            .field("auto_sync_collections", &self.auto_sync_collections)
            .field("event_capacity", &self.event_capacity)
            .field("max_clock_drift", &self.max_clock_drift)
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// This replica's id (default: a fresh ULID). 1 to 1024 bytes, no control
    /// characters; it must be unique among the replicas that sync together.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// The merge strategy (default [`ConflictStrategy::Timestamp`]). Every
    /// replica of a collection must use the same one.
    pub fn conflict_strategy(mut self, strategy: ConflictStrategy) -> Self {
        self.conflict_strategy = strategy;
        self
    }

    /// The storage backend (default: a new in-process memory store), or an
    /// `Arc` of one (`Arc<dyn StorageBackend>` too).
    ///
    /// [`SyncEngine::close`] closes the handle it was given. Engines that
    /// share a store and close on their own each need a handle of their
    /// own: a clone of a `MemoryBackend`, or the same directory, server or
    /// bucket opened once per engine. A handle shared as an `Arc` is
    /// closed for every engine using it by the first that closes, and by
    /// a build that fails (a refused setting too).
    pub fn backend(mut self, backend: impl StorageBackend + 'static) -> Self {
        self.backend = BackendChoice::Ready(Arc::new(backend));
        self
    }

    /// A backend chosen by name, built by [`create_backend`] on `build`.
    pub fn backend_config(mut self, config: BackendConfig) -> Self {
        self.backend = BackendChoice::Config(config);
        self
    }

    /// Records merged and written per batch during a sync (default 100, 1 to 100,000).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size;
        self
    }

    /// Retries of a transient backend failure (default 3, at most 20), with
    /// exponential back-off from 100 ms. Invalid input is never retried.
    /// On a tokio runtime built without timers (no `enable_time`) the
    /// engine cannot wait between attempts, and returns the first transient
    /// failure as it is. It learns that the runtime has no timers from the
    /// panic tokio raises when one is made, which it catches: the process's
    /// panic hook still runs each time, and a build with `panic = "abort"`
    /// aborts there. Enable timers on such a runtime (`enable_time`).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Turns the periodic sync window on or off (default off). When on,
    /// `build()` starts the timer; see
    /// [`SyncEngine::start_auto_sync`] for what each window does.
    pub fn auto_sync(mut self, enabled: bool) -> Self {
        self.auto_sync = enabled;
        self
    }

    /// Interval of the periodic sync window (default 30 s, at least 1 s).
    pub fn auto_sync_interval(mut self, interval: Duration) -> Self {
        self.auto_sync_interval = interval;
        self
    }

    /// How long one peer's sync in an auto-sync window may take (default 10
    /// minutes, at least 1 s). Past it that sync stops where it is, emits
    /// `sync:error` with [`Error::Unavailable`], and the window goes on to
    /// the next peer: a peer that never answers does not hold up the others
    /// and every later window. What the sync applied stays applied, and the
    /// next window goes on from the peer's cursors.
    pub fn auto_sync_peer_timeout(mut self, timeout: Duration) -> Self {
        self.auto_sync_peer_timeout = timeout;
        self
    }

    /// The collections each auto-sync window covers (default: every
    /// collection the store lists at that moment). Name them when a peer may
    /// hold collections this store does not have yet. A name given twice
    /// counts once; an empty list is refused by
    /// [`build`](Self::build).
    pub fn auto_sync_collections<I, S>(mut self, collections: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.auto_sync_collections = Some(collections.into_iter().map(Into::into).collect());
        self
    }

    /// How many events a receiver from `subscribe()` may fall behind before
    /// it loses the oldest and is told it lagged (default 1024, from 1 to
    /// [`MAX_EVENT_CAPACITY`]). The channel rounds it up to a power of two:
    /// with 1,000, a receiver may fall 1,024 events behind.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// How far ahead of local physical time a remote stamp may be before a sync
    /// refuses it (default 5 minutes; from [`MIN_CLOCK_DRIFT`] to
    /// [`MAX_CLOCK_DRIFT`]).
    pub fn max_clock_drift(mut self, drift: Duration) -> Self {
        self.max_clock_drift = drift;
        self
    }

    /// The physical time source (default: the system clock). Inject a
    /// [`syncforge_core::ManualTime`] to drive time in tests.
    pub fn time_source(mut self, time: Arc<dyn TimeSource>) -> Self {
        self.time = time;
        self
    }

    /// Checks the settings as [`build`](Self::build) does before anything
    /// else, without opening a store: a program can refuse a bad setting
    /// before work that should not begin without an engine (reading a long
    /// input, say).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the option, as `build` would.
    pub fn validate(&self) -> Result<()> {
        self.settings().map(drop)
    }

    fn settings(&self) -> Result<Config> {
        let client_id = match &self.client_id {
            Some(id) => ClientId::new(id).map_err(|e| Error::InvalidConfig {
                option: "client_id",
                // Its reason alone: the option is named already.
                reason: match e {
                    Error::InvalidArgument { reason, .. } => reason,
                    other => other.to_string(),
                },
            })?,
            None => ClientId::new(&ulid::Ulid::new().to_string())?,
        };
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(Error::InvalidConfig {
                option: "batch_size",
                reason: format!("{} is outside 1..={MAX_BATCH_SIZE}", self.batch_size),
            });
        }
        if self.max_retries > MAX_RETRIES {
            return Err(Error::InvalidConfig {
                option: "max_retries",
                reason: format!("{} is more than {MAX_RETRIES}", self.max_retries),
            });
        }
        if self.auto_sync_interval < MIN_AUTO_SYNC_INTERVAL {
            return Err(Error::InvalidConfig {
                option: "auto_sync_interval",
                reason: format!(
                    "{:?} is shorter than the minimum of {MIN_AUTO_SYNC_INTERVAL:?}",
                    self.auto_sync_interval
                ),
            });
        }
        if self.auto_sync_interval > MAX_AUTO_SYNC_INTERVAL {
            return Err(Error::InvalidConfig {
                option: "auto_sync_interval",
                reason: format!(
                    "{:?} is longer than the maximum of {MAX_AUTO_SYNC_INTERVAL:?} (leave \
                     auto-sync off for none)",
                    self.auto_sync_interval
                ),
            });
        }
        if !(MIN_AUTO_SYNC_INTERVAL..=MAX_AUTO_SYNC_INTERVAL).contains(&self.auto_sync_peer_timeout)
        {
            return Err(Error::InvalidConfig {
                option: "auto_sync_peer_timeout",
                reason: format!(
                    "{:?} is outside {MIN_AUTO_SYNC_INTERVAL:?} to {MAX_AUTO_SYNC_INTERVAL:?}",
                    self.auto_sync_peer_timeout
                ),
            });
        }
        let auto_sync_collections = match &self.auto_sync_collections {
            None => None,
            // Every window would sync nothing, while a list read from a
            // setting left empty most likely meant every collection.
            Some(names) if names.is_empty() => {
                return Err(Error::InvalidConfig {
                    option: "auto_sync_collections",
                    reason: "the list is empty: name at least one collection, or leave it \
                             unset for every collection the store lists"
                        .to_owned(),
                })
            }
            Some(names) => Some(
                names
                    .iter()
                    .map(|name| {
                        CollectionName::new(name.as_str()).map_err(|e| Error::InvalidConfig {
                            option: "auto_sync_collections",
                            reason: e.to_string(),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        // A name given twice would be synced twice in every window.
        let auto_sync_collections = auto_sync_collections.map(|mut names| {
            let mut seen = std::collections::HashSet::new();
            names.retain(|name| seen.insert(name.clone()));
            names
        });
        // The broadcast channel cannot hold fewer than one event, nor more
        // than half of usize::MAX.
        if !(1..=MAX_EVENT_CAPACITY).contains(&self.event_capacity) {
            return Err(Error::InvalidConfig {
                option: "event_capacity",
                reason: format!(
                    "{} is outside 1..={MAX_EVENT_CAPACITY}",
                    self.event_capacity
                ),
            });
        }
        if !(MIN_CLOCK_DRIFT..=MAX_CLOCK_DRIFT).contains(&self.max_clock_drift) {
            return Err(Error::InvalidConfig {
                option: "max_clock_drift",
                reason: format!(
                    "{:?} is outside {MIN_CLOCK_DRIFT:?}..={MAX_CLOCK_DRIFT:?}",
                    self.max_clock_drift
                ),
            });
        }
        Ok(Config {
            client_id,
            conflict_strategy: self.conflict_strategy,
            batch_size: self.batch_size,
            max_retries: self.max_retries,
            auto_sync: self.auto_sync,
            auto_sync_interval: self.auto_sync_interval,
            auto_sync_peer_timeout: self.auto_sync_peer_timeout,
            auto_sync_collections,
            event_capacity: self.event_capacity,
            max_clock_drift: self.max_clock_drift,
        })
    }

    /// Validates the configuration, opens the backend and seeds the clock from
    /// the newest stamp the store holds, so this replica's stamps never go
    /// backwards across restarts. Starts the auto-sync timer when
    /// `auto_sync(true)` was set. A build that fails once it has the store
    /// (opened here, or handed over with [`backend`](Self::backend)) closes
    /// it: the store was the engine's.
    pub async fn build(self) -> Result<SyncEngine> {
        let config = match self.settings() {
            Ok(config) => config,
            Err(error) => {
                // A store handed over is the engine's already.
                if let BackendChoice::Ready(backend) = &self.backend {
                    close_after_failed_build(backend.as_ref(), "a setting was refused").await;
                }
                return Err(error);
            }
        };
        let backend = match self.backend {
            BackendChoice::Ready(backend) => backend,
            BackendChoice::Config(choice) => create_backend(&choice).await?,
            BackendChoice::Default => create_backend(&BackendConfig::Memory).await?,
        };
        let engine = match SyncEngine::open(config, Arc::clone(&backend), self.time).await {
            Ok(engine) => engine,
            Err(error) => {
                // The store is the engine's, as `close` closes it: a build
                // that fails leaves nothing open (as below).
                close_after_failed_build(backend.as_ref(), "the engine failed to open").await;
                return Err(error);
            }
        };
        if engine.config().auto_sync() {
            if let Err(error) = engine.start_auto_sync() {
                // The store was opened for this engine alone: a build that
                // fails leaves nothing open. The start's error says why.
                if let Err(closing) = engine.close().await {
                    tracing::warn!(error = %closing, "closing the store after auto-sync failed to start");
                }
                return Err(error);
            }
        }
        Ok(engine)
    }
}

/// Closes the store of a build that failed for `why`: a failure to close is
/// logged, as the build's own error is the one returned.
async fn close_after_failed_build(backend: &dyn StorageBackend, why: &str) {
    if let Err(closing) = backend.close().await {
        tracing::warn!(error = %closing, "closing the store after {why}");
    }
}
