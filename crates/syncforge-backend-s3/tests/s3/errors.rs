//! Honest errors: an unreachable server is an error within the bound, never
//! an empty collection; credentials never show; a store without
//! conditional updates is refused with a message saying what to use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wrapper::DeleteRefusal;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use serde_json::json;
use syncforge_backend_s3::{S3Backend, S3Config};
use syncforge_core::{
    ClientId, CollectionName, Content, Error, Hlc, Record, RecordId, StorageBackend, Write,
    WriteOutcome,
};

const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-SECRET";
const KEY_ID: &str = "AKIDSYNCFORGEKEYID";
const TOKEN: &str = "FwoGZXIvYXdzSESSIONTOKEN";

/// A record id MinIO refuses (its key has a part over 255 bytes, which S3
/// takes): the write fails, and the feed goes on past it. The write left
/// pending in its feed entry failed every later read of the feed, read
/// and written again by each reader settling it, refused each time.
#[tokio::test]
async fn an_id_too_long_for_minio_is_refused_and_the_feed_goes_on() {
    let minio_like = crate::wrapper::Wrapped::new(Arc::new(object_store::memory::InMemory::new()))
        .refusing_segments_over(255);
    let store = S3Backend::from_store(Arc::new(minio_like), "dse").unwrap();
    let notes = CollectionName::new("notes").unwrap();
    let mut clock = Hlc::new(ClientId::new("c").unwrap());
    let mut record = |id: &str| {
        Record::create(
            Content::from_value(json!({"id": id})).unwrap(),
            clock.now().unwrap(),
        )
    };
    let long = "a".repeat(300);
    let refused = store
        .put(&notes, &Write::create(record(&long)))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("255 bytes"), "{refused}");
    let short = record("short");
    assert!(matches!(
        store.put(&notes, &Write::create(short)).await,
        Ok(WriteOutcome::Written { .. })
    ));
    let page = store
        .changes(
            &notes,
            syncforge_core::Cursor::START,
            100.try_into().unwrap(),
        )
        .await
        .unwrap();
    let ids: Vec<&str> = page
        .changes
        .iter()
        .map(|change| change.record.id().as_str())
        .collect();
    assert_eq!(ids, ["short"]);
    assert!(store
        .get(&notes, &RecordId::new(long.as_str()).unwrap())
        .await
        .unwrap()
        .is_none());
}

/// Collection `notes` and a new record `n1` to write into it.
fn first_note() -> (CollectionName, Record) {
    let mut clock = Hlc::new(ClientId::new("c").unwrap());
    let record = Record::create(
        Content::from_value(json!({"id": "n1"})).unwrap(),
        clock.now().unwrap(),
    );
    (CollectionName::new("notes").unwrap(), record)
}

/// `error` refuses the store for not honouring conditional writes, naming
/// what it mishandled.
fn assert_refused_for(error: &Error, mishandled: &str) {
    assert!(
        matches!(error, Error::Storage { message, .. }
            if message.contains("does not honour conditional writes")
                && message.contains(mishandled)),
        "{error}"
    );
}

/// `memory` holds no object (under `prefix`, when given).
async fn assert_holds_nothing(memory: &object_store::memory::InMemory, prefix: Option<&str>) {
    let left = objects_in(memory, prefix).await;
    assert!(left.is_empty(), "{left:?}");
}

/// The objects `memory` holds (under `prefix`, when given).
async fn objects_in(
    memory: &object_store::memory::InMemory,
    prefix: Option<&str>,
) -> Vec<object_store::ObjectMeta> {
    let prefix = prefix.map(object_store::path::Path::from);
    futures::TryStreamExt::try_collect(object_store::ObjectStore::list(memory, prefix.as_ref()))
        .await
        .unwrap()
}

/// The error of a create of [`first_note`] that `backend` refuses.
async fn first_note_refused(backend: &S3Backend) -> Error {
    let (collection, record) = first_note();
    backend
        .put(&collection, &Write::create(record))
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_gives_a_clear_error_within_the_bound() {
    // Nothing listens on the discard port of this machine.
    let config = S3Config::new("bucket")
        .with_endpoint("http://127.0.0.1:9")
        .with_allow_http(true)
        .with_path_style(true)
        .with_credentials(KEY_ID, SECRET)
        .with_session_token(TOKEN)
        .with_connect_timeout(Duration::from_millis(500))
        .with_request_timeout(Duration::from_secs(1))
        .with_retries(2, Duration::from_secs(2));
    let bound = config.failure_bound();
    let backend = S3Backend::new(config.clone()).unwrap();
    let collection = CollectionName::new("notes").unwrap();
    let started = Instant::now();
    let error = backend.get_all(&collection).await.unwrap_err();
    assert!(
        started.elapsed() <= bound + Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");
    let started = Instant::now();
    let error = backend
        .get(&collection, &RecordId::new("n1").unwrap())
        .await
        .unwrap_err();
    assert!(started.elapsed() <= bound + Duration::from_secs(1));
    assert!(error.is_transient(), "{error}");

    // Nothing says the credentials: not the error with its causes, not Debug.
    let mut texts = vec![
        format!("{config:?}"),
        format!("{backend:?}"),
        format!("{error:?}"),
    ];
    let mut cause: Option<&dyn std::error::Error> = Some(&error);
    while let Some(current) = cause {
        texts.push(current.to_string());
        cause = current.source();
    }
    for text in texts {
        for secret in [SECRET, KEY_ID, TOKEN] {
            assert!(!text.contains(secret), "{secret} shows in {text}");
        }
    }
}

/// A handle tries the store's conditional writes with a probe before its
/// first write, then removes the probe: against a server that takes
/// connections but never answers, the removal waited out the failure bound
/// a second time before the write failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_write_to_a_server_that_never_answers_fails_within_the_bound() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = S3Config::new("bucket")
        .with_endpoint(format!("http://{}", silent.local_addr().unwrap()))
        .with_allow_http(true)
        .with_path_style(true)
        .with_credentials(KEY_ID, SECRET)
        .with_connect_timeout(Duration::from_millis(500))
        .with_request_timeout(Duration::from_secs(2))
        .with_retries(0, Duration::from_secs(1))
        .with_max_in_flight(std::num::NonZeroUsize::MIN);
    let bound = config.failure_bound();
    let backend = S3Backend::new(config).unwrap();
    // The second write too: the removal of the first one's probe, still
    // waiting on the server, held the one place in flight, and the second
    // write waited a bound for it before its own request.
    for write in ["first", "second"] {
        let started = Instant::now();
        let error = first_note_refused(&backend).await;
        let took = started.elapsed();
        assert!(error.is_transient(), "{write}: {error}");
        assert!(
            took <= bound + bound / 2,
            "{write} took {took:?}, bound {bound:?}"
        );
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_conditional_updates_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let backend = S3Backend::from_store(local, "dse").unwrap();
    let (collection, record) = first_note();
    // Replacing needs PutMode::Update, which LocalFileSystem lacks: the
    // handle tries it before its first write, which is refused with an
    // error that says to use LocalDirectory's constructor instead.
    let error = backend
        .put(&collection, &Write::create(record.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Storage { message, .. }
            if message.contains("conditional") && message.contains("S3Backend::local_directory")),
        "{error}"
    );
    assert!(backend
        .get(&collection, record.id())
        .await
        .unwrap()
        .is_none());
}

/// A store that takes conditional puts and ignores their conditions would
/// let two writers overwrite each other unseen: the handle's first write
/// finds out, is refused, writes nothing and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_conditions_is_refused_before_the_first_write() {
    let memory = Arc::new(object_store::memory::InMemory::new());
    let ignoring = Arc::new(crate::wrapper::Wrapped::new(memory.clone()).ignoring_conditions());
    let backend = S3Backend::from_store(ignoring, "dse").unwrap();
    let (collection, record) = first_note();
    let error = backend
        .put(&collection, &Write::create(record.clone()))
        .await
        .unwrap_err();
    assert_refused_for(&error, "If-None-Match");
    assert_holds_nothing(&memory, None).await;
    // A store that honours them takes the write.
    let honouring = S3Backend::from_store(memory, "dse").unwrap();
    honouring
        .put(&collection, &Write::create(record))
        .await
        .unwrap();
}

/// A store that refuses every `If-Match` passed the conditional-write
/// check, which tried only wrong ETags; every update of a record then lost
/// a race that was not there, for a minute, and failed as unavailable. The
/// check now also updates with the right ETag. Refused once, that may be a
/// conflict with another request on the key, and the write fails as
/// transient; refused again, on a new key, such a store is refused with
/// the reason, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_every_if_match_is_refused_before_the_first_write() {
    let memory = Arc::new(object_store::memory::InMemory::new());
    let refusing = Arc::new(crate::wrapper::Wrapped::new(memory.clone()).refusing_updates());
    let backend = S3Backend::from_store(refusing, "dse").unwrap();
    let (collection, record) = first_note();
    let write = Write::create(record);
    let first = backend.put(&collection, &write).await.unwrap_err();
    assert!(first.is_transient(), "{first:?}");
    let error = backend.put(&collection, &write).await.unwrap_err();
    assert_refused_for(&error, "refused the ETag the object has");
    // The first check's probe, refused for a reason that may pass, is
    // removed in the background.
    let removed = async {
        while !objects_in(&memory, None).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), removed)
        .await
        .is_err()
    {
        assert_holds_nothing(&memory, None).await;
    }
}

/// A handle's conditional-write check found its probe key already written
/// when its first create had landed and been resent by the client (whose
/// second send is refused), and took that for a store that refuses creates:
/// every conditional write of the handle then failed for good. It is a
/// transient failure, and the next write checks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_create_of_the_probe_key_does_not_disable_the_handle() {
    let memory = Arc::new(object_store::memory::InMemory::new());
    let resending =
        Arc::new(crate::wrapper::Wrapped::new(memory.clone()).resending_puts_containing("/p/"));
    let backend = S3Backend::from_store(resending.clone(), "dse").unwrap();
    let (collection, record) = first_note();
    let error = backend
        .put(&collection, &Write::create(record.clone()))
        .await
        .unwrap_err();
    assert!(matches!(&error, Error::Unavailable { .. }), "{error}");
    resending.stop_resending();
    let outcome = backend
        .put(&collection, &Write::create(record.clone()))
        .await
        .unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        backend
            .get(&collection, record.id())
            .await
            .unwrap()
            .map(|s| s.record),
        Some(record)
    );
    // The check leaves no probe behind.
    assert_holds_nothing(&memory, Some("dse/p")).await;
}

/// A create of the check refused once, then on the next try an update of
/// it refused once: two conflicts of different writes, each transient. The
/// check counted them as one refusal seen twice, took it for the store's
/// verdict, and disabled the handle for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_probe_refusals_are_no_verdict() {
    let memory = Arc::new(object_store::memory::InMemory::new());
    // The second update of the probe keys: the right-ETag update of the
    // second try (the first try stops at its create; the first update of
    // the second is the wrong-ETag one, refused anyway).
    let refusing = Arc::new(
        crate::wrapper::Wrapped::new(memory)
            .refusing_one_create("/p/")
            .refusing_nth_update("/p/", 2),
    );
    let backend = S3Backend::from_store(refusing, "dse").unwrap();
    let (collection, record) = first_note();
    let write = Write::create(record);
    for _ in 0..2 {
        let error = backend.put(&collection, &write).await.unwrap_err();
        assert!(error.is_transient(), "{error:?}");
    }
    let outcome = backend.put(&collection, &write).await.unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { .. }),
        "{outcome:?}"
    );
}

/// The check's update of its probe landed, its answer was lost, and the
/// client's resend was refused (the ETag had changed): the store took the
/// update, and the check passes. Taken as a store refusing every
/// `If-Match`, it would have disabled the handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_update_of_the_probe_key_passes_the_check() {
    let memory = Arc::new(object_store::memory::InMemory::new());
    let resending =
        Arc::new(crate::wrapper::Wrapped::new(memory).resending_updates_containing("/p/"));
    let backend = S3Backend::from_store(resending, "dse").unwrap();
    let (collection, record) = first_note();
    let outcome = backend
        .put(&collection, &Write::create(record))
        .await
        .unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { .. }),
        "{outcome:?}"
    );
}

/// A hashed collection's `name` object whose create was refused with
/// nothing there (S3's 409 to a create racing another request on the key)
/// is written again: taken as written, it never was, and the collection
/// was missing from every listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_name_whose_create_was_refused_is_written_again() {
    use syncforge_core::{ClientId, CollectionName, Content, Hlc, Record, Write};

    let memory = Arc::new(object_store::memory::InMemory::new());
    let refusing = Arc::new(crate::wrapper::Wrapped::new(memory).refusing_first_creates("/name"));
    let backend = S3Backend::from_store(refusing, "dse").unwrap();
    // Long enough for its key to be hashed.
    let long = CollectionName::new("n".repeat(300)).unwrap();
    let mut clock = Hlc::new(ClientId::new("w").unwrap());
    let record = Record::create(
        Content::from_value(serde_json::json!({"id": "r1"})).unwrap(),
        clock.now().unwrap(),
    );
    backend.put(&long, &Write::create(record)).await.unwrap();
    assert_eq!(backend.list_collections().await.unwrap(), vec![long]);
}

/// The check's create refused once with no object there (S3's 409 to a
/// create racing another request on the key) is transient, and the next
/// write checks again: taken as the store's verdict, it failed every later
/// write of the handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_create_refused_once_with_nothing_there_is_tried_again() {
    let memory = Arc::new(object_store::memory::InMemory::new());
    let refusing = Arc::new(crate::wrapper::Wrapped::new(memory).refusing_one_create("/p/"));
    let backend = S3Backend::from_store(refusing, "dse").unwrap();
    let error = first_note_refused(&backend).await;
    assert!(matches!(&error, Error::Unavailable { .. }), "{error}");
    let (collection, record) = first_note();
    let outcome = backend
        .put(&collection, &Write::create(record))
        .await
        .unwrap();
    assert!(
        matches!(outcome, WriteOutcome::Written { .. }),
        "{outcome:?}"
    );
}

/// A store that refuses the check's create again at the next write, of
/// another key never used, is given its verdict: permanent, naming what
/// it refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_create_refused_twice_with_nothing_there_is_a_verdict() {
    let memory = Arc::new(object_store::memory::InMemory::new());
    let refusing = Arc::new(crate::wrapper::Wrapped::new(memory).refusing_first_creates("/p/"));
    let backend = S3Backend::from_store(refusing, "dse").unwrap();
    let first = first_note_refused(&backend).await;
    assert!(matches!(&first, Error::Unavailable { .. }), "{first}");
    let error = first_note_refused(&backend).await;
    assert!(
        matches!(&error, Error::Storage { message, .. }
            if message.contains("a create of a new key was refused")),
        "{error}"
    );
}

/// Credentials that may not delete leave the check's probe behind: the
/// next check then found it and answered as if its own create had been
/// resent, transient, for good. The refused removal is said every time.
///
/// Both as a store that deletes key by key says it (`403`) and as S3 does,
/// in its bulk delete's `200` answer, which read as transient before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_whose_probe_cannot_be_removed_says_so_every_time() {
    for how in [DeleteRefusal::Forbidden, DeleteRefusal::AccessDeniedInBulk] {
        let memory = Arc::new(object_store::memory::InMemory::new());
        let denying = Arc::new(crate::wrapper::Wrapped::new(memory).refusing_deletes(how));
        let backend = S3Backend::from_store(denying, "dse").unwrap();
        for attempt in 0..3 {
            let error = first_note_refused(&backend).await;
            assert!(
                matches!(&error, Error::Storage { message, .. } if message.contains("credentials")),
                "{how:?}, attempt {attempt}: {error}"
            );
        }
    }
}

/// Some S3-compatible servers list a key already gone in a bulk delete's
/// answer as `NoSuchKey`: that key is deleted, where every write failed as
/// transient on its check's removed probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_a_bulk_delete_calls_missing_is_deleted() {
    let memory = Arc::new(object_store::memory::InMemory::new());
    let wrapped = crate::wrapper::Wrapped::new(Arc::clone(&memory) as Arc<dyn ObjectStore>)
        .refusing_deletes(DeleteRefusal::DeletedButNoSuchKey);
    let backend = S3Backend::from_store(Arc::new(wrapped), "dse").unwrap();
    let (collection, record) = first_note();
    let written = backend
        .put(&collection, &Write::create(record))
        .await
        .unwrap();
    assert!(matches!(written, WriteOutcome::Written { .. }));
    let probes: Vec<_> = memory
        .list(Some(&object_store::path::Path::from("dse/p")))
        .try_collect()
        .await
        .unwrap();
    assert!(probes.is_empty(), "{probes:?}");
}

/// A bucket that is not there answers a create "not found": a permanent
/// error that says so, where it read as the store refusing creates. Reads
/// and deletes say so too: they found every record absent, and nothing to
/// delete. So do the reads that list (every record, the collections), which
/// said only that the listing failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_is_not_there_is_named() {
    let Some(server) = crate::support::s3_server().await else {
        return;
    };
    let missing = crate::support::Server {
        endpoint: server.endpoint.clone(),
        bucket: format!("{}-missing", server.bucket),
    };
    let backend = S3Backend::from_store(missing.store(), "dse").unwrap();
    let names_the_bucket = |error: Error| {
        assert!(
            matches!(&error, Error::Storage { message, .. } if message.contains("does the bucket exist")),
            "{error}"
        );
    };
    names_the_bucket(first_note_refused(&backend).await);
    let (collection, record) = first_note();
    let id = record.id();
    names_the_bucket(backend.get(&collection, id).await.unwrap_err());
    names_the_bucket(
        backend
            .get_many(&collection, std::slice::from_ref(id))
            .await
            .unwrap_err(),
    );
    names_the_bucket(backend.get_meta("cursor").await.unwrap_err());
    names_the_bucket(backend.delete(&collection, id).await.unwrap_err());
    names_the_bucket(backend.get_all(&collection).await.unwrap_err());
    names_the_bucket(backend.list_collections().await.unwrap_err());
}

/// A closed handle given other tuning stays closed, where it came back
/// open.
#[tokio::test]
async fn a_closed_handle_given_other_tuning_stays_closed() {
    let memory = Arc::new(object_store::memory::InMemory::new());
    let backend = S3Backend::from_store(memory, "dse").unwrap();
    backend.close().await.unwrap();
    let tuned = backend.with_options(syncforge_backend_s3::StoreOptions::default());
    let error = first_note_refused(&tuned).await;
    assert!(matches!(error, Error::Closed { .. }), "{error}");
}
