//! Another replica to sync with: the [`SyncPeer`] trait (defined in
//! `syncforge-core`, so that transports need only that crate) and the
//! cursors an engine keeps per peer.
//!
//! [`SyncEngine::sync_with`](crate::SyncEngine::sync_with) runs the sync;
//! another engine in the same process is a peer, and a network transport
//! (`syncforge-http`'s `HttpPeer`, ...) implements the same few methods.

use syncforge_core::Cursor;
pub use syncforge_core::{PushOutcome, RefusedRecord, SyncPeer};

/// How far an engine has synced a collection with a peer: positions in the
/// two change feeds, kept in the store's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerCursors {
    /// The peer's feed position up to which its changes are applied here.
    pub pulled: Cursor,
    /// This engine's feed position up to which changes were pushed to the peer.
    pub pushed: Cursor,
}
