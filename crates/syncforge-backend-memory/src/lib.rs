//! # syncforge-backend-memory
//!
//! [`MemoryBackend`]: an in-process [`StorageBackend`] for syncforge. Data lives
//! as long as any handle on it; nothing is persisted. It is the default backend
//! and the fastest one, meant for tests, caches and short-lived replicas.
//!
//! Every clone is another handle on the same data, so two engines built on
//! clones of one `MemoryBackend` share their records exactly as two processes
//! sharing one Redis would.
//!
//! ```
//! use serde_json::json;
//! use syncforge_core::{
//!     ClientId, CollectionName, Content, Cursor, Hlc, Record, RecordId, StorageBackend, Write,
//!     WriteOutcome,
//! };
//! use syncforge_backend_memory::MemoryBackend;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> syncforge_core::Result<()> {
//! let store = MemoryBackend::new();
//! let mut clock = Hlc::new(ClientId::new("phone")?);
//! let note = Record::create(Content::from_value(json!({"id": "n1", "title": "Q3"}))?, &clock.now()?);
//!
//! let notes = CollectionName::new("notes")?;
//! let outcome = store.put(&notes, &Write::create(note.clone())).await?;
//! assert!(matches!(outcome, WriteOutcome::Written { cursor, .. } if cursor == Cursor::new(1)));
//!
//! // Another handle sees the same data.
//! let other = store.clone();
//! let stored = other.get(&notes, &RecordId::new("n1")?).await?;
//! assert_eq!(stored.map(|s| s.record), Some(note));
//! # Ok(())
//! # }
//! ```

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};
use syncforge_core::{
    async_trait, record_to_insert, Change, ChangePage, CollectionName, Cursor, Error, IfAbsent,
    Record, RecordId, Result, Stamp, StorageBackend, Stored, Token, Write, WriteOutcome,
};

const BACKEND_NAME: &str = "memory";

/// The capacity below which a collection's table is not shrunk: a small
/// table is not worth its rehashes.
const MIN_SHRUNK_CAPACITY: usize = 1024;

/// An in-process storage backend.
///
/// `Clone` gives another handle on the same data (in the same open or closed
/// state as the handle it was cloned from). [`close`](StorageBackend::close)
/// closes only the handle it is called on and never drops data.
///
/// [`newest_stamp`](StorageBackend::newest_stamp) is the newest stamp ever
/// written, kept at hand: deleting records never moves it back, so a clock
/// seeded from it stays ahead of every stamp this store has held.
///
/// All data sits behind one mutex, which is never held across an `.await`;
/// batch calls take it once.
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
    closed: AtomicBool,
}

/// Everything shared by the handles of one store.
#[derive(Default)]
struct State {
    collections: Collections,
    meta: HashMap<String, String>,
    /// The newest stamp ever written. Kept instead of recomputed so that
    /// `newest_stamp` is O(1); after deletes it may be newer than any record
    /// left, which is harmless for its one use (seeding a clock forward).
    newest: Option<Stamp>,
}

/// The collections by name, the one looked up last kept at hand.
///
/// A program writes to the same collection call after call, and finding it
/// by its name's hash was a tenth of the store's cost of a put. Handles on
/// one collection, and names given as strings on one thread, share one name
/// allocation with the store's key (see `CollectionName`): the one looked up
/// last is recognised by that allocation alone, which cannot be another
/// name's while the store holds it as a key.
#[derive(Default)]
struct Collections {
    /// Only ever loses the collection just added for a write that stored
    /// nothing (a cleared collection keeps its place and its last sequence),
    /// so an index into it stays valid.
    list: Vec<(CollectionName, Collection)>,
    index: HashMap<CollectionName, usize, IdHasher>,
    /// Where in `list` the last lookup found its collection.
    last: Cell<usize>,
}

impl Collections {
    /// Where collection `name` is in `list`.
    #[inline]
    fn find(&self, name: &CollectionName) -> Option<usize> {
        let last = self.last.get();
        if let Some((known, _)) = self.list.get(last) {
            if Arc::ptr_eq(known.as_shared(), name.as_shared()) {
                return Some(last);
            }
        }
        let found = *self.index.get(name)?;
        self.last.set(found);
        Some(found)
    }

    fn get(&self, name: &CollectionName) -> Option<&Collection> {
        let i = self.find(name)?;
        self.list.get(i).map(|(_, c)| c)
    }

    fn get_mut(&mut self, name: &CollectionName) -> Option<&mut Collection> {
        let i = self.find(name)?;
        self.list.get_mut(i).map(|(_, c)| c)
    }

    /// Runs `write` on collection `name`, created empty if the store has
    /// none of that name. A collection created for a write that stored
    /// nothing (a lost conditional write, a record that could not be made)
    /// is taken away again: names sent by peers would otherwise cost memory
    /// for good even when every write to them is refused.
    #[inline]
    fn write_to<T>(
        &mut self,
        name: &CollectionName,
        write: impl FnOnce(&mut Collection) -> T,
    ) -> T {
        match self.find(name) {
            Some(i) => write(&mut self.list[i].1),
            None => self.write_to_new(name, write),
        }
    }

    /// [`write_to`](Self::write_to) a collection the store does not hold:
    /// out of line, as it happens once per name.
    #[cold]
    fn write_to_new<T>(
        &mut self,
        name: &CollectionName,
        write: impl FnOnce(&mut Collection) -> T,
    ) -> T {
        let i = self.create(name);
        let outcome = write(&mut self.list[i].1);
        if self.list[i].1.last_sequence == 0 {
            self.discard_last();
        }
        outcome
    }

    /// Adds an empty collection `name`, which the store does not hold yet,
    /// and returns where it is.
    fn create(&mut self, name: &CollectionName) -> usize {
        let i = self.list.len();
        self.list.push((name.clone(), Collection::default()));
        self.index.insert(name.clone(), i);
        self.last.set(i);
        i
    }

    /// Takes away the collection [`create`](Self::create) added last, which
    /// nothing was written to: no index into `list` can name it yet.
    #[cold]
    fn discard_last(&mut self) {
        if let Some((name, _)) = self.list.pop() {
            self.index.remove(&name);
        }
        self.last.set(0);
    }

    fn iter(&self) -> impl Iterator<Item = (&CollectionName, &Collection)> + '_ {
        self.list.iter().map(|(name, c)| (name, c))
    }
}

/// The id table's hasher: seeded at random, which foldhash calls minimally
/// resistant to denial of service (a peer that does not know the seed
/// cannot simply precompute ids that collide, though this is no keyed hash
/// as SipHash is), and several times cheaper than the standard SipHash,
/// which was the largest single cost of a write in profiles.
type IdHasher = foldhash::fast::RandomState;

/// One collection: the records and the change log over them.
///
/// No ordered tree: every write appends one entry to `log` and touches one
/// hash slot, a cost that does not grow with the collection (a tree paid a
/// cache miss per level on every write, which made incremental syncs into big
/// collections slower than into small ones).
#[derive(Default)]
struct Collection {
    records: Records,
    /// `(sequence, id hash)` of every write, in sequence order: the change
    /// feed. An entry is live while a slot of that hash still holds that
    /// sequence (a sequence is handed out once, so it names one write of one
    /// record: the hash only says where to look, and no id is compared or
    /// kept alive). Rewrites and removals leave the old entry behind (stale)
    /// instead of searching for it, and [`Collection::compact`] drops stale
    /// entries once they outnumber the live ones, so the log stays within
    /// twice the collection.
    log: Log,
    /// Last sequence handed out. Survives deletes and clears, so a reader's
    /// cursor never skips records written after a clear.
    last_sequence: u64,
}

struct Slot {
    record: Record,
    sequence: u64,
    /// The hash of the record's id, kept so that growing the table,
    /// rejecting a slot whose tag matched by chance, and finding a log
    /// entry's slot never read the id: at a million records each such read
    /// was a cache miss (two: the record, then its id).
    hash: u64,
}

/// The records of a collection by id. A table of slots found by the id each
/// record already holds, not a map with the id as a second key: a slot (24
/// bytes) is smaller than a map entry would be (32), which matters at a
/// million records.
#[derive(Default)]
struct Records {
    slots: HashTable<Slot>,
    hasher: IdHasher,
}

impl Records {
    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    fn get(&self, id: &str) -> Option<&Slot> {
        self.get_hashed(self.hash(id), id)
    }

    /// The slot of `id`, whose hash is `hash`.
    fn get_hashed(&self, hash: u64, id: &str) -> Option<&Slot> {
        self.slots.find(hash, |slot| {
            slot.hash == hash && slot.record.id().as_str() == id
        })
    }

    /// The slot of `id`, whose hash is `hash`.
    fn get_mut_hashed(&mut self, hash: u64, id: &str) -> Option<&mut Slot> {
        self.slots.find_mut(hash, |slot| {
            slot.hash == hash && slot.record.id().as_str() == id
        })
    }

    /// A slot whose id has the hash `hash` (the id itself is not compared).
    fn with_hash(&self, hash: u64) -> Option<&Slot> {
        self.slots.find(hash, |slot| slot.hash == hash)
    }

    /// The slot whose latest write had `sequence`, if that write is still
    /// its latest; `hash` is the hash of the record's id.
    fn written(&self, hash: u64, sequence: u64) -> Option<&Slot> {
        self.slots
            .find(hash, |slot| slot.sequence == sequence && slot.hash == hash)
    }

    /// Adds a slot for a record the table does not hold.
    fn insert_new(&mut self, slot: Slot) {
        self.slots.insert_unique(slot.hash, slot, |s| s.hash);
    }

    fn remove(&mut self, id: &str) -> bool {
        let hash = self.hash(id);
        match self.slots.find_entry(hash, |slot| {
            slot.hash == hash && slot.record.id().as_str() == id
        }) {
            Ok(entry) => {
                entry.remove();
                // A table never gives memory back by itself: one that held a
                // million records kept it all once they were deleted. Halved
                // once it is a quarter full, which costs a rehash of what is
                // left, paid for by the removals that emptied it.
                let (len, capacity) = (self.slots.len(), self.slots.capacity());
                if capacity > MIN_SHRUNK_CAPACITY && len < capacity / 4 {
                    self.slots.shrink_to(len.saturating_mul(2), |s| s.hash);
                }
                true
            }
            Err(_) => false,
        }
    }

    fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional, |s| s.hash);
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn clear(&mut self) {
        // A new table: clearing keeps the old one's memory.
        self.slots = HashTable::new();
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.slots.iter()
    }
}

/// The change log: `(sequence, id hash)` entries in sequence order, in
/// chunks of a fixed size. One vector doubled and copied the whole log when
/// it filled up: 24 MB at a million records, in the middle of whichever
/// write came next. A chunk is never moved once allocated.
#[derive(Default)]
struct Log {
    chunks: Vec<Vec<(u64, u64)>>,
    len: usize,
}

impl Log {
    /// Entries per chunk: 64 KiB, large enough that the list of chunks stays
    /// short, small enough that a new chunk is cheap to allocate.
    const CHUNK: usize = 4096;
    /// Entries the first chunk has room for when it is made: 1 KiB.
    const FIRST_CHUNK: usize = 64;

    #[inline]
    fn push(&mut self, entry: (u64, u64)) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < Self::CHUNK => chunk.push(entry),
            _ => self.push_in_new_chunk(entry),
        }
        self.len += 1;
    }

    /// The push that starts a chunk: out of line, as it happens once per
    /// chunk, so that the push into a chunk with room stays small enough to
    /// be inlined into every write.
    #[cold]
    fn push_in_new_chunk(&mut self, entry: (u64, u64)) {
        // The first chunk grows as it fills: a store of many small
        // collections held a whole chunk for each.
        let capacity = if self.chunks.is_empty() {
            Self::FIRST_CHUNK
        } else {
            Self::CHUNK
        };
        let mut chunk = Vec::with_capacity(capacity);
        chunk.push(entry);
        self.chunks.push(chunk);
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The entries with a sequence greater than `after`, oldest first: found
    /// by bisection over the chunks, then within one.
    fn after(&self, after: u64) -> impl Iterator<Item = &(u64, u64)> + '_ {
        let first = self
            .chunks
            .partition_point(|chunk| chunk.last().is_some_and(|(s, _)| *s <= after));
        let rest = self.chunks.get(first..).unwrap_or_default();
        let start = rest
            .first()
            .map_or(0, |chunk| chunk.partition_point(|(s, _)| *s <= after));
        rest.iter().enumerate().flat_map(move |(i, chunk)| {
            chunk
                .get(if i == 0 { start } else { 0 }..)
                .unwrap_or_default()
        })
    }

    fn iter(&self) -> impl Iterator<Item = &(u64, u64)> + '_ {
        self.chunks.iter().flatten()
    }

    /// The sequence of the last entry.
    fn last(&self) -> Option<u64> {
        self.chunks
            .last()
            .and_then(|chunk| chunk.last())
            .map(|(sequence, _)| *sequence)
    }

    /// Keeps the entries `keep` says to keep, in order, in fresh chunks.
    fn retain(&mut self, mut keep: impl FnMut(&(u64, u64)) -> bool) {
        let old = std::mem::take(self);
        for entry in old.chunks.into_iter().flatten() {
            if keep(&entry) {
                self.push(entry);
            }
        }
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }
}

impl MemoryBackend {
    /// A new, empty store.
    pub fn new() -> Self {
        MemoryBackend {
            state: Arc::new(Mutex::new(State::default())),
            closed: AtomicBool::new(false),
        }
    }

    /// Locks the shared state for one call, refusing if this handle is closed.
    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed {
                what: "memory backend handle",
            });
        }
        Ok(self.state.lock())
    }

    /// `get`, which never waits: also answered by `get_now`.
    fn get_at_once(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<Stored>> {
        let state = self.lock()?;
        Ok(state.collections.get(collection).and_then(|c| c.stored(id)))
    }

    /// `put`, which never waits: also done by `put_now`.
    fn put_at_once(&self, collection: &CollectionName, write: &Write) -> Result<WriteOutcome> {
        let mut guard = self.lock()?;
        let state = &mut *guard;
        let newest = &mut state.newest;
        Ok(state
            .collections
            .write_to(collection, |target| target.apply(write, newest)))
    }

    /// `insert_if_absent_now`: one lock, one lookup of the collection and
    /// one probe of its table for what was a `get_now` and a `put_now`.
    /// `make` runs under the lock, which is what makes the read and the
    /// write one step; it only stamps and assembles a record.
    fn insert_if_absent_at_once(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        make: &mut dyn FnMut() -> Result<Record>,
    ) -> Result<IfAbsent> {
        let mut guard = self.lock()?;
        let state = &mut *guard;
        let newest = &mut state.newest;
        state.collections.write_to(collection, |target| {
            target.insert_if_absent(id, make, newest)
        })
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl Clone for MemoryBackend {
    fn clone(&self) -> Self {
        MemoryBackend {
            state: Arc::clone(&self.state),
            closed: AtomicBool::new(self.closed.load(Ordering::Acquire)),
        }
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Deliberately not the data: it can be huge, and printing it would lock.
        f.debug_struct("MemoryBackend")
            .field("closed", &self.closed.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl Collection {
    fn stored(&self, id: &str) -> Option<Stored> {
        self.records.get(id).map(|slot| Stored {
            record: slot.record.clone(),
            token: Token::Sequence(slot.sequence),
        })
    }

    /// [`stored`](Self::stored) of each of `ids`, in three passes: first each
    /// id's slot is found by its hash alone (the table's control bytes and
    /// the slot), then each slot's record is checked to have that id, then
    /// the records are copied. In a collection larger than the cache each
    /// of the first two reads is a miss; one lookup after another waited for
    /// the record and its id before the next lookup could start, while passes
    /// that each read one thing per id let the processor wait for many ids'
    /// reads at once. The copies come last because a copy's reference count
    /// is a locked increment, which holds back every read after it until its
    /// own line arrives.
    fn stored_many(&self, ids: &[RecordId]) -> Vec<Option<Stored>> {
        let found: Vec<(u64, Option<&Slot>)> = ids
            .iter()
            .map(|id| {
                let hash = self.records.hash(id);
                (hash, self.records.with_hash(hash))
            })
            .collect();
        let slots: Vec<Option<&Slot>> = ids
            .iter()
            .zip(found)
            .map(|(id, (hash, slot))| match slot {
                None => None,
                Some(slot) if slot.record.id() == id => Some(slot),
                // Another id with the same 64-bit hash: search by id.
                Some(_) => self.records.get_hashed(hash, id),
            })
            .collect();
        slots
            .into_iter()
            .map(|slot| {
                slot.map(|slot| Stored {
                    record: slot.record.clone(),
                    token: Token::Sequence(slot.sequence),
                })
            })
            .collect()
    }

    /// The record written at `sequence` by log entry `hash`, if that write
    /// is still the record's latest.
    fn live(&self, sequence: u64, hash: u64) -> Option<&Record> {
        self.records
            .written(hash, sequence)
            .map(|slot| &slot.record)
    }

    /// Applies one conditional write; a write that happens moves `newest`
    /// forward to its stamp if that is newer.
    fn apply(&mut self, write: &Write, newest: &mut Option<Stamp>) -> WriteOutcome {
        let Write { record, expected } = write;
        let sequence = self.last_sequence + 1;
        let hash = self.records.hash(record.id());
        match self.records.get_mut_hashed(hash, record.id()) {
            Some(slot) => {
                if !matches!(expected, Some(Token::Sequence(s)) if *s == slot.sequence) {
                    return WriteOutcome::Conflict;
                }
                slot.record = record.clone();
                slot.sequence = sequence;
            }
            None => {
                if expected.is_some() {
                    return WriteOutcome::Conflict;
                }
                self.records.insert_new(Slot {
                    record: record.clone(),
                    sequence,
                    hash,
                });
            }
        }
        self.logged(sequence, hash, record, newest);
        WriteOutcome::Written {
            token: Token::Sequence(sequence),
            cursor: Cursor::new(sequence),
        }
    }

    /// The stored state of `id`, or else the record `make` builds for it,
    /// inserted as a create would be.
    fn insert_if_absent(
        &mut self,
        id: &RecordId,
        make: &mut dyn FnMut() -> Result<Record>,
        newest: &mut Option<Stamp>,
    ) -> Result<IfAbsent> {
        let hash = self.records.hash(id);
        if let Some(slot) = self.records.get_hashed(hash, id) {
            return Ok(IfAbsent::Present(Stored {
                record: slot.record.clone(),
                token: Token::Sequence(slot.sequence),
            }));
        }
        let record = record_to_insert(BACKEND_NAME, id, make)?;
        let sequence = self.last_sequence + 1;
        self.records.insert_new(Slot {
            record: record.clone(),
            sequence,
            hash,
        });
        self.logged(sequence, hash, &record, newest);
        Ok(IfAbsent::Inserted {
            record,
            token: Token::Sequence(sequence),
            cursor: Cursor::new(sequence),
        })
    }

    /// Records a write of `record` (whose id hashes to `hash`) at `sequence`
    /// in the change log, the last sequence and `newest`.
    fn logged(&mut self, sequence: u64, hash: u64, record: &Record, newest: &mut Option<Stamp>) {
        take_newer(newest, record.newest_stamp());
        self.log.push((sequence, hash));
        self.last_sequence = sequence;
        self.compact();
    }

    fn remove(&mut self, id: &str) -> bool {
        let removed = self.records.remove(id);
        if removed {
            if self.records.is_empty() {
                // Every entry is stale: compacting would keep up to its
                // slack of them, and their chunk, for good.
                self.log.clear();
            } else {
                self.compact();
            }
        }
        removed
    }

    /// Drops the stale log entries once they outnumber the live ones: one
    /// pass over the log per as many writes as it then holds, so amortised
    /// O(1) per write.
    #[inline]
    fn compact(&mut self) {
        // The slack keeps small collections from compacting on every write.
        const SLACK: usize = 1024;
        if self.log.len() > 2 * self.records.len() + SLACK {
            self.drop_stale();
        }
    }

    /// The pass of [`compact`](Self::compact), out of line: the check
    /// before it runs on every write.
    #[inline(never)]
    fn drop_stale(&mut self) {
        let records = &self.records;
        self.log
            .retain(|(sequence, hash)| records.written(*hash, *sequence).is_some());
    }

    fn clear(&mut self) {
        self.records.clear();
        self.log.clear();
    }
}

fn take_newer(newest: &mut Option<Stamp>, stamp: &Stamp) {
    match newest {
        // In place: the newest stamp is nearly always of the same client,
        // and a clone touched its reference count twice (the new stamp's
        // and the replaced one's), on every write.
        Some(known) if stamp > known => known.clone_from(stamp),
        Some(_) => {}
        None => *newest = Some(stamp.clone()),
    }
}

#[async_trait]
impl StorageBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        BACKEND_NAME
    }

    async fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<Stored>> {
        self.get_at_once(collection, id)
    }

    fn get_now(
        &self,
        collection: &CollectionName,
        id: &RecordId,
    ) -> Option<Result<Option<Stored>>> {
        Some(self.get_at_once(collection, id))
    }

    fn put_now(&self, collection: &CollectionName, write: &Write) -> Option<Result<WriteOutcome>> {
        Some(self.put_at_once(collection, write))
    }

    fn insert_if_absent_now(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        make: &mut dyn FnMut() -> Result<Record>,
    ) -> Option<Result<IfAbsent>> {
        Some(self.insert_if_absent_at_once(collection, id, make))
    }

    /// What [`insert_if_absent_now`](StorageBackend::insert_if_absent_now)
    /// does, which already builds the record only when it is absent: a
    /// wrapper that forwards only the awaited calls still finds the one step.
    async fn insert_if_absent(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        make: &mut (dyn FnMut() -> Result<Record> + Send),
    ) -> Option<Result<IfAbsent>> {
        Some(self.insert_if_absent_at_once(collection, id, make))
    }

    async fn get_many(
        &self,
        collection: &CollectionName,
        ids: &[RecordId],
    ) -> Result<Vec<Option<Stored>>> {
        let state = self.lock()?;
        Ok(match state.collections.get(collection) {
            Some(c) => c.stored_many(ids),
            None => vec![None; ids.len()],
        })
    }

    async fn get_all(&self, collection: &CollectionName) -> Result<Vec<Record>> {
        let state = self.lock()?;
        Ok(state
            .collections
            .get(collection)
            .map(|c| c.records.iter().map(|s| s.record.clone()).collect())
            .unwrap_or_default())
    }

    async fn put_batch(
        &self,
        collection: &CollectionName,
        writes: &[Write],
    ) -> Result<Vec<WriteOutcome>> {
        // Before the empty batch's answer: a closed handle refuses every call.
        let mut guard = self.lock()?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let state = &mut *guard;
        let newest = &mut state.newest;
        Ok(state.collections.write_to(collection, |target| {
            // Room for every create up front: growing the table step by
            // step rehashed it mid-batch. Replacements need none, and room
            // reserved for them would be kept for good.
            let creates = writes
                .iter()
                .filter(|write| write.expected.is_none())
                .count();
            target.records.reserve(creates);
            writes
                .iter()
                .map(|write| target.apply(write, newest))
                .collect()
        }))
    }

    /// [`put_batch`](StorageBackend::put_batch) of one write, without the
    /// vector of outcomes: a local put writes one record at a time.
    async fn put(&self, collection: &CollectionName, write: &Write) -> Result<WriteOutcome> {
        self.put_at_once(collection, write)
    }

    async fn delete(&self, collection: &CollectionName, id: &RecordId) -> Result<bool> {
        let mut state = self.lock()?;
        Ok(state
            .collections
            .get_mut(collection)
            .is_some_and(|c| c.remove(id)))
    }

    async fn changes(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        let state = self.lock()?;
        let limit = limit.get();
        let Some(c) = state.collections.get(collection) else {
            return Ok(ChangePage {
                changes: Vec::new(),
                next: after,
                more: false,
            });
        };
        // The log is in sequence order: the first entry after the cursor is
        // found by bisection, then stale entries are skipped.
        let mut entries = c
            .log
            .after(after.get())
            .filter_map(|(sequence, hash)| c.live(*sequence, *hash).map(|r| (*sequence, r)));
        let mut changes = Vec::with_capacity(limit.min(c.records.len()));
        for (sequence, record) in entries.by_ref().take(limit) {
            changes.push(Change {
                cursor: Cursor::new(sequence),
                record: record.clone(),
            });
        }
        let more = entries.next().is_some();
        let last_change = changes.last().map_or(after, |change| change.cursor);
        // Read to the log's end: past the stale entries after the last
        // change too, so that a reader does not walk them again at its
        // next call (deleted records leave up to as many as there are
        // records before the log is compacted).
        let next = match c.log.last() {
            Some(last) if !more => last_change.max(Cursor::new(last)),
            _ => last_change,
        };
        Ok(ChangePage {
            changes,
            next,
            more,
        })
    }

    /// Scans the collection: this time-based query (kept from the original,
    /// which scanned too) has no index of its own, so that no write pays for
    /// keeping one ordered by time.
    async fn changes_since_timestamp(
        &self,
        collection: &CollectionName,
        millis: u64,
    ) -> Result<Vec<Record>> {
        let state = self.lock()?;
        let Some(c) = state.collections.get(collection) else {
            return Ok(Vec::new());
        };
        Ok(c.log
            .iter()
            .filter_map(|(sequence, hash)| c.live(*sequence, *hash))
            .filter(|record| record.timestamp() > millis)
            .cloned()
            .collect())
    }

    async fn list_collections(&self) -> Result<Vec<CollectionName>> {
        let state = self.lock()?;
        Ok(state
            .collections
            .iter()
            .filter(|(_, c)| !c.records.is_empty())
            .map(|(name, _)| name.clone())
            .collect())
    }

    async fn clear_collection(&self, collection: &CollectionName) -> Result<()> {
        let mut state = self.lock()?;
        if let Some(c) = state.collections.get_mut(collection) {
            // The collection itself stays, with its last sequence (see `Collection`).
            c.clear();
        }
        Ok(())
    }

    async fn newest_stamp(&self) -> Result<Option<Stamp>> {
        Ok(self.lock()?.newest.clone())
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.lock()?.meta.get(key).cloned())
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.lock()?.meta.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let mut state = self.lock()?;
        Ok(state
            .meta
            .entry(key.to_owned())
            .or_insert_with(|| value.to_owned())
            .clone())
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use syncforge_core::{ClientId, Content, Hlc, ManualTime};

    use super::*;

    fn coll(name: &str) -> CollectionName {
        CollectionName::new(name).unwrap()
    }

    fn rid(id: &str) -> RecordId {
        RecordId::new(id).unwrap()
    }

    fn clock(millis: u64) -> (Arc<ManualTime>, Hlc) {
        let time = Arc::new(ManualTime::new(millis));
        let hlc = Hlc::with_time(ClientId::new("unit").unwrap(), time.clone());
        (time, hlc)
    }

    fn record(hlc: &mut Hlc, id: &str, n: u64) -> Record {
        Record::create(
            Content::from_value(json!({"id": id, "n": n})).unwrap(),
            hlc.now().unwrap(),
        )
    }

    /// A collection that held many records kept their table's memory once
    /// they were deleted or cleared, for the life of the store.
    #[tokio::test]
    async fn deleted_and_cleared_records_give_their_memory_back() {
        let store = MemoryBackend::new();
        let (_, mut hlc) = clock(1_000);
        let capacity = |c: &CollectionName| {
            store
                .state
                .lock()
                .collections
                .get(c)
                .map_or(0, |c| c.records.slots.capacity())
        };
        for name in ["deleted", "cleared"] {
            let c = coll(name);
            let writes: Vec<Write> = (0..20_000)
                .map(|n| Write::create(record(&mut hlc, &format!("r{n}"), n)))
                .collect();
            store.put_batch(&c, &writes).await.unwrap();
            assert!(capacity(&c) >= 20_000);
            if name == "deleted" {
                for n in 0..19_990 {
                    assert!(store.delete(&c, &rid(&format!("r{n}"))).await.unwrap());
                }
            } else {
                store.clear_collection(&c).await.unwrap();
            }
            assert!(
                capacity(&c) <= 2 * MIN_SHRUNK_CAPACITY,
                "{name}: {}",
                capacity(&c)
            );
        }
        // What is left is still found.
        let left = store.get(&coll("deleted"), &rid("r19995")).await.unwrap();
        assert!(left.is_some());
        assert_indexes_agree(&store);
    }

    /// Each collection's change log took a chunk of 64 KiB with its first
    /// write, and kept it, and up to a thousand stale entries, once every
    /// record of it was deleted: a store of many small collections held
    /// 64 KiB for each, for good.
    #[tokio::test]
    async fn small_and_emptied_collections_hold_little_log() {
        let store = MemoryBackend::new();
        let (_, mut hlc) = clock(1_000);
        for n in 0..100 {
            let c = coll(&format!("c{n}"));
            let write = Write::create(record(&mut hlc, "r", n));
            store.put_batch(&c, &[write]).await.unwrap();
            if n % 2 == 0 {
                assert!(store.delete(&c, &rid("r")).await.unwrap());
            }
        }
        let (entries, room) = {
            let state = store.state.lock();
            state
                .collections
                .list
                .iter()
                .fold((0, 0), |(len, room), (_, c)| {
                    let chunks = c.log.chunks.iter().map(Vec::capacity).sum::<usize>();
                    (len + c.log.len(), room + chunks)
                })
        };
        assert_eq!(entries, 50, "the emptied collections' logs were kept");
        assert!(room <= 50 * Log::FIRST_CHUNK, "room for {room} entries");
        assert_indexes_agree(&store);
    }

    /// A page that found no current change past the last it returned
    /// answered the cursor of that change: a reader walked the same stale
    /// entries (of deleted or rewritten records) again at every call.
    #[tokio::test]
    async fn a_page_reads_past_the_stale_entries_at_the_end_of_the_feed() {
        let store = MemoryBackend::new();
        let (_, mut hlc) = clock(1_000);
        let c = coll("c");
        store
            .put(&c, &Write::create(record(&mut hlc, "kept", 0)))
            .await
            .unwrap();
        for n in 0..50 {
            let id = format!("t{n}");
            store
                .put(&c, &Write::create(record(&mut hlc, &id, n)))
                .await
                .unwrap();
            assert!(store.delete(&c, &rid(&id)).await.unwrap());
        }
        let page = store
            .changes(&c, Cursor::START, NonZeroUsize::new(10).unwrap())
            .await
            .unwrap();
        assert_eq!(page.changes.len(), 1);
        assert!(!page.more);
        assert_eq!(page.next, Cursor::new(51));
        let after = store
            .changes(&c, page.next, NonZeroUsize::new(10).unwrap())
            .await
            .unwrap();
        assert_eq!(
            (after.changes.len(), after.next, after.more),
            (0, Cursor::new(51), false)
        );
    }

    #[tokio::test]
    async fn a_closed_handle_refuses_even_an_empty_batch() {
        let store = MemoryBackend::new();
        store.close().await.unwrap();
        let refused = store.put_batch(&coll("c"), &[]).await;
        assert!(matches!(refused, Err(Error::Closed { .. })), "{refused:?}");
    }

    fn assert_indexes_agree(store: &MemoryBackend) {
        let state = store.state.lock();
        for (_, c) in state.collections.iter() {
            let sequences: Vec<u64> = c.log.iter().map(|(s, _)| *s).collect();
            assert!(sequences.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(sequences.len(), c.log.len());
            assert!(c.log.len() <= 2 * c.records.len() + 1024);
            for slot in c.records.iter() {
                assert_eq!(slot.hash, c.records.hash(slot.record.id()));
                let live = c
                    .log
                    .iter()
                    .filter(|(s, h)| *s == slot.sequence && *h == slot.hash);
                assert_eq!(live.count(), 1);
            }
        }
    }

    #[tokio::test]
    async fn calls_answered_at_once_are_the_awaited_calls() {
        let store = MemoryBackend::new();
        let (_, mut hlc) = clock(1_000);
        let write = Write::create(record(&mut hlc, "a", 1));
        let now = store.put_now(&coll("c"), &write).unwrap().unwrap();
        assert!(matches!(now, WriteOutcome::Written { .. }));
        // The same conditional write again: the record exists now.
        assert_eq!(
            store.put_now(&coll("c"), &write).unwrap().unwrap(),
            store.put(&coll("c"), &write).await.unwrap()
        );
        let read = store.get_now(&coll("c"), &rid("a")).unwrap().unwrap();
        assert_eq!(read, store.get(&coll("c"), &rid("a")).await.unwrap());
        assert!(read.is_some());
        store.close().await.unwrap();
        assert!(matches!(
            store.get_now(&coll("c"), &rid("a")),
            Some(Err(Error::Closed { .. }))
        ));
        assert!(matches!(
            store.put_now(&coll("c"), &write),
            Some(Err(Error::Closed { .. }))
        ));
    }

    #[tokio::test]
    async fn insert_if_absent_writes_only_a_new_record() {
        let store = MemoryBackend::new();
        let (_, mut hlc) = clock(1_000);
        let first = record(&mut hlc, "a", 1);
        let mut calls = 0;
        let made = first.clone();
        let inserted = store
            .insert_if_absent_now(&coll("c"), &rid("a"), &mut || {
                calls += 1;
                Ok(made.clone())
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            inserted,
            IfAbsent::Inserted {
                record: first.clone(),
                token: Token::Sequence(1),
                cursor: Cursor::new(1)
            }
        );
        // Present now: `make` is not called, and the stored state comes back.
        let present = store
            .insert_if_absent_now(&coll("c"), &rid("a"), &mut || {
                calls += 1;
                Ok(record(&mut hlc, "a", 2))
            })
            .unwrap()
            .unwrap();
        assert_eq!(calls, 1);
        assert_eq!(
            present,
            IfAbsent::Present(store.get(&coll("c"), &rid("a")).await.unwrap().unwrap())
        );
        // A failing `make` and a record of another id write nothing.
        let failed = store.insert_if_absent_now(&coll("c"), &rid("b"), &mut || {
            Err(Error::storage("test", "no record"))
        });
        assert!(matches!(failed, Some(Err(Error::Storage { .. }))));
        let other = record(&mut hlc, "x", 1);
        let wrong = store.insert_if_absent_now(&coll("c"), &rid("b"), &mut || Ok(other.clone()));
        assert!(matches!(wrong, Some(Err(Error::Storage { .. }))));
        assert_eq!(store.get_all(&coll("c")).await.unwrap().len(), 1);
        // The feed goes on from the insert's sequence.
        let next = store
            .put(&coll("c"), &Write::create(record(&mut hlc, "b", 1)))
            .await
            .unwrap();
        assert!(matches!(next, WriteOutcome::Written { cursor, .. } if cursor == Cursor::new(2)));
        assert_eq!(
            store.newest_stamp().await.unwrap().as_ref(),
            store
                .get(&coll("c"), &rid("b"))
                .await
                .unwrap()
                .map(|s| s.record.newest_stamp().clone())
                .as_ref()
        );
        assert_indexes_agree(&store);
        store.close().await.unwrap();
        assert!(matches!(
            store.insert_if_absent_now(&coll("c"), &rid("z"), &mut || Ok(other.clone())),
            Some(Err(Error::Closed { .. }))
        ));
    }

    /// Writes that store nothing in a collection the store did not hold
    /// used to leave it behind, empty, for good.
    #[tokio::test]
    async fn writes_that_store_nothing_leave_no_collection_behind() {
        let store = MemoryBackend::new();
        let (_, mut hlc) = clock(1_000);
        let lost = Write {
            record: record(&mut hlc, "a", 1),
            expected: Some(Token::Sequence(7)),
        };
        let held = |store: &MemoryBackend| store.lock().unwrap().collections.list.len();
        for name in ["lost-put", "lost-batch", "not-made"] {
            let outcome = match name {
                "lost-put" => store.put(&coll(name), &lost).await.unwrap(),
                "lost-batch" => store
                    .put_batch(&coll(name), std::slice::from_ref(&lost))
                    .await
                    .unwrap()
                    .remove(0),
                _ => {
                    let failed = store.insert_if_absent_now(&coll(name), &rid("b"), &mut || {
                        Err(Error::storage("test", "no record"))
                    });
                    assert!(matches!(failed, Some(Err(_))));
                    WriteOutcome::Conflict
                }
            };
            assert_eq!(outcome, WriteOutcome::Conflict);
            assert_eq!(held(&store), 0, "{name} left a collection behind");
        }
        // A collection that held records stays, with its sequence, when
        // emptied; and one created by a write that stored something stays.
        store
            .put(&coll("kept"), &Write::create(record(&mut hlc, "a", 1)))
            .await
            .unwrap();
        store
            .put(&coll("other"), &Write::create(record(&mut hlc, "a", 1)))
            .await
            .unwrap();
        store.clear_collection(&coll("kept")).await.unwrap();
        store.put(&coll("fresh"), &lost).await.unwrap();
        assert_eq!(held(&store), 2);
        let next = store
            .put(&coll("kept"), &Write::create(record(&mut hlc, "b", 1)))
            .await
            .unwrap();
        assert!(matches!(next, WriteOutcome::Written { cursor, .. } if cursor == Cursor::new(2)));
        assert_eq!(
            store.get_all(&coll("other")).await.unwrap().len(),
            1,
            "a discarded collection disturbed the index of another"
        );
        assert_indexes_agree(&store);
    }

    #[tokio::test]
    async fn tokens_are_the_sequences_of_the_writes() {
        let store = MemoryBackend::new();
        let (_, mut hlc) = clock(1_000);
        let first = store
            .put(&coll("c"), &Write::create(record(&mut hlc, "a", 1)))
            .await
            .unwrap();
        assert_eq!(
            first,
            WriteOutcome::Written {
                token: Token::Sequence(1),
                cursor: Cursor::new(1)
            }
        );
        let second = store
            .put(&coll("c"), &Write::create(record(&mut hlc, "b", 1)))
            .await
            .unwrap();
        assert!(matches!(second, WriteOutcome::Written { cursor, .. } if cursor == Cursor::new(2)));
        assert_eq!(
            store
                .get(&coll("c"), &rid("a"))
                .await
                .unwrap()
                .unwrap()
                .token,
            Token::Sequence(1)
        );
    }

    #[tokio::test]
    async fn a_tag_token_never_matches() {
        let store = MemoryBackend::new();
        let (_, mut hlc) = clock(1_000);
        store
            .put(&coll("c"), &Write::create(record(&mut hlc, "a", 1)))
            .await
            .unwrap();
        let outcome = store
            .put(
                &coll("c"),
                &Write::replace(record(&mut hlc, "a", 2), Token::Tag("1".to_owned())),
            )
            .await
            .unwrap();
        assert_eq!(outcome, WriteOutcome::Conflict);
        assert_eq!(
            store
                .get(&coll("c"), &rid("a"))
                .await
                .unwrap()
                .unwrap()
                .record
                .get(&coll("n")),
            Some(json!(1))
        );
    }

    #[tokio::test]
    async fn clones_share_data_but_close_alone() {
        let store = MemoryBackend::default();
        let other = store.clone();
        let (_, mut hlc) = clock(1_000);
        store
            .put(&coll("c"), &Write::create(record(&mut hlc, "a", 1)))
            .await
            .unwrap();
        assert!(other.get(&coll("c"), &rid("a")).await.unwrap().is_some());

        other.close().await.unwrap();
        assert!(matches!(
            other.get(&coll("c"), &rid("a")).await,
            Err(Error::Closed { .. })
        ));
        // Closing twice is harmless.
        other.close().await.unwrap();
        // A clone of a closed handle is closed too; the original stays open.
        assert!(matches!(
            other.clone().get_all(&coll("c")).await,
            Err(Error::Closed { .. })
        ));
        assert!(store.get(&coll("c"), &rid("a")).await.unwrap().is_some());
        assert!(store
            .clone()
            .get(&coll("c"), &rid("a"))
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn newest_stamp_is_exact_and_never_goes_back() {
        let store = MemoryBackend::new();
        assert_eq!(store.newest_stamp().await.unwrap(), None);
        let (time, mut hlc) = clock(5_000);
        let late = record(&mut hlc, "late", 1);
        store
            .put(&coll("c"), &Write::create(late.clone()))
            .await
            .unwrap();
        assert_eq!(
            store.newest_stamp().await.unwrap().as_ref(),
            Some(late.newest_stamp())
        );

        // An older record arriving by sync does not move it back.
        time.set(1_000);
        let (_, mut old_clock) = clock(1_000);
        store
            .put(&coll("d"), &Write::create(record(&mut old_clock, "old", 1)))
            .await
            .unwrap();
        assert_eq!(
            store.newest_stamp().await.unwrap().as_ref(),
            Some(late.newest_stamp())
        );

        // A conflicting write is not stored, so its stamp does not count.
        let (_, mut future_clock) = clock(9_000);
        let lost = store
            .put(
                &coll("c"),
                &Write::create(record(&mut future_clock, "late", 2)),
            )
            .await
            .unwrap();
        assert_eq!(lost, WriteOutcome::Conflict);
        assert_eq!(
            store.newest_stamp().await.unwrap().as_ref(),
            Some(late.newest_stamp())
        );

        // Deleting keeps it: a clock seeded from it must not move backwards.
        store.delete(&coll("c"), &rid("late")).await.unwrap();
        assert_eq!(
            store.newest_stamp().await.unwrap().as_ref(),
            Some(late.newest_stamp())
        );
    }

    #[tokio::test]
    async fn sequences_continue_after_a_clear() {
        let store = MemoryBackend::new();
        let (_, mut hlc) = clock(1_000);
        for id in ["a", "b", "c"] {
            store
                .put(&coll("c"), &Write::create(record(&mut hlc, id, 1)))
                .await
                .unwrap();
        }
        store.clear_collection(&coll("c")).await.unwrap();
        let outcome = store
            .put(&coll("c"), &Write::create(record(&mut hlc, "a", 2)))
            .await
            .unwrap();
        assert!(
            matches!(outcome, WriteOutcome::Written { cursor, .. } if cursor == Cursor::new(4))
        );
        let page = store
            .changes(&coll("c"), Cursor::new(3), NonZeroUsize::new(10).unwrap())
            .await
            .unwrap();
        assert_eq!(page.changes.len(), 1);
        assert_indexes_agree(&store);
    }

    #[tokio::test]
    async fn indexes_stay_consistent_through_updates_deletes_and_clears() {
        let store = MemoryBackend::new();
        let (time, mut hlc) = clock(1_000);
        for round in 0..5u64 {
            let mut writes = Vec::new();
            for i in 0..20u64 {
                let id = format!("r{i}");
                let mut rec = match store.get(&coll("c"), &rid(&id)).await.unwrap() {
                    Some(stored) => {
                        let mut rec = stored.record;
                        let content = Content::from_value(json!({"id": id, "n": round})).unwrap();
                        rec.apply_put(content, &hlc.now().unwrap()).unwrap();
                        writes.push(Write::replace(rec, stored.token));
                        continue;
                    }
                    None => record(&mut hlc, &id, round),
                };
                // Some records arrive "by sync" with old stamps.
                if i % 3 == 0 {
                    let (_, mut old) = clock(10 + i);
                    rec = record(&mut old, &id, round);
                }
                writes.push(Write::create(rec));
            }
            let outcomes = store.put_batch(&coll("c"), &writes).await.unwrap();
            assert!(outcomes
                .iter()
                .all(|o| matches!(o, WriteOutcome::Written { .. })));
            for i in (0..20u64).step_by(4 + round as usize) {
                store
                    .delete(&coll("c"), &rid(&format!("r{i}")))
                    .await
                    .unwrap();
            }
            time.advance(7);
            assert_indexes_agree(&store);
        }
        store.clear_collection(&coll("c")).await.unwrap();
        assert_indexes_agree(&store);
        assert!(store.list_collections().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_feed_reads_across_log_chunks() {
        let store = MemoryBackend::new();
        let (_, mut hlc) = clock(1_000);
        let total = 2 * Log::CHUNK as u64 + 10;
        let writes: Vec<Write> = (0..total)
            .map(|i| Write::create(record(&mut hlc, &format!("r{i}"), i)))
            .collect();
        store.put_batch(&coll("c"), &writes).await.unwrap();
        let chunk = Log::CHUNK as u64;
        for after in [
            0,
            1,
            chunk - 1,
            chunk,
            chunk + 1,
            2 * chunk,
            total - 1,
            total,
        ] {
            let page = store
                .changes(
                    &coll("c"),
                    Cursor::new(after),
                    NonZeroUsize::new(3).unwrap(),
                )
                .await
                .unwrap();
            let cursors: Vec<u64> = page.changes.iter().map(|c| c.cursor.get()).collect();
            let expected: Vec<u64> = (after + 1..=total).take(3).collect();
            assert_eq!(cursors, expected, "after {after}");
            assert_eq!(page.more, after + 3 < total, "after {after}");
        }
        // Rewrites leave stale entries in every chunk; compaction drops them.
        for round in 0..3u64 {
            let writes: Vec<Write> = (0..total)
                .step_by(2)
                .map(|i| {
                    let id = format!("r{i}");
                    let token = Token::Sequence(
                        store
                            .state
                            .lock()
                            .collections
                            .get(&coll("c"))
                            .and_then(|c| c.records.get(&id).map(|s| s.sequence))
                            .unwrap(),
                    );
                    Write::replace(record(&mut hlc, &id, round), token)
                })
                .collect();
            store.put_batch(&coll("c"), &writes).await.unwrap();
            assert_indexes_agree(&store);
        }
        let page = store
            .changes(
                &coll("c"),
                Cursor::START,
                NonZeroUsize::new(100_000).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(page.changes.len() as u64, total);
        assert!(page.changes.windows(2).all(|w| w[0].cursor < w[1].cursor));
    }

    #[tokio::test]
    async fn a_panic_while_holding_the_lock_leaves_the_store_usable() {
        let store = MemoryBackend::new();
        let (_, mut hlc) = clock(1_000);
        store
            .put(&coll("c"), &Write::create(record(&mut hlc, "a", 1)))
            .await
            .unwrap();
        let shared = Arc::clone(&store.state);
        let panicker = std::thread::spawn(move || {
            let _guard = shared.lock();
            panic!("panic while holding the lock, on purpose");
        });
        assert!(panicker.join().is_err());
        assert!(store.get(&coll("c"), &rid("a")).await.unwrap().is_some());
        store
            .put(&coll("c"), &Write::create(record(&mut hlc, "b", 1)))
            .await
            .unwrap();
        assert_eq!(store.get_all(&coll("c")).await.unwrap().len(), 2);
    }

    #[test]
    fn debug_does_not_print_the_data() {
        let text = format!("{:?}", MemoryBackend::new());
        assert_eq!(text, "MemoryBackend { closed: false, .. }");
    }

    /// One step of [`prop_the_feed_pages_each_latest_change_once`].
    #[derive(Debug, Clone)]
    enum FeedStep {
        Write(u8),
        Delete(u8),
        Clear,
        Page(usize),
    }

    /// Mostly rewrites of a dozen records, so that the log passes its
    /// compaction threshold within a case; a clear once in some cases.
    fn feed_steps() -> impl proptest::strategy::Strategy<Value = Vec<FeedStep>> {
        use proptest::prelude::*;
        let step = prop_oneof![
            1000 => (0u8..12).prop_map(FeedStep::Write),
            100 => (0u8..12).prop_map(FeedStep::Delete),
            1 => Just(FeedStep::Clear),
            250 => (1usize..6).prop_map(FeedStep::Page),
        ];
        proptest::collection::vec(step, 1_200..1_600)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// A reader paging the feed between writes, deletes and clears
        /// (past the log's compaction) is handed, page by page, every live
        /// record whose latest write lies beyond its cursor, once, at that
        /// write's cursor, in cursor order, and is never sent back.
        #[test]
        fn prop_the_feed_pages_each_latest_change_once(steps in feed_steps()) {
            use proptest::prelude::*;
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let store = MemoryBackend::new();
                let c = coll("c");
                let (_, mut hlc) = clock(1_000);
                // Live records by id: their latest write's cursor and state.
                let mut live: HashMap<String, (Cursor, Record)> = HashMap::new();
                let mut reader = Cursor::START;
                for (n, step) in steps.into_iter().enumerate() {
                    match step {
                        FeedStep::Write(id) => {
                            let id = format!("r{id}");
                            let state = record(&mut hlc, &id, n as u64);
                            let write = match live.get(&id) {
                                Some((cursor, _)) => {
                                    Write::replace(state.clone(), Token::Sequence(cursor.get()))
                                }
                                None => Write::create(state.clone()),
                            };
                            let outcome = store.put(&c, &write).await.unwrap();
                            let WriteOutcome::Written { cursor, .. } = outcome else {
                                return Err(TestCaseError::fail(format!("{outcome:?}")));
                            };
                            live.insert(id, (cursor, state));
                        }
                        FeedStep::Delete(id) => {
                            let id = format!("r{id}");
                            let deleted = store.delete(&c, &rid(&id)).await.unwrap();
                            prop_assert_eq!(deleted, live.remove(&id).is_some());
                        }
                        FeedStep::Clear => {
                            store.clear_collection(&c).await.unwrap();
                            live.clear();
                        }
                        FeedStep::Page(limit) => {
                            let page = store
                                .changes(&c, reader, NonZeroUsize::new(limit).unwrap())
                                .await
                                .unwrap();
                            prop_assert!(page.changes.len() <= limit);
                            let mut previous = reader;
                            for change in &page.changes {
                                prop_assert!(change.cursor > previous, "{change:?} after {previous}");
                                previous = change.cursor;
                                let latest = live.get(change.record.id().as_str());
                                prop_assert_eq!(latest, Some(&(change.cursor, change.record.clone())));
                            }
                            prop_assert!(page.next >= previous);
                            // Nothing live within the page's reach is left out,
                            // and nothing lies beyond a last page.
                            for (id, (cursor, _)) in &live {
                                if *cursor > reader && *cursor <= page.next {
                                    prop_assert!(
                                        page.changes.iter().any(|change| change.cursor == *cursor),
                                        "{id} at {cursor} skipped by a page after {reader} to {}",
                                        page.next
                                    );
                                }
                                prop_assert!(page.more || *cursor <= page.next);
                            }
                            prop_assert!(!page.more || page.next > reader);
                            reader = page.next;
                        }
                    }
                }
                assert_indexes_agree(&store);
                Ok(())
            })?;
        }
    }
}
