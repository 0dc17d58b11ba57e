//! Records, metadata and collections: everything but the change feed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectMeta;
use parking_lot::Mutex;
use syncforge_core::{
    remember_collection_hint, CollectionName, Cursor, Error, Record, RecordId, Result, Stamp,
    Stored, Token,
};

use crate::config::StoreOptions;
use crate::feed::RecentEntries;
use crate::format::{self, Meta, Name, Newest, RecordBody, Segment, MARKER_SIZE};
use crate::io::{same_etag, Condition, Io, Put};
use crate::keys::{CollectionKeys, Keys, SegmentName};
use crate::BACKEND_NAME;

/// How often a read-then-write loop on one object may lose its race before
/// giving up with [`Error::Unavailable`] (each lost race is another
/// writer's success, so this only trips under extreme contention).
pub(crate) const MAX_RACES: usize = 64;

/// Races a loop may lose in a row and still retry at once: one re-read is
/// enough against a single other writer, and a claim whose cached feed head
/// is stale loses twice (the number after it, then the next) before it
/// lists where the feed ends, with no crowd to wait out.
const FREE_RETRIES: usize = 2;

/// The longest wait after the first race lost beyond [`FREE_RETRIES`]; each
/// later loss doubles it, up to [`MAX_BACKOFF`]. The grain of Tokio's timer,
/// and about one write's time on a local directory: such a writer steps
/// aside for about one other write.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);

/// The longest wait between two attempts. Only a writer that lost a dozen
/// races in a row waits this long, and it must wait as long as the crowd
/// ahead of it takes. 32 writers claiming entries of one local directory
/// on a loaded two-core machine: with a cap of 32 ms some still lost all 64
/// claims in a row, with 512 ms up to 53, with 1 s at most 39. Losing all
/// [`MAX_RACES`] attempts thus takes under a minute of waiting (half that
/// on average) before [`Error::Unavailable`].
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The races one read-then-write loop has lost, and the waits between its
/// attempts. A loser that retried at once met the same crowd again: under
/// load one writer lost all [`MAX_RACES`] claims of a feed entry in a row.
/// Waiting a random time under a growing bound spreads the crowd out, while
/// the uncontended path (no race lost) and the first retries never wait.
#[derive(Debug, Default)]
pub(crate) struct Races {
    /// Races lost so far: every attempt but the one running now.
    lost: usize,
    /// The runtime was found without timers: asking again would panic
    /// (and print the panic) once more for every later loss.
    timerless: bool,
}

impl Races {
    /// Counts one more race lost on `path` and waits before the next attempt;
    /// after [`MAX_RACES`] attempts, all lost, gives up instead.
    pub(crate) async fn lost(&mut self, path: &Path) -> Result<()> {
        self.lost += 1;
        if self.lost >= MAX_RACES {
            return Err(kept_changing(path));
        }
        let bound = backoff_bound(self.lost);
        // Outside a Tokio runtime (LocalDirectory works there too) there is
        // no timer to wait on: retry at once, as every loser did before.
        if bound.is_zero() || tokio::runtime::Handle::try_current().is_err() {
            return Ok(());
        }
        let wait = jittered(bound);
        let timer = if self.timerless { None } else { sleep(wait) };
        match timer {
            Some(timer) => timer.await,
            // A runtime built without `enable_time` (the engine runs on
            // those): no wait is possible, but yielding still lets the tasks
            // ahead of this one on the runtime run first.
            None => {
                self.timerless = true;
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }

    /// How many races were lost so far.
    pub(crate) fn count(&self) -> usize {
        self.lost
    }
}

/// The bound on the wait after `lost` races lost in a row: none for the
/// first [`FREE_RETRIES`], then [`FIRST_BACKOFF`] doubling up to
/// [`MAX_BACKOFF`].
fn backoff_bound(lost: usize) -> Duration {
    let Some(doublings) = lost.checked_sub(FREE_RETRIES + 1) else {
        return Duration::ZERO;
    };
    let factor = u32::try_from(doublings)
        .ok()
        .and_then(|doublings| 1u32.checked_shl(doublings))
        .unwrap_or(u32::MAX);
    FIRST_BACKOFF
        .checked_mul(factor)
        .map_or(MAX_BACKOFF, |delay| delay.min(MAX_BACKOFF))
}

/// A sleep of `wait`, or `None` on a Tokio runtime built without timers,
/// where making one panics: Tokio has no way to ask beforehand (the engine's
/// retries do the same).
fn sleep(wait: Duration) -> Option<tokio::time::Sleep> {
    std::panic::catch_unwind(|| tokio::time::sleep(wait)).ok()
}

/// A wait drawn uniformly from zero to `bound` ("full jitter"): losers that
/// lost to the same writer at the same moment come back at different times.
fn jittered(bound: Duration) -> Duration {
    let micros = u64::try_from(bound.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(fastrand::u64(0..=micros))
}

/// Keys per listing request on S3.
pub(crate) const LIST_PAGE: usize = 1000;

/// What a record object holds now.
#[derive(Debug, Clone)]
pub(crate) enum State {
    /// No object: the record was never written.
    Absent,
    /// A hard delete's marker: reads as absent.
    Marker { etag: String },
    /// A record, written by the feed item at `seq`, over the states
    /// written at `before` (newest first, as many as the object names).
    Record {
        etag: String,
        seq: Cursor,
        record: Record,
        before: Vec<Cursor>,
    },
}

impl State {
    pub(crate) fn etag(&self) -> Option<&str> {
        match self {
            State::Absent => None,
            State::Marker { etag } | State::Record { etag, .. } => Some(etag),
        }
    }

    pub(crate) fn seq(&self) -> Option<Cursor> {
        match self {
            State::Record { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// The cursors of this state and of those before it, newest first: what
    /// a write over it names as the states it replaced.
    pub(crate) fn history(&self) -> Vec<Cursor> {
        match self {
            State::Record { seq, before, .. } => history(*seq, before),
            State::Absent | State::Marker { .. } => Vec::new(),
        }
    }

    /// The token of this state, as [`stored`] hands it out.
    pub(crate) fn token(&self) -> Option<String> {
        self.etag().map(|etag| token(etag, &self.history()))
    }
}

/// The cursors of a state written at `seq` over the states at `before`,
/// and of those, newest first, as many as a record object names.
pub(crate) fn history(seq: Cursor, before: &[Cursor]) -> Vec<Cursor> {
    std::iter::once(seq)
        .chain(before.iter().copied())
        .take(format::KEPT_BEFORE)
        .collect()
}

/// A record token as this store hands it out: the cursors of the state it
/// names and of the states before it (newest first, comma-separated), `/`,
/// and the object's ETag. A write made with it names those states as the
/// ones it replaced ([`RecordBody::before`]), so that the history travels
/// from state to state though the first attempt of a write is made blind.
pub(crate) fn token(etag: &str, history: &[Cursor]) -> String {
    let cursors: Vec<String> = history
        .iter()
        .take(format::KEPT_BEFORE)
        .map(|at| at.get().to_string())
        .collect();
    format!("{}/{etag}", cursors.join(","))
}

/// What a token names (see [`token`]): the ETag, and the cursors of its
/// state and those before it. A token without the cursors (an item a
/// writer of an earlier version wrote into the feed) is its ETag alone.
pub(crate) fn expected(token: &str) -> (&str, Vec<Cursor>) {
    if let Some((cursors, etag)) = token.split_once('/') {
        let history: Option<Vec<Cursor>> = cursors
            .split(',')
            .filter(|text| !text.is_empty())
            .map(|text| text.parse().ok().map(Cursor::new))
            .take(format::KEPT_BEFORE)
            .collect();
        if let Some(history) = history {
            return (etag, history);
        }
    }
    (token, Vec::new())
}

/// One handle's view of a store: the object store, the key layout, and
/// what this handle remembers to save requests (per collection, for a
/// bounded number of them: [`remember_collection_hint`]; a collection
/// whose hints were dropped costs its next write a listing of its feed's
/// end, a read of its newest-stamp object and a create of its name object
/// that finds it there).
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) io: Io,
    pub(crate) keys: Keys,
    pub(crate) options: StoreOptions,
    /// The highest feed entry number this handle knows of, per collection.
    pub(crate) heads: Mutex<HashMap<CollectionName, u64>>,
    /// The newest-stamp object as this handle last saw or wrote it.
    pub(crate) newest: Mutex<HashMap<CollectionName, (Stamp, String)>>,
    /// Hashed collections whose `name` object this handle has written.
    named: Mutex<HashMap<CollectionName, ()>>,
    /// The segment this handle read last, by its key: a segment is never
    /// rewritten under its key, and a reader behind the horizon reads it
    /// once for all its pages instead of once a page.
    pub(crate) last_segment: Mutex<Option<(Path, Arc<Segment>)>>,
    /// The feed entries this handle read last (see [`RecentEntries`]).
    pub(crate) recent_entries: Mutex<RecentEntries>,
    closed: AtomicBool,
}

impl Store {
    pub(crate) fn new(io: Io, keys: Keys, options: StoreOptions) -> Self {
        Store {
            io,
            keys,
            options,
            heads: Mutex::new(HashMap::new()),
            newest: Mutex::new(HashMap::new()),
            named: Mutex::new(HashMap::new()),
            last_segment: Mutex::new(None),
            recent_entries: Mutex::new(RecentEntries::default()),
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed {
                what: "S3 backend handle",
            })
        } else {
            Ok(())
        }
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.options.max_in_flight.get()
    }

    /// Reads the record object at `path` (of collection `collection`).
    pub(crate) async fn read_at(&self, collection: &str, path: &Path) -> Result<State> {
        let Some(fetched) = self.io.get(path).await? else {
            return Ok(State::Absent);
        };
        let body: RecordBody = format::parse(&fetched.body, collection, path)?;
        match body {
            RecordBody {
                seq: Some(seq),
                record: Some(record),
                void: None,
                before,
            } => Ok(State::Record {
                etag: fetched.etag,
                seq,
                record,
                before,
            }),
            RecordBody {
                seq: None,
                record: None,
                void: Some(_),
                before,
            } if before.is_empty() => Ok(State::Marker { etag: fetched.etag }),
            _ => Err(Error::Corrupt {
                backend: BACKEND_NAME,
                collection: collection.to_owned(),
                id: None,
                location: path.to_string(),
                reason: "neither a record with its cursor nor a delete marker".to_owned(),
            }),
        }
    }

    /// Reads record `id`, checking the object holds that id (a hashed key
    /// could, astronomically rarely, be shared).
    pub(crate) async fn read(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        id: &RecordId,
    ) -> Result<State> {
        let path = keys.record(id);
        let state = self.read_at(collection, &path).await?;
        if let State::Record { record, .. } = &state {
            if record.id() != id {
                return Err(misplaced(collection, id, &path, record.id()));
            }
        }
        Ok(state)
    }

    pub(crate) async fn get(
        &self,
        collection: &CollectionName,
        id: &RecordId,
    ) -> Result<Option<Stored>> {
        let keys = self.keys.collection(collection);
        Ok(stored(self.read(collection, &keys, id).await?))
    }

    /// One listing tells which of the ids exist when they lie close together
    /// (a sync into a new or small collection); the records found, and ids
    /// the listing did not reach, are read one request each, concurrently.
    /// A local directory reads each id at once: its listing walks and sorts
    /// the whole folder of records, whatever the page asked for, so a batch
    /// of a few changes cost as much as the collection's size.
    pub(crate) async fn get_many(
        &self,
        collection: &CollectionName,
        ids: &[RecordId],
    ) -> Result<Vec<Option<Stored>>> {
        let keys = self.keys.collection(collection);
        let paths: Vec<Path> = ids.iter().map(|id| keys.record(id)).collect();
        // What the listing says, for the paths it covers: Some(true) = a record
        // to read, Some(false) = nothing or a marker, None = not covered.
        let mut known: HashMap<&Path, bool> = HashMap::new();
        if ids.len() > 2 && !self.keys.local() {
            if let Some(smallest) = paths.iter().min() {
                let text = smallest.as_ref();
                // Exclusive offset just below the smallest key.
                let offset = Path::from(&text[..text.len().saturating_sub(1)]);
                let listed = self
                    .io
                    .list(&keys.records(), Some(&offset), Some(LIST_PAGE))
                    .await?;
                let complete = listed.len() < LIST_PAGE;
                let by_path: HashMap<&Path, &ObjectMeta> =
                    listed.iter().map(|meta| (&meta.location, meta)).collect();
                let last = listed.last().map(|meta| meta.location.clone());
                for path in &paths {
                    let covered = complete || last.as_ref().is_some_and(|last| path <= last);
                    if covered {
                        let live = by_path.get(path).is_some_and(|m| m.size != MARKER_SIZE);
                        known.insert(path, live);
                    }
                }
            }
        }
        let keys = &keys;
        let reads: Vec<_> = ids
            .iter()
            .zip(&paths)
            .map(|(id, path)| {
                let skip = known.get(path) == Some(&false);
                async move {
                    if skip {
                        Ok(None)
                    } else {
                        self.read(collection, keys, id).await.map(stored)
                    }
                }
            })
            .collect();
        futures::stream::iter(reads)
            .buffered(self.in_flight())
            .try_collect()
            .await
    }

    /// Every record: one listing, then the records read concurrently.
    pub(crate) async fn get_all(&self, collection: &CollectionName) -> Result<Vec<Record>> {
        let keys = self.keys.collection(collection);
        let listed = self.io.list(&keys.records(), None, None).await?;
        let keys = &keys;
        let reads = listed
            .into_iter()
            .filter(|meta| meta.size != MARKER_SIZE && keys.holds_record_at(&meta.location))
            .map(|meta| async move {
                let state = self.read_at(collection, &meta.location).await?;
                match state {
                    // An object copied or renamed by hand holds another key's
                    // record: as `read` finds it, corrupt, never a second copy.
                    State::Record { record, .. } if keys.record(record.id()) != meta.location => {
                        Err(misplaced(
                            collection,
                            record.id(),
                            &meta.location,
                            record.id(),
                        ))
                    }
                    State::Record { record, .. } => Ok(Some(record)),
                    _ => Ok(None),
                }
            });
        let records: Vec<Option<Record>> = futures::stream::iter(reads)
            .buffer_unordered(self.in_flight())
            .try_collect()
            .await?;
        Ok(records.into_iter().flatten().collect())
    }

    /// Replaces a record by a marker; whether there was a record when the
    /// call began.
    pub(crate) async fn delete(&self, collection: &CollectionName, id: &RecordId) -> Result<bool> {
        let keys = self.keys.collection(collection);
        let path = keys.record(id);
        let mut races = Races::default();
        // Whether the record existed when the call began: a marker found
        // after a record was seen is this call's own (its put landed, was
        // sent again and refused) or a concurrent delete's.
        let mut existed = false;
        // The marker this call tried to put a fresh one over, if it did: a
        // put refused (or given up as lost) without writing finds it again,
        // and tries again.
        let mut over: Option<String> = None;
        // Whether this call has tried to put a marker where there was none
        // or a record: a marker found after that is its own (sent again and
        // refused, as above) or another delete's, and either way the state
        // the call began on is gone, with any create still pending in the
        // feed that expected it.
        let mut tried = false;
        loop {
            match self.read(collection, &keys, id).await? {
                State::Marker { .. } if tried => return Ok(existed),
                // A fresh marker over the one found: a create whose entry
                // expects that marker (its writer told it failed) is void
                // then, as over nothing (below). A marker other than the
                // one this call tried to replace is another's fresh one.
                State::Marker { etag } => {
                    if over.as_ref().is_some_and(|tried| !same_etag(tried, &etag)) {
                        return Ok(existed);
                    }
                    if let Put::Done(_) = self.put_marker(&path, Condition::Tag(&etag)).await? {
                        return Ok(existed);
                    }
                    over = Some(etag);
                }
                // A marker even where there is nothing: a create whose
                // writer was told it failed may still be pending in the
                // feed, and a reader would complete it after this delete,
                // bringing the record back. A marker voids it.
                State::Absent => {
                    tried = true;
                    match self.put_marker(&path, Condition::Absent).await {
                        // A key the store cannot hold holds no record either.
                        Err(error) if crate::io::names_a_key_too_long(&error) => {
                            return Ok(existed)
                        }
                        Err(error) => return Err(error),
                        Ok(Put::Done(_)) => return Ok(existed),
                        Ok(Put::Lost) => {}
                    }
                }
                State::Record { etag, .. } => {
                    existed = true;
                    tried = true;
                    if let Put::Done(_) = self.put_marker(&path, Condition::Tag(&etag)).await? {
                        return Ok(true);
                    }
                }
            }
            races.lost(&path).await?;
        }
    }

    /// Puts a marker, what stands where a record was deleted, at `path`
    /// if `condition` holds.
    async fn put_marker(&self, path: &Path, condition: Condition<'_>) -> Result<Put> {
        let body = format::to_bytes(&RecordBody::marker())?;
        self.io.put(path, body, condition).await
    }

    /// Replaces every record by a marker, concurrently. The feed's numbering
    /// goes on (entries and horizon stay).
    ///
    /// The feed's pending writes are settled first: a create whose writer
    /// was told it failed (of a record never written, or over a marker)
    /// would otherwise be completed by a later reader, and its record come
    /// back after the clear. Settled, it is a record, marked below.
    pub(crate) async fn clear(&self, collection: &CollectionName) -> Result<()> {
        self.settle_pending(collection).await?;
        let keys = self.keys.collection(collection);
        let listed = self.io.list(&keys.records(), None, None).await?;
        let marks = listed
            .into_iter()
            .filter(|meta| meta.size != MARKER_SIZE && keys.holds_record_at(&meta.location))
            .map(|meta| async move {
                let mut etag = meta.e_tag.clone();
                let mut races = Races::default();
                loop {
                    let current = match etag.take() {
                        Some(etag) => etag,
                        None => match self.read_at(collection, &meta.location).await? {
                            State::Record { etag, .. } => etag,
                            State::Absent | State::Marker { .. } => return Ok(()),
                        },
                    };
                    if let Put::Done(_) = self
                        .put_marker(&meta.location, Condition::Tag(&current))
                        .await?
                    {
                        return Ok(());
                    }
                    races.lost(&meta.location).await?;
                }
            });
        futures::stream::iter(marks)
            .buffer_unordered(self.in_flight())
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Collections holding at least one record (markers do not count).
    pub(crate) async fn list_collections(&self) -> Result<Vec<CollectionName>> {
        let dirs = self.io.list_dirs(&self.keys.collections()).await?;
        let checks = dirs.into_iter().map(|dir| async move {
            let Some(segment) = dir.filename().map(str::to_owned) else {
                return Ok(None);
            };
            let keys = self.keys.collection_at(&segment);
            if !self.holds_records(&keys).await? {
                return Ok(None);
            }
            match Keys::collection_name(&segment) {
                Some(SegmentName::Plain(name)) => Ok(Some(name)),
                Some(SegmentName::Hashed) => self.read_name(&keys).await,
                // Not a directory this backend made: not a collection.
                None => Ok(None),
            }
        });
        let names: Vec<Option<CollectionName>> = futures::stream::iter(checks)
            .buffer_unordered(self.in_flight())
            .try_collect()
            .await?;
        let mut names: Vec<CollectionName> = names.into_iter().flatten().collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn holds_records(&self, keys: &CollectionKeys) -> Result<bool> {
        let dir = keys.records();
        let mut offset: Option<Path> = None;
        loop {
            let page = self.io.list(&dir, offset.as_ref(), Some(LIST_PAGE)).await?;
            if page
                .iter()
                .any(|meta| meta.size != MARKER_SIZE && keys.holds_record_at(&meta.location))
            {
                return Ok(true);
            }
            if page.len() < LIST_PAGE {
                return Ok(false);
            }
            offset = page.last().map(|meta| meta.location.clone());
        }
    }

    async fn read_name(&self, keys: &CollectionKeys) -> Result<Option<CollectionName>> {
        let path = keys.name();
        match self.io.get(&path).await? {
            Some(fetched) => {
                let name: Name = format::parse(&fetched.body, keys.collection(), &path)?;
                Ok(Some(name.name))
            }
            None => Ok(None),
        }
    }

    /// Writes the `name` object of a hashed collection, once per handle.
    pub(crate) async fn ensure_named(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
    ) -> Result<()> {
        if !keys.is_hashed() || self.named.lock().contains_key(collection) {
            return Ok(());
        }
        let body = format::to_bytes(&Name {
            name: collection.clone(),
        })?;
        let path = keys.name();
        let mut races = Races::default();
        // Already there is as good as written: the hash names one
        // collection. A refused create is read back: S3 refuses a create
        // that races another request on the key (409) even when that one
        // fails too, and a name taken as written and never there left the
        // collection out of every listing.
        while let Put::Lost = self.io.put(&path, body.clone(), Condition::Absent).await? {
            if self.io.get(&path).await?.is_some() {
                break;
            }
            races.lost(&path).await?;
        }
        remember_collection_hint(&mut self.named.lock(), collection, ());
        Ok(())
    }

    /// Reads the newest-stamp object of a collection.
    pub(crate) async fn read_newest(
        &self,
        keys: &CollectionKeys,
    ) -> Result<Option<(Stamp, String)>> {
        let path = keys.newest();
        match self.io.get(&path).await? {
            Some(fetched) => {
                let newest: Newest = format::parse(&fetched.body, keys.collection(), &path)?;
                Ok(Some((newest.stamp, fetched.etag)))
            }
            None => Ok(None),
        }
    }

    /// Raises the collection's newest-stamp object to at least `stamp`,
    /// before any record carrying it is committed, so it is never behind an
    /// acknowledged write. Costs nothing when this handle already knows a
    /// stamp at least as new, one request when its copy is current.
    pub(crate) async fn raise_newest(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        stamp: &Stamp,
    ) -> Result<()> {
        let mut known = self.newest.lock().get(collection).cloned();
        let path = keys.newest();
        let mut races = Races::default();
        loop {
            if let Some((stored, etag)) = &known {
                if stored >= stamp {
                    let known = (stored.clone(), etag.clone());
                    remember_collection_hint(&mut self.newest.lock(), collection, known);
                    return Ok(());
                }
            }
            let body = format::to_bytes(&Newest {
                stamp: stamp.clone(),
            })?;
            let condition = match &known {
                Some((_, etag)) => Condition::Tag(etag),
                None => Condition::Absent,
            };
            match self.io.put(&path, body, condition).await? {
                Put::Done(etag) => {
                    remember_collection_hint(
                        &mut self.newest.lock(),
                        collection,
                        (stamp.clone(), etag),
                    );
                    return Ok(());
                }
                Put::Lost => {
                    races.lost(&path).await?;
                    known = self.read_newest(keys).await?;
                }
            }
        }
    }

    /// The newest stamp of every collection: one listing and one small read
    /// per collection; no record is read.
    pub(crate) async fn newest_stamp(&self) -> Result<Option<Stamp>> {
        let dirs = self.io.list_dirs(&self.keys.collections()).await?;
        let reads = dirs.into_iter().filter_map(|dir| {
            let segment = dir.filename()?.to_owned();
            Some(async move {
                let keys = self.keys.collection_at(&segment);
                self.read_newest(&keys).await
            })
        });
        let all: Vec<Option<(Stamp, String)>> = futures::stream::iter(reads)
            .buffer_unordered(self.in_flight())
            .try_collect()
            .await?;
        Ok(all.into_iter().flatten().map(|(stamp, _)| stamp).max())
    }

    pub(crate) async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        let mut path = self.keys.meta(key);
        let mut fetched = self.io.get(&path).await?;
        if fetched.is_none() {
            if let Some(local) = self.keys.meta_of_local_files(key) {
                fetched = self.io.get(&local).await?;
                path = local;
            }
        }
        let Some(fetched) = fetched else {
            return Ok(None);
        };
        let meta: Meta = format::parse(&fetched.body, "(metadata)", &path)?;
        if meta.key != key {
            return Err(Error::Corrupt {
                backend: BACKEND_NAME,
                collection: "(metadata)".to_owned(),
                id: None,
                location: path.to_string(),
                reason: "holds the value of another key".to_owned(),
            });
        }
        Ok(Some(meta.value))
    }

    pub(crate) async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let body = format::to_bytes(&Meta {
            key: key.to_owned(),
            value: value.to_owned(),
        })?;
        self.io
            .put(&self.keys.meta(key), body, Condition::None)
            .await?;
        Ok(())
    }

    pub(crate) async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<String> {
        // A value a local directory kept under a hash counts as present, as
        // `get_meta` reads it.
        if self.keys.meta_of_local_files(key).is_some() {
            if let Some(kept) = self.get_meta(key).await? {
                return Ok(kept);
            }
        }
        let path = self.keys.meta(key);
        let body = format::to_bytes(&Meta {
            key: key.to_owned(),
            value: value.to_owned(),
        })?;
        let mut races = Races::default();
        loop {
            if let Put::Done(_) = self.io.put(&path, body.clone(), Condition::Absent).await? {
                return Ok(value.to_owned());
            }
            if let Some(kept) = self.get_meta(key).await? {
                return Ok(kept);
            }
            races.lost(&path).await?;
        }
    }
}

/// A record state as the trait returns it.
pub(crate) fn stored(state: State) -> Option<Stored> {
    let token = state.token()?;
    match state {
        State::Record { record, .. } => Some(Stored {
            record,
            token: Token::Tag(token),
        }),
        State::Absent | State::Marker { .. } => None,
    }
}

/// An object that changed under every one of [`MAX_RACES`] attempts.
pub(crate) fn kept_changing(path: &Path) -> Error {
    Error::unavailable(
        BACKEND_NAME,
        format!("{path} changed under each of {MAX_RACES} attempts to write it; try again"),
    )
}

/// The error for the object at `location` holding record `found` where its
/// key names another record; `id` is the record it was read for (by a
/// listing, which names no record, `found` itself).
fn misplaced(
    collection: &CollectionName,
    id: &RecordId,
    location: &Path,
    found: &RecordId,
) -> Error {
    Error::Corrupt {
        backend: BACKEND_NAME,
        collection: collection.to_string(),
        id: Some(id.to_string()),
        location: location.to_string(),
        reason: format!("holds record {:?} instead", found.as_str()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// The first retries cost nothing (a lone loser or a stale feed head is
    /// not worth a wait); after them the bound doubles, and stops growing at
    /// the cap however long the losing streak.
    #[test]
    fn the_bound_is_zero_at_first_then_doubles_up_to_the_cap() {
        let bounds: Vec<Duration> = (1..=14).map(backoff_bound).collect();
        assert_eq!(
            bounds,
            [
                Duration::ZERO,
                Duration::ZERO,
                ms(1),
                ms(2),
                ms(4),
                ms(8),
                ms(16),
                ms(32),
                ms(64),
                ms(128),
                ms(256),
                ms(512),
                ms(1000),
                ms(1000)
            ]
        );
        assert_eq!(backoff_bound(MAX_RACES), MAX_BACKOFF);
        assert_eq!(backoff_bound(usize::MAX), MAX_BACKOFF);
        for lost in 1..200 {
            assert!(backoff_bound(lost + 1) >= backoff_bound(lost), "{lost}");
        }
    }

    /// Waits are spread over the whole range under the bound, so losers of
    /// one race come back at different times.
    #[test]
    fn waits_are_jittered_within_the_bound() {
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
        for bound in [ms(1), ms(8), MAX_BACKOFF] {
            let draws: Vec<Duration> = (0..500).map(|_| jittered(bound)).collect();
            assert!(draws.iter().all(|wait| *wait <= bound), "{bound:?}");
            let distinct: std::collections::HashSet<&Duration> = draws.iter().collect();
            assert!(
                distinct.len() > 100,
                "{bound:?}: {} distinct",
                distinct.len()
            );
            assert!(draws.iter().any(|wait| *wait < bound / 4), "{bound:?}");
            assert!(draws.iter().any(|wait| *wait > bound * 3 / 4), "{bound:?}");
        }
    }

    /// A loop that loses every race retries at once at first, then waits
    /// (in all no more than the bounds add up to, plus the timer's
    /// millisecond rounding of each wait), and gives up at its
    /// [`MAX_RACES`]th lost attempt, without waiting, naming the object.
    #[tokio::test(start_paused = true)]
    async fn a_loop_losing_every_race_waits_then_gives_up() {
        let path = Path::from("dse/c/x/f");
        let mut races = Races::default();
        let start = tokio::time::Instant::now();
        for lost in 1..MAX_RACES {
            races.lost(&path).await.unwrap();
            assert_eq!(races.count(), lost);
            if lost <= FREE_RETRIES {
                assert_eq!(start.elapsed(), Duration::ZERO, "retry {lost} waited");
            }
        }
        let waited = start.elapsed();
        let bounds: Duration = (1..MAX_RACES).map(backoff_bound).sum();
        let rounding = ms(1) * u32::try_from(MAX_RACES).unwrap();
        assert!(waited > bounds / 4, "{waited:?} of at most {bounds:?}");
        assert!(
            waited <= bounds + rounding,
            "{waited:?} of at most {bounds:?}"
        );
        assert!(bounds < Duration::from_secs(60), "{bounds:?}");

        let error = races.lost(&path).await.unwrap_err();
        assert!(matches!(error, Error::Unavailable { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("dse/c/x/f changed under each of 64 attempts to write it"),
            "{error}"
        );
        assert_eq!(start.elapsed(), waited);
    }

    /// A runtime built without timers (no `enable_time`, as the engine
    /// allows) panicked when a loop that lost enough races made its wait:
    /// it yields instead, and still gives up at its [`MAX_RACES`]th loss.
    #[test]
    fn on_a_runtime_without_timers_retries_yield_instead_of_waiting() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let path = Path::from("dse/c/x/f");
        let mut races = Races::default();
        let last = runtime.block_on(async {
            for _ in 1..MAX_RACES {
                races.lost(&path).await.unwrap();
            }
            races.lost(&path).await
        });
        assert_eq!(races.count(), MAX_RACES);
        assert!(matches!(last, Err(Error::Unavailable { .. })), "{last:?}");
    }

    /// A token names its state's cursor and those before it, then the
    /// ETag, which may itself hold a `/` (a weak tag); a bare ETag (from an
    /// item of an earlier version) is read as one with no cursors.
    #[test]
    fn tokens_carry_the_cursors_before_their_etag() {
        let history = [Cursor::new(7 << 20), Cursor::new(3 << 20)];
        for etag in ["\"abc\"", "W/\"abc\"", "12", ""] {
            let text = token(etag, &history);
            assert_eq!(expected(&text), (etag, history.to_vec()), "{text}");
            assert_eq!(expected(&token(etag, &[])), (etag, Vec::new()));
        }
        assert_eq!(expected("W/\"abc\""), ("W/\"abc\"", Vec::new()));
        assert_eq!(expected("12"), ("12", Vec::new()));
    }

    /// Outside a Tokio runtime there is no timer: retries go on at once
    /// (the whole losing streak completes in one poll).
    #[test]
    fn without_a_runtime_retries_do_not_wait() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};

        let path = Path::from("dse/c/x/f");
        let mut races = Races::default();
        let mut streak = std::pin::pin!(async {
            for _ in 1..MAX_RACES {
                races.lost(&path).await?;
            }
            races.lost(&path).await
        });
        let polled = streak
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        assert!(
            matches!(polled, Poll::Ready(Err(Error::Unavailable { .. }))),
            "{polled:?}"
        );
    }
}
