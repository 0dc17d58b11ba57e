//! The conformance suite, on each store the backend runs on.

use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::ObjectStore;
use std::time::Duration;
use syncforge_backend_s3::{S3Backend, StoreOptions};
use syncforge_core::StorageBackend;

use syncforge_testkit::{run_conformance, run_conformance_within, StoreFactory};

use crate::support;

/// Opens handles on one object store, as separate processes would.
struct OnStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    options: StoreOptions,
}

#[syncforge_core::async_trait]
impl StoreFactory for OnStore {
    async fn open(&self) -> Arc<dyn StorageBackend> {
        Arc::new(
            S3Backend::from_store(Arc::clone(&self.store), &self.prefix)
                .unwrap()
                .with_options(self.options),
        )
    }
}

/// Options that fold a collection's feed into a segment every 4 entries
/// instead of every 256: most checks write fewer than 256 entries to a
/// collection, and would otherwise never read a compacted feed.
fn compacting_often() -> StoreOptions {
    StoreOptions {
        compaction_interval: 4.try_into().unwrap(),
        ..StoreOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_on_object_stores_in_memory_store() {
    run_conformance(&OnStore {
        store: Arc::new(InMemory::new()),
        prefix: "dse".to_owned(),
        options: StoreOptions::default(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_on_object_stores_in_memory_store_compacting_often() {
    run_conformance(&OnStore {
        store: Arc::new(InMemory::new()),
        prefix: "dse".to_owned(),
        options: compacting_often(),
    })
    .await;
}

/// Opens handles on one directory, each with a `LocalDirectory` of its own
/// (as separate processes would: their writes exclude each other through
/// the lock file, not through shared memory).
pub(crate) struct OnDirectory {
    pub(crate) dir: tempfile::TempDir,
}

#[syncforge_core::async_trait]
impl StoreFactory for OnDirectory {
    async fn open(&self) -> Arc<dyn StorageBackend> {
        Arc::new(S3Backend::local_directory(self.dir.path(), "dse").unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_on_a_local_directory() {
    run_conformance(&OnDirectory {
        dir: tempfile::tempdir().unwrap(),
    })
    .await;
}

/// [`OnDirectory`] with other options on every handle.
struct OnDirectoryWith {
    dir: tempfile::TempDir,
    options: StoreOptions,
}

#[syncforge_core::async_trait]
impl StoreFactory for OnDirectoryWith {
    async fn open(&self) -> Arc<dyn StorageBackend> {
        Arc::new(
            S3Backend::local_directory(self.dir.path(), "dse")
                .unwrap()
                .with_options(self.options),
        )
    }
}

// Not on moto as well: the compacted feed is the backend's own logic, the
// same on every object store, and moto would add minutes to every CI run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_on_a_local_directory_compacting_often() {
    run_conformance(&OnDirectoryWith {
        dir: tempfile::tempdir().unwrap(),
        options: compacting_often(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conforms_on_a_real_s3_server() {
    let Some(server) = support::s3_server().await else {
        return;
    };
    // moto serves one request at a time (~140/s, fewer as its bucket
    // grows: it scans every key to list a prefix). The whole suite made
    // about 15,900 requests in 285 s on a fresh server (load 6 on two
    // cores), most in the checks where eight writers race; on a server
    // already holding ~20,000 objects one of those checks passed 300 s.
    // The bound is there to catch a hang, with room for a busier machine.
    run_conformance_within(
        &OnStore {
            store: server.store(),
            prefix: support::unique_prefix("conformance"),
            options: StoreOptions::default(),
        },
        Duration::from_secs(600),
    )
    .await;
}
