//! Power-loss tests: a mixed workload runs once through a [`FileOps`] that
//! performs every change on a real directory and records it. The recorded
//! changes are then replayed into a model of what a disk keeps, and for every
//! prefix of them — every point where the power could go — the state a power
//! cut would leave is written out to a fresh directory, the store is opened
//! there, and checked: it opens, no record file is torn, every write
//! acknowledged before the cut is there (or a later one of the same record
//! that was under way), the change feed shows every record, and no sequence
//! handed out before the cut is handed out again.
//!
//! What survives a cut is decided per variant (see [`Variant`]); the first is
//! the rule of the issue: only what was synced, and directory entries only
//! once their directory was synced.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::hash::{Hash as _, Hasher as _};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use serde_json::json;
use syncforge_core::{
    CollectionName, Content, Cursor, Record, RecordId, Stamp, StorageBackend, Write, WriteOutcome,
};

use crate::files::{FileOps, OsFiles};
use crate::{Durability, FsBackend, FsOptions, Tuning};

/// One recorded change to the disk, with paths relative to the model's root.
#[derive(Debug, Clone)]
enum Op {
    CreateDir(PathBuf),
    CreateFile(PathBuf),
    Write {
        path: PathBuf,
        offset: u64,
        bytes: Vec<u8>,
    },
    SyncFile(PathBuf),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
    SyncDir(PathBuf),
}

/// Performs every change on the real directory and records it.
#[derive(Debug)]
struct Recorder {
    root: PathBuf,
    ops: Mutex<Vec<Op>>,
    gate: Mutex<Gate>,
    gate_moved: Condvar,
}

/// Holds a background checkpoint between writing its files, so that the
/// workload can write beside it at a point it chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    /// The next background checkpoint stops before its first rename.
    Armed,
    /// A background checkpoint is stopped there.
    Holding,
}

/// How long the workload waits for a background checkpoint to reach the gate.
const GATE_WAIT: Duration = Duration::from_secs(10);

impl Recorder {
    fn new(root: &Path) -> Recorder {
        Recorder {
            root: root.to_path_buf(),
            ops: Mutex::new(Vec::new()),
            gate: Mutex::new(Gate::Open),
            gate_moved: Condvar::new(),
        }
    }

    /// Stops the next background checkpoint when it first renames a file.
    fn arm_gate(&self) {
        *self.gate.lock() = Gate::Armed;
    }

    /// Whether a background checkpoint reached the gate within `wait`.
    fn gate_holding(&self, wait: Duration) -> bool {
        let mut gate = self.gate.lock();
        if *gate != Gate::Holding {
            self.gate_moved.wait_for(&mut gate, wait);
        }
        *gate == Gate::Holding
    }

    /// Lets the held checkpoint go on.
    fn open_gate(&self) {
        *self.gate.lock() = Gate::Open;
        self.gate_moved.notify_all();
    }

    /// In a background checkpoint, waits at an armed gate (bounded, so a
    /// broken test fails rather than hangs).
    fn pass_gate(&self) {
        if std::thread::current().name() != Some(crate::collection::open::CHECKPOINT_THREAD) {
            return;
        }
        let mut gate = self.gate.lock();
        if *gate != Gate::Armed {
            return;
        }
        *gate = Gate::Holding;
        self.gate_moved.notify_all();
        let deadline = std::time::Instant::now() + GATE_WAIT;
        while *gate == Gate::Holding && std::time::Instant::now() < deadline {
            self.gate_moved.wait_until(&mut gate, deadline);
        }
    }

    fn rel(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root)
            .unwrap_or_else(|_| panic!("{} is outside the model", path.display()))
            .to_path_buf()
    }

    /// Performs a change and records it, holding the record meanwhile so
    /// that changes made by several threads (a background checkpoint beside
    /// a writer) are recorded in the order they reached the disk.
    fn perform<T>(
        &self,
        change: impl FnOnce() -> io::Result<T>,
        recorded: Vec<Op>,
    ) -> io::Result<T> {
        let mut ops = self.ops.lock();
        let done = change()?;
        ops.extend(recorded);
        Ok(done)
    }

    fn count(&self) -> usize {
        self.ops.lock().len()
    }
}

impl FileOps for Recorder {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.perform(
            || OsFiles.create_dir(path),
            vec![Op::CreateDir(self.rel(path))],
        )
    }

    fn create_file(&self, path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
        let rel = self.rel(path);
        let mut ops = vec![
            Op::CreateFile(rel.clone()),
            Op::Write {
                path: rel.clone(),
                offset: 0,
                bytes: bytes.to_vec(),
            },
        ];
        if sync {
            ops.push(Op::SyncFile(rel));
        }
        self.perform(|| OsFiles.create_file(path, bytes, sync), ops)
    }

    fn write_at(&self, path: &Path, offset: u64, bytes: &[u8], sync: bool) -> io::Result<()> {
        let rel = self.rel(path);
        let mut ops = vec![Op::Write {
            path: rel.clone(),
            offset,
            bytes: bytes.to_vec(),
        }];
        if sync {
            ops.push(Op::SyncFile(rel));
        }
        self.perform(|| OsFiles.write_at(path, offset, bytes, sync), ops)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.perform(
            || OsFiles.sync_file(path),
            vec![Op::SyncFile(self.rel(path))],
        )
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.pass_gate();
        self.perform(
            || OsFiles.rename(from, to),
            vec![Op::Rename(self.rel(from), self.rel(to))],
        )
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.perform(
            || OsFiles.remove_file(path),
            vec![Op::Remove(self.rel(path))],
        )
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.perform(|| OsFiles.sync_dir(path), vec![Op::SyncDir(self.rel(path))])
    }

    fn open_lock_file(&self, path: &Path) -> io::Result<File> {
        let mut ops = self.ops.lock();
        let existed = std::fs::symlink_metadata(path).is_ok();
        let file = OsFiles.open_lock_file(path)?;
        if !existed {
            ops.push(Op::CreateFile(self.rel(path)));
        }
        Ok(file)
    }
}

/// What a power cut keeps, beyond what was synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Variant {
    /// Only synced data, and directory entries of synced directories.
    Synced,
    /// Every directory entry, but only synced data (new names over empty or
    /// old content, as after a cut on a filesystem that orders nothing).
    NamesAhead,
    /// All data written, but only the entries of synced directories.
    DataAhead,
    /// Everything, except that the last unsynced write to each file is cut
    /// in half (a write the power interrupted).
    Torn,
    /// Everything: the process was killed, the kernel kept what it had.
    Killed,
}

impl Variant {
    const POWER_CUTS: [Variant; 4] = [
        Variant::Synced,
        Variant::NamesAhead,
        Variant::DataAhead,
        Variant::Torn,
    ];

    fn current_names(self) -> bool {
        matches!(self, Variant::NamesAhead | Variant::Torn | Variant::Killed)
    }
}

#[derive(Debug, Clone)]
enum Node {
    File {
        data: Vec<u8>,
        synced: Vec<u8>,
        /// Writes since the last sync, in order.
        pending: Vec<(u64, Vec<u8>)>,
    },
    Dir {
        entries: BTreeMap<OsString, usize>,
        synced: BTreeMap<OsString, usize>,
    },
}

/// What a disk holds after a prefix of the recorded changes: the current
/// state and what is durable.
#[derive(Debug, Clone)]
struct Model {
    nodes: Vec<Node>,
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let offset = usize::try_from(offset).unwrap();
    data.resize(offset, 0);
    data.extend_from_slice(bytes);
}

impl Model {
    fn new() -> Model {
        Model {
            nodes: vec![Node::Dir {
                entries: BTreeMap::new(),
                synced: BTreeMap::new(),
            }],
        }
    }

    fn entries(&mut self, dir: usize) -> &mut BTreeMap<OsString, usize> {
        match &mut self.nodes[dir] {
            Node::Dir { entries, .. } => entries,
            Node::File { .. } => panic!("not a directory"),
        }
    }

    fn lookup(&mut self, path: &Path) -> usize {
        let mut node = 0;
        for part in path.iter() {
            node = *self
                .entries(node)
                .get(part)
                .unwrap_or_else(|| panic!("{} is not in the model", path.display()));
        }
        node
    }

    fn parent_and_name(&mut self, path: &Path) -> (usize, OsString) {
        let parent = self.lookup(path.parent().unwrap());
        (parent, path.file_name().unwrap().to_owned())
    }

    fn link(&mut self, path: &Path, node: Node) {
        let id = self.nodes.len();
        self.nodes.push(node);
        let (parent, name) = self.parent_and_name(path);
        self.entries(parent).insert(name, id);
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::CreateDir(path) => self.link(
                path,
                Node::Dir {
                    entries: BTreeMap::new(),
                    synced: BTreeMap::new(),
                },
            ),
            Op::CreateFile(path) => self.link(
                path,
                Node::File {
                    data: Vec::new(),
                    synced: Vec::new(),
                    pending: Vec::new(),
                },
            ),
            Op::Write {
                path,
                offset,
                bytes,
            } => {
                let id = self.lookup(path);
                let Node::File { data, pending, .. } = &mut self.nodes[id] else {
                    panic!("write to a directory");
                };
                write_into(data, *offset, bytes);
                pending.push((*offset, bytes.clone()));
            }
            Op::SyncFile(path) => {
                let id = self.lookup(path);
                if let Node::File {
                    data,
                    synced,
                    pending,
                } = &mut self.nodes[id]
                {
                    synced.clone_from(data);
                    pending.clear();
                }
            }
            Op::Rename(from, to) => {
                let (from_dir, from_name) = self.parent_and_name(from);
                let id = self.entries(from_dir).remove(&from_name).unwrap();
                let (to_dir, to_name) = self.parent_and_name(to);
                self.entries(to_dir).insert(to_name, id);
            }
            Op::Remove(path) => {
                let (dir, name) = self.parent_and_name(path);
                self.entries(dir).remove(&name);
            }
            Op::SyncDir(path) => {
                let id = self.lookup(path);
                if let Node::Dir { entries, synced } = &mut self.nodes[id] {
                    synced.clone_from(entries);
                }
            }
        }
    }

    /// The files and directories a cut of this variant leaves: each path
    /// with its content, `None` for a directory.
    fn survivors(&self, variant: Variant) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut stack = vec![(0usize, PathBuf::new())];
        while let Some((dir, path)) = stack.pop() {
            let Node::Dir { entries, synced } = &self.nodes[dir] else {
                continue;
            };
            let names = if variant.current_names() {
                entries
            } else {
                synced
            };
            for (name, id) in names {
                let child = path.join(name);
                match &self.nodes[*id] {
                    Node::Dir { .. } => {
                        out.push((child.clone(), None));
                        stack.push((*id, child));
                    }
                    Node::File {
                        data,
                        synced,
                        pending,
                    } => {
                        let content = match variant {
                            Variant::Synced | Variant::NamesAhead => synced.clone(),
                            Variant::DataAhead | Variant::Killed => data.clone(),
                            Variant::Torn => {
                                let mut content = synced.clone();
                                for (index, (offset, bytes)) in pending.iter().enumerate() {
                                    let keep = if index + 1 == pending.len() {
                                        bytes.len() / 2
                                    } else {
                                        bytes.len()
                                    };
                                    write_into(&mut content, *offset, &bytes[..keep]);
                                }
                                content
                            }
                        };
                        out.push((child, Some(content)));
                    }
                }
            }
        }
        out.sort();
        out
    }
}

/// A write the workload made, and when: `start` is the number of recorded
/// changes before the call, `ack` after it returned.
#[derive(Debug, Clone)]
struct Event {
    start: usize,
    ack: usize,
    collection: String,
    id: String,
    /// The count written, `None` for a removal.
    count: Option<u64>,
    cursor: Option<u64>,
}

const NOTES: &str = "notes";
const STORE_ID_KEY: &str = "syncforge/store-id/v1";
const PLANTED: &[u8] = b"{\"id\": \"r6\", \"count\": ";

fn long_collection() -> String {
    "tasks-".repeat(30)
}

fn coll(name: &str) -> CollectionName {
    CollectionName::new(name).unwrap()
}

fn counter(id: &str, count: u64) -> Record {
    let stamp = Stamp::new(1_000 + count, 0, "tester").unwrap();
    Record::create(
        Content::from_value(json!({"id": id, "count": count})).unwrap(),
        &stamp,
    )
}

fn count_of(record: &Record) -> u64 {
    record
        .get(&coll("count"))
        .as_ref()
        .and_then(serde_json::Value::as_u64)
        .unwrap()
}

/// Drives the workload and keeps its events.
struct Workload {
    store: FsBackend,
    recorder: Arc<Recorder>,
    events: Vec<Event>,
    /// Metadata written: start, ack, key, value.
    meta: Vec<(usize, usize, String, String)>,
}

impl Workload {
    /// Writes `(id, count)` pairs in one batch (or one put), each replacing
    /// whatever is stored.
    async fn write(&mut self, collection: &str, writes: &[(&str, u64)]) {
        let name = coll(collection);
        let ids: Vec<RecordId> = writes
            .iter()
            .map(|(id, _)| RecordId::new(*id).unwrap())
            .collect();
        let current = self.store.get_many(&name, &ids).await.unwrap();
        let batch: Vec<Write> = writes
            .iter()
            .zip(current)
            .map(|((id, count), stored)| Write {
                record: counter(id, *count),
                expected: stored.map(|s| s.token),
            })
            .collect();
        let start = self.recorder.count();
        let outcomes = if let [one] = &batch[..] {
            vec![self.store.put(&name, one).await.unwrap()]
        } else {
            self.store.put_batch(&name, &batch).await.unwrap()
        };
        let ack = self.recorder.count();
        for ((id, count), outcome) in writes.iter().zip(outcomes) {
            let WriteOutcome::Written { cursor, .. } = outcome else {
                panic!("{id}: conflict");
            };
            self.events.push(Event {
                start,
                ack,
                collection: collection.to_owned(),
                id: (*id).to_owned(),
                count: Some(*count),
                cursor: Some(cursor.get()),
            });
        }
    }

    async fn delete(&mut self, collection: &str, id: &str) {
        let start = self.recorder.count();
        assert!(self
            .store
            .delete(&coll(collection), &RecordId::new(id).unwrap())
            .await
            .unwrap());
        self.events.push(Event {
            start,
            ack: self.recorder.count(),
            collection: collection.to_owned(),
            id: id.to_owned(),
            count: None,
            cursor: None,
        });
    }

    async fn set_meta(&mut self, key: &str, value: &str, if_absent: bool) {
        let start = self.recorder.count();
        if if_absent {
            let stored = self.store.set_meta_if_absent(key, value).await.unwrap();
            assert_eq!(stored, value);
        } else {
            self.store.set_meta(key, value).await.unwrap();
        }
        self.meta.push((
            start,
            self.recorder.count(),
            key.to_owned(),
            value.to_owned(),
        ));
    }

    /// A corrupt file written by hand (durably), for a write to move aside.
    fn plant_corrupt(&self, collection_dir: &Path, id: &str) {
        let path = collection_dir.join(format!("{id}.json"));
        self.recorder.create_file(&path, PLANTED, true).unwrap();
        self.recorder.sync_dir(collection_dir).unwrap();
    }
}

/// Single puts, batches of creates and replaces, removals, metadata, a
/// corrupt file moved aside, a collection with a hashed name, enough writes
/// to checkpoint the write-ahead log several times and compact the change
/// log, and a close (which checkpoints).
async fn workload(model_root: &Path, durability: Durability) -> Workload {
    let recorder = Arc::new(Recorder::new(model_root));
    let root = model_root.join("store");
    let tuning = Tuning {
        compact_min_lines: 24,
        checkpoint_bytes: 1_200,
    };
    let ops: Arc<dyn FileOps> = recorder.clone();
    let store = FsBackend::open_on(
        ops,
        &root,
        FsOptions::default().durability(durability),
        tuning,
    )
    .await
    .unwrap();
    let mut w = Workload {
        store,
        recorder,
        events: Vec::new(),
        meta: Vec::new(),
    };
    w.set_meta(STORE_ID_KEY, "store-1", true).await;
    for id in ["r0", "r1", "r2", "r3"] {
        w.write(NOTES, &[(id, 1)]).await;
    }
    w.write(NOTES, &[("r0", 2), ("r1", 2), ("r4", 1), ("r5", 1)])
        .await;
    w.write(NOTES, &[("r2", 2)]).await;
    w.delete(NOTES, "r3").await;
    w.plant_corrupt(&root.join(NOTES), "r6");
    w.write(NOTES, &[("r6", 1), ("r4", 2)]).await;
    w.set_meta("cursor", "7", false).await;
    for round in 3..7 {
        w.write(NOTES, &[("r0", round)]).await;
        w.write(NOTES, &[("r1", round), ("r2", round)]).await;
    }
    // Writes acknowledged while a background checkpoint is between writing
    // its files and dropping its frames: one of a record in its snapshot,
    // one of a new record. Each write returning at all shows that writers do
    // not wait for the checkpoint.
    w.recorder.arm_gate();
    let mut round = 10;
    while !w.recorder.gate_holding(Duration::from_millis(300)) {
        assert!(round < 40, "no background checkpoint started");
        w.write(NOTES, &[("r0", round)]).await;
        round += 1;
    }
    w.write(NOTES, &[("r1", round), ("r7", 1)]).await;
    w.delete(NOTES, "r7").await;
    w.write(NOTES, &[("r2", round)]).await;
    w.recorder.open_gate();
    let long = long_collection();
    w.write(&long, &[("t0", 1)]).await;
    w.write(&long, &[("t0", 2), ("t1", 1)]).await;
    w.delete(NOTES, "r5").await;
    w.write(NOTES, &[("r3", 7)]).await;
    w.write(
        NOTES,
        &[("r0", 8), ("r1", 8), ("r2", 8), ("r3", 8), ("r4", 8)],
    )
    .await;
    w.store.close().await.unwrap();
    w
}

/// What the record may hold after a cut after `cut` changes: what the last
/// write acknowledged before the cut left, or what a write under way at the
/// cut (or acknowledged later but started before) would leave.
fn allowed(events: &[Event], cut: usize, collection: &str, id: &str) -> Vec<Option<u64>> {
    let mine: Vec<&Event> = events
        .iter()
        .filter(|e| e.collection == collection && e.id == id)
        .collect();
    let last_acked = mine.iter().rposition(|e| e.ack <= cut);
    let mut allowed = vec![last_acked.and_then(|n| mine[n].count)];
    let after = last_acked.map_or(0, |n| n + 1);
    allowed.extend(
        mine[after..]
            .iter()
            .filter(|e| e.start < cut)
            .map(|e| e.count),
    );
    allowed
}

/// Writes the survivors of a cut under `dir`.
fn materialize(dir: &Path, survivors: &[(PathBuf, Option<Vec<u8>>)]) {
    for (path, content) in survivors {
        let target = dir.join(path);
        match content {
            None => std::fs::create_dir_all(&target).unwrap(),
            Some(bytes) => std::fs::write(&target, bytes).unwrap(),
        }
    }
}

/// Opens the store a cut left in `dir` and checks it against the workload.
async fn check(dir: &Path, w: &Workload, cut: usize, what: &str) {
    let root = dir.join("store");
    if !root.exists() {
        // Cut before the store's directory was durable: nothing acknowledged.
        assert!(
            w.events.iter().all(|e| e.ack > cut) && w.meta.iter().all(|m| m.1 > cut),
            "{what}: the store is gone"
        );
        return;
    }
    let store = FsBackend::open_with(&root, FsOptions::default().durability(Durability::Buffered))
        .await
        .unwrap_or_else(|err| panic!("{what}: does not open: {err}"));
    for collection in [NOTES.to_owned(), long_collection()] {
        let name = coll(&collection);
        let mut ids: Vec<&str> = w
            .events
            .iter()
            .filter(|e| e.collection == collection)
            .map(|e| e.id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let record_ids: Vec<RecordId> = ids.iter().map(|id| RecordId::new(*id).unwrap()).collect();
        let found = store
            .get_many(&name, &record_ids)
            .await
            .unwrap_or_else(|err| panic!("{what}: {collection}: {err}"));
        let mut live = HashMap::new();
        for (id, stored) in ids.iter().zip(&found) {
            let count = stored.as_ref().map(|s| count_of(&s.record));
            let allowed = allowed(&w.events, cut, &collection, id);
            assert!(
                allowed.contains(&count),
                "{what}: {id} holds {count:?}, expected one of {allowed:?}"
            );
            if let Some(count) = count {
                live.insert(id.to_string(), count);
            }
        }
        // No torn record file: the only corrupt file allowed is the one
        // planted by hand (or what a cut left of its planting), before the
        // write that moves it aside.
        for corrupt in store.corrupt_files(&name).await.unwrap() {
            assert!(
                corrupt.path.ends_with("r6.json")
                    && PLANTED.starts_with(&std::fs::read(&corrupt.path).unwrap()),
                "{what}: {corrupt}"
            );
        }
        // The change feed shows every record with its content, once.
        let page = store
            .changes(&name, Cursor::START, 10_000.try_into().unwrap())
            .await
            .unwrap();
        let fed: HashMap<String, u64> = page
            .changes
            .iter()
            .map(|c| (c.record.id().to_string(), count_of(&c.record)))
            .collect();
        assert_eq!(fed, live, "{what}: {collection}: the feed");
        assert_eq!(
            store.get_all(&name).await.unwrap().len(),
            live.len(),
            "{what}"
        );
        let leftovers: Vec<String> =
            crate::files::read_dir(&root.join(crate::encoding::stem_for(&collection)))
                .map(|entries| {
                    entries
                        .iter()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with(crate::files::TEMP_PREFIX))
                        .collect()
                })
                .unwrap_or_default();
        assert!(
            leftovers.is_empty(),
            "{what}: temporaries left: {leftovers:?}"
        );
        // No sequence handed out before the cut is handed out again.
        let acked_cursor = w
            .events
            .iter()
            .filter(|e| e.collection == collection && e.ack <= cut)
            .filter_map(|e| e.cursor)
            .max()
            .unwrap_or(0);
        let outcome = store
            .put(&name, &Write::create(counter("zz-probe", 1)))
            .await
            .unwrap();
        let WriteOutcome::Written { cursor, .. } = outcome else {
            panic!("{what}: the probe conflicted");
        };
        assert!(
            cursor.get() > acked_cursor,
            "{what}: {collection}: sequence {} handed out again (acknowledged up to {acked_cursor})",
            cursor.get()
        );
    }
    for (start, ack, key, value) in &w.meta {
        let stored = store.get_meta(key).await.unwrap();
        if *ack <= cut {
            assert_eq!(
                stored.as_deref(),
                Some(value.as_str()),
                "{what}: meta {key}"
            );
        } else if *start >= cut {
            assert_eq!(stored, None, "{what}: meta {key}");
        }
    }
    store.close().await.unwrap();
}

/// A change in a few words, for failure messages.
fn describe(op: &Op) -> String {
    match op {
        Op::Write {
            path,
            offset,
            bytes,
        } => format!(
            "write {} bytes at {offset} of {}",
            bytes.len(),
            path.display()
        ),
        other => format!("{other:?}"),
    }
}

/// Runs the workload, then checks the state every cut of every variant
/// leaves. Identical states with identical expectations are checked once.
async fn every_cut(durability: Durability, variants: &[Variant]) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let model_root = tmp.path().join("model");
    std::fs::create_dir(&model_root).unwrap();
    // As the store resolves its own (a temporary directory may lie under a
    // link), so that the recorded paths lie under it.
    let model_root = model_root.canonicalize().unwrap();
    let w = workload(&model_root, durability).await;
    let ops = w.recorder.ops.lock().clone();
    // Fewer under load: background checkpoints that overlap are one.
    assert!(ops.len() > 100, "a workload of {} changes", ops.len());
    let mut model = Model::new();
    let mut seen = HashSet::new();
    let mut checked = 0;
    for cut in 0..=ops.len() {
        if cut > 0 {
            model.apply(&ops[cut - 1]);
        }
        let acked = w.events.iter().filter(|e| e.ack <= cut).count()
            + w.meta.iter().filter(|m| m.1 <= cut).count();
        let started = w.events.iter().filter(|e| e.start < cut).count()
            + w.meta.iter().filter(|m| m.0 < cut).count();
        for variant in variants {
            let survivors = model.survivors(*variant);
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            survivors.hash(&mut hasher);
            (acked, started).hash(&mut hasher);
            if !seen.insert(hasher.finish()) {
                continue;
            }
            let dir = tmp.path().join(format!("cut-{cut}-{variant:?}"));
            std::fs::create_dir(&dir).unwrap();
            materialize(&dir, &survivors);
            let last = cut.checked_sub(1).and_then(|n| ops.get(n)).map(describe);
            let what = format!(
                "{durability:?}, cut after change {cut} of {} ({last:?}), {variant:?}",
                ops.len()
            );
            check(&dir, &w, cut, &what).await;
            std::fs::remove_dir_all(&dir).unwrap();
            checked += 1;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_at_any_point_loses_no_acknowledged_write_and_tears_no_file() {
    let checked = every_cut(Durability::Full, &Variant::POWER_CUTS).await;
    assert!(checked > 200, "only {checked} distinct states");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_nothing_at_any_point_under_either_durability() {
    for durability in [Durability::Full, Durability::Buffered] {
        every_cut(durability, &[Variant::Killed]).await;
    }
}

/// A directory for a model disk (`model` in a fresh temporary directory),
/// and the recorder of what is done to it.
fn recorded_disk() -> (tempfile::TempDir, PathBuf, Arc<Recorder>) {
    let tmp = tempfile::tempdir().unwrap();
    let model_root = tmp.path().join("model");
    std::fs::create_dir(&model_root).unwrap();
    // As the store resolves its own (a temporary directory may lie under a
    // link), so that the recorded paths lie under it.
    let model_root = model_root.canonicalize().unwrap();
    let recorder = Arc::new(Recorder::new(&model_root));
    (tmp, model_root, recorder)
}

/// Opens the store at `root` on the recorded disk.
async fn open_recorded(
    recorder: &Arc<Recorder>,
    root: &Path,
    durability: Durability,
    tuning: Tuning,
) -> syncforge_core::Result<FsBackend> {
    let ops: Arc<dyn FileOps> = recorder.clone();
    FsBackend::open_on(
        ops,
        root,
        FsOptions::default().durability(durability),
        tuning,
    )
    .await
}

/// Writes to `dir` (made here) what a power cut of `variant` leaves of
/// every change recorded so far.
fn cut_now(recorder: &Recorder, variant: Variant, dir: &Path) {
    let mut model = Model::new();
    for op in recorder.ops.lock().iter() {
        model.apply(op);
    }
    std::fs::create_dir(dir).unwrap();
    materialize(dir, &model.survivors(variant));
}

/// A `Buffered` handle's checkpoint that keeps frames puts a new log in
/// place without syncing the directory. A `Full` handle on the same
/// collection then appended its write to that file and synced only the
/// file: a power cut right after the acknowledgement could leave the
/// directory naming the old log, and the write gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_after_a_buffered_checkpoint_survives_a_power_cut() {
    let (tmp, model_root, recorder) = recorded_disk();
    let root = model_root.join("store");
    let tuning = Tuning {
        compact_min_lines: 24,
        checkpoint_bytes: 1_200,
    };
    let open = |durability| open_recorded(&recorder, &root, durability, tuning);
    let full = open(Durability::Full).await.unwrap();
    let buffered = open(Durability::Buffered).await.unwrap();
    let name = coll(NOTES);
    let create = |id: &str| Write::create(counter(id, 1));
    full.put(&name, &create("first")).await.unwrap();
    // The buffered handle's writes start a background checkpoint, held
    // after writing its files; a frame committed meanwhile is kept.
    recorder.arm_gate();
    let mut round = 0;
    while !recorder.gate_holding(Duration::from_millis(300)) {
        assert!(round < 40, "no background checkpoint started");
        buffered
            .put(&name, &create(&format!("b{round}")))
            .await
            .unwrap();
        round += 1;
    }
    buffered.put(&name, &create("kept")).await.unwrap();
    let wal = Path::new(NOTES).join(crate::collection::wal::WAL_FILE);
    let log_replacements = || {
        recorder
            .ops
            .lock()
            .iter()
            .filter(|op| matches!(op, Op::Rename(_, to) if to.ends_with(&wal)))
            .count()
    };
    let before = log_replacements();
    recorder.open_gate();
    let deadline = std::time::Instant::now() + GATE_WAIT;
    while log_replacements() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpoint did not replace the log"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    full.put(&name, &create("acknowledged")).await.unwrap();
    // The power goes right after the acknowledgement.
    for variant in Variant::POWER_CUTS {
        let dir = tmp.path().join(format!("cut-{variant:?}"));
        cut_now(&recorder, variant, &dir);
        let store = FsBackend::open_with(
            &dir.join("store"),
            FsOptions::default().durability(Durability::Buffered),
        )
        .await
        .unwrap();
        for id in ["first", "acknowledged"] {
            let found = store.get(&name, &RecordId::new(id).unwrap()).await.unwrap();
            assert!(found.is_some(), "{variant:?}: {id} was lost");
        }
        store.close().await.unwrap();
    }
    buffered.close().await.unwrap();
    full.close().await.unwrap();
}

/// Under `Buffered`, a power cut took back the tails of both logs, and the
/// numbering went on from what survived: change-feed positions a replica
/// had already pulled were handed out again, to other writes, which that
/// replica then skipped for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_power_cut_a_buffered_store_hands_out_no_position_again() {
    let (tmp, model_root, recorder) = recorded_disk();
    let ops: Arc<dyn FileOps> = recorder.clone();
    let buffered = || FsOptions::default().durability(Durability::Buffered);
    let name = coll(NOTES);
    let written = |outcome: WriteOutcome| match outcome {
        WriteOutcome::Written { cursor, .. } => cursor.get(),
        WriteOutcome::Conflict => panic!("conflict"),
    };
    // The store and its id made durably: lost, the store would come back
    // as a new one, which replicas pull from the start. The collection is
    // the `Buffered` handle's own, made without a sync.
    let root = model_root.join("store");
    let made = FsBackend::open_on(ops.clone(), &root, FsOptions::default(), Tuning::default())
        .await
        .unwrap();
    made.set_meta_if_absent(STORE_ID_KEY, "store-1")
        .await
        .unwrap();
    made.close().await.unwrap();
    let store = FsBackend::open_on(ops, &root, buffered(), Tuning::default())
        .await
        .unwrap();
    let mut pulled = 0;
    for n in 0..5 {
        let outcome = store
            .put(&name, &Write::create(counter(&format!("r{n}"), 1)))
            .await
            .unwrap();
        pulled = written(outcome);
    }
    // The power goes: only what was synced survives.
    let dir = tmp.path().join("cut");
    cut_now(&recorder, Variant::Synced, &dir);
    let reopened = FsBackend::open_with(&dir.join("store"), buffered())
        .await
        .unwrap();
    assert_eq!(
        reopened.get_meta(STORE_ID_KEY).await.unwrap().as_deref(),
        Some("store-1")
    );
    let after = reopened
        .put(&name, &Write::create(counter("after", 1)))
        .await
        .unwrap();
    let after = written(after);
    assert!(
        after > pulled,
        "position {after} handed out again (a replica pulled up to {pulled})"
    );
    reopened.close().await.unwrap();
    store.close().await.unwrap();
}

/// A `Buffered` store rewrites its metadata whole at each change, and a
/// collection with a long name writes `.name` once. Written without a
/// sync, a power cut that keeps the new name over content not written yet
/// left an empty `.meta.json`, which no engine could open again (every open
/// reads the store id there), or an empty `.name`, which dropped the
/// collection from every listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_leaves_a_buffered_store_that_opens_and_lists_its_collections() {
    let (tmp, model_root, recorder) = recorded_disk();
    let ops: Arc<dyn FileOps> = recorder.clone();
    let buffered = || FsOptions::default().durability(Durability::Buffered);
    let root = model_root.join("store");
    // The store's directory made durably, as any `Full` handle makes it.
    FsBackend::open_on(ops.clone(), &root, FsOptions::default(), Tuning::default())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let store = FsBackend::open_on(ops, &root, buffered(), Tuning::default())
        .await
        .unwrap();
    store
        .set_meta_if_absent(STORE_ID_KEY, "store-1")
        .await
        .unwrap();
    for n in 0..3 {
        store.set_meta("cursor", &n.to_string()).await.unwrap();
    }
    let long = coll(&long_collection());
    store
        .put(&long, &Write::create(counter("t0", 1)))
        .await
        .unwrap();
    store.close().await.unwrap();
    // A record of that collection written durably: it survives every cut,
    // so the collection must be listed after each.
    let ops: Arc<dyn FileOps> = recorder.clone();
    let full = FsBackend::open_on(ops, &root, FsOptions::default(), Tuning::default())
        .await
        .unwrap();
    full.put(&long, &Write::create(counter("t1", 1)))
        .await
        .unwrap();
    full.close().await.unwrap();
    for variant in Variant::POWER_CUTS {
        let dir = tmp.path().join(format!("cut-{variant:?}"));
        cut_now(&recorder, variant, &dir);
        let what = format!("{variant:?}");
        let reopened = FsBackend::open_with(&dir.join("store"), buffered())
            .await
            .unwrap_or_else(|err| panic!("{what}: does not open: {err}"));
        let id = reopened
            .get_meta(STORE_ID_KEY)
            .await
            .unwrap_or_else(|err| panic!("{what}: {err}"));
        assert!(
            matches!(id.as_deref(), None | Some("store-1")),
            "{what}: {id:?}"
        );
        let cursor = reopened
            .get_meta("cursor")
            .await
            .unwrap_or_else(|err| panic!("{what}: {err}"));
        assert!(
            matches!(cursor.as_deref(), None | Some("0" | "1" | "2")),
            "{what}: {cursor:?}"
        );
        let listed = reopened
            .list_collections()
            .await
            .unwrap_or_else(|err| panic!("{what}: {err}"));
        assert!(listed.contains(&long), "{what}: {listed:?}");
        reopened.close().await.unwrap();
    }
}

/// A handle on `root` whose files go through a new [`FaultyDisk`].
async fn on_a_faulty_disk(root: &Path) -> (Arc<FaultyDisk>, FsBackend) {
    let ops = Arc::new(FaultyDisk::default());
    let dyn_ops: Arc<dyn FileOps> = ops.clone();
    let store = FsBackend::open_on(dyn_ops, root, FsOptions::default(), Tuning::default())
        .await
        .unwrap();
    (ops, store)
}

/// The disk as it is, except that appends to a change log fail while
/// `failing` is set, syncs of files (and synced writes, after writing)
/// while `failing_syncs` is, and syncs of record files alone while
/// `failing_record_syncs` is; it notes where files are renamed to.
#[derive(Debug, Default)]
struct FaultyDisk {
    failing: std::sync::atomic::AtomicBool,
    failing_syncs: std::sync::atomic::AtomicBool,
    failing_record_syncs: std::sync::atomic::AtomicBool,
    renamed_to: Mutex<Vec<PathBuf>>,
}

impl FileOps for FaultyDisk {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        OsFiles.create_dir(path)
    }
    fn create_file(&self, path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
        OsFiles.create_file(path, bytes, sync)
    }
    fn write_at(&self, path: &Path, offset: u64, bytes: &[u8], sync: bool) -> io::Result<()> {
        let log = path.file_name().is_some_and(|name| name == ".changes");
        if log && self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::other("an append the test makes fail"));
        }
        if sync && self.failing_syncs.load(std::sync::atomic::Ordering::SeqCst) {
            // Written, as a failed sync leaves the pages readable.
            OsFiles.write_at(path, offset, bytes, false)?;
            return Err(io::Error::other("a sync the test makes fail"));
        }
        OsFiles.write_at(path, offset, bytes, sync)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let record = path.extension().is_some_and(|ext| ext == "json");
        if self.failing_syncs.load(std::sync::atomic::Ordering::SeqCst)
            || (record
                && self
                    .failing_record_syncs
                    .load(std::sync::atomic::Ordering::SeqCst))
        {
            return Err(io::Error::other("a sync the test makes fail"));
        }
        OsFiles.sync_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.renamed_to.lock().push(to.to_path_buf());
        OsFiles.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsFiles.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        OsFiles.sync_dir(path)
    }
    fn open_lock_file(&self, path: &Path) -> io::Result<File> {
        OsFiles.open_lock_file(path)
    }
}

/// A durable checkpoint whose sync failed keeps its frames in the log, and
/// the next one writes the record files and the change log anew instead of
/// trusting what it reads back: that may be pages the disk never got, which
/// a sync through a file opened after the failure does not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_after_a_failed_sync_writes_the_files_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (ops, store) = on_a_faulty_disk(&root).await;
    // As the store names its files (its directory resolved).
    let root = store.root().to_path_buf();
    let name = coll(NOTES);
    store
        .put(&name, &Write::create(counter("r0", 1)))
        .await
        .unwrap();
    // The record files' sync fails (the change log is synced before any
    // file is written).
    ops.failing_record_syncs
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(store.checkpoint().await.is_err());
    ops.failing_record_syncs
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let file = root
        .join(NOTES)
        .join(crate::collection::records::file_name_for("r0"));
    assert!(file.exists(), "the failed checkpoint wrote no file");
    ops.renamed_to.lock().clear();
    store.checkpoint().await.unwrap();
    assert!(
        ops.renamed_to.lock().contains(&file),
        "the record's file was trusted, not written again"
    );
    assert!(
        ops.renamed_to
            .lock()
            .contains(&root.join(NOTES).join(".changes")),
        "the change log was trusted, not written again"
    );
    store.close().await.unwrap();
}

/// A synced append to the change log whose sync failed (entering a frame
/// whose writer did not) leaves lines that other handles read and the disk
/// may never get; a later sync through a newly opened file does not write
/// them. The next durable checkpoint writes the log anew before it drops
/// the frame, as after a failed checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_log_append_whose_sync_failed_is_written_again_by_the_next_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (ops, writer) = on_a_faulty_disk(&root).await;
    // As the store names its files (its directory resolved).
    let root = writer.root().to_path_buf();
    let dyn_ops: Arc<dyn FileOps> = ops.clone();
    let other = FsBackend::open_on(dyn_ops, &root, FsOptions::default(), Tuning::default())
        .await
        .unwrap();
    let name = coll(NOTES);
    writer
        .put(&name, &Write::create(counter("r0", 1)))
        .await
        .unwrap();
    assert_eq!(other.get_all(&name).await.unwrap().len(), 1);
    // The frame is committed; its lines in the change log are not.
    ops.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(writer
        .put(&name, &Write::create(counter("r1", 1)))
        .await
        .is_err());
    ops.failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    ops.failing_syncs
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Entering the frame's lines happens in this call; their sync fails.
    assert!(other.get_all(&name).await.is_err());
    ops.failing_syncs
        .store(false, std::sync::atomic::Ordering::SeqCst);
    ops.renamed_to.lock().clear();
    other.checkpoint().await.unwrap();
    assert!(
        ops.renamed_to
            .lock()
            .contains(&root.join(NOTES).join(".changes")),
        "the change log was trusted, not written again"
    );
    other.close().await.unwrap();
    writer.close().await.unwrap();
}

/// A change log rebuilt from the record files (it was deleted) is written
/// whole. Written as a bare header first and filled after, a failure in
/// between left a log that reads as sound and lists no record: another
/// handle with the collection open took it for the truth and reported the
/// stored records absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_change_log_is_never_seen_without_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let (ops, a) = on_a_faulty_disk(&root).await;
    let b = FsBackend::open_with(&root, FsOptions::default())
        .await
        .unwrap();
    let name = coll(NOTES);
    let writes: Vec<Write> = ["r0", "r1", "r2"]
        .iter()
        .map(|id| Write::create(counter(id, 1)))
        .collect();
    a.put_batch(&name, &writes).await.unwrap();
    a.checkpoint().await.unwrap();
    let r1 = RecordId::new("r1").unwrap();
    assert!(b.get(&name, &r1).await.unwrap().is_some());

    std::fs::remove_file(root.join(NOTES).join(".changes")).unwrap();
    ops.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    // The rebuild happens in this call, whatever it answers.
    let _ = a.get(&name, &r1).await;
    ops.failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let seen = b.get(&name, &r1).await.unwrap();
    assert!(seen.is_some(), "a stored record reads as absent");
    assert_eq!(b.get_all(&name).await.unwrap().len(), 3);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// A `Full` handle opening a store whose directory a `Buffered` handle made
/// (without a sync) makes that directory's entry durable: a power cut right
/// after its acknowledged write lost the whole store, the write with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_into_a_store_a_buffered_handle_made_survives_a_power_cut() {
    let (tmp, model_root, recorder) = recorded_disk();
    let ops: Arc<dyn FileOps> = recorder.clone();
    let root = model_root.join("store");
    let buffered = FsOptions::default().durability(Durability::Buffered);
    FsBackend::open_on(ops.clone(), &root, buffered, Tuning::default())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let full = FsBackend::open_on(ops, &root, FsOptions::default(), Tuning::default())
        .await
        .unwrap();
    let name = coll(NOTES);
    full.put(&name, &Write::create(counter("r0", 1)))
        .await
        .unwrap();
    for variant in Variant::POWER_CUTS {
        let dir = tmp.path().join(format!("cut-{variant:?}"));
        cut_now(&recorder, variant, &dir);
        let reopened = FsBackend::open_with(&dir.join("store"), FsOptions::default())
            .await
            .unwrap();
        let r0 = RecordId::new("r0").unwrap();
        assert!(
            reopened.get(&name, &r0).await.unwrap().is_some(),
            "{variant:?}: the acknowledged write is gone"
        );
        reopened.close().await.unwrap();
    }
    full.close().await.unwrap();
}

/// Record `x` of the notes created at count 1 through `store` and
/// checkpointed; the cursor of its write.
async fn x_created_durably(store: &FsBackend) -> Cursor {
    let WriteOutcome::Written { cursor, .. } = store
        .put(&coll(NOTES), &Write::create(counter("x", 1)))
        .await
        .unwrap()
    else {
        panic!("conflict");
    };
    store.checkpoint().await.unwrap();
    cursor
}

/// Record `x` of the notes replaced by count 2 through `store`.
async fn x_updated(store: &FsBackend) {
    let (name, id) = (coll(NOTES), RecordId::new("x").unwrap());
    let stored = store.get(&name, &id).await.unwrap().unwrap();
    let updated = store
        .put(&name, &Write::replace(counter("x", 2), stored.token))
        .await
        .unwrap();
    assert!(matches!(updated, WriteOutcome::Written { .. }));
}

/// A `Buffered` checkpoint dropped the frames of an update without syncing
/// the change log's line for it: a power cut that kept the record's new file
/// and the emptied write-ahead log (both on their way to the disk within
/// seconds) but not that line (which waits for writeback) left the update at
/// the record's old position in the feed, where a replica past it never got
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_update_keeps_its_new_feed_position_through_a_power_cut() {
    let (tmp, model_root, recorder) = recorded_disk();
    let root = model_root.join("store");
    let open = |durability| open_recorded(&recorder, &root, durability, Tuning::default());
    let name = coll(NOTES);
    // The record's first position durable, as writeback makes it in time.
    let full = open(Durability::Full).await.unwrap();
    let pulled = x_created_durably(&full).await;
    full.close().await.unwrap();
    // A replica pulled up to `pulled`; the record is then updated.
    let buffered = open(Durability::Buffered).await.unwrap();
    x_updated(&buffered).await;
    buffered.checkpoint().await.unwrap();
    // The power goes: everything written is on the disk but what was
    // appended to the change log and not synced.
    let mut model = Model::new();
    for op in recorder.ops.lock().iter() {
        model.apply(op);
    }
    let change_log = Path::new(NOTES).join(crate::collection::log::LOG_FILE);
    let survivors: Vec<(PathBuf, Option<Vec<u8>>)> = model
        .survivors(Variant::Killed)
        .into_iter()
        .map(|(path, content)| {
            if !path.ends_with(&change_log) {
                return (path, content);
            }
            let node = model.lookup(&path);
            let Node::File { synced, .. } = &model.nodes[node] else {
                panic!("{} is not a file", path.display());
            };
            (path, Some(synced.clone()))
        })
        .collect();
    let dir = tmp.path().join("cut");
    std::fs::create_dir(&dir).unwrap();
    materialize(&dir, &survivors);
    let reopened = FsBackend::open_with(
        &dir.join("store"),
        FsOptions::default().durability(Durability::Buffered),
    )
    .await
    .unwrap();
    let page = reopened
        .changes(&name, pulled, 100.try_into().unwrap())
        .await
        .unwrap();
    let fed: Vec<u64> = page.changes.iter().map(|c| count_of(&c.record)).collect();
    assert_eq!(fed, [2], "the update after position {pulled}");
    reopened.close().await.unwrap();
    buffered.close().await.unwrap();
}

/// A `Full` handle's checkpoint of a `Buffered` handle's update synced the
/// record file and the directory before the change log: a power cut between
/// the two kept the new content, with no frame (the `Buffered` handle did
/// not sync it) and no line to place it, at the record's old position in
/// the feed, where a replica past it never got it. Cut at every point of
/// that checkpoint, the update is either gone or fed after that position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_checkpoint_of_a_buffered_update_never_leaves_it_at_its_old_feed_position() {
    let (tmp, model_root, recorder) = recorded_disk();
    let root = model_root.join("store");
    let open = |durability| open_recorded(&recorder, &root, durability, Tuning::default());
    let name = coll(NOTES);
    let id = RecordId::new("x").unwrap();
    let full = open(Durability::Full).await.unwrap();
    let pulled = x_created_durably(&full).await;
    // A replica pulled up to `pulled`; a `Buffered` handle then updates the
    // record, and the `Full` handle checkpoints that update.
    let buffered = open(Durability::Buffered).await.unwrap();
    x_updated(&buffered).await;
    let start = recorder.count();
    full.checkpoint().await.unwrap();
    let end = recorder.count();
    let x_file = Path::new(NOTES).join("x.json");
    let ops: Vec<Op> = recorder.ops.lock().clone();
    assert!(
        ops[start..end]
            .iter()
            .any(|op| matches!(op, Op::Rename(_, to) if to.ends_with(&x_file))),
        "the full handle's checkpoint did not write the buffered update"
    );
    for cut in start..=end {
        let mut model = Model::new();
        for op in &ops[..cut] {
            model.apply(op);
        }
        let dir = tmp.path().join(format!("cut-{cut}"));
        std::fs::create_dir(&dir).unwrap();
        materialize(&dir, &model.survivors(Variant::Synced));
        let reopened = FsBackend::open_with(
            &dir.join("store"),
            FsOptions::default().durability(Durability::Buffered),
        )
        .await
        .unwrap();
        let held = reopened.get(&name, &id).await.unwrap().unwrap();
        let page = reopened
            .changes(&name, pulled, 100.try_into().unwrap())
            .await
            .unwrap();
        let fed: Vec<u64> = page.changes.iter().map(|c| count_of(&c.record)).collect();
        let held = count_of(&held.record);
        // The update, if it survived, is fed after `pulled`; if it did not,
        // the record may be fed again as it was, which changes nothing.
        assert!(
            fed == [held] || (held == 1 && fed.is_empty()),
            "cut at op {cut}: holds {held}, fed {fed:?}"
        );
        reopened.close().await.unwrap();
    }
    buffered.close().await.unwrap();
    full.close().await.unwrap();
}
