//! One collection's directory: record files ([`records`]), the change log
//! ([`log`]), the write-ahead log ([`wal`]) and the lock ([`lock`]), put
//! together into the operations of the backend.
//!
//! Writes hold the exclusive lock, reads the shared one. A write commits by
//! appending one frame to the write-ahead log (one sync under
//! [`Durability::Full`]) and then appends its sequences to the change log,
//! unsynced. Its records are then *pending*: every handle keeps the content
//! of the frames since the last checkpoint in memory and reads pending
//! records from there. A checkpoint ([`checkpoint`]) — in the background
//! once the frames reach [`Tuning::checkpoint_bytes`]; at once when a handle
//! opens the collection, before a clear, on close — writes the pending
//! records' files, syncs them, the directory and the change log, and only then
//! drops the frames it wrote from the write-ahead log.
//!
//! Every call first catches up with both logs. A frame whose sequences the
//! change log lacks (its writer died between the two appends, or a power cut
//! took the unsynced change-log lines) has its records entered again with
//! fresh sequences, so no change-feed reader misses them and no sequence is
//! handed out twice.

pub(crate) mod checkpoint;
pub(crate) mod lock;
pub(crate) mod log;
pub(crate) mod open;
pub(crate) mod records;
pub(crate) mod wal;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use syncforge_core::{
    Change, ChangePage, Cursor, Error, Record, Result, Stamp, Stored, Token, WriteOutcome,
};

use self::checkpoint::{CheckpointJob, CheckpointLock, Due};
use self::lock::{DirLock, Mode};
use self::log::{micros_since_epoch, salvage, ChangeLog, LogEntry, NewestStamp};
use self::records::{file_name_for, has_records, id_of_file, load, parse, RecordFile, Unreadable};
use self::wal::{Frame, Refresh, Wal, WalOp};
use crate::encoding::{is_hashed, stem_for};
use crate::files::{
    corrupt, create_dir_all, io_error, parent, read_dir, read_file, remove_temporaries,
    replace_atomically, sync_dir, FileOps, Read, LINK_REASON, TEMP_PREFIX,
};
use crate::{Durability, Tuning};

/// Name of the file holding a collection's name when its directory name is hashed.
pub(crate) const NAME_FILE: &str = ".name";
/// The change-feed positions reserved for [`Durability::Buffered`] writes:
/// every position such a write takes is at most the number this file
/// holds, written durably first (see [`Collection::reserve_through`]).
pub(crate) const RESERVED_FILE: &str = ".reserved";
/// A bound on the change-feed positions [`Durability::Full`] writes took,
/// raised durably before positions pass it. A `Full` write's position is
/// in the synced change log, but a log deleted whole takes them all with
/// it: the log rebuilt then numbers above this bound (and the
/// reservation), whatever the clock says. Unlike the reservation it is no
/// floor at opening, since no power cut takes a `Full` write's position.
pub(crate) const HIGHEST_FILE: &str = ".highest";
/// Positions reserved at once: one durable write of [`RESERVED_FILE`] per
/// this many `Buffered` writes (and one at a handle's first), or of
/// [`HIGHEST_FILE`] per this many `Full` writes.
const RESERVATION: u64 = 1 << 20;

/// How many times [`Tuning::checkpoint_bytes`] the write-ahead log may hold
/// before writers wait for a checkpoint: checkpoints run in the background
/// while writes go on, and this bounds the log (and the memory holding its
/// records) when writes outpace them.
const BACKLOG_FACTOR: u64 = 4;

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
    checkpoint_lock: Arc<CheckpointLock>,
    log: ChangeLog,
    wal: Wal,
    /// The last committed change of each record whose file the next
    /// checkpoint writes: its canonical JSON, or `None` once removed.
    pending: HashMap<String, Option<String>>,
    /// Whether a frame of `pending` was acknowledged as durable (committed
    /// by a `Full` handle): the checkpoint that drops it then syncs the files
    /// it writes first, whatever this handle's durability, or a power cut
    /// could take back a write that handle acknowledged.
    pending_durable: bool,
    /// The write-ahead log generation `pending` was read from.
    pending_generation: u64,
    /// Whether this handle made the directory and has not built its log
    /// yet: only then is a missing log a new one, numbered from 1.
    new_dir: bool,
    /// The positions reserved for `Buffered` writes when this handle opened
    /// the collection: a power cut can take back the logs' tails, and with
    /// them positions such writes took, which a replica may already have
    /// pulled; new ones are numbered above all of them.
    floor: u64,
    /// The reservation this handle knows to be durable.
    reserved: u64,
    /// The bound on `Full` writes' positions this handle knows to be
    /// durable ([`HIGHEST_FILE`]).
    highest: u64,
    /// Whether a checkpoint failed while writing or syncing files, or a
    /// synced append to the change log failed: the change log's lines may
    /// then be pages the disk never got, which a later sync
    /// through a newly opened file does not write. The next durable
    /// checkpoint writes the log whole before it drops any frame.
    log_suspect: bool,
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
        floor: Option<u64>,
    ) -> Result<Option<Collection>> {
        let dir = Self::dir_for(root, name);
        let new_dir = !check_dir(&dir, name)?;
        if new_dir {
            if !create {
                return Ok(None);
            }
            create_dir_all(ops.as_ref(), &dir, durability.is_full(), name)?;
        }
        let lock = DirLock::open(ops.as_ref(), &dir, name)?;
        let checkpoint_lock = Arc::new(CheckpointLock::open(ops.as_ref(), &dir, name)?);
        let mut collection = Collection {
            name: name.to_owned(),
            log: ChangeLog::new(&dir, name),
            wal: Wal::new(&dir),
            pending: HashMap::new(),
            pending_durable: false,
            pending_generation: 0,
            new_dir,
            floor: 0,
            reserved: 0,
            highest: 0,
            log_suspect: false,
            dir,
            durability,
            tuning,
            ops,
            lock,
            checkpoint_lock: Arc::clone(&checkpoint_lock),
        };
        // Before anything is numbered, catching up with the logs included.
        // Taken at the handle's first open (`floor` is `None` then) and kept
        // by the handle: a collection closed to make room and opened again
        // has lost nothing since (the process is still running), and
        // numbering above the reservation at every reopen would reserve
        // again, synced, at its first write; but what a power cut took
        // before the first open is still missing from its logs.
        collection.reserved = collection.read_bound(RESERVED_FILE)?;
        collection.floor = floor.unwrap_or(collection.reserved);
        // Under both locks: reconciling removes temporaries, which would
        // include those of a write or a checkpoint under way elsewhere.
        let _checkpointing = checkpoint_lock.acquire()?;
        collection.exclusive(|c| {
            if durability.is_full() {
                c.sync_entries(root)?;
            }
            c.write_name_file()?;
            // What the write-ahead log holds goes to the files now: after a
            // crash they may hold older content, or half of the new.
            c.checkpoint_if_used()?;
            c.reconcile()?;
            if durability.is_full() {
                // `sync_entries` made the directory name this log durably.
                c.wal.named_durably();
            }
            Ok(())
        })?;
        // A missing log is a new one only while this open builds it: one
        // found later, its collection there all along, is a lost log.
        collection.new_dir = false;
        Ok(Some(collection))
    }

    /// Makes the directory's entries, and its own entry in the store's
    /// root, durable (under the exclusive lock). A process killed between
    /// renaming a file into place (the log, the change log) or creating the
    /// directory and syncing its directory left entries a power cut could
    /// undo; the writes acknowledged after this open would go with them.
    fn sync_entries(&self, root: &Path) -> Result<()> {
        sync_dir(self.ops.as_ref(), &self.dir)?;
        sync_dir(self.ops.as_ref(), root)
    }

    /// What [`RESERVED_FILE`] or [`HIGHEST_FILE`] holds: 0 while no write
    /// of that durability was ever numbered. Each is only ever replaced
    /// whole, so a cut never leaves half.
    fn read_bound(&self, file: &str) -> Result<u64> {
        let path = self.dir.join(file);
        match read_file(&path)? {
            Read::Missing => Ok(0),
            Read::Link => Err(corrupt(&self.name, None, &path, LINK_REASON)),
            Read::Bytes(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .filter(|reserved| *reserved <= log::MAX_SEQUENCE)
                .ok_or_else(|| {
                    corrupt(
                        &self.name,
                        None,
                        &path,
                        "does not hold a change-feed position: write into it a number above \
                         every position the collection handed out (the last in its change \
                         log, `.changes`)",
                    )
                }),
        }
    }

    /// The floor of this handle's numbering (see [`next_base`](Self::next_base)).
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// Where numbering goes on from: past the log's last position, and past
    /// every position reserved for `Buffered` writes when the handle opened.
    fn next_base(&self) -> u64 {
        self.log.last_seq().max(self.floor)
    }

    /// Before a handle hands out positions up to `last` (under the
    /// exclusive lock): makes sure a durable bound covers them, writing a
    /// larger one if need be: a `Buffered` handle's reservation, a `Full`
    /// handle's [`HIGHEST_FILE`].
    fn reserve_through(&mut self, last: u64) -> Result<()> {
        let durable = self.durable();
        let (file, known) = if durable {
            (HIGHEST_FILE, self.highest)
        } else {
            (RESERVED_FILE, self.reserved)
        };
        if last <= known {
            return Ok(());
        }
        // Another handle may have reserved further meanwhile.
        let on_disk = self.read_bound(file)?;
        let bound = if last > on_disk {
            let bound = last.saturating_add(RESERVATION).min(log::MAX_SEQUENCE);
            replace_atomically(
                self.ops.as_ref(),
                &self.dir.join(file),
                bound.to_string().as_bytes(),
                true,
            )?;
            if on_disk == 0 && !durable {
                // The first reservation: a `Buffered` handle made the
                // directory without syncing its entry in the store's root,
                // and a directory lost with its reservation would number
                // from 1 again under the same store id.
                sync_dir(self.ops.as_ref(), parent(&self.dir)?)?;
            }
            bound
        } else {
            on_disk
        };
        *if durable {
            &mut self.highest
        } else {
            &mut self.reserved
        } = bound;
        Ok(())
    }

    /// Writes `.name` when the directory name is hashed and it is missing
    /// or holds anything but the name (under the exclusive lock). Synced
    /// whatever the durability, as it is written once: a `.name` left
    /// empty by a power cut would drop the collection from every listing.
    fn write_name_file(&self) -> Result<()> {
        if !is_hashed(&stem_for(&self.name)) {
            return Ok(());
        }
        let name_file = self.dir.join(NAME_FILE);
        let holds_name = match read_file(&name_file)? {
            Read::Bytes(bytes) => bytes == self.name.as_bytes(),
            Read::Missing => false,
            // Never followed: the listing leaves the collection out while
            // it is there, so it is replaced (the link itself, not its
            // target), as a linked `.changes` is.
            Read::Link => false,
        };
        if !holds_name {
            replace_atomically(self.ops.as_ref(), &name_file, self.name.as_bytes(), true)?;
        }
        Ok(())
    }

    /// The lock a checkpoint of this collection holds; take it before the
    /// collection's lock (see [`checkpoint`]).
    pub(crate) fn checkpoint_lock(&self) -> Arc<CheckpointLock> {
        Arc::clone(&self.checkpoint_lock)
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
        // A panic under the lock (the OS refusing a thread, say) still
        // releases it: the handle keeps its lock file open, and every other
        // handle and process would wait on the collection for as long as
        // this one lives.
        let mut caught_up = false;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.catch_up(mode)?;
            caught_up = true;
            f(self)
        }));
        // What is on disk is unknown after a failure to read or write it,
        // or a panic: both logs are read again in full next time. A corrupt
        // record file or a refused id, found by the work after the logs
        // were read, changed nothing on disk, and re-reading a million-line
        // log after each would cost what the collection holds, not the call.
        let views_hold = caught_up && matches!(result, Ok(Ok(_) | Err(Error::Corrupt { .. })));
        if !views_hold {
            self.log.invalidate();
            self.wal.invalidate();
        }
        self.lock.unlock();
        result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// The refusal of a write-ahead log of a later version (`why`, from
    /// [`Refresh::Later`]).
    fn later_log(&self, why: &str) -> Error {
        corrupt(&self.name, None, &self.dir.join(wal::WAL_FILE), why)
    }

    /// Catches up with both logs. A missing or unreadable change log is
    /// rebuilt from the record files, a missing or damaged write-ahead log
    /// started again, and records of frames the change log lacks entered in
    /// it again: all of which needs the exclusive lock (taken here if only
    /// the shared one is held; the caller releases it). The directory is
    /// checked first: a link swapped into its place is refused.
    fn catch_up(&mut self, mode: Mode) -> Result<()> {
        if !check_dir(&self.dir, &self.name)? {
            return Err(corrupt(
                &self.name,
                None,
                &self.dir,
                "the collection's directory has gone",
            ));
        }
        let mut held = mode;
        loop {
            let problem = self.log.refresh()?;
            let frames = match self.wal.refresh()? {
                Refresh::Frames(frames) => {
                    self.absorb(&frames);
                    frames
                }
                Refresh::Later(why) => return Err(self.later_log(&why)),
                Refresh::Damaged(why) => {
                    if held == Mode::Shared {
                        held = self.upgrade()?;
                        continue;
                    }
                    if why != "missing" {
                        tracing::warn!(log = %self.dir.join(wal::WAL_FILE).display(), why, "starting the write-ahead log again");
                    }
                    // Synced whatever this handle's durability: a `Full`
                    // handle's appends to the new log sync its data, not
                    // its name in the directory.
                    self.wal.reset(self.ops.as_ref(), true)?;
                    self.pending.clear();
                    self.pending_durable = false;
                    self.pending_generation = self.wal.generation();
                    Vec::new()
                }
            };
            // A torn append can keep a frame's sequence lines and lose its
            // newest-stamp line, the last one: either missing is entered.
            let unregistered = problem.is_none()
                && frames.iter().any(|frame| {
                    frame.last_seq() > self.log.last_seq()
                        || self.log.newest().raised_by(frame.newest.as_ref()).is_some()
                });
            if problem.is_none() && !unregistered {
                return Ok(());
            }
            if held == Mode::Shared {
                held = self.upgrade()?;
                continue;
            }
            return match problem {
                Some(problem) => {
                    self.rebuild(&problem)?;
                    // The rebuilt log's sequences prove nothing about the frames.
                    match self.wal.read_all()? {
                        Refresh::Frames(all) => {
                            self.absorb(&all);
                            self.register(&all)
                        }
                        Refresh::Damaged(_) => Ok(()),
                        Refresh::Later(why) => Err(self.later_log(&why)),
                    }
                }
                None => self.register(&frames),
            };
        }
    }

    /// Trades the shared lock for the exclusive one. Upgrading in place is
    /// not portable: release, then wait, and look at both logs again from
    /// the start (another handle may have done the work meanwhile).
    fn upgrade(&mut self) -> Result<Mode> {
        self.lock.unlock();
        self.lock.lock(Mode::Exclusive)?;
        self.wal.invalidate();
        Ok(Mode::Exclusive)
    }

    /// Takes the frames read from the write-ahead log into `pending`, after
    /// forgetting what a checkpoint (a new generation) wrote to the files.
    /// Reading the same frames again changes nothing.
    fn absorb(&mut self, frames: &[Frame]) {
        if self.wal.generation() != self.pending_generation {
            self.pending.clear();
            self.pending_durable = false;
            self.pending_generation = self.wal.generation();
        }
        for frame in frames {
            self.take_pending(frame);
        }
    }

    /// Takes the records of `frame`, committed, as pending until the next
    /// checkpoint writes their files.
    fn take_pending(&mut self, frame: &Frame) {
        self.pending_durable |= !frame.buffered;
        for op in &frame.ops {
            self.pending.insert(op.id.clone(), op.record.clone());
        }
    }

    /// Enters in the change log what `frames` committed and it lacks (under
    /// the exclusive lock). A record whose entry is at least as new as its
    /// last frame is left alone; any other gets a fresh sequence, above
    /// every sequence the frames and the log used, so no change-feed reader
    /// misses it and no sequence is handed out twice.
    fn register(&mut self, frames: &[Frame]) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let mut last: HashMap<&str, &WalOp> = HashMap::new();
        for op in frames.iter().flat_map(|frame| &frame.ops) {
            last.insert(op.id.as_str(), op);
        }
        let mut finals: Vec<&WalOp> = last.into_values().collect();
        finals.sort_by_key(|op| op.seq);
        let highest = frames.iter().map(Frame::last_seq).max().unwrap_or(0);
        let base = self.next_base().max(highest);
        let mut next = base;
        let mut entries = Vec::new();
        for op in finals {
            let registered = match op.record {
                Some(_) => self.log.seq_of(&op.id).is_some_and(|seq| seq >= op.seq),
                None => !self.log.knows(&op.id) && self.log.last_seq() >= op.seq,
            };
            if registered {
                continue;
            }
            next = self.log.checked_next(next, "sequence")?;
            entries.push(match op.record {
                Some(_) => LogEntry::Written {
                    seq: next,
                    id: op.id.clone(),
                },
                None => LogEntry::Removed {
                    removed: op.id.clone(),
                    seq: Some(next),
                },
            });
        }
        let newest = frames
            .iter()
            .filter_map(|frame| frame.newest.as_ref())
            .max();
        entries.extend(self.log.newest().raised_by(newest));
        if !entries.is_empty() {
            tracing::warn!(dir = %self.dir.display(), records = entries.len(), "entered committed writes the change log lacked");
        }
        // Synced: readers may see these sequences once the lock is released,
        // so they must not be handed out again after a power cut (a
        // `Buffered` handle's reservation covers them instead).
        if next > base {
            self.reserve_through(next)?;
        }
        let durable = self.durable();
        self.append_to_log(entries, durable)
    }

    /// Appends `entries` to the change log, synced when `durable`. Lines
    /// whose sync failed are readable, so other handles may hand their
    /// sequences out, yet may be pages the disk never gets (see
    /// `log_suspect`).
    fn append_to_log(&mut self, entries: Vec<LogEntry>, durable: bool) -> Result<()> {
        let appended = self.log.append(self.ops.as_ref(), entries, durable);
        if appended.is_err() && durable {
            self.distrust_change_log();
        }
        appended
    }

    /// Checkpoints at once (under the exclusive lock, the checkpoint lock
    /// held): see [`checkpoint`] for the steps, here run back to back.
    pub(crate) fn checkpoint(&mut self) -> Result<()> {
        match self.begin_checkpoint() {
            Some(job) => {
                if let Err(error) = job.write_files() {
                    self.distrust_change_log();
                    return Err(error);
                }
                self.finish_checkpoint(&job)
            }
            None => Ok(()),
        }
    }

    /// After a checkpoint failed to write or sync its files: see
    /// `log_suspect`.
    pub(crate) fn distrust_change_log(&mut self) {
        self.log_suspect = true;
    }

    /// Checkpoints when the write-ahead log holds any frame (under the
    /// exclusive lock, the checkpoint lock held).
    pub(crate) fn checkpoint_if_used(&mut self) -> Result<()> {
        if self.wal.frame_bytes() > 0 {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Whether the write-ahead log has grown enough to be checkpointed, and
    /// how urgently.
    pub(crate) fn checkpoint_due(&self) -> Due {
        let bytes = self.wal.frame_bytes();
        if bytes >= self.tuning.checkpoint_bytes.saturating_mul(BACKLOG_FACTOR) {
            Due::Now
        } else if bytes >= self.tuning.checkpoint_bytes {
            Due::Background
        } else {
            Due::No
        }
    }

    /// Step 1 of a checkpoint (under the exclusive lock, the checkpoint
    /// lock held): the pending records to write, and where the log ends.
    /// `None` when the log holds no frame.
    pub(crate) fn begin_checkpoint(&self) -> Option<CheckpointJob> {
        if self.wal.frame_bytes() == 0 {
            return None;
        }
        let mut records: Vec<(String, Option<String>, PathBuf)> = self
            .pending
            .iter()
            .map(|(id, content)| (id.clone(), content.clone(), self.record_path(id)))
            .collect();
        records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(CheckpointJob {
            dir: self.dir.clone(),
            name: self.name.clone(),
            ops: Arc::clone(&self.ops),
            durable: self.durable() || self.pending_durable,
            change_log: self.log.path().to_path_buf(),
            records,
            generation: self.wal.generation(),
            end: self.wal.end(),
        })
    }

    /// Step 3 of a checkpoint (under the exclusive lock, the checkpoint lock
    /// held, after [`CheckpointJob::write_files`]): drops the snapshot's
    /// frames from the log. The records written since stay pending.
    pub(crate) fn finish_checkpoint(&mut self, job: &CheckpointJob) -> Result<()> {
        if self.wal.generation() != job.generation {
            // The log was started again meanwhile (it had gone missing or
            // been damaged): the snapshot's frames are not in it.
            return Ok(());
        }
        if self.log_suspect {
            // Written anew, from this handle's view of it: once the frames
            // are dropped, its lines are the sequences' only record (and a
            // sync after a failed one may report success without the lost
            // pages, whatever the durability).
            let base = self.log.last_seq();
            self.log.rewrite(self.ops.as_ref(), base, true)?;
            self.log_suspect = false;
        }
        // The frames kept (committed while the files were written) go into a
        // new log: synced if any of them, or of the dropped ones, was
        // acknowledged as durable.
        let durable = job.durable || self.pending_durable;
        let kept = self.wal.drop_through(self.ops.as_ref(), job.end, durable)?;
        // The log's new generation: `absorb` forgets the snapshot's records
        // and keeps those of the frames committed since.
        self.absorb(&kept);
        Ok(())
    }

    /// Rebuilds a missing or unreadable log from the record files (under the
    /// exclusive lock). Every record gets a fresh sequence above any the old
    /// log can have handed out, so change-feed readers see everything again
    /// rather than miss anything. A new collection directory takes this path
    /// too, and starts at 1; a log missing from a directory that was there
    /// (even an empty one: cleared, its log deleted by hand) is a lost log.
    fn rebuild(&mut self, problem: &str) -> Result<()> {
        let path = self.log.path().to_path_buf();
        let old = match read_file(&path)? {
            Read::Bytes(bytes) => Some(bytes),
            Read::Link => Some(Vec::new()),
            Read::Missing => None,
        };
        // Past every position handed out, as far as the durable bounds
        // say: a log deleted whole leaves nothing else that does.
        let mut highest_seq = self
            .next_base()
            .max(self.read_bound(RESERVED_FILE)?)
            .max(self.read_bound(HIGHEST_FILE)?);
        let mut highest_generation = self.log.generation();
        if let Some(bytes) = &old {
            tracing::warn!(log = %path.display(), problem, "rebuilding the change log from the record files");
            let (seq, generation) = salvage(bytes);
            highest_seq = highest_seq.max(seq);
            highest_generation = highest_generation.max(generation);
        }
        // Records committed to the write-ahead log count before their files
        // are written.
        let has_records = has_records(&self.dir)? || self.pending.values().any(Option::is_some);
        let new_log = std::mem::take(&mut self.new_dir);
        if old.is_some() || has_records || !new_log {
            // What the lost log held is unknown, so readers' cursors could
            // be anywhere up to its last sequence. The bounds above cover
            // what was handed out since they were kept; for a store written
            // before, no count of writes comes near the current time in
            // microseconds: starting above it keeps the new sequences above
            // every cursor.
            highest_seq = highest_seq.max(micros_since_epoch());
        }
        self.log.reset(highest_generation, highest_seq);
        if !has_records {
            self.log.set_newest(NewestStamp::Known(None));
        }
        // The new log is written whole, its entries with it: written
        // first and filled after, a failure (or a crash) between the two
        // left a log that reads as sound and lists no record, which every
        // handle with the collection open took for the truth. Temporaries
        // are left alone: a checkpoint under way elsewhere may be writing
        // them (they are removed at the next open).
        // A rebuilt log knows no id: a hashed file that cannot be read may
        // hold a record the store wrote and acknowledged, which would read
        // as absent, so the opening fails on it.
        let entries = self.reconcile_entries(Unreadable::Fail)?;
        self.log.apply_all(entries);
        self.log
            .rewrite(self.ops.as_ref(), highest_seq, self.durable())
    }

    /// Brings the log in line with the files (under the exclusive lock and
    /// the checkpoint lock): removes temporaries left by a crashed writer,
    /// gives a sequence to record files it does not know and forgets
    /// entries whose file is gone.
    fn reconcile(&mut self) -> Result<()> {
        remove_temporaries(self.ops(), &self.dir)?;
        // A sound log knows every file the store wrote: a hashed file of an
        // id it does not know that cannot be read was added by hand.
        let entries = self.reconcile_entries(Unreadable::LeaveOut)?;
        let durable = self.durable();
        self.append_to_log(entries, durable)
    }

    /// The entries that bring the log in line with the files: a sequence
    /// for each record file it does not know, a removal for each entry
    /// whose file is gone (under the exclusive lock). Reserves the
    /// sequences they take. A file under a hashed name, of an id the log
    /// does not know, that cannot be read to learn its id fails the call or
    /// is left out, as `unreadable` says.
    fn reconcile_entries(&mut self, unreadable: Unreadable) -> Result<Vec<LogEntry>> {
        // A hashed file name does not say its id, but that of an id the log
        // knows is known from the id: only the file of an id it does not
        // know is read for it. The names of the log's ids are made at the
        // first hashed file met: most collections have none.
        let mut known_hashed: Option<HashMap<String, &String>> = None;
        let mut on_disk = HashSet::new();
        for entry in read_dir(&self.dir)? {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if file_name.starts_with(TEMP_PREFIX) {
                continue;
            }
            if let Some(stem) = records::record_stem(file_name).filter(|stem| is_hashed(stem)) {
                let known = known_hashed.get_or_insert_with(|| {
                    self.log
                        .ids()
                        .filter_map(|id| {
                            let stem = stem_for(id);
                            is_hashed(&stem).then_some((stem, id))
                        })
                        .collect()
                });
                if let Some(id) = known.get(stem) {
                    on_disk.insert((*id).clone());
                    continue;
                }
            }
            match id_of_file(&self.dir, file_name, &self.name) {
                Ok(Some(id)) => {
                    on_disk.insert(id);
                }
                Ok(None) => {}
                // Only a hashed name is read for its id. One of an id a
                // sound log does not know that cannot be read (a directory
                // in its place, a file of another owner) was added by hand:
                // it is left out, named in a warning, where failing failed
                // every call on the collection and every engine's open on
                // the store. Nothing is lost: every opening reads again the
                // files of ids the log does not know, and indexes it once it
                // can be read.
                Err(error) if !error.is_transient() && unreadable == Unreadable::LeaveOut => {
                    tracing::warn!(
                    collection = %self.name,
                    file = file_name,
                    %error,
                    "a record file added by hand cannot be read; left out until it can be"
                    );
                }
                Err(error) => return Err(error),
            }
        }
        // Pending records are there even before their files are written.
        for (id, content) in &self.pending {
            if content.is_some() {
                on_disk.insert(id.clone());
            } else {
                on_disk.remove(id);
            }
        }
        let mut unknown: Vec<&String> = on_disk.iter().filter(|id| !self.log.knows(id)).collect();
        unknown.sort();
        let mut entries = Vec::with_capacity(unknown.len() + 1);
        let base = self.next_base();
        let mut seq = base;
        let mut newest = None;
        for id in unknown {
            seq = self.log.checked_next(seq, "sequence")?;
            if matches!(self.log.newest(), NewestStamp::Known(_)) {
                // Files added by hand: their stamps count too. A corrupt one
                // reads as absent, and whatever replaces it is a write. One
                // that cannot be read (a directory in its place, a file of
                // another owner) fails its own reads, as a known record's
                // does: failing here failed every call on the collection,
                // and the engine's open.
                match self.load(id) {
                    Ok(RecordFile::Valid(record)) => {
                        newest = newest.max(Some(record.newest_stamp().clone()));
                    }
                    Ok(_) => {}
                    Err(error) if !error.is_transient() => tracing::warn!(
                        collection = %self.name,
                        id = %syncforge_core::shorten(id),
                        %error,
                        "a record file added by hand cannot be read; its reads fail until it can"
                    ),
                    Err(error) => return Err(error),
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
        if seq > base {
            self.reserve_through(seq)?;
        }
        Ok(entries)
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

    /// What `id` holds: its pending content, or else its file. I/O errors
    /// stay errors: only content that is not the record counts as corrupt.
    fn load(&self, id: &str) -> Result<RecordFile> {
        let path = self.record_path(id);
        match self.pending.get(id) {
            Some(Some(json)) => Ok(parse(json.as_bytes(), &path, &self.name, Some(id))),
            Some(None) => Ok(RecordFile::Missing),
            None => load(&path, &self.name, Some(id)),
        }
    }

    /// Applies conditional writes (under the exclusive lock): one frame in
    /// the write-ahead log commits them all, then the change log gets their
    /// sequences (see the module documentation).
    pub(crate) fn put_batch(&mut self, writes: &[PreparedWrite]) -> Result<Vec<WriteOutcome>> {
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut current: HashMap<&str, u64> = HashMap::new();
        let mut planned: Vec<(&PreparedWrite, u64)> = Vec::new();
        let mut next = self.next_base();
        for write in writes {
            let stored = match current.get(write.id.as_str()) {
                Some(planned) => Some(*planned),
                None => match self.log.seq_of(&write.id) {
                    None => None,
                    Some(seq) if write.expected.is_some() => Some(seq),
                    // A file removed by hand leaves its log entry behind until
                    // the next open; the record is absent all the same. So is
                    // a corrupt file, which reads as absent (the checkpoint
                    // moves it aside before writing the record's file).
                    Some(seq) => match self.load(&write.id)? {
                        RecordFile::Missing | RecordFile::Corrupt(_) => None,
                        RecordFile::Valid(_) => Some(seq),
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
            if stored.is_none() {
                self.check_free(&write.id)?;
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
        self.reserve_through(next)?;
        let durable = self.durable();
        let frame = Frame {
            ops: planned
                .iter()
                .map(|(write, seq)| WalOp {
                    seq: *seq,
                    id: write.id.clone(),
                    record: Some(write.json.clone()),
                })
                .collect(),
            newest: planned
                .iter()
                .map(|(write, _)| &write.newest)
                .max()
                .cloned(),
            buffered: !durable,
        };
        self.wal.append(self.ops.as_ref(), &frame, durable)?;
        // Committed: the records are pending until the next checkpoint writes
        // their files (moving a corrupt one aside first).
        self.take_pending(&frame);
        let mut entries: Vec<LogEntry> = planned
            .iter()
            .map(|(write, seq)| LogEntry::Written {
                seq: *seq,
                id: write.id.clone(),
            })
            .collect();
        entries.extend(self.log.newest().raised_by(frame.newest.as_ref()));
        self.log.append(self.ops.as_ref(), entries, false)?;
        self.maybe_compact();
        Ok(outcomes)
    }

    /// Refuses to create a record whose hashed file name holds another
    /// record whose name has the same hash: that is reported, never
    /// overwritten. Anything else in the way is moved aside when the file is
    /// written.
    fn check_free(&self, id: &str) -> Result<()> {
        let stem = stem_for(id);
        if !is_hashed(&stem) || self.pending.contains_key(id) {
            return Ok(());
        }
        let path = self.record_path(id);
        match load(&path, &self.name, None)? {
            RecordFile::Valid(record) if record.id() != id && stem_for(record.id()) == stem => {
                Err(corrupt(
                    &self.name,
                    Some(id),
                    &path,
                    format!(
                        "holds record {:?} whose name has the same hash; move it away to store this one",
                        record.id().as_str()
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// At least the newest stamp of the collection's records (under the
    /// exclusive lock). Read from the log when it knows; otherwise from every
    /// record once — the pending ones too, which their files do not hold
    /// yet — and then written to the log for the next time.
    ///
    /// A file that cannot be read is left out, with a warning, as its own
    /// reads fail: failing here failed every engine's open on the store. The
    /// stamp found is then not written to the log, so that the next call
    /// reads that file again.
    pub(crate) fn newest_stamp(&mut self) -> Result<Option<Stamp>> {
        if let NewestStamp::Known(newest) = self.log.newest() {
            return Ok(newest.clone());
        }
        let (records, _, left_out) = self.read_every(Unreadable::LeaveOut)?;
        let newest = records.iter().map(Record::newest_stamp).max().cloned();
        if left_out > 0 {
            return Ok(newest);
        }
        let durable = self.durable();
        self.append_to_log(
            vec![LogEntry::Newest {
                newest: newest.clone(),
            }],
            durable,
        )?;
        Ok(newest)
    }

    /// Removes a record for good (under the exclusive lock), committed by a
    /// frame like a write; the next checkpoint removes its file.
    pub(crate) fn delete(&mut self, id: &str) -> Result<bool> {
        let existed = match self.pending.get(id) {
            Some(content) => content.is_some(),
            None => std::fs::symlink_metadata(self.record_path(id)).is_ok(),
        };
        if !existed && !self.log.knows(id) {
            return Ok(false);
        }
        let seq = self.log.checked_next(self.next_base(), "sequence")?;
        self.reserve_through(seq)?;
        let durable = self.durable();
        let frame = Frame {
            ops: vec![WalOp {
                seq,
                id: id.to_owned(),
                record: None,
            }],
            newest: None,
            buffered: !durable,
        };
        self.wal.append(self.ops.as_ref(), &frame, durable)?;
        self.take_pending(&frame);
        self.log.append(
            self.ops.as_ref(),
            vec![LogEntry::Removed {
                removed: id.to_owned(),
                seq: Some(seq),
            }],
            false,
        )?;
        self.maybe_compact();
        Ok(existed)
    }

    /// Removes every record file and starts an empty log that keeps the
    /// sequence, so change-feed cursors stay valid (under the exclusive lock).
    pub(crate) fn clear(&mut self) -> Result<()> {
        // Nothing may be left to replay over the cleared collection.
        self.checkpoint()?;
        for entry in read_dir(&self.dir)? {
            let file_name = entry.file_name();
            if file_name.to_str().is_some_and(records::stands_for_a_record) {
                let path = entry.path();
                if let Err(err) = self.ops().remove_file(&path) {
                    let error = io_error("removing", &path, err);
                    if error.is_transient() {
                        return Err(error);
                    }
                    // What stands in a record file's place and cannot be
                    // removed as a file (a directory) is moved aside, as a
                    // checkpoint moves a record file it cannot read: failing
                    // here failed every clear of the collection, each after
                    // removing the files listed before it.
                    tracing::warn!(%error, "moving aside what stands in a record file's place");
                    records::move_aside(self.ops(), &self.dir, &path, self.durable(), &self.name)?;
                }
            }
        }
        if self.durable() {
            sync_dir(self.ops(), &self.dir)?;
        }
        self.log.forget_records();
        let base = self.log.last_seq();
        let durable = self.durable();
        // The view no longer matches the log on disk if the rewrite fails,
        // whatever the error (even `Corrupt`, which keeps views otherwise).
        self.log
            .rewrite(self.ops.as_ref(), base, durable)
            .inspect_err(|_| self.log.invalidate())
    }

    /// Every record, read from the files (under a lock), and the corrupt
    /// files skipped.
    pub(crate) fn read_all(&mut self) -> Result<(Vec<Record>, Vec<crate::CorruptFile>)> {
        let (records, skipped, _) = self.read_every(Unreadable::Fail)?;
        Ok((records, skipped))
    }

    /// Every record, as [`read_all`](Self::read_all), a file that cannot be
    /// read failing the call or left out and counted, as `unreadable` says.
    fn read_every(&mut self, unreadable: Unreadable) -> Result<records::AllRecords> {
        let (mut records, mut skipped, left_out) =
            records::read_all(&self.dir, &self.name, unreadable)?;
        if self.pending.is_empty() {
            return Ok((records, skipped, left_out));
        }
        // Pending records stand in for whatever their files hold.
        records.retain(|record| !self.pending.contains_key(record.id().as_str()));
        let pending_paths: HashSet<PathBuf> =
            self.pending.keys().map(|id| self.record_path(id)).collect();
        skipped.retain(|file| !pending_paths.contains(&file.path));
        let mut ids: Vec<&String> = self.pending.keys().collect();
        ids.sort();
        for id in ids {
            match self.load(id)? {
                RecordFile::Valid(record) => records.push(record),
                RecordFile::Missing => {}
                RecordFile::Corrupt(error) => skipped.push(crate::CorruptFile {
                    path: self.record_path(id),
                    error,
                }),
            }
        }
        Ok((records, skipped, left_out))
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

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicBool, Ordering};

    use serde_json::json;
    use syncforge_core::{CollectionName, Content, RecordId, StorageBackend, Write};

    use super::*;
    use crate::files::{Hooked, OsFiles};
    use crate::{FsBackend, FsOptions};

    /// File operations whose appends to the change log fail while `failing`
    /// is set: a writer that committed its frame and then could not (or did
    /// not live to) enter its sequences in the change log.
    fn broken_log_appends(failing: Arc<AtomicBool>) -> Arc<dyn FileOps> {
        Arc::new(Hooked(move |op: &'static str, path: &Path| {
            if op == "write_at" && failing.load(Ordering::SeqCst) && path.ends_with(log::LOG_FILE) {
                return Err(io::Error::other("the writer died here"));
            }
            Ok(())
        }))
    }

    fn note(id: &str, n: u64) -> Record {
        let stamp = Stamp::new(1_000 + n, 0, "t").unwrap();
        Record::create(
            Content::from_value(json!({"id": id, "n": n})).unwrap(),
            &stamp,
        )
    }

    /// File operations that note every directory they sync.
    fn recording_dir_syncs() -> (Arc<dyn FileOps>, Arc<parking_lot::Mutex<Vec<PathBuf>>>) {
        let synced = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = Arc::clone(&synced);
        let recording: Arc<dyn FileOps> = Arc::new(Hooked(move |op: &'static str, path: &Path| {
            if op == "sync_dir" {
                seen.lock().push(path.to_owned());
            }
            Ok(())
        }));
        (recording, synced)
    }

    /// A corrupt record file read under the lock made the handle forget
    /// both logs, so the next call read them again in full: with a
    /// million-line change log, every read of that record cost what the
    /// collection holds.
    #[tokio::test]
    async fn a_corrupt_record_file_keeps_the_logs_read() {
        let tmp = tempfile::tempdir().unwrap();
        let notes = CollectionName::new("notes").unwrap();
        let store = FsBackend::open(tmp.path()).await.unwrap();
        for id in ["good", "bad"] {
            store
                .put(&notes, &Write::create(note(id, 1)))
                .await
                .unwrap();
        }
        store.close().await.unwrap();
        let dir = Collection::dir_for(tmp.path(), "notes");
        std::fs::write(dir.join(file_name_for("bad")), b"{").unwrap();
        let mut collection = Collection::open(
            Arc::new(OsFiles),
            tmp.path(),
            "notes",
            Durability::Full,
            Tuning::default(),
            false,
            None,
        )
        .unwrap()
        .unwrap();
        collection.shared(|c| c.read_stored("good")).unwrap();
        let read = collection.wal.generation();
        assert_ne!(read, 0);
        let error = collection.shared(|c| c.read_stored("bad")).unwrap_err();
        assert!(matches!(error, Error::Corrupt { .. }), "{error:?}");
        assert_eq!(collection.wal.generation(), read, "the logs were forgotten");
    }

    /// A checkpoint whose read of a record file failed for now (the
    /// process out of file handles) moved the file, which was whole, into
    /// `.corrupt/` as one that cannot be read at all, with a warning calling
    /// it corrupt. The checkpoint now fails, and the next one writes it.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_checkpoint_that_cannot_read_a_file_for_now_moves_none_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let notes = CollectionName::new("notes").unwrap();
        let out_of_handles = Arc::new(AtomicBool::new(false));
        let failing = Arc::clone(&out_of_handles);
        let ops: Arc<dyn FileOps> = Arc::new(Hooked(move |op: &'static str, _: &Path| {
            if op == "read_replaced" && failing.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(libc::EMFILE));
            }
            Ok(())
        }));
        let store = FsBackend::open_on(ops, tmp.path(), FsOptions::default(), Tuning::default())
            .await
            .unwrap();
        let first = note("n1", 1);
        store.put(&notes, &Write::create(first)).await.unwrap();
        store.checkpoint().await.unwrap();
        let stored = store
            .get(&notes, &RecordId::new("n1").unwrap())
            .await
            .unwrap()
            .unwrap();
        let mut second = stored.record.clone();
        second
            .apply_put(
                Content::from_value(json!({"id": "n1", "n": 2})).unwrap(),
                &Stamp::new(5_000, 0, "t").unwrap(),
            )
            .unwrap();
        store
            .put(&notes, &Write::replace(second.clone(), stored.token))
            .await
            .unwrap();
        out_of_handles.store(true, Ordering::SeqCst);
        let error = store.checkpoint().await.unwrap_err();
        assert!(error.is_transient(), "{error:?}");
        let dir = Collection::dir_for(tmp.path(), "notes");
        assert!(
            !dir.join(".corrupt").exists(),
            "a whole file was moved aside"
        );
        out_of_handles.store(false, Ordering::SeqCst);
        store.checkpoint().await.unwrap();
        let text = std::fs::read_to_string(dir.join(file_name_for("n1"))).unwrap();
        assert_eq!(text, second.to_json_string());
        store.close().await.unwrap();
    }

    /// The first synced append after an open synced the directory again,
    /// although the open had just synced it naming that log.
    #[tokio::test]
    async fn a_write_after_an_open_syncs_the_directory_once() {
        let tmp = tempfile::tempdir().unwrap();
        let notes = CollectionName::new("notes").unwrap();
        let store = FsBackend::open(tmp.path()).await.unwrap();
        store
            .put(&notes, &Write::create(note("n1", 1)))
            .await
            .unwrap();
        store.close().await.unwrap();
        let (recording, synced) = recording_dir_syncs();
        let store = FsBackend::open_on(
            recording,
            tmp.path(),
            FsOptions::default(),
            Tuning::default(),
        )
        .await
        .unwrap();
        store
            .put(&notes, &Write::create(note("n2", 1)))
            .await
            .unwrap();
        let dir = Collection::dir_for(store.root(), "notes");
        let syncs = synced.lock().iter().filter(|path| **path == dir).count();
        assert_eq!(syncs, 1, "{:?}", synced.lock());
        store.close().await.unwrap();
    }

    /// Opening a collection syncs its directory and the root, whatever a
    /// process before did or did not sync: only then are writes acknowledged
    /// after the open safe from a power cut.
    #[test]
    fn opening_a_collection_makes_its_directory_entries_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let open = |ops: Arc<dyn FileOps>, durability| {
            Collection::open(
                ops,
                tmp.path(),
                "notes",
                durability,
                Tuning::default(),
                true,
                None,
            )
            .unwrap()
            .unwrap()
        };
        drop(open(Arc::new(OsFiles), Durability::Full));
        let (recording, synced) = recording_dir_syncs();
        drop(open(Arc::clone(&recording), Durability::Full));
        let dir = Collection::dir_for(tmp.path(), "notes");
        assert!(synced.lock().contains(&dir), "{:?}", synced.lock());
        assert!(synced.lock().contains(&tmp.path().to_owned()));
        synced.lock().clear();
        drop(open(recording, Durability::Buffered));
        assert!(synced.lock().is_empty(), "{:?}", synced.lock());
    }

    /// A `Buffered` checkpoint whose sync of the change log failed keeps
    /// its frames; the next one's sync may report success without the lost
    /// pages, and dropped the frames all the same, where a `Full` handle
    /// writes the log anew first.
    #[tokio::test]
    async fn a_buffered_checkpoint_after_a_failed_log_sync_writes_the_log_anew() {
        let tmp = tempfile::tempdir().unwrap();
        let notes = CollectionName::new("notes").unwrap();
        let failing = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (fail, seen) = (Arc::clone(&failing), Arc::clone(&calls));
        let ops: Arc<dyn FileOps> = Arc::new(Hooked(move |op: &'static str, path: &Path| {
            if op == "sync_file" && path.ends_with(log::LOG_FILE) && fail.load(Ordering::SeqCst) {
                return Err(io::Error::other("the disk lost these pages"));
            }
            if matches!(op, "rename" | "write_at") {
                seen.lock().push((op, path.to_owned()));
            }
            Ok(())
        }));
        let buffered = FsBackend::open_on(
            ops,
            tmp.path(),
            FsOptions::default().durability(crate::Durability::Buffered),
            Tuning::default(),
        )
        .await
        .unwrap();
        buffered
            .put(&notes, &Write::create(note("n1", 1)))
            .await
            .unwrap();
        failing.store(true, Ordering::SeqCst);
        assert!(buffered.checkpoint().await.is_err());
        failing.store(false, Ordering::SeqCst);
        calls.lock().clear();
        buffered.checkpoint().await.unwrap();
        let dir = Collection::dir_for(buffered.root(), "notes");
        let calls = calls.lock().clone();
        let at = |call: (&'static str, PathBuf)| calls.iter().position(|c| *c == call);
        let log_rewritten = at(("rename", dir.join(log::LOG_FILE)));
        let frames_dropped = at(("write_at", dir.join(wal::WAL_FILE)))
            .or_else(|| at(("rename", dir.join(wal::WAL_FILE))));
        assert!(
            log_rewritten.is_some() && log_rewritten < frames_dropped,
            "the log written anew at {log_rewritten:?}, the frames dropped at \
             {frames_dropped:?}: {calls:?}"
        );
        buffered.close().await.unwrap();
    }

    /// Durability is a handle's, but a checkpoint drops every handle's
    /// frames: a `Buffered` handle's checkpoint (at its open of the
    /// collection, say) wrote the files of a `Full` handle's acknowledged
    /// writes without syncing them, then dropped their frames, so a power cut
    /// could take those writes back. It syncs the files of frames
    /// acknowledged as durable, and still leaves its own unsynced (the
    /// change log alone is synced, for the feed positions).
    #[tokio::test]
    async fn a_buffered_checkpoint_syncs_the_files_of_durable_writes_only() {
        let tmp = tempfile::tempdir().unwrap();
        let notes = CollectionName::new("notes").unwrap();
        let full = FsBackend::open(tmp.path()).await.unwrap();
        full.put(&notes, &Write::create(note("n1", 1)))
            .await
            .unwrap();
        let calls = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let recording: Arc<dyn FileOps> = Arc::new(Hooked(move |op: &'static str, path: &Path| {
            if matches!(op, "sync_file" | "rename" | "write_at") {
                seen.lock().push((op, path.to_owned()));
            }
            Ok(())
        }));
        let buffered = FsBackend::open_on(
            recording,
            tmp.path(),
            FsOptions::default().durability(crate::Durability::Buffered),
            Tuning::default(),
        )
        .await
        .unwrap();
        buffered.checkpoint().await.unwrap();
        let dir = Collection::dir_for(buffered.root(), "notes");
        let at = |call: (&'static str, PathBuf)| calls.lock().iter().position(|c| *c == call);
        // The log emptied of its frames (in place: it keeps none).
        let wal_replaced = at(("write_at", dir.join(wal::WAL_FILE)));
        // The file and the change log are synced before the log's frames
        // are dropped.
        for synced in [dir.join("n1.json"), dir.join(log::LOG_FILE)] {
            let synced_at = at(("sync_file", synced.clone()));
            assert!(
                synced_at.is_some() && synced_at < wal_replaced,
                "{synced:?} at {synced_at:?}, the log replaced at {wal_replaced:?}: {:?}",
                calls.lock()
            );
        }
        calls.lock().clear();
        buffered
            .put(&notes, &Write::create(note("n2", 1)))
            .await
            .unwrap();
        buffered.checkpoint().await.unwrap();
        assert!(dir.join("n2.json").exists());
        let syncs: Vec<_> = calls
            .lock()
            .iter()
            .filter(|(op, _)| *op == "sync_file")
            .cloned()
            .collect();
        assert_eq!(syncs, [("sync_file", dir.join(log::LOG_FILE))]);
    }

    /// A panic while a collection's lock was held (under a checkpoint, the
    /// OS refusing a thread) left the lock held: every other handle and
    /// process waited on the collection for as long as the handle lived.
    #[tokio::test]
    async fn a_panic_under_the_lock_releases_it() {
        let tmp = tempfile::tempdir().unwrap();
        let panicking = Arc::new(AtomicBool::new(false));
        let armed = Arc::clone(&panicking);
        let ops: Arc<dyn FileOps> = Arc::new(Hooked(move |op: &'static str, _: &Path| {
            if op == "create_file" && armed.swap(false, Ordering::SeqCst) {
                panic!("no thread for the checkpoint");
            }
            Ok(())
        }));
        let notes = CollectionName::new("notes").unwrap();
        let store = FsBackend::open_on(ops, tmp.path(), FsOptions::default(), Tuning::default())
            .await
            .unwrap();
        store
            .put(&notes, &Write::create(note("n1", 1)))
            .await
            .unwrap();
        panicking.store(true, Ordering::SeqCst);
        assert!(store.checkpoint().await.is_err());
        assert!(!panicking.load(Ordering::SeqCst), "the hook never ran");
        let lock_file = Collection::dir_for(tmp.path(), "notes").join(lock::LOCK_FILE);
        std::fs::File::open(lock_file)
            .unwrap()
            .try_lock()
            .expect("the collection's lock is free");
        // The handle goes on working.
        assert_eq!(store.get_all(&notes).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_frame_committed_by_a_writer_that_died_is_entered_by_the_next_handle() {
        let tmp = tempfile::tempdir().unwrap();
        let failing = Arc::new(AtomicBool::new(false));
        let ops = broken_log_appends(failing.clone());
        let notes = CollectionName::new("notes").unwrap();
        let writer = FsBackend::open_on(
            ops.clone(),
            tmp.path(),
            FsOptions::default(),
            Tuning::default(),
        )
        .await
        .unwrap();
        let reader = FsBackend::open(tmp.path()).await.unwrap();
        writer
            .put(&notes, &Write::create(note("n1", 1)))
            .await
            .unwrap();
        // The reader has the collection open, with the log read.
        assert_eq!(reader.get_all(&notes).await.unwrap().len(), 1);

        failing.store(true, Ordering::SeqCst);
        let stored = writer
            .get(&notes, &RecordId::new("n1").unwrap())
            .await
            .unwrap()
            .unwrap();
        let err = writer
            .put_batch(
                &notes,
                &[
                    Write::replace(note("n1", 2), stored.token),
                    Write::create(note("n2", 1)),
                ],
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("died"), "{err}");

        let ids = [RecordId::new("n1").unwrap(), RecordId::new("n2").unwrap()];
        let seen = reader.get_many(&notes, &ids).await.unwrap();
        let counts: Vec<Option<u64>> = seen
            .iter()
            .map(|s| {
                s.as_ref()
                    .and_then(|s| s.record.get(&CollectionName::new("n").unwrap()))
                    .as_ref()
                    .and_then(serde_json::Value::as_u64)
            })
            .collect();
        assert_eq!(counts, [Some(2), Some(1)]);
        // Replayed with sequences above the frame's, so a reader holding the
        // frame's cursors still sees them, and nothing is numbered twice.
        let page = reader
            .changes(&notes, Cursor::new(3), 10.try_into().unwrap())
            .await
            .unwrap();
        assert_eq!(page.changes.len(), 2);
        failing.store(false, Ordering::SeqCst);
        let outcome = writer
            .put(&notes, &Write::create(note("n3", 1)))
            .await
            .unwrap();
        assert!(
            matches!(outcome, WriteOutcome::Written { cursor, .. } if cursor.get() > page.next.get())
        );
    }
}
