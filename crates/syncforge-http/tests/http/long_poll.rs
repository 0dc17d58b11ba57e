//! Long polls: a reader waiting on the feed wakes as soon as another client
//! writes, and a wait with nothing to wake it ends when it should.

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use syncforge::http::{Server, ServerOptions};
use syncforge::SyncPeer;

use crate::support::{memory_engine, peer, InstrumentedReplica};

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
        // Woken by the write, not by the end of its 10 s wait; the bound
        // leaves a loaded machine room to schedule the reader.
        let late = woke.saturating_duration_since(pushed);
        assert!(
            late < Duration::from_secs(1),
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
    // Far below the wait's 60 s: ended by the shutdown, with room for a
    // loaded machine.
    assert!(
        waited < Duration::from_secs(3),
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

/// Writes `blocks` runs of `LIMIT + 1` records to `collection`, then writes
/// each run's last record again: the feed holds runs of `LIMIT` positions
/// with a gap after each (where the rewritten record was), then the
/// rewritten records. Returns the skip list naming every run.
async fn runs_with_gaps(
    engine: &syncforge::SyncEngine,
    collection: &str,
    blocks: u64,
) -> Vec<String> {
    let run = LIMIT as u64;
    for block in 0..blocks {
        for item in 0..=run {
            engine
                .put(collection, &json!({"id": format!("b{block}-{item}")}))
                .await
                .unwrap();
        }
    }
    for block in 0..blocks {
        engine
            .put(
                collection,
                &json!({"id": format!("b{block}-{run}"), "again": true}),
            )
            .await
            .unwrap();
    }
    (0..blocks)
        .map(|block| format!("{}-{}", block * (run + 1) + 1, block * (run + 1) + run))
        .collect()
}

const LIMIT: usize = 50;

/// A skip list whose runs each end on a page's last position, with a gap
/// after each, made one request read 16 pages of `limit` changes and answer
/// none. What a request passes over is now bounded by a few pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skip_list_cannot_make_a_request_read_more_than_a_few_pages() {
    let engine = memory_engine("hq").await;
    let mut skip = runs_with_gaps(&engine, "notes", 20).await;
    // The rewritten records are skipped too, but for the last.
    let rewritten = 20 * (LIMIT as u64 + 1);
    skip.push(format!("{}-{}", rewritten + 1, rewritten + 19));
    let replica = InstrumentedReplica::new(engine);
    let scanned = replica.scanned.clone();
    let server = Server::bind(replica, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let client = crate::support::raw_client();
    let mut after = 0;
    let mut found = Vec::new();
    for _ in 0..100 {
        scanned.store(0, Ordering::SeqCst);
        let url = format!(
            "{}/v1/collections/notes/changes?after={after}&limit={LIMIT}&skip={}",
            server.url(),
            skip.join(",")
        );
        let answer = crate::support::get_json(&client, url).await;
        let read = scanned.load(Ordering::SeqCst);
        assert!(
            read <= 4 * LIMIT,
            "one request read {read} changes: {answer}"
        );
        for change in answer["changes"].as_array().unwrap() {
            found.push(change["record"]["id"].as_str().unwrap().to_owned());
        }
        after = answer["next"].as_u64().unwrap();
        if answer["more"] == json!(false) {
            break;
        }
    }
    // Following `more` still finds the one change not skipped.
    assert_eq!(found, ["b19-50"]);
    server.shutdown().await.unwrap();
}

/// A long poll that found only skipped changes waits; each write that wakes
/// it used to read everything after its cursor again, so a skip list naming
/// future positions made every write rescan. It reads on from where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reader_woken_by_skipped_writes_reads_only_what_came_since() {
    let engine = memory_engine("hq").await;
    let mut skip = runs_with_gaps(&engine, "notes", 2).await;
    // The two rewritten records, and the next three writes' positions.
    let rewritten = 2 * (LIMIT as u64 + 1);
    skip.push(format!("{}-{}", rewritten + 1, rewritten + 2));
    for position in rewritten + 3..=rewritten + 5 {
        skip.push(position.to_string());
    }
    let replica = InstrumentedReplica::new(engine.clone());
    let scanned = replica.scanned.clone();
    let server = Server::bind(replica, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let url = format!(
        "{}/v1/collections/notes/changes?after=0&limit={LIMIT}&wait=20000&skip={}",
        server.url(),
        skip.join(",")
    );
    let waiting = tokio::spawn(async move {
        let text = crate::support::raw_client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    });
    // The first read passes over the second run and the rewritten records
    // (the first run, right after the cursor, is passed without a read).
    let first_read = LIMIT + 2;
    for _ in 0..100 {
        if scanned.load(Ordering::SeqCst) >= first_read {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(scanned.load(Ordering::SeqCst), first_read);
    for write in 0..4 {
        // Let the reader wake and wait again between writes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        engine
            .put("notes", &json!({"id": format!("late-{write}")}))
            .await
            .unwrap();
    }
    let answer = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer["changes"][0]["record"]["id"], "late-3", "{answer}");
    // Each wake read the writes since the last read, not both runs again.
    let read = scanned.load(Ordering::SeqCst);
    assert!(read <= first_read + 4, "{read} changes read for 4 writes");
    server.shutdown().await.unwrap();
}

/// Two replicas that deleted one record each on their own: merging the
/// second deletion writes the record again (its tombstone and versions
/// move) although nothing visible changed, so no user event is emitted. A
/// long poll waiting for the feed slept through that write until its
/// deadline; it answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_deletion_wakes_a_waiting_reader() {
    let hq = memory_engine("hq").await;
    hq.put("notes", &json!({"id": "n1", "text": "draft"}))
        .await
        .unwrap();
    let phone = memory_engine("phone").await;
    let _ = phone
        .sync("notes", hq.get_all("notes").await.unwrap())
        .await
        .unwrap();
    hq.delete("notes", "n1").await.unwrap().unwrap();
    phone.delete("notes", "n1").await.unwrap().unwrap();
    let head = hq
        .changes("notes", syncforge::Cursor::START, Default::default())
        .await
        .unwrap()
        .next;
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let reader = peer(&server.url(), None);
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let page = reader
            .wait_for_changes("notes", head, PAGE, Duration::from_secs(20))
            .await
            .unwrap();
        (page, started.elapsed())
    });
    // Past the watch's first second, whose polls read again anyway.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let deleted = phone
        .changes("notes", syncforge::Cursor::START, Default::default())
        .await
        .unwrap()
        .changes
        .into_iter()
        .map(|change| change.record)
        .collect::<Vec<_>>();
    assert!(deleted.iter().all(|record| record.is_deleted()));
    let answer = peer(&server.url(), None)
        .push_records("notes", deleted)
        .await
        .unwrap();
    assert_eq!(answer.updated, 1, "{answer:?}");
    let (page, waited) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.changes.len(), 1, "{page:?}");
    assert!(page.changes[0].record.is_deleted());
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    server.shutdown().await.unwrap();
}

/// A write that began before a long poll started the server's watch is not
/// announced to it; polls made in the watch's first second (the one that
/// started it, and one that joined it) read once more when that second is
/// over, where they slept until their deadline (here 20 s). The replica
/// here never announces a write, standing for such writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_made_as_the_watch_starts_read_again_soon_for_writes_under_way() {
    let hq = memory_engine("hq").await;
    hq.put("notes", &json!({"id": "n1"})).await.unwrap();
    hq.put("tasks", &json!({"id": "t1"})).await.unwrap();
    let replica = InstrumentedReplica::new(hq.clone()).deaf();
    let server = Server::bind(replica, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let poll = |collection: &'static str| {
        let link = peer(&server.url(), None);
        tokio::spawn(async move {
            link.wait_for_changes(
                collection,
                syncforge::Cursor::new(1),
                PAGE,
                Duration::from_secs(20),
            )
            .await
        })
    };
    let first = poll("notes");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = poll("tasks");
    tokio::time::sleep(Duration::from_millis(100)).await;
    hq.put("notes", &json!({"id": "n2"})).await.unwrap();
    hq.put("tasks", &json!({"id": "t2"})).await.unwrap();
    for waiting in [first, second] {
        assert_eq!(waiting.await.unwrap().unwrap().changes.len(), 1);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    server.shutdown().await.unwrap();
}

/// A poll woken in the watch's first second by a write it skips (an echo
/// of its own) forgot the second look due when that second is over: a write
/// under way as the watch began, announced to no one, then waited for the
/// poll's deadline (here 20 s). The replica here announces its first write
/// only, standing for such writes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_woken_early_still_reads_again_when_the_watch_settles() {
    let hq = memory_engine("hq").await;
    hq.put("notes", &json!({"id": "n1"})).await.unwrap();
    let replica = InstrumentedReplica::new(hq.clone()).announces_at_most(1);
    let server = Server::bind(replica, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let polling = crate::support::raw_client()
        .get(format!(
            "{}/v1/collections/notes/changes?after=1&wait=20000&skip=2",
            server.url()
        ))
        .send();
    let polling = tokio::spawn(polling);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Announced, at position 2, which the poll skips: it reads, finds
    // nothing to show, and waits again.
    hq.put("notes", &json!({"id": "n2"})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Announced to no one.
    hq.put("notes", &json!({"id": "n3"})).await.unwrap();
    let answer = polling.await.unwrap().unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    let page: serde_json::Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(page["changes"].as_array().map(Vec::len), Some(1), "{page}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    server.shutdown().await.unwrap();
}

/// A write that began before a reader's long poll started watching, and
/// landed after the poll's second look (a second after it began), was
/// announced to no one: the poll slept until its deadline. The write that
/// lands wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_begun_before_the_wait_wakes_it_when_it_lands() {
    use std::sync::Arc;
    use syncforge::{MemoryBackend, StorageBackend, SyncEngine};
    use syncforge_testkit::faults::{FaultyBackend, Operation};

    let slow = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        1,
        0.0,
        Duration::ZERO,
    ));
    let hq = SyncEngine::builder()
        .client_id("hq")
        .backend(Arc::clone(&slow) as Arc<dyn StorageBackend>)
        .build()
        .await
        .unwrap();
    let server = Server::bind(hq.clone(), "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let link = peer(&server.url(), None);
    let writer = memory_engine("writer").await;
    let record = writer.put("notes", &json!({"id": "n1"})).await.unwrap();
    // The store takes two seconds to write the sync's batch.
    let batches_before = slow.calls(Operation::PutBatch);
    slow.rival_before_next_put_batch(|_| tokio::time::sleep(Duration::from_secs(2)));
    let syncing = {
        let hq = hq.clone();
        tokio::spawn(async move { hq.sync("notes", vec![record]).await })
    };
    // The sync has begun (nobody listening) before the wait starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let page = link
        .wait_for_changes(
            "notes",
            syncforge::Cursor::START,
            PAGE,
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(page.len(), 1);
    // Sooner, and the delay never held the write back: the wait would have
    // found the record already there, and the test proved nothing.
    assert!(
        waited >= Duration::from_millis(1_500),
        "the wait answered {waited:?} after it began: the write was not held back 2 s"
    );
    assert!(
        waited < Duration::from_secs(6),
        "the wait answered {waited:?} after it began, the write landing at about 2 s"
    );
    assert_eq!(syncing.await.unwrap().unwrap().added, 1);
    assert_eq!(
        slow.calls(Operation::PutBatch) - batches_before,
        1,
        "the sync wrote through the one delayed put_batch, and only it"
    );
    server.shutdown().await.unwrap();
}
