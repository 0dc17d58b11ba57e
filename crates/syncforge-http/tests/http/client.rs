//! HttpPeer's failures: an absent or overloaded server is transient
//! (`Unavailable`), so auto-sync rides out a server that comes and goes;
//! echoes are not downloaded again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use syncforge::http::{Server, ServerOptions};
use syncforge::{ConflictStrategy, Error, MemoryBackend, Record, SyncEngine, SyncPeer};

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

/// An engine whose store was replaced while the app kept its link (a
/// Redis restarted without persistence): the link still left the writes the
/// old store had pushed out of its pulls, and the new store never got them
/// back. Restarting its cursors, the engine tells the link to forget them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_store_gets_its_own_writes_back() {
    let hq = memory_engine("hq").await;
    let server = Server::bind(hq, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let link = peer(&server.url(), None);
    let phone = memory_engine("phone").await;
    phone.put("notes", &json!({"id": "x"})).await.unwrap();
    let report = phone.sync_with(&link, "notes").await.unwrap();
    assert_eq!(report.pushed, 1);

    // The phone's store is replaced; the app keeps its link.
    let restarted = memory_engine("phone").await;
    let report = restarted.sync_with(&link, "notes").await.unwrap();
    assert_eq!(report.pulled.added, 1, "{report:?}");
    assert!(restarted.get("notes", "x").await.unwrap().is_some());
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
    tablet
        .add_auto_sync_peer(Arc::new(peer(&server.url(), None)))
        .unwrap();

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

/// A record larger than the server takes in one request, which the server
/// holds (its own application wrote it) and a client pulled and edited,
/// failed the client's push before anything after it was sent, and so did
/// every later sync of the collection. The peer refuses it, the sync
/// reports it and moves past it, and the client's other changes reach the
/// server. It is offered again once by each engine opened later on the store, so
/// once the server takes larger requests, it goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_to_push_holds_back_no_other_change() {
    let hq = memory_engine("hq").await;
    let blob = "x".repeat(100_000);
    hq.put("notes", &json!({"id": "big", "blob": blob}))
        .await
        .unwrap();
    let small = ServerOptions::default().max_body_bytes(64 * 1024);
    let server = Server::bind(hq.clone(), "127.0.0.1:0", small)
        .await
        .unwrap();
    let store = MemoryBackend::new();
    let tablet_on = |store: MemoryBackend| async move {
        SyncEngine::builder()
            .client_id("tablet")
            .conflict_strategy(ConflictStrategy::Crdt)
            .backend(store)
            .build()
            .await
            .unwrap()
    };
    let tablet = tablet_on(store.clone()).await;
    let hq_peer = peer(&server.url(), None);
    let pulled = tablet.pull_from(&hq_peer, "notes").await.unwrap();
    assert_eq!(pulled.pulled.added, 1);
    tablet
        .put("notes", &json!({"id": "big", "blob": blob, "edited": true}))
        .await
        .unwrap();
    tablet.put("notes", &json!({"id": "n1"})).await.unwrap();

    let refused_ids = |report: &syncforge::PeerSyncReport| -> Vec<String> {
        report.refused.iter().map(|r| r.id.to_string()).collect()
    };
    let report = tablet.sync_with(&hq_peer, "notes").await.unwrap();
    assert_eq!(refused_ids(&report), ["big"]);
    assert!(
        report.refused[0]
            .reason
            .contains("more than the server accepts"),
        "{:?}",
        report.refused
    );
    assert_eq!(report.pushed, 1);
    assert!(hq.get("notes", "n1").await.unwrap().is_some());
    // The engine that saw the refusal does not offer it again.
    let quiet = tablet.sync_with(&hq_peer, "notes").await.unwrap();
    assert_eq!((quiet.refused.len(), quiet.pushed), (0, 0));
    // Pushed as records (not by a sync), a record that large still fails.
    let big = tablet.get("notes", "big").await.unwrap().unwrap();
    let error = hq_peer.push_records("notes", vec![big]).await.unwrap_err();
    assert!(matches!(error, Error::InvalidRecord { .. }), "{error:?}");
    server.shutdown().await.unwrap();
    tablet.close().await.unwrap();

    // The same server, now taking larger requests, and the tablet opened
    // again: the edit goes through.
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let hq_peer = peer(&server.url(), None);
    let tablet = tablet_on(store).await;
    let taken = tablet.sync_with(&hq_peer, "notes").await.unwrap();
    assert_eq!((taken.refused.len(), taken.pushed), (0, 1));
    let stored = hq.get("notes", "big").await.unwrap().unwrap();
    assert_eq!(stored.get("edited"), Some(json!(true)));
    let after = tablet.sync_with(&hq_peer, "notes").await.unwrap();
    assert_eq!((after.refused.len(), after.pushed), (0, 0));
    server.shutdown().await.unwrap();
}

/// A record larger than the server takes, pushed by a fresh peer: it fails
/// with `InvalidRecord` naming the record, every time. It failed with
/// `Storage` quoting the 413 while `push_records` sent it unasked; it reads
/// the server's limits first now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_over_the_servers_bound_fails_naming_the_record() {
    let hq = memory_engine("hq").await;
    let small = ServerOptions::default().max_body_bytes(64 * 1024);
    let server = Server::bind(hq.clone(), "127.0.0.1:0", small)
        .await
        .unwrap();
    let tablet = memory_engine("tablet").await;
    // A record of a few times the server's bound, and one of many times
    // it: the server refused the larger one before reading its body, and
    // its client, still sending, found the connection cut instead of the
    // refusal and took it for a transient failure.
    for size in [200_000, 4_000_000] {
        tablet
            .put("notes", &json!({"id": "big", "blob": "x".repeat(size)}))
            .await
            .unwrap();
        let big = tablet.get("notes", "big").await.unwrap().unwrap();
        let hq_peer = peer(&server.url(), None);
        for _ in 0..10 {
            let error = hq_peer
                .push_records("notes", vec![big.clone()])
                .await
                .unwrap_err();
            assert!(
                matches!(&error, Error::InvalidRecord { id: Some(id), .. } if id == "big"),
                "{size} bytes: {error:?}"
            );
        }
    }
    assert!(hq.get("notes", "big").await.unwrap().is_none());
    server.shutdown().await.unwrap();
}

/// A record whose request is exactly the server's bound goes through; one
/// byte more is refused by the client before it is sent, as the server
/// would refuse it. The client counted two bytes more of envelope than a
/// request has, and refused the two largest records the server takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_request_is_exactly_the_bound_is_pushed() {
    const BOUND: usize = 4096;
    // `{"records":[` and `]}`.
    const ENVELOPE: usize = 14;
    let hq = memory_engine("hq").await;
    let server = Server::bind(
        hq.clone(),
        "127.0.0.1:0",
        ServerOptions::default().max_body_bytes(BOUND),
    )
    .await
    .unwrap();
    let tablet = memory_engine("tablet").await;
    let json_len = |record: &Record| {
        let mut text = String::new();
        record.write_json(&mut text);
        text.len()
    };
    // The blob is the only part whose length varies: sized so that the
    // record's JSON is `len` bytes.
    let sized = |id: &'static str, len: usize| {
        let tablet = tablet.clone();
        async move {
            tablet
                .put("notes", &json!({"id": id, "blob": ""}))
                .await
                .unwrap();
            let empty = tablet.get("notes", id).await.unwrap().unwrap();
            let blob = "x".repeat(len - json_len(&empty));
            tablet
                .put("notes", &json!({"id": id, "blob": blob}))
                .await
                .unwrap();
            let record = tablet.get("notes", id).await.unwrap().unwrap();
            assert_eq!(json_len(&record), len, "{record:?}");
            record
        }
    };
    let fits = sized("fits", BOUND - ENVELOPE).await;
    let over = sized("over", BOUND - ENVELOPE + 1).await;
    let hq_peer = peer(&server.url(), None);
    let pushed = hq_peer.push_records("notes", vec![fits]).await.unwrap();
    assert_eq!(pushed.added, 1, "{pushed:?}");
    let error = hq_peer.push_records("notes", vec![over]).await.unwrap_err();
    assert!(
        matches!(&error, Error::InvalidRecord { id: Some(id), .. } if id == "over"),
        "{error:?}"
    );
    assert!(hq.get("notes", "fits").await.unwrap().is_some());
    assert!(hq.get("notes", "over").await.unwrap().is_none());
    server.shutdown().await.unwrap();
}

/// `push_records` on a fresh peer reads the server's limits before it
/// sends: it refused a record over the 16 MiB it assumed, which a server
/// configured for larger bodies takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_takes_the_servers_own_bound_not_an_assumed_one() {
    let hq = memory_engine("hq").await;
    let large = ServerOptions::default().max_body_bytes(24 * 1024 * 1024);
    let server = Server::bind(hq.clone(), "127.0.0.1:0", large)
        .await
        .unwrap();
    let tablet = memory_engine("tablet").await;
    let blob = "x".repeat(17 * 1024 * 1024);
    tablet
        .put("notes", &json!({"id": "big", "blob": blob}))
        .await
        .unwrap();
    let big = tablet.get("notes", "big").await.unwrap().unwrap();
    let answer = peer(&server.url(), None)
        .push_records("notes", vec![big])
        .await
        .unwrap();
    assert_eq!(answer.added, 1, "{answer:?}");
    let stored = hq.get("notes", "big").await.unwrap().unwrap();
    assert_eq!(stored.get("blob"), Some(json!(blob)));
    server.shutdown().await.unwrap();
}

/// A server of `hq` whose answers are at most 256 KiB, and the count of the
/// changes its feed reads return.
async fn counting_server(hq: SyncEngine) -> (Server, Arc<std::sync::atomic::AtomicUsize>) {
    let replica = crate::support::InstrumentedReplica::new(hq);
    let scanned = replica.scanned.clone();
    let options = ServerOptions::default().max_body_bytes(256 * 1024);
    let server = Server::bind(replica, "127.0.0.1:0", options).await.unwrap();
    (server, scanned)
}

/// Puts the records `make` makes of each of `numbers` into `collection`.
async fn put_each(
    engine: &SyncEngine,
    collection: &str,
    numbers: std::ops::Range<usize>,
    make: impl Fn(usize) -> serde_json::Value,
) {
    for n in numbers {
        engine.put(collection, &make(n)).await.unwrap();
    }
}

/// A feed page of large records read its whole `limit` from the store (up
/// to 10,000 records) and then sent the few that fit in a body, so a pull of
/// large records read the rest of its collection again for every page. The
/// store is now read in rounds sized by what the body can still take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_records_reads_little_more_than_it_sends() {
    let hq = memory_engine("hq").await;
    put_each(
        &hq,
        "photos",
        0..300,
        |n| json!({"id": format!("p{n:03}"), "blob": "x".repeat(20_000)}),
    )
    .await;
    let (server, scanned) = counting_server(hq).await;
    let client = crate::support::raw_client();
    let mut after = 0;
    let mut pulled = Vec::new();
    for _ in 0..100 {
        scanned.store(0, std::sync::atomic::Ordering::SeqCst);
        let url = format!(
            "{}/v1/collections/photos/changes?after={after}&limit=10000",
            server.url()
        );
        let answer = crate::support::get_json(&client, url).await;
        let sent = answer["changes"].as_array().unwrap();
        let read = scanned.load(std::sync::atomic::Ordering::SeqCst);
        assert!(!sent.is_empty());
        assert!(
            read <= 2 * sent.len() + 64,
            "{read} records read to send {}",
            sent.len()
        );
        pulled.extend(sent.iter().map(|change| change["record"]["id"].clone()));
        after = answer["next"].as_u64().unwrap();
        if answer["more"] == json!(false) {
            break;
        }
    }
    let expected: Vec<_> = (0..300).map(|n| json!(format!("p{n:03}"))).collect();
    assert_eq!(pulled, expected);
    server.shutdown().await.unwrap();
}

/// The first read of every page took 64 changes whatever their size: with
/// records of 100 KB and a body of 256 KiB, 6.4 MB held to send three (with
/// 16 MiB records, a GiB to send one). After a collection's first page, the
/// first read is sized by the text its changes took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_read_of_a_page_is_sized_by_the_last_page() {
    let hq = memory_engine("hq").await;
    put_each(
        &hq,
        "photos",
        0..100,
        |n| json!({"id": format!("p{n:03}"), "blob": "x".repeat(100_000)}),
    )
    .await;
    let (server, scanned) = counting_server(hq).await;
    let client = crate::support::raw_client();
    let mut after = 0;
    let mut pulled = 0;
    for page in 0..100 {
        scanned.store(0, std::sync::atomic::Ordering::SeqCst);
        let url = format!(
            "{}/v1/collections/photos/changes?after={after}&limit=10000",
            server.url()
        );
        let answer = crate::support::get_json(&client, url).await;
        let sent = answer["changes"].as_array().unwrap().len();
        let read = scanned.load(std::sync::atomic::Ordering::SeqCst);
        assert!(sent > 0);
        if page > 0 {
            assert!(
                read <= sent + 2,
                "page {page}: {read} records read to send {sent}"
            );
        }
        pulled += sent;
        after = answer["next"].as_u64().unwrap();
        if answer["more"] == json!(false) {
            break;
        }
    }
    assert_eq!(pulled, 100);
    server.shutdown().await.unwrap();
}

/// A few small records before many large ones: the round after the small
/// ones, sized by them alone, read thousands of large records to send the
/// few that fit in the body. Each round is now at most four times the one
/// before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_after_small_ones_are_read_in_growing_rounds() {
    let hq = memory_engine("hq").await;
    put_each(&hq, "mixed", 0..64, |n| json!({"id": format!("a{n:04}")})).await;
    put_each(
        &hq,
        "mixed",
        0..2_000,
        |n| json!({"id": format!("b{n:04}"), "blob": "x".repeat(10_000)}),
    )
    .await;
    let (server, scanned) = counting_server(hq).await;
    let url = format!(
        "{}/v1/collections/mixed/changes?after=0&limit=10000",
        server.url()
    );
    let answer = crate::support::get_json(&crate::support::raw_client(), url).await;
    let sent = answer["changes"].as_array().unwrap().len();
    let read = scanned.load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent > 64, "{sent} changes sent");
    assert!(read <= 64 + 4 * 64, "{read} records read to send {sent}");
    assert_eq!(answer["more"], json!(true));
    server.shutdown().await.unwrap();
}

/// A page read from the store in rounds met a record rewritten between two
/// of them twice, where a page holds each record once, at its latest
/// change: it ends before the second, and the next page brings it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_rewritten_between_two_reads_of_a_page_is_sent_once() {
    let hq = memory_engine("hq").await;
    put_each(&hq, "notes", 0..100, |n| json!({"id": format!("n{n:03}")})).await;
    let replica = crate::support::InstrumentedReplica::new(hq).rewriting_after_next_read("n010");
    let server = Server::bind(replica, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let client = crate::support::raw_client();
    let mut after = 0;
    let mut pages = Vec::new();
    for _ in 0..10 {
        let url = format!(
            "{}/v1/collections/notes/changes?after={after}&limit=1000",
            server.url()
        );
        let answer = crate::support::get_json(&client, url).await;
        let ids: Vec<String> = answer["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|change| change["record"]["id"].as_str().unwrap().to_owned())
            .collect();
        pages.push(ids);
        after = answer["next"].as_u64().unwrap();
        if answer["more"] == json!(false) {
            break;
        }
    }
    for ids in &pages {
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            ids.len(),
            "a page repeats a record: {ids:?}"
        );
    }
    // Every record arrives, the rewritten one last, at its new change.
    let all: Vec<&String> = pages.iter().flatten().collect();
    assert_eq!(all.len(), 101, "{pages:?}");
    assert_eq!(all.last().map(|id| id.as_str()), Some("n010"));
    server.shutdown().await.unwrap();
}

/// An answer larger than the peer's bound fails the call, whatever the
/// server sent, instead of being read whole into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_past_the_peers_bound_fails_the_call() {
    let hq = memory_engine("hq").await;
    // Each change alone is over the bound: a shorter page cannot help.
    put_each(
        &hq,
        "notes",
        0..50,
        |n| json!({"id": format!("n{n}"), "text": "x".repeat(5_000)}),
    )
    .await;
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

/// A page larger than the peer's bound failed every pull from its cursor,
/// so the pull never got past it. It is now asked for again, half as long,
/// until it fits, and later pages are no longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_past_the_peers_bound_are_asked_for_shorter() {
    let hq = memory_engine("hq").await;
    put_each(
        &hq,
        "notes",
        0..50,
        |n| json!({"id": format!("n{n:02}"), "text": "x".repeat(100)}),
    )
    .await;
    let replica = crate::support::InstrumentedReplica::new(hq);
    let limits = replica.read_limits.clone();
    let server = Server::bind(replica, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let phone = memory_engine("phone").await;
    let small = syncforge::http::HttpPeer::builder(server.url())
        .max_response_bytes(4 * 1024)
        .build()
        .unwrap();
    let report = phone.sync_with(&small, "notes").await.unwrap();
    assert_eq!(report.pulled.added, 50, "{report:?}");
    // The server's first read of the engine's page of 100 is of 64; the
    // store held 50, and halves of that follow until a page fits.
    let limits = limits.lock().unwrap().clone();
    assert_eq!(limits[..2], [64, 50], "{limits:?}");
    assert!(halved_then_steady(&limits[1..]), "{limits:?}");
    assert!(limits[limits.len() - 1] < 50, "{limits:?}");
    server.shutdown().await.unwrap();
}

/// Whether each of `limits` is half the one before it until one repeats,
/// and all after that are the same.
fn halved_then_steady(limits: &[usize]) -> bool {
    let steady = limits
        .windows(2)
        .position(|pair| pair[0] == pair[1])
        .unwrap_or(limits.len());
    limits[..(steady + 1).min(limits.len())]
        .windows(2)
        .all(|pair| pair[1] == pair[0] / 2)
        && limits[steady..].windows(2).all(|pair| pair[0] == pair[1])
}

/// A server of `replica` whose feed reads and merges take 80 ms a change,
/// an engine syncing 64 records a batch, and its peer for the server with
/// a 2 s timeout.
async fn over_a_slow_link(
    replica: crate::support::InstrumentedReplica,
) -> (Server, SyncEngine, syncforge::http::HttpPeer) {
    let replica = replica.slow_per_change(Duration::from_millis(80));
    let server = Server::bind(replica, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let phone = SyncEngine::builder()
        .client_id("phone")
        .batch_size(64)
        .build()
        .await
        .unwrap();
    let slow_link = syncforge::http::HttpPeer::builder(server.url())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    (server, phone, slow_link)
}

/// Over a link too slow for a full page within the peer's timeout, a pull
/// asked for the same page again and again and never got past it. The page
/// is now asked for again, half as long, and later pages are no longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_too_slow_for_the_timeout_are_asked_for_shorter() {
    let hq = memory_engine("hq").await;
    put_each(&hq, "notes", 0..64, |n| json!({"id": format!("n{n:02}")})).await;
    // 64 changes take 5.12 s and 32 take 2.56 s, past the 2 s timeout;
    // 16 take 1.28 s, more than a quarter of it: the limit stays at 16.
    let replica = crate::support::InstrumentedReplica::new(hq.clone());
    let limits = replica.read_limits.clone();
    let (server, phone, slow_link) = over_a_slow_link(replica).await;
    let report = phone.sync_with(&slow_link, "notes").await.unwrap();
    assert_eq!(report.pulled.added, 64, "{report:?}");
    let first = limits.lock().unwrap().clone();
    assert_eq!(first[..4], [64, 32, 16, 16], "{first:?}");
    assert!(halved_then_steady(&first), "{first:?}");
    // A page that is not full comes quickly whatever the link: it does not
    // let the limit grow.
    hq.put("notes", &json!({"id": "o00"})).await.unwrap();
    let report = phone.sync_with(&slow_link, "notes").await.unwrap();
    assert_eq!(report.pulled.added, 1, "{report:?}");
    put_each(&hq, "notes", 0..32, |n| json!({"id": format!("p{n:02}")})).await;
    limits.lock().unwrap().clear();
    let report = phone.sync_with(&slow_link, "notes").await.unwrap();
    assert_eq!(report.pulled.added, 32, "{report:?}");
    let later = limits.lock().unwrap().clone();
    assert!(later.iter().all(|&l| l == 16), "{later:?}");
    server.shutdown().await.unwrap();
}

/// Over a link too slow for a push within the peer's timeout, the push was
/// sent again as it was and never went through. It is now sent again in
/// halves, as a push refused as too large is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_too_slow_for_the_timeout_are_sent_in_halves() {
    let hq = memory_engine("hq").await;
    // 64 records take 5.12 s and 32 take 2.56 s to merge, past the 2 s
    // timeout; 16 take 1.28 s.
    let replica = crate::support::InstrumentedReplica::new(hq.clone());
    let (running, ended) = (replica.syncs_running.clone(), replica.syncs_ended.clone());
    let (server, phone, slow_link) = over_a_slow_link(replica).await;
    put_each(
        &phone,
        "notes",
        0..64,
        |n| json!({"id": format!("n{n:02}")}),
    )
    .await;
    let report = phone.sync_with(&slow_link, "notes").await.unwrap();
    assert_eq!(report.pushed, 64, "{report:?}");
    assert_eq!(hq.get_all("notes").await.unwrap().len(), 64);
    // The merges the client stopped waiting for end on the server too.
    let deadline = Instant::now() + Duration::from_secs(20);
    while running.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        assert!(Instant::now() < deadline, "merges still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 64 (too slow), 32 (too slow), its halves of 16, and the other 32
    // split at once, as larger than what went through: six requests.
    assert_eq!(ended.load(std::sync::atomic::Ordering::SeqCst), 6);
    server.shutdown().await.unwrap();
}

/// A long poll that saw another client's write used to forget the echoes
/// before it: the pull after it, which starts from the engine's cursor,
/// downloaded this client's own last push again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_keeps_the_echoes_the_next_pull_needs() {
    let hq = memory_engine("hq").await;
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let (phone, laptop) = (memory_engine("phone").await, memory_engine("laptop").await);
    let (phone_link, laptop_link) = (peer(&server.url(), None), peer(&server.url(), None));
    let _ = phone.sync_with(&phone_link, "notes").await.unwrap();
    for n in 0..20 {
        phone
            .put("notes", &json!({"id": format!("p{n}")}))
            .await
            .unwrap();
    }
    // sync_with pulls, then pushes: the cursor stays below the push.
    let report = phone.sync_with(&phone_link, "notes").await.unwrap();
    assert_eq!(report.pushed, 20);
    laptop.put("notes", &json!({"id": "l0"})).await.unwrap();
    let _ = laptop.sync_with(&laptop_link, "notes").await.unwrap();
    let after = phone
        .peer_cursors(phone_link.peer_id(), "notes")
        .await
        .unwrap()
        .pulled;
    let page = phone_link
        .wait_for_changes(
            "notes",
            after,
            100.try_into().unwrap(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 1, "{page:?}");
    let report = phone.sync_with(&phone_link, "notes").await.unwrap();
    assert_eq!(report.pulled.total(), 1, "{report:?}");
    server.shutdown().await.unwrap();
}

/// A push is sent in requests of a few MiB at most, below the server's own
/// bound of 16 MiB, so that each uploads within the timeout on a slow link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_push_goes_in_requests_of_a_few_mebibytes() {
    let replica = crate::support::InstrumentedReplica::new(memory_engine("hq").await);
    let merges = replica.syncs_ended.clone();
    let server = Server::bind(replica, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let phone = memory_engine("phone").await;
    put_notes(&phone, 600, 10_000).await;
    let link = peer(&server.url(), None);
    let _ = link.health().await.unwrap();
    let records = phone.get_all("notes").await.unwrap();
    let answer = link.push_records("notes", records).await.unwrap();
    assert_eq!(answer.added, 600);
    let requests = merges.load(std::sync::atomic::Ordering::SeqCst);
    assert!(requests >= 2, "6 MB went in {requests} request(s)");
    server.shutdown().await.unwrap();
}

/// `link`'s wait of up to a second for changes of `notes` after cursor 7.
async fn wait_a_second_after_7(link: &syncforge::http::HttpPeer) -> syncforge::ChangePage {
    link.wait_for_changes(
        "notes",
        syncforge::Cursor::new(7),
        10.try_into().unwrap(),
        Duration::from_secs(1),
    )
    .await
    .unwrap()
}

/// A server answering with canned responses, one a connection, in order;
/// it reads each request whole (its body by its `content-length`) and hands
/// back the request lines it received.
async fn canned_server(answers: Vec<String>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = tokio::spawn(async move {
        let mut requests = Vec::new();
        for answer in answers {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut buffer = [0u8; 4096];
            let whole = |received: &[u8]| {
                let Some(head) = received.windows(4).position(|window| window == b"\r\n\r\n")
                else {
                    return false;
                };
                let head_text = String::from_utf8_lossy(&received[..head]).to_lowercase();
                let body = head_text
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .map_or(0, |length| length.trim().parse::<usize>().unwrap());
                received.len() >= head + 4 + body
            };
            while !whole(&received) {
                let read = stream.read(&mut buffer).await.unwrap();
                if read == 0 {
                    break;
                }
                received.extend_from_slice(&buffer[..read]);
            }
            let text = String::from_utf8_lossy(&received).into_owned();
            let body = text
                .split_once("\r\n\r\n")
                .map_or(0, |(_, body)| body.len());
            let line = text.lines().next().unwrap_or_default();
            requests.push(format!("{line} | {body} body bytes"));
            stream.write_all(answer.as_bytes()).await.unwrap();
            stream.shutdown().await.ok();
        }
        requests
    });
    (url, served)
}

fn json_answer(status: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra_headers}\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A refusal's `Retry-After` is honoured: the retry comes no sooner than
/// asked (before, after 100 ms whatever the server said).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_as_long_as_the_server_asked() {
    let health = r#"{"status":"ok","protocol":1,"feed_id":"f1","limits":{"max_body_bytes":1000,"max_records":10,"max_page":10,"max_wait_ms":1000}}"#;
    let (url, served) = canned_server(vec![
        json_answer(
            "503 Service Unavailable",
            "retry-after: 2\r\n",
            r#"{"error":{"code":"unavailable","message":"busy"}}"#,
        ),
        json_answer("200 OK", "", health),
    ])
    .await;
    let link = peer(&url, None);
    let started = Instant::now();
    let answer = link.health().await.unwrap();
    assert_eq!(answer.feed_id, "f1");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert_eq!(served.await.unwrap().len(), 2);
}

const CANNED_HEALTH: &str = r#"{"status":"ok","protocol":1,"feed_id":"f1","limits":{"max_body_bytes":100000,"max_records":10,"max_page":10,"max_wait_ms":1000}}"#;

/// Two records of `notes` to push.
async fn two_notes() -> Vec<syncforge::Record> {
    let phone = memory_engine("phone").await;
    for id in ["n1", "n2"] {
        phone.put("notes", &json!({"id": id})).await.unwrap();
    }
    phone.get_all("notes").await.unwrap()
}

fn notes() -> syncforge::CollectionName {
    syncforge::CollectionName::new("notes").unwrap()
}

/// A canned answer to a push into `notes`: `added` records, the feed
/// positions `echoes` (JSON ranges).
fn sync_answer(added: usize, echoes: &str) -> String {
    json_answer(
        "200 OK",
        "",
        &format!(
            r#"{{"feed_id":"f1","collection":"notes","added":{added},"updated":0,"deleted":0,"unchanged":0,"conflicts":0,"echoes":{echoes}}}"#
        ),
    )
}

/// A canned answer: a page of `collection` holding no change, that ends
/// the feed at `next`.
fn empty_page(collection: &str, next: u64) -> String {
    json_answer(
        "200 OK",
        "",
        &format!(
            r#"{{"feed_id":"f1","collection":"{collection}","changes":[],"next":{next},"more":false}}"#
        ),
    )
}

/// Pulls `notes` from the start of `link`'s feed, ten changes at most.
async fn pull_notes(link: &impl SyncPeer) -> syncforge::Result<syncforge::core::ChangePage> {
    SyncPeer::pull(
        link,
        &notes(),
        syncforge::Cursor::START,
        10.try_into().unwrap(),
    )
    .await
}

/// A push's answer names the feed positions of its writes, which later
/// pulls skip unread. An answer naming more positions than it had records
/// (here 996 for two) would have hidden other replicas' changes at those
/// positions for good; one past every feed position would have made every
/// later pull refused. Both are refused, and nothing of them is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_a_push_could_not_have_written_are_refused_and_not_skipped() {
    let synced = |echoes: &str| sync_answer(2, echoes);
    let (url, served) = canned_server(vec![
        json_answer("200 OK", "", CANNED_HEALTH),
        synced("[[5,1000]]"),
        synced("[[9007199254740993,9007199254740993]]"),
        synced("[[5,5],[1000,1000]]"),
        empty_page("notes", 0),
    ])
    .await;
    let link = peer(&url, None);
    for reason in ["996 echoed writes", "past 9007199254740992"] {
        let error = SyncPeer::push(&link, &notes(), two_notes().await)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::PeerProtocol { .. }), "{error:?}");
        assert!(error.to_string().contains(reason), "{error}");
    }
    // Two positions for two records: taken, and skipped by the next pull.
    let pushed = SyncPeer::push(&link, &notes(), two_notes().await)
        .await
        .unwrap();
    assert!(pushed.refused.is_empty(), "{pushed:?}");
    pull_notes(&link).await.unwrap();
    let requests = served.await.unwrap();
    assert!(requests[4].contains("&skip=5%2C1000 "), "{requests:?}");
}

/// A page that cannot answer the pull it came for is refused before its
/// records are handed on: one of another collection (a proxy or cache
/// answering for the wrong URL), or one going on past every feed position,
/// which an engine would keep as its cursor and be refused from for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_collection_or_past_every_position_is_refused() {
    let (url, served) = canned_server(vec![
        empty_page("tasks", 3),
        empty_page("notes", 9_007_199_254_740_993),
    ])
    .await;
    let link = peer(&url, None);
    for reason in ["collection \"tasks\"", "largest"] {
        let error = pull_notes(&link).await.unwrap_err();
        assert!(matches!(error, Error::PeerProtocol { .. }), "{error:?}");
        assert!(error.to_string().contains(reason), "{error}");
    }
    assert_eq!(served.await.unwrap().len(), 2);
}

/// A stamp the server refuses keeps its type over HTTP, as a local engine
/// gives it: `InvalidStamp`, and `StampAhead` for one stamp ahead of the
/// server's clock. Both came back as a plain storage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stamp_keeps_its_type_over_http() {
    let (url, _served) = canned_server(vec![
        json_answer("200 OK", "", CANNED_HEALTH),
        json_answer(
            "422 Unprocessable Entity",
            "",
            r#"{"error":{"code":"invalid_stamp","message":"bad","stamp":"zz","reason":"not a stamp"}}"#,
        ),
        json_answer(
            "422 Unprocessable Entity",
            "",
            r#"{"error":{"code":"clock_drift","message":"ahead","stamp":"s1","ahead_ms":9000,"max_drift_ms":5000}}"#,
        ),
    ])
    .await;
    let link = peer(&url, None);
    let error = link
        .push_records("notes", two_notes().await)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidStamp { stamp, reason } if stamp == "zz" && reason == "not a stamp"),
        "{error:?}"
    );
    let error = link
        .push_records("notes", two_notes().await)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::StampAhead { stamp, ahead_ms: 9000, max_drift_ms: 5000 } if stamp == "s1"
        ),
        "{error:?}"
    );
}

/// A server that holds no request (`max_wait` 0) answered every wait at
/// once, so a loop of waits asked it without pause. It is now asked again
/// every second until the wait runs out, also by a peer that has not asked
/// for the server's limits before (which took it for one that holds
/// requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_on_a_server_that_holds_no_request_is_polled_each_second() {
    let health = r#"{"status":"ok","protocol":1,"feed_id":"f1","limits":{"max_body_bytes":100000,"max_records":10,"max_page":10,"max_wait_ms":0}}"#;
    let mut answers = vec![json_answer("200 OK", "", health)];
    answers.extend((0..10).map(|_| empty_page("notes", 0)));
    let (url, _served) = canned_server(answers).await;
    let link = peer(&url, None);
    let started = Instant::now();
    let page = link
        .wait_for_changes(
            "notes",
            syncforge::Cursor::START,
            10.try_into().unwrap(),
            Duration::from_millis(2_500),
        )
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(page.changes.is_empty());
    assert!(
        waited >= Duration::from_millis(2_400),
        "returned after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "returned after {waited:?}"
    );
}

/// A server that holds no request (`max_wait` 0) answers a wait at once,
/// but each of the client's polls had the whole wait on top of its request
/// timeout: a connection that died silently (here, a server that reads the
/// request and never answers) held a wait of a minute for all of it. Each
/// poll now has the plain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_of_a_server_that_holds_no_request_has_the_plain_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let health = r#"{"status":"ok","protocol":1,"feed_id":"f1","limits":{"max_body_bytes":100000,"max_records":10,"max_page":10,"max_wait_ms":0}}"#;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = json_answer("200 OK", "", health);
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        for n in 0..8 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer).await;
            if n == 0 {
                stream.write_all(answer.as_bytes()).await.unwrap();
                stream.shutdown().await.ok();
            } else {
                // Read, and never answered.
                held.push(stream);
            }
        }
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
    let link = syncforge::http::HttpPeer::builder(&url)
        .peer_id("server")
        .timeout(Duration::from_millis(500))
        .retries(1, Duration::from_millis(20))
        .build()
        .unwrap();
    link.health().await.unwrap();
    let started = Instant::now();
    let error = link
        .wait_for_changes(
            "notes",
            syncforge::Cursor::START,
            10.try_into().unwrap(),
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(error.is_transient(), "{error}");
    assert!(waited < Duration::from_secs(10), "failed after {waited:?}");
    silent.abort();
}

/// A long poll answered with nothing to show but more to read (the server
/// passed over changes this client holds) reads on from there, instead of
/// handing the caller a page that asking again would only repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_reads_on_past_a_page_of_skipped_changes() {
    let page = |next: u64, more: bool| {
        json_answer(
            "200 OK",
            "",
            &format!(
                r#"{{"feed_id":"f1","collection":"notes","changes":[],"next":{next},"more":{more}}}"#
            ),
        )
    };
    let (url, served) = canned_server(vec![
        json_answer("200 OK", "", CANNED_HEALTH),
        page(40, true),
        page(40, false),
    ])
    .await;
    let answer = wait_a_second_after_7(&peer(&url, None)).await;
    assert!(!answer.more, "{answer:?}");
    assert_eq!(answer.next, syncforge::Cursor::new(40));
    let requests = served.await.unwrap();
    assert!(requests[1].contains("after=7"), "{requests:?}");
    assert!(requests[2].contains("after=40"), "{requests:?}");
}

/// A proxy before `backend` that refuses request bodies over `limit` bytes
/// with 413 and a page of HTML, as nginx does (`client_max_body_size`), and
/// passes the rest on, one request a connection. Counts what it refused.
async fn body_limiting_proxy(
    backend: std::net::SocketAddr,
    limit: usize,
    page: ErrorPage,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = refused.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 8192];
                let end = loop {
                    if let Some(at) = head.windows(4).position(|window| window == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match client.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                };
                let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
                let length: usize = text
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or(0);
                if length > limit {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let text = "<html><body>413 Request Entity Too Large</body></html>";
                    let announced = match page {
                        ErrorPage::Whole => text.len(),
                        ErrorPage::CutOff => text.len() + 100,
                    };
                    let answer = format!(
                        "HTTP/1.1 413 Request Entity Too Large\r\ncontent-type: text/html\r\n\
                         content-length: {announced}\r\nconnection: close\r\n\r\n{text}"
                    );
                    let _ = client.write_all(answer.as_bytes()).await;
                    return;
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                // One request a connection: the server closes after it.
                let mut forwarded = head[..end - 2].to_vec();
                forwarded.extend_from_slice(b"connection: close\r\n\r\n");
                forwarded.extend_from_slice(&head[end..]);
                if server.write_all(&forwarded).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (url, refused)
}

/// How the proxy of [`body_limiting_proxy`] sends its error page.
#[derive(Clone, Copy)]
enum ErrorPage {
    Whole,
    /// Shorter than its announced length, the connection then closed: the
    /// page is cut off, the status still says what happened.
    CutOff,
}

/// Puts `count` notes, `n000` on, each of `bytes` bytes of text, into
/// collection `notes` of `engine`.
async fn put_notes(engine: &SyncEngine, count: usize, bytes: usize) {
    for n in 0..count {
        engine
            .put(
                "notes",
                &json!({"id": format!("n{n:03}"), "text": "x".repeat(bytes)}),
            )
            .await
            .unwrap();
    }
}

/// A server behind a [`body_limiting_proxy`] of 64 KiB, and a phone holding
/// notes of 1,000 bytes each, not yet pushed.
struct BehindProxy {
    hq: SyncEngine,
    server: Server,
    /// The proxy's URL.
    url: String,
    /// How many requests the proxy refused.
    refused: Arc<std::sync::atomic::AtomicUsize>,
    phone: SyncEngine,
}

impl BehindProxy {
    /// The proxy sending its refusals as `page`; the phone holding `notes`
    /// notes.
    async fn start(page: ErrorPage, notes: usize) -> BehindProxy {
        let hq = memory_engine("hq").await;
        let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
            .await
            .unwrap();
        let (url, refused) = body_limiting_proxy(server.local_addr(), 64 * 1024, page).await;
        let phone = memory_engine("phone").await;
        put_notes(&phone, notes, 1_000).await;
        BehindProxy {
            hq,
            server,
            url,
            refused,
            phone,
        }
    }
}

/// Behind a proxy that takes smaller bodies than the server announces, a
/// push refused with 413 is sent again in halves, and later pushes send no
/// more than what went through; before, every sync failed for good. A
/// record the proxy refuses on its own is refused, not failed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_a_proxy_refuses_as_too_large_is_sent_in_smaller_parts() {
    let BehindProxy {
        hq,
        server,
        url,
        refused,
        phone,
    } = BehindProxy::start(ErrorPage::Whole, 400).await;
    let link = peer(&url, None);
    let report = phone.sync_with(&link, "notes").await.unwrap();
    assert_eq!(report.pushed, 400);
    assert_eq!(hq.get_all("notes").await.unwrap().len(), 400);
    let first = refused.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        first > 0,
        "the proxy refused nothing: the test proves nothing"
    );
    // The next push starts below what was refused.
    for n in 0..400 {
        phone
            .put(
                "notes",
                &json!({"id": format!("n{n:03}"), "text": "y".repeat(1_000)}),
            )
            .await
            .unwrap();
    }
    let report = phone.sync_with(&link, "notes").await.unwrap();
    assert_eq!(report.pushed, 400);
    assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), first);
    // A single record larger than the proxy takes is refused, named with
    // the proxy's answer, and holds back no other change: failing the push
    // on it, every later sync sent it first and failed again.
    phone
        .put("notes", &json!({"id": "huge", "text": "z".repeat(100_000)}))
        .await
        .unwrap();
    phone
        .put("notes", &json!({"id": "after", "text": "small"}))
        .await
        .unwrap();
    let report = phone.sync_with(&link, "notes").await.unwrap();
    assert_eq!(report.pushed, 1);
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    assert_eq!(report.refused[0].id.as_str(), "huge");
    assert!(
        report.refused[0].reason.contains("413"),
        "{:?}",
        report.refused
    );
    assert!(hq.get("notes", "after").await.unwrap().is_some());
    assert!(hq.get("notes", "huge").await.unwrap().is_none());
    // A push of records named by the caller fails on it, naming it.
    let huge = phone.get("notes", "huge").await.unwrap().unwrap();
    let error = link.push_records("notes", vec![huge]).await.unwrap_err();
    assert!(
        matches!(&error, Error::InvalidRecord { id: Some(id), .. } if id == "huge"),
        "{error}"
    );
    server.shutdown().await.unwrap();
}

/// A push the server refuses for its count of records (its limits were
/// lowered since the peer read them, by a restart, say) is sent again in
/// halves, and the limits are read again before the next push. It was
/// taken for a proxy's byte bound and kept for good, so every later push
/// went in requests of half that size, whatever the server took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_refused_for_its_count_of_records_reads_the_limits_again() {
    let synced = sync_answer(1, "[]");
    let too_many = json_answer(
        "413 Payload Too Large",
        "",
        r#"{"error":{"code":"too_many_records","message":"at most 1 record a request"}}"#,
    );
    let (url, served) = canned_server(vec![
        json_answer("200 OK", "", CANNED_HEALTH),
        too_many,
        synced.clone(),
        synced.clone(),
        json_answer("200 OK", "", CANNED_HEALTH),
        synced,
    ])
    .await;
    let link = peer(&url, None);
    let first = link.push_records("notes", two_notes().await).await.unwrap();
    assert_eq!(first.added, 2);
    link.push_records("notes", two_notes().await).await.unwrap();
    let requests = served.await.unwrap();
    let kinds: Vec<&str> = requests
        .iter()
        .map(|line| line.split('/').next().unwrap_or_default().trim())
        .collect();
    assert_eq!(
        kinds,
        ["GET", "POST", "POST", "POST", "GET", "POST"],
        "{requests:?}"
    );
}

/// The rest of a push the server refused for its count of records (its
/// limits lowered since the peer read them) went in parts of the count read
/// before, each refused and halved in its turn, uploading the rest of the
/// push again and again. It goes in parts of the count that went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_a_push_refused_for_its_count_goes_in_parts_the_server_takes() {
    let too_many = json_answer(
        "413 Payload Too Large",
        "",
        r#"{"error":{"code":"too_many_records","message":"at most 5 records a request"}}"#,
    );
    let synced = sync_answer(5, "[]");
    let (url, served) = canned_server(vec![
        json_answer("200 OK", "", CANNED_HEALTH),
        too_many,
        synced.clone(),
        synced.clone(),
        synced.clone(),
        synced,
    ])
    .await;
    let link = peer(&url, None);
    let phone = memory_engine("phone").await;
    for n in 0..20 {
        phone
            .put("notes", &json!({"id": format!("n{n:02}")}))
            .await
            .unwrap();
    }
    let pushed = link
        .push_records("notes", phone.get_all("notes").await.unwrap())
        .await
        .unwrap();
    assert_eq!(pushed.added, 20);
    let requests = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the push made fewer requests than the parts the server takes")
        .unwrap();
    let bytes: Vec<usize> = requests
        .iter()
        .filter(|line| line.starts_with("POST"))
        .map(|line| {
            let (_, size) = line.rsplit_once(" | ").unwrap();
            size.trim_end_matches(" body bytes").parse().unwrap()
        })
        .collect();
    let [refused, parts @ ..] = &bytes[..] else {
        panic!("{requests:?}");
    };
    assert_eq!(parts.len(), 4, "{requests:?}");
    for part in parts {
        assert!(part * 3 < refused * 2, "{requests:?}");
    }
}

/// A proxy's 413 whose page is cut off (announced longer than sent, then
/// the connection closed) is still a refusal of the size: the push is sent
/// in smaller parts. It was taken for a lost answer, the same request sent
/// again until the retries ran out, and every sync failed as unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_refused_as_too_large_with_its_page_cut_off_is_sent_in_smaller_parts() {
    let proxied = BehindProxy::start(ErrorPage::CutOff, 200).await;
    let link = peer(&proxied.url, None);
    let report = proxied.phone.sync_with(&link, "notes").await.unwrap();
    assert_eq!(report.pushed, 200);
    assert_eq!(proxied.hq.get_all("notes").await.unwrap().len(), 200);
    assert!(
        proxied.refused.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the proxy refused nothing: the test proves nothing"
    );
    proxied.server.shutdown().await.unwrap();
}

/// The collections `.` and `..` cannot be named in a URL path (URLs read
/// them as "here" and "the parent"): syncing one is refused at once as an
/// invalid collection, where the request reached another route and was
/// refused as not found at every try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_collections_are_refused_before_any_request() {
    let hq = memory_engine("hq").await;
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let phone = memory_engine("phone").await;
    let link = peer(&server.url(), None);
    for name in [".", ".."] {
        phone.put(name, &json!({"id": "n1"})).await.unwrap();
        let error = phone.sync_with(&link, name).await.unwrap_err();
        assert!(
            matches!(&error, Error::InvalidCollection { name: refused, .. } if refused == name),
            "{error:?}"
        );
    }
    // A name merely holding dots travels as usual.
    phone.put("..notes", &json!({"id": "n1"})).await.unwrap();
    let report = phone.sync_with(&link, "..notes").await.unwrap();
    assert_eq!(report.pushed, 1);
    assert_eq!(
        hq.get("..notes", "n1")
            .await
            .unwrap()
            .unwrap()
            .id()
            .as_str(),
        "n1"
    );
    server.shutdown().await.unwrap();
}

/// Records sent with `push_records` (an import, say) are not the engine's
/// own writes: its next sync through the same peer pulls them, where they
/// were remembered as echoes and left out of its pulls for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_pushed_by_hand_reach_the_engine_syncing_through_that_peer() {
    let hq = memory_engine("hq").await;
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let source = memory_engine("source").await;
    for n in 0..3 {
        source
            .put("notes", &json!({"id": format!("n{n}")}))
            .await
            .unwrap();
    }
    let tablet = memory_engine("tablet").await;
    let link = peer(&server.url(), None);
    let imported = source.get_all("notes").await.unwrap();
    assert_eq!(link.push_records("notes", imported).await.unwrap().added, 3);
    let report = tablet.sync_with(&link, "notes").await.unwrap();
    assert_eq!(report.pulled.added, 3, "{report:?}");
    assert_eq!(tablet.get_all("notes").await.unwrap().len(), 3);
    // The tablet's own writes are still echoes: pushed, then not pulled back.
    tablet.put("notes", &json!({"id": "mine"})).await.unwrap();
    let report = tablet.sync_with(&link, "notes").await.unwrap();
    assert_eq!(report.pushed, 1);
    let report = tablet.sync_with(&link, "notes").await.unwrap();
    assert_eq!(report.pulled.total(), 0, "{report:?}");
    server.shutdown().await.unwrap();
}

/// A long poll that failed for now was tried again asking for its whole
/// wait again, each time: a call asked to wait 1 s could take several. It
/// is tried again asking for what is left of the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_tried_again_asks_for_what_is_left_of_its_wait() {
    let busy = json_answer(
        "503 Service Unavailable",
        "",
        r#"{"error":{"code":"unavailable","message":"busy"}}"#,
    );
    let empty = json_answer(
        "200 OK",
        "",
        r#"{"feed_id":"f1","collection":"notes","changes":[],"next":7,"more":false}"#,
    );
    let (url, served) =
        canned_server(vec![json_answer("200 OK", "", CANNED_HEALTH), busy, empty]).await;
    let link = syncforge::http::HttpPeer::builder(&url)
        .retries(3, Duration::from_millis(100))
        .build()
        .unwrap();
    let page = wait_a_second_after_7(&link).await;
    assert!(page.changes.is_empty(), "{page:?}");
    let requests = served.await.unwrap();
    let wait_of = |line: &str| -> u64 {
        let (_, after) = line.split_once("wait=").unwrap();
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap()
    };
    let (first, again) = (wait_of(&requests[1]), wait_of(&requests[2]));
    assert!(first > 900 && again <= first - 100, "{requests:?}");
}

/// A redirect was followed: a push arrived as a GET without its body, and
/// the token was dropped on a change of host, so every sync failed with a
/// misleading refusal. It is now reported, naming where the server points,
/// and not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_reported_with_where_it_points_and_not_followed() {
    let (url, served) = canned_server(vec![
        "HTTP/1.1 301 Moved Permanently\r\nlocation: http://127.0.0.1:1/v1/health\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n"
            .to_owned(),
    ])
    .await;
    let error = peer(&url, None).health().await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("redirects are not followed") && message.contains("http://127.0.0.1:1"),
        "{message}"
    );
    assert!(!error.is_transient(), "{error:?}");
    assert_eq!(served.await.unwrap().len(), 1);
}

/// An error answer larger than `max_response_bytes` (a proxy's HTML page)
/// was taken for an answer too large: a permanent protocol error. Only its
/// start is read now, and its status decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_error_page_is_judged_by_its_status() {
    let page = format!("<html>{}</html>", "busy ".repeat(400));
    let (url, _served) = canned_server(vec![format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/html\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{page}",
        page.len()
    )])
    .await;
    let link = syncforge::http::HttpPeer::builder(&url)
        .max_response_bytes(1024)
        .retries(0, Duration::from_millis(20))
        .build()
        .unwrap();
    let error = link.health().await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
}

/// The server's own error answers are read whole, however long: a batch
/// of records stamped ahead is named id by id, and was reported as a plain
/// storage error when the answer was cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_error_of_the_server_keeps_its_type() {
    let ids: Vec<String> = (0..3_000).map(|n| format!("\"record-{n:0>30}\"")).collect();
    assert!(ids.len() * 38 > 64 * 1024);
    let (url, _served) = canned_server(vec![
        json_answer("200 OK", "", CANNED_HEALTH),
        json_answer(
            "422 Unprocessable Entity",
            "",
            &format!(
                r#"{{"error":{{"code":"clock_drift","message":"ahead","ids":[{}],"ahead_ms":9000,"max_drift_ms":5000}}}}"#,
                ids.join(",")
            ),
        ),
    ])
    .await;
    let error = peer(&url, None)
        .push_records("notes", two_notes().await)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::ClockDrift { ids, ahead_ms: 9000, .. } if ids.len() == 3_000),
        "{error:?}"
    );
}

/// A page holding more changes than asked for cannot be the one asked for;
/// it was taken whole, however large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_with_more_changes_than_asked_is_refused() {
    let changes: Vec<String> = two_notes()
        .await
        .iter()
        .chain(two_notes().await.iter().take(1))
        .enumerate()
        .map(|(n, record)| {
            format!(
                r#"{{"cursor":{},"record":{}}}"#,
                n + 1,
                record.to_json_string()
            )
        })
        .collect();
    let (url, _served) = canned_server(vec![json_answer(
        "200 OK",
        "",
        &format!(
            r#"{{"feed_id":"f1","collection":"notes","changes":[{}],"next":3,"more":false}}"#,
            changes.join(",")
        ),
    )])
    .await;
    let link = peer(&url, None);
    let error = SyncPeer::pull(
        &link,
        &notes(),
        syncforge::Cursor::START,
        2.try_into().unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, Error::PeerProtocol { .. }), "{error:?}");
    assert!(error.to_string().contains("at most 2"), "{error}");
}

/// A page the peer refuses teaches it nothing. One answering another URL
/// (of another collection, from another feed) switched the peer to that
/// feed before it was refused, and one out of order from another feed (a
/// stale answer of a cache) was learnt from before its order was checked,
/// reported as a change of stores (transient, to be retried) where it
/// breaks the protocol: in both cases the next right answer then failed
/// as a change of stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_refused_teaches_the_peer_nothing() {
    for refused in [
        r#"{"feed_id":"f2","collection":"tasks","changes":[],"next":3,"more":false}"#,
        r#"{"feed_id":"f2","collection":"notes","changes":[],"next":0,"more":true}"#,
    ] {
        let (url, _served) = canned_server(vec![
            json_answer("200 OK", "", CANNED_HEALTH),
            json_answer("200 OK", "", refused),
            empty_page("notes", 0),
        ])
        .await;
        let link = peer(&url, None);
        link.health().await.unwrap();
        let error = pull_notes(&link).await.unwrap_err();
        assert!(
            matches!(error, Error::PeerProtocol { .. }),
            "{refused}: {error:?}"
        );
        pull_notes(&link).await.unwrap();
    }
}

/// A push merged by another store than the one the sync began with (the
/// server restarted on another store between the pull and the push) was
/// taken as pushed: the engine's push cursor, kept for the first store,
/// passed records it never got, and they stayed missing there once the
/// server was back on it. It fails as a change of stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_answered_by_another_store_fails_as_a_change_of_stores() {
    let other = json_answer(
        "200 OK",
        "",
        r#"{"feed_id":"f2","collection":"notes","added":2,"updated":0,"deleted":0,"unchanged":0,"conflicts":0,"echoes":[]}"#,
    );
    let (url, _served) = canned_server(vec![json_answer("200 OK", "", CANNED_HEALTH), other]).await;
    let link = peer(&url, None);
    link.health().await.unwrap();
    let error = SyncPeer::push(&link, &notes(), two_notes().await)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains("changed stores"), "{error}");
}

/// The same when another call on the peer (another collection's sync, a
/// long poll) saw the new store first: the push was checked against the
/// feed the peer saw last, which it had learnt, where the collection's
/// cursors belong to the feed its own exchanges were on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_answered_by_another_store_fails_after_another_call_saw_it_first() {
    let tasks_moved = r#"{"feed_id":"f2","collection":"tasks","changes":[],"next":0,"more":false}"#;
    let other = json_answer(
        "200 OK",
        "",
        r#"{"feed_id":"f2","collection":"notes","added":2,"updated":0,"deleted":0,"unchanged":0,"conflicts":0,"echoes":[]}"#,
    );
    let (url, _served) = canned_server(vec![
        json_answer("200 OK", "", CANNED_HEALTH),
        empty_page("notes", 0),
        json_answer("200 OK", "", tasks_moved),
        other,
    ])
    .await;
    let link = peer(&url, None);
    link.health().await.unwrap();
    pull_notes(&link).await.unwrap();
    let tasks = syncforge::CollectionName::new("tasks").unwrap();
    let moved = SyncPeer::pull(
        &link,
        &tasks,
        syncforge::Cursor::START,
        10.try_into().unwrap(),
    )
    .await
    .unwrap_err();
    assert!(moved.to_string().contains("changed stores"), "{moved}");
    let error = SyncPeer::push(&link, &notes(), two_notes().await)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
}

/// A page is checked against both the feed last seen by any call and the
/// feed its collection's exchanges are on, which an engine's sync sets as
/// it begins: a page from the old store after the health named it again is
/// refused; a push answered by a new store is refused when the sync began
/// on the old one, though no exchange of the collection came before it;
/// and a sync beginning on a store takes its pages, whatever its
/// collection's exchanges were on before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_checked_against_the_feed_their_collection_syncs_on() {
    let health = |feed: &str| json_answer("200 OK", "", &CANNED_HEALTH.replace("f1", feed));
    let page = |feed: &str| {
        json_answer(
            "200 OK",
            "",
            &format!(
                r#"{{"feed_id":"{feed}","collection":"tasks","changes":[],"next":0,"more":false}}"#
            ),
        )
    };
    let pushed = |feed: &str| {
        json_answer(
            "200 OK",
            "",
            &format!(
                r#"{{"feed_id":"{feed}","collection":"notes","added":2,"updated":0,"deleted":0,"unchanged":0,"conflicts":0,"echoes":[]}}"#
            ),
        )
    };
    let (url, _served) = canned_server(vec![
        health("f1"),
        page("f1"),
        page("f2"),
        health("f1"),
        page("f2"),
        pushed("f2"),
        health("f1"),
        page("f1"),
    ])
    .await;
    let link = peer(&url, None);
    let tasks = syncforge::CollectionName::new("tasks").unwrap();
    let pull_tasks = || {
        SyncPeer::pull(
            &link,
            &tasks,
            syncforge::Cursor::START,
            10.try_into().unwrap(),
        )
    };
    let changed = |result: syncforge::Result<syncforge::core::ChangePage>| {
        let error = result.unwrap_err();
        assert!(error.to_string().contains("changed stores"), "{error}");
    };
    link.health().await.unwrap();
    pull_tasks().await.unwrap();
    changed(pull_tasks().await);
    // The health names the first store again: a page of the second is not
    // its own.
    link.health().await.unwrap();
    changed(pull_tasks().await);
    // An engine's sync of notes begins on f1, and the peer has seen f2.
    link.exchanges_begin(&notes(), "f1").await;
    let error = SyncPeer::push(&link, &notes(), two_notes().await)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    // A sync of tasks beginning on f1 again (its cursors restarted when
    // it synced on f2, say) takes f1's pages, though its exchanges were on
    // f2 last.
    link.health().await.unwrap();
    link.exchanges_begin(&tasks, "f1").await;
    pull_tasks().await.unwrap();
}

/// A proxy that refuses long URLs (414) refused every pull that carried
/// echoes to skip, though skipping them only saves downloading them again.
/// The pull is asked again without them, and they are let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_refused_for_its_long_url_is_asked_again_without_echoes() {
    let synced = sync_answer(2, "[[5,6]]");
    let too_long = "HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let (url, served) = canned_server(vec![
        json_answer("200 OK", "", CANNED_HEALTH),
        synced,
        too_long.to_owned(),
        empty_page("notes", 0),
        empty_page("notes", 0),
    ])
    .await;
    let link = peer(&url, None);
    let pushed = SyncPeer::push(&link, &notes(), two_notes().await)
        .await
        .unwrap();
    assert!(pushed.refused.is_empty(), "{pushed:?}");
    pull_notes(&link).await.unwrap();
    pull_notes(&link).await.unwrap();
    let requests = served.await.unwrap();
    assert!(requests[2].contains("skip="), "{requests:?}");
    assert!(!requests[3].contains("skip="), "{requests:?}");
    assert!(!requests[4].contains("skip="), "{requests:?}");
}
