//! Conditional writes from several handles and processes lose no update.

use std::sync::Arc;
use std::time::Duration;

use syncforge_backend_fs::FsBackend;
use syncforge_core::StorageBackend;
use syncforge_testkit::processes;

use crate::{child_process, coll, count_of, increment, increment_racing, rid};

const DIR_ENV: &str = "SYNCFORGE_FS_TEST_INCREMENT_DIR";
const CHILD_INCREMENTS: u64 = 40;
/// Longer than a child process ever needs; a hung one is killed at this.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_in_one_process_lose_no_increment() {
    let tmp = tempfile::tempdir().unwrap();
    let a: Arc<dyn StorageBackend> = Arc::new(FsBackend::open(tmp.path()).await.unwrap());
    let b: Arc<dyn StorageBackend> = Arc::new(FsBackend::open(tmp.path()).await.unwrap());
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let store = if worker % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                increment(store.as_ref(), &coll("counters"), "c").await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stored = a.get(&coll("counters"), &rid("c")).await.unwrap().unwrap();
    assert_eq!(count_of(&stored.record), 200);
    assert_eq!(
        b.get(&coll("counters"), &rid("c"))
            .await
            .unwrap()
            .unwrap()
            .token,
        stored.token
    );
}

/// A collection's lock file deleted while a handle holds the store open
/// (taken for a stale one): a handle opened since locks a new file, and the
/// first went on writing beside it, each alone by its own lock. The first
/// now refuses every call, and the newcomer carries on.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_whose_lock_file_was_removed_writes_no_more() {
    let tmp = tempfile::tempdir().unwrap();
    let first = FsBackend::open(tmp.path()).await.unwrap();
    increment(&first, &coll("counters"), "c").await;
    std::fs::remove_file(tmp.path().join("counters").join(".lock")).unwrap();
    let newcomer = FsBackend::open(tmp.path()).await.unwrap();
    increment(&newcomer, &coll("counters"), "c").await;
    let refused = first.get(&coll("counters"), &rid("c")).await.unwrap_err();
    assert!(
        matches!(refused, syncforge_core::Error::Corrupt { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("open the store again"),
        "{refused}"
    );
    let stored = newcomer
        .get(&coll("counters"), &rid("c"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count_of(&stored.record), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_and_this_one_lose_no_increment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_owned();
    // All three start incrementing at once, each with its store open: this
    // one could otherwise be done before the children began.
    let start_at = (now_ms() + 3_000).to_string();
    let children: Vec<_> = (0..2)
        .map(|_| {
            child_process(
                "concurrency::child_incrementer",
                &[(DIR_ENV, &dir), (START_AT_ENV, &start_at)],
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    wait_until(&start_at).await;
    let mut races = 0;
    for _ in 0..20 {
        races += increment_racing(&store, &coll("counters"), "c").await.1;
    }
    for child in children {
        let output = tokio::task::spawn_blocking(move || processes::finish(child, CHILD_TIMEOUT))
            .await
            .unwrap()
            .unwrap();
        assert!(output.status.success(), "child failed: {}", output.status);
        let stdout = String::from_utf8(output.stdout).unwrap();
        races += stdout
            .lines()
            .find_map(|line| line.split("races-lost ").nth(1))
            .and_then(|count| count.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no count of races in {stdout:?}"));
    }
    assert!(races > 0, "the three writers never raced");
    let stored = store
        .get(&coll("counters"), &rid("c"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count_of(&stored.record), 20 + 2 * CHILD_INCREMENTS);
}

/// Run by `two_processes_and_this_one_lose_no_increment` in a child process.
#[tokio::test]
#[ignore = "helper process, started by two_processes_and_this_one_lose_no_increment"]
async fn child_incrementer() {
    let (Ok(dir), Ok(start_at)) = (std::env::var(DIR_ENV), std::env::var(START_AT_ENV)) else {
        return;
    };
    let store = FsBackend::open(&dir).await.unwrap();
    wait_until(&start_at).await;
    let mut races = 0;
    for _ in 0..CHILD_INCREMENTS {
        races += increment_racing(&store, &coll("counters"), "c").await.1;
    }
    println!("races-lost {races}");
}

/// Sleeps until `start_at` (milliseconds since the epoch).
async fn wait_until(start_at: &str) {
    let start_at: u128 = start_at.parse().unwrap();
    while now_ms() < start_at {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

const FRESH_DIR_ENV: &str = "SYNCFORGE_FS_TEST_FRESH_DIR";
const START_AT_ENV: &str = "SYNCFORGE_FS_TEST_START_AT_MS";
const STORE_ID_KEY: &str = "syncforge/store-id/v1";

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Several processes open one directory that does not exist yet, at the same
/// moment, and each offers its own store id: all of them are told the one
/// that was stored.
#[test]
fn processes_opening_a_fresh_directory_at_once_agree_on_one_store_id() {
    const PROCESSES: usize = 6;
    for round in 0..3 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fresh").join("store");
        let dir_arg = dir.to_str().unwrap().to_owned();
        // Far enough ahead for every child to be waiting when it comes.
        let start_at = (now_ms() + 1_500).to_string();
        let children: Vec<_> = (0..PROCESSES)
            .map(|_| {
                child_process(
                    "concurrency::child_store_id",
                    &[(FRESH_DIR_ENV, &dir_arg), (START_AT_ENV, &start_at)],
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        let mut answers = Vec::new();
        for child in children {
            let output = processes::finish(child, CHILD_TIMEOUT).unwrap();
            assert!(output.status.success(), "round {round}: child failed");
            let stdout = String::from_utf8(output.stdout).unwrap();
            let answer = stdout
                .lines()
                .find_map(|line| line.split("store-id ").nth(1))
                .unwrap_or_else(|| panic!("round {round}: no answer in {stdout:?}"))
                .to_owned();
            answers.push(answer);
        }
        answers.dedup();
        assert_eq!(answers.len(), 1, "round {round}: {answers:?}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let stored = runtime.block_on(async {
            let store = FsBackend::open(&dir).await.unwrap();
            store.get_meta(STORE_ID_KEY).await.unwrap()
        });
        assert_eq!(
            stored.as_deref(),
            Some(answers[0].as_str()),
            "round {round}"
        );
    }
}

/// Run by `processes_opening_a_fresh_directory_at_once_agree_on_one_store_id`.
#[tokio::test]
#[ignore = "helper process, started by processes_opening_a_fresh_directory_at_once_agree_on_one_store_id"]
async fn child_store_id() {
    let (Ok(dir), Ok(start_at)) = (std::env::var(FRESH_DIR_ENV), std::env::var(START_AT_ENV))
    else {
        return;
    };
    let start_at: u128 = start_at.parse().unwrap();
    while now_ms() < start_at {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let store = FsBackend::open(&dir).await.unwrap();
    let mine = format!("id-of-process-{}", std::process::id());
    let agreed = store.set_meta_if_absent(STORE_ID_KEY, &mine).await.unwrap();
    println!("store-id {agreed}");
}

/// The store needs no Tokio runtime: under another executor its file work
/// runs in place (it panicked in `spawn_blocking`).
#[test]
fn a_store_works_under_another_executor() {
    let tmp = tempfile::tempdir().unwrap();
    futures::executor::block_on(async {
        let store = FsBackend::open(tmp.path()).await.unwrap();
        for _ in 0..3 {
            increment(&store, &coll("counters"), "c").await;
        }
        let stored = store.get(&coll("counters"), &rid("c")).await.unwrap();
        assert_eq!(count_of(&stored.unwrap().record), 3);
        store.close().await.unwrap();
    });
}

/// A handle keeps a bounded number of collections open: writing hundreds of
/// collections (a collection per user) does not hold two lock files for
/// each, and every record stays readable, through the handle and after it
/// closes.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_handle_writing_many_collections_keeps_few_files_open() {
    const COLLECTIONS: usize = 300;
    let tmp = tempfile::tempdir().unwrap();
    // Only this test's files: other tests of this binary open files too.
    let root = tmp.path().canonicalize().unwrap();
    let open_files = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.starts_with(&root))
            .count()
    };
    let store = FsBackend::open(tmp.path()).await.unwrap();
    for n in 0..COLLECTIONS {
        increment(&store, &coll(&format!("user-{n:03}")), "c").await;
    }
    // Two lock files a collection would be 600.
    let open = open_files();
    assert!(
        (1..=200).contains(&open),
        "{open} files of the store open after {COLLECTIONS} collections"
    );
    for n in 0..COLLECTIONS {
        increment(&store, &coll(&format!("user-{n:03}")), "c").await;
    }
    store.close().await.unwrap();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    for n in 0..COLLECTIONS {
        let stored = store
            .get(&coll(&format!("user-{n:03}")), &rid("c"))
            .await
            .unwrap();
        assert_eq!(count_of(&stored.unwrap().record), 2, "user-{n:03}");
    }
    store.close().await.unwrap();
}
