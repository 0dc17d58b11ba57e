//! # syncforge-testkit
//!
//! The conformance suite every syncforge [`StorageBackend`] runs, published
//! so that whoever writes a backend for another store can prove it. It checks
//! the whole storage contract — conditional writes, batches (what each write
//! answers is what is stored), the change feed (paged over deletes, read
//! during rewrites), deletes, collections (clears that take names
//! literally), metadata (with its atomic create-if-absent), closing,
//! concurrent writers through several handles (whose cursors all stay
//! ahead of every cursor handed out), unusual names — so every backend
//! behaves the same way for the engine above it.
//!
//! A backend's tests implement [`StoreFactory`] (how to open another handle
//! on the same store, as another process would) and call [`run_conformance`]:
//!
//! ```
//! use std::sync::Arc;
//! use syncforge_backend_memory::MemoryBackend;
//! use syncforge_core::StorageBackend;
//! use syncforge_testkit::{run_conformance, StoreFactory};
//!
//! /// Opens handles on one store, as separate processes would.
//! struct SharedMemory(MemoryBackend);
//!
//! #[syncforge_core::async_trait]
//! impl StoreFactory for SharedMemory {
//!     async fn open(&self) -> Arc<dyn StorageBackend> {
//!         Arc::new(self.0.clone())
//!     }
//! }
//!
//! // In a backend crate's tests/conformance.rs this is the body of
//! // `#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn conforms()`.
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() {
//! run_conformance(&SharedMemory(MemoryBackend::new())).await;
//! # }
//! ```
//!
//! Each check is also a public function of [`checks`] taking a [`Context`],
//! to run one alone while a backend is being written:
//!
//! ```
//! # use std::sync::Arc;
//! # use syncforge_backend_memory::MemoryBackend;
//! # use syncforge_core::StorageBackend;
//! # use syncforge_testkit::StoreFactory;
//! # struct SharedMemory(MemoryBackend);
//! # #[syncforge_core::async_trait]
//! # impl StoreFactory for SharedMemory {
//! #     async fn open(&self) -> Arc<dyn StorageBackend> { Arc::new(self.0.clone()) }
//! # }
//! use syncforge_testkit::{checks, Context};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), String> {
//! let factory = SharedMemory(MemoryBackend::new());
//! let ctx = Context::open(&factory).await;
//! checks::change_feed(&ctx).await?;
//! checks::concurrent_writers_lose_no_update(&ctx).await?;
//! checks::clear_run_collections(&ctx).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Every check writes to its own collections, named with a run id unique to
//! the process and moment, so stores shared between test runs (a Redis, a
//! bucket) need no cleaning; [`checks::clear_run_collections`] clears them
//! again (only the run-unique metadata keys stay, a few dozen and some KB a
//! run, as the trait cannot delete metadata). The checks of unusual collection names must use those
//! names literally; they write only run-unique ids there and delete them
//! again. Each check is bounded in work; [`run_conformance`] bounds each in
//! time too ([`CHECK_TIMEOUT`]), which a check called on its own is not. The
//! whole suite takes seconds on the in-memory backend.
//!
//! Beside the suite: [`faults`] wraps a backend to inject transient failures
//! and delays, [`hostile`] generates seeded random records (valid and not)
//! and checks what the library promises about input, and [`services`] finds
//! the servers a backend's tests need (skipping visibly, or failing under
//! `SYNCFORGE_REQUIRE_SERVICES=1`).
//!
//! The suite needs a tokio runtime with timers enabled (`#[tokio::test]` has
//! them). [`run_conformance`] panics on a failure — it is test code — with a
//! message naming the check.

// This crate is test code: failing loudly is its job.
#![allow(clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use syncforge_core::StorageBackend;

pub mod certificates;
pub mod checks;
pub mod faults;
pub mod hostile;
pub mod processes;
pub mod services;
mod support;

pub use support::{CheckResult, Context};

/// How long one check may take before the suite reports it as hung.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens handles on the store under test.
#[async_trait::async_trait]
pub trait StoreFactory: Send + Sync {
    /// A new handle on the same underlying store (as another process or engine
    /// would open it).
    async fn open(&self) -> Arc<dyn StorageBackend>;
}

/// Runs every conformance check against the store `factory` opens.
///
/// # Panics
///
/// On the first failed check, with a message naming the check, the backend and
/// what went wrong; also when a check takes longer than [`CHECK_TIMEOUT`].
pub async fn run_conformance(factory: &dyn StoreFactory) {
    run_conformance_within(factory, CHECK_TIMEOUT).await;
}

/// [`run_conformance`] with another time limit per check, for stores behind
/// a slow test server (a single-threaded S3 emulator answers about 140
/// requests per second, and the concurrent-writer checks make thousands).
///
/// # Panics
///
/// As [`run_conformance`], with `check_timeout` as the limit.
pub async fn run_conformance_within(factory: &dyn StoreFactory, check_timeout: Duration) {
    let ctx = Context::open(factory).await;
    let backend = ctx.store().name();

    macro_rules! run {
        ($($check:ident),+ $(,)?) => {$(
            match tokio::time::timeout(check_timeout, checks::$check(&ctx)).await {
                Ok(Ok(())) => {}
                Ok(Err(message)) => panic!(
                    "conformance check `{}` failed on backend `{backend}`: {message}",
                    stringify!($check)
                ),
                Err(_) => panic!(
                    "conformance check `{}` did not finish within {check_timeout:?} on backend `{backend}`",
                    stringify!($check)
                ),
            }
        )+};
    }

    run!(
        crud,
        get_many,
        get_all,
        batch_with_mixed_outcomes,
        change_feed,
        change_feed_paging_with_rewrites,
        changes_since_timestamp,
        hard_delete,
        collections_list_and_clear,
        newest_stamp,
        meta,
        meta_keys_as_the_engine_writes_them,
        meta_if_absent,
        close_keeps_data,
        concurrent_writers_lose_no_update,
        concurrent_creates_have_one_winner,
        a_feed_read_during_writes_misses_nothing,
        insert_if_absent,
        answers_at_once,
        cursors_stay_ahead_across_handles,
        paging_over_deleted_records,
        clear_takes_names_literally,
        answers_match_what_is_stored,
        a_large_batch_answers_what_it_stores,
        a_feed_read_during_rewrites_ends_at_every_latest_state,
        a_collection_written_again_after_a_clear_is_listed,
        a_delete_racing_a_replace_leaves_the_record_deleted,
        unusual_ids,
        unusual_collection_names,
        clear_run_collections,
    );

    if let Err(e) = ctx.store.close().await {
        panic!("closing the suite's handle failed on backend `{backend}`: {e}");
    }
}

/// A run id unique across processes and across calls within one process.
pub(crate) fn unique_run_id() -> String {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    format!("sfk{}-{nanos:x}-{call}", std::process::id())
}
