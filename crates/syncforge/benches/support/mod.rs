//! Shared by the bench binaries: the benchmark record, criterion settings for
//! the quick and full modes, and the summary file `cargo xtask bench` reads.
//!
//! Each binary lets criterion time its workloads, then reads criterion's own
//! median of the run (`new/estimates.json`) and appends one line per row to
//! `summary.tsv` in the output directory: `row \t records per iteration \t
//! median ns per iteration`, or `row \t value \t figure` for a figure that is
//! not a timing, or `row \t requests \t requests per record`. The xtask
//! turns those lines into the table.

#![allow(dead_code, unreachable_pub)]

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use serde::Serialize;
use syncforge::core::{StorageBackend, Write};
use syncforge::{
    ChangePage, CollectionName, ConflictStrategy, Cursor, MemoryBackend, PageOptions, Record,
    SyncEngine,
};
use tokio::runtime::Runtime;

pub mod w3;

/// The collection every workload writes.
pub const COLLECTION: &str = "people";
/// Records of W1, W2, W3 and the baseline.
pub const RECORDS: usize = 100_000;

/// The record every workload writes: `{id, name, age, email, tags, score}`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Person {
    pub id: String,
    pub name: String,
    pub age: u32,
    pub email: String,
    pub tags: [String; 2],
    pub score: f64,
}

impl Person {
    /// The `i`-th person: deterministic, distinct per `i`.
    pub fn nth(i: usize) -> Person {
        Person {
            id: format!("person-{i:08}"),
            name: format!("Name {i}"),
            age: 18 + (i % 70) as u32,
            email: format!("user{i}@example.com"),
            tags: [format!("tag-{}", i % 10), format!("group-{}", i % 7)],
            score: (i % 1000) as f64 / 10.0,
        }
    }
}

/// Whether `SYNCFORGE_BENCH_QUICK` asks for the short everyday run.
pub fn quick() -> bool {
    std::env::var_os("SYNCFORGE_BENCH_QUICK").is_some_and(|v| v != "0" && !v.is_empty())
}

/// Where summaries and criterion's data go: `SYNCFORGE_BENCH_OUT`, else
/// `target/syncforge-bench` of the main workspace.
pub fn out_dir() -> PathBuf {
    std::env::var_os("SYNCFORGE_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/syncforge-bench")
        })
}

/// Criterion configured for the mode. Every workload sets itself up outside
/// the timing (`iter_custom`), so warm-up and measurement times are kept short
/// enough that criterion takes one iteration per sample: the wall time is then
/// dominated by the setups, which the quick mode keeps few.
pub fn criterion() -> Criterion {
    let base = Criterion::default()
        .output_directory(&out_dir().join("criterion"))
        .without_plots();
    let tuned = if quick() {
        base.sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_millis(10))
            .nresamples(10_000)
    } else {
        base.sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
    };
    tuned.configure_from_args()
}

/// Criterion's median time per iteration of `group/id`, in ns, if this run
/// (started at `since`) measured it: an older file is a previous run's.
pub fn median_ns(group: &str, id: &str, since: SystemTime) -> Option<f64> {
    let path = out_dir()
        .join("criterion")
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    if modified < since {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["median"]["point_estimate"].as_f64()
}

/// Appends one row to the summary: `records` per iteration, median ns per iteration.
pub fn report(row: &str, records: usize, median_ns: f64) {
    write_line(&format!("{row}\t{records}\t{median_ns:.0}"));
}

/// Appends a figure that is not a rate (peak memory in bytes, a plain ratio).
pub fn report_value(row: &str, value: f64) {
    write_line(&format!("{row}\tvalue\t{value}"));
}

/// Appends a count of requests per record (the S3 backend's rows against a
/// server whose own speed would make a rate meaningless).
pub fn report_requests(row: &str, requests: u64, records: usize) {
    let per_record = requests as f64 / records as f64;
    write_line(&format!("{row}\trequests\t{per_record}"));
}

fn write_line(line: &str) {
    let dir = out_dir();
    let appended = std::fs::create_dir_all(&dir).and_then(|()| {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("summary.tsv"))?;
        writeln!(file, "{line}")
    });
    if let Err(error) = appended {
        eprintln!(
            "could not write the bench summary to {}: {error}",
            dir.display()
        );
    }
}

/// Reports every `(group, id, records)` whose median this run produced.
/// Running without `--bench` (as `cargo test --benches` does) produces none.
pub fn report_medians(group: &str, rows: &[(&str, usize)], since: SystemTime) {
    for (id, records) in rows {
        match median_ns(group, id, since) {
            Some(ns) => report(id, *records, ns),
            None => eprintln!("no median for {group}/{id} (filtered out or not measured)"),
        }
    }
}

/// Peak resident set size of this process so far, in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Edits per round of the incremental workloads (W4 and its fs twin).
pub const INCREMENTAL: usize = 100;

/// One round of incremental edits on `sender`: the people of
/// [`spread_edits`], put.
pub async fn edit_spread(sender: &SyncEngine, size: usize, round: usize) {
    for person in spread_edits(size, round) {
        sender.put(COLLECTION, &person).await.unwrap();
    }
}

/// The people one round of incremental edits changes: [`INCREMENTAL`] of
/// them spread over a collection of `size`, each given an email naming the
/// round.
pub fn spread_edits(size: usize, round: usize) -> impl Iterator<Item = Person> {
    (0..INCREMENTAL).map(move |k| {
        let mut person = Person::nth((k * size / INCREMENTAL + round) % size);
        person.email = format!("round{round}@example.org");
        person
    })
}

/// The end of `sender`'s change feed: the cursor after everything it holds.
pub async fn feed_head(sender: &SyncEngine) -> Cursor {
    let mut cursor = Cursor::START;
    loop {
        let page = sender
            .changes(COLLECTION, cursor, PageOptions::default().limit(100_000))
            .await
            .unwrap();
        cursor = page.next;
        if !page.more {
            return cursor;
        }
    }
}

/// Incremental sync: `sender`'s changes after `cursor`, read with the change
/// feed and applied to `receiver` with sync; the cursor moves past them.
pub async fn feed_and_sync(
    sender: &SyncEngine,
    receiver: &SyncEngine,
    cursor: &mut Cursor,
) -> syncforge::SyncResult {
    let page = feed_page(sender, cursor).await;
    receiver.sync(COLLECTION, page).await.unwrap()
}

/// One round's page of `sender`'s change feed after `cursor`, which moves
/// past it.
pub async fn feed_page(sender: &SyncEngine, cursor: &mut Cursor) -> ChangePage {
    let page = sender
        .changes(
            COLLECTION,
            *cursor,
            PageOptions::default().limit(INCREMENTAL),
        )
        .await
        .unwrap();
    *cursor = page.next;
    page
}

/// `page`'s records as another process receives them: copies sharing no
/// memory with the sender's.
pub fn received(page: &ChangePage) -> Vec<Record> {
    page.changes
        .iter()
        .map(|change| deep_copy(&change.record))
        .collect()
}

/// The benchmark collection as the storage layer names it.
pub fn collection() -> CollectionName {
    CollectionName::new(COLLECTION).unwrap()
}

pub async fn engine(client: &str, backend: impl StorageBackend + 'static) -> SyncEngine {
    SyncEngine::builder()
        .client_id(client)
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend(backend)
        .build()
        .await
        .unwrap()
}

/// An engine over a new memory store already holding `records` (written
/// straight into the backend, so building it costs no sync).
pub async fn engine_holding(client: &str, records: &[Record]) -> SyncEngine {
    let backend = MemoryBackend::new();
    let writes: Vec<Write> = records.iter().cloned().map(Write::create).collect();
    backend.put_batch(&collection(), &writes).await.unwrap();
    engine(client, backend).await
}

/// A copy sharing no memory with `record`, as a record received over the wire is.
pub fn deep_copy(record: &Record) -> Record {
    Record::from_json(record.to_json()).unwrap()
}

/// `setup` then `run` per iteration; only `run` is timed, and what it returns
/// is dropped after the clock stopped.
pub fn timed<I, O>(iters: u64, setup: impl FnMut() -> I, run: impl FnMut(I) -> O) -> Duration {
    timed_checked(iters, setup, run, |_| ())
}

/// [`timed`], with `check` run on each outcome after the clock stopped.
pub fn timed_checked<I, O>(
    iters: u64,
    mut setup: impl FnMut() -> I,
    mut run: impl FnMut(I) -> O,
    mut check: impl FnMut(&O),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let input = setup();
        let started = Instant::now();
        let output = black_box(run(input));
        total += started.elapsed();
        check(&output);
    }
    total
}

/// `count` records written by a replica called `client`, from `Person::nth(0..count)`.
pub fn written_records(rt: &Runtime, client: &str, count: usize) -> Vec<Record> {
    rt.block_on(async {
        let source = engine(client, MemoryBackend::new()).await;
        for i in 0..count {
            source.put(COLLECTION, &Person::nth(i)).await.unwrap();
        }
        source.get_all(COLLECTION).await.unwrap()
    })
}
