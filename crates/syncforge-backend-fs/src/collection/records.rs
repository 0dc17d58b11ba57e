//! Record files: one JSON file per record, named by the encoded id, holding
//! exactly the record's canonical JSON.
//!
//! A file is *corrupt* only when its content was read and proven not to be
//! the record its name says: not JSON, not a record, another record's id, or
//! a symbolic link (the store never creates one, and never follows one).
//! Failing to read a file (permission denied, a directory in its place, a
//! disk error) proves nothing and is an error, never a reason to skip it.

use std::path::{Path, PathBuf};

use syncforge_core::{Error, Record, Result};

use crate::encoding::{decode, is_hashed, stem_for};
use crate::files::{
    any_entry, corrupt, create_dir_all, io_error, read_file, sync_dir, FileOps, Read, LINK_REASON,
};
use crate::CorruptFile;

/// What ends a record file's name.
pub(crate) const RECORD_SUFFIX: &str = ".json";
/// Directory (in a collection directory) where corrupt record files are moved
/// when a write replaces them, so that nothing is silently destroyed.
pub(crate) const CORRUPT_DIR: &str = ".corrupt";

/// The stem of a record file's name (the encoded id), or `None` for anything
/// else: names starting with a dot belong to the store.
pub(crate) fn record_stem(file_name: &str) -> Option<&str> {
    file_name
        .strip_suffix(RECORD_SUFFIX)
        .filter(|stem| !stem.starts_with('.'))
}

/// Whether a file is where a record of some id would be kept: a record
/// file's name that is hashed, or the readable name of an id. A file named
/// so by hand (`my notes.json`, `Note.json`) stands for no record.
pub(crate) fn stands_for_a_record(file_name: &str) -> bool {
    record_stem(file_name).is_some_and(|stem| is_hashed(stem) || decode(stem).is_some())
}

/// The file name of a record.
pub(crate) fn file_name_for(id: &str) -> String {
    format!("{}{RECORD_SUFFIX}", stem_for(id))
}

/// What a record file holds.
#[derive(Debug)]
pub(crate) enum RecordFile {
    /// There is no such file.
    Missing,
    /// The record its name says.
    Valid(Record),
    /// Something proven not to be that record, with the error naming the file.
    Corrupt(Error),
}

/// Reads the file at `path`, which should hold the record `id` when given,
/// or else a record whose name encodes to the file's stem. Only failing to
/// read it is an error.
pub(crate) fn load(path: &Path, collection: &str, id: Option<&str>) -> Result<RecordFile> {
    let bytes = match read_file(path)? {
        Read::Missing => return Ok(RecordFile::Missing),
        Read::Link => {
            return Ok(RecordFile::Corrupt(corrupt(
                collection,
                id,
                path,
                LINK_REASON,
            )))
        }
        Read::Bytes(bytes) => bytes,
    };
    Ok(parse(&bytes, path, collection, id))
}

/// Judges a record file's bytes (see [`load`]).
pub(crate) fn parse(bytes: &[u8], path: &Path, collection: &str, id: Option<&str>) -> RecordFile {
    let fail = |reason: String| RecordFile::Corrupt(corrupt(collection, id, path, reason));
    let quick = std::str::from_utf8(bytes)
        .ok()
        .and_then(Record::from_stored_json);
    let record = match quick {
        Some(record) => record,
        None => {
            let value: serde_json::Value = match serde_json::from_slice(bytes) {
                Ok(value) => value,
                Err(err) => return fail(format!("not JSON: {err}")),
            };
            match Record::from_json(value) {
                Ok(record) => record,
                Err(err) => return fail(err.to_string()),
            }
        }
    };
    let belongs = match id {
        Some(id) => record.id() == id,
        None => path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(record_stem)
            .is_some_and(|stem| stem_for(record.id()) == stem),
    };
    if belongs {
        RecordFile::Valid(record)
    } else {
        fail(format!(
            "holds record {:?}, which belongs in another file",
            record.id().as_str()
        ))
    }
}

/// What a read of the record files does with one it cannot read (a
/// directory in its place, a file of another owner); a transient failure
/// fails it either way.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// Fail the call: the file may hold a record the store acknowledged,
    /// which would read as absent.
    Fail,
    /// Leave it out, with a warning: where the answer does not hang on it
    /// (it fails its own reads), or it cannot be a file the store wrote.
    LeaveOut,
}

/// The records of a collection directory's files, the corrupt files
/// skipped, and the files left out as unreadable.
pub(crate) type AllRecords = (Vec<Record>, Vec<CorruptFile>, usize);

/// Every record of a collection directory, read from the files: each one is
/// whole (written atomically). Corrupt files are skipped with a warning and
/// returned in the second list, so one bad file cannot hide the others; a
/// file that cannot be read fails the call or is left out, as `unreadable`
/// says (a transient failure always fails it).
pub(crate) fn read_all(dir: &Path, collection: &str, unreadable: Unreadable) -> Result<AllRecords> {
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut left_out = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok((records, skipped, left_out))
        }
        Err(err) => return Err(io_error("listing", dir, err)),
    };
    for entry in entries {
        let entry = entry.map_err(|err| io_error("listing", dir, err))?;
        let file_name = entry.file_name();
        if file_name.to_str().and_then(record_stem).is_none() {
            continue;
        }
        let path = entry.path();
        match load(&path, collection, None) {
            Ok(RecordFile::Valid(record)) => records.push(record),
            Ok(RecordFile::Missing) => {}
            Ok(RecordFile::Corrupt(error)) => skipped.push(CorruptFile { path, error }),
            Err(error) if unreadable == Unreadable::LeaveOut && !error.is_transient() => {
                tracing::warn!(%error, "a record file cannot be read; left out");
                left_out += 1;
            }
            Err(error) => return Err(error),
        }
    }
    for file in &skipped {
        tracing::warn!(err = %file.error, "skipping a corrupt record file");
    }
    Ok((records, skipped, left_out))
}

/// Whether the collection `collection` in `dir` holds a record: one the
/// write-ahead log wrote last, or a record file whose record the log has
/// not removed since (removals reach the files at the next checkpoint). The
/// log is read only when it holds frames.
///
/// Read without a lock, the log before the files: a checkpoint writes a
/// frame's record into its file before it drops the frame, so a record the
/// log no longer shows is in the listing made after it. (Listed first, a
/// checkpoint between the two reads hid a record from both.)
pub(crate) fn holds_a_record(dir: &Path, collection: &str) -> Result<bool> {
    let logged = if super::wal::holds_frames(dir)? {
        // A log of a later version may hold records: the collection is
        // listed, and using it says why it cannot be read.
        let Some(logged) = super::wal::last_changes(dir)? else {
            return Ok(true);
        };
        if logged.values().any(|&written| written) {
            return Ok(true);
        }
        logged
    } else {
        std::collections::HashMap::new()
    };
    // A removal only hides the file of its own id.
    any_entry(dir, |name| {
        if record_stem(name).is_none() {
            return Ok(false);
        }
        if logged.is_empty() {
            return Ok(true);
        }
        match id_of_file(dir, name, collection) {
            Ok(id) => Ok(id.is_some_and(|id| !logged.contains_key(&id))),
            // A file under a hashed name that cannot be read may hold any
            // record: the collection is listed, and using it says what is
            // wrong (failing here failed every listing of the store).
            Err(error) if !error.is_transient() => {
                tracing::warn!(%error, "a record file cannot be read; its collection is listed");
                Ok(true)
            }
            Err(error) => Err(error),
        }
    })
}

/// Whether a collection directory holds at least one record file.
pub(crate) fn has_records(dir: &Path) -> Result<bool> {
    any_entry(dir, |name| Ok(record_stem(name).is_some()))
}

/// The id a record file stores, read from its name, or for a hashed name
/// from its content; `None` when it is not a record file or proven corrupt
/// (reported when read).
pub(crate) fn id_of_file(dir: &Path, file_name: &str, collection: &str) -> Result<Option<String>> {
    let Some(stem) = record_stem(file_name) else {
        return Ok(None);
    };
    if !is_hashed(stem) {
        return Ok(decode(stem));
    }
    match load(&dir.join(file_name), collection, None)? {
        RecordFile::Valid(record) => Ok(Some(record.id().to_string())),
        RecordFile::Missing => Ok(None),
        RecordFile::Corrupt(err) => {
            tracing::warn!(%err, "leaving a corrupt record file out of the index");
            Ok(None)
        }
    }
}

/// Moves the file at `path` into [`CORRUPT_DIR`] under a new name (under the
/// exclusive lock), so that a write can take its place while the content
/// stays available for inspection.
pub(crate) fn move_aside(
    ops: &dyn FileOps,
    dir: &Path,
    path: &Path,
    durable: bool,
    collection: &str,
) -> Result<PathBuf> {
    let aside_dir = dir.join(CORRUPT_DIR);
    create_dir_all(ops, &aside_dir, durable, collection)?;
    let file_name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("record");
    let file_name = format!(
        "{file_name}.{}",
        crate::collection::log::micros_since_epoch()
    );
    let mut target = aside_dir.join(&file_name);
    // Two files moved aside in the same microsecond: add a counter.
    for attempt in 1..=1000 {
        if std::fs::symlink_metadata(&target).is_err() {
            break;
        }
        target = aside_dir.join(format!("{file_name}-{attempt}"));
    }
    ops.rename(path, &target)
        .map_err(|err| io_error("moving aside", path, err))?;
    tracing::warn!(
        file = %path.display(),
        moved_to = %target.display(),
        "moved a corrupt record file aside to write the record"
    );
    if durable {
        sync_dir(ops, &aside_dir)?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use syncforge_core::{Content, Stamp};

    use super::*;
    use crate::files::OsFiles;

    fn record(id: &str) -> Record {
        let stamp = Stamp::new(1_000, 0, "t").unwrap();
        Record::create(
            Content::from_value(json!({"id": id, "n": 1})).unwrap(),
            &stamp,
        )
    }

    fn write(dir: &Path, id: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(file_name_for(id));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_file_is_corrupt_only_when_its_content_is_proven_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let good = write(tmp.path(), "a", record("a").to_json_string().as_bytes());
        assert!(matches!(
            load(&good, "c", Some("a")).unwrap(),
            RecordFile::Valid(_)
        ));
        assert!(matches!(
            load(&good, "c", None).unwrap(),
            RecordFile::Valid(_)
        ));
        for (bytes, why) in [
            (&b"{\"id\": \"a\""[..], "not JSON"),
            (b"[1]", "invalid record"),
            (b"", "not JSON"),
        ] {
            let path = write(tmp.path(), "a", bytes);
            let RecordFile::Corrupt(err) = load(&path, "c", Some("a")).unwrap() else {
                panic!("{why}: not corrupt");
            };
            assert!(
                matches!(&err, Error::Corrupt { collection, id: Some(id), location, .. }
                    if collection == "c" && id == "a" && location.ends_with("a.json")),
                "{err}"
            );
        }
        let elsewhere = write(tmp.path(), "a", record("b").to_json_string().as_bytes());
        assert!(matches!(
            load(&elsewhere, "c", Some("a")).unwrap(),
            RecordFile::Corrupt(_)
        ));
        assert!(matches!(
            load(&elsewhere, "c", None).unwrap(),
            RecordFile::Corrupt(_)
        ));
        assert!(matches!(
            load(&tmp.path().join("none.json"), "c", None).unwrap(),
            RecordFile::Missing
        ));
    }

    #[test]
    fn read_all_skips_corrupt_files_but_fails_on_unreadable_ones() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a", record("a").to_json_string().as_bytes());
        write(tmp.path(), "b", b"torn {");
        std::fs::write(tmp.path().join(".changes"), b"not a record file").unwrap();
        let (records, skipped, _) = read_all(tmp.path(), "c", Unreadable::Fail).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].path.ends_with("b.json"));
        // A directory where a record file should be cannot be read: an error,
        // not a record quietly left out, unless the caller asks for that.
        std::fs::create_dir(tmp.path().join("d.json")).unwrap();
        let err = read_all(tmp.path(), "c", Unreadable::Fail).unwrap_err();
        assert!(matches!(err, Error::Storage { .. }), "{err}");
        assert!(err.to_string().contains("d.json"), "{err}");
        let (records, skipped, left_out) = read_all(tmp.path(), "c", Unreadable::LeaveOut).unwrap();
        assert_eq!((records.len(), skipped.len(), left_out), (1, 1, 1));
    }

    #[test]
    fn moving_aside_keeps_every_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let mut kept = Vec::new();
        for n in 0..3 {
            let path = write(tmp.path(), "a", format!("bad {n}").as_bytes());
            kept.push(move_aside(&OsFiles, tmp.path(), &path, false, "c").unwrap());
            assert!(!path.exists());
        }
        kept.sort();
        kept.dedup();
        assert_eq!(kept.len(), 3);
        assert!(kept
            .iter()
            .all(|p| p.starts_with(tmp.path().join(CORRUPT_DIR))));
        assert!(!has_records(tmp.path()).unwrap());
    }

    #[test]
    fn hashed_names_are_read_from_the_content() {
        let tmp = tempfile::tempdir().unwrap();
        let long = "x".repeat(300);
        let name = file_name_for(&long);
        std::fs::write(tmp.path().join(&name), record(&long).to_json_string()).unwrap();
        assert_eq!(id_of_file(tmp.path(), &name, "c").unwrap(), Some(long));
        assert_eq!(
            id_of_file(tmp.path(), "plain.json", "c")
                .unwrap()
                .as_deref(),
            Some("plain")
        );
        assert_eq!(id_of_file(tmp.path(), ".changes", "c").unwrap(), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_link_in_a_record_files_place_is_corrupt_and_its_target_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside.txt");
        std::fs::write(&outside, record("a").to_json_string()).unwrap();
        let link = tmp.path().join("a.json");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        assert!(matches!(
            load(&link, "c", Some("a")).unwrap(),
            RecordFile::Corrupt(_)
        ));
        let moved = move_aside(&OsFiles, tmp.path(), &link, false, "c").unwrap();
        assert!(std::fs::symlink_metadata(&moved)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(outside.is_file());
    }
}
