//! Sync over HTTP: the `syncforge-http` crate, re-exported.
//!
//! Feature `http-server`: [`router`] (an axum `Router` to mount in your
//! app), [`Server`] and [`serve`] (standalone, with graceful shutdown),
//! [`ServerOptions`] and [`AccessToken`]; a [`SyncEngine`](crate::SyncEngine)
//! is the replica they serve. Feature `http-client`: [`HttpPeer`], a
//! `SyncPeer`, so that [`SyncEngine::sync_with`](crate::SyncEngine::sync_with)
//! syncs with a server as with another engine.
//! The protocol is in [`protocol`] and `docs/http-protocol.md`.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> syncforge::Result<()> {
//! # #[cfg(all(feature = "http-server", feature = "http-client"))]
//! # {
//! use syncforge::http::{HttpPeer, Server, ServerOptions};
//! use syncforge::SyncEngine;
//!
//! let hq = SyncEngine::builder().client_id("hq").build().await?;
//! let server = Server::bind(hq, "127.0.0.1:8080", ServerOptions::default()).await?;
//!
//! let tablet = SyncEngine::builder().client_id("tablet").build().await?;
//! let peer = HttpPeer::new("http://127.0.0.1:8080")?;
//! let _report = tablet.sync_with(&peer, "inspections").await?;
//! server.shutdown().await?;
//! # }
//! # Ok(())
//! # }
//! ```

pub use syncforge_http::*;

#[cfg(feature = "http-server")]
mod serving {
    use std::collections::HashSet;
    use std::num::NonZeroUsize;

    use async_trait::async_trait;
    use syncforge_core::{ChangePage, CollectionName, Cursor, Record, Result, SyncPeer};
    use syncforge_http::{Replica, SyncOutcome, WatchGuard};

    use crate::events::{EventKind, SyncEvent, SyncTrigger};
    use crate::SyncEngine;

    /// The events of a write applied to a collection.
    const WRITES: [EventKind; 3] = [
        EventKind::RecordAdded,
        EventKind::RecordUpdated,
        EventKind::RecordDeleted,
    ];

    #[async_trait]
    impl Replica for SyncEngine {
        fn feed_id(&self) -> &str {
            self.store_id()
        }

        async fn check_feed_id(&self) -> Result<()> {
            self.check_store_identity().await
        }

        async fn collections(&self) -> Result<Vec<CollectionName>> {
            self.list_collections().await
        }

        async fn changes(
            &self,
            collection: &CollectionName,
            after: Cursor,
            limit: NonZeroUsize,
        ) -> Result<ChangePage> {
            // The same page an engine serves another engine as a peer.
            SyncPeer::pull(self, collection, after, limit).await
        }

        async fn sync(
            &self,
            collection: &CollectionName,
            records: Vec<Record>,
        ) -> Result<SyncOutcome> {
            let mut echoes = HashSet::new();
            let result = self
                .sync_records(collection, records, SyncTrigger::Call, Some(&mut echoes))
                .await?;
            Ok(SyncOutcome {
                added: result.added,
                updated: result.updated,
                deleted: result.deleted,
                unchanged: result.unchanged,
                conflicts: result.conflicts.len(),
                echoes: echoes.into_iter().collect(),
            })
        }

        fn watch(&self, wake: Box<dyn Fn(&CollectionName) + Send + Sync>) -> WatchGuard {
            let wake = std::sync::Arc::new(wake);
            let ids: Vec<_> = WRITES
                .into_iter()
                .map(|kind| {
                    let wake = wake.clone();
                    self.events().on_internal(kind, move |event| match event {
                        SyncEvent::RecordAdded { collection, .. }
                        | SyncEvent::RecordUpdated { collection, .. }
                        | SyncEvent::RecordDeleted { collection, .. } => wake(collection),
                        _ => {}
                    })
                })
                .collect();
            let engine = self.clone();
            WatchGuard::new(move || {
                for id in ids {
                    engine.events().off(id);
                }
            })
        }
    }
}
