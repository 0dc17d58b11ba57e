//! Replica-to-replica sync: [`SyncEngine::sync_with`], and an engine as a
//! [`SyncPeer`] of another.

use std::collections::{BTreeSet, HashSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use syncforge_core::{
    validate_id, ChangePage, CollectionName, Cursor, Error, IntoName, Record, RecordId, Result,
};
use tokio::sync::OwnedMutexGuard;
use tracing::field::Empty;
use tracing::Instrument;

use crate::engine::{millis, SyncEngine};
use crate::events::SyncTrigger;
use crate::feed::PageOptions;
use crate::peer::{PeerCursors, PushOutcome, RefusedRecord, SyncPeer};
use crate::result::SyncResult;
use crate::retry::retry_transient;

#[async_trait]
impl SyncPeer for SyncEngine {
    fn peer_id(&self) -> &str {
        self.client_id().as_str()
    }

    async fn feed_id(&self) -> Result<Option<String>> {
        self.check_store_identity().await?;
        Ok(Some(self.store_id().to_owned()))
    }

    async fn pull(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        self.collection(collection)?
            .changes(after, PageOptions::default().limit(limit.get()))
            .await
    }

    async fn push(&self, collection: &CollectionName, records: Vec<Record>) -> Result<PushOutcome> {
        let _merged = self.collection(collection)?.sync(records).await?;
        Ok(PushOutcome::all_stored())
    }
}

/// What one [`SyncEngine::sync_with`] did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
#[must_use]
pub struct PeerSyncReport {
    /// The peer's id.
    pub peer_id: String,
    /// The collection.
    pub collection: CollectionName,
    /// What merging the peer's changes did here (summed over pages).
    pub pulled: SyncResult,
    /// Records sent to the peer and stored there.
    pub pushed: usize,
    /// Local changes not sent because they are exactly records just pulled
    /// from the peer, which holds them already.
    pub echoes_skipped: usize,
    /// Records the peer would not take as they are (larger than it takes
    /// in one request), with its reason. The push moves past them, so that
    /// they hold back no other change, and keeps their ids in the store's
    /// metadata: each is sent again when it changes, and offered again as
    /// it is at the first sync with the peer of an engine opened later (the
    /// peer's limit may have gone up meanwhile). Each is also logged as a
    /// warning.
    pub refused: Vec<RefusedRecord>,
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
    /// The ids of records the peer refused, offered again by a later engine.
    Refused,
}

/// Most ids of refused records kept per peer and collection: a record
/// refused past that is sent again only when it changes.
const MAX_REFUSED: usize = 10_000;

/// The metadata key of one piece of peer state. The parts are JSON-encoded so
/// that no peer id or collection name can make two keys collide.
fn cursor_key(peer_id: &str, collection: &CollectionName, state: PeerState) -> String {
    let state = match state {
        PeerState::Pull => "pulled",
        PeerState::Push => "pushed",
        PeerState::Feed => "feed",
        PeerState::Refused => "refused",
    };
    let parts = serde_json::Value::from(vec![peer_id, collection.as_str(), state]);
    format!("syncforge/peer-cursor/v1/{parts}")
}

/// Checks a peer id as a collection name is checked (1 to 1,024 bytes, no
/// control characters): cursors are kept under it.
pub(crate) fn validate_peer_id(peer_id: &str) -> Result<()> {
    validate_id(peer_id).map_err(|e| Error::InvalidConfig {
        option: "peer_id",
        reason: e.to_string(),
    })
}

/// Which way a peer sync moves changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The peer's changes come here, then this engine's go to the peer.
    Both,
    /// Only the peer's changes come here.
    Pull,
    /// Only this engine's changes go to the peer.
    Push,
}

impl Direction {
    fn pulls(self) -> bool {
        matches!(self, Direction::Both | Direction::Pull)
    }

    fn pushes(self) -> bool {
        matches!(self, Direction::Both | Direction::Push)
    }

    fn name(self) -> &'static str {
        match self {
            Direction::Both => "both",
            Direction::Pull => "pull",
            Direction::Push => "push",
        }
    }
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
    /// A pull that fails for good (a page refused for a far-ahead clock, a
    /// peer answering out of protocol) does not hold back the push: it runs
    /// all the same, and the call returns the pull's error (a push failing
    /// after it is only logged). After a pull that failed for now
    /// ([`Error::is_transient`]: the peer unreachable) the push is not tried.
    ///
    /// A record the peer refuses as too large holds back no other change:
    /// it is listed in [`PeerSyncReport::refused`], sent again when it
    /// changes, and offered again as it is at the first sync of an engine
    /// opened later.
    ///
    /// Records just pulled come back in the local change feed; those whose
    /// stored state is exactly what the peer sent are not pushed back
    /// (counted in [`PeerSyncReport::echoes_skipped`]; a sync remembers about
    /// a million of them, and pushes back the rest, which the peer finds
    /// unchanged). Changes this engine
    /// pushed come back in the peer's feed on the next pull and merge as
    /// unchanged, writing nothing.
    ///
    /// On failure emits `sync:error` (once; none of its own when this
    /// engine was closed meanwhile, though a page's merge cut short reports
    /// its failure) and returns the error; whatever was applied stays, and
    /// the next call resumes from there.
    pub async fn sync_with<P: SyncPeer + ?Sized>(
        &self,
        peer: &P,
        collection: impl IntoName<CollectionName>,
    ) -> Result<PeerSyncReport> {
        self.peer_sync(
            peer,
            collection,
            Direction::Both,
            None,
            &AtomicBool::new(false),
        )
        .await
    }

    /// The turn of the pair `peer_id` and `collection`, once no other sync
    /// of it runs; `None` when that took longer than `patience`. An
    /// auto-sync window waits for it before its own timeout starts: waiting
    /// under that timeout for a sync the application runs made a busy peer
    /// look unavailable.
    pub(crate) async fn peer_sync_turn(
        &self,
        peer_id: &str,
        collection: &CollectionName,
        patience: Duration,
    ) -> Option<OwnedMutexGuard<()>> {
        let lock = self.peer_sync_lock(peer_id, collection);
        tokio::time::timeout(patience, lock.lock_owned()).await.ok()
    }

    /// [`sync_with`](Self::sync_with) in `turn`, the pair's turn
    /// [`peer_sync_turn`](Self::peer_sync_turn) gave; sets `reported` once
    /// the sync has announced a failure (`sync:error`) itself, which it may
    /// do before it ends.
    pub(crate) async fn sync_with_turn(
        &self,
        peer: &dyn SyncPeer,
        collection: &CollectionName,
        turn: OwnedMutexGuard<()>,
        reported: &AtomicBool,
    ) -> Result<PeerSyncReport> {
        self.peer_sync(peer, collection, Direction::Both, Some(turn), reported)
            .await
    }

    /// One-way incremental sync: merges the peer's changes of `collection`
    /// since the stored pull cursor into this engine, sending nothing back —
    /// the pull half of [`sync_with`](Self::sync_with), with the same cursor,
    /// so the two can be mixed. [`PeerSyncReport::pushed`] is 0.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> syncforge::Result<()> {
    /// use serde_json::json;
    /// use syncforge::SyncEngine;
    ///
    /// let source = SyncEngine::builder().client_id("source").build().await?;
    /// let replica = SyncEngine::builder().client_id("replica").build().await?;
    /// source.put("notes", &json!({"id": "n1"})).await?;
    /// replica.put("notes", &json!({"id": "local-only"})).await?;
    ///
    /// let first = replica.pull_from(&source, "notes").await?;
    /// assert_eq!((first.pulled.added, first.pushed), (1, 0));
    /// assert!(source.get("notes", "local-only").await?.is_none());
    /// // Nothing changed since: a repeat reads nothing.
    /// assert_eq!(replica.pull_from(&source, "notes").await?.pulled.total(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn pull_from<P: SyncPeer + ?Sized>(
        &self,
        peer: &P,
        collection: impl IntoName<CollectionName>,
    ) -> Result<PeerSyncReport> {
        self.peer_sync(
            peer,
            collection,
            Direction::Pull,
            None,
            &AtomicBool::new(false),
        )
        .await
    }

    /// One-way incremental sync: sends this engine's changes of `collection`
    /// since the stored push cursor to the peer, taking nothing from it — the
    /// push half of [`sync_with`](Self::sync_with), with the same cursor.
    /// The report's `pulled` counts are all 0.
    pub async fn push_to<P: SyncPeer + ?Sized>(
        &self,
        peer: &P,
        collection: impl IntoName<CollectionName>,
    ) -> Result<PeerSyncReport> {
        self.peer_sync(
            peer,
            collection,
            Direction::Push,
            None,
            &AtomicBool::new(false),
        )
        .await
    }

    async fn peer_sync<P: SyncPeer + ?Sized>(
        &self,
        peer: &P,
        collection: impl IntoName<CollectionName>,
        direction: Direction,
        turn: Option<OwnedMutexGuard<()>>,
        reported: &AtomicBool,
    ) -> Result<PeerSyncReport> {
        let collection = collection.into_name()?;
        let collection = &collection;
        // A closed engine starts no sync, and announces none; nor does a
        // peer whose id no sync takes, as a collection's bad name.
        self.check_open()?;
        validate_peer_id(peer.peer_id())?;
        let span = tracing::info_span!(
            "sync_with",
            peer = peer.peer_id(),
            collection = collection.as_str(),
            direction = direction.name(),
            pulled = Empty,
            pushed = Empty,
            duration_ms = Empty,
        );
        let started = Instant::now();
        let outcome = self
            .sync_with_unreported(peer, collection, direction, turn, reported)
            .instrument(span.clone())
            .await;
        match &outcome {
            Ok(report) => {
                let duration_ms = millis(started.elapsed());
                let pulled = report.pulled.total();
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
                // A sync cut short by closing the engine announces no
                // failure of its own, as a sync of a closed engine starts
                // none; a page's merge already under way reports its own.
                if !reported.load(Ordering::Acquire) && !self.is_closed() {
                    self.emit_sync_error(collection, error);
                }
            }
        }
        outcome
    }

    /// The body of `sync_with`, `pull_from` and `push_to`, in `turn` when
    /// the caller holds the pair's lock already; sets `reported`
    /// when the error was already emitted as `sync:error` by the sync of a
    /// pulled page.
    async fn sync_with_unreported<P: SyncPeer + ?Sized>(
        &self,
        peer: &P,
        collection: &CollectionName,
        direction: Direction,
        turn: Option<OwnedMutexGuard<()>>,
        reported: &AtomicBool,
    ) -> Result<PeerSyncReport> {
        self.check_open()?;
        let peer_id = peer.peer_id();
        // Both syncs would share the cursors and pull the same pages; and
        // one restarting them for the peer's new feed is best seen by the
        // other before it reads on (see `load_cursor`).
        let _one_at_a_time = match turn {
            Some(turn) => turn,
            None => self.peer_sync_lock(peer_id, collection).lock_owned().await,
        };
        // The engine may have been closed while this sync waited its turn.
        self.check_open()?;
        let limit = syncforge_core::page_limit(self.config().batch_size())?;
        let mut report = PeerSyncReport {
            peer_id: peer_id.to_owned(),
            collection: collection.clone(),
            pulled: SyncResult::new(collection),
            pushed: 0,
            echoes_skipped: 0,
            refused: Vec::new(),
        };

        let feed = self.follow_feed(peer, collection).await?;
        let feed = feed.as_deref();
        // Feed positions of pulled writes the peer holds already: not pushed
        // back (and not collected by a sync that does not push).
        let mut echoes = HashSet::new();
        let pulled = if direction.pulls() {
            let echoes = direction.pushes().then_some(&mut echoes);
            self.pull_pages(
                peer,
                collection,
                feed,
                limit,
                echoes,
                &mut report.pulled,
                reported,
            )
            .await
        } else {
            Ok(())
        };
        // When the pulled pages were merged (or found empty), as a sync reports it.
        report.pulled.timestamp = self.now_millis();
        // A pull that failed for good (a page refused for its stamps, a
        // peer answering out of protocol) does not hold back this engine's
        // own writes: they are pushed all the same, and the pull's error is
        // the sync's; a push that fails too is said in the log only. A peer
        // unreachable for now would only make the push wait out the same
        // failure.
        let push = direction.pushes()
            && match &pulled {
                Ok(()) => true,
                Err(error) => !error.is_transient() && !self.is_closed(),
            };
        if let Err(error) = &pulled {
            // Announced as it happens, not after the push.
            if !reported.load(Ordering::Acquire) && !self.is_closed() {
                self.emit_sync_error(collection, error);
                reported.store(true, Ordering::Release);
            }
        }
        if push {
            let pushed = self
                .push_pages(peer, collection, feed, limit, &echoes, &mut report)
                .await;
            match (&pulled, pushed) {
                (Err(_), Err(error)) => {
                    tracing::warn!(%error, "the push after a failed pull failed too");
                }
                (Err(_), Ok(())) => {
                    tracing::warn!(
                        pushed = report.pushed,
                        refused = report.refused.len(),
                        "pushed after a failed pull"
                    );
                }
                (Ok(()), Err(error)) => return Err(error),
                (Ok(()), Ok(())) => {}
            }
        }
        pulled.map(|()| report)
    }

    /// The pull half of a peer sync: the pages of `peer`'s feed after the
    /// stored pull cursor merged here, the cursor stored after each; the
    /// feed positions of pulled writes the peer holds already go to
    /// `echoes`.
    #[allow(clippy::too_many_arguments)]
    async fn pull_pages<P: SyncPeer + ?Sized>(
        &self,
        peer: &P,
        collection: &CollectionName,
        feed: Option<&str>,
        limit: NonZeroUsize,
        mut echoes: Option<&mut HashSet<Cursor>>,
        pulled: &mut SyncResult,
        reported: &AtomicBool,
    ) -> Result<()> {
        let peer_id = peer.peer_id();
        let pull_key = cursor_key(peer_id, collection, PeerState::Pull);
        let mut cursor = self.load_cursor(collection, &pull_key, feed).await?;
        let mut empty_in_a_row = 0;
        loop {
            let page = peer.pull(collection, cursor, limit).await?;
            check_page(peer_id, cursor, &page)?;
            let next = page.next;
            let more = page.more;
            empty_in_a_row = if page.is_empty() {
                empty_in_a_row + 1
            } else {
                0
            };
            if more && empty_in_a_row >= MAX_EMPTY_PAGES_IN_A_ROW {
                // Stored first: the next sync resumes past these pages.
                self.store_cursor(&pull_key, next, feed).await?;
                return Err(Error::PeerProtocol {
                    peer: peer_id.to_owned(),
                    reason: format!(
                        "answered {MAX_EMPTY_PAGES_IN_A_ROW} empty pages in a row, each saying \
                         more follow; this sync stops at cursor {next}, and the next resumes there"
                    ),
                });
            }
            if !page.is_empty() {
                let records = page.into_iter().collect();
                let trigger = SyncTrigger::Pull {
                    peer: peer_id.to_owned(),
                };
                let applied = self
                    .sync_records(collection, records, trigger, echoes.as_deref_mut())
                    .await
                    .inspect_err(|_| reported.store(true, Ordering::Release))?;
                pulled.absorb(applied);
            }
            if next != cursor {
                self.store_cursor(&pull_key, next, feed).await?;
                cursor = next;
            }
            if !more {
                break;
            }
        }
        Ok(())
    }

    /// The push half of a peer sync: this engine's changes after the
    /// stored push cursor sent to `peer`, but for the pulled `echoes`;
    /// then the records it refused earlier offered again.
    async fn push_pages<P: SyncPeer + ?Sized>(
        &self,
        peer: &P,
        collection: &CollectionName,
        feed: Option<&str>,
        limit: NonZeroUsize,
        echoes: &HashSet<Cursor>,
        report: &mut PeerSyncReport,
    ) -> Result<()> {
        let handle = self.collection(collection)?;
        let peer_id = peer.peer_id();
        let push_key = cursor_key(peer_id, collection, PeerState::Push);
        let refused_key = cursor_key(peer_id, collection, PeerState::Refused);
        let mut cursor = self.load_cursor(collection, &push_key, feed).await?;
        let mut refused = self.load_refused(collection, &refused_key).await?;
        let options = PageOptions::default().limit(limit.get());
        loop {
            let page = handle.changes(cursor, options).await?;
            let before = page.changes.len();
            let records: Vec<Record> = page
                .changes
                .into_iter()
                .filter(|change| !echoes.contains(&change.cursor))
                .map(|change| change.record)
                .collect();
            report.echoes_skipped += before - records.len();
            if !records.is_empty() {
                // Kept before the cursor moves past them.
                if self
                    .push_to_peer(peer, collection, records, report, &mut refused)
                    .await?
                {
                    self.store_refused(&refused_key, &refused).await?;
                }
            }
            if page.next != cursor {
                self.store_cursor(&push_key, page.next, feed).await?;
                cursor = page.next;
            }
            if !page.more {
                break;
            }
        }
        self.offer_refused_again(peer, collection, limit, &refused_key, refused, report)
            .await
    }

    /// Offers the records `peer` refused earlier and that did not change
    /// since again as they are, once per engine (at its first sync with the
    /// peer): the peer's limit may have gone up meanwhile. At every sync,
    /// records that are by their nature the largest would be read, and
    /// encoded by the peer, only to be refused again. Those this sync sent
    /// from the feed (they changed) and the peer refused again are left
    /// out; one the peer took is no longer among `refused`.
    async fn offer_refused_again<P: SyncPeer + ?Sized>(
        &self,
        peer: &P,
        collection: &CollectionName,
        limit: NonZeroUsize,
        refused_key: &str,
        mut refused: BTreeSet<RecordId>,
        report: &mut PeerSyncReport,
    ) -> Result<()> {
        let reoffer_key = (peer.peer_id().to_owned(), collection.clone());
        let refused_now: HashSet<&RecordId> =
            report.refused.iter().map(|record| &record.id).collect();
        let unchanged: Vec<RecordId> = refused
            .iter()
            .filter(|id| !refused_now.contains(id))
            .cloned()
            .collect();
        if self.inner.reoffered.lock().contains(&reoffer_key) {
            return Ok(());
        }
        if unchanged.is_empty() {
            // Whatever the peer refused, this sync offered it just now: this
            // engine's first offer is made.
            self.inner.reoffered.lock().insert(reoffer_key);
            return Ok(());
        }
        let mut changed = false;
        for ids in unchanged.chunks(limit.get()) {
            let backend = self.store();
            let stored = retry_transient(self.retries(), "get_many", || {
                backend.get_many(collection, ids)
            })
            .await?;
            let records: Vec<Record> = stored
                .into_iter()
                .flatten()
                .map(|stored| stored.record)
                .collect();
            // Gone for good: nothing left to send.
            if records.len() < ids.len() {
                let present: HashSet<&RecordId> = records.iter().map(Record::id).collect();
                for id in ids.iter().filter(|id| !present.contains(id)) {
                    changed |= refused.remove(id);
                }
            }
            if !records.is_empty() {
                changed |= self
                    .push_to_peer(peer, collection, records, report, &mut refused)
                    .await?;
            }
        }
        if changed {
            self.store_refused(refused_key, &refused).await?;
        }
        self.inner.reoffered.lock().insert(reoffer_key);
        Ok(())
    }

    /// The lock of the syncs with `peer_id` on `collection`.
    fn peer_sync_lock(
        &self,
        peer_id: &str,
        collection: &CollectionName,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.peer_syncs.lock();
        let key = (peer_id.to_owned(), collection.clone());
        if let Some(lock) = locks.get(&key).and_then(std::sync::Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, lock| lock.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key, Arc::downgrade(&lock));
        lock
    }

    /// Where this engine stands with `peer_id` on `collection` (both cursors
    /// 0 before the first [`sync_with`](Self::sync_with)).
    pub async fn peer_cursors(
        &self,
        peer_id: &str,
        collection: impl IntoName<CollectionName>,
    ) -> Result<PeerCursors> {
        self.check_open()?;
        let collection = &collection.into_name()?;
        validate_peer_id(peer_id)?;
        let feed = self.stored_feed(peer_id, collection).await?;
        let feed = feed.as_deref();
        Ok(PeerCursors {
            pulled: self
                .load_cursor(
                    collection,
                    &cursor_key(peer_id, collection, PeerState::Pull),
                    feed,
                )
                .await?,
            pushed: self
                .load_cursor(
                    collection,
                    &cursor_key(peer_id, collection, PeerState::Push),
                    feed,
                )
                .await?,
        })
    }

    /// Restarts both cursors for `peer` when its feed numbering changed since
    /// they were stored: they would point past its new feed and skip
    /// everything, and what was pushed to its old store is gone. Returns the
    /// peer's feed id, when it tells one.
    async fn follow_feed<P: SyncPeer + ?Sized>(
        &self,
        peer: &P,
        collection: &CollectionName,
    ) -> Result<Option<String>> {
        let Some(feed) = peer.feed_id().await? else {
            return Ok(None);
        };
        let peer_id = peer.peer_id();
        let known = self.stored_feed(peer_id, collection).await?;
        if known.as_deref() == Some(feed.as_str()) {
            peer.exchanges_begin(collection, &feed).await;
            return Ok(Some(feed));
        }
        if known.is_some() {
            tracing::info!(
                peer = peer_id,
                collection = collection.as_str(),
                "peer's change feed restarted; syncing from the beginning"
            );
        }
        peer.cursors_restarted(collection).await;
        // Cursors first: a crash before the feed id is stored only resets them again.
        self.store_cursor(
            &cursor_key(peer_id, collection, PeerState::Pull),
            Cursor::START,
            Some(&feed),
        )
        .await?;
        self.store_cursor(
            &cursor_key(peer_id, collection, PeerState::Push),
            Cursor::START,
            Some(&feed),
        )
        .await?;
        let backend = self.store();
        let feed_key = cursor_key(peer_id, collection, PeerState::Feed);
        retry_transient(self.retries(), "set_meta", || {
            backend.set_meta(&feed_key, &feed)
        })
        .await?;
        peer.exchanges_begin(collection, &feed).await;
        Ok(Some(feed))
    }

    /// The peer's feed id the cursors for `peer_id` on `collection` were
    /// last restarted for, if any.
    async fn stored_feed(
        &self,
        peer_id: &str,
        collection: &CollectionName,
    ) -> Result<Option<String>> {
        let backend = self.store();
        let feed_key = cursor_key(peer_id, collection, PeerState::Feed);
        retry_transient(self.retries(), "get_meta", || backend.get_meta(&feed_key)).await
    }

    /// The cursor under `key` for the peer's feed `feed`. A cursor is stored
    /// with the feed it is a position in (`<feed>:<cursor>`; a bare cursor
    /// for a peer that tells no feed, or as stored by an earlier version):
    /// one stored in another feed counts as the start. Engines on one store
    /// share the cursors, and one that restarted them for a peer's new feed
    /// could otherwise see another, still reading the old feed, store its
    /// position after; the next sync would then skip that much of the new
    /// feed for good.
    async fn load_cursor(
        &self,
        collection: &CollectionName,
        key: &str,
        feed: Option<&str>,
    ) -> Result<Cursor> {
        let backend = self.store();
        let stored = retry_transient(self.retries(), "get_meta", || backend.get_meta(key)).await?;
        let Some(text) = stored else {
            return Ok(Cursor::START);
        };
        let (stored_feed, position) = match text.rsplit_once(':') {
            Some((stored_feed, position)) => (Some(stored_feed), position),
            None => (None, text.as_str()),
        };
        let cursor: Cursor = position.parse().map_err(|_| {
            self.corrupt_meta(
                collection,
                key,
                format!("holds {text:?}, not a change-feed cursor"),
            )
        })?;
        match (stored_feed, feed) {
            (Some(stored_feed), Some(feed)) if stored_feed != feed => Ok(Cursor::START),
            _ => Ok(cursor),
        }
    }

    /// The error for peer state under metadata `key` that this engine
    /// would not have written.
    fn corrupt_meta(&self, collection: &CollectionName, key: &str, reason: String) -> Error {
        Error::Corrupt {
            backend: self.store().name(),
            collection: collection.to_string(),
            id: None,
            location: format!("metadata key {key:?}"),
            reason,
        }
    }

    /// Pushes `records` to `peer`, counting them in `report`, and brings
    /// `refused` up to date with what the peer did: the ids of those it
    /// refused are added (up to [`MAX_REFUSED`]), those it took removed.
    /// Returns whether `refused` changed.
    async fn push_to_peer<P: SyncPeer + ?Sized>(
        &self,
        peer: &P,
        collection: &CollectionName,
        records: Vec<Record>,
        report: &mut PeerSyncReport,
        refused: &mut BTreeSet<RecordId>,
    ) -> Result<bool> {
        let count = records.len();
        let was_refused: Vec<RecordId> = if refused.is_empty() {
            Vec::new()
        } else {
            records
                .iter()
                .map(Record::id)
                .filter(|id| refused.contains(*id))
                .cloned()
                .collect()
        };
        // A refusal is checked against what was sent: the peer's answer is
        // input, and an id it never received is not to be kept as refused.
        let sent: Vec<RecordId> = records.iter().map(|record| record.id().clone()).collect();
        let mut outcome = peer.push(collection, records).await?;
        check_refusals(peer.peer_id(), &sent, &mut outcome.refused)?;
        let mut changed = false;
        let still: HashSet<&RecordId> = outcome.refused.iter().map(|record| &record.id).collect();
        for id in was_refused.iter().filter(|id| !still.contains(id)) {
            changed |= refused.remove(id);
        }
        for record in &outcome.refused {
            tracing::warn!(
                peer = peer.peer_id(),
                collection = %collection,
                id = %record.id,
                reason = %record.reason,
                "the peer refused a record; it is sent again when it changes"
            );
            if refused.contains(&record.id) {
                continue;
            }
            if refused.len() < MAX_REFUSED {
                refused.insert(record.id.clone());
                changed = true;
            } else {
                // Past the bound, a refused record is sent again only when
                // it changes: its id is not kept for the next start.
                tracing::warn!(
                    peer = peer.peer_id(),
                    collection = %collection,
                    "more than {MAX_REFUSED} records refused: no more are kept to offer again"
                );
            }
        }
        report.pushed += count.saturating_sub(outcome.refused.len());
        report.refused.extend(outcome.refused);
        Ok(changed)
    }

    /// The ids of the records a peer refused, kept under `key`.
    async fn load_refused(
        &self,
        collection: &CollectionName,
        key: &str,
    ) -> Result<BTreeSet<RecordId>> {
        let backend = self.store();
        let stored = retry_transient(self.retries(), "get_meta", || backend.get_meta(key)).await?;
        let Some(text) = stored else {
            return Ok(BTreeSet::new());
        };
        let corrupt = |reason: String| self.corrupt_meta(collection, key, reason);
        let ids: Vec<String> = serde_json::from_str(&text)
            .map_err(|error| corrupt(format!("holds no list of record ids: {error}")))?;
        ids.into_iter()
            .map(|id| RecordId::new(id).map_err(|error| corrupt(error.to_string())))
            .collect()
    }

    async fn store_refused(&self, key: &str, refused: &BTreeSet<RecordId>) -> Result<()> {
        let backend = self.store();
        let ids: Vec<&str> = refused.iter().map(RecordId::as_str).collect();
        let value = serde_json::Value::from(ids).to_string();
        retry_transient(self.retries(), "set_meta", || backend.set_meta(key, &value)).await
    }

    /// Stores `cursor`, a position in the peer's feed `feed` (see
    /// [`load_cursor`](Self::load_cursor)).
    async fn store_cursor(&self, key: &str, cursor: Cursor, feed: Option<&str>) -> Result<()> {
        let backend = self.store();
        let value = match feed {
            Some(feed) => format!("{feed}:{cursor}"),
            None => cursor.to_string(),
        };
        retry_transient(self.retries(), "set_meta", || backend.set_meta(key, &value)).await
    }
}

/// Most empty pages announcing more that one sync reads in a row. A server
/// answers a few (it passed over changes the client holds); a peer that
/// never stops would keep a sync, and an auto-sync window, going for ever.
const MAX_EMPTY_PAGES_IN_A_ROW: usize = 1_000;

/// Refuses a push answer naming as refused a record that was not `sent`,
/// and keeps one refusal of a record named more than once (with its first
/// reason), so that neither the count of records pushed nor the ids kept
/// to offer again take in what the peer never received.
fn check_refusals(
    peer_id: &str,
    sent: &[RecordId],
    refused: &mut Vec<RefusedRecord>,
) -> Result<()> {
    if refused.is_empty() {
        return Ok(());
    }
    let sent: HashSet<&RecordId> = sent.iter().collect();
    if let Some(stranger) = refused.iter().find(|record| !sent.contains(&record.id)) {
        return Err(Error::PeerProtocol {
            peer: peer_id.to_owned(),
            reason: format!(
                "answered a push refusing record {:?}, which the push did not send",
                stranger.id.as_str()
            ),
        });
    }
    let mut seen = HashSet::with_capacity(refused.len());
    refused.retain(|record| seen.insert(record.id.clone()));
    Ok(())
}

/// Refuses a page that would move the cursor backwards or loop forever: a
/// peer's answer is input like any other.
fn check_page(peer_id: &str, cursor: Cursor, page: &ChangePage) -> Result<()> {
    page.check_after(cursor)
        .map_err(|reason| Error::PeerProtocol {
            peer: peer_id.to_owned(),
            reason,
        })
}
