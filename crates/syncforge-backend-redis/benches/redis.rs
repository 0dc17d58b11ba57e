//! Benchmarks of the Redis backend against a real server, run by
//! `cargo xtask bench` (which starts the standalone test server and prints
//! these rows in its table):
//!
//! * put 10,000 new records one by one, as the engine's `put` does it: one
//!   insert-if-absent script each (one round trip);
//! * sync 10,000 records into an empty collection, as the engine's `sync`
//!   does it with its default batch of 100: one `get_many` and one
//!   conditional `put_batch` per batch, each batch read while the one
//!   before it is written;
//! * an incremental sync of 100 changes — read from the sender's change
//!   feed, synced into the receiver — with collections of 1,000 and of
//!   100,000 records;
//! * `get_all` of 10,000 records;
//! * `redis-benchmark -q -P 100 -t hset` on the same server, the ceiling of
//!   what the server takes in pipelined single writes.
//!
//! The server is `SYNCFORGE_BENCH_REDIS_URL`, else `SYNCFORGE_TEST_REDIS_URL`,
//! else `redis://127.0.0.1:6391/0`. Each run writes under a key prefix of
//! its own and clears its collections afterwards; `redis-benchmark` writes
//! its own key `myhash` in database 0 (it has no prefix of its own, and is
//! given no password: point the bench at a server of its own, as `cargo
//! xtask bench` does). Every workload is set up
//! outside the timing (`iter_custom`). The engine itself lives in the
//! `syncforge` crate; these loops make the same backend calls it makes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::fs::OpenOptions;
use std::hint::black_box;
use std::io::Write as _;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::Criterion;
use serde_json::json;
use syncforge_backend_redis::{RedisBackend, RedisConfig};
use syncforge_core::{
    classify, ChangeKind, ClientId, CollectionName, ConflictStrategy, Content, Cursor, Hlc,
    IfAbsent, Record, RecordId, StorageBackend, Stored, Write, WriteOutcome,
};
use tokio::runtime::Runtime;

const GROUP: &str = "redis";
/// The engine's default batch size.
const BATCH: usize = 100;
const INCREMENTAL: usize = 100;

fn quick() -> bool {
    std::env::var_os("SYNCFORGE_BENCH_QUICK").is_some_and(|v| v != "0" && !v.is_empty())
}

fn out_dir() -> PathBuf {
    std::env::var_os("SYNCFORGE_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/syncforge-bench")
        })
}

fn criterion() -> Criterion {
    let base = Criterion::default()
        .output_directory(&out_dir().join("criterion"))
        .without_plots();
    let tuned = if quick() {
        base.sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_millis(10))
    } else {
        base.sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
    };
    tuned.configure_from_args()
}

/// Appends `row \t records \t median ns` to the summary `cargo xtask bench` reads.
fn report(row: &str, records: usize, median_ns: f64) {
    let dir = out_dir();
    let appended = std::fs::create_dir_all(&dir).and_then(|()| {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("summary.tsv"))?;
        writeln!(file, "{row}\t{records}\t{median_ns:.0}")
    });
    if let Err(error) = appended {
        eprintln!(
            "could not write the bench summary to {}: {error}",
            dir.display()
        );
    }
}

/// Criterion's median for `id` of this run (started at `since`), if any.
fn median_ns(id: &str, since: SystemTime) -> Option<f64> {
    let path = out_dir()
        .join("criterion")
        .join(GROUP)
        .join(id)
        .join("new/estimates.json");
    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    if modified < since {
        return None;
    }
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    value["median"]["point_estimate"].as_f64()
}

fn server() -> RedisConfig {
    let url = ["SYNCFORGE_BENCH_REDIS_URL", "SYNCFORGE_TEST_REDIS_URL"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "redis://127.0.0.1:6391/0".to_owned());
    let mut config = RedisConfig::from_url(&url).unwrap();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    config.key_prefix = format!("sfbench-{nanos:x}");
    config
}

/// The `i`-th person, the record every workload of the project writes.
fn person(hlc: &mut Hlc, i: usize) -> Record {
    let content = json!({
        "id": format!("person-{i:08}"),
        "name": format!("Name {i}"),
        "age": 18 + (i % 70),
        "email": format!("user{i}@example.com"),
        "tags": [format!("tag-{}", i % 10), format!("group-{}", i % 7)],
        "score": (i % 1000) as f64 / 10.0,
    });
    Record::create(Content::from_value(content).unwrap(), hlc.now().unwrap())
}

fn people(client: &str, count: usize) -> Vec<Record> {
    let mut hlc = Hlc::new(ClientId::new(client).unwrap());
    (0..count).map(|i| person(&mut hlc, i)).collect()
}

/// The engine's `sync`: per batch one `get_many`, a merge of each record,
/// one conditional `put_batch` of what changed; each batch is read while the
/// one before it is written.
async fn sync(store: &RedisBackend, collection: &CollectionName, incoming: &[Record]) -> usize {
    let ids_of = |chunk: &[Record]| chunk.iter().map(|r| r.id().clone()).collect::<Vec<_>>();
    let mut chunks = incoming.chunks(BATCH);
    let Some(mut chunk) = chunks.next() else {
        return 0;
    };
    let mut locals = store.get_many(collection, &ids_of(chunk)).await.unwrap();
    let mut written = 0;
    loop {
        let following = chunks.next();
        let following_ids = following.map(ids_of);
        let read_ahead = async {
            match &following_ids {
                Some(ids) => Some(store.get_many(collection, ids).await.unwrap()),
                None => None,
            }
        };
        let write = async {
            let writes = merged_writes(collection, chunk, locals);
            store.put_batch(collection, &writes).await.unwrap()
        };
        let (read, outcomes) = tokio::join!(read_ahead, write);
        for outcome in outcomes {
            assert!(
                matches!(outcome, WriteOutcome::Written { .. }),
                "no race here"
            );
            written += 1;
        }
        match (following, read) {
            (Some(next), Some(next_locals)) => (chunk, locals) = (next, next_locals),
            _ => return written,
        }
    }
}

/// The conditional writes of what `chunk` changes in the stored `locals`.
fn merged_writes(
    collection: &CollectionName,
    chunk: &[Record],
    locals: Vec<Option<Stored>>,
) -> Vec<Write> {
    let mut writes = Vec::with_capacity(chunk.len());
    for (remote, local) in chunk.iter().zip(locals) {
        let classified = classify(
            collection,
            local.as_ref().map(|s| &s.record),
            remote.clone(),
            ConflictStrategy::Crdt,
        )
        .unwrap();
        if classified.kind != ChangeKind::Unchanged {
            writes.push(Write {
                record: classified.merged,
                expected: local.map(|s| s.token),
            });
        }
    }
    writes
}

/// The engine's `put`: the record offered to the insert script, which
/// writes it if absent and otherwise answers the stored one, to be written
/// over conditionally.
async fn put_one(store: &RedisBackend, collection: &CollectionName, record: &Record) {
    let answer = store
        .insert_if_absent(collection, record.id(), &mut || Ok(record.clone()))
        .await
        .unwrap()
        .unwrap();
    if let IfAbsent::Present(stored) = answer {
        let write = Write::replace(record.clone(), stored.token);
        let outcome = store.put(collection, &write).await.unwrap();
        assert!(matches!(outcome, WriteOutcome::Written { .. }));
    }
}

/// Fresh collection names for one workload.
struct Names {
    prefix: &'static str,
    next: usize,
}

impl Names {
    fn next(&mut self) -> CollectionName {
        self.next += 1;
        CollectionName::new(format!("{}-{}", self.prefix, self.next)).unwrap()
    }
}

fn put_one_by_one(c: &mut Criterion, rt: &Runtime, store: &RedisBackend, count: usize) {
    let records = people("putter", count);
    let mut names = Names {
        prefix: "put",
        next: 0,
    };
    c.benchmark_group(GROUP)
        .bench_function("redis_put_10k_one_by_one", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let collection = names.next();
                    let started = Instant::now();
                    rt.block_on(async {
                        for record in &records {
                            put_one(store, &collection, record).await;
                        }
                    });
                    total += started.elapsed();
                    rt.block_on(store.clear_collection(&collection)).unwrap();
                }
                total
            });
        });
}

fn sync_into_empty(c: &mut Criterion, rt: &Runtime, store: &RedisBackend, count: usize) {
    let records = people("remote", count);
    let mut names = Names {
        prefix: "sync",
        next: 0,
    };
    c.benchmark_group(GROUP)
        .bench_function("redis_sync_10k_empty", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let collection = names.next();
                    // Records as they arrive over the wire: copies of their JSON.
                    let incoming: Vec<Record> = records
                        .iter()
                        .map(|r| Record::from_json(r.to_json()).unwrap())
                        .collect();
                    let started = Instant::now();
                    let written = rt.block_on(sync(store, &collection, &incoming));
                    total += started.elapsed();
                    assert_eq!(written, count);
                    rt.block_on(store.clear_collection(&collection)).unwrap();
                }
                total
            });
        });
}

fn get_all(c: &mut Criterion, rt: &Runtime, store: &RedisBackend, count: usize) {
    let collection = CollectionName::new("get-all").unwrap();
    let writes: Vec<Write> = people("reader", count)
        .into_iter()
        .map(Write::create)
        .collect();
    rt.block_on(store.put_batch(&collection, &writes)).unwrap();
    c.benchmark_group(GROUP)
        .bench_function("redis_get_all_10k", |b| {
            b.iter(|| {
                let all = rt.block_on(store.get_all(&collection)).unwrap();
                assert_eq!(all.len(), count);
                black_box(all)
            });
        });
    rt.block_on(store.clear_collection(&collection)).unwrap();
}

/// 100 changes spread over a sender holding `size` records, read from its
/// feed and synced into a receiver holding the same records. Only the feed
/// read and the sync are timed; the edits are made before.
fn incremental(c: &mut Criterion, rt: &Runtime, store: &RedisBackend, size: usize, id: &str) {
    let sender = CollectionName::new(format!("{id}-sender")).unwrap();
    let receiver = CollectionName::new(format!("{id}-receiver")).unwrap();
    let records = people("origin", size);
    let mut cursor = Cursor::START;
    rt.block_on(async {
        for chunk in records.chunks(1_000) {
            let writes: Vec<Write> = chunk.iter().cloned().map(Write::create).collect();
            for outcome in store.put_batch(&sender, &writes).await.unwrap() {
                if let WriteOutcome::Written { cursor: c, .. } = outcome {
                    cursor = cursor.max(c);
                }
            }
            store.put_batch(&receiver, &writes).await.unwrap();
        }
    });
    let mut editor = Hlc::new(ClientId::new("editor").unwrap());
    let mut round = 0;
    c.benchmark_group(GROUP).bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                rt.block_on(async {
                    let ids: Vec<RecordId> = (0..INCREMENTAL)
                        .map(|k| {
                            records[(k * size / INCREMENTAL + round) % size]
                                .id()
                                .clone()
                        })
                        .collect();
                    let stored = store.get_many(&sender, &ids).await.unwrap();
                    let edits: Vec<Write> = stored
                        .into_iter()
                        .map(|s| {
                            let s = s.unwrap();
                            editor.observe(s.record.newest_stamp()).unwrap();
                            let mut next = s.record.clone();
                            let mut content = next.content();
                            content.insert(
                                "email".to_owned(),
                                json!(format!("round{round}@example.org")),
                            );
                            next.apply_put(
                                Content::from_value(content.into()).unwrap(),
                                &editor.now().unwrap(),
                            )
                            .unwrap();
                            Write::replace(next, s.token)
                        })
                        .collect();
                    store.put_batch(&sender, &edits).await.unwrap();
                });
                let started = Instant::now();
                let written = rt.block_on(async {
                    let page = store
                        .changes(&sender, cursor, NonZeroUsize::new(INCREMENTAL).unwrap())
                        .await
                        .unwrap();
                    cursor = page.next;
                    let incoming: Vec<Record> = page.into_iter().collect();
                    sync(store, &receiver, &incoming).await
                });
                total += started.elapsed();
                assert_eq!(written, INCREMENTAL);
            }
            total
        });
    });
    rt.block_on(async {
        store.clear_collection(&sender).await.unwrap();
        store.clear_collection(&receiver).await.unwrap();
    });
}

/// `redis-benchmark -q -P 100 -t hset` on the same server: requests per second.
fn redis_benchmark(config: &RedisConfig, requests: usize) -> Option<f64> {
    let child = Command::new("redis-benchmark")
        .args(["-h", &config.host, "-p", &config.port.to_string()])
        .args(["-q", "-P", "100", "-t", "hset", "-n", &requests.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let output = syncforge_testkit::processes::finish(child, Duration::from_secs(300)).ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // `-q` redraws a progress line with '\r'; the last one has the result.
    let line = text.split(['\r', '\n']).rfind(|l| l.starts_with("HSET:"))?;
    line.trim_start_matches("HSET:")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() {
    let since = SystemTime::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = server();
    let store = match rt.block_on(RedisBackend::connect(config.clone())) {
        Ok(store) => store,
        Err(error) => {
            eprintln!(
                "SKIPPED: the redis benchmarks need a server ({error}); `cargo xtask bench` starts one"
            );
            return;
        }
    };
    let quick = quick();
    let (many, large) = if quick {
        (1_000, 10_000)
    } else {
        (10_000, 100_000)
    };
    let mut c = criterion();
    put_one_by_one(&mut c, &rt, &store, many);
    sync_into_empty(&mut c, &rt, &store, many);
    get_all(&mut c, &rt, &store, many);
    incremental(&mut c, &rt, &store, 1_000, "redis_incremental_100_into_1k");
    incremental(
        &mut c,
        &rt,
        &store,
        large,
        "redis_incremental_100_into_100k",
    );
    c.final_summary();
    rt.block_on(store.close()).unwrap();

    for (id, records) in [
        ("redis_put_10k_one_by_one", many),
        ("redis_sync_10k_empty", many),
        ("redis_get_all_10k", many),
        ("redis_incremental_100_into_1k", INCREMENTAL),
        ("redis_incremental_100_into_100k", INCREMENTAL),
    ] {
        match median_ns(id, since) {
            Some(ns) => report(id, records, ns),
            None => eprintln!("no median for {GROUP}/{id} (filtered out or not measured)"),
        }
    }
    let requests = if quick { 100_000 } else { 1_000_000 };
    match redis_benchmark(&config, requests) {
        Some(per_second) => {
            println!("redis-benchmark -q -P 100 -t hset: {per_second:.0} requests/s");
            report(
                "redis_benchmark_hset",
                requests,
                requests as f64 * 1e9 / per_second,
            );
        }
        None => eprintln!("redis-benchmark did not run or its output was not understood"),
    }
}
