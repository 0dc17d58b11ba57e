//! Replica-to-replica sync with `SyncPeer` / `sync_with`: bidirectional,
//! incremental, relayed, with per-peer cursors that survive a restart.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use std::num::NonZeroUsize;
use syncforge::core::{Change, ChangePage};

use syncforge::{
    CollectionName, ConflictStrategy, Cursor, Error, EventKind, ManualTime, PageOptions,
    PeerCursors, PushOutcome, Record, RecordId, RefusedRecord, Result, StorageBackend, SyncEngine,
    SyncEvent, SyncPeer, SyncTrigger,
};
use syncforge_testkit::faults::{FaultyBackend, Operation};

use crate::support::{
    engine, engine_at, engine_on_a_stalling_feed, on_a_thread_of_its_own, snapshot, T0,
};

async fn put_many(e: &SyncEngine, collection: &str, prefix: &str, n: usize) {
    for i in 0..n {
        e.put(collection, &json!({"id": format!("{prefix}{i}"), "n": i}))
            .await
            .unwrap();
    }
}

/// The end of an engine's feed.
async fn head(e: &SyncEngine, collection: &str) -> Cursor {
    let mut cursor = Cursor::START;
    for pages in 0.. {
        assert!(pages < 100_000, "the feed did not end within 100,000 pages");
        let page = e
            .changes(collection, cursor, PageOptions::default().limit(1000))
            .await
            .unwrap();
        cursor = page.next;
        if !page.more {
            return cursor;
        }
    }
    unreachable!("the loop returns or fails")
}

#[tokio::test]
async fn sync_with_is_bidirectional_and_incremental() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    let b = engine("b", ConflictStrategy::Crdt).await;
    put_many(&a, "c", "a", 3).await;
    put_many(&b, "c", "b", 2).await;

    let first = a.sync_with(&b, "c").await.unwrap();
    assert_eq!(first.peer_id, "b");
    assert_eq!(first.pulled.added, 2);
    assert_eq!(first.pushed, 3);
    // The two records just pulled come back in a's own feed; they are not
    // sent back to b, which holds them.
    assert_eq!(first.echoes_skipped, 2);
    assert_eq!(snapshot(&a, "c").await, snapshot(&b, "c").await);
    assert_eq!(a.get_all("c").await.unwrap().len(), 5);
    assert_eq!(
        a.peer_cursors("b", "c").await.unwrap(),
        PeerCursors {
            pulled: Cursor::new(2),
            pushed: head(&a, "c").await
        }
    );

    // The records a pushed are now in b's feed: they merge as unchanged.
    let second = a.sync_with(&b, "c").await.unwrap();
    assert_eq!(
        (second.pulled.added, second.pulled.unchanged, second.pushed),
        (0, 3, 0)
    );
    let third = a.sync_with(&b, "c").await.unwrap();
    assert_eq!(
        (
            third.pulled.added + third.pulled.updated + third.pulled.unchanged,
            third.pushed
        ),
        (0, 0)
    );

    // Only what changed travels.
    b.put("c", &json!({"id": "b0", "n": 100})).await.unwrap();
    a.put("c", &json!({"id": "a1", "n": 200})).await.unwrap();
    let fourth = a.sync_with(&b, "c").await.unwrap();
    assert_eq!((fourth.pulled.updated, fourth.pushed), (1, 1));
    assert_eq!(snapshot(&a, "c").await, snapshot(&b, "c").await);
}

#[tokio::test]
async fn pull_from_and_push_to_go_one_way_and_share_sync_with_cursors() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    let b = engine("b", ConflictStrategy::Crdt).await;
    put_many(&a, "c", "a", 3).await;
    put_many(&b, "c", "b", 2).await;

    let pulled = a.pull_from(&b, "c").await.unwrap();
    assert_eq!((pulled.pulled.added, pulled.pushed), (2, 0));
    assert_eq!(b.get_all("c").await.unwrap().len(), 2, "nothing went to b");
    assert_eq!(
        a.peer_cursors("b", "c").await.unwrap(),
        PeerCursors {
            pulled: Cursor::new(2),
            pushed: Cursor::START
        }
    );
    let again = a.pull_from(&b, "c").await.unwrap();
    assert_eq!(again.pulled.total(), 0, "a repeat reads nothing");

    let pushed = a.push_to(&b, "c").await.unwrap();
    assert_eq!(pushed.pulled.total(), 0, "nothing taken from b");
    // Every change of a's feed, the two pulled from b included: a one-way
    // push knows no echoes of an earlier pull, and b merges those as unchanged.
    assert_eq!(pushed.pushed, 5);
    assert_eq!(snapshot(&a, "c").await, snapshot(&b, "c").await);
    assert_eq!(
        a.peer_cursors("b", "c").await.unwrap().pushed,
        head(&a, "c").await
    );
    assert_eq!(a.push_to(&b, "c").await.unwrap().pushed, 0);

    // sync_with goes on from the cursors the one-way syncs left.
    b.put("c", &json!({"id": "b0", "n": 100})).await.unwrap();
    let both = a.sync_with(&b, "c").await.unwrap();
    assert_eq!(both.pulled.updated, 1);
    assert_eq!(snapshot(&a, "c").await, snapshot(&b, "c").await);
}

#[tokio::test]
async fn concurrent_edits_converge_through_sync_with() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    let b = engine("b", ConflictStrategy::Crdt).await;
    a.put("notes", &json!({"id": "n", "title": "t", "body": "b"}))
        .await
        .unwrap();
    let _ = a.sync_with(&b, "notes").await.unwrap();
    a.put(
        "notes",
        &json!({"id": "n", "title": "new title", "body": "b"}),
    )
    .await
    .unwrap();
    b.put(
        "notes",
        &json!({"id": "n", "title": "t", "body": "new body"}),
    )
    .await
    .unwrap();
    let report = a.sync_with(&b, "notes").await.unwrap();
    assert_eq!(report.pulled.conflicts.len(), 1);
    let n = b.get("notes", "n").await.unwrap().unwrap();
    assert_eq!(n.get("title"), Some(json!("new title")));
    assert_eq!(n.get("body"), Some(json!("new body")));
    assert_eq!(snapshot(&a, "notes").await, snapshot(&b, "notes").await);
}

#[tokio::test]
async fn changes_relay_through_a_middle_replica_over_many_pages() {
    let a = SyncEngine::builder()
        .client_id("a")
        .batch_size(7)
        .build()
        .await
        .unwrap();
    let hub = engine("hub", ConflictStrategy::Timestamp).await;
    let c = SyncEngine::builder()
        .client_id("c")
        .batch_size(5)
        .build()
        .await
        .unwrap();
    put_many(&a, "c", "a", 40).await;
    put_many(&c, "c", "c", 23).await;
    let _ = a.sync_with(&hub, "c").await.unwrap();
    let _ = c.sync_with(&hub, "c").await.unwrap();
    let _ = a.sync_with(&hub, "c").await.unwrap();
    assert_eq!(a.get_all("c").await.unwrap().len(), 63);
    assert_eq!(snapshot(&a, "c").await, snapshot(&c, "c").await);
    assert_eq!(snapshot(&a, "c").await, snapshot(&hub, "c").await);
}

#[tokio::test]
async fn pulled_pages_are_syncs_with_a_pull_trigger() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    let b = engine("b", ConflictStrategy::Crdt).await;
    put_many(&b, "c", "b", 2).await;
    let mut rx = a.subscribe();
    let _ = a.sync_with(&b, "c").await.unwrap();
    let mut starts = Vec::new();
    let mut successes = 0;
    while let Ok(event) = rx.try_recv() {
        match event {
            SyncEvent::SyncStart { trigger, .. } => starts.push(trigger),
            SyncEvent::SyncSuccess(_) => successes += 1,
            _ => {}
        }
    }
    assert_eq!(
        starts,
        [SyncTrigger::Pull {
            peer: "b".to_owned()
        }]
    );
    assert_eq!(successes, 1);
}

#[tokio::test]
async fn a_trait_object_peer_works_and_bad_peer_ids_are_refused() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    let b: Arc<dyn SyncPeer> = Arc::new(engine("b", ConflictStrategy::Crdt).await);
    a.put("c", &json!({"id": "x"})).await.unwrap();
    let report = a.sync_with(b.as_ref(), "c").await.unwrap();
    assert_eq!(report.pushed, 1);

    let err = a.peer_cursors("", "c").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                option: "peer_id",
                ..
            }
        ),
        "{err}"
    );
    // A sync with a peer whose id no sync takes is refused before it
    // starts: no page asked for, no cursor kept under that id, no event.
    let mut rx = a.subscribe();
    for id in ["", "line\nbreak"] {
        let misnamed = BadPagePeer {
            id,
            answer: |cursor| ChangePage {
                changes: Vec::new(),
                next: cursor,
                more: false,
            },
        };
        for refused in [
            a.sync_with(&misnamed, "c").await,
            a.pull_from(&misnamed, "c").await,
            a.push_to(&misnamed, "c").await,
        ] {
            assert!(
                matches!(
                    refused,
                    Err(Error::InvalidConfig {
                        option: "peer_id",
                        ..
                    })
                ),
                "{id:?}: {refused:?}"
            );
        }
    }
    assert!(rx.try_recv().is_err(), "a refused sync announced an event");
}

/// A peer answering every pull with the page `answer` makes of the cursor
/// asked for.
struct BadPagePeer {
    id: &'static str,
    answer: fn(Cursor) -> ChangePage,
}

#[syncforge::core::async_trait]
impl SyncPeer for BadPagePeer {
    fn peer_id(&self) -> &str {
        self.id
    }

    async fn pull(
        &self,
        _collection: &CollectionName,
        cursor: Cursor,
        _limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        Ok((self.answer)(cursor))
    }

    async fn push(
        &self,
        _collection: &CollectionName,
        _records: Vec<Record>,
    ) -> Result<PushOutcome> {
        Ok(PushOutcome::all_stored())
    }
}

/// A page of the record `r` at `cursor`, going on to `next`.
fn page_of_r(cursor: Cursor, next: Cursor, more: bool) -> ChangePage {
    let record = Record::from_json(json!({
        "id": "r", "_version": 1, "_timestamp": 1, "_deleted": false, "_clientId": "stuck"
    }))
    .unwrap();
    ChangePage {
        changes: vec![Change { cursor, record }],
        next,
        more,
    }
}

/// Syncs `a` with `peer`, which must refuse its answer as breaking the
/// protocol without applying it or moving the pull cursor; returns the error.
async fn refused_page(a: &SyncEngine, peer: &BadPagePeer) -> Error {
    let err = tokio::time::timeout(Duration::from_secs(10), a.sync_with(peer, "c"))
        .await
        .expect("no endless loop")
        .unwrap_err();
    assert!(err.to_string().contains(peer.id), "{err}");
    assert!(
        matches!(err, syncforge::Error::PeerProtocol { .. }),
        "{err:?}"
    );
    assert!(a.get("c", "r").await.unwrap().is_none());
    assert_eq!(
        a.peer_cursors(peer.id, "c").await.unwrap().pulled,
        Cursor::START
    );
    err
}

/// A peer answering pages that do not advance would loop forever; it is
/// refused with an error instead, and its records are not applied.
#[tokio::test]
async fn a_misbehaving_peer_is_refused_with_an_error_event() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    let mut rx = a.subscribe();
    let stuck = BadPagePeer {
        id: "stuck",
        answer: |cursor| page_of_r(cursor, cursor, true),
    };
    refused_page(&a, &stuck).await;
    let mut errors = 0;
    while let Ok(event) = rx.try_recv() {
        if event.kind() == EventKind::SyncError {
            errors += 1;
        }
    }
    assert_eq!(errors, 1);
}

/// A peer that closes the engine syncing with it, in its pull or its push.
struct ClosingPeer {
    engine: SyncEngine,
    in_push: bool,
}

#[syncforge::core::async_trait]
impl SyncPeer for ClosingPeer {
    fn peer_id(&self) -> &str {
        "closing"
    }

    async fn pull(
        &self,
        _collection: &CollectionName,
        cursor: Cursor,
        _limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        if self.in_push {
            return Ok(ChangePage {
                changes: Vec::new(),
                next: cursor,
                more: false,
            });
        }
        self.engine.close().await?;
        let next = Cursor::new(cursor.get() + 1);
        Ok(page_of_r(next, next, false))
    }

    async fn push(
        &self,
        _collection: &CollectionName,
        _records: Vec<Record>,
    ) -> Result<PushOutcome> {
        self.engine.close().await?;
        Ok(PushOutcome::all_stored())
    }
}

/// A sync with a peer cut short by closing the engine fails as closed and
/// announces nothing, in either half, as a sync of a closed engine does.
#[tokio::test]
async fn a_sync_with_a_peer_cut_short_by_close_announces_no_error() {
    for in_push in [false, true] {
        let a = engine("a", ConflictStrategy::Crdt).await;
        a.put("c", &json!({"id": "mine"})).await.unwrap();
        let mut rx = a.subscribe();
        let peer = ClosingPeer {
            engine: a.clone(),
            in_push,
        };
        let err = a.sync_with(&peer, "c").await.unwrap_err();
        assert!(
            matches!(err, Error::Closed { .. }),
            "in push {in_push}: {err:?}"
        );
        while let Ok(event) = rx.try_recv() {
            assert_ne!(event.kind(), EventKind::SyncError, "in push {in_push}");
        }
    }
}

/// A page going on past 2^53, where no feed reaches, was stored as the pull
/// cursor, and every later pull from there was refused by the peer for good.
#[tokio::test]
async fn a_page_going_past_every_feed_position_is_refused() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    let far = BadPagePeer {
        id: "far",
        answer: |_| {
            page_of_r(
                Cursor::new(1),
                Cursor::new(Cursor::LARGEST.get() + 1),
                false,
            )
        },
    };
    let err = refused_page(&a, &far).await;
    assert!(err.to_string().contains("largest"), "{err}");
}

/// A peer with nothing to pull whose push answer is what `answer` makes of
/// the ids pushed.
struct RefusingPeer {
    answer: fn(Vec<RecordId>) -> Vec<RecordId>,
}

#[syncforge::core::async_trait]
impl SyncPeer for RefusingPeer {
    fn peer_id(&self) -> &str {
        "refusing"
    }

    async fn pull(
        &self,
        _collection: &CollectionName,
        after: Cursor,
        _limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        Ok(ChangePage {
            changes: Vec::new(),
            next: after,
            more: false,
        })
    }

    async fn push(
        &self,
        _collection: &CollectionName,
        records: Vec<Record>,
    ) -> Result<PushOutcome> {
        let sent = records.iter().map(|record| record.id().clone()).collect();
        let refused = (self.answer)(sent)
            .into_iter()
            .map(|id| RefusedRecord::new(id, "too large"))
            .collect();
        Ok(PushOutcome::refusing(refused))
    }
}

/// A refusal of a record the push did not send was counted against the
/// records pushed, and its id kept as refused, to be offered again to the
/// peer by every engine opened on the store; one refusal named twice was
/// counted twice.
#[tokio::test]
async fn a_push_answer_is_checked_against_the_records_sent() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    put_many(&a, "c", "r", 2).await;
    let stranger = RefusingPeer {
        answer: |_| vec![RecordId::new("x").unwrap()],
    };
    let err = a.sync_with(&stranger, "c").await.unwrap_err();
    assert!(matches!(err, Error::PeerProtocol { .. }), "{err:?}");
    assert!(err.to_string().contains("\"x\""), "{err}");
    assert_eq!(
        a.peer_cursors("refusing", "c").await.unwrap().pushed,
        Cursor::START,
        "the records are pushed again"
    );

    let twice = RefusingPeer {
        answer: |sent| vec![sent[0].clone(), sent[0].clone()],
    };
    let report = a.sync_with(&twice, "c").await.unwrap();
    assert_eq!(report.pushed, 1, "{report:?}");
    assert_eq!(report.refused.len(), 1, "{report:?}");
}

/// A peer whose pages are always empty and always announce more: each one
/// advances, so no single page is refused.
struct EndlessPeer;

#[syncforge::core::async_trait]
impl SyncPeer for EndlessPeer {
    fn peer_id(&self) -> &str {
        "endless"
    }

    async fn pull(
        &self,
        _collection: &CollectionName,
        cursor: Cursor,
        _limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        Ok(ChangePage {
            changes: Vec::new(),
            next: Cursor::new(cursor.get() + 1),
            more: true,
        })
    }

    async fn push(
        &self,
        _collection: &CollectionName,
        _records: Vec<Record>,
    ) -> Result<PushOutcome> {
        Ok(PushOutcome::all_stored())
    }
}

/// Such a peer kept `sync_with` (and an auto-sync window) going for ever. A
/// sync stops after a bound of empty pages in a row with an error, keeping
/// its progress: the next one resumes past them.
#[tokio::test]
async fn a_peer_answering_empty_pages_for_ever_is_stopped_with_an_error() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    let err = tokio::time::timeout(Duration::from_secs(60), a.sync_with(&EndlessPeer, "c"))
        .await
        .expect("no endless loop")
        .unwrap_err();
    assert!(
        matches!(&err, syncforge::Error::PeerProtocol { peer, .. } if peer == "endless"),
        "{err:?}"
    );
    let reached = a.peer_cursors("endless", "c").await.unwrap().pulled;
    assert_eq!(reached, Cursor::new(1_000));
    let _ = a.sync_with(&EndlessPeer, "c").await.unwrap_err();
    assert_eq!(
        a.peer_cursors("endless", "c").await.unwrap().pulled,
        Cursor::new(2_000)
    );
}

/// DESIGN flaw 11: cost grows with the change, not the collection. The
/// engine never loads a whole collection to sync, neither in `sync` nor in
/// `sync_with`.
#[tokio::test]
async fn sync_and_sync_with_never_read_the_whole_collection() {
    let counting = Arc::new(FaultyBackend::new(
        Arc::new(syncforge::MemoryBackend::new()),
        1,
        0.0,
        Duration::ZERO,
    ));
    let store: Arc<dyn StorageBackend> = counting.clone();
    let local = SyncEngine::builder()
        .client_id("local")
        .batch_size(50)
        .backend(store)
        .build()
        .await
        .unwrap();
    put_many(&local, "c", "l", 500).await;
    let remote = engine("remote", ConflictStrategy::Timestamp).await;
    put_many(&remote, "c", "r", 120).await;

    let before_get_many = counting.calls(Operation::GetMany);
    let _ = local
        .sync("c", remote.get_all("c").await.unwrap())
        .await
        .unwrap();
    let _ = local.sync_with(&remote, "c").await.unwrap();
    remote
        .put("c", &json!({"id": "r0", "n": -1}))
        .await
        .unwrap();
    let _ = local.sync_with(&remote, "c").await.unwrap();

    assert_eq!(counting.calls(Operation::GetAll), 0);
    // Reads grow with what travels, in batches of 50: 3 for the sync of 120
    // records, 3 for the first pull of the same 120, and 11 for the second
    // pull: the changed record plus the 500 records pushed the first time,
    // which come back once from the peer's feed and merge as unchanged.
    assert_eq!(
        counting.calls(Operation::GetMany) - before_get_many,
        3 + 3 + 11
    );
    assert_eq!(local.get_all("c").await.unwrap().len(), 620);
}

#[cfg(feature = "fs")]
mod persistent {
    use super::*;
    use syncforge::FsBackend;

    async fn fs_engine(client: &str, dir: &std::path::Path) -> SyncEngine {
        SyncEngine::builder()
            .client_id(client)
            .conflict_strategy(ConflictStrategy::Crdt)
            .backend(FsBackend::open(dir).await.unwrap())
            .build()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn cursors_survive_a_restart_on_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let server = engine("server", ConflictStrategy::Crdt).await;
        put_many(&server, "c", "s", 5).await;

        let device = fs_engine("device", dir.path()).await;
        put_many(&device, "c", "d", 3).await;
        let first = device.sync_with(&server, "c").await.unwrap();
        assert_eq!((first.pulled.added, first.pushed), (5, 3));
        let cursors = device.peer_cursors("server", "c").await.unwrap();
        device.close().await.unwrap();
        drop(device);

        let device = fs_engine("device", dir.path()).await;
        assert_eq!(device.peer_cursors("server", "c").await.unwrap(), cursors);
        server.put("c", &json!({"id": "s-new"})).await.unwrap();
        device.put("c", &json!({"id": "d-new"})).await.unwrap();
        let second = device.sync_with(&server, "c").await.unwrap();
        // Only the new record is merged as new; the three device records the
        // server stored last time come back once and change nothing.
        assert_eq!(
            (second.pulled.added, second.pulled.unchanged, second.pushed),
            (1, 3, 1)
        );
        assert_eq!(snapshot(&device, "c").await, snapshot(&server, "c").await);
    }

    #[tokio::test]
    async fn two_filesystem_engines_sync_with_each_other() {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let a = fs_engine("a", dir_a.path()).await;
        let b = fs_engine("b", dir_b.path()).await;
        put_many(&a, "c", "a", 12).await;
        put_many(&b, "c", "b", 9).await;
        let _ = a.sync_with(&b, "c").await.unwrap();
        b.delete("c", "a3").await.unwrap();
        let _ = b.sync_with(&a, "c").await.unwrap();
        assert!(a.get("c", "a3").await.unwrap().unwrap().is_deleted());
        assert_eq!(a.get_all("c").await.unwrap().len(), 21);
        assert_eq!(snapshot(&a, "c").await, snapshot(&b, "c").await);
    }
}

/// A peer that restarts on a fresh store under the same id starts its feed
/// again at 1. Cursors kept for its old feed would point past everything:
/// its new writes would never be pulled and nothing would be pushed back.
#[tokio::test]
async fn a_peer_restarted_on_a_fresh_store_is_synced_from_the_beginning() {
    let hub = engine("hub", ConflictStrategy::Crdt).await;
    let device = engine("device", ConflictStrategy::Crdt).await;
    put_many(&hub, "c", "h", 5).await;
    put_many(&device, "c", "d", 20).await;
    let _ = hub.sync_with(&device, "c").await.unwrap();
    assert_eq!(hub.get_all("c").await.unwrap().len(), 25);

    // Same client id, new in-memory store: its feed numbering restarts.
    let restarted = engine("device", ConflictStrategy::Crdt).await;
    assert_ne!(restarted.store_id(), device.store_id());
    restarted
        .put("c", &json!({"id": "after-restart"}))
        .await
        .unwrap();

    let report = hub.sync_with(&restarted, "c").await.unwrap();
    assert_eq!(report.pulled.added, 1, "the new write is pulled");
    assert_eq!(snapshot(&hub, "c").await, snapshot(&restarted, "c").await);
    assert_eq!(restarted.get_all("c").await.unwrap().len(), 26);

    // Once followed, the cursors work incrementally again.
    let again = hub.sync_with(&restarted, "c").await.unwrap();
    assert_eq!((again.pulled.added, again.pushed), (0, 0));
}

/// A peer whose store was replaced under its running engine (a Redis
/// restarted without persistence) numbers its feed afresh, under the id the
/// engine opened: a sync trusted that id and skipped every change up to its
/// cursor, for good. The peer refuses to be followed until it is reopened.
#[tokio::test]
async fn a_peer_whose_store_was_replaced_under_it_refuses_to_be_followed() {
    let hub = engine("hub", ConflictStrategy::Crdt).await;
    let store = syncforge::MemoryBackend::new();
    let open = |store: syncforge::MemoryBackend| {
        SyncEngine::builder()
            .client_id("device")
            .conflict_strategy(ConflictStrategy::Crdt)
            .backend(store)
            .build()
    };
    let device = open(store.clone()).await.unwrap();
    put_many(&device, "c", "d", 5).await;
    let _ = hub.sync_with(&device, "c").await.unwrap();

    // What a store replaced under the engine holds: another id.
    store
        .set_meta("syncforge/store-id/v1", "another-store")
        .await
        .unwrap();
    let refused = hub.sync_with(&device, "c").await.unwrap_err();
    assert!(matches!(refused, Error::Storage { .. }), "{refused:?}");
    assert!(refused.to_string().contains("replaced"), "{refused}");

    // Reopened, it serves under the store's id, and the hub follows it.
    let reopened = open(store).await.unwrap();
    assert_eq!(reopened.store_id(), "another-store");
    reopened.put("c", &json!({"id": "later"})).await.unwrap();
    let _ = hub.sync_with(&reopened, "c").await.unwrap();
    assert!(hub.get("c", "later").await.unwrap().is_some());
}

#[tokio::test]
async fn a_store_keeps_its_id_across_engines() {
    let store = syncforge::MemoryBackend::new();
    let first = SyncEngine::builder()
        .backend(store.clone())
        .build()
        .await
        .unwrap();
    let second = SyncEngine::builder().backend(store).build().await.unwrap();
    assert_eq!(first.store_id(), second.store_id());
}

/// A peer that counts its pulls (and those under way at once, each taking
/// a while), and records what the engine tells it as each sync begins: the
/// collection, the feed, and the pulls made before.
struct CountingPeer {
    inner: SyncEngine,
    in_flight: std::sync::atomic::AtomicUsize,
    most_in_flight: std::sync::atomic::AtomicUsize,
    pulls: std::sync::atomic::AtomicUsize,
    begun: std::sync::Mutex<Vec<(String, String, usize)>>,
}

impl CountingPeer {
    fn new(inner: SyncEngine) -> CountingPeer {
        CountingPeer {
            inner,
            in_flight: Default::default(),
            most_in_flight: Default::default(),
            pulls: Default::default(),
            begun: Default::default(),
        }
    }
}

#[syncforge::core::async_trait]
impl SyncPeer for CountingPeer {
    fn peer_id(&self) -> &str {
        "counting"
    }

    async fn feed_id(&self) -> Result<Option<String>> {
        SyncPeer::feed_id(&self.inner).await
    }

    async fn exchanges_begin(&self, collection: &CollectionName, feed_id: &str) {
        let pulls = self.pulls.load(std::sync::atomic::Ordering::SeqCst);
        self.begun.lock().unwrap().push((
            collection.as_str().to_owned(),
            feed_id.to_owned(),
            pulls,
        ));
    }

    async fn pull(
        &self,
        collection: &CollectionName,
        cursor: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        use std::sync::atomic::Ordering::SeqCst;
        self.pulls.fetch_add(1, SeqCst);
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.most_in_flight.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let page = SyncPeer::pull(&self.inner, collection, cursor, limit).await;
        self.in_flight.fetch_sub(1, SeqCst);
        page
    }

    async fn push(&self, collection: &CollectionName, records: Vec<Record>) -> Result<PushOutcome> {
        SyncPeer::push(&self.inner, collection, records).await
    }
}

/// Two syncs of one peer and collection (an auto-sync window and a call,
/// say) run one after the other: they share the cursors, and one that
/// restarts them for the peer's new feed could otherwise see the other
/// save its old position after it. Syncs of other collections still run
/// side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_of_one_peer_and_collection_run_one_at_a_time() {
    use std::sync::atomic::Ordering::SeqCst;
    let a = engine("a", ConflictStrategy::Crdt).await;
    let b = engine("b", ConflictStrategy::Crdt).await;
    put_many(&b, "c", "r", 3).await;
    put_many(&b, "d", "r", 3).await;
    let peer = CountingPeer::new(b.clone());
    let (first, second) = tokio::join!(a.sync_with(&peer, "c"), a.sync_with(&peer, "c"));
    assert_eq!(
        first.unwrap().pulled.added + second.unwrap().pulled.added,
        3
    );
    assert_eq!(peer.most_in_flight.load(SeqCst), 1);
    let (c, d) = tokio::join!(a.sync_with(&peer, "c"), a.sync_with(&peer, "d"));
    assert_eq!(c.unwrap().pulled.total(), 0);
    assert_eq!(d.unwrap().pulled.added, 3);
    assert_eq!(peer.most_in_flight.load(SeqCst), 2);
    assert_eq!(snapshot(&a, "c").await, snapshot(&b, "c").await);
}

/// A local store whose feed answers "more" without advancing would keep the
/// push of a peer sync asking for ever; the sync fails with a storage error
/// instead.
#[test]
fn a_local_feed_that_does_not_advance_fails_the_push() {
    let result = on_a_thread_of_its_own(Duration::from_secs(10), || async {
        let a = engine_on_a_stalling_feed().await;
        let b = engine("b", ConflictStrategy::Crdt).await;
        a.put("c", &json!({"id": "r"})).await.unwrap();
        a.sync_with(&b, "c").await
    });
    let error = result.unwrap_err();
    assert!(matches!(error, Error::Storage { .. }), "{error:?}");
    assert!(error.to_string().contains("does not advance"), "{error}");
}

/// A peer whose first pull waits at a gate: it says when it got there, and
/// goes on once let through.
struct GatedPeer {
    inner: SyncEngine,
    arrived: tokio::sync::Notify,
    open: tokio::sync::Semaphore,
}

#[syncforge::core::async_trait]
impl SyncPeer for GatedPeer {
    fn peer_id(&self) -> &str {
        SyncPeer::peer_id(&self.inner)
    }

    async fn feed_id(&self) -> Result<Option<String>> {
        SyncPeer::feed_id(&self.inner).await
    }

    async fn pull(
        &self,
        collection: &CollectionName,
        cursor: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        self.arrived.notify_one();
        let _passed = self.open.acquire().await;
        SyncPeer::pull(&self.inner, collection, cursor, limit).await
    }

    async fn push(&self, collection: &CollectionName, records: Vec<Record>) -> Result<PushOutcome> {
        SyncPeer::push(&self.inner, collection, records).await
    }
}

/// Two engines on one store share their peer cursors. One still reading a
/// peer's old feed stores its position there after the other restarted
/// the cursors for the peer's new feed (its store was replaced): that
/// position, taken for one in the new feed, made the next sync skip that
/// much of the new feed for good. A cursor is kept with the feed it is a
/// position in, and one of another feed counts as the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_stored_for_a_peers_old_feed_skips_nothing_of_its_new_one() {
    let store: Arc<dyn StorageBackend> = Arc::new(syncforge::MemoryBackend::new());
    let on_store = |client: &'static str| {
        SyncEngine::builder()
            .client_id(client)
            .conflict_strategy(ConflictStrategy::Crdt)
            .backend(Arc::clone(&store))
            .build()
    };
    let a = on_store("a").await.unwrap();
    let b = on_store("b").await.unwrap();
    let old = engine("p", ConflictStrategy::Crdt).await;
    put_many(&old, "c", "old", 10).await;
    let _ = a.pull_from(&old, "c").await.unwrap();
    put_many(&old, "c", "later", 5).await;

    // B follows the old feed and waits in its pull.
    let gated = Arc::new(GatedPeer {
        inner: old.clone(),
        arrived: tokio::sync::Notify::new(),
        open: tokio::sync::Semaphore::new(0),
    });
    let b_sync = tokio::spawn({
        let (b, gated) = (b.clone(), Arc::clone(&gated));
        async move { b.pull_from(gated.as_ref(), "c").await }
    });
    gated.arrived.notified().await;

    // Meanwhile the peer comes back on a fresh store, and A follows it.
    let new = engine("p", ConflictStrategy::Crdt).await;
    put_many(&new, "c", "new", 3).await;
    let _ = a.pull_from(&new, "c").await.unwrap();

    // B's pull of the old feed ends, and stores its position.
    gated.open.add_permits(1);
    let _ = b_sync.await.unwrap().unwrap();

    put_many(&new, "c", "more", 20).await;
    let _ = a.pull_from(&new, "c").await.unwrap();
    for i in 0..20 {
        assert!(
            a.get("c", &format!("more{i}")).await.unwrap().is_some(),
            "more{i} of the new feed was skipped"
        );
    }
}

/// A pull refused for good (here: the peer's records stamped further ahead
/// than this engine's clock takes) held back the push too, so this
/// engine's own writes stopped reaching the peer for as long as the stall
/// lasted. They are pushed all the same now, and the sync reports the
/// pull's error; once the clocks agree, the pull resumes and nothing is
/// pushed twice.
#[tokio::test]
async fn a_pull_refused_for_a_far_ahead_clock_still_pushes_local_writes() {
    let honest = Arc::new(ManualTime::new(T0));
    let skewed = Arc::new(ManualTime::new(T0 + 3_600_000));
    let a = engine_at("a", ConflictStrategy::Crdt, &honest).await;
    let fast = engine_at("fast", ConflictStrategy::Crdt, &skewed).await;
    fast.put("c", &json!({"id": "theirs"})).await.unwrap();
    a.put("c", &json!({"id": "mine"})).await.unwrap();

    let err = a.sync_with(&fast, "c").await.unwrap_err();
    assert!(matches!(err, Error::ClockDrift { .. }), "{err}");
    assert!(
        fast.get("c", "mine").await.unwrap().is_some(),
        "the push ran after the refused pull"
    );
    assert!(a.get("c", "theirs").await.unwrap().is_none());

    honest.set(T0 + 3_600_000);
    let report = a.sync_with(&fast, "c").await.unwrap();
    assert_eq!(report.pulled.added, 1, "{report:?}");
    assert_eq!(report.pushed, 0, "{report:?}");
    assert_eq!(snapshot(&a, "c").await, snapshot(&fast, "c").await);
}

/// Every sync tells the peer, before its first exchange, the feed its
/// cursors belong to (a peer checking its answers' feed ids compares them
/// with it): the first, which starts the cursors, and the later ones,
/// which keep them, alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sync_tells_the_peer_the_feed_it_begins_on() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    let b = engine("b", ConflictStrategy::Crdt).await;
    put_many(&b, "c", "r", 3).await;
    let feed = SyncPeer::feed_id(&b).await.unwrap().unwrap();
    let peer = CountingPeer::new(b.clone());
    assert_eq!(a.sync_with(&peer, "c").await.unwrap().pulled.added, 3);
    let pulls = peer.pulls.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(a.sync_with(&peer, "c").await.unwrap().pulled.total(), 0);
    assert_eq!(a.push_to(&peer, "c").await.unwrap().pushed, 0);
    let begun = peer.begun.lock().unwrap().clone();
    let begun_on = |pulls: usize| ("c".to_owned(), feed.clone(), pulls);
    assert_eq!(begun.len(), 3, "{begun:?}");
    assert_eq!(begun[0], begun_on(0));
    assert_eq!(begun[1], begun_on(pulls));
}
