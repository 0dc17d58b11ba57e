//! The S3 backend driven through the engine, as a user drives it.
//!
//! Against an S3-compatible server (moto, which `cargo xtask bench` starts
//! as `cargo xtask ci` does): requests per record of a put of 1,000 records
//! one at a time (quick: 200), a sync of 1,000 into an empty collection,
//! `get_all` of 1,000, a sync of 100 changes (read from a memory replica's
//! change feed) into collections of 500 and of 5,000 records, and reading
//! those 100 changes back from the S3 collection's own feed. moto serves
//! one request at a time (about 140 per second), so its throughput says
//! nothing about the backend: the figure is the request count, each workload
//! run once (the counts do not vary with timing).
//!
//! Latency as a real region has it: the same workloads over object_store's
//! `InMemory` behind a wrapper that makes every request wait 20 ms, timed by
//! criterion with the default bound on requests in flight (the put row puts
//! 50 records: one at a time, each costs a few sequential round trips).
//!
//! Here rather than in the facade's benches: the S3 crate (object_store with
//! `aws`, a C build of aws-lc) then stays out of the facade's dev-dependencies,
//! which every `cargo test -p syncforge` builds. The figures go to the same
//! summary through the facade benches' `support` module.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../../syncforge/benches/support/mod.rs"]
mod support;
// The tests' server discovery and wrapper store (it counts requests and adds
// latency); what only the tests use of them is unused here.
#[allow(dead_code)]
#[path = "../tests/s3/support.rs"]
mod server;
#[allow(dead_code)]
#[path = "../tests/s3/wrapper.rs"]
mod wrapper;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::Criterion;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use syncforge::core::{StorageBackend, Write, WriteOutcome};
use syncforge::{Cursor, PageOptions, Record, SyncEngine};
use syncforge_backend_s3::S3Backend;
use tokio::runtime::Runtime;

use server::Server;
use support::{
    collection, edit_spread, feed_and_sync, feed_head, timed, timed_checked, written_records,
    Person, COLLECTION, INCREMENTAL,
};
use wrapper::Wrapped;

const GROUP: &str = "s3";
/// What every request waits in the latency rows.
const LATENCY: Duration = Duration::from_millis(20);
/// Records of the sync and get_all rows.
const RECORDS: usize = 1_000;
/// The collections the 100 changes go into, and their names in row keys.
const SIZES: [(usize, &str); 2] = [(500, "500"), (5_000, "5k")];
/// Records put one at a time in the latency row.
const LATENCY_PUTS: usize = 50;

/// Records put one at a time against moto: 1,000, or 200 in the quick mode
/// (each costs a few requests, at about 140 requests per second).
fn moto_puts() -> usize {
    if support::quick() {
        200
    } else {
        RECORDS
    }
}

/// A backend on `store` under `prefix` whose requests are counted.
fn counted(store: Arc<dyn ObjectStore>, prefix: &str) -> (S3Backend, Arc<Wrapped>) {
    let counter = Arc::new(Wrapped::new(store));
    let backend = S3Backend::from_store(counter.clone(), prefix).unwrap();
    (backend, counter)
}

/// Writes `records` straight into the collection (no engine, no sync) and
/// returns the cursor of the last write: the end of its feed.
async fn load(backend: &S3Backend, records: &[Record]) -> Cursor {
    let mut end = Cursor::START;
    for chunk in records.chunks(1_000) {
        let writes: Vec<Write> = chunk.iter().cloned().map(Write::create).collect();
        for outcome in backend.put_batch(&collection(), &writes).await.unwrap() {
            match outcome {
                WriteOutcome::Written { cursor, .. } => end = end.max(cursor),
                WriteOutcome::Conflict => panic!("a fresh collection conflicted"),
            }
        }
    }
    end
}

/// Requests per record of each workload against the S3 server, under a
/// prefix no earlier run used.
fn on_server(rt: &Runtime, server: &Server) {
    let prefix = server::unique_prefix("bench");
    let puts = moto_puts();
    rt.block_on(async {
        let (backend, counter) = counted(server.store(), &format!("{prefix}/put"));
        let engine = support::engine("putter", backend).await;
        let before = counter.requests();
        for i in 0..puts {
            engine.put(COLLECTION, &Person::nth(i)).await.unwrap();
        }
        support::report_requests("s3_moto_put_1k", counter.requests() - before, puts);
    });

    let records = written_records(rt, "writer", RECORDS);
    rt.block_on(async {
        let into = format!("{prefix}/sync");
        let (backend, counter) = counted(server.store(), &into);
        let engine = support::engine("syncer", backend).await;
        let before = counter.requests();
        let result = engine.sync(COLLECTION, records).await.unwrap();
        assert_eq!(result.added, RECORDS);
        support::report_requests(
            "s3_moto_sync_1k_empty",
            counter.requests() - before,
            RECORDS,
        );

        // Another replica's engine, which has read nothing yet.
        let (backend, counter) = counted(server.store(), &into);
        let reader = support::engine("reader", backend).await;
        let before = counter.requests();
        assert_eq!(reader.get_all(COLLECTION).await.unwrap().len(), RECORDS);
        support::report_requests("s3_moto_get_all_1k", counter.requests() - before, RECORDS);
    });

    for (size, label) in SIZES {
        incremental_on_server(rt, server, &format!("{prefix}/into-{label}"), size, label);
    }
}

/// A memory replica and an S3 replica holding the same `size` records; the
/// memory replica edits 100 of them, the S3 replica syncs them from its
/// change feed (counted), and a third replica reads the 100 changes back
/// from the S3 collection's own feed (counted).
fn incremental_on_server(rt: &Runtime, server: &Server, prefix: &str, size: usize, label: &str) {
    let base = written_records(rt, "writer", size);
    let sender = rt.block_on(support::engine_holding("sender", &base));
    let mut cursor = rt.block_on(feed_head(&sender));
    rt.block_on(async {
        let loader = S3Backend::from_store(server.store(), prefix).unwrap();
        let end = load(&loader, &base).await;
        let (backend, counter) = counted(server.store(), prefix);
        let receiver = support::engine("receiver", backend).await;
        edit_spread(&sender, size, 1).await;
        let before = counter.requests();
        let result = feed_and_sync(&sender, &receiver, &mut cursor).await;
        assert_eq!(result.updated, INCREMENTAL);
        support::report_requests(
            &format!("s3_moto_incremental_100_into_{label}"),
            counter.requests() - before,
            INCREMENTAL,
        );

        let (backend, counter) = counted(server.store(), prefix);
        let follower = support::engine("follower", backend).await;
        let before = counter.requests();
        let page = follower
            .changes(COLLECTION, end, PageOptions::default().limit(INCREMENTAL))
            .await
            .unwrap();
        assert_eq!(page.changes.len(), INCREMENTAL);
        support::report_requests(
            &format!("s3_moto_feed_100_of_{label}"),
            counter.requests() - before,
            INCREMENTAL,
        );
    });
}

/// A backend on `memory` whose every request waits [`LATENCY`].
fn distant(memory: &Arc<dyn ObjectStore>) -> S3Backend {
    let slow = Wrapped::new(Arc::clone(memory)).with_latency(LATENCY);
    S3Backend::from_store(Arc::new(slow), "dse").unwrap()
}

fn fresh() -> Arc<dyn ObjectStore> {
    Arc::new(InMemory::new())
}

/// The latency group: ten samples, criterion's least (an iteration takes
/// up to seconds).
fn group(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10);
    group
}

fn distant_puts(c: &mut Criterion, rt: &Runtime) {
    let people: Vec<Person> = (0..LATENCY_PUTS).map(Person::nth).collect();
    group(c).bench_function("s3_20ms_put_50", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || rt.block_on(support::engine("putter", distant(&fresh()))),
                |engine| {
                    rt.block_on(async {
                        for person in &people {
                            engine.put(COLLECTION, person).await.unwrap();
                        }
                    });
                    engine
                },
            )
        })
    });
}

fn distant_sync_into_empty(c: &mut Criterion, rt: &Runtime, records: &[Record]) {
    group(c).bench_function("s3_20ms_sync_1k_empty", |b| {
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || {
                    let engine = rt.block_on(support::engine("syncer", distant(&fresh())));
                    (engine, records.to_vec())
                },
                |(engine, batch)| {
                    let result = rt.block_on(engine.sync(COLLECTION, batch)).unwrap();
                    (engine, result)
                },
                |(_, result)| assert_eq!(result.added, RECORDS),
            )
        })
    });
}

fn distant_get_all(c: &mut Criterion, rt: &Runtime, records: &[Record]) {
    // Filled on criterion's first call of the closure, read by every sample.
    let mut store: Option<SyncEngine> = None;
    group(c).bench_function("s3_20ms_get_all_1k", |b| {
        let engine = store.get_or_insert_with(|| {
            let memory = fresh();
            rt.block_on(async {
                load(
                    &S3Backend::from_store(Arc::clone(&memory), "dse").unwrap(),
                    records,
                )
                .await;
                support::engine("reader", distant(&memory)).await
            })
        });
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || (),
                |()| rt.block_on(engine.get_all(COLLECTION)).unwrap(),
                |all| assert_eq!(all.len(), RECORDS),
            )
        })
    });
}

/// The incremental rows' replicas: a memory sender, an S3 receiver behind
/// the latency (loaded without it), and the sender's feed cursor.
struct Replicas {
    sender: SyncEngine,
    receiver: SyncEngine,
    cursor: Cursor,
}

impl Replicas {
    fn new(rt: &Runtime, size: usize) -> Replicas {
        let base = written_records(rt, "writer", size);
        let sender = rt.block_on(support::engine_holding("sender", &base));
        let memory = fresh();
        let receiver = rt.block_on(async {
            load(
                &S3Backend::from_store(Arc::clone(&memory), "dse").unwrap(),
                &base,
            )
            .await;
            support::engine("receiver", distant(&memory)).await
        });
        let cursor = rt.block_on(feed_head(&sender));
        Replicas {
            sender,
            receiver,
            cursor,
        }
    }
}

/// Each iteration the memory sender edits 100 records (untimed) and the S3
/// receiver syncs them from the sender's change feed (timed).
fn distant_incremental(c: &mut Criterion, rt: &Runtime, size: usize, label: &str) {
    let mut replicas = None;
    let mut round = 0usize;
    group(c).bench_function(format!("s3_20ms_incremental_100_into_{label}"), |b| {
        let Replicas {
            sender,
            receiver,
            cursor,
        } = replicas.get_or_insert_with(|| Replicas::new(rt, size));
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || {
                    round += 1;
                    rt.block_on(edit_spread(sender, size, round));
                },
                |()| rt.block_on(feed_and_sync(sender, receiver, cursor)),
                |result| assert_eq!(result.updated, INCREMENTAL),
            )
        })
    });
}

fn main() {
    let since = SystemTime::now();
    let rt = support::runtime();
    // Only under `cargo bench` (criterion's `--bench`): `cargo test --benches`
    // runs this binary too, to check that it works, not to measure.
    let benching = std::env::args().any(|arg| arg == "--bench");
    if benching {
        if let Some(server) = rt.block_on(server::s3_server()) {
            on_server(&rt, &server);
        }
    }
    let mut c = support::criterion();
    let records = written_records(&rt, "writer", RECORDS);
    distant_puts(&mut c, &rt);
    distant_sync_into_empty(&mut c, &rt, &records);
    distant_get_all(&mut c, &rt, &records);
    for (size, label) in SIZES {
        distant_incremental(&mut c, &rt, size, label);
    }
    c.final_summary();
    support::report_medians(
        GROUP,
        &[
            ("s3_20ms_put_50", LATENCY_PUTS),
            ("s3_20ms_sync_1k_empty", RECORDS),
            ("s3_20ms_get_all_1k", RECORDS),
            ("s3_20ms_incremental_100_into_500", INCREMENTAL),
            ("s3_20ms_incremental_100_into_5k", INCREMENTAL),
        ],
        since,
    );
}
