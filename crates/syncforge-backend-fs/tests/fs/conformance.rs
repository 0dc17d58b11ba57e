//! The shared backend conformance suite, on a real temporary directory.

use std::path::PathBuf;
use std::sync::Arc;

use syncforge_backend_fs::FsBackend;
use syncforge_core::{async_trait, StorageBackend};
use syncforge_testkit::{run_conformance, StoreFactory};

/// Opens a new handle on the same directory each time, as another process
/// would.
struct SameDirectory(PathBuf);

#[async_trait]
impl StoreFactory for SameDirectory {
    async fn open(&self) -> Arc<dyn StorageBackend> {
        Arc::new(FsBackend::open(&self.0).await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    run_conformance(&SameDirectory(dir.path().join("store"))).await;
}
