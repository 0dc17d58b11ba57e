//! The shared backend conformance suite, on a real temporary directory.

use std::path::PathBuf;
use std::sync::Arc;

use syncforge_backend_fs::{Durability, FsBackend, FsOptions};
use syncforge_core::{async_trait, StorageBackend};
use syncforge_testkit::{run_conformance, StoreFactory};

/// Opens a new handle on the same directory each time, as another process
/// would, every one with the same options.
struct SameDirectory(PathBuf, FsOptions);

#[async_trait]
impl StoreFactory for SameDirectory {
    async fn open(&self) -> Arc<dyn StorageBackend> {
        Arc::new(FsBackend::open_with(&self.0, self.1.clone()).await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    run_conformance(&SameDirectory(
        dir.path().join("store"),
        FsOptions::default(),
    ))
    .await;
}

/// `Buffered` numbers its writes in a way of its own (positions reserved
/// ahead, records not synced one by one): it must keep the same contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_backend_conforms_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let options = FsOptions::default().durability(Durability::Buffered);
    run_conformance(&SameDirectory(dir.path().join("store"), options)).await;
}
