//! Checkpoints: the records committed to the write-ahead log are written to
//! their own files, made durable, and their frames dropped from the log.
//!
//! A checkpoint runs in three steps so that writers do not wait for it:
//!
//! 1. under the collection's exclusive lock, it takes a snapshot of the
//!    pending records and notes where the log ends
//!    ([`Collection::begin_checkpoint`](super::Collection::begin_checkpoint));
//! 2. without that lock, it writes the snapshot's record files, then syncs
//!    them, the directory and the change log ([`CheckpointJob::write_files`]).
//!    Writers go on appending frames meanwhile, and every reader still takes
//!    the snapshot's records from the log, which holds them until step 3;
//! 3. under the lock again, it rewrites the log keeping only the frames
//!    appended since the snapshot
//!    ([`Collection::finish_checkpoint`](super::Collection::finish_checkpoint)).
//!
//! A cut anywhere before step 3 has replaced the log leaves every frame in
//! it, and opening the collection writes the files again. Only one
//! checkpoint of a collection runs at a time, across handles and processes,
//! under its own lock ([`CheckpointLock`]), always taken before the
//! collection's: two at once could write one record's file from two
//! snapshots in the wrong order and then both drop their frames.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use syncforge_core::Result;

use super::lock::{DirLock, Mode};
use super::records::{move_aside, parse, RecordFile, CORRUPT_DIR};
use crate::files::{io_error, sync_dir, write_temp, FileOps, Read};

/// Name of the checkpoint lock file in a collection directory.
pub(crate) const CHECKPOINT_LOCK_FILE: &str = ".checkpoint.lock";

/// The lock one checkpoint of a collection holds from its snapshot to the
/// rewrite of the log. Handles of one process share the file's lock (it
/// belongs to the open file), so a mutex keeps their threads apart too.
#[derive(Debug)]
pub(crate) struct CheckpointLock {
    local: Mutex<()>,
    file: DirLock,
}

/// A held [`CheckpointLock`], released when dropped.
pub(crate) struct CheckpointGuard<'a> {
    _local: MutexGuard<'a, ()>,
    file: &'a DirLock,
}

impl Drop for CheckpointGuard<'_> {
    fn drop(&mut self) {
        self.file.unlock();
    }
}

impl CheckpointLock {
    /// Opens (creating if needed) the checkpoint lock of the collection in
    /// `dir`.
    pub(crate) fn open(ops: &dyn FileOps, dir: &Path, collection: &str) -> Result<CheckpointLock> {
        Ok(CheckpointLock {
            local: Mutex::new(()),
            file: DirLock::open_file(ops, dir, CHECKPOINT_LOCK_FILE, collection)?,
        })
    }

    /// Waits for the lock.
    pub(crate) fn acquire(&self) -> Result<CheckpointGuard<'_>> {
        let local = self.local.lock();
        self.file.lock(Mode::Exclusive)?;
        Ok(CheckpointGuard {
            _local: local,
            file: &self.file,
        })
    }

    /// Takes the lock if no one holds it: `None` when a checkpoint is under
    /// way elsewhere.
    pub(crate) fn try_acquire(&self) -> Result<Option<CheckpointGuard<'_>>> {
        let Some(local) = self.local.try_lock() else {
            return Ok(None);
        };
        if !self.file.try_lock()? {
            return Ok(None);
        }
        Ok(Some(CheckpointGuard {
            _local: local,
            file: &self.file,
        }))
    }
}

/// Whether the write-ahead log is due for a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Not yet.
    No,
    /// Off the caller's path: the write that found it due is acknowledged.
    Background,
    /// Before the caller returns: the log has outgrown what background
    /// checkpoints keep up with, and writers must wait for one.
    Now,
}

/// The records of a snapshot to write to their files, and what the
/// collection's log held when it was taken.
pub(crate) struct CheckpointJob {
    pub(super) dir: PathBuf,
    pub(super) name: String,
    pub(super) ops: Arc<dyn FileOps>,
    pub(super) durable: bool,
    pub(super) change_log: PathBuf,
    /// Each pending record's last committed content (`None`: removed),
    /// sorted by id.
    pub(super) records: Vec<(String, Option<String>, PathBuf)>,
    /// The write-ahead log's generation and the end of its last frame at the
    /// snapshot: the frames to drop once the files are durable.
    pub(super) generation: u64,
    pub(super) end: u64,
}

impl CheckpointJob {
    /// Writes the snapshot's record files and makes them, the directory and
    /// the change log durable (step 2; under the checkpoint lock only).
    pub(crate) fn write_files(&self) -> Result<()> {
        // The change log first, before any record file takes its new
        // content: its lines for the snapshot's frames (appended unsynced,
        // and the frames themselves maybe too, by a `Buffered` handle) are
        // what place an update at its new position in the feed. A file
        // renamed or synced before them could survive a power cut that
        // took them, and the update would stay at the record's old
        // position, where a replica past it never gets it. Without
        // durability nothing else is synced, but this is: once the frames
        // are dropped, its lines are the sequences' only record. One sync
        // a checkpoint, not a write.
        self.sync_change_log()?;
        for (id, content, path) in &self.records {
            self.write_file(id, content.as_deref(), path)?;
        }
        if !self.durable {
            return Ok(());
        }
        let written: Vec<PathBuf> = self
            .records
            .iter()
            .filter(|(_, content, _)| content.is_some())
            .map(|(_, _, path)| path.clone())
            .collect();
        self.ops
            .sync_files(&written)
            .map_err(|err| io_error("syncing the record files in", &self.dir, err))?;
        let aside = self.dir.join(CORRUPT_DIR);
        if std::fs::symlink_metadata(&aside).is_ok_and(|meta| meta.is_dir()) {
            sync_dir(self.ops.as_ref(), &aside)?;
        }
        sync_dir(self.ops.as_ref(), &self.dir)
    }

    /// Syncs the change log, whose lines for the snapshot's frames were
    /// appended unsynced.
    fn sync_change_log(&self) -> Result<()> {
        match self.ops.sync_file(&self.change_log) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_error("syncing", &self.change_log, err)),
        }
    }

    /// Writes a record's file (or removes it); a checkpoint that syncs
    /// nothing leaves a file that already holds that content. Readers never
    /// see half a file: it is written to a temporary file renamed over the
    /// old one.
    ///
    /// A durable checkpoint writes the file anew even then: after a failed
    /// sync (the frames stay in the log, and the next checkpoint comes back
    /// to them) the content read back may be pages the disk never got, and
    /// a sync through a file opened after the failure was reported succeeds
    /// without writing them. Fresh pages are written and synced.
    ///
    /// A file that cannot be read at all (a directory in its place, no
    /// permission, a disk error) is moved aside first: the committed write
    /// supersedes whatever it held, and failing here would fail every
    /// checkpoint of the collection, and with them every later opening of
    /// it, for one file. A read that failed for now (the process out of
    /// file handles) says nothing of the file: the checkpoint fails, and
    /// the next one comes back to it.
    fn write_file(&self, id: &str, content: Option<&str>, path: &Path) -> Result<()> {
        let current = match self.ops.read_replaced(path) {
            Ok(current) => current,
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => {
                tracing::warn!(%error, "a record file the log replaces cannot be read");
                move_aside(self.ops.as_ref(), &self.dir, path, self.durable, &self.name)?;
                Read::Missing
            }
        };
        match content {
            Some(json) => {
                if !self.durable
                    && matches!(&current, Read::Bytes(bytes) if bytes == json.as_bytes())
                {
                    return Ok(());
                }
                self.clear_the_way(id, path, &current)?;
                let temp = write_temp(self.ops.as_ref(), &self.dir, json.as_bytes(), false)?;
                if let Err(err) = self.ops.rename(&temp, path) {
                    // Best effort: leftovers are removed on the next open.
                    let _ = self.ops.remove_file(&temp);
                    return Err(io_error("renaming into", path, err));
                }
            }
            None => {
                if matches!(current, Read::Missing) {
                    return Ok(());
                }
                self.clear_the_way(id, path, &current)?;
                match self.ops.remove_file(path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(io_error("removing", path, err)),
                }
            }
        }
        Ok(())
    }

    /// Before a record's file is replaced or removed: a file that holds
    /// something other than a version of that record (and not merely the
    /// zeros a power cut leaves) is moved aside rather than destroyed.
    fn clear_the_way(&self, id: &str, path: &Path, current: &Read) -> Result<()> {
        let keep = match current {
            Read::Missing => false,
            Read::Link => true,
            Read::Bytes(bytes) => {
                !bytes.iter().all(|b| *b == 0)
                    && !matches!(
                        parse(bytes, path, &self.name, Some(id)),
                        RecordFile::Valid(_)
                    )
            }
        };
        if keep {
            move_aside(self.ops.as_ref(), &self.dir, path, self.durable, &self.name)?;
        }
        Ok(())
    }
}
