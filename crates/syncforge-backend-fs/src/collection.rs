//! One collection's directory: record files, the change log and the lock.
//!
//! The change log (`.changes`) is an append-only file of JSON lines. Its first
//! line is a header carrying a generation (bumped whenever the log is
//! rewritten) and a base sequence (the highest sequence ever assigned when it
//! was rewritten, so sequences never go back). Each further line says that a
//! record got a sequence (`{"seq":7,"id":"n1"}`) or was removed for good
//! (`{"removed":"n1"}`). A line `{"newest":"<stamp>"}` (or `null` for none)
//! bounds the newest stamp of every record written before it, so opening an
//! engine need not read the record files; a log without one (rebuilt from
//! the files, say) gets one the first time the newest stamp is asked for.
//! Every handle keeps the log's content in memory and
//! reads only what was appended since it last looked, so a change read by
//! another handle or process is seen on the next call.
//!
//! Writes hold the exclusive lock on `.lock`, reads the shared one. A write
//! appends to the log (and syncs it) *before* renaming record files into
//! place, so a crash can leave a sequence for content that did not change
//! (a harmless extra entry in the change feed) but never new content without
//! its sequence (which a change-feed reader would miss).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use syncforge_core::{
    Change, ChangePage, Cursor, Error, Record, Result, Stamp, Stored, Token, WriteOutcome,
};

use crate::encoding::{decode, is_hashed, stem_for};
use crate::files::{
    corrupt, create_dir, io_error, open_lock_file, read_if_exists, replace_atomically, sync_dir,
    sync_files, write_temp, TEMP_PREFIX,
};
use crate::{CorruptFile, Durability};

/// What ends a record file's name.
const RECORD_SUFFIX: &str = ".json";
/// Directory (in a collection directory) where corrupt record files are moved
/// when a write replaces them, so that nothing is silently destroyed.
const CORRUPT_DIR: &str = ".corrupt";
/// The highest sequence, base or generation the log may hold: the largest
/// integer a JSON number keeps exactly everywhere (2^53). A value above it
/// read from disk makes the log unreadable (and rebuilt), and no increment
/// goes past it, so arithmetic on sequences can never overflow.
const MAX_SEQUENCE: u64 = 1 << 53;
/// Name of the change log in a collection directory.
const LOG_FILE: &str = ".changes";
/// Name of the lock file in a collection directory.
const LOCK_FILE: &str = ".lock";
/// Name of the file holding a collection's name when its directory name is hashed.
pub(crate) const NAME_FILE: &str = ".name";
/// The format tag in the change log's header.
const LOG_FORMAT: &str = "syncforge-fs/changes";
/// Rewrite the log once it holds this many lines and more than twice as many
/// as there are live records.
const COMPACT_MIN_LINES: usize = 1024;

#[derive(Serialize, Deserialize)]
struct LogHeader {
    format: String,
    version: u32,
    generation: u64,
    base: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum LogEntry {
    Written { seq: u64, id: String },
    Removed { removed: String },
    Newest { newest: Option<Stamp> },
}

/// What the log says about the newest stamp among the collection's records.
#[derive(Clone)]
enum NewestStamp {
    /// The log has no `newest` line since it was last rewritten from the
    /// record files: only reading them tells.
    Unknown,
    /// At least as new as every stamp stored (`None`: nothing was stored).
    Known(Option<Stamp>),
}

impl NewestStamp {
    /// The line to append when `stamp` was just stored and is newer than what
    /// is known; nothing when unknown (the next read of the files covers it).
    fn raised_by(&self, stamp: Option<&Stamp>) -> Option<LogEntry> {
        let (NewestStamp::Known(known), Some(stamp)) = (self, stamp) else {
            return None;
        };
        if known.as_ref().is_some_and(|known| known >= stamp) {
            return None;
        }
        Some(LogEntry::Newest {
            newest: Some(stamp.clone()),
        })
    }
}

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
    dir: PathBuf,
    durability: Durability,
    lock_file: File,
    /// Generation of the log the in-memory view was read from; 0 when the view
    /// must be reloaded from scratch.
    generation: u64,
    /// Bytes of the log consumed so far (always the end of a complete line).
    offset: u64,
    /// Lines in the log (entries only), to decide when to compact.
    lines: usize,
    last_seq: u64,
    seqs: HashMap<String, u64>,
    by_seq: BTreeMap<u64, String>,
    newest: NewestStamp,
}

impl Collection {
    /// Path of a collection's directory under the store root.
    pub(crate) fn dir_for(root: &Path, name: &str) -> PathBuf {
        root.join(stem_for(name))
    }

    /// Opens a collection, creating its directory when `create`; `None` when it
    /// does not exist and `create` is false. Reconciles the log with the files
    /// left by a crash or by hand.
    pub(crate) fn open(
        root: &Path,
        name: &str,
        durability: Durability,
        create: bool,
    ) -> Result<Option<Collection>> {
        let dir = Self::dir_for(root, name);
        if !dir.is_dir() {
            if !create {
                return Ok(None);
            }
            create_dir(&dir, durability.is_full())?;
        }
        let lock_file = open_lock_file(&dir.join(LOCK_FILE))?;
        let mut collection = Collection {
            dir,
            durability,
            lock_file,
            generation: 0,
            offset: 0,
            lines: 0,
            last_seq: 0,
            seqs: HashMap::new(),
            by_seq: BTreeMap::new(),
            newest: NewestStamp::Unknown,
        };
        // Under the lock: another process reconciling the directory removes
        // temporaries, which would include this write's.
        collection.exclusive(|c| {
            c.write_name_file(name)?;
            c.reconcile()
        })?;
        Ok(Some(collection))
    }

    /// Writes `.name` when the directory name is hashed and it is missing
    /// (under the exclusive lock).
    fn write_name_file(&self, name: &str) -> Result<()> {
        let name_file = self.dir.join(NAME_FILE);
        if is_hashed(&stem_for(name)) && !name_file.exists() {
            replace_atomically(&name_file, name.as_bytes(), self.durable())?;
        }
        Ok(())
    }

    fn durable(&self) -> bool {
        self.durability.is_full()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Path of a record's file.
    pub(crate) fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{}{RECORD_SUFFIX}", stem_for(id)))
    }

    /// Runs `f` under the shared lock, after catching up with the log.
    pub(crate) fn shared<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.locked(false, f)
    }

    /// Runs `f` under the exclusive lock, after catching up with the log.
    pub(crate) fn exclusive<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.locked(true, f)
    }

    fn locked<T>(&mut self, exclusive: bool, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.lock(exclusive)?;
        let result = self.catch_up(exclusive).and_then(|()| f(self));
        if result.is_err() {
            // What is on disk is unknown after a failure; read it all again next time.
            self.generation = 0;
        }
        self.unlock();
        result
    }

    fn lock(&self, exclusive: bool) -> Result<()> {
        let result = if exclusive {
            self.lock_file.lock()
        } else {
            self.lock_file.lock_shared()
        };
        result.map_err(|err| io_error("locking", &self.dir.join(LOCK_FILE), err))
    }

    fn unlock(&self) {
        if let Err(err) = self.lock_file.unlock() {
            // Closing the file releases the lock anyway.
            tracing::warn!(dir = %self.dir.display(), %err, "could not release the lock");
        }
    }

    /// Catches up with the log; a missing or unreadable log is rebuilt from
    /// the record files, which needs the exclusive lock (taken here if only the
    /// shared one is held; the caller releases it).
    fn catch_up(&mut self, exclusive: bool) -> Result<()> {
        let Some(problem) = self.refresh()? else {
            return Ok(());
        };
        if !exclusive {
            // Upgrading in place is not portable: release, then wait for the
            // exclusive lock, and look again (another handle may have rebuilt).
            self.unlock();
            self.lock(true)?;
            if self.refresh()?.is_none() {
                return Ok(());
            }
        }
        self.rebuild(&problem)
    }

    /// Reads what was appended to the log since the last call. Returns what is
    /// wrong with the log when it is missing or cannot be parsed.
    fn refresh(&mut self) -> Result<Option<String>> {
        let path = self.log_path();
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Ok(Some("missing".to_owned()));
            }
            Err(err) => return Err(io_error("opening", &path, err)),
        };
        let mut header_line = Vec::new();
        read_line(&mut file, &mut header_line).map_err(|err| io_error("reading", &path, err))?;
        let header: LogHeader = match serde_json::from_slice(&header_line) {
            Ok(header) => header,
            Err(err) => return Ok(Some(format!("unreadable header: {err}"))),
        };
        if header.format != LOG_FORMAT || header.version != 1 {
            return Err(corrupt(
                &path,
                format!(
                    "unknown format {:?} version {}",
                    header.format, header.version
                ),
            ));
        }
        if header.generation > MAX_SEQUENCE || header.base > MAX_SEQUENCE {
            self.generation = 0;
            return Ok(Some(format!(
                "header generation {} or base {} above {MAX_SEQUENCE}",
                header.generation, header.base
            )));
        }
        if header.generation != self.generation {
            self.reset(header.generation, header.base);
            self.offset = header_line.len() as u64 + 1;
        }
        file.seek(SeekFrom::Start(self.offset))
            .map_err(|err| io_error("reading", &path, err))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)
            .map_err(|err| io_error("reading", &path, err))?;
        // Only complete lines count: an incomplete last one is the remains of
        // a crashed append and is cut off by the next writer.
        for line in tail.split_inclusive(|b| *b == b'\n') {
            let Some(content) = line.strip_suffix(b"\n") else {
                break;
            };
            let entry: LogEntry = match serde_json::from_slice(content) {
                Ok(LogEntry::Written { seq, .. }) if seq > MAX_SEQUENCE => {
                    self.generation = 0;
                    return Ok(Some(format!("entry sequence {seq} above {MAX_SEQUENCE}")));
                }
                Ok(entry) => entry,
                Err(err) => {
                    self.generation = 0;
                    return Ok(Some(format!("unreadable entry: {err}")));
                }
            };
            self.apply(entry);
            self.offset += line.len() as u64;
        }
        Ok(None)
    }

    fn reset(&mut self, generation: u64, base: u64) {
        self.generation = generation;
        self.offset = 0;
        self.lines = 0;
        self.last_seq = base;
        self.seqs.clear();
        self.by_seq.clear();
        self.newest = NewestStamp::Unknown;
    }

    fn apply(&mut self, entry: LogEntry) {
        self.lines += 1;
        match entry {
            LogEntry::Written { seq, id } => {
                if let Some(old) = self.seqs.insert(id.clone(), seq) {
                    self.by_seq.remove(&old);
                }
                self.by_seq.insert(seq, id);
                self.last_seq = self.last_seq.max(seq);
            }
            LogEntry::Removed { removed } => {
                if let Some(old) = self.seqs.remove(&removed) {
                    self.by_seq.remove(&old);
                }
            }
            LogEntry::Newest { newest } => {
                let known = match &self.newest {
                    NewestStamp::Known(known) => known.clone().max(newest),
                    NewestStamp::Unknown => newest,
                };
                self.newest = NewestStamp::Known(known);
            }
        }
    }

    /// Rebuilds a missing or unreadable log from the record files (under the
    /// exclusive lock). Every record gets a fresh sequence above any the old
    /// log can have handed out, so change-feed readers see everything again
    /// rather than miss anything. A new collection directory takes this path
    /// too, and starts at 1.
    fn rebuild(&mut self, problem: &str) -> Result<()> {
        let path = self.log_path();
        let old = read_if_exists(&path)?;
        let mut highest_seq = self.last_seq;
        let mut highest_generation = self.generation;
        if let Some(bytes) = &old {
            tracing::warn!(log = %path.display(), problem, "rebuilding the change log from the record files");
            for value in bytes
                .split(|b| *b == b'\n')
                .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
            {
                // Out-of-range numbers are what made the log unreadable.
                let number = |key: &str| {
                    value
                        .get(key)
                        .and_then(serde_json::Value::as_u64)
                        .filter(|n| *n <= MAX_SEQUENCE)
                };
                highest_seq = highest_seq
                    .max(number("seq").unwrap_or(0))
                    .max(number("base").unwrap_or(0));
                highest_generation = highest_generation.max(number("generation").unwrap_or(0));
            }
        }
        let has_records = has_records(&self.dir)?;
        if old.is_some() || has_records {
            // What the lost log held is unknown, so readers' cursors could
            // be anywhere up to its last sequence. No count of writes comes
            // near the current time in microseconds: starting above it keeps
            // the new sequences above every cursor.
            highest_seq = highest_seq.max(micros_since_epoch());
        }
        self.reset(highest_generation, highest_seq);
        if !has_records {
            self.newest = NewestStamp::Known(None);
        }
        self.rewrite_log(highest_seq)?;
        self.reconcile()
    }

    /// Writes a new log holding the live entries, with a new generation.
    fn rewrite_log(&mut self, base: u64) -> Result<()> {
        // Other handles tell a rewritten log by its generation. Taking the
        // time keeps it new even when the old log was deleted and its
        // generation is unknown here.
        let generation = self
            .checked_next(self.generation, "generation")?
            .max(micros_since_epoch());
        let header = LogHeader {
            format: LOG_FORMAT.to_owned(),
            version: 1,
            generation,
            base,
        };
        let mut text = json_line(&header)?;
        if let NewestStamp::Known(newest) = &self.newest {
            text.push_str(&json_line(&LogEntry::Newest {
                newest: newest.clone(),
            })?);
        }
        for (seq, id) in &self.by_seq {
            text.push_str(&json_line(&LogEntry::Written {
                seq: *seq,
                id: id.clone(),
            })?);
        }
        replace_atomically(&self.log_path(), text.as_bytes(), self.durable())?;
        self.generation = generation;
        self.offset = text.len() as u64;
        self.lines = self.by_seq.len() + usize::from(matches!(self.newest, NewestStamp::Known(_)));
        self.last_seq = self.last_seq.max(base);
        Ok(())
    }

    /// Brings the log in line with the files (under the exclusive lock):
    /// creates it when missing, gives a sequence to record files it does not
    /// know, forgets entries whose file is gone, and removes temporaries left
    /// by a crashed writer.
    fn reconcile(&mut self) -> Result<()> {
        let mut on_disk = HashSet::new();
        for entry in read_dir(&self.dir)? {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if file_name.starts_with(TEMP_PREFIX) {
                let path = entry.path();
                fs::remove_file(&path).map_err(|err| io_error("removing", &path, err))?;
                continue;
            }
            if let Some(id) = self.id_of_file(file_name)? {
                on_disk.insert(id);
            }
        }
        let mut unknown: Vec<&String> = on_disk
            .iter()
            .filter(|id| !self.seqs.contains_key(*id))
            .collect();
        unknown.sort();
        let mut entries = Vec::with_capacity(unknown.len() + 1);
        let mut seq = self.last_seq;
        let mut newest = None;
        for id in unknown {
            seq = self.checked_next(seq, "sequence")?;
            if matches!(self.newest, NewestStamp::Known(_)) {
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
        entries.extend(self.newest.raised_by(newest.as_ref()));
        for id in self.seqs.keys().filter(|id| !on_disk.contains(*id)) {
            entries.push(LogEntry::Removed {
                removed: id.clone(),
            });
        }
        self.append(entries)
    }

    /// `value + 1`, or a typed error once the log's numbers reach
    /// [`MAX_SEQUENCE`] (only a log damaged by hand gets there).
    fn checked_next(&self, value: u64, what: &str) -> Result<u64> {
        value
            .checked_add(1)
            .filter(|next| *next <= MAX_SEQUENCE)
            .ok_or_else(|| {
                corrupt(
                    &self.log_path(),
                    format!("the {what} {value} cannot grow past {MAX_SEQUENCE}; delete the log to rebuild it"),
                )
            })
    }

    /// The id a directory entry stores, if it is a record file. Hashed names
    /// are read from the file; unreadable ones are left alone (and reported
    /// when read).
    fn id_of_file(&self, file_name: &str) -> Result<Option<String>> {
        let Some(stem) = record_stem(file_name) else {
            return Ok(None);
        };
        if !is_hashed(stem) {
            return Ok(decode(stem));
        }
        let path = self.dir.join(file_name);
        match read_record_file(&path) {
            Ok(Some(record)) if stem_for(record.id()) == stem => Ok(Some(record.id().to_string())),
            Ok(_) => Ok(None),
            Err(err) => {
                tracing::warn!(%err, "skipping an unreadable record file");
                Ok(None)
            }
        }
    }

    /// Appends entries to the log (under the exclusive lock), cutting off an
    /// incomplete line a crashed writer may have left.
    fn append(&mut self, entries: Vec<LogEntry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for entry in &entries {
            text.push_str(&json_line(entry)?);
        }
        let path = self.log_path();
        let result = (|| {
            let mut file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(self.offset)?;
            file.seek(SeekFrom::Start(self.offset))?;
            file.write_all(text.as_bytes())?;
            if self.durable() {
                file.sync_data()?;
            }
            Ok(())
        })();
        result.map_err(|err| io_error("appending to", &path, err))?;
        self.offset += text.len() as u64;
        for entry in entries {
            self.apply(entry);
        }
        Ok(())
    }

    /// Rewrites the log without superseded entries once it has grown enough.
    /// Best effort: it runs after writes that are already committed, which
    /// must not be reported as failed; the next write tries again.
    fn maybe_compact(&mut self) {
        if self.lines >= COMPACT_MIN_LINES && self.lines > 2 * self.seqs.len() {
            if let Err(err) = self.rewrite_log(self.last_seq) {
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
    pub(crate) fn read_stored_skipping_corrupt(&self, id: &str) -> Result<Option<Stored>> {
        self.read_stored_or(id, |err| {
            tracing::warn!(%err, "reading a corrupt record file as absent");
            Ok(None)
        })
    }

    fn read_stored_or(
        &self,
        id: &str,
        on_corrupt: impl FnOnce(Error) -> Result<Option<Stored>>,
    ) -> Result<Option<Stored>> {
        let Some(seq) = self.seqs.get(id) else {
            return Ok(None);
        };
        match self.load(id)? {
            RecordFile::Missing => Ok(None),
            RecordFile::Valid(record) => Ok(Some(Stored {
                record,
                token: Token::Sequence(*seq),
            })),
            RecordFile::Corrupt(err) => on_corrupt(err),
        }
    }

    /// What the file of `id` holds. I/O errors stay errors: only content that
    /// is not the record counts as corrupt.
    fn load(&self, id: &str) -> Result<RecordFile> {
        let path = self.record_path(id);
        Ok(match load_record_file(&path)? {
            RecordFile::Valid(record) if record.id() != id => RecordFile::Corrupt(corrupt(
                &path,
                format!("holds record {:?}, not {id:?}", record.id()),
            )),
            other => other,
        })
    }

    /// Moves a corrupt record file into [`CORRUPT_DIR`] under a new name
    /// (under the exclusive lock), so a write can take its place while the
    /// content stays available for inspection.
    fn move_aside(&self, id: &str) -> Result<()> {
        let path = self.record_path(id);
        let aside_dir = self.dir.join(CORRUPT_DIR);
        create_dir(&aside_dir, self.durable())?;
        let file_name = format!("{}{RECORD_SUFFIX}.{}", stem_for(id), micros_since_epoch());
        let mut target = aside_dir.join(&file_name);
        // Two files moved aside in the same microsecond: add a counter.
        for attempt in 1..=1000 {
            if !target.exists() {
                break;
            }
            target = aside_dir.join(format!("{file_name}-{attempt}"));
        }
        fs::rename(&path, &target).map_err(|err| io_error("moving aside", &path, err))?;
        tracing::warn!(
            file = %path.display(),
            moved_to = %target.display(),
            "moved a corrupt record file aside to write the record"
        );
        if self.durable() {
            sync_dir(&aside_dir)?;
        }
        Ok(())
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
        let mut next = self.last_seq;
        for write in writes {
            let stored = match current.get(write.id.as_str()) {
                Some(planned) => Some(*planned),
                None => match self.seqs.get(&write.id) {
                    None => None,
                    Some(seq) if write.expected.is_some() => Some(*seq),
                    // A file removed by hand leaves its log entry behind until
                    // the next open; the record is absent all the same. So is
                    // a corrupt file, which reads as absent and is moved aside.
                    Some(seq) => match self.load(&write.id)? {
                        RecordFile::Missing => None,
                        RecordFile::Valid(_) => Some(*seq),
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
            next = self.checked_next(next, "sequence")?;
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
                temps.push(write_temp(&self.dir, write.json.as_bytes(), false)?);
            }
            if durable {
                sync_files(&temps)?;
            }
            Ok::<_, Error>(())
        })();
        if let Err(err) = staged {
            remove_all(&temps);
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
        entries.extend(self.newest.raised_by(batch_newest));
        if let Err(err) = self.append(entries) {
            remove_all(&temps);
            return Err(err);
        }
        // The moves only happen for writes that will be renamed into place
        // right after, so a corrupt file never vanishes without replacement
        // (unless the process dies in between: then it reads as absent, as
        // it did before, and is still in the sidecar directory).
        for id in &corrupt_files {
            if let Err(err) = self.move_aside(id) {
                remove_all(&temps);
                return Err(err);
            }
        }
        for (index, ((write, _), temp)) in planned.iter().zip(&temps).enumerate() {
            let target = self.record_path(&write.id);
            if let Err(err) = fs::rename(temp, &target) {
                remove_all(temps.get(index..).unwrap_or_default());
                return Err(io_error("renaming into", &target, err));
            }
        }
        if durable {
            sync_dir(&self.dir)?;
        }
        self.maybe_compact();
        Ok(outcomes)
    }

    /// Whether a new record's file is free to write; `true` when it holds a
    /// corrupt file that must be moved aside first. With a hashed name it could
    /// hold another record whose name has the same hash, which must be
    /// reported rather than overwritten.
    fn check_free(&self, id: &str) -> Result<bool> {
        let stem = stem_for(id);
        if !is_hashed(&stem) {
            return Ok(false);
        }
        let path = self.record_path(id);
        match load_record_file(&path)? {
            RecordFile::Missing => Ok(false),
            RecordFile::Valid(record) if record.id() == id => Ok(false),
            RecordFile::Valid(record) if stem_for(record.id()) == stem => Err(corrupt(
                &path,
                format!(
                    "holds record {:?} whose name has the same hash as {id:?}; move it away to store {id:?}",
                    record.id()
                ),
            )),
            // A record that belongs in another file, or no record at all.
            RecordFile::Valid(_) | RecordFile::Corrupt(_) => Ok(true),
        }
    }

    /// At least the newest stamp of the collection's records (under the
    /// exclusive lock). Read from the log when it knows; otherwise from every
    /// record file once, and then written to the log for the next time.
    pub(crate) fn newest_stamp(&mut self) -> Result<Option<Stamp>> {
        if let NewestStamp::Known(newest) = &self.newest {
            return Ok(newest.clone());
        }
        let (records, _) = read_all(&self.dir)?;
        let newest = records.iter().map(Record::newest_stamp).max().cloned();
        self.append(vec![LogEntry::Newest {
            newest: newest.clone(),
        }])?;
        Ok(newest)
    }

    /// Removes a record for good (under the exclusive lock). The file goes
    /// first: a crash before the log entry leaves an entry without a file,
    /// which reads as absent and is dropped on the next open.
    pub(crate) fn delete(&mut self, id: &str) -> Result<bool> {
        let path = self.record_path(id);
        let existed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(err) => return Err(io_error("removing", &path, err)),
        };
        if existed && self.durable() {
            sync_dir(&self.dir)?;
        }
        if self.seqs.contains_key(id) {
            self.append(vec![LogEntry::Removed {
                removed: id.to_owned(),
            }])?;
            self.maybe_compact();
        }
        Ok(existed)
    }

    /// Removes every record file and starts an empty log that keeps the
    /// sequence, so change-feed cursors stay valid (under the exclusive lock).
    pub(crate) fn clear(&mut self) -> Result<()> {
        for entry in read_dir(&self.dir)? {
            let file_name = entry.file_name();
            if file_name.to_str().and_then(record_stem).is_some() {
                let path = entry.path();
                fs::remove_file(&path).map_err(|err| io_error("removing", &path, err))?;
            }
        }
        if self.durable() {
            sync_dir(&self.dir)?;
        }
        self.seqs.clear();
        self.by_seq.clear();
        self.rewrite_log(self.last_seq)
    }

    /// The change feed after `after` (under the shared lock). A record whose
    /// file is corrupt is skipped with a warning: the feed must keep moving.
    pub(crate) fn changes(&self, after: Cursor, limit: usize) -> Result<ChangePage> {
        let mut page = ChangePage {
            changes: Vec::new(),
            next: after,
            more: false,
        };
        let mut pending = self
            .by_seq
            .range(after.get().saturating_add(1)..)
            .peekable();
        while page.changes.len() < limit {
            let Some((seq, id)) = pending.next() else {
                break;
            };
            page.next = Cursor::new(*seq);
            let path = self.record_path(id);
            match read_record_file(&path) {
                Ok(Some(record)) if record.id() == id => page.changes.push(Change {
                    cursor: Cursor::new(*seq),
                    record,
                }),
                Ok(Some(record)) => tracing::warn!(
                    file = %path.display(),
                    found = record.id().as_str(),
                    "skipping a record file that holds another record"
                ),
                Ok(None) => {}
                Err(err) => tracing::warn!(%err, "skipping a corrupt record file"),
            }
        }
        page.more = pending.peek().is_some();
        Ok(page)
    }
}

/// Reads every record of a collection directory, without the index: files are
/// replaced atomically, so each one is whole. Files that cannot be read as the
/// record their name says are skipped with a warning and returned in
/// `skipped`, so one bad file cannot make the others unreadable.
pub(crate) fn read_all(dir: &Path) -> Result<(Vec<Record>, Vec<CorruptFile>)> {
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((records, skipped)),
        Err(err) => return Err(io_error("listing", dir, err)),
    };
    for entry in entries {
        let entry = entry.map_err(|err| io_error("listing", dir, err))?;
        let file_name = entry.file_name();
        let Some(stem) = file_name.to_str().and_then(record_stem) else {
            continue;
        };
        let path = entry.path();
        match read_record_file(&path) {
            Ok(Some(record)) if stem_for(record.id()) == stem => records.push(record),
            Ok(Some(record)) => {
                let err = corrupt(
                    &path,
                    format!(
                        "holds record {:?}, which belongs in another file",
                        record.id()
                    ),
                );
                skipped.push(CorruptFile { path, error: err });
            }
            Ok(None) => {}
            Err(error) => skipped.push(CorruptFile { path, error }),
        }
    }
    for file in &skipped {
        tracing::warn!(err = %file.error, "skipping a record file that cannot be read");
    }
    Ok((records, skipped))
}

/// Whether a collection directory holds at least one record file.
pub(crate) fn has_records(dir: &Path) -> Result<bool> {
    for entry in read_dir(dir)? {
        if entry.file_name().to_str().and_then(record_stem).is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The stem of a record file's name (the encoded id), or `None` for anything
/// else: names starting with a dot belong to the store.
pub(crate) fn record_stem(file_name: &str) -> Option<&str> {
    file_name
        .strip_suffix(RECORD_SUFFIX)
        .filter(|stem| !stem.starts_with('.'))
}

/// What a record file holds.
enum RecordFile {
    /// There is no such file.
    Missing,
    /// A record (not yet checked against the file's name).
    Valid(Record),
    /// Something that is not a record, with the error naming the file.
    Corrupt(Error),
}

/// Reads and parses one record file. Only failing to read it is an error.
fn load_record_file(path: &Path) -> Result<RecordFile> {
    let Some(bytes) = read_if_exists(path)? else {
        return Ok(RecordFile::Missing);
    };
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(err) => {
            return Ok(RecordFile::Corrupt(corrupt(
                path,
                format!("not JSON: {err}"),
            )))
        }
    };
    Ok(match Record::from_json(value) {
        Ok(record) => RecordFile::Valid(record),
        Err(err) => RecordFile::Corrupt(corrupt(path, err)),
    })
}

/// Reads and parses one record file; `None` when it does not exist. A file
/// that is not a record gives an error naming it.
pub(crate) fn read_record_file(path: &Path) -> Result<Option<Record>> {
    match load_record_file(path)? {
        RecordFile::Missing => Ok(None),
        RecordFile::Valid(record) => Ok(Some(record)),
        RecordFile::Corrupt(err) => Err(err),
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<io::Result<Vec<_>>>())
        .map_err(|err| io_error("listing", dir, err))
}

fn json_line<T: Serialize>(value: &T) -> Result<String> {
    let mut line = serde_json::to_string(value).map_err(|err| {
        Error::storage(crate::BACKEND_NAME, format!("encoding a log entry: {err}"))
    })?;
    line.push('\n');
    Ok(line)
}

/// Reads up to (not including) the first newline.
fn read_line(file: &mut File, line: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = [0u8; 256];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if let Some(pos) = buf[..n].iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&buf[..pos]);
            return Ok(());
        }
        line.extend_from_slice(&buf[..n]);
    }
}

fn remove_all(paths: &[PathBuf]) {
    for path in paths {
        // Best effort: leftovers are removed on the next open.
        let _ = fs::remove_file(path);
    }
}

fn micros_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(0)
}
