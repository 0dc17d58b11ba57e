//! Another replica to sync with: the [`SyncPeer`] trait.
//!
//! The engine (crate `syncforge`) syncs with a peer both ways; another engine
//! in the same process is a peer, and a network transport
//! (`syncforge-http`'s `HttpPeer`, ...) implements the same few methods. The
//! trait lives here, beside the types it speaks, so that a transport crate
//! needs nothing but this crate to implement it.

use std::num::NonZeroUsize;

use async_trait::async_trait;

use crate::backend::{ChangePage, Cursor};
use crate::error::Result;
use crate::names::CollectionName;
use crate::record::Record;

/// Another replica to sync with: its change feed to pull from, and a way to
/// push records into it.
///
/// The engine's `sync_with` (in the `syncforge` crate) does not retry a
/// peer's calls: an implementation over an unreliable transport retries
/// inside (as an engine does with its store) and reports what stays failed
/// as [`Error::Unavailable`](crate::Error::Unavailable); the next
/// `sync_with` resumes from what was applied.
#[async_trait]
pub trait SyncPeer: Send + Sync {
    /// The peer's stable id, unique among the replicas that sync together;
    /// the engine keeps its cursors for the peer under it.
    fn peer_id(&self) -> &str;

    /// Identifies the numbering of the peer's change feed. When it changes —
    /// the peer's store was replaced or wiped and its feed starts again —
    /// the engine's `sync_with` restarts both cursors for this peer, so nothing is skipped
    /// in either direction. The default, `None`, promises that the numbering
    /// never restarts under this [`peer_id`](Self::peer_id).
    async fn feed_id(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Changes of `collection` after `after`, at most `limit`, with the
    /// cursor to continue from, as a store's
    /// [`changes`](crate::StorageBackend::changes) answers them. Cursors must
    /// stay valid while [`feed_id`](Self::feed_id) does.
    async fn pull(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage>;

    /// Merges `records` into the peer's `collection`. Must not return `Ok`
    /// before they are stored.
    async fn push(&self, collection: &CollectionName, records: Vec<Record>) -> Result<()>;
}
