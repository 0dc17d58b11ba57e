//! Helpers shared by the engine tests.

use std::sync::Arc;

use syncforge::{ConflictStrategy, ManualTime, MemoryBackend, StorageBackend, SyncEngine};

/// 2023-11-14T22:13:20Z: a fixed, realistic wall-clock start.
pub(crate) const T0: u64 = 1_700_000_000_000;

/// An engine over a fresh memory store with the given id and strategy.
pub(crate) async fn engine(client: &str, strategy: ConflictStrategy) -> SyncEngine {
    SyncEngine::builder()
        .client_id(client)
        .conflict_strategy(strategy)
        .backend(MemoryBackend::new())
        .build()
        .await
        .unwrap()
}

/// A CRDT engine with the given id over `store`, which other engines in the
/// test may share.
pub(crate) async fn crdt_engine_on(client: &str, store: Arc<dyn StorageBackend>) -> SyncEngine {
    SyncEngine::builder()
        .client_id(client)
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend(store)
        .build()
        .await
        .unwrap()
}

/// An engine whose wall clock is `time`.
pub(crate) async fn engine_at(
    client: &str,
    strategy: ConflictStrategy,
    time: &Arc<ManualTime>,
) -> SyncEngine {
    SyncEngine::builder()
        .client_id(client)
        .conflict_strategy(strategy)
        .backend(MemoryBackend::new())
        .time_source(time.clone())
        .build()
        .await
        .unwrap()
}

/// Canonical JSON of a whole collection, sorted by id: equal strings mean
/// byte-identical replicas.
pub(crate) async fn snapshot(engine: &SyncEngine, collection: &str) -> String {
    let mut records = engine.get_all(collection).await.unwrap();
    records.sort_by(|a, b| a.id().cmp(b.id()));
    records
        .iter()
        .map(|r| r.to_json_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Syncs everything of `from` into `to`.
pub(crate) async fn push_all(
    from: &SyncEngine,
    to: &SyncEngine,
    collection: &str,
) -> syncforge::SyncResult {
    to.sync(collection, from.get_all(collection).await.unwrap())
        .await
        .unwrap()
}

/// What `work` gives, run on a runtime of a thread of its own, or a panic
/// past `within`: a loop that never waits (a feed read again for ever)
/// could not be timed out, nor its runtime shut down, from the test's own.
pub(crate) fn on_a_thread_of_its_own<T, F>(
    within: std::time::Duration,
    work: impl FnOnce() -> F + Send + 'static,
) -> T
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = done.send(runtime.block_on(work()));
    });
    outcome.recv_timeout(within).expect("no endless loop")
}

/// Engine "a" over a memory store whose feed answers every page with "more"
/// and a `next` that does not move.
pub(crate) async fn engine_on_a_stalling_feed() -> SyncEngine {
    let stalling = syncforge_testkit::faults::FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        1,
        0.0,
        std::time::Duration::ZERO,
    )
    .stalling_feed();
    SyncEngine::builder()
        .client_id("a")
        .backend(stalling)
        .build()
        .await
        .unwrap()
}
