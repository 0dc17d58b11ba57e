//! Integration tests of the filesystem backend, in one binary: the conformance
//! suite, names, corruption, concurrency across handles and processes, and
//! the crash test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod concurrency;
mod conformance;
mod crash;
mod durability;
mod hostile;
mod names;
mod newest;
mod recovery;

use std::path::Path;
use std::process::Command;

use serde_json::json;
use std::num::NonZeroUsize;
use syncforge_backend_fs::FsBackend;

use syncforge_core::{
    ChangePage, CollectionName, Content, Cursor, Record, RecordId, Stamp, StorageBackend, Token,
    Write, WriteOutcome,
};

/// A collection name from a literal.
pub(crate) fn coll(name: &str) -> CollectionName {
    CollectionName::new(name).unwrap()
}

/// A record id from a literal.
pub(crate) fn rid(id: &str) -> RecordId {
    RecordId::new(id).unwrap()
}

/// A feed position, from a number or a cursor.
pub(crate) fn at(position: impl Into<CursorArg>) -> Cursor {
    position.into().0
}

/// What [`at`] takes.
pub(crate) struct CursorArg(Cursor);

impl From<u64> for CursorArg {
    fn from(n: u64) -> Self {
        CursorArg(Cursor::new(n))
    }
}

impl From<Cursor> for CursorArg {
    fn from(c: Cursor) -> Self {
        CursorArg(c)
    }
}

/// Record ids from literals.
pub(crate) fn rids(ids: &[&str]) -> Vec<RecordId> {
    ids.iter().map(|id| rid(id)).collect()
}

/// A page limit from a literal.
pub(crate) fn limit(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// A record holding `count`, stamped so that higher counts are newer.
pub(crate) fn counter(id: &str, count: u64) -> Record {
    let stamp = Stamp::new(1_000 + count, 0, "tester").unwrap();
    Record::create(
        Content::from_value(json!({"id": id, "count": count})).unwrap(),
        &stamp,
    )
}

/// The count a stored record holds.
pub(crate) fn count_of(record: &Record) -> u64 {
    record.get(&coll("count")).and_then(|v| v.as_u64()).unwrap()
}

/// Adds one to a counter record, re-reading and retrying on lost races, as
/// the engine does. Returns the count written.
pub(crate) async fn increment(
    store: &dyn StorageBackend,
    collection: &CollectionName,
    id: &str,
) -> u64 {
    increment_racing(store, collection, id).await.0
}

/// [`increment`], also returning how many races it lost: a test of
/// concurrent writers that lost none did not test them.
pub(crate) async fn increment_racing(
    store: &dyn StorageBackend,
    collection: &CollectionName,
    id: &str,
) -> (u64, u64) {
    let mut lost = 0;
    for _ in 0..10_000 {
        let current = store.get(collection, &rid(id)).await.unwrap();
        let (next, write) = match current {
            None => (1, Write::create(counter(id, 1))),
            Some(stored) => {
                let next = count_of(&stored.record) + 1;
                (next, Write::replace(counter(id, next), stored.token))
            }
        };
        match store.put(collection, &write).await.unwrap() {
            WriteOutcome::Written { .. } => return (next, lost),
            WriteOutcome::Conflict => {
                lost += 1;
                tokio::task::yield_now().await;
            }
        }
    }
    panic!("increment of {id} lost 10,000 races in a row");
}

/// A store in `dir` holding `r0`, `r1`, `r2` in "notes", with `r1`'s file
/// then torn by hand (cut off mid-JSON). Returns the store and that file.
pub(crate) async fn store_with_torn_r1(dir: &std::path::Path) -> (FsBackend, std::path::PathBuf) {
    let store = FsBackend::open(dir).await.unwrap();
    for n in 0..3 {
        put_any(&store, "notes", counter(&format!("r{n}"), n)).await;
    }
    store.checkpoint().await.unwrap();
    // As the store names it: its directory resolved (a temporary directory
    // may lie under a link).
    let broken = store.root().join("notes").join("r1.json");
    std::fs::write(&broken, b"{\"id\": \"r1\", \"count\": ").unwrap();
    (store, broken)
}

/// Writes `record` unconditionally enough for a test: creates it or replaces
/// whatever is stored. Returns the write's cursor.
pub(crate) async fn put_any(store: &FsBackend, collection: &str, record: Record) -> u64 {
    let collection = &coll(collection);
    let expected = store
        .get(collection, record.id())
        .await
        .unwrap()
        .map(|s| s.token);
    let write = Write { record, expected };
    match store.put(collection, &write).await.unwrap() {
        WriteOutcome::Written { cursor, .. } => cursor.get(),
        WriteOutcome::Conflict => panic!("unexpected conflict"),
    }
}

/// Every entry under `dir`, recursively, as paths relative to it.
pub(crate) fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The ids of a change page's records, in feed order.
pub(crate) fn ids_in(page: &ChangePage) -> Vec<&str> {
    page.changes
        .iter()
        .map(|change| change.record.id().as_str())
        .collect()
}

/// The token a write produced.
pub(crate) fn token_of(outcome: &WriteOutcome) -> Token {
    match outcome {
        WriteOutcome::Written { token, .. } => token.clone(),
        WriteOutcome::Conflict => panic!("write was refused"),
    }
}

/// A command that runs one of this binary's ignored helper tests as a child
/// process, with `env` telling it what to do.
pub(crate) fn child_process(test: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args([
        test,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (key, value) in env {
        command.env(key, value);
    }
    command
}
