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
use crate::names::{CollectionName, RecordId};
use crate::record::Record;

/// What a peer did with the records of a [`SyncPeer::push`]: it stored
/// every one but those it [`refused`](Self::refused).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub struct PushOutcome {
    /// Records the peer can never take as they are, each with the reason.
    pub refused: Vec<RefusedRecord>,
}

impl PushOutcome {
    /// Every record stored.
    pub fn all_stored() -> Self {
        PushOutcome::default()
    }

    /// Every record stored but `refused`.
    pub fn refusing(refused: Vec<RefusedRecord>) -> Self {
        PushOutcome { refused }
    }
}

/// A record a peer refused: sending it again unchanged cannot succeed
/// while the peer's limits stay as they are (it is larger than the peer
/// takes in one request).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusedRecord {
    /// The record's id.
    pub id: RecordId,
    /// Why, in words.
    pub reason: String,
}

impl RefusedRecord {
    /// Record `id`, refused for `reason`.
    pub fn new(id: RecordId, reason: impl Into<String>) -> Self {
        RefusedRecord {
            id,
            reason: reason.into(),
        }
    }
}

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

    /// Told that the engine restarted its cursors for this peer's
    /// `collection`: the peer's feed id changed, or the engine's own store
    /// no longer holds them (it was replaced). Whatever the peer remembers
    /// of that collection's exchanges, such as the feed positions of the
    /// engine's own writes it leaves out of pulls, may name records the
    /// engine no longer holds, and is to be forgotten. The default remembers
    /// nothing.
    async fn cursors_restarted(&self, collection: &CollectionName) {
        let _ = collection;
    }

    /// Told, as the engine's `sync_with` (or pull, or push) of `collection`
    /// begins, the [`feed_id`](Self::feed_id) its cursors for this peer
    /// belong to (restarted first if need be). A peer that learns the feed
    /// id of each answer compares those of `collection` with it: an answer
    /// from another feed (the peer's store replaced during the sync) must
    /// fail, or the cursor moved past it would belong to neither. The
    /// default does nothing.
    async fn exchanges_begin(&self, collection: &CollectionName, feed_id: &str) {
        let _ = (collection, feed_id);
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
    /// before they are stored, except those it names as
    /// [`refused`](PushOutcome::refused): records the peer can never take
    /// as they are, which the engine's `sync_with` reports and moves past
    /// (sending them again when they change, or to an engine opened later).
    /// Any other failure is an
    /// `Err`, after which the push starts again from the same records.
    async fn push(&self, collection: &CollectionName, records: Vec<Record>) -> Result<PushOutcome>;
}
