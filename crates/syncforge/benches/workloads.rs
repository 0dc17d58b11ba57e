//! The four core workloads on the memory backend, and the plain baseline they
//! are compared with. Run through `cargo xtask bench`, which prints the table.
//!
//! * baseline: 100,000 ready-made records inserted into a `HashMap`;
//! * W1: 100,000 puts into an empty collection;
//! * W2: a sync of 100,000 records into an empty store;
//! * W3: a CRDT sync of 100,000 records into a store holding the same
//!   100,000, 10,000 changed on each side, 5,000 of them on both (one side
//!   changed `email`, the other `age`); afterwards, outside the timing, every
//!   edit is checked to have survived;
//! * W4: 100 changes read from the change feed of one replica and synced into
//!   another, with collections of 1,000 and of 1,000,000 records.
//!
//! Every workload is set up outside the timing (`iter_custom`). The remote
//! records of W3 are deep copies of the sender's, as if they had arrived over
//! the wire, so no shortcut on shared memory can make them look unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod support;

use std::collections::HashMap;
use std::hint::black_box;
use std::time::SystemTime;

use criterion::Criterion;
use syncforge::core::Content;
use syncforge::{ClientId, Cursor, MemoryBackend, Record, Stamp, SyncEngine};
use tokio::runtime::Runtime;

use support::w3::{assert_no_edit_lost, diverge, CHANGED_EACH_SIDE};
use support::{
    edit_spread, engine, engine_holding, feed_and_sync, feed_head, runtime, timed, timed_checked,
    written_records, Person, COLLECTION, INCREMENTAL, RECORDS,
};

const GROUP: &str = "workloads";
fn baseline(c: &mut Criterion, records: &[Record]) {
    c.benchmark_group(GROUP)
        .bench_function("baseline_hashmap", |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || records.to_vec(),
                    |ready| {
                        let mut map = HashMap::new();
                        for record in ready {
                            map.insert(record.id().to_string(), record);
                        }
                        map
                    },
                )
            })
        });
}

fn w1_put(c: &mut Criterion, rt: &Runtime) {
    let people: Vec<Person> = (0..RECORDS).map(Person::nth).collect();
    c.benchmark_group(GROUP).bench_function("w1_put", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || rt.block_on(engine("w1", MemoryBackend::new())),
                |target| {
                    rt.block_on(async {
                        for person in &people {
                            target.put(COLLECTION, person).await.unwrap();
                        }
                    });
                    target
                },
            )
        })
    });
}

fn w2_sync_into_empty(c: &mut Criterion, rt: &Runtime, records: &[Record]) {
    c.benchmark_group(GROUP)
        .bench_function("w2_sync_empty", |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || {
                        let target = rt.block_on(engine("w2", MemoryBackend::new()));
                        (target, records.to_vec())
                    },
                    |(target, batch)| {
                        let result = rt.block_on(target.sync(COLLECTION, batch)).unwrap();
                        assert_eq!(result.added, RECORDS);
                        target
                    },
                )
            })
        });
}

fn w3_sync_diverged(c: &mut Criterion, rt: &Runtime, base: &[Record]) {
    // Criterion calls the closure below once per sample (and to warm up), so
    // the diverged sides are built on its first call and kept: built once,
    // and not at all in a run that filters this row out.
    let mut sides = None;
    c.benchmark_group(GROUP)
        .bench_function("w3_sync_crdt", |b| {
            let sides = sides.get_or_insert_with(|| diverge(rt, base));
            b.iter_custom(|iters| {
                timed_checked(
                    iters,
                    || {
                        let receiver = rt.block_on(engine_holding("receiver", &sides.local));
                        (receiver, sides.remote.clone())
                    },
                    |(receiver, batch)| {
                        let result = rt.block_on(receiver.sync(COLLECTION, batch)).unwrap();
                        (receiver, result)
                    },
                    |(receiver, result)| {
                        // Sender-only and overlapping records change; the
                        // receiver's own newer edits and untouched records do not.
                        assert_eq!(result.updated, CHANGED_EACH_SIDE);
                        assert_eq!(result.unchanged, RECORDS - CHANGED_EACH_SIDE);
                        assert_no_edit_lost(rt, receiver);
                    },
                )
            })
        });
}

/// W4's two replicas holding the same `size` records, and the sender's
/// change-feed cursor past all of them.
struct Replicas {
    sender: SyncEngine,
    receiver: SyncEngine,
    cursor: Cursor,
}

impl Replicas {
    fn new(rt: &Runtime, size: usize) -> Replicas {
        // Made directly in core: a million puts would only slow the setup down.
        let maker = ClientId::new("maker").unwrap();
        let base: Vec<Record> = (0..size)
            .map(|i| {
                let content = Content::from_value(serde_json::to_value(Person::nth(i)).unwrap());
                let stamp = Stamp::new(1_700_000_000_000 + i as u64, 0, maker.clone()).unwrap();
                Record::create(content.unwrap(), &stamp)
            })
            .collect();
        let sender = rt.block_on(engine_holding("sender", &base));
        let receiver = rt.block_on(engine_holding("receiver", &base));
        drop(base);
        let cursor = rt.block_on(feed_head(&sender));
        Replicas {
            sender,
            receiver,
            cursor,
        }
    }
}

/// Two replicas holding the same `size` records; each iteration the sender
/// makes 100 edits (untimed), and the receiver reads them from the sender's
/// change feed and syncs them (timed).
fn w4_incremental(c: &mut Criterion, rt: &Runtime, size: usize, id: &str) {
    // Criterion calls the closure below once per sample (and to warm up), so
    // the replicas are built on its first call and kept for every sample:
    // each iteration's 100 fresh edits need no fresh store.
    let mut replicas = None;
    let mut round = 0usize;
    c.benchmark_group(GROUP).bench_function(id, |b| {
        let Replicas {
            sender,
            receiver,
            cursor,
        } = replicas.get_or_insert_with(|| Replicas::new(rt, size));
        b.iter_custom(|iters| {
            timed(
                iters,
                || {
                    round += 1;
                    rt.block_on(edit_spread(sender, size, round));
                },
                |()| {
                    let result = rt.block_on(feed_and_sync(sender, receiver, cursor));
                    assert_eq!(result.updated, INCREMENTAL);
                },
            )
        })
    });
}

/// Runs `run` once, outside criterion: the one function a profiler is told
/// to record (`valgrind --tool=callgrind --toggle-collect='*profiled*'`), so
/// setups and checks stay out of the counts.
#[inline(never)]
fn profiled<O>(run: impl FnOnce() -> O) -> O {
    black_box(run())
}

/// `SYNCFORGE_BENCH_PROFILE=<row>`: one run of that row's workload under
/// [`profiled`], set up as its benchmark sets it up; no criterion, no timing.
fn profile(rt: &Runtime, row: &str) {
    match row {
        "w1_put" => {
            let people: Vec<Person> = (0..RECORDS).map(Person::nth).collect();
            let target = rt.block_on(engine("w1", MemoryBackend::new()));
            profiled(|| {
                rt.block_on(async {
                    for person in &people {
                        target.put(COLLECTION, person).await.unwrap();
                    }
                })
            });
        }
        "w2_sync_empty" => {
            let base = written_records(rt, "writer", RECORDS);
            let target = rt.block_on(engine("w2", MemoryBackend::new()));
            let result = profiled(|| rt.block_on(target.sync(COLLECTION, base)).unwrap());
            assert_eq!(result.added, RECORDS);
        }
        "w3_sync_crdt" => {
            let base = written_records(rt, "writer", RECORDS);
            let sides = diverge(rt, &base);
            drop(base);
            let receiver = rt.block_on(engine_holding("receiver", &sides.local));
            let result = profiled(|| {
                rt.block_on(receiver.sync(COLLECTION, sides.remote))
                    .unwrap()
            });
            assert_eq!(result.updated, CHANGED_EACH_SIDE);
            assert_no_edit_lost(rt, &receiver);
        }
        other => panic!("no profile for row {other:?}; rows: w1_put, w2_sync_empty, w3_sync_crdt"),
    }
}

fn main() {
    let since = SystemTime::now();
    let rt = runtime();
    if let Some(row) = std::env::var_os("SYNCFORGE_BENCH_PROFILE") {
        profile(&rt, &row.to_string_lossy());
        return;
    }
    let mut c = support::criterion();
    let base = written_records(&rt, "writer", RECORDS);
    baseline(&mut c, &base);
    w1_put(&mut c, &rt);
    w2_sync_into_empty(&mut c, &rt, &base);
    w3_sync_diverged(&mut c, &rt, &base);
    drop(base);
    w4_incremental(&mut c, &rt, 1_000, "w4_incremental_1k");
    w4_incremental(&mut c, &rt, 1_000_000, "w4_incremental_1m");
    c.final_summary();
    support::report_medians(
        GROUP,
        &[
            ("baseline_hashmap", RECORDS),
            ("w1_put", RECORDS),
            ("w2_sync_empty", RECORDS),
            ("w3_sync_crdt", RECORDS),
            ("w4_incremental_1k", INCREMENTAL),
            ("w4_incremental_1m", INCREMENTAL),
        ],
        since,
    );
}
