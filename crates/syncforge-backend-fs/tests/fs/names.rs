//! Ids and collection names map to distinct files inside the store only.

use syncforge_backend_fs::FsBackend;
use syncforge_core::{CollectionName, Error, RecordId, StorageBackend, Write, WriteOutcome};

use crate::{at, coll, count_of, counter, limit, put_any, rid, tree};

fn awkward_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "a/b",
        "a_b",
        "a.b",
        "a b",
        "A.b",
        "a%2Fb",
        "a\\b",
        "a:b",
        "..",
        ".",
        "../escape",
        "../../etc",
        "/abs",
        ".hidden",
        "trailing.",
        "trailing ",
        "con",
        "CON",
        "nul.txt",
        "com1",
        "Lpt9",
        "caf\u{e9}",
        "cafe\u{301}",
        "名前",
        "emoji 🎉",
        "Note",
        "note",
        "NOTE",
        "~tilde",
        "^caret",
        "a*b?c",
        "<>|\"",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    names.push("x".repeat(1024));
    names.push(format!("{}y", "x".repeat(1023)));
    names.push("/".repeat(1024));
    names.push("é".repeat(512));
    names
}

#[tokio::test]
async fn awkward_ids_are_distinct_records_inside_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = FsBackend::open(&root).await.unwrap();
    let names = awkward_names();
    for (n, id) in names.iter().enumerate() {
        put_any(&store, "notes", counter(id, n as u64)).await;
    }
    for (n, id) in names.iter().enumerate() {
        let stored = store
            .get(&coll("notes"), &rid(id))
            .await
            .unwrap()
            .expect(id);
        assert_eq!(stored.record.id(), id);
        assert_eq!(count_of(&stored.record), n as u64, "{id:?}");
    }
    assert_eq!(
        store.get_all(&coll("notes")).await.unwrap().len(),
        names.len()
    );
    assert_eq!(
        store
            .changes(&coll("notes"), at(0), limit(1000))
            .await
            .unwrap()
            .changes
            .len(),
        names.len()
    );
    // Record files exist only once the log is checkpointed: the walk below
    // found none before, and so could not see one written out of place.
    store.checkpoint().await.unwrap();
    let record_files = tree(&root.join("notes"))
        .into_iter()
        .filter(|entry| entry.ends_with(".json"))
        .count();
    assert_eq!(record_files, names.len(), "one record file per id");
    // Nothing outside the store's directory, and every file name within limits.
    assert_eq!(tree(tmp.path()).first().map(String::as_str), Some("store"));
    for entry in tree(&root) {
        assert!(
            entry.starts_with(".") || entry.starts_with("notes"),
            "{entry}"
        );
        let file_name = entry.rsplit('/').next().unwrap();
        assert!(file_name.len() <= 255, "{file_name}");
    }
    // After reopening, the same names are found again.
    store.close().await.unwrap();
    let reopened = FsBackend::open(&root).await.unwrap();
    for id in &names {
        assert!(
            reopened
                .get(&coll("notes"), &rid(id))
                .await
                .unwrap()
                .is_some(),
            "{id:?}"
        );
    }
}

#[tokio::test]
async fn awkward_collection_names_are_distinct_directories_inside_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = FsBackend::open(&root).await.unwrap();
    let names = awkward_names();
    for (n, collection) in names.iter().enumerate() {
        put_any(&store, collection, counter("r", n as u64)).await;
    }
    for (n, collection) in names.iter().enumerate() {
        let all = store.get_all(&coll(collection)).await.unwrap();
        assert_eq!(all.len(), 1, "{collection:?}");
        assert_eq!(count_of(&all[0]), n as u64, "{collection:?}");
    }
    let mut expected = names.clone();
    expected.sort();
    let listed: Vec<String> = store
        .list_collections()
        .await
        .unwrap()
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(listed, expected);
    let top: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, ["store"]);
}

/// Invalid names never reach the store: the name types refuse them, so no
/// call can be made with one.
#[tokio::test]
async fn invalid_names_are_refused_before_they_reach_the_store() {
    for bad in ["", "a\nb", "tab\t", &"x".repeat(1025)] {
        let err = CollectionName::new(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidCollection { .. }), "{err}");
        let err = RecordId::new(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidId { .. }), "{err}");
    }
}

#[tokio::test]
async fn a_foreign_file_under_a_hashed_name_is_moved_aside_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = FsBackend::open(&root).await.unwrap();
    let long_a = "a".repeat(300);
    let long_b = "b".repeat(300);
    put_any(&store, "notes", counter(&long_a, 1)).await;
    store.checkpoint().await.unwrap();
    let file_a = tree(&root.join("notes"))
        .into_iter()
        .find(|n| n.ends_with(".json"))
        .unwrap();
    // A hand-made copy of a's file where b would live.
    put_any(&store, "notes", counter(&long_b, 2)).await;
    store.checkpoint().await.unwrap();
    let file_b = tree(&root.join("notes"))
        .into_iter()
        .find(|n| n.ends_with(".json") && *n != file_a)
        .unwrap();
    store.delete(&coll("notes"), &rid(&long_b)).await.unwrap();
    store.close().await.unwrap();
    std::fs::copy(
        root.join("notes").join(&file_a),
        root.join("notes").join(&file_b),
    )
    .unwrap();
    let reopened = FsBackend::open(&root).await.unwrap();
    let corrupt = reopened.corrupt_files(&coll("notes")).await.unwrap();
    assert_eq!(corrupt.len(), 1);
    assert!(corrupt[0].to_string().contains(&file_b), "{}", corrupt[0]);

    // Creating b takes the file's place: the copy is moved aside, not lost.
    let outcome = reopened
        .put(&coll("notes"), &Write::create(counter(&long_b, 3)))
        .await
        .unwrap();
    assert!(matches!(outcome, WriteOutcome::Written { .. }));
    reopened.checkpoint().await.unwrap();
    let stored = reopened
        .get(&coll("notes"), &rid(&long_b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count_of(&stored.record), 3);
    let aside: Vec<String> = tree(&root.join("notes").join(".corrupt"));
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(aside[0].starts_with(&file_b), "{aside:?}");
    let kept =
        std::fs::read_to_string(root.join("notes").join(".corrupt").join(&aside[0])).unwrap();
    assert!(kept.contains(&long_a));
    // a itself is untouched.
    let a = reopened
        .get(&coll("notes"), &rid(&long_a))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count_of(&a.record), 1);
    assert!(reopened
        .corrupt_files(&coll("notes"))
        .await
        .unwrap()
        .is_empty());
}

/// A directory holds a store once it holds the store's metadata or a
/// collection; a plain or missing directory holds none.
#[tokio::test]
async fn a_store_is_told_from_a_plain_directory() {
    use syncforge_backend_fs::holds_store;
    let dir = tempfile::TempDir::new().unwrap();
    let missing = dir.path().join("missing");
    assert!(!holds_store(&missing).await.unwrap());
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(plain.join("pictures")).unwrap();
    std::fs::write(plain.join("notes.txt"), "text").unwrap();
    // A project's directory, with JSON files that look like records.
    std::fs::create_dir_all(plain.join("config")).unwrap();
    std::fs::write(plain.join("config").join("default.json"), "{}").unwrap();
    assert!(!holds_store(&plain).await.unwrap());
    // Records written through the store alone, with no metadata.
    let records = dir.path().join("records");
    let store = FsBackend::open(&records).await.unwrap();
    assert!(!holds_store(&records).await.unwrap());
    put_any(&store, "notes", counter("n1", 1)).await;
    assert!(holds_store(&records).await.unwrap());
    // Metadata alone.
    let meta = dir.path().join("meta");
    let store = FsBackend::open(&meta).await.unwrap();
    store.set_meta("key", "value").await.unwrap();
    assert!(holds_store(&meta).await.unwrap());
}
