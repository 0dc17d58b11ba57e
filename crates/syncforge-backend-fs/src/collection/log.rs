//! The change log (`.changes`): an append-only file of JSON lines giving every
//! write of a collection its sequence number, and the in-memory index each
//! handle keeps of it.
//!
//! The first line is a header carrying a generation (new whenever the log is
//! rewritten) and a base sequence (the highest sequence ever assigned when it
//! was rewritten, so sequences never go back). Each further line says that a
//! record got a sequence (`{"seq":7,"id":"n1"}`), was removed for good
//! (`{"removed":"n1","seq":8}`), or bounds the newest stamp of every record
//! written before it (`{"newest":"<stamp>"}`, `null` for none), so opening an
//! engine need not read the record files.
//!
//! A handle reads only what was appended since it last looked, so a change
//! made by another handle or process is seen on the next call. Compaction
//! rewrites the log without superseded lines; a log that is missing or cannot
//! be parsed is rebuilt from the record files by the collection (see
//! [`salvage`] for what survives of it).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use syncforge_core::{Error, Result, Stamp};

use crate::files::{corrupt, io_error, open_for_reading, replace_atomically, FileOps};

/// Name of the change log in a collection directory.
pub(crate) const LOG_FILE: &str = ".changes";
/// The format tag in the change log's header.
const LOG_FORMAT: &str = "syncforge-fs/changes";
/// The highest sequence, base or generation the log may hold: the largest
/// integer a JSON number keeps exactly everywhere (2^53). A value above it
/// read from disk makes the log unreadable (and rebuilt), and no increment
/// goes past it, so arithmetic on sequences can never overflow.
pub(crate) const MAX_SEQUENCE: u64 = 1 << 53;

#[derive(Serialize, Deserialize)]
struct LogHeader {
    format: String,
    version: u32,
    generation: u64,
    base: u64,
}

/// One line of the log after the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub(crate) enum LogEntry {
    /// The record `id` was written and got sequence `seq`.
    Written { seq: u64, id: String },
    /// The record was removed for good; `seq` (absent in older logs) is the
    /// sequence its removal used up.
    Removed {
        removed: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Every record written before this line holds no stamp newer than this.
    Newest { newest: Option<Stamp> },
}

/// What the log says about the newest stamp among the collection's records.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NewestStamp {
    /// The log has no `newest` line since it was last rewritten from the
    /// record files: only reading them tells.
    Unknown,
    /// At least as new as every stamp stored (`None`: nothing was stored).
    Known(Option<Stamp>),
}

impl NewestStamp {
    /// The line to append when `stamp` was just stored and is newer than what
    /// is known; nothing when unknown (the next read of the files covers it).
    pub(crate) fn raised_by(&self, stamp: Option<&Stamp>) -> Option<LogEntry> {
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

/// A handle's view of one collection's log.
#[derive(Debug)]
pub(crate) struct ChangeLog {
    path: PathBuf,
    collection: String,
    /// Generation of the log the view was read from; 0 when the view must be
    /// reloaded from scratch.
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

impl ChangeLog {
    /// The view of the log in `dir`, empty until [`refresh`](Self::refresh).
    pub(crate) fn new(dir: &Path, collection: &str) -> ChangeLog {
        ChangeLog {
            path: dir.join(LOG_FILE),
            collection: collection.to_owned(),
            generation: 0,
            offset: 0,
            lines: 0,
            last_seq: 0,
            seqs: HashMap::new(),
            by_seq: BTreeMap::new(),
            newest: NewestStamp::Unknown,
        }
    }

    /// The log's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The highest sequence handed out.
    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The generation of the log the view was read from.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The sequence of a record's last change, if the log knows the record.
    pub(crate) fn seq_of(&self, id: &str) -> Option<u64> {
        self.seqs.get(id).copied()
    }

    /// Whether the log knows the record.
    pub(crate) fn knows(&self, id: &str) -> bool {
        self.seqs.contains_key(id)
    }

    /// The ids the log knows.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &String> + '_ {
        self.seqs.keys()
    }

    /// Entries after `after`, oldest first.
    pub(crate) fn after(&self, after: u64) -> std::collections::btree_map::Range<'_, u64, String> {
        self.by_seq.range(after.saturating_add(1)..)
    }

    /// What the log says about the newest stamp.
    pub(crate) fn newest(&self) -> &NewestStamp {
        &self.newest
    }

    /// Forgets the view, so that the next refresh reads the log from scratch
    /// (after a failure, what is on disk is unknown).
    pub(crate) fn invalidate(&mut self) {
        self.generation = 0;
    }

    /// Whether the log has grown enough to be rewritten without superseded
    /// lines: at least `min_lines`, and more than twice the live records.
    pub(crate) fn needs_compaction(&self, min_lines: usize) -> bool {
        self.lines >= min_lines && self.lines > 2 * self.seqs.len()
    }

    /// `value + 1`, or a typed error once the log's numbers reach
    /// [`MAX_SEQUENCE`] (only a log damaged by hand gets there).
    pub(crate) fn checked_next(&self, value: u64, what: &str) -> Result<u64> {
        value
            .checked_add(1)
            .filter(|next| *next <= MAX_SEQUENCE)
            .ok_or_else(|| {
                corrupt(
                    &self.collection,
                    None,
                    &self.path,
                    format!(
                        "the {what} {value} cannot grow past {MAX_SEQUENCE}: copy the store into \
                         a new one (`syncforge sync OLD NEW`), whose change feed starts again"
                    ),
                )
            })
    }

    /// Reads what was appended since the last call. Returns what is wrong
    /// with the log when it is missing or cannot be parsed (the caller
    /// rebuilds it).
    pub(crate) fn refresh(&mut self) -> Result<Option<String>> {
        let path = self.path.clone();
        let read_error = |err| io_error("reading", &path, err);
        let mut file = match open_for_reading(&path) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(Some("missing".to_owned())),
            Err(_) if crate::files::is_link(&path) => {
                return Ok(Some(crate::files::LINK_REASON.to_owned()))
            }
            Err(err) => return Err(io_error("opening", &path, err)),
        };
        let mut header_line = Vec::new();
        read_line(&mut file, &mut header_line).map_err(read_error)?;
        let header: LogHeader = match serde_json::from_slice(&header_line) {
            Ok(header) => header,
            Err(err) => return Ok(Some(format!("unreadable header: {err}"))),
        };
        if header.format != LOG_FORMAT || header.version != 1 {
            return Err(corrupt(
                &self.collection,
                None,
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
            .map_err(read_error)?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).map_err(read_error)?;
        // Only complete lines count: an incomplete last one is the remains of
        // a crashed append and is cut off by the next writer.
        for line in tail.split_inclusive(|b| *b == b'\n') {
            let Some(content) = line.strip_suffix(b"\n") else {
                break;
            };
            let entry = match serde_json::from_slice(content) {
                Ok(LogEntry::Written { seq, .. } | LogEntry::Removed { seq: Some(seq), .. })
                    if seq > MAX_SEQUENCE =>
                {
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

    /// Starts an empty view of a log with this header.
    pub(crate) fn reset(&mut self, generation: u64, base: u64) {
        self.generation = generation;
        self.offset = 0;
        self.lines = 0;
        self.last_seq = base;
        self.seqs.clear();
        self.by_seq.clear();
        self.newest = NewestStamp::Unknown;
    }

    /// Declares the newest stamp known (a fresh collection holds none).
    pub(crate) fn set_newest(&mut self, newest: NewestStamp) {
        self.newest = newest;
    }

    /// Takes `entries` into this view without writing them: for a log about
    /// to be written whole by [`rewrite`](Self::rewrite).
    pub(crate) fn apply_all(&mut self, entries: Vec<LogEntry>) {
        for entry in entries {
            self.apply(entry);
        }
    }

    /// Forgets every record (the collection was cleared); the sequence goes on.
    pub(crate) fn forget_records(&mut self) {
        self.seqs.clear();
        self.by_seq.clear();
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
            LogEntry::Removed { removed, seq } => {
                if let Some(old) = self.seqs.remove(&removed) {
                    self.by_seq.remove(&old);
                }
                self.last_seq = self.last_seq.max(seq.unwrap_or(0));
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

    /// Appends entries (under the exclusive lock), cutting off an incomplete
    /// line a crashed writer may have left; synced when `sync`.
    pub(crate) fn append(
        &mut self,
        ops: &dyn FileOps,
        entries: Vec<LogEntry>,
        sync: bool,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for entry in &entries {
            text.push_str(&json_line(entry)?);
        }
        ops.write_at(&self.path, self.offset, text.as_bytes(), sync)
            .map_err(|err| io_error("appending to", &self.path, err))?;
        self.offset += text.len() as u64;
        for entry in entries {
            self.apply(entry);
        }
        Ok(())
    }

    /// Writes a new log holding the live entries, with a new generation and
    /// `base` as its base (under the exclusive lock). Other handles tell a
    /// rewritten log by its generation.
    pub(crate) fn rewrite(&mut self, ops: &dyn FileOps, base: u64, durable: bool) -> Result<()> {
        let generation = next_generation(self.generation);
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
        replace_atomically(ops, &self.path, text.as_bytes(), durable)?;
        self.generation = generation;
        self.offset = text.len() as u64;
        self.lines = self.by_seq.len() + usize::from(matches!(self.newest, NewestStamp::Known(_)));
        self.last_seq = self.last_seq.max(base);
        Ok(())
    }
}

/// The highest sequence and generation still legible in a damaged log's
/// bytes: a rebuilt log starts above both. Out-of-range numbers are ignored
/// (they are what made the log unreadable).
pub(crate) fn salvage(bytes: &[u8]) -> (u64, u64) {
    let mut highest_seq = 0;
    let mut highest_generation = 0;
    for value in bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
    {
        let number = |key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .filter(|n| *n <= MAX_SEQUENCE)
                .unwrap_or(0)
        };
        highest_seq = highest_seq.max(number("seq")).max(number("base"));
        highest_generation = highest_generation.max(number("generation"));
    }
    (highest_seq, highest_generation)
}

fn json_line<T: Serialize>(value: &T) -> Result<String> {
    let mut line = serde_json::to_string(value).map_err(|err| {
        Error::storage(crate::BACKEND_NAME, format!("encoding a log entry: {err}"))
    })?;
    line.push('\n');
    Ok(line)
}

/// Reads up to (not including) the first newline.
fn read_line(file: &mut std::fs::File, line: &mut Vec<u8>) -> io::Result<()> {
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

/// Microseconds since the Unix epoch: no count of writes comes near it, so
/// numbers started above it stay above every number handed out before.
pub(crate) fn micros_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(0)
}

/// The generation of a log started in place of one of `previous`: other
/// handles see a new log by its generation differing from the one they
/// read. Taking the time keeps it new even when the old log was deleted
/// and its generation is unknown; one found past 2^53 (a header edited by
/// hand) is not counted on from, since adding to it would leave the limit
/// (or, from `u64::MAX`, give it again).
pub(crate) fn next_generation(previous: u64) -> u64 {
    previous
        .checked_add(1)
        .filter(|next| *next <= MAX_SEQUENCE)
        .unwrap_or(0)
        .max(micros_since_epoch())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::OsFiles;

    /// A log whose header says generation 2^53 (edited by hand) could not
    /// be rewritten: compaction, a clear and a rebuild all failed as
    /// corrupt, for good.
    #[test]
    fn a_log_at_the_last_generation_is_rewritten_under_a_new_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = ChangeLog::new(tmp.path(), "notes");
        log.generation = MAX_SEQUENCE;
        log.rewrite(&OsFiles, 0, false).unwrap();
        assert_ne!(log.generation, MAX_SEQUENCE);
        assert!(log.generation <= MAX_SEQUENCE);
        for old in [u64::MAX, 1, micros_since_epoch() + 1_000_000] {
            let next = next_generation(old);
            assert_ne!(next, old);
            assert!(next <= MAX_SEQUENCE, "{old} -> {next}");
        }
    }

    fn written(seq: u64, id: &str) -> LogEntry {
        LogEntry::Written {
            seq,
            id: id.to_owned(),
        }
    }

    /// A fresh log in `dir` with base 0.
    fn fresh(dir: &Path) -> ChangeLog {
        let mut log = ChangeLog::new(dir, "notes");
        assert_eq!(log.refresh().unwrap().as_deref(), Some("missing"));
        log.reset(0, 0);
        log.set_newest(NewestStamp::Known(None));
        log.rewrite(&OsFiles, 0, false).unwrap();
        log
    }

    #[test]
    fn another_view_reads_only_what_was_appended() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = fresh(tmp.path());
        let mut reader = ChangeLog::new(tmp.path(), "notes");
        assert_eq!(reader.refresh().unwrap(), None);
        writer
            .append(&OsFiles, vec![written(1, "a"), written(2, "b")], false)
            .unwrap();
        assert_eq!(reader.refresh().unwrap(), None);
        assert_eq!(reader.seq_of("b"), Some(2));
        writer
            .append(&OsFiles, vec![written(3, "a")], false)
            .unwrap();
        assert_eq!(reader.refresh().unwrap(), None);
        let order: Vec<(u64, &str)> = reader.after(0).map(|(s, id)| (*s, id.as_str())).collect();
        assert_eq!(order, [(2, "b"), (3, "a")]);
        assert_eq!(reader.last_seq(), 3);
    }

    #[test]
    fn a_removal_forgets_the_record_and_uses_up_its_sequence() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = fresh(tmp.path());
        log.append(
            &OsFiles,
            vec![
                written(1, "a"),
                LogEntry::Removed {
                    removed: "a".to_owned(),
                    seq: Some(2),
                },
            ],
            false,
        )
        .unwrap();
        assert!(!log.knows("a"));
        assert_eq!(log.last_seq(), 2);
        // An older log's removal line, without a sequence, still reads.
        let mut other = ChangeLog::new(tmp.path(), "notes");
        std::fs::write(
            tmp.path().join(LOG_FILE),
            format!(
                "{}{{\"seq\":4,\"id\":\"b\"}}\n{{\"removed\":\"b\"}}\n",
                std::str::from_utf8(
                    &json_line(&LogHeader {
                        format: LOG_FORMAT.to_owned(),
                        version: 1,
                        generation: 9,
                        base: 0
                    })
                    .unwrap()
                    .into_bytes()
                )
                .unwrap()
            ),
        )
        .unwrap();
        assert_eq!(other.refresh().unwrap(), None);
        assert!(!other.knows("b"));
        assert_eq!(other.last_seq(), 4);
    }

    #[test]
    fn an_incomplete_last_line_is_ignored_then_cut_off_by_the_next_append() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = fresh(tmp.path());
        log.append(&OsFiles, vec![written(1, "a")], false).unwrap();
        let path = tmp.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"seq\":2,\"id\":\"gh");
        std::fs::write(&path, &bytes).unwrap();
        let mut other = ChangeLog::new(tmp.path(), "notes");
        assert_eq!(other.refresh().unwrap(), None);
        assert_eq!(other.last_seq(), 1);
        other
            .append(&OsFiles, vec![written(2, "b")], false)
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("gh"), "{text}");
        assert!(text.ends_with("{\"seq\":2,\"id\":\"b\"}\n"), "{text}");
    }

    #[test]
    fn compaction_keeps_live_entries_and_others_follow_the_new_generation() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = fresh(tmp.path());
        let mut reader = ChangeLog::new(tmp.path(), "notes");
        reader.refresh().unwrap();
        let entries: Vec<LogEntry> = (1..=30).map(|seq| written(seq, "a")).collect();
        writer.append(&OsFiles, entries, false).unwrap();
        writer
            .append(&OsFiles, vec![written(31, "b")], false)
            .unwrap();
        assert!(writer.needs_compaction(16));
        assert!(!writer.needs_compaction(64));
        writer.rewrite(&OsFiles, writer.last_seq(), false).unwrap();
        assert!(!writer.needs_compaction(16));
        let text = std::fs::read_to_string(tmp.path().join(LOG_FILE)).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        reader.refresh().unwrap();
        assert_eq!(reader.generation(), writer.generation());
        assert_eq!(reader.seq_of("a"), Some(30));
        assert_eq!(reader.seq_of("b"), Some(31));
        assert_eq!(reader.last_seq(), 31);
    }

    #[test]
    fn damage_is_reported_not_guessed_at() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(LOG_FILE);
        let mut log = ChangeLog::new(tmp.path(), "notes");
        std::fs::write(&path, b"garbage\n").unwrap();
        assert!(log.refresh().unwrap().unwrap().contains("header"));
        std::fs::remove_file(&path).unwrap();
        let mut log = fresh(tmp.path());
        log.append(&OsFiles, vec![written(1, "a")], false).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(format!("{{\"seq\":{},\"id\":\"x\"}}\n", u64::MAX).as_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let mut other = ChangeLog::new(tmp.path(), "notes");
        assert!(other.refresh().unwrap().unwrap().contains("above"));
        // What is legible survives for the rebuild to start above it.
        let (seq, generation) = salvage(&bytes);
        assert_eq!(seq, 1);
        assert!(generation > 0);
    }

    #[test]
    fn an_unknown_format_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(LOG_FILE),
            b"{\"format\":\"other\",\"version\":1,\"generation\":1,\"base\":0}\n",
        )
        .unwrap();
        let err = ChangeLog::new(tmp.path(), "notes").refresh().unwrap_err();
        assert!(matches!(err, Error::Corrupt { ref collection, .. } if collection == "notes"));
    }

    #[test]
    fn sequences_stop_at_the_limit_with_a_typed_error() {
        let tmp = tempfile::tempdir().unwrap();
        let log = ChangeLog::new(tmp.path(), "notes");
        assert_eq!(log.checked_next(1, "sequence").unwrap(), 2);
        let err = log.checked_next(MAX_SEQUENCE, "sequence").unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(LOG_FILE), "{err}");
    }

    #[test]
    fn the_newest_stamp_only_rises() {
        let older = Stamp::new(1_000, 0, "a").unwrap();
        let newer = Stamp::new(2_000, 0, "a").unwrap();
        let known = NewestStamp::Known(Some(newer.clone()));
        assert_eq!(known.raised_by(Some(&older)), None);
        assert!(NewestStamp::Known(Some(older))
            .raised_by(Some(&newer))
            .is_some());
        assert_eq!(NewestStamp::Unknown.raised_by(Some(&newer)), None);
    }
}
