//! Many writers, disagreeing clocks, writers that die between requests, and
//! what a reader of the change feed sees afterwards.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;
use syncforge_backend_s3::{S3Backend, StoreOptions};
use syncforge_core::{
    ClientId, CollectionName, Content, Cursor, Error, Hlc, ManualTime, Record, RecordId,
    StorageBackend, Token, Write, WriteOutcome,
};
use tokio::task::JoinSet;

use syncforge_testkit::checks::{self, Crowd};
use syncforge_testkit::Context;

use crate::conformance::OnDirectory;
use crate::support;
use crate::wrapper::Wrapped;

fn coll(name: &str) -> CollectionName {
    CollectionName::new(name).unwrap()
}

fn rid(id: &str) -> RecordId {
    RecordId::new(id).unwrap()
}

fn content(id: &str, n: i64) -> Content {
    Content::from_value(json!({"id": id, "n": n})).unwrap()
}

fn handle(store: &Arc<dyn ObjectStore>, prefix: &str) -> S3Backend {
    S3Backend::from_store(Arc::clone(store), prefix).unwrap()
}

/// Reads the whole feed after `after`: each id's latest state, checking
/// that no id comes twice in one page and cursors increase.
pub(crate) async fn follow(
    store: &dyn StorageBackend,
    collection: &CollectionName,
    mut after: Cursor,
    seen: &mut BTreeMap<RecordId, Record>,
) -> Cursor {
    for _ in 0..10_000 {
        let page = store
            .changes(collection, after, 7.try_into().unwrap())
            .await
            .unwrap();
        let mut previous = after;
        for change in page.changes {
            assert!(change.cursor > previous, "cursors must increase");
            previous = change.cursor;
            seen.insert(change.record.id().clone(), change.record);
        }
        assert!(page.next >= previous);
        after = page.next;
        if !page.more {
            return after;
        }
    }
    panic!("the feed did not end");
}

/// Every record of the collection, by id.
pub(crate) async fn all(
    store: &dyn StorageBackend,
    collection: &CollectionName,
) -> BTreeMap<RecordId, Record> {
    store
        .get_all(collection)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id().clone(), r))
        .collect()
}

/// `writers` tasks, each on its own handle, increment `n` of records among
/// `records` ids, `rounds` times each, retrying lost races. Returns the
/// increments each id received.
async fn increment_concurrently(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    collection: &CollectionName,
    writers: usize,
    records: usize,
    rounds: usize,
) -> BTreeMap<String, i64> {
    let setup = handle(store, prefix);
    let mut clock = Hlc::new(ClientId::new("setup").unwrap());
    let creates: Vec<Write> = (0..records)
        .map(|i| {
            Write::create(Record::create(
                content(&format!("r{i:02}"), 0),
                clock.now().unwrap(),
            ))
        })
        .collect();
    for outcome in setup.put_batch(collection, &creates).await.unwrap() {
        assert!(matches!(outcome, WriteOutcome::Written { .. }));
    }
    let mut tasks = JoinSet::new();
    for w in 0..writers {
        let backend = handle(store, prefix);
        let collection = collection.clone();
        tasks.spawn(async move {
            let mut clock = Hlc::new(ClientId::new(&format!("writer-{w}")).unwrap());
            let mut done = BTreeMap::new();
            for round in 0..rounds {
                // Writers go in pairs, each pair on one record a round, so
                // that every round has writers racing for the same record.
                let id = format!("r{:02}", (w / 2 * 7 + round * 3) % records);
                for attempt in 0.. {
                    assert!(attempt < 500, "writer {w} kept losing on {id}");
                    let stored = backend.get(&collection, &rid(&id)).await.unwrap().unwrap();
                    let n = stored.record.get("n").and_then(|v| v.as_i64()).unwrap();
                    clock.observe(stored.record.newest_stamp()).unwrap();
                    let mut next = stored.record.clone();
                    next.apply_put(content(&id, n + 1), &clock.now().unwrap())
                        .unwrap();
                    tokio::task::yield_now().await;
                    match backend
                        .put(&collection, &Write::replace(next, stored.token))
                        .await
                        .unwrap()
                    {
                        WriteOutcome::Written { .. } => break,
                        WriteOutcome::Conflict => continue,
                    }
                }
                *done.entry(id).or_insert(0) += 1;
            }
            done
        });
    }
    let mut expected = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        for (id, count) in done.unwrap() {
            *expected.entry(id).or_insert(0) += count;
        }
    }
    expected
}

async fn sixteen_writers_lose_nothing(store: Arc<dyn ObjectStore>, prefix: &str, rounds: usize) {
    let collection = coll("counters");
    let expected = increment_concurrently(&store, prefix, &collection, 16, 20, rounds).await;
    let reader = handle(&store, prefix);
    let stored = all(&reader, &collection).await;
    for (id, count) in &expected {
        let n = stored[&rid(id)].get("n").and_then(|v| v.as_i64());
        assert_eq!(n, Some(*count), "increments of {id} (lost updates?)");
    }
    // And the feed, read from the start, ends with exactly those states.
    let mut seen = BTreeMap::new();
    follow(&reader, &collection, Cursor::START, &mut seen).await;
    assert_eq!(seen, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_on_twenty_records_lose_no_update_in_memory() {
    sixteen_writers_lose_nothing(Arc::new(InMemory::new()), "dse", 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_writers_on_twenty_records_lose_no_update_on_s3() {
    let Some(server) = support::s3_server().await else {
        return;
    };
    // moto answers about 140 requests/s: a few increments per writer.
    sixteen_writers_lose_nothing(server.store(), &support::unique_prefix("sixteen"), 4).await;
}

/// How long the crowd below may take.
const CROWD_TIMEOUT: Duration = Duration::from_secs(300);

/// Four times the writers of the conformance suite's
/// `concurrent_writers_lose_no_update`, each on a handle (and
/// `LocalDirectory`) of its own, all on one record of a local directory:
/// every increment survives, and no writer hears `Unavailable` because its
/// claim of a feed entry kept losing to the others (which writers retrying
/// at once did under load). The change feed then holds the counter as
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_writers_on_one_record_of_a_local_directory_lose_nothing_and_never_give_up() {
    let factory = OnDirectory {
        dir: tempfile::tempdir().unwrap(),
    };
    let ctx = Context::open(&factory).await;
    let crowd = Crowd {
        handles: 32,
        writers_per_handle: 1,
        increments: 5,
    };
    let collection = tokio::time::timeout(
        CROWD_TIMEOUT,
        checks::concurrent_writers_lose_no_update_in(&ctx, crowd),
    )
    .await
    .unwrap_or_else(|_| panic!("{crowd:?} took longer than {CROWD_TIMEOUT:?}"))
    .unwrap_or_else(|message| panic!("{message}"));
    let mut seen = BTreeMap::new();
    follow(ctx.store().as_ref(), &collection, Cursor::START, &mut seen).await;
    assert_eq!(seen, all(ctx.store().as_ref(), &collection).await);
}

/// Two writers whose clocks are two minutes apart and a third replica that
/// follows the feed while they write: the follower ends with every record's
/// latest state, whatever the stamps.
async fn clocks_apart_and_a_follower(store: Arc<dyn ObjectStore>, prefix: &str, writes: usize) {
    let collection = coll("readings");
    let now = 1_700_000_000_000;
    let mut tasks = JoinSet::new();
    for (w, skew) in [(0usize, 0u64), (1, 120_000)] {
        let backend = handle(&store, prefix);
        let collection = collection.clone();
        tasks.spawn(async move {
            let time = Arc::new(ManualTime::new(now + skew));
            let mut clock =
                Hlc::with_time(ClientId::new(&format!("sensor-{w}")).unwrap(), time.clone());
            for i in 0..writes {
                time.advance(1_000);
                // Both write the shared ids, and each its own ones.
                let id = if i % 2 == 0 {
                    format!("shared-{}", i % 6)
                } else {
                    format!("own-{w}-{i}")
                };
                for attempt in 0.. {
                    // Each loss is to the other writer's write of the id.
                    assert!(attempt < 500, "sensor {w} kept losing on {id}");
                    let stored = backend.get(&collection, &rid(&id)).await.unwrap();
                    let write = match stored {
                        Some(stored) => {
                            clock.observe(stored.record.newest_stamp()).unwrap();
                            let mut next = stored.record.clone();
                            next.apply_put(content(&id, i as i64), &clock.now().unwrap())
                                .unwrap();
                            Write::replace(next, stored.token)
                        }
                        None => Write::create(Record::create(
                            content(&id, i as i64),
                            clock.now().unwrap(),
                        )),
                    };
                    if let WriteOutcome::Written { .. } =
                        backend.put(&collection, &write).await.unwrap()
                    {
                        break;
                    }
                }
            }
        });
    }
    let follower = handle(&store, prefix);
    let mut seen = BTreeMap::new();
    let mut cursor = Cursor::START;
    let writers_done = async {
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
    };
    tokio::pin!(writers_done);
    // The writers end (their retries are bounded); the deadline keeps a hung
    // store from hanging the test.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writers did not finish within 300 s"
        );
        tokio::select! {
            () = &mut writers_done => break,
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                cursor = follow(&follower, &collection, cursor, &mut seen).await;
            }
        }
    }
    follow(&follower, &collection, cursor, &mut seen).await;
    assert_eq!(
        seen,
        all(&follower, &collection).await,
        "the follower missed a change"
    );
    assert_eq!(seen.len(), 3 + writes, "every id written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_two_minutes_apart_and_a_follower_that_misses_nothing_in_memory() {
    clocks_apart_and_a_follower(Arc::new(InMemory::new()), "dse", 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_two_minutes_apart_and_a_follower_that_misses_nothing_on_s3() {
    let Some(server) = support::s3_server().await else {
        return;
    };
    clocks_apart_and_a_follower(server.store(), &support::unique_prefix("clocks"), 16).await;
}

/// A writer's workload: a batch creating three records, then an update of
/// one of them and a create. Returns the writes acknowledged (`Written`)
/// before the writer died, in order.
async fn doomed_workload(backend: &S3Backend, collection: &CollectionName) -> Vec<Record> {
    let mut clock = Hlc::new(ClientId::new("doomed").unwrap());
    let mut acknowledged = Vec::new();
    let batch: Vec<Write> = ["a", "b", "c"]
        .iter()
        .map(|id| Write::create(Record::create(content(id, 1), clock.now().unwrap())))
        .collect();
    let Ok(outcomes) = backend.put_batch(collection, &batch).await else {
        return acknowledged;
    };
    for (write, outcome) in batch.iter().zip(&outcomes) {
        if let WriteOutcome::Written { .. } = outcome {
            acknowledged.push(write.record.clone());
        }
    }
    let Ok(Some(stored)) = backend.get(collection, &rid("b")).await else {
        return acknowledged;
    };
    let mut next = stored.record.clone();
    next.apply_put(content("b", 2), &clock.now().unwrap())
        .unwrap();
    let more = [
        Write::replace(next, stored.token),
        Write::create(Record::create(content("d", 1), clock.now().unwrap())),
    ];
    if let Ok(outcomes) = backend.put_batch(collection, &more).await {
        for (write, outcome) in more.iter().zip(&outcomes) {
            if let WriteOutcome::Written { .. } = outcome {
                acknowledged.push(write.record.clone());
            }
        }
    }
    acknowledged
}

/// Kills the writer before each of its requests in turn (and, separately,
/// right after each request took effect but before it learned so): every
/// acknowledged write stays visible, the feed read from the start delivers
/// every record's current state exactly once, and another writer carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_dying_between_any_two_requests_loses_nothing_acknowledged() {
    let collection = coll("dying");
    // How many requests the whole workload makes when nobody dies.
    let probe = Arc::new(Wrapped::new(Arc::new(InMemory::new())));
    let total = {
        let backend = S3Backend::from_store(probe.clone(), "dse").unwrap();
        assert_eq!(doomed_workload(&backend, &collection).await.len(), 5);
        probe.requests()
    };
    assert!(total > 8, "{total} requests");
    for last_lands in [false, true] {
        for dies_after in 0..=total {
            let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let dying =
                Arc::new(Wrapped::new(Arc::clone(&memory)).dying_after(dies_after, last_lands));
            let doomed = S3Backend::from_store(dying, "dse").unwrap();
            let acknowledged = doomed_workload(&doomed, &collection).await;

            let survivor = handle(&memory, "dse");
            // Reading the feed completes what the dead writer claimed.
            let mut seen = BTreeMap::new();
            let end = follow(&survivor, &collection, Cursor::START, &mut seen).await;
            let stored = all(&survivor, &collection).await;
            assert_eq!(
                seen, stored,
                "died after {dies_after}: the feed disagrees with the records"
            );
            for record in &acknowledged {
                let now = &stored[record.id()];
                assert!(
                    now == record || now.version() > record.version(),
                    "died after {dies_after} (last lands: {last_lands}): acknowledged {} lost",
                    record.id()
                );
            }
            // Another writer carries on; a reader from the old end sees it.
            let mut clock = Hlc::new(ClientId::new("survivor").unwrap());
            let write = Write::create(Record::create(content("e", 1), clock.now().unwrap()));
            assert!(matches!(
                survivor.put(&collection, &write).await.unwrap(),
                WriteOutcome::Written { .. }
            ));
            let mut later = BTreeMap::new();
            follow(&survivor, &collection, end, &mut later).await;
            assert!(
                later.contains_key(&rid("e")),
                "died after {dies_after}: a later write is missed"
            );
        }
    }
}

/// A create its writer was told failed (the writer died between claiming
/// the record's feed entry and writing it), then a delete of that record,
/// which found none: the next reader of the feed completed the pending
/// create, and the record came back after the delete. A delete that finds
/// no record leaves a marker, which voids such a create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_does_not_come_back_after_a_delete() {
    a_failed_create_stays_gone(Before::Nothing, Removal::Delete).await;
}

/// The same over the marker of an earlier delete: the create's entry
/// expected that marker, and a delete finding it wrote nothing, so the
/// create came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_over_a_marker_does_not_come_back_after_a_delete() {
    a_failed_create_stays_gone(Before::Deleted, Removal::Delete).await;
}

/// The same with the delete's marker put refused once, writing nothing
/// (S3's 409 to a write racing another request on the key): the delete
/// read the old marker again, took it for its own, and left it in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_over_a_marker_does_not_come_back_after_a_refused_delete() {
    a_failed_create_stays_gone(Before::Deleted, Removal::DeleteRefusedOnce).await;
}

/// The same with `clear_collection` in place of the delete, which marked
/// only the records it listed: a pending create, of a record never written
/// or over a marker, came back after the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_does_not_come_back_after_a_clear() {
    a_failed_create_stays_gone(Before::Nothing, Removal::Clear).await;
    a_failed_create_stays_gone(Before::Deleted, Removal::Clear).await;
}

/// What the record was before the failed create.
#[derive(Debug, Clone, Copy)]
enum Before {
    Nothing,
    /// Created and deleted: a marker.
    Deleted,
}

/// How the record is removed after the failed create.
#[derive(Debug, Clone, Copy)]
enum Removal {
    Delete,
    /// A delete whose first conditional put is refused, writing nothing.
    DeleteRefusedOnce,
    Clear,
}

/// A create of `x` that dies after each of its requests in turn, over what
/// `before` leaves, then `removal`: a reader of the feed never sees `x`
/// again, and a later create is written as any other.
async fn a_failed_create_stays_gone(before: Before, removal: Removal) {
    let collection = coll("deleted");
    let create = || {
        let mut clock = Hlc::new(ClientId::new("doomed").unwrap());
        Write::create(Record::create(content("x", 1), clock.now().unwrap()))
    };
    let prepared = || async {
        let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        if let Before::Deleted = before {
            let earlier = handle(&memory, "dse");
            earlier.put(&collection, &create()).await.unwrap();
            assert!(earlier.delete(&collection, &rid("x")).await.unwrap());
        }
        memory
    };
    let probe = Arc::new(Wrapped::new(prepared().await));
    let backend = S3Backend::from_store(probe.clone(), "dse").unwrap();
    backend.put(&collection, &create()).await.unwrap();
    let total = probe.requests();
    let mut failed = 0;
    for dies_after in 0..total {
        let memory = prepared().await;
        let dying = Arc::new(Wrapped::new(Arc::clone(&memory)).dying_after(dies_after, false));
        let doomed = S3Backend::from_store(dying, "dse").unwrap();
        if doomed.put(&collection, &create()).await.is_ok() {
            continue;
        }
        failed += 1;
        let survivor = handle(&memory, "dse");
        match removal {
            Removal::Delete => {
                survivor.delete(&collection, &rid("x")).await.unwrap();
            }
            Removal::DeleteRefusedOnce => {
                let refusing: Arc<dyn ObjectStore> =
                    Arc::new(Wrapped::new(Arc::clone(&memory)).refusing_nth_update("/r/", 1));
                let deleter = handle(&refusing, "dse");
                deleter.delete(&collection, &rid("x")).await.unwrap();
            }
            Removal::Clear => survivor.clear_collection(&collection).await.unwrap(),
        }
        let mut seen = BTreeMap::new();
        follow(&survivor, &collection, Cursor::START, &mut seen).await;
        assert!(
            !seen.contains_key(&rid("x")),
            "{before:?}, {removal:?}, died after {dies_after}: the failed create came back"
        );
        assert!(survivor
            .get(&collection, &rid("x"))
            .await
            .unwrap()
            .is_none());
        // A create after the removal is written as any other.
        assert!(matches!(
            survivor.put(&collection, &create()).await.unwrap(),
            WriteOutcome::Written { .. }
        ));
    }
    assert!(
        failed > 1,
        "{before:?}: {failed} of {total} deaths failed the create"
    );
}

/// A slow writer (its record writes take long) does not hold readers up:
/// a reader completes its claimed items, and the writer still hears Written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_complete_a_slow_writers_items() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let collection = coll("slow");
    let slow =
        Arc::new(Wrapped::new(Arc::clone(&memory)).slow_puts("/r/", Duration::from_millis(500)));
    let writer = S3Backend::from_store(slow.clone(), "dse").unwrap();
    let mut clock = Hlc::new(ClientId::new("slow").unwrap());
    let record = Record::create(content("late", 1), clock.now().unwrap());
    let write = Write::create(record.clone());
    let writing = tokio::spawn(async move { writer.put(&coll("slow"), &write).await });
    // The writer has claimed its feed entry once its record write begins.
    slow.slow_put_begun().await;
    let reader = handle(&memory, "dse");
    let page = reader
        .changes(&collection, Cursor::START, 10.try_into().unwrap())
        .await
        .unwrap();
    assert_eq!(
        page.records().cloned().collect::<Vec<_>>(),
        vec![record],
        "the reader completed the claimed write"
    );
    let outcome = writing.await.unwrap().unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { cursor, .. } if cursor == page.changes[0].cursor)
    );
}

/// A slow writer's update that a reader completed, and that another writer
/// then replaced before the slow writer's own record write came back, was
/// reported as a conflict: the writer took a write that had landed for one
/// refused, and an increment made again counted twice. The replacing state
/// names the states it replaced, and the writer finds its own among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writers_update_completed_and_replaced_before_it_looked_is_written() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let collection = coll("replaced");
    let fast = handle(&memory, "dse");
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let first = Record::create(content("r", 0), clock.now().unwrap());
    assert!(matches!(
        fast.put(&collection, &Write::create(first)).await.unwrap(),
        WriteOutcome::Written { .. }
    ));
    let read = fast.get(&collection, &rid("r")).await.unwrap().unwrap();
    let slow =
        Arc::new(Wrapped::new(Arc::clone(&memory)).slow_puts("/r/", Duration::from_millis(500)));
    let writer = S3Backend::from_store(slow.clone(), "dse").unwrap();
    let mut update = read.record.clone();
    update
        .apply_put(content("r", 1), &clock.now().unwrap())
        .unwrap();
    let write = Write::replace(update, read.token);
    let writing = tokio::spawn(async move { writer.put(&coll("replaced"), &write).await });
    // The slow writer has claimed its feed entry once its record write
    // begins; a reader completes it, and another writer replaces it.
    slow.slow_put_begun().await;
    let page = fast
        .changes(&collection, Cursor::START, 10.try_into().unwrap())
        .await
        .unwrap();
    let completed = page.changes.last().unwrap().cursor;
    let now = fast.get(&collection, &rid("r")).await.unwrap().unwrap();
    assert_eq!(
        now.record.get("n"),
        Some(json!(1)),
        "the reader completed it"
    );
    let mut next = now.record.clone();
    next.apply_put(content("r", 2), &clock.now().unwrap())
        .unwrap();
    assert!(matches!(
        fast.put(&collection, &Write::replace(next, now.token))
            .await
            .unwrap(),
        WriteOutcome::Written { .. }
    ));
    let outcome = writing.await.unwrap().unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { cursor, .. } if cursor == completed),
        "{outcome:?}"
    );
}

/// The token a write answers names the states before it, and it grew by
/// one cursor with each write made with the token of the one before: a
/// program chaining writes so sent ever longer tokens, which every feed
/// item kept. It names 16 at most, as the token a read hands out does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_chained_writes_stay_bounded() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let collection = coll("chained");
    let store = handle(&memory, "dse");
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let mut record = Record::create(content("r", 0), clock.now().unwrap());
    let mut token = match store.put(&collection, &Write::create(record.clone())).await {
        Ok(WriteOutcome::Written { token, .. }) => token,
        other => panic!("{other:?}"),
    };
    for n in 1..=20 {
        record
            .apply_put(content("r", n), &clock.now().unwrap())
            .unwrap();
        token = match store
            .put(&collection, &Write::replace(record.clone(), token))
            .await
        {
            Ok(WriteOutcome::Written { token, .. }) => token,
            other => panic!("write {n}: {other:?}"),
        };
    }
    let read = store.get(&collection, &rid("r")).await.unwrap().unwrap();
    assert_eq!(token, read.token, "the write's token is the read's");
    let syncforge_core::Token::Tag(text) = &token else {
        panic!("{token:?}")
    };
    let cursors = text
        .split_once('/')
        .map_or(0, |(cursors, _)| cursors.split(',').count());
    assert_eq!(cursors, 16, "{text}");
}

/// A writer whose feed entry create landed, but was sent again (its answer
/// lost) and refused, took its own entry for another writer's and claimed
/// the next number with the same writes. A reader completed the first
/// entry, and the writer's commit of the second was refused: a write that
/// was applied came back as a conflict. The writer knows its entry by its
/// bytes, and keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_entry_claim_was_sent_twice_keeps_its_entry() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let collection = coll("resent");
    let slow = Arc::new(
        Wrapped::new(Arc::clone(&memory))
            .resending_puts_containing("/f/")
            .slow_puts("/r/", Duration::from_millis(300)),
    );
    let writer = S3Backend::from_store(slow.clone(), "dse").unwrap();
    let mut clock = Hlc::new(ClientId::new("resent").unwrap());
    let record = Record::create(content("once", 1), clock.now().unwrap());
    let write = Write::create(record.clone());
    let mut writing = tokio::spawn(async move { writer.put(&coll("resent"), &write).await });
    tokio::select! {
        () = slow.slow_put_begun() => {}
        ended = &mut writing => panic!("the put ended before writing its record: {ended:?}"),
    }
    let reader = handle(&memory, "dse");
    let page = reader
        .changes(&collection, Cursor::START, 10.try_into().unwrap())
        .await
        .unwrap();
    assert_eq!(page.records().cloned().collect::<Vec<_>>(), vec![record]);
    let outcome = writing.await.unwrap().unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { cursor, .. } if cursor == page.changes[0].cursor),
        "{outcome:?}"
    );
    assert_eq!(
        objects_under(&memory, "dse/c/resent/f").await.len(),
        1,
        "one entry for one put"
    );
}

/// With a small compaction interval, entries are folded and deleted (in
/// bulk): the bucket keeps a bounded number of feed objects, and readers
/// from any cursor still see every change once.
async fn compaction_bounds_the_feed(store: Arc<dyn ObjectStore>, prefix: &str, writes: i64) {
    let options = StoreOptions {
        compaction_interval: 4.try_into().unwrap(),
        ..StoreOptions::default()
    };
    let backend = handle(&store, prefix).with_options(options);
    let collection = coll("compacted");
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let mut cursors = vec![Cursor::START];
    // Each record's last write: a reader from before it must see it.
    let mut last_written: BTreeMap<RecordId, Cursor> = BTreeMap::new();
    for i in 0..writes {
        let id = format!("r{}", i % 13);
        let write = match backend.get(&collection, &rid(&id)).await.unwrap() {
            Some(stored) => {
                let mut next = stored.record.clone();
                next.apply_put(content(&id, i), &clock.now().unwrap())
                    .unwrap();
                Write::replace(next, stored.token)
            }
            None => Write::create(Record::create(content(&id, i), clock.now().unwrap())),
        };
        match backend.put(&collection, &write).await.unwrap() {
            WriteOutcome::Written { cursor, .. } => {
                cursors.push(cursor);
                last_written.insert(rid(&id), cursor);
            }
            WriteOutcome::Conflict => panic!("a lone writer conflicted"),
        }
    }
    let entries = objects_under(&store, &format!("{prefix}/c/compacted/f"))
        .await
        .len();
    assert!(entries <= 2 * 4 + 1, "{entries} feed entries left");
    let stored = all(&backend, &collection).await;
    for from in cursors {
        let mut seen = BTreeMap::new();
        follow(&backend, &collection, from, &mut seen).await;
        for (id, record) in &seen {
            assert_eq!(
                Some(record),
                stored.get(id),
                "from {from}: {id} is not current"
            );
        }
        let missed: Vec<&RecordId> = last_written
            .iter()
            .filter(|(id, last)| **last > from && !seen.contains_key(*id))
            .map(|(id, _)| id)
            .collect();
        assert!(missed.is_empty(), "from {from}: missed {missed:?}");
        if from == Cursor::START {
            assert_eq!(seen, stored, "from the start every record once");
        }
    }
}

/// A handle on `store` compacting every four entries, after it wrote 20 new
/// records of `collection`, one by one.
async fn twenty_new_records_compacted_every_four(
    store: &Arc<dyn ObjectStore>,
    collection: &CollectionName,
) -> S3Backend {
    let options = StoreOptions {
        compaction_interval: 4.try_into().unwrap(),
        ..StoreOptions::default()
    };
    let backend = handle(store, "dse").with_options(options);
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    for i in 0..20 {
        let id = format!("r{i}");
        let write = Write::create(Record::create(content(&id, i), clock.now().unwrap()));
        assert!(matches!(
            backend.put(collection, &write).await.unwrap(),
            WriteOutcome::Written { .. }
        ));
    }
    backend
}

/// The objects right under `prefix` (one level, as a listing with a
/// delimiter gives them).
async fn objects_under(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
) -> Vec<object_store::ObjectMeta> {
    store
        .list_with_delimiter(Some(&prefix.into()))
        .await
        .unwrap()
        .objects
}

/// A server that gives ETags bare in listings and quoted in reads made every
/// listed entry look replaced: the feed could not be read, and compaction
/// never ran. Readers and compaction compare the tags without their quotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_reads_on_a_store_whose_listings_give_etags_bare() {
    let store: Arc<dyn ObjectStore> =
        Arc::new(Wrapped::new(Arc::new(InMemory::new())).unquoting_listed_tags());
    let collection = coll("quoted");
    let backend = twenty_new_records_compacted_every_four(&store, &collection).await;
    let entries = objects_under(&store, "dse/c/quoted/f").await.len();
    assert!(
        entries <= 2 * 4 + 1,
        "{entries} feed entries left: no compaction"
    );
    let mut seen = BTreeMap::new();
    follow(&backend, &collection, Cursor::START, &mut seen).await;
    assert_eq!(seen.len(), 20);
}

/// A claim refused although no one took the number (S3's 409 to a create
/// racing another request on the key) moved on to the next number and left
/// a hole, which a writer with an older view of the feed would fill later,
/// under the cursors readers already held. The number is tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_refused_without_the_number_being_taken_leaves_no_hole() {
    let store: Arc<dyn ObjectStore> =
        Arc::new(Wrapped::new(Arc::new(InMemory::new())).refusing_first_creates("/f/"));
    let backend = handle(&store, "dse");
    let collection = coll("holes");
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let mut cursors = Vec::new();
    for i in 0..3 {
        let id = format!("r{i}");
        let write = Write::create(Record::create(content(&id, i), clock.now().unwrap()));
        match backend.put(&collection, &write).await.unwrap() {
            WriteOutcome::Written { cursor, .. } => cursors.push(cursor),
            WriteOutcome::Conflict => panic!("a lone writer conflicted"),
        }
    }
    let entries: Vec<String> = objects_under(&store, "dse/c/holes/f")
        .await
        .into_iter()
        .filter_map(|meta| meta.location.filename().map(str::to_owned))
        .collect();
    let numbered: Vec<String> = (1..=3u64).map(|n| format!("{n:016x}")).collect();
    assert_eq!(entries, numbered, "entries 1 to 3, with no number skipped");
}

/// A compaction whose horizon put landed, but was sent again (its answer
/// lost) and refused, took the refusal for another compactor's move and
/// deleted the segment the horizon now names: every reader from before the
/// horizon failed from then on. It keeps the segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_whose_horizon_put_was_sent_twice_keeps_its_segment() {
    let store: Arc<dyn ObjectStore> =
        Arc::new(Wrapped::new(Arc::new(InMemory::new())).resending_puts("/h"));
    let collection = coll("compacted");
    let backend = twenty_new_records_compacted_every_four(&store, &collection).await;
    let segments = objects_under(&store, "dse/c/compacted/s").await.len();
    assert!(segments >= 1, "no compaction ran");
    let mut seen = BTreeMap::new();
    follow(&backend, &collection, Cursor::START, &mut seen).await;
    assert_eq!(seen, all(&backend, &collection).await);
    assert_eq!(seen.len(), 20);
}

/// A delete whose marker put landed, but was sent again (its answer lost)
/// and refused, read its own marker back and answered that there had been
/// no record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_marker_put_was_sent_twice_says_the_record_existed() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let collection = coll("notes");
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let record = Record::create(content("a", 1), clock.now().unwrap());
    handle(&memory, "dse")
        .put(&collection, &Write::create(record))
        .await
        .unwrap();
    let resending: Arc<dyn ObjectStore> = Arc::new(Wrapped::new(memory).resending_puts("/r/a"));
    let deleter = handle(&resending, "dse");
    assert!(deleter.delete(&collection, &rid("a")).await.unwrap());
    assert!(deleter.get(&collection, &rid("a")).await.unwrap().is_none());
    assert!(!deleter.delete(&collection, &rid("a")).await.unwrap());
}

/// A segment removed by something else than syncforge while the horizon
/// still names it: every reader from before the horizon read it again
/// eight times and gave up with `Unavailable`, which the engine retries for
/// ever, and compaction stopped without a word. Both now say it is corrupt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_removed_under_its_horizon_is_corrupt() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let collection = coll("compacted");
    twenty_new_records_compacted_every_four(&store, &collection).await;
    let segments = objects_under(&store, "dse/c/compacted/s").await;
    assert_eq!(segments.len(), 1, "one compacted segment");
    store.delete(&segments[0].location).await.unwrap();
    // A handle that never read it, so that nothing of it is remembered.
    let reader = handle(&store, "dse");
    let error = reader
        .changes(&collection, Cursor::START, 7.try_into().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Corrupt { location, .. } if location.ends_with("/h")),
        "{error:?}"
    );
}

/// A segment whose last write lies past its horizon (a damaged or foreign
/// object): a reader took that cursor for its `next`, and every later page
/// started beyond every later write. It is corrupt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_with_a_cursor_past_its_horizon_is_corrupt() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let collection = coll("compacted");
    twenty_new_records_compacted_every_four(&store, &collection).await;
    let segments = objects_under(&store, "dse/c/compacted/s").await;
    assert_eq!(segments.len(), 1, "one compacted segment");
    let location = &segments[0].location;
    let body = store.get(location).await.unwrap().bytes().await.unwrap();
    let mut segment: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let last = segment["writes"]
        .as_array_mut()
        .and_then(|writes| writes.last_mut())
        .expect("the segment holds writes");
    last[0] = json!(1u64 << 52);
    store
        .put(location, serde_json::to_vec(&segment).unwrap().into())
        .await
        .unwrap();
    let reader = handle(&store, "dse");
    let error = reader
        .changes(&collection, Cursor::START, 100.try_into().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Corrupt { location, .. } if location.contains("/s/")),
        "{error:?}"
    );
}

/// A horizon past entry 0 that names no segment (syncforge never writes
/// one): readers from the start skipped every record folded before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_horizon_naming_no_segment_is_corrupt() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let collection = coll("compacted");
    let backend = twenty_new_records_compacted_every_four(&store, &collection).await;
    store
        .put(
            &"dse/c/compacted/h".into(),
            r#"{"horizon":4}"#.as_bytes().to_vec().into(),
        )
        .await
        .unwrap();
    let error = backend
        .changes(&collection, Cursor::START, 7.try_into().unwrap())
        .await
        .unwrap_err();
    // Named by its collection, as a corrupt record is, not by its keys'
    // directory (`dse/c/compacted`).
    assert!(
        matches!(&error, Error::Corrupt { collection, .. } if collection == "compacted"),
        "{error:?}"
    );
}

/// A write whose check of the store's conditional writes fails for a
/// reason that may pass removes its probe in the background where a Tokio
/// runtime runs; driven by another executor (as a local directory may be),
/// it is removed before the error is told, not spawned into no runtime.
#[test]
fn a_probe_failing_outside_a_runtime_is_an_error_not_a_panic() {
    use std::future::Future;
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let dead: Arc<dyn ObjectStore> = Arc::new(Wrapped::new(memory).dying_after(0, false));
    let backend = handle(&dead, "dse");
    let mut clock = Hlc::new(ClientId::new("c").unwrap());
    let write = Write::create(Record::create(content("x", 1), clock.now().unwrap()));
    let collection = coll("notes");
    // Polled by hand, as an executor other than Tokio's would.
    let mut put = std::pin::pin!(backend.put(&collection, &write));
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    let answer = (0..1_000)
        .find_map(|_| match put.as_mut().poll(&mut context) {
            std::task::Poll::Ready(answer) => Some(answer),
            std::task::Poll::Pending => None,
        })
        .expect("the write never finished");
    let error = answer.unwrap_err();
    assert!(error.is_transient(), "{error}");
}

/// A store whose prefix lies under another store's records folder
/// (`app/c/notes/r` under `app`): listings go down every level, so the
/// outer store's `clear_collection` overwrote every object of the inner
/// store with a marker, and its `get_all` failed on them as misplaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_nested_under_another_stores_records_is_not_its_records() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let (outer, inner) = (handle(&memory, "app"), handle(&memory, "app/c/notes/r"));
    let notes = coll("notes");
    let mut clock = Hlc::new(ClientId::new("c").unwrap());
    for (store, id) in [(&outer, "o"), (&inner, "i")] {
        let write = Write::create(Record::create(content(id, 1), clock.now().unwrap()));
        store.put(&notes, &write).await.unwrap();
    }
    let outer_records = outer.get_all(&notes).await.unwrap();
    assert_eq!(outer_records.len(), 1, "{outer_records:?}");
    outer.clear_collection(&notes).await.unwrap();
    assert!(outer.get_all(&notes).await.unwrap().is_empty());
    let kept = inner.get_all(&notes).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].id().as_str(), "i");
    // Cleared, the outer collection holds no record: the inner store's
    // objects do not list it.
    assert!(outer.list_collections().await.unwrap().is_empty());
}

/// Each page of a reader behind the horizon downloaded the whole segment:
/// a new replica pulling a compacted collection page by page read it once
/// a page, quadratic in the collection. It is read once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_the_horizon_reads_the_segment_once() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let collection = coll("compacted");
    let writer = twenty_new_records_compacted_every_four(&memory, &collection).await;
    let (counting, segment_reads) = Wrapped::new(Arc::clone(&memory)).counting_gets("/s/");
    let counting: Arc<dyn ObjectStore> = Arc::new(counting);
    let reader = handle(&counting, "dse");
    let mut seen = BTreeMap::new();
    follow(&reader, &collection, Cursor::START, &mut seen).await;
    assert_eq!(seen, all(&writer, &collection).await);
    // 20 records, 7 a page: three pages, at least two of them in the segment.
    assert_eq!(segment_reads.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A compaction whose deletes failed after it moved the horizon left the
/// segment it replaced in the bucket for good: nothing listed the segments.
/// The next compaction removes every segment of an older horizon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_a_failed_compaction_left_are_removed_by_the_next() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let wrapped = Arc::new(Wrapped::new(Arc::clone(&memory)));
    let store: Arc<dyn ObjectStore> = Arc::clone(&wrapped) as Arc<dyn ObjectStore>;
    let options = StoreOptions {
        compaction_interval: 4.try_into().unwrap(),
        ..StoreOptions::default()
    };
    let backend = handle(&store, "dse").with_options(options);
    let collection = coll("compacted");
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    for i in 0..24 {
        // The first write checks the store's conditions, which deletes
        // its probe; the next 19 compact with every delete refused.
        wrapped.set_denying_deletes((1..20).contains(&i));
        let id = format!("r{i}");
        let write = Write::create(Record::create(content(&id, i), clock.now().unwrap()));
        assert!(matches!(
            backend.put(&collection, &write).await.unwrap(),
            WriteOutcome::Written { .. }
        ));
        if i == 19 {
            let left = objects_under(&memory, "dse/c/compacted/s").await.len();
            assert!(left > 1, "{left} segments: the deletes were not refused");
        }
    }
    assert_eq!(objects_under(&memory, "dse/c/compacted/s").await.len(), 1);
    let mut seen = BTreeMap::new();
    follow(
        &handle(&memory, "dse"),
        &collection,
        Cursor::START,
        &mut seen,
    )
    .await;
    assert_eq!(seen.len(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_bounds_the_feed_and_readers_miss_nothing_in_memory() {
    compaction_bounds_the_feed(Arc::new(InMemory::new()), "dse", 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_bounds_the_feed_and_readers_miss_nothing_on_s3() {
    let Some(server) = support::s3_server().await else {
        return;
    };
    compaction_bounds_the_feed(server.store(), &support::unique_prefix("compaction"), 30).await;
}

/// The ids of the feed's changes after `after`, read to its end, after
/// those in `seen`.
async fn read_on(
    reader: &S3Backend,
    name: &CollectionName,
    mut after: Cursor,
    mut seen: Vec<String>,
) -> Vec<String> {
    for pages in 0.. {
        assert!(pages < 10, "the feed did not end");
        let page = reader
            .changes(name, after, 10.try_into().unwrap())
            .await
            .unwrap();
        seen.extend(page.changes.iter().map(|c| c.record.id().to_string()));
        after = page.next;
        if !page.more {
            break;
        }
    }
    seen
}

/// A listing of the feed's entries that left one out (made while writers
/// created them, read in several calls) and showed a later one: a reader
/// settled the later entry, moved its cursor past the one left out, and
/// never saw its writes. Such an entry is asked for and read. An entry lost for
/// good (removed from outside) is read past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_a_listing_left_out_is_still_read() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let name = coll("gaps");
    let writer = handle(&memory, "dse");
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    for id in ["r1", "r2", "r3"] {
        let write = Write::create(Record::create(content(id, 1), clock.now().unwrap()));
        assert!(matches!(
            writer.put(&name, &write).await.unwrap(),
            WriteOutcome::Written { .. }
        ));
    }
    let entry = |number: u64| format!("/f/{number:016x}");
    // One entry a write: the first or the second left out once, from the
    // start, and the second left out once after the first was read.
    for (hidden, read_before) in [(1u64, 0), (2, 0), (2, 1)] {
        let wrapped = Arc::new(Wrapped::new(Arc::clone(&memory)));
        let reader = S3Backend::from_store(wrapped.clone(), "dse").unwrap();
        let (mut after, mut seen) = (Cursor::START, Vec::new());
        if read_before > 0 {
            let page = reader
                .changes(&name, after, read_before.try_into().unwrap())
                .await
                .unwrap();
            seen.extend(page.changes.iter().map(|c| c.record.id().to_string()));
            after = page.next;
        }
        wrapped.hide_from_next_listing(&entry(hidden));
        let seen = read_on(&reader, &name, after, seen).await;
        assert_eq!(
            seen,
            ["r1", "r2", "r3"],
            "entry {hidden} left out once after {read_before} changes"
        );
    }
    // Lost for good: read past, not failed on.
    memory
        .delete(&format!("dse/c/gaps{}", entry(2)).as_str().into())
        .await
        .unwrap();
    let seen = read_on(&handle(&memory, "dse"), &name, Cursor::START, Vec::new()).await;
    assert_eq!(seen, ["r1", "r3"]);
}

/// A gap in a listing that begins with an entry lost for good (removed from
/// outside) and goes on with one the listing only left out: the reader took
/// the whole gap for lost, read past the entry it left out, and never saw
/// its write. Each number of the gap is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_left_out_after_one_lost_for_good_is_still_read() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let name = coll("lostgap");
    let writer = handle(&memory, "dse");
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    for id in ["r1", "r2", "r3", "r4"] {
        let write = Write::create(Record::create(content(id, 1), clock.now().unwrap()));
        assert!(matches!(
            writer.put(&name, &write).await.unwrap(),
            WriteOutcome::Written { .. }
        ));
    }
    memory
        .delete(&"dse/c/lostgap/f/0000000000000002".into())
        .await
        .unwrap();
    let wrapped = Arc::new(Wrapped::new(Arc::clone(&memory)));
    let reader = S3Backend::from_store(wrapped.clone(), "dse").unwrap();
    wrapped.hide_from_next_listing("/f/0000000000000003");
    let seen = read_on(&reader, &name, Cursor::START, Vec::new()).await;
    assert_eq!(seen, ["r1", "r3", "r4"]);
}

/// An entry number compaction freed can be claimed again by a writer whose
/// view of the feed is stale; it abandons that claim. A reader that had
/// listed the feed before the compaction, and read the number afterwards
/// (here: the listing left it out, so it was asked for), took the abandoned
/// entry for the one it listed and completed its item, under a cursor below
/// the new horizon that no reader looks at: the record's new state dropped
/// out of the feed for good. The reader now reads the horizon again after
/// an entry no listing vouched for, and starts over when it moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_claim_read_by_a_reader_with_an_old_listing_stays_abandoned() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let name = coll("reclaimed");
    let every_two = compacting_every_two();
    // A writer whose record writes take a while, so that the reader can
    // come between its claim and its commit.
    let slow_store =
        Arc::new(Wrapped::new(Arc::clone(&memory)).slow_puts("/r/", Duration::from_millis(1500)));
    let stale = S3Backend::from_store(slow_store.clone(), "dse")
        .unwrap()
        .with_options(every_two);
    let other = handle(&memory, "dse").with_options(every_two);
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let mut write = |backend: S3Backend, id: &'static str, n: i64| {
        let record = Record::create(content(id, n), clock.now().unwrap());
        async move {
            let outcome = backend
                .put(&coll("reclaimed"), &Write::create(record))
                .await;
            (backend, outcome)
        }
    };
    // Entry 1 by the stale writer, which then knows the feed ends there;
    // entries 2 and 3 by the other.
    let (stale, first) = write(stale, "r1", 1).await;
    assert!(matches!(first.unwrap(), WriteOutcome::Written { .. }));
    slow_store.slow_put_begun().await;
    let (other, _) = write(other, "r2", 1).await;
    let (other, _) = write(other, "r3", 1).await;

    // The reader, past entry 1, lists the feed without entry 2 and waits
    // before asking for it.
    let reading_store = Arc::new(Wrapped::new(Arc::clone(&memory)));
    let reader = S3Backend::from_store(reading_store.clone(), "dse").unwrap();
    let after = reader
        .changes(&name, Cursor::START, 1.try_into().unwrap())
        .await
        .unwrap()
        .next;
    reading_store.hide_from_next_listing("/f/0000000000000002");
    let held = reading_store.hold_next_get("/f/0000000000000002");
    let reading = tokio::spawn(async move {
        reader
            .changes(&coll("reclaimed"), after, 10.try_into().unwrap())
            .await
    });
    held.arrived().await;

    // Meanwhile entry 4 folds entries 1 and 2, and the stale writer's
    // update of r1 claims number 2 again, abandons it, and claims 5.
    let (_other, fourth) = write(other, "r4", 1).await;
    assert!(matches!(fourth.unwrap(), WriteOutcome::Written { .. }));
    let stored = stale.get(&name, &rid("r1")).await.unwrap().unwrap();
    let mut next = stored.record.clone();
    next.apply_put(content("r1", 2), &clock.now().unwrap())
        .unwrap();
    let updating = tokio::spawn(async move {
        stale
            .put(&coll("reclaimed"), &Write::replace(next, stored.token))
            .await
    });
    slow_store.slow_put_begun().await;
    held.release();
    reading.await.unwrap().unwrap();
    updating.await.unwrap().unwrap();

    // Every record's current state is in the feed.
    let fresh = handle(&memory, "dse");
    let mut seen = BTreeMap::new();
    follow(&fresh, &name, Cursor::START, &mut seen).await;
    assert_eq!(seen, all(&fresh, &name).await);
    assert_eq!(
        seen[&rid("r1")].get("n"),
        Some(json!(2)),
        "the update of r1 is in the feed"
    );
}

/// Options that fold the feed every two entries, so that a test reaches a
/// compaction in a few writes.
fn compacting_every_two() -> StoreOptions {
    StoreOptions {
        compaction_interval: 2.try_into().unwrap(),
        ..StoreOptions::default()
    }
}

/// Asserts that `outcome` is the write of item 0 of entry 2, under the
/// token `current` when its state is still the record's (a state replaced
/// since is answered under a token that matches nothing).
fn assert_written_in_entry_two(outcome: &WriteOutcome, current: Option<Token>) {
    let at = Cursor::new(2 << 20);
    match (outcome, current) {
        (WriteOutcome::Written { token, cursor }, Some(current)) => {
            assert_eq!((token, *cursor), (&current, at), "{outcome:?}");
        }
        (WriteOutcome::Written { cursor, .. }, None) => assert_eq!(*cursor, at, "{outcome:?}"),
        (other, _) => panic!("not written in entry 2: {other:?}"),
    }
}

/// A writer claims an entry and, before it reads the horizon, another
/// writer's compaction folds that entry, committing its item. The first
/// writer then found its number at the horizon and claimed another, whose
/// item its own landed write refused: it reported `Conflict` for a write
/// that happened. The segment names its entry as the one folded there, and
/// it reports the write written at its cursor in that entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_folded_by_another_writers_compaction_is_reported_written() {
    claim_folded_by_another_writers_compaction(false).await;
}

/// As above, but another write replaced the folded write before its writer
/// looked: the writer reported `Conflict`, and an increment retried counted
/// twice (the shared suite's `concurrent_writers_lose_no_update` saw it about
/// once in 400 runs, compacting every 4 entries). The state that replaced it
/// names its cursor, and the segment names the folded entry as the writer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_folded_by_another_writers_compaction_then_replaced_is_reported_written() {
    claim_folded_by_another_writers_compaction(true).await;
}

async fn claim_folded_by_another_writers_compaction(replaced: bool) {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let name = coll("folded");
    let every_two = compacting_every_two();
    let held_store = Arc::new(Wrapped::new(Arc::clone(&memory)));
    let first = S3Backend::from_store(held_store.clone(), "dse")
        .unwrap()
        .with_options(every_two);
    let other = handle(&memory, "dse").with_options(every_two);
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let created = Record::create(content("r1", 1), clock.now().unwrap());
    let WriteOutcome::Written { token, .. } = first
        .put(&name, &Write::create(created.clone()))
        .await
        .unwrap()
    else {
        panic!("entry 1 conflicts");
    };

    // The update claims entry 2 and waits at its horizon read.
    let mut updated = created.clone();
    updated
        .apply_put(content("r1", 2), &clock.now().unwrap())
        .unwrap();
    let held = held_store.hold_next_get("/h");
    let updating = tokio::spawn({
        let updated = updated.clone();
        async move {
            first
                .put(&coll("folded"), &Write::replace(updated, token))
                .await
        }
    });
    held.arrived().await;
    // Entries 3 and 4; the compaction at 4 folds entry 2 and commits it.
    for (id, n) in [("r2", 1), ("r3", 1)] {
        let record = Record::create(content(id, n), clock.now().unwrap());
        let outcome = other.put(&name, &Write::create(record)).await.unwrap();
        assert!(matches!(outcome, WriteOutcome::Written { .. }));
    }
    let stored = other.get(&name, &rid("r1")).await.unwrap().unwrap();
    assert_eq!(
        stored.record, updated,
        "the compaction committed the update"
    );
    let mut last = updated.clone();
    if replaced {
        last.apply_put(content("r1", 3), &clock.now().unwrap())
            .unwrap();
        let outcome = other
            .put(&name, &Write::replace(last.clone(), stored.token))
            .await
            .unwrap();
        assert!(matches!(outcome, WriteOutcome::Written { .. }));
    }
    held.release();

    let outcome = updating.await.unwrap().unwrap();
    let stored = other.get(&name, &rid("r1")).await.unwrap().unwrap();
    assert_eq!(stored.record, last);
    assert_written_in_entry_two(&outcome, (!replaced).then_some(stored.token));
}

/// A writer's claim landed but its answer was lost, and the client's resend
/// was refused. Before the writer read the entry back, a compaction folded
/// it (committing its item) and deleted it, and a writer that took the feed
/// to end before it claimed the number again: the writer found another's
/// bytes there, took the number for someone else's, and reported its
/// landed write as a conflict. A number whose entry it cannot tell from
/// its own counts as abandoned, and the folded write is found as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_folded_and_taken_again_before_its_lost_answer_was_checked_is_written() {
    claim_folded_and_taken_again_before_its_lost_answer_was_checked(false).await;
}

/// As above, with the folded write replaced before its writer looked: the
/// state that replaced it names its cursor, and the segment names the
/// folded entry as the writer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_folded_taken_again_and_replaced_before_its_lost_answer_was_checked_is_written() {
    claim_folded_and_taken_again_before_its_lost_answer_was_checked(true).await;
}

async fn claim_folded_and_taken_again_before_its_lost_answer_was_checked(replaced: bool) {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let name = coll("retaken");
    let every_two = compacting_every_two();
    let stale = handle(&memory, "dse").with_options(every_two);
    let other = handle(&memory, "dse").with_options(every_two);
    let resending = Arc::new(Wrapped::new(Arc::clone(&memory)).resending_puts_containing("/f/"));
    let writer = S3Backend::from_store(resending.clone(), "dse")
        .unwrap()
        .with_options(every_two);
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let mut create = |id: &str| Write::create(Record::create(content(id, 1), clock.now().unwrap()));
    // Entry 1, by the writer that will take the feed to end there.
    let outcome = stale.put(&name, &create("r0")).await.unwrap();
    assert!(matches!(outcome, WriteOutcome::Written { .. }));

    // The writer claims entry 2; the answer is lost, and it waits to read
    // the entry back.
    let held = resending.hold_next_get("/f/0000000000000002");
    let write = create("r1");
    let written = write.record.clone();
    let writing = tokio::spawn(async move { writer.put(&coll("retaken"), &write).await });
    held.arrived().await;
    // Entries 3 and 4 fold entries 1 and 2 (committing r1) and delete
    // them; the stale writer claims number 2 again before it moves on.
    for id in ["r2", "r3", "r4"] {
        let by = if id == "r4" { &stale } else { &other };
        let outcome = by.put(&name, &create(id)).await.unwrap();
        assert!(matches!(outcome, WriteOutcome::Written { .. }), "{id}");
    }
    let stored = other.get(&name, &rid("r1")).await.unwrap().unwrap();
    assert_eq!(stored.record, written, "the compaction committed r1");
    if replaced {
        // By a handle that does not compact at the next entry: a
        // compaction would delete the stale writer's entry 2, and the
        // writer would then find its number free and take it again.
        let mut next = written.clone();
        next.apply_put(content("r1", 2), &clock.now().unwrap())
            .unwrap();
        let outcome = handle(&memory, "dse")
            .put(&name, &Write::replace(next, stored.token.clone()))
            .await
            .unwrap();
        assert!(matches!(outcome, WriteOutcome::Written { .. }));
    }
    held.release();

    let outcome = writing.await.unwrap().unwrap();
    assert_written_in_entry_two(&outcome, (!replaced).then_some(stored.token));
}

/// An entry number is held by two entries in turn when a writer that takes
/// the feed to end before it claims a number whose entry compaction folded
/// and deleted: it abandons the claim, and the state another writer wrote
/// in the folded entry has the cursor its own item would have had there.
/// When a later write replaced that state, the writer must not take it for
/// its own: its update, made on the state before the other's, conflicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_a_number_another_entry_held_is_not_reported_written() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let name = coll("reused");
    let every_two = compacting_every_two();
    let stale = handle(&memory, "dse").with_options(every_two);
    let other = handle(&memory, "dse").with_options(every_two);
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    // Entry 1, by the writer that will take the feed to end there.
    let created = Record::create(content("r", 1), clock.now().unwrap());
    let WriteOutcome::Written { token: first, .. } = stale
        .put(&name, &Write::create(created.clone()))
        .await
        .unwrap()
    else {
        panic!("entry 1 conflicts");
    };
    // Entry 2 updates r; entries 3 and 4 fold entries 1 and 2 and delete
    // them; entry 5 updates r again, naming the state of entry 2 before it.
    let mut latest = other.get(&name, &rid("r")).await.unwrap().unwrap();
    for (id, n) in [("r", 2), ("r2", 1), ("r3", 1), ("r", 3)] {
        let write = if id == "r" {
            let mut record = latest.record.clone();
            record
                .apply_put(content(id, n), &clock.now().unwrap())
                .unwrap();
            Write::replace(record, latest.token.clone())
        } else {
            Write::create(Record::create(content(id, n), clock.now().unwrap()))
        };
        let outcome = other.put(&name, &write).await.unwrap();
        assert!(matches!(outcome, WriteOutcome::Written { .. }), "{id}");
        latest = other.get(&name, &rid("r")).await.unwrap().unwrap();
    }
    let entries: Vec<String> = objects_under(&memory, "dse/c/reused/f")
        .await
        .into_iter()
        .filter_map(|meta| meta.location.filename().map(str::to_owned))
        .collect();
    assert!(
        !entries.contains(&format!("{:016x}", 2)),
        "compaction deleted entry 2: {entries:?}"
    );

    // The stale writer's update of the state of entry 1 claims number 2
    // again, abandons it, and commits in a later entry.
    let mut stale_update = created.clone();
    stale_update
        .apply_put(content("r", 9), &clock.now().unwrap())
        .unwrap();
    let outcome = stale
        .put(&name, &Write::replace(stale_update, first))
        .await
        .unwrap();
    assert_eq!(outcome, WriteOutcome::Conflict);
    let stored = other.get(&name, &rid("r")).await.unwrap().unwrap();
    assert_eq!(stored.record, latest.record);
}

/// A create refused without effect (S3's 409 to a put that raced another
/// request on the key) leaves its item pending, and a reader would complete
/// it: the writer settles it itself and reports it written. It reported
/// `Conflict`, for a write that then landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_refused_without_effect_is_written_not_reported_lost() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let refusing = Arc::new(Wrapped::new(Arc::clone(&memory)).refusing_one_create("/r/"));
    let writer = S3Backend::from_store(refusing, "dse").unwrap();
    let name = coll("raced");
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let created = Record::create(content("x", 1), clock.now().unwrap());
    let outcome = writer
        .put(&name, &Write::create(created.clone()))
        .await
        .unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { .. }),
        "{outcome:?}"
    );
    let stored = handle(&memory, "dse")
        .get(&name, &rid("x"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.record, created);
}
