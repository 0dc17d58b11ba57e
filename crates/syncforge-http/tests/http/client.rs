//! HttpPeer's failures: an absent or overloaded server is transient
//! (`Unavailable`), so auto-sync rides out a server that comes and goes;
//! echoes are not downloaded again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use syncforge::http::{Server, ServerOptions};
use syncforge::{ConflictStrategy, Error, MemoryBackend, SyncEngine, SyncPeer};

use crate::support::{memory_engine, peer, FsServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_or_closing_server_is_a_transient_failure() {
    // Nobody listens on a port just released.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let phone = memory_engine("phone").await;
    phone.put("notes", &json!({"id": "n1"})).await.unwrap();
    let error = phone
        .sync_with(&peer(&format!("http://{address}"), None), "notes")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");

    // A server whose store is closed answers 503: also transient.
    let hq = memory_engine("hq").await;
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    hq.close().await.unwrap();
    let error = phone
        .sync_with(&peer(&server.url(), None), "notes")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("503"), "{error}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_does_not_download_its_own_writes() {
    let hq = memory_engine("hq").await;
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let (phone, laptop) = (memory_engine("phone").await, memory_engine("laptop").await);
    let (phone_link, laptop_link) = (peer(&server.url(), None), peer(&server.url(), None));
    for n in 0..250 {
        phone
            .put("notes", &json!({"id": format!("p{n}")}))
            .await
            .unwrap();
    }
    let report = phone.sync_with(&phone_link, "notes").await.unwrap();
    assert_eq!(report.pushed, 250);
    laptop.put("notes", &json!({"id": "l0"})).await.unwrap();
    let _ = laptop.sync_with(&laptop_link, "notes").await.unwrap();

    // The phone pulls the laptop's record, not its own 250 back.
    let report = phone.sync_with(&phone_link, "notes").await.unwrap();
    assert_eq!(report.pulled.total(), 1, "{report:?}");
    assert_eq!(report.pulled.added, 1);
    // A new link (an app restart) remembers no echoes yet; it skips those
    // of its own pushes from then on.
    let fresh = peer(&server.url(), None);
    let cursors = phone.peer_cursors(fresh.peer_id(), "notes").await.unwrap();
    assert!(cursors.pulled > syncforge::Cursor::START);
    phone
        .put("notes", &json!({"id": "p0", "edited": true}))
        .await
        .unwrap();
    let report = phone.sync_with(&fresh, "notes").await.unwrap();
    assert_eq!(report.pushed, 1);
    let report = phone.sync_with(&fresh, "notes").await.unwrap();
    assert_eq!(
        report.pulled.total(),
        0,
        "the pushed edit came back: {report:?}"
    );

    // A clone of the phone's peer remembers none of its echoes: another
    // engine syncing through it gets every record.
    let tablet = memory_engine("tablet").await;
    let report = tablet.sync_with(&fresh.clone(), "notes").await.unwrap();
    assert_eq!(report.pulled.added, 251);
    server.shutdown().await.unwrap();
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_sync_keeps_syncing_across_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FsServer::start(dir.path(), ServerOptions::default()).await;
    let tablet = SyncEngine::builder()
        .client_id("tablet")
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend(MemoryBackend::new())
        .auto_sync(true)
        .auto_sync_interval(Duration::from_secs(1))
        .auto_sync_collections(["inspections"])
        .build()
        .await
        .unwrap();
    tablet.add_auto_sync_peer(Arc::new(peer(&server.url(), None)));

    tablet
        .put(
            "inspections",
            &json!({"id": "insp-001", "status": "needs-repair"}),
        )
        .await
        .unwrap();
    let has = |engine: SyncEngine, id: &'static str| async move {
        engine.get("inspections", id).await.unwrap().is_some()
    };
    eventually("the server has insp-001", async || {
        has(server.engine().clone(), "insp-001").await
    })
    .await;

    // The server goes away; the tablet keeps working, its windows fail.
    server.stop().await;
    let mut errors = tablet.subscribe();
    tablet
        .put("inspections", &json!({"id": "insp-002", "status": "ok"}))
        .await
        .unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(syncforge::SyncEvent::SyncError { error, .. }) = errors.recv().await {
                return error;
            }
        }
    })
    .await
    .expect("a window failed while the server was down");
    assert!(failed.is_transient(), "{failed}");

    // Back on the same port: the next windows push and pull again.
    server.restart().await;
    eventually("the server has insp-002", async || {
        has(server.engine().clone(), "insp-002").await
    })
    .await;
    server
        .engine()
        .put(
            "inspections",
            &json!({"id": "insp-003", "status": "assigned"}),
        )
        .await
        .unwrap();
    eventually("the tablet has insp-003", async || {
        has(tablet.clone(), "insp-003").await
    })
    .await;
    tablet.close().await.unwrap();
    server.stop().await;
}

/// A push and a feed page big enough to be encoded and decoded on several
/// threads arrive whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pushes_and_pages_arrive_whole_and_in_order() {
    let hq = memory_engine("hq").await;
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let phone = memory_engine("phone").await;
    for n in 0..1_500 {
        phone
            .put(
                "notes",
                &json!({"id": format!("n{n:04}"), "text": format!("note \"{n}\"\n"), "n": n}),
            )
            .await
            .unwrap();
    }
    let mut sent = phone.get_all("notes").await.unwrap();
    let link = peer(&server.url(), None);
    let answer = link.push_records("notes", sent.clone()).await.unwrap();
    assert_eq!(answer.added, 1_500);

    let notes = syncforge::CollectionName::new("notes").unwrap();
    let page = SyncPeer::pull(
        &peer(&server.url(), None),
        &notes,
        syncforge::Cursor::START,
        2_000.try_into().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(page.changes.len(), 1_500);
    assert!(page
        .changes
        .windows(2)
        .all(|pair| pair[0].cursor < pair[1].cursor));
    let mut pulled: Vec<_> = page
        .changes
        .into_iter()
        .map(|change| change.record)
        .collect();
    pulled.sort_by(|a, b| a.id().cmp(b.id()));
    sent.sort_by(|a, b| a.id().cmp(b.id()));
    assert_eq!(pulled, sent);
    server.shutdown().await.unwrap();
}

/// An answer larger than the peer's bound fails the call, whatever the
/// server sent, instead of being read whole into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_past_the_peers_bound_fails_the_call() {
    let hq = memory_engine("hq").await;
    for n in 0..50 {
        hq.put(
            "notes",
            &json!({"id": format!("n{n}"), "text": "x".repeat(100)}),
        )
        .await
        .unwrap();
    }
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let phone = memory_engine("phone").await;
    let small = syncforge::http::HttpPeer::builder(server.url())
        .max_response_bytes(4 * 1024)
        .retries(0, Duration::from_millis(1))
        .build()
        .unwrap();
    let error = phone.sync_with(&small, "notes").await.unwrap_err();
    assert!(matches!(error, Error::PeerProtocol { .. }), "{error:?}");
    assert!(error.to_string().contains("max_response_bytes"), "{error}");
    assert!(phone.get_all("notes").await.unwrap().is_empty());
    let report = phone
        .sync_with(&peer(&server.url(), None), "notes")
        .await
        .unwrap();
    assert_eq!(report.pulled.added, 50, "{report:?}");
    server.shutdown().await.unwrap();
}
