//! Three clients (memory, memory, filesystem) and a server (filesystem
//! store) converge byte-identically through HTTP: the README's stories, then
//! seeded random edits with random offline periods while the server stops
//! and starts again.

use serde_json::{json, Map, Value};
use syncforge::{Error, SyncEngine, SyncPeer};

use crate::support::{fs_engine, memory_engine, peer, snapshot, FsServer};

const COLLECTIONS: [&str; 3] = ["notes", "tasks", "random"];

/// Syncs `engine` with the server, returning what moved.
async fn sync(engine: &SyncEngine, server: &impl SyncPeer, collection: &str) -> (usize, usize) {
    let report = engine.sync_with(server, collection).await.unwrap();
    (report.pulled.total(), report.pushed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_stories_replay_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = FsServer::start(dir.path(), Default::default()).await;
    let (phone, laptop) = (memory_engine("phone").await, memory_engine("laptop").await);
    let (phone_link, laptop_link) = (peer(&server.url(), None), peer(&server.url(), None));

    // Multi-device: the phone drafts, the laptop picks it up, both edit
    // different fields offline, and both edits survive.
    phone
        .put(
            "notes",
            &json!({"id": "n1", "title": "Meeting Notes", "body": "Discuss Q3 targets"}),
        )
        .await
        .unwrap();
    sync(&phone, &phone_link, "notes").await;
    sync(&laptop, &laptop_link, "notes").await;
    laptop
        .put(
            "notes",
            &json!({"id": "n1", "title": "Q3 Planning Notes", "body": "Discuss Q3 targets"}),
        )
        .await
        .unwrap();
    phone
        .put("notes", &json!({"id": "n1", "title": "Meeting Notes", "body": "Discuss Q3 targets\n- Revenue goals"}))
        .await
        .unwrap();
    sync(&laptop, &laptop_link, "notes").await;
    sync(&phone, &phone_link, "notes").await;
    sync(&laptop, &laptop_link, "notes").await;
    let note = laptop.get("notes", "n1").await.unwrap().unwrap();
    assert_eq!(note.get("title"), Some(json!("Q3 Planning Notes")));
    assert_eq!(
        note.get("body"),
        Some(json!("Discuss Q3 targets\n- Revenue goals"))
    );

    // Collaborative: Alice marks the task done while Bob reassigns it.
    let (alice, bob) = (phone, laptop);
    let (alice_link, bob_link) = (phone_link, laptop_link);
    alice
        .put("tasks", &json!({"id": "task-1", "title": "Deploy v2", "status": "in-progress", "assignee": "alice"}))
        .await
        .unwrap();
    sync(&alice, &alice_link, "tasks").await;
    sync(&bob, &bob_link, "tasks").await;
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
    sync(&bob, &bob_link, "tasks").await;
    let report = alice.sync_with(&alice_link, "tasks").await.unwrap();
    assert_eq!(
        report.pulled.conflicts.len(),
        1,
        "concurrent edits are a conflict"
    );
    sync(&bob, &bob_link, "tasks").await;
    let task = bob.get("tasks", "task-1").await.unwrap().unwrap();
    assert_eq!(task.get("status"), Some(json!("done")));
    assert_eq!(task.get("assignee"), Some(json!("bob")));

    for collection in ["notes", "tasks"] {
        let on_server = snapshot(server.engine(), collection).await;
        assert_eq!(snapshot(&alice, collection).await, on_server);
        assert_eq!(snapshot(&bob, collection).await, on_server);
    }
}

/// One client: its engine, its link to the server, and where its store lives.
struct Client {
    engine: SyncEngine,
    link: syncforge::http::HttpPeer,
    /// The filesystem client's directory (reopened mid-run).
    dir: Option<std::path::PathBuf>,
}

/// A random edit: put a new or changed record (one field changed at a
/// time, so concurrent edits of other fields merge), or delete one.
async fn random_edit(engine: &SyncEngine, rng: &mut fastrand::Rng) {
    let collection = COLLECTIONS[rng.usize(..COLLECTIONS.len())];
    let id = format!("r{}", rng.usize(..25));
    if rng.u8(..10) == 0 {
        engine.delete(collection, id.as_str()).await.unwrap();
        return;
    }
    let mut content = match engine.get(collection, id.as_str()).await.unwrap() {
        Some(record) if !record.is_deleted() => record.content(),
        _ => Map::new(),
    };
    content.insert("id".to_owned(), Value::from(id));
    let field = ["title", "body", "count", "tags"][rng.usize(..4)];
    let value = match field {
        "count" => json!(rng.u32(..1000)),
        "tags" => json!([format!("t{}", rng.u8(..5)), rng.bool()]),
        _ => json!(format!(
            "{}-{}",
            engine.client_id().as_str(),
            rng.u32(..10_000)
        )),
    };
    content.insert(field.to_owned(), value);
    engine
        .put(collection, &Value::Object(content))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_converge_through_offline_periods_and_a_server_restart() {
    let server_dir = tempfile::tempdir().unwrap();
    let tablet_dir = tempfile::tempdir().unwrap();
    let mut server = FsServer::start(server_dir.path(), Default::default()).await;
    let url = server.url();
    let mut clients = vec![
        Client {
            engine: memory_engine("phone").await,
            link: peer(&url, None),
            dir: None,
        },
        Client {
            engine: memory_engine("laptop").await,
            link: peer(&url, None),
            dir: None,
        },
        Client {
            engine: fs_engine("tablet", tablet_dir.path()).await,
            link: peer(&url, None),
            dir: Some(tablet_dir.path().to_owned()),
        },
    ];
    let mut rng = fastrand::Rng::with_seed(0x5EED_0014);
    let mut offline = [false; 3];
    let mut refused_while_down = 0;
    for round in 0..40 {
        // The server goes away for a stretch in the middle of the run.
        if round == 15 {
            server.stop().await;
        }
        if round == 24 {
            server.restart().await;
        }
        for (index, client) in clients.iter_mut().enumerate() {
            // Each client drops off and comes back at random.
            if rng.u8(..5) == 0 {
                offline[index] = !offline[index];
            }
            for _ in 0..rng.usize(..4) {
                random_edit(&client.engine, &mut rng).await;
            }
            if offline[index] || rng.u8(..3) == 0 {
                continue;
            }
            let collection = COLLECTIONS[rng.usize(..COLLECTIONS.len())];
            match client.engine.sync_with(&client.link, collection).await {
                Ok(_) => assert!(server.is_running()),
                Err(error) => {
                    assert!(
                        !server.is_running(),
                        "sync failed with the server up: {error}"
                    );
                    assert!(
                        matches!(error, Error::Unavailable { .. }),
                        "an absent server is a transient failure, not {error:?}"
                    );
                    refused_while_down += 1;
                }
            }
        }
        // The tablet's app restarts on its filesystem store now and then.
        if round % 10 == 7 {
            let tablet = &mut clients[2];
            tablet.engine.close().await.unwrap();
            let dir = tablet.dir.clone().unwrap();
            tablet.engine = fs_engine("tablet", &dir).await;
        }
    }
    assert!(
        refused_while_down > 0,
        "some syncs ran into the stopped server"
    );

    // Everyone online: sync until a whole pass moves nothing. Echo skipping
    // makes that pass pull nothing at all, not even unchanged records.
    let mut quiet = false;
    for _ in 0..6 {
        let mut moved = 0;
        for client in &clients {
            for collection in COLLECTIONS {
                let (pulled, pushed) = sync(&client.engine, &client.link, collection).await;
                moved += pulled + pushed;
            }
        }
        if moved == 0 {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "syncing kept moving records");
    for collection in COLLECTIONS {
        let on_server = snapshot(server.engine(), collection).await;
        assert!(!on_server.is_empty(), "{collection} was written");
        for client in &clients {
            assert_eq!(
                snapshot(&client.engine, collection).await,
                on_server,
                "{} differs from the server in {collection}",
                client.engine.client_id().as_str()
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_back_on_a_fresh_store_gets_everything_again() {
    let first_dir = tempfile::tempdir().unwrap();
    let mut server = FsServer::start(first_dir.path(), Default::default()).await;
    let phone = memory_engine("phone").await;
    let link = peer(&server.url(), None);
    for n in 0..30 {
        phone
            .put("notes", &json!({"id": format!("n{n}"), "n": n}))
            .await
            .unwrap();
    }
    sync(&phone, &link, "notes").await;
    let first_feed = link.feed_id().await.unwrap();

    // The server comes back on the same port with an empty store.
    server.stop().await;
    let second_dir = tempfile::tempdir().unwrap();
    server.dir = second_dir.path().to_owned();
    server.restart().await;
    assert_ne!(link.feed_id().await.unwrap(), first_feed);

    let (_, pushed) = sync(&phone, &link, "notes").await;
    assert_eq!(pushed, 30, "every record is pushed to the fresh store");
    assert_eq!(
        snapshot(server.engine(), "notes").await,
        snapshot(&phone, "notes").await
    );
    server.stop().await;
}
