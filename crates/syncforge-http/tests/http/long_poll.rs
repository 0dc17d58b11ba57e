//! Long polls: a reader waiting on the feed wakes as soon as another client
//! writes, and a wait with nothing to wake it ends when it should.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use serde_json::json;
use syncforge::http::{Server, ServerOptions};
use syncforge::SyncPeer;

use crate::support::{memory_engine, peer};

const PAGE: NonZeroUsize = NonZeroUsize::new(100).unwrap();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reader_wakes_within_200_ms_of_another_clients_write() {
    let hq = memory_engine("hq").await;
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let (reader, writer) = (memory_engine("reader").await, memory_engine("writer").await);
    let (reader_link, writer_link) = (peer(&server.url(), None), peer(&server.url(), None));
    let _ = reader.sync_with(&reader_link, "notes").await.unwrap();

    for round in 0..3 {
        let after = reader
            .peer_cursors(reader_link.peer_id(), "notes")
            .await
            .unwrap()
            .pulled;
        let waiting = {
            let link = reader_link.clone();
            tokio::spawn(async move {
                let page = link
                    .wait_for_changes("notes", after, PAGE, Duration::from_secs(10))
                    .await
                    .unwrap();
                (page, Instant::now())
            })
        };
        // Let the request reach the server and start waiting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "round {round}: the wait returned with nothing new"
        );

        writer
            .put("notes", &json!({"id": format!("n{round}"), "round": round}))
            .await
            .unwrap();
        let pushing = Instant::now();
        let _ = writer.sync_with(&writer_link, "notes").await.unwrap();
        let pushed = Instant::now();

        let (page, woke) = waiting.await.unwrap();
        assert_eq!(
            page.len(),
            1,
            "round {round}: the write arrives in the page"
        );
        assert!(
            woke >= pushing,
            "round {round}: the reader answered before the write was sent"
        );
        let late = woke.saturating_duration_since(pushed);
        assert!(
            late < Duration::from_millis(200),
            "round {round}: the reader woke {late:?} after the write was acknowledged"
        );
        // The reader's engine takes the page as any pull.
        let _ = reader.sync_with(&reader_link, "notes").await.unwrap();
        assert!(reader
            .get("notes", format!("n{round}"))
            .await
            .unwrap()
            .is_some());
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_is_bounded_by_the_request_and_by_the_server() {
    let hq = memory_engine("hq").await;
    let options = ServerOptions::default().max_wait(Duration::from_millis(600));
    let server = Server::bind(hq.clone(), "127.0.0.1:0", options)
        .await
        .unwrap();
    let link = peer(&server.url(), None);
    hq.put("notes", &json!({"id": "old"})).await.unwrap();
    let after = link
        .pull(
            &syncforge::CollectionName::new("notes").unwrap(),
            syncforge::Cursor::START,
            PAGE,
        )
        .await
        .unwrap()
        .next;

    // The client's own bound.
    let started = Instant::now();
    let page = link
        .wait_for_changes("notes", after, PAGE, Duration::from_millis(250))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(page.is_empty());
    assert_eq!(page.next, after);
    assert!(
        waited >= Duration::from_millis(250),
        "returned after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");

    // The server's bound lowers a longer wait.
    let started = Instant::now();
    let page = link
        .wait_for_changes("notes", after, PAGE, Duration::from_secs(60))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(page.is_empty());
    assert!(
        waited >= Duration::from_millis(600),
        "returned after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");

    // With something already there, no wait at all.
    let started = Instant::now();
    let page = link
        .wait_for_changes(
            "notes",
            syncforge::Cursor::START,
            PAGE,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(3));

    // Shutting down ends a wait in progress at once.
    let waiting = {
        let link = link.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let _ = link
                .wait_for_changes("notes", after, PAGE, Duration::from_secs(60))
                .await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Still waiting: had the request failed at once, the bound below would
    // hold without shutdown ending anything.
    assert!(!waiting.is_finished(), "the wait ended before the shutdown");
    server.shutdown().await.unwrap();
    let waited = waiting.await.unwrap();
    assert!(
        waited < Duration::from_millis(590),
        "the wait outlived the server: {waited:?}"
    );
}

/// A long poll whose read budget runs out among skipped positions (echoes
/// the client already holds, each a range of its own) answers at once with
/// `more`, instead of waiting its whole time with a page it cannot fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_among_skipped_positions_answers_at_once_with_more() {
    let hq = memory_engine("hq").await;
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    for i in 0..60 {
        hq.put("notes", &json!({"id": format!("n{i:02}")}))
            .await
            .unwrap();
    }
    // Positions 1 to 58, one range each: a read of one change gets past
    // two positions at most, so the read budget ends before position 59.
    let skip: Vec<String> = (1..=58).map(|p: u64| p.to_string()).collect();
    let started = Instant::now();
    let text = crate::support::raw_client()
        .get(format!(
            "{}/v1/collections/notes/changes?after=0&limit=1&wait=20000&skip={}",
            server.url(),
            skip.join(",")
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let waited = started.elapsed();
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "waited {waited:?}: {answer}"
    );
    assert_eq!(answer["more"], json!(true), "{answer}");
    assert!(answer["next"].as_u64().unwrap() > 0, "{answer}");
    server.shutdown().await.unwrap();
}

/// The server's wake-ups are its own: an application clearing the engine's
/// event handlers while a reader waits does not stop the reader waking at
/// the next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_the_engines_handlers_does_not_stop_long_polls_waking() {
    let hq = memory_engine("hq").await;
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let (reader_link, writer_link) = (peer(&server.url(), None), peer(&server.url(), None));
    let writer = memory_engine("writer").await;
    let waiting = {
        let link = reader_link.clone();
        tokio::spawn(async move {
            link.wait_for_changes(
                "notes",
                syncforge::Cursor::START,
                PAGE,
                Duration::from_secs(20),
            )
            .await
            .unwrap()
        })
    };
    // Let the request reach the server and start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the wait returned with nothing new");
    hq.events().remove_all_listeners(None);

    writer.put("notes", &json!({"id": "n1"})).await.unwrap();
    let pushed = Instant::now();
    let _ = writer.sync_with(&writer_link, "notes").await.unwrap();
    let page = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the reader was not woken by the write")
        .unwrap();
    assert_eq!(page.len(), 1);
    assert!(
        pushed.elapsed() < Duration::from_secs(5),
        "woke {:?} after the write",
        pushed.elapsed()
    );
    server.shutdown().await.unwrap();
}
