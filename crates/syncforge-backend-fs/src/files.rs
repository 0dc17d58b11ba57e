//! Small file-system helpers: error mapping, atomic replacement, directory sync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
#[cfg(not(target_os = "linux"))]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use syncforge_core::Error;

use crate::BACKEND_NAME;

/// Prefix of every temporary file. Names the store gives to records and
/// collections never start with a dot, so temporaries cannot be mistaken for
/// data and are safe to remove under the exclusive lock.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// Maps an I/O error to the error variant the engine expects, naming what was
/// being done and to which path.
pub(crate) fn io_error(action: &str, path: &Path, err: io::Error) -> Error {
    let message = format!("{action} {}: {err}", path.display());
    match err.kind() {
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            Error::unavailable(BACKEND_NAME, message)
        }
        _ => Error::storage_caused(BACKEND_NAME, message, err),
    }
}

/// A corrupt file: named, with the reason.
pub(crate) fn corrupt(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::storage(
        BACKEND_NAME,
        format!("corrupt file {}: {reason}", path.display()),
    )
}

/// A fresh temporary path in `dir`, unique across threads and processes.
pub(crate) fn temp_path(dir: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
}

/// Writes `bytes` to a new temporary file in `dir`, synced when `durable`.
pub(crate) fn write_temp(dir: &Path, bytes: &[u8], durable: bool) -> Result<PathBuf, Error> {
    let path = temp_path(dir);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_data()?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(path),
        Err(err) => {
            // Best effort: a leftover temporary is removed on the next open anyway.
            let _ = fs::remove_file(&path);
            Err(io_error("writing", &path, err))
        }
    }
}

fn sync_one(path: &PathBuf) -> Result<(), Error> {
    // Windows needs write access to flush a file.
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| file.sync_data())
        .map_err(|err| io_error("syncing", path, err))
}

/// Syncs the content of every file in `paths`, which lie in one directory.
///
/// On Linux a batch takes one `syncfs(2)`: it flushes every dirty file of the
/// filesystem at once, where one `fsync` per file would cost a disk flush per
/// record. (It also flushes other programs' pending writes on that
/// filesystem, which is the price of one flush per batch.)
#[cfg(target_os = "linux")]
pub(crate) fn sync_files(paths: &[PathBuf]) -> Result<(), Error> {
    match paths {
        [] => Ok(()),
        [one] => sync_one(one),
        [first, ..] => File::open(first)
            .and_then(|file| rustix::fs::syncfs(&file).map_err(std::io::Error::from))
            .map_err(|err| io_error("syncing the filesystem of", first, err)),
    }
}

/// How many files a batch syncs at once. Filesystems commit concurrent syncs
/// together, so a batch costs a few sync round trips instead of one per file.
#[cfg(not(target_os = "linux"))]
const PARALLEL_SYNCS: usize = 8;

/// Syncs the content of every file in `paths`, several at a time.
#[cfg(not(target_os = "linux"))]
pub(crate) fn sync_files(paths: &[PathBuf]) -> Result<(), Error> {
    if paths.len() <= 1 {
        return paths.iter().try_for_each(sync_one);
    }
    let next = AtomicUsize::new(0);
    let workers = PARALLEL_SYNCS.min(paths.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(index) else {
                        return Ok(());
                    };
                    sync_one(path)?;
                })
            })
            .collect();
        handles.into_iter().try_for_each(|handle| {
            handle.join().unwrap_or_else(|_| {
                Err(Error::storage(BACKEND_NAME, "a file-sync thread panicked"))
            })
        })
    })
}

/// Replaces `target` with `bytes` atomically: readers and crashes see the old
/// or the new content, never a mix.
pub(crate) fn replace_atomically(target: &Path, bytes: &[u8], durable: bool) -> Result<(), Error> {
    let dir = parent(target)?;
    let temp = write_temp(dir, bytes, durable)?;
    if let Err(err) = fs::rename(&temp, target) {
        let _ = fs::remove_file(&temp);
        return Err(io_error("replacing", target, err));
    }
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes the entries of a directory (creations, renames, removals) durable.
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|err| io_error("syncing directory", dir, err))
}

/// Makes the entries of a directory durable. Windows cannot open directories
/// as files; NTFS journals its metadata.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> Result<(), Error> {
    Ok(())
}

/// Opens (creating if needed) a lock file, kept open for the handle's life.
pub(crate) fn open_lock_file(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|err| io_error("opening lock file", path, err))
}

/// Creates a directory and its parents, syncing the parent when `durable` so
/// that a record written into it cannot vanish with its directory.
pub(crate) fn create_dir(dir: &Path, durable: bool) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|err| io_error("creating directory", dir, err))?;
    if durable {
        sync_dir(parent(dir)?)?;
    }
    Ok(())
}

fn parent(path: &Path) -> Result<&Path, Error> {
    path.parent().ok_or_else(|| {
        Error::storage(
            BACKEND_NAME,
            format!("{} has no parent directory", path.display()),
        )
    })
}

/// Reads a whole file; `None` when it does not exist.
pub(crate) fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_error("reading", path, err)),
    }
}
