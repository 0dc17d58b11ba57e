//! [`LocalDirectory`]: a directory on this machine as an object store with
//! the conditional writes the backend needs, safe across handles and
//! processes.
//!
//! object_store's `LocalFileSystem` refuses `PutMode::Update`: checking an
//! ETag and replacing the file must happen as one step, which a file system
//! gives only under a lock. This store takes an advisory lock on a file in
//! the directory (`std::fs::File::lock`, `flock` on Unix) around every write
//! and delete, and then (on Unix) one on the directory of the file written
//! (so that stores opened on nested roots, which reach one file by two
//! paths, exclude each other too): look at the current file, check the
//! condition, publish the new file by rename (or hard link for a create).
//! Reads and listings are `LocalFileSystem`'s own; renames make every write
//! atomic for them.
//!
//! ETags. `LocalFileSystem` derives an ETag from the file's inode, its
//! modification time in microseconds and its size. A replacing write gets a
//! new inode (the staged file's), but file systems recycle inode numbers at
//! once (ext4 here handed out 4 distinct inode numbers over 2,000 replacing
//! writes of one file), sizes repeat, and kernels without fine-grained
//! timestamps stamp every write of one clock tick (1 to 10 ms) with the same
//! time: an old ETag could come back (ABA), and a conditional write meant for
//! a state long gone would succeed. So every write here sets its file's
//! modification time itself, under the lock, to a time issued from a counter
//! kept in the lock file: later than every time issued before in this
//! directory and than the file it replaces. No two versions written through
//! this store carry the same modification time, so no ETag comes back,
//! whatever the inode numbers. A file system that cannot keep the
//! microseconds (FAT, ext4 with 128-byte inodes) is refused at the first write.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, Error, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    Result,
};

use crate::io::same_etag;

/// The name this store gives itself in errors, and starts its `Display` with.
pub(crate) const STORE: &str = "LocalDirectory";

/// The longest file name common file systems hold (ext4, XFS, Btrfs, APFS,
/// NTFS): 255 bytes.
const MAX_FILE_NAME: usize = 255;

/// The longest last segment of an object's key this store can write: a
/// write stages its file beside the object's as `{name}#N`, with the first
/// free number from 1. At this length nine writes of one object stage at
/// once, and a tenth waits for one of them to finish ([`STAGING_PATIENCE`]);
/// one byte less would refuse ids that were written before this bound.
pub(crate) const MAX_WRITABLE_NAME: usize = MAX_FILE_NAME - 2;

/// How long a write waits for a free staging name when every number that
/// fits beside its object's name is taken (see [`MAX_WRITABLE_NAME`]).
/// Failing at once with the file system's "name too long" would not do: a
/// writer takes that answer for a key the store can never hold, and gives
/// the write up for good, while the same write would land a moment later.
const STAGING_PATIENCE: Duration = Duration::from_secs(5);

/// How long such a write sleeps before it looks for a free name again.
const STAGING_WAIT: Duration = Duration::from_millis(1);

/// The lock file, in the directory's root. The `#` and digits are the form
/// `LocalFileSystem` gives its unfinished uploads: listings skip such files
/// and no object key can name one, so the lock never shows as an object and
/// never collides with one (uploads are numbered from 1).
const LOCK_FILE: &str = ".syncforge-lock#0";

/// A local directory as an [`ObjectStore`] with conditional writes:
/// `PutMode::Create` and `PutMode::Update` on ETags, atomic across every
/// handle and process on this machine that opens the same directory with
/// `LocalDirectory`. What [`S3Backend::local_directory`] runs on.
///
/// [`S3Backend::local_directory`]: crate::S3Backend::local_directory
///
/// Writes and deletes take an advisory lock on a file in the directory, so
/// they run one at a time; reads and listings do not wait. Every write
/// stages the new file beside its destination and renames it into place.
/// By default each write is made durable before it returns (the file, its
/// modification time and the directory entry are synced); see
/// [`with_fsync`](Self::with_fsync).
///
/// Writing into the directory by other means (a plain `LocalFileSystem`,
/// another program) bypasses the lock and voids these guarantees. Multipart
/// uploads are not supported.
///
/// Object keys become file names as they are, so the directory must be on a
/// file system that tells names apart by case, as S3 does (Linux's are). On
/// one that does not (macOS's default APFS, Windows' NTFS), the collections
/// `Notes` and `notes` would share one folder. The filesystem store
/// (`syncforge-backend-fs`) encodes names for such file systems.
///
/// ```
/// use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
/// use syncforge_backend_s3::LocalDirectory;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> object_store::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = LocalDirectory::new(dir.path())?;
/// let path = "counters/a".into();
/// let first = store.put_opts(&path, "1".into(), PutMode::Create.into()).await?;
/// let stale = UpdateVersion { e_tag: first.e_tag.clone(), version: None };
/// store.put_opts(&path, "2".into(), PutMode::Update(stale.clone()).into()).await?;
/// // The ETag read first no longer matches: the second update is refused.
/// let refused = store.put_opts(&path, "3".into(), PutMode::Update(stale).into()).await;
/// assert!(matches!(refused, Err(object_store::Error::Precondition { .. })));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LocalDirectory {
    files: LocalFileSystem,
    root: PathBuf,
    lock_file: PathBuf,
    fsync: bool,
    /// Writers through this value (and its clones) queue here first, so that
    /// at most one of them at a time holds a blocking thread waiting for the
    /// file lock.
    queue: Arc<tokio::sync::Mutex<()>>,
}

impl LocalDirectory {
    /// A store on the directory `path`, created if missing.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created or opened, or its lock file
    /// cannot be created (a read-only directory, for one).
    pub fn new(path: impl AsRef<FsPath>) -> Result<Self> {
        let path = path.as_ref();
        std::fs::create_dir_all(path).map_err(|e| io_error(e, path))?;
        let root = std::fs::canonicalize(path).map_err(|e| io_error(e, path))?;
        let files = LocalFileSystem::new_with_prefix(&root)?;
        let lock_file = root.join(LOCK_FILE);
        open_lock_file(&lock_file).map_err(|e| io_error(e, &lock_file))?;
        Ok(LocalDirectory {
            files,
            root,
            lock_file,
            fsync: true,
            queue: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Whether each write is synced to the device before it returns
    /// (default `true`). Without it, writes are faster and still atomic, and
    /// a crash of the process loses nothing, but a power cut can lose the
    /// last writes, feed entries among them in any order, or leave a new
    /// object empty (its name durable before its bytes), which then reads as
    /// corrupt: the change feed can then number writes again at positions
    /// peers read past, or stop at such an entry (see docs/backends.md). For
    /// data a power cut may cost.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// Holds the write locks of the store's directory and of the directory
    /// holding the file at `target` until the returned guard drops.
    async fn lock(&self, target: &FsPath) -> Result<(tokio::sync::OwnedMutexGuard<()>, Locked)> {
        let queued = Arc::clone(&self.queue).lock_owned().await;
        let lock_file = self.lock_file.clone();
        // The store's own directory too, when the file is in it: it is
        // another store's subdirectory if that one's root lies above.
        let folder = target.parent().map(FsPath::to_path_buf);
        // The place in the queue goes with the thread that waits for the
        // file lock: a caller that stops waiting must not let the next one
        // park another thread behind the same lock.
        blocking(move || {
            Locked::acquire(&lock_file, folder.as_deref()).map(|locked| (queued, locked))
        })
        .await
    }

    /// The object at `location` now, or `None`.
    async fn current(&self, location: &Path) -> Result<Option<ObjectMeta>> {
        match self.files.head(location).await {
            Ok(meta) => Ok(Some(meta)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete_one(&self, location: &Path) -> Result<()> {
        let target = self.files.path_to_filesystem(location)?;
        let _locked = self.lock(&target).await?;
        self.files.delete(location).await
    }
}

impl fmt::Display for LocalDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE}({})", self.root.display())
    }
}

#[async_trait]
impl ObjectStore for LocalDirectory {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if !opts.attributes.is_empty() {
            return Err(Error::NotImplemented {
                operation: "`put_opts` with attributes".to_owned(),
                implementer: self.to_string(),
            });
        }
        let target = self.files.path_to_filesystem(location)?;
        let fsync = self.fsync;
        // Written and synced before taking the lock: only the check and the
        // publication run one at a time.
        let staged = {
            let target = target.clone();
            blocking(move || Staged::write(target, &payload, fsync)).await?
        };
        let locked = self.lock(&target).await?;
        let current = self.current(location).await?;
        match &opts.mode {
            PutMode::Create if current.is_some() => {
                return Err(Error::AlreadyExists {
                    path: location.to_string(),
                    source: "the object exists".into(),
                })
            }
            PutMode::Update(expected) => {
                let Some(expected) = &expected.e_tag else {
                    return Err(Error::Generic {
                        store: STORE,
                        source: "`PutMode::Update` needs an ETag".into(),
                    });
                };
                let now = current.as_ref().and_then(|meta| meta.e_tag.as_ref());
                // Quoted or not: a tag kept from an older object_store, which
                // did not quote local ones, still names this version.
                if !now.is_some_and(|now| same_etag(now, expected)) {
                    return Err(Error::Precondition {
                        path: location.to_string(),
                        source: match now {
                            Some(now) => format!("ETag {now} does not match {expected}").into(),
                            None => "the object does not exist".into(),
                        },
                    });
                }
            }
            PutMode::Create | PutMode::Overwrite => {}
        }
        let create = matches!(opts.mode, PutMode::Create);
        let (queued, locked) = locked;
        let locked = blocking(move || staged.publish(locked, create)).await?;
        // Still under the lock: the ETag of the file just published.
        let written = self.files.head(location).await?;
        drop((locked, queued));
        Ok(PutResult {
            e_tag: written.e_tag,
            version: None,
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Err(Error::NotImplemented {
            operation: "multipart uploads".to_owned(),
            implementer: self.to_string(),
        })
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        // No file has such a name, so no object has such a key: absent,
        // where the file system's error would fail every read that meets it.
        if location
            .filename()
            .is_some_and(|name| name.len() > MAX_FILE_NAME)
        {
            return Err(Error::NotFound {
                path: location.to_string(),
                source: "longer than a file name may be".into(),
            });
        }
        self.files.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let store = self.clone();
        locations
            .then(move |location| {
                let store = store.clone();
                async move {
                    let location = location?;
                    store.delete_one(&location).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        in_key_order(self.files.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        in_key_order(self.files.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.files.list_with_delimiter(prefix).await
    }

    /// A copy is a read and a write: the copy gets a modification time of
    /// its own (a hard link would share the source's, and its ETag).
    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let bytes = self.files.get(from).await?.bytes().await?;
        let mode = match options.mode {
            CopyMode::Overwrite => PutMode::Overwrite,
            CopyMode::Create => PutMode::Create,
        };
        self.put_opts(to, bytes.into(), mode.into()).await?;
        Ok(())
    }
}

/// Why a directory's file system cannot hold a store: it does not keep
/// modification times to the microsecond (FAT, ext4 with 128-byte inodes),
/// so ETags could repeat. Told apart from other stores' missing operations
/// where errors are mapped, since the advice differs.
#[derive(Debug)]
pub(crate) struct CoarseTimes(pub(crate) PathBuf);

impl fmt::Display for CoarseTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the file system under {} does not keep modification times to the microsecond, \
             so ETags could repeat and conditional writes would not be safe; put the store's \
             directory on a file system that keeps them (ext4 with 256-byte inodes, XFS, \
             btrfs, APFS, NTFS)",
            self.0.display()
        )
    }
}

impl std::error::Error for CoarseTimes {}

/// The directory's write lock, held while this lives (closing the file
/// releases it). Each holder opens the file itself: `flock` excludes other
/// open files, not other users of the same one.
#[derive(Debug)]
struct Locked {
    file: File,
    path: PathBuf,
    /// The lock of the directory holding the file written or deleted (on
    /// Unix, where the file system can lock one). Two handles that reach
    /// one file through different roots (`/srv/data` with keys `app/…`, and
    /// `/srv/data/app`) lock different store directories, but this one is
    /// the same: without it, both could check one ETag and replace the
    /// file, and one acknowledged write was lost.
    #[cfg_attr(
        any(not(test), not(unix)),
        expect(dead_code, reason = "held for its lock, which dropping it releases")
    )]
    folder: Option<File>,
}

impl Locked {
    /// Locks `lock_file` (the store's), then the directory `folder` itself
    /// if given: always in that order, so two writers never wait on each
    /// other. The directory, not a file in it: a lock file in every
    /// directory of a store would show as an object once the directory is
    /// uploaded to a bucket.
    fn acquire(lock_file: &FsPath, folder: Option<&FsPath>) -> Result<Locked> {
        let file = open_lock_file(lock_file).map_err(|e| io_error(e, lock_file))?;
        file.lock().map_err(|e| io_error(e, lock_file))?;
        let folder = match folder {
            Some(folder) => lock_directory(folder)?,
            None => None,
        };
        Ok(Locked {
            file,
            path: lock_file.to_owned(),
            folder,
        })
    }

    /// A modification time later than every one issued in this directory
    /// before (the last is kept in the lock file) and than `replaced`.
    fn issue_time(&mut self, replaced: Option<SystemTime>) -> Result<SystemTime> {
        self.next_time(SystemTime::now(), replaced)
            .map_err(|e| io_error(e, &self.path))
    }

    /// [`issue_time`](Self::issue_time) with the clock reading `now`.
    fn next_time(
        &mut self,
        now: SystemTime,
        replaced: Option<SystemTime>,
    ) -> io::Result<SystemTime> {
        let mut text = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut text)?;
        // An empty or unreadable counter starts from the clock and `replaced`.
        let last: u64 = std::str::from_utf8(&text)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        let issued = micros(now)
            .max(last.saturating_add(1))
            .max(replaced.map_or(0, |time| micros(time).saturating_add(1)));
        self.file.seek(SeekFrom::Start(0))?;
        self.file.set_len(0)?;
        writeln!(self.file, "{issued}")?;
        Ok(UNIX_EPOCH + Duration::from_micros(issued))
    }
}

/// An exclusive lock on the directory `path`, or `None` when it does not
/// exist (no file in it to write over or delete: a write makes it before
/// taking its locks) or cannot be locked. Only Unix can lock a directory,
/// and not every file system there: NFS emulates `flock` with `fcntl`,
/// which refuses an exclusive lock on a descriptor opened read-only, as a
/// directory's is (`EBADF`), and some file systems lock nothing. There the
/// store's own lock still excludes every handle on the same root, as it
/// always did; stores on nested roots do not exclude each other (logged
/// once a process). Any other failure fails the write, as before.
#[cfg(unix)]
fn lock_directory(path: &FsPath) -> Result<Option<File>> {
    /// `EBADF`, the same on every Unix.
    const BAD_DESCRIPTOR: i32 = 9;
    static UNLOCKABLE_LOGGED: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
    let directory = match File::open(path) {
        Ok(directory) => directory,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e, path)),
    };
    loop {
        match directory.lock() {
            Ok(()) => return Ok(Some(directory)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if e.raw_os_error() == Some(BAD_DESCRIPTOR)
                    || e.kind() == io::ErrorKind::Unsupported =>
            {
                if !UNLOCKABLE_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        directory = %path.display(),
                        error = %e,
                        "this file system cannot lock a directory: stores opened on nested roots of it do not exclude each other"
                    );
                }
                return Ok(None);
            }
            Err(e) => return Err(io_error(e, path)),
        }
    }
}

/// Elsewhere a directory cannot be locked: stores on nested roots must not
/// share a directory there (see [`Locked::folder`]).
#[cfg(not(unix))]
fn lock_directory(_path: &FsPath) -> Result<Option<File>> {
    Ok(None)
}

fn open_lock_file(path: &FsPath) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
    })
}

/// A new file written beside its destination, removed again unless published.
struct Staged {
    file: File,
    path: PathBuf,
    target: PathBuf,
    fsync: bool,
    published: bool,
}

impl Staged {
    /// Writes `payload` to `{target}#N` (the first free N from 1, the form
    /// `LocalFileSystem` uses, so listings skip it), creating directories.
    fn write(target: PathBuf, payload: &PutPayload, fsync: bool) -> Result<Staged> {
        let mut number = 1u32;
        let mut waited = Duration::ZERO;
        let mut staged = loop {
            let mut name = target.clone().into_os_string();
            name.push(format!("#{number}"));
            let path = PathBuf::from(name);
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    break Staged {
                        file,
                        path,
                        target,
                        fsync,
                        published: false,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => number += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    create_parents(&path, fsync).map_err(|e| io_error(e, &path))?;
                }
                // `#1` fitted, so only the number's digits made the name too
                // long: other writes of this object hold every number that
                // fits. Wait for one of them to finish.
                Err(e) if e.kind() == io::ErrorKind::InvalidFilename && number > 1 => {
                    if waited >= STAGING_PATIENCE {
                        let busy = io::Error::other(format!(
                            "every staging name that fits beside this object's ({}#1 to \
                             #{}) stayed taken for {STAGING_PATIENCE:?}: other writes of it \
                             are under way, or such files were left by writes that were \
                             cut off, and can be removed",
                            target.display(),
                            number - 1
                        ));
                        return Err(io_error(busy, &path));
                    }
                    std::thread::sleep(STAGING_WAIT);
                    waited += STAGING_WAIT;
                    number = 1;
                }
                Err(e) => return Err(io_error(e, &path)),
            }
        };
        for chunk in payload.iter() {
            staged
                .file
                .write_all(chunk)
                .map_err(|e| io_error(e, &staged.path))?;
        }
        if fsync {
            staged
                .file
                .sync_data()
                .map_err(|e| io_error(e, &staged.path))?;
        }
        Ok(staged)
    }

    /// Under the lock: gives the file its issued modification time and puts
    /// it in place (a hard link for a create, which fails if the object
    /// appeared meanwhile; a rename otherwise). Hands the lock back.
    fn publish(mut self, mut locked: Locked, create: bool) -> Result<Locked> {
        let replaced = std::fs::metadata(&self.target)
            .and_then(|meta| meta.modified())
            .ok();
        let time = locked.issue_time(replaced)?;
        self.file
            .set_modified(time)
            .map_err(|e| io_error(e, &self.path))?;
        let kept = self
            .file
            .metadata()
            .and_then(|meta| meta.modified())
            .map_err(|e| io_error(e, &self.path))?;
        if micros(kept) != micros(time) {
            return Err(Error::NotSupported {
                source: Box::new(CoarseTimes(self.target.clone())),
            });
        }
        if self.fsync {
            self.file.sync_all().map_err(|e| io_error(e, &self.path))?;
        }
        if create {
            match std::fs::hard_link(&self.path, &self.target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(Error::AlreadyExists {
                        path: self.target.display().to_string(),
                        source: e.into(),
                    })
                }
                Err(e) => return Err(io_error(e, &self.target)),
            }
            // The link is the object now; dropping `self` removes the staged name.
        } else {
            std::fs::rename(&self.path, &self.target).map_err(|e| io_error(e, &self.target))?;
            self.published = true;
        }
        if self.fsync {
            sync_parent(&self.target).map_err(|e| io_error(e, &self.target))?;
        }
        Ok(locked)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            // Best effort: a staged file left behind is skipped by listings.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates the directories above `path`; with `fsync`, syncs each new one's
/// parent so that the new entries are durable.
fn create_parents(path: &FsPath, fsync: bool) -> io::Result<()> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let mut existing = parent;
    while !existing.exists() {
        match existing.parent() {
            Some(up) => existing = up,
            None => break,
        }
    }
    std::fs::create_dir_all(parent)?;
    if fsync {
        let mut dir = parent;
        while dir != existing {
            sync_parent(dir)?;
            match dir.parent() {
                Some(up) => dir = up,
                None => break,
            }
        }
    }
    Ok(())
}

/// Syncs the directory holding `path`, so that an entry added or replaced
/// in it is durable (Unix; elsewhere directories cannot be synced).
fn sync_parent(path: &FsPath) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// An I/O error as object_store reports it. Other kinds stay an
/// `io::Error` (of the same kind, naming the file) inside `Generic`: whether
/// the failure is transient is read from that kind.
fn io_error(error: io::Error, path: &FsPath) -> Error {
    let path = path.display().to_string();
    match error.kind() {
        io::ErrorKind::NotFound => Error::NotFound {
            path,
            source: error.into(),
        },
        io::ErrorKind::PermissionDenied => Error::PermissionDenied {
            path,
            source: error.into(),
        },
        kind => Error::Generic {
            store: STORE,
            source: Box::new(io::Error::new(kind, format!("{path}: {error}"))),
        },
    }
}

/// Runs blocking file work off the async threads (inline outside a runtime).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn_blocking(work)
            .await
            .map_err(|source| Error::JoinError { source })?,
        Err(_) => work(),
    }
}

/// A listing in key order, as S3 gives it: the walk of a directory comes in
/// whatever order the file system keeps, and a listing cut at its first
/// `max` entries (a page of the feed, `get_many`'s window) must be the
/// first `max` keys, not any `max` of them.
fn in_key_order(
    listing: BoxStream<'static, Result<ObjectMeta>>,
) -> BoxStream<'static, Result<ObjectMeta>> {
    futures::stream::once(async move {
        let mut all: Vec<ObjectMeta> = listing.try_collect().await?;
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok::<_, object_store::Error>(futures::stream::iter(all.into_iter().map(Ok)))
    })
    .try_flatten()
    .boxed()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An update conditioned on the object's tag as an older object_store
    /// gave it (unquoted; quoted from 0.14.1 on) lands: refused, a write
    /// pending in a feed since before an upgrade never completed.
    #[tokio::test]
    async fn an_update_takes_the_tag_quoted_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirectory::new(dir.path()).unwrap();
        let location = Path::from("a/b");
        let written = store
            .put_opts(
                &location,
                PutPayload::from_static(b"1"),
                PutMode::Create.into(),
            )
            .await
            .unwrap();
        let tag = written.e_tag.unwrap();
        let other_form = match tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Some(bare) => bare.to_owned(),
            None => format!("\"{tag}\""),
        };
        let update = |e_tag: String| {
            PutMode::Update(object_store::UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            })
        };
        store
            .put_opts(
                &location,
                PutPayload::from_static(b"2"),
                update(other_form).into(),
            )
            .await
            .unwrap();
        let stale = store
            .put_opts(&location, PutPayload::from_static(b"3"), update(tag).into())
            .await;
        assert!(
            matches!(stale, Err(Error::Precondition { .. })),
            "{stale:?}"
        );
    }

    /// `key` written through a store on `dir/app`, then updated through a
    /// store on `dir` (as `app/key`) while the first holds the locks of a
    /// write of it: the update waits for them, and lands once they go.
    #[cfg(unix)]
    async fn a_nested_update_waits(dir: &FsPath, key: &str) {
        let outer = LocalDirectory::new(dir).unwrap().with_fsync(false);
        let inner_root = dir.join("app");
        let inner = LocalDirectory::new(&inner_root).unwrap().with_fsync(false);
        let written = inner
            .put_opts(&Path::from(key), "1".into(), PutMode::Create.into())
            .await
            .unwrap();
        let update = PutMode::Update(object_store::UpdateVersion {
            e_tag: written.e_tag,
            version: None,
        });
        // The inner store's own locks for a write of `key`.
        let held = inner.lock(&inner_root.join(key)).await.unwrap();
        assert!(held.1.folder.is_some(), "the directory was not locked");
        let location = Path::from(format!("app/{key}"));
        let write = outer.put_opts(&location, "2".into(), update.into());
        tokio::pin!(write);
        let waited = tokio::time::timeout(Duration::from_millis(300), &mut write).await;
        assert!(waited.is_err(), "the write did not wait: {waited:?}");
        drop(held);
        write.await.unwrap();
        let read = inner.get(&Path::from(key)).await.unwrap();
        assert_eq!(read.bytes().await.unwrap().as_ref(), b"2");
    }

    /// Two stores can reach one file through different roots: one on
    /// `dir` with keys under `app/`, one on `dir/app`. Each locks its own
    /// root, so a write through one must also wait for the lock of the
    /// file's directory, which a write through the other holds; before, both
    /// checked one ETag and replaced the file, and one write was lost. A
    /// file right in the inner store's root is no exception.
    #[cfg(unix)]
    #[tokio::test]
    async fn stores_on_nested_roots_lock_a_files_directory_alike() {
        let dir = tempfile::tempdir().unwrap();
        a_nested_update_waits(dir.path(), "notes/n1").await;
        a_nested_update_waits(dir.path(), "n2").await;
    }

    /// A clock that stands still (one coarse tick) or steps back (NTP)
    /// never makes a time come back, across holders of the lock too.
    #[test]
    fn issued_times_always_increase() {
        let dir = tempfile::tempdir().unwrap();
        let lock_file = dir.path().join(LOCK_FILE);
        let tick = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut last = UNIX_EPOCH;
        for round in 0..3u64 {
            let mut locked = Locked::acquire(&lock_file, None).unwrap();
            // Round 1 reads a clock an hour behind the times issued so far.
            let now = tick - Duration::from_secs(3600 * round);
            for _ in 0..100 {
                let issued = locked.next_time(now, None).unwrap();
                assert!(issued > last, "{issued:?} after {last:?}");
                last = issued;
            }
        }
        // A file being replaced that carries a later time is passed as well.
        let mut locked = Locked::acquire(&lock_file, None).unwrap();
        let ahead = last + Duration::from_secs(60);
        assert!(locked.next_time(tick, Some(ahead)).unwrap() > ahead);
    }

    /// A write that stopped waiting for the directory's lock (its caller
    /// gave up) released its place in the queue while its thread went on
    /// waiting: each such write parked one more blocking thread on the lock,
    /// until none was left for other work.
    #[test]
    fn a_write_that_stops_waiting_for_the_lock_parks_no_second_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(2)
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirectory::new(dir.path()).unwrap().with_fsync(false);
        runtime.block_on(async {
            store
                .put_opts(&Path::from("kept"), "x".into(), PutMode::Create.into())
                .await
                .unwrap();
        });
        // Another process holds the directory's lock.
        let elsewhere = Locked::acquire(&dir.path().join(LOCK_FILE), None).unwrap();
        runtime.block_on(async {
            for n in 0..3 {
                let location = Path::from(format!("w{n}"));
                let write = store.put_opts(&location, "x".into(), PutMode::Create.into());
                let gave_up = tokio::time::timeout(Duration::from_millis(100), write).await;
                assert!(gave_up.is_err(), "the write did not wait for the lock");
            }
            // One thread waits for the lock; the other still reads.
            let read =
                tokio::time::timeout(Duration::from_secs(10), store.get(&Path::from("kept"))).await;
            assert!(read.is_ok(), "no blocking thread was left to read with");
        });
        drop(elsewhere);
        runtime.shutdown_timeout(Duration::from_secs(10));
    }

    /// A write of an object whose name is as long as this store writes,
    /// while nine others of it are staged (`#1` to `#9`), failed with the
    /// file system's "name too long" for its `#10`: an answer a writer
    /// takes for a key the store can never hold, giving the write up for
    /// good. It now waits for a staging name to free up, and lands.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenth_write_of_a_longest_name_at_once_waits_and_lands() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirectory::new(dir.path()).unwrap().with_fsync(false);
        let name = "n".repeat(MAX_WRITABLE_NAME);
        let staged: Vec<PathBuf> = (1..=9)
            .map(|n| dir.path().join("a").join(format!("{name}#{n}")))
            .collect();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        for file in &staged {
            std::fs::write(file, b"under way").unwrap();
        }
        let freed = staged[4].clone();
        let finishing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::remove_file(freed).unwrap();
        });
        let location = Path::from(format!("a/{name}"));
        store
            .put_opts(&location, "x".into(), PutMode::Create.into())
            .await
            .unwrap();
        finishing.join().unwrap();
        let read = store.get(&location).await.unwrap().bytes().await.unwrap();
        assert_eq!(&read[..], b"x");
    }

    /// Each written file carries the issued time: with the counter far
    /// ahead of the clock, a write's modification time is later still.
    #[tokio::test]
    async fn writes_carry_the_issued_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirectory::new(dir.path()).unwrap().with_fsync(false);
        let year_2100 = Duration::from_secs(4_102_444_800);
        std::fs::write(
            dir.path().join(LOCK_FILE),
            format!("{}\n", year_2100.as_micros()),
        )
        .unwrap();
        store
            .put_opts(&Path::from("a/b"), "x".into(), PutMode::Create.into())
            .await
            .unwrap();
        let written = std::fs::metadata(dir.path().join("a/b"))
            .unwrap()
            .modified()
            .unwrap();
        assert!(written > UNIX_EPOCH + year_2100, "{written:?}");
    }
}
