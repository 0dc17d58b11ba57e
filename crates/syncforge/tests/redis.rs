//! The engine on the Redis backend (feature `redis`), against the test
//! server `cargo xtask ci` starts (`SYNCFORGE_TEST_REDIS_URL`; a plain
//! `cargo test` falls back to 127.0.0.1:6379). Each test uses a key prefix
//! of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use syncforge::{
    BackendConfig, ConflictStrategy, Cursor, PageOptions, RedisBackend, StorageBackend, SyncEngine,
};
use syncforge_testkit::faults::{FaultyBackend, Operation};
use syncforge_testkit::services::{address, available};

const ENV: &str = "SYNCFORGE_TEST_REDIS_URL";

/// The test server's URL with a fresh key prefix, or `None` (skipped).
async fn server(tag: &str) -> Option<String> {
    let base = address(ENV, "redis://127.0.0.1:6379/0");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let url = format!("{base}?prefix=sfe-{tag}-{}-{nanos:x}", std::process::id());
    let answered = match RedisBackend::connect_url(&url).await {
        Ok(store) => {
            syncforge::StorageBackend::close(&store).await.unwrap();
            true
        }
        Err(_) => false,
    };
    available("redis", ENV, &base, answered).then_some(url)
}

async fn engine(client: &str, url: &str) -> SyncEngine {
    SyncEngine::builder()
        .client_id(client)
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend_config(BackendConfig::Redis {
            url: url.to_owned(),
        })
        .build()
        .await
        .unwrap()
}

/// A put of a new record is one call to Redis — the insert script, which
/// reads and writes at once — and a put of a stored record two: that script
/// answers the stored record, and the conditional write follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_of_a_new_record_is_one_call() {
    let Some(url) = server("insert").await else {
        return;
    };
    let redis: Arc<dyn StorageBackend> = Arc::new(RedisBackend::connect_url(&url).await.unwrap());
    let counted = Arc::new(FaultyBackend::new(redis, 0, 0.0, Duration::ZERO));
    let shared: Arc<dyn StorageBackend> = counted.clone();
    let putter = SyncEngine::builder()
        .client_id("solo")
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend(shared)
        .build()
        .await
        .unwrap();
    let calls = || {
        [
            Operation::InsertIfAbsent,
            Operation::Get,
            Operation::PutBatch,
        ]
        .map(|op| counted.calls(op))
    };
    let added = putter
        .put("notes", &json!({"id": "n1", "v": 1}))
        .await
        .unwrap();
    assert_eq!(calls(), [1, 0, 0]);
    let updated = putter
        .put("notes", &json!({"id": "n1", "v": 2}))
        .await
        .unwrap();
    assert_eq!(calls(), [2, 0, 1]);
    assert_eq!((added.version(), updated.version()), (1, 2));
    let reader = engine("reader", &url).await;
    assert_eq!(reader.get("notes", "n1").await.unwrap(), Some(updated));
    reader.close().await.unwrap();
    putter.close().await.unwrap();
}

/// Two engines on their own connections put the same 50 records 500 times
/// each, at once. Every put reads, merges and writes conditionally, so each
/// record's version — the number of writes it has seen — counts every put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_putting_the_same_records_lose_no_write() {
    const RECORDS: usize = 50;
    const PUTS: usize = 500;
    let Some(url) = server("puts").await else {
        return;
    };
    let mut tasks = Vec::new();
    for name in ["east", "west"] {
        let engine = engine(name, &url).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..PUTS {
                let id = format!("r{:02}", i % RECORDS);
                engine
                    .put("hammer", &json!({"id": id, "by": name, "round": i}))
                    .await
                    .unwrap();
            }
            engine.close().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let reader = engine("reader", &url).await;
    let all = reader.get_all("hammer").await.unwrap();
    assert_eq!(all.len(), RECORDS);
    for record in &all {
        assert_eq!(
            record.version(),
            (2 * PUTS / RECORDS) as u64,
            "{} lost a write",
            record.id()
        );
    }
    reader.close().await.unwrap();
}

/// Two regions, each with its own store (prefix), exchange changes through
/// the change feed; edits of different fields on each side both survive,
/// the replicas converge, and a store reopened after `close` has kept
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_converge_through_the_change_feed() {
    let (Some(east_url), Some(west_url)) = (server("east").await, server("west").await) else {
        return;
    };
    let east = engine("us-east-1", &east_url).await;
    let west = engine("eu-west-1", &west_url).await;
    for i in 0..100 {
        east.put(
            "catalog",
            &json!({"id": format!("p{i:03}"), "title": format!("Product {i}"), "price": i}),
        )
        .await
        .unwrap();
    }
    let mut east_cursor = Cursor::START;
    let mut west_cursor = Cursor::START;
    let options = PageOptions::default().limit(1_000);
    let page = east.changes("catalog", east_cursor, options).await.unwrap();
    east_cursor = page.next;
    assert_eq!(west.sync("catalog", page).await.unwrap().added, 100);

    east.put(
        "catalog",
        &json!({"id": "p007", "title": "Lamp", "price": 7}),
    )
    .await
    .unwrap();
    west.put(
        "catalog",
        &json!({"id": "p007", "title": "Product 7", "price": 70}),
    )
    .await
    .unwrap();
    let page = east.changes("catalog", east_cursor, options).await.unwrap();
    assert_eq!(west.sync("catalog", page).await.unwrap().updated, 1);
    let page = west.changes("catalog", west_cursor, options).await.unwrap();
    west_cursor = page.next;
    let back = east.sync("catalog", page).await.unwrap();
    assert_eq!((back.updated, back.unchanged), (1, 99));
    assert!(west_cursor > Cursor::START);

    let on_east = east.get("catalog", "p007").await.unwrap().unwrap();
    let on_west = west.get("catalog", "p007").await.unwrap().unwrap();
    assert_eq!(on_east.to_json_string(), on_west.to_json_string());
    assert_eq!(on_east.get("title"), Some(json!("Lamp")));
    assert_eq!(on_east.get("price"), Some(json!(70)));

    east.close().await.unwrap();
    let reopened = engine("us-east-1", &east_url).await;
    assert_eq!(reopened.get_all("catalog").await.unwrap().len(), 100);
    let later = reopened
        .put(
            "catalog",
            &json!({"id": "p001", "title": "Desk", "price": 1}),
        )
        .await
        .unwrap();
    assert!(
        later.newest_stamp() > on_east.newest_stamp(),
        "the reopened engine's clock starts after the newest stamp stored"
    );
    reopened.close().await.unwrap();
    west.close().await.unwrap();
}
