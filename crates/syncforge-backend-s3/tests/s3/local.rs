//! A local directory through `LocalDirectory`: an ETag once replaced never
//! matches again (no ABA, whatever inode numbers the file system recycles),
//! and conditional updates stay atomic between processes.

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{Error, ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use serde_json::json;
use syncforge_backend_s3::{LocalDirectory, S3Backend};
use syncforge_core::{
    ClientId, CollectionName, Content, Cursor, Hlc, Record, RecordId, StorageBackend, Write,
    WriteOutcome,
};
use syncforge_testkit::{hostile, processes};

use crate::writers::{all, follow};

async fn update(
    store: &LocalDirectory,
    path: &Path,
    body: &str,
    e_tag: &str,
) -> Result<String, Error> {
    let mode = PutMode::Update(UpdateVersion {
        e_tag: Some(e_tag.to_owned()),
        version: None,
    });
    let written = store
        .put_opts(path, body.to_owned().into(), PutOptions::from(mode))
        .await?;
    Ok(written.e_tag.unwrap())
}

/// The same two bodies of one size, written in turn over one object, then
/// the object deleted and created again with the first body: a file system
/// that recycles inode numbers (ext4 does, at once) and stamps writes with
/// a coarse clock would give a later version the ETag of an earlier one.
/// Every ETag here is new, reads report the ETag the write returned, and
/// an update from any earlier ETag is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etag_once_replaced_never_matches_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDirectory::new(dir.path()).unwrap();
    let path = Path::from("dse/c/notes/r/n1");
    let bodies = [r#"{"n":"aaaa"}"#, r#"{"n":"bbbb"}"#];
    let mut seen: Vec<String> = Vec::new();
    for cycle in 0..3 {
        let created = store
            .put_opts(&path, bodies[0].into(), PutMode::Create.into())
            .await
            .unwrap()
            .e_tag
            .unwrap();
        seen.push(created);
        for round in 1..100 {
            let current = seen.last().unwrap().clone();
            let written = update(&store, &path, bodies[round % 2], &current)
                .await
                .unwrap();
            let read = store.get(&path).await.unwrap();
            assert_eq!(read.meta.e_tag.as_deref(), Some(written.as_str()));
            assert_eq!(read.bytes().await.unwrap(), bodies[round % 2].as_bytes());
            seen.push(written);
            // The ETag of the state two writes back: same bytes, same size.
            let earlier = &seen[seen.len() - 3.min(seen.len())];
            let refused = update(&store, &path, bodies[0], earlier).await;
            assert!(
                matches!(refused, Err(Error::Precondition { .. })),
                "cycle {cycle}, round {round}: an update from an old ETag was {refused:?}"
            );
        }
        store.delete(&path).await.unwrap();
        let refused = update(&store, &path, bodies[0], seen.last().unwrap()).await;
        assert!(matches!(refused, Err(Error::Precondition { .. })));
    }
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "an ETag came back");
    // A create over an existing object is refused, and nothing is left staged.
    store
        .put_opts(&path, bodies[0].into(), PutMode::Create.into())
        .await
        .unwrap();
    let again = store
        .put_opts(&path, bodies[1].into(), PutMode::Create.into())
        .await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{again:?}"
    );
    let names: Vec<String> = std::fs::read_dir(dir.path().join("dse/c/notes/r"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["n1"]);
}

/// Set in the child processes of the test below: the directory they share.
const CHILD_DIR: &str = "SYNCFORGE_TEST_LOCAL_DIRECTORY_CHILD";
/// Processes in all (this one and its children), handles per process,
/// increments per handle, records.
const PROCESSES: usize = 4;
const HANDLES: usize = 2;
const ROUNDS: usize = 15;
const RECORDS: usize = 5;
/// How long the children may take.
const CHILDREN_TIMEOUT: Duration = Duration::from_secs(180);

fn collection() -> CollectionName {
    CollectionName::new("counters").unwrap()
}

fn id(i: usize) -> RecordId {
    RecordId::new(format!("r{i}")).unwrap()
}

fn content(i: usize, n: i64) -> Content {
    Content::from_value(json!({"id": format!("r{i}"), "n": n})).unwrap()
}

/// The record writer `w` increments in round `round`.
fn target(w: usize, round: usize) -> usize {
    (w * 3 + round) % RECORDS
}

/// Process `process` increments from `HANDLES` handles of its own, each
/// opening the directory itself, retrying lost races.
async fn increment(dir: &std::path::Path, process: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for h in 0..HANDLES {
        let backend = S3Backend::local_directory(dir, "dse").unwrap();
        let w = process * HANDLES + h;
        tasks.spawn(async move {
            let mut clock = Hlc::new(ClientId::new(&format!("writer-{w}")).unwrap());
            for round in 0..ROUNDS {
                let i = target(w, round);
                for attempt in 0.. {
                    assert!(attempt < 1000, "writer {w} kept losing on r{i}");
                    let stored = backend.get(&collection(), &id(i)).await.unwrap().unwrap();
                    let n = stored.record.get("n").and_then(|v| v.as_i64()).unwrap();
                    clock.observe(stored.record.newest_stamp()).unwrap();
                    let mut next = stored.record.clone();
                    next.apply_put(content(i, n + 1), &clock.now().unwrap())
                        .unwrap();
                    let write = Write::replace(next, stored.token);
                    if let WriteOutcome::Written { .. } =
                        backend.put(&collection(), &write).await.unwrap()
                    {
                        break;
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// This test runs itself again as child processes (the variable above tells
/// them apart): all increment the same records of one directory at once,
/// each from handles of its own. No increment is lost, and the change feed
/// read from the start ends with exactly the stored states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_updates_are_atomic_across_processes() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        let process = std::env::var("SYNCFORGE_TEST_LOCAL_DIRECTORY_PROCESS")
            .unwrap()
            .parse()
            .unwrap();
        increment(std::path::Path::new(&dir), process).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let setup = S3Backend::local_directory(dir.path(), "dse").unwrap();
    let mut clock = Hlc::new(ClientId::new("setup").unwrap());
    let creates: Vec<Write> = (0..RECORDS)
        .map(|i| Write::create(Record::create(content(i, 0), clock.now().unwrap())))
        .collect();
    setup.put_batch(&collection(), &creates).await.unwrap();

    let children: Vec<_> = (1..PROCESSES)
        .map(|process| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "local::conditional_updates_are_atomic_across_processes",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD_DIR, dir.path())
                .env(
                    "SYNCFORGE_TEST_LOCAL_DIRECTORY_PROCESS",
                    process.to_string(),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    increment(dir.path(), 0).await;
    let deadline = Instant::now() + CHILDREN_TIMEOUT;
    for child in children {
        let left = deadline.saturating_duration_since(Instant::now());
        let output = tokio::task::spawn_blocking(move || processes::finish(child, left))
            .await
            .unwrap()
            .unwrap_or_else(|error| {
                panic!("a child process took longer than {CHILDREN_TIMEOUT:?}: {error}")
            });
        assert!(
            output.status.success(),
            "a child process failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let mut expected: BTreeMap<RecordId, i64> = BTreeMap::new();
    for w in 0..PROCESSES * HANDLES {
        for round in 0..ROUNDS {
            *expected.entry(id(target(w, round))).or_insert(0) += 1;
        }
    }
    let stored = all(&setup, &collection()).await;
    let counts: BTreeMap<RecordId, i64> = stored
        .iter()
        .map(|(id, record)| {
            (
                id.clone(),
                record.get("n").and_then(|v| v.as_i64()).unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, expected, "increments were lost");
    let reader = S3Backend::local_directory(dir.path(), "dse").unwrap();
    let mut seen = BTreeMap::new();
    follow(&reader, &collection(), Cursor::START, &mut seen).await;
    assert_eq!(seen, stored);
}

/// A local directory's failures that stay until someone acts — here a file
/// where the collection's folder must be; a full disk or a read-only file
/// system alike — are `Error::Storage`. They lost their I/O error on the
/// way, and a failure without one counts as transient: the engine retried
/// them as if the store would come back.
#[tokio::test]
async fn a_lasting_local_failure_is_not_transient() {
    use syncforge_core::Error as SyncError;

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dse/c")).unwrap();
    std::fs::write(dir.path().join("dse/c/notes"), "not a folder").unwrap();
    let store = S3Backend::local_directory(dir.path(), "dse").unwrap();
    let notes = CollectionName::new("notes").unwrap();
    let mut hlc = Hlc::new(ClientId::new("writer").unwrap());
    let record = Record::create(
        Content::from_value(json!({"id": "r1"})).unwrap(),
        hlc.now().unwrap(),
    );
    let error = store.put(&notes, &Write::create(record)).await.unwrap_err();
    assert!(matches!(&error, SyncError::Storage { .. }), "{error:?}");
    assert!(error.to_string().contains("failed"), "{error}");
}

/// A stored record object holding a field nested past
/// [`MAX_NESTING_DEPTH`](syncforge_core::MAX_NESTING_DEPTH) (written by
/// hand, or before the limit) is corrupt data naming the object, record and
/// field: the record body parses through `Record`'s own checks.
#[tokio::test]
async fn a_stored_record_nested_past_the_limit_is_corrupt() {
    use syncforge_core::{Error as SyncError, MAX_NESTING_DEPTH};

    let dir = tempfile::tempdir().unwrap();
    let store = S3Backend::local_directory(dir.path(), "dse").unwrap();
    let notes = CollectionName::new("notes").unwrap();
    let mut hlc = Hlc::new(ClientId::new("nester").unwrap());
    let base = Record::create(
        Content::from_value(json!({"id": "r1", "n": 1})).unwrap(),
        hlc.now().unwrap(),
    );
    store
        .put(&notes, &Write::create(base.clone()))
        .await
        .unwrap();
    // The record's object: `{prefix}/c/{collection}/r/{id}`.
    let mut stack = vec![dir.path().to_path_buf()];
    let mut object = None;
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.ends_with("c/notes/r/r1") {
            object = Some(path);
        }
    }
    let object = object.expect("the record's object");
    let body: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&object).unwrap()).unwrap();
    let with_deep_field = |levels: usize| {
        let mut body = body.clone();
        hostile::add_deep_field(&mut body["record"], levels);
        body.to_string()
    };
    let id = RecordId::new("r1").unwrap();

    std::fs::write(&object, with_deep_field(MAX_NESTING_DEPTH)).unwrap();
    let read = store.get(&notes, &id).await.unwrap().unwrap();
    assert!(read.record.get("deep").is_some());

    std::fs::write(&object, with_deep_field(MAX_NESTING_DEPTH + 1)).unwrap();
    let err = store.get(&notes, &id).await.unwrap_err();
    assert!(matches!(&err, SyncError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains(
            "invalid record \"r1\", field `deep`: nests arrays and objects more than 64 levels deep"
        ),
        "{err}"
    );
}

/// Objects in the feed's folders that syncforge never writes, from a
/// hand-made or hostile bucket: an entry named past the last entry number
/// is not taken for the feed's head (a fresh handle's next write and the
/// feed go on as before), and a horizon past it is corrupt data naming its
/// object, where the arithmetic on it would have overflowed.
#[tokio::test]
async fn feed_numbers_past_the_last_entry_are_not_trusted() {
    use std::num::NonZeroUsize;
    use syncforge_core::Error as SyncError;

    let dir = tempfile::tempdir().unwrap();
    let notes = collection();
    let mut hlc = Hlc::new(ClientId::new("feeder").unwrap());
    let mut record = |id: &str| {
        Record::create(
            Content::from_value(json!({"id": id, "n": 1})).unwrap(),
            hlc.now().unwrap(),
        )
    };
    let all_changes = |store: S3Backend| async move {
        let limit = NonZeroUsize::new(100).unwrap();
        let page = store.changes(&collection(), Cursor::START, limit).await?;
        Ok::<_, SyncError>(
            page.changes
                .iter()
                .map(|change| change.record.id().as_str().to_owned())
                .collect::<Vec<_>>(),
        )
    };
    let first = S3Backend::local_directory(dir.path(), "dse").unwrap();
    first
        .put(&notes, &Write::create(record("a")))
        .await
        .unwrap();

    let raw = LocalDirectory::new(dir.path()).unwrap();
    let stray = Path::from(format!("dse/c/{}/f/ffffffffffffffff", notes.as_str()));
    raw.put(&stray, r#"{"items":[]}"#.into()).await.unwrap();
    let fresh = S3Backend::local_directory(dir.path(), "dse").unwrap();
    fresh
        .put(&notes, &Write::create(record("b")))
        .await
        .unwrap();
    let reader = S3Backend::local_directory(dir.path(), "dse").unwrap();
    assert_eq!(all_changes(reader).await.unwrap(), ["a", "b"]);

    let horizon = Path::from(format!("dse/c/{}/h", notes.as_str()));
    raw.put(&horizon, r#"{"horizon":18446744073709551615}"#.into())
        .await
        .unwrap();
    let reader = S3Backend::local_directory(dir.path(), "dse").unwrap();
    let err = all_changes(reader).await.unwrap_err();
    assert!(matches!(&err, SyncError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("past the last entry number"),
        "{err}"
    );
    let writer = S3Backend::local_directory(dir.path(), "dse").unwrap();
    let err = writer
        .put(&notes, &Write::create(record("c")))
        .await
        .unwrap_err();
    assert!(matches!(&err, SyncError::Corrupt { .. }), "{err}");
}

/// A local directory lists its objects in key order, as S3 does: a listing
/// cut after its first 1,000 keys (`get_many`'s window over the records)
/// must hold the first 1,000, or records it passed over read as absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_directory_lists_in_key_order_so_get_many_finds_every_record() {
    use futures::TryStreamExt;

    let dir = tempfile::tempdir().unwrap();
    let store = S3Backend::local_directory(dir.path(), "dse").unwrap();
    let notes = collection();
    let mut hlc = Hlc::new(ClientId::new("lister").unwrap());
    let writes: Vec<Write> = (0..1_500)
        .map(|i| {
            let content = Content::from_value(json!({"id": format!("r{i:05}"), "n": i})).unwrap();
            Write::create(Record::create(content, hlc.now().unwrap()))
        })
        .collect();
    for batch in writes.chunks(500) {
        store.put_batch(&notes, batch).await.unwrap();
    }
    let ids: Vec<RecordId> = (0..1_500)
        .step_by(25)
        .map(|i| RecordId::new(format!("r{i:05}")).unwrap())
        .collect();
    let found = store.get_many(&notes, &ids).await.unwrap();
    let missing: Vec<&RecordId> = ids
        .iter()
        .zip(&found)
        .filter(|(_, stored)| stored.is_none())
        .map(|(id, _)| id)
        .collect();
    assert!(missing.is_empty(), "read as absent: {missing:?}");

    let raw = LocalDirectory::new(dir.path()).unwrap();
    let listed: Vec<Path> = raw
        .list(Some(&Path::from("dse")))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .unwrap();
    assert!(listed.len() > 1_500);
    assert!(listed.windows(2).all(|pair| pair[0] < pair[1]));
}

/// `get_many` in a local directory reads each id, never the folder of
/// records: listing it walked and sorted the whole folder, so each batch of
/// an incremental sync cost as much as the collection's size (and a file
/// there that a listing cannot name failed every batch).
#[cfg(unix)]
#[tokio::test]
async fn get_many_in_a_local_directory_reads_no_listing() {
    use futures::TryStreamExt;
    use std::os::unix::ffi::OsStrExt;

    let dir = tempfile::tempdir().unwrap();
    let store = S3Backend::local_directory(dir.path(), "dse").unwrap();
    let notes = collection();
    let mut hlc = Hlc::new(ClientId::new("reader").unwrap());
    let writes: Vec<Write> = (0..5)
        .map(|i| {
            let content = Content::from_value(json!({"id": format!("r{i}")})).unwrap();
            Write::create(Record::create(content, hlc.now().unwrap()))
        })
        .collect();
    store.put_batch(&notes, &writes).await.unwrap();
    let raw = LocalDirectory::new(dir.path()).unwrap();
    let folder = raw
        .list(Some(&Path::from("dse")))
        .map_ok(|meta| meta.location)
        .try_collect::<Vec<Path>>()
        .await
        .unwrap()
        .into_iter()
        .find(|path| path.as_ref().ends_with("r1"))
        .and_then(|path| {
            let text = path.as_ref().to_owned();
            Some(dir.path().join(text.rsplit_once('/')?.0))
        })
        .unwrap();
    // A name that is not UTF-8 fails any listing of the folder.
    std::fs::write(folder.join(std::ffi::OsStr::from_bytes(b"stray\xff")), "x").unwrap();
    let ids: Vec<RecordId> = ["r0", "r2", "r4", "absent"]
        .iter()
        .map(|id| RecordId::new(*id).unwrap())
        .collect();
    let found = store.get_many(&notes, &ids).await.unwrap();
    let present: Vec<bool> = found.iter().map(Option::is_some).collect();
    assert_eq!(present, [true, true, true, false]);
}

/// An object copied by hand to another record's key holds a record that is
/// not that key's: `get_all` reports it corrupt, as `get` does, instead of
/// returning the record twice.
#[tokio::test]
async fn get_all_refuses_a_record_under_another_records_key() {
    use syncforge_core::Error as SyncError;

    let dir = tempfile::tempdir().unwrap();
    let store = S3Backend::local_directory(dir.path(), "dse").unwrap();
    let notes = collection();
    let mut hlc = Hlc::new(ClientId::new("copier").unwrap());
    let a = Record::create(
        Content::from_value(json!({"id": "a", "n": 1})).unwrap(),
        hlc.now().unwrap(),
    );
    store.put(&notes, &Write::create(a)).await.unwrap();
    assert_eq!(store.get_all(&notes).await.unwrap().len(), 1);

    let raw = LocalDirectory::new(dir.path()).unwrap();
    let records = format!("dse/c/{}/r", notes.as_str());
    raw.copy(
        &Path::from(format!("{records}/a")),
        &Path::from(format!("{records}/b")),
    )
    .await
    .unwrap();
    let err = store.get_all(&notes).await.unwrap_err();
    assert!(matches!(&err, SyncError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("holds record \"a\""), "{err}");
    let err = store
        .get(&notes, &RecordId::new("b").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(&err, SyncError::Corrupt { .. }), "{err}");
}

/// An id whose key is a longer file name than a local directory can write
/// is refused before anything is written. Its write went into a feed entry
/// first and then failed on the record's file, so every later read of the
/// feed, and every later write, met it and failed too.
#[tokio::test]
async fn an_id_too_long_for_a_file_name_is_refused_and_the_feed_goes_on() {
    use syncforge_core::Error as SyncError;

    let dir = tempfile::tempdir().unwrap();
    let store = S3Backend::local_directory(dir.path(), "dse").unwrap();
    let notes = CollectionName::new("notes").unwrap();
    let mut hlc = Hlc::new(ClientId::new("writer").unwrap());
    let mut written = Vec::new();
    // 253 plain bytes fit; 254 and 600 do not; past 600 the key is hashed.
    for (id, fits) in [
        ("a".repeat(253), true),
        ("a".repeat(254), false),
        ("/".repeat(200), false),
        ("a".repeat(600), false),
        ("a".repeat(601), true),
    ] {
        let record = Record::create(
            Content::from_value(json!({"id": id})).unwrap(),
            hlc.now().unwrap(),
        );
        let id = RecordId::new(&id).unwrap();
        let put = store.put(&notes, &Write::create(record)).await;
        if fits {
            assert!(matches!(put, Ok(WriteOutcome::Written { .. })), "{put:?}");
            written.push(id);
        } else {
            assert!(matches!(&put, Err(SyncError::InvalidId { .. })), "{put:?}");
            assert!(store.get(&notes, &id).await.unwrap().is_none());
            assert!(!store.delete(&notes, &id).await.unwrap());
        }
        let page = store
            .changes(&notes, Cursor::START, 100.try_into().unwrap())
            .await
            .unwrap();
        let ids: Vec<RecordId> = page.changes.iter().map(|c| c.record.id().clone()).collect();
        assert_eq!(ids, written);
    }
}

/// A metadata key whose plain file name would be longer than a file name
/// may be is stored under a hash in a local directory: the engine keeps a
/// peer's cursors under keys naming the peer and the collection, and with a
/// collection of 30 non-ASCII characters every sync of it failed to store
/// them. A key that fits keeps its plain name.
#[tokio::test]
async fn a_metadata_key_too_long_for_a_file_name_is_stored_under_a_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = S3Backend::local_directory(dir.path(), "dse").unwrap();
    let long = format!(
        "syncforge/peer-cursor/v1/[\"http://hq.example:8080/\",\"{}\",\"refused\"]",
        "日".repeat(30)
    );
    let short = "a".repeat(200);
    for key in [&long, &short] {
        store.set_meta(key, "42").await.unwrap();
        assert_eq!(store.get_meta(key).await.unwrap().as_deref(), Some("42"));
        assert_eq!(store.set_meta_if_absent(key, "7").await.unwrap(), "42");
    }
    let names: Vec<String> = std::fs::read_dir(dir.path().join("dse/m"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.contains('#'))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&format!("k{short}")), "{names:?}");
    assert!(names.iter().all(|name| name.len() <= 253), "{names:?}");

    // The directory uploaded to a bucket: a handle there, which keeps such
    // a key plain, still finds the value.
    use futures::TryStreamExt;
    let files = LocalDirectory::new(dir.path()).unwrap();
    let uploaded = object_store::memory::InMemory::new();
    let objects: Vec<Path> = files
        .list(Some(&Path::from("dse")))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .unwrap();
    for object in objects {
        let body = files.get(&object).await.unwrap().bytes().await.unwrap();
        uploaded.put(&object, body.into()).await.unwrap();
    }
    let bucket = S3Backend::from_store(std::sync::Arc::new(uploaded), "dse").unwrap();
    assert_eq!(bucket.get_meta(&long).await.unwrap().as_deref(), Some("42"));
    assert_eq!(
        bucket.get_meta(&short).await.unwrap().as_deref(),
        Some("42")
    );
    assert_eq!(bucket.set_meta_if_absent(&long, "7").await.unwrap(), "42");
    assert_eq!(bucket.get_meta(&long).await.unwrap().as_deref(), Some("42"));
}

/// A feed entry holding a write that a local directory cannot land (written
/// where the handle did not know its store for one: behind a `PrefixStore`,
/// or by a version without the check) is void: every read of the feed met
/// it and failed.
#[tokio::test]
async fn a_write_too_long_for_a_file_name_in_the_feed_is_void() {
    let dir = tempfile::tempdir().unwrap();
    let hidden =
        object_store::prefix::PrefixStore::new(LocalDirectory::new(dir.path()).unwrap(), "outer");
    let unaware = S3Backend::from_store(std::sync::Arc::new(hidden), "dse").unwrap();
    let notes = CollectionName::new("notes").unwrap();
    let mut hlc = Hlc::new(ClientId::new("writer").unwrap());
    let record = |id: &str, hlc: &mut Hlc| {
        Record::create(
            Content::from_value(json!({"id": id})).unwrap(),
            hlc.now().unwrap(),
        )
    };
    let long = "a".repeat(400);
    assert!(unaware
        .put(&notes, &Write::create(record(&long, &mut hlc)))
        .await
        .is_err());
    let short = record("short", &mut hlc);
    let aware = S3Backend::local_directory(dir.path(), "outer/dse").unwrap();
    assert!(matches!(
        aware.put(&notes, &Write::create(short.clone())).await,
        Ok(WriteOutcome::Written { .. })
    ));
    // Also the handle that does not know its store: it tried to finish the
    // write, and the directory's refusal of the name stopped every read of
    // the feed there.
    for handle in [&aware, &unaware] {
        let page = handle
            .changes(&notes, Cursor::START, 100.try_into().unwrap())
            .await
            .unwrap();
        let ids: Vec<&str> = page
            .changes
            .iter()
            .map(|c| c.record.id().as_str())
            .collect();
        assert_eq!(ids, ["short"]);
    }
}
