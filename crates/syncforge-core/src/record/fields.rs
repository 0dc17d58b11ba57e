//! Field states and the table that shares field names between records.

use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use serde_json::Value;

use super::text::JsonText;
use crate::error::Result;
use crate::hlc::Stamp;
use crate::sorted::sort_keeping_last;

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
    pub(crate) value: Option<JsonText>,
    pub(crate) stamp: Stamp,
}

/// A present `value` key: the value, even when it is `null`.
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<JsonText>, D::Error> {
    use serde::Deserialize;
    JsonText::deserialize(d).map(Some)
}

impl FieldState {
    /// A field holding `value` (or removed, for `None`) as written at `stamp`.
    /// A `-0.0` in the value is stored as `0.0`, as everywhere in syncforge.
    /// A value nested deeper than [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH)
    /// is refused with [`Error::InvalidRecord`](crate::Error::InvalidRecord).
    pub fn new(value: Option<Value>, stamp: Stamp) -> Result<Self> {
        let value = value.map(JsonText::from_owned).transpose()?;
        Ok(FieldState { value, stamp })
    }

    /// A field holding `value` as its canonical text (or removed, for `None`).
    pub fn from_text(value: Option<JsonText>, stamp: Stamp) -> Self {
        FieldState { value, stamp }
    }

    /// [`new`](Self::new) of a value already checked against the nesting limit.
    pub(crate) fn checked(value: Option<&Value>, stamp: Stamp) -> Self {
        FieldState {
            value: value.map(JsonText::from_checked),
            stamp,
        }
    }

    /// The value, or `None` when the field was removed.
    pub fn value(&self) -> Option<Value> {
        self.value.as_ref().map(JsonText::to_value)
    }

    /// The value as its canonical JSON text, or `None` when the field was
    /// removed: no parsing, no copy.
    pub fn text(&self) -> Option<&JsonText> {
        self.value.as_ref()
    }

    /// The stamp of the write that set (or removed) the field.
    pub fn stamp(&self) -> &Stamp {
        &self.stamp
    }
}

/// A field's name as records hold it: one pointer to a string that records
/// with the same fields share. Read it as a `&str` ([`as_str`](Self::as_str);
/// it also dereferences to one).
///
/// A thin pointer (`Arc<String>`, not the two-word `Arc<str>`): every field
/// of every record holds its name, and a field is an eighth smaller for it
/// (56 bytes instead of 64), so a record takes fewer cache lines to compare
/// and a million records less memory. The price is paid by names that are
/// not shared (longer than 64 bytes, or beyond the 4,096 a thread keeps): a
/// second allocation each, and one more pointer to follow to read them.
#[derive(Clone)]
pub struct FieldName(Arc<String>);

impl FieldName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `a` and `b` are one shared name (equal names mostly are).
    pub(crate) fn same(a: &FieldName, b: &FieldName) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl AsRef<str> for FieldName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for FieldName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Deref for FieldName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for FieldName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for FieldName {
    fn from(name: &str) -> Self {
        FieldName(Arc::new(name.to_owned()))
    }
}

/// Gives back the string's spare room: a record keeps its names.
impl From<String> for FieldName {
    fn from(mut name: String) -> Self {
        name.shrink_to_fit();
        FieldName(Arc::new(name))
    }
}

/// By address first: equal names are mostly one shared string.
impl PartialEq for FieldName {
    fn eq(&self, other: &Self) -> bool {
        FieldName::same(self, other) || self.as_str() == other.as_str()
    }
}

impl Eq for FieldName {}

/// As the names' text; shared names compare by address.
impl Ord for FieldName {
    fn cmp(&self, other: &Self) -> Ordering {
        if FieldName::same(self, other) {
            Ordering::Equal
        } else {
            self.as_str().cmp(other.as_str())
        }
    }
}

impl PartialOrd for FieldName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// As the name's text, so that a table of names can be searched with a `&str`.
impl std::hash::Hash for FieldName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::fmt::Debug for FieldName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Every field of a record with its state, removed ones included, sorted by
/// name.
///
/// A sorted vector, not a tree: a record holds a handful of fields, and a
/// vector of them takes a fraction of the memory of a tree node (which has
/// room for eleven) and is compared and merged in one linear pass. Names are
/// shared between records: records with the same fields hold one copy of
/// each name.
#[derive(Debug, Clone, Default)]
pub struct FieldStates(pub(crate) Vec<(FieldName, FieldState)>);

/// Field by field, cheapest differences first: a stamp is two integers and
/// a shared client id, a shared name is one pointer, and a value is compared
/// byte for byte only when both of those agree (records that are equal,
/// which a sync mostly meets, are confirmed that way).
impl PartialEq for FieldStatesRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0)
                .all(|((a, x), (b, y))| x.stamp == y.stamp && a == b && x.value == y.value)
    }
}

impl PartialEq for FieldStates {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

thread_local! {
    /// An emptied field vector, kept for the next record built on this
    /// thread.
    static SPARE: Cell<Vec<(FieldName, FieldState)>> = const { Cell::new(Vec::new()) };
}

/// An empty vector to collect a record's fields in, with the room of the
/// last one [`recycle_fields`] kept on this thread.
#[inline]
pub(super) fn spare_fields() -> Vec<(FieldName, FieldState)> {
    SPARE.try_with(Cell::take).unwrap_or_default()
}

/// Keeps the room of `fields` (emptied) for the next record built on this
/// thread: a record's fields move into the record's own allocation, and the
/// vector they were collected in would otherwise be freed, and another one
/// allocated, for every record put. Only a small vector is kept.
#[inline]
pub(super) fn recycle_fields(mut fields: Vec<(FieldName, FieldState)>) {
    const MAX_KEPT: usize = 64;
    if fields.capacity() <= MAX_KEPT {
        fields.clear();
        let _ = SPARE.try_with(|spare| spare.set(fields));
    }
}

/// A field name as records hold it: records with the same fields share their
/// names, so a million records of five fields hold five names, not five
/// million. Each thread keeps a table of the short names it has seen, bounded
/// so that records with ever-new field names cannot grow it without limit
/// (names beyond the bound are simply not shared).
pub(super) fn shared_name<S: AsRef<str> + Into<FieldName>>(name: S) -> FieldName {
    const MAX_SHARED_LEN: usize = 64;
    const MAX_SHARED_NAMES: usize = 4096;
    thread_local! {
        static NAMES: RefCell<foldhash::HashSet<FieldName>> = RefCell::new(foldhash::HashSet::default());
    }
    if name.as_ref().len() > MAX_SHARED_LEN {
        return name.into();
    }
    // `try_with`: from another thread-local's destructor the table may be
    // gone, and the name is then simply not shared.
    let found = NAMES.try_with(|names| names.borrow().get(name.as_ref()).cloned());
    if let Ok(Some(shared)) = found {
        return shared;
    }
    let fresh: FieldName = name.into();
    let _ = NAMES.try_with(|names| {
        let mut names = names.borrow_mut();
        if names.len() < MAX_SHARED_NAMES {
            names.insert(fresh.clone());
        }
    });
    fresh
}

/// [`shared_name`] for a name with a fixed address, such as a struct's field
/// name: remembered by address and length in a small direct-mapped table,
/// so that the names of a struct put again and again are found without
/// hashing them. Bytes behind a `'static` address never change, so an equal
/// address and length is the same name.
#[inline]
pub(super) fn shared_static_name(name: &'static str) -> FieldName {
    const SLOTS: usize = 64;
    type Slots = [Option<(usize, FieldName)>; SLOTS];
    thread_local! {
        static BY_ADDRESS: RefCell<Slots> = RefCell::new(std::array::from_fn(|_| None));
    }
    let address = name.as_ptr() as usize;
    // Fibonacci hashing: names of one struct lie a few bytes apart, and the
    // top bits of the product spread them over the slots. In 64 bits on
    // every target; the six top bits fit any `usize`.
    let slot = (((address as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize) % SLOTS;
    let remembered = BY_ADDRESS.try_with(|slots| match &slots.borrow()[slot] {
        Some((a, shared)) if *a == address && shared.len() == name.len() => Some(shared.clone()),
        _ => None,
    });
    if let Ok(Some(shared)) = remembered {
        return shared;
    }
    let shared = shared_name(name);
    // Gone (from another thread-local's destructor): not remembered.
    let _ = BY_ADDRESS.try_with(|slots| slots.borrow_mut()[slot] = Some((address, shared.clone())));
    shared
}

impl FieldStates {
    /// No fields.
    pub fn new() -> Self {
        FieldStates(Vec::new())
    }

    /// The fields borrowed as a record lends them.
    pub fn view(&self) -> FieldStatesRef<'_> {
        FieldStatesRef(&self.0)
    }

    /// The state of field `name` (any string-like key, as a map's `get` takes).
    pub fn get<Q: AsRef<str> + ?Sized>(&self, name: &Q) -> Option<&FieldState> {
        self.view().get(name)
    }

    /// Whether the record holds a state (live or removed) for `name`.
    pub fn contains_key<Q: AsRef<str> + ?Sized>(&self, name: &Q) -> bool {
        self.view().contains_key(name)
    }

    /// Sets the state of field `name`, returning the state it replaces.
    pub fn insert(&mut self, name: String, state: FieldState) -> Option<FieldState> {
        match self.view().position(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, state)),
            Err(i) => {
                self.0.insert(i, (shared_name(name), state));
                None
            }
        }
    }

    /// [`insert`](Self::insert) by a borrowed name, returning nothing: no
    /// string is made for a name already shared.
    pub(crate) fn insert_shared(&mut self, name: &str, state: FieldState) {
        match self.view().position(name) {
            Ok(i) => self.0[i].1 = state,
            Err(i) => self.0.insert(i, (shared_name(name), state)),
        }
    }

    /// Adds `more`, states of names this does not hold yet: appended and
    /// sorted once. Inserting each in its place moved every later field,
    /// which made a record of many removed names among many live ones
    /// quadratic to read.
    pub(crate) fn add_new(&mut self, more: Vec<(FieldName, FieldState)>) {
        if more.is_empty() {
            return;
        }
        self.0.extend(more);
        // Mostly two sorted runs, which the stable sort merges in one pass.
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
    }

    /// Fields and their states, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldState)> + '_ {
        self.view().iter()
    }

    /// Field names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.view().keys()
    }

    /// Field states, in name order.
    pub fn values(&self) -> impl Iterator<Item = &FieldState> + '_ {
        self.view().values()
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

/// The fields of a record, removed ones included, sorted by name, as the
/// record holds them: borrowed from the record's own allocation, which keeps
/// its fields right after its header. What
/// [`Record::field_states`](super::Record::field_states) returns; reads like
/// [`FieldStates`], and [`to_field_states`](Self::to_field_states) copies
/// them into one.
#[derive(Debug, Clone, Copy)]
pub struct FieldStatesRef<'a>(pub(crate) &'a [(FieldName, FieldState)]);

impl<'a> FieldStatesRef<'a> {
    fn position(&self, name: &str) -> std::result::Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(name))
    }

    /// The state of field `name` (any string-like key, as a map's `get` takes).
    pub fn get<Q: AsRef<str> + ?Sized>(&self, name: &Q) -> Option<&'a FieldState> {
        let fields = self.0;
        self.position(name.as_ref())
            .ok()
            .and_then(|i| fields.get(i))
            .map(|(_, state)| state)
    }

    /// Whether the record holds a state (live or removed) for `name`.
    pub fn contains_key<Q: AsRef<str> + ?Sized>(&self, name: &Q) -> bool {
        self.position(name.as_ref()).is_ok()
    }

    /// Fields and their states, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a FieldState)> + 'a {
        self.into_iter()
    }

    /// Field names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().map(|(k, _)| &**k)
    }

    /// Field states, in name order.
    pub fn values(&self) -> impl Iterator<Item = &'a FieldState> + 'a {
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

    /// A copy of the fields (names stay shared).
    pub fn to_field_states(&self) -> FieldStates {
        FieldStates(self.0.to_vec())
    }
}

/// Serialised as [`FieldStates`] is: a JSON object from field name to
/// [`FieldState`].
impl serde::Serialize for FieldStatesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'a> IntoIterator for FieldStatesRef<'a> {
    type Item = (&'a str, &'a FieldState);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (FieldName, FieldState)>,
        fn(&'a (FieldName, FieldState)) -> (&'a str, &'a FieldState),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, s)| (&**k, s))
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
            sort_keeping_last(&mut entries);
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
        std::slice::Iter<'a, (FieldName, FieldState)>,
        fn(&'a (FieldName, FieldState)) -> (&'a str, &'a FieldState),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.view().into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamp(millis: u64, counter: u32, client: &str) -> Stamp {
        Stamp::new(millis, counter, client).unwrap()
    }

    #[test]
    fn a_field_takes_seven_words() {
        // Every record holds one per field: its size is most of a record's.
        assert_eq!(std::mem::size_of::<FieldName>(), 8);
        assert_eq!(std::mem::size_of::<(FieldName, FieldState)>(), 56);
    }

    #[test]
    fn field_names_compare_as_their_text_shared_or_not() {
        let shared = shared_name("title");
        let again = shared_name("title");
        let apart = FieldName::from("title");
        assert!(FieldName::same(&shared, &again));
        assert!(!FieldName::same(&shared, &apart));
        assert_eq!(shared, apart);
        assert_eq!(shared.cmp(&apart), Ordering::Equal);
        assert!(FieldName::from("body") < shared);
        assert_eq!(&*apart, "title");
        assert_eq!(apart.as_str(), "title");
        assert_eq!(apart.to_string(), "title");
        assert_eq!(format!("{apart:?}"), "\"title\"");
    }

    #[test]
    fn field_states_sort_keep_the_last_repeat_and_merge_by_stamp() {
        let live = |v: i64, millis| FieldState::new(Some(json!(v)), stamp(millis, 0, "p")).unwrap();
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
        let merged = crate::merge::merge_field_states(states.view(), other.view());
        assert_eq!(merged.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(merged.get("b"), Some(&live(9, 2)));
        assert_eq!(
            crate::merge::merge_field_states(other.view(), states.view()),
            merged
        );
    }
}
