//! The filesystem backend: 10,000 puts (durable and buffered), `get_all` of
//! 10,000 records, a sync of 10,000 records into an empty store, and an
//! incremental sync of 100 changes (read from the sender's change feed) into
//! a store of 100,000 records. The quick mode uses a tenth of each count, a
//! fiftieth of the puts.
//! Stores live in temporary directories under the bench output directory — on
//! the disk the target directory is on, not on a tmpfs, so that durable
//! writes really reach the device — and are removed together when the bench
//! ends. Each iteration of the put and sync rows closes its store after the
//! clock stops, so that the checkpoint its writes started has ended before
//! the next one begins.
//!
//! `cargo xtask bench` compares the durable sync with the durable puts, and
//! so does the last line this bench prints: a sync commits each batch with
//! one write-ahead-log sync (group commit), a put commits on its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use criterion::Criterion;
use syncforge::core::{StorageBackend, Write};
use syncforge::{Cursor, Record, SyncEngine};
use syncforge_backend_fs::{Durability, FsBackend, FsOptions};
use tempfile::TempDir;
use tokio::runtime::Runtime;

use support::{
    collection, edit_spread, feed_and_sync, feed_head, runtime, timed_checked, written_records,
    Person, COLLECTION, INCREMENTAL,
};

const GROUP: &str = "fs";
/// Records of the put, get_all and sync rows in the full mode.
const FULL_RECORDS: usize = 10_000;
/// Records of the store the incremental sync goes into.
const FULL_LARGE: usize = 100_000;
/// The fs group: ten samples (criterion's least) in both modes, since one
/// iteration of durable writes takes seconds to most of a minute.
fn group(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10);
    group
}

/// Where every run's directory is made; shared by runs with one output
/// directory.
fn scratch_parent() -> PathBuf {
    support::out_dir().join("fs-scratch")
}

/// This run's directory, which holds every store it makes: all are removed
/// together when the run ends (or unwinds), none between iterations. A full
/// run keeps about fifty stores of 10,000 record files each, some 2 GB on
/// a disk with 4 KiB blocks, until then.
fn run_dir() -> TempDir {
    let parent = scratch_parent();
    std::fs::create_dir_all(&parent).unwrap();
    tempfile::tempdir_in(parent).unwrap()
}

/// Where [`scratch`] makes stores: set once by `main` to its [`run_dir`].
static RUN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// A new directory for one store, kept until the run ends. Removing an
/// iteration's ten thousand files before the next iteration starts made the
/// next one's file creations crawl on a filesystem without a journal (see
/// the backends guide) and timed that instead of the store.
fn scratch() -> PathBuf {
    let root = RUN_DIR.get().expect("main sets the run's directory first");
    tempfile::tempdir_in(root).unwrap().keep()
}

async fn fs_engine(client: &str, dir: &Path, durability: Durability) -> SyncEngine {
    let backend = FsBackend::open_with(dir, FsOptions::default().durability(durability))
        .await
        .unwrap();
    support::engine(client, backend).await
}

/// Records of the get_all and sync rows: 10,000, or 1,000 in the
/// quick mode. Every file write costs the same whatever the count (durable
/// ones wait for their own `fsync`s, milliseconds on most disks), so the rate
/// per record holds; the smaller count keeps the quick mode quick.
fn record_count() -> usize {
    if support::quick() {
        FULL_RECORDS / 10
    } else {
        FULL_RECORDS
    }
}

/// Records of the store the incremental sync goes into: 100,000, or 10,000
/// in the quick mode (loading 100,000 files takes minutes).
fn large_count() -> usize {
    if support::quick() {
        FULL_LARGE / 10
    } else {
        FULL_LARGE
    }
}

/// Records of the put rows: 10,000, or 200 in the quick mode, where 1,000
/// durable puts per sample took most of the run. A put into a smaller store
/// costs less (200 ran at about twice the rate of 1,000 here), so the quick
/// rate is for spotting regressions between quick runs, not for comparing
/// with the full mode's; the row's label names the smaller count.
fn put_count() -> usize {
    if support::quick() {
        FULL_RECORDS / 50
    } else {
        FULL_RECORDS
    }
}

fn puts(c: &mut Criterion, rt: &Runtime, durability: Durability, id: &str) {
    let people: Vec<Person> = (0..put_count()).map(Person::nth).collect();
    group(c).bench_function(id, |b| {
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || rt.block_on(fs_engine("putter", &scratch(), durability)),
                |engine| {
                    rt.block_on(async {
                        for person in &people {
                            engine.put(COLLECTION, person).await.unwrap();
                        }
                    });
                    engine
                },
                |engine| finish(rt, engine),
            )
        })
    });
}

/// Closes an iteration's engine once its clock has stopped: closing waits
/// for the checkpoint its writes started in the background, which would
/// otherwise run on beside the next iteration, on a thread of its own, and
/// be timed as part of it (it took a durable sync of 10,000 records from
/// 114 ms to 695 ms).
fn finish(rt: &Runtime, engine: &SyncEngine) {
    rt.block_on(engine.close()).unwrap();
}

/// A durable store in a new directory holding `records`, written buffered
/// (it is only the starting point) and reopened durable.
fn durable_store_holding(rt: &Runtime, client: &str, records: &[Record]) -> SyncEngine {
    let dir = scratch();
    rt.block_on(async {
        let loader =
            FsBackend::open_with(&dir, FsOptions::default().durability(Durability::Buffered))
                .await
                .unwrap();
        for chunk in records.chunks(10_000) {
            let writes: Vec<Write> = chunk.iter().cloned().map(Write::create).collect();
            loader.put_batch(&collection(), &writes).await.unwrap();
        }
        loader.close().await.unwrap();
    });
    rt.block_on(fs_engine(client, &dir, Durability::Full))
}

fn get_all(c: &mut Criterion, rt: &Runtime, records: &[Record]) {
    // Criterion calls the closure below once per sample (and to warm up), so
    // the store is filled on its first call and kept: reads leave it as it was.
    let mut store = None;
    group(c).bench_function("fs_get_all_10k", |b| {
        let engine = store.get_or_insert_with(|| durable_store_holding(rt, "reader", records));
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || (),
                |()| rt.block_on(engine.get_all(COLLECTION)).unwrap(),
                |all| assert_eq!(all.len(), record_count()),
            )
        })
    });
    if let Some(engine) = store {
        finish(rt, &engine);
    }
}

fn sync_into_empty(c: &mut Criterion, rt: &Runtime, records: &[Record]) {
    group(c).bench_function("fs_sync_10k_durable", |b| {
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || {
                    let engine = rt.block_on(fs_engine("syncer", &scratch(), Durability::Full));
                    (engine, records.to_vec())
                },
                |(engine, batch)| {
                    let result = rt.block_on(engine.sync(COLLECTION, batch)).unwrap();
                    (engine, result)
                },
                |(engine, result)| {
                    assert_eq!(result.added, record_count());
                    finish(rt, engine);
                },
            )
        })
    });
}

/// The incremental row's replicas: the memory sender, the durable fs
/// receiver (in its directory) and the sender's change-feed cursor.
struct Replicas {
    sender: SyncEngine,
    receiver: SyncEngine,
    cursor: Cursor,
}

impl Replicas {
    fn new(rt: &Runtime) -> Replicas {
        let base = written_records(rt, "writer", large_count());
        let sender = rt.block_on(support::engine_holding("sender", &base));
        let receiver = durable_store_holding(rt, "receiver", &base);
        drop(base);
        let cursor = rt.block_on(feed_head(&sender));
        Replicas {
            sender,
            receiver,
            cursor,
        }
    }
}

/// A memory-backed sender and a durable fs receiver holding the same 100,000
/// records; each iteration the sender makes 100 edits (untimed) and the
/// receiver syncs them from the sender's change feed (timed).
fn incremental(c: &mut Criterion, rt: &Runtime) {
    // Criterion calls the closure below once per sample (and to warm up), so
    // the replicas are built on its first call and kept for every sample.
    let mut replicas = None;
    let mut round = 0usize;
    group(c).bench_function("fs_incremental_100_into_100k", |b| {
        let Replicas {
            sender,
            receiver,
            cursor,
            ..
        } = replicas.get_or_insert_with(|| Replicas::new(rt));
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || {
                    round += 1;
                    rt.block_on(edit_spread(sender, large_count(), round));
                },
                |()| rt.block_on(feed_and_sync(sender, receiver, cursor)),
                |result| assert_eq!(result.updated, INCREMENTAL),
            )
        })
    });
    if let Some(replicas) = replicas {
        finish(rt, &replicas.receiver);
    }
}

fn main() {
    let since = SystemTime::now();
    let rt = runtime();
    let run = run_dir();
    RUN_DIR.set(run.path().to_path_buf()).unwrap();
    let mut c = support::criterion();
    let records = written_records(&rt, "writer", record_count());
    puts(&mut c, &rt, Durability::Full, "fs_put_10k_durable");
    puts(&mut c, &rt, Durability::Buffered, "fs_put_10k_buffered");
    get_all(&mut c, &rt, &records);
    sync_into_empty(&mut c, &rt, &records);
    incremental(&mut c, &rt);
    c.final_summary();
    support::report_medians(
        GROUP,
        &[
            ("fs_put_10k_durable", put_count()),
            ("fs_put_10k_buffered", put_count()),
            ("fs_get_all_10k", record_count()),
            ("fs_sync_10k_durable", record_count()),
            ("fs_incremental_100_into_100k", INCREMENTAL),
        ],
        since,
    );
    // Group commit at a glance: the durable sync's time per record against a
    // durable put's (the table of `cargo xtask bench` judges it too).
    if let (Some(puts), Some(sync)) = (
        support::median_ns(GROUP, "fs_put_10k_durable", since),
        support::median_ns(GROUP, "fs_sync_10k_durable", since),
    ) {
        let per_put = puts / put_count() as f64;
        let per_synced = sync / record_count() as f64;
        println!(
            "fs: a durable sync writes a record {:.1}x faster than a durable put \
             ({:.0} µs vs {:.0} µs per record; target >= 10x)",
            per_put / per_synced,
            per_synced / 1e3,
            per_put / 1e3
        );
    }
    drop(run);
    // Removed only when no other run is using it.
    std::fs::remove_dir(scratch_parent()).ok();
}
