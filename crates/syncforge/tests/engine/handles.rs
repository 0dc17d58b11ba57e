//! The API shape: collection handles, cursors and page options, the change
//! stream, import, shared backends, typed reads of deleted records.

use std::sync::Arc;

use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::json;
use syncforge::core::{Write, MAX_STAMP_MILLIS};
use syncforge::{
    BackendConfig, ConflictStrategy, Cursor, Error, EventKind, MemoryBackend, PageOptions, Record,
    Stamp, StorageBackend, SyncEngine,
};

use syncforge_testkit::faults::FaultyBackend;

use crate::support::{engine, engine_on_a_stalling_feed, on_a_thread_of_its_own};

#[derive(Debug, Deserialize, PartialEq)]
struct Note {
    id: String,
    title: String,
}

#[tokio::test]
async fn a_collection_handle_validates_its_name_once_and_offers_every_operation() {
    let e = engine("a", ConflictStrategy::Crdt).await;
    for bad in ["", "tab\there", &"x".repeat(1025)] {
        assert!(matches!(
            e.collection(bad),
            Err(Error::InvalidCollection { .. })
        ));
    }
    let notes = e.collection("notes").unwrap();
    assert_eq!(notes.name(), "notes");
    notes
        .put(&json!({"id": "n1", "title": "Q3"}))
        .await
        .unwrap();
    // The handle and the engine by name see the same records.
    assert_eq!(
        notes.get("n1").await.unwrap(),
        e.get("notes", "n1").await.unwrap()
    );
    assert_eq!(notes.get_all().await.unwrap().len(), 1);
    assert_eq!(
        notes.get_as::<Note>("n1").await.unwrap(),
        Some(Note {
            id: "n1".into(),
            title: "Q3".into()
        })
    );
    let page = notes
        .changes(Cursor::START, PageOptions::default())
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert!(notes.get_changes_since(0).await.unwrap().len() == 1);
    assert!(notes.delete("n1").await.unwrap().unwrap().is_deleted());
    // Bad ids are typed errors, with nothing written.
    assert!(matches!(notes.get("").await, Err(Error::InvalidId { .. })));
    assert!(matches!(
        notes.delete("a\nb").await,
        Err(Error::InvalidId { .. })
    ));
}

#[tokio::test]
async fn typed_reads_agree_on_soft_deleted_records() {
    let e = engine("a", ConflictStrategy::Timestamp).await;
    let notes = e.collection("notes").unwrap();
    notes
        .put(&json!({"id": "live", "title": "kept"}))
        .await
        .unwrap();
    notes
        .put(&json!({"id": "gone", "title": "deleted"}))
        .await
        .unwrap();
    notes.delete("gone").await.unwrap();
    // Untyped reads return the tombstone; typed reads both leave it out.
    assert!(notes.get("gone").await.unwrap().unwrap().is_deleted());
    assert_eq!(notes.get_all().await.unwrap().len(), 2);
    assert_eq!(notes.get_as::<Note>("gone").await.unwrap(), None);
    let live: Vec<Note> = notes.get_all_as().await.unwrap();
    assert_eq!(
        live,
        [Note {
            id: "live".into(),
            title: "kept".into()
        }]
    );
}

#[tokio::test]
async fn sync_takes_a_change_page_or_any_iterator_of_records() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    let b = engine("b", ConflictStrategy::Crdt).await;
    let (from, to) = (a.collection("c").unwrap(), b.collection("c").unwrap());
    for n in 0..5 {
        from.put(&json!({"id": format!("r{n}"), "n": n}))
            .await
            .unwrap();
    }
    let page = from
        .changes(Cursor::START, PageOptions::default().limit(3))
        .await
        .unwrap();
    let next = page.next;
    assert_eq!(to.sync(page).await.unwrap().added, 3);
    let rest = from.changes(next, PageOptions::default()).await.unwrap();
    let result = to
        .sync(rest.records().filter(|r| r.id() != "r4").cloned())
        .await
        .unwrap();
    assert_eq!(result.added, 1);
    assert_eq!(to.get_all().await.unwrap().len(), 4);
}

#[tokio::test]
async fn the_change_stream_pages_underneath_and_ends_when_caught_up() {
    let e = engine("a", ConflictStrategy::Crdt).await;
    let c = e.collection("c").unwrap();
    for n in 0..23 {
        c.put(&json!({"id": format!("r{n:02}"), "n": n}))
            .await
            .unwrap();
    }
    // Rewriting a record moves it to the end of the feed, once.
    c.put(&json!({"id": "r00", "n": 100})).await.unwrap();
    let all: Vec<_> = c
        .change_stream(Cursor::START, PageOptions::default().limit(4))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 23);
    assert!(all.windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert_eq!(all.last().unwrap().record.id(), "r00");
    // From the last cursor there is nothing more; a later write shows up.
    let end = all.last().unwrap().cursor;
    let none: Vec<_> = c
        .change_stream(end, PageOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert!(none.is_empty());
    c.put(&json!({"id": "late"})).await.unwrap();
    let late: Vec<_> = c
        .change_stream(end, PageOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(late.len(), 1);
    // A page of 0 is refused, as the stream's first item.
    let refused: Result<Vec<_>, _> = c
        .change_stream(Cursor::START, PageOptions::default().limit(0))
        .try_collect()
        .await;
    assert!(matches!(
        refused,
        Err(Error::InvalidArgument { name: "limit", .. })
    ));
}

/// A store whose feed says "more" without moving its cursor fails a reader
/// with a storage error: the change stream ended as if caught up, and
/// `changes` handed the page on, for the reader to ask again for ever.
#[test]
fn a_feed_that_does_not_advance_is_a_storage_error_for_every_reader() {
    let errors = on_a_thread_of_its_own(std::time::Duration::from_secs(10), || async {
        let c = engine_on_a_stalling_feed().await.collection("c").unwrap();
        c.put(&json!({"id": "r"})).await.unwrap();
        let streamed: Result<Vec<_>, _> = c
            .change_stream(Cursor::START, PageOptions::default())
            .try_collect()
            .await;
        let paged = c.changes(Cursor::START, PageOptions::default()).await;
        [streamed.map(drop), paged.map(drop)]
    });
    for error in errors {
        let error = error.unwrap_err();
        assert!(matches!(error, Error::Storage { .. }), "{error:?}");
        assert!(error.to_string().contains("does not advance"), "{error}");
    }
}

#[tokio::test]
async fn import_stores_records_as_given_and_moves_the_clock_past_them() {
    let e = engine("local", ConflictStrategy::Crdt).await;
    let tasks = e.collection("tasks").unwrap();
    let mut events = e.subscribe();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let stamped = |millis: u128| {
        Record::from_json(json!({
            "id": "task-1", "title": "Deploy v2", "status": "in-progress",
            "_version": 1, "_timestamp": millis, "_deleted": false, "_clientId": "seed"
        }))
        .unwrap()
    };
    // Beyond the drift bound an import is refused as a sync is, writing
    // nothing and leaving the clock where it was: taken, it would stamp every
    // later local write that far ahead, and peers would refuse them all.
    let far = stamped(4_000_000_000_000);
    assert!(matches!(
        tasks.import([far.clone()]).await,
        Err(Error::ClockDrift { .. })
    ));
    assert_eq!(tasks.get("task-1").await.unwrap(), None);
    let probe = tasks.put(&json!({"id": "probe"})).await.unwrap();
    assert!(probe.newest_stamp() < far.newest_stamp());
    // A minute ahead is within the bound.
    let seed = stamped(now + 60_000);
    let result = tasks.import([seed.clone()]).await.unwrap();
    assert_eq!(result.added, 1);
    assert_eq!(tasks.get("task-1").await.unwrap(), Some(seed.clone()));
    let kinds: Vec<EventKind> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|event| event.kind())
        .collect();
    assert!(kinds.contains(&EventKind::RecordAdded), "{kinds:?}");

    // Importing it again changes nothing; a local edit still wins over it.
    assert_eq!(tasks.import([seed.clone()]).await.unwrap().unchanged, 1);
    let edited = tasks
        .put(&json!({"id": "task-1", "title": "Deploy v2", "status": "done"}))
        .await
        .unwrap();
    assert!(edited.timestamp() >= seed.timestamp());
    assert!(edited.newest_stamp() > seed.newest_stamp());

    // An import replaces: an older state given later is stored as it is.
    let older = Record::from_json(json!({
        "id": "task-1", "title": "old", "_version": 1, "_timestamp": 5, "_deleted": false, "_clientId": "seed"
    }))
    .unwrap();
    assert_eq!(tasks.import([older.clone()]).await.unwrap().updated, 1);
    assert_eq!(tasks.get("task-1").await.unwrap(), Some(older.clone()));

    // The same id twice is refused before anything is written.
    let err = tasks.import([older.clone(), seed]).await.unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidArgument {
            name: "records",
            ..
        }
    ));
    assert_eq!(tasks.get("task-1").await.unwrap(), Some(older));
}

#[tokio::test]
async fn shared_backends_are_arcs_and_boxes_of_backends() {
    let store = Arc::new(MemoryBackend::new());
    let first = SyncEngine::builder()
        .client_id("first")
        .backend(Arc::clone(&store))
        .build()
        .await
        .unwrap();
    let dynamic: Arc<dyn StorageBackend> = store;
    let second = SyncEngine::builder()
        .client_id("second")
        .backend(Box::new(Arc::clone(&dynamic)) as Box<dyn StorageBackend>)
        .build()
        .await
        .unwrap();
    first.put("c", &json!({"id": "x"})).await.unwrap();
    assert!(second.get("c", "x").await.unwrap().is_some());
    assert_eq!(first.store_id(), second.store_id());
}

/// Eight engines opening one fresh store at once each find or make its id
/// in one step: all agree. The store's calls wait a little, on several
/// threads, so that the opens overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engines_opening_one_fresh_store_at_once_agree_on_its_id() {
    let slowed = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        11,
        0.0,
        std::time::Duration::from_millis(5),
    ));
    let store: Arc<dyn StorageBackend> = slowed.clone();
    // All spawned before the first is awaited: a lazy iterator spawned each
    // open only once the one before it had ended.
    let opens: Vec<_> = (0..8)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                SyncEngine::builder()
                    .client_id(format!("e{n}"))
                    .backend(store)
                    .build()
                    .await
                    .unwrap()
                    .store_id()
                    .to_owned()
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for open in opens {
        ids.insert(open.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(slowed.most_in_flight() >= 2, "the opens did not overlap");
}

#[tokio::test]
async fn a_filesystem_config_without_a_usable_directory_is_an_invalid_config() {
    // Without the `fs` feature every filesystem config is refused as such;
    // with it, these two are refused for their directory.
    let refused_as_expected = |outcome: &syncforge::Result<Arc<dyn StorageBackend>>| {
        if cfg!(feature = "fs") {
            matches!(
                outcome,
                Err(Error::InvalidConfig {
                    option: "directory",
                    ..
                })
            )
        } else {
            matches!(outcome, Err(Error::FeatureDisabled { .. }))
        }
    };
    let empty = syncforge::create_backend(&BackendConfig::Filesystem {
        directory: "".into(),
    })
    .await;
    assert!(refused_as_expected(&empty), "{empty:?}");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let unusable = syncforge::create_backend(&BackendConfig::Filesystem { directory: file }).await;
    assert!(refused_as_expected(&unusable), "{unusable:?}");
}

#[tokio::test]
async fn only_unavailable_errors_are_transient() {
    assert!(Error::unavailable("memory", "down").is_transient());
    for permanent in [
        Error::storage("memory", "permission denied"),
        Error::Precondition {
            collection: "c".into(),
            id: "x".into(),
        },
        Error::invalid_record(Some("x"), "bad"),
        Error::Closed { what: "engine" },
    ] {
        assert!(!permanent.is_transient(), "{permanent}");
    }
}

#[tokio::test]
async fn a_store_holding_the_last_stamp_refuses_local_writes_with_a_typed_error() {
    // Stamps this far ahead reach a store only from outside the engine's
    // checks (another program, a broken clock): planted through the backend.
    let store = MemoryBackend::new();
    let name = syncforge::CollectionName::new("c").unwrap();
    let planted = Record::from_json(json!({
        "id": "planted", "_version": 1, "_timestamp": MAX_STAMP_MILLIS, "_deleted": false, "_clientId": "z"
    }))
    .unwrap();
    store.put(&name, &Write::create(planted)).await.unwrap();
    let open = || {
        SyncEngine::builder()
            .client_id("a")
            .backend(store.clone())
            .build()
    };
    let c = open().await.unwrap().collection("c").unwrap();
    // The clock opened at (MAX, 0, "z"); it can still count, but two
    // writes must never share a stamp, whatever comes.
    let first = c.put(&json!({"id": "one"})).await.unwrap();
    let second = c.put(&json!({"id": "two"})).await.unwrap();
    assert!(second.newest_stamp() > first.newest_stamp());
    assert_eq!(first.timestamp(), MAX_STAMP_MILLIS);
    let last = Stamp::new(MAX_STAMP_MILLIS, u32::MAX, "zz").unwrap();
    let at_the_end = Record::from_parts(
        "end",
        syncforge::core::FieldStates::new(),
        last,
        None,
        [(syncforge::ClientId::new("zz").unwrap(), 1)]
            .into_iter()
            .collect(),
    )
    .unwrap();
    store.put(&name, &Write::create(at_the_end)).await.unwrap();
    let c = open().await.unwrap().collection("c").unwrap();
    let err = c.put(&json!({"id": "three"})).await.unwrap_err();
    assert!(matches!(err, Error::InvalidStamp { .. }), "{err}");
    assert!(c.get("three").await.unwrap().is_none());
}
