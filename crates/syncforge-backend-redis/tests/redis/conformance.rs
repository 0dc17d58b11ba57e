//! The shared conformance suite, on a standalone server and on a cluster.

use std::sync::Arc;

use syncforge_backend_redis::{RedisBackend, RedisConfig};
use syncforge_core::{async_trait, StorageBackend};
use syncforge_testkit::{run_conformance, StoreFactory};

use crate::support::{cluster, remove_prefix, standalone};

/// Opens a new connection each time, as another process would.
struct Connections(RedisConfig);

#[async_trait]
impl StoreFactory for Connections {
    async fn open(&self) -> Arc<dyn StorageBackend> {
        Arc::new(RedisBackend::connect(self.0.clone()).await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_server_conforms() {
    let Some(config) = standalone("conformance").await else {
        return;
    };
    run_conformance(&Connections(config.clone())).await;
    remove_prefix(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_conforms() {
    let Some(config) = cluster("conformance").await else {
        return;
    };
    run_conformance(&Connections(config.clone())).await;
    remove_prefix(&config).await;
}
