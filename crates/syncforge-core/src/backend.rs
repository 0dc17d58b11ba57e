//! The storage contract every backend implements.
//!
//! Backends store and index; they never merge. The engine reads a record with a
//! [`Token`], merges in core, and writes back *conditionally*: the write only
//! happens if the record still has that token, so two engines sharing one store
//! never lose an update (the loser re-reads and merges again).
//!
//! Every applied write gets a [`Cursor`], strictly increasing per collection,
//! which feeds [`StorageBackend::changes`]: a reader that keeps the cursor of
//! the last change it saw never misses a change, whatever the record's
//! timestamp.

use std::collections::HashMap;
use std::fmt::{self, Debug};
use std::num::NonZeroUsize;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::hlc::Stamp;
use crate::names::{CollectionName, RecordId};
use crate::record::Record;

/// A position in a collection's change feed.
///
/// Every applied write gets a cursor, strictly greater than every cursor
/// handed out before in that collection; a reader keeps the cursor of the
/// last change it saw and asks for what came after. [`Cursor::START`] is
/// before every change. Cursors are opaque positions (not times, not counts)
/// and only comparable within one collection of one store. Serialised as a
/// JSON number; every backend hands out cursors of at most 2^53, so that
/// every JSON reader keeps them exact, though a `Cursor` holds any `u64`.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Cursor(u64);

impl Cursor {
    /// Before every change: reading from here returns the whole feed.
    pub const START: Cursor = Cursor(0);

    /// The largest position a backend hands out: 2^53, the largest integer
    /// every JSON reader keeps exact.
    pub const LARGEST: Cursor = Cursor(1 << 53);

    /// The cursor with this position.
    pub const fn new(position: u64) -> Self {
        Cursor(position)
    }

    /// The position as a number (for storing a cursor).
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({})", self.0)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for Cursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        s.parse().map(Cursor).map_err(|_| Error::InvalidArgument {
            name: "cursor",
            reason: format!(
                "{:?} is not a change-feed cursor (a non-negative integer)",
                crate::error::shorten(s)
            ),
        })
    }
}

/// Identifies the stored state of a record, for conditional writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Token {
    /// The change sequence number of the stored state.
    Sequence(u64),
    /// An opaque version tag (an ETag, a generation number, ...).
    Tag(String),
}

/// A record as stored, with the token to write it back conditionally.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The record.
    pub record: Record,
    /// Its current token.
    pub token: Token,
}

/// One conditional write.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The new state of the record.
    pub record: Record,
    /// What the store must still hold for the write to happen: `None` means the
    /// record must not exist yet, `Some(token)` that it still has that token.
    pub expected: Option<Token>,
}

impl Write {
    /// A write that succeeds only if `record` does not exist yet.
    pub fn create(record: Record) -> Self {
        Write {
            record,
            expected: None,
        }
    }

    /// A write that succeeds only if the record still has `token`.
    pub fn replace(record: Record, token: Token) -> Self {
        Write {
            record,
            expected: Some(token),
        }
    }
}

/// What happened to one conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written; the record now has this token and this position in the
    /// change feed.
    Written {
        /// The new token.
        token: Token,
        /// The feed position assigned to this write.
        cursor: Cursor,
    },
    /// Not written: the record no longer matched the expected state. A
    /// store whose client may send a write again by itself reports the
    /// refusal of such a resend as a failure instead (the first send may
    /// have landed): the engine takes a conflict for a definite "not
    /// written by this call", and leaves the state it finds to the writer
    /// that made it.
    Conflict,
}

/// What [`StorageBackend::insert_if_absent_now`] or
/// [`StorageBackend::insert_if_absent`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum IfAbsent {
    /// The store held no record of that id; it now holds the one built for
    /// it, written as a [`Write::create`] would have been.
    Inserted {
        /// The record written.
        record: Record,
        /// Its token.
        token: Token,
        /// The feed position assigned to the write.
        cursor: Cursor,
    },
    /// The store holds a record of that id: its state. Nothing was written
    /// (nor, by `insert_if_absent_now`, built).
    Present(Stored),
}

/// The record `make` builds for `id`, for a store answering
/// [`StorageBackend::insert_if_absent_now`] or
/// [`StorageBackend::insert_if_absent`]: `make`'s own error as it is, and a
/// record of another id refused with [`Error::Storage`] naming `backend`,
/// since stored under `id` it could never be read again.
pub fn record_to_insert(
    backend: &'static str,
    id: &RecordId,
    make: &mut dyn FnMut() -> Result<Record>,
) -> Result<Record> {
    let record = make()?;
    if record.id() != id {
        return Err(Error::storage(
            backend,
            format!(
                "insert_if_absent for id {:?} was given record {:?}",
                id.as_str(),
                record.id().as_str()
            ),
        ));
    }
    Ok(record)
}

/// The collections a backend handle keeps per-collection hints for at most
/// (see [`remember_collection_hint`]).
pub const CACHED_COLLECTIONS: usize = 4_096;

/// Records `value` for `collection` in one of a backend handle's caches of
/// per-collection hints (what it registered, where a feed ended, ...),
/// which starts afresh once it holds [`CACHED_COLLECTIONS`] others: a
/// process writing ever new collections would otherwise grow it for good.
/// Emptied rather than thinned, since which entries are still in use is
/// unknown; a hint must only save work, each one dropped costing its
/// collection's next call what the hint saved.
pub fn remember_collection_hint<V>(
    cache: &mut HashMap<CollectionName, V>,
    collection: &CollectionName,
    value: V,
) {
    if cache.len() >= CACHED_COLLECTIONS && !cache.contains_key(collection) {
        cache.clear();
    }
    cache.insert(collection.clone(), value);
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The feed position of the record's latest change.
    pub cursor: Cursor,
    /// The record as it is now.
    pub record: Record,
}

/// A page of the change feed.
///
/// Iterating a page by value yields its records, so a page pulled from one
/// replica can be handed to another's `sync` as it is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChangePage {
    /// Changed records, in increasing cursor order; each record at most once,
    /// at its latest change.
    pub changes: Vec<Change>,
    /// The cursor to continue from: the position up to which the feed was
    /// read. That is the cursor of the last change returned, or beyond it
    /// when the backend passed entries that hold no current change (skipped
    /// as unreadable, or superseded), or the cursor asked for when nothing
    /// was read.
    pub next: Cursor,
    /// Whether more changes may lie beyond this page.
    pub more: bool,
}

impl ChangePage {
    /// The page's records, in feed order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = &Record> + '_ {
        self.changes.iter().map(|change| &change.record)
    }

    /// Whether the page holds no change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Number of changes in the page.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Checks a page read after `after` against what every feed keeps to,
    /// and says what is wrong with it otherwise: its changes ascend within
    /// `after..=next`, `next` is not past [`Cursor::LARGEST`], and a page
    /// announcing more moves past `after` (read again from there, it would
    /// come back the same). A page from another replica is input like any
    /// other: one that breaks these would move a reader's cursor backwards,
    /// keep it reading for ever, or leave it stuck past every real position.
    pub fn check_after(&self, after: Cursor) -> std::result::Result<(), String> {
        ChangePage::check_cursors_after(
            after,
            self.changes.iter().map(|change| change.cursor),
            self.next,
            self.more,
        )
    }

    /// [`check_after`](Self::check_after) of a page not yet read whole:
    /// its changes' cursors in order, its `next` and its `more`. A reader
    /// that learns from a page as it reads it (a page limit, a feed it
    /// follows) checks the page first, so that a page it refuses teaches it
    /// nothing.
    pub fn check_cursors_after(
        after: Cursor,
        cursors: impl IntoIterator<Item = Cursor>,
        next: Cursor,
        more: bool,
    ) -> std::result::Result<(), String> {
        let (mut previous, mut count) = (after, 0usize);
        let mut out_of_order = false;
        for cursor in cursors {
            out_of_order |= cursor <= previous || cursor > next;
            previous = cursor;
            count += 1;
        }
        if next < after || out_of_order || (more && next == after) {
            return Err(format!(
                "answered a change page after cursor {after} that does not advance in order \
                 (next {next}, more {more}, {count} changes)"
            ));
        }
        if next > Cursor::LARGEST {
            return Err(format!(
                "answered a change page whose next cursor {next} is past {}, the largest any feed hands out",
                Cursor::LARGEST
            ));
        }
        Ok(())
    }
}

impl IntoIterator for ChangePage {
    type Item = Record;
    type IntoIter = std::iter::Map<std::vec::IntoIter<Change>, fn(Change) -> Record>;

    fn into_iter(self) -> Self::IntoIter {
        self.changes.into_iter().map(|change| change.record)
    }
}

/// Storage for records, organised in named collections.
///
/// Collection names and ids arrive validated ([`CollectionName`],
/// [`RecordId`]); backends must still never interpret them as paths or
/// patterns. Each backend maps its own errors, in one place, into the
/// semantic variants of [`crate::Error`]: [`Unavailable`](Error::Unavailable)
/// for transient failures (the engine retries them),
/// [`Storage`](Error::Storage) for permanent ones, [`Corrupt`](Error::Corrupt)
/// for stored data it cannot read, [`Closed`](Error::Closed) after
/// [`close`](Self::close).
///
/// `Arc<B>` and `Box<B>` of a backend are backends too, so a store can be
/// shared between engines or chosen at run time (`Arc<dyn StorageBackend>`).
#[async_trait]
pub trait StorageBackend: Send + Sync + Debug {
    /// A short name for messages and logs (`"memory"`, `"filesystem"`, ...).
    fn name(&self) -> &'static str;

    /// One record with its token, or `None`.
    async fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<Stored>>;

    /// What [`get`](Self::get) answers, from a store that can answer at once
    /// without waiting on anything (an in-process store); `None` from any
    /// other, whose `get` must then be awaited. A caller reading one record
    /// at a time spares the boxed future of each call this way.
    fn get_now(
        &self,
        _collection: &CollectionName,
        _id: &RecordId,
    ) -> Option<Result<Option<Stored>>> {
        None
    }

    /// Several records at once, in the order of `ids`. Backends should override
    /// this with one round trip where they can.
    async fn get_many(
        &self,
        collection: &CollectionName,
        ids: &[RecordId],
    ) -> Result<Vec<Option<Stored>>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.get(collection, id).await?);
        }
        Ok(out)
    }

    /// Every record of the collection, soft-deleted ones included, in no
    /// particular order.
    async fn get_all(&self, collection: &CollectionName) -> Result<Vec<Record>>;

    /// Applies conditional writes, each on its own: a write whose expectation
    /// fails reports [`WriteOutcome::Conflict`] and the others still happen.
    /// They apply in the order of `writes` (of two creates of one id, the
    /// first is written and the second refused), and outcomes come in that
    /// order. The feed cursors of the writes made rise in that order, with
    /// one leeway: a create of an id a hard [`delete`](Self::delete) left
    /// something of may come after writes of other ids later in the batch
    /// (the S3 store writes it over the delete's marker, in a feed entry
    /// of its own). A reader of the feed misses nothing either way.
    /// An `Err` means the outcome of the batch is unknown (some writes may
    /// have happened); each record is then either old or new, never torn.
    ///
    /// Writes are borrowed so that the caller can retry them after a transient
    /// failure without copying.
    async fn put_batch(
        &self,
        collection: &CollectionName,
        writes: &[Write],
    ) -> Result<Vec<WriteOutcome>>;

    /// One conditional write.
    async fn put(&self, collection: &CollectionName, write: &Write) -> Result<WriteOutcome> {
        let mut outcomes = self
            .put_batch(collection, std::slice::from_ref(write))
            .await?;
        outcomes
            .pop()
            .ok_or_else(|| Error::storage(self.name(), "put_batch returned no outcome for a write"))
    }

    /// What [`put`](Self::put) does and answers, from a store that can do it
    /// at once (see [`get_now`](Self::get_now)); `None` from any other, which
    /// has then written nothing.
    fn put_now(
        &self,
        _collection: &CollectionName,
        _write: &Write,
    ) -> Option<Result<WriteOutcome>> {
        None
    }

    /// Reads record `id` and, if the store holds none, writes the record
    /// `make` builds for it, as one atomic step: no other write of `id` can
    /// come between the read and the write, so this is the conditional write
    /// of a [`Write::create`] whose read came free. From a store that can do
    /// it at once (see [`get_now`](Self::get_now)); `None` from any other,
    /// which has then neither called `make` nor written anything.
    ///
    /// `make` is called at most once, and only when the record is absent; it
    /// must build a record whose id is `id`. If it fails, nothing is written
    /// and its error is returned as it is. A caller that knows no more than
    /// "maybe absent" saves the separate read this way: a put of a new record
    /// is one call instead of a read and a write. A store may call `make`
    /// while it holds its own lock (the memory store does): `make` must not
    /// call the store, which could wait for itself.
    fn insert_if_absent_now(
        &self,
        _collection: &CollectionName,
        _id: &RecordId,
        _make: &mut dyn FnMut() -> Result<Record>,
    ) -> Option<Result<IfAbsent>> {
        None
    }

    /// Writes the record `make` builds for `id` if the store holds no record
    /// of that id, and otherwise writes nothing and answers with the stored
    /// state — both in one round trip, from a store whose server can run the
    /// check and the write as one step. `None` from any other store, which has
    /// then neither called `make` nor written anything: the caller reads the
    /// record and writes a [`Write::create`] instead.
    ///
    /// Unlike [`insert_if_absent_now`](Self::insert_if_absent_now), `make`
    /// may be called before the store knows whether the record exists, and
    /// its record then goes unwritten when one does. `make` is called at
    /// most once and must build a record whose id is `id`; if it fails,
    /// nothing is written and its error is returned as it is. An `Err` from
    /// the store means, as for [`put_batch`](Self::put_batch), that the
    /// record may or may not have been written. A put of a record that is
    /// probably new is one round trip this way instead of two (a read, then
    /// a conditional write).
    async fn insert_if_absent(
        &self,
        _collection: &CollectionName,
        _id: &RecordId,
        _make: &mut (dyn FnMut() -> Result<Record> + Send),
    ) -> Option<Result<IfAbsent>> {
        None
    }

    /// Removes a record for good (no tombstone: it will not sync). Returns
    /// whether it existed.
    async fn delete(&self, collection: &CollectionName, id: &RecordId) -> Result<bool>;

    /// Changes after the cursor `after`, oldest first, at most `limit` of them.
    async fn changes(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage>;

    /// Records whose `_timestamp` is greater than `millis`. Time-based: it can
    /// miss records that arrive later with older stamps; prefer
    /// [`changes`](Self::changes).
    async fn changes_since_timestamp(
        &self,
        collection: &CollectionName,
        millis: u64,
    ) -> Result<Vec<Record>>;

    /// Names of the collections holding at least one record.
    async fn list_collections(&self) -> Result<Vec<CollectionName>>;

    /// Removes every record of one collection (explicit; never done implicitly).
    /// The change feed's numbering goes on: a reader's cursor never skips
    /// records written after a clear.
    async fn clear_collection(&self, collection: &CollectionName) -> Result<()>;

    /// The newest stamp stored anywhere (or newer), used to seed the engine's
    /// clock on open. The default scans every collection; backends that keep
    /// it at hand should override.
    async fn newest_stamp(&self) -> Result<Option<Stamp>> {
        let mut newest: Option<Stamp> = None;
        for collection in self.list_collections().await? {
            for record in self.get_all(&collection).await? {
                let stamp = record.newest_stamp();
                if newest.as_ref().is_none_or(|n| stamp > n) {
                    newest = Some(stamp.clone());
                }
            }
        }
        Ok(newest)
    }

    /// Reads a small piece of engine metadata (per-peer cursors, ...).
    async fn get_meta(&self, key: &str) -> Result<Option<String>>;

    /// Stores a small piece of engine metadata.
    async fn set_meta(&self, key: &str, value: &str) -> Result<()>;

    /// Stores `value` under `key` only if the key holds nothing yet, as one
    /// atomic step, and returns what the key holds afterwards: `value`, or
    /// the value another writer stored first. Two handles racing to create
    /// the same key (two processes opening a fresh store) agree on one value.
    async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<String>;

    /// Releases connections and handles. Never deletes data. Later calls on
    /// this handle fail with [`crate::Error::Closed`].
    async fn close(&self) -> Result<()>;
}

/// Forwards every call to the backend behind the pointer.
macro_rules! forward_backend {
    ($pointer:ident) => {
        #[async_trait]
        impl<B: StorageBackend + ?Sized> StorageBackend for $pointer<B> {
            fn name(&self) -> &'static str {
                (**self).name()
            }

            async fn get(
                &self,
                collection: &CollectionName,
                id: &RecordId,
            ) -> Result<Option<Stored>> {
                (**self).get(collection, id).await
            }

            fn get_now(
                &self,
                collection: &CollectionName,
                id: &RecordId,
            ) -> Option<Result<Option<Stored>>> {
                (**self).get_now(collection, id)
            }

            fn put_now(
                &self,
                collection: &CollectionName,
                write: &Write,
            ) -> Option<Result<WriteOutcome>> {
                (**self).put_now(collection, write)
            }

            async fn get_many(
                &self,
                collection: &CollectionName,
                ids: &[RecordId],
            ) -> Result<Vec<Option<Stored>>> {
                (**self).get_many(collection, ids).await
            }

            fn insert_if_absent_now(
                &self,
                collection: &CollectionName,
                id: &RecordId,
                make: &mut dyn FnMut() -> Result<Record>,
            ) -> Option<Result<IfAbsent>> {
                (**self).insert_if_absent_now(collection, id, make)
            }

            async fn insert_if_absent(
                &self,
                collection: &CollectionName,
                id: &RecordId,
                make: &mut (dyn FnMut() -> Result<Record> + Send),
            ) -> Option<Result<IfAbsent>> {
                (**self).insert_if_absent(collection, id, make).await
            }

            async fn get_all(&self, collection: &CollectionName) -> Result<Vec<Record>> {
                (**self).get_all(collection).await
            }

            async fn put_batch(
                &self,
                collection: &CollectionName,
                writes: &[Write],
            ) -> Result<Vec<WriteOutcome>> {
                (**self).put_batch(collection, writes).await
            }

            async fn put(
                &self,
                collection: &CollectionName,
                write: &Write,
            ) -> Result<WriteOutcome> {
                (**self).put(collection, write).await
            }

            async fn delete(&self, collection: &CollectionName, id: &RecordId) -> Result<bool> {
                (**self).delete(collection, id).await
            }

            async fn changes(
                &self,
                collection: &CollectionName,
                after: Cursor,
                limit: NonZeroUsize,
            ) -> Result<ChangePage> {
                (**self).changes(collection, after, limit).await
            }

            async fn changes_since_timestamp(
                &self,
                collection: &CollectionName,
                millis: u64,
            ) -> Result<Vec<Record>> {
                (**self).changes_since_timestamp(collection, millis).await
            }

            async fn list_collections(&self) -> Result<Vec<CollectionName>> {
                (**self).list_collections().await
            }

            async fn clear_collection(&self, collection: &CollectionName) -> Result<()> {
                (**self).clear_collection(collection).await
            }

            async fn newest_stamp(&self) -> Result<Option<Stamp>> {
                (**self).newest_stamp().await
            }

            async fn get_meta(&self, key: &str) -> Result<Option<String>> {
                (**self).get_meta(key).await
            }

            async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
                (**self).set_meta(key, value).await
            }

            async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<String> {
                (**self).set_meta_if_absent(key, value).await
            }

            async fn close(&self) -> Result<()> {
                (**self).close().await
            }
        }
    };
}

forward_backend!(Arc);
forward_backend!(Box);

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle kept a hint for every collection it ever wrote: a process
    /// writing a new collection a day, or one per tenant, grew it for good.
    #[test]
    fn hints_are_kept_for_a_bounded_number_of_collections() {
        let name = |n: usize| CollectionName::new(format!("c{n}")).unwrap();
        let mut cache = HashMap::new();
        for n in 0..CACHED_COLLECTIONS {
            remember_collection_hint(&mut cache, &name(n), n);
        }
        assert_eq!(cache.len(), CACHED_COLLECTIONS);
        // One already there is updated in place.
        remember_collection_hint(&mut cache, &name(0), 7);
        assert_eq!((cache.len(), cache[&name(0)]), (CACHED_COLLECTIONS, 7));
        remember_collection_hint(&mut cache, &name(CACHED_COLLECTIONS), 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache[&name(CACHED_COLLECTIONS)], 1);
    }
}
