//! Hostile input through whole engines: seeded random records, valid and
//! invalid, through `Record::from_json`, `put` and `sync`, on every backend of
//! the workspace built here. No panic, every refusal typed, nothing written on
//! refusal, accepted records round-trip. `SYNCFORGE_HOSTILE_CASES` raises the
//! number of cases for a soak run.

use std::sync::Arc;

use syncforge::{
    Collection, ConflictStrategy, Cursor, ManualTime, MemoryBackend, PageOptions, Record,
    StorageBackend, SyncEngine,
};
use syncforge_backend_fs::{Durability, FsBackend, FsOptions};
use syncforge_testkit::hostile::{self, Outcome};

/// Physical time of the engines: after every timestamp the generator draws
/// (up to 2033), so most stamps are accepted, yet far from the largest
/// representable one, which the generator also draws and which must be
/// refused as drift.
const NOW: u64 = 2_100_000_000_000;

async fn engine_over(
    backend: impl StorageBackend + 'static,
    strategy: ConflictStrategy,
) -> SyncEngine {
    SyncEngine::builder()
        .client_id("hostile")
        .conflict_strategy(strategy)
        .time_source(Arc::new(ManualTime::new(NOW)))
        .backend(backend)
        .build()
        .await
        .unwrap()
}

/// Whether the feed holds anything after `cursor`.
async fn changed_after(collection: &Collection, cursor: Cursor) -> bool {
    !collection
        .changes(cursor, PageOptions::default().limit(1))
        .await
        .unwrap()
        .is_empty()
}

/// Records as JSON text, by id.
fn json_of(records: Vec<Record>) -> std::collections::BTreeMap<String, String> {
    records
        .into_iter()
        .map(|record| (record.id().to_string(), record.to_json().to_string()))
        .collect()
}

/// The end of the collection's feed.
async fn head(collection: &Collection) -> Cursor {
    let mut cursor = Cursor::START;
    // Bounded: a feed that never ends fails here instead of hanging.
    for _page in 0..100_000 {
        let page = collection
            .changes(cursor, PageOptions::default().limit(1000))
            .await
            .unwrap();
        cursor = page.next;
        if !page.more {
            return cursor;
        }
    }
    panic!("the feed did not end within 100,000 pages");
}

/// Throws `cases` random records (from `seed`) at `engine`: parsed, put, and
/// every few cases synced as a batch. Panics, naming seed and case, on any
/// broken promise.
async fn run_cases(engine: &SyncEngine, seed: u64, cases: usize) {
    let collection = engine.collection(format!("hostile-{seed}")).unwrap();
    let mut rng = hostile::rng(seed);
    let mut batch: Vec<Record> = Vec::new();
    let mut cursor = head(&collection).await;
    // How often each path was taken: a generator that only ever produced
    // valid (or only invalid) records would prove little.
    let (mut parsed, mut put_ok, mut put_refused, mut synced, mut sync_refused) = (0, 0, 0, 0, 0);
    for case in 0..cases {
        let value = hostile::random_record(&mut rng);
        let at = format!("seed {seed}, case {case}, value {value}");
        match hostile::parse(&value) {
            Outcome::Failed(why) => panic!("{at}: {why}"),
            Outcome::Accepted(record) => {
                parsed += 1;
                batch.push(record);
            }
            Outcome::Refused(_) => {}
        }

        // put, in its own task so that a panic is caught and reported.
        let put = {
            let (collection, value) = (collection.clone(), value.clone());
            tokio::spawn(async move { collection.put(&value).await })
        };
        match put.await {
            Err(join) => panic!("{at}: put panicked: {join}"),
            Ok(Ok(record)) => {
                put_ok += 1;
                hostile::round_trip(&record).unwrap_or_else(|why| panic!("{at}: {why}"));
                assert_eq!(
                    collection.get(record.id()).await.unwrap().as_ref(),
                    Some(&record),
                    "{at}: the stored record is what put returned"
                );
                cursor = head(&collection).await;
            }
            Ok(Err(error)) => {
                put_refused += 1;
                assert!(
                    hostile::is_input_refusal(&error),
                    "{at}: put refused with a non-input error: {error}"
                );
                assert!(
                    !changed_after(&collection, cursor).await,
                    "{at}: a refused put wrote something ({error})"
                );
            }
        }

        if batch.len() >= 8 || (case + 1 == cases && !batch.is_empty()) {
            let records = std::mem::take(&mut batch);
            let sync = {
                let (collection, records) = (collection.clone(), records.clone());
                tokio::spawn(async move { collection.sync(records).await })
            };
            match sync.await {
                Err(join) => panic!("seed {seed}, case {case}: sync panicked: {join}"),
                Ok(Ok(_)) => {
                    synced += 1;
                    for record in &records {
                        let stored = collection.get(record.id()).await.unwrap().unwrap();
                        hostile::round_trip(&stored)
                            .unwrap_or_else(|why| panic!("seed {seed}, case {case}: {why}"));
                    }
                    cursor = head(&collection).await;
                }
                Ok(Err(error)) => {
                    sync_refused += 1;
                    assert!(
                        hostile::is_input_refusal(&error),
                        "seed {seed}, case {case}: sync refused with a non-input error: {error}"
                    );
                    assert!(
                        !changed_after(&collection, cursor).await,
                        "seed {seed}, case {case}: a refused sync wrote something ({error})"
                    );
                }
            }
        }
    }
    let enough = cases / 10;
    assert!(
        parsed > enough && put_ok > enough && put_refused > enough,
        "seed {seed}: the generator must exercise acceptance and refusal \
         (parsed {parsed}, put {put_ok}, refused {put_refused} of {cases})"
    );
    // A batch with one record stamped beyond the drift bound is refused
    // whole, whatever the random cases happened to draw.
    let ahead = syncforge::Record::from_json(serde_json::json!({
        "id": "ahead", "_version": 1, "_timestamp": NOW + 3_600_000, "_deleted": false, "_clientId": "far"
    }))
    .unwrap();
    let fine = syncforge::Record::from_json(serde_json::json!({
        "id": "fine", "_version": 1, "_timestamp": NOW - 1, "_deleted": false, "_clientId": "near"
    }))
    .unwrap();
    let error = collection.sync([fine, ahead]).await.unwrap_err();
    assert!(
        matches!(error, syncforge::Error::ClockDrift { .. }),
        "seed {seed}: {error}"
    );
    assert!(
        !changed_after(&collection, cursor).await,
        "seed {seed}: a refused sync wrote something"
    );
    assert!(synced > 0, "seed {seed}: no sync was applied");
    eprintln!(
        "hostile seed {seed}: {cases} cases, {parsed} parsed, {put_ok} put, {put_refused} refused, \
         {synced} syncs applied, {sync_refused} refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_on_the_memory_backend() {
    let cases = hostile::cases(3_000);
    let crdt = engine_over(MemoryBackend::new(), ConflictStrategy::Crdt).await;
    run_cases(&crdt, 1, cases).await;
    let timestamp = engine_over(MemoryBackend::new(), ConflictStrategy::Timestamp).await;
    run_cases(&timestamp, 2, cases / 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_on_the_filesystem_backend() {
    let cases = hostile::cases(3_000) / 3;
    let dir = tempfile::tempdir().unwrap();
    // Buffered writes keep the run short; durability has its own tests.
    let store = FsBackend::open_with(
        dir.path(),
        FsOptions::default().durability(Durability::Buffered),
    )
    .await
    .unwrap();
    let engine = engine_over(store, ConflictStrategy::Crdt).await;
    run_cases(&engine, 3, cases).await;
    // What the store holds reads back whole, and the same, after a reopen.
    let held = json_of(engine.get_all("hostile-3").await.unwrap());
    assert!(!held.is_empty(), "no hostile record was stored");
    engine.close().await.unwrap();
    let reopened = engine_over(
        FsBackend::open(dir.path()).await.unwrap(),
        ConflictStrategy::Crdt,
    )
    .await;
    let records = reopened.get_all("hostile-3").await.unwrap();
    for record in &records {
        hostile::round_trip(record).unwrap();
    }
    assert_eq!(json_of(records), held);
}

/// A key prefix no other test or run uses.
#[cfg(any(feature = "redis", feature = "s3"))]
fn unique_prefix(tag: &str) -> String {
    format!(
        "hostile-{tag}-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_on_the_redis_backend() {
    use syncforge::{RedisBackend, RedisConfig};
    use syncforge_testkit::services::{address, available};

    const ENV: &str = "SYNCFORGE_TEST_REDIS_URL";
    let server = address(ENV, "redis://127.0.0.1:6379/0");
    let mut config = RedisConfig::from_url(&server).unwrap();
    config.key_prefix = unique_prefix("redis");
    let store = RedisBackend::connect(config).await;
    if !available("redis", ENV, &server, store.is_ok()) {
        return;
    }
    let engine = engine_over(store.unwrap(), ConflictStrategy::Crdt).await;
    run_cases(&engine, 4, hostile::cases(3_000) / 6).await;
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_on_the_s3_backend_over_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = syncforge::S3Backend::local_directory(dir.path(), "dse").unwrap();
    let engine = engine_over(store, ConflictStrategy::Timestamp).await;
    run_cases(&engine, 5, hostile::cases(3_000) / 10).await;
}

/// Against the S3-compatible test server too, with fewer cases: it serves
/// about 140 requests a second.
#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_on_the_s3_backend_over_the_test_server() {
    use syncforge::{S3Backend, S3Config};
    use syncforge_testkit::services::{address, available, listens};

    const ENV: &str = "SYNCFORGE_TEST_S3_ENDPOINT";
    let endpoint = address(ENV, "http://127.0.0.1:45655");
    let bucket = address("SYNCFORGE_TEST_S3_BUCKET", "syncforge-test");
    let probed = endpoint.clone();
    let answers = tokio::task::spawn_blocking(move || listens(&probed))
        .await
        .unwrap();
    if !available("S3 server (moto)", ENV, &endpoint, answers) {
        return;
    }
    let config = S3Config::new(bucket)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_path_style(true)
        .with_credentials("testing", "testing")
        .with_prefix(unique_prefix("s3"));
    let engine = engine_over(S3Backend::new(config).unwrap(), ConflictStrategy::Crdt).await;
    run_cases(&engine, 6, hostile::cases(3_000) / 30).await;
}
