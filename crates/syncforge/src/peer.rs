//! Replica-to-replica sync: the [`SyncPeer`] trait and
//! [`SyncEngine::sync_with`].

use std::collections::HashSet;
use std::time::Instant;

use async_trait::async_trait;
use syncforge_core::{validate_id, ChangePage, Error, Record, Result};
use tracing::field::Empty;
use tracing::Instrument;

use crate::engine::{millis, SyncEngine, SyncResult};
use crate::events::SyncTrigger;
use crate::retry::retry_transient;

/// Another replica to sync with: its change feed to pull from, and a way to
/// push records into it.
///
/// Transport-agnostic: another [`SyncEngine`] in the same process is a peer,
/// and a network transport (HTTP, ...) implements the same three methods.
/// [`SyncEngine::sync_with`] does not retry a peer's calls: an implementation
/// over an unreliable transport retries inside (as an engine does with its
/// store) and reports what stays failed; the next `sync_with` resumes from
/// what was applied.
#[async_trait]
pub trait SyncPeer: Send + Sync {
    /// The peer's stable id, unique among the replicas that sync together;
    /// this engine keeps its cursors for the peer under it.
    fn peer_id(&self) -> &str;

    /// Identifies the numbering of the peer's change feed. When it changes —
    /// the peer's store was replaced or wiped and its feed starts again —
    /// [`SyncEngine::sync_with`] restarts both cursors for this peer from 0,
    /// so nothing is skipped in either direction. The default, `None`,
    /// promises that the numbering never restarts under this [`peer_id`](Self::peer_id).
    async fn feed_id(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Changes of `collection` after the feed sequence `cursor`, at most
    /// `limit`, with the cursor to continue from (see
    /// [`SyncEngine::changes`]). Sequences must stay stable while
    /// [`feed_id`](Self::feed_id) does.
    async fn pull(&self, collection: &str, cursor: u64, limit: usize) -> Result<ChangePage>;

    /// Merges `records` into the peer's `collection`. Must not return `Ok`
    /// before they are stored.
    async fn push(&self, collection: &str, records: Vec<Record>) -> Result<()>;
}

#[async_trait]
impl SyncPeer for SyncEngine {
    fn peer_id(&self) -> &str {
        self.client_id().as_str()
    }

    async fn feed_id(&self) -> Result<Option<String>> {
        Ok(Some(self.store_id().to_owned()))
    }

    async fn pull(&self, collection: &str, cursor: u64, limit: usize) -> Result<ChangePage> {
        self.changes(collection, cursor, limit).await
    }

    async fn push(&self, collection: &str, records: Vec<Record>) -> Result<()> {
        self.sync(collection, records).await.map(drop)
    }
}

/// What one [`SyncEngine::sync_with`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSyncReport {
    /// The peer's id.
    pub peer_id: String,
    /// The collection.
    pub collection: String,
    /// What merging the peer's changes did here (summed over pages).
    pub pulled: SyncResult,
    /// Records sent to the peer.
    pub pushed: usize,
    /// Local changes not sent because they are exactly records just pulled
    /// from the peer, which holds them already.
    pub echoes_skipped: usize,
}

/// How far this engine has synced a collection with a peer: positions in the
/// two change feeds, kept in the store's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerCursors {
    /// The peer's feed sequence up to which its changes are applied here.
    pub pulled: u64,
    /// This engine's feed sequence up to which changes were pushed to the peer.
    pub pushed: u64,
}

/// What this engine keeps about a peer, per collection.
#[derive(Clone, Copy)]
enum PeerState {
    /// The pull cursor.
    Pull,
    /// The push cursor.
    Push,
    /// The peer's feed id the cursors refer to.
    Feed,
}

/// The metadata key of one piece of peer state. The parts are JSON-encoded so
/// that no peer id or collection name can make two keys collide.
fn cursor_key(peer_id: &str, collection: &str, state: PeerState) -> String {
    let state = match state {
        PeerState::Pull => "pulled",
        PeerState::Push => "pushed",
        PeerState::Feed => "feed",
    };
    let parts = serde_json::Value::from(vec![peer_id, collection, state]);
    format!("syncforge/peer-cursor/v1/{parts}")
}

fn validate_peer_id(peer_id: &str) -> Result<()> {
    validate_id(peer_id).map_err(|e| Error::InvalidConfig {
        option: "peer_id",
        reason: e.to_string(),
    })
}

impl SyncEngine {
    /// Bidirectional incremental sync of `collection` with `peer`.
    ///
    /// First pulls the peer's changes since the stored cursor, page by page
    /// (`batch_size` records each), merging each page like
    /// [`sync`](Self::sync) and advancing the cursor only after the page is
    /// applied, so a failure never skips a change. Then pushes this engine's
    /// changes since the cursor for this peer the same way. Both cursors live
    /// in the store's metadata and survive a restart on a persistent backend.
    ///
    /// Records just pulled come back in the local change feed; those whose
    /// stored state is exactly what the peer sent are not pushed back
    /// (counted in [`PeerSyncReport::echoes_skipped`]). Changes this engine
    /// pushed come back in the peer's feed on the next pull and merge as
    /// unchanged, writing nothing.
    ///
    /// On failure emits `sync:error` (once) and returns the error; whatever
    /// was applied stays, and the next call resumes from there.
    pub async fn sync_with<P: SyncPeer + ?Sized>(
        &self,
        peer: &P,
        collection: &str,
    ) -> Result<PeerSyncReport> {
        let span = tracing::info_span!(
            "sync_with",
            peer = peer.peer_id(),
            collection,
            pulled = Empty,
            pushed = Empty,
            duration_ms = Empty,
        );
        let started = Instant::now();
        let mut reported = false;
        let outcome = self
            .sync_with_unreported(peer, collection, &mut reported)
            .instrument(span.clone())
            .await;
        match &outcome {
            Ok(report) => {
                let duration_ms = millis(started.elapsed());
                let pulled = report.pulled.added
                    + report.pulled.updated
                    + report.pulled.deleted
                    + report.pulled.unchanged;
                span.record("pulled", pulled)
                    .record("pushed", report.pushed)
                    .record("duration_ms", duration_ms);
                tracing::info!(
                    parent: &span,
                    pulled,
                    pushed = report.pushed,
                    echoes_skipped = report.echoes_skipped,
                    duration_ms,
                    "sync with peer finished"
                );
            }
            Err(error) => {
                tracing::warn!(parent: &span, %error, "sync with peer failed");
                if !reported {
                    self.emit_sync_error(collection, error);
                }
            }
        }
        outcome
    }

    /// The body of `sync_with`; sets `reported` when the error was already
    /// emitted as `sync:error` by the sync of a pulled page.
    async fn sync_with_unreported<P: SyncPeer + ?Sized>(
        &self,
        peer: &P,
        collection: &str,
        reported: &mut bool,
    ) -> Result<PeerSyncReport> {
        self.check_open(collection)?;
        let peer_id = peer.peer_id();
        validate_peer_id(peer_id)?;
        let limit = self.config().batch_size;
        let mut report = PeerSyncReport {
            peer_id: peer_id.to_owned(),
            collection: collection.to_owned(),
            pulled: SyncResult::new(collection),
            pushed: 0,
            echoes_skipped: 0,
        };

        self.follow_feed(peer, collection).await?;
        let pull_key = cursor_key(peer_id, collection, PeerState::Pull);
        let mut cursor = self.load_cursor(&pull_key).await?;
        let mut echoes = HashSet::new();
        loop {
            let page = peer.pull(collection, cursor, limit).await?;
            check_page(peer_id, cursor, &page)?;
            if !page.changes.is_empty() {
                let records = page.changes.into_iter().map(|c| c.record).collect();
                let trigger = SyncTrigger::Pull {
                    peer: peer_id.to_owned(),
                };
                let applied = self
                    .sync_triggered(collection, records, trigger, Some(&mut echoes))
                    .await
                    .inspect_err(|_| *reported = true)?;
                report.pulled.absorb(applied);
            }
            if page.next != cursor {
                self.store_cursor(&pull_key, page.next).await?;
                cursor = page.next;
            }
            if !page.more {
                break;
            }
        }

        // When the pulled pages were merged (or found empty), as a sync reports it.
        report.pulled.timestamp = self.now_millis();

        let push_key = cursor_key(peer_id, collection, PeerState::Push);
        let mut cursor = self.load_cursor(&push_key).await?;
        loop {
            let page = self.changes(collection, cursor, limit).await?;
            let before = page.changes.len();
            let records: Vec<Record> = page
                .changes
                .into_iter()
                .filter(|change| !echoes.contains(&change.sequence))
                .map(|change| change.record)
                .collect();
            report.echoes_skipped += before - records.len();
            if !records.is_empty() {
                let count = records.len();
                peer.push(collection, records).await?;
                report.pushed += count;
            }
            if page.next != cursor {
                self.store_cursor(&push_key, page.next).await?;
                cursor = page.next;
            }
            if !page.more {
                break;
            }
        }
        Ok(report)
    }

    /// Where this engine stands with `peer_id` on `collection` (both cursors
    /// 0 before the first [`sync_with`](Self::sync_with)).
    pub async fn peer_cursors(&self, peer_id: &str, collection: &str) -> Result<PeerCursors> {
        self.check_open(collection)?;
        validate_peer_id(peer_id)?;
        Ok(PeerCursors {
            pulled: self
                .load_cursor(&cursor_key(peer_id, collection, PeerState::Pull))
                .await?,
            pushed: self
                .load_cursor(&cursor_key(peer_id, collection, PeerState::Push))
                .await?,
        })
    }

    /// Restarts both cursors for `peer` when its feed numbering changed since
    /// they were stored: they would point past its new feed and skip
    /// everything, and what was pushed to its old store is gone.
    async fn follow_feed<P: SyncPeer + ?Sized>(&self, peer: &P, collection: &str) -> Result<()> {
        let Some(feed) = peer.feed_id().await? else {
            return Ok(());
        };
        let peer_id = peer.peer_id();
        let feed_key = cursor_key(peer_id, collection, PeerState::Feed);
        let backend = self.backend();
        let known =
            retry_transient(self.retries(), "get_meta", || backend.get_meta(&feed_key)).await?;
        if known.as_deref() == Some(feed.as_str()) {
            return Ok(());
        }
        if known.is_some() {
            tracing::info!(
                peer = peer_id,
                collection,
                "peer's change feed restarted; syncing from the beginning"
            );
        }
        // Cursors first: a crash before the feed id is stored only resets them again.
        self.store_cursor(&cursor_key(peer_id, collection, PeerState::Pull), 0)
            .await?;
        self.store_cursor(&cursor_key(peer_id, collection, PeerState::Push), 0)
            .await?;
        retry_transient(self.retries(), "set_meta", || {
            backend.set_meta(&feed_key, &feed)
        })
        .await
    }

    async fn load_cursor(&self, key: &str) -> Result<u64> {
        let backend = self.backend();
        let stored = retry_transient(self.retries(), "get_meta", || backend.get_meta(key)).await?;
        match stored {
            None => Ok(0),
            Some(text) => text.parse().map_err(|_| {
                Error::storage(
                    backend.name(),
                    format!("peer cursor {key} holds {text:?}, not a sequence number"),
                )
            }),
        }
    }

    async fn store_cursor(&self, key: &str, cursor: u64) -> Result<()> {
        let backend = self.backend();
        let value = cursor.to_string();
        retry_transient(self.retries(), "set_meta", || backend.set_meta(key, &value)).await
    }
}

/// Refuses a page that would move the cursor backwards or loop forever: a
/// peer's answer is input like any other.
fn check_page(peer_id: &str, cursor: u64, page: &ChangePage) -> Result<()> {
    let out_of_order = page
        .changes
        .iter()
        .any(|change| change.sequence <= cursor || change.sequence > page.next);
    if page.next < cursor || out_of_order || (page.more && page.next == cursor) {
        return Err(Error::PeerProtocol {
            peer: peer_id.to_owned(),
            reason: format!(
                "answered a change page after cursor {cursor} that does not advance in order \
                 (next {}, more {}, {} changes)",
                page.next,
                page.more,
                page.changes.len()
            ),
        });
    }
    Ok(())
}
