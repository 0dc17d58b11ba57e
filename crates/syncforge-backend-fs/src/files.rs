//! The store's file operations: the one place where I/O errors become
//! [`Error`]s, the seam every change to the disk goes through, and reads that
//! never follow a symbolic link.
//!
//! Every operation that changes what is on disk — creating a directory or a
//! file, writing, syncing a file or a directory, renaming, removing — goes
//! through [`FileOps`]. [`OsFiles`] performs them; the power-loss tests put a
//! recorder in its place that replays them into a model of what a power cut
//! keeps. Reads go straight to the operating system: they change nothing.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use syncforge_core::Error;

use crate::BACKEND_NAME;

/// Prefix of every temporary file. Names the store gives to records and
/// collections never start with a dot, so temporaries cannot be mistaken for
/// data and are safe to remove under the exclusive lock.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// How many files [`FileOps::sync_files`] syncs at once. Filesystems commit
/// concurrent syncs together, so a checkpoint costs a few flushes rather than
/// one per file.
const PARALLEL_SYNCS: usize = 16;

/// Maps an I/O error to the error variant the engine expects, naming what was
/// being done and to which path. Every I/O error of the backend goes through
/// here.
pub(crate) fn io_error(action: &str, path: &Path, err: io::Error) -> Error {
    let message = format!("{action} {}: {err}", path.display());
    let transient = matches!(
        err.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) || out_of_file_handles(&err);
    if transient {
        Error::unavailable(BACKEND_NAME, message)
    } else {
        Error::storage_caused(BACKEND_NAME, message, err)
    }
}

/// Whether the process or the system ran out of open files: the store
/// holds few of its own (it closes idle collections), so the handles of
/// other work come back, and a retry can succeed.
fn out_of_file_handles(err: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = err;
        false
    }
}

/// The refusal of a call on a closed handle.
pub(crate) fn closed() -> Error {
    Error::Closed {
        what: "filesystem backend",
    }
}

/// Stored data that cannot be what it should be: names the collection (empty
/// for the store's own metadata), the record when known, and the path.
pub(crate) fn corrupt(
    collection: &str,
    id: Option<&str>,
    path: &Path,
    reason: impl fmt::Display,
) -> Error {
    Error::Corrupt {
        backend: BACKEND_NAME,
        collection: collection.to_owned(),
        id: id.map(str::to_owned),
        location: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The reason given for a symbolic link found where the store keeps a file
/// or directory of its own.
pub(crate) const LINK_REASON: &str =
    "is a symbolic link; the store never follows links inside its directory";

/// The changes the store makes to the disk. Paths are whole; no operation
/// follows a symbolic link in the last component of a path.
pub(crate) trait FileOps: Send + Sync + fmt::Debug {
    /// Creates a directory whose parent exists.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Creates a new file holding `bytes`, failing if anything has its name;
    /// synced when `sync`.
    fn create_file(&self, path: &Path, bytes: &[u8], sync: bool) -> io::Result<()>;
    /// Writes `bytes` at `offset` of an existing file and cuts off whatever
    /// followed; synced when `sync`.
    fn write_at(&self, path: &Path, offset: u64, bytes: &[u8], sync: bool) -> io::Result<()>;
    /// Makes a file's content durable.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing whatever `to` named (a link itself, never
    /// its target).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file (a link itself, never its target).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes a directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Opens a file to hold advisory locks on, creating it empty if missing.
    fn open_lock_file(&self, path: &Path) -> io::Result<File>;

    /// Reads a record file a checkpoint is about to replace, as
    /// [`read_file`] does.
    fn read_replaced(&self, path: &Path) -> Result<Read, Error> {
        read_file(path)
    }

    /// Makes the content of every file in `paths` durable, several at a
    /// time. A file that no longer exists needs nothing.
    fn sync_files(&self, paths: &[PathBuf]) -> io::Result<()> {
        let skip_missing = |path: &PathBuf| match self.sync_file(path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        if paths.len() <= 1 {
            return paths.iter().try_for_each(skip_missing);
        }
        let next = AtomicUsize::new(0);
        let workers = PARALLEL_SYNCS.min(paths.len());
        let work = || loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(path) = paths.get(index) else {
                return Ok(());
            };
            skip_missing(path)?;
        };
        std::thread::scope(|scope| {
            // As many helpers as the system gives (`scope.spawn` panics
            // when it refuses one), and this thread: the work gets done
            // with none of them.
            let helpers: Vec<_> = (1..workers)
                .map_while(|_| std::thread::Builder::new().spawn_scoped(scope, work).ok())
                .collect();
            let here = work();
            helpers.into_iter().try_for_each(|helper| {
                helper
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a file-sync thread panicked")))
            })?;
            here
        })
    }
}

/// The operating system's file operations.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct OsFiles;

/// File operations as [`OsFiles`] does them, each first shown to a hook
/// (the operation's name and the path it works on, the target of a
/// rename), which may fail it, or panic, instead: for tests of what a
/// failure leaves behind.
#[cfg(test)]
pub(crate) struct Hooked<H>(pub(crate) H);

#[cfg(test)]
impl<H> fmt::Debug for Hooked<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hooked")
    }
}

#[cfg(test)]
impl<H: Fn(&'static str, &Path) -> io::Result<()> + Send + Sync> FileOps for Hooked<H> {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        (self.0)("create_dir", path)?;
        OsFiles.create_dir(path)
    }
    fn create_file(&self, path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
        (self.0)("create_file", path)?;
        OsFiles.create_file(path, bytes, sync)
    }
    // Two hook points: before the write, and (when it is synced) between the
    // write and its sync, where a failing flush leaves the bytes cached.
    fn write_at(&self, path: &Path, offset: u64, bytes: &[u8], sync: bool) -> io::Result<()> {
        (self.0)("write_at", path)?;
        OsFiles.write_at(path, offset, bytes, false)?;
        if sync {
            (self.0)("write_at_sync", path)?;
            OsFiles.sync_file(path)?;
        }
        Ok(())
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        (self.0)("sync_file", path)?;
        OsFiles.sync_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        (self.0)("rename", to)?;
        OsFiles.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        (self.0)("remove_file", path)?;
        OsFiles.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        (self.0)("sync_dir", path)?;
        OsFiles.sync_dir(path)
    }
    fn open_lock_file(&self, path: &Path) -> io::Result<File> {
        (self.0)("open_lock_file", path)?;
        OsFiles.open_lock_file(path)
    }
    fn read_replaced(&self, path: &Path) -> Result<Read, Error> {
        (self.0)("read_replaced", path).map_err(|err| io_error("reading", path, err))?;
        read_file(path)
    }
}

impl FileOps for OsFiles {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn create_file(&self, path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
        file.write_all(bytes)?;
        if sync {
            file.sync_data()?;
        }
        Ok(())
    }

    fn write_at(&self, path: &Path, offset: u64, bytes: &[u8], sync: bool) -> io::Result<()> {
        let mut file = no_follow(OpenOptions::new().write(true)).open(path)?;
        file.set_len(offset)?;
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(bytes)?;
        if sync {
            file.sync_data()?;
        }
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        // Windows needs write access to flush a file.
        no_follow(OpenOptions::new().write(true))
            .open(path)?
            .sync_data()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    #[cfg(unix)]
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        no_follow(OpenOptions::new().read(true))
            .open(path)?
            .sync_all()
    }

    /// Windows cannot open directories as files; NTFS journals its metadata.
    #[cfg(not(unix))]
    fn sync_dir(&self, _path: &Path) -> io::Result<()> {
        Ok(())
    }

    fn open_lock_file(&self, path: &Path) -> io::Result<File> {
        no_follow(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )
        .open(path)
    }
}

/// Options that refuse to open a symbolic link (the last component).
#[cfg(unix)]
fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Non-blocking too: opening a named pipe put in a file's place would
    // otherwise wait for a writer (or reader), for ever, under the
    // collection's lock. Regular files and directories ignore the flag.
    options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
}

/// Windows: links are refused by [`is_link`] checks before opening.
#[cfg(not(unix))]
fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
    options
}

/// Whether `path` itself is a symbolic link.
pub(crate) fn is_link(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink())
}

/// What reading a file found.
pub(crate) enum Read {
    /// Its bytes.
    Bytes(Vec<u8>),
    /// Nothing has that name.
    Missing,
    /// A symbolic link has that name; it was not followed.
    Link,
}

/// Reads a whole file without following a link. I/O errors (permission
/// denied, a directory in the file's place, ...) are errors.
pub(crate) fn read_file(path: &Path) -> Result<Read, Error> {
    let opened = if cfg!(unix) || !is_link(path) {
        no_follow(OpenOptions::new().read(true)).open(path)
    } else {
        return Ok(Read::Link);
    };
    let result = opened.and_then(|file| {
        // Its one look at the file's metadata (which reading to the end
        // would make anyway, for the length) also refuses what is not a
        // regular file: a named pipe, or a device that never ends
        // (`/dev/zero`), which was read until memory ran out.
        let meta = regular_metadata(&file)?;
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(usize::try_from(meta.len()).unwrap_or(usize::MAX))?;
        // Through `Take`, which has no length to look up again.
        (&file)
            .take(u64::MAX)
            .read_to_end(&mut bytes)
            .map(|_| bytes)
    });
    match result {
        Ok(bytes) => Ok(Read::Bytes(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Read::Missing),
        // O_NOFOLLOW reports a link as an error (ELOOP on most systems).
        Err(_) if is_link(path) => Ok(Read::Link),
        Err(err) => Err(io_error("reading", path, err)),
    }
}

/// `path` with the symbolic links of its existing part resolved: its
/// nearest existing ancestor resolved, and the part that does not exist yet
/// (the directories a new store makes) kept as given after it. A relative
/// path whose first directory is still to make, and a path whose missing
/// part has no name to keep (it ends in `..`), are answered as they are:
/// the current directory is no link, and making the directories resolves
/// the rest.
#[cfg(unix)]
pub(crate) fn resolved(path: &Path) -> io::Result<PathBuf> {
    let mut missing = Vec::new();
    let mut existing = path;
    loop {
        match fs::canonicalize(existing) {
            // Kept relative, so that making the store syncs the current
            // directory as `.`, best effort.
            Ok(_) if existing == Path::new(".") && path.is_relative() => {
                return Ok(path.to_path_buf());
            }
            Ok(mut real) => {
                real.extend(missing.iter().rev());
                return Ok(real);
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                    return Ok(path.to_path_buf());
                };
                missing.push(name);
                existing = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
            }
            Err(err) => return Err(err),
        }
    }
}

/// Opens a file for reading without following a link; `None` when missing.
pub(crate) fn open_for_reading(path: &Path) -> io::Result<Option<File>> {
    if !cfg!(unix) && is_link(path) {
        return Err(io::Error::other(LINK_REASON));
    }
    match no_follow(OpenOptions::new().read(true)).open(path) {
        Ok(file) => regular_metadata(&file).map(|_| Some(file)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// `file`'s metadata, when it is a regular file: a named pipe or a device
/// in the place of one of the store's files is an error, not data.
fn regular_metadata(file: &File) -> io::Result<std::fs::Metadata> {
    let meta = file.metadata()?;
    if meta.is_file() {
        Ok(meta)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a named pipe, a device or a directory)",
        ))
    }
}

/// A fresh temporary path in `dir`, unique across threads and processes:
/// the process id alone is not (two containers sharing a volume both run
/// as process 1, and a restarted process may get its old id back), so a
/// random number drawn once per process goes with it.
pub(crate) fn temp_path(dir: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Drawn once: each call of `process::id` is a system call, and a batch
    // names many files.
    static PROCESS: std::sync::OnceLock<(u32, u64)> = std::sync::OnceLock::new();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (process, random) = PROCESS.get_or_init(|| (std::process::id(), fastrand::u64(..)));
    dir.join(format!("{TEMP_PREFIX}{process}-{random:016x}-{n}"))
}

/// Removes the temporaries in `dir` (left by a writer that crashed; call
/// where no writer of them can be at work). One gone meanwhile is no error.
pub(crate) fn remove_temporaries(ops: &dyn FileOps, dir: &Path) -> Result<(), Error> {
    for entry in read_dir(dir)? {
        let is_temp = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(TEMP_PREFIX));
        if is_temp {
            let path = entry.path();
            match ops.remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_error("removing", &path, err)),
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to a new temporary file in `dir`, synced when `sync`.
pub(crate) fn write_temp(
    ops: &dyn FileOps,
    dir: &Path,
    bytes: &[u8],
    sync: bool,
) -> Result<PathBuf, Error> {
    let path = temp_path(dir);
    match ops.create_file(&path, bytes, sync) {
        Ok(()) => Ok(path),
        // Not this call's file: another writer's, left alone.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            Err(io_error("writing", &path, err))
        }
        Err(err) => {
            // Best effort: a leftover temporary is removed later anyway, a
            // collection's when it is next opened, the metadata's when it is
            // next written.
            let _ = ops.remove_file(&path);
            Err(io_error("writing", &path, err))
        }
    }
}

/// Replaces `target` with `bytes` atomically: readers and crashes see the old
/// or the new content, never a mix. A link named `target` is replaced, never
/// followed.
pub(crate) fn replace_atomically(
    ops: &dyn FileOps,
    target: &Path,
    bytes: &[u8],
    durable: bool,
) -> Result<(), Error> {
    replace_whole(ops, target, bytes, durable, durable)
}

/// [`replace_atomically`], syncing the new content before it takes the
/// name when `sync_data`, and the directory after when `sync_name`. With
/// the first alone, a power cut leaves the old file or the new one, never
/// the new name over content that was not written yet.
pub(crate) fn replace_whole(
    ops: &dyn FileOps,
    target: &Path,
    bytes: &[u8],
    sync_data: bool,
    sync_name: bool,
) -> Result<(), Error> {
    let dir = parent(target)?;
    let temp = write_temp(ops, dir, bytes, sync_data)?;
    if let Err(err) = ops.rename(&temp, target) {
        let _ = ops.remove_file(&temp);
        return Err(io_error("replacing", target, err));
    }
    if sync_name {
        sync_dir(ops, dir)?;
    }
    Ok(())
}

/// Makes the entries of a directory durable.
pub(crate) fn sync_dir(ops: &dyn FileOps, dir: &Path) -> Result<(), Error> {
    ops.sync_dir(dir)
        .map_err(|err| io_error("syncing directory", dir, err))
}

/// Creates a directory and its missing parents, syncing each parent when
/// `durable` so that a file written into it cannot vanish with it. A link in
/// the directory's place is refused (`collection` names what it holds).
pub(crate) fn create_dir_all(
    ops: &dyn FileOps,
    dir: &Path,
    durable: bool,
    collection: &str,
) -> Result<(), Error> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(corrupt(collection, None, dir, LINK_REASON))
        }
        Ok(_) => {
            return Err(corrupt(
                collection,
                None,
                dir,
                "is a file where the store keeps a directory",
            ))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error("inspecting", dir, err)),
    }
    let parent_dir = parent(dir)?;
    // `.` is its own parent here: a current directory that is gone is an
    // error of `create_dir` below, not a climb without end.
    if parent_dir != dir && !parent_dir.is_dir() {
        create_dir_all(ops, parent_dir, durable, collection)?;
    }
    match ops.create_dir(dir) {
        Ok(()) => {}
        // Another handle or process created it meanwhile.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(err) => return Err(io_error("creating directory", dir, err)),
    }
    if durable {
        match sync_dir(ops, parent_dir) {
            Ok(()) => {}
            // The current directory, which the process may search but not
            // read: best effort, as when the store is opened again.
            Err(error) if parent_dir == Path::new(".") => {
                tracing::debug!(%error, "could not sync the current directory");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Opens (creating if needed) a lock file, kept open for the handle's life.
pub(crate) fn open_lock_file(
    ops: &dyn FileOps,
    path: &Path,
    collection: &str,
) -> Result<File, Error> {
    ops.open_lock_file(path).map_err(|err| {
        if is_link(path) {
            corrupt(collection, None, path, LINK_REASON)
        } else {
            io_error("opening lock file", path, err)
        }
    })
}

pub(crate) fn parent(path: &Path) -> Result<&Path, Error> {
    // A relative name of one part (`FsBackend::open("data")`) has the empty
    // path for parent, which names no directory to sync: its entry lives
    // in the current directory.
    path.parent()
        .map(|parent| {
            if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            }
        })
        .ok_or_else(|| {
            Error::storage(
                BACKEND_NAME,
                format!("{} has no parent directory", path.display()),
            )
        })
}

/// The entries of a directory.
pub(crate) fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, Error> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<io::Result<Vec<_>>>())
        .map_err(|err| io_error("listing", dir, err))
}

/// Whether an entry of a directory, named in UTF-8, is one `wanted` says
/// it wants: read one entry at a time, and no further than the first, so
/// that asking whether a collection of a million records holds any does
/// not list them all.
pub(crate) fn any_entry(
    dir: &Path,
    mut wanted: impl FnMut(&str) -> Result<bool, Error>,
) -> Result<bool, Error> {
    let entries = fs::read_dir(dir).map_err(|err| io_error("listing", dir, err))?;
    for entry in entries {
        let entry = entry.map_err(|err| io_error("listing", dir, err))?;
        if let Some(name) = entry.file_name().to_str() {
            if wanted(name)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store opened by a relative name of one part (`FsBackend::open("data")`)
    /// has the empty path for parent, and its directory's entry, in the
    /// current directory, was never synced: a power cut could take the
    /// store with every write acknowledged in it.
    #[test]
    fn a_directory_named_relative_is_synced_into_the_current_one() {
        struct Removed(PathBuf);
        impl Drop for Removed {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        assert_eq!(parent(Path::new("data")).unwrap(), Path::new("."));
        // Made in the current directory (the crate's, under `cargo test`),
        // and removed again.
        let name = PathBuf::from(format!(".syncforge-relative-{}", std::process::id()));
        let _removed = Removed(name.clone());
        let synced = std::sync::Mutex::new(Vec::new());
        let ops = Hooked(|op: &'static str, path: &Path| {
            if op == "sync_dir" {
                synced.lock().unwrap().push(path.to_path_buf());
            }
            Ok(())
        });
        create_dir_all(&ops, &name, true, "").unwrap();
        assert!(name.is_dir());
        assert_eq!(*synced.lock().unwrap(), vec![PathBuf::from(".")]);
    }

    #[test]
    fn a_link_is_read_as_a_link_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target.json");
        std::fs::write(&target, b"secret").unwrap();
        let link = tmp.path().join("link.json");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &link).unwrap();
        #[cfg(unix)]
        assert!(matches!(read_file(&link).unwrap(), Read::Link));
        assert!(matches!(
            read_file(&tmp.path().join("none")).unwrap(),
            Read::Missing
        ));
        assert!(matches!(read_file(&target).unwrap(), Read::Bytes(b) if b == b"secret"));
    }

    #[cfg(unix)]
    #[test]
    fn writes_never_go_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("outside");
        std::fs::write(&target, b"keep").unwrap();
        let link = tmp.path().join(".changes");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(OsFiles.write_at(&link, 0, b"x", false).is_err());
        assert!(OsFiles.open_lock_file(&link).is_err());
        assert!(OsFiles.sync_file(&link).is_err());
        // Replacing renames over the link itself.
        replace_atomically(&OsFiles, &link, b"new", false).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::read(&link).unwrap(), b"new");
        assert!(!is_link(&link));
    }

    #[test]
    fn a_directory_in_a_files_place_is_an_io_error_not_absence() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("r1.json");
        std::fs::create_dir(&dir).unwrap();
        let err = read_file(&dir).err().unwrap();
        assert!(matches!(err, Error::Storage { .. }), "{err}");
        assert!(err.to_string().contains("r1.json"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn creating_a_directory_refuses_a_link_in_its_place() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let link = tmp.path().join("notes");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let err = create_dir_all(&OsFiles, &link, false, "notes").unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        create_dir_all(&OsFiles, &tmp.path().join("a").join("b"), true, "b").unwrap();
        assert!(tmp.path().join("a").join("b").is_dir());
    }

    #[test]
    fn sync_files_syncs_many_and_skips_removed_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let mut paths: Vec<PathBuf> = (0..40)
            .map(|n| {
                let path = tmp.path().join(format!("f{n}"));
                std::fs::write(&path, b"x").unwrap();
                path
            })
            .collect();
        paths.push(tmp.path().join("gone"));
        OsFiles.sync_files(&paths).unwrap();
    }

    #[test]
    fn io_errors_map_by_kind() {
        let path = Path::new("/x");
        let transient = io_error("reading", path, io::Error::from(io::ErrorKind::TimedOut));
        assert!(transient.is_transient());
        let permanent = io_error(
            "reading",
            path,
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(matches!(permanent, Error::Storage { .. }));
        assert!(permanent.to_string().contains("reading /x"), "{permanent}");
        #[cfg(unix)]
        for out_of_files in [libc::EMFILE, libc::ENFILE] {
            let err = io_error("opening", path, io::Error::from_raw_os_error(out_of_files));
            assert!(err.is_transient(), "{err}");
        }
    }

    #[test]
    fn a_temporary_name_holds_a_random_part_and_a_taken_one_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let name = temp_path(tmp.path());
        let name = name.file_name().unwrap().to_str().unwrap();
        let parts: Vec<&str> = name.trim_start_matches(TEMP_PREFIX).split('-').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert_eq!(parts[1].len(), 16, "{name}");
        // Another writer's file under the name this call draws: creating
        // fails, and the other writer's file stays.
        let removed = std::sync::atomic::AtomicBool::new(false);
        let taken = Hooked(|op: &'static str, path: &Path| {
            if op == "create_file" {
                std::fs::write(path, b"theirs")?;
            }
            if op == "remove_file" {
                removed.store(true, Ordering::SeqCst);
            }
            Ok(())
        });
        let err = write_temp(&taken, tmp.path(), b"mine", false).unwrap_err();
        assert!(matches!(err, Error::Storage { .. }), "{err}");
        assert!(!removed.load(Ordering::SeqCst));
    }
}
