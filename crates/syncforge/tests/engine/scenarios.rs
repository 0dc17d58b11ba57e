//! Every scenario of the original README, asserting the outcome it promises —
//! and, for field-level merge, the outcome DESIGN.md promises.

use std::sync::Arc;

use serde_json::json;
use syncforge::{ConflictStrategy, Cursor, ManualTime, PageOptions, Record, SyncEngine};

use crate::support::{engine, engine_at, push_all, snapshot, T0};

#[tokio::test]
async fn quick_start() {
    let engine = SyncEngine::builder().build().await.unwrap();
    let stored = engine
        .put("users", &json!({"id": "1", "name": "Alice", "age": 30}))
        .await
        .unwrap();
    assert_eq!(stored.version(), 1);
    assert_eq!(stored.client_id(), engine.client_id());
    assert_eq!(
        engine.client_id().as_str().len(),
        26,
        "default client id is a ULID"
    );

    let user = engine.get("users", "1").await.unwrap().unwrap();
    assert_eq!(user.get("name"), Some(json!("Alice")));
    let json = user.to_json();
    assert_eq!(json["_version"], 1);
    assert_eq!(json["_deleted"], false);
    assert_eq!(json["_clientId"], engine.client_id().as_str());

    let updated = engine
        .put("users", &json!({"id": "1", "name": "Alice", "age": 31}))
        .await
        .unwrap();
    assert_eq!(updated.version(), 2);
    let deleted = engine.delete("users", "1").await.unwrap().unwrap();
    assert!(deleted.is_deleted());
    assert_eq!(deleted.version(), 3);
    assert!(engine
        .get("users", "1")
        .await
        .unwrap()
        .unwrap()
        .is_deleted());
    engine.close().await.unwrap();
}

#[tokio::test]
async fn multi_device_notes_keep_both_field_edits() {
    let time = Arc::new(ManualTime::new(T0));
    let phone = engine_at("phone", ConflictStrategy::Crdt, &time).await;
    let laptop = engine_at("laptop", ConflictStrategy::Crdt, &time).await;

    phone
        .put(
            "notes",
            &json!({"id": "n1", "title": "Meeting Notes", "body": "Discuss Q3 targets"}),
        )
        .await
        .unwrap();
    let _ = push_all(&phone, &laptop, "notes").await;

    time.advance(10);
    laptop
        .put(
            "notes",
            &json!({"id": "n1", "title": "Q3 Planning Notes", "body": "Discuss Q3 targets"}),
        )
        .await
        .unwrap();
    time.advance(10);
    phone
        .put("notes", &json!({"id": "n1", "title": "Meeting Notes", "body": "Discuss Q3 targets\n- Revenue goals"}))
        .await
        .unwrap();

    let _ = push_all(&laptop, &phone, "notes").await;
    let _ = push_all(&phone, &laptop, "notes").await;

    for device in [&phone, &laptop] {
        let note = device.get("notes", "n1").await.unwrap().unwrap();
        assert_eq!(note.get("title"), Some(json!("Q3 Planning Notes")));
        assert_eq!(
            note.get("body"),
            Some(json!("Discuss Q3 targets\n- Revenue goals"))
        );
    }
    assert_eq!(
        snapshot(&phone, "notes").await,
        snapshot(&laptop, "notes").await
    );
}

fn seed_task() -> Record {
    Record::from_json(json!({
        "id": "task-1", "title": "Deploy v2", "status": "in-progress", "assignee": "alice",
        "_version": 1, "_timestamp": 1000, "_deleted": false, "_clientId": "seed"
    }))
    .unwrap()
}

#[tokio::test]
async fn collaborative_task_editing() {
    let alice = engine("alice", ConflictStrategy::Crdt).await;
    let bob = engine("bob", ConflictStrategy::Crdt).await;
    let _ = alice.sync("tasks", vec![seed_task()]).await.unwrap();
    let _ = bob.sync("tasks", vec![seed_task()]).await.unwrap();

    alice
        .put(
            "tasks",
            &json!({"id": "task-1", "title": "Deploy v2", "status": "done", "assignee": "alice"}),
        )
        .await
        .unwrap();
    bob.put(
        "tasks",
        &json!({"id": "task-1", "title": "Deploy v2", "status": "in-progress", "assignee": "bob"}),
    )
    .await
    .unwrap();

    let result = push_all(&bob, &alice, "tasks").await;
    assert_eq!(result.conflicts.len(), 1);
    let conflict = &result.conflicts[0];
    assert_eq!(conflict.record_id, "task-1");
    assert_eq!(conflict.strategy, ConflictStrategy::Crdt);
    assert_eq!(
        conflict.fields_conflicted,
        vec!["assignee".to_owned(), "status".to_owned()]
    );

    let task = alice.get("tasks", "task-1").await.unwrap().unwrap();
    // Each side changed one field: both edits survive.
    assert_eq!(task.get("status"), Some(json!("done")));
    assert_eq!(task.get("assignee"), Some(json!("bob")));
    assert_eq!(conflict.resolved_record, task);

    let _ = push_all(&alice, &bob, "tasks").await;
    assert_eq!(
        snapshot(&alice, "tasks").await,
        snapshot(&bob, "tasks").await
    );
}

#[tokio::test]
async fn field_service_tablet_works_offline_then_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let tablet = tablet_engine(dir.path()).await;
    let server = engine("server", ConflictStrategy::Crdt).await;
    server
        .put(
            "inspections",
            &json!({"id": "insp-000", "equipmentId": "pump-1", "status": "ok"}),
        )
        .await
        .unwrap();

    // Offline: the technician logs an inspection.
    let last_sync = 0;
    tablet
        .put(
            "inspections",
            &json!({"id": "insp-001", "equipmentId": "pump-7", "status": "needs-repair", "notes": "Bearing noise detected"}),
        )
        .await
        .unwrap();

    // Back at the office: push changes, pull the server's records.
    let changes = tablet
        .get_changes_since("inspections", last_sync)
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
    // The records travel as JSON, as they would over HTTP.
    let wire = serde_json::to_string(&changes).unwrap();
    let _ = server
        .sync(
            "inspections",
            serde_json::from_str::<Vec<Record>>(&wire).unwrap(),
        )
        .await
        .unwrap();
    let server_records =
        serde_json::to_string(&server.get_all("inspections").await.unwrap()).unwrap();
    let result = tablet
        .sync(
            "inspections",
            serde_json::from_str::<Vec<Record>>(&server_records).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(result.added, 1);

    assert_eq!(
        snapshot(&tablet, "inspections").await,
        snapshot(&server, "inspections").await
    );
    tablet.close().await.unwrap();

    // The tablet's data survives a restart.
    let reopened = tablet_engine(dir.path()).await;
    let insp = reopened
        .get("inspections", "insp-001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(insp.get("notes"), Some(json!("Bearing noise detected")));
    assert_eq!(reopened.get_all("inspections").await.unwrap().len(), 2);
}

#[cfg(feature = "fs")]
async fn tablet_engine(dir: &std::path::Path) -> SyncEngine {
    SyncEngine::builder()
        .client_id("technician-42")
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend_config(syncforge::BackendConfig::Filesystem {
            directory: dir.to_owned(),
        })
        .build()
        .await
        .unwrap()
}

/// Without the `fs` feature the tablet keeps its data in a memory store that
/// outlives the engine, which is what a restart sees in this test.
#[cfg(not(feature = "fs"))]
async fn tablet_engine(_dir: &std::path::Path) -> SyncEngine {
    use std::sync::OnceLock;
    static STORE: OnceLock<syncforge::MemoryBackend> = OnceLock::new();
    SyncEngine::builder()
        .client_id("technician-42")
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend(STORE.get_or_init(syncforge::MemoryBackend::new).clone())
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn iot_readings_batch_to_central_store() {
    let time = Arc::new(ManualTime::new(T0));
    let sensor = engine_at("sensor-warehouse-3", ConflictStrategy::Timestamp, &time).await;
    let central = engine_at("central", ConflictStrategy::Timestamp, &time).await;
    let mut last_sync = 0;
    let mut total = 0;
    for hour in 0..3u64 {
        for second in 0..60u64 {
            time.advance(1000);
            let reading = json!({"id": format!("r-{}", time_now(&time)), "temperature": 20.0 + (hour * 60 + second) as f64 / 10.0, "location": "warehouse-3"});
            sensor.put("readings", &reading).await.unwrap();
        }
        let changes = sensor
            .get_changes_since("readings", last_sync)
            .await
            .unwrap();
        assert_eq!(changes.len(), 60, "hour {hour}: exactly the new readings");
        let result = central.sync("readings", changes).await.unwrap();
        assert_eq!(result.added, 60);
        total += result.added;
        last_sync = time_now(&time);
    }
    assert_eq!(total, 180);
    assert_eq!(
        snapshot(&sensor, "readings").await,
        snapshot(&central, "readings").await
    );
}

fn time_now(time: &ManualTime) -> u64 {
    use syncforge::TimeSource;
    time.now_millis()
}

#[tokio::test]
async fn microservice_regions_replicate_both_ways_incrementally() {
    let us = engine("us-east-1", ConflictStrategy::Timestamp).await;
    let eu = engine("eu-west-1", ConflictStrategy::Timestamp).await;
    let (mut us_cursor, mut eu_cursor) = (Cursor::START, Cursor::START);
    for round in 0..5 {
        for i in 0..10 {
            us.put(
                "products",
                &json!({"id": format!("us-{round}-{i}"), "price": i}),
            )
            .await
            .unwrap();
            eu.put(
                "products",
                &json!({"id": format!("eu-{round}-{i}"), "price": i}),
            )
            .await
            .unwrap();
        }
        // Both regions edit one shared product each round.
        us.put(
            "products",
            &json!({"id": "shared", "price": round, "by": "us"}),
        )
        .await
        .unwrap();
        eu.put(
            "products",
            &json!({"id": "shared", "price": round, "by": "eu"}),
        )
        .await
        .unwrap();

        let from_us = us
            .changes("products", us_cursor, PageOptions::default().limit(1000))
            .await
            .unwrap();
        let from_eu = eu
            .changes("products", eu_cursor, PageOptions::default().limit(1000))
            .await
            .unwrap();
        us_cursor = from_us.next;
        eu_cursor = from_eu.next;
        let _ = eu.sync("products", from_us).await.unwrap();
        let _ = us.sync("products", from_eu).await.unwrap();
        assert_eq!(
            snapshot(&us, "products").await,
            snapshot(&eu, "products").await,
            "round {round}"
        );
    }
    assert_eq!(us.get_all("products").await.unwrap().len(), 101);
}

#[tokio::test]
async fn prototyping_concurrent_writes_in_memory() {
    let client1 = engine("client-1", ConflictStrategy::Crdt).await;
    let client2 = engine("client-2", ConflictStrategy::Crdt).await;
    client1
        .put(
            "docs",
            &json!({"id": "d1", "title": "Draft", "author": "Alice"}),
        )
        .await
        .unwrap();
    client2
        .put(
            "docs",
            &json!({"id": "d1", "title": "Final", "author": "Bob"}),
        )
        .await
        .unwrap();

    let result = push_all(&client1, &client2, "docs").await;
    assert_eq!(result.conflicts.len(), 1);
    assert_eq!(
        result.conflicts[0].fields_conflicted,
        vec!["author".to_owned(), "title".to_owned()]
    );
    let _ = push_all(&client2, &client1, "docs").await;
    assert_eq!(
        snapshot(&client1, "docs").await,
        snapshot(&client2, "docs").await
    );
}

#[tokio::test]
async fn two_client_sync() {
    let a = engine("client-a", ConflictStrategy::Timestamp).await;
    let b = engine("client-b", ConflictStrategy::Timestamp).await;
    a.put(
        "tasks",
        &json!({"id": "t1", "title": "Buy groceries", "done": false}),
    )
    .await
    .unwrap();
    a.put(
        "tasks",
        &json!({"id": "t2", "title": "Walk the dog", "done": false}),
    )
    .await
    .unwrap();

    let result = push_all(&a, &b, "tasks").await;
    assert_eq!((result.added, result.updated, result.deleted), (2, 0, 0));
    assert_eq!(b.get_all("tasks").await.unwrap().len(), 2);

    b.put(
        "tasks",
        &json!({"id": "t1", "title": "Buy groceries", "done": true}),
    )
    .await
    .unwrap();
    let result = push_all(&b, &a, "tasks").await;
    assert_eq!((result.added, result.updated, result.unchanged), (0, 1, 1));
    assert!(
        result.conflicts.is_empty(),
        "a newer copy is not a conflict"
    );
    assert_eq!(
        a.get("tasks", "t1").await.unwrap().unwrap().get("done"),
        Some(json!(true))
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn incremental_sync_transfers_only_changes() {
    let time = Arc::new(ManualTime::new(T0));
    let local = engine_at("local", ConflictStrategy::Timestamp, &time).await;
    let remote = engine_at("remote", ConflictStrategy::Timestamp, &time).await;
    for i in 0..50 {
        remote
            .put("tasks", &json!({"id": format!("t{i}"), "n": i}))
            .await
            .unwrap();
    }
    let mut last_sync = 0;
    let first = remote.get_changes_since("tasks", last_sync).await.unwrap();
    assert_eq!(local.sync("tasks", first).await.unwrap().added, 50);
    last_sync = time_now(&time);

    time.advance(5);
    remote
        .put("tasks", &json!({"id": "t3", "n": 333}))
        .await
        .unwrap();
    remote.delete("tasks", "t4").await.unwrap();
    let changes = remote.get_changes_since("tasks", last_sync).await.unwrap();
    assert_eq!(changes.len(), 2);
    let result = local.sync("tasks", changes).await.unwrap();
    assert_eq!((result.added, result.updated, result.deleted), (0, 1, 1));
    assert_eq!(
        snapshot(&local, "tasks").await,
        snapshot(&remote, "tasks").await
    );

    // The same with the sequence-based change feed.
    let page = remote
        .changes("tasks", Cursor::START, PageOptions::default().limit(10))
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 10);
    assert!(page.more);
    let last = remote
        .changes("tasks", page.next, PageOptions::default().limit(1000))
        .await
        .unwrap();
    assert_eq!(page.changes.len() + last.changes.len(), 50);
    assert!(!last.more);
}
