//! Convergence through the engine, as a property: replicas on real stores
//! (memory, filesystem) that write, delete, import records in the
//! TypeScript library's form and sync with each other in any order end
//! byte-identical once every write reached every replica, for both
//! strategies; delivering everything again writes nothing; and each
//! replica's change feed holds every record it stores, at its stored state.
//!
//! The merge rules themselves are proved in `syncforge-core`'s properties;
//! these run them through the engine's batches, its stores and its feed.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};
use syncforge::core::ManualTime;
use syncforge::{ConflictStrategy, Cursor, PageOptions, Record, StorageBackend, SyncEngine};
use syncforge_backend_fs::{Durability, FsBackend, FsOptions};
use tempfile::TempDir;

use crate::support::snapshot;

const REPLICAS: usize = 3;
const IDS: usize = 3;
const FIELDS: [&str; 3] = ["f0", "f1", "f2"];
/// Where every replica's wall clock starts, and the `_timestamp` of every
/// import: imports tie with each other and with the first live writes.
const START_MILLIS: u64 = 1_700_000_000_000;

/// Cases: a share of `PROPTEST_CASES` (a run on filesystem stores costs
/// far more than a merge of two records), never none. Only a runner made
/// by hand keeps it: the `proptest!` macro lets the variable set the cases.
fn config(share: u32, default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default, |cases| (cases / share).max(1));
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A put of record `id` holding the fields given (`None`: left out).
    Put {
        replica: usize,
        id: usize,
        fields: Vec<Option<Value>>,
    },
    Delete {
        replica: usize,
        id: usize,
    },
    /// A record in the TypeScript library's form synced in: every import
    /// of an id has the same stamps, whatever its value.
    Import {
        replica: usize,
        id: usize,
        value: Value,
        deleted: bool,
    },
    /// The shared wall clock moves on (0: writes share a millisecond).
    Tick(u64),
    /// `to` merges every record `from` holds (`sync`).
    Send {
        from: usize,
        to: usize,
    },
    /// `to` syncs with `from` through the change feeds (`sync_with`).
    SyncWith {
        from: usize,
        to: usize,
    },
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        (0..3i64).prop_map(Value::from),
        "[ab]{0,2}".prop_map(Value::from),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let replica = 0..REPLICAS;
    let id = 0..IDS;
    let pair = (0..REPLICAS, 1..REPLICAS).prop_map(|(from, step)| (from, (from + step) % REPLICAS));
    prop_oneof![
        4 => (replica.clone(), id.clone(), prop::collection::vec(prop::option::of(value()), FIELDS.len()))
            .prop_map(|(replica, id, fields)| Op::Put { replica, id, fields }),
        1 => (replica.clone(), id.clone()).prop_map(|(replica, id)| Op::Delete { replica, id }),
        1 => (replica, id, value(), prop::bool::weighted(0.2))
            .prop_map(|(replica, id, value, deleted)| Op::Import { replica, id, value, deleted }),
        1 => (0..3u64).prop_map(Op::Tick),
        2 => pair.clone().prop_map(|(from, to)| Op::Send { from, to }),
        2 => pair.prop_map(|(from, to)| Op::SyncWith { from, to }),
    ]
}

/// Which store each replica of a run has.
#[derive(Debug, Clone, Copy)]
enum Store {
    Memory,
    Filesystem,
}

struct Run {
    engines: Vec<SyncEngine>,
    time: Arc<ManualTime>,
    // Kept until the run ends: the filesystem stores' directories.
    _dir: Option<TempDir>,
}

async fn start(store: Store, strategy: ConflictStrategy) -> Run {
    let time = Arc::new(ManualTime::new(START_MILLIS));
    let dir = matches!(store, Store::Filesystem).then(|| TempDir::new().unwrap());
    let mut engines = Vec::new();
    for replica in 0..REPLICAS {
        let backend: Arc<dyn StorageBackend> = match &dir {
            None => Arc::new(syncforge::MemoryBackend::new()),
            Some(dir) => Arc::new(
                FsBackend::open_with(
                    dir.path().join(format!("r{replica}")),
                    FsOptions::default().durability(Durability::Buffered),
                )
                .await
                .unwrap(),
            ),
        };
        engines.push(
            SyncEngine::builder()
                .client_id(format!("replica-{replica}"))
                .conflict_strategy(strategy)
                .time_source(time.clone())
                .backend(backend)
                .build()
                .await
                .unwrap(),
        );
    }
    Run {
        engines,
        time,
        _dir: dir,
    }
}

fn record_id(id: usize) -> String {
    format!("r{id}")
}

async fn apply(run: &Run, op: &Op) {
    let engines = &run.engines;
    match op {
        Op::Put {
            replica,
            id,
            fields,
        } => {
            let mut doc = json!({ "id": record_id(*id) });
            for (name, value) in FIELDS.iter().zip(fields) {
                if let Some(value) = value {
                    doc[*name] = value.clone();
                }
            }
            engines[*replica].put("c", &doc).await.unwrap();
        }
        Op::Delete { replica, id } => {
            engines[*replica].delete("c", record_id(*id)).await.unwrap();
        }
        Op::Import {
            replica,
            id,
            value,
            deleted,
        } => {
            let record = Record::from_json(json!({
                "id": record_id(*id),
                "f0": value,
                "_version": 1,
                "_timestamp": START_MILLIS,
                "_deleted": deleted,
                "_clientId": "typescript",
            }))
            .unwrap();
            let result = engines[*replica].sync("c", vec![record]).await.unwrap();
            assert_eq!(outcomes(&result), 1);
        }
        Op::Tick(millis) => run.time.advance(*millis),
        Op::Send { from, to } => {
            let records = engines[*from].get_all("c").await.unwrap();
            let count = records.len();
            let result = engines[*to].sync("c", records).await.unwrap();
            assert_eq!(outcomes(&result), count);
        }
        Op::SyncWith { from, to } => {
            let report = engines[*to].sync_with(&engines[*from], "c").await.unwrap();
            assert!(report.refused.is_empty(), "{report:?}");
        }
    }
}

/// How many records a sync gave an outcome.
fn outcomes(result: &syncforge::SyncResult) -> usize {
    result.added + result.updated + result.deleted + result.unchanged
}

/// Every record of `engine`, read from its change feed: the state of each
/// record's last change.
async fn from_feed(engine: &SyncEngine) -> String {
    let mut latest = std::collections::BTreeMap::new();
    let mut after = Cursor::START;
    loop {
        let page = engine
            .changes("c", after, PageOptions::default().limit(100))
            .await
            .unwrap();
        for change in page.changes {
            latest.insert(
                change.record.id().to_string(),
                change.record.to_json_string(),
            );
        }
        after = page.next;
        if !page.more {
            break;
        }
    }
    latest.into_values().collect::<Vec<_>>().join("\n")
}

async fn converges(
    store: Store,
    strategy: ConflictStrategy,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let run = start(store, strategy).await;
    for op in ops {
        apply(&run, op).await;
    }
    // Every replica's writes to every other, in an order that brings all
    // of them everywhere in one round; a second round finds nothing new.
    for _ in 0..2 {
        for from in 0..REPLICAS {
            for to in 0..REPLICAS {
                if from != to {
                    apply(&run, &Op::Send { from, to }).await;
                }
            }
        }
    }
    let first = snapshot(&run.engines[0], "c").await;
    for engine in &run.engines[1..] {
        prop_assert_eq!(&snapshot(engine, "c").await, &first, "{:?}", strategy);
    }
    for engine in &run.engines {
        // The feed holds every stored record at its stored state...
        prop_assert_eq!(&from_feed(engine).await, &first);
        // ...and everything delivered again writes nothing.
        let head = engine
            .changes("c", Cursor::START, PageOptions::default())
            .await
            .unwrap()
            .next;
        for other in &run.engines {
            let again = engine
                .sync("c", other.get_all("c").await.unwrap())
                .await
                .unwrap();
            prop_assert_eq!(again.added + again.updated + again.deleted, 0);
        }
        let head_after = engine
            .changes("c", Cursor::START, PageOptions::default())
            .await
            .unwrap()
            .next;
        prop_assert_eq!(head, head_after, "a delivery again moved the feed");
    }
    for engine in &run.engines {
        engine.close().await.unwrap();
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prop_replicas_on_memory_stores_converge(ops in prop::collection::vec(op(), 1..32)) {
        let rt = runtime();
        for strategy in [ConflictStrategy::Timestamp, ConflictStrategy::Crdt] {
            rt.block_on(converges(Store::Memory, strategy, &ops))?;
        }
    }
}

/// A case on filesystem stores takes about 60 ms in a debug build: a
/// twentieth of `PROPTEST_CASES` (200 in CI), 32 without it.
#[test]
fn prop_replicas_on_filesystem_stores_converge() {
    let mut runner = proptest::test_runner::TestRunner::new(config(20, 32));
    let rt = runtime();
    let outcome = runner.run(&prop::collection::vec(op(), 1..24), |ops| {
        for strategy in [ConflictStrategy::Timestamp, ConflictStrategy::Crdt] {
            rt.block_on(converges(Store::Filesystem, strategy, &ops))?;
        }
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
