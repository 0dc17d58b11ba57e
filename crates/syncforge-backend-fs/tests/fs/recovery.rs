//! Recovering from what a damaged directory holds: corrupt record files,
//! out-of-range change-log numbers, a compaction that fails after a write,
//! and arguments that could make a caller loop.

use std::path::Path;
use std::time::Duration;

use syncforge_backend_fs::FsBackend;
use syncforge_core::{Error, StorageBackend, Token, Write, WriteOutcome};

use crate::{
    at, coll, count_of, counter, ids_in, limit, put_any, rid, rids, store_with_torn_r1, token_of,
    tree,
};

/// The largest sequence the log may hold (2^53).
const MAX_SEQUENCE: u64 = 1 << 53;

/// Writes a change log by hand: a header, then `entries` as they are.
fn write_log(dir: &Path, generation: u64, base: u64, entries: &[String]) {
    let mut text = format!(
        "{{\"format\":\"syncforge-fs/changes\",\"version\":1,\"generation\":{generation},\"base\":{base}}}\n"
    );
    for entry in entries {
        text.push_str(entry);
        text.push('\n');
    }
    std::fs::write(dir.join(".changes"), text).unwrap();
}

/// A collection directory holding the files of `records`, and no log.
fn collection_with(dir: &Path, records: &[(&str, u64)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (id, count) in records {
        std::fs::write(
            dir.join(format!("{id}.json")),
            counter(id, *count).to_json_string(),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn a_corrupt_file_reads_as_absent_in_a_batch_and_the_others_arrive() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _broken) = store_with_torn_r1(tmp.path()).await;

    let found = store
        .get_many(&coll("notes"), &rids(&["r0", "r1", "r2", "missing"]))
        .await
        .unwrap();
    let counts: Vec<Option<u64>> = found
        .iter()
        .map(|s| s.as_ref().map(|s| count_of(&s.record)))
        .collect();
    assert_eq!(counts, [Some(0), None, Some(2), None]);
    // A single get still names the file, which is what a person debugging wants.
    let err = store.get(&coll("notes"), &rid("r1")).await.unwrap_err();
    assert!(err.to_string().contains("r1.json"), "{err}");
}

#[tokio::test]
async fn a_batch_creating_a_record_over_its_corrupt_file_moves_the_file_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let dir = tmp.path().join("notes");
    for n in 0..3 {
        put_any(&store, "notes", counter(&format!("r{n}"), n)).await;
    }
    let cursor = store
        .changes(&coll("notes"), at(0), limit(10))
        .await
        .unwrap()
        .next;
    store.checkpoint().await.unwrap();
    let damaged = b"{\"id\": \"r1\", \"count\": ";
    std::fs::write(dir.join("r1.json"), damaged).unwrap();
    // A record holding another id under r2's name is corrupt too.
    std::fs::write(dir.join("r2.json"), counter("r0", 9).to_json_string()).unwrap();
    assert_eq!(store.corrupt_files(&coll("notes")).await.unwrap().len(), 2);

    // What a sync does: read the batch, then create what reads as absent.
    let ids = ["r1", "r2", "r3"];
    let found = store.get_many(&coll("notes"), &rids(&ids)).await.unwrap();
    assert!(found.iter().all(Option::is_none));
    let writes: Vec<Write> = ids
        .iter()
        .map(|id| Write::create(counter(id, 10)))
        .collect();
    let outcomes = store.put_batch(&coll("notes"), &writes).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, WriteOutcome::Written { .. })),
        "{outcomes:?}"
    );
    for id in ids {
        let stored = store.get(&coll("notes"), &rid(id)).await.unwrap().unwrap();
        assert_eq!(count_of(&stored.record), 10, "{id}");
    }
    assert!(store
        .corrupt_files(&coll("notes"))
        .await
        .unwrap()
        .is_empty());
    let page = store
        .changes(&coll("notes"), at(cursor), limit(10))
        .await
        .unwrap();
    let ids_in_feed = ids_in(&page);
    assert_eq!(ids_in_feed, ["r1", "r2", "r3"]);

    // Nothing was destroyed: both files wait in the sidecar directory (moved
    // there when the checkpoint writes the new files).
    store.checkpoint().await.unwrap();
    let aside = tree(&dir.join(".corrupt"));
    assert_eq!(aside.len(), 2, "{aside:?}");
    let r1_aside = aside.iter().find(|n| n.starts_with("r1.json.")).unwrap();
    assert_eq!(
        std::fs::read(dir.join(".corrupt").join(r1_aside)).unwrap(),
        damaged
    );
    assert!(aside.iter().any(|n| n.starts_with("r2.json.")), "{aside:?}");
    // The sidecar is the store's, not a collection of records.
    assert_eq!(store.get_all(&coll("notes")).await.unwrap().len(), 4);
    store.close().await.unwrap();
    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(reopened.get_all(&coll("notes")).await.unwrap().len(), 4);
    assert_eq!(reopened.list_collections().await.unwrap(), ["notes"]);
}

/// A replace whose token still matches the log is written over a record
/// file that something else made unreadable meanwhile: the unreadable file
/// is moved aside into `.corrupt/` when the checkpoint writes the record,
/// never destroyed.
#[tokio::test]
async fn a_replace_over_a_corrupt_file_moves_the_file_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let outcome = store
        .put(&coll("notes"), &Write::create(counter("r1", 1)))
        .await
        .unwrap();
    store.checkpoint().await.unwrap();
    let broken = tmp.path().join("notes").join("r1.json");
    std::fs::write(&broken, b"not json").unwrap();
    let outcome = store
        .put(
            &coll("notes"),
            &Write::replace(counter("r1", 2), token_of(&outcome)),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        WriteOutcome::Written {
            token: Token::Sequence(2),
            cursor: at(2)
        }
    );
    store.checkpoint().await.unwrap();
    assert_ne!(std::fs::read(&broken).unwrap(), b"not json");
    assert!(store
        .corrupt_files(&coll("notes"))
        .await
        .unwrap()
        .is_empty());
    let stored = store
        .get(&coll("notes"), &rid("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count_of(&stored.record), 2);
    let aside: Vec<Vec<u8>> = std::fs::read_dir(tmp.path().join("notes").join(".corrupt"))
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert_eq!(aside, [b"not json".to_vec()]);
}

#[tokio::test]
async fn a_failed_compaction_after_a_committed_batch_still_reports_the_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("notes");
    collection_with(&dir, &[("r1", 1)]);
    // Enough superseded lines to compact on the next write, and a generation
    // that cannot grow: the rewrite fails after the write is committed.
    let entries: Vec<String> = (1..=1100)
        .map(|seq| format!("{{\"seq\":{seq},\"id\":\"r1\"}}"))
        .collect();
    write_log(&dir, MAX_SEQUENCE, 0, &entries);

    let store = FsBackend::open(tmp.path()).await.unwrap();
    let stored = store
        .get(&coll("notes"), &rid("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.token, Token::Sequence(1100));
    let outcomes = store
        .put_batch(
            &coll("notes"),
            &[
                Write::replace(counter("r1", 2), stored.token),
                Write::create(counter("r2", 1)),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Written {
                token: Token::Sequence(1101),
                cursor: at(1101)
            },
            WriteOutcome::Written {
                token: Token::Sequence(1102),
                cursor: at(1102)
            },
        ]
    );
    let r1 = store
        .get(&coll("notes"), &rid("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count_of(&r1.record), 2);
    assert!(store.delete(&coll("notes"), &rid("r2")).await.unwrap());
    let page = store
        .changes(&coll("notes"), at(1100), limit(10))
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.next, at(1101));
}

#[tokio::test]
async fn log_sequences_beyond_the_limit_rebuild_the_log_instead_of_overflowing() {
    for (name, generation, base, entry) in [
        (
            "entry",
            7,
            0,
            format!("{{\"seq\":{},\"id\":\"r1\"}}", u64::MAX),
        ),
        ("base", 7, u64::MAX, "{\"seq\":1,\"id\":\"r1\"}".to_owned()),
        (
            "generation",
            u64::MAX,
            0,
            "{\"seq\":1,\"id\":\"r1\"}".to_owned(),
        ),
        (
            "just above",
            7,
            0,
            format!("{{\"seq\":{},\"id\":\"r1\"}}", MAX_SEQUENCE + 1),
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("notes");
        collection_with(&dir, &[("r1", 1)]);
        write_log(&dir, generation, base, &[entry]);

        let store = FsBackend::open(tmp.path()).await.unwrap();
        let outcome = store
            .put(&coll("notes"), &Write::create(counter("r2", 1)))
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let WriteOutcome::Written { cursor, .. } = outcome else {
            panic!("{name}: {outcome:?}");
        };
        let sequence = cursor.get();
        assert!(sequence <= MAX_SEQUENCE, "{name}: {sequence}");
        let r1 = store
            .get(&coll("notes"), &rid("r1"))
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(r1.token, Token::Sequence(s) if s < sequence),
            "{name}"
        );
        let page = store
            .changes(&coll("notes"), at(0), limit(10))
            .await
            .unwrap();
        let ids = ids_in(&page);
        assert_eq!(ids, ["r1", "r2"], "{name}");
        assert_eq!(page.next, cursor, "{name}");
    }
}

#[tokio::test]
async fn a_log_at_the_sequence_limit_refuses_writes_with_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("notes");
    collection_with(&dir, &[("r1", 1)]);
    write_log(
        &dir,
        7,
        0,
        &[format!("{{\"seq\":{MAX_SEQUENCE},\"id\":\"r1\"}}")],
    );

    let store = FsBackend::open(tmp.path()).await.unwrap();
    let r1 = store
        .get(&coll("notes"), &rid("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r1.token, Token::Sequence(MAX_SEQUENCE));
    let before = tree(&dir);
    for _ in 0..2 {
        let err = store
            .put(&coll("notes"), &Write::create(counter("r2", 1)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(".changes"), "{err}");
    }
    assert_eq!(tree(&dir), before, "a refused write writes nothing");
    // The handle is not poisoned: reads keep working.
    let r1 = store
        .get(&coll("notes"), &rid("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r1.token, Token::Sequence(MAX_SEQUENCE));
    assert_eq!(
        store
            .changes(&coll("notes"), at(0), limit(10))
            .await
            .unwrap()
            .changes
            .len(),
        1
    );
}

/// A change log deleted whole is rebuilt numbering above every position
/// handed out, also when they are above the clock (an earlier rebuild ran
/// while the clock was ahead, and it was set back since): rebuilt from the
/// clock, the feed numbered below the cursors replicas held, which then
/// missed every change until the numbering passed them.
#[tokio::test]
async fn a_log_deleted_whole_numbers_above_positions_ahead_of_the_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("notes");
    let ahead = 1u64 << 52;
    collection_with(&dir, &[("r1", 1)]);
    write_log(&dir, 7, 0, &[format!("{{\"seq\":{ahead},\"id\":\"r1\"}}")]);
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let written = store
        .put(&coll("notes"), &Write::create(counter("r2", 1)))
        .await
        .unwrap();
    let WriteOutcome::Written { cursor, .. } = written else {
        panic!("{written:?}")
    };
    assert!(cursor > at(ahead), "{cursor:?}");
    store.close().await.unwrap();
    std::fs::remove_file(dir.join(".changes")).unwrap();

    // A replica that pulled r2 holds its position as its cursor.
    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    let page = reopened
        .changes(&coll("notes"), cursor, limit(10))
        .await
        .unwrap();
    let mut ids = ids_in(&page);
    ids.sort_unstable();
    assert_eq!(ids, ["r1", "r2"], "{page:?}");
}

/// A collection whose name is too long for a directory's (so hashed, with
/// a `.name` file), holding record `r1`, made in a store at `root` and
/// closed; its name and its directory.
async fn hashed_collection_holding_r1(root: &Path) -> (String, std::path::PathBuf) {
    let collection = "c".repeat(300);
    let first = FsBackend::open(root).await.unwrap();
    put_any(&first, &collection, counter("r1", 1)).await;
    first.close().await.unwrap();
    let dir_name = tree(root)
        .into_iter()
        .find(|n| n.contains('~') && !n.contains('/'))
        .unwrap();
    (collection, root.join(dir_name))
}

#[tokio::test]
async fn the_name_file_of_a_hashed_collection_is_written_under_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let (collection, dir) = hashed_collection_holding_r1(tmp.path()).await;
    std::fs::remove_file(dir.join(".name")).unwrap();

    // Another process holds the collection's lock (its reconcile removes
    // temporaries): nothing may be written into the directory meanwhile.
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(".lock"))
        .unwrap();
    lock.lock().unwrap();
    let second = FsBackend::open(tmp.path()).await.unwrap();
    let reader = {
        let collection = collection.clone();
        tokio::spawn(async move { second.get(&coll(&collection), &rid("r1")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !dir.join(".name").exists(),
        "the name file was written without the lock"
    );
    lock.unlock().unwrap();
    let found = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(count_of(&found.unwrap().record), 1);
    assert_eq!(
        std::fs::read_to_string(dir.join(".name")).unwrap(),
        collection
    );
}

/// A link in place of a hashed collection's `.name` was taken for the name
/// and kept: the listing (which never follows one) left the collection out
/// of `list_collections` for good, and with it out of the store's
/// checkpoint. It is replaced by the name, as a linked `.changes` is by a
/// rebuilt log.
#[cfg(unix)]
#[tokio::test]
async fn a_link_in_place_of_the_name_file_is_replaced_by_the_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (collection, dir) = hashed_collection_holding_r1(tmp.path()).await;
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::write(&elsewhere, &collection).unwrap();
    std::fs::remove_file(dir.join(".name")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join(".name")).unwrap();

    let second = FsBackend::open(tmp.path()).await.unwrap();
    let found = second.get(&coll(&collection), &rid("r1")).await.unwrap();
    assert_eq!(count_of(&found.unwrap().record), 1);
    assert_eq!(
        second.list_collections().await.unwrap(),
        [coll(&collection)]
    );
    let name_file = std::fs::symlink_metadata(dir.join(".name")).unwrap();
    assert!(name_file.is_file(), "{name_file:?}");
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), collection);
    second.close().await.unwrap();
}

#[tokio::test]
async fn a_page_ending_in_corrupt_entries_moves_its_cursor_past_them() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let first = put_any(&store, "notes", counter("r0", 0)).await;
    put_any(&store, "notes", counter("r1", 1)).await;
    let last = put_any(&store, "notes", counter("r2", 2)).await;
    store.checkpoint().await.unwrap();
    for id in ["r1", "r2"] {
        std::fs::write(tmp.path().join("notes").join(format!("{id}.json")), b"x").unwrap();
    }
    let page = store
        .changes(&coll("notes"), at(0), limit(2))
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.changes[0].cursor, at(first));
    // `next` is the last sequence examined, not the last returned: a reader
    // paging on does not read the skipped entries again.
    assert_eq!(page.next, at(last));
    assert!(!page.more);
    let rest = store
        .changes(&coll("notes"), at(page.next), limit(2))
        .await
        .unwrap();
    assert!(rest.changes.is_empty());
    assert_eq!(rest.next, at(last));
}

/// A write-ahead log of a later version (left by a newer syncforge, say
/// after a crash and a downgrade) counted as damaged and was started
/// again, dropping the acknowledged writes its frames held. It is refused
/// as corrupt, and left as it is.
#[tokio::test]
async fn a_write_ahead_log_of_a_later_version_is_refused_not_started_again() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r0", 0)).await;
    store.close().await.unwrap();
    let wal = tmp.path().join("notes").join(".wal");
    let later = b"{\"format\":\"syncforge-fs/wal\",\"version\":2,\"generation\":7}\nframes\n";
    std::fs::write(&wal, later).unwrap();

    // A collection whose records are all in such a log is still listed.
    let unread = tmp.path().join("unread");
    std::fs::create_dir(&unread).unwrap();
    std::fs::write(unread.join(".wal"), later).unwrap();

    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    let err = reopened.get(&coll("notes"), &rid("r0")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { .. }) && err.to_string().contains("version 2"),
        "{err}"
    );
    assert_eq!(std::fs::read(&wal).unwrap(), later);
    assert_eq!(
        reopened.list_collections().await.unwrap(),
        [coll("notes"), coll("unread")]
    );
    // A checkpoint still writes the other collections' records, and then
    // reports the one it could not read.
    put_any(&reopened, "other", counter("o1", 1)).await;
    let err = reopened.checkpoint().await.unwrap_err();
    assert!(matches!(&err, Error::Corrupt { .. }), "{err}");
    assert!(tmp.path().join("other").join("o1.json").exists());
}

/// A checkpoint skipped a collection whose last record had been removed
/// (it lists only collections holding records): the removal never reached
/// the record files, which other programs go on reading.
#[tokio::test]
async fn a_checkpoint_removes_the_file_of_a_collections_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r1", 1)).await;
    store.checkpoint().await.unwrap();
    let file = tmp.path().join("notes").join("r1.json");
    assert!(file.exists());
    assert!(store.delete(&coll("notes"), &rid("r1")).await.unwrap());
    store.checkpoint().await.unwrap();
    assert!(!file.exists(), "the removed record's file is still there");
    assert!(store.list_collections().await.unwrap().is_empty());
}
