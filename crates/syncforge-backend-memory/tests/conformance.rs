//! The shared backend conformance suite, run against `MemoryBackend`.

use std::sync::Arc;

use syncforge_backend_memory::MemoryBackend;
use syncforge_core::{async_trait, StorageBackend};
use syncforge_testkit::{run_conformance, StoreFactory};

/// Hands out clones: each is another handle on the same data, as a second
/// engine in the same process would hold.
struct SharedMemory(MemoryBackend);

#[async_trait]
impl StoreFactory for SharedMemory {
    async fn open(&self) -> Arc<dyn StorageBackend> {
        Arc::new(self.0.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_conforms() {
    run_conformance(&SharedMemory(MemoryBackend::new())).await;
}
