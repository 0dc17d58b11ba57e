//! What the engine did, as typed events: for broadcast receivers
//! ([`Events::subscribe`]) and for closure handlers with the original
//! library's `on` / `once` / `off` / `removeAllListeners` / `listenerCount`.
//!
//! When nobody listens, emitting costs a few atomic loads, plus one
//! uncontended lock once a receiver was ever subscribed: the engine checks
//! for listeners before it builds a payload, so an engine without listeners
//! never copies a record for an event.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use syncforge_core::{CollectionName, ConflictDetail, Error, Record};
use tokio::sync::broadcast;

use crate::result::SyncResult;

pub use tokio::sync::broadcast::error::RecvError;

/// A stream of [`SyncEvent`]s from [`Events::subscribe`].
///
/// A receiver that falls more than the channel capacity behind loses the
/// oldest events and is told so: its next `recv` returns
/// [`RecvError::Lagged`] with the number of events it missed. A slow or
/// dropped receiver never blocks or fails a sync.
pub type EventReceiver = broadcast::Receiver<SyncEvent>;

/// The kinds of [`SyncEvent`], named as in the original library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// `sync:start`: a sync began, or an auto-sync window opened.
    SyncStart,
    /// `sync:success`: a sync finished.
    SyncSuccess,
    /// `sync:error`: a sync failed (after its retries).
    SyncError,
    /// `conflict`: concurrent edits of one record were found and merged.
    Conflict,
    /// `record:added`: a record became visible.
    RecordAdded,
    /// `record:updated`: a visible record changed.
    RecordUpdated,
    /// `record:deleted`: a record was soft-deleted.
    RecordDeleted,
    /// `sync:progress`: a batch of a sync or an import was applied.
    SyncProgress,
}

const KIND_COUNT: usize = 8;

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; KIND_COUNT] = [
        EventKind::SyncStart,
        EventKind::SyncSuccess,
        EventKind::SyncError,
        EventKind::Conflict,
        EventKind::RecordAdded,
        EventKind::RecordUpdated,
        EventKind::RecordDeleted,
        EventKind::SyncProgress,
    ];

    /// The original library's event name (`"sync:start"`, `"record:added"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::SyncStart => "sync:start",
            EventKind::SyncSuccess => "sync:success",
            EventKind::SyncError => "sync:error",
            EventKind::Conflict => "conflict",
            EventKind::RecordAdded => "record:added",
            EventKind::RecordUpdated => "record:updated",
            EventKind::RecordDeleted => "record:deleted",
            EventKind::SyncProgress => "sync:progress",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What started a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncTrigger {
    /// A call of [`SyncEngine::sync`](crate::SyncEngine::sync) (or a peer
    /// pushing records into this engine).
    Call,
    /// A tick of the auto-sync timer: a *window* in which handlers may fetch
    /// remote records and call `sync`. No `sync:success` follows this event;
    /// the syncs run in the window emit their own. Handlers that sync on
    /// `sync:start` should act only on this trigger, or each sync they run
    /// would start another.
    AutoSyncWindow,
    /// [`SyncEngine::sync_with`](crate::SyncEngine::sync_with) applying a page
    /// of changes pulled from the peer with this id.
    Pull {
        /// The peer's id.
        peer: String,
    },
}

/// One thing the engine did.
///
/// Big payloads are shared (`Arc`) so that handing an event to many receivers
/// does not copy them. Every `timestamp` is in milliseconds since the Unix
/// epoch, read from the engine's time source.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SyncEvent {
    /// `sync:start`.
    SyncStart {
        /// The collection.
        collection: CollectionName,
        /// Records offered to the sync (0 for an auto-sync window).
        record_count: usize,
        /// When it began, in milliseconds since the Unix epoch.
        timestamp: u64,
        /// What started it.
        trigger: SyncTrigger,
    },
    /// `sync:success`: what the sync did.
    SyncSuccess(Arc<SyncResult>),
    /// `sync:error`: the sync failed after its retries; the same error is
    /// returned to the caller. [`Error::is_transient`] tells whether trying
    /// again later may succeed (the store or the peer was unreachable).
    SyncError {
        /// The collection.
        collection: CollectionName,
        /// The typed error.
        error: Arc<Error>,
        /// When it failed, in milliseconds since the Unix epoch.
        timestamp: u64,
    },
    /// `conflict`: concurrent edits found and how they were resolved.
    Conflict(Arc<ConflictDetail>),
    /// `record:added`: a record became visible (new, or written again after a
    /// delete).
    RecordAdded {
        /// The collection.
        collection: CollectionName,
        /// The record as stored.
        record: Record,
    },
    /// `record:updated`: a visible record changed.
    RecordUpdated {
        /// The collection.
        collection: CollectionName,
        /// The record as stored.
        record: Record,
        /// The record before the change.
        previous: Record,
    },
    /// `record:deleted`: a record was soft-deleted, here or by a sync. A
    /// sync that brings the tombstone of a record this replica never held
    /// stores it and emits this too (and counts it in `deleted`), though
    /// nothing visible went away: a count of visible records kept from
    /// these events must not go below zero on it.
    RecordDeleted {
        /// The collection.
        collection: CollectionName,
        /// The deleted record (a tombstone).
        record: Record,
    },
    /// `sync:progress`: after each applied batch of a sync or an import, for progress bars.
    SyncProgress {
        /// The collection.
        collection: CollectionName,
        /// Records processed so far.
        done: usize,
        /// Records in the whole sync, repeated ids counted once.
        total: usize,
    },
}

impl SyncEvent {
    /// This event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            SyncEvent::SyncStart { .. } => EventKind::SyncStart,
            SyncEvent::SyncSuccess(_) => EventKind::SyncSuccess,
            SyncEvent::SyncError { .. } => EventKind::SyncError,
            SyncEvent::Conflict(_) => EventKind::Conflict,
            SyncEvent::RecordAdded { .. } => EventKind::RecordAdded,
            SyncEvent::RecordUpdated { .. } => EventKind::RecordUpdated,
            SyncEvent::RecordDeleted { .. } => EventKind::RecordDeleted,
            SyncEvent::SyncProgress { .. } => EventKind::SyncProgress,
        }
    }

    /// The collection the event is about.
    pub fn collection(&self) -> &CollectionName {
        match self {
            SyncEvent::SyncStart { collection, .. }
            | SyncEvent::SyncError { collection, .. }
            | SyncEvent::RecordAdded { collection, .. }
            | SyncEvent::RecordUpdated { collection, .. }
            | SyncEvent::RecordDeleted { collection, .. }
            | SyncEvent::SyncProgress { collection, .. } => collection,
            SyncEvent::SyncSuccess(result) => &result.collection,
            SyncEvent::Conflict(detail) => &detail.collection,
        }
    }
}

/// Identifies a handler registered with [`Events::on`] or [`Events::once`],
/// to remove it with [`Events::off`]. (Rust closures cannot be compared, so
/// the original's `off(event, handler)` takes this id instead.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

type Handler = Arc<dyn Fn(&SyncEvent) + Send + Sync>;

struct Listener {
    id: ListenerId,
    kind: EventKind,
    once: bool,
    /// Installed by syncforge itself (an HTTP server's long-poll wake-ups):
    /// not the user's to count or to remove wholesale.
    internal: bool,
    handler: Handler,
}

/// The engine's event hub, reached with
/// [`SyncEngine::events`](crate::SyncEngine::events).
///
/// Handlers run on the task that emits the event, in registration order, so
/// they must be quick: to do slow or async work, spawn a task or use
/// [`subscribe`](Self::subscribe). A handler may register or remove handlers.
/// A handler that panics is caught: the panic is logged (`tracing` error),
/// counted in [`handler_panics`](Self::handler_panics), and the engine and
/// other handlers carry on. (This needs the default `panic = "unwind"`.)
pub struct Events {
    sender: broadcast::Sender<SyncEvent>,
    /// Whether [`subscribe`](Self::subscribe) was ever called. The channel
    /// counts its receivers behind a lock, and every write asks whether
    /// anyone listens: until someone subscribes, the answer needs no lock.
    subscribed: AtomicBool,
    listeners: Mutex<Vec<Listener>>,
    /// Handlers per kind, kept beside the list so that checking for listeners
    /// needs no lock.
    counts: [AtomicUsize; KIND_COUNT],
    next_id: AtomicU64,
    panics: AtomicU64,
    /// Set, under the listeners' lock, when the engine closes: a handler
    /// added later is never kept. One that held a handle on the engine
    /// would keep it, and its event channel, alive for good, so receivers
    /// would never see their stream end.
    closed: AtomicBool,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("receivers", &self.receiver_count())
            .field("handlers", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl Events {
    pub(crate) fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity);
        Events {
            sender,
            subscribed: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
            counts: std::array::from_fn(|_| AtomicUsize::new(0)),
            next_id: AtomicU64::new(1),
            panics: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// The engine closed: removes the user's handlers (as
    /// [`remove_all_listeners`](Self::remove_all_listeners)), keeps none
    /// added from now on, and stops deliveries under way before their next
    /// user handler.
    pub(crate) fn close(&self) {
        // Set before the handlers go: one added meanwhile is either removed
        // below or sees the flag (both take the listeners' lock).
        self.closed.store(true, Ordering::Release);
        self.remove_all_listeners(None);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Listener>> {
        self.listeners.lock()
    }

    /// A new receiver of every event emitted from now on.
    pub fn subscribe(&self) -> EventReceiver {
        // Set before the receiver exists, so that whoever can see the
        // receiver also sees the flag.
        self.subscribed.store(true, Ordering::Release);
        self.sender.subscribe()
    }

    /// Whether a receiver from [`subscribe`](Self::subscribe) is alive,
    /// without taking the channel's lock while none was ever made.
    fn has_receivers(&self) -> bool {
        self.subscribed.load(Ordering::Acquire) && self.sender.receiver_count() > 0
    }

    /// How many receivers from [`subscribe`](Self::subscribe) are alive.
    pub fn receiver_count(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Calls `handler` on every event of `kind` (the original's `on`). Once
    /// the engine is closed, a handler is dropped at once and never called.
    pub fn on(
        &self,
        kind: EventKind,
        handler: impl Fn(&SyncEvent) + Send + Sync + 'static,
    ) -> ListenerId {
        self.add(kind, false, false, Arc::new(handler))
    }

    /// [`on`](Self::on) for a handler syncforge installs for itself, which
    /// [`remove_all_listeners`](Self::remove_all_listeners) leaves in place
    /// and [`listener_count`](Self::listener_count) leaves out: clearing the
    /// user's handlers must not stop, say, a server's long polls waking.
    #[cfg(any(test, feature = "http-server"))]
    pub(crate) fn on_internal(
        &self,
        kind: EventKind,
        handler: impl Fn(&SyncEvent) + Send + Sync + 'static,
    ) -> ListenerId {
        self.add(kind, false, true, Arc::new(handler))
    }

    /// Calls `handler` on the next event of `kind` only (the original's `once`).
    pub fn once(
        &self,
        kind: EventKind,
        handler: impl Fn(&SyncEvent) + Send + Sync + 'static,
    ) -> ListenerId {
        self.add(kind, true, false, Arc::new(handler))
    }

    fn add(&self, kind: EventKind, once: bool, internal: bool, handler: Handler) -> ListenerId {
        let id = ListenerId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut listeners = self.lock();
        if self.closed.load(Ordering::Acquire) {
            // Dropped here: nothing will ever call it.
            return id;
        }
        listeners.push(Listener {
            id,
            kind,
            once,
            internal,
            handler,
        });
        self.counts[kind.index()].fetch_add(1, Ordering::Release);
        id
    }

    /// Removes one handler (the original's `off`). Returns whether it was
    /// still registered (a `once` handler that already ran is not). An event
    /// being delivered at that moment still reaches it, as an emitter's
    /// `off` during an `emit` does in Node; only closing the engine stops a
    /// delivery under way.
    pub fn off(&self, id: ListenerId) -> bool {
        let mut listeners = self.lock();
        let Some(position) = listeners.iter().position(|l| l.id == id) else {
            return false;
        };
        let removed = listeners.remove(position);
        self.counts[removed.kind.index()].fetch_sub(1, Ordering::Release);
        true
    }

    /// Removes every handler of `kind`, or every handler at all with `None`
    /// (the original's `removeAllListeners(event?)`). Receivers from
    /// [`subscribe`](Self::subscribe) are not affected, nor are the handlers
    /// syncforge installs for itself (an HTTP server's long-poll wake-ups).
    /// Returns how many handlers were removed.
    pub fn remove_all_listeners(&self, kind: impl Into<Option<EventKind>>) -> usize {
        let kind = kind.into();
        let mut listeners = self.lock();
        let before = listeners.len();
        listeners.retain(|l| {
            let remove = !l.internal && kind.is_none_or(|k| k == l.kind);
            if remove {
                self.counts[l.kind.index()].fetch_sub(1, Ordering::Release);
            }
            !remove
        });
        before - listeners.len()
    }

    /// Handlers registered for `kind` (the original's `listenerCount`), not
    /// counting those syncforge installs for itself.
    pub fn listener_count(&self, kind: EventKind) -> usize {
        self.lock()
            .iter()
            .filter(|l| l.kind == kind && !l.internal)
            .count()
    }

    /// Handlers registered for `kind`, internal ones included: whom an
    /// event of `kind` reaches.
    fn handlers(&self, kind: EventKind) -> usize {
        self.counts[kind.index()].load(Ordering::Acquire)
    }

    /// How many handler calls panicked since the engine was built.
    pub fn handler_panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Whether an event of `kind` would reach anyone; checked before building
    /// a payload.
    pub(crate) fn wants(&self, kind: EventKind) -> bool {
        self.handlers(kind) > 0 || self.has_receivers()
    }

    /// Whether an event of any of `kinds` would reach anyone.
    pub(crate) fn wants_any(&self, kinds: &[EventKind]) -> bool {
        kinds.iter().any(|kind| self.handlers(*kind) > 0) || self.has_receivers()
    }

    /// Delivers `event` to the handlers of its kind, then to every receiver.
    pub(crate) fn emit(&self, event: SyncEvent) {
        let kind = event.kind();
        if self.handlers(kind) > 0 {
            self.call_handlers(kind, &event, false);
        }
        if self.subscribed.load(Ordering::Acquire) {
            // Fails only when no receiver is left, which is nobody's problem.
            let _ = self.sender.send(event);
        }
    }

    /// `event` for syncforge's own handlers only (see
    /// [`on_internal`](Self::on_internal)): a write that no user event
    /// describes — a deleted record whose tombstone or versions moved — is
    /// still in the feed, and a server's long polls wait for it.
    pub(crate) fn emit_internal(&self, event: &SyncEvent) {
        let kind = event.kind();
        if self.handlers(kind) > 0 {
            self.call_handlers(kind, event, true);
        }
    }

    /// Runs the handlers of `kind` (with `internal_only`, syncforge's own).
    fn call_handlers(&self, kind: EventKind, event: &SyncEvent, internal_only: bool) {
        let called = |l: &Listener| l.kind == kind && (l.internal || !internal_only);
        let due: Vec<(ListenerId, Handler, bool)> = {
            let mut listeners = self.lock();
            let due = listeners
                .iter()
                .filter(|l| called(l))
                .map(|l| (l.id, Arc::clone(&l.handler), l.internal))
                .collect();
            // A `once` handler is removed before it runs, so an event emitted
            // by the handler itself cannot run it again.
            listeners.retain(|l| {
                let spent = l.once && called(l);
                if spent {
                    self.counts[kind.index()].fetch_sub(1, Ordering::Release);
                }
                !spent
            });
            due
        };
        for (id, handler, internal) in due {
            // A close during this delivery (on another thread, or by a
            // handler before this one) stops it: the user's handlers are
            // gone once `close` returns, save a call already begun.
            if !internal && self.closed.load(Ordering::Acquire) {
                continue;
            }
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| handler(event))) {
                self.panics.fetch_add(1, Ordering::Relaxed);
                let message = panic_message(payload.as_ref());
                tracing::error!(
                    event = kind.name(),
                    listener = id.0,
                    panic = %message,
                    "event handler panicked; the engine carries on"
                );
            }
        }
    }
}

/// What a caught panic said, when it said it with a string.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn start() -> SyncEvent {
        SyncEvent::SyncStart {
            collection: CollectionName::new("notes").unwrap(),
            record_count: 0,
            timestamp: 0,
            trigger: SyncTrigger::Call,
        }
    }

    /// Clearing the user's handlers leaves the ones syncforge installed for
    /// itself, which the user's count does not show either.
    #[test]
    fn internal_handlers_outlive_remove_all_listeners() {
        let events = Events::new(16);
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let internal = events.on_internal(EventKind::SyncStart, move |_| {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        events.on(EventKind::SyncStart, |_| {});
        assert_eq!(events.listener_count(EventKind::SyncStart), 1);
        assert_eq!(events.remove_all_listeners(None), 1);
        assert_eq!(events.listener_count(EventKind::SyncStart), 0);
        assert!(events.wants(EventKind::SyncStart));
        events.emit(start());
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(events.off(internal));
        assert!(!events.wants(EventKind::SyncStart));
        assert_eq!(events.listener_count(EventKind::SyncStart), 0);
    }

    /// A handler that closes the engine stops the event it is handling from
    /// reaching the user's later handlers, which were removed; syncforge's
    /// own handlers still get it.
    #[test]
    fn a_close_during_a_delivery_calls_no_further_user_handler() {
        let events = Arc::new(Events::new(16));
        let closer = Arc::clone(&events);
        events.on(EventKind::SyncStart, move |_| closer.close());
        let later = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&later);
        events.on(EventKind::SyncStart, move |_| {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        let internal = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&internal);
        events.on_internal(EventKind::SyncStart, move |_| {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        events.emit(start());
        assert_eq!(later.load(Ordering::Relaxed), 0);
        assert_eq!(internal.load(Ordering::Relaxed), 1);
    }
}
