//! Syncs under injected storage faults (testkit's `FaultyBackend`): retried
//! syncs converge and lose nothing; an exhausted sync leaves every record old
//! or fully merged; a peer cursor never passes an unapplied change.
//!
//! Time is paused: back-off sleeps and injected delays pass instantly, in a
//! deterministic order, so each seed replays the same faults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use syncforge::{
    merge, CollectionName, ConflictStrategy, Cursor, Error, EventKind, MemoryBackend, PageOptions,
    Record, StorageBackend, SyncEngine, SyncEvent,
};
use syncforge_testkit::faults::{FaultyBackend, Operation};

use crate::support::snapshot;

const STRATEGY: ConflictStrategy = ConflictStrategy::Crdt;

async fn faulty_engine(
    client: &str,
    store: &Arc<FaultyBackend>,
    max_retries: u32,
    batch_size: usize,
) -> SyncEngine {
    let shared: Arc<dyn StorageBackend> = store.clone();
    SyncEngine::builder()
        .client_id(client)
        .conflict_strategy(STRATEGY)
        .backend(shared)
        .max_retries(max_retries)
        .batch_size(batch_size)
        .build()
        .await
        .unwrap()
}

/// An engine on a memory store (no faults) holding `count` records of
/// collection `c`, to sync from.
async fn source_holding(count: usize) -> SyncEngine {
    let source = SyncEngine::builder()
        .client_id("source")
        .conflict_strategy(STRATEGY)
        .build()
        .await
        .unwrap();
    for i in 0..count {
        source
            .put("c", &json!({"id": format!("r{i:02}"), "v": i}))
            .await
            .unwrap();
    }
    source
}

/// A store over memory that fails only where a test tells it to: no
/// random failure, no delay (its seed then decides nothing).
fn failing_on_cue() -> Arc<FaultyBackend> {
    Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        1,
        0.0,
        Duration::ZERO,
    ))
}

fn faulty(seed: u64, rate: f64) -> Arc<FaultyBackend> {
    Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        seed,
        rate,
        Duration::from_millis(3),
    ))
}

/// Retries a local write until it goes through; each attempt already retried
/// inside the engine, so this loop rarely turns.
async fn put_retrying(e: &SyncEngine, collection: &str, doc: serde_json::Value) {
    for _ in 0..20 {
        match e.put(collection, &doc).await {
            Ok(_) => return,
            Err(err) => assert!(err.is_transient(), "{err}"),
        }
    }
    panic!("put kept failing: {doc}");
}

async fn get_retrying(e: &SyncEngine, id: &str) -> Option<Record> {
    for _ in 0..20 {
        match e.get("c", id).await {
            Ok(found) => return found,
            Err(err) => assert!(err.is_transient(), "{err}"),
        }
    }
    panic!("get kept failing: {id}");
}

#[tokio::test(start_paused = true)]
async fn three_engines_under_twenty_percent_failures_converge_and_lose_nothing() {
    let stores: Vec<Arc<FaultyBackend>> = (0..3).map(|i| faulty(100 + i, 0.2)).collect();
    let names = ["alpha", "beta", "gamma"];
    let mut engines = Vec::new();
    for (name, store) in names.iter().zip(&stores) {
        // Few retries, so that some syncs do fail and must be resumed.
        engines.push(faulty_engine(name, store, 2, 8).await);
    }

    // Each engine writes records of its own, and its own field of shared
    // records; one deletes a shared record another edits.
    for (e, name) in engines.iter().zip(names) {
        for i in 0..25 {
            put_retrying(e, "c", json!({"id": format!("{name}-{i}"), "n": i})).await;
        }
    }
    let mut failures = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds <= 30, "no convergence after 30 rounds");
        if rounds == 2 {
            for (e, name) in engines.iter().zip(names) {
                for i in 0..10 {
                    let id = format!("shared-{i}");
                    let mut doc = match get_retrying(e, &id).await {
                        Some(r) => serde_json::Value::Object(r.content()),
                        None => json!({"id": id}),
                    };
                    doc[name] = json!(i);
                    put_retrying(e, "c", doc).await;
                }
            }
        }
        let mut clean = true;
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    if let Err(err) = engines[i].sync_with(&engines[j], "c").await {
                        assert!(err.is_transient(), "{err}");
                        failures += 1;
                        clean = false;
                    }
                }
            }
        }
        if clean && rounds > 2 {
            break;
        }
    }
    assert!(failures > 0, "the faults never made a sync fail");
    for store in &stores {
        assert!(store.injected_failures() > 10);
    }

    // Converged: byte-identical replicas...
    for store in &stores {
        store.set_failure_rate(0.0);
    }
    let first = snapshot(&engines[0], "c").await;
    for e in &engines[1..] {
        assert_eq!(snapshot(e, "c").await, first);
    }
    // ...holding every write.
    let records = engines[0].get_all("c").await.unwrap();
    assert_eq!(records.len(), 3 * 25 + 10);
    for name in names {
        for i in 0..25 {
            let r = engines[0]
                .get("c", &format!("{name}-{i}"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.get("n"), Some(json!(i)));
        }
    }
    for i in 0..10 {
        let r = engines[0]
            .get("c", &format!("shared-{i}"))
            .await
            .unwrap()
            .unwrap();
        for name in names {
            assert_eq!(
                r.get(name),
                Some(json!(i)),
                "lost {name}'s edit of shared-{i}"
            );
        }
    }
}

/// Reading the store's id, which every peer sync checks, retries a
/// transient failure as every other read does.
#[tokio::test(start_paused = true)]
async fn reading_the_store_id_retries_a_transient_failure() {
    let store = Arc::new(
        FaultyBackend::new(Arc::new(MemoryBackend::new()), 7, 0.0, Duration::ZERO)
            .failing_only(&[Operation::GetMeta]),
    );
    let e = faulty_engine("a", &store, 10, 10).await;
    store.set_failure_rate(0.5);
    for _ in 0..20 {
        let stored = e.stored_id().await.unwrap();
        assert_eq!(stored.as_deref(), Some(e.store_id()));
    }
    assert!(store.injected_failures() > 0);
}

/// A local state, an incoming batch, and what a failed sync left: each record
/// is either exactly as it was or exactly the merge, and syncing again
/// completes the rest. Half of the batch writes fail, before or after writing,
/// and the engine has one retry.
#[tokio::test(start_paused = true)]
async fn an_exhausted_sync_emits_sync_error_and_leaves_no_record_half_written() {
    let mut partial_seen = false;
    let mut failed_syncs = 0;
    for seed in 0..12 {
        let store = Arc::new(
            FaultyBackend::new(Arc::new(MemoryBackend::new()), seed, 0.0, Duration::ZERO)
                .failing_only(&[Operation::PutBatch]),
        );
        let local = faulty_engine("local", &store, 1, 10).await;
        let remote = SyncEngine::builder()
            .client_id("remote")
            .conflict_strategy(STRATEGY)
            .build()
            .await
            .unwrap();
        for i in 0..60 {
            remote
                .put("c", &json!({"id": format!("r{i}"), "remote": i}))
                .await
                .unwrap();
            if i % 2 == 0 {
                local
                    .put("c", &json!({"id": format!("r{i}"), "local": i}))
                    .await
                    .unwrap();
            }
        }
        let before: BTreeMap<String, Record> = local
            .get_all("c")
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.id().to_string(), r))
            .collect();
        let incoming = remote.get_all("c").await.unwrap();
        let expected = |id: &str, remote_record: &Record| match before.get(id) {
            Some(prior) => merge(prior, remote_record, STRATEGY).unwrap(),
            None => remote_record.clone(),
        };

        store.set_failure_rate(0.5);
        let mut rx = local.subscribe();
        let outcome = local.sync("c", incoming.clone()).await;
        store.set_failure_rate(0.0);
        let Err(err) = outcome else {
            continue;
        };
        failed_syncs += 1;
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        let mut kinds = Vec::new();
        while let Ok(event) = rx.try_recv() {
            kinds.push(event.kind());
            if let SyncEvent::SyncError { error, .. } = &event {
                assert!(error.is_transient());
                assert!(matches!(**error, Error::Unavailable { .. }));
                assert_eq!(error.to_string(), err.to_string());
            }
        }
        assert_eq!(kinds.first(), Some(&EventKind::SyncStart));
        assert_eq!(kinds.last(), Some(&EventKind::SyncError));
        assert!(!kinds.contains(&EventKind::SyncSuccess));

        let mut old = 0;
        let mut merged = 0;
        for remote_record in &incoming {
            let id = remote_record.id();
            let now = local.get("c", id).await.unwrap();
            if now.as_ref() == Some(&expected(id, remote_record)) {
                merged += 1;
            } else {
                assert_eq!(
                    now.as_ref(),
                    before.get(id.as_str()),
                    "{id} is neither old nor merged"
                );
                old += 1;
            }
        }
        if old > 0 && merged > 0 {
            partial_seen = true;
        }
        // Syncing the same records again completes the rest.
        let _ = local.sync("c", incoming.clone()).await.unwrap();
        for remote_record in &incoming {
            let id = remote_record.id();
            assert_eq!(
                local.get("c", id).await.unwrap(),
                Some(expected(id, remote_record))
            );
        }
    }
    assert!(failed_syncs > 0, "no sync exhausted its retries");
    assert!(
        partial_seen,
        "no seed failed a sync after some batches were written"
    );
}

/// Checks that `holder` contains (is at least as new as) `record`.
async fn assert_contains(holder: &SyncEngine, record: &Record, what: &str) {
    let held = holder
        .get("c", record.id())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: {} missing", record.id()));
    assert_eq!(
        merge(&held, record, STRATEGY).unwrap(),
        held,
        "{what}: {} not applied",
        record.id()
    );
}

#[tokio::test(start_paused = true)]
async fn peer_cursors_never_pass_a_change_that_was_not_applied() {
    let here_store = Arc::new(
        FaultyBackend::new(
            Arc::new(MemoryBackend::new()),
            7,
            0.3,
            Duration::from_millis(1),
        )
        .failing_only(&[Operation::PutBatch, Operation::GetMany, Operation::SetMeta]),
    );
    let there_store = Arc::new(
        FaultyBackend::new(
            Arc::new(MemoryBackend::new()),
            8,
            0.3,
            Duration::from_millis(1),
        )
        .failing_only(&[Operation::PutBatch, Operation::Changes]),
    );
    let here = faulty_engine("here", &here_store, 0, 7).await;
    let there = faulty_engine("there", &there_store, 0, 7).await;
    for i in 0..40 {
        put_retrying(&there, "c", json!({"id": format!("t{i}")})).await;
        put_retrying(&here, "c", json!({"id": format!("h{i}")})).await;
    }

    let mut failures = 0;
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts <= 200, "never completed");
        let outcome = here.sync_with(&there, "c").await;
        if outcome.is_err() {
            failures += 1;
        }
        // Read the truth without faults, then let them resume.
        here_store.set_failure_rate(0.0);
        there_store.set_failure_rate(0.0);
        let cursors = here.peer_cursors("there", "c").await.unwrap();
        let pulled = there
            .changes("c", Cursor::START, PageOptions::default().limit(10_000))
            .await
            .unwrap();
        for change in pulled.changes.iter().filter(|c| c.cursor <= cursors.pulled) {
            assert_contains(&here, &change.record, "pull cursor").await;
        }
        let pushed = here
            .changes("c", Cursor::START, PageOptions::default().limit(10_000))
            .await
            .unwrap();
        for change in pushed.changes.iter().filter(|c| c.cursor <= cursors.pushed) {
            assert_contains(&there, &change.record, "push cursor").await;
        }
        let done = outcome.is_ok();
        here_store.set_failure_rate(0.3);
        there_store.set_failure_rate(0.3);
        if done {
            break;
        }
    }
    assert!(failures > 0, "the faults never made a sync fail");
    here_store.set_failure_rate(0.0);
    there_store.set_failure_rate(0.0);
    assert_eq!(snapshot(&here, "c").await, snapshot(&there, "c").await);
    assert_eq!(here.get_all("c").await.unwrap().len(), 80);
}

/// A batch write whose answer is lost after it took effect is retried, finds
/// its own write in place, and is still reported as what it was: the counts
/// and the record events are exact under faults.
#[tokio::test(start_paused = true)]
async fn writes_whose_answer_was_lost_are_still_counted_and_announced() {
    let source = source_holding(30).await;
    let store = Arc::new(
        FaultyBackend::new(Arc::new(MemoryBackend::new()), 21, 0.5, Duration::ZERO)
            .failing_only(&[Operation::PutBatch]),
    );
    let target = faulty_engine("target", &store, 10, 5).await;
    let mut rx = target.subscribe();
    let result = target
        .sync("c", source.get_all("c").await.unwrap())
        .await
        .unwrap();
    assert!(store.injected_failures() > 0);
    assert_eq!((result.added, result.unchanged), (30, 0));
    let mut added = 0;
    while let Ok(event) = rx.try_recv() {
        if event.kind() == EventKind::RecordAdded {
            added += 1;
        }
    }
    assert_eq!(added, 30);
}

/// A sync of several batches reads each batch while the one before it is
/// written: over a store that takes time to answer, a read and a write are
/// under way together, each batch is read and written once, and every record
/// arrives.
#[tokio::test(start_paused = true)]
async fn a_sync_reads_the_next_batch_while_writing_one() {
    let source = source_holding(50).await;
    let store = faulty(5, 0.0);
    let target = faulty_engine("target", &store, 0, 10).await;
    let result = target
        .sync("c", source.get_all("c").await.unwrap())
        .await
        .unwrap();
    assert_eq!((result.added, result.unchanged), (50, 0));
    assert_eq!(store.calls(Operation::GetMany), 5);
    assert_eq!(store.calls(Operation::PutBatch), 5);
    assert_eq!(store.most_in_flight(), 2);
    assert_eq!(snapshot(&target, "c").await, snapshot(&source, "c").await);
}

/// A read ahead that fails ends the sync with its error once the batch before
/// it is written: that batch is stored, announced and counted in progress,
/// and no later batch is written. Seeds decide which read fails; some fail
/// the first read (nothing is written), some a later one.
#[tokio::test(start_paused = true)]
async fn a_failed_read_ahead_ends_the_sync_after_the_batch_before_it() {
    let source = source_holding(30).await;
    let incoming = source.get_all("c").await.unwrap();
    let collection = CollectionName::new("c").unwrap();
    let mut later_read_failed = 0;
    for seed in 0..40 {
        let store = Arc::new(
            FaultyBackend::new(
                Arc::new(MemoryBackend::new()),
                seed,
                0.3,
                Duration::from_millis(1),
            )
            .failing_only(&[Operation::GetMany]),
        );
        let target = faulty_engine("target", &store, 0, 10).await;
        let mut rx = target.subscribe();
        let outcome = target.sync("c", incoming.clone()).await;
        let reads = store.calls(Operation::GetMany);
        let writes = store.calls(Operation::PutBatch);
        let stored = store.inner().get_all(&collection).await.unwrap().len() as u64;
        let (mut added, mut progress) = (0, 0);
        while let Ok(event) = rx.try_recv() {
            match event.kind() {
                EventKind::RecordAdded => added += 1,
                EventKind::SyncProgress => progress += 1,
                _ => {}
            }
        }
        match outcome {
            Ok(result) => {
                assert_eq!((result.added, stored, reads, writes), (30, 30, 3, 3));
            }
            Err(err) => {
                assert!(err.is_transient(), "{err}");
                // The read that failed was the last one made: every batch
                // before it was read, written and announced.
                let written = reads - 1;
                assert_eq!(writes, written, "seed {seed}");
                assert_eq!(stored, 10 * written, "seed {seed}");
                assert_eq!((added, progress), (stored, written), "seed {seed}");
                if written > 0 {
                    later_read_failed += 1;
                }
            }
        }
    }
    assert!(later_read_failed > 0);
}

/// The same for local writes: a put or delete whose answer was lost is
/// announced exactly once.
#[tokio::test(start_paused = true)]
async fn local_writes_whose_answer_was_lost_are_announced_once() {
    let store = Arc::new(
        FaultyBackend::new(Arc::new(MemoryBackend::new()), 33, 0.5, Duration::ZERO)
            .failing_only(&[Operation::PutBatch, Operation::InsertIfAbsent]),
    );
    let e = faulty_engine("local", &store, 10, 10).await;
    let mut rx = e.subscribe();
    for i in 0..20 {
        e.put("c", &json!({"id": format!("r{i}"), "v": 1}))
            .await
            .unwrap();
        e.put("c", &json!({"id": format!("r{i}"), "v": 2}))
            .await
            .unwrap();
        let deleted = e.delete("c", &format!("r{i}")).await.unwrap().unwrap();
        assert!(deleted.is_deleted());
    }
    assert!(store.injected_failures() > 10);
    let mut counts = BTreeMap::new();
    while let Ok(event) = rx.try_recv() {
        *counts.entry(event.kind().name()).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([
            ("record:added", 20),
            ("record:deleted", 20),
            ("record:updated", 20)
        ])
    );
}

/// A store that answers only awaited calls is offered a put's record to
/// insert if absent before anything is read: a put of a new record is that
/// one call, and a put of a stored record reads it from that call's answer,
/// not from a second one. Each write is announced as from any other store.
#[tokio::test(start_paused = true)]
async fn a_put_offers_its_record_to_insert_if_absent_before_reading() {
    let store = faulty(1, 0.0);
    let engine = faulty_engine("local", &store, 3, 10).await;
    let calls = || {
        [
            Operation::InsertIfAbsent,
            Operation::Get,
            Operation::PutBatch,
        ]
        .map(|op| store.calls(op))
    };
    let mut rx = engine.subscribe();

    let added = engine.put("c", &json!({"id": "a", "v": 1})).await.unwrap();
    assert_eq!(calls(), [1, 0, 0]);
    assert_eq!(added.version(), 1);
    let updated = engine.put("c", &json!({"id": "a", "v": 2})).await.unwrap();
    assert_eq!(calls(), [2, 0, 1]);
    assert_eq!(updated.version(), 2);
    let unchanged = engine.put("c", &json!({"id": "a", "v": 2})).await.unwrap();
    assert_eq!(calls(), [3, 0, 1]);
    assert_eq!(unchanged, updated);
    assert_eq!(get_retrying(&engine, "a").await, Some(updated.clone()));

    let mut heard = Vec::new();
    while let Ok(event) = rx.try_recv() {
        heard.push(event);
    }
    assert!(
        matches!(
            heard.as_slice(),
            [
                SyncEvent::RecordAdded { record: first, .. },
                SyncEvent::RecordUpdated { record: second, previous, .. },
            ] if *first == added && *second == updated && *previous == added
        ),
        "{heard:?}"
    );
}

/// Inserts fail half the time, half of those after the record was written
/// (the answer was lost, not the write): every put still lands exactly
/// once, and is announced once. A put whose insert failed reads the record
/// instead, finds its own write when it happened, and writes nothing more.
#[tokio::test(start_paused = true)]
async fn puts_whose_insert_fails_after_writing_are_written_once() {
    const RECORDS: usize = 40;
    for seed in 0..8 {
        let store = Arc::new(
            FaultyBackend::new(Arc::new(MemoryBackend::new()), seed, 0.5, Duration::ZERO)
                .failing_only(&[Operation::InsertIfAbsent]),
        );
        let engine = faulty_engine("local", &store, 3, 10).await;
        let mut rx = engine.subscribe();
        for round in 1..=2 {
            for i in 0..RECORDS {
                let doc = json!({"id": format!("r{i:02}"), "v": i + 100 * round});
                let written = engine.put("c", &doc).await.unwrap();
                assert_eq!(written.version(), round as u64, "seed {seed}: {doc}");
            }
        }
        assert!(
            store.injected_failures() > 0,
            "seed {seed} injected nothing"
        );
        let mut counts = BTreeMap::new();
        while let Ok(event) = rx.try_recv() {
            *counts.entry(event.kind().name()).or_insert(0) += 1;
        }
        assert_eq!(
            counts,
            BTreeMap::from([("record:added", RECORDS), ("record:updated", RECORDS)]),
            "seed {seed}: each write announced once"
        );
        let all = engine.get_all("c").await.unwrap();
        assert_eq!(all.len(), RECORDS);
        for record in &all {
            let i: usize = record.id()[1..].parse().unwrap();
            assert_eq!(record.version(), 2, "seed {seed}: {record:?}");
            assert_eq!(record.get("v"), Some(json!(i + 200)), "seed {seed}");
        }
    }
}

/// A put whose insert failed reads the record to learn whether it was
/// written. When those reads fail too, after their retries, the put ends
/// with their error: the put's own read does not start the retries again.
/// Each seed fails the insert before or after it wrote (half and half).
#[tokio::test(start_paused = true)]
async fn a_put_whose_insert_and_reads_fail_spends_one_retry_budget() {
    for seed in 0..8 {
        let store = Arc::new(
            FaultyBackend::new(Arc::new(MemoryBackend::new()), seed, 1.0, Duration::ZERO)
                .failing_only(&[Operation::InsertIfAbsent, Operation::Get]),
        );
        let engine = faulty_engine("local", &store, 3, 10).await;
        let error = engine.put("c", &json!({"id": "a"})).await.unwrap_err();
        assert!(error.is_transient(), "seed {seed}: {error}");
        assert_eq!(store.calls(Operation::InsertIfAbsent), 1, "seed {seed}");
        assert_eq!(
            store.calls(Operation::Get),
            3,
            "seed {seed}: 3 retries after the insert failed"
        );
    }
}

/// A client that lost its answer and sent the insert again gets the record
/// its first call wrote: the put recognises its own write, returns it and
/// announces it once, and writes nothing more.
#[tokio::test(start_paused = true)]
async fn a_put_whose_insert_was_sent_twice_is_announced_once() {
    let store = Arc::new(
        FaultyBackend::new(Arc::new(MemoryBackend::new()), 7, 0.0, Duration::ZERO)
            .resending_inserts(),
    );
    let engine = faulty_engine("local", &store, 3, 10).await;
    let mut rx = engine.subscribe();
    let mut cursor = Cursor::START;
    for i in 0..10 {
        let written = engine
            .put("c", &json!({"id": format!("r{i}"), "v": i}))
            .await
            .unwrap();
        assert_eq!(written.version(), 1);
        let page = store
            .inner()
            .changes(
                &CollectionName::new("c").unwrap(),
                cursor,
                100.try_into().unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            page.records().collect::<Vec<_>>(),
            [&written],
            "written once"
        );
        cursor = page.next;
    }
    let mut heard = Vec::new();
    while let Ok(event) = rx.try_recv() {
        heard.push(event.kind().name());
    }
    assert_eq!(heard, ["record:added"; 10]);
}

/// A merge whose write loses a race to a hard delete (or a clear) merges the
/// incoming record into what the delete left (nothing), not the merge it had
/// made with the deleted record: the deleted content does not come back.
#[tokio::test(start_paused = true)]
async fn a_merge_that_loses_a_race_to_a_hard_delete_does_not_bring_the_deleted_record_back() {
    let cases = [ConflictStrategy::Crdt, ConflictStrategy::Timestamp]
        .into_iter()
        .flat_map(|strategy| [(strategy, false), (strategy, true)]);
    for (strategy, clear) in cases {
        let store = failing_on_cue();
        let shared: Arc<dyn StorageBackend> = store.clone();
        let local = SyncEngine::builder()
            .client_id("local")
            .conflict_strategy(strategy)
            .backend(shared)
            .build()
            .await
            .unwrap();
        local
            .put("c", &json!({"id": "n1", "secret": "s", "title": "mine"}))
            .await
            .unwrap();
        // A concurrent version of n1, written by another replica.
        let other = SyncEngine::builder()
            .client_id("other")
            .conflict_strategy(strategy)
            .build()
            .await
            .unwrap();
        let incoming = other
            .put("c", &json!({"id": "n1", "title": "theirs"}))
            .await
            .unwrap();
        // Between the sync's read of n1 and its write, n1 is removed for
        // good on the store.
        store.rival_before_next_put_batch(move |store| async move {
            let (c, n1) = (CollectionName::new("c").unwrap(), "n1".try_into().unwrap());
            if clear {
                store.clear_collection(&c).await.unwrap();
            } else {
                assert!(store.delete(&c, &n1).await.unwrap());
            }
        });
        let result = local.sync("c", [incoming.clone()]).await.unwrap();
        // What the sync wrote is the incoming record, new to the store.
        assert_eq!(
            (result.added, result.updated),
            (1, 0),
            "{strategy:?}, clear: {clear}"
        );
        let stored = local.get("c", "n1").await.unwrap().unwrap();
        assert_eq!(stored, incoming, "{strategy:?}, clear: {clear}");
        assert_eq!(stored.get("secret"), None, "{strategy:?}, clear: {clear}");
    }
}

/// A runtime built without timers cannot wait between retries: the first
/// transient failure is returned as it is, where making the back-off's
/// sleep panicked.
#[test]
fn a_transient_failure_on_a_runtime_without_timers_is_returned_unretried() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        // No injected delay either: that is a timer too.
        let store = failing_on_cue();
        let e = faulty_engine("untimed", &store, 3, 100).await;
        store.set_failure_rate(1.0);
        let before = store.injected_failures();
        let outcome = e.put("c", &json!({"id": "a", "v": 1})).await;
        assert!(
            matches!(&outcome, Err(error) if error.is_transient()),
            "{outcome:?}"
        );
        // Not retried: the put's single attempt failed.
        assert_eq!(store.injected_failures() - before, 1);
    });
}

/// Before every `put_batch` of `store`, `left` times, another writer
/// rewrites record `n1` of collection `c`: each conditional write of it
/// loses the race.
fn rewrite_n1_before_each_write(store: &Arc<FaultyBackend>, left: usize) {
    if left == 0 {
        return;
    }
    let again = Arc::clone(store);
    store.rival_before_next_put_batch(move |inner| async move {
        let (c, n1) = (
            CollectionName::new("c").unwrap(),
            syncforge::RecordId::new("n1").unwrap(),
        );
        let stored = inner.get(&c, &n1).await.unwrap().unwrap();
        let rewrite = syncforge::core::Write::replace(stored.record, stored.token);
        inner.put_batch(&c, &[rewrite]).await.unwrap();
        rewrite_n1_before_each_write(&again, left - 1);
    });
}

/// A put that keeps losing races waits a little between attempts after
/// the first few, and still lands: writers contending for one record
/// spread out instead of spending every attempt at once. (Time is paused:
/// the waits cost the test nothing.)
#[tokio::test(start_paused = true)]
async fn a_write_that_keeps_losing_races_backs_off_and_lands() {
    let store = failing_on_cue();
    let shared: Arc<dyn StorageBackend> = store.clone();
    let e = SyncEngine::builder()
        .client_id("a")
        .backend(shared)
        .build()
        .await
        .unwrap();
    e.put("c", &json!({"id": "n1", "n": 0})).await.unwrap();
    rewrite_n1_before_each_write(&store, 10);
    let started = tokio::time::Instant::now();
    e.put("c", &json!({"id": "n1", "n": 1})).await.unwrap();
    assert!(
        started.elapsed() > Duration::ZERO,
        "ten lost races in a row and no wait between attempts"
    );
    let stored = e.get("c", "n1").await.unwrap().unwrap();
    assert_eq!(stored.get("n"), Some(json!(1)));
}

/// Another engine (client `b`) on the same store as the engine under test,
/// acting while that one waits to retry.
async fn later_engine(inner: Arc<dyn StorageBackend>) -> SyncEngine {
    SyncEngine::builder()
        .client_id("b")
        .conflict_strategy(STRATEGY)
        .backend(inner)
        .build()
        .await
        .unwrap()
}

/// A put or delete whose write landed but whose answer was lost is not
/// applied again over a later writer's change: another engine read the
/// landed write and changed the record before the retry, and that change
/// (acknowledged to its caller) stays.
#[tokio::test(start_paused = true)]
async fn a_write_whose_answer_was_lost_is_not_applied_again_over_a_later_writer() {
    let store = failing_on_cue();
    let engine = faulty_engine("a", &store, 3, 10).await;
    engine
        .put("c", &json!({"id": "n1", "title": "t0", "body": "b0"}))
        .await
        .unwrap();
    engine
        .put("c", &json!({"id": "n2", "title": "t0", "body": "b0"}))
        .await
        .unwrap();
    let later_writer = |doc: serde_json::Value| {
        move |inner: Arc<dyn StorageBackend>| async move {
            later_engine(inner).await.put("c", &doc).await.unwrap();
        }
    };

    // The later writer keeps the put's title and changes the body.
    store.rival_after_next_lost_put_batch(later_writer(
        json!({"id": "n1", "title": "t1", "body": "b1"}),
    ));
    let written = engine
        .put("c", &json!({"id": "n1", "title": "t1", "body": "b0"}))
        .await
        .unwrap();
    // Reported as stored: the put's title, the later writer's body.
    assert_eq!(written.get("title"), Some(json!("t1")));
    assert_eq!(written.get("body"), Some(json!("b1")));
    let stored = engine.get("c", "n1").await.unwrap().unwrap();
    assert_eq!(
        stored.get("body"),
        Some(json!("b1")),
        "the later write was undone"
    );
    assert_eq!(stored.get("title"), Some(json!("t1")));

    // The later writer brings a deleted record back.
    store.rival_after_next_lost_put_batch(later_writer(
        json!({"id": "n2", "title": "t2", "body": "b0"}),
    ));
    let deleted = engine.delete("c", "n2").await.unwrap().unwrap();
    assert!(deleted.is_deleted());
    let stored = engine.get("c", "n2").await.unwrap().unwrap();
    assert!(!stored.is_deleted(), "the later write was undone");
    assert_eq!(stored.get("title"), Some(json!("t2")));

    // A new record's insert, changed by the later writer before the retry.
    store.rival_after_next_lost_insert(later_writer(
        json!({"id": "n3", "title": "t3", "body": "b1"}),
    ));
    let added = engine
        .put("c", &json!({"id": "n3", "title": "t3", "body": "b0"}))
        .await
        .unwrap();
    assert_eq!(added.version(), 2, "the insert and the later write");
    let stored = engine.get("c", "n3").await.unwrap().unwrap();
    assert_eq!(
        stored.get("body"),
        Some(json!("b1")),
        "the later write was undone"
    );

    // A put that brings back a record with no fields stamps none, and the
    // later writer's delete keeps only the put's write stamp.
    engine.put("c", &json!({"id": "n4"})).await.unwrap();
    engine.delete("c", "n4").await.unwrap();
    store.rival_after_next_lost_put_batch(move |inner: Arc<dyn StorageBackend>| async move {
        later_engine(inner).await.delete("c", "n4").await.unwrap();
    });
    engine.put("c", &json!({"id": "n4"})).await.unwrap();
    let stored = engine.get("c", "n4").await.unwrap().unwrap();
    assert!(stored.is_deleted(), "the later delete was undone");
    assert_eq!(store.injected_failures(), 4);
}

/// A put whose write landed but whose answer was lost, and which a later
/// writer then deleted, returned the tombstone and announced it as the
/// record it added or updated: a put's outcome is the live record it wrote.
#[tokio::test(start_paused = true)]
async fn a_put_deleted_by_a_later_writer_before_its_retry_reports_what_it_wrote() {
    let store = failing_on_cue();
    let engine = faulty_engine("a", &store, 3, 10).await;
    engine
        .put("c", &json!({"id": "n1", "title": "t0"}))
        .await
        .unwrap();
    let later_delete = |id: &'static str| {
        move |inner: Arc<dyn StorageBackend>| async move {
            later_engine(inner).await.delete("c", id).await.unwrap();
        }
    };
    let mut rx = engine.subscribe();
    store.rival_after_next_lost_put_batch(later_delete("n1"));
    let updated = engine
        .put("c", &json!({"id": "n1", "title": "t1"}))
        .await
        .unwrap();
    assert!(!updated.is_deleted(), "{updated:?}");
    assert_eq!(updated.get("title"), Some(json!("t1")));
    store.rival_after_next_lost_insert(later_delete("n2"));
    let added = engine
        .put("c", &json!({"id": "n2", "title": "t2"}))
        .await
        .unwrap();
    assert!(!added.is_deleted(), "{added:?}");
    assert_eq!(added.get("title"), Some(json!("t2")));
    // The later deletes stand, and every record announced is live.
    for id in ["n1", "n2"] {
        let stored = engine.get("c", id).await.unwrap().unwrap();
        assert!(stored.is_deleted(), "{id}: the later delete was undone");
    }
    let mut announced = 0;
    while let Ok(event) = rx.try_recv() {
        if let SyncEvent::RecordAdded { record, .. } | SyncEvent::RecordUpdated { record, .. } =
            &event
        {
            assert!(!record.is_deleted(), "{event:?}");
            announced += 1;
        }
    }
    assert_eq!(announced, 2);
    assert_eq!(store.injected_failures(), 2);
}

/// A put or delete whose answer was lost and which a later writer then
/// built on leaves no stamp of its own when, under the timestamp strategy,
/// a later state won whole. It is still known to have landed, since the
/// stored state has seen it: applying it again undid the later writer's
/// acknowledged change. Not so a new record's insert: a state that has
/// seen its one write of this engine's may have seen an earlier first write
/// of the record instead (see
/// `a_put_whose_insert_failed_is_not_taken_for_an_earlier_write`), so an
/// insert whose trace is gone is applied again, after the later state.
#[tokio::test(start_paused = true)]
async fn a_lost_answer_write_that_a_later_state_built_on_is_not_applied_again() {
    let timestamp = ConflictStrategy::Timestamp;
    let store = failing_on_cue();
    let shared: Arc<dyn StorageBackend> = store.clone();
    let engine = SyncEngine::builder()
        .client_id("a")
        .conflict_strategy(timestamp)
        .backend(shared)
        .max_retries(3)
        .build()
        .await
        .unwrap();
    let engine_on = move |client: &'static str, backend: Arc<dyn StorageBackend>| async move {
        SyncEngine::builder()
            .client_id(client)
            .conflict_strategy(timestamp)
            .backend(backend)
            .build()
            .await
            .unwrap()
    };
    engine
        .put("c", &json!({"id": "n1", "title": "t0"}))
        .await
        .unwrap();
    engine
        .put("c", &json!({"id": "n2", "title": "t0"}))
        .await
        .unwrap();

    // A put; then another engine syncs in a record written elsewhere a
    // minute later (within the drift bound), which wins whole.
    let later_record = |id: &'static str| {
        move |inner: Arc<dyn StorageBackend>| async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            let minute_later = u64::try_from(now.as_millis()).unwrap() + 60_000;
            let elsewhere = SyncEngine::builder()
                .client_id("c")
                .conflict_strategy(timestamp)
                .time_source(Arc::new(syncforge::ManualTime::new(minute_later)))
                .build()
                .await
                .unwrap();
            let record = elsewhere
                .put("c", &json!({"id": id, "x": 9}))
                .await
                .unwrap();
            let merged = engine_on("b", inner)
                .await
                .sync("c", [record])
                .await
                .unwrap();
            assert_eq!(
                merged.added + merged.updated,
                1,
                "the later record won whole"
            );
        }
    };
    store.rival_after_next_lost_put_batch(later_record("n1"));
    engine
        .put("c", &json!({"id": "n1", "title": "t1"}))
        .await
        .unwrap();
    let stored = engine.get("c", "n1").await.unwrap().unwrap();
    assert_eq!(
        stored.get("x"),
        Some(json!(9)),
        "the later state was undone"
    );
    assert_eq!(stored.get("title"), None);

    // A delete, and the same.
    store.rival_after_next_lost_put_batch(later_record("n2"));
    engine.delete("c", "n2").await.unwrap();
    let stored = engine.get("c", "n2").await.unwrap().unwrap();
    assert!(!stored.is_deleted(), "the later state was undone");

    // A new record's insert: applied again over the later state, whose
    // content the put's replaces (its x is removed).
    store.rival_after_next_lost_insert(later_record("n3"));
    engine
        .put("c", &json!({"id": "n3", "title": "t3"}))
        .await
        .unwrap();
    let stored = engine.get("c", "n3").await.unwrap().unwrap();
    assert_eq!(stored.get("title"), Some(json!("t3")));
    assert_eq!(stored.get("x"), None, "the put names no x");
    assert_eq!(store.injected_failures(), 3);
}

/// A put of a record the store holds goes, on a store that can insert in
/// one step, through an insert that builds a new record first (the Redis
/// store sends it with its script). When that insert's answer was lost, the
/// record read afterwards, last written by an engine whose clock runs a
/// minute ahead, had seen the new record's one write of this engine's (its
/// own earlier first write) and absorbed it: the put was taken for landed,
/// reported written, and lost. Only the put's own stamps show it landed.
#[tokio::test(start_paused = true)]
async fn a_put_whose_insert_failed_is_not_taken_for_an_earlier_write() {
    let store = failing_on_cue();
    let now = 1_700_000_000_000;
    let on = |client: &'static str, millis: u64| {
        let backend: Arc<dyn StorageBackend> = store.clone();
        SyncEngine::builder()
            .client_id(client)
            .conflict_strategy(ConflictStrategy::Timestamp)
            .time_source(Arc::new(syncforge::ManualTime::new(millis)))
            .backend(backend)
            .build()
    };
    let a = on("a", now).await.unwrap();
    let b = on("b", now + 60_000).await.unwrap();
    a.put("c", &json!({"id": "x", "v": 1})).await.unwrap();
    b.put("c", &json!({"id": "x", "v": 2})).await.unwrap();
    store.fail_next_insert_after_building();
    let written = a.put("c", &json!({"id": "x", "v": 3})).await.unwrap();
    assert_eq!(written.get("v"), Some(json!(3)));
    let stored = a.get("c", "x").await.unwrap().unwrap();
    assert_eq!(stored.get("v"), Some(json!(3)), "the put was lost");
    assert_eq!(store.injected_failures(), 1);
}

/// Two processes sharing a client id can make equal stamps. A put that
/// stamped no field (a record with no fields brought back), which lost its
/// race to such a twin's put of fields made with the same stamp, is not
/// taken for landed: the twin's fields carry the stamp, and the put is
/// applied again.
#[tokio::test(start_paused = true)]
async fn a_put_of_no_field_is_not_taken_for_a_twins_write_with_its_stamp() {
    let store = failing_on_cue();
    let time = Arc::new(syncforge::ManualTime::new(1_700_000_000_000));
    let on_a_clock = |backend: Arc<dyn StorageBackend>, time: Arc<syncforge::ManualTime>| {
        SyncEngine::builder()
            .client_id("a")
            .conflict_strategy(STRATEGY)
            .backend(backend)
            .time_source(time)
            .build()
    };
    let shared: Arc<dyn StorageBackend> = store.clone();
    let engine = on_a_clock(shared, Arc::clone(&time)).await.unwrap();
    engine.put("c", &json!({"id": "r"})).await.unwrap();
    engine.delete("c", "r").await.unwrap();
    let newest = engine
        .get("c", "r")
        .await
        .unwrap()
        .unwrap()
        .newest_stamp()
        .clone();
    let before_twin = newest.clone();
    store.rival_before_next_put_batch(move |inner: Arc<dyn StorageBackend>| async move {
        let newest = before_twin;
        let twin = on_a_clock(inner, time).await.unwrap();
        let written = twin
            .put("c", &json!({"id": "r", "title": "x"}))
            .await
            .unwrap();
        assert_eq!(written.written().millis(), newest.millis());
        assert_eq!(written.written().counter(), newest.counter() + 1);
    });
    let put = engine.put("c", &json!({"id": "r"})).await.unwrap();
    assert!(
        put.written().counter() > newest.counter() + 1,
        "applied again"
    );
    let stored = engine.get("c", "r").await.unwrap().unwrap();
    assert!(!stored.is_deleted());
    assert_eq!(
        stored.get("title"),
        None,
        "the put was taken for the twin's"
    );
}
