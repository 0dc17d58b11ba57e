//! Auto-sync: the periodic window (events per collection on an interval,
//! start / stop / close), the original's handler-driven pattern, and syncing
//! with peers on each tick. Time is paused: tokio advances it, nobody sleeps.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use syncforge::{
    ConflictStrategy, Error, EventReceiver, MemoryBackend, SyncEngine, SyncEvent, SyncTrigger,
};
use tokio::time::timeout;

use crate::support::snapshot;

const INTERVAL: Duration = Duration::from_secs(10);
/// Added to a wait that ends when a tick is due: a timeout due at the same
/// instant as the tick may fire before the timer task has run.
const SLACK: Duration = Duration::from_millis(1);

async fn auto_engine(client: &str) -> SyncEngine {
    SyncEngine::builder()
        .client_id(client)
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend(MemoryBackend::new())
        .auto_sync(true)
        .auto_sync_interval(INTERVAL)
        .build()
        .await
        .unwrap()
}

/// The collection of the next window event within `within`, or `None`.
async fn next_window(rx: &mut EventReceiver, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let event = timeout(deadline - tokio::time::Instant::now(), rx.recv())
            .await
            .ok()?
            .unwrap();
        if let SyncEvent::SyncStart {
            collection,
            trigger: SyncTrigger::AutoSyncWindow,
            record_count,
            ..
        } = event
        {
            assert_eq!(record_count, 0);
            return Some(collection.to_string());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn windows_open_per_listed_collection_on_every_interval() {
    let e = auto_engine("a").await;
    assert!(e.is_auto_syncing());
    e.put("notes", &json!({"id": "n"})).await.unwrap();
    e.put("tasks", &json!({"id": "t"})).await.unwrap();
    let mut rx = e.subscribe();
    let started = tokio::time::Instant::now();

    // Nothing before the first interval has passed.
    assert_eq!(
        next_window(&mut rx, INTERVAL - Duration::from_millis(1)).await,
        None
    );
    let mut seen = vec![
        next_window(&mut rx, 2 * SLACK).await.unwrap(),
        next_window(&mut rx, Duration::ZERO).await.unwrap(),
    ];
    seen.sort();
    assert_eq!(seen, ["notes", "tasks"]);
    assert_eq!(started.elapsed(), INTERVAL);

    // And again one interval later.
    let mut again = vec![
        next_window(&mut rx, INTERVAL + SLACK).await.unwrap(),
        next_window(&mut rx, Duration::ZERO).await.unwrap(),
    ];
    again.sort();
    assert_eq!(again, ["notes", "tasks"]);
    assert_eq!(started.elapsed(), 2 * INTERVAL);
}

#[tokio::test(start_paused = true)]
async fn configured_collections_are_used_and_validated() {
    let e = SyncEngine::builder()
        .client_id("a")
        .auto_sync(true)
        .auto_sync_interval(INTERVAL)
        .auto_sync_collections(["inbox"])
        .build()
        .await
        .unwrap();
    // "inbox" holds nothing yet: it is named, so its window opens anyway.
    e.put("other", &json!({"id": "x"})).await.unwrap();
    let mut rx = e.subscribe();
    assert_eq!(
        next_window(&mut rx, INTERVAL + SLACK).await.as_deref(),
        Some("inbox")
    );
    assert_eq!(next_window(&mut rx, Duration::ZERO).await, None);

    let err = SyncEngine::builder()
        .auto_sync_collections(["ok", ""])
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                option: "auto_sync_collections",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn stop_start_and_close() {
    let e = auto_engine("a").await;
    e.put("c", &json!({"id": "x"})).await.unwrap();
    let mut rx = e.subscribe();

    e.stop_auto_sync();
    e.stop_auto_sync();
    assert!(!e.is_auto_syncing());
    assert_eq!(next_window(&mut rx, 3 * INTERVAL).await, None);

    e.start_auto_sync().unwrap();
    e.start_auto_sync().unwrap(); // already running: still one timer
    assert!(e.is_auto_syncing());
    assert_eq!(
        next_window(&mut rx, INTERVAL + SLACK).await.as_deref(),
        Some("c")
    );
    assert_eq!(next_window(&mut rx, INTERVAL / 2).await, None);

    e.close().await.unwrap();
    assert!(!e.is_auto_syncing());
    assert!(matches!(e.start_auto_sync(), Err(Error::Closed { .. })));
    assert_eq!(next_window(&mut rx, 3 * INTERVAL).await, None);
}

#[tokio::test(start_paused = true)]
async fn off_by_default_and_the_timer_does_not_keep_the_engine_alive() {
    let quiet = SyncEngine::builder().build().await.unwrap();
    assert!(!quiet.is_auto_syncing());

    let e = auto_engine("a").await;
    let mut rx = e.subscribe();
    drop(e);
    // The timer holds only a weak handle: with the last handle gone, the
    // engine (and its event channel) is gone.
    let ended = timeout(3 * INTERVAL, rx.recv()).await.unwrap();
    assert!(matches!(
        ended,
        Err(tokio::sync::broadcast::error::RecvError::Closed)
    ));
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let e = runtime.block_on(SyncEngine::builder().build()).unwrap();
    let outcome = std::thread::spawn(move || e.start_auto_sync())
        .join()
        .unwrap();
    assert_refused(&outcome);
}

/// `outcome` is auto-sync refused for want of what it needs.
fn assert_refused(outcome: &syncforge::Result<()>) {
    assert!(
        matches!(
            outcome,
            Err(Error::InvalidConfig {
                option: "auto_sync",
                ..
            })
        ),
        "{outcome:?}"
    );
}

/// A runtime built without timers runs the engine but cannot tick: starting
/// auto-sync on it is refused, where the timer task panicked and auto-sync
/// was reported started.
#[test]
fn starting_on_a_runtime_without_timers_is_an_error() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let outcome = runtime.block_on(async {
        let e = SyncEngine::builder().build().await.unwrap();
        let outcome = e.start_auto_sync();
        assert!(!e.is_auto_syncing());
        outcome
    });
    assert_refused(&outcome);
}

/// A build whose auto-sync cannot start closes the store it opened: it
/// returned the error and left the store open, with no engine to close it.
#[test]
fn a_build_whose_auto_sync_cannot_start_closes_its_store() {
    use syncforge_testkit::faults::{FaultyBackend, Operation};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = Arc::new(FaultyBackend::new(
        Arc::new(syncforge::MemoryBackend::new()),
        1,
        0.0,
        Duration::ZERO,
    ));
    let shared: Arc<dyn syncforge::StorageBackend> = store.clone();
    let outcome = runtime.block_on(
        SyncEngine::builder()
            .auto_sync(true)
            .backend(shared)
            .build(),
    );
    assert_refused(&outcome.map(drop));
    assert_eq!(store.calls(Operation::Close), 1);
}

/// A memory store whose every `operation` fails, and the same as the
/// engine takes it.
fn store_failing(
    operation: syncforge_testkit::faults::Operation,
) -> (
    Arc<syncforge_testkit::faults::FaultyBackend>,
    Arc<dyn syncforge::StorageBackend>,
) {
    let store = Arc::new(
        syncforge_testkit::faults::FaultyBackend::new(
            Arc::new(syncforge::MemoryBackend::new()),
            1,
            1.0,
            Duration::ZERO,
        )
        .failing_only(&[operation]),
    );
    let shared: Arc<dyn syncforge::StorageBackend> = store.clone();
    (store, shared)
}

/// A build whose store fails as the engine opens it (reading its newest
/// stamp) closes the store: it was handed to the engine, which never came.
#[tokio::test]
async fn a_build_whose_store_fails_to_open_closes_it() {
    use syncforge_testkit::faults::Operation;
    let (store, shared) = store_failing(Operation::NewestStamp);
    let outcome = SyncEngine::builder()
        .max_retries(0)
        .backend(shared)
        .build()
        .await;
    assert!(outcome.is_err());
    assert_eq!(store.calls(Operation::Close), 1);
}

/// A build refusing one of its settings closes a store handed over to it,
/// as any other failed build does: it was left open.
#[tokio::test]
async fn a_build_refusing_a_setting_closes_the_store_handed_to_it() {
    use syncforge_testkit::faults::{FaultyBackend, Operation};
    let store = Arc::new(FaultyBackend::new(
        Arc::new(syncforge::MemoryBackend::new()),
        1,
        0.0,
        Duration::ZERO,
    ));
    let shared: Arc<dyn syncforge::StorageBackend> = store.clone();
    let outcome = SyncEngine::builder()
        .batch_size(0)
        .backend(shared)
        .build()
        .await;
    assert!(
        matches!(outcome, Err(Error::InvalidConfig { .. })),
        "{outcome:?}"
    );
    assert_eq!(store.calls(Operation::Close), 1);
}

/// A close whose store failed to close returns that error, and the next
/// close tries the store again rather than answering `Ok` at once.
#[tokio::test]
async fn a_close_whose_store_failed_to_close_is_tried_again() {
    use syncforge_testkit::faults::Operation;
    let (store, shared) = store_failing(Operation::Close);
    let e = SyncEngine::builder().backend(shared).build().await.unwrap();
    assert!(e.close().await.is_err());
    store.set_failure_rate(0.0);
    e.close().await.unwrap();
    assert_eq!(store.calls(Operation::Close), 2);
    e.close().await.unwrap();
    assert_eq!(store.calls(Operation::Close), 2);
}

/// A closed engine takes no auto-sync peer: it would hold it for ever. It
/// says so, where the peer was dropped in silence.
#[tokio::test]
async fn a_closed_engine_takes_no_peer() {
    let e = SyncEngine::builder().build().await.unwrap();
    let peer = SyncEngine::builder()
        .client_id("peer")
        .build()
        .await
        .unwrap();
    e.close().await.unwrap();
    let refused = e.add_auto_sync_peer(Arc::new(peer)).unwrap_err();
    assert!(
        matches!(refused, syncforge::Error::Closed { .. }),
        "{refused:?}"
    );
    assert!(!e.remove_auto_sync_peer("peer"));
}

/// A peer whose id no sync accepts is refused when it is added, where it
/// was taken and then failed every auto-sync window.
#[tokio::test]
async fn a_peer_whose_id_no_sync_accepts_is_refused_when_added() {
    let e = SyncEngine::builder().build().await.unwrap();
    for id in ["", "line\nbreak"] {
        let refused = e
            .add_auto_sync_peer(Arc::new(BrokenPeer::Misnamed(id)))
            .unwrap_err();
        assert!(
            matches!(
                refused,
                syncforge::Error::InvalidConfig {
                    option: "peer_id",
                    ..
                }
            ),
            "{id:?}: {refused:?}"
        );
    }
    e.add_auto_sync_peer(Arc::new(BrokenPeer::Misnamed("fine")))
        .unwrap();
    assert!(e.remove_auto_sync_peer("fine"));
    e.close().await.unwrap();
}

/// The original's pattern: a `sync:start` handler fetches remote records in
/// the window and syncs them. Handlers cannot await, so it spawns a task.
#[tokio::test(start_paused = true)]
async fn a_window_handler_can_pull_from_a_server() {
    let server = SyncEngine::builder()
        .client_id("server")
        .build()
        .await
        .unwrap();
    server
        .put("c", &json!({"id": "from-server"}))
        .await
        .unwrap();
    let device = SyncEngine::builder()
        .client_id("device")
        .auto_sync(true)
        .auto_sync_interval(INTERVAL)
        .auto_sync_collections(["c"])
        .build()
        .await
        .unwrap();
    let mut rx = device.subscribe();
    let (this, remote) = (device.clone(), server.clone());
    device
        .events()
        .on(syncforge::EventKind::SyncStart, move |event| {
            if let SyncEvent::SyncStart {
                collection,
                trigger: SyncTrigger::AutoSyncWindow,
                ..
            } = event
            {
                let (this, remote, collection) = (this.clone(), remote.clone(), collection.clone());
                tokio::spawn(async move {
                    let records = remote.get_all(&collection).await.unwrap();
                    let _ = this.sync(&collection, records).await.unwrap();
                });
            }
        });
    let success = timeout(2 * INTERVAL, async {
        loop {
            if let SyncEvent::SyncSuccess(result) = rx.recv().await.unwrap() {
                return result;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(success.added, 1);
    assert!(device.get("c", "from-server").await.unwrap().is_some());
    device.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn auto_sync_with_peers_converges_both_ways() {
    let a = SyncEngine::builder()
        .client_id("a")
        .conflict_strategy(ConflictStrategy::Crdt)
        .auto_sync(true)
        .auto_sync_interval(INTERVAL)
        .auto_sync_collections(["c"])
        .build()
        .await
        .unwrap();
    let b = SyncEngine::builder()
        .client_id("b")
        .conflict_strategy(ConflictStrategy::Crdt)
        .build()
        .await
        .unwrap();
    a.add_auto_sync_peer(Arc::new(b.clone())).unwrap();
    a.put("c", &json!({"id": "from-a"})).await.unwrap();
    b.put("c", &json!({"id": "from-b"})).await.unwrap();

    let mut rx = a.subscribe();
    tokio::time::sleep(INTERVAL).await;
    // Let the window run to its end (its pulled page emits sync:success).
    timeout(INTERVAL / 2, async {
        loop {
            if let SyncEvent::SyncSuccess(_) = rx.recv().await.unwrap() {
                return;
            }
        }
    })
    .await
    .unwrap();
    timeout(INTERVAL / 2, async {
        while b.get_all("c").await.unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(snapshot(&a, "c").await, snapshot(&b, "c").await);

    // A later edit on b arrives with the next window.
    b.put("c", &json!({"id": "from-b", "v": 2})).await.unwrap();
    tokio::time::sleep(INTERVAL + Duration::from_millis(100)).await;
    assert_eq!(
        a.get("c", "from-b").await.unwrap().unwrap().get("v"),
        Some(json!(2))
    );

    assert!(a.remove_auto_sync_peer("b"));
    assert!(!a.remove_auto_sync_peer("b"));
    b.put("c", &json!({"id": "late"})).await.unwrap();
    tokio::time::sleep(2 * INTERVAL).await;
    assert!(a.get("c", "late").await.unwrap().is_none());
    a.close().await.unwrap();
}

/// A peer broken in one of two ways.
enum BrokenPeer {
    /// Its pull panics: a bug somewhere below a sync.
    Panicking,
    /// It never answers.
    Silent,
    /// It never answers, and has the given id (which may be one no sync
    /// accepts).
    Misnamed(&'static str),
    /// Its pull is refused for good (out of protocol), and its push never
    /// answers.
    RefusingThenSilent,
}

#[syncforge::core::async_trait]
impl syncforge::SyncPeer for BrokenPeer {
    fn peer_id(&self) -> &str {
        match self {
            BrokenPeer::Panicking => "panicking",
            BrokenPeer::Silent => "silent",
            BrokenPeer::Misnamed(id) => id,
            BrokenPeer::RefusingThenSilent => "refusing",
        }
    }

    async fn pull(
        &self,
        _collection: &syncforge::CollectionName,
        _cursor: syncforge::Cursor,
        _limit: std::num::NonZeroUsize,
    ) -> syncforge::Result<syncforge::ChangePage> {
        match self {
            BrokenPeer::Panicking => panic!("a bug in a peer (expected by this test)"),
            BrokenPeer::Silent | BrokenPeer::Misnamed(_) => std::future::pending().await,
            BrokenPeer::RefusingThenSilent => Err(Error::PeerProtocol {
                peer: "refusing".to_owned(),
                reason: "a page out of order".to_owned(),
            }),
        }
    }

    async fn push(
        &self,
        _collection: &syncforge::CollectionName,
        _records: Vec<syncforge::Record>,
    ) -> syncforge::Result<syncforge::PushOutcome> {
        match self {
            BrokenPeer::Panicking => Ok(syncforge::PushOutcome::all_stored()),
            BrokenPeer::Silent | BrokenPeer::Misnamed(_) | BrokenPeer::RefusingThenSilent => {
                std::future::pending().await
            }
        }
    }
}

/// A sync that panicked ended the timer's task with it: auto-sync stopped
/// for good, with no `sync:error`. It is reported, and the window goes on to
/// the next peer, and the timer to the next window.
#[tokio::test(start_paused = true)]
async fn a_peer_sync_that_panics_is_reported_and_the_windows_go_on() {
    let a = auto_syncing_c().build().await.unwrap();
    windows_go_on_past(
        &a,
        Arc::new(BrokenPeer::Panicking),
        "the panic",
        |reported| matches!(reported, Error::PeerProtocol { peer, .. } if peer == "panicking"),
    )
    .await;
}

/// Engine "a", auto-syncing collection "c" every [`INTERVAL`].
fn auto_syncing_c() -> syncforge::EngineBuilder {
    SyncEngine::builder()
        .client_id("a")
        .auto_sync(true)
        .auto_sync_interval(INTERVAL)
        .auto_sync_collections(["c"])
}

/// Adds `failing` and then a healthy peer to `a`'s auto-sync, and checks,
/// over two windows, that `failing`'s sync is reported as `sync:error`
/// (what `reported` accepts; `what` names it) and that each window goes on
/// to sync the next peer, with the timer still running. Closes `a`.
async fn windows_go_on_past(
    a: &SyncEngine,
    failing: Arc<dyn syncforge::SyncPeer>,
    what: &str,
    reported: impl Fn(&Error) -> bool,
) {
    let b = SyncEngine::builder().client_id("b").build().await.unwrap();
    a.add_auto_sync_peer(failing).unwrap();
    a.add_auto_sync_peer(Arc::new(b.clone())).unwrap();
    let mut rx = a.subscribe();
    for window in 0..2 {
        b.put("c", &json!({"id": format!("from-b-{window}")}))
            .await
            .unwrap();
        tokio::time::sleep(INTERVAL + SLACK).await;
        let error = timeout(INTERVAL / 2, async {
            loop {
                if let SyncEvent::SyncError { error, .. } = rx.recv().await.unwrap() {
                    return error;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no sync:error for {what}"));
        assert!(reported(&error), "{error}");
        timeout(INTERVAL / 2, async {
            while a
                .get("c", &format!("from-b-{window}"))
                .await
                .unwrap()
                .is_none()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the next peer was not synced");
        assert!(a.is_auto_syncing());
    }
    a.close().await.unwrap();
}

/// A peer that never answered held up every later peer and window, with
/// nothing reported. Past the peer timeout its sync stops, `sync:error`
/// says so, and the window goes on to the next peer.
#[tokio::test(start_paused = true)]
async fn a_peer_that_never_answers_is_given_up_on_and_the_windows_go_on() {
    let bound = Duration::from_secs(2);
    let a = auto_syncing_c()
        .auto_sync_peer_timeout(bound)
        .build()
        .await
        .unwrap();
    assert_eq!(a.config().auto_sync_peer_timeout(), bound);
    windows_go_on_past(
        &a,
        Arc::new(BrokenPeer::Silent),
        "the silent peer",
        |reported| {
            matches!(reported, Error::Unavailable { .. })
                && reported.to_string().contains("\"silent\"")
        },
    )
    .await;
}

/// A pull refused for good is announced at once, and the push still runs;
/// when that push then outlived the peer timeout, the window announced the
/// same sync's failure a second time.
#[tokio::test(start_paused = true)]
async fn a_sync_whose_pull_failed_and_push_hung_is_announced_once() {
    let bound = Duration::from_secs(2);
    let a = auto_syncing_c()
        .auto_sync_peer_timeout(bound)
        .build()
        .await
        .unwrap();
    a.put("c", &json!({"id": "local"})).await.unwrap();
    let mut rx = a.subscribe();
    a.add_auto_sync_peer(Arc::new(BrokenPeer::RefusingThenSilent))
        .unwrap();
    tokio::time::sleep(INTERVAL + bound + Duration::from_secs(1)).await;
    let mut errors = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let SyncEvent::SyncError { error, .. } = event {
            errors.push(error.to_string());
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("out of order"), "{errors:?}");
    a.close().await.unwrap();
}

/// A clock that panics while `broken` is set.
#[derive(Debug, Default)]
struct BreakableClock {
    broken: std::sync::atomic::AtomicBool,
}

impl syncforge::TimeSource for BreakableClock {
    fn now_millis(&self) -> u64 {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("a broken clock (expected by this test)");
        }
        1_700_000_000_000
    }
}

/// A window that panicked outside a peer's sync (here its clock, read for
/// the `sync:start` it announces) ended the timer's task: no window came
/// after it, with nothing reported. The next window runs on time.
#[tokio::test(start_paused = true)]
async fn a_window_that_panics_outside_a_peer_sync_does_not_end_auto_sync() {
    use std::sync::atomic::Ordering;
    let clock = Arc::new(BreakableClock::default());
    let a = auto_syncing_c()
        .time_source(clock.clone())
        .build()
        .await
        .unwrap();
    let mut rx = a.subscribe();
    clock.broken.store(true, Ordering::SeqCst);
    tokio::time::sleep(INTERVAL + SLACK).await;
    clock.broken.store(false, Ordering::SeqCst);
    assert_eq!(
        next_window(&mut rx, INTERVAL + SLACK).await.as_deref(),
        Some("c"),
        "no window after the one that panicked"
    );
    assert!(a.is_auto_syncing());
    a.close().await.unwrap();
}

/// A peer whose pull and push wait, while `held` is set, until `release`
/// is notified; it says when a call started, and counts the pulls.
#[derive(Default)]
struct HeldPeer {
    id: &'static str,
    held: std::sync::atomic::AtomicBool,
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
    pulls: std::sync::atomic::AtomicUsize,
}

impl HeldPeer {
    /// A peer of `engine`'s auto-sync, holding every call until let go.
    fn held_by(engine: &SyncEngine) -> Arc<HeldPeer> {
        HeldPeer::added_to(engine, "held", true)
    }

    /// A peer `id` of `engine`'s auto-sync, holding its calls if `held`.
    fn added_to(engine: &SyncEngine, id: &'static str, held: bool) -> Arc<HeldPeer> {
        let peer = Arc::new(HeldPeer {
            id,
            ..HeldPeer::default()
        });
        peer.held.store(held, std::sync::atomic::Ordering::SeqCst);
        engine.add_auto_sync_peer(peer.clone()).unwrap();
        peer
    }

    async fn wait_while_held(&self) {
        self.entered.notify_one();
        if self.held.load(std::sync::atomic::Ordering::SeqCst) {
            self.release.notified().await;
        }
    }

    fn let_go(&self) {
        self.held.store(false, std::sync::atomic::Ordering::SeqCst);
        self.release.notify_one();
    }
}

#[syncforge::core::async_trait]
impl syncforge::SyncPeer for HeldPeer {
    fn peer_id(&self) -> &str {
        self.id
    }

    async fn pull(
        &self,
        _collection: &syncforge::CollectionName,
        cursor: syncforge::Cursor,
        _limit: std::num::NonZeroUsize,
    ) -> syncforge::Result<syncforge::ChangePage> {
        self.wait_while_held().await;
        self.pulls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(syncforge::ChangePage {
            changes: Vec::new(),
            next: cursor,
            more: false,
        })
    }

    async fn push(
        &self,
        _collection: &syncforge::CollectionName,
        _records: Vec<syncforge::Record>,
    ) -> syncforge::Result<syncforge::PushOutcome> {
        self.wait_while_held().await;
        Ok(syncforge::PushOutcome::all_stored())
    }
}

/// Dropping every handle of an engine during a window ends the window
/// after the sync under way: the timer's task held the engine until the
/// window's end, and synced every remaining collection for no one.
#[tokio::test(start_paused = true)]
async fn a_window_under_way_when_the_engine_is_dropped_syncs_no_further_collection() {
    let a = auto_syncing_c()
        .auto_sync_collections(["c", "d"])
        .build()
        .await
        .unwrap();
    let peer = HeldPeer::held_by(&a);
    // The first window is inside its pull of "c".
    peer.entered.notified().await;
    drop(a);
    peer.let_go();
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(peer.pulls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Nor does it sync the collection under way with the peers after the one
/// it is syncing with: it went on to every remaining peer for no one.
#[tokio::test(start_paused = true)]
async fn a_window_under_way_when_the_engine_is_dropped_syncs_no_further_peer() {
    let a = auto_syncing_c().build().await.unwrap();
    let first = HeldPeer::held_by(&a);
    let second = HeldPeer::added_to(&a, "second", false);
    first.entered.notified().await;
    drop(a);
    first.let_go();
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(first.pulls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(second.pulls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The auto-sync peer timeout of the engines [`inside_a_call_of_the_pair`]
/// makes.
const HELD_PEER_BOUND: Duration = Duration::from_secs(2);

/// Engine "a", auto-syncing "c" every [`INTERVAL`] with a peer timeout of
/// [`HELD_PEER_BOUND`] and a held [`HeldPeer`] as its peer, its events,
/// and `call` (a sync of that pair the application makes) spawned and
/// waiting inside the peer.
async fn inside_a_call_of_the_pair<F>(
    call: impl FnOnce(SyncEngine, Arc<HeldPeer>) -> F,
) -> (
    SyncEngine,
    Arc<HeldPeer>,
    EventReceiver,
    tokio::task::JoinHandle<syncforge::Result<syncforge::PeerSyncReport>>,
)
where
    F: std::future::Future<Output = syncforge::Result<syncforge::PeerSyncReport>> + Send + 'static,
{
    let a = auto_syncing_c()
        .auto_sync_peer_timeout(HELD_PEER_BOUND)
        .build()
        .await
        .unwrap();
    let peer = HeldPeer::held_by(&a);
    let rx = a.subscribe();
    let manual = tokio::spawn(call(a.clone(), peer.clone()));
    peer.entered.notified().await;
    (a, peer, rx, manual)
}

/// A window that came while the application's own `sync_with` of the same
/// pair ran waited for it under the peer timeout, and reported the healthy
/// peer as unavailable, window after window. It waits for its turn apart,
/// and leaves the pair, still busy, to the sync under way, which ends as it
/// would have.
#[tokio::test(start_paused = true)]
async fn a_window_does_not_count_a_long_sync_of_its_pair_against_the_peer() {
    let (a, peer, mut rx, manual) =
        inside_a_call_of_the_pair(|a, peer| async move { a.sync_with(peer.as_ref(), "c").await })
            .await;
    let mut windows = 0;
    let over = tokio::time::Instant::now() + 2 * INTERVAL + HELD_PEER_BOUND + SLACK;
    while let Ok(event) = tokio::time::timeout_at(over, rx.recv()).await {
        match event.unwrap() {
            SyncEvent::SyncStart {
                trigger: SyncTrigger::AutoSyncWindow,
                ..
            } => windows += 1,
            SyncEvent::SyncError { error, .. } => panic!("a window reported {error}"),
            _ => {}
        }
    }
    assert_eq!(windows, 2);
    peer.let_go();
    let report = manual.await.unwrap().unwrap();
    assert_eq!(report.peer_id, "held");
    a.close().await.unwrap();
}

/// A window that comes while the application pushes to the same peer (a
/// `push_to`, which pulls nothing) waits for that push and then syncs: the
/// window's pull is not skipped because another sync of the pair ran.
#[tokio::test(start_paused = true)]
async fn a_window_syncs_its_pair_after_a_short_sync_of_it() {
    use std::sync::atomic::Ordering;
    let (a, peer, mut rx, manual) = inside_a_call_of_the_pair(|a, peer| async move {
        a.put("c", &json!({"id": "to-push"})).await?;
        a.push_to(peer.as_ref(), "c").await
    })
    .await;
    assert_eq!(
        next_window(&mut rx, INTERVAL + SLACK).await.as_deref(),
        Some("c")
    );
    // The window waits for the push; the push ends within the bound.
    tokio::time::sleep(HELD_PEER_BOUND / 2).await;
    peer.let_go();
    let pushed = manual.await.unwrap().unwrap();
    assert_eq!(pushed.pushed, 1);
    timeout(HELD_PEER_BOUND, async {
        while peer.pulls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the window left its pair unsynced");
    a.close().await.unwrap();
}

/// A peer whose pull says it started, works for `works_for` without
/// awaiting anything (a blocking sleep stands for a long stretch of work
/// between two awaits), closes `closes` when set, and says it returned.
struct WindowPeer {
    entered: tokio::sync::Notify,
    works_for: Duration,
    closes: std::sync::OnceLock<SyncEngine>,
    returned: std::sync::atomic::AtomicBool,
    done: tokio::sync::Notify,
}

impl WindowPeer {
    fn new(works_for: Duration) -> WindowPeer {
        WindowPeer {
            entered: tokio::sync::Notify::new(),
            works_for,
            closes: std::sync::OnceLock::new(),
            returned: std::sync::atomic::AtomicBool::new(false),
            done: tokio::sync::Notify::new(),
        }
    }
}

#[syncforge::core::async_trait]
impl syncforge::SyncPeer for WindowPeer {
    fn peer_id(&self) -> &str {
        "window"
    }

    async fn pull(
        &self,
        _collection: &syncforge::core::CollectionName,
        cursor: syncforge::core::Cursor,
        _limit: std::num::NonZeroUsize,
    ) -> syncforge::core::Result<syncforge::core::ChangePage> {
        // Told without a timer: with this worker asleep, the runtime's
        // timers may wait until it wakes.
        self.entered.notify_one();
        std::thread::sleep(self.works_for);
        if let Some(engine) = self.closes.get() {
            engine.close().await?;
        }
        self.returned
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.done.notify_one();
        Ok(syncforge::core::ChangePage {
            changes: Vec::new(),
            next: cursor,
            more: false,
        })
    }

    async fn push(
        &self,
        _collection: &syncforge::core::CollectionName,
        _records: Vec<syncforge::core::Record>,
    ) -> syncforge::core::Result<syncforge::core::PushOutcome> {
        Ok(syncforge::core::PushOutcome::all_stored())
    }
}

/// An engine whose auto-sync window is inside a slow [`WindowPeer`]'s
/// pull, and that peer.
async fn inside_a_slow_pull() -> (SyncEngine, Arc<WindowPeer>) {
    let e = SyncEngine::builder()
        .client_id("a")
        .backend(MemoryBackend::new())
        .auto_sync(true)
        .auto_sync_interval(Duration::from_secs(1))
        .auto_sync_collections(["c"])
        .build()
        .await
        .unwrap();
    let peer = Arc::new(WindowPeer::new(Duration::from_millis(300)));
    e.add_auto_sync_peer(peer.clone()).unwrap();
    timeout(Duration::from_secs(10), peer.entered.notified())
        .await
        .expect("no window started");
    (e, peer)
}

/// `close` during a window that is inside a peer call returns only once
/// the window stopped: nothing of it runs after `close` returned. (An abort
/// alone takes effect at the window's next await, after `close` had
/// returned.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_a_window_in_progress() {
    use std::sync::atomic::Ordering;
    let (e, peer) = inside_a_slow_pull().await;
    e.close().await.unwrap();
    assert!(
        peer.returned.load(Ordering::SeqCst),
        "close returned while the window was still in the peer's pull"
    );
}

/// A second `close` while the first waits for a window returns only once
/// the window stopped too: it closed the store under the running window
/// and returned at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_close_waits_for_the_first() {
    use std::sync::atomic::Ordering;
    let (e, peer) = inside_a_slow_pull().await;
    let first = tokio::spawn({
        let e = e.clone();
        async move { e.close().await }
    });
    timeout(Duration::from_secs(10), async {
        while !e.is_closed() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first close did not begin");
    e.close().await.unwrap();
    assert!(
        peer.returned.load(Ordering::SeqCst),
        "the second close returned while the window was still in the peer's pull"
    );
    first.await.unwrap().unwrap();
}

/// A `close` cancelled while it waited for a window (a timeout around it)
/// let go of the window: the next `close` found none to wait for, and
/// returned while the window was still inside the peer's pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_after_a_cancelled_one_waits_for_the_window() {
    use std::sync::atomic::Ordering;
    let (e, peer) = inside_a_slow_pull().await;
    // Polled once, to its wait, and dropped there; without a timer, which
    // may not fire while the peer holds a worker.
    let first = e.close();
    tokio::select! {
        biased;
        _ = first => panic!("the first close did not wait for the window"),
        () = std::future::ready(()) => {}
    }
    e.close().await.unwrap();
    assert!(
        peer.returned.load(Ordering::SeqCst),
        "the second close returned while the window was still in the peer's pull"
    );
}

/// A window that `stop_auto_sync` cancelled while it was inside a peer call
/// is waited for by a `close` after it, as one still running is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_a_window_stopped_before_it() {
    use std::sync::atomic::Ordering;
    let (e, peer) = inside_a_slow_pull().await;
    e.stop_auto_sync();
    e.close().await.unwrap();
    assert!(
        peer.returned.load(Ordering::SeqCst),
        "close returned while the stopped window was still in the peer's pull"
    );
}

/// A close from inside a window (a peer closing the engine) neither waits
/// for its own window nor cancels itself: it returns, having closed the
/// store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_from_inside_a_window_completes() {
    use syncforge_testkit::faults::{FaultyBackend, Operation};
    let store = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        1,
        0.0,
        Duration::ZERO,
    ));
    let shared: Arc<dyn syncforge::StorageBackend> = store.clone();
    let e = SyncEngine::builder()
        .client_id("a")
        .backend(shared)
        .auto_sync(true)
        .auto_sync_interval(Duration::from_secs(1))
        .auto_sync_collections(["c"])
        .build()
        .await
        .unwrap();
    let peer = Arc::new(WindowPeer::new(Duration::ZERO));
    let _ = peer.closes.set(e.clone());
    e.add_auto_sync_peer(peer.clone()).unwrap();
    timeout(Duration::from_secs(10), peer.done.notified())
        .await
        .expect("the close inside the window did not complete");
    assert!(e.is_closed());
    assert_eq!(store.calls(Operation::Close), 1);
}
