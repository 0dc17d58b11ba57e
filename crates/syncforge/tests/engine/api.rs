//! The engine's API contract: configuration, bad input, typed access, close,
//! clock seeding.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use syncforge::{
    BackendConfig, ConflictStrategy, Cursor, Error, ManualTime, MemoryBackend, PageOptions, Record,
    StorageBackend, SyncEngine,
};

use crate::support::{crdt_engine_on, engine, engine_at, T0};

#[tokio::test]
async fn invalid_configuration_is_refused_naming_the_option() {
    let cases: Vec<(syncforge::EngineBuilder, &str)> = vec![
        (SyncEngine::builder().batch_size(0), "batch_size"),
        (SyncEngine::builder().batch_size(1_000_000), "batch_size"),
        (SyncEngine::builder().max_retries(21), "max_retries"),
        (
            SyncEngine::builder().auto_sync_interval(Duration::from_millis(999)),
            "auto_sync_interval",
        ),
        (
            SyncEngine::builder()
                .auto_sync(true)
                .auto_sync_interval(Duration::MAX),
            "auto_sync_interval",
        ),
        (SyncEngine::builder().client_id(""), "client_id"),
        (SyncEngine::builder().client_id("a\nb"), "client_id"),
        (
            SyncEngine::builder().max_clock_drift(Duration::ZERO),
            "max_clock_drift",
        ),
        // Counted in whole milliseconds, it would refuse every stamp ahead.
        (
            SyncEngine::builder().max_clock_drift(Duration::from_micros(500)),
            "max_clock_drift",
        ),
        // Would let a clock set years ahead carry every later stamp there.
        (
            SyncEngine::builder().max_clock_drift(Duration::MAX),
            "max_clock_drift",
        ),
        (SyncEngine::builder().event_capacity(0), "event_capacity"),
        (
            SyncEngine::builder().auto_sync_peer_timeout(Duration::ZERO),
            "auto_sync_peer_timeout",
        ),
        // Every window would sync nothing.
        (
            SyncEngine::builder().auto_sync_collections(Vec::<String>::new()),
            "auto_sync_collections",
        ),
        (
            SyncEngine::builder().event_capacity(usize::MAX / 2),
            "event_capacity",
        ),
    ];
    for (builder, option) in cases {
        match builder.build().await {
            Err(Error::InvalidConfig {
                option: got,
                reason,
            }) => {
                assert_eq!(got, option);
                assert!(!reason.is_empty());
                // The option is named once: a client id's refusal said
                // "invalid argument `client_id`" inside it.
                assert!(!reason.contains(option), "{reason}");
            }
            other => panic!("{option}: expected InvalidConfig, got {other:?}"),
        }
    }
}

/// A collection named twice for auto-sync was synced twice in every window.
#[tokio::test]
async fn an_auto_sync_collection_named_twice_counts_once() {
    let engine = SyncEngine::builder()
        .auto_sync_collections(["b", "a", "b"])
        .build()
        .await
        .unwrap();
    let names: Vec<&str> = engine
        .config()
        .auto_sync_collections()
        .unwrap()
        .iter()
        .map(|name| name.as_str())
        .collect();
    assert_eq!(names, ["b", "a"]);
}

#[tokio::test]
async fn defaults_follow_the_original() {
    let engine = SyncEngine::builder().build().await.unwrap();
    let config = engine.config();
    assert_eq!(config.conflict_strategy(), ConflictStrategy::Timestamp);
    assert_eq!(config.batch_size(), 100);
    assert_eq!(config.max_retries(), 3);
    assert!(!config.auto_sync());
    assert_eq!(config.auto_sync_interval(), Duration::from_secs(30));
    assert_eq!(config.max_clock_drift(), Duration::from_secs(300));
    assert_eq!(engine.backend().name(), "memory");
    let other = SyncEngine::builder().build().await.unwrap();
    assert_ne!(engine.client_id(), other.client_id(), "fresh ULIDs");
}

#[cfg(not(feature = "fs"))]
#[tokio::test]
async fn a_backend_whose_feature_is_off_is_a_clear_error() {
    let err = SyncEngine::builder()
        .backend_config(BackendConfig::Filesystem {
            directory: "unused".into(),
        })
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::FeatureDisabled { feature: "fs", .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("enable the cargo feature `fs`"),
        "{err}"
    );
}

#[tokio::test]
async fn backend_by_name() {
    let engine = SyncEngine::builder()
        .backend_config(BackendConfig::Memory)
        .build()
        .await
        .unwrap();
    assert_eq!(engine.backend().name(), "memory");
}

#[tokio::test]
async fn bad_input_is_refused_and_writes_nothing() {
    let engine = engine("e", ConflictStrategy::Crdt).await;
    let bad_docs = [
        json!({"name": "no id"}),
        json!({"id": 7}),
        json!({"id": ""}),
        json!({"id": "x\u{0}"}),
        json!({"id": "x".repeat(1025)}),
        json!(["not", "an", "object"]),
        json!("text"),
        json!({"id": "ok", "_version": "three"}),
        json!({"id": "ok", "_deleted": 1}),
    ];
    for doc in &bad_docs {
        let err = engine.put("c", doc).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidRecord { .. } | Error::InvalidId { .. }),
            "{doc}: {err:?}"
        );
    }
    for name in ["", "a\nb", &"c".repeat(1025)] {
        let err = engine.put(name, &json!({"id": "1"})).await.unwrap_err();
        assert!(matches!(err, Error::InvalidCollection { .. }), "{err:?}");
        assert!(matches!(
            engine.get_all(name).await,
            Err(Error::InvalidCollection { .. })
        ));
        assert!(matches!(
            engine.sync(name, vec![]).await,
            Err(Error::InvalidCollection { .. })
        ));
    }
    assert!(matches!(
        engine.get("c", "").await,
        Err(Error::InvalidId { .. })
    ));
    assert!(matches!(
        engine.delete("c", "\n").await,
        Err(Error::InvalidId { .. })
    ));
    assert!(
        engine
            .backend()
            .list_collections()
            .await
            .unwrap()
            .is_empty(),
        "nothing was written"
    );
}

#[tokio::test]
async fn non_serialisable_values_are_an_error_not_a_panic() {
    use std::collections::HashMap;
    let engine = engine("e", ConflictStrategy::Crdt).await;
    // Maps with non-string keys cannot become JSON objects.
    let mut doc: HashMap<(u8, u8), u8> = HashMap::new();
    doc.insert((1, 2), 3);
    assert!(matches!(
        engine.put("c", &doc).await,
        Err(Error::InvalidRecord { .. })
    ));
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
struct Task {
    id: String,
    title: String,
    done: bool,
}

#[tokio::test]
async fn typed_records() {
    let engine = engine("e", ConflictStrategy::Timestamp).await;
    let task = Task {
        id: "t1".into(),
        title: "Write tests".into(),
        done: false,
    };
    let stored = engine.put("tasks", &task).await.unwrap();
    assert_eq!(stored.get_as::<Task>().unwrap(), task);
    assert_eq!(
        engine.get_as::<Task>("tasks", "t1").await.unwrap(),
        Some(task.clone())
    );
    engine
        .put(
            "tasks",
            &Task {
                id: "t2".into(),
                title: "Ship".into(),
                done: true,
            },
        )
        .await
        .unwrap();
    engine.delete("tasks", "t2").await.unwrap();
    assert_eq!(
        engine.get_all_as::<Task>("tasks").await.unwrap(),
        vec![task]
    );
    assert!(engine
        .get_as::<Task>("tasks", "missing")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn put_without_change_writes_nothing_and_records_can_be_put_back() {
    let engine = engine("e", ConflictStrategy::Crdt).await;
    let first = engine.put("c", &json!({"id": "a", "x": 1})).await.unwrap();
    let again = engine.put("c", &json!({"id": "a", "x": 1})).await.unwrap();
    assert_eq!(first, again);
    // A record read back, metadata and all, can be put again.
    let back = engine.put("c", &first.to_json()).await.unwrap();
    assert_eq!(back, first);
    let page = engine
        .changes("c", Cursor::START, PageOptions::default().limit(10))
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 1);
}

#[tokio::test]
async fn empty_records_can_be_written_deleted_and_written_again() {
    let engine = engine("e", ConflictStrategy::Crdt).await;
    engine.put("c", &json!({"id": "empty"})).await.unwrap();
    assert!(engine
        .delete("c", "empty")
        .await
        .unwrap()
        .unwrap()
        .is_deleted());
    let again = engine.put("c", &json!({"id": "empty"})).await.unwrap();
    assert!(!again.is_deleted());
    assert_eq!(again.version(), 3);
}

#[tokio::test]
async fn deleting_unknown_or_deleted_records_writes_nothing() {
    let engine = engine("e", ConflictStrategy::Crdt).await;
    assert!(engine.delete("c", "nope").await.unwrap().is_none());
    assert!(engine
        .backend()
        .list_collections()
        .await
        .unwrap()
        .is_empty());
    engine.put("c", &json!({"id": "a"})).await.unwrap();
    let deleted = engine.delete("c", "a").await.unwrap().unwrap();
    let cursor = engine
        .changes("c", Cursor::START, PageOptions::default().limit(10))
        .await
        .unwrap()
        .next;
    let again = engine.delete("c", "a").await.unwrap().unwrap();
    assert_eq!(deleted, again);
    assert!(engine
        .changes("c", cursor, PageOptions::default().limit(10))
        .await
        .unwrap()
        .changes
        .is_empty());
}

#[tokio::test]
async fn close_keeps_data_and_refuses_later_calls() {
    let store = MemoryBackend::new();
    let engine = SyncEngine::builder()
        .backend(store.clone())
        .build()
        .await
        .unwrap();
    engine.put("c", &json!({"id": "a", "v": 1})).await.unwrap();
    engine.close().await.unwrap();
    engine.close().await.unwrap();
    assert!(engine.is_closed());
    assert!(matches!(
        engine.put("c", &json!({"id": "b"})).await,
        Err(Error::Closed { .. })
    ));
    assert!(matches!(
        engine.get("c", "a").await,
        Err(Error::Closed { .. })
    ));
    assert!(matches!(
        engine.sync("c", vec![]).await,
        Err(Error::Closed { .. })
    ));

    let reopened = SyncEngine::builder().backend(store).build().await.unwrap();
    assert_eq!(
        reopened.get("c", "a").await.unwrap().unwrap().get("v"),
        Some(json!(1))
    );
}

#[tokio::test]
async fn clock_is_seeded_from_the_store_on_open() {
    let store = MemoryBackend::new();
    let ahead = Arc::new(ManualTime::new(T0 + 60_000));
    let first = SyncEngine::builder()
        .client_id("device")
        .backend(store.clone())
        .time_source(ahead)
        .build()
        .await
        .unwrap();
    let written = first.put("c", &json!({"id": "a", "v": 1})).await.unwrap();
    first.close().await.unwrap();

    // The device restarts with its wall clock a minute behind.
    let behind = Arc::new(ManualTime::new(T0));
    let second = SyncEngine::builder()
        .client_id("device")
        .backend(store)
        .time_source(behind)
        .build()
        .await
        .unwrap();
    let other = second.put("c", &json!({"id": "b"})).await.unwrap();
    assert!(other.newest_stamp() > written.newest_stamp());
}

/// A record counting a client's writes near the largest count (a forged or
/// broken peer's, or a hand-made import) is refused, with its batch, by sync
/// and import alike: a count pinned there would stop counting that client's
/// later writes, and two concurrent edits would no longer be seen as a
/// conflict.
#[tokio::test]
async fn a_record_counting_writes_past_the_received_bound_is_refused_with_its_batch() {
    let time = Arc::new(ManualTime::new(T0));
    let local = engine_at("local", ConflictStrategy::Timestamp, &time).await;
    let at = |id: &str, version: u64| {
        Record::from_json(
            json!({"id": id, "t": "a", "_version": version, "_timestamp": T0, "_clientId": "local"}),
        )
        .unwrap()
    };
    let good = at("ok", 3);
    let bound = syncforge::core::MAX_RECEIVED_VERSION;
    let pinned = at("n1", syncforge::core::MAX_VERSION);
    let counts_past_the_bound = |err: Error| match err {
        Error::InvalidRecord { id, field, reason } => {
            assert_eq!(id.as_deref(), Some("n1"));
            assert_eq!(field.as_deref(), Some("_sync"));
            assert!(reason.contains(&bound.to_string()), "{reason}");
        }
        other => panic!("expected InvalidRecord, got {other:?}"),
    };
    for refused in [
        local.sync("c", vec![good.clone(), pinned.clone()]).await,
        local.import("c", vec![good.clone(), pinned]).await,
    ] {
        counts_past_the_bound(refused.unwrap_err());
        assert!(
            local.get_all("c").await.unwrap().is_empty(),
            "nothing written"
        );
    }
    // At the bound a record is taken, but one more write by the client it
    // counts at the bound would make a record no replica takes: refused,
    // with nothing written. Another client's write still counts.
    let _ = local.sync("c", vec![good, at("n1", bound)]).await.unwrap();
    for refused in [
        local
            .put("c", &json!({"id": "n1", "t": "b"}))
            .await
            .map(Some),
        local.delete("c", "n1").await,
    ] {
        counts_past_the_bound(refused.unwrap_err());
    }
    let stored = local.get("c", "n1").await.unwrap().unwrap();
    assert_eq!(stored.version(), bound);
    let other = engine_at("other", ConflictStrategy::Timestamp, &time).await;
    let _ = other.sync("c", vec![stored]).await.unwrap();
    let edited = other
        .put("c", &json!({"id": "n1", "t": "b"}))
        .await
        .unwrap();
    assert_eq!(edited.version(), bound + 1);
    let _ = local.sync("c", vec![edited]).await.unwrap();
}

#[tokio::test]
async fn sync_rejects_a_whole_batch_with_a_far_future_stamp() {
    let time = Arc::new(ManualTime::new(T0));
    let local = engine_at("local", ConflictStrategy::Timestamp, &time).await;
    let good =
        Record::from_json(json!({"id": "ok", "_version": 1, "_timestamp": T0, "_clientId": "r"}))
            .unwrap();
    let ahead = Record::from_json(
        json!({"id": "late", "_version": 1, "_timestamp": T0 + 3_600_000, "_clientId": "r"}),
    )
    .unwrap();
    let err = local
        .sync("c", vec![good.clone(), ahead])
        .await
        .unwrap_err();
    match &err {
        Error::ClockDrift {
            ids,
            ahead_ms,
            max_drift_ms,
        } => {
            assert_eq!(ids, &vec!["late".to_owned()]);
            assert_eq!(*ahead_ms, 3_600_000);
            assert_eq!(*max_drift_ms, 300_000);
        }
        other => panic!("expected ClockDrift, got {other:?}"),
    }
    assert!(err.to_string().contains("late"));
    assert!(
        local.get_all("c").await.unwrap().is_empty(),
        "nothing written"
    );
    // Within the bound the batch is taken, and later local stamps follow it.
    let near = Record::from_json(
        json!({"id": "near", "_version": 1, "_timestamp": T0 + 60_000, "_clientId": "r"}),
    )
    .unwrap();
    let _ = local.sync("c", vec![good, near.clone()]).await.unwrap();
    let mine = local.put("c", &json!({"id": "mine"})).await.unwrap();
    assert!(mine.newest_stamp() > near.newest_stamp());
}

#[tokio::test]
async fn sync_batches_and_repeated_ids() {
    let source = engine("source", ConflictStrategy::Crdt).await;
    for i in 0..250 {
        source
            .put("c", &json!({"id": format!("r{i:03}"), "i": i}))
            .await
            .unwrap();
    }
    let target = SyncEngine::builder()
        .client_id("target")
        .conflict_strategy(ConflictStrategy::Crdt)
        .batch_size(7)
        .build()
        .await
        .unwrap();
    let mut records = source.get_all("c").await.unwrap();
    let r5_old = records.iter().find(|r| r.id() == "r005").unwrap().clone();
    let r5_new = source
        .put("c", &json!({"id": "r005", "i": "new"}))
        .await
        .unwrap();
    records.push(r5_new.clone());
    records.push(r5_old);
    let result = target.sync("c", records).await.unwrap();
    assert_eq!(result.added, 250);
    assert_eq!(target.get("c", "r005").await.unwrap().unwrap(), r5_new);
    assert_eq!(target.get_all("c").await.unwrap().len(), 250);
}

/// Twenty records, each written by `w1` (`field0`) and by `w2` (`field1`):
/// the two batches an engine syncs from each.
async fn two_writers_batches() -> [Vec<Record>; 2] {
    let writers = [
        engine("w1", ConflictStrategy::Crdt).await,
        engine("w2", ConflictStrategy::Crdt).await,
    ];
    for (n, w) in writers.iter().enumerate() {
        for i in 0..20 {
            w.put("c", &json!({"id": format!("r{i}"), format!("field{n}"): i}))
                .await
                .unwrap();
        }
    }
    [
        writers[0].get_all("c").await.unwrap(),
        writers[1].get_all("c").await.unwrap(),
    ]
}

/// Whether every record of `store` holds both writers' fields.
async fn holds_both_writers_fields(store: Arc<dyn StorageBackend>) {
    let check = SyncEngine::builder().backend(store).build().await.unwrap();
    for i in 0..20 {
        let r = check.get("c", &format!("r{i}")).await.unwrap().unwrap();
        assert_eq!(r.get("field0"), Some(json!(i)), "{r:?}");
        assert_eq!(r.get("field1"), Some(json!(i)), "{r:?}");
    }
}

/// An engine's sync loses the race to another engine syncing the same
/// records into the same store between its read and its conditional
/// write: its write is refused, and it reads and merges again, so that
/// neither engine's fields are lost.
#[tokio::test]
async fn a_sync_that_loses_a_race_to_another_engine_merges_again() {
    use syncforge_testkit::faults::{FaultyBackend, Operation};
    let memory: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    let raced = Arc::new(FaultyBackend::new(
        Arc::clone(&memory),
        1,
        0.0,
        Duration::ZERO,
    ));
    let a = crdt_engine_on("a", raced.clone()).await;
    let [batch0, batch1] = two_writers_batches().await;
    raced.rival_before_next_put_batch(move |store| async move {
        let b = crdt_engine_on("b", store).await;
        let written = b.sync("c", batch1).await.unwrap();
        assert_eq!(written.added, 20);
    });
    let merged = a.sync("c", batch0).await.unwrap();
    // Every record was there by then: each of a's is merged into it.
    assert_eq!((merged.added, merged.updated), (0, 20), "{merged:?}");
    assert!(
        raced.calls(Operation::PutBatch) >= 2,
        "the write that lost the race was not made again"
    );
    holds_both_writers_fields(memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_sharing_one_store_lose_no_update() {
    // Two engines write into one store concurrently; each merges remote
    // edits of different fields into the same records.
    let store = MemoryBackend::new();
    let make = |id: &'static str| {
        let store = store.clone();
        async move {
            SyncEngine::builder()
                .client_id(id)
                .conflict_strategy(ConflictStrategy::Crdt)
                .batch_size(1)
                .backend(store)
                .build()
                .await
                .unwrap()
        }
    };
    let (a, b) = (make("a").await, make("b").await);
    let [batch0, batch1] = two_writers_batches().await;
    let (ra, rb) = tokio::join!(
        tokio::spawn(async move { a.sync("c", batch0).await }),
        tokio::spawn(async move { b.sync("c", batch1).await })
    );
    let _ = ra.unwrap().unwrap();
    let _ = rb.unwrap().unwrap();
    holds_both_writers_fields(Arc::new(store)).await;
}

#[tokio::test]
async fn a_change_page_of_zero_is_refused() {
    let engine = engine("e", ConflictStrategy::Crdt).await;
    engine.put("c", &json!({"id": "a"})).await.unwrap();
    let err = engine
        .changes("c", Cursor::START, PageOptions::default().limit(0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "limit", .. }),
        "{err:?}"
    );
}

/// A cursor past every feed position was read from the store, whose page
/// (next at least the cursor) was then refused as the store's fault.
#[tokio::test]
async fn a_change_cursor_past_every_feed_position_is_the_callers_error() {
    let engine = engine("e", ConflictStrategy::Crdt).await;
    engine.put("c", &json!({"id": "a"})).await.unwrap();
    let past = Cursor::new(Cursor::LARGEST.get() + 1);
    let err = engine
        .changes("c", past, PageOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { name: "after", .. }),
        "{err:?}"
    );
    let page = engine
        .changes("c", Cursor::LARGEST, PageOptions::default())
        .await
        .unwrap();
    assert!(page.changes.is_empty() && !page.more, "{page:?}");
}

#[tokio::test]
async fn a_put_of_a_record_another_engine_created_updates_it() {
    // The put finds the record held already (its insert-if-absent is
    // refused) and goes on as an update of what the other engine wrote.
    let store = MemoryBackend::new();
    let first = SyncEngine::builder()
        .client_id("one")
        .backend(store.clone())
        .build()
        .await
        .unwrap();
    let second = SyncEngine::builder()
        .client_id("two")
        .backend(store)
        .build()
        .await
        .unwrap();
    let created = first.put("c", &json!({"id": "a", "v": 1})).await.unwrap();
    let mut rx = second.subscribe();
    let updated = second.put("c", &json!({"id": "a", "v": 2})).await.unwrap();
    assert_eq!(updated.content().get("v"), Some(&json!(2)));
    assert!(updated.newest_stamp() > created.newest_stamp());
    assert_eq!(updated.versions().get(created.client_id()), 1);
    match rx.try_recv().unwrap() {
        syncforge::SyncEvent::RecordUpdated {
            record, previous, ..
        } => {
            assert_eq!(record, updated);
            assert_eq!(previous, created);
        }
        other => panic!("expected record:updated, got {other:?}"),
    }
    let page = first
        .changes("c", Cursor::START, PageOptions::default().limit(10))
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.changes[0].cursor, Cursor::new(2));
    assert_eq!(page.changes[0].record, updated);
}

/// Each backend's crate is reachable from the facade with its feature, so
/// that its defaults and types (`CorruptFile`) need no second dependency.
#[test]
fn the_backends_defaults_are_reachable_from_the_facade() {
    #[cfg(feature = "s3")]
    assert_eq!(syncforge::s3::DEFAULT_REGION, "us-east-1");
    #[cfg(feature = "s3")]
    assert_eq!(syncforge::s3::DEFAULT_PREFIX, "dse");
    #[cfg(feature = "redis")]
    assert_eq!(syncforge::redis::DEFAULT_PORT, 6379);
    #[cfg(feature = "fs")]
    let _: fn(&syncforge::fs::CorruptFile) -> String = |file| file.to_string();
}
