//! A collection as a handle holds it open: its state, shared by the handle's
//! calls, and the checkpoints its writes start.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use syncforge_core::Result;

use super::checkpoint::{CheckpointLock, Due};
use super::Collection;

/// The name of the threads that run background checkpoints.
pub(crate) const CHECKPOINT_THREAD: &str = "syncforge-fs-checkpoint";

/// One collection opened by a handle.
pub(crate) struct OpenCollection {
    state: Mutex<Collection>,
    checkpoint_lock: Arc<CheckpointLock>,
    /// Whether a background checkpoint started by this handle is running.
    in_background: AtomicBool,
    /// Whether the checkpoint a full log made writers wait for failed: the
    /// next write waits for one again, and is refused if that fails too.
    behind: AtomicBool,
    /// Set by [`close`](Self::close), under the state's lock: every call
    /// after it is refused.
    closed: AtomicBool,
    /// When the handle last took it, on the handle's own count of takes:
    /// the least recently used idle collection is closed first.
    last_used: AtomicU64,
}

impl OpenCollection {
    /// Wraps an opened collection.
    pub(crate) fn new(collection: Collection) -> OpenCollection {
        OpenCollection {
            checkpoint_lock: collection.checkpoint_lock(),
            state: Mutex::new(collection),
            in_background: AtomicBool::new(false),
            behind: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_used: AtomicU64::new(0),
        }
    }

    /// Notes that the handle took the collection at `use_count`.
    pub(crate) fn mark_used(&self, use_count: u64) {
        self.last_used.store(use_count, Ordering::Relaxed);
    }

    /// The count at which the handle last took the collection.
    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// The collection's state, locked, unless the handle closed it.
    fn state(&self) -> Result<MutexGuard<'_, Collection>> {
        let state = self.state.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(crate::files::closed());
        }
        Ok(state)
    }

    /// Runs `work` on the collection's state.
    pub(crate) fn with<T>(&self, work: impl FnOnce(&mut Collection) -> Result<T>) -> Result<T> {
        let mut state = self.state()?;
        work(&mut state)
    }

    /// Checkpoints what the log holds, waiting for a checkpoint under way,
    /// and refuses every later call: a call that took the collection before
    /// the handle's `close` emptied its map either ended before this
    /// checkpoint, which then holds its write, or is refused. So a closed
    /// store holds everything in its record files, with no write after it.
    pub(crate) fn close(&self) -> Result<()> {
        // Refused first, under the state's lock: whatever happens below,
        // no call writes after this.
        self.closed.store(true, Ordering::Release);
        drop(self.state.lock());
        let _checkpointing = self.checkpoint_lock.acquire()?;
        self.state.lock().exclusive(Collection::checkpoint_if_used)
    }

    /// Runs a write, then the checkpoint it made due: in the background
    /// once the write-ahead log has grown past its size, at once (the
    /// caller waiting) when background checkpoints have fallen behind.
    ///
    /// A full log whose checkpoint failed takes no more writes until a
    /// checkpoint succeeds: the write waits for one first and is refused,
    /// writing nothing, with that checkpoint's error. Otherwise a directory
    /// that refused new files (permissions, a full disk) would let the log
    /// and the records it holds in memory grow without bound.
    pub(crate) fn write<T>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut Collection) -> Result<T>,
    ) -> Result<T> {
        if self.behind.load(Ordering::Acquire) {
            self.checkpointing(Collection::checkpoint_if_used)?;
            self.behind.store(false, Ordering::Release);
        }
        let (written, due) = {
            let mut state = self.state()?;
            let written = state.exclusive(work)?;
            (written, state.checkpoint_due())
        };
        match due {
            Due::No => {}
            Due::Background => self.start_background_checkpoint(),
            Due::Now => {
                // The write is committed and must not be reported as failed.
                if let Err(err) = self.checkpointing(Collection::checkpoint_if_used) {
                    self.behind.store(true, Ordering::Release);
                    tracing::warn!(%err, "could not checkpoint the full write-ahead log; the next write waits for a checkpoint, and is refused if it fails");
                }
            }
        }
        Ok(written)
    }

    /// Runs `work` under the exclusive lock with the checkpoint lock held,
    /// waiting for a checkpoint under way (for work that checkpoints, or
    /// must not run beside one).
    pub(crate) fn checkpointing<T>(
        &self,
        work: impl FnOnce(&mut Collection) -> Result<T>,
    ) -> Result<T> {
        let _checkpointing = self.checkpoint_lock.acquire()?;
        self.state()?.exclusive(work)
    }

    /// Starts a checkpoint on a thread of its own, unless this handle has
    /// one running.
    fn start_background_checkpoint(self: &Arc<Self>) {
        if self.in_background.swap(true, Ordering::AcqRel) {
            return;
        }
        let open = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(CHECKPOINT_THREAD.to_owned())
            .spawn(move || {
                // Cleared however the checkpoint ends, a panic included, or
                // no background checkpoint would start again.
                let _running = ClearOnDrop(&open.in_background);
                if let Err(err) = open.checkpoint_in_steps() {
                    tracing::warn!(%err, "could not checkpoint the write-ahead log; a later write tries again");
                }
            });
        if let Err(err) = spawned {
            self.in_background.store(false, Ordering::Release);
            tracing::warn!(%err, "could not start a checkpoint; a later write tries again");
        }
    }

    /// A checkpoint that holds the collection's lock only to take its
    /// snapshot and to drop the frames, not while it writes the files, so
    /// that writers go on meanwhile. Skipped when one is under way elsewhere
    /// (it leaves the log to the next write to look at).
    fn checkpoint_in_steps(&self) -> Result<()> {
        let Some(_checkpointing) = self.checkpoint_lock.try_acquire()? else {
            return Ok(());
        };
        // Started by a write just before the handle closed: `close`
        // checkpointed already, or is about to.
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some(job) = self.state.lock().exclusive(|c| Ok(c.begin_checkpoint()))? else {
            return Ok(());
        };
        if let Err(error) = job.write_files() {
            self.state.lock().distrust_change_log();
            return Err(error);
        }
        self.state.lock().exclusive(|c| c.finish_checkpoint(&job))
    }
}

/// Clears a flag when dropped: on return and on unwinding alike.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use serde_json::json;
    use syncforge_core::{
        CollectionName, Content, Record, RecordId, Stamp, StorageBackend, Write, WriteOutcome,
    };

    use super::CHECKPOINT_THREAD;
    use crate::files::{Hooked, OsFiles};
    use crate::{FsBackend, FsOptions, Tuning};

    const WORKERS: u64 = 8;
    const INCREMENTS: u64 = 30;
    const COUNTERS: u64 = 4;

    fn counter(id: &str, count: u64) -> Record {
        let stamp = Stamp::new(1_000 + count, 0, "tester").unwrap();
        let padding = "x".repeat(200);
        Record::create(
            Content::from_value(json!({"id": id, "count": count, "padding": padding})).unwrap(),
            &stamp,
        )
    }

    fn count_of(record: &Record) -> u64 {
        let field = CollectionName::new("count").unwrap();
        record
            .get(&field)
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .unwrap()
    }

    async fn increment(store: &FsBackend, collection: &CollectionName, id: &RecordId) {
        for _ in 0..10_000 {
            let write = match store.get(collection, id).await.unwrap() {
                None => Write::create(counter(id.as_str(), 1)),
                Some(stored) => Write::replace(
                    counter(id.as_str(), count_of(&stored.record) + 1),
                    stored.token,
                ),
            };
            if let WriteOutcome::Written { .. } = store.put(collection, &write).await.unwrap() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("an increment of {id} lost 10,000 races in a row");
    }

    /// A directory that refuses new files (so every checkpoint fails) stops
    /// taking writes once the log is full, instead of letting it grow: the
    /// refused write is not written, and writes go on once files can be
    /// made again.
    #[tokio::test]
    async fn a_full_log_whose_checkpoints_fail_refuses_writes_until_one_succeeds() {
        let tmp = tempfile::tempdir().unwrap();
        let refusing = Arc::new(AtomicBool::new(false));
        let refuse = refusing.clone();
        let ops = Arc::new(Hooked(move |op: &'static str, path: &Path| {
            let temporary = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(crate::files::TEMP_PREFIX));
            if op == "create_file" && temporary && refuse.load(Ordering::SeqCst) {
                return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
            }
            Ok(())
        }));
        let tuning = Tuning {
            checkpoint_bytes: 1_000,
            ..Tuning::default()
        };
        let store = FsBackend::open_on(ops, tmp.path(), FsOptions::default(), tuning)
            .await
            .unwrap();
        let collection = CollectionName::new("notes").unwrap();
        // The collection exists before files are refused.
        let first = Write::create(counter("n0", 1));
        store.put(&collection, &first).await.unwrap();
        refusing.store(true, Ordering::SeqCst);
        let mut refused = None;
        for n in 1..1_000 {
            let write = Write::create(counter(&format!("n{n}"), 1));
            if let Err(err) = store.put(&collection, &write).await {
                refused = Some((n, err));
                break;
            }
        }
        let (n, err) = refused.expect("the log grew without bound");
        // The log took writes until it was full (four times the checkpoint
        // size).
        assert!(n > 1, "refused at write {n}: {err}");
        assert!(
            matches!(err, syncforge_core::Error::Storage { .. }),
            "{err}"
        );
        refusing.store(false, Ordering::SeqCst);
        let id = RecordId::new(format!("n{n}")).unwrap();
        assert!(
            store.get(&collection, &id).await.unwrap().is_none(),
            "the refused write was written"
        );
        let write = Write::create(counter(&format!("n{n}"), 1));
        store.put(&collection, &write).await.unwrap();
        assert_eq!(store.get_all(&collection).await.unwrap().len(), n + 1);
        store.close().await.unwrap();
    }

    /// A background checkpoint that panicked left its handle's flag set, and
    /// no background checkpoint of that collection ever started again.
    #[tokio::test]
    async fn a_background_checkpoint_that_panics_lets_the_next_one_start() {
        let tmp = tempfile::tempdir().unwrap();
        // The first rename on a background checkpoint's thread panics.
        let panicked = Arc::new(AtomicBool::new(false));
        let seen = panicked.clone();
        let ops = Arc::new(Hooked(move |op: &'static str, _: &Path| {
            if op == "rename"
                && std::thread::current().name() == Some(CHECKPOINT_THREAD)
                && !seen.swap(true, Ordering::SeqCst)
            {
                panic!("a bug in a background checkpoint (expected by this test)");
            }
            Ok(())
        }));
        let tuning = Tuning {
            checkpoint_bytes: 1_000,
            ..Tuning::default()
        };
        let store = FsBackend::open_on(ops.clone(), tmp.path(), FsOptions::default(), tuning)
            .await
            .unwrap();
        let collection = CollectionName::new("notes").unwrap();
        for n in 0..20_000 {
            if panicked.load(Ordering::SeqCst) {
                break;
            }
            let write = Write::create(counter(&format!("n{n}"), 1));
            store.put(&collection, &write).await.unwrap();
        }
        assert!(
            panicked.load(Ordering::SeqCst),
            "no background checkpoint ran"
        );
        let open = store
            .inner
            .collection(&collection, crate::Take::Existing)
            .unwrap()
            .unwrap();
        for _ in 0..200 {
            if !open.in_background.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(
            !open.in_background.load(Ordering::Acquire),
            "the panicked checkpoint stopped every later one"
        );
        drop(open);
        store.close().await.unwrap();
    }

    /// Two handles on one directory, each checkpointing in the background
    /// (and, falling behind, at once) every few writes while the other
    /// writes: no increment is lost, both read the same, and once closed the
    /// record files hold every one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn background_checkpoints_of_two_handles_lose_no_increment() {
        let tmp = tempfile::tempdir().unwrap();
        let tuning = Tuning {
            checkpoint_bytes: 1_000,
            ..Tuning::default()
        };
        let open = || async {
            Arc::new(
                FsBackend::open_on(Arc::new(OsFiles), tmp.path(), FsOptions::default(), tuning)
                    .await
                    .unwrap(),
            )
        };
        let handles = [open().await, open().await];
        let collection = CollectionName::new("counters").unwrap();
        let ids: Vec<RecordId> = (0..COUNTERS)
            .map(|n| RecordId::new(format!("c{n}")).unwrap())
            .collect();
        let mut tasks = Vec::new();
        for worker in 0..WORKERS {
            let store = Arc::clone(&handles[(worker % 2) as usize]);
            let (collection, ids) = (collection.clone(), ids.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..INCREMENTS {
                    increment(
                        &store,
                        &collection,
                        &ids[((worker + n) % COUNTERS) as usize],
                    )
                    .await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let expected = WORKERS * INCREMENTS / COUNTERS;
        for store in &handles {
            let found = store.get_many(&collection, &ids).await.unwrap();
            let counts: Vec<u64> = found
                .iter()
                .map(|s| count_of(&s.as_ref().unwrap().record))
                .collect();
            assert_eq!(counts, vec![expected; COUNTERS as usize]);
        }
        for store in &handles {
            store.close().await.unwrap();
        }
        for id in &ids {
            let file = tmp.path().join("counters").join(format!("{id}.json"));
            let bytes = std::fs::read(file).unwrap();
            let record = Record::from_json(serde_json::from_slice(&bytes).unwrap()).unwrap();
            assert_eq!(count_of(&record), expected);
        }
    }
}
