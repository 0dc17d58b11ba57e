//! The collection's advisory lock: writers take it exclusively, readers
//! shared, so handles in one process and in several processes never
//! interleave a read-check-write (`std::fs::File::lock`, `flock` on Unix).

use std::fs::File;
use std::path::{Path, PathBuf};

use syncforge_core::Result;

use crate::files::{io_error, open_lock_file, FileOps};

/// Name of the lock file in a collection directory.
pub(crate) const LOCK_FILE: &str = ".lock";

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Readers: any number at once.
    Shared,
    /// Writers: alone.
    Exclusive,
}

/// The lock file of one directory, kept open for a handle's life.
#[derive(Debug)]
pub(crate) struct DirLock {
    path: PathBuf,
    file: File,
    /// The collection's name, for errors.
    #[cfg(unix)]
    collection: String,
    /// The file's device and inode when it was opened: a lock is good only
    /// while the path still names that file.
    #[cfg(unix)]
    identity: (u64, u64),
}

impl DirLock {
    /// Opens (creating if needed) the lock file in `dir`.
    pub(crate) fn open(ops: &dyn FileOps, dir: &Path, collection: &str) -> Result<DirLock> {
        Self::open_file(ops, dir, LOCK_FILE, collection)
    }

    /// Opens (creating if needed) the lock file `name` in `dir`.
    pub(crate) fn open_file(
        ops: &dyn FileOps,
        dir: &Path,
        name: &str,
        collection: &str,
    ) -> Result<DirLock> {
        let path = dir.join(name);
        let file = open_lock_file(ops, &path, collection)?;
        #[cfg(unix)]
        let identity = file
            .metadata()
            .map(|opened| identity(&opened))
            .map_err(|err| io_error("reading the metadata of", &path, err))?;
        Ok(DirLock {
            path,
            file,
            #[cfg(unix)]
            collection: collection.to_owned(),
            #[cfg(unix)]
            identity,
        })
    }

    /// Waits for the lock in `mode`.
    pub(crate) fn lock(&self, mode: Mode) -> Result<()> {
        let result = match mode {
            Mode::Exclusive => self.file.lock(),
            Mode::Shared => self.file.lock_shared(),
        };
        result.map_err(|err| io_error("locking", &self.path, err))?;
        self.still_in_place()
    }

    /// Takes the lock exclusively if no other holder has it: `false` when
    /// one does.
    pub(crate) fn try_lock(&self) -> Result<bool> {
        match self.file.try_lock() {
            Ok(()) => self.still_in_place().map(|()| true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(err)) => Err(io_error("locking", &self.path, err)),
        }
    }

    /// Checks, with the lock just taken, that the path still names the file
    /// this handle locks, and releases it if not. A lock file deleted or
    /// replaced while the store is open (taken for a stale one, or the
    /// directory copied back over itself) would leave this handle locking
    /// the old file and a handle opened since locking the new one: two
    /// writers, each alone by its own lock, whose writes to the logs cut
    /// each other's off. Every call then fails until the store is opened
    /// again.
    fn still_in_place(&self) -> Result<()> {
        #[cfg(unix)]
        {
            let now = std::fs::symlink_metadata(&self.path)
                .ok()
                .map(|now| identity(&now));
            if now != Some(self.identity) {
                self.unlock();
                return Err(crate::files::corrupt(
                    &self.collection,
                    None,
                    &self.path,
                    "was removed or replaced while the store was open, so its lock no longer \
                     keeps other handles out: open the store again (in every process using it), \
                     and leave the store's dot files alone while it is open",
                ));
            }
        }
        Ok(())
    }

    /// Releases the lock. Closing the file would release it too, so a
    /// failure is only worth a warning.
    pub(crate) fn unlock(&self) {
        if let Err(err) = self.file.unlock() {
            tracing::warn!(lock = %self.path.display(), %err, "could not release the lock");
        }
    }
}

/// Which file `metadata` is of: its device and inode.
#[cfg(unix)]
fn identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::files::OsFiles;

    #[test]
    fn an_exclusive_lock_keeps_out_every_other_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let writer = DirLock::open(&OsFiles, tmp.path(), "c").unwrap();
        let reader = DirLock::open(&OsFiles, tmp.path(), "c").unwrap();
        writer.lock(Mode::Exclusive).unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let waiting = std::thread::spawn(move || {
            reader.lock(Mode::Shared).unwrap();
            done_tx.send(()).unwrap();
            reader.unlock();
        });
        assert!(
            done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a shared lock was granted beside an exclusive one"
        );
        writer.unlock();
        done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        waiting.join().unwrap();
    }

    #[test]
    fn shared_locks_are_held_together() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DirLock::open(&OsFiles, tmp.path(), "c").unwrap();
        let second = DirLock::open(&OsFiles, tmp.path(), "c").unwrap();
        first.lock(Mode::Shared).unwrap();
        second.lock(Mode::Shared).unwrap();
        // Neither blocks the other; an exclusive attempt would.
        let third = std::fs::File::open(tmp.path().join(LOCK_FILE)).unwrap();
        assert!(third.try_lock().is_err());
        first.unlock();
        second.unlock();
        third.try_lock().unwrap();
    }

    /// A lock file deleted, or replaced by another, while a handle holds it
    /// open: the handle locked the old file and a newcomer the new one, and
    /// both wrote as if alone. The handle now refuses to go on.
    #[cfg(unix)]
    #[test]
    fn a_lock_file_removed_or_replaced_under_its_holder_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let holder = DirLock::open(&OsFiles, tmp.path(), "c").unwrap();
        holder.lock(Mode::Exclusive).unwrap();
        holder.unlock();
        std::fs::remove_file(tmp.path().join(LOCK_FILE)).unwrap();
        for mode in [Mode::Exclusive, Mode::Shared] {
            let err = holder.lock(mode).unwrap_err();
            assert!(
                matches!(err, syncforge_core::Error::Corrupt { .. }),
                "{err}"
            );
        }
        let newcomer = DirLock::open(&OsFiles, tmp.path(), "c").unwrap();
        newcomer.lock(Mode::Exclusive).unwrap();
        assert!(holder.lock(Mode::Exclusive).is_err());
        assert!(holder.try_lock().is_err());
        // The newcomer holds the one lock there is: a handle opened now
        // waits for it.
        let third = DirLock::open(&OsFiles, tmp.path(), "c").unwrap();
        assert!(!third.try_lock().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn a_link_in_the_lock_files_place_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"").unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join(LOCK_FILE)).unwrap();
        let err = DirLock::open(&OsFiles, tmp.path(), "c").unwrap_err();
        assert!(
            matches!(err, syncforge_core::Error::Corrupt { .. }),
            "{err}"
        );
    }
}
