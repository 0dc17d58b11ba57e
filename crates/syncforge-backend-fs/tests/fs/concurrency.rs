//! Conditional writes from several handles and processes lose no update.

use std::sync::Arc;

use syncforge_backend_fs::FsBackend;
use syncforge_core::StorageBackend;

use crate::{child_process, coll, count_of, increment, rid};

const DIR_ENV: &str = "SYNCFORGE_FS_TEST_INCREMENT_DIR";
const CHILD_INCREMENTS: u64 = 40;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_and_this_one_lose_no_increment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_owned();
    let children: Vec<_> = (0..2)
        .map(|_| {
            child_process("concurrency::child_incrementer", &[(DIR_ENV, &dir)])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let store = FsBackend::open(tmp.path()).await.unwrap();
    for _ in 0..20 {
        increment(&store, &coll("counters"), "c").await;
    }
    for mut child in children {
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "child failed: {status}");
    }
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
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let store = FsBackend::open(&dir).await.unwrap();
    for _ in 0..CHILD_INCREMENTS {
        increment(&store, &coll("counters"), "c").await;
    }
}
