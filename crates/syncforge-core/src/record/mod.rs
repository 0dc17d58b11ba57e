//! Records: an id, JSON fields with a stamp each, a tombstone and a version
//! vector, and their canonical JSON form.
//!
//! The JSON form is described on [`Record`].

mod build;
mod canonical;
mod content;
mod fields;
mod json;
mod stored;
mod text;
mod typescript;

use std::num::NonZeroU32;

use triomphe::ThinArc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::hlc::{ClientId, Stamp};
use crate::names::{IntoName, RecordId};
use crate::version_vector::{VersionVector, MAX_RECEIVED_VERSION};

pub use content::Content;
pub use fields::{FieldName, FieldState, FieldStates, FieldStatesRef};
pub use text::JsonText;

/// Key of the record id.
pub const ID_KEY: &str = "id";
/// Key of the version (sum of the version vector).
pub const VERSION_KEY: &str = "_version";
/// Key of the milliseconds of the newest stamp.
pub const TIMESTAMP_KEY: &str = "_timestamp";
/// Key of the deleted flag.
pub const DELETED_KEY: &str = "_deleted";
/// Key of the client that wrote the newest stamp.
pub const CLIENT_ID_KEY: &str = "_clientId";
/// Key of the merge state (stamps and version vector).
pub const SYNC_KEY: &str = "_sync";

/// Keys that are not user fields.
pub const RESERVED_KEYS: [&str; 6] = [
    ID_KEY,
    VERSION_KEY,
    TIMESTAMP_KEY,
    DELETED_KEY,
    CLIENT_ID_KEY,
    SYNC_KEY,
];

fn is_reserved(key: &str) -> bool {
    RESERVED_KEYS.contains(&key)
}

/// A synchronised record: an id, JSON fields with a stamp each, a tombstone
/// and a version vector.
///
/// # JSON form
///
/// ```json
/// {
///   "id": "n1",
///   "title": "Q3 Planning Notes",
///   "_clientId": "laptop",
///   "_deleted": false,
///   "_timestamp": 1700000000500,
///   "_version": 3,
///   "_sync": {
///     "written": "018bcfe569f4.00000000.laptop",
///     "fields": { "title": "018bcfe569f4.00000000.laptop" },
///     "removed": { "body": "018bcfe569f4.00000000.laptop" },
///     "deleted": "018bcfe56800.00000002.phone",
///     "versions": { "laptop": 1, "phone": 2 }
///   }
/// }
/// ```
///
/// `_version`, `_timestamp`, `_deleted` and `_clientId` are derived from the
/// stamps: the sum of the version vector, the milliseconds and client of the
/// newest stamp, and whether the record is deleted. `_sync` holds the state that makes merging a join. Keys are sorted
/// (serde_json's default map), so the form is canonical: replicas holding equal
/// records print byte-identical JSON.
///
/// A field value nests arrays and objects at most
/// [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH) (64) levels deep: every
/// way of making a record refuses deeper values, so that a record's JSON text
/// always parses again, envelope and all.
///
/// A record without `_sync` — as the TypeScript library writes it — is read by
/// giving every field the stamp `(_timestamp, 0, _clientId)`, a deleted record
/// the tombstone `(_timestamp, 1, _clientId)`, and the version vector
/// `{_clientId: _version}`.
///
/// Cheap to clone: clones share one immutable state until one of them is
/// written (`apply_put`, `apply_delete`), which builds a new one. Stores,
/// change feeds and merges hand records around constantly, so a clone must
/// not copy every field.
#[derive(Clone)]
pub struct Record {
    /// The header and, right after it in the same allocation, the fields:
    /// one allocation per record instead of two, and a record's fields are
    /// found at a fixed offset from its header instead of through a pointer
    /// of their own (in a sync's profile, most of the time spent comparing
    /// an unchanged record sat on the load of that pointer's target: a
    /// second cache miss on every record compared).
    state: ThinArc<Header, Field>,
}

/// One field as a record holds it: its shared name and its state.
type Field = (FieldName, FieldState);

// What this thread has built, so that a test can bound how much work a
// call does, which no timing could tell reliably.
#[cfg(test)]
thread_local! {
    /// Fields laid into new records.
    pub(crate) static FIELDS_LAID: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Bytes of content written as canonical JSON text to compare records.
    pub(crate) static CONTENT_TEXT_WRITTEN: std::cell::Cell<usize> =
        const { std::cell::Cell::new(0) };
}

/// What a [`Record`] holds before its fields.
///
/// Laid out in this order (`repr(C)`) on purpose: the id, the write stamp
/// and `newest` — what a lookup, a drift check, a store write and the
/// reference count read for every record of a batch — come first, right
/// after the reference count, instead of wherever the compiler put them (it
/// spread them over the allocation, so a record that was not in cache cost
/// a miss more than it needs).
#[derive(Clone)]
#[repr(C)]
struct Header {
    id: RecordId,
    written: Stamp,
    /// Derived from the stamps whenever they change: every merge, drift
    /// check and store write asks for the newest stamp, and folding over the
    /// fields each time was a tenth of a sync.
    newest: Newest,
    /// Boxed: most records are never deleted, and a pointer instead of a
    /// stamp keeps every record 16 bytes smaller.
    tombstone: Option<Box<Stamp>>,
    versions: VersionVector,
}

/// Where a record's newest stamp is, and whether it is deleted. Eight bytes,
/// so that it shares a cache line with the id and the write stamp.
#[derive(Clone, Copy, Default)]
struct Newest {
    /// One more than the index of the field holding the newest content
    /// stamp, or `None` when that is the write stamp.
    field: Option<NonZeroU32>,
    /// Whether the tombstone is newer than every content stamp.
    deleted: bool,
}

impl Newest {
    fn of(header: &Header, fields: &[Field]) -> Newest {
        let mut content = &header.written;
        let mut field = None;
        for (i, (_, f)) in fields.iter().enumerate() {
            if f.stamp > *content {
                content = &f.stamp;
                // A record has far fewer than 2^32 fields: the index fits.
                field = u32::try_from(i + 1).ok().and_then(NonZeroU32::new);
            }
        }
        let deleted = header.tombstone.as_deref().is_some_and(|t| t > content);
        Newest { field, deleted }
    }
}

/// Cheapest differences first: two states of one record that differ almost
/// always differ in their version vectors or write stamps, and equal ones
/// are then confirmed field by field.
impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        if std::ptr::eq(self.state.ptr(), other.state.ptr()) {
            return true;
        }
        let (a, b) = (self.head(), other.head());
        a.versions == b.versions
            && a.written == b.written
            && a.tombstone == b.tombstone
            && a.id == b.id
            && self.field_states() == other.field_states()
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Record({})", self.to_json())
    }
}

impl Record {
    /// A new record holding `content`, every field stamped with `stamp`
    /// (given by value, it becomes the record's write stamp: a copy of a
    /// borrowed one changes the client id's shared count once more).
    pub fn create(content: Content, stamp: impl Into<Stamp>) -> Record {
        let stamp = stamp.into();
        // Content is sorted, without repeats, normalised and laid out as a
        // record's fields: its vector becomes the field list, stamped.
        let mut fields = content.fields;
        for (_, state) in &mut fields {
            state.stamp.assign(&stamp);
        }
        let mut versions = VersionVector::new();
        versions.increment(stamp.client());
        let header = Header {
            id: content.id,
            written: stamp,
            tombstone: None,
            versions,
            // Every stamp is the write stamp and there is no tombstone:
            // what `Newest::of` would find without looking.
            newest: Newest::default(),
        };
        Record::allocate(header, fields)
    }

    /// A record of `header` and `fields`, its newest stamp found.
    #[inline]
    fn build(mut header: Header, fields: Vec<Field>) -> Record {
        header.newest = Newest::of(&header, &fields);
        Record::allocate(header, fields)
    }

    /// `header` and `fields` moved into the record's allocation; the emptied
    /// vector is kept for the next record's fields.
    #[inline]
    fn allocate(header: Header, mut fields: Vec<Field>) -> Record {
        #[cfg(test)]
        FIELDS_LAID.with(|laid| laid.set(laid.get() + fields.len()));
        let state = ThinArc::from_header_and_iter(header, fields.drain(..));
        fields::recycle_fields(fields);
        Record { state }
    }

    fn head(&self) -> &Header {
        &self.state.header.header
    }

    fn slots(&self) -> &[Field] {
        &self.state.slice
    }

    /// A record from its parts, checked for consistency: a valid id, user field
    /// names only. (Every [`FieldState`] holds a value checked against
    /// [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH) when it was made.)
    pub fn from_parts(
        id: impl IntoName<RecordId>,
        fields: impl Into<FieldStates>,
        written: Stamp,
        tombstone: Option<Stamp>,
        versions: VersionVector,
    ) -> Result<Record> {
        Record::joined(id, fields.into(), written, tombstone, versions)
    }

    /// A record from parts whose values are checked already: checks the id
    /// and the field names.
    pub(crate) fn joined(
        id: impl IntoName<RecordId>,
        fields: FieldStates,
        written: Stamp,
        tombstone: Option<Stamp>,
        versions: VersionVector,
    ) -> Result<Record> {
        let id = id.into_name()?;
        if let Some(key) = fields.keys().find(|k| is_reserved(k)) {
            return Err(Error::invalid_field(
                Some(&id),
                key,
                "is reserved for metadata and cannot be a field",
            ));
        }
        Ok(Record::assembled(id, fields, written, tombstone, versions))
    }

    /// A record of parts that are checked already: a valid id, and fields
    /// without a reserved name (the fields of records merged, say).
    pub(crate) fn assembled(
        id: RecordId,
        fields: FieldStates,
        written: Stamp,
        tombstone: Option<Stamp>,
        versions: VersionVector,
    ) -> Record {
        let header = Header {
            id,
            written,
            tombstone: tombstone.map(Box::new),
            versions,
            newest: Newest::default(),
        };
        Record::build(header, fields.0)
    }

    /// Replaces the visible content with `content` (same id), as written at
    /// `stamp`. Only fields whose value changed get the new stamp; fields left out
    /// are removed with it. On a deleted record every given field is stamped,
    /// which resurrects it. Returns whether anything changed; when nothing did,
    /// the record is untouched and nothing needs writing.
    ///
    /// `stamp` must be newer than every stamp in the record (the engine's clock
    /// guarantees this).
    pub fn apply_put(&mut self, content: Content, stamp: &Stamp) -> Result<bool> {
        self.check_same_id(&content.id)?;
        self.check_newer(stamp)?;
        let deleted = self.is_deleted();
        let mut changed = deleted;
        // One pass over both name-sorted lists: linear in the fields, however
        // many names the put adds or removes.
        let old = self.slots();
        let mut merged = Vec::with_capacity(old.len().max(content.fields.len()));
        let mut old = old.iter().peekable();
        let mut new = content.fields.into_iter().peekable();
        loop {
            let order = match (old.peek(), new.peek()) {
                (Some((a, _)), Some((b, _))) => a.cmp(b),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => break,
            };
            let stamped = |value| FieldState {
                value,
                stamp: stamp.clone(),
            };
            match (
                order,
                old.next_if(|_| order.is_le()),
                new.next_if(|_| order.is_ge()),
            ) {
                // Left out of the put: removed, unless it already was.
                (_, Some((name, state)), None) => {
                    if state.value.is_some() {
                        changed = true;
                        merged.push((name.clone(), stamped(None)));
                    } else {
                        merged.push((name.clone(), state.clone()));
                    }
                }
                (_, Some((name, state)), Some((_, mut put))) => {
                    if !deleted && state.value == put.value {
                        merged.push((name.clone(), state.clone()));
                    } else {
                        changed = true;
                        put.stamp.assign(stamp);
                        merged.push((name.clone(), put));
                    }
                }
                (_, None, Some((name, mut put))) => {
                    changed = true;
                    put.stamp.assign(stamp);
                    merged.push((name, put));
                }
                (_, None, None) => break,
            }
        }
        // Nothing changed: every field was kept as it was, and the record
        // stays untouched.
        if !changed {
            return Ok(false);
        }
        self.check_countable(stamp.client())?;
        let mut header = self.head().clone();
        header.written = stamp.clone();
        header.versions.increment(stamp.client());
        *self = Record::build(header, merged);
        Ok(true)
    }

    /// Soft-deletes the record at `stamp`. Returns false (and changes nothing)
    /// when it is already deleted. `stamp` must be newer than every stamp in
    /// the record.
    pub fn apply_delete(&mut self, stamp: &Stamp) -> Result<bool> {
        if self.is_deleted() {
            return Ok(false);
        }
        self.check_newer(stamp)?;
        self.check_countable(stamp.client())?;
        let mut header = self.head().clone();
        header.tombstone = Some(Box::new(stamp.clone()));
        header.versions.increment(stamp.client());
        *self = Record::build(header, self.slots().to_vec());
        Ok(true)
    }

    /// A local write must be stamped after everything the record holds,
    /// otherwise it could silently lose to an older write.
    fn check_newer(&self, stamp: &Stamp) -> Result<()> {
        let newest = self.newest_stamp();
        if stamp > newest {
            Ok(())
        } else {
            Err(Error::invalid_record(
                Some(&self.head().id),
                format!("write stamp {stamp} is not newer than the record's newest stamp {newest}; observe the record's stamps with the clock first"),
            ))
        }
    }

    fn check_same_id(&self, id: &str) -> Result<()> {
        if *self.head().id == *id {
            Ok(())
        } else {
            Err(Error::invalid_record(
                Some(id),
                format!(
                    "cannot apply content of record {id:?} to record {:?}",
                    self.head().id
                ),
            ))
        }
    }

    /// The record id (a shared string: cloning it copies no bytes).
    pub fn id(&self) -> &RecordId {
        &self.head().id
    }

    /// The value of a visible field (parsed from the text the record holds;
    /// [`get_text`](Self::get_text) reads the text itself).
    pub fn get(&self, field: &str) -> Option<Value> {
        self.get_text(field).map(JsonText::to_value)
    }

    /// The value of a visible field as its canonical JSON text.
    pub fn get_text(&self, field: &str) -> Option<&JsonText> {
        self.field_states()
            .get(field)
            .and_then(|s| s.value.as_ref())
    }

    /// Visible fields (removed ones are left out), sorted by name, with
    /// their values as canonical JSON text.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &JsonText)> + '_ {
        self.slots()
            .iter()
            .filter_map(|(k, s)| s.value.as_ref().map(|v| (&**k, v)))
    }

    /// Every field with its stamp, removed ones included.
    pub fn field_states(&self) -> FieldStatesRef<'_> {
        FieldStatesRef(self.slots())
    }

    /// The version: total number of writes this record has seen (`_version`).
    pub fn version(&self) -> u64 {
        self.head().versions.total()
    }

    /// The version vector.
    pub fn versions(&self) -> &VersionVector {
        &self.head().versions
    }

    /// Refuses a record received from another replica (a sync, an import)
    /// that counts more than [`MAX_RECEIVED_VERSION`] writes of one client,
    /// with [`Error::InvalidRecord`] about `_sync`: counting on from near
    /// the limit would stop there, and a replica could no longer tell its
    /// later writes from earlier ones, nor see the conflicts they make.
    #[inline]
    pub fn check_received_counts(&self) -> Result<()> {
        let largest = self.versions().largest_count();
        if largest <= MAX_RECEIVED_VERSION {
            return Ok(());
        }
        Err(Error::invalid_field(
            Some(self.id().as_str()),
            "_sync",
            format!(
                "counts {largest} writes of one client, past the {MAX_RECEIVED_VERSION} a \
                 received record may count: no replica writes a record that often, and \
                 counting on from there would stop at the limit and hide conflicts"
            ),
        ))
    }

    /// Refuses one more write by `client` when the record counts
    /// [`MAX_RECEIVED_VERSION`] of its writes already, with
    /// [`Error::InvalidRecord`] about `_sync`: the record it would make
    /// counts past what every other replica takes
    /// ([`check_received_counts`](Self::check_received_counts)), and could
    /// never be synced again.
    fn check_countable(&self, client: &ClientId) -> Result<()> {
        let count = self.versions().get(client);
        if count < MAX_RECEIVED_VERSION {
            return Ok(());
        }
        Err(Error::invalid_field(
            Some(self.id().as_str()),
            "_sync",
            format!(
                "counts {count} writes of client {client}, the most a record may count to be \
                 taken by another replica: one more write by that client would make a record \
                 no replica takes"
            ),
        ))
    }

    /// Milliseconds of the newest stamp (`_timestamp`).
    pub fn timestamp(&self) -> u64 {
        self.newest_stamp().millis()
    }

    /// Client that wrote the newest stamp (`_clientId`).
    pub fn client_id(&self) -> &ClientId {
        self.newest_stamp().client()
    }

    /// Stamp of the latest write of content.
    pub fn written(&self) -> &Stamp {
        &self.head().written
    }

    /// Stamp of the latest delete, if any.
    pub fn tombstone(&self) -> Option<&Stamp> {
        self.head().tombstone.as_deref()
    }

    /// The newest stamp anywhere in the record.
    pub fn newest_stamp(&self) -> &Stamp {
        // `deleted` first: it sits beside the id, the tombstone does not.
        let head = self.head();
        match (head.newest.deleted, head.tombstone.as_deref()) {
            (true, Some(tombstone)) => tombstone,
            _ => self.newest_content_stamp(),
        }
    }

    fn newest_content_stamp(&self) -> &Stamp {
        let head = self.head();
        head.newest
            .field
            .and_then(|i| self.slots().get(i.get() as usize - 1))
            .map_or(&head.written, |(_, f)| &f.stamp)
    }

    /// Whether the record is soft-deleted: its tombstone is newer than every write.
    pub fn is_deleted(&self) -> bool {
        self.head().newest.deleted
    }

    /// The user content: `id` and the visible fields, without metadata.
    pub fn content(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert(ID_KEY.to_owned(), Value::String(self.head().id.to_string()));
        for (k, v) in self.fields() {
            map.insert(k.to_owned(), v.to_value());
        }
        // `id` went in first: with serde_json's `preserve_order` the map
        // keeps that order, and content is sorted by key like the record.
        map.sort_keys();
        map
    }

    /// The content deserialised as `T` (metadata left out), read straight
    /// from the content's JSON text.
    pub fn get_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.content_json_string()).map_err(|e| {
            Error::invalid_record(
                Some(&self.head().id),
                format!("cannot be read as the requested type: {e}"),
            )
        })
    }
}

/// The canonical form's keys and values, in its key order whatever order
/// serde_json's map keeps (its `preserve_order` feature changes that order).
impl serde::Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        canonical::InKeyOrder(&self.to_json()).serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Record::from_json(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamp(millis: u64, counter: u32, client: &str) -> Stamp {
        Stamp::new(millis, counter, client).unwrap()
    }

    fn content(v: Value) -> Content {
        Content::from_value(v).unwrap()
    }

    /// A record made from a struct, written as JSON and read back: every
    /// table syncforge keeps per thread is used on the way.
    fn round_trip(id: &'static str, client: &str) -> bool {
        #[derive(serde::Serialize)]
        struct Doc {
            id: &'static str,
            n: u32,
            tags: Vec<&'static str>,
        }
        let doc = Doc {
            id,
            n: 1,
            tags: vec!["a", "b"],
        };
        let record = Record::create(Content::from_serialize(&doc).unwrap(), stamp(1, 0, client));
        let json: Value = serde_json::from_str(&record.to_json_string()).unwrap();
        let named: Result<crate::CollectionName> = crate::IntoName::into_name("notes");
        Record::from_json(json).is_ok_and(|back| back == record)
            && named.is_ok_and(|name| name.as_str() == "notes")
    }

    /// Records can be made and read from another thread-local's destructor,
    /// when the tables syncforge keeps per thread may be gone: reaching
    /// one then panicked.
    #[test]
    fn records_are_made_while_a_threads_locals_are_torn_down() {
        assert!(crate::testing::held_while_torn_down(
            || round_trip("early", "early-writer"),
            || round_trip("late", "late-writer"),
        ));
    }

    /// `get_text` gives a visible field's canonical text: numbers as
    /// serde_json writes them, strings quoted, object keys sorted; nothing
    /// for a field never written or removed.
    #[test]
    fn get_text_reads_the_canonical_text_of_visible_fields() {
        let mut r = Record::create(
            content(json!({"id": "n1", "n": 1.5, "s": "a\"b", "o": {"z": 1, "a": [true, null]}})),
            stamp(1, 0, "p"),
        );
        let text = |r: &Record, field: &str| r.get_text(field).map(|t| t.as_str().to_owned());
        assert_eq!(text(&r, "n").as_deref(), Some("1.5"));
        assert_eq!(text(&r, "s").as_deref(), Some(r#""a\"b""#));
        assert_eq!(text(&r, "o").as_deref(), Some(r#"{"a":[true,null],"z":1}"#));
        assert_eq!(text(&r, "missing"), None);
        assert_eq!(text(&r, "id"), None);
        r.apply_put(content(json!({"id": "n1", "n": 1.5})), &stamp(2, 0, "p"))
            .unwrap();
        assert_eq!(text(&r, "s"), None);
        assert!(r.field_states().contains_key("s"));
    }

    #[test]
    fn an_unchanged_put_leaves_the_record_and_its_allocation_untouched() {
        let written = Record::create(content(json!({"id": "n1", "a": 1})), stamp(1, 0, "p"));
        let mut put = written.clone();
        assert!(!put
            .apply_put(content(json!({"id": "n1", "a": 1})), &stamp(2, 0, "p"))
            .unwrap());
        assert!(std::ptr::eq(put.state.ptr(), written.state.ptr()));
        assert!(put
            .apply_put(content(json!({"id": "n1", "a": 2})), &stamp(3, 0, "p"))
            .unwrap());
        assert_eq!(written.get("a"), Some(json!(1)));
        assert_eq!(put.get("a"), Some(json!(2)));
    }

    #[test]
    fn records_built_one_after_another_hold_only_their_own_fields() {
        // The vector a record's fields are collected in is kept for the next
        // record: nothing of one may show in the other.
        let wide = Record::create(
            content(json!({"id": "w", "a": 1, "b": 2, "c": 3, "d": 4})),
            stamp(1, 0, "p"),
        );
        let narrow = Record::create(content(json!({"id": "n", "z": 9})), stamp(1, 0, "p"));
        let merged =
            crate::merge::merge(&wide.clone(), &wide, crate::ConflictStrategy::Crdt).unwrap();
        assert_eq!(
            wide.field_states().keys().collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
        assert_eq!(narrow.field_states().keys().collect::<Vec<_>>(), ["z"]);
        assert_eq!(merged, wide);
        assert_eq!(
            narrow.field_states().to_field_states().view(),
            narrow.field_states()
        );
    }

    #[test]
    fn put_stamps_only_changed_fields_and_removes_missing_ones() {
        let mut r = Record::create(
            content(json!({"id": "n1", "title": "A", "body": "B"})),
            stamp(1, 0, "p"),
        );
        let changed = r
            .apply_put(
                content(json!({"id": "n1", "title": "A2", "tags": []})),
                &stamp(2, 0, "p"),
            )
            .unwrap();
        assert!(changed);
        assert_eq!(
            r.field_states().get("title").unwrap().stamp(),
            &stamp(2, 0, "p")
        );
        assert_eq!(
            *r.field_states().get("body").unwrap(),
            FieldState::new(None, stamp(2, 0, "p")).unwrap()
        );
        assert_eq!(r.get("body"), None);
        assert_eq!(r.version(), 2);
        assert_eq!(
            Value::Object(r.content()),
            json!({"id": "n1", "title": "A2", "tags": []})
        );
    }

    #[test]
    fn unchanged_put_writes_nothing() {
        let mut r = Record::create(content(json!({"id": "x", "a": 1})), stamp(1, 0, "p"));
        let before = r.clone();
        assert!(!r
            .apply_put(content(json!({"id": "x", "a": 1})), &stamp(2, 0, "p"))
            .unwrap());
        assert_eq!(r, before);
    }

    #[test]
    fn empty_record_can_be_written_deleted_and_written_again() {
        let mut r = Record::create(content(json!({"id": "e"})), stamp(1, 0, "p"));
        assert!(r.apply_delete(&stamp(2, 0, "p")).unwrap());
        assert!(r.is_deleted());
        assert!(!r.apply_delete(&stamp(3, 0, "p")).unwrap());
        assert!(r
            .apply_put(content(json!({"id": "e"})), &stamp(4, 0, "p"))
            .unwrap());
        assert!(!r.is_deleted());
        assert_eq!(r.version(), 3);
    }

    #[test]
    fn writes_with_stale_stamps_are_refused() {
        let mut r = Record::create(content(json!({"id": "a", "x": 1})), stamp(5, 0, "p"));
        assert!(r
            .apply_put(content(json!({"id": "a", "x": 2})), &stamp(5, 0, "a"))
            .is_err());
        assert!(r.apply_delete(&stamp(4, 9, "z")).is_err());
        assert_eq!(r.get("x"), Some(json!(1)));
    }

    #[test]
    fn put_with_other_id_is_refused() {
        let mut r = Record::create(content(json!({"id": "a"})), stamp(1, 0, "p"));
        assert!(r
            .apply_put(content(json!({"id": "b"})), &stamp(2, 0, "p"))
            .is_err());
    }

    #[test]
    fn typed_access() {
        #[derive(serde::Deserialize, PartialEq, Debug)]
        struct Note {
            id: String,
            title: String,
        }
        let r = Record::create(content(json!({"id": "n", "title": "t"})), stamp(1, 0, "p"));
        assert_eq!(
            r.get_as::<Note>().unwrap(),
            Note {
                id: "n".into(),
                title: "t".into()
            }
        );
        assert!(r.get_as::<u32>().is_err());
    }
}
