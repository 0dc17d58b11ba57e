//! # syncforge-backend-fs
//!
//! A [`StorageBackend`] that keeps a store in a directory you can read with
//! any file manager: a directory per collection, one JSON file per record
//! holding the record's canonical JSON ([`Record::to_json`]).
//!
//! ```
//! use serde_json::json;
//! use syncforge_backend_fs::FsBackend;
//! use syncforge_core::{
//!     CollectionName, Content, Cursor, Record, Stamp, StorageBackend, Write, WriteOutcome,
//! };
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let dir = std::env::temp_dir().join(format!("syncforge-doc-{}", std::process::id()));
//! let store = FsBackend::open(&dir).await?;
//! let stamp = Stamp::new(1_000, 0, "laptop")?;
//! let note = Record::create(Content::from_value(json!({"id": "n1", "title": "Q3"}))?, &stamp);
//! let notes = CollectionName::new("notes")?;
//! let outcome = store.put(&notes, &Write::create(note)).await?;
//! assert!(matches!(outcome, WriteOutcome::Written { .. }));
//! store.checkpoint().await?; // the record's file is written at checkpoints
//! assert!(dir.join("notes").join("n1.json").is_file());
//! let page = store.changes(&notes, Cursor::START, 10.try_into()?).await?;
//! assert_eq!(page.changes.len(), 1);
//! store.close().await?; // closing never deletes anything
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//!
//! ```text
//! <dir>/
//!   .meta.json              engine metadata (per-peer cursors, ...)
//!   .lock                   lock for the metadata
//!   notes/                  a collection
//!     n1.json               a record: its canonical JSON, nothing else
//!     ^readme.json          the record "Readme"
//!     .changes              change log: sequence of each record's last change
//!     .wal                  write-ahead log: batches committed since the last checkpoint
//!     .lock                 lock for writers (exclusive) and readers (shared)
//!     .checkpoint.lock      lock held by the one checkpoint under way
//!     .name                 the collection's name, when the directory name is hashed
//!     .reserved             change-feed positions reserved for Buffered writes
//!     .highest              a bound on the change-feed positions of Full writes
//!     .corrupt/             corrupt record files a write moved aside, kept for inspection
//! ```
//!
//! Names starting with a dot belong to the store; record and collection names
//! never produce one.
//!
//! # File names
//!
//! Ids and collection names are encoded one-to-one, so that `a/b`, `a_b`,
//! `a.b`, `a b` and `A.b` are different files even on case-insensitive
//! filesystems, and nothing can point outside the directory:
//!
//! * `a`–`z`, `0`–`9`, `-`, `_` stay as they are, and so does a `.` that is
//!   neither first nor last;
//! * an uppercase letter `X` becomes `^x`;
//! * every other byte of the UTF-8 form (space, `/`, `\`, `%`, `^`, `~`, any
//!   non-ASCII character, a first or last `.`) becomes `%XX` (uppercase hex),
//!   so Unicode normalisation by the filesystem cannot merge two names;
//! * a Windows device name (`con`, `nul`, `com1`, ... also before a dot) gets
//!   its first letter escaped: `con` is stored as `%63on.json`;
//! * a name whose encoding exceeds 120 bytes is stored as its first 64
//!   encoded bytes, `~` and 32 hex digits of its SHA-256, keeping file names
//!   under 255 bytes and paths short. The name is then read from the file (a
//!   record's `id`, a collection's `.name`); a file found under a name that
//!   does not match its content is corrupt (see below), never overwritten.
//!
//! # Durability and crashes
//!
//! Writes are committed through a write-ahead log per collection (group
//! commit): a call appends one frame holding all its records to `.wal` and,
//! under [`Durability::Full`], syncs it once; from then on the write is
//! durable and every handle, in this process or another, reads it from the
//! log. The record files follow at a checkpoint, which writes each file to a
//! temporary file renamed over the old one (readers never see half a file),
//! syncs the files, the directory and the change log, and only then drops
//! the frames it wrote from the write-ahead log. Once the log holds 4 MiB of
//! frames, a background thread checkpoints while writes go on (they wait
//! only if the log reaches 16 MiB); opening a collection,
//! [`close`](StorageBackend::close) and [`FsBackend::checkpoint`] checkpoint
//! before they return. So an acknowledged write is
//! always in a durable file or a durable frame, and opening a collection
//! after a crash writes the files again from the frames. A sync of many
//! records costs one flush per batch, not one per record. Other programs
//! reading the record files see every record once the store is closed or
//! checkpointed. [`Durability::Buffered`] skips the syncs of records (it
//! still syncs what keeps the store readable and its feed's positions
//! unique and current: the metadata, a collection's `.name`, `.reserved`,
//! and the change log once a checkpoint): a crash of
//! the process still loses nothing, but a power failure or kernel crash can
//! lose recent writes or leave them empty.
//!
//! # Change feed and concurrency
//!
//! Each collection's `.changes` log gives every write a sequence number,
//! strictly increasing, kept across reopen; [`StorageBackend::changes`] reads
//! only the files that changed after the cursor. Writers hold an exclusive
//! advisory lock on the collection's `.lock` and readers a shared one, so
//! conditional writes from several handles or processes on the same directory
//! never lose an update. The log is rewritten without superseded entries once
//! it grows to twice the live records (and at least 1,024 lines); if it is deleted or damaged it is
//! rebuilt from the record files, giving them all new sequences (readers then
//! see every record again instead of missing any). Sequences stay at or below
//! 2^53 (exact in every JSON implementation): a log holding a bigger number is
//! treated as damaged and rebuilt, and a log that would need one refuses
//! writes with [`Error::Corrupt`]. A page's limit is a `NonZeroUsize`, since
//! a page of 0 could never advance.
//!
//! The log also keeps a bound on the newest stamp stored (raised by every
//! write, and by files added by hand when they are indexed), so
//! [`newest_stamp`](StorageBackend::newest_stamp), which seeds an engine's
//! clock when it opens, reads no record file. A log that does not know it
//! (rebuilt, say) reads the record files once and then remembers. Like the
//! change feed, it does not notice a record file edited by hand in place until
//! the record is written again.
//!
//! # Corrupt files, unreadable files and links
//!
//! A record file is *corrupt* when its content was read and proven not to be
//! the record its name says (edited by hand, say), or when it is a symbolic
//! link. [`get`](StorageBackend::get) of that record fails with
//! [`Error::Corrupt`] naming the collection, the record and the file. It does
//! not block the rest: [`get_many`](StorageBackend::get_many) (which the
//! engine's sync uses) reads it as absent, [`get_all`](StorageBackend::get_all)
//! and the change feed skip it, each with a `tracing` warning naming the file,
//! [`FsBackend::corrupt_skipped`] counts the skips and
//! [`FsBackend::corrupt_files`] lists such files. A write that creates the
//! record (expects it absent, as a sync does after reading it as absent)
//! takes the file's place: the corrupt file is first moved to
//! `.corrupt/<file name>.<microseconds>` in the collection's directory, so
//! nothing is destroyed and it can still be inspected; the store never
//! deletes anything from `.corrupt/`. After repairing a file by hand instead,
//! write the record again through the engine so that it re-enters the change
//! feed. Record files added or removed by hand are indexed the next time a
//! handle opens the collection.
//!
//! A file that cannot be read at all (permission denied, a directory in its
//! place, a disk error) proves nothing about the record: every call that
//! needs it fails with [`Error::Storage`] naming the path, and the change
//! feed does not move past it. A write of that record the store accepted
//! (a replace with a token read before, a delete) moves it into
//! `.corrupt/` when the record's file is written.
//!
//! The store never follows a symbolic link inside its directory. The
//! directory itself may be one, or lie under one: on Unix-like systems its
//! path is resolved when the store is opened, and the handle keeps the
//! directory it found then. A link in a record file's place is corrupt
//! (see above; writes replace or move aside the link itself, never its
//! target); a link in place of a collection's directory, its `.lock`,
//! `.checkpoint.lock`, `.reserved`, `.highest` or `.corrupt/`, or the store's
//! `.meta.json` fails the calls that need it with [`Error::Corrupt`]; a
//! linked `.changes` is replaced by a rebuilt log, and a linked `.name` (of
//! a collection whose name is too long for a directory's) by the name.
//! Files are opened with `O_NOFOLLOW`, and a collection's directory is checked
//! before every call.
//!
//! [`close`](StorageBackend::close) never deletes anything; only
//! [`clear_collection`](StorageBackend::clear_collection) removes records in
//! bulk, and with them every file that stands where a record's would (a
//! corrupt one included: moved aside, it would be kept; cleared, it is not).

mod collection;
mod encoding;
mod files;
#[cfg(test)]
mod power_loss;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use std::num::NonZeroUsize;

use syncforge_core::{
    async_trait, ChangePage, CollectionName, Cursor, Error, Record, RecordId, Result, Stamp,
    StorageBackend, Stored, Write, WriteOutcome,
};

use crate::collection::log::LOG_FILE;
use crate::collection::open::OpenCollection;
use crate::collection::records::holds_a_record;
use crate::collection::wal::{self, WAL_FILE};
use crate::collection::{Collection, PreparedWrite, NAME_FILE};
use crate::encoding::{decode, is_hashed};
use crate::files::{
    corrupt, create_dir_all, io_error, open_lock_file, read_dir, read_file, remove_temporaries,
    replace_whole, FileOps, OsFiles, Read, LINK_REASON,
};

/// The backend's name in messages and errors, the same as the facade's
/// `BackendConfig::Filesystem`.
pub(crate) const BACKEND_NAME: &str = "filesystem";

/// Engine metadata file in the store's root.
const META_FILE: &str = ".meta.json";
/// Lock guarding the metadata file.
const META_LOCK_FILE: &str = ".lock";

/// Collections a handle keeps open at most. Each holds two lock files and
/// its index of ids: a server writing a collection per user would otherwise
/// run out of file descriptors. Past it, idle ones are checkpointed and
/// closed to make room, and opened again when next used.
const MAX_OPEN_COLLECTIONS: usize = 64;

/// How hard writes work to survive a power failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Sync files and directories before a write returns: an acknowledged
    /// write survives a power failure or kernel crash. The default.
    #[default]
    Full,
    /// Leave flushing to the operating system: much faster, still atomic, and
    /// an acknowledged write survives a crash of the process; a power failure
    /// or kernel crash can lose recent writes or leave their files empty
    /// (reported as corrupt). The change feed still never hands out a
    /// position twice: before numbering its writes, a `Buffered` handle
    /// reserves positions durably (`.reserved`, a million at a time), and
    /// a handle's first open of the collection numbers on above the
    /// reservation, past any position a lost write took (and a replica may
    /// have pulled). A checkpoint syncs the change log once before it drops
    /// what it wrote from the write-ahead log, so that a write kept through
    /// a power failure is at its new position in the feed.
    Buffered,
}

impl Durability {
    fn is_full(self) -> bool {
        self == Durability::Full
    }
}

/// Options of [`FsBackend::open_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FsOptions {
    /// How hard writes work to survive a power failure.
    pub durability: Durability,
}

impl FsOptions {
    /// The options with the given durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }
}

/// Sizes at which the store does its upkeep. Fixed for users; tests shrink
/// them so that a short workload crosses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tuning {
    /// Rewrite the change log once it holds this many lines and more than
    /// twice as many as there are live records.
    pub(crate) compact_min_lines: usize,
    /// Checkpoint in the background once the write-ahead log holds this many
    /// bytes of frames, and make writers wait for one at four times as many.
    /// It bounds the work of replaying the log when a collection is opened.
    pub(crate) checkpoint_bytes: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            compact_min_lines: 1024,
            checkpoint_bytes: 4 << 20,
        }
    }
}

/// A record file proven corrupt, as listed by [`FsBackend::corrupt_files`].
#[derive(Debug)]
#[non_exhaustive]
pub struct CorruptFile {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, naming the file.
    pub error: Error,
}

impl fmt::Display for CorruptFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

/// A store in a directory. See the [crate documentation](crate) for the
/// layout and guarantees.
pub struct FsBackend {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    options: FsOptions,
    tuning: Tuning,
    ops: Arc<dyn FileOps>,
    closed: AtomicBool,
    /// Corrupt record files that reads of this handle skipped.
    corrupt_skipped: AtomicU64,
    /// Collections opened by this handle, each with its own lock so that
    /// calls on different collections run in parallel.
    collections: Mutex<HashMap<CollectionName, Arc<OpenCollection>>>,
    /// Collections taken out of `collections` to make room, while their
    /// last checkpoint runs: `close` checkpoints them too, which waits for
    /// that checkpoint.
    evicting: Mutex<Vec<(CollectionName, Arc<OpenCollection>)>>,
    /// Collections closed to make room whose checkpoint failed, and not
    /// opened since: their writes are only in their write-ahead logs, and
    /// `close` opens them again to checkpoint them.
    unflushed: Mutex<HashSet<CollectionName>>,
    /// Takes of open collections so far: their order of use.
    uses: AtomicU64,
    /// The collections this handle opened before, each with the floor of
    /// its numbering taken at the first open (see `Collection::open`'s
    /// `floor`): a collection closed to make room keeps it when reopened.
    opened: Mutex<HashMap<CollectionName, u64>>,
}

impl fmt::Debug for FsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsBackend")
            .field("root", &self.inner.root)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl FsBackend {
    /// Opens (creating if needed) the store in `dir` with default options.
    pub async fn open(dir: impl AsRef<Path>) -> Result<FsBackend> {
        Self::open_with(dir, FsOptions::default()).await
    }

    /// Opens (creating if needed) the store in `dir`.
    pub async fn open_with(dir: impl AsRef<Path>, options: FsOptions) -> Result<FsBackend> {
        Self::open_on(Arc::new(OsFiles), dir.as_ref(), options, Tuning::default()).await
    }

    /// Opens the store with the given file operations and upkeep sizes.
    pub(crate) async fn open_on(
        ops: Arc<dyn FileOps>,
        dir: &Path,
        options: FsOptions,
        tuning: Tuning,
    ) -> Result<FsBackend> {
        let root = dir.to_path_buf();
        let durable = options.durability.is_full();
        let (root, ops) = blocking(move || {
            // The root itself may be a link (the user chose the path);
            // nothing inside it is followed. Something else in its place is
            // the caller's mistake, not corrupt data.
            if root.exists() && !root.is_dir() {
                let err = std::io::Error::from(std::io::ErrorKind::NotADirectory);
                return Err(io_error("opening the store in", &root, err));
            }
            // Resolved once, here, before anything is made: every path below
            // is opened without following links, the directories' syncs
            // included, and a linked root, or a link among the parents of a
            // root still to make, would refuse them. (Windows follows no link
            // when syncing, and would get a `\\?\` path.)
            #[cfg(unix)]
            let root = files::resolved(&root)
                .map_err(|err| io_error("opening the store in", &root, err))?;
            let made = !root.is_dir();
            if made {
                create_dir_all(ops.as_ref(), &root, durable, "")?;
            }
            // What is left of the path to resolve (a relative path, a `..`)
            // is resolved now that the directory exists.
            #[cfg(unix)]
            let root = std::fs::canonicalize(&root)
                .map_err(|err| io_error("opening the store in", &root, err))?;
            if !made && durable {
                // Made without a sync (by a `Buffered` handle, say), the
                // directory's own entry could vanish in a power cut, and
                // with it every write a `Full` handle acknowledged in it.
                // Best effort: a parent this process may not open for
                // reading leaves that to the directory's age.
                if let Ok(parent) = files::parent(&root) {
                    if let Err(error) = ops.sync_dir(parent) {
                        tracing::debug!(%error, dir = %parent.display(), "could not sync the store directory's parent");
                    }
                }
            }
            Ok((root, ops))
        })
        .await?;
        Ok(FsBackend {
            inner: Arc::new(Inner {
                root,
                options,
                tuning,
                ops,
                closed: AtomicBool::new(false),
                corrupt_skipped: AtomicU64::new(0),
                collections: Mutex::new(HashMap::new()),
                evicting: Mutex::new(Vec::new()),
                unflushed: Mutex::new(HashSet::new()),
                uses: AtomicU64::new(0),
                opened: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The store's directory. On Unix-like systems, as resolved when the
    /// store was opened (no symbolic link, no `..`): the path given to
    /// `open` may differ.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &FsOptions {
        &self.inner.options
    }

    /// The record files of a collection proven corrupt: content that is not
    /// the record their name says, or a symbolic link (skipped by `get_all`
    /// and the change feed, read as absent by `get_many`).
    pub async fn corrupt_files(&self, collection: &CollectionName) -> Result<Vec<CorruptFile>> {
        let found = self
            .with_collection(collection, Take::Existing, |c| {
                c.shared(Collection::read_all)
            })
            .await?;
        Ok(found.map(|(_, skipped)| skipped).unwrap_or_default())
    }

    /// Writes every record committed to a write-ahead log but not yet to
    /// its file, in every collection (a checkpoint;
    /// [`close`](StorageBackend::close) does the same for the collections
    /// the handle used). Afterwards the record files hold every record:
    /// call it before reading or editing them with other tools. The files
    /// are synced under [`Durability::Full`], and those of writes a `Full`
    /// handle acknowledged whatever this handle's durability; a
    /// [`Durability::Buffered`] handle leaves its own to the operating
    /// system, so this is no barrier against a power failure.
    pub async fn checkpoint(&self) -> Result<()> {
        // Every collection directory, not only those holding records: the
        // removal of a collection's last record reaches its file here too.
        let CollectionDirs { mut found, unnamed } =
            self.run(|inner| collection_dirs(&inner.root)).await?;
        found.sort();
        // One collection that cannot be read (its name among them) does not
        // keep the others' writes out of their files: the first failure is
        // returned after all.
        let mut first_failure = unnamed.into_iter().next();
        for (collection, _) in found {
            if let Err(err) = self
                .with_open_collection(&collection, Take::Walking, |open| {
                    open.checkpointing(Collection::checkpoint_if_used)
                })
                .await
            {
                first_failure.get_or_insert(err);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// How many times reads through this handle (`get_all`, `get_many`,
    /// `changes`, `changes_since_timestamp`) skipped a corrupt record file
    /// since it was opened. Each skip is also logged as a `tracing` warning
    /// naming the file; [`corrupt_files`](Self::corrupt_files) lists them.
    pub fn corrupt_skipped(&self) -> u64 {
        self.inner.corrupt_skipped.load(Ordering::Relaxed)
    }

    /// Runs blocking file work off the async runtime, failing once closed.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.check_open()?;
        let inner = Arc::clone(&self.inner);
        blocking(move || work(&inner)).await
    }

    /// Runs `work` on a collection's state, opening it first; `None` when the
    /// collection does not exist and `take` does not create it.
    async fn with_collection<T: Send + 'static>(
        &self,
        collection: &CollectionName,
        take: Take,
        work: impl FnOnce(&mut Collection) -> Result<T> + Send + 'static,
    ) -> Result<Option<T>> {
        self.with_open_collection(collection, take, |open| open.with(work))
            .await
    }

    /// Runs `work` on a collection as this handle holds it open, opening it
    /// first; `None` when the collection does not exist and `take` does not
    /// create it.
    async fn with_open_collection<T: Send + 'static>(
        &self,
        collection: &CollectionName,
        take: Take,
        work: impl FnOnce(&Arc<OpenCollection>) -> Result<T> + Send + 'static,
    ) -> Result<Option<T>> {
        let name = collection.clone();
        self.run(move |inner| {
            let Some(open) = inner.collection(&name, take)? else {
                return Ok(None);
            };
            work(&open).map(Some)
        })
        .await
    }

    fn check_open(&self) -> Result<()> {
        self.inner.check_open()
    }
}

/// How a call takes a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// To work on it, made if missing.
    Create,
    /// To work on it, if it exists.
    Existing,
    /// On a walk over every collection (a checkpoint of all, the newest
    /// stamp): no use of the collection, so it does not make it recently
    /// used, and a busy one is not closed in its place.
    Walking,
}

impl Inner {
    /// The collection, opened if need be, as `take` says.
    fn collection(&self, name: &CollectionName, take: Take) -> Result<Option<Arc<OpenCollection>>> {
        let used = |state: &OpenCollection| {
            if take != Take::Walking {
                state.mark_used(self.uses.fetch_add(1, Ordering::Relaxed));
            }
        };
        if let Some(state) = self.open_collections()?.get(name) {
            used(state);
            return Ok(Some(Arc::clone(state)));
        }
        // Opened without the map's lock: an open may wait for another
        // process's locks and replays the write-ahead log, and calls on
        // other collections must not wait behind it. Two calls opening one
        // collection at once both open it, as two processes would; the one
        // that finishes second takes the first one's.
        let Some(state) = self.open_unmapped(name, take == Take::Create)? else {
            return Ok(None);
        };
        let mut open = self.open_collections()?;
        if let Some(opened) = open.get(name) {
            used(opened);
            return Ok(Some(Arc::clone(opened)));
        }
        // The state put in the map holds whatever a checkpoint that failed
        // when the collection was closed to make room left in its log, and
        // its own close or checkpoint writes it: `close` need not.
        self.unflushed.lock().remove(name);
        // Only the map holds an idle collection: no call is using it and no
        // background checkpoint runs on it, and no one can take it from the
        // map while the map is locked. As many go as the map holds past the
        // bound (more than one after a burst of calls kept many in use),
        // least recently used first: reopening one costs a read of its
        // whole change log, so a busy collection must not be the one closed.
        let excess = (open.len() + 1).saturating_sub(MAX_OPEN_COLLECTIONS);
        self.opened.lock().insert(name.clone(), state.floor());
        let state = Arc::new(OpenCollection::new(state));
        used(&state);
        let mut idle: Vec<(u64, CollectionName)> = open
            .iter()
            .filter(|(_, state)| Arc::strong_count(state) == 1)
            .map(|(name, state)| (state.last_used(), name.clone()))
            .collect();
        idle.sort_unstable();
        let idle: Vec<_> = idle
            .into_iter()
            .take(excess)
            .filter_map(|(_, name)| open.remove(&name).map(|state| (name, state)))
            .collect();
        open.insert(name.clone(), Arc::clone(&state));
        // Before the map is let go: a `close` that drains it then finds them.
        self.evicting.lock().extend(
            idle.iter()
                .map(|(name, idle)| (name.clone(), Arc::clone(idle))),
        );
        drop(open);
        for (name, idle) in idle {
            // As `close` leaves it: its records in their files. Should that
            // fail, the write-ahead log keeps them, the next open of the
            // collection replays it, and `close` opens it for that.
            if let Err(error) = idle.checkpointing(Collection::checkpoint_if_used) {
                tracing::warn!(collection = name.as_str(), %error, "checkpoint of an idle collection failed");
                self.unflushed.lock().insert(name);
            }
            self.evicting
                .lock()
                .retain(|(_, evicting)| !Arc::ptr_eq(evicting, &idle));
        }
        Ok(Some(state))
    }

    /// Opens the collection `name` (made if missing when `create`) outside
    /// the map; `None` when it does not exist.
    fn open_unmapped(&self, name: &CollectionName, create: bool) -> Result<Option<Collection>> {
        // Read before opening, which may wait for other processes' locks.
        let floor = self.opened.lock().get(name).copied();
        Collection::open(
            Arc::clone(&self.ops),
            &self.root,
            name,
            self.options.durability,
            self.tuning,
            create,
            floor,
        )
    }

    /// The map of open collections, locked; refused once the handle is
    /// closed. Checked under the map's lock: `close` sets the flag before it
    /// drains the map, so no call opens a collection again behind it.
    fn open_collections(
        &self,
    ) -> Result<parking_lot::MutexGuard<'_, HashMap<CollectionName, Arc<OpenCollection>>>> {
        let open = self.collections.lock();
        self.check_open()?;
        Ok(open)
    }

    /// Refuses every call once the handle is closed.
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(files::closed())
        } else {
            Ok(())
        }
    }

    fn read_meta(&self) -> Result<BTreeMap<String, String>> {
        let path = self.root.join(META_FILE);
        let bytes = match read_file(&path)? {
            Read::Missing => return Ok(BTreeMap::new()),
            Read::Link => return Err(corrupt("", None, &path, LINK_REASON)),
            Read::Bytes(bytes) => bytes,
        };
        serde_json::from_slice(&bytes).map_err(|err| {
            corrupt(
                "",
                None,
                &path,
                format!("not a JSON object of strings: {err}"),
            )
        })
    }

    /// Counts corrupt files a read skipped.
    fn count_skipped(&self, skipped: u64) {
        if skipped > 0 {
            self.corrupt_skipped.fetch_add(skipped, Ordering::Relaxed);
        }
    }

    /// Writes the metadata file. Called under the exclusive metadata lock,
    /// so no other write of it is under way: a temporary in the root can
    /// only be left by one that crashed, and is removed first.
    fn write_meta(&self, meta: &BTreeMap<String, String>) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(meta)
            .map_err(|err| Error::storage(BACKEND_NAME, format!("encoding metadata: {err}")))?;
        remove_temporaries(self.ops.as_ref(), &self.root)?;
        // Its content is synced whatever the durability: a power cut that
        // kept the new name over empty content would leave a store that no
        // engine opens (every open reads the store id here). The directory
        // is synced under `Full` only: without it the cut keeps the old
        // metadata, which a `Buffered` store may lose.
        replace_whole(
            self.ops.as_ref(),
            &self.root.join(META_FILE),
            &bytes,
            true,
            self.options.durability.is_full(),
        )
    }

    fn meta_lock(&self, exclusive: bool) -> Result<std::fs::File> {
        let path = self.root.join(META_LOCK_FILE);
        let file = open_lock_file(self.ops.as_ref(), &path, "")?;
        let locked = if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        };
        locked.map_err(|err| io_error("locking", &path, err))?;
        // Dropping the file releases the lock.
        Ok(file)
    }
}

/// Whether `dir` holds a store: its metadata (which every engine that
/// opened it wrote), or a collection directory holding the store's change
/// log or write-ahead log.
///
/// Opening a directory makes it a store, so a program that only reads
/// asks this first, to refuse a directory that holds something else (or
/// nothing) instead of writing the store's files into it, as the CLI's
/// reading commands do.
///
/// # Errors
///
/// [`Error::Storage`] when `dir` cannot be read; a missing `dir` holds no
/// store.
pub async fn holds_store(dir: impl AsRef<Path>) -> Result<bool> {
    let root = dir.as_ref().to_path_buf();
    blocking(move || {
        if !root.is_dir() {
            return Ok(false);
        }
        if root.join(META_FILE).exists() {
            return Ok(true);
        }
        for entry in read_dir(&root)? {
            let hidden = entry
                .file_name()
                .to_str()
                .is_none_or(|name| name.starts_with('.'));
            let path = entry.path();
            if !hidden && (path.join(LOG_FILE).is_file() || path.join(WAL_FILE).is_file()) {
                return Ok(true);
            }
        }
        Ok(false)
    })
    .await
}

/// Runs blocking file work on Tokio's blocking threads when a Tokio runtime
/// runs the caller, and in place otherwise: under another executor (such as
/// `futures::executor::block_on`) `spawn_blocking` would panic.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn_blocking(work)
            .await
            .map_err(|err| Error::storage(BACKEND_NAME, format!("file task failed: {err}")))?,
        Err(_) => work(),
    }
}

#[async_trait]
impl StorageBackend for FsBackend {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    async fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<Stored>> {
        let id = id.clone();
        let found = self
            .with_collection(collection, Take::Existing, move |c| {
                c.shared(|c| c.read_stored(&id))
            })
            .await?;
        Ok(found.flatten())
    }

    async fn get_many(
        &self,
        collection: &CollectionName,
        ids: &[RecordId],
    ) -> Result<Vec<Option<Stored>>> {
        let owned: Vec<RecordId> = ids.to_vec();
        let count = owned.len();
        let found = self
            .with_collection(collection, Take::Existing, move |c| {
                c.shared(|c| {
                    let mut skipped = 0;
                    let found = owned
                        .iter()
                        .map(|id| c.read_stored_skipping_corrupt(id, &mut skipped))
                        .collect::<Result<Vec<_>>>()?;
                    Ok((found, skipped))
                })
            })
            .await?;
        let Some((found, skipped)) = found else {
            return Ok(vec![None; count]);
        };
        self.inner.count_skipped(skipped);
        Ok(found)
    }

    async fn get_all(&self, collection: &CollectionName) -> Result<Vec<Record>> {
        let all = self
            .with_collection(collection, Take::Existing, |c| {
                c.shared(Collection::read_all)
            })
            .await?;
        let Some((records, skipped)) = all else {
            return Ok(Vec::new());
        };
        self.inner.count_skipped(skipped.len() as u64);
        Ok(records)
    }

    async fn put_batch(
        &self,
        collection: &CollectionName,
        writes: &[Write],
    ) -> Result<Vec<WriteOutcome>> {
        let mut prepared = Vec::with_capacity(writes.len());
        for write in writes {
            prepared.push(PreparedWrite {
                id: write.record.id().to_string(),
                json: write.record.to_json_string(),
                expected: write.expected.clone(),
                newest: write.record.newest_stamp().clone(),
            });
        }
        if prepared.is_empty() {
            // Closed, an empty batch fails as any other call does.
            self.check_open()?;
            return Ok(Vec::new());
        }
        let outcomes = self
            .with_open_collection(collection, Take::Create, move |open| {
                open.write(|c| c.put_batch(&prepared))
            })
            .await?;
        outcomes.ok_or_else(|| {
            Error::storage(BACKEND_NAME, "collection directory could not be created")
        })
    }

    async fn delete(&self, collection: &CollectionName, id: &RecordId) -> Result<bool> {
        let id = id.clone();
        let existed = self
            .with_open_collection(collection, Take::Existing, move |open| {
                open.write(|c| c.delete(&id))
            })
            .await?;
        Ok(existed.unwrap_or(false))
    }

    async fn changes(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        let page = self
            .with_collection(collection, Take::Existing, move |c| {
                c.shared(|c| {
                    let mut skipped = 0;
                    let page = c.changes(after, limit.get(), &mut skipped)?;
                    Ok((page, skipped))
                })
            })
            .await?;
        let Some((page, skipped)) = page else {
            return Ok(ChangePage {
                changes: Vec::new(),
                next: after,
                more: false,
            });
        };
        self.inner.count_skipped(skipped);
        Ok(page)
    }

    async fn changes_since_timestamp(
        &self,
        collection: &CollectionName,
        millis: u64,
    ) -> Result<Vec<Record>> {
        let mut records = self.get_all(collection).await?;
        records.retain(|r| r.timestamp() > millis);
        Ok(records)
    }

    async fn list_collections(&self) -> Result<Vec<CollectionName>> {
        self.run(|inner| {
            let mut names = Vec::new();
            for (name, path) in collection_dirs(&inner.root)?.found {
                // The write-ahead log counts before the record files: what
                // it wrote (after a power cut, say) and what it removed.
                if holds_a_record(&path, name.as_str())? {
                    names.push(name);
                }
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn clear_collection(&self, collection: &CollectionName) -> Result<()> {
        self.with_open_collection(collection, Take::Existing, |open| {
            open.checkpointing(Collection::clear)
        })
        .await?;
        Ok(())
    }

    /// Read from each collection's change log, which keeps it on every write;
    /// record files are read only for a log that does not know it yet
    /// (rebuilt, or written by an older version), once.
    async fn newest_stamp(&self) -> Result<Option<Stamp>> {
        let mut newest = None;
        for collection in self.list_collections().await? {
            let found = self
                .with_collection(&collection, Take::Walking, |c| {
                    c.exclusive(Collection::newest_stamp)
                })
                .await?
                .flatten();
            newest = newest.max(found);
        }
        Ok(newest)
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        self.run(move |inner| {
            let _lock = inner.meta_lock(false)?;
            Ok(inner.read_meta()?.remove(&key))
        })
        .await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run(move |inner| {
            let _lock = inner.meta_lock(true)?;
            let mut meta = inner.read_meta()?;
            meta.insert(key, value);
            inner.write_meta(&meta)
        })
        .await
    }

    async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run(move |inner| {
            // Under the exclusive lock, another handle or process cannot
            // store the key between the read and the write.
            let _lock = inner.meta_lock(true)?;
            let mut meta = inner.read_meta()?;
            if let Some(existing) = meta.get(&key) {
                return Ok(existing.clone());
            }
            meta.insert(key, value.clone());
            inner.write_meta(&meta)?;
            Ok(value)
        })
        .await
    }

    /// Checkpoints every collection this handle opened, so that a closed
    /// store holds all its records in their files and no write-ahead log
    /// to replay (synced as [`checkpoint`](FsBackend::checkpoint) says).
    /// Nothing is deleted. A close that failed can be tried again: it
    /// checkpoints the collections whose checkpoint failed.
    async fn close(&self) -> Result<()> {
        let again = self.inner.closed.swap(true, Ordering::AcqRel);
        if again && self.inner.unflushed.lock().is_empty() {
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        // Dropping the states closes the lock files. The map is drained off
        // the async runtime too: an open under way holds its lock.
        blocking(move || {
            let mut open: Vec<(CollectionName, Arc<OpenCollection>)> =
                inner.collections.lock().drain().collect();
            // Checkpointing one being evicted waits for its checkpoint.
            open.append(&mut inner.evicting.lock());
            let mut first_error = None;
            for (collection, state) in open {
                // Waits for a background checkpoint under way.
                if let Err(err) = state.close() {
                    inner.unflushed.lock().insert(collection);
                    first_error.get_or_insert(err);
                }
            }
            // Closed to make room, or by a close before this one, their
            // checkpoint failed and none opened them since: opened again,
            // outside the map (which takes no more), so that their writes
            // reach their files. Those that fail again are kept for the next
            // close.
            let unflushed: Vec<CollectionName> = inner.unflushed.lock().drain().collect();
            for collection in unflushed {
                let closed = inner.open_unmapped(&collection, false).and_then(|state| {
                    state.map_or(Ok(()), |state| OpenCollection::new(state).close())
                });
                if let Err(err) = closed {
                    inner.unflushed.lock().insert(collection);
                    first_error.get_or_insert(err);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
        .await
    }
}

/// The collection directories under `root`.
struct CollectionDirs {
    /// Each with its collection's name: those holding records and those
    /// emptied since.
    found: Vec<(CollectionName, PathBuf)>,
    /// For each hashed directory that cannot be named (its `.name` missing,
    /// unreadable or naming another directory) and whose write-ahead log
    /// holds writes: left out of listings, a failure of a checkpoint.
    unnamed: Vec<Error>,
}

/// Every collection directory under `root`.
fn collection_dirs(root: &Path) -> Result<CollectionDirs> {
    let mut dirs = Vec::new();
    let mut unnamed = Vec::new();
    for entry in read_dir(root)? {
        let path = entry.path();
        let Some(stem) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if stem.starts_with('.') {
            continue;
        }
        let file_type = entry
            .file_type()
            .map_err(|err| io_error("inspecting", &path, err))?;
        if file_type.is_symlink() {
            tracing::warn!(path = %path.display(), "{LINK_REASON}: not listed as a collection");
            continue;
        }
        if !file_type.is_dir() {
            continue;
        }
        let name = if is_hashed(&stem) {
            let name_file = path.join(NAME_FILE);
            match read_file(&name_file) {
                Ok(Read::Bytes(bytes)) => String::from_utf8(bytes).ok(),
                Ok(Read::Missing) => None,
                Ok(Read::Link) => {
                    tracing::warn!(path = %name_file.display(), "{LINK_REASON}: collection not listed");
                    None
                }
                // One collection whose name cannot be read failed the
                // listing, and with it every engine's open on the store and
                // every checkpoint of the others.
                Err(error) if !error.is_transient() => {
                    tracing::warn!(%error, "a collection's name cannot be read: collection not listed");
                    None
                }
                Err(error) => return Err(error),
            }
        } else {
            decode(&stem)
        };
        let named = name
            .and_then(|name| CollectionName::new(name).ok())
            .filter(|name| Collection::dir_for(root, name) == path);
        match named {
            Some(name) => dirs.push((name, path)),
            // A collection that cannot be named cannot be opened: writes its
            // write-ahead log holds would stay out of its record files,
            // which a checkpoint promises to bring them into.
            None if is_hashed(&stem) && wal::holds_frames(&path).unwrap_or(true) => {
                unnamed.push(Error::storage(
                    BACKEND_NAME,
                    format!(
                        "the collection in {} cannot be named (its {NAME_FILE} is missing, \
                         unreadable or not its name), and its write-ahead log holds writes \
                         that no checkpoint can reach until it is",
                        path.display()
                    ),
                ));
            }
            None => {}
        }
    }
    Ok(CollectionDirs {
        found: dirs,
        unnamed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collection::wal::holds_records;

    fn name(text: &str) -> CollectionName {
        CollectionName::new(text).unwrap()
    }

    /// A record `id` written once, by client `t`.
    fn record(id: &str) -> Record {
        Record::from_json(serde_json::json!({
            "id": id, "_version": 1, "_timestamp": 1, "_deleted": false, "_clientId": "t"
        }))
        .unwrap()
    }

    /// A call that passed its first check before `close` drained the map
    /// opened its collection again, into the closed handle.
    #[tokio::test]
    async fn no_collection_opens_once_the_handle_is_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBackend::open(tmp.path()).await.unwrap();
        store.close().await.unwrap();
        // What such a call does next.
        let opened = store.inner.collection(&name("late"), Take::Create);
        assert!(
            matches!(opened, Err(Error::Closed { .. })),
            "{:?}",
            opened.err()
        );
        assert!(store.inner.collections.lock().is_empty());
    }

    /// A call that took its collection before `close` emptied the map, and
    /// wrote after close's checkpoint, was acknowledged into a closed store
    /// (and could start a checkpoint after `close` returned): it is refused.
    #[tokio::test]
    async fn a_write_into_a_collection_taken_before_close_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBackend::open(tmp.path()).await.unwrap();
        let notes = name("notes");
        let record = record("n1");
        let taken = store
            .inner
            .collection(&notes, Take::Create)
            .unwrap()
            .unwrap();
        store.close().await.unwrap();
        let prepared = vec![PreparedWrite {
            id: "n1".to_owned(),
            json: record.to_json_string(),
            expected: None,
            newest: record.newest_stamp().clone(),
        }];
        let late = taken.write(|c| c.put_batch(&prepared));
        assert!(
            matches!(late, Err(Error::Closed { .. })),
            "{:?}",
            late.err()
        );
        let dir = Collection::dir_for(tmp.path(), notes.as_str());
        assert!(
            !holds_records(&dir).unwrap(),
            "the refused write is in the log"
        );
    }

    /// Opening a collection waits for other processes' locks; it held the
    /// handle's map of open collections meanwhile, so calls on collections
    /// already open waited too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_open_does_not_hold_up_calls_on_other_collections() {
        let tmp = tempfile::tempdir().unwrap();
        let (open_one, slow_one) = (name("open"), name("slow"));
        let setup = FsBackend::open(tmp.path()).await.unwrap();
        for collection in [&open_one, &slow_one] {
            setup
                .put(collection, &Write::create(record("r1")))
                .await
                .unwrap();
        }
        setup.close().await.unwrap();

        let store = Arc::new(FsBackend::open(tmp.path()).await.unwrap());
        let rid = RecordId::new("r1").unwrap();
        assert!(store.get(&open_one, &rid).await.unwrap().is_some());
        // Another process holds the slow collection's checkpoint lock.
        let lock_path = Collection::dir_for(tmp.path(), slow_one.as_str())
            .join(crate::collection::checkpoint::CHECKPOINT_LOCK_FILE);
        let elsewhere = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&lock_path)
            .unwrap();
        elsewhere.lock().unwrap();
        let opening = {
            let (store, slow_one, rid) = (Arc::clone(&store), slow_one.clone(), rid.clone());
            tokio::spawn(async move { store.get(&slow_one, &rid).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!opening.is_finished(), "the open did not wait for the lock");
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            store.get(&open_one, &rid),
        )
        .await;
        elsewhere.unlock().unwrap();
        assert!(
            read.is_ok(),
            "a call on an open collection waited for another's open"
        );
        assert!(opening.await.unwrap().unwrap().is_some());
        store.close().await.unwrap();
    }

    /// A collection taken out of the map to make room was checkpointed
    /// after the map was let go: a `close` draining the map meanwhile did
    /// not see it and returned before its records were in their files.
    #[tokio::test]
    async fn close_checkpoints_a_collection_being_evicted() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBackend::open(tmp.path()).await.unwrap();
        let notes = name("notes");
        store
            .put(&notes, &Write::create(record("n1")))
            .await
            .unwrap();
        let dir = Collection::dir_for(tmp.path(), notes.as_str());
        assert!(holds_records(&dir).unwrap(), "the write is in the log");
        // As an eviction leaves it between the map and its checkpoint.
        let evicted = store.inner.collections.lock().remove(&notes).unwrap();
        store.inner.evicting.lock().push((notes.clone(), evicted));
        store.close().await.unwrap();
        assert!(
            !holds_records(&dir).unwrap(),
            "close left the log to replay"
        );
    }

    /// A collection closed to make room whose checkpoint failed (a full
    /// disk for a moment, too many open files) kept its writes in its
    /// write-ahead log only, and `close` answered Ok without looking at it:
    /// it opens such a collection again and checkpoints it.
    #[tokio::test]
    async fn close_checkpoints_a_collection_whose_checkpoint_failed_when_it_made_room() {
        for opened_again in [false, true] {
            checkpoint_failed_when_it_made_room(opened_again).await;
        }
    }

    /// A collection whose checkpoint failed when it was closed to make
    /// room, written to its files by `close`; or, `opened_again` before,
    /// by the state that opened it then (`close` then leaves it to that
    /// state, where it opened it a second time, and failed if it could not).
    async fn checkpoint_failed_when_it_made_room(opened_again: bool) {
        let tmp = tempfile::tempdir().unwrap();
        let (store, refusing, dir) = notes_refusing_new_files(tmp.path()).await;
        let notes = name("notes");
        refusing.store(true, Ordering::SeqCst);
        crowd_out(&store, &notes);
        assert!(holds_records(&dir).unwrap(), "the checkpoint failed");
        refusing.store(false, Ordering::SeqCst);
        if opened_again {
            let n1 = RecordId::new("n1").unwrap();
            assert!(store.get(&notes, &n1).await.unwrap().is_some());
            assert!(store.inner.unflushed.lock().is_empty());
        }
        store.close().await.unwrap();
        assert!(
            !holds_records(&dir).unwrap(),
            "close left the log to replay"
        );
        assert!(dir.join("n1.json").is_file());
    }

    /// A store in `root` holding `n1` in `notes`, only in its log, whose
    /// `notes` directory refuses new files while the flag returned is set
    /// (a full disk for a moment), with that directory.
    async fn notes_refusing_new_files(root: &Path) -> (FsBackend, Arc<AtomicBool>, PathBuf) {
        let refusing = Arc::new(AtomicBool::new(false));
        let in_notes = |path: &Path| {
            path.parent()
                .and_then(Path::file_name)
                .is_some_and(|dir| dir == "notes")
        };
        let ops: Arc<dyn FileOps> = {
            let refusing = Arc::clone(&refusing);
            Arc::new(files::Hooked(move |op: &'static str, path: &Path| {
                if refusing.load(Ordering::SeqCst) && op == "create_file" && in_notes(path) {
                    return Err(std::io::Error::other("no room for now"));
                }
                Ok(())
            }))
        };
        let store = FsBackend::open_on(ops, root, FsOptions::default(), Tuning::default())
            .await
            .unwrap();
        let notes = name("notes");
        store
            .put(&notes, &Write::create(record("n1")))
            .await
            .unwrap();
        let dir = Collection::dir_for(store.root(), notes.as_str());
        (store, refusing, dir)
    }

    /// A close whose checkpoint failed (a directory refusing new files for
    /// a moment) is tried again by the next close, which writes the records
    /// to their files, where it answered Ok and left them in the log.
    #[tokio::test]
    async fn a_close_that_failed_checkpoints_when_tried_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, refusing, dir) = notes_refusing_new_files(tmp.path()).await;
        refusing.store(true, Ordering::SeqCst);
        assert!(store.close().await.is_err(), "the checkpoint was refused");
        assert!(holds_records(&dir).unwrap());
        refusing.store(false, Ordering::SeqCst);
        store.close().await.unwrap();
        assert!(
            !holds_records(&dir).unwrap(),
            "the second close left the log to replay"
        );
        assert!(dir.join("n1.json").is_file());
        // Nothing is left to do: a third close is a no-op.
        store.close().await.unwrap();
    }

    /// After a burst of calls kept more collections in use than the bound,
    /// the next open closes idle ones until the map is back within it.
    #[tokio::test]
    async fn the_open_collections_go_back_within_the_bound_after_a_burst() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBackend::open(tmp.path()).await.unwrap();
        let in_use: Vec<_> = (0..MAX_OPEN_COLLECTIONS + 20)
            .map(|n| {
                store
                    .inner
                    .collection(&name(&format!("user-{n}")), Take::Create)
                    .unwrap()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            store.inner.collections.lock().len(),
            MAX_OPEN_COLLECTIONS + 20
        );
        drop(in_use);
        store
            .inner
            .collection(&name("one-more"), Take::Create)
            .unwrap();
        assert_eq!(store.inner.collections.lock().len(), MAX_OPEN_COLLECTIONS);
        store.close().await.unwrap();
    }

    /// Puts a new record `id` into collection "notes"; its feed position.
    async fn put(store: &FsBackend, id: &str) -> u64 {
        let record = syncforge_core::Record::create(
            syncforge_core::Content::from_value(serde_json::json!({"id": id})).unwrap(),
            syncforge_core::Stamp::new(1_000, 0, "t").unwrap(),
        );
        let write = syncforge_core::Write::create(record);
        match store.put(&name("notes"), &write).await.unwrap() {
            syncforge_core::WriteOutcome::Written { cursor, .. } => cursor.get(),
            syncforge_core::WriteOutcome::Conflict => panic!("conflict"),
        }
    }

    /// A handle on `dir` with `Buffered` durability.
    async fn open_buffered(dir: &Path) -> FsBackend {
        let options = FsOptions::default().durability(Durability::Buffered);
        FsBackend::open_with(dir, options).await.unwrap()
    }

    /// Opens as many other collections as a handle keeps open, so that
    /// `collection` is closed to make room.
    fn crowd_out(store: &FsBackend, collection: &CollectionName) {
        for n in 0..MAX_OPEN_COLLECTIONS {
            store
                .inner
                .collection(&name(&format!("other-{n}")), Take::Create)
                .unwrap();
        }
        assert!(!store.inner.collections.lock().contains_key(collection));
    }

    /// A power cut can take back the tail of a `Buffered` handle's logs,
    /// with positions a replica may have pulled; the reservation left on
    /// disk covers them. A handle numbers above it, also when its first open
    /// of the collection only read and the collection was then closed to
    /// make room and opened again (that reopen forgot the reservation and
    /// numbered on from the log's end, handing those positions out again).
    #[tokio::test]
    async fn numbering_stays_above_a_reservation_a_power_cut_left_across_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let notes = name("notes");
        let full = FsBackend::open(tmp.path()).await.unwrap();
        assert_eq!(put(&full, "a").await, 1);
        full.close().await.unwrap();
        // What a `Buffered` handle reserved before the cut took its writes.
        let reserved = Collection::dir_for(tmp.path(), "notes").join(".reserved");
        std::fs::write(&reserved, "1000").unwrap();
        let buffered = open_buffered(tmp.path()).await;
        assert_eq!(buffered.get_all(&notes).await.unwrap().len(), 1);
        crowd_out(&buffered, &notes);
        let position = put(&buffered, "b").await;
        assert!(
            position > 1000,
            "numbered at {position}, below the reservation"
        );
        buffered.close().await.unwrap();
    }

    /// A `Buffered` handle reserves change-feed positions before numbering
    /// (see `Collection::reserve_through`); one that only reads reserves
    /// none, and a collection it closed to make room and opened again
    /// numbers on from where it was, without reserving again.
    #[tokio::test]
    async fn buffered_numbering_reserves_only_for_what_it_numbers() {
        let tmp = tempfile::tempdir().unwrap();
        let notes = name("notes");
        let full = FsBackend::open(tmp.path()).await.unwrap();
        put(&full, "a").await;
        full.close().await.unwrap();
        let reserved = Collection::dir_for(tmp.path(), "notes").join(".reserved");
        let buffered = open_buffered(tmp.path()).await;
        assert_eq!(buffered.get_all(&notes).await.unwrap().len(), 1);
        assert!(!reserved.exists(), "a handle that only read reserved");
        let first = put(&buffered, "b").await;
        let on_disk = std::fs::read_to_string(&reserved).unwrap();
        crowd_out(&buffered, &notes);
        let again = put(&buffered, "c").await;
        assert_eq!(again, first + 1, "a reopen numbered past its reservation");
        assert_eq!(std::fs::read_to_string(&reserved).unwrap(), on_disk);
        buffered.close().await.unwrap();
    }

    /// The collection closed to make room was whichever the map's order
    /// named first, often a busy one, which the next call then reopened
    /// (a read of its whole change log): the least recently used goes.
    #[tokio::test]
    async fn the_least_recently_used_collection_is_closed_to_make_room() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBackend::open(tmp.path()).await.unwrap();
        let open = |collection: &str| {
            store
                .inner
                .collection(&name(collection), Take::Create)
                .unwrap()
                .unwrap();
        };
        for n in 0..MAX_OPEN_COLLECTIONS {
            open(&format!("user-{n}"));
        }
        // Every collection but user-7 is used again, in turn.
        for n in (0..MAX_OPEN_COLLECTIONS).filter(|n| *n != 7) {
            open(&format!("user-{n}"));
        }
        // A walk over every collection is no use of them.
        store.checkpoint().await.unwrap();
        store.newest_stamp().await.unwrap();
        open("one-more");
        let (count, kept_idle) = {
            let still_open = store.inner.collections.lock();
            (still_open.len(), still_open.contains_key(&name("user-7")))
        };
        assert_eq!(count, MAX_OPEN_COLLECTIONS);
        assert!(!kept_idle, "a collection used since was closed instead");
        store.close().await.unwrap();
    }
}
