//! The validated settings of an engine, and their defaults and bounds.

use std::time::Duration;

use syncforge_core::{ClientId, CollectionName, ConflictStrategy};

/// Default number of records merged and written per batch.
pub const DEFAULT_BATCH_SIZE: usize = 100;
/// Largest accepted batch size.
pub const MAX_BATCH_SIZE: usize = 100_000;
/// Default number of retries of a transient backend failure.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
pub use syncforge_core::MAX_RETRIES;
/// Default number of events a receiver may fall behind before it lags.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;
/// Largest accepted event buffer: the channel allocates every slot up front.
pub const MAX_EVENT_CAPACITY: usize = 1 << 16;
/// Default auto-sync interval.
pub const DEFAULT_AUTO_SYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Default bound on one peer's sync in an auto-sync window.
pub const DEFAULT_AUTO_SYNC_PEER_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Shortest accepted auto-sync interval (and bound on a peer's sync).
pub const MIN_AUTO_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Longest accepted auto-sync interval (a year): the timer adds it to the
/// present, which a longer one could carry past what a clock holds. For
/// "never", leave auto-sync off.
pub const MAX_AUTO_SYNC_INTERVAL: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Shortest accepted clock-drift bound: the check counts whole milliseconds,
/// so a shorter one would refuse every stamp ahead of the local clock.
pub const MIN_CLOCK_DRIFT: Duration = Duration::from_millis(1);
/// Longest accepted clock-drift bound (a day): a longer one would let a
/// remote clock set far in the future carry every later local stamp there,
/// the fault the bound exists to stop.
pub const MAX_CLOCK_DRIFT: Duration = Duration::from_secs(24 * 60 * 60);

/// The validated settings of an engine, read with
/// [`SyncEngine::config`](crate::SyncEngine::config). Built by
/// [`EngineBuilder`](crate::EngineBuilder), which documents each option.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    pub(crate) client_id: ClientId,
    pub(crate) conflict_strategy: ConflictStrategy,
    pub(crate) batch_size: usize,
    pub(crate) max_retries: u32,
    pub(crate) auto_sync: bool,
    pub(crate) auto_sync_interval: Duration,
    pub(crate) auto_sync_peer_timeout: Duration,
    pub(crate) auto_sync_collections: Option<Vec<CollectionName>>,
    pub(crate) event_capacity: usize,
    pub(crate) max_clock_drift: Duration,
}

impl Config {
    /// This replica's id.
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// How concurrent edits are merged.
    pub fn conflict_strategy(&self) -> ConflictStrategy {
        self.conflict_strategy
    }

    /// Records merged and written per batch during a sync.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Retries of a transient backend failure, with exponential back-off.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Whether the periodic sync window starts when the engine is built.
    pub fn auto_sync(&self) -> bool {
        self.auto_sync
    }

    /// Interval of the periodic sync window.
    pub fn auto_sync_interval(&self) -> Duration {
        self.auto_sync_interval
    }

    /// How long one peer's sync in an auto-sync window may take.
    pub fn auto_sync_peer_timeout(&self) -> Duration {
        self.auto_sync_peer_timeout
    }

    /// The collections each auto-sync window covers; `None`: those the store
    /// lists at that moment.
    pub fn auto_sync_collections(&self) -> Option<&[CollectionName]> {
        self.auto_sync_collections.as_deref()
    }

    /// Events a receiver may fall behind before it lags.
    pub fn event_capacity(&self) -> usize {
        self.event_capacity
    }

    /// How far ahead of local time a remote stamp may be.
    pub fn max_clock_drift(&self) -> Duration {
        self.max_clock_drift
    }
}
