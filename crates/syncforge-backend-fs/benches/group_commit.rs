//! Group commit at the backend: 10,000 records written durably as 10,000
//! `put` calls, and as `put_batch` calls of 100 (the engine's default batch
//! size, what a sync of 10,000 records does), each also followed by `close`,
//! whose checkpoint writes and syncs the record files: the first two rows
//! time what callers wait for, the last two the whole cost. Each iteration
//! writes into a fresh store in the target directory's scratch space, on the
//! disk the build uses (not a tmpfs), so syncs reach the device. The last
//! lines printed are the ratios of the medians; `SYNCFORGE_BENCH_RECORDS`
//! changes the count.

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::Criterion;
use serde_json::json;
use syncforge_backend_fs::{Durability, FsBackend, FsOptions};
use syncforge_core::{CollectionName, Content, Record, Stamp, StorageBackend, Write};
use tokio::runtime::Runtime;

const BATCH: usize = 100;

fn record_count() -> usize {
    std::env::var("SYNCFORGE_BENCH_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

/// The `i`-th record: a person of six fields, about 300 bytes of JSON.
fn person(i: usize) -> Record {
    let stamp = Stamp::new(1_700_000_000_000 + i as u64, 0, "bench").unwrap();
    let value = json!({
        "id": format!("person-{i:08}"),
        "name": format!("Name {i}"),
        "age": 18 + i % 70,
        "email": format!("user{i}@example.com"),
        "tags": [format!("tag-{}", i % 10), format!("group-{}", i % 7)],
        "score": (i % 1000) as f64 / 10.0,
    });
    Record::create(Content::from_value(value).unwrap(), &stamp)
}

fn scratch() -> tempfile::TempDir {
    let parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("group-commit");
    std::fs::create_dir_all(&parent).unwrap();
    tempfile::tempdir_in(parent).unwrap()
}

/// Times one way of writing every record into a fresh durable store, and
/// closing it (checkpoint included) when `close`.
fn run(rt: &Runtime, records: &[Record], batch: usize, close: bool) -> Duration {
    let dir = scratch();
    let collection = CollectionName::new("people").unwrap();
    let store = rt
        .block_on(FsBackend::open_with(
            dir.path(),
            FsOptions::default().durability(Durability::Full),
        ))
        .unwrap();
    let writes: Vec<Write> = records.iter().cloned().map(Write::create).collect();
    let started = Instant::now();
    rt.block_on(async {
        for chunk in writes.chunks(batch) {
            if let [one] = chunk {
                store.put(&collection, one).await.unwrap();
            } else {
                store.put_batch(&collection, chunk).await.unwrap();
            }
        }
        if close {
            store.close().await.unwrap();
        }
    });
    let elapsed = started.elapsed();
    drop(store);
    elapsed
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let records: Vec<Record> = (0..record_count()).map(person).collect();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1))
        .without_plots()
        .configure_from_args();
    let mut medians = Vec::new();
    for (name, batch, close) in [
        ("puts_durable", 1, false),
        ("batches_of_100_durable", BATCH, false),
        ("puts_durable_and_close", 1, true),
        ("batches_of_100_durable_and_close", BATCH, true),
    ] {
        let mut samples = Vec::new();
        c.benchmark_group("group_commit")
            .sample_size(10)
            .bench_function(name, |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let took = run(&rt, &records, batch, close);
                            samples.push(took);
                            took
                        })
                        .sum()
                })
            });
        // Empty when a filter on the command line skipped the row.
        if !samples.is_empty() {
            medians.push((name, median(&mut samples)));
        }
    }
    c.final_summary();
    let count = records.len();
    for (name, took) in &medians {
        println!(
            "{name}: {count} records in {took:?} ({:.1} µs per record)",
            took.as_secs_f64() * 1e6 / count as f64
        );
    }
    for pair in medians.chunks(2) {
        if let [(puts_name, puts), (batches_name, batches)] = pair {
            println!(
                "{batches_name} vs {puts_name}: {:.1}x faster",
                puts.as_secs_f64() / batches.as_secs_f64()
            );
        }
    }
    std::fs::remove_dir(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("group-commit")).ok();
}
