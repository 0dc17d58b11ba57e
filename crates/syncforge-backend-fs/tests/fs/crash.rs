//! Crash test: a child process writes in a loop and is killed with SIGKILL at
//! random moments, while appending to its log or, once its rounds reach a
//! checkpoint, possibly while writing record files; after each kill every
//! record file parses, the store opens and no acknowledged write is lost.
//! The test checks that some round's writer wrote record files before it
//! was killed, not that a kill landed inside such a write.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use syncforge_backend_fs::{Durability, FsBackend, FsOptions};
use syncforge_core::{Record, StorageBackend, Write, WriteOutcome};

use crate::{at, child_process, coll, count_of, increment, limit, rid, tree};

const DIR_ENV: &str = "SYNCFORGE_FS_TEST_CRASH_DIR";
/// Set (to anything) to make the child write with `Durability::Buffered`.
const BUFFERED_ENV: &str = "SYNCFORGE_FS_TEST_CRASH_BUFFERED";
const KILLS: usize = 30;
const COLLECTION: &str = "crash";

fn collection() -> syncforge_core::CollectionName {
    coll(COLLECTION)
}
const BATCH_IDS: usize = 20;

/// A small xorshift generator: the kill moments only need to vary.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

#[test]
fn killed_writers_leave_whole_files_and_lose_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_owned();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut acknowledged: HashMap<String, u64> = HashMap::new();
    let mut killed_mid_run = 0;
    // The record files as this test left them after each round: a round
    // whose writer changed one checkpointed before it was killed, so that
    // kills can land in the middle of writing record files, not only of
    // appending to the log.
    let mut left: HashMap<String, Vec<u8>> = HashMap::new();
    let mut writer_checkpointed = 0;

    for round in 0..KILLS {
        // A killed process loses nothing the kernel holds, so both durability
        // levels must pass; odd rounds skip the syncs.
        let mut env = vec![(DIR_ENV, dir.as_str())];
        if round % 2 == 1 {
            env.push((BUFFERED_ENV, "1"));
        }
        let mut child = child_process("crash::child_writer", &env)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill after a random number of acknowledged writes, and a few
        // milliseconds more: counted, not timed, so that on a machine of
        // any speed most rounds fill the log past the size at which the
        // writer checkpoints in the background (about 290 acknowledgements
        // of its padded batches), and the kill can land while record files
        // are written, not only the log. (Waiting up to 300 ms after the first
        // acknowledgement, a slow machine under load had no round reach a
        // checkpoint.) At most 20 s a round.
        let kill_after = 1 + rng.below(700) as usize;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut lines = Vec::new();
        let mut acknowledgements = 0;
        while acknowledgements < kill_after {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines_rx.recv_timeout(left) else {
                break;
            };
            if line.starts_with("ack ") {
                acknowledgements += 1;
            }
            lines.push(line);
        }
        std::thread::sleep(Duration::from_millis(rng.below(100)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(lines_rx.try_iter());
        // A writer that failed on its own (a panic after recovering a torn
        // log, say) counted as killed, and a round in which it acknowledged
        // nothing tested nothing.
        assert!(
            lines.iter().any(|line| line.starts_with("ack ")),
            "round {round} (seed {seed}): the writer acknowledged nothing and ended {status}"
        );
        if killed_by_the_test(status) {
            killed_mid_run += 1;
        }
        for line in &lines {
            let mut parts = line.split(' ');
            if parts.next() != Some("ack") {
                continue;
            }
            let (Some(id), Some(count)) = (parts.next(), parts.next()) else {
                continue;
            };
            let count: u64 = count.parse().unwrap();
            let best = acknowledged.entry(id.to_owned()).or_default();
            *best = (*best).max(count);
        }

        // Every record file parses and holds the record its name says.
        let collection_dir = tmp.path().join(COLLECTION);
        let mut changed_by_writer = false;
        for name in tree(&collection_dir) {
            if name.starts_with('.') {
                continue;
            }
            let text = std::fs::read_to_string(collection_dir.join(&name)).unwrap();
            changed_by_writer |= left.get(&name) != Some(&text.clone().into_bytes());
            let value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("round {round} (seed {seed}): {name} is torn: {e}"));
            let record = Record::from_json(value).unwrap();
            assert_eq!(format!("{}.json", record.id()), name, "seed {seed}");
        }
        // The store opens, and holds at least every acknowledged count.
        runtime.block_on(async {
            let store = FsBackend::open(&dir).await.unwrap();
            let feed = store
                .changes(&collection(), at(0), limit(10_000))
                .await
                .unwrap();
            for (id, count) in &acknowledged {
                let stored = store.get(&collection(), &rid(id)).await.unwrap();
                let stored =
                    stored.unwrap_or_else(|| panic!("round {round} (seed {seed}): {id} lost"));
                assert!(
                    count_of(&stored.record) >= *count,
                    "round {round} (seed {seed}): {id} holds {} but {count} was acknowledged",
                    count_of(&stored.record)
                );
                assert!(
                    feed.changes.iter().any(|c| c.record.id() == id),
                    "seed {seed}"
                );
            }
            assert!(store.corrupt_files(&collection()).await.unwrap().is_empty());
            store.close().await.unwrap();
        });
        if changed_by_writer {
            writer_checkpointed += 1;
        }
        left = tree(&collection_dir)
            .into_iter()
            .filter(|name| !name.starts_with('.'))
            .map(|name| {
                let bytes = std::fs::read(collection_dir.join(&name)).unwrap();
                (name, bytes)
            })
            .collect();
        assert!(
            !tree(&collection_dir).iter().any(|n| n.starts_with(".tmp-")),
            "seed {seed}"
        );
    }
    assert!(!acknowledged.is_empty());
    assert!(
        killed_mid_run > KILLS / 2,
        "the writer was rarely killed mid-run: {killed_mid_run}"
    );
    assert!(
        writer_checkpointed > 0,
        "no writer wrote a record file before it was killed (seed {seed})"
    );
}

/// A counter with 16 KiB of padding: a batch of them is a large frame of
/// the log, which soon fills it past the size at which the writer
/// checkpoints.
fn padded_counter(id: &str, count: u64) -> Record {
    let stamp = syncforge_core::Stamp::new(1_000 + count, 0, "tester").unwrap();
    let value = serde_json::json!({"id": id, "count": count, "pad": "p".repeat(16 << 10)});
    Record::create(syncforge_core::Content::from_value(value).unwrap(), &stamp)
}

/// Whether the writer ended by the test's kill (SIGKILL), not of itself.
#[cfg(unix)]
fn killed_by_the_test(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    status.signal() == Some(9)
}

/// Whether the writer ended by the test's kill: without signals, any end
/// that is not a success.
#[cfg(not(unix))]
fn killed_by_the_test(status: std::process::ExitStatus) -> bool {
    !status.success()
}

/// Run by the crash test in a child process: increments counters with single
/// puts and batches, printing `ack <id> <count>` after each acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process, started by killed_writers_leave_whole_files_and_lose_no_acknowledged_write"]
async fn child_writer() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let durability = if std::env::var_os(BUFFERED_ENV).is_some() {
        Durability::Buffered
    } else {
        Durability::Full
    };
    let options = FsOptions::default().durability(durability);
    let store = FsBackend::open_with(&dir, options).await.unwrap();
    for round in 0..5_000u64 {
        if round % 3 == 0 {
            let ids: Vec<String> = (0..BATCH_IDS).map(|n| format!("b{n}")).collect();
            let refs: Vec<syncforge_core::RecordId> = ids.iter().map(|id| rid(id)).collect();
            let current = store.get_many(&collection(), &refs).await.unwrap();
            let writes: Vec<Write> = ids
                .iter()
                .zip(current)
                .map(|(id, stored)| match stored {
                    None => Write::create(padded_counter(id, 1)),
                    Some(s) => Write::replace(padded_counter(id, count_of(&s.record) + 1), s.token),
                })
                .collect();
            let outcomes = store.put_batch(&collection(), &writes).await.unwrap();
            for (write, outcome) in writes.iter().zip(outcomes) {
                if matches!(outcome, WriteOutcome::Written { .. }) {
                    println!("ack {} {}", write.record.id(), count_of(&write.record));
                }
            }
        } else {
            let id = format!("s{}", round % 10);
            let count = increment(&store, &collection(), &id).await;
            println!("ack {id} {count}");
        }
    }
}
