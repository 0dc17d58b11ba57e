//! One collection's directory: record files ([`records`]), the change log
//! ([`log`]) and the lock ([`lock`]), put together into the operations of the
//! backend.
//!
//! Writes hold the exclusive lock, reads the shared one. A write appends to
//! the log (and syncs it) *before* renaming record files into place, so a
//! crash can leave a sequence for content that did not change (a harmless
//! extra entry in the change feed) but never new content without its
//! sequence (which a change-feed reader would miss).

pub(crate) mod lock;
pub(crate) mod log;
pub(crate) mod records;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use syncforge_core::{
    Change, ChangePage, Cursor, Error, Record, Result, Stamp, Stored, Token, WriteOutcome,
};

use self::lock::{DirLock, Mode};
use self::log::{micros_since_epoch, salvage, ChangeLog, LogEntry, NewestStamp};
use self::records::{file_name_for, has_records, id_of_file, load, move_aside, RecordFile};
use crate::encoding::{is_hashed, stem_for};
use crate::files::{
    corrupt, create_dir_all, io_error, read_dir, read_file, replace_atomically, sync_dir,
    write_temp, FileOps, Read, LINK_REASON, TEMP_PREFIX,
};
use crate::{Durability, Tuning};

/// Name of the file holding a collection's name when its directory name is hashed.
pub(crate) const NAME_FILE: &str = ".name";

/// A write that passed its condition, ready to be stored.
pub(crate) struct PreparedWrite {
    /// The record id.
    pub(crate) id: String,
    /// The record's canonical JSON.
    pub(crate) json: String,
    /// The token the write expects.
    pub(crate) expected: Option<Token>,
    /// The newest stamp the record holds.
    pub(crate) newest: Stamp,
}

/// The in-memory view of one collection, shared by the calls of one handle.
pub(crate) struct Collection {
    name: String,
    dir: PathBuf,
    durability: Durability,
    tuning: Tuning,
    ops: Arc<dyn FileOps>,
    lock: DirLock,
    log: ChangeLog,
}

impl Collection {
    /// Path of a collection's directory under the store root.
    pub(crate) fn dir_for(root: &Path, name: &str) -> PathBuf {
        root.join(stem_for(name))
    }

    /// Opens a collection, creating its directory when `create`; `None` when it
    /// does not exist and `create` is false. Reconciles the log with the files
    /// left by a crash or by hand. A link in the directory's place is refused.
    pub(crate) fn open(
        ops: Arc<dyn FileOps>,
        root: &Path,
        name: &str,
        durability: Durability,
        tuning: Tuning,
        create: bool,
    ) -> Result<Option<Collection>> {
        let dir = Self::dir_for(root, name);
        if !check_dir(&dir, name)? {
            if !create {
                return Ok(None);
            }
            create_dir_all(ops.as_ref(), &dir, durability.is_full(), name)?;
        }
        let lock = DirLock::open(ops.as_ref(), &dir, name)?;
        let mut collection = Collection {
            name: name.to_owned(),
            log: ChangeLog::new(&dir, name),
            dir,
            durability,
            tuning,
            ops,
            lock,
        };
        // Under the lock: another process reconciling the directory removes
        // temporaries, which would include this write's.
        collection.exclusive(|c| {
            c.write_name_file()?;
            c.reconcile()
        })?;
        Ok(Some(collection))
    }

    /// Writes `.name` when the directory name is hashed and it is missing
    /// (under the exclusive lock).
    fn write_name_file(&self) -> Result<()> {
        let name_file = self.dir.join(NAME_FILE);
        if is_hashed(&stem_for(&self.name)) && std::fs::symlink_metadata(&name_file).is_err() {
            replace_atomically(
                self.ops.as_ref(),
                &name_file,
                self.name.as_bytes(),
                self.durable(),
            )?;
        }
        Ok(())
    }

    fn durable(&self) -> bool {
        self.durability.is_full()
    }

    fn ops(&self) -> &dyn FileOps {
        self.ops.as_ref()
    }

    /// Path of a record's file.
    pub(crate) fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(file_name_for(id))
    }

    /// Runs `f` under the shared lock, after catching up with the log.
    pub(crate) fn shared<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.locked(Mode::Shared, f)
    }

    /// Runs `f` under the exclusive lock, after catching up with the log.
    pub(crate) fn exclusive<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.locked(Mode::Exclusive, f)
    }

    fn locked<T>(&mut self, mode: Mode, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.lock.lock(mode)?;
        let result = self.catch_up(mode).and_then(|()| f(self));
        if result.is_err() {
            // What is on disk is unknown after a failure; read it all again next time.
            self.log.invalidate();
        }
        self.lock.unlock();
        result
    }

    /// Catches up with the log; a missing or unreadable log is rebuilt from
    /// the record files, which needs the exclusive lock (taken here if only the
    /// shared one is held; the caller releases it). The directory is checked
    /// first: a link swapped into its place is refused.
    fn catch_up(&mut self, mode: Mode) -> Result<()> {
        if !check_dir(&self.dir, &self.name)? {
            return Err(corrupt(
                &self.name,
                None,
                &self.dir,
                "the collection's directory has gone",
            ));
        }
        let Some(problem) = self.log.refresh()? else {
            return Ok(());
        };
        if mode == Mode::Shared {
            // Upgrading in place is not portable: release, then wait for the
            // exclusive lock, and look again (another handle may have rebuilt).
            self.lock.unlock();
            self.lock.lock(Mode::Exclusive)?;
            if self.log.refresh()?.is_none() {
                return Ok(());
            }
        }
        self.rebuild(&problem)
    }

    /// Rebuilds a missing or unreadable log from the record files (under the
    /// exclusive lock). Every record gets a fresh sequence above any the old
    /// log can have handed out, so change-feed readers see everything again
    /// rather than miss anything. A new collection directory takes this path
    /// too, and starts at 1.
    fn rebuild(&mut self, problem: &str) -> Result<()> {
        let path = self.log.path().to_path_buf();
        let old = match read_file(&path)? {
            Read::Bytes(bytes) => Some(bytes),
            Read::Link => Some(Vec::new()),
            Read::Missing => None,
        };
        let mut highest_seq = self.log.last_seq();
        let mut highest_generation = self.log.generation();
        if let Some(bytes) = &old {
            tracing::warn!(log = %path.display(), problem, "rebuilding the change log from the record files");
            let (seq, generation) = salvage(bytes);
            highest_seq = highest_seq.max(seq);
            highest_generation = highest_generation.max(generation);
        }
        let has_records = has_records(&self.dir)?;
        if old.is_some() || has_records {
            // What the lost log held is unknown, so readers' cursors could
            // be anywhere up to its last sequence. No count of writes comes
            // near the current time in microseconds: starting above it keeps
            // the new sequences above every cursor.
            highest_seq = highest_seq.max(micros_since_epoch());
        }
        self.log.reset(highest_generation, highest_seq);
        if !has_records {
            self.log.set_newest(NewestStamp::Known(None));
        }
        self.log
            .rewrite(self.ops.as_ref(), highest_seq, self.durable())?;
        self.reconcile()
    }

    /// Brings the log in line with the files (under the exclusive lock):
    /// gives a sequence to record files it does not know, forgets entries
    /// whose file is gone, and removes temporaries left by a crashed writer.
    fn reconcile(&mut self) -> Result<()> {
        let mut on_disk = HashSet::new();
        for entry in read_dir(&self.dir)? {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if file_name.starts_with(TEMP_PREFIX) {
                let path = entry.path();
                self.ops()
                    .remove_file(&path)
                    .map_err(|err| io_error("removing", &path, err))?;
                continue;
            }
            if let Some(id) = id_of_file(&self.dir, file_name, &self.name)? {
                on_disk.insert(id);
            }
        }
        let mut unknown: Vec<&String> = on_disk.iter().filter(|id| !self.log.knows(id)).collect();
        unknown.sort();
        let mut entries = Vec::with_capacity(unknown.len() + 1);
        let mut seq = self.log.last_seq();
        let mut newest = None;
        for id in unknown {
            seq = self.log.checked_next(seq, "sequence")?;
            if matches!(self.log.newest(), NewestStamp::Known(_)) {
                // Files added by hand: their stamps count too. A corrupt one
                // reads as absent, and whatever replaces it is a write.
                if let RecordFile::Valid(record) = self.load(id)? {
                    newest = newest.max(Some(record.newest_stamp().clone()));
                }
            }
            entries.push(LogEntry::Written {
                seq,
                id: id.clone(),
            });
        }
        entries.extend(self.log.newest().raised_by(newest.as_ref()));
        for id in self.log.ids().filter(|id| !on_disk.contains(*id)) {
            entries.push(LogEntry::Removed {
                removed: id.clone(),
                seq: None,
            });
        }
        let durable = self.durable();
        self.log.append(self.ops.as_ref(), entries, durable)
    }

    /// Rewrites the log without superseded entries once it has grown enough.
    /// Best effort: it runs after writes that are already committed, which
    /// must not be reported as failed; the next write tries again.
    fn maybe_compact(&mut self) {
        if self.log.needs_compaction(self.tuning.compact_min_lines) {
            let base = self.log.last_seq();
            let durable = self.durable();
            if let Err(err) = self.log.rewrite(self.ops.as_ref(), base, durable) {
                tracing::warn!(%err, "could not compact the change log; will retry on a later write");
            }
        }
    }

    /// Reads one record with its token (under a lock); a corrupt file is an
    /// error naming it.
    pub(crate) fn read_stored(&self, id: &str) -> Result<Option<Stored>> {
        self.read_stored_or(id, Err)
    }

    /// Reads one record with its token (under a lock); a corrupt file reads
    /// as absent, with a warning, so that it cannot fail a whole batch of
    /// reads, and a write expecting the record to be absent replaces it.
    pub(crate) fn read_stored_skipping_corrupt(
        &self,
        id: &str,
        skipped: &mut u64,
    ) -> Result<Option<Stored>> {
        self.read_stored_or(id, |err| {
            tracing::warn!(%err, "reading a corrupt record file as absent");
            *skipped += 1;
            Ok(None)
        })
    }

    fn read_stored_or(
        &self,
        id: &str,
        on_corrupt: impl FnOnce(Error) -> Result<Option<Stored>>,
    ) -> Result<Option<Stored>> {
        let Some(seq) = self.log.seq_of(id) else {
            return Ok(None);
        };
        match self.load(id)? {
            RecordFile::Missing => Ok(None),
            RecordFile::Valid(record) => Ok(Some(Stored {
                record,
                token: Token::Sequence(seq),
            })),
            RecordFile::Corrupt(err) => on_corrupt(err),
        }
    }

    /// What the file of `id` holds. I/O errors stay errors: only content that
    /// is not the record counts as corrupt.
    fn load(&self, id: &str) -> Result<RecordFile> {
        load(&self.record_path(id), &self.name, Some(id))
    }

    /// Applies conditional writes (under the exclusive lock). Order matters
    /// for crashes: temporaries are written and synced first (a crash leaves
    /// only temporaries), then the log (a crash leaves new sequences for old
    /// content: harmless), then the renames (each atomic) and the directory.
    pub(crate) fn put_batch(&mut self, writes: &[PreparedWrite]) -> Result<Vec<WriteOutcome>> {
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut current: HashMap<&str, u64> = HashMap::new();
        let mut planned: Vec<(&PreparedWrite, u64)> = Vec::new();
        let mut corrupt_files: Vec<&str> = Vec::new();
        let mut next = self.log.last_seq();
        for write in writes {
            let stored = match current.get(write.id.as_str()) {
                Some(planned) => Some(*planned),
                None => match self.log.seq_of(&write.id) {
                    None => None,
                    Some(seq) if write.expected.is_some() => Some(seq),
                    // A file removed by hand leaves its log entry behind until
                    // the next open; the record is absent all the same. So is
                    // a corrupt file, which reads as absent and is moved aside.
                    Some(seq) => match self.load(&write.id)? {
                        RecordFile::Missing => None,
                        RecordFile::Valid(_) => Some(seq),
                        RecordFile::Corrupt(_) => {
                            corrupt_files.push(&write.id);
                            None
                        }
                    },
                },
            };
            let matches = match (&write.expected, stored) {
                (None, None) => true,
                (Some(Token::Sequence(expected)), Some(stored)) => *expected == stored,
                _ => false,
            };
            if !matches {
                outcomes.push(WriteOutcome::Conflict);
                continue;
            }
            if stored.is_none()
                && !corrupt_files.contains(&write.id.as_str())
                && self.check_free(&write.id)?
            {
                corrupt_files.push(&write.id);
            }
            next = self.log.checked_next(next, "sequence")?;
            current.insert(&write.id, next);
            planned.push((write, next));
            outcomes.push(WriteOutcome::Written {
                token: Token::Sequence(next),
                cursor: Cursor::new(next),
            });
        }
        if planned.is_empty() {
            return Ok(outcomes);
        }
        let durable = self.durable();
        let mut temps = Vec::with_capacity(planned.len());
        let staged = (|| {
            for (write, _) in &planned {
                temps.push(write_temp(
                    self.ops(),
                    &self.dir,
                    write.json.as_bytes(),
                    false,
                )?);
            }
            if durable {
                self.ops()
                    .sync_files(&temps)
                    .map_err(|err| io_error("syncing new files in", &self.dir, err))?;
            }
            Ok::<_, Error>(())
        })();
        if let Err(err) = staged {
            self.remove_all(&temps);
            return Err(err);
        }
        let mut entries: Vec<LogEntry> = planned
            .iter()
            .map(|(write, seq)| LogEntry::Written {
                seq: *seq,
                id: write.id.clone(),
            })
            .collect();
        let batch_newest = planned.iter().map(|(write, _)| &write.newest).max();
        entries.extend(self.log.newest().raised_by(batch_newest));
        if let Err(err) = self.log.append(self.ops.as_ref(), entries, durable) {
            self.remove_all(&temps);
            return Err(err);
        }
        // The moves only happen for writes that will be renamed into place
        // right after, so a corrupt file never vanishes without replacement
        // (unless the process dies in between: then it reads as absent, as
        // it did before, and is still in the sidecar directory).
        for id in &corrupt_files {
            let path = self.record_path(id);
            if let Err(err) = move_aside(self.ops(), &self.dir, &path, durable, &self.name) {
                self.remove_all(&temps);
                return Err(err);
            }
        }
        for (index, ((write, _), temp)) in planned.iter().zip(&temps).enumerate() {
            let target = self.record_path(&write.id);
            if let Err(err) = self.ops().rename(temp, &target) {
                self.remove_all(temps.get(index..).unwrap_or_default());
                return Err(io_error("renaming into", &target, err));
            }
        }
        if durable {
            sync_dir(self.ops(), &self.dir)?;
        }
        self.maybe_compact();
        Ok(outcomes)
    }

    fn remove_all(&self, paths: &[PathBuf]) {
        for path in paths {
            // Best effort: leftovers are removed on the next open.
            let _ = self.ops().remove_file(path);
        }
    }

    /// Whether a new record's file is free to write; `true` when it holds a
    /// corrupt file that must be moved aside first. With a hashed name it could
    /// hold another record whose name has the same hash, which must be
    /// reported rather than overwritten.
    fn check_free(&self, id: &str) -> Result<bool> {
        let stem = stem_for(id);
        let path = self.record_path(id);
        match load(&path, &self.name, None)? {
            RecordFile::Missing => Ok(false),
            RecordFile::Valid(record) if record.id() == id => Ok(false),
            RecordFile::Valid(record) if is_hashed(&stem) => Err(corrupt(
                &self.name,
                Some(id),
                &path,
                format!(
                    "holds record {:?} whose name has the same hash; move it away to store this one",
                    record.id().as_str()
                ),
            )),
            // A record that belongs in another file, no record at all, or a link.
            RecordFile::Valid(_) | RecordFile::Corrupt(_) => Ok(true),
        }
    }

    /// At least the newest stamp of the collection's records (under the
    /// exclusive lock). Read from the log when it knows; otherwise from every
    /// record file once, and then written to the log for the next time.
    pub(crate) fn newest_stamp(&mut self) -> Result<Option<Stamp>> {
        if let NewestStamp::Known(newest) = self.log.newest() {
            return Ok(newest.clone());
        }
        let (records, _) = records::read_all(&self.dir, &self.name)?;
        let newest = records.iter().map(Record::newest_stamp).max().cloned();
        let durable = self.durable();
        self.log.append(
            self.ops.as_ref(),
            vec![LogEntry::Newest {
                newest: newest.clone(),
            }],
            durable,
        )?;
        Ok(newest)
    }

    /// Removes a record for good (under the exclusive lock). The file goes
    /// first: a crash before the log entry leaves an entry without a file,
    /// which reads as absent and is dropped on the next open.
    pub(crate) fn delete(&mut self, id: &str) -> Result<bool> {
        let path = self.record_path(id);
        let existed = match self.ops().remove_file(&path) {
            Ok(()) => true,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
            Err(err) => return Err(io_error("removing", &path, err)),
        };
        if existed && self.durable() {
            sync_dir(self.ops(), &self.dir)?;
        }
        if self.log.knows(id) {
            let seq = self.log.checked_next(self.log.last_seq(), "sequence")?;
            let durable = self.durable();
            self.log.append(
                self.ops.as_ref(),
                vec![LogEntry::Removed {
                    removed: id.to_owned(),
                    seq: Some(seq),
                }],
                durable,
            )?;
            self.maybe_compact();
        }
        Ok(existed)
    }

    /// Removes every record file and starts an empty log that keeps the
    /// sequence, so change-feed cursors stay valid (under the exclusive lock).
    pub(crate) fn clear(&mut self) -> Result<()> {
        for entry in read_dir(&self.dir)? {
            let file_name = entry.file_name();
            if file_name.to_str().and_then(records::record_stem).is_some() {
                let path = entry.path();
                self.ops()
                    .remove_file(&path)
                    .map_err(|err| io_error("removing", &path, err))?;
            }
        }
        if self.durable() {
            sync_dir(self.ops(), &self.dir)?;
        }
        self.log.forget_records();
        let base = self.log.last_seq();
        let durable = self.durable();
        self.log.rewrite(self.ops.as_ref(), base, durable)
    }

    /// Every record, read from the files (under a lock), and the corrupt
    /// files skipped.
    pub(crate) fn read_all(&mut self) -> Result<(Vec<Record>, Vec<crate::CorruptFile>)> {
        records::read_all(&self.dir, &self.name)
    }

    /// The change feed after `after` (under the shared lock). A record whose
    /// file is corrupt is skipped with a warning and counted in `skipped`:
    /// the feed must keep moving. A file that cannot be read fails the call.
    pub(crate) fn changes(
        &self,
        after: Cursor,
        limit: usize,
        skipped: &mut u64,
    ) -> Result<ChangePage> {
        let mut page = ChangePage {
            changes: Vec::new(),
            next: after,
            more: false,
        };
        let mut pending = self.log.after(after.get()).peekable();
        while page.changes.len() < limit {
            let Some((seq, id)) = pending.next() else {
                break;
            };
            match self.load(id)? {
                RecordFile::Valid(record) => page.changes.push(Change {
                    cursor: Cursor::new(*seq),
                    record,
                }),
                RecordFile::Missing => {}
                RecordFile::Corrupt(err) => {
                    tracing::warn!(%err, "skipping a corrupt record file in the change feed");
                    *skipped += 1;
                }
            }
            page.next = Cursor::new(*seq);
        }
        page.more = pending.peek().is_some();
        Ok(page)
    }
}

/// Whether a collection's directory exists: `false` when missing, a
/// [`Error::Corrupt`] when a link or a file is in its place.
pub(crate) fn check_dir(dir: &Path, collection: &str) -> Result<bool> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(true),
        Ok(meta) if meta.file_type().is_symlink() => {
            Err(corrupt(collection, None, dir, LINK_REASON))
        }
        Ok(_) => Err(corrupt(
            collection,
            None,
            dir,
            "is a file where the store keeps the collection's directory",
        )),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(io_error("inspecting", dir, err)),
    }
}
