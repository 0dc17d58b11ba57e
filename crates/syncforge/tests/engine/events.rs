//! Events: each kind with its payload, receivers (lag, drop), closure
//! handlers (on / once / off / remove-all / count), panicking handlers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use serde_json::json;
use syncforge::{
    ConflictStrategy, Error, EventKind, ManualTime, MemoryBackend, Record, SyncEngine, SyncEvent,
    SyncTrigger,
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::support::{crdt_engine_on, engine, engine_at, T0};

/// Every event waiting in `rx`, without blocking.
fn drain(rx: &mut syncforge::EventReceiver) -> Vec<SyncEvent> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(event) => out.push(event),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return out,
            Err(TryRecvError::Lagged(n)) => panic!("receiver lagged by {n}"),
        }
    }
}

fn kinds(events: &[SyncEvent]) -> Vec<EventKind> {
    events.iter().map(SyncEvent::kind).collect()
}

#[test]
fn kinds_carry_the_original_names() {
    let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(
        names,
        [
            "sync:start",
            "sync:success",
            "sync:error",
            "conflict",
            "record:added",
            "record:updated",
            "record:deleted",
            "sync:progress"
        ]
    );
    assert_eq!(EventKind::Conflict.to_string(), "conflict");
}

#[tokio::test]
async fn put_and_delete_emit_record_events_with_payloads() {
    let e = engine("a", ConflictStrategy::Crdt).await;
    let mut rx = e.subscribe();
    e.put("notes", &json!({"id": "n1", "title": "one"}))
        .await
        .unwrap();
    e.put("notes", &json!({"id": "n1", "title": "two"}))
        .await
        .unwrap();
    // A put that changes nothing writes nothing and says nothing.
    e.put("notes", &json!({"id": "n1", "title": "two"}))
        .await
        .unwrap();
    e.delete("notes", "n1").await.unwrap();
    // Writing again after a delete makes the record visible again: added.
    e.put("notes", &json!({"id": "n1", "title": "three"}))
        .await
        .unwrap();
    // Deleting an unknown id writes nothing and says nothing.
    e.delete("notes", "missing").await.unwrap();

    let events = drain(&mut rx);
    assert_eq!(
        kinds(&events),
        [
            EventKind::RecordAdded,
            EventKind::RecordUpdated,
            EventKind::RecordDeleted,
            EventKind::RecordAdded
        ]
    );
    match &events[1] {
        SyncEvent::RecordUpdated {
            collection,
            record,
            previous,
        } => {
            assert_eq!(collection, "notes");
            assert_eq!(record.get("title"), Some(json!("two")));
            assert_eq!(previous.get("title"), Some(json!("one")));
            assert!(record.version() > previous.version());
        }
        other => panic!("expected record:updated, got {other:?}"),
    }
    match &events[2] {
        SyncEvent::RecordDeleted { record, .. } => assert!(record.is_deleted()),
        other => panic!("expected record:deleted, got {other:?}"),
    }
    assert!(events.iter().all(|e| e.collection() == "notes"));
}

/// A receiver made after writes, or made again after the last one was
/// dropped, hears every write made after it (and none made before).
#[tokio::test]
async fn a_receiver_made_after_writes_hears_every_later_write() {
    let e = engine("a", ConflictStrategy::Crdt).await;
    e.put("notes", &json!({"id": "before"})).await.unwrap();
    let mut first = e.subscribe();
    e.put("notes", &json!({"id": "during"})).await.unwrap();
    let heard = drain(&mut first);
    assert_eq!(kinds(&heard), [EventKind::RecordAdded]);
    assert!(matches!(&heard[0], SyncEvent::RecordAdded { record, .. } if record.id() == "during"));
    drop(first);
    assert_eq!(e.events().receiver_count(), 0);
    e.put("notes", &json!({"id": "between"})).await.unwrap();
    let mut second = e.subscribe();
    e.delete("notes", "during").await.unwrap();
    let heard = drain(&mut second);
    assert_eq!(kinds(&heard), [EventKind::RecordDeleted]);
    assert!(
        matches!(&heard[0], SyncEvent::RecordDeleted { record, .. } if record.id() == "during")
    );
}

#[tokio::test]
async fn sync_emits_start_conflict_record_progress_and_success() {
    let time = Arc::new(ManualTime::new(T0));
    let a = engine_at("a", ConflictStrategy::Crdt, &time).await;
    let b = engine_at("b", ConflictStrategy::Crdt, &time).await;
    a.put("c", &json!({"id": "shared", "x": 1, "y": 1}))
        .await
        .unwrap();
    let _ = b.sync("c", a.get_all("c").await.unwrap()).await.unwrap();
    time.advance(5);
    // Concurrent edits of the same record: a conflict on b's side.
    a.put("c", &json!({"id": "shared", "x": 2, "y": 1}))
        .await
        .unwrap();
    b.put("c", &json!({"id": "shared", "x": 1, "y": 3}))
        .await
        .unwrap();
    a.put("c", &json!({"id": "only-a"})).await.unwrap();
    a.put("c", &json!({"id": "gone"})).await.unwrap();
    a.delete("c", "gone").await.unwrap();

    let mut rx = b.subscribe();
    let remote = a.get_all("c").await.unwrap();
    let result = b.sync("c", remote).await.unwrap();
    let events = drain(&mut rx);

    let first = events.first().unwrap();
    match first {
        SyncEvent::SyncStart {
            collection,
            record_count,
            timestamp,
            trigger,
        } => {
            assert_eq!(collection, "c");
            assert_eq!(*record_count, 3);
            assert_eq!(*timestamp, T0 + 5);
            assert_eq!(*trigger, SyncTrigger::Call);
        }
        other => panic!("expected sync:start, got {other:?}"),
    }
    match events.last().unwrap() {
        SyncEvent::SyncSuccess(success) => assert_eq!(**success, result),
        other => panic!("expected sync:success, got {other:?}"),
    }
    let conflict = events
        .iter()
        .find_map(|e| match e {
            SyncEvent::Conflict(detail) => Some(detail.clone()),
            _ => None,
        })
        .expect("a conflict event");
    assert_eq!(conflict.record_id, "shared");
    assert_eq!(conflict.fields_conflicted, ["x", "y"]);
    assert_eq!(conflict.resolved_record.get("x"), Some(json!(2)));
    assert_eq!(conflict.resolved_record.get("y"), Some(json!(3)));
    assert_eq!(result.conflicts.len(), 1);

    let mut record_events: Vec<(EventKind, String)> = events
        .iter()
        .filter_map(|e| match e {
            SyncEvent::RecordAdded { record, .. }
            | SyncEvent::RecordUpdated { record, .. }
            | SyncEvent::RecordDeleted { record, .. } => Some((e.kind(), record.id().to_string())),
            _ => None,
        })
        .collect();
    record_events.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(
        record_events,
        [
            (EventKind::RecordDeleted, "gone".to_owned()),
            (EventKind::RecordAdded, "only-a".to_owned()),
            (EventKind::RecordUpdated, "shared".to_owned()),
        ]
    );
    let updated_previous = events.iter().find_map(|e| match e {
        SyncEvent::RecordUpdated { previous, .. } => Some(previous.clone()),
        _ => None,
    });
    assert_eq!(updated_previous.unwrap().get("y"), Some(json!(3)));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind() == EventKind::SyncProgress)
            .count(),
        1
    );
}

/// `record:updated` is about visible records: a record deleted on both
/// sides, whose merge only moves its tombstone and versions, is written and
/// counted, but emits no `record:*` event.
#[tokio::test]
async fn a_record_deleted_on_both_sides_emits_no_record_event() {
    let time = Arc::new(ManualTime::new(T0));
    let a = engine_at("a", ConflictStrategy::Crdt, &time).await;
    let b = engine_at("b", ConflictStrategy::Crdt, &time).await;
    a.put("c", &json!({"id": "r", "x": 1})).await.unwrap();
    let _ = b.sync("c", a.get_all("c").await.unwrap()).await.unwrap();
    time.advance(5);
    a.delete("c", "r").await.unwrap();
    time.advance(5);
    b.delete("c", "r").await.unwrap();
    let before = b.get_all("c").await.unwrap();

    let mut rx = b.subscribe();
    let result = b.sync("c", a.get_all("c").await.unwrap()).await.unwrap();
    let events = drain(&mut rx);
    assert_eq!(result.updated, 1, "{result:?}");
    let after = b.get_all("c").await.unwrap();
    assert_ne!(after, before, "the merged versions are written");
    assert!(after[0].is_deleted());
    let record_events: Vec<EventKind> = kinds(&events)
        .into_iter()
        .filter(|kind| {
            matches!(
                kind,
                EventKind::RecordAdded | EventKind::RecordUpdated | EventKind::RecordDeleted
            )
        })
        .collect();
    assert_eq!(record_events, [], "{events:?}");
}

#[tokio::test]
async fn unchanged_records_emit_no_record_events() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    a.put("c", &json!({"id": "r"})).await.unwrap();
    let mut rx = a.subscribe();
    let _ = a.sync("c", a.get_all("c").await.unwrap()).await.unwrap();
    assert_eq!(
        kinds(&drain(&mut rx)),
        [
            EventKind::SyncStart,
            EventKind::SyncProgress,
            EventKind::SyncSuccess
        ]
    );
}

#[tokio::test]
async fn progress_reports_every_batch_up_to_the_total() {
    let source = engine("src", ConflictStrategy::Crdt).await;
    for i in 0..25 {
        source
            .put("c", &json!({"id": format!("r{i}")}))
            .await
            .unwrap();
    }
    let target = SyncEngine::builder()
        .client_id("dst")
        .batch_size(10)
        .build()
        .await
        .unwrap();
    let mut rx = target.subscribe();
    let mut remote = source.get_all("c").await.unwrap();
    // A repeated id is counted once in the total.
    remote.push(remote[0].clone());
    let _ = target.sync("c", remote).await.unwrap();
    let progress: Vec<(usize, usize)> = drain(&mut rx)
        .iter()
        .filter_map(|e| match e {
            SyncEvent::SyncProgress { done, total, .. } => Some((*done, *total)),
            _ => None,
        })
        .collect();
    assert_eq!(progress, [(10, 25), (20, 25), (25, 25)]);
}

#[tokio::test]
async fn a_failed_sync_emits_sync_error_and_returns_the_error() {
    let time = Arc::new(ManualTime::new(T0));
    let far_ahead = Arc::new(ManualTime::new(T0 + 3_600_000));
    let future = engine_at("future", ConflictStrategy::Crdt, &far_ahead).await;
    future.put("c", &json!({"id": "r"})).await.unwrap();
    let local = engine_at("local", ConflictStrategy::Crdt, &time).await;
    let mut rx = local.subscribe();
    let err = local
        .sync("c", future.get_all("c").await.unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ClockDrift { .. }), "{err}");
    let events = drain(&mut rx);
    assert_eq!(kinds(&events), [EventKind::SyncStart, EventKind::SyncError]);
    match &events[1] {
        SyncEvent::SyncError {
            collection,
            error,
            timestamp,
            ..
        } => {
            assert_eq!(collection, "c");
            assert_eq!(error.to_string(), err.to_string());
            assert!(matches!(**error, Error::ClockDrift { .. }));
            assert!(!error.is_transient());
            assert_eq!(*timestamp, T0);
        }
        other => panic!("expected sync:error, got {other:?}"),
    }
    // A collection name is checked before a sync begins: an invalid one is
    // refused at once, with no sync to report.
    let err = local.sync("", Vec::new()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidCollection { .. }));
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn on_once_off_remove_all_and_listener_count() {
    let e = engine("a", ConflictStrategy::Crdt).await;
    let events = e.events();
    let every = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(AtomicUsize::new(0));
    let deleted = Arc::new(AtomicUsize::new(0));

    let counter = every.clone();
    let on_id = events.on(EventKind::RecordAdded, move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let counter = first.clone();
    events.once(EventKind::RecordAdded, move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let counter = deleted.clone();
    events.on(EventKind::RecordDeleted, move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(events.listener_count(EventKind::RecordAdded), 2);
    assert_eq!(events.listener_count(EventKind::RecordDeleted), 1);
    assert_eq!(events.listener_count(EventKind::SyncStart), 0);

    for i in 0..3 {
        e.put("c", &json!({"id": format!("r{i}")})).await.unwrap();
    }
    assert_eq!(every.load(Ordering::SeqCst), 3);
    assert_eq!(first.load(Ordering::SeqCst), 1, "once runs once");
    assert_eq!(events.listener_count(EventKind::RecordAdded), 1);

    assert!(events.off(on_id));
    assert!(!events.off(on_id), "already removed");
    e.put("c", &json!({"id": "r9"})).await.unwrap();
    assert_eq!(every.load(Ordering::SeqCst), 3, "off stops the handler");
    assert_eq!(events.listener_count(EventKind::RecordAdded), 0);

    // remove_all_listeners(kind) leaves other kinds alone.
    events.on(EventKind::RecordAdded, |_| {});
    events.on(EventKind::RecordAdded, |_| {});
    assert_eq!(events.remove_all_listeners(EventKind::RecordAdded), 2);
    assert_eq!(events.listener_count(EventKind::RecordDeleted), 1);
    e.delete("c", "r0").await.unwrap();
    assert_eq!(deleted.load(Ordering::SeqCst), 1);

    // remove_all_listeners(None) removes everything.
    events.on(EventKind::SyncStart, |_| {});
    assert_eq!(events.remove_all_listeners(None), 2);
    for kind in EventKind::ALL {
        assert_eq!(events.listener_count(kind), 0);
    }
    e.delete("c", "r1").await.unwrap();
    assert_eq!(deleted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn handlers_may_register_handlers_and_see_payloads() {
    let e = engine("a", ConflictStrategy::Crdt).await;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let hub = e.clone();
    let log = seen.clone();
    e.events().on(EventKind::RecordAdded, move |event| {
        if let SyncEvent::RecordAdded { record, .. } = event {
            log.lock().push(record.id().to_string());
        }
        // Re-entrant use of the hub from inside a handler does not deadlock.
        let inner_log = log.clone();
        hub.events().once(EventKind::RecordUpdated, move |_| {
            inner_log.lock().push("updated".to_owned());
        });
    });
    e.put("c", &json!({"id": "x", "v": 1})).await.unwrap();
    e.put("c", &json!({"id": "x", "v": 2})).await.unwrap();
    assert_eq!(*seen.lock(), ["x", "updated"]);
}

#[tokio::test]
async fn a_panicking_handler_is_caught_and_never_breaks_the_engine() {
    let e = engine("a", ConflictStrategy::Crdt).await;
    let after = Arc::new(AtomicUsize::new(0));
    e.events()
        .on(EventKind::RecordAdded, |_| panic!("handler bug"));
    let counter = after.clone();
    e.events().on(EventKind::RecordAdded, move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    e.events()
        .on(EventKind::SyncSuccess, |_| panic!("another bug"));

    let stored = e.put("c", &json!({"id": "r1"})).await.unwrap();
    assert_eq!(stored.id(), "r1");
    assert_eq!(after.load(Ordering::SeqCst), 1, "later handlers still run");
    assert_eq!(e.events().handler_panics(), 1);

    let other = engine("b", ConflictStrategy::Crdt).await;
    other.put("c", &json!({"id": "r2"})).await.unwrap();
    let result = e
        .sync("c", other.get_all("c").await.unwrap())
        .await
        .unwrap();
    assert_eq!(result.added, 1);
    assert_eq!(e.events().handler_panics(), 3);
    // The engine is still fully usable.
    e.put("c", &json!({"id": "r3"})).await.unwrap();
    assert_eq!(e.get_all("c").await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_lagging_receiver_is_told_and_never_blocks_writes() {
    let e = SyncEngine::builder()
        .client_id("a")
        .event_capacity(4)
        .build()
        .await
        .unwrap();
    let mut slow = e.subscribe();
    let dropped = e.subscribe();
    drop(dropped);
    for i in 0..20 {
        e.put("c", &json!({"id": format!("r{i}")})).await.unwrap();
    }
    assert_eq!(slow.recv().await.unwrap_err(), RecvError::Lagged(16));
    // After the lag report the receiver continues with the newest events.
    match slow.recv().await.unwrap() {
        SyncEvent::RecordAdded { record, .. } => assert_eq!(record.id(), "r16"),
        other => panic!("expected record:added, got {other:?}"),
    }
    assert_eq!(e.get_all("c").await.unwrap().len(), 20);
}

#[tokio::test]
async fn receivers_end_when_the_engine_is_gone_and_close_removes_handlers() {
    let e = engine("a", ConflictStrategy::Crdt).await;
    let mut rx = e.subscribe();
    e.events().on(EventKind::SyncStart, |_| {});
    assert_eq!(e.events().receiver_count(), 1);
    e.close().await.unwrap();
    assert_eq!(e.events().listener_count(EventKind::SyncStart), 0);
    drop(e);
    let ended = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap();
    assert_eq!(ended.unwrap_err(), RecvError::Closed);
}

/// A handler added after `close` was kept: one holding a handle on the
/// engine kept it, and its event channel, alive for good, so receivers
/// never saw their stream end. A closed engine's `sync` also announced a
/// start it never made.
#[tokio::test]
async fn a_handler_added_after_close_is_dropped_and_receivers_still_end() {
    let e = engine("a", ConflictStrategy::Crdt).await;
    let mut rx = e.subscribe();
    e.close().await.unwrap();
    let kept = e.clone();
    e.events().on(EventKind::SyncStart, move |_| {
        let _ = kept.is_closed();
    });
    assert_eq!(e.events().listener_count(EventKind::SyncStart), 0);
    assert!(matches!(
        e.sync("c", Vec::new()).await,
        Err(Error::Closed { .. })
    ));
    let peer = engine("peer", ConflictStrategy::Crdt).await;
    assert!(matches!(
        e.sync_with(&peer, "c").await,
        Err(Error::Closed { .. })
    ));
    drop(e);
    let ended = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the stream did not end");
    assert_eq!(ended.unwrap_err(), RecvError::Closed);
}

#[test]
fn invalid_event_capacity_is_refused() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = runtime
        .block_on(
            SyncEngine::builder()
                .backend(MemoryBackend::new())
                .event_capacity(0)
                .build(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                option: "event_capacity",
                ..
            }
        ),
        "{err}"
    );
}

/// A record's previous state is only kept when someone listens; the records
/// the engine stores are the same either way. The syncs update records
/// (with concurrent edits, so conflicts too), where a previous state exists
/// to keep or not.
#[tokio::test]
async fn listening_does_not_change_what_is_stored() {
    let quiet = engine("q", ConflictStrategy::Crdt).await;
    let loud = engine("q", ConflictStrategy::Crdt).await;
    let mut rx = loud.subscribe();
    let source = engine("s", ConflictStrategy::Crdt).await;
    let other = engine("o", ConflictStrategy::Crdt).await;
    for i in 0..30 {
        source
            .put("c", &json!({"id": format!("r{i}"), "n": i}))
            .await
            .unwrap();
    }
    let first: Vec<Record> = source.get_all("c").await.unwrap();
    let seeded = other.sync("c", first.clone()).await.unwrap();
    assert_eq!(seeded.added, 30);
    for i in 0..15 {
        source
            .put("c", &json!({"id": format!("r{i}"), "n": i + 100}))
            .await
            .unwrap();
    }
    for i in 10..20 {
        other
            .put("c", &json!({"id": format!("r{i}"), "n": i, "m": "o"}))
            .await
            .unwrap();
    }
    let rounds = [
        first,
        source.get_all("c").await.unwrap(),
        other.get_all("c").await.unwrap(),
    ];
    let mut updated = 0;
    for remote in rounds {
        let a = quiet.sync("c", remote.clone()).await.unwrap();
        let b = loud.sync("c", remote).await.unwrap();
        assert_eq!(
            (a.added, a.updated, a.unchanged, a.conflicts.len()),
            (b.added, b.updated, b.unchanged, b.conflicts.len())
        );
        updated += b.updated;
    }
    assert!(updated >= 20, "{updated} records updated");
    assert_eq!(
        crate::support::snapshot(&quiet, "c").await,
        crate::support::snapshot(&loud, "c").await
    );
    // The listener did hear updates, each with the state it replaced.
    let mut heard = 0;
    while let Ok(event) = rx.try_recv() {
        if let SyncEvent::RecordUpdated {
            record, previous, ..
        } = event
        {
            assert_eq!(previous.id(), record.id());
            assert_ne!(previous, record);
            heard += 1;
        }
    }
    assert_eq!(heard, updated);
}

/// Another engine on the same store makes the very merge this sync planned,
/// between this sync's read and its write: the store refuses this engine's
/// write. The records, the conflict and their events are the other
/// engine's; this sync finds them unchanged and announces nothing of them.
#[tokio::test]
async fn a_merge_another_engine_made_first_is_reported_by_that_engine_alone() {
    use syncforge::StorageBackend;
    use syncforge_testkit::faults::FaultyBackend;
    let memory: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    let raced = Arc::new(FaultyBackend::new(memory, 1, 0.0, Duration::ZERO));
    let a = crdt_engine_on("a", raced.clone()).await;
    a.put("c", &json!({"id": "shared", "x": 1})).await.unwrap();
    let source = engine("source", ConflictStrategy::Crdt).await;
    source
        .put("c", &json!({"id": "shared", "x": 2}))
        .await
        .unwrap();
    source
        .put("c", &json!({"id": "new", "x": 3}))
        .await
        .unwrap();
    let batch = source.get_all("c").await.unwrap();
    let same = batch.clone();
    raced.rival_before_next_put_batch(move |store| async move {
        let b = crdt_engine_on("b", store).await;
        let first = b.sync("c", same).await.unwrap();
        assert_eq!(
            (first.added, first.updated, first.conflicts.len()),
            (1, 1, 1),
            "{first:?}"
        );
    });
    let mut rx = a.subscribe();
    let second = a.sync("c", batch).await.unwrap();
    assert_eq!(
        (second.added, second.updated, second.unchanged),
        (0, 0, 2),
        "{second:?}"
    );
    assert!(second.conflicts.is_empty(), "{second:?}");
    assert_eq!(
        kinds(&drain(&mut rx)),
        [
            EventKind::SyncStart,
            EventKind::SyncProgress,
            EventKind::SyncSuccess
        ]
    );
}

/// One sync given two states of a record written concurrently (an edit on
/// each of two other replicas) is the first to merge them, and reports the
/// conflict, in its result and as an event: it merged them first into a
/// state newer than its own and reported nothing. The same batch again
/// changes nothing and reports nothing.
#[tokio::test]
async fn two_concurrent_states_in_one_batch_are_a_reported_conflict() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    let b = engine("b", ConflictStrategy::Crdt).await;
    let c = engine("c", ConflictStrategy::Crdt).await;
    a.put("c", &json!({"id": "r", "x": 1, "y": 1}))
        .await
        .unwrap();
    let base = a.get_all("c").await.unwrap();
    for replica in [&b, &c] {
        assert_eq!(replica.sync("c", base.clone()).await.unwrap().added, 1);
    }
    b.put("c", &json!({"id": "r", "x": 2, "y": 1}))
        .await
        .unwrap();
    c.put("c", &json!({"id": "r", "x": 1, "y": 3}))
        .await
        .unwrap();
    let mut batch = b.get_all("c").await.unwrap();
    batch.extend(c.get_all("c").await.unwrap());

    let mut rx = a.subscribe();
    let result = a.sync("c", batch.clone()).await.unwrap();
    assert_eq!((result.updated, result.conflicts.len()), (1, 1));
    let conflict = &result.conflicts[0];
    assert_eq!(conflict.fields_conflicted, ["x", "y"]);
    assert_eq!(conflict.resolved_record.get("x"), Some(json!(2)));
    assert_eq!(conflict.resolved_record.get("y"), Some(json!(3)));
    let heard: Vec<_> = drain(&mut rx)
        .into_iter()
        .filter_map(|event| match event {
            SyncEvent::Conflict(detail) => Some(detail),
            _ => None,
        })
        .collect();
    assert_eq!(heard.len(), 1);
    assert_eq!(*heard[0], *conflict);

    let again = a.sync("c", batch).await.unwrap();
    assert_eq!((again.unchanged, again.conflicts.len()), (1, 0));
}
