//! The periodic sync window, optionally syncing with peers on each tick.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use futures_util::FutureExt;
use syncforge_core::{CollectionName, Error, Result};
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::engine::{Inner, SyncEngine};
use crate::events::{panic_message, EventKind, SyncEvent, SyncTrigger};
use crate::peer::SyncPeer;
use crate::retry::timer;

impl SyncEngine {
    /// Starts the periodic sync window (the original's `startAutoSync`); a
    /// no-op when it runs already. `build()` calls it when the builder's
    /// `auto_sync(true)` is set.
    ///
    /// Every `auto_sync_interval` (first one interval after the start), for
    /// each collection — those set with
    /// [`EngineBuilder::auto_sync_collections`](crate::EngineBuilder::auto_sync_collections),
    /// otherwise those the store lists at that moment — the engine emits
    /// `sync:start` with [`SyncTrigger::AutoSyncWindow`] and then runs
    /// [`sync_with`](Self::sync_with) with every peer added by
    /// [`add_auto_sync_peer`](Self::add_auto_sync_peer). A failed peer sync
    /// emits `sync:error` and the window goes on with the next; so does one
    /// that panics (reported as [`Error::PeerProtocol`]). A pair already
    /// being synced (a `sync_with`, `pull_from` or `push_to` the
    /// application called) is waited for, at most the peer timeout, before
    /// that timeout starts for the window's own sync; one still busy then
    /// is left to that sync. When a window takes longer than the interval, the next one
    /// waits instead of bunching up; one that panics outside a peer sync
    /// (its store listing the collections, say) is logged as an error, and
    /// the next one runs on time.
    ///
    /// The timer holds only a weak handle on the engine: dropping the last
    /// `SyncEngine` handle (a window under way then finishes the sync it is
    /// in and syncs no further peer or collection), [`close`](Self::close) or
    /// [`stop_auto_sync`](Self::stop_auto_sync) ends it. An engine is kept
    /// alive by an event handler or an auto-sync peer holding a handle on
    /// it (an engine), so call `close` to be sure it stops. Needs a tokio
    /// runtime with timers; outside one, or on one built without them, it
    /// fails with [`Error::InvalidConfig`].
    ///
    /// A window whose store cannot list its collections (when
    /// `auto_sync_collections` is not set) syncs nothing and only logs a
    /// warning; the next window tries again.
    pub fn start_auto_sync(&self) -> Result<()> {
        let mut task = self.inner.timer.lock();
        // Checked under the timer's lock, which `close` takes after marking
        // the engine closed: a timer started here is one `close` stops.
        self.check_open()?;
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|err| Error::InvalidConfig {
                option: "auto_sync",
                reason: format!("auto-sync needs a running tokio runtime: {err}"),
            })?;
        let period = self.config().auto_sync_interval();
        // Made here, not in the task: a runtime without timers panics at
        // the first timer made on it, and in the task that panic would end
        // auto-sync in silence.
        let mut ticker = {
            let _entered = runtime.enter();
            timer(|| interval_at(Instant::now() + period, period)).ok_or_else(|| {
                Error::InvalidConfig {
                    option: "auto_sync",
                    reason: "auto-sync needs a tokio runtime with timers (enable_time)".to_owned(),
                }
            })?
        };
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let engine = Arc::downgrade(&self.inner);
        let handle = runtime.spawn(async move {
            loop {
                ticker.tick().await;
                let Some(engine) = upgrade(&engine) else {
                    break;
                };
                if engine.is_closed() {
                    break;
                }
                // A panic outside the peers' syncs (a store listing its
                // collections, the clock) ended the timer's task with it:
                // auto-sync stopped for good, with nothing reported.
                let window = AssertUnwindSafe(engine.run_sync_window());
                if let Err(payload) = window.catch_unwind().await {
                    tracing::error!(
                        panic = panic_message(payload.as_ref()),
                        "an auto-sync window panicked; the next one runs on time"
                    );
                }
            }
        });
        *task = Some(handle);
        Ok(())
    }

    /// Stops the periodic sync window (the original's `stopAutoSync`). A
    /// window in progress is cancelled at its next await, which is safe:
    /// every write is conditional and cursors advance only past applied
    /// changes (a write already sent may still land, without its event).
    /// It does not wait for the window to stop; [`close`](Self::close) does.
    /// Stopping a stopped timer does nothing.
    pub fn stop_auto_sync(&self) {
        // The timer's lock is held until the window is among the stopped
        // ones: a `close` meanwhile, which takes the two locks in the same
        // order, finds it in one place or the other.
        let mut timer = self.inner.timer.lock();
        if let Some(task) = timer.take() {
            task.abort();
            let mut stopped = self.inner.stopped.lock();
            stopped.retain(|earlier| !earlier.is_finished());
            stopped.push(task);
        }
    }

    /// Whether the periodic sync window is running.
    pub fn is_auto_syncing(&self) -> bool {
        self.inner
            .timer
            .lock()
            .as_ref()
            .is_some_and(|task| !task.is_finished())
    }

    /// Adds a peer that every auto-sync window syncs with, replacing one with
    /// the same [`peer_id`](SyncPeer::peer_id). The engine holds the peer
    /// until it is removed or the engine is closed (two engines that are each
    /// other's peers keep each other alive until then).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (option `peer_id`) for a peer whose id is
    /// not 1 to 1024 bytes without control characters, which every window
    /// would refuse; [`Error::Closed`] once the engine is closed, which
    /// takes no peer.
    pub fn add_auto_sync_peer(&self, peer: Arc<dyn SyncPeer>) -> Result<()> {
        crate::peer_sync::validate_peer_id(peer.peer_id())?;
        let mut peers = self.inner.peers.lock();
        // Under the peers' lock, which `close` takes after marking the
        // engine closed to let go of every peer.
        self.check_open()?;
        peers.retain(|p| p.peer_id() != peer.peer_id());
        peers.push(peer);
        Ok(())
    }

    /// Removes an auto-sync peer by id; returns whether it was there.
    pub fn remove_auto_sync_peer(&self, peer_id: &str) -> bool {
        let mut peers = self.inner.peers.lock();
        let before = peers.len();
        peers.retain(|p| p.peer_id() != peer_id);
        peers.len() != before
    }

    /// Whether the auto-sync window running on this handle holds the
    /// engine's last handle: the application dropped all of its own.
    fn held_by_the_window_alone(&self) -> bool {
        Arc::strong_count(&self.inner) == 1
    }

    /// One tick: the window events, then a `sync_with` per collection and peer.
    async fn run_sync_window(&self) {
        let peers: Vec<Arc<dyn SyncPeer>> = self.inner.peers.lock().clone();
        let events = self.events();
        // With no peer and nobody to tell, a window has nothing to do: skip
        // listing the collections.
        if peers.is_empty() && !events.wants(EventKind::SyncStart) {
            return;
        }
        let span = tracing::info_span!("auto_sync_window", peers = peers.len());
        async {
            let collections: Vec<CollectionName> = match self.config().auto_sync_collections() {
                Some(list) => list.to_vec(),
                None => match self.list_collections().await {
                    Ok(list) => list,
                    Err(error) => {
                        tracing::warn!(%error, "auto-sync could not list collections");
                        return;
                    }
                },
            };
            for collection in &collections {
                // A close during the window ends it: nothing is announced
                // after it (a closed engine's syncs fail before they yield).
                // So does the drop of every handle of the engine: the
                // window holds it only to finish the sync under way, not
                // to sync the rest (collections and peers) for no one.
                if self.is_closed() || self.held_by_the_window_alone() {
                    return;
                }
                if events.wants(EventKind::SyncStart) {
                    events.emit(SyncEvent::SyncStart {
                        collection: collection.clone(),
                        record_count: 0,
                        timestamp: self.now_millis(),
                        trigger: SyncTrigger::AutoSyncWindow,
                    });
                }
                for peer in &peers {
                    // Checked before each peer as well: a window whose
                    // engine was dropped during one peer's sync syncs no
                    // other peer either.
                    if self.is_closed() || self.held_by_the_window_alone() {
                        return;
                    }
                    // sync_with reports its own failure (event and log). A
                    // panic (a peer's, or a bug) ends that one sync, not the
                    // window and the timer with it, and is reported alike;
                    // so does a sync past its bound (a peer that never
                    // answers held up every later window). The bound starts
                    // once the pair's turn came: a sync of the pair the
                    // application runs meanwhile is waited for (as long
                    // again at most), not counted against the peer.
                    let bound = self.config().auto_sync_peer_timeout();
                    let Some(turn) = self.peer_sync_turn(peer.peer_id(), collection, bound).await
                    else {
                        tracing::info!(
                            peer = peer.peer_id(),
                            collection = collection.as_str(),
                            "auto-sync left the pair to its sync still under way"
                        );
                        continue;
                    };
                    // Set once the sync announced its failure itself (a
                    // pull refused for good, announced before the push): a
                    // push then past the bound is the same failure.
                    let reported = AtomicBool::new(false);
                    let syncing = AssertUnwindSafe(self.sync_with_turn(
                        peer.as_ref(),
                        collection,
                        turn,
                        &reported,
                    ));
                    let error = match tokio::time::timeout(bound, syncing.catch_unwind()).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(payload)) => Error::PeerProtocol {
                            peer: peer.peer_id().to_owned(),
                            reason: format!(
                                "the sync with it panicked: {}",
                                panic_message(payload.as_ref())
                            ),
                        },
                        Err(_) => Error::unavailable(
                            "peer",
                            format!(
                                "the sync with peer {:?} did not end within {bound:?} (the \
                                 auto-sync peer timeout); the next window goes on from its \
                                 cursors",
                                peer.peer_id()
                            ),
                        ),
                    };
                    tracing::error!(collection = collection.as_str(), %error, "auto-sync carries on");
                    if !reported.load(Ordering::Acquire) {
                        self.emit_sync_error(collection, &error);
                    }
                }
            }
        }
        .instrument(span)
        .await;
    }
}

fn upgrade(engine: &Weak<Inner>) -> Option<SyncEngine> {
    engine.upgrade().map(|inner| SyncEngine { inner })
}
