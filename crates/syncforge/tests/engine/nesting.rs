//! The nesting limit of record values through whole engines (issue 13):
//! `put` refuses a field nested past [`MAX_NESTING_DEPTH`] with a typed
//! error naming record and field and writes nothing, on every store; a value
//! nested 10,000 deep is refused inside a spawned task on a default worker
//! stack instead of aborting the process; records from a peer nested past
//! the limit never reach `sync`.

use serde_json::{json, Value};
use syncforge::core::dismantle;
use syncforge::{
    ConflictStrategy, Cursor, Error, MemoryBackend, PageOptions, Record, StorageBackend,
    SyncEngine, MAX_NESTING_DEPTH,
};
use syncforge_backend_fs::FsBackend;
use syncforge_testkit::hostile::nested_arrays;

/// A document whose field `deep` nests `levels` deep.
fn doc(levels: usize) -> Value {
    let mut doc = json!({"id": "n1", "title": "t"});
    doc["deep"] = nested_arrays(levels);
    doc
}

const REFUSAL: &str = "invalid record \"n1\", field `deep`: nests arrays and objects more than 64 levels deep, the limit for a record's values";

async fn engine_over(backend: impl StorageBackend + 'static) -> SyncEngine {
    SyncEngine::builder()
        .client_id("nest")
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend(backend)
        .build()
        .await
        .unwrap()
}

/// Whether anything was written to `collection` at all.
async fn written(engine: &SyncEngine, collection: &str) -> bool {
    !engine
        .changes(collection, Cursor::START, PageOptions::default().limit(10))
        .await
        .unwrap()
        .is_empty()
}

/// The limit and one past it, through `put`, on `engine`'s store.
async fn limit_and_one_past(engine: &SyncEngine) {
    let refused = engine
        .put("past", &doc(MAX_NESTING_DEPTH + 1))
        .await
        .unwrap_err();
    assert_eq!(refused.to_string(), REFUSAL);
    assert!(
        matches!(&refused, Error::InvalidRecord { id: Some(id), field: Some(field), .. } if id == "n1" && field == "deep"),
        "{refused:?}"
    );
    assert!(
        !written(engine, "past").await,
        "a refused put wrote nothing"
    );
    // The record the issue found unreadable on the filesystem: 127 deep.
    let err = engine.put("past", &doc(126)).await.unwrap_err();
    assert_eq!(err.to_string(), REFUSAL);
    assert!(!written(engine, "past").await);

    let stored = engine.put("limit", &doc(MAX_NESTING_DEPTH)).await.unwrap();
    let read = engine.get("limit", "n1").await.unwrap().unwrap();
    assert_eq!(read, stored);
    // Its text parses again, so it can travel to a peer.
    let back: Record = serde_json::from_str(&stored.to_json_string()).unwrap();
    assert_eq!(back, stored);
    assert_eq!(engine.get_all("limit").await.unwrap(), vec![stored]);
}

#[tokio::test]
async fn put_refuses_values_past_the_limit_on_the_memory_store() {
    limit_and_one_past(&engine_over(MemoryBackend::new()).await).await;
}

#[tokio::test]
async fn put_refuses_values_past_the_limit_on_the_filesystem_store() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_over(FsBackend::open(dir.path()).await.unwrap()).await;
    limit_and_one_past(&engine).await;
    // A later put of the id and a reopen still work: nothing unreadable was
    // left behind.
    engine.put("past", &doc(2)).await.unwrap();
    engine.close().await.unwrap();
    let reopened = engine_over(FsBackend::open(dir.path()).await.unwrap()).await;
    assert_eq!(reopened.get_all("past").await.unwrap().len(), 1);
    assert_eq!(reopened.get_all("limit").await.unwrap().len(), 1);
}

/// Issue 13, item 2: `put` of a value nested 10,000 deep in a spawned task
/// aborted the process with a stack overflow (converting it to JSON). Now
/// it is refused before anything recurses into it; the task's worker has
/// the default 2 MiB stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_of_a_value_nested_10000_deep_in_a_spawned_task_is_refused() {
    let engine = engine_over(MemoryBackend::new()).await;
    let task = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let value = doc(10_000);
            let outcome = engine.put("deep", &value).await;
            dismantle(value);
            outcome.map(|_| ())
        })
    };
    let refused = task.await.expect("the task ends").unwrap_err();
    assert_eq!(refused.to_string(), REFUSAL);
    assert!(!written(&engine, "deep").await);

    // A derived type nesting by recursion, the id after the field at fault.
    #[derive(serde::Serialize)]
    struct Node {
        next: Option<Box<Node>>,
    }
    #[derive(serde::Serialize)]
    struct Doc {
        deep: Node,
        id: String,
    }
    let task = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut deep = Node { next: None };
            for _ in 0..10_000 {
                deep = Node {
                    next: Some(Box::new(deep)),
                };
            }
            let doc = Doc {
                deep,
                id: "n1".to_owned(),
            };
            let outcome = engine.put("deep", &doc).await;
            let mut node = doc.deep;
            while let Some(next) = node.next.take() {
                node = *next;
            }
            outcome.map(|_| ())
        })
    };
    let refused = task.await.expect("the task ends").unwrap_err();
    assert_eq!(refused.to_string(), REFUSAL);
    assert!(!written(&engine, "deep").await);
}

/// A peer's records arrive as text (HTTP, files, exports): one nested past
/// the limit is refused as it is read, naming it, so it never reaches
/// `sync`; a record at the limit syncs and its text parses again.
#[tokio::test]
async fn records_from_a_peer_past_the_limit_never_reach_sync() {
    let peer = engine_over(MemoryBackend::new()).await;
    let local = engine_over(MemoryBackend::new()).await;
    let at_limit = peer.put("notes", &doc(MAX_NESTING_DEPTH)).await.unwrap();
    let text = at_limit.to_json_string();
    let received: Record = serde_json::from_str(&text).unwrap();
    let result = local.sync("notes", vec![received]).await.unwrap();
    assert_eq!(result.added, 1);
    assert_eq!(
        local
            .get("notes", "n1")
            .await
            .unwrap()
            .unwrap()
            .to_json_string(),
        text
    );

    let mut deeper = at_limit.to_json();
    deeper["deep"] = nested_arrays(MAX_NESTING_DEPTH + 1);
    let err = serde_json::from_str::<Record>(&deeper.to_string()).unwrap_err();
    assert!(err.to_string().starts_with(REFUSAL), "{err}");
    let err = Record::from_json(deeper).unwrap_err();
    assert_eq!(err.to_string(), REFUSAL);
}
