//! The user content of a write.

use std::cell::RefCell;
use std::rc::Rc;

use serde::ser::{Impossible, Serialize, SerializeMap, SerializeStruct, Serializer};
use serde_json::{Map, Value};

use super::build::{self, Fault};
use super::fields::{shared_name, shared_static_name, spare_fields, FieldName, FieldState};
use super::json::{check_metadata_types, open_object, read_id};
use super::text::JsonText;
use super::{is_reserved, ID_KEY};
use crate::depth::{check_serialize, dismantle, field_fits, too_deep, too_deep_error};
use crate::error::{Error, Result};
use crate::hlc::Stamp;
use crate::names::RecordId;
use crate::sorted::keep_last_of_repeats;

/// The user content of a write: a valid id and the fields, without metadata.
///
/// Built from any JSON object with a string `id`; the reserved metadata keys
/// (`_version`, `_timestamp`, `_deleted`, `_clientId`, `_sync`) are checked
/// for type and then dropped, so a record read from the engine can be edited
/// and put back as it is.
#[derive(Clone)]
pub struct Content {
    pub(super) id: RecordId,
    /// Sorted by name, no name twice; names shared as records hold them, and
    /// laid out as a record holds its fields (each value present, stamped
    /// with [`Stamp::unstamped`] until it is written), so that a record is
    /// built from them without copying a name or the vector.
    pub(super) fields: Vec<(FieldName, FieldState)>,
}

/// Id and values: the stand-in stamps are not content.
impl PartialEq for Content {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.fields.len() == other.fields.len()
            && self
                .fields
                .iter()
                .zip(&other.fields)
                .all(|((a, x), (b, y))| a == b && x.value == y.value)
    }
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content")
            .field("id", &self.id)
            .field("fields", &self.fields())
            .finish()
    }
}

/// Adds a field of a put's content to `fields`, not yet stamped: its
/// stand-in stamp is taken once per put and then copied from the first
/// field. Kept beside the fields, the stand-in cost one more change of the
/// client id's shared count, and one more when dropped, each of which
/// waits for every earlier store of the put to complete.
#[inline(always)]
fn push_unstamped(fields: &mut Vec<(FieldName, FieldState)>, name: FieldName, value: JsonText) {
    let stamp = match fields.first() {
        Some((_, first)) => first.stamp.clone(),
        None => Stamp::unstamped(),
    };
    fields.push((
        name,
        FieldState {
            value: Some(value),
            stamp,
        },
    ));
}

impl Content {
    /// Validates a JSON value as record content. A field nested deeper than
    /// [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH) is refused with
    /// [`Error::InvalidRecord`](crate::Error::InvalidRecord) naming it, and
    /// the refused value is dropped without recursion.
    pub fn from_value(value: Value) -> Result<Content> {
        let (id, map) = open_object(value)?;
        // A map holds each key once, in key order unless serde_json's
        // `preserve_order` feature is on somewhere in the program.
        let mut fields = Vec::with_capacity(map.len());
        for (key, value) in map {
            if !is_reserved(&key) {
                let text = JsonText::from_checked(&value);
                push_unstamped(&mut fields, shared_name(key), text);
            }
        }
        if !fields.is_sorted_by(|(a, _), (b, _)| a < b) {
            fields.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        }
        Ok(Content { id, fields })
    }

    /// Validates any serialisable value as record content, with the same
    /// checks and errors as [`from_value`](Self::from_value).
    ///
    /// A struct or a map with string keys (what nearly every caller puts) is
    /// taken apart field by field: each value becomes JSON on its own, and no
    /// map of the whole object is built and searched. A struct's field
    /// order is learnt at its first put: later puts of it find its field
    /// names shared and their order known, without a sort. Anything else
    /// takes the route through [`Value`].
    ///
    /// `doc`'s `Serialize` may be called more than once, so it must
    /// describe the same value every time. The size hints of its objects
    /// and of its fields' objects are taken as hints, never trusted for an
    /// allocation beyond a few dozen entries; a value this writer leaves to
    /// serde_json (bytes, an enum variant holding data, a document that is
    /// not an object) is made by serde_json, which trusts the hints of its
    /// arrays.
    pub fn from_serialize<T: Serialize + ?Sized>(doc: &T) -> Result<Content> {
        // Filled in place: the collector is large, and serde's by-value
        // serializers would move it at every step.
        let mut fields = Fields {
            fields: spare_fields(),
            ..Fields::default()
        };
        match doc.serialize(&mut fields) {
            Ok(()) if !fields.went_on => fields.take_content(),
            // What serde_json makes of a document that went on past a
            // refusal answers, as for any document it makes.
            Ok(()) | Err(Refusal::Unsupported) => {
                // `to_value` recurses once per level with no limit of its own.
                check_serialize(doc)?;
                let value = serde_json::to_value(doc).map_err(|e| unserialisable(&e))?;
                Content::from_value(value)
            }
            // The whole document is measured again only to name the record
            // and the field in the refusal, as every other way in names them.
            Err(Refusal::TooDeep) => match check_serialize(doc) {
                Err(error) => Err(error),
                Ok(()) => Err(too_deep_error(None, None)),
            },
            Err(Refusal::Invalid(error)) => Err(error),
        }
    }

    /// The record id.
    pub fn id(&self) -> &RecordId {
        &self.id
    }

    /// The user fields, as a JSON map.
    pub fn fields(&self) -> Map<String, Value> {
        self.fields
            .iter()
            .filter_map(|(k, s)| Some((k.to_string(), s.value.as_ref()?.to_value())))
            .collect()
    }
}

fn unserialisable(e: &serde_json::Error) -> Error {
    Error::invalid_record(None, format!("cannot be serialised to JSON: {e}"))
}

/// Why the field-by-field route did not produce content.
#[derive(Debug)]
enum Refusal {
    /// Not a struct or a map with string keys: take the route through `Value`.
    Unsupported,
    /// A field nests deeper than [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH).
    TooDeep,
    /// The content is invalid (or a value cannot be JSON): the final answer.
    Invalid(Error),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unsupported => f.write_str("not an object with string keys"),
            Refusal::TooDeep => f.write_str("a field nests too deep"),
            Refusal::Invalid(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Refusal {}

impl serde::ser::Error for Refusal {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Refusal::Invalid(Error::invalid_record(
            None,
            format!("cannot be serialised to JSON: {msg}"),
        ))
    }
}

/// The `id` of a put, as far as it was read.
enum IdSlot {
    /// A string, checked as it was read: most ids are strings, and reading
    /// one as such spares building and dropping a JSON string.
    Read(Result<RecordId>),
    /// Anything else, for [`read_id`] to judge.
    Value(Value),
}

/// A key of a struct by its fixed address and length: bytes behind a
/// `'static` address never change, so equal keys are the same name.
type KeyAddress = (usize, usize);

fn address(key: &'static str) -> KeyAddress {
    (key.as_ptr() as usize, key.len())
}

/// What a put of a struct learnt about its fields, to be reused by the next
/// put of the same struct: a derived struct hands its field names over in a
/// fixed order, so sorting them and sharing their names once is enough.
struct Layout {
    /// Every key in the order it arrived, `id` and metadata included.
    keys: Box<[KeyAddress]>,
    /// The shared name of each key that is a user field, in the same order.
    names: Box<[Option<FieldName>]>,
    /// The swaps that put the user fields, in arrival order, in name order.
    swaps: Box<[(usize, usize)]>,
    /// How many keys are user fields: the record's vector is made that
    /// long, not as long as the struct (whose `id` is no field).
    fields: usize,
}

/// How a put of a struct uses the [`Layout`] of its last put.
#[derive(Default)]
enum Memo {
    /// Not a struct.
    #[default]
    Off,
    /// Every key so far arrived as in the layout.
    Following(Rc<Layout>),
    /// Keys as they arrived, and whether each became a user field.
    Recording(Vec<(KeyAddress, bool)>),
}

/// A few layouts per thread, by the address of the struct's name: a
/// program puts few kinds of struct, and a slot taken by another struct is
/// only learnt again.
const LAYOUT_SLOTS: usize = 16;

/// Each slot: the address of a struct's name, and its layout.
type LayoutSlots = [Option<(usize, Rc<Layout>)>; LAYOUT_SLOTS];

thread_local! {
    static LAYOUTS: RefCell<LayoutSlots> = RefCell::new(std::array::from_fn(|_| None));
}

fn layout_slot(name: &'static str) -> usize {
    // Fibonacci hashing, as for the field names.
    // In 64 bits whatever the pointer width: the top four bits pick the slot.
    ((name.as_ptr() as usize as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize
}

/// The layout remembered for the struct `name`; none also once the table
/// is gone (from another thread-local's destructor).
fn known_layout(name: &'static str) -> Option<Rc<Layout>> {
    LAYOUTS
        .try_with(
            |slots| match &slots.borrow()[layout_slot(name) % LAYOUT_SLOTS] {
                Some((a, layout)) if *a == name.as_ptr() as usize => Some(Rc::clone(layout)),
                _ => None,
            },
        )
        .ok()
        .flatten()
}

/// Remembers the layout of the struct `name`, unless the table is gone.
fn remember_layout(name: &'static str, layout: Layout) {
    let _ = LAYOUTS.try_with(|slots| {
        slots.borrow_mut()[layout_slot(name) % LAYOUT_SLOTS] =
            Some((name.as_ptr() as usize, Rc::new(layout)));
    });
}

/// The swaps that take `fields`, in arrival order, to name order (stable,
/// so that of a repeated name the last stays last).
fn sorting_swaps<V>(fields: &[(FieldName, V)]) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..fields.len()).collect();
    order.sort_by(|&a, &b| fields[a].0.cmp(&fields[b].0));
    // `at[p]`: the field now at position p; `place[f]`: where field f is.
    let mut at: Vec<usize> = (0..fields.len()).collect();
    let mut place = at.clone();
    let mut swaps = Vec::new();
    for (target, &field) in order.iter().enumerate() {
        let from = place[field];
        if from != target {
            let displaced = at[target];
            at.swap(target, from);
            place[field] = target;
            place[displaced] = from;
            swaps.push((target, from));
        }
    }
    swaps
}

/// The top level of a put: collects `(name, value)` pairs of an object.
#[derive(Default)]
struct Fields {
    fields: Vec<(FieldName, FieldState)>,
    /// The name of the struct, when the document is one.
    name: Option<&'static str>,
    /// The layout the keys so far follow, or the keys themselves.
    memo: Memo,
    /// Keys of the struct so far.
    arrived: usize,
    /// The `id`; its errors are reported once the object is complete, after
    /// those of the fields, as they always were.
    id: Option<IdSlot>,
    /// The metadata keys, checked once the object is complete. A map only
    /// once there is one: most puts have none, and dropping even an empty
    /// map walked it.
    reserved: Option<Map<String, Value>>,
    /// A map key waiting for its value.
    key: Option<String>,
    /// Whether a key or a value was refused and the document's `Serialize`
    /// went on past the refusal: what was collected then lacks that field,
    /// or a struct's keys and fields no longer pair up, so the document
    /// takes the route through `Value` instead.
    went_on: bool,
}

impl Fields {
    /// Adds a user field.
    #[inline(always)]
    fn push_field(&mut self, name: FieldName, value: JsonText) {
        push_unstamped(&mut self.fields, name, value);
    }

    /// Reads the value of key `key`: the id as a string when it is one, any
    /// other value as JSON.
    fn read<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
        name: impl FnOnce(&str) -> FieldName,
    ) -> std::result::Result<(), Refusal> {
        if key == ID_KEY {
            if let Ok(id) = build::read_str(value, |id: &str| RecordId::new(id)) {
                self.id = Some(IdSlot::Read(id));
                return Ok(());
            }
            self.id = Some(IdSlot::Value(measured_value(value)?));
        } else if is_reserved(key) {
            // Metadata is checked as a value once the object is complete.
            let value = measured_value(value)?;
            self.reserved
                .get_or_insert_with(Map::new)
                .insert(key.to_owned(), value);
        } else {
            let text = json_text(value)?;
            self.push_field(name(key), text);
        }
        Ok(())
    }

    /// Passes on how reading a key or a value went, taking note of a
    /// refusal in case the document's `Serialize` goes on past it.
    #[inline(always)]
    fn note(&mut self, read: std::result::Result<(), Refusal>) -> std::result::Result<(), Refusal> {
        self.went_on |= read.is_err();
        read
    }

    /// Takes note of struct field `key`: its shared name when the layout
    /// knows it as a user field. Leaves the layout at the first key that
    /// differs from it.
    #[inline(always)]
    fn follow(&mut self, key: &'static str) -> Option<FieldName> {
        let i = self.arrived;
        self.arrived += 1;
        let at = address(key);
        match &mut self.memo {
            Memo::Following(layout) => {
                if layout.keys.get(i) == Some(&at) {
                    return layout.names.get(i).cloned().flatten();
                }
                let mut keys = layout.arrivals(i);
                keys.push((at, !is_reserved(key)));
                self.memo = Memo::Recording(keys);
            }
            Memo::Recording(keys) => keys.push((at, !is_reserved(key))),
            Memo::Off => {}
        }
        None
    }

    /// The content collected. Takes it out of the collector in place: the
    /// collector is large, and moving it into a call copied all of it.
    fn take_content(&mut self) -> Result<Content> {
        let id = match self.id.take() {
            Some(IdSlot::Read(id)) => id?,
            Some(IdSlot::Value(value)) => read_id(Some(value))?,
            None => read_id(None)?,
        };
        if let Some(reserved) = &self.reserved {
            check_metadata_types(&id, reserved)?;
        }
        let mut fields = std::mem::take(&mut self.fields);
        let keys = match std::mem::take(&mut self.memo) {
            Memo::Following(layout) if layout.keys.len() == self.arrived => {
                // The keys of a put whose names were sorted and unique.
                for &(a, b) in layout.swaps.iter() {
                    fields.swap(a, b);
                }
                return Ok(Content { id, fields });
            }
            // Fewer keys than last time (a field was skipped): learn anew.
            Memo::Following(layout) => Some(layout.arrivals(self.arrived)),
            Memo::Recording(keys) => Some(keys),
            Memo::Off => None,
        };
        if !fields.windows(2).all(|w| w[0].0 < w[1].0) {
            // As in a map, the last of a repeated name counts: a stable sort
            // keeps repeats in order, and the dedupe keeps the last.
            // A struct's order is learnt as the swaps that sort it.
            let learnt = keys.map(|keys| {
                let names = names_of(&keys, &fields);
                let swaps = sorting_swaps(&fields);
                for &(a, b) in &swaps {
                    fields.swap(a, b);
                }
                Layout::new(keys, names, swaps)
            });
            if learnt.is_none() {
                fields.sort_by(|a, b| a.0.cmp(&b.0));
            }
            // A struct's fields are rarely in name order but never repeated:
            // sorted in place, they need no second vector.
            if fields.windows(2).all(|w| w[0].0 != w[1].0) {
                if let (Some(layout), Some(struct_name)) = (learnt, self.name) {
                    remember_layout(struct_name, layout);
                }
                return Ok(Content { id, fields });
            }
            keep_last_of_repeats(&mut fields);
        } else if let (Some(keys), Some(struct_name)) = (keys, self.name) {
            let names = names_of(&keys, &fields);
            remember_layout(struct_name, Layout::new(keys, names, Vec::new()));
        }
        Ok(Content { id, fields })
    }
}

/// The shared name of each key that became a user field, in arrival order.
fn names_of<V>(keys: &[(KeyAddress, bool)], fields: &[(FieldName, V)]) -> Vec<Option<FieldName>> {
    let mut user = fields.iter();
    keys.iter()
        .map(|&(_, pushed)| {
            if pushed {
                user.next().map(|(name, _)| name.clone())
            } else {
                None
            }
        })
        .collect()
}

impl Layout {
    fn new(
        keys: Vec<(KeyAddress, bool)>,
        names: Vec<Option<FieldName>>,
        swaps: Vec<(usize, usize)>,
    ) -> Layout {
        Layout {
            fields: names.iter().flatten().count(),
            keys: keys.into_iter().map(|(k, _)| k).collect(),
            names: names.into(),
            swaps: swaps.into(),
        }
    }

    /// The first `n` keys as a put records them.
    fn arrivals(&self, n: usize) -> Vec<(KeyAddress, bool)> {
        self.keys
            .iter()
            .zip(self.names.iter())
            .take(n)
            .map(|(&k, name)| (k, name.is_some()))
            .collect()
    }
}

/// One field's value as canonical JSON text, written and measured in one
/// pass; what that pass leaves to serde_json takes the [`measured_value`]
/// route.
#[inline]
fn json_text<T: Serialize + ?Sized>(value: &T) -> std::result::Result<JsonText, Refusal> {
    match build::field_text(value) {
        Ok(text) => Ok(text),
        Err(Fault::TooDeep) => Err(Refusal::TooDeep),
        Err(Fault::Other | Fault::Compound) => {
            measured_value(value).map(|value| JsonText::from_checked(&value))
        }
    }
}

/// A value (or a map key, or metadata) through serde_json: measured first,
/// so that converting it cannot recurse past the limit.
fn measured_value<T: Serialize + ?Sized>(value: &T) -> std::result::Result<Value, Refusal> {
    match field_fits(value) {
        Ok(true) => {}
        Ok(false) => return Err(Refusal::TooDeep),
        Err(message) => {
            return Err(Refusal::Invalid(Error::invalid_record(
                None,
                format!("cannot be serialised to JSON: {message}"),
            )))
        }
    }
    let value = serde_json::to_value(value).map_err(|e| Refusal::Invalid(unserialisable(&e)))?;
    // Measured on one call and converted on the next: a `Serialize` that
    // writes something else each time (through a `Cell`, or a lock another
    // thread holds) would put a value past the limit into a record, which
    // every reader of it would then refuse.
    if too_deep(&value) {
        dismantle(value);
        return Err(Refusal::TooDeep);
    }
    Ok(value)
}

macro_rules! unsupported {
    ($($method:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> std::result::Result<$ret, Refusal> {
            Err(Refusal::Unsupported)
        })*
    };
}

impl<'a> Serializer for &'a mut Fields {
    type Ok = ();
    type Error = Refusal;
    type SerializeSeq = Impossible<(), Refusal>;
    type SerializeTuple = Impossible<(), Refusal>;
    type SerializeTupleStruct = Impossible<(), Refusal>;
    type SerializeTupleVariant = Impossible<(), Refusal>;
    type SerializeMap = &'a mut Fields;
    type SerializeStruct = &'a mut Fields;
    type SerializeStructVariant = Impossible<(), Refusal>;

    unsupported! {
        serialize_bool(bool) -> ();
        serialize_i8(i8) -> ();
        serialize_i16(i16) -> ();
        serialize_i32(i32) -> ();
        serialize_i64(i64) -> ();
        serialize_u8(u8) -> ();
        serialize_u16(u16) -> ();
        serialize_u32(u32) -> ();
        serialize_u64(u64) -> ();
        serialize_f32(f32) -> ();
        serialize_f64(f64) -> ();
        serialize_char(char) -> ();
        serialize_str(&str) -> ();
        serialize_bytes(&[u8]) -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
        serialize_none() -> ();
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> std::result::Result<(), Refusal> {
        Err(Refusal::Unsupported)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<(), Refusal> {
        Err(Refusal::Unsupported)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<(), Refusal> {
        Err(Refusal::Unsupported)
    }

    fn serialize_map(self, len: Option<usize>) -> std::result::Result<Self, Refusal> {
        self.fields.reserve(build::room_for(len.unwrap_or(0)));
        Ok(self)
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> std::result::Result<Self, Refusal> {
        // A `RawValue` document: its JSON is read through `Value`.
        if name.starts_with(crate::depth::PRIVATE_TOKEN) {
            return Err(Refusal::Unsupported);
        }
        let fields = match known_layout(name) {
            Some(layout) => {
                let fields = layout.fields;
                self.memo = Memo::Following(layout);
                fields
            }
            None => {
                // The struct's own word, not yet confirmed by its keys.
                let room = build::room_for(len);
                self.memo = Memo::Recording(Vec::with_capacity(room));
                room
            }
        };
        self.name = Some(name);
        self.fields.reserve_exact(fields);
        Ok(self)
    }
}

impl SerializeStruct for &mut Fields {
    type Ok = ();
    type Error = Refusal;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> std::result::Result<(), Refusal> {
        if let Some(name) = self.follow(key) {
            // A user field by the layout: neither the id nor metadata.
            return match json_text(value) {
                Ok(text) => {
                    self.push_field(name, text);
                    Ok(())
                }
                Err(refusal) => self.note(Err(refusal)),
            };
        }
        let read = self.read(key, value, |_| shared_static_name(key));
        self.note(read)
    }

    fn end(self) -> std::result::Result<(), Refusal> {
        Ok(())
    }
}

impl SerializeMap for &mut Fields {
    type Ok = ();
    type Error = Refusal;

    fn serialize_key<T: Serialize + ?Sized>(
        &mut self,
        key: &T,
    ) -> std::result::Result<(), Refusal> {
        // Only string keys: any other sends the whole document through
        // `serde_json::to_value`, whose own rules for map keys (numbers
        // written as text, `Some` refused) then answer, as `from_value`'s
        // do. Reading the key alone as a value followed the rules for
        // values instead.
        let read = build::read_str(key, str::to_owned)
            .map(|key| self.key = Some(key))
            .map_err(|_| Refusal::Unsupported);
        self.note(read)
    }

    fn serialize_value<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), Refusal> {
        let read = match self.key.take() {
            Some(key) => self.read(&key, value, |k| shared_name(k)),
            None => Err(Refusal::Unsupported),
        };
        self.note(read)
    }

    fn end(self) -> std::result::Result<(), Refusal> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Lenient, LenientMap};
    use serde_json::json;

    fn content(v: Value) -> Content {
        Content::from_value(v).unwrap()
    }

    /// A document of one field, `value`.
    #[derive(serde::Serialize)]
    struct One<T> {
        id: &'static str,
        value: T,
    }

    #[derive(serde::Serialize)]
    enum Kind {
        Plain,
        Holding(u8),
    }

    /// `value`, in a field of its own, is stored as its JSON value is (or
    /// refused when serde_json refuses it).
    fn agrees<T: Serialize>(value: T) {
        let doc = One { id: "s", value };
        let direct = Content::from_serialize(&doc).map_err(|e| e.to_string());
        match serde_json::to_value(&doc) {
            Ok(value) => assert_eq!(direct, Ok(content(value))),
            Err(_) => assert!(direct.is_err()),
        }
    }

    macro_rules! agree {
        ($($value:expr),* $(,)?) => { $(agrees($value);)* };
    }

    /// A number, or (for `None`) an error of its own `Serialize`.
    struct Refused(Option<u8>);
    impl Serialize for Refused {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                Some(n) => serializer.serialize_u8(n),
                None => Err(serde::ser::Error::custom("refused")),
            }
        }
    }

    #[test]
    fn content_drops_metadata_after_checking_its_type() {
        let c = content(json!({"id": "a", "_version": 3, "_sync": {}, "x": 1}));
        assert_eq!(c.fields().len(), 1);
        assert!(Content::from_value(json!({"id": "a", "_deleted": 1})).is_err());
    }

    /// A `RawValue` field is measured as the JSON it holds, not as the one
    /// string serde's data model shows: deeper than the limit, it was stored
    /// and then refused by every read of the record.
    #[test]
    fn a_raw_value_nested_past_the_limit_is_refused_as_any_value_is() {
        #[derive(serde::Serialize)]
        struct Doc {
            id: &'static str,
            deep: Box<serde_json::value::RawValue>,
        }
        let nested = |levels: usize| Doc {
            id: "a",
            deep: serde_json::value::RawValue::from_string(format!(
                "{}1{}",
                "[".repeat(levels),
                "]".repeat(levels)
            ))
            .unwrap(),
        };
        let deep = nested(100);
        let direct = Content::from_serialize(&deep).unwrap_err().to_string();
        let through = Content::from_value(serde_json::to_value(&deep).unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(direct, through);
        assert!(direct.contains("levels deep"), "{direct}");
        let at_the_limit = nested(crate::MAX_NESTING_DEPTH);
        let direct = Content::from_serialize(&at_the_limit).unwrap();
        let through = content(serde_json::to_value(&at_the_limit).unwrap());
        assert_eq!(direct.fields(), through.fields());
    }

    #[test]
    fn a_raw_value_document_is_read_as_the_json_it_holds() {
        let text = r#"{"x":[1,{"b":2,"a":1}],"id":"a"}"#;
        let raw = serde_json::value::RawValue::from_string(text.to_owned()).unwrap();
        let direct = Content::from_serialize(&*raw).unwrap();
        let through = content(serde_json::from_str(text).unwrap());
        assert_eq!(direct.id().as_str(), "a");
        assert_eq!(direct.fields(), through.fields());
    }

    /// A top-level key that is not a plain string was read as a value:
    /// `Some("x")` was taken where serde_json refuses it as a map key, and
    /// `u128::MAX` refused where serde_json writes it as text.
    #[test]
    fn top_level_keys_follow_serde_jsons_rules_for_map_keys() {
        use std::collections::BTreeMap;
        fn agrees<K: Serialize + Ord>(doc: &BTreeMap<K, &str>) {
            let direct = Content::from_serialize(doc);
            let through = serde_json::to_value(doc)
                .map_err(|e| Error::invalid_record(None, e.to_string()))
                .and_then(Content::from_value);
            match (direct, through) {
                (Ok(direct), Ok(through)) => assert_eq!(direct, through),
                (Err(_), Err(_)) => {}
                other => panic!("the two routes disagree: {other:?}"),
            }
        }
        agrees(&BTreeMap::from([(Some("id"), "a"), (Some("x"), "1")]));
        #[derive(serde::Serialize, PartialEq, Eq, PartialOrd, Ord)]
        #[serde(untagged)]
        enum Key {
            Name(&'static str),
            Number(u128),
        }
        agrees(&BTreeMap::from([
            (Key::Name("id"), "a"),
            (Key::Number(u128::MAX), "big"),
        ]));
        agrees(&BTreeMap::from([('i', "a"), ('x', "1")]));
    }

    #[test]
    fn from_serialize_agrees_with_from_value() {
        #[derive(serde::Serialize)]
        struct Note<'a> {
            title: &'a str,
            id: &'a str,
            n: f64,
            tags: Vec<&'a str>,
            #[serde(rename = "_version")]
            version: u64,
        }
        let note = Note {
            title: "t",
            id: "n1",
            n: -0.0,
            tags: vec!["a"],
            version: 2,
        };
        let direct = Content::from_serialize(&note).unwrap();
        let through_value = content(serde_json::to_value(&note).unwrap());
        assert_eq!(direct, through_value);
        assert_eq!(
            Value::Object(direct.fields()),
            json!({"n": 0.0, "tags": ["a"], "title": "t"})
        );
        let map = std::collections::BTreeMap::from([(1, "x")]);
        let numbered = Content::from_serialize(&map).unwrap_err().to_string();
        assert!(numbered.contains("`id`"), "{numbered}");
        let cases = [
            json!({"id": 5}),
            json!({"x": 1}),
            json!({"id": "a", "_deleted": 1}),
            json!([1]),
            json!({"id": "a", "b": 1, "a": {"z": -0.0}}),
        ];
        for case in cases {
            let direct = Content::from_serialize(&case).map_err(|e| e.to_string());
            let through = Content::from_value(case.clone()).map_err(|e| e.to_string());
            assert_eq!(direct, through, "{case}");
        }
    }

    #[test]
    fn a_struct_put_is_stored_as_the_equal_json_value_is() {
        #[derive(serde::Serialize)]
        struct Inner {
            z: f32,
            a: Option<u8>,
            m: std::collections::BTreeMap<String, i128>,
        }
        #[derive(serde::Serialize)]
        enum Kind {
            Unit,
            New(i8),
            Pair(u8, char),
            Named { x: f64 },
        }
        #[derive(serde::Serialize)]
        struct Wrapped(String);
        #[derive(serde::Serialize)]
        struct Doc {
            name: String,
            id: Wrapped,
            tags: [String; 2],
            kinds: Vec<Kind>,
            inner: Inner,
            numbered: std::collections::BTreeMap<u32, bool>,
            #[serde(with = "serde_bytes_like")]
            bytes: Vec<u8>,
            none: Option<String>,
            nan: f64,
            zero: f64,
            big: u64,
            unit: (),
            json: Value,
        }
        mod serde_bytes_like {
            pub(super) fn serialize<S: serde::Serializer>(
                b: &[u8],
                s: S,
            ) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(b)
            }
        }
        let doc = Doc {
            name: "n".into(),
            id: Wrapped("d1".into()),
            tags: ["a".into(), "b".into()],
            kinds: vec![
                Kind::Unit,
                Kind::New(-1),
                Kind::Pair(2, 'c'),
                Kind::Named { x: -0.0 },
            ],
            inner: Inner {
                z: -0.0,
                a: None,
                m: [("k".to_owned(), i128::from(i64::MIN))].into(),
            },
            numbered: [(7, true)].into(),
            bytes: vec![1, 2],
            none: None,
            nan: f64::NAN,
            zero: -0.0,
            big: u64::MAX,
            unit: (),
            json: json!({"b": [1.5, {"c": null}], "a": "x"}),
        };
        let stamp = crate::Stamp::new(1, 0, "c").unwrap();
        let direct = Content::from_serialize(&doc).unwrap();
        let through = content(serde_json::to_value(&doc).unwrap());
        assert_eq!(direct, through);
        assert_eq!(
            super::super::Record::create(direct, &stamp).to_json_string(),
            super::super::Record::create(through, &stamp).to_json_string()
        );
    }

    #[test]
    fn every_kind_of_value_in_a_field_of_its_own_is_stored_as_its_json_value_is() {
        // A field that is one scalar is made into its text without the
        // writer's buffer; anything else falls back to the writer.
        #[derive(serde::Serialize)]
        struct Unit;
        #[derive(serde::Serialize)]
        struct Wrapped<T>(T);
        agree![true, false, i8::MIN, i16::MAX, i32::MIN, i64::MIN, i64::MAX];
        agree![u8::MAX, u16::MAX, u32::MAX, u64::MAX, i128::from(i64::MIN)];
        agree![u128::from(u64::MAX), i128::from(u64::MAX)];
        // Beyond 64 bits: refused, also where serde_json's
        // `arbitrary_precision` keeps it (and it was written as the nearest
        // float, in silence).
        for refused in [
            Content::from_serialize(&One {
                id: "s",
                value: u128::MAX,
            }),
            Content::from_serialize(&One {
                id: "s",
                value: i128::MIN,
            }),
            Content::from_serialize(&One {
                id: "s",
                value: [u128::from(u64::MAX) + 1],
            }),
        ] {
            assert!(refused.is_err(), "{refused:?}");
        }
        agree![
            1.5f32,
            -0.0f32,
            f32::NAN,
            0.1f64,
            -0.0f64,
            1e300,
            f64::INFINITY
        ];
        agree!['é', '"', '\n', "", "x", "a \"q\" \\", "\u{1}", "😀"];
        agree![
            "x".repeat(21),
            "x".repeat(22),
            "x".repeat(23),
            "é".repeat(11)
        ];
        agree![
            None::<u8>,
            Some(5),
            Some("s"),
            (),
            Unit,
            Kind::Plain,
            Kind::Holding(1)
        ];
        agree![Wrapped("w"), Wrapped(vec![1, 2]), Some(vec!["a"]), (1, "b")];
        // Short arrays of scalars are made on the stack; any that does not
        // fit, needs an escape or holds anything else is left to the writer.
        agree![
            Vec::<u8>::new(),
            ["tag-1", "group-2"],
            [Some(1.5), None, Some(-0.0)],
            (true, 'c', u64::MAX, i64::MIN, Unit, ()),
            [Kind::Plain, Kind::Plain],
            [Kind::Plain, Kind::Holding(1)],
            [1.5f32, 2.0],
            vec![Wrapped("w"), Wrapped("v")],
            ["a \"q\"", "b"],
            ["\u{1}"],
            ["é", "😀"],
            [vec![1], vec![2]],
            vec![json!({"a": 1})],
            vec![std::collections::BTreeMap::from([("k", 1)])],
        ];
        // A value whose `Serialize` goes on past an item refused (on the
        // stack: the item does not fit, or holds a container) is written
        // whole by the writer, not as the items that fitted.
        agree![
            Lenient(vec![Refused(Some(1)), Refused(None), Refused(Some(2))]),
            Lenient(vec![Lenient(vec![Refused(Some(1)), Refused(None)])]),
            Lenient(vec![vec![1], vec![2]]),
            Lenient(vec!["a".repeat(20), "b".repeat(20), "c".repeat(40)]),
            Lenient(vec!["a", "\"b\""]),
        ];
        // Around the room on the stack: 64 bytes.
        for len in 55..70 {
            agree![
                vec!["x".repeat(len - 4)],
                vec!["x".repeat(len - 6), String::new()]
            ];
            agree![vec![7u8; len / 2], vec![f64::MAX; len / 20]];
        }
        agree![
            std::collections::BTreeMap::from([("k", -0.0)]),
            json!({"b": 1, "a": [2]})
        ];
    }

    /// A map whose `Serialize` went on past an entry the writer refused
    /// (an enum variant holding data, a key that is a number: both left to
    /// serde_json) was stored without that entry, in a field and as the
    /// document itself; the document also lost a field nested past the
    /// limit, where serde_json's value of it is refused.
    #[test]
    fn a_map_that_goes_on_past_a_refused_entry_is_stored_as_its_json_value_is() {
        agree![
            LenientMap(vec![("a", Kind::Holding(1)), ("b", Kind::Plain)]),
            LenientMap(vec![(json!(7), "x"), (json!("k"), "y")]),
            LenientMap(vec![(json!([1]), "x"), (json!("k"), "y")]),
            LenientMap(vec![("a", Refused(None)), ("b", Refused(Some(1)))]),
            One {
                id: "inner",
                value: LenientMap(vec![("a", Kind::Holding(2))]),
            },
        ];
        let document = LenientMap(vec![
            (json!("id"), json!("a")),
            (json!(7), json!("x")),
            (json!("y"), json!(1)),
        ]);
        let direct = Content::from_serialize(&document).unwrap();
        assert_eq!(direct, content(serde_json::to_value(&document).unwrap()));
        // The key `7` is kept, but not with serde_json's
        // `arbitrary_precision`, whose numbers are no keys to it.
        assert!(direct.fields().contains_key("y"));
        let mut deep = json!(1);
        for _ in 0..crate::MAX_NESTING_DEPTH + 5 {
            deep = json!([deep]);
        }
        let document = LenientMap(vec![("id", json!("a")), ("deep", deep), ("x", json!(1))]);
        let direct = Content::from_serialize(&document).unwrap_err().to_string();
        let through = Content::from_value(serde_json::to_value(&document).unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(direct, through);
    }

    /// A struct whose `Serialize` went on past a field refused was counted
    /// as if the field had been stored: the field order it learnt paired
    /// names with the wrong values for every later put of the struct, and
    /// a put of one field fewer against a learnt order panicked.
    #[test]
    fn a_struct_that_goes_on_past_a_refused_field_is_stored_as_its_json_value_is() {
        /// Fields `id`, then `first` (refused for `None`), then two more in
        /// the order `later` gives.
        struct Lax {
            name: &'static str,
            first: (&'static str, Option<u8>),
            later: [&'static str; 2],
        }
        impl Serialize for Lax {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let mut st = serializer.serialize_struct(self.name, 4)?;
                st.serialize_field("id", "lax")?;
                let _ = st.serialize_field(self.first.0, &Refused(self.first.1));
                st.serialize_field(self.later[0], &1)?;
                st.serialize_field(self.later[1], &2)?;
                st.end()
            }
        }
        // Each struct name has an order of its own to learn, from a first
        // put that refused a field or from one that did not.
        let refused_first = [None, Some(5), None, Some(6), Some(7), None];
        for (name, first, later, puts) in [
            ("LaxRefusedFirst", "b", ["a", "c"], &refused_first[..]),
            ("LaxWholeFirst", "b", ["a", "c"], &refused_first[1..]),
            ("LaxSwapsRefusedFirst", "c", ["b", "a"], &refused_first[..]),
            ("LaxSwapsWholeFirst", "c", ["b", "a"], &refused_first[1..]),
        ] {
            for &value in puts {
                let doc = Lax {
                    name,
                    first: (first, value),
                    later,
                };
                let direct = Content::from_serialize(&doc).unwrap();
                let through = content(serde_json::to_value(&doc).unwrap());
                assert_eq!(direct, through, "{name}, {value:?}");
                assert!(direct.fields.is_sorted_by(|(a, _), (b, _)| a < b));
            }
        }
    }

    #[test]
    fn a_struct_put_again_with_other_fields_is_sorted_anew() {
        mod one {
            #[derive(serde::Serialize)]
            pub(super) struct Doc {
                pub(super) z: u8,
                #[serde(skip_serializing_if = "Option::is_none")]
                pub(super) m: Option<u8>,
                pub(super) id: &'static str,
                pub(super) a: u8,
            }
        }
        mod two {
            // The same name, other fields: may share a layout slot.
            #[derive(serde::Serialize)]
            pub(super) struct Doc {
                pub(super) id: &'static str,
                pub(super) y: u8,
                pub(super) b: u8,
                #[serde(rename = "_version")]
                pub(super) version: u8,
            }
        }
        let ones = [None, Some(1), Some(2), None, None, Some(3)].map(|m| one::Doc {
            z: 1,
            m,
            id: "o",
            a: 2,
        });
        for (i, doc) in ones.iter().enumerate() {
            for _ in 0..2 {
                let direct = Content::from_serialize(doc).unwrap();
                let through = content(serde_json::to_value(doc).unwrap());
                assert_eq!(direct, through);
                let other = two::Doc {
                    id: "t",
                    y: 1,
                    b: i as u8,
                    version: 1,
                };
                let direct = Content::from_serialize(&other).unwrap();
                assert_eq!(direct, content(serde_json::to_value(&other).unwrap()));
            }
        }
    }

    #[test]
    fn from_serialize_refuses_a_field_nested_past_the_limit_without_recursing() {
        #[derive(serde::Serialize)]
        struct Doc {
            deep: Value,
            id: &'static str,
        }
        let nested = |levels: usize| (0..levels).fold(json!(1), |v, _| Value::Array(vec![v]));
        let fits = Doc {
            deep: nested(crate::MAX_NESTING_DEPTH),
            id: "n1",
        };
        assert!(Content::from_serialize(&fits).is_ok());
        // Deep enough to overflow the stack of a test thread if anything
        // recursed into it.
        let deep = Doc {
            deep: nested(10_000),
            id: "n1",
        };
        let refused = Content::from_serialize(&deep).unwrap_err();
        assert!(
            matches!(&refused, Error::InvalidRecord { id: Some(id), field: Some(field), .. } if id == "n1" && field == "deep"),
            "{refused}"
        );
        crate::dismantle(deep.deep);
        crate::dismantle(fits.deep);
    }

    /// A hand-written `Serialize` whose size hints are lies, at the top
    /// and nested, as a map and as a struct.
    struct Boasting {
        nested: bool,
    }

    impl serde::Serialize for Boasting {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            use serde::ser::{SerializeMap, SerializeStruct};
            if self.nested {
                let mut map = s.serialize_map(Some(usize::MAX))?;
                map.serialize_entry("k", &1)?;
                return map.end();
            }
            let mut doc = s.serialize_struct("Boasting", usize::MAX)?;
            doc.serialize_field("id", "b1")?;
            doc.serialize_field("inner", &Boasting { nested: true })?;
            doc.end()
        }
    }

    #[test]
    fn from_serialize_takes_a_size_hint_for_a_hint() {
        let put = Content::from_serialize(&Boasting { nested: false }).unwrap();
        // Not compared through `serde_json::to_value`, which trusts the
        // hints too when serde_json's `preserve_order` is on.
        let written = Content::from_value(json!({"id": "b1", "inner": {"k": 1}})).unwrap();
        assert_eq!(put, written);
        // The same lie from a map at the top.
        let map = Content::from_serialize(&Boasting { nested: true });
        assert!(matches!(map, Err(Error::InvalidRecord { .. })), "{map:?}");
    }
}
