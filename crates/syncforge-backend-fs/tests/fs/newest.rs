//! The newest stamp, which seeds an engine's clock on open, comes from the
//! change logs rather than from reading every record file.

use std::path::Path;

use syncforge_backend_fs::FsBackend;
use syncforge_core::{Stamp, StorageBackend};

use crate::{counter, put_any};

fn stamp_of(count: u64) -> Stamp {
    counter("any", count).newest_stamp().clone()
}

/// Replaces every record file of `dir` with something that is not a record,
/// so that only the log can still tell the newest stamp.
fn spoil_record_files(dir: &Path) {
    let mut spoiled = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            std::fs::write(&path, b"spoiled").unwrap();
            spoiled += 1;
        }
    }
    assert!(spoiled > 0, "no record file in {}", dir.display());
}

#[tokio::test]
async fn the_newest_stamp_is_read_from_the_log_not_the_record_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(store.newest_stamp().await.unwrap(), None);
    for (n, count) in [5, 9, 3].into_iter().enumerate() {
        put_any(&store, "notes", counter(&format!("r{n}"), count)).await;
    }
    put_any(&store, "tasks", counter("t1", 7)).await;
    assert_eq!(store.newest_stamp().await.unwrap(), Some(stamp_of(9)));
    store.close().await.unwrap();

    spoil_record_files(&tmp.path().join("notes"));
    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(reopened.newest_stamp().await.unwrap(), Some(stamp_of(9)));
}

#[tokio::test]
async fn an_older_write_never_lowers_the_newest_stamp() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r1", 9)).await;
    put_any(&store, "notes", counter("r1", 4)).await;
    put_any(&store, "notes", counter("r2", 2)).await;
    assert_eq!(store.newest_stamp().await.unwrap(), Some(stamp_of(9)));
}

#[tokio::test]
async fn another_handle_sees_a_newer_stamp_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let first = FsBackend::open(tmp.path()).await.unwrap();
    let second = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&first, "notes", counter("r1", 3)).await;
    assert_eq!(second.newest_stamp().await.unwrap(), Some(stamp_of(3)));
    put_any(&first, "notes", counter("r2", 8)).await;
    assert_eq!(second.newest_stamp().await.unwrap(), Some(stamp_of(8)));
}

#[tokio::test]
async fn a_record_file_added_by_hand_counts_from_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r1", 3)).await;
    assert_eq!(store.newest_stamp().await.unwrap(), Some(stamp_of(3)));
    store.close().await.unwrap();
    let dir = tmp.path().join("notes");
    std::fs::write(dir.join("r9.json"), counter("r9", 50).to_json_string()).unwrap();

    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(reopened.newest_stamp().await.unwrap(), Some(stamp_of(50)));
    // Learnt on open, so it is in the log now.
    reopened.close().await.unwrap();
    spoil_record_files(&dir);
    let again = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(again.newest_stamp().await.unwrap(), Some(stamp_of(50)));
}

#[tokio::test]
async fn a_log_that_does_not_know_reads_the_files_once_and_remembers() {
    for damage in ["older log without the line", "log deleted"] {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBackend::open(tmp.path()).await.unwrap();
        for (n, count) in [5, 11, 3].into_iter().enumerate() {
            put_any(&store, "notes", counter(&format!("r{n}"), count)).await;
        }
        store.close().await.unwrap();
        let dir = tmp.path().join("notes");
        let log = dir.join(".changes");
        if damage == "log deleted" {
            std::fs::remove_file(&log).unwrap();
        } else {
            let text = std::fs::read_to_string(&log).unwrap();
            let kept: String = text
                .lines()
                .filter(|line| !line.contains("newest"))
                .map(|line| format!("{line}\n"))
                .collect();
            assert_ne!(kept, text, "{damage}: the log had newest lines");
            std::fs::write(&log, kept).unwrap();
        }

        let reopened = FsBackend::open(tmp.path()).await.unwrap();
        assert_eq!(
            reopened.newest_stamp().await.unwrap(),
            Some(stamp_of(11)),
            "{damage}"
        );
        reopened.close().await.unwrap();
        spoil_record_files(&dir);
        let again = FsBackend::open(tmp.path()).await.unwrap();
        assert_eq!(
            again.newest_stamp().await.unwrap(),
            Some(stamp_of(11)),
            "{damage}: remembered in the log"
        );
    }
}

/// A log that does not know the newest stamp learns it from the records,
/// and those include the ones only the write-ahead log holds yet (written by
/// another handle, not checkpointed): the files alone would give an older
/// stamp, which the log would then remember for good.
#[tokio::test]
async fn a_log_that_does_not_know_counts_the_records_not_yet_in_their_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r0", 3)).await;
    store.close().await.unwrap();
    std::fs::remove_file(tmp.path().join("notes").join(".changes")).unwrap();

    let reader = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(
        reader.get_all(&crate::coll("notes")).await.unwrap().len(),
        1
    );
    let writer = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&writer, "notes", counter("r1", 40)).await;
    assert_eq!(reader.newest_stamp().await.unwrap(), Some(stamp_of(40)));
    assert_eq!(writer.newest_stamp().await.unwrap(), Some(stamp_of(40)));
}

/// A batch's change-log lines end with its newest stamp; a torn append can
/// keep the sequence lines and lose that one. The write-ahead frame still
/// holds the stamp, and the next handle enters it in the log before a
/// checkpoint drops the frame, where the sequences alone counted the frame
/// as entered and the bound stayed behind for good.
#[tokio::test]
async fn a_newest_stamp_lost_from_a_torn_log_append_is_entered_from_the_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r0", 3)).await;
    put_any(&store, "notes", counter("r1", 40)).await;
    let log = tmp.path().join("notes").join(".changes");
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.trim_end().rsplit('\n').next().unwrap();
    assert!(last.contains("newest"), "the append ends with {last}");
    std::fs::write(&log, &text[..text.len() - last.len() - 1]).unwrap();
    // The writer dies there, its frames not checkpointed.
    drop(store);

    let other = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(other.newest_stamp().await.unwrap(), Some(stamp_of(40)));
    other.close().await.unwrap();
    spoil_record_files(&tmp.path().join("notes"));
    let again = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(again.newest_stamp().await.unwrap(), Some(stamp_of(40)));
}
