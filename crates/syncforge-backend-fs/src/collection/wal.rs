//! The write-ahead log (`.wal`): group commit for a collection.
//!
//! A write appends one *frame* holding every record of its batch (and every
//! removal) to the log and syncs it once: from then on it is durable and is
//! acknowledged. The record files and the change log are written afterwards
//! without syncs; a *checkpoint* (see [`checkpoint`](super::checkpoint))
//! makes them durable when the log has grown, and only then drops the frames
//! it wrote from the log. Opening a collection
//! replays what the log holds, so a record whose file did not reach the disk
//! before a power cut is written again from its frame.
//!
//! The first line is a header with a generation, new at every checkpoint, by
//! which other handles notice that frames were dropped and read the log again. Each frame is one
//! line: 16 hex digits of the SHA-256 of the payload, a space, and the
//! payload, `{"ops":[{"seq":7,"id":"n1","record":{...}},{"seq":8,"id":"n2"}],
//! "newest":"<stamp>"}` (an op without `record` removes the record; a frame
//! committed by a `Buffered` handle, without a sync, also holds
//! `"buffered":true`, so that only a checkpoint of such frames alone skips
//! the syncs). A frame
//! that is incomplete or whose digest does not match ends the log: it was
//! being written when the process died or the power went, and was never
//! acknowledged. The next append overwrites it.

use std::borrow::Cow;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use syncforge_core::{Error, Result, Stamp};

use crate::collection::log::next_generation;
use crate::files::{
    io_error, is_link, open_for_reading, parent, replace_atomically, sync_dir, FileOps,
};

/// Name of the write-ahead log in a collection directory.
pub(crate) const WAL_FILE: &str = ".wal";
const WAL_FORMAT: &str = "syncforge-fs/wal";
/// Hex digits of the digest that starts each frame (64 bits).
const DIGEST_HEX: usize = 16;

/// Past this many zeros, a log has no header: one is well under 100 bytes.
const MAX_HEADER_BYTES: usize = 4096;

#[derive(Serialize, Deserialize)]
struct WalHeader {
    format: String,
    version: u32,
    generation: u64,
}

/// One change of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalOp {
    /// The sequence the change was given.
    pub(crate) seq: u64,
    /// The record.
    pub(crate) id: String,
    /// Its canonical JSON, or `None` when it was removed.
    pub(crate) record: Option<String>,
}

/// The changes of one batch, committed together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) ops: Vec<WalOp>,
    /// The newest stamp among the records written.
    pub(crate) newest: Option<Stamp>,
    /// Whether a handle of [`Durability::Buffered`](crate::Durability)
    /// committed it, without syncing: a checkpoint by such a handle may then
    /// drop it without syncing the files it writes. A frame without the mark
    /// (a `Full` handle's, or one of a log written before the mark existed)
    /// was acknowledged as durable, and its records' files are synced before
    /// it is dropped, whoever checkpoints.
    pub(crate) buffered: bool,
}

impl Frame {
    /// The highest sequence the frame uses.
    pub(crate) fn last_seq(&self) -> u64 {
        self.ops.iter().map(|op| op.seq).max().unwrap_or(0)
    }

    /// The frame's line, digest first.
    fn encode(&self) -> Result<String> {
        let encode_error = |err: serde_json::Error| {
            Error::storage(crate::BACKEND_NAME, format!("encoding a log frame: {err}"))
        };
        let mut payload = String::from("{\"ops\":[");
        for (index, op) in self.ops.iter().enumerate() {
            if index > 0 {
                payload.push(',');
            }
            payload.push_str(&format!("{{\"seq\":{},\"id\":", op.seq));
            payload.push_str(&serde_json::to_string(&op.id).map_err(encode_error)?);
            if let Some(record) = &op.record {
                // The record's canonical JSON, as it goes into its file.
                payload.push_str(",\"record\":");
                payload.push_str(record);
            }
            payload.push('}');
        }
        payload.push(']');
        if let Some(newest) = &self.newest {
            payload.push_str(",\"newest\":");
            payload.push_str(&serde_json::to_string(newest).map_err(encode_error)?);
        }
        if self.buffered {
            payload.push_str(",\"buffered\":true");
        }
        payload.push('}');
        let mut line = digest(payload.as_bytes());
        line.push(' ');
        line.push_str(&payload);
        line.push('\n');
        Ok(line)
    }

    /// Reads a frame's line (without its newline): `Ok(None)` when it is
    /// not a whole, intact frame (a torn tail); an error when it is intact
    /// (its digest matches) and still cannot be read, as a frame written by
    /// a later syncforge may be, and which may hold acknowledged writes.
    fn decode(line: &[u8]) -> std::result::Result<Option<Frame>, String> {
        let (Some(expected), Some(payload)) = (line.get(..DIGEST_HEX), line.get(DIGEST_HEX + 1..))
        else {
            return Ok(None);
        };
        if line.get(DIGEST_HEX) != Some(&b' ') || digest(payload).as_bytes() != expected {
            return Ok(None);
        }
        let wire: FrameWire<'_> = serde_json::from_slice(payload).map_err(|err| {
            format!(
                "holds an intact frame this syncforge cannot read ({err}): open the collection \
                 with the syncforge that wrote it"
            )
        })?;
        Ok(Some(Frame {
            ops: wire
                .ops
                .into_iter()
                .map(|op| WalOp {
                    seq: op.seq,
                    id: op.id.into_owned(),
                    record: op.record.map(|raw| raw.get().to_owned()),
                })
                .collect(),
            newest: wire.newest,
            buffered: wire.buffered,
        }))
    }
}

#[derive(Deserialize)]
struct FrameWire<'a> {
    #[serde(borrow)]
    ops: Vec<OpWire<'a>>,
    #[serde(default)]
    newest: Option<Stamp>,
    #[serde(default)]
    buffered: bool,
}

#[derive(Deserialize)]
struct OpWire<'a> {
    seq: u64,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    record: Option<&'a RawValue>,
}

fn digest(payload: &[u8]) -> String {
    let hash = Sha256::digest(payload);
    hash.iter()
        .take(DIGEST_HEX / 2)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// What looking at the log found.
#[derive(Debug)]
pub(crate) enum Refresh {
    /// Frames appended since the last look (all of them after a checkpoint
    /// by another handle), oldest first.
    Frames(Vec<Frame>),
    /// The log is missing or its header unreadable: it must be started again
    /// (under the exclusive lock).
    Damaged(String),
    /// The log is of a later version than this one reads (written by a
    /// newer syncforge): its frames may hold acknowledged writes, so it is
    /// neither read nor started again, and the collection is refused.
    Later(String),
}

/// A handle's view of one collection's write-ahead log.
#[derive(Debug)]
pub(crate) struct Wal {
    path: PathBuf,
    /// Generation of the log the view was read from; 0 when unknown.
    generation: u64,
    /// Where frames start (after the header).
    header_len: u64,
    /// The end of the last intact frame: where the next one goes.
    end: u64,
    /// The generation whose file this handle knows the directory to name
    /// durably (0: none). A `Buffered` handle's checkpoint puts a new log in
    /// place without syncing the directory; a synced append to that file
    /// would then be lost with its name at a power cut, so a synced append
    /// to a generation not known here syncs the directory first.
    named: u64,
}

impl Wal {
    /// The view of the log in `dir`, empty until [`refresh`](Self::refresh).
    pub(crate) fn new(dir: &Path) -> Wal {
        Wal {
            path: dir.join(WAL_FILE),
            generation: 0,
            header_len: 0,
            end: 0,
            named: 0,
        }
    }

    /// The generation of the log the view was read from (0: not read).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes of frames in the log.
    pub(crate) fn frame_bytes(&self) -> u64 {
        self.end.saturating_sub(self.header_len)
    }

    /// Where the next frame goes: the end of the last intact one.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Forgets the view: the next refresh reads every frame again.
    pub(crate) fn invalidate(&mut self) {
        self.generation = 0;
        self.header_len = 0;
    }

    /// Reads the frames appended since the last look.
    pub(crate) fn refresh(&mut self) -> Result<Refresh> {
        let path = self.path.clone();
        let read_error = |err| io_error("reading", &path, err);
        let mut file = match open_for_reading(&path) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(Refresh::Damaged("missing".to_owned())),
            Err(_) if is_link(&path) => {
                return Ok(Refresh::Damaged(crate::files::LINK_REASON.to_owned()))
            }
            Err(err) => return Err(io_error("opening", &path, err)),
        };
        let mut header = Vec::new();
        let mut buf = [0u8; 128];
        // Each read's bytes are looked through once (a log a power cut left
        // as zeros was scanned again from its start after every read), and
        // zeros past the length of any header are damage: read no further.
        let mut zeros_only = true;
        loop {
            let n = file.read(&mut buf).map_err(read_error)?;
            if n == 0 {
                break;
            }
            header.extend_from_slice(&buf[..n]);
            if buf[..n].contains(&b'\n') {
                break;
            }
            zeros_only = zeros_only && buf[..n].iter().all(|b| *b == 0);
            if zeros_only && header.len() > MAX_HEADER_BYTES {
                break;
            }
        }
        let Some(newline) = header.iter().position(|b| *b == b'\n') else {
            return Ok(Refresh::Damaged("no header".to_owned()));
        };
        let parsed: WalHeader = match serde_json::from_slice(&header[..newline]) {
            Ok(parsed) => parsed,
            Err(err) => return Ok(Refresh::Damaged(format!("unreadable header: {err}"))),
        };
        if parsed.format == WAL_FORMAT && parsed.version > 1 {
            return Ok(Refresh::Later(format!(
                "is of version {}, later than the version 1 this syncforge reads: open the \
                 collection with the syncforge that wrote it",
                parsed.version
            )));
        }
        if parsed.format != WAL_FORMAT || parsed.version != 1 {
            return Ok(Refresh::Damaged(format!(
                "unknown format {:?} version {}",
                parsed.format, parsed.version
            )));
        }
        // No header read yet (`header_len` 0: a header is never empty), as
        // well as a new log: a log whose header says generation 0, which no
        // store writes but a hand or a broken disk may, was otherwise read
        // from its first byte, its frames unseen, and the next append cut
        // the header off.
        if parsed.generation != self.generation || self.header_len == 0 {
            self.generation = parsed.generation;
            self.header_len = newline as u64 + 1;
            self.end = self.header_len;
        }
        file.seek(SeekFrom::Start(self.end)).map_err(read_error)?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).map_err(read_error)?;
        let mut frames = Vec::new();
        for line in tail.split_inclusive(|b| *b == b'\n') {
            let Some(line_text) = line.strip_suffix(b"\n") else {
                break;
            };
            let frame = match Frame::decode(line_text) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                // Taken for a torn tail, it would be cut off by the next
                // append, with every frame after it.
                Err(why) => return Ok(Refresh::Later(why)),
            };
            frames.push(frame);
            self.end += line.len() as u64;
        }
        Ok(Refresh::Frames(frames))
    }

    /// Every frame the log holds, read again from the start.
    pub(crate) fn read_all(&mut self) -> Result<Refresh> {
        self.invalidate();
        self.refresh()
    }

    /// Notes that the directory was just synced naming the current log (under
    /// the exclusive lock): synced appends to it need no directory sync.
    pub(crate) fn named_durably(&mut self) {
        self.named = self.generation;
    }

    /// Appends a frame after the last intact one (under the exclusive lock),
    /// synced when `sync`: once this returns, the frame is committed.
    pub(crate) fn append(&mut self, ops: &dyn FileOps, frame: &Frame, sync: bool) -> Result<()> {
        let line = frame.encode()?;
        if sync && self.named != self.generation {
            sync_dir(ops, parent(&self.path)?)?;
            self.named = self.generation;
        }
        if let Err(err) = ops.write_at(&self.path, self.end, line.as_bytes(), sync) {
            // The frame may be whole in the file's cached pages although it
            // never reached the disk (its sync failed): cut it off, so that
            // no reader and no later append takes an unacknowledged write
            // for a committed one. If the cut fails too (a failing disk),
            // the next reader takes the frame for committed: the write's
            // outcome is then unknown, as when an answer is lost.
            if let Err(cut) = ops.write_at(&self.path, self.end, b"", sync) {
                tracing::error!(
                    path = %self.path.display(),
                    error = %cut,
                    "a failed append to the log could not be cut off; its write may still appear"
                );
            }
            return Err(io_error("appending to", &self.path, err));
        }
        self.end += line.len() as u64;
        Ok(())
    }

    /// Drops the frames before `upto` (a frame boundary of the current
    /// generation, under the exclusive lock): a checkpoint made them durable
    /// elsewhere. The frames after it are kept, under a new generation, in a
    /// log that replaces the old one atomically, so a cut leaves either.
    /// Returns the kept frames, oldest first.
    pub(crate) fn drop_through(
        &mut self,
        ops: &dyn FileOps,
        upto: u64,
        sync: bool,
    ) -> Result<Vec<Frame>> {
        if upto >= self.end {
            self.reset(ops, sync)?;
            return Ok(Vec::new());
        }
        let read_error = |err| io_error("reading", &self.path, err);
        let mut file = open_for_reading(&self.path)
            .map_err(read_error)?
            .ok_or_else(|| read_error(std::io::ErrorKind::NotFound.into()))?;
        file.seek(SeekFrom::Start(upto)).map_err(read_error)?;
        let mut kept = Vec::new();
        file.take(self.end - upto)
            .read_to_end(&mut kept)
            .map_err(read_error)?;
        let (generation, header) = self.next_header()?;
        let mut bytes = header.into_bytes();
        let header_len = bytes.len() as u64;
        bytes.extend_from_slice(&kept);
        replace_atomically(ops, &self.path, &bytes, sync)?;
        self.generation = generation;
        self.named = if sync { generation } else { 0 };
        self.header_len = header_len;
        self.end = bytes.len() as u64;
        // Every kept line is an intact frame: `end` followed the last one.
        Ok(kept
            .split_inclusive(|b| *b == b'\n')
            .filter_map(|line| {
                line.strip_suffix(b"\n")
                    .and_then(|line| Frame::decode(line).ok().flatten())
            })
            .collect())
    }

    /// A new generation, and the header line that announces it.
    fn next_header(&self) -> Result<(u64, String)> {
        let generation = next_generation(self.generation);
        let mut header = serde_json::to_string(&WalHeader {
            format: WAL_FORMAT.to_owned(),
            version: 1,
            generation,
        })
        .map_err(|err| {
            Error::storage(crate::BACKEND_NAME, format!("encoding a log header: {err}"))
        })?;
        header.push('\n');
        Ok((generation, header))
    }

    /// Starts the log again, empty, with a new generation (under the
    /// exclusive lock): a checkpoint made every frame durable elsewhere, or
    /// the log was missing or damaged. A link in its place is replaced.
    pub(crate) fn reset(&mut self, ops: &dyn FileOps, sync: bool) -> Result<()> {
        let (generation, header) = self.next_header()?;
        let regular = std::fs::symlink_metadata(&self.path).is_ok_and(|meta| meta.is_file());
        if regular {
            ops.write_at(&self.path, 0, header.as_bytes(), sync)
                .map_err(|err| io_error("emptying", &self.path, err))?;
            // Emptied in place: the directory names the same file as before.
            if self.named != 0 && self.named == self.generation {
                self.named = generation;
            }
        } else {
            replace_atomically(ops, &self.path, header.as_bytes(), sync)?;
            self.named = if sync { generation } else { 0 };
        }
        self.generation = generation;
        self.header_len = header.len() as u64;
        self.end = self.header_len;
        Ok(())
    }
}

/// The last change the log in `dir` holds for each id: `true` for a write,
/// `false` for a removal. Record files catch up with the log at the next
/// checkpoint, so until then the log is what the collection holds: a record
/// written after a power cut, or removed since its file was written.
/// `None` for a log of a later version, which this one does not read.
pub(crate) fn last_changes(dir: &Path) -> Result<Option<std::collections::HashMap<String, bool>>> {
    let mut wal = Wal::new(dir);
    let mut last = std::collections::HashMap::new();
    match wal.refresh()? {
        Refresh::Frames(frames) => {
            for op in frames.into_iter().flat_map(|frame| frame.ops) {
                last.insert(op.id, op.record.is_some());
            }
        }
        Refresh::Damaged(_) => {}
        Refresh::Later(_) => return Ok(None),
    }
    Ok(Some(last))
}

/// Whether the log in `dir` may hold a frame, told from its size and its
/// header alone, without reading the frames: a checkpoint leaves it with
/// its header only, as most collections' logs are between writes. Anything
/// unusual (a link, no header) answers `true`, for a full read to judge.
pub(crate) fn holds_frames(dir: &Path) -> Result<bool> {
    let path = dir.join(WAL_FILE);
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return Ok(false);
    };
    if !meta.is_file() {
        return Ok(true);
    }
    let mut file = match open_for_reading(&path) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(false),
        Err(err) => return Err(io_error("opening", &path, err)),
    };
    let mut start = [0u8; 512];
    let read = file
        .read(&mut start)
        .map_err(|err| io_error("reading", &path, err))?;
    Ok(match start[..read].iter().position(|b| *b == b'\n') {
        Some(newline) => meta.len() > newline as u64 + 1,
        None => true,
    })
}

/// Whether the log in `dir` holds a record whose last change is a write.
#[cfg(test)]
pub(crate) fn holds_records(dir: &Path) -> Result<bool> {
    Ok(last_changes(dir)?.is_some_and(|last| last.into_values().any(|written| written)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collection::log::{micros_since_epoch, MAX_SEQUENCE};
    use crate::files::OsFiles;

    /// A log whose header says generation u64::MAX (edited by hand) was
    /// started again under that same generation, so a handle that had read
    /// it never saw that the log was new: it missed the writes after.
    #[test]
    fn a_new_log_never_has_the_generation_of_the_old() {
        let tmp = tempfile::tempdir().unwrap();
        let mut wal = Wal::new(tmp.path());
        for old in [u64::MAX, MAX_SEQUENCE, 1, micros_since_epoch() + 1_000_000] {
            wal.generation = old;
            let (next, _) = wal.next_header().unwrap();
            assert_ne!(next, old);
            assert!(next <= MAX_SEQUENCE, "{old} -> {next}");
        }
    }

    fn frame(first_seq: u64, ids: &[&str]) -> Frame {
        Frame {
            ops: ids
                .iter()
                .enumerate()
                .map(|(n, id)| WalOp {
                    seq: first_seq + n as u64,
                    id: (*id).to_owned(),
                    record: (!id.starts_with('-'))
                        .then(|| format!("{{\"id\":{id:?},\"n\":\"a\\nb\"}}")),
                })
                .collect(),
            newest: Some(Stamp::new(1_000, 0, "t").unwrap()),
            buffered: false,
        }
    }

    /// A log whose header says generation 0 (no store writes it; a hand
    /// or a broken disk may) matched a new view's "nothing read yet": its
    /// frames were read from the header's first byte, none found, and the
    /// next append was written over the header, which made the log damaged
    /// and lost that acknowledged write at the next read.
    #[test]
    fn a_log_of_generation_zero_is_read_and_appended_to_after_its_header() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = started(tmp.path());
        let first = frame(1, &["a"]);
        writer.append(&OsFiles, &first, true).unwrap();
        let path = tmp.path().join(WAL_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let (_, frames_text) = text.split_once('\n').unwrap();
        let header = format!("{{\"format\":{WAL_FORMAT:?},\"version\":1,\"generation\":0}}\n");
        std::fs::write(&path, format!("{header}{frames_text}")).unwrap();
        let mut view = Wal::new(tmp.path());
        assert_eq!(
            frames(view.refresh().unwrap()),
            std::slice::from_ref(&first)
        );
        let second = frame(2, &["b"]);
        view.append(&OsFiles, &second, true).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().starts_with(&header));
        assert_eq!(
            frames(Wal::new(tmp.path()).refresh().unwrap()),
            [first.clone(), second.clone()]
        );
        assert_eq!(frames(view.read_all().unwrap()), [first, second]);
    }

    /// A log a power cut left as zeros has no header: damaged, found from
    /// its first few KiB.
    #[test]
    fn a_log_of_zeros_is_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(WAL_FILE), vec![0u8; 1 << 20]).unwrap();
        let mut wal = Wal::new(tmp.path());
        match wal.refresh().unwrap() {
            Refresh::Damaged(why) => assert_eq!(why, "no header"),
            Refresh::Frames(_) | Refresh::Later(_) => panic!("read as a log"),
        }
    }

    fn started(dir: &Path) -> Wal {
        let mut wal = Wal::new(dir);
        assert!(matches!(wal.refresh().unwrap(), Refresh::Damaged(_)));
        wal.reset(&OsFiles, false).unwrap();
        wal
    }

    fn frames(refresh: Refresh) -> Vec<Frame> {
        match refresh {
            Refresh::Frames(frames) => frames,
            Refresh::Damaged(why) | Refresh::Later(why) => panic!("unread: {why}"),
        }
    }

    #[test]
    fn frames_round_trip_and_other_views_read_only_new_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = started(tmp.path());
        let mut reader = Wal::new(tmp.path());
        assert!(frames(reader.refresh().unwrap()).is_empty());
        let first = frame(1, &["a", "b", "-gone"]);
        writer.append(&OsFiles, &first, true).unwrap();
        assert_eq!(
            frames(reader.refresh().unwrap()),
            std::slice::from_ref(&first)
        );
        assert_eq!(first.last_seq(), 3);
        // A buffered handle's frame keeps its mark.
        let second = Frame {
            buffered: true,
            ..frame(4, &["weird \"id\"\n"])
        };
        writer.append(&OsFiles, &second, false).unwrap();
        assert_eq!(
            frames(reader.refresh().unwrap()),
            std::slice::from_ref(&second)
        );
        assert_eq!(frames(reader.read_all().unwrap()), [first, second]);
        assert_eq!(reader.frame_bytes(), writer.frame_bytes());
        assert!(holds_records(tmp.path()).unwrap());
    }

    /// A frame whose digest matches but which this version cannot read (a
    /// later version's, say) refuses the collection: taken for a torn tail,
    /// the next append would cut it off, and every frame after it.
    #[test]
    fn an_intact_frame_that_cannot_be_read_refuses_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = started(tmp.path());
        writer.append(&OsFiles, &frame(1, &["a"]), true).unwrap();
        let payload = r#"{"ops":[{"seq":"two","id":"b"}]}"#;
        let line = format!("{} {payload}\n", digest(payload.as_bytes()));
        let path = tmp.path().join(WAL_FILE);
        let end = std::fs::metadata(&path).unwrap().len();
        OsFiles.write_at(&path, end, line.as_bytes(), true).unwrap();
        let mut reader = Wal::new(tmp.path());
        match reader.refresh().unwrap() {
            Refresh::Later(why) => assert!(why.contains("cannot read"), "{why}"),
            Refresh::Frames(frames) => panic!("read as {} frames and a torn tail", frames.len()),
            Refresh::Damaged(why) => panic!("damaged: {why}"),
        }
        // A torn tail (digest wrong) still just ends the log.
        let torn = format!("{} {payload}\n", "0".repeat(DIGEST_HEX));
        OsFiles.write_at(&path, end, torn.as_bytes(), true).unwrap();
        assert_eq!(frames(Wal::new(tmp.path()).refresh().unwrap()).len(), 1);
    }

    #[test]
    fn a_frame_whose_sync_failed_is_cut_off_not_read_as_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = started(tmp.path());
        let first = frame(1, &["a"]);
        writer.append(&OsFiles, &first, true).unwrap();
        // The first synced write reaches the cache, and then its flush fails.
        let flushed = std::sync::atomic::AtomicBool::new(false);
        let failing = crate::files::Hooked(|op: &'static str, _: &Path| {
            if op == "write_at_sync" && !flushed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("the flush failed"));
            }
            Ok(())
        });
        assert!(writer.append(&failing, &frame(2, &["b"]), true).is_err());
        let mut reader = Wal::new(tmp.path());
        assert_eq!(
            frames(reader.refresh().unwrap()),
            std::slice::from_ref(&first)
        );
        // The next append goes where the failed one was.
        let third = frame(2, &["c"]);
        writer.append(&failing, &third, true).unwrap();
        assert_eq!(frames(reader.refresh().unwrap()), [third]);
    }

    #[test]
    fn a_torn_or_damaged_frame_ends_the_log_and_is_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = started(tmp.path());
        writer.append(&OsFiles, &frame(1, &["a"]), false).unwrap();
        let path = tmp.path().join(WAL_FILE);
        let good = std::fs::read(&path).unwrap();
        let whole = frame(2, &["b"]).encode().unwrap();
        for damage in [
            // Cut short: never acknowledged.
            whole.as_bytes()[..whole.len() / 2].to_vec(),
            // Whole line, wrong content (a disk that kept garbage).
            whole.replace("\"b\"", "\"c\"").into_bytes(),
            vec![0; 64],
        ] {
            let mut bytes = good.clone();
            bytes.extend_from_slice(&damage);
            std::fs::write(&path, &bytes).unwrap();
            let mut reader = Wal::new(tmp.path());
            assert_eq!(frames(reader.refresh().unwrap()).len(), 1);
            let third = frame(3, &["c"]);
            reader.append(&OsFiles, &third, false).unwrap();
            let mut again = Wal::new(tmp.path());
            let seen = frames(again.refresh().unwrap());
            assert_eq!(seen.len(), 2);
            assert_eq!(seen[1], third);
        }
    }

    #[test]
    fn a_reset_empties_the_log_and_other_views_notice() {
        let tmp = tempfile::tempdir().unwrap();
        let mut writer = started(tmp.path());
        let mut reader = Wal::new(tmp.path());
        writer.append(&OsFiles, &frame(1, &["a"]), false).unwrap();
        assert_eq!(frames(reader.refresh().unwrap()).len(), 1);
        writer.reset(&OsFiles, true).unwrap();
        assert_eq!(writer.frame_bytes(), 0);
        assert!(!holds_records(tmp.path()).unwrap());
        let after = frame(2, &["b"]);
        writer.append(&OsFiles, &after, false).unwrap();
        assert_eq!(frames(reader.refresh().unwrap()), [after]);
    }

    /// The size check that spares a listing reading every log whole.
    #[test]
    fn a_log_is_seen_to_hold_frames_from_its_size() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!holds_frames(tmp.path()).unwrap(), "no log");
        let mut writer = started(tmp.path());
        assert!(!holds_frames(tmp.path()).unwrap(), "a header only");
        writer.append(&OsFiles, &frame(1, &["-a"]), false).unwrap();
        assert!(holds_frames(tmp.path()).unwrap(), "a removal");
        writer.reset(&OsFiles, true).unwrap();
        assert!(!holds_frames(tmp.path()).unwrap(), "emptied");
        std::fs::write(tmp.path().join(WAL_FILE), "no header").unwrap();
        assert!(holds_frames(tmp.path()).unwrap(), "unusual: read whole");
    }

    #[test]
    fn a_missing_or_foreign_log_is_damaged_and_a_later_one_unread() {
        let tmp = tempfile::tempdir().unwrap();
        let mut wal = Wal::new(tmp.path());
        assert!(matches!(wal.refresh().unwrap(), Refresh::Damaged(why) if why == "missing"));
        std::fs::write(
            tmp.path().join(WAL_FILE),
            b"{\"format\":\"x\",\"version\":1,\"generation\":1}\n",
        )
        .unwrap();
        assert!(matches!(wal.refresh().unwrap(), Refresh::Damaged(why) if why.contains("format")));
        std::fs::write(
            tmp.path().join(WAL_FILE),
            format!("{{\"format\":\"{WAL_FORMAT}\",\"version\":2,\"generation\":1}}\n"),
        )
        .unwrap();
        assert!(matches!(wal.refresh().unwrap(), Refresh::Later(why) if why.contains("version 2")));
        std::fs::write(tmp.path().join(WAL_FILE), b"").unwrap();
        assert!(matches!(wal.refresh().unwrap(), Refresh::Damaged(_)));
        wal.reset(&OsFiles, false).unwrap();
        assert!(frames(wal.refresh().unwrap()).is_empty());
    }
}
