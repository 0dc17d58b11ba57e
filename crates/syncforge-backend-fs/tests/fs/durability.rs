//! Reopening, corrupt files, the change log's recovery, closing and clearing.

use syncforge_backend_fs::{Durability, FsBackend, FsOptions};
use syncforge_core::{Error, StorageBackend, Token, Write, WriteOutcome};

use crate::{
    at, coll, count_of, counter, ids_in, limit, put_any, rid, store_with_torn_r1, token_of, tree,
};

#[tokio::test]
async fn records_are_plain_json_files_in_a_directory_per_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let record = counter("n1", 7);
    put_any(&store, "notes", record.clone()).await;
    // Written from the write-ahead log at a checkpoint (or on close).
    store.checkpoint().await.unwrap();
    let text = std::fs::read_to_string(tmp.path().join("notes").join("n1.json")).unwrap();
    // The canonical JSON and nothing else: the local sequence is not in it.
    assert_eq!(text, record.to_json_string());
}

#[tokio::test]
async fn reopening_resumes_the_sequence_and_the_feed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let mut last = 0;
    for n in 0..5 {
        last = put_any(&store, "notes", counter(&format!("r{n}"), n)).await;
    }
    store.close().await.unwrap();

    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    let stored = reopened
        .get(&coll("notes"), &rid("r4"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.token, Token::Sequence(last));
    let next = put_any(&reopened, "notes", counter("r0", 10)).await;
    assert_eq!(next, last + 1);
    let page = reopened
        .changes(&coll("notes"), at(last), limit(10))
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.changes[0].record.id(), "r0");
    assert_eq!(page.next, at(next));
    // Each record appears once, at its latest change.
    let all = reopened
        .changes(&coll("notes"), at(0), limit(100))
        .await
        .unwrap();
    let ids = ids_in(&all);
    assert_eq!(ids, ["r1", "r2", "r3", "r4", "r0"]);
}

#[tokio::test]
async fn a_corrupt_file_is_named_and_does_not_hide_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, broken) = store_with_torn_r1(tmp.path()).await;

    let err = store.get(&coll("notes"), &rid("r1")).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains(&broken.display().to_string()),
        "{err}"
    );
    assert_eq!(
        count_of(
            &store
                .get(&coll("notes"), &rid("r2"))
                .await
                .unwrap()
                .unwrap()
                .record
        ),
        2
    );

    let mut ids: Vec<String> = store
        .get_all(&coll("notes"))
        .await
        .unwrap()
        .iter()
        .map(|r| r.id().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["r0", "r2"]);
    let feed = store
        .changes(&coll("notes"), at(0), limit(10))
        .await
        .unwrap();
    assert_eq!(feed.changes.len(), 2);
    assert!(!feed.more);
    let corrupt = store.corrupt_files(&coll("notes")).await.unwrap();
    assert_eq!(corrupt.len(), 1);
    assert_eq!(corrupt[0].path, broken);
    assert!(corrupt[0].to_string().contains("r1.json"), "{}", corrupt[0]);

    // A file holding another record than its name says is reported too.
    std::fs::write(&broken, counter("r2", 5).to_json_string()).unwrap();
    let err = store.get(&coll("notes"), &rid("r1")).await.unwrap_err();
    assert!(err.to_string().contains("r1.json"), "{err}");

    // Writing the record again repairs it.
    let repaired = store
        .get(&coll("notes"), &rid("r0"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(repaired.record.id(), "r0");
    std::fs::remove_file(&broken).unwrap();
    put_any(&store, "notes", counter("r1", 9)).await;
    assert_eq!(
        count_of(
            &store
                .get(&coll("notes"), &rid("r1"))
                .await
                .unwrap()
                .unwrap()
                .record
        ),
        9
    );
    assert!(store
        .corrupt_files(&coll("notes"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_lost_or_damaged_change_log_is_rebuilt_without_hiding_records() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let mut last = 0;
    for n in 0..4 {
        last = put_any(&store, "notes", counter(&format!("r{n}"), n)).await;
    }
    store.close().await.unwrap();
    let log = tmp.path().join("notes").join(".changes");

    std::fs::write(&log, b"garbage\n").unwrap();
    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    let page = reopened
        .changes(&coll("notes"), at(last), limit(100))
        .await
        .unwrap();
    assert_eq!(
        page.changes.len(),
        4,
        "every record is seen again after the cursor"
    );
    reopened.close().await.unwrap();

    std::fs::remove_file(&log).unwrap();
    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(reopened.get_all(&coll("notes")).await.unwrap().len(), 4);
    let stored = reopened
        .get(&coll("notes"), &rid("r2"))
        .await
        .unwrap()
        .unwrap();
    let outcome = reopened
        .put(
            &coll("notes"),
            &Write::replace(counter("r2", 20), stored.token),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, WriteOutcome::Written { .. }));
}

/// A cleared collection keeps its numbering; its log deleted by hand then
/// (the docs allow it: it is rebuilt) made the next open number from 1
/// again, and a reader at the last cursor missed that many writes.
#[tokio::test]
async fn the_log_of_a_cleared_collection_deleted_by_hand_keeps_cursors_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let mut last = 0;
    for n in 0..3 {
        last = put_any(&store, "notes", counter(&format!("r{n}"), n)).await;
    }
    store.clear_collection(&coll("notes")).await.unwrap();
    store.close().await.unwrap();
    std::fs::remove_file(tmp.path().join("notes").join(".changes")).unwrap();
    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    let next = put_any(&reopened, "notes", counter("after", 1)).await;
    assert!(
        next > last,
        "sequence {next} after a reader's cursor {last}"
    );
    let page = reopened
        .changes(&coll("notes"), at(last), limit(10))
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 1, "the write after the cursor is seen");
    reopened.close().await.unwrap();
}

#[tokio::test]
async fn an_incomplete_log_line_from_a_crash_is_ignored_and_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let first = put_any(&store, "notes", counter("r0", 0)).await;
    let log = tmp.path().join("notes").join(".changes");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(b"{\"seq\":99,\"id\":\"gho");
    std::fs::write(&log, &bytes).unwrap();
    // A temporary left by a crashed writer.
    std::fs::write(tmp.path().join("notes").join(".tmp-1-1"), b"{\"id\":").unwrap();

    let other = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(
        other
            .changes(&coll("notes"), at(0), limit(10))
            .await
            .unwrap()
            .changes
            .len(),
        1
    );
    let second = put_any(&other, "notes", counter("r1", 1)).await;
    assert_eq!(second, first + 1);
    assert_eq!(
        store
            .changes(&coll("notes"), at(0), limit(10))
            .await
            .unwrap()
            .changes
            .len(),
        2
    );
    assert!(!tree(tmp.path()).iter().any(|n| n.contains(".tmp-")));
}

/// A temporary in the store's root can only be left by a metadata write
/// that crashed; the next metadata write, under the same lock, removes it.
#[tokio::test]
async fn a_crashed_metadata_write_leaves_nothing_after_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    store.set_meta("cursor:peer", "41").await.unwrap();
    std::fs::write(tmp.path().join(".tmp-1-1"), b"{\"cursor:peer\":").unwrap();

    let other = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(
        other.get_meta("cursor:peer").await.unwrap().as_deref(),
        Some("41")
    );
    other.set_meta("cursor:peer", "42").await.unwrap();
    assert!(!tree(tmp.path()).iter().any(|n| n.contains(".tmp-")));
    assert_eq!(
        store.get_meta("cursor:peer").await.unwrap().as_deref(),
        Some("42")
    );
}

#[tokio::test]
async fn close_keeps_data_and_clearing_is_explicit() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r0", 0)).await;
    let last = put_any(&store, "notes", counter("r1", 1)).await;
    store.set_meta("cursor:peer", "42").await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(
        store.get(&coll("notes"), &rid("r0")).await.unwrap_err(),
        Error::Closed { .. }
    ));

    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(reopened.get_all(&coll("notes")).await.unwrap().len(), 2);
    assert_eq!(
        reopened.get_meta("cursor:peer").await.unwrap().as_deref(),
        Some("42")
    );
    reopened.clear_collection(&coll("notes")).await.unwrap();
    assert!(reopened.get_all(&coll("notes")).await.unwrap().is_empty());
    assert!(reopened.list_collections().await.unwrap().is_empty());
    // Sequences keep growing after a clear, so cursors stay valid.
    let after = put_any(&reopened, "notes", counter("r2", 2)).await;
    assert!(after > last);
    assert_eq!(
        reopened
            .changes(&coll("notes"), at(last), limit(10))
            .await
            .unwrap()
            .changes
            .len(),
        1
    );
}

#[tokio::test]
async fn buffered_durability_stores_the_same_records() {
    let tmp = tempfile::tempdir().unwrap();
    let options = FsOptions::default().durability(Durability::Buffered);
    let store = FsBackend::open_with(tmp.path(), options).await.unwrap();
    let writes: Vec<Write> = (0..50)
        .map(|n| Write::create(counter(&format!("r{n}"), n)))
        .collect();
    let outcomes = store.put_batch(&coll("notes"), &writes).await.unwrap();
    assert_eq!(outcomes.len(), 50);
    let token = token_of(&outcomes[10]);
    store.close().await.unwrap();
    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(
        reopened
            .get(&coll("notes"), &rid("r10"))
            .await
            .unwrap()
            .unwrap()
            .token,
        token
    );
    assert_eq!(reopened.get_all(&coll("notes")).await.unwrap().len(), 50);
}

/// A removal reaches the record files at the next checkpoint; until then
/// the collection was still listed for the file of its last record, though
/// it held none. Ids long enough to be stored under a hashed file name too.
#[tokio::test]
async fn a_collection_whose_last_record_was_removed_is_not_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let long = "l".repeat(300);
    put_any(&store, "notes", counter("r0", 0)).await;
    put_any(&store, "long", counter(&long, 0)).await;
    put_any(&store, "kept", counter("k0", 0)).await;
    store.close().await.unwrap();
    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    assert!(reopened.delete(&coll("notes"), &rid("r0")).await.unwrap());
    assert!(reopened.delete(&coll("long"), &rid(&long)).await.unwrap());
    assert_eq!(reopened.list_collections().await.unwrap(), [coll("kept")]);
    // Another handle, which reads the files and the log, agrees.
    let other = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(other.list_collections().await.unwrap(), [coll("kept")]);
    put_any(&reopened, "notes", counter("r1", 1)).await;
    assert_eq!(
        other.list_collections().await.unwrap(),
        [coll("kept"), coll("notes")]
    );
}

#[tokio::test]
async fn deletes_are_gone_after_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r0", 0)).await;
    put_any(&store, "notes", counter("r1", 1)).await;
    assert!(store.delete(&coll("notes"), &rid("r0")).await.unwrap());
    assert!(!store.delete(&coll("notes"), &rid("r0")).await.unwrap());
    assert!(!store.delete(&coll("elsewhere"), &rid("r0")).await.unwrap());
    store.close().await.unwrap();
    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    assert!(reopened
        .get(&coll("notes"), &rid("r0"))
        .await
        .unwrap()
        .is_none());
    let feed = reopened
        .changes(&coll("notes"), at(0), limit(10))
        .await
        .unwrap();
    assert_eq!(feed.changes.len(), 1);
    assert!(!tree(tmp.path()).iter().any(|n| n == "elsewhere"));
}

#[tokio::test]
async fn a_handle_follows_a_log_rebuilt_by_another() {
    let tmp = tempfile::tempdir().unwrap();
    let first = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&first, "notes", counter("r0", 0)).await;
    let cursor = put_any(&first, "notes", counter("r1", 1)).await;
    std::fs::remove_file(tmp.path().join("notes").join(".changes")).unwrap();

    let second = FsBackend::open(tmp.path()).await.unwrap();
    let written = put_any(&second, "notes", counter("r2", 2)).await;
    let seen = first
        .get(&coll("notes"), &rid("r2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.token, Token::Sequence(written));
    let page = first
        .changes(&coll("notes"), at(cursor), limit(10))
        .await
        .unwrap();
    let mut ids = ids_in(&page);
    ids.sort();
    assert_eq!(ids, ["r0", "r1", "r2"]);
}

#[tokio::test]
async fn the_log_is_compacted_and_other_handles_follow() {
    let tmp = tempfile::tempdir().unwrap();
    let options = FsOptions::default().durability(Durability::Buffered);
    let writer = FsBackend::open_with(tmp.path(), options.clone())
        .await
        .unwrap();
    let reader = FsBackend::open_with(tmp.path(), options).await.unwrap();
    put_any(&writer, "notes", counter("stays", 0)).await;
    assert_eq!(
        reader
            .changes(&coll("notes"), at(0), limit(10))
            .await
            .unwrap()
            .changes
            .len(),
        1
    );
    let mut tokens: Vec<Option<Token>> = vec![None; 20];
    for round in 0..60u64 {
        let writes: Vec<Write> = tokens
            .iter()
            .enumerate()
            .map(|(n, token)| Write {
                record: counter(&format!("r{n}"), round),
                expected: token.clone(),
            })
            .collect();
        let outcomes = writer.put_batch(&coll("notes"), &writes).await.unwrap();
        tokens = outcomes.iter().map(|o| Some(token_of(o))).collect();
    }
    let last = match tokens.last().cloned().flatten() {
        Some(Token::Sequence(last)) => last,
        other => panic!("unexpected token {other:?}"),
    };
    let log = std::fs::read_to_string(tmp.path().join("notes").join(".changes")).unwrap();
    assert!(log.lines().count() < 1024, "the log was never compacted");
    let stored = reader
        .get(&coll("notes"), &rid("r19"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.token, Token::Sequence(last));
    assert_eq!(count_of(&stored.record), 59);
    let feed = reader
        .changes(&coll("notes"), at(0), limit(100))
        .await
        .unwrap();
    assert_eq!(feed.changes.len(), 21);
    assert_eq!(feed.changes[0].record.id(), "stays");
    // Above every position: the reader opened the collection after the
    // writer reserved positions for its `Buffered` writes, and numbers on
    // above that reservation (which a power cut cannot take back).
    let next = put_any(&reader, "notes", counter("new", 1)).await;
    assert!(next > last, "{next} after {last}");
    let feed = reader
        .changes(&coll("notes"), at(last), limit(100))
        .await
        .unwrap();
    assert_eq!(feed.changes.len(), 1);
}

#[tokio::test]
async fn a_record_file_added_by_hand_enters_the_feed_on_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let cursor = put_any(&store, "notes", counter("r0", 0)).await;
    store.close().await.unwrap();
    let by_hand = counter("Hand Made", 3);
    std::fs::write(
        tmp.path().join("notes").join("^hand%20^made.json"),
        by_hand.to_json_string(),
    )
    .unwrap();

    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    let page = reopened
        .changes(&coll("notes"), at(cursor), limit(10))
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.changes[0].record, by_hand);
    let stored = reopened
        .get(&coll("notes"), &rid("Hand Made"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.token, Token::Sequence(page.changes[0].cursor.get()));
}
