//! The four core workloads on the memory backend, and the plain baseline they
//! are compared with. Run through `cargo xtask bench`, which prints the table.
//!
//! * baseline: 100,000 ready-made records inserted into a `HashMap`; and the
//!   floors of W1 (each person as serde_json text into a `HashMap`) and of
//!   W3 (each incoming record looked up and its versions compared);
//! * W1: 100,000 puts into an empty collection;
//! * W2: a sync of 100,000 records into an empty store;
//! * W3: a CRDT sync of 100,000 records into a store holding the same
//!   100,000, 10,000 changed on each side, 5,000 of them on both (one side
//!   changed `email`, the other `age`); afterwards, outside the timing, every
//!   edit is checked to have survived;
//! * W4: 100 changes read from the change feed of one replica and synced into
//!   another, with collections of 1,000 and of 1,000,000 records; and its
//!   floor at both sizes: 100 changed records each looked up by id in a table
//!   and put in place of the record they replace, which is freed;
//! * record JSON: 10,000 records written as JSON text, and read back from
//!   it with every check a record from outside gets;
//! * wide puts: one put adding 10,000 and 100,000 new field names to a record
//!   of five fields, counted per field, whose cost must grow as n log n (the
//!   names are sorted once), not n²;
//! * `LwwMap`: a map built of 10,000 and 100,000 keys set in no order,
//!   counted per key, whose cost must grow as log n, not n.
//!
//! Every workload is set up outside the timing (`iter_custom`). W3's
//! receiver and the records it syncs are deep copies of the two sides, made
//! anew for each run, as if they had arrived over the wire: no shortcut on
//! shared memory can make them look unchanged, and the sync frees what it
//! does not keep, as a receiving replica does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod support;

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::Criterion;
use syncforge::core::Content;
use syncforge::{ClientId, Cursor, LwwMap, MemoryBackend, Record, RecordId, Stamp, SyncEngine};
use tokio::runtime::Runtime;

use support::w3::{assert_no_edit_lost_shaped, diverge_shaped, Shape};
use support::{
    edit_spread, engine, engine_holding, feed_head, feed_page, received, runtime, spread_edits,
    timed, timed_checked, written_records, Person, COLLECTION, INCREMENTAL, RECORDS,
};

const GROUP: &str = "workloads";
const BASELINE: &str = "baseline_hashmap";
const BASELINE_LOOKUP: &str = "baseline_lookup";
const BASELINE_PUT: &str = "baseline_put";
const BASELINE_REPLACE: &str = "baseline_replace";
const JSON_WRITE: &str = "record_json_write";
const JSON_READ: &str = "record_json_read";
/// Records of the JSON rows.
const JSON_RECORDS: usize = 10_000;
const W1: &str = "w1_put";
const W2: &str = "w2_sync_empty";
const W3: &str = "w3_sync_crdt";
const W4: &str = "w4_incremental";
/// The sizes W4 and its floor run at, and the suffix of their rows.
const W4_SIZES: [(usize, &str); 2] = [(1_000, "_1k"), (1_000_000, "_1m")];
/// The rounds of 100 changes a profile of W4 or of its floor records.
const W4_ROUNDS: usize = 20;
/// The sizes W1 to W3 run at, and the suffix of their rows.
const SIZES: [(usize, &str); 3] = [(10_000, "_10k"), (RECORDS, ""), (1_000_000, "_1m")];

/// Whether the command line's filter (criterion's first free argument, a
/// regular expression; plain names and `|` alternatives are understood
/// here) selects row `id`, so that a filtered run does not build the
/// records of rows it skips.
fn selected(id: &str) -> bool {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let pattern = |part: &str| part.contains(|c: char| "[](){}*+?.^$\\".contains(c));
    filter.is_none_or(|f| f.split('|').any(|part| pattern(part) || id.contains(part)))
}
fn baseline(c: &mut Criterion, records: &[Record], id: &str) {
    c.benchmark_group(GROUP).bench_function(id, |b| {
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

/// The floor of W3: each incoming record (a deep copy, as W3's are) looked
/// up by id in a table of the local records (foldhash, as the memory store
/// hashes) and its version vector compared: "one lookup and a couple of
/// integer comparisons", nothing else.
fn baseline_lookup(c: &mut Criterion, rt: &Runtime, base: &[Record], id: &str) {
    if !selected(id) {
        return;
    }
    let sides = diverge_shaped(rt, base, Shape::of(base.len()));
    let local = lookup_table(&sides.local);
    c.benchmark_group(GROUP).bench_function(id, |b| {
        b.iter_custom(|iters| timed(iters, || (), |()| lookup_floor(&local, &sides.remote)))
    });
}

/// The local records of W3's floor, by id.
fn lookup_table(local: &[Record]) -> foldhash::HashMap<String, Record> {
    local
        .iter()
        .map(|r| (r.id().to_string(), r.clone()))
        .collect()
}

/// W3's floor itself: how many of `remote` have a local record with equal
/// versions.
fn lookup_floor(local: &foldhash::HashMap<String, Record>, remote: &[Record]) -> usize {
    remote
        .iter()
        .filter(|r| {
            local
                .get(r.id().as_str())
                .is_some_and(|l| l.versions() == r.versions())
        })
        .count()
}

/// The floor of W1: each person serialised to JSON text by serde_json and
/// inserted by id into a `HashMap` (foldhash, as the memory store hashes),
/// with no field states, stamps, change feed or events: the least a put of
/// a struct into a keyed store can do.
fn baseline_put(c: &mut Criterion) {
    if !selected(BASELINE_PUT) {
        return;
    }
    let people: Vec<Person> = (0..RECORDS).map(Person::nth).collect();
    c.benchmark_group(GROUP).bench_function(BASELINE_PUT, |b| {
        b.iter_custom(|iters| timed(iters, || (), |()| put_floor(&people)))
    });
}

/// W1's floor itself: `people` as serde_json text, by id.
fn put_floor(people: &[Person]) -> foldhash::HashMap<String, String> {
    let mut map = foldhash::HashMap::default();
    for person in people {
        let text = serde_json::to_string(person).unwrap();
        map.insert(person.id.clone(), text);
    }
    map
}

fn w1_put(c: &mut Criterion, rt: &Runtime, size: usize, id: &str) {
    let people: Vec<Person> = (0..size).map(Person::nth).collect();
    c.benchmark_group(GROUP).bench_function(id, |b| {
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

/// The field counts of the wide-put rows, and their names.
const WIDE: [(usize, &str); 2] = [
    (10_000, "w1_put_wide_10k_fields"),
    (100_000, "w1_put_wide_100k_fields"),
];

/// One put of a person with `fields` more fields, into a collection holding
/// that person with its five: timed per field added.
fn w1_put_wide(c: &mut Criterion, rt: &Runtime, fields: usize, id: &str) {
    if !selected(id) {
        return;
    }
    let person = Person::nth(0);
    let serde_json::Value::Object(mut wide) = serde_json::to_value(&person).unwrap() else {
        unreachable!("a person serialises to an object")
    };
    for n in 0..fields {
        wide.insert(format!("extra-{n:06}"), serde_json::Value::from(n));
    }
    let wide = serde_json::Value::Object(wide);
    c.benchmark_group(GROUP).bench_function(id, |b| {
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || {
                    let target = rt.block_on(engine("wide", MemoryBackend::new()));
                    rt.block_on(target.put(COLLECTION, &person)).unwrap();
                    (target, wide.clone())
                },
                // The value is handed back, so that freeing it is not timed.
                |(target, value)| {
                    rt.block_on(target.put(COLLECTION, &value)).unwrap();
                    (target, value)
                },
                |(target, _)| {
                    let stored = rt.block_on(target.get(COLLECTION, &person.id)).unwrap();
                    assert_eq!(stored.unwrap().fields().count(), fields + 5);
                },
            )
        })
    });
}

/// The key counts of the `LwwMap` rows, and their names.
const LWW_MAP: [(usize, &str); 2] = [(10_000, "lww_map_set_10k"), (100_000, "lww_map_set_100k")];

/// An `LwwMap` built of `keys` keys set in no order (a multiplicative
/// shuffle of the key numbers): timed per key.
fn lww_map_set(c: &mut Criterion, keys: usize, id: &str) {
    if !selected(id) {
        return;
    }
    let stamp = Stamp::new(1_000, 0, "writer").unwrap();
    // 7919 is prime and does not divide either count: every key once.
    let names: Vec<String> = (0..keys)
        .map(|n| format!("key-{:06}", (n * 7919) % keys))
        .collect();
    c.benchmark_group(GROUP).bench_function(id, |b| {
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || (),
                |()| {
                    let mut map = LwwMap::new();
                    for name in &names {
                        map.set(name, serde_json::Value::from(1), stamp.clone())
                            .unwrap();
                    }
                    map
                },
                |map| assert_eq!(map.to_record().len(), keys),
            )
        })
    });
}

/// Records written as JSON text and read back from it, as every store but
/// memory and every transport does: `write_json` of each record into one
/// buffer, and `Record::from_stored_json` of each record's text, with every
/// check a record from outside gets.
fn record_json(c: &mut Criterion, records: &[Record]) {
    if !selected(JSON_WRITE) && !selected(JSON_READ) {
        return;
    }
    let records = &records[..JSON_RECORDS.min(records.len())];
    let texts: Vec<String> = records.iter().map(Record::to_json_string).collect();
    let mut group = c.benchmark_group(GROUP);
    group.bench_function(JSON_WRITE, |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || String::with_capacity(texts.iter().map(String::len).sum()),
                |mut out| {
                    for record in records {
                        record.write_json(&mut out);
                    }
                    out
                },
            )
        })
    });
    group.bench_function(JSON_READ, |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || (),
                |()| {
                    texts
                        .iter()
                        .map(|text| Record::from_stored_json(text).unwrap())
                        .collect::<Vec<_>>()
                },
            )
        })
    });
}

fn w2_sync_into_empty(c: &mut Criterion, rt: &Runtime, records: &[Record], id: &str) {
    c.benchmark_group(GROUP).bench_function(id, |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || {
                    let target = rt.block_on(engine("w2", MemoryBackend::new()));
                    (target, records.to_vec())
                },
                |(target, batch)| {
                    let result = rt.block_on(target.sync(COLLECTION, batch)).unwrap();
                    assert_eq!(result.added, records.len());
                    target
                },
            )
        })
    });
}

fn w3_sync_diverged(c: &mut Criterion, rt: &Runtime, base: &[Record], id: &str) {
    let shape = Shape::of(base.len());
    // Criterion calls the closure below once per sample (and to warm up), so
    // the diverged sides are built on its first call and kept: built once,
    // and not at all in a run that filters this row out.
    let mut sides = None;
    c.benchmark_group(GROUP).bench_function(id, |b| {
        let sides = sides.get_or_insert_with(|| diverge_shaped(rt, base, shape));
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || sides.fresh(rt),
                |(receiver, batch)| {
                    let result = rt.block_on(receiver.sync(COLLECTION, batch)).unwrap();
                    (receiver, result)
                },
                |(receiver, result)| {
                    // Sender-only and overlapping records change; the
                    // receiver's own newer edits and untouched records do not.
                    assert_eq!(result.updated, shape.each_side);
                    assert_eq!(result.unchanged, shape.records - shape.each_side);
                    assert_no_edit_lost_shaped(rt, receiver, shape);
                },
            )
        })
    });
}

/// W4's two replicas holding the same `size` records, and the sender's
/// change-feed cursor past all of them.
///
/// Each holds records of its own, as replicas in two processes do. Records
/// shared between the two stores would make the sender's (untimed) edit of
/// a record bring the receiver's copy into cache just before the timed
/// sync reads it: at a million records, W4 then read 3.3 lines from memory
/// a change where the floor, whose records are its own, reads 7.2.
struct Replicas {
    sender: SyncEngine,
    receiver: SyncEngine,
    cursor: Cursor,
}

impl Replicas {
    fn new(rt: &Runtime, size: usize) -> Replicas {
        let sender = rt.block_on(engine_holding("sender", &w4_base(size)));
        let receiver = rt.block_on(engine_holding("receiver", &w4_base(size)));
        let cursor = rt.block_on(feed_head(&sender));
        Replicas {
            sender,
            receiver,
            cursor,
        }
    }
}

/// The `size` records each of W4's replicas, and its floor's table, start
/// with. Made directly in core: a million puts would only slow the setup down.
fn w4_base(size: usize) -> Vec<Record> {
    let maker = ClientId::new("maker").unwrap();
    (0..size)
        .map(|i| person_record(&Person::nth(i), 1_700_000_000_000 + i as u64, &maker))
        .collect()
}

/// `person` as a new record written at `millis` by `client`.
fn person_record(person: &Person, millis: u64, client: &ClientId) -> Record {
    let content = Content::from_value(serde_json::to_value(person).unwrap()).unwrap();
    Record::create(content, Stamp::new(millis, 0, client.clone()).unwrap())
}

/// W4's floor: the records of a collection of `size` by id (foldhash, as
/// the memory store hashes; ids this short are held in the table's entry
/// itself, as the store's slot leads to the record that holds its id).
fn replace_table(size: usize) -> foldhash::HashMap<RecordId, Record> {
    w4_base(size)
        .into_iter()
        .map(|r| (r.id().clone(), r))
        .collect()
}

/// The changed records of round `round` of W4's floor: the people W4's
/// sender edits in that round ([`spread_edits`]).
fn replacements(size: usize, round: usize) -> Vec<Record> {
    let editor = ClientId::new("sender").unwrap();
    spread_edits(size, round)
        .map(|person| person_record(&person, 1_800_000_000_000 + round as u64, &editor))
        .collect()
}

/// W4's floor itself: each of `changed` looked up by id, told apart from
/// the record it changes (by versions, then stamps: a later round may
/// change a record again with equal versions), and put in that record's
/// place; the replaced record is freed, as a sync frees the record it
/// replaces. Returns how many were replaced.
fn replace_floor(table: &mut foldhash::HashMap<RecordId, Record>, changed: Vec<Record>) -> usize {
    let mut replaced = 0;
    for record in changed {
        if let Some(held) = table.get_mut(record.id()) {
            if *held != record {
                *held = record;
                replaced += 1;
            }
        }
    }
    replaced
}

/// The floor of W4 at `size` records: each iteration replaces the 100
/// records W4's sender would change (made outside the timing), so that what
/// a larger collection adds to a change can be set against what it adds to
/// the least a change costs.
fn baseline_replace(c: &mut Criterion, size: usize, id: &str) {
    let mut table = None;
    let mut round = 0usize;
    c.benchmark_group(GROUP).bench_function(id, |b| {
        let table = table.get_or_insert_with(|| replace_table(size));
        b.iter_custom(|iters| {
            timed(
                iters,
                || {
                    round += 1;
                    replacements(size, round)
                },
                |changed| {
                    let replaced = replace_floor(table, changed);
                    assert_eq!(replaced, INCREMENTAL);
                },
            )
        })
    });
}

/// Two replicas holding the same `size` records; each iteration the sender
/// makes 100 edits (untimed), and the receiver reads them from the sender's
/// change feed and syncs them (timed).
///
/// The receiver syncs copies of the records (made untimed), as from another
/// process: had it stored the sender's records themselves, the sender's edit
/// of one of them in a later round (from round `size / 100` on, edits come
/// back to records changed before) would bring the receiver's copy into
/// cache just before the timed sync reads it.
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
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                rt.block_on(edit_spread(sender, size, round));
                let started = Instant::now();
                let page = black_box(rt.block_on(feed_page(sender, cursor)));
                total += started.elapsed();
                let copies = received(&page);
                let started = Instant::now();
                let result = black_box(rt.block_on(receiver.sync(COLLECTION, copies)));
                total += started.elapsed();
                assert_eq!(result.unwrap().updated, INCREMENTAL);
            }
            total
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
/// Prints the records the run handled, for counts per record.
fn profile(rt: &Runtime, row: &str) {
    // W4 and its floor: rounds of 100 changes, each made outside the
    // recording, as the benchmark's iterations are.
    let w4_size = |name: &str| {
        let suffix = row.strip_prefix(name)?;
        W4_SIZES
            .iter()
            .find(|(_, s)| *s == suffix)
            .map(|(size, _)| *size)
    };
    if let Some(size) = w4_size(W4) {
        let Replicas {
            sender,
            receiver,
            mut cursor,
        } = Replicas::new(rt, size);
        for round in 1..=W4_ROUNDS {
            rt.block_on(edit_spread(&sender, size, round));
            let page = profiled(|| rt.block_on(feed_page(&sender, &mut cursor)));
            let copies = received(&page);
            let result = profiled(|| rt.block_on(receiver.sync(COLLECTION, copies)));
            assert_eq!(result.unwrap().updated, INCREMENTAL);
        }
        println!("profiled {row}: {} records", W4_ROUNDS * INCREMENTAL);
        return;
    }
    if let Some(size) = w4_size(BASELINE_REPLACE) {
        let mut table = replace_table(size);
        for round in 1..=W4_ROUNDS {
            let changed = replacements(size, round);
            let replaced = profiled(|| replace_floor(&mut table, changed));
            assert_eq!(replaced, INCREMENTAL);
        }
        println!("profiled {row}: {} records", W4_ROUNDS * INCREMENTAL);
        return;
    }
    let Some((workload, size)) = [W1, W2, W3, BASELINE_PUT, BASELINE_LOOKUP]
        .iter()
        .find_map(|w| {
            let suffix = row.strip_prefix(w)?;
            let (size, _) = SIZES.iter().find(|(_, s)| *s == suffix)?;
            Some((*w, *size))
        })
    else {
        panic!("no profile for row {row:?}: w1_put, w2_sync_empty, w3_sync_crdt, baseline_put or baseline_lookup, each with _10k, _1m or no suffix, or w4_incremental or baseline_replace with _1k or _1m");
    };
    match workload {
        BASELINE_PUT => {
            let people: Vec<Person> = (0..size).map(Person::nth).collect();
            profiled(|| put_floor(&people));
        }
        BASELINE_LOOKUP => {
            let base = written_records(rt, "writer", size);
            let sides = diverge_shaped(rt, &base, Shape::of(size));
            drop(base);
            let local = lookup_table(&sides.local);
            profiled(|| lookup_floor(&local, &sides.remote));
        }
        W1 => {
            let people: Vec<Person> = (0..size).map(Person::nth).collect();
            let target = rt.block_on(engine("w1", MemoryBackend::new()));
            profiled(|| {
                rt.block_on(async {
                    for person in &people {
                        target.put(COLLECTION, person).await.unwrap();
                    }
                })
            });
        }
        W2 => {
            let base = written_records(rt, "writer", size);
            let target = rt.block_on(engine("w2", MemoryBackend::new()));
            let result = profiled(|| rt.block_on(target.sync(COLLECTION, base)).unwrap());
            assert_eq!(result.added, size);
        }
        _ => {
            let shape = Shape::of(size);
            let base = written_records(rt, "writer", size);
            let sides = diverge_shaped(rt, &base, shape);
            drop(base);
            // As the timed row syncs: copies the sync frees.
            let (receiver, batch) = sides.fresh(rt);
            let result = profiled(|| rt.block_on(receiver.sync(COLLECTION, batch)).unwrap());
            assert_eq!(result.updated, shape.each_side);
            assert_no_edit_lost_shaped(rt, &receiver, shape);
        }
    }
    println!("profiled {row}: {size} records");
}

fn main() {
    let since = SystemTime::now();
    let rt = runtime();
    if let Some(row) = std::env::var_os("SYNCFORGE_BENCH_PROFILE") {
        profile(&rt, &row.to_string_lossy());
        return;
    }
    let mut c = support::criterion();
    // W1 to W3 at three sizes, so that the cost per record is seen to stay
    // flat as collections grow. Each size's records are made only if a row
    // of it runs.
    for (size, suffix) in SIZES {
        let rows = [BASELINE, BASELINE_LOOKUP, W1, W2, W3].map(|row| format!("{row}{suffix}"));
        let wanted = rows.iter().any(|row| selected(row))
            || size == RECORDS
                && [BASELINE_PUT, JSON_WRITE, JSON_READ]
                    .iter()
                    .any(|row| selected(row));
        if !wanted {
            continue;
        }
        let base = written_records(&rt, "writer", size);
        // The floor of each size: what touching every record once and one
        // hash insert cost there, in and out of cache alike.
        baseline(&mut c, &base, &rows[0]);
        baseline_lookup(&mut c, &rt, &base, &rows[1]);
        if size == RECORDS {
            baseline_put(&mut c);
            record_json(&mut c, &base);
        }
        w1_put(&mut c, &rt, size, &rows[2]);
        w2_sync_into_empty(&mut c, &rt, &base, &rows[3]);
        w3_sync_diverged(&mut c, &rt, &base, &rows[4]);
    }
    for (size, suffix) in W4_SIZES {
        w4_incremental(&mut c, &rt, size, &format!("{W4}{suffix}"));
        baseline_replace(&mut c, size, &format!("{BASELINE_REPLACE}{suffix}"));
    }
    for (fields, id) in WIDE {
        w1_put_wide(&mut c, &rt, fields, id);
    }
    for (keys, id) in LWW_MAP {
        lww_map_set(&mut c, keys, id);
    }
    c.final_summary();
    support::report_medians(
        GROUP,
        &[
            (BASELINE, RECORDS),
            (BASELINE_LOOKUP, RECORDS),
            (BASELINE_PUT, RECORDS),
            (JSON_WRITE, JSON_RECORDS),
            (JSON_READ, JSON_RECORDS),
            ("baseline_hashmap_10k", 10_000),
            ("baseline_hashmap_1m", 1_000_000),
            ("baseline_lookup_10k", 10_000),
            ("baseline_lookup_1m", 1_000_000),
            ("w1_put", RECORDS),
            ("w2_sync_empty", RECORDS),
            ("w3_sync_crdt", RECORDS),
            ("w1_put_10k", 10_000),
            ("w2_sync_empty_10k", 10_000),
            ("w3_sync_crdt_10k", 10_000),
            ("w1_put_1m", 1_000_000),
            ("w2_sync_empty_1m", 1_000_000),
            ("w3_sync_crdt_1m", 1_000_000),
            ("w4_incremental_1k", INCREMENTAL),
            ("w4_incremental_1m", INCREMENTAL),
            ("baseline_replace_1k", INCREMENTAL),
            ("baseline_replace_1m", INCREMENTAL),
            (WIDE[0].1, WIDE[0].0),
            (WIDE[1].1, WIDE[1].0),
            (LWW_MAP[0].1, LWW_MAP[0].0),
            (LWW_MAP[1].1, LWW_MAP[1].0),
        ],
        since,
    );
}
