//! A hostile directory: symbolic links planted inside the store are never
//! followed, and files that cannot be read are errors, not absences.

use std::path::Path;

use syncforge_backend_fs::FsBackend;
use syncforge_core::{Error, Record, StorageBackend, Write, WriteOutcome, MAX_NESTING_DEPTH};
use syncforge_testkit::hostile;

use crate::{at, coll, count_of, counter, limit, put_any, rid, rids, store_with_torn_r1, tree};

/// A directory outside the store holding one file, and its content.
fn outside(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let dir = tmp.join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("precious.txt");
    let content = counter("r1", 99).to_json_string().into_bytes();
    std::fs::write(&file, &content).unwrap();
    (dir, file, content)
}

/// The name of the one record file in `dir` whose name is hashed (its id
/// too long to spell in a file name).
fn hashed_record_file(dir: &Path) -> String {
    tree(dir)
        .into_iter()
        .find(|name| name.contains('~') && name.ends_with(".json"))
        .unwrap()
}

fn assert_corrupt(err: &Error, path_part: &str) {
    assert!(
        matches!(err, Error::Corrupt { location, .. } if location.contains(path_part)),
        "{err}"
    );
}

#[tokio::test]
async fn a_directory_in_a_record_files_place_is_an_error_not_an_absence() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    for n in 0..3 {
        put_any(&store, "notes", counter(&format!("r{n}"), n)).await;
    }
    store.checkpoint().await.unwrap();
    let file = tmp.path().join("notes").join("r1.json");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();

    for err in [
        store.get_all(&coll("notes")).await.unwrap_err(),
        store.get(&coll("notes"), &rid("r1")).await.unwrap_err(),
        store
            .get_many(&coll("notes"), &rids(&["r0", "r1"]))
            .await
            .unwrap_err(),
        store
            .changes(&coll("notes"), at(0), limit(10))
            .await
            .unwrap_err(),
        store.corrupt_files(&coll("notes")).await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::Storage { .. }), "{err}");
        assert!(err.to_string().contains("r1.json"), "{err}");
    }
    // The feed did not move past it: once it is readable again, it is there.
    std::fs::remove_dir(&file).unwrap();
    std::fs::write(&file, counter("r1", 7).to_json_string()).unwrap();
    let page = store
        .changes(&coll("notes"), at(0), limit(10))
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 3);
    assert_eq!(store.corrupt_skipped(), 0);
}

/// A delete, or a replace with a token read before, of a record whose file
/// became unreadable (here a directory in its place) is accepted into the
/// log; writing the file then failed on reading the old one, every
/// checkpoint of the collection failed, and so did every later opening of
/// it, in any handle, and of any engine on the store. The unreadable file
/// is now moved aside, as a corrupt one is.
#[tokio::test]
async fn an_unreadable_record_file_does_not_hold_up_the_writes_that_replace_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    for n in 0..3 {
        put_any(&store, "notes", counter(&format!("r{n}"), n)).await;
    }
    let token = store
        .get(&coll("notes"), &rid("r2"))
        .await
        .unwrap()
        .unwrap()
        .token;
    store.checkpoint().await.unwrap();
    let dir = tmp.path().join("notes");
    for name in ["r1.json", "r2.json"] {
        std::fs::remove_file(dir.join(name)).unwrap();
        std::fs::create_dir(dir.join(name)).unwrap();
    }

    assert!(store.delete(&coll("notes"), &rid("r1")).await.unwrap());
    let outcome = store
        .put(&coll("notes"), &Write::replace(counter("r2", 5), token))
        .await
        .unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { .. }),
        "{outcome:?}"
    );
    store.checkpoint().await.unwrap();
    store.close().await.unwrap();

    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    reopened.newest_stamp().await.unwrap();
    assert!(reopened
        .get(&coll("notes"), &rid("r1"))
        .await
        .unwrap()
        .is_none());
    let r2 = reopened.get(&coll("notes"), &rid("r2")).await.unwrap();
    assert_eq!(r2.map(|stored| count_of(&stored.record)), Some(5));
    assert_eq!(reopened.get_all(&coll("notes")).await.unwrap().len(), 2);
    let aside = tree(&dir.join(".corrupt"));
    assert_eq!(aside.len(), 2, "both kept for inspection: {aside:?}");
}

/// A file under a hashed name (an id too long to spell in a file name) of an
/// id the change log knows that cannot be read — here a directory in its
/// place — failed the opening of its collection, and with it every call on
/// the collection and the opening of any engine on the store (which asks
/// every collection for its newest stamp): opening read every such file to
/// learn its id. The id is now found from the name, and only what needs
/// that record fails.
#[tokio::test]
async fn an_unreadable_file_under_a_hashed_name_fails_only_its_own_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let long = "a".repeat(300);
    put_any(&store, "notes", counter(&long, 1)).await;
    put_any(&store, "notes", counter("r1", 2)).await;
    store.checkpoint().await.unwrap();
    store.close().await.unwrap();
    let dir = tmp.path().join("notes");
    let hashed = hashed_record_file(&dir);
    std::fs::remove_file(dir.join(&hashed)).unwrap();
    std::fs::create_dir(dir.join(&hashed)).unwrap();

    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    reopened.newest_stamp().await.unwrap();
    let r1 = reopened.get(&coll("notes"), &rid("r1")).await.unwrap();
    assert_eq!(r1.map(|stored| count_of(&stored.record)), Some(2));
    let err = reopened.get(&coll("notes"), &rid(&long)).await.unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    // Once readable again, the record is there, in the feed too.
    std::fs::remove_dir(dir.join(&hashed)).unwrap();
    std::fs::write(dir.join(&hashed), counter(&long, 3).to_json_string()).unwrap();
    let page = reopened
        .changes(&coll("notes"), at(0), limit(10))
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 2, "{page:?}");
}

/// A record file added by hand that cannot be read (here a directory in
/// its place) failed the collection's open, which reads the stamps of such
/// files: every call on the collection failed, and the engine's open too.
#[tokio::test]
async fn an_unreadable_file_added_by_hand_fails_only_its_own_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r0", 1)).await;
    store.checkpoint().await.unwrap();
    store.close().await.unwrap();
    std::fs::create_dir(tmp.path().join("notes").join("new.json")).unwrap();

    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    reopened.newest_stamp().await.unwrap();
    let r0 = reopened.get(&coll("notes"), &rid("r0")).await.unwrap();
    assert_eq!(r0.map(|stored| count_of(&stored.record)), Some(1));
    let err = reopened.get(&coll("notes"), &rid("new")).await.unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err}");
}

/// The same file, the change log lost: a rebuilt log knows no newest
/// stamp, so the store's was read from every record file, and the one that
/// cannot be read failed it, and every engine's open on the store. It is
/// left out, as from the collection's other reads, and the stamp found is
/// not kept: the file is read again at the next opening, once readable.
#[tokio::test]
async fn an_unreadable_file_leaves_the_newest_stamp_to_the_others_after_a_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r0", 1)).await;
    store.checkpoint().await.unwrap();
    store.close().await.unwrap();
    let dir = tmp.path().join("notes");
    std::fs::create_dir(dir.join("new.json")).unwrap();
    std::fs::remove_file(dir.join(".changes")).unwrap();

    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    let newest = reopened.newest_stamp().await.unwrap();
    assert_eq!(newest.as_ref(), Some(counter("r0", 1).newest_stamp()));
    reopened.close().await.unwrap();

    std::fs::remove_dir(dir.join("new.json")).unwrap();
    std::fs::write(dir.join("new.json"), counter("new", 5).to_json_string()).unwrap();
    let readable = FsBackend::open(tmp.path()).await.unwrap();
    let newest = readable.newest_stamp().await.unwrap();
    assert_eq!(newest.as_ref(), Some(counter("new", 5).newest_stamp()));
}

/// A file under a hashed name added by hand (so of an id the change log
/// does not know) that cannot be read failed the opening of its
/// collection, which reads such a file to learn its id: every call on the
/// collection failed, and every engine's open on the store. It is left out,
/// with a warning, until it can be read, and indexed at the next opening
/// after that.
#[tokio::test]
async fn an_unreadable_hashed_file_added_by_hand_is_left_out_until_it_can_be_read() {
    let long = "b".repeat(300);
    // The record's file as another store wrote it, to be added by hand.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = FsBackend::open(elsewhere.path()).await.unwrap();
    put_any(&other, "notes", counter(&long, 3)).await;
    other.checkpoint().await.unwrap();
    other.close().await.unwrap();
    let hashed = hashed_record_file(&elsewhere.path().join("notes"));

    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r0", 1)).await;
    store.checkpoint().await.unwrap();
    store.close().await.unwrap();
    let added = tmp.path().join("notes").join(&hashed);
    std::fs::create_dir(&added).unwrap();

    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    reopened.newest_stamp().await.unwrap();
    let r0 = reopened.get(&coll("notes"), &rid("r0")).await.unwrap();
    assert_eq!(r0.map(|stored| count_of(&stored.record)), Some(1));
    reopened.close().await.unwrap();

    std::fs::remove_dir(&added).unwrap();
    std::fs::copy(elsewhere.path().join("notes").join(&hashed), &added).unwrap();
    let readable = FsBackend::open(tmp.path()).await.unwrap();
    let found = readable.get(&coll("notes"), &rid(&long)).await.unwrap();
    assert_eq!(found.map(|stored| count_of(&stored.record)), Some(3));
    let page = readable
        .changes(&coll("notes"), at(0), limit(10))
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 2, "{page:?}");
}

/// A collection whose name is too long for a directory's keeps it in a
/// `.name` file. One such file that could not be read (here a directory in
/// its place) failed the listing of every collection, and with it every
/// engine's open on the store and every checkpoint of the others. The
/// collection is left out; a checkpoint writes the others' records and
/// fails for it while its write-ahead log holds writes it cannot reach.
#[tokio::test]
async fn an_unreadable_collection_name_leaves_out_only_its_collection() {
    let long = "c".repeat(200);
    for unreadable in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBackend::open(tmp.path()).await.unwrap();
        put_any(&store, &long, counter("r0", 1)).await;
        put_any(&store, "notes", counter("r0", 2)).await;
        // The writer dies there, both writes in the write-ahead logs.
        drop(store);
        let name_file = tree(tmp.path())
            .into_iter()
            .find(|path| path.ends_with(".name"))
            .unwrap();
        let name_file = tmp.path().join(name_file);
        std::fs::remove_file(&name_file).unwrap();
        if unreadable {
            std::fs::create_dir(&name_file).unwrap();
        }

        let reopened = FsBackend::open(tmp.path()).await.unwrap();
        reopened.newest_stamp().await.unwrap();
        let listed = reopened.list_collections().await.unwrap();
        assert_eq!(listed, [coll("notes")]);
        let err = reopened.checkpoint().await.unwrap_err();
        assert!(err.to_string().contains(".name"), "{err}");
        assert!(tmp.path().join("notes").join("r0.json").is_file());

        // Named again, it is checkpointed like any other.
        if unreadable {
            std::fs::remove_dir(&name_file).unwrap();
        }
        std::fs::write(&name_file, &long).unwrap();
        reopened.checkpoint().await.unwrap();
        let listed = reopened.list_collections().await.unwrap();
        assert_eq!(listed, [coll(&long), coll("notes")]);
    }
}

/// While the write-ahead log holds removals only, listing the collections
/// reads the id of each file under a hashed name, to tell whether a removal
/// hides it: one that could not be read failed the listing, and with it
/// every engine's open on the store. Its collection is listed instead.
#[tokio::test]
async fn an_unreadable_hashed_file_beside_logged_removals_lists_its_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r0", 1)).await;
    store.checkpoint().await.unwrap();
    assert!(store.delete(&coll("notes"), &rid("r0")).await.unwrap());
    // The writer dies there, its removal in the write-ahead log.
    drop(store);
    let added = format!("{}~0123456789abcdef0123456789abcdef.json", "e".repeat(64));
    std::fs::create_dir(tmp.path().join("notes").join(added)).unwrap();

    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    assert_eq!(reopened.list_collections().await.unwrap(), [coll("notes")]);
}

/// A change log that is lost is rebuilt from the record files, and then
/// knows no id: a file under a hashed name that cannot be read may be a
/// record the store wrote. Left out, it read as absent (and a create of
/// its id went through): the opening fails instead, until it can be read.
#[tokio::test]
async fn an_unreadable_hashed_file_fails_the_rebuild_of_a_lost_change_log() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    let long = "d".repeat(300);
    put_any(&store, "notes", counter(&long, 1)).await;
    put_any(&store, "notes", counter("r1", 2)).await;
    store.close().await.unwrap();
    let dir = tmp.path().join("notes");
    let hashed = hashed_record_file(&dir);
    let kept = tmp.path().join("kept.json");
    std::fs::rename(dir.join(&hashed), &kept).unwrap();
    std::fs::create_dir(dir.join(&hashed)).unwrap();
    std::fs::remove_file(dir.join(".changes")).unwrap();

    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    let err = reopened.get(&coll("notes"), &rid(&long)).await.unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    reopened.close().await.unwrap();

    std::fs::remove_dir(dir.join(&hashed)).unwrap();
    std::fs::rename(&kept, dir.join(&hashed)).unwrap();
    let readable = FsBackend::open(tmp.path()).await.unwrap();
    let found = readable.get(&coll("notes"), &rid(&long)).await.unwrap();
    assert_eq!(found.map(|stored| count_of(&stored.record)), Some(1));
}

/// A directory in a record file's place failed every clear of the
/// collection, each after removing the files listed before it: it is moved
/// aside into `.corrupt/`, as a checkpoint moves a record file it cannot
/// read, and the clear goes through.
#[tokio::test]
async fn a_directory_in_a_record_files_place_does_not_stop_a_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r0", 1)).await;
    put_any(&store, "notes", counter("r1", 2)).await;
    store.checkpoint().await.unwrap();
    let dir = tmp.path().join("notes");
    std::fs::remove_file(dir.join("r1.json")).unwrap();
    std::fs::create_dir(dir.join("r1.json")).unwrap();

    store.clear_collection(&coll("notes")).await.unwrap();
    assert!(store.get_all(&coll("notes")).await.unwrap().is_empty());
    assert!(!dir.join("r1.json").exists());
    let aside: Vec<String> = std::fs::read_dir(dir.join(".corrupt"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        aside.iter().any(|name| name.starts_with("r1.json.")),
        "{aside:?}"
    );
}

/// Clearing a collection removed every `.json` file in its directory, a
/// file named so by hand (`my notes.json`, `Note.json`, `notes~old.json`)
/// included, though no record is kept under such a name.
#[tokio::test]
async fn clearing_a_collection_keeps_files_that_stand_for_no_record() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r0", 1)).await;
    store.checkpoint().await.unwrap();
    let dir = tmp.path().join("notes");
    let foreign = [
        "my notes.json",
        "Note.json",
        "notes~old.json",
        "draft~2.json",
    ];
    for name in foreign {
        std::fs::write(dir.join(name), "kept").unwrap();
    }
    store.clear_collection(&coll("notes")).await.unwrap();
    assert!(store.get_all(&coll("notes")).await.unwrap().is_empty());
    assert!(!dir.join("r0.json").exists());
    for name in foreign {
        assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), "kept");
    }
}

/// A named pipe in a record file's place, or the change log's, is an error
/// naming it. Opened as a file, it waited for a writer, for ever, under the
/// collection's lock: every call on the collection hung, in every handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_pipe_in_a_files_place_is_an_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    for n in 0..3 {
        put_any(&store, "notes", counter(&format!("r{n}"), n)).await;
    }
    store.checkpoint().await.unwrap();
    let mkfifo = |path: &Path| {
        let made = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .is_ok_and(|status| status.success());
        assert!(made, "mkfifo {}", path.display());
    };
    let file = tmp.path().join("notes").join("r1.json");
    std::fs::remove_file(&file).unwrap();
    mkfifo(&file);
    let bounded = std::time::Duration::from_secs(20);
    let calls = async {
        [
            store.get(&coll("notes"), &rid("r1")).await,
            store.get_all(&coll("notes")).await.map(|_| None),
        ]
    };
    let answers = tokio::time::timeout(bounded, calls)
        .await
        .expect("a call on the collection hung");
    for call in answers {
        let err = call.unwrap_err();
        assert!(matches!(err, Error::Storage { .. }), "{err}");
        assert!(err.to_string().contains("r1.json"), "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, counter("r1", 7).to_json_string()).unwrap();
    store.close().await.unwrap();

    // The change log: a handle opening the collection refuses it.
    let log = tmp.path().join("notes").join(".changes");
    std::fs::remove_file(&log).unwrap();
    mkfifo(&log);
    let reopened = FsBackend::open(tmp.path()).await.unwrap();
    let read = tokio::time::timeout(bounded, reopened.get(&coll("notes"), &rid("r0")))
        .await
        .expect("a call on the collection hung");
    let err = read.unwrap_err();
    assert!(err.to_string().contains(".changes"), "{err}");
    reopened.close().await.unwrap();
}

/// A device that never ends (`/dev/zero`) in a record file's place was
/// read until memory ran out. Making one takes root: the test says so
/// where it cannot, as a service test without its service does. A large
/// regular file is read whole.
#[tokio::test]
async fn an_endless_device_in_a_files_place_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    put_any(&store, "notes", counter("r1", 1)).await;
    store.checkpoint().await.unwrap();
    let file = tmp.path().join("notes").join("r1.json");
    let large = Record::from_json(serde_json::json!({
        "id": "r1", "text": "x".repeat(3 << 20), "_version": 1, "_timestamp": 5,
        "_deleted": false, "_clientId": "c"
    }))
    .unwrap();
    std::fs::write(&file, large.to_json_string()).unwrap();
    let read = store
        .get(&coll("notes"), &rid("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.record, large);

    std::fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mknod")
        .arg(&file)
        .args(["c", "1", "5"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    // On a file system mounted `nodev`, the device cannot be opened at all.
    if !made || std::fs::File::open(&file).is_err() {
        eprintln!(
            "SKIPPED an_endless_device_in_a_files_place_is_an_error: making and opening a \
             device needs root and a file system without nodev"
        );
        return;
    }
    let err = store.get(&coll("notes"), &rid("r1")).await.unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "{err}");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    std::fs::remove_file(&file).unwrap();
    store.close().await.unwrap();
}

#[tokio::test]
async fn skipped_corrupt_files_are_counted_where_the_caller_sees_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, broken) = store_with_torn_r1(tmp.path()).await;
    assert_eq!(store.corrupt_skipped(), 0);
    assert_eq!(store.get_all(&coll("notes")).await.unwrap().len(), 2);
    assert_eq!(store.corrupt_skipped(), 1);
    let page = store
        .changes(&coll("notes"), at(0), limit(10))
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 2);
    assert_eq!(store.corrupt_skipped(), 2);
    store
        .get_many(&coll("notes"), &rids(&["r1"]))
        .await
        .unwrap();
    assert_eq!(store.corrupt_skipped(), 3);
    let err = store.get(&coll("notes"), &rid("r1")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { backend: "filesystem", collection, id: Some(id), location, .. }
            if collection == "notes" && id == "r1" && *location == broken.display().to_string()),
        "{err}"
    );
}

/// The JSON form of `record` with one more field, `deep`, nested `levels`
/// arrays deep and stamped like the others: well formed in every other way.
fn with_deep_field(record: &Record, levels: usize) -> serde_json::Value {
    let mut value = record.to_json();
    hostile::add_deep_field(&mut value, levels);
    value
}

/// A record file holding a field nested past the limit (edited by hand, or
/// written before the limit) reads as corrupt, like any unreadable file:
/// `get` fails naming it, listings skip it and count it. Before the limit it
/// was read, and a record nested 127 deep could not be read at all.
#[tokio::test]
async fn a_record_file_nested_past_the_limit_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    for n in 0..3 {
        put_any(&store, "notes", counter(&format!("r{n}"), n)).await;
    }
    store.checkpoint().await.unwrap();
    let file = tmp.path().join("notes").join("r1.json");
    let at_limit = with_deep_field(&counter("r1", 1), MAX_NESTING_DEPTH);
    std::fs::write(&file, at_limit.to_string()).unwrap();
    let read = store
        .get(&coll("notes"), &rid("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.record.to_json(), at_limit);

    for levels in [MAX_NESTING_DEPTH + 1, 126] {
        let deeper = with_deep_field(&counter("r1", 1), levels);
        std::fs::write(&file, deeper.to_string()).unwrap();
        let err = store.get(&coll("notes"), &rid("r1")).await.unwrap_err();
        assert_corrupt(&err, "r1.json");
        assert!(
            err.to_string().contains(
                "invalid record \"r1\", field `deep`: nests arrays and objects more than 64 levels deep"
            ),
            "{err}"
        );
        let before = store.corrupt_skipped();
        assert_eq!(store.get_all(&coll("notes")).await.unwrap().len(), 2);
        assert_eq!(store.corrupt_skipped(), before + 1);
    }
}

#[cfg(unix)]
mod links {
    use std::os::unix::fs::symlink;

    use super::*;

    #[tokio::test]
    async fn a_linked_record_file_is_corrupt_and_a_write_moves_the_link_aside_not_its_target() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, precious, content) = outside(tmp.path());
        let root = tmp.path().join("store");
        let store = FsBackend::open(&root).await.unwrap();
        put_any(&store, "notes", counter("r0", 0)).await;
        let token = {
            put_any(&store, "notes", counter("r1", 1)).await;
            store
                .get(&coll("notes"), &rid("r1"))
                .await
                .unwrap()
                .unwrap()
                .token
        };
        store.checkpoint().await.unwrap();
        let file = root.join("notes").join("r1.json");
        std::fs::remove_file(&file).unwrap();
        symlink(&precious, &file).unwrap();

        // It holds a valid "r1", but through a link: never read.
        let err = store.get(&coll("notes"), &rid("r1")).await.unwrap_err();
        assert_corrupt(&err, "r1.json");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(store.get_all(&coll("notes")).await.unwrap().len(), 1);
        assert_eq!(store.corrupt_files(&coll("notes")).await.unwrap().len(), 1);

        // Writing the record moves the link itself aside (at the checkpoint).
        let outcome = store
            .put(&coll("notes"), &Write::replace(counter("r1", 2), token))
            .await
            .unwrap();
        assert!(matches!(outcome, WriteOutcome::Written { .. }));
        store.checkpoint().await.unwrap();
        assert_eq!(std::fs::read(&precious).unwrap(), content);
        assert!(!std::fs::symlink_metadata(&file)
            .unwrap()
            .file_type()
            .is_symlink());

        // A create over a link moves the link aside, still not touching its
        // target. (Closing checkpoints: the write-ahead log no longer holds
        // r1, which an opening handle would otherwise write again.)
        store.close().await.unwrap();
        std::fs::remove_file(&file).unwrap();
        symlink(&precious, &file).unwrap();
        let reopened = FsBackend::open(&root).await.unwrap();
        let found = reopened
            .get_many(&coll("notes"), &rids(&["r1"]))
            .await
            .unwrap();
        assert!(found[0].is_none());
        let outcome = reopened
            .put(&coll("notes"), &Write::create(counter("r1", 3)))
            .await
            .unwrap();
        assert!(matches!(outcome, WriteOutcome::Written { .. }));
        reopened.checkpoint().await.unwrap();
        assert_eq!(std::fs::read(&precious).unwrap(), content);
        let stored = reopened
            .get(&coll("notes"), &rid("r1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(count_of(&stored.record), 3);
        // Both links, kept for inspection, neither followed.
        let aside = tree(&root.join("notes").join(".corrupt"));
        assert_eq!(aside.len(), 2, "{aside:?}");
    }

    /// The store's own directory may be a link (a data directory on another
    /// disk), or lie under one: every call works through it, with full
    /// durability, whose directory syncs open each path without following
    /// links.
    #[tokio::test]
    async fn a_store_whose_directory_is_a_link_works_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("disk").join("store");
        std::fs::create_dir_all(&real).unwrap();
        let link = tmp.path().join("data");
        symlink(&real, &link).unwrap();
        // Full durability, the default.
        let store = FsBackend::open(&link).await.unwrap();
        put_any(&store, "notes", counter("r1", 1)).await;
        let stored = store.get(&coll("notes"), &rid("r1")).await.unwrap();
        assert_eq!(count_of(&stored.unwrap().record), 1);
        let page = store
            .changes(&coll("notes"), syncforge_core::Cursor::START, limit(10))
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        store.set_meta("k", "v").await.unwrap();
        assert!(store.newest_stamp().await.unwrap().is_some());
        store.close().await.unwrap();

        let again = FsBackend::open(&link).await.unwrap();
        assert_eq!(again.get_meta("k").await.unwrap().as_deref(), Some("v"));
        assert_eq!(again.list_collections().await.unwrap(), [coll("notes")]);
        assert!(real.join("notes").is_dir(), "written in the link's target");

        // A store still to make under a linked directory: made through it.
        let fresh = FsBackend::open(link.join("fresh").join("store"))
            .await
            .unwrap();
        put_any(&fresh, "notes", counter("r1", 1)).await;
        assert!(real.join("fresh").join("store").join("notes").is_dir());
    }

    #[tokio::test]
    async fn a_linked_collection_directory_is_refused_and_not_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let (outside_dir, _, _) = outside(tmp.path());
        let root = tmp.path().join("store");
        let store = FsBackend::open(&root).await.unwrap();
        put_any(&store, "real", counter("r0", 0)).await;
        symlink(&outside_dir, root.join("notes")).unwrap();
        let before = tree(&outside_dir);

        let fresh = FsBackend::open(&root).await.unwrap();
        let err = fresh
            .put(&coll("notes"), &Write::create(counter("r1", 1)))
            .await
            .unwrap_err();
        assert_corrupt(&err, "notes");
        let err = fresh.get(&coll("notes"), &rid("r1")).await.unwrap_err();
        assert_corrupt(&err, "notes");
        assert!(fresh.get_all(&coll("notes")).await.is_err());
        assert_eq!(fresh.list_collections().await.unwrap(), [coll("real")]);
        assert_eq!(
            tree(&outside_dir),
            before,
            "nothing was written through the link"
        );

        // A link swapped in after a handle opened the collection is refused too.
        let swapped_dir = root.join("real");
        std::fs::rename(&swapped_dir, tmp.path().join("moved")).unwrap();
        symlink(&outside_dir, &swapped_dir).unwrap();
        let err = store
            .put(&coll("real"), &Write::create(counter("r2", 2)))
            .await
            .unwrap_err();
        assert_corrupt(&err, "real");
        assert_eq!(tree(&outside_dir), before);
    }

    #[tokio::test]
    async fn a_linked_change_log_is_replaced_by_a_rebuilt_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, precious, content) = outside(tmp.path());
        let root = tmp.path().join("store");
        let store = FsBackend::open(&root).await.unwrap();
        let cursor = put_any(&store, "notes", counter("r0", 0)).await;
        store.close().await.unwrap();
        let log = root.join("notes").join(".changes");
        std::fs::remove_file(&log).unwrap();
        symlink(&precious, &log).unwrap();

        let reopened = FsBackend::open(&root).await.unwrap();
        put_any(&reopened, "notes", counter("r1", 1)).await;
        assert_eq!(std::fs::read(&precious).unwrap(), content);
        assert!(!std::fs::symlink_metadata(&log)
            .unwrap()
            .file_type()
            .is_symlink());
        let page = reopened
            .changes(&coll("notes"), at(cursor), limit(10))
            .await
            .unwrap();
        assert_eq!(page.changes.len(), 2, "both records are seen again");
    }

    #[tokio::test]
    async fn linked_store_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (outside_dir, precious, content) = outside(tmp.path());
        let root = tmp.path().join("store");
        let store = FsBackend::open(&root).await.unwrap();
        put_any(&store, "notes", counter("r0", 0)).await;
        store.close().await.unwrap();

        // The metadata file.
        symlink(&precious, root.join(".meta.json")).unwrap();
        let reopened = FsBackend::open(&root).await.unwrap();
        assert_corrupt(&reopened.get_meta("k").await.unwrap_err(), ".meta.json");
        assert_corrupt(
            &reopened.set_meta("k", "v").await.unwrap_err(),
            ".meta.json",
        );
        assert_eq!(std::fs::read(&precious).unwrap(), content);

        // A collection's lock file.
        let lock = root.join("notes").join(".lock");
        std::fs::remove_file(&lock).unwrap();
        symlink(&precious, &lock).unwrap();
        assert_corrupt(
            &reopened.get_all(&coll("notes")).await.unwrap_err(),
            ".lock",
        );
        std::fs::remove_file(&lock).unwrap();

        // The sidecar for corrupt files: nothing is moved into a linked one.
        std::fs::write(root.join("notes").join("r0.json"), b"torn").unwrap();
        symlink(&outside_dir, root.join("notes").join(".corrupt")).unwrap();
        let before = tree(&outside_dir);
        // Committed to the write-ahead log; writing the file needs the
        // corrupt one moved aside first, which the checkpoint refuses.
        reopened
            .put(&coll("notes"), &Write::create(counter("r0", 1)))
            .await
            .unwrap();
        let err = reopened.checkpoint().await.unwrap_err();
        assert_corrupt(&err, ".corrupt");
        assert_eq!(tree(&outside_dir), before);
        assert_eq!(
            std::fs::read(root.join("notes").join("r0.json")).unwrap(),
            b"torn"
        );
    }
}
