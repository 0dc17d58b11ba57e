//! Records: an id, JSON fields with a stamp each, a tombstone and a version
//! vector, and their canonical JSON form.
//!
//! # JSON form
//!
//! ```json
//! {
//!   "id": "n1",
//!   "title": "Q3 Planning Notes",
//!   "_clientId": "laptop",
//!   "_deleted": false,
//!   "_timestamp": 1700000000500,
//!   "_version": 3,
//!   "_sync": {
//!     "written": "018bcfe569f4.00000000.laptop",
//!     "fields": { "title": "018bcfe569f4.00000000.laptop" },
//!     "removed": { "body": "018bcfe569f4.00000000.laptop" },
//!     "deleted": "018bcfe56800.00000002.phone",
//!     "versions": { "laptop": 1, "phone": 2 }
//!   }
//! }
//! ```
//!
//! `_version`, `_timestamp`, `_deleted` and `_clientId` are the TypeScript
//! library's metadata, derived from the stamps: the sum of the version vector,
//! the milliseconds and client of the newest stamp, and whether the record is
//! deleted. `_sync` holds the state that makes merging a join. Keys are sorted
//! (serde_json's default map), so the form is canonical: replicas holding equal
//! records print byte-identical JSON.
//!
//! A record without `_sync` — as the TypeScript library writes it — is read by
//! giving every field the stamp `(_timestamp, 0, _clientId)`, a deleted record
//! the tombstone `(_timestamp, 1, _clientId)`, and the version vector
//! `{_clientId: _version}`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::hlc::{ClientId, Stamp, MAX_STAMP_MILLIS};
use crate::validate::validate_id;
use crate::version_vector::VersionVector;

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

/// One field of a record: its value (`None` once removed) and the stamp of the
/// write that set it.
///
/// Serialised as `{"value": ..., "stamp": "..."}`; a removed field has no
/// `value` key (so a JSON `null` value stays distinct from removal).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FieldState {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub(crate) value: Option<Value>,
    pub(crate) stamp: Stamp,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    use serde::Deserialize;
    let mut value = Value::deserialize(d)?;
    positive_zero(&mut value);
    Ok(Some(value))
}

impl FieldState {
    /// A field holding `value` (or removed, for `None`) as written at `stamp`.
    /// A `-0.0` in the value is stored as `0.0`, as everywhere in syncforge.
    pub fn new(mut value: Option<Value>, stamp: Stamp) -> Self {
        if let Some(value) = &mut value {
            positive_zero(value);
        }
        FieldState { value, stamp }
    }

    /// The value, or `None` when the field was removed.
    pub fn value(&self) -> Option<&Value> {
        self.value.as_ref()
    }

    /// The stamp of the write that set (or removed) the field.
    pub fn stamp(&self) -> &Stamp {
        &self.stamp
    }
}

/// Every field of a record with its state, removed ones included, sorted by
/// name.
///
/// A sorted vector, not a tree: a record holds a handful of fields, and a
/// vector of them takes a fraction of the memory of a tree node (which has
/// room for eleven) and is compared and merged in one linear pass. Names are
/// shared between records (see [`shared_name`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldStates(pub(crate) Vec<(Arc<str>, FieldState)>);

/// A field name as records hold it: records with the same fields share their
/// names, so a million records of five fields hold five names, not five
/// million. Each thread keeps a table of the short names it has seen, bounded
/// so that records with ever-new field names cannot grow it without limit
/// (names beyond the bound are simply not shared).
fn shared_name(name: String) -> Arc<str> {
    const MAX_SHARED_LEN: usize = 64;
    const MAX_SHARED_NAMES: usize = 4096;
    thread_local! {
        static NAMES: RefCell<HashSet<Arc<str>>> = RefCell::new(HashSet::new());
    }
    if name.len() > MAX_SHARED_LEN {
        return Arc::from(name);
    }
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        if let Some(shared) = names.get(name.as_str()) {
            return Arc::clone(shared);
        }
        let fresh: Arc<str> = Arc::from(name);
        if names.len() < MAX_SHARED_NAMES {
            names.insert(Arc::clone(&fresh));
        }
        fresh
    })
}

impl FieldStates {
    /// No fields.
    pub fn new() -> Self {
        FieldStates(Vec::new())
    }

    fn position(&self, name: &str) -> std::result::Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(name))
    }

    /// The state of field `name` (any string-like key, as a map's `get` takes).
    pub fn get<Q: AsRef<str> + ?Sized>(&self, name: &Q) -> Option<&FieldState> {
        self.position(name.as_ref()).ok().map(|i| &self.0[i].1)
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut FieldState> {
        self.position(name).ok().map(|i| &mut self.0[i].1)
    }

    /// Whether the record holds a state (live or removed) for `name`.
    pub fn contains_key<Q: AsRef<str> + ?Sized>(&self, name: &Q) -> bool {
        self.position(name.as_ref()).is_ok()
    }

    /// Sets the state of field `name`, returning the state it replaces.
    pub fn insert(&mut self, name: String, state: FieldState) -> Option<FieldState> {
        match self.position(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, state)),
            Err(i) => {
                self.0.insert(i, (shared_name(name), state));
                None
            }
        }
    }

    /// Fields and their states, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldState)> + '_ {
        self.0.iter().map(|(k, s)| (&**k, s))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut FieldState)> + '_ {
        self.0.iter_mut().map(|(k, s)| (&**k, s))
    }

    /// Field names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().map(|(k, _)| &**k)
    }

    /// Field states, in name order.
    pub fn values(&self) -> impl Iterator<Item = &FieldState> + '_ {
        self.0.iter().map(|(_, s)| s)
    }

    /// Number of fields, removed ones included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Serialised as a JSON object from field name to [`FieldState`].
impl serde::Serialize for FieldStates {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for FieldStates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        BTreeMap::<String, FieldState>::deserialize(d).map(FieldStates::from)
    }
}

impl FromIterator<(String, FieldState)> for FieldStates {
    /// Collects fields in any order; of a name given twice, the last state
    /// counts (as with a map).
    fn from_iter<I: IntoIterator<Item = (String, FieldState)>>(iter: I) -> Self {
        let mut entries: Vec<(String, FieldState)> = iter.into_iter().collect();
        if !entries.windows(2).all(|w| w[0].0 < w[1].0) {
            // A stable sort keeps repeats in input order; keep the last of each.
            entries.sort_by(|x, y| x.0.cmp(&y.0));
            let mut unique: Vec<(String, FieldState)> = Vec::with_capacity(entries.len());
            for entry in entries {
                match unique.last_mut() {
                    Some(last) if last.0 == entry.0 => *last = entry,
                    _ => unique.push(entry),
                }
            }
            entries = unique;
        }
        FieldStates(
            entries
                .into_iter()
                .map(|(name, state)| (shared_name(name), state))
                .collect(),
        )
    }
}

impl From<BTreeMap<String, FieldState>> for FieldStates {
    fn from(map: BTreeMap<String, FieldState>) -> Self {
        // A map iterates sorted and without repeats: the collect keeps its order.
        map.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a FieldStates {
    type Item = (&'a str, &'a FieldState);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Arc<str>, FieldState)>,
        fn(&'a (Arc<str>, FieldState)) -> (&'a str, &'a FieldState),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, s)| (&**k, s))
    }
}

/// The user content of a write: a valid id and the fields, without metadata.
///
/// Built from any JSON object with a string `id`; the reserved metadata keys
/// (`_version`, `_timestamp`, `_deleted`, `_clientId`, `_sync`) are checked
/// for type and then dropped, so a record read from the engine can be edited
/// and put back as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    id: String,
    fields: Map<String, Value>,
}

impl Content {
    /// Validates a JSON value as record content.
    pub fn from_value(value: Value) -> Result<Content> {
        let (id, mut map) = open_object(value)?;
        for key in RESERVED_KEYS {
            map.remove(key);
        }
        Ok(Content { id, fields: map })
    }

    /// The record id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The user fields.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }
}

/// A synchronised record. See the [module documentation](self) for its JSON form.
///
/// Cheap to clone: clones share one immutable state until one of them is
/// written (`apply_put`, `apply_delete`), which copies it first. Stores, change
/// feeds and merges hand records around constantly, so a clone must not copy
/// every field.
#[derive(Clone)]
pub struct Record {
    state: Arc<RecordState>,
}

/// What a [`Record`] holds.
#[derive(Clone)]
struct RecordState {
    id: Arc<str>,
    fields: FieldStates,
    written: Stamp,
    tombstone: Option<Stamp>,
    versions: VersionVector,
}

impl PartialEq for RecordState {
    /// Cheapest differences first: two states of one record that differ
    /// almost always differ in their version vectors or write stamps, and
    /// equal ones are then confirmed field by field.
    fn eq(&self, other: &Self) -> bool {
        self.versions == other.versions
            && self.written == other.written
            && self.tombstone == other.tombstone
            && self.id == other.id
            && self.fields == other.fields
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state) || *self.state == *other.state
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Record({})", self.to_json())
    }
}

impl Record {
    /// A new record holding `content`, every field stamped with `stamp`.
    pub fn create(content: Content, stamp: &Stamp) -> Record {
        let fields = content
            .fields
            .into_iter()
            .map(|(k, v)| (k, FieldState::new(Some(v), stamp.clone())))
            .collect();
        let mut versions = VersionVector::new();
        versions.increment(stamp.client());
        Record::from_state(RecordState {
            id: Arc::from(content.id),
            fields,
            written: stamp.clone(),
            tombstone: None,
            versions,
        })
    }

    fn from_state(state: RecordState) -> Record {
        Record {
            state: Arc::new(state),
        }
    }

    /// A record from its parts, checked for consistency: a valid id, user field
    /// names only.
    pub fn from_parts(
        id: &str,
        fields: impl Into<FieldStates>,
        written: Stamp,
        tombstone: Option<Stamp>,
        versions: VersionVector,
    ) -> Result<Record> {
        validate_id(id)?;
        let fields = fields.into();
        if let Some(key) = fields.keys().find(|k| is_reserved(k)) {
            return Err(Error::invalid_record(
                Some(id),
                format!("`{key}` is reserved and cannot be a field"),
            ));
        }
        Ok(Record::from_state(RecordState {
            id: Arc::from(id),
            fields,
            written,
            tombstone,
            versions,
        }))
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
        // Copies the state only if another clone shares it; an unchanged put
        // then leaves an equal copy, which is harmless.
        let record = Arc::make_mut(&mut self.state);
        for (name, state) in record.fields.iter_mut() {
            if state.value.is_some() && !content.fields.contains_key(name) {
                state.value = None;
                state.stamp = stamp.clone();
                changed = true;
            }
        }
        for (name, value) in content.fields {
            match record.fields.get_mut(&name) {
                Some(state) if !deleted && state.value.as_ref() == Some(&value) => {}
                Some(state) => {
                    state.value = Some(value);
                    state.stamp = stamp.clone();
                    changed = true;
                }
                None => {
                    record
                        .fields
                        .insert(name, FieldState::new(Some(value), stamp.clone()));
                    changed = true;
                }
            }
        }
        if changed {
            record.written = stamp.clone();
            record.versions.increment(stamp.client());
        }
        Ok(changed)
    }

    /// Soft-deletes the record at `stamp`. Returns false (and changes nothing)
    /// when it is already deleted. `stamp` must be newer than every stamp in
    /// the record.
    pub fn apply_delete(&mut self, stamp: &Stamp) -> Result<bool> {
        if self.is_deleted() {
            return Ok(false);
        }
        self.check_newer(stamp)?;
        let record = Arc::make_mut(&mut self.state);
        record.tombstone = Some(stamp.clone());
        record.versions.increment(stamp.client());
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
                Some(&self.state.id),
                format!("write stamp {stamp} is not newer than the record's newest stamp {newest}; observe the record's stamps with the clock first"),
            ))
        }
    }

    fn check_same_id(&self, id: &str) -> Result<()> {
        if *self.state.id == *id {
            Ok(())
        } else {
            Err(Error::invalid_record(
                Some(id),
                format!(
                    "cannot apply content of record {id:?} to record {:?}",
                    self.state.id
                ),
            ))
        }
    }

    /// The record id.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// The record id as a shared string: stores that index records by id
    /// keep this instead of a copy.
    pub fn shared_id(&self) -> &Arc<str> {
        &self.state.id
    }

    /// The value of a visible field.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.state.fields.get(field).and_then(|s| s.value.as_ref())
    }

    /// Visible fields (removed ones are left out), sorted by name.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &Value)> + '_ {
        self.state
            .fields
            .iter()
            .filter_map(|(k, s)| s.value.as_ref().map(|v| (k, v)))
    }

    /// Every field with its stamp, removed ones included.
    pub fn field_states(&self) -> &FieldStates {
        &self.state.fields
    }

    /// The version: total number of writes this record has seen (`_version`).
    pub fn version(&self) -> u64 {
        self.state.versions.total()
    }

    /// The version vector.
    pub fn versions(&self) -> &VersionVector {
        &self.state.versions
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
        &self.state.written
    }

    /// Stamp of the latest delete, if any.
    pub fn tombstone(&self) -> Option<&Stamp> {
        self.state.tombstone.as_ref()
    }

    /// The newest stamp anywhere in the record.
    pub fn newest_stamp(&self) -> &Stamp {
        let mut newest = self.newest_content_stamp();
        if let Some(t) = &self.state.tombstone {
            newest = newest.max(t);
        }
        newest
    }

    fn newest_content_stamp(&self) -> &Stamp {
        self.state
            .fields
            .values()
            .map(|s| &s.stamp)
            .fold(&self.state.written, |a, b| a.max(b))
    }

    /// Whether the record is soft-deleted: its tombstone is newer than every write.
    pub fn is_deleted(&self) -> bool {
        self.state
            .tombstone
            .as_ref()
            .is_some_and(|t| t > self.newest_content_stamp())
    }

    /// The user content: `id` and the visible fields, without metadata.
    pub fn content(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert(ID_KEY.to_owned(), Value::String(self.state.id.to_string()));
        for (k, v) in self.fields() {
            map.insert(k.to_owned(), v.clone());
        }
        map
    }

    /// The content deserialised as `T` (metadata left out).
    pub fn get_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(Value::Object(self.content())).map_err(|e| {
            Error::invalid_record(
                Some(&self.state.id),
                format!("cannot be read as the requested type: {e}"),
            )
        })
    }

    /// The canonical JSON form (see the [module documentation](self)).
    pub fn to_json(&self) -> Value {
        let mut map = self.content();
        let newest = self.newest_stamp();
        map.insert(VERSION_KEY.to_owned(), Value::from(self.version()));
        map.insert(TIMESTAMP_KEY.to_owned(), Value::from(newest.millis()));
        map.insert(DELETED_KEY.to_owned(), Value::Bool(self.is_deleted()));
        map.insert(
            CLIENT_ID_KEY.to_owned(),
            Value::String(newest.client().as_str().to_owned()),
        );
        map.insert(SYNC_KEY.to_owned(), Value::Object(self.sync_state()));
        Value::Object(map)
    }

    /// The canonical JSON form as a string.
    pub fn to_json_string(&self) -> String {
        self.to_json().to_string()
    }

    fn sync_state(&self) -> Map<String, Value> {
        let mut live = Map::new();
        let mut removed = Map::new();
        for (name, state) in &self.state.fields {
            let target = if state.value.is_some() {
                &mut live
            } else {
                &mut removed
            };
            target.insert(name.to_owned(), Value::String(state.stamp.to_string()));
        }
        let versions: Map<String, Value> = self
            .state
            .versions
            .iter()
            .map(|(c, n)| (c.as_str().to_owned(), Value::from(n)))
            .collect();
        let mut sync = Map::new();
        sync.insert(
            "written".to_owned(),
            Value::String(self.state.written.to_string()),
        );
        sync.insert("fields".to_owned(), Value::Object(live));
        if !removed.is_empty() {
            sync.insert("removed".to_owned(), Value::Object(removed));
        }
        if let Some(t) = &self.state.tombstone {
            sync.insert("deleted".to_owned(), Value::String(t.to_string()));
        }
        sync.insert("versions".to_owned(), Value::Object(versions));
        sync
    }

    /// Reads a record from its JSON form, or from the TypeScript library's form
    /// (no `_sync`). Refuses, naming the record and the reason, anything that is
    /// not a well-formed record.
    pub fn from_json(value: Value) -> Result<Record> {
        let (id, mut map) = open_object(value)?;
        let version = map.remove(VERSION_KEY);
        let timestamp = map.remove(TIMESTAMP_KEY);
        let deleted = map.remove(DELETED_KEY);
        let client = map.remove(CLIENT_ID_KEY);
        let sync = map.remove(SYNC_KEY);
        let meta = SeedMeta {
            version: version.as_ref().and_then(Value::as_u64),
            timestamp: timestamp.as_ref().and_then(Value::as_u64),
            deleted: deleted.as_ref().and_then(Value::as_bool),
            client: client.as_ref().and_then(Value::as_str),
        };
        let record = match sync {
            Some(Value::Object(sync)) => from_sync_state(&id, map, &sync)?,
            Some(_) => unreachable_type(&id, SYNC_KEY)?,
            None => from_seed(&id, map, &meta)?,
        };
        record.check_metadata(&meta)?;
        Ok(record)
    }

    /// Checks that the TypeScript-style metadata given with a record agrees with
    /// what its stamps say.
    fn check_metadata(&self, meta: &SeedMeta<'_>) -> Result<()> {
        let newest = self.newest_stamp();
        let mut problems = Vec::new();
        if let Some(v) = meta.version.filter(|v| *v != self.version()) {
            problems.push(format!(
                "_version {v} disagrees with its version vector ({})",
                self.version()
            ));
        }
        if let Some(t) = meta.timestamp.filter(|t| *t != newest.millis()) {
            problems.push(format!(
                "_timestamp {t} disagrees with its newest stamp ({})",
                newest.millis()
            ));
        }
        if let Some(d) = meta.deleted.filter(|d| *d != self.is_deleted()) {
            problems.push(format!("_deleted {d} disagrees with its stamps"));
        }
        if let Some(c) = meta.client.filter(|c| *c != newest.client().as_str()) {
            problems.push(format!(
                "_clientId {c:?} disagrees with its newest stamp ({})",
                newest.client()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid_record(
                Some(&self.state.id),
                problems.join("; "),
            ))
        }
    }
}

/// The TypeScript-style metadata read from a JSON record (types already checked).
struct SeedMeta<'a> {
    version: Option<u64>,
    timestamp: Option<u64>,
    deleted: Option<bool>,
    client: Option<&'a str>,
}

fn unreachable_type<T>(id: &str, key: &str) -> Result<T> {
    Err(Error::invalid_record(
        Some(id),
        format!("`{key}` has the wrong type"),
    ))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON value offered as a record (content or stored form): an object with a
/// valid string id, its metadata of the right types, and its user values
/// normalised. Returns the id and the remaining keys.
fn open_object(value: Value) -> Result<(String, Map<String, Value>)> {
    let Value::Object(mut map) = value else {
        return Err(Error::invalid_record(
            None,
            format!("expected a JSON object, found {}", kind_of(&value)),
        ));
    };
    let id = take_id(&mut map)?;
    check_metadata_types(&id, &map)?;
    map.iter_mut()
        .filter(|(key, _)| !is_reserved(key))
        .for_each(|(_, value)| positive_zero(value));
    Ok((id, map))
}

fn take_id(map: &mut Map<String, Value>) -> Result<String> {
    match map.remove(ID_KEY) {
        Some(Value::String(id)) => {
            validate_id(&id).map_err(|e| Error::invalid_record(Some(&id), e.to_string()))?;
            Ok(id)
        }
        Some(other) => Err(Error::invalid_record(
            None,
            format!("`id` must be a string, found {}", kind_of(&other)),
        )),
        None => Err(Error::invalid_record(None, "missing the string field `id`")),
    }
}

/// Checks the types of the metadata keys that are present.
fn check_metadata_types(id: &str, map: &Map<String, Value>) -> Result<()> {
    let wrong = |key: &str, expected: &str, found: &Value| {
        Err(Error::invalid_record(
            Some(id),
            format!("`{key}` must be {expected}, found {}", describe(found)),
        ))
    };
    if let Some(v) = map.get(VERSION_KEY).filter(|v| v.as_u64().is_none()) {
        return wrong(VERSION_KEY, "a non-negative integer", v);
    }
    if let Some(v) = map.get(TIMESTAMP_KEY) {
        if v.as_u64().is_none_or(|t| t > MAX_STAMP_MILLIS) {
            return wrong(
                TIMESTAMP_KEY,
                "milliseconds since 1970 as a non-negative integer",
                v,
            );
        }
    }
    if let Some(v) = map.get(DELETED_KEY).filter(|v| !v.is_boolean()) {
        return wrong(DELETED_KEY, "a boolean", v);
    }
    if let Some(v) = map.get(CLIENT_ID_KEY) {
        match v.as_str() {
            Some(c) => {
                validate_id(c)
                    .map_err(|e| Error::invalid_record(Some(id), format!("`_clientId`: {e}")))?;
            }
            None => return wrong(CLIENT_ID_KEY, "a string", v),
        }
    }
    if let Some(v) = map.get(SYNC_KEY).filter(|v| !v.is_object()) {
        return wrong(SYNC_KEY, "an object", v);
    }
    Ok(())
}

fn describe(value: &Value) -> String {
    let text = value.to_string();
    format!("{} {}", kind_of(value), crate::error::shorten(&text))
}

fn from_seed(id: &str, fields: Map<String, Value>, meta: &SeedMeta<'_>) -> Result<Record> {
    let missing = |key: &str| {
        Error::invalid_record(
            Some(id),
            format!("missing `{key}` (a record needs `_sync` or the metadata `_timestamp`, `_clientId`, `_version`)"),
        )
    };
    let millis = meta.timestamp.ok_or_else(|| missing(TIMESTAMP_KEY))?;
    let client = ClientId::new(meta.client.ok_or_else(|| missing(CLIENT_ID_KEY))?)?;
    let version = meta.version.ok_or_else(|| missing(VERSION_KEY))?;
    let written = Stamp::new(millis, 0, client.clone())?;
    let tombstone = if meta.deleted == Some(true) {
        Some(Stamp::new(millis, 1, client.clone())?)
    } else {
        None
    };
    let mut versions = VersionVector::new();
    versions.set(client, version);
    let fields = fields
        .into_iter()
        .map(|(k, v)| (k, FieldState::new(Some(v), written.clone())))
        .collect();
    Ok(Record::from_state(RecordState {
        id: Arc::from(id),
        fields,
        written,
        tombstone,
        versions,
    }))
}

/// Reads `-0.0` as `0.0`, as JavaScript prints it. `-0.0` and `0.0` are equal
/// JSON values with different text; were both allowed in, records equal as
/// values could print differently, and ties between imported values (broken
/// by value) could leave two replicas with different JSON.
fn positive_zero(value: &mut Value) {
    match value {
        Value::Number(n) if is_negative_zero(n) => *value = Value::from(0.0),
        Value::Array(items) => items.iter_mut().for_each(positive_zero),
        Value::Object(map) => map.values_mut().for_each(positive_zero),
        _ => {}
    }
}

fn is_negative_zero(n: &serde_json::Number) -> bool {
    n.as_f64()
        .is_some_and(|f| f.to_bits() == (-0.0f64).to_bits())
}

fn from_sync_state(
    id: &str,
    mut values: Map<String, Value>,
    sync: &Map<String, Value>,
) -> Result<Record> {
    let bad = |why: String| Error::invalid_record(Some(id), format!("`_sync`: {why}"));
    let stamp = |what: &str, v: &Value| -> Result<Stamp> {
        v.as_str()
            .ok_or_else(|| bad(format!("{what} must be a stamp string")))?
            .parse::<Stamp>()
            .map_err(|e| bad(format!("{what}: {e}")))
    };
    let mut written = None;
    let mut tombstone = None;
    let mut live = None;
    let mut removed = None;
    let mut versions = None;
    for (key, value) in sync {
        match key.as_str() {
            "written" => written = Some(stamp("`written`", value)?),
            "deleted" => tombstone = Some(stamp("`deleted`", value)?),
            "fields" => {
                live = Some(
                    value
                        .as_object()
                        .ok_or_else(|| bad("`fields` must be an object".into()))?,
                )
            }
            "removed" => {
                removed = Some(
                    value
                        .as_object()
                        .ok_or_else(|| bad("`removed` must be an object".into()))?,
                )
            }
            "versions" => {
                versions = Some(
                    value
                        .as_object()
                        .ok_or_else(|| bad("`versions` must be an object".into()))?,
                )
            }
            other => return Err(bad(format!("unknown key `{other}`"))),
        }
    }
    let written = written.ok_or_else(|| bad("missing `written`".into()))?;
    let mut fields = FieldStates::new();
    for (name, s) in live.into_iter().flatten() {
        let value = values.remove(name).ok_or_else(|| {
            bad(format!(
                "has a stamp for field `{name}`, which the record lacks"
            ))
        })?;
        fields.insert(
            name.clone(),
            FieldState::new(Some(value), stamp(&format!("field `{name}`"), s)?),
        );
    }
    if let Some(name) = values.keys().next() {
        return Err(bad(format!("field `{name}` has no stamp")));
    }
    for (name, s) in removed.into_iter().flatten() {
        if is_reserved(name) || fields.contains_key(name) {
            return Err(bad(format!(
                "field `{name}` is listed as removed but present"
            )));
        }
        fields.insert(
            name.clone(),
            FieldState::new(None, stamp(&format!("removed field `{name}`"), s)?),
        );
    }
    let mut vv = VersionVector::new();
    for (client, n) in versions.into_iter().flatten() {
        let client = ClientId::new(client).map_err(|e| bad(format!("`versions`: {e}")))?;
        let n = n
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(format!("`versions` of {client} must be a positive integer")))?;
        vv.set(client, n);
    }
    Ok(Record::from_state(RecordState {
        id: Arc::from(id),
        fields,
        written,
        tombstone,
        versions: vv,
    }))
}

impl serde::Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
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
        Stamp::new(millis, counter, ClientId::new(client).unwrap()).unwrap()
    }

    fn content(v: Value) -> Content {
        Content::from_value(v).unwrap()
    }

    #[test]
    fn put_stamps_only_changed_fields_and_removes_missing_ones() {
        let mut r = Record::create(
            content(json!({"id": "n1", "title": "A", "body": "B"})),
            &stamp(1, 0, "p"),
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
            FieldState::new(None, stamp(2, 0, "p"))
        );
        assert_eq!(r.get("body"), None);
        assert_eq!(r.version(), 2);
        assert_eq!(
            Value::Object(r.content()),
            json!({"id": "n1", "title": "A2", "tags": []})
        );
    }

    #[test]
    fn field_states_sort_keep_the_last_repeat_and_merge_by_stamp() {
        let live = |v: i64, millis| FieldState::new(Some(json!(v)), stamp(millis, 0, "p"));
        let states: FieldStates = [
            ("b".to_owned(), live(1, 1)),
            ("a".to_owned(), live(2, 1)),
            ("b".to_owned(), live(3, 1)),
        ]
        .into_iter()
        .collect();
        assert_eq!(states.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(states.get("b"), Some(&live(3, 1)));
        let other: FieldStates = [("b".to_owned(), live(9, 2)), ("c".to_owned(), live(4, 1))]
            .into_iter()
            .collect();
        let merged = crate::merge::merge_field_states(&states, &other);
        assert_eq!(merged.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(merged.get("b"), Some(&live(9, 2)));
        assert_eq!(crate::merge::merge_field_states(&other, &states), merged);
    }

    #[test]
    fn unchanged_put_writes_nothing() {
        let mut r = Record::create(content(json!({"id": "x", "a": 1})), &stamp(1, 0, "p"));
        let before = r.clone();
        assert!(!r
            .apply_put(content(json!({"id": "x", "a": 1})), &stamp(2, 0, "p"))
            .unwrap());
        assert_eq!(r, before);
    }

    #[test]
    fn empty_record_can_be_written_deleted_and_written_again() {
        let mut r = Record::create(content(json!({"id": "e"})), &stamp(1, 0, "p"));
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
        let mut r = Record::create(content(json!({"id": "a", "x": 1})), &stamp(5, 0, "p"));
        assert!(r
            .apply_put(content(json!({"id": "a", "x": 2})), &stamp(5, 0, "a"))
            .is_err());
        assert!(r.apply_delete(&stamp(4, 9, "z")).is_err());
        assert_eq!(r.get("x"), Some(&json!(1)));
    }

    #[test]
    fn put_with_other_id_is_refused() {
        let mut r = Record::create(content(json!({"id": "a"})), &stamp(1, 0, "p"));
        assert!(r
            .apply_put(content(json!({"id": "b"})), &stamp(2, 0, "p"))
            .is_err());
    }

    #[test]
    fn json_form_is_canonical_and_round_trips() {
        let mut r = Record::create(
            content(json!({"id": "n1", "z": 1, "a": {"y": 2, "b": 3}})),
            &stamp(1000, 0, "phone"),
        );
        r.apply_put(
            content(json!({"id": "n1", "a": 5})),
            &stamp(2000, 3, "laptop"),
        )
        .unwrap();
        let text = r.to_json_string();
        assert_eq!(
            text,
            r#"{"_clientId":"laptop","_deleted":false,"_sync":{"fields":{"a":"0000000007d0.00000003.laptop"},"removed":{"z":"0000000007d0.00000003.laptop"},"versions":{"laptop":1,"phone":1},"written":"0000000007d0.00000003.laptop"},"_timestamp":2000,"_version":2,"a":5,"id":"n1"}"#
        );
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn typescript_records_are_read() {
        let r = Record::from_json(json!({
            "id": "1", "name": "Alice", "_version": 2, "_timestamp": 2000, "_deleted": false, "_clientId": "a"
        }))
        .unwrap();
        assert_eq!(
            r.field_states().get("name").unwrap().stamp(),
            &stamp(2000, 0, "a")
        );
        assert_eq!(r.version(), 2);
        assert!(!r.is_deleted());
        let d = Record::from_json(json!({
            "id": "2", "_version": 3, "_timestamp": 5, "_deleted": true, "_clientId": "b"
        }))
        .unwrap();
        assert!(d.is_deleted());
        assert_eq!(d.tombstone(), Some(&stamp(5, 1, "b")));
        assert_eq!(Record::from_json(d.to_json()).unwrap(), d);
    }

    #[test]
    fn bad_records_are_refused_with_reasons() {
        let cases = [
            (json!([1]), "expected a JSON object"),
            (json!({"name": "x"}), "missing the string field `id`"),
            (json!({"id": 5}), "`id` must be a string"),
            (json!({"id": ""}), "must not be empty"),
            (
                json!({"id": "a", "_version": null, "_timestamp": 1, "_clientId": "c"}),
                "`_version` must be a non-negative integer",
            ),
            (
                json!({"id": "a", "_version": 1, "_timestamp": "1", "_clientId": "c"}),
                "`_timestamp` must be",
            ),
            (
                json!({"id": "a", "_version": 1, "_timestamp": 1.5, "_clientId": "c"}),
                "`_timestamp` must be",
            ),
            (
                json!({"id": "a", "_version": 1, "_timestamp": 1, "_clientId": 3}),
                "`_clientId` must be a string",
            ),
            (
                json!({"id": "a", "_version": 1, "_timestamp": 1}),
                "missing `_clientId`",
            ),
            (
                json!({"id": "a", "_version": 1, "_timestamp": 1, "_clientId": "c", "_deleted": "no"}),
                "`_deleted` must be a boolean",
            ),
            (json!({"id": "a", "_sync": 1}), "`_sync` must be an object"),
            (
                json!({"id": "a", "x": 1, "_sync": {"written": "000000000001.00000000.c", "fields": {}}}),
                "field `x` has no stamp",
            ),
            (
                json!({"id": "a", "_sync": {"written": "garbage"}}),
                "malformed",
            ),
            (
                json!({"id": "a", "_sync": {"fields": {}}}),
                "missing `written`",
            ),
            (
                json!({"id": "a", "_version": 9, "_sync": {"written": "000000000001.00000000.c", "fields": {}, "versions": {"c": 1}}}),
                "_version 9 disagrees",
            ),
        ];
        for (value, expected) in cases {
            let err = Record::from_json(value.clone()).unwrap_err().to_string();
            assert!(err.contains(expected), "{value}: {err}");
        }
    }

    #[test]
    fn content_drops_metadata_after_checking_its_type() {
        let c = content(json!({"id": "a", "_version": 3, "_sync": {}, "x": 1}));
        assert_eq!(c.fields().len(), 1);
        assert!(Content::from_value(json!({"id": "a", "_deleted": 1})).is_err());
    }

    #[test]
    fn typed_access() {
        #[derive(serde::Deserialize, PartialEq, Debug)]
        struct Note {
            id: String,
            title: String,
        }
        let r = Record::create(content(json!({"id": "n", "title": "t"})), &stamp(1, 0, "p"));
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
