//! Another replica to sync with: the [`SyncPeer`] trait.
//!
//! [`SyncEngine::sync_with`](crate::SyncEngine::sync_with) runs the sync;
//! another engine in the same process is a peer, and a network transport
//! (`syncforge-http`'s `HttpPeer`, ...) implements the same few methods.

use std::num::NonZeroUsize;

use async_trait::async_trait;
use syncforge_core::{ChangePage, CollectionName, Cursor, Record, Result};

/// Another replica to sync with: its change feed to pull from, and a way to
/// push records into it.
///
/// [`SyncEngine::sync_with`](crate::SyncEngine::sync_with) does not retry a
/// peer's calls: an implementation over an unreliable transport retries
/// inside (as an engine does with its store) and reports what stays failed
/// as [`Error::Unavailable`](syncforge_core::Error::Unavailable); the next
/// `sync_with` resumes from what was applied.
#[async_trait]
pub trait SyncPeer: Send + Sync {
    /// The peer's stable id, unique among the replicas that sync together;
    /// the engine keeps its cursors for the peer under it.
    fn peer_id(&self) -> &str;

    /// Identifies the numbering of the peer's change feed. When it changes —
    /// the peer's store was replaced or wiped and its feed starts again —
    /// `sync_with` restarts both cursors for this peer, so nothing is skipped
    /// in either direction. The default, `None`, promises that the numbering
    /// never restarts under this [`peer_id`](Self::peer_id).
    async fn feed_id(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Changes of `collection` after `after`, at most `limit`, with the
    /// cursor to continue from (see
    /// [`Collection::changes`](crate::Collection::changes)). Cursors must stay
    /// valid while [`feed_id`](Self::feed_id) does.
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

/// How far an engine has synced a collection with a peer: positions in the
/// two change feeds, kept in the store's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerCursors {
    /// The peer's feed position up to which its changes are applied here.
    pub pulled: Cursor,
    /// This engine's feed position up to which changes were pushed to the peer.
    pub pushed: Cursor,
}
