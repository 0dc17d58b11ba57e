//! The nesting limit of record values, and the checks that enforce it
//! without recursing.
//!
//! A field value may nest arrays and objects at most [`MAX_NESTING_DEPTH`]
//! levels deep. Every way into a [`Record`](crate::Record) checks it:
//! [`Content::from_value`](crate::Content::from_value),
//! [`Record::from_json`](crate::Record::from_json) (and so every backend's
//! read and every record received from a peer),
//! [`Record::from_parts`](crate::Record::from_parts) and the deserialisation
//! of [`FieldState`](crate::FieldState). A record therefore never holds a
//! value that its own JSON text could not carry back.
//!
//! The checks here never recurse: a value is measured with an explicit stack,
//! a refused value is taken apart with one ([`dismantle`]), and a user's
//! `Serialize` type is measured by a serializer that stops it at the limit
//! ([`check_serialize`]) before anything builds a JSON value from it, or
//! (a put's fields) built by one that counts the same levels as it builds and
//! stops at the same limit. So a value nested 10,000 deep is refused, not a
//! stack overflow.

use serde::ser::{self, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::record::ID_KEY;

/// How deep a record's field value may nest arrays and objects: a scalar
/// field is at depth 0, `[1]` at depth 1, `{"a": [1]}` at depth 2.
///
/// Why 64: serde_json's parser refuses text nested more than 127 levels (its
/// recursion limit is 128), and a record's value never travels alone. The
/// record object adds a level, a stored or sent envelope adds more (the S3
/// record body, the HTTP sync request's `records` array, a change page's
/// entries), so a field at the limit must leave room for several of them. 64
/// leaves the envelopes 62 levels, keeps every recursive walk of a value
/// (comparison, printing, dropping) shallow on any thread's stack, and is far
/// more than real documents nest.
pub const MAX_NESTING_DEPTH: usize = 64;

/// How deep `value` nests arrays and objects (a scalar is at depth 0),
/// measured without recursion, so any value can be measured on any stack.
pub fn nesting_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        let depth = depth + 1;
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|child| (child, depth))),
            Value::Object(map) => stack.extend(map.values().map(|child| (child, depth))),
            _ => continue,
        }
        deepest = deepest.max(depth);
    }
    deepest
}

/// Whether `value` nests deeper than [`MAX_NESTING_DEPTH`].
pub(crate) fn too_deep(value: &Value) -> bool {
    deeper_than(value, MAX_NESTING_DEPTH)
}

/// Whether `value` nests deeper than `levels`. Recurses, but never more
/// than `levels + 1` calls deep whatever the value, so it is as safe on any
/// stack as the heap walk of [`nesting_depth`] — and allocates nothing,
/// where that walk allocated for every value of every record read.
fn deeper_than(value: &Value, levels: usize) -> bool {
    // A container is one level; `levels - 1` is only reached above zero.
    match value {
        Value::Array(items) => levels == 0 || items.iter().any(|c| deeper_than(c, levels - 1)),
        Value::Object(map) => levels == 0 || map.values().any(|c| deeper_than(c, levels - 1)),
        _ => false,
    }
}

/// The reason given when field `field` of record `id` nests too deep.
pub(crate) fn too_deep_error(id: Option<&str>, field: Option<&str>) -> Error {
    let reason = format!(
        "nests arrays and objects more than {MAX_NESTING_DEPTH} levels deep, the limit for a record's values"
    );
    match field {
        Some(field) => Error::invalid_field(id, field, reason),
        None => Error::invalid_record(id, reason),
    }
}

/// Checks a JSON value offered as a record (content or stored form): every
/// key's value at most [`MAX_NESTING_DEPTH`] deep, metadata keys included
/// (none of them nests that deep when valid). On refusal the value is taken
/// apart without recursion, since dropping it would recurse as deep as it
/// nests.
pub(crate) fn check_record_value(value: Value) -> Result<Value> {
    let offending = match &value {
        Value::Object(map) => map
            .iter()
            .find(|(_, v)| too_deep(v))
            .map(|(key, _)| Some(key.clone())),
        // Not an object: refused as such later, unless it is too deep to
        // drop safely.
        other => too_deep(other).then_some(None),
    };
    let Some(field) = offending else {
        return Ok(value);
    };
    let id = value.get(ID_KEY).and_then(Value::as_str).map(str::to_owned);
    dismantle(value);
    Err(too_deep_error(id.as_deref(), field.as_deref()))
}

/// Drops `value` without recursion. Dropping a `Value` recurses once per
/// level of nesting, so a value nested tens of thousands deep would
/// overflow the stack; this takes it apart with a heap stack instead.
pub fn dismantle(value: Value) {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// Checks that `doc`, a document about to be turned into a record's JSON
/// object, nests no field deeper than [`MAX_NESTING_DEPTH`]: it may nest one
/// level more than that, its own object.
///
/// Walks `doc` with a serializer that builds nothing and fails as soon as the
/// limit is passed, so the user's `Serialize` implementation unwinds before
/// it can recurse deeper: call this before any serializer that recurses
/// without a limit (such as `serde_json::to_value`). The refusal names the
/// record (when `doc` has a string `id`) and the field. An error of `doc`'s
/// own `Serialize` implementation is returned as an [`Error::InvalidRecord`]
/// too.
pub fn check_serialize<T: Serialize + ?Sized>(doc: &T) -> Result<()> {
    let mut probe = Probe::new(Mode::Measure);
    let walked = doc.serialize(&mut probe);
    match probe.outcome(walked) {
        Ok(()) => Ok(()),
        Err(ProbeError::TooDeep { field }) => {
            // The id may come after the offending field: a second walk reads
            // only the top level and the `id` value, so it cannot go deep.
            let mut finder = Probe::new(Mode::FindId);
            let id = match doc.serialize(&mut finder) {
                Ok(()) => finder.id,
                Err(_) => None,
            };
            Err(too_deep_error(id.as_deref(), field.as_deref()))
        }
        Err(ProbeError::Custom(message)) => Err(Error::invalid_record(
            None,
            format!("cannot be serialised to JSON: {message}"),
        )),
    }
}

/// Whether `value`, about to become the value of one top-level field of a
/// record, nests at most [`MAX_NESTING_DEPTH`] deep: measured as
/// [`check_serialize`] measures a field, building nothing. `Err` carries the
/// message of `value`'s own `Serialize` implementation when it fails.
///
/// This lets a put convert its document field by field, each field measured
/// just before it is converted, instead of walking the whole document twice;
/// a put measures this way only the values its one-pass builder leaves to
/// serde_json.
pub(crate) fn field_fits<T: Serialize + ?Sized>(value: &T) -> std::result::Result<bool, String> {
    let mut probe = Probe::new(Mode::Measure);
    // Inside the record's own object, below the top level.
    probe.depth = 1;
    let walked = value.serialize(&mut probe);
    match probe.outcome(walked) {
        Ok(()) => Ok(true),
        Err(ProbeError::TooDeep { .. }) => Ok(false),
        Err(ProbeError::Custom(message)) => Err(message),
    }
}

/// What a [`Probe`] walk is for.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Measure every value, failing past the limit.
    Measure,
    /// Read the top-level `id` string only; descend into nothing else.
    FindId,
}

/// A serializer that writes nothing: it counts how deep the JSON that
/// serde_json would write nests, and remembers the top-level key being
/// written (the field) and a top-level string `id`.
struct Probe {
    mode: Mode,
    /// Containers open around the value being serialised.
    depth: usize,
    /// The top-level key whose value is being serialised.
    field: Option<String>,
    /// The key being serialised, while a map key is.
    key: Option<String>,
    /// Set while a map key is serialised: its string is the key.
    in_key: bool,
    /// Inside a map key at any depth: a key is written as a string, so an
    /// integer of any width makes one.
    in_any_key: bool,
    /// Set while the top-level `id` value is serialised.
    in_id: bool,
    /// The top-level `id`, when it is a string.
    id: Option<String>,
    /// Set inside a serde_json `RawValue` or `arbitrary_precision` number,
    /// whose one string is JSON text.
    raw: bool,
    /// The first refusal a `Serialize` going on past it must not undo (a
    /// container past the limit, an integer beyond 64 bits, a map's value
    /// without its key): the walk answers it whatever came after, or the
    /// caller would go on to `serde_json::to_value`, which recurses without
    /// a limit, keeps such an integer under `arbitrary_precision`, and
    /// panics at a value without a key.
    refused: Option<ProbeError>,
    /// Whether the map being written holds a key serde_json took, its
    /// value not yet serialised (serde_json's map keeps the last key it
    /// took until a value takes it).
    key_taken: bool,
    /// Whether the serde_json private struct being written (see
    /// [`WRITTEN_AS_TEXT`]) had its one field.
    raw_field: bool,
}

/// How the names serde_json gives its private structs start: the struct
/// (and its one field) that carries a `RawValue`'s text, or an
/// `arbitrary_precision` number's. serde_json writes either as that text.
pub(crate) const PRIVATE_TOKEN: &str = "$serde_json::private::";

/// The names of those two structs whole: a struct of the user's own whose
/// name merely starts like them is written as an object, and counted so.
const WRITTEN_AS_TEXT: [&str; 2] = [
    "$serde_json::private::RawValue",
    "$serde_json::private::Number",
];

/// How deep JSON text nests arrays and objects: its brackets outside
/// strings. The text is valid JSON (a `RawValue` is checked when made).
fn text_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Why a [`Probe`] stopped.
#[derive(Debug, Clone)]
enum ProbeError {
    /// The limit was passed inside top-level field `field`.
    TooDeep { field: Option<String> },
    /// The value's `Serialize` implementation failed.
    Custom(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::TooDeep { .. } => write!(f, "nested too deep"),
            ProbeError::Custom(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ProbeError {}

impl ser::Error for ProbeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ProbeError::Custom(msg.to_string())
    }
}

type ProbeResult = std::result::Result<(), ProbeError>;

impl Probe {
    fn new(mode: Mode) -> Self {
        Probe {
            mode,
            depth: 0,
            field: None,
            key: None,
            in_key: false,
            in_any_key: false,
            in_id: false,
            id: None,
            raw: false,
            refused: None,
            key_taken: false,
            raw_field: false,
        }
    }

    /// Answers `error`, and keeps it as the walk's answer.
    fn refuse(&mut self, error: ProbeError) -> ProbeResult {
        self.refused.get_or_insert_with(|| error.clone());
        Err(error)
    }

    /// Refuses, inside a map key, what serde_json refuses as one at its
    /// first call, without looking further into it, as serde_json does not.
    fn not_a_key(&self) -> ProbeResult {
        if self.in_any_key {
            return Err(ProbeError::Custom("key must be a string".to_owned()));
        }
        Ok(())
    }

    /// Refuses an integer beyond 64 bits, as serde_json does unless its
    /// `arbitrary_precision` feature is on; with it, such a number was kept
    /// as its digits and then written as the nearest float, changing it in
    /// silence (and a program with the feature took what one without it
    /// refused).
    fn in_64_bits(&mut self, fits: bool) -> ProbeResult {
        if fits {
            return Ok(());
        }
        self.refuse(ProbeError::Custom(
            "number out of range: an integer beyond 64 bits".to_owned(),
        ))
    }

    /// How the walk of a value ended: refused when anything was refused
    /// that must stay so, even where the value's `Serialize` went on past.
    fn outcome(&mut self, walked: ProbeResult) -> ProbeResult {
        match self.refused.take() {
            Some(refusal) => Err(refusal),
            None => walked,
        }
    }

    /// A `RawValue`'s JSON text: as deep as its brackets nest, where the
    /// data model shows one string.
    fn raw_text(&mut self, json: &str) -> ProbeResult {
        if self.mode == Mode::FindId {
            return Ok(());
        }
        let levels = text_depth(json);
        for _ in 0..levels {
            self.open()?;
        }
        self.depth -= levels;
        Ok(())
    }

    /// Opens a container; fails when it nests past the limit (the record's
    /// own object plus [`MAX_NESTING_DEPTH`] levels).
    fn open(&mut self) -> ProbeResult {
        self.not_a_key()?;
        if self.depth > MAX_NESTING_DEPTH {
            let field = self.field.clone();
            return self.refuse(ProbeError::TooDeep { field });
        }
        self.depth += 1;
        Ok(())
    }

    fn close(&mut self) -> ProbeResult {
        self.depth = self.depth.saturating_sub(1);
        Ok(())
    }

    fn string(&mut self, s: &str) -> ProbeResult {
        if self.in_key {
            self.key = Some(s.to_owned());
        } else if self.in_id {
            self.id = Some(s.to_owned());
        }
        Ok(())
    }

    /// Serialises the value of key `key` of the container being written.
    /// Keys are copied only at the top level, where they name the field:
    /// a document's every key is not worth an allocation.
    fn value<T: Serialize + ?Sized>(&mut self, key: Option<&str>, value: &T) -> ProbeResult {
        let top = self.depth == 1;
        let is_id = top && key == Some(ID_KEY);
        if self.mode == Mode::FindId && !is_id {
            return Ok(());
        }
        if !top {
            return self.nested(value);
        }
        self.field = key.map(str::to_owned);
        self.in_id = is_id;
        let result = self.nested(value);
        self.in_id = false;
        result
    }

    /// Serialises a value inside the containers open now, and leaves them
    /// open as they were: a value that failed inside a container of its
    /// own may not have closed it, and its siblings are no deeper for it.
    fn nested<T: Serialize + ?Sized>(&mut self, value: &T) -> ProbeResult {
        let depth = self.depth;
        let result = value.serialize(&mut *self);
        self.depth = depth;
        result
    }

    /// Serialises an element of a sequence (never a top-level field).
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> ProbeResult {
        if self.mode == Mode::FindId {
            return Ok(());
        }
        self.in_id = false;
        self.nested(value)
    }
}

impl ser::Serializer for &mut Probe {
    type Ok = ();
    type Error = ProbeError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, _: bool) -> ProbeResult {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> ProbeResult {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> ProbeResult {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> ProbeResult {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> ProbeResult {
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> ProbeResult {
        let fits = self.in_any_key || i64::try_from(v).is_ok() || u64::try_from(v).is_ok();
        self.in_64_bits(fits)
    }
    fn serialize_u8(self, _: u8) -> ProbeResult {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> ProbeResult {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> ProbeResult {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> ProbeResult {
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> ProbeResult {
        let fits = self.in_any_key || u64::try_from(v).is_ok();
        self.in_64_bits(fits)
    }
    fn serialize_f32(self, v: f32) -> ProbeResult {
        if v.is_finite() {
            return Ok(());
        }
        self.not_a_key()
    }
    fn serialize_f64(self, v: f64) -> ProbeResult {
        if v.is_finite() {
            return Ok(());
        }
        self.not_a_key()
    }
    fn serialize_char(self, c: char) -> ProbeResult {
        self.string(c.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, s: &str) -> ProbeResult {
        if self.raw {
            return self.raw_text(s);
        }
        self.string(s)
    }
    /// serde_json writes bytes as an array of numbers: one level.
    fn serialize_bytes(self, _: &[u8]) -> ProbeResult {
        self.open()?;
        self.close()
    }
    fn serialize_none(self) -> ProbeResult {
        self.not_a_key()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> ProbeResult {
        self.not_a_key()?;
        value.serialize(self)
    }
    fn serialize_unit(self) -> ProbeResult {
        self.not_a_key()
    }
    fn serialize_unit_struct(self, _: &'static str) -> ProbeResult {
        self.not_a_key()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, v: &'static str) -> ProbeResult {
        self.string(v)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> ProbeResult {
        value.serialize(self)
    }
    /// serde_json writes `{"variant": value}`: one level around the value.
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> ProbeResult {
        self.open()?;
        self.value(Some(variant), value)?;
        self.close()
    }
    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Self, ProbeError> {
        self.open()?;
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> std::result::Result<Self, ProbeError> {
        self.open()?;
        Ok(self)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, ProbeError> {
        self.open()?;
        Ok(self)
    }
    /// serde_json writes `{"variant": [...]}`: two levels.
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> std::result::Result<Self, ProbeError> {
        self.open()?;
        if self.depth == 1 {
            self.field = Some(variant.to_owned());
        }
        self.open()?;
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Self, ProbeError> {
        self.open()?;
        // Each map's values have keys of their own.
        self.key_taken = false;
        Ok(self)
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _: usize,
    ) -> std::result::Result<Self, ProbeError> {
        // serde_json writes a `RawValue` or a number as its text, not as an
        // object; as a map key it refuses either.
        if WRITTEN_AS_TEXT.contains(&name) {
            self.not_a_key()?;
            self.raw = true;
            self.raw_field = false;
        } else {
            self.open()?;
        }
        Ok(self)
    }
    /// serde_json writes `{"variant": {...}}`: two levels.
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> std::result::Result<Self, ProbeError> {
        self.open()?;
        if self.depth == 1 {
            self.field = Some(variant.to_owned());
        }
        self.open()?;
        Ok(self)
    }
}

impl ser::SerializeSeq for &mut Probe {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> ProbeResult {
        self.element(value)
    }
    fn end(self) -> ProbeResult {
        self.close()
    }
}

impl ser::SerializeTuple for &mut Probe {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> ProbeResult {
        self.element(value)
    }
    fn end(self) -> ProbeResult {
        self.close()
    }
}

impl ser::SerializeTupleStruct for &mut Probe {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> ProbeResult {
        self.element(value)
    }
    fn end(self) -> ProbeResult {
        self.close()
    }
}

impl ser::SerializeTupleVariant for &mut Probe {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> ProbeResult {
        self.element(value)
    }
    fn end(self) -> ProbeResult {
        self.close()?;
        self.close()
    }
}

impl ser::SerializeMap for &mut Probe {
    type Ok = ();
    type Error = ProbeError;
    /// Keys are read for their string. One serde_json refuses (anything but
    /// a string, a number, a `bool`, a `char` or a unit variant; a float
    /// that is not finite) is refused as serde_json refuses it, at its
    /// first call, and leaves the map as serde_json's is left: holding the
    /// key it took before, if any, for the next value.
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> ProbeResult {
        let outer = std::mem::replace(&mut self.in_any_key, true);
        let result = if self.depth != 1 {
            self.nested(key)
        } else {
            let taken = self.key.take();
            self.in_key = true;
            let result = self.nested(key);
            self.in_key = false;
            if result.is_err() {
                self.key = taken;
            }
            result
        };
        self.in_any_key = outer;
        if result.is_ok() {
            self.key_taken = true;
        }
        result
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> ProbeResult {
        // serde_json panics at a value whose key it did not take.
        if !std::mem::take(&mut self.key_taken) {
            return self.refuse(ProbeError::Custom(
                "a map's value came without its key".to_owned(),
            ));
        }
        let key = self.key.take();
        let result = self.value(key.as_deref(), value);
        // The value took the key, whatever maps inside it left behind.
        self.key_taken = false;
        result
    }
    fn end(self) -> ProbeResult {
        self.close()
    }
}

impl ser::SerializeStruct for &mut Probe {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> ProbeResult {
        if self.raw {
            // serde_json's private struct holds one field, named as it is,
            // and panics at its end without it.
            if self.raw_field || !WRITTEN_AS_TEXT.contains(&key) {
                return self.refuse(ProbeError::Custom(format!(
                    "field {key:?} in a struct named as serde_json's own {WRITTEN_AS_TEXT:?}"
                )));
            }
            self.raw_field = true;
            return value.serialize(&mut **self);
        }
        self.value(Some(key), value)
    }
    fn end(self) -> ProbeResult {
        if std::mem::take(&mut self.raw) {
            if !std::mem::take(&mut self.raw_field) {
                return self.refuse(ProbeError::Custom(
                    "a struct named as serde_json's own without its one field".to_owned(),
                ));
            }
            return Ok(());
        }
        self.close()
    }
}

impl ser::SerializeStructVariant for &mut Probe {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> ProbeResult {
        self.value(Some(key), value)
    }
    fn end(self) -> ProbeResult {
        self.close()?;
        self.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Lenient, LenientMap};
    use crate::{Content, FieldState, Record, Stamp, VersionVector};
    use serde_json::json;

    /// `[[...[1]...]]`, `levels` arrays deep, built without recursion.
    fn nested(levels: usize) -> Value {
        let mut value = json!(1);
        for _ in 0..levels {
            value = Value::Array(vec![value]);
        }
        value
    }

    /// A record object `{"id": "deep", "a": 1, "d": <nested(levels)>}`.
    fn doc(levels: usize) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("id".to_owned(), json!("deep"));
        map.insert("a".to_owned(), json!(1));
        map.insert("d".to_owned(), nested(levels));
        Value::Object(map)
    }

    /// Runs `f` on a thread with the 2 MiB stack of a default thread or
    /// tokio worker: a recursion as deep as the values tested would overflow
    /// it and abort the test process.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    const REFUSAL: &str = "invalid record \"deep\", field `d`: nests arrays and objects more than 64 levels deep, the limit for a record's values";

    #[test]
    fn the_limit_check_agrees_with_the_measured_depth_and_stays_shallow() {
        let mixed = |levels: usize| {
            let mut value = json!({"x": 1});
            for level in 0..levels {
                value = if level % 2 == 0 {
                    json!([1, {"k": value}, []])
                } else {
                    json!({"a": [], "b": value, "c": "s"})
                };
            }
            value
        };
        for levels in (0..=70).chain([MAX_NESTING_DEPTH * 3]) {
            for value in [nested(levels), mixed(levels)] {
                let depth = nesting_depth(&value);
                assert_eq!(too_deep(&value), depth > MAX_NESTING_DEPTH, "depth {depth}");
                dismantle(value);
            }
        }
        // However deep the value, the check recurses only past the limit.
        on_small_stack(|| {
            let value = nested(100_000);
            assert!(too_deep(&value));
            dismantle(value);
        });
    }

    #[test]
    fn depth_is_measured_without_recursion() {
        assert_eq!(nesting_depth(&json!(1)), 0);
        assert_eq!(nesting_depth(&json!([1])), 1);
        assert_eq!(nesting_depth(&json!({"a": [1, {"b": []}]})), 4);
        on_small_stack(|| {
            let value = nested(100_000);
            assert_eq!(nesting_depth(&value), 100_000);
            dismantle(value);
        });
    }

    #[test]
    fn content_at_the_limit_is_accepted_and_deeper_refused_naming_record_and_field() {
        let content = Content::from_value(doc(MAX_NESTING_DEPTH)).unwrap();
        assert_eq!(nesting_depth(&content.fields()["d"]), MAX_NESTING_DEPTH);
        for levels in [MAX_NESTING_DEPTH + 1, 10_000] {
            on_small_stack(move || {
                let err = Content::from_value(doc(levels)).unwrap_err();
                assert_eq!(err.to_string(), REFUSAL);
                assert!(matches!(err, Error::InvalidRecord { field: Some(f), .. } if f == "d"));
            });
        }
        // Not an object, and too deep to drop by recursion: still a refusal.
        on_small_stack(|| {
            let err = Content::from_value(nested(100_000)).unwrap_err();
            assert!(
                err.to_string().contains("more than 64 levels deep"),
                "{err}"
            );
        });
    }

    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Item {
        /// An enum variant holding data: left to serde_json by the writer.
        Variant(Kind),
        /// Refused by the probe, and by serde_json without its
        /// `arbitrary_precision` feature.
        Wide(u128),
        /// An array that fails after opening, without closing.
        FailsInside(FailsInside),
        Value(Value),
    }

    #[derive(serde::Serialize)]
    enum Kind {
        Holding(u8),
    }

    struct FailsInside;

    impl Serialize for FailsInside {
        fn serialize<S: ser::Serializer>(
            &self,
            serializer: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            let _open = serializer.serialize_seq(None)?;
            Err(ser::Error::custom("failed inside"))
        }
    }

    /// A document `{"id": "s", "v": value}`.
    #[derive(serde::Serialize)]
    struct InAField<T> {
        id: &'static str,
        v: T,
    }

    /// Drops `items` without recursion.
    fn dismantle_items(items: Lenient<Item>) {
        for item in items.0 {
            if let Item::Value(value) = item {
                dismantle(value);
            }
        }
    }

    /// A `Serialize` that ignored the probe's refusal past the limit made
    /// the walk answer `Ok`, and the value was then converted by
    /// `serde_json::to_value` without a limit: the stack overflowed. And an
    /// item failing inside an array it opened left the probe one level
    /// deeper for its siblings, which were refused at the limit.
    #[test]
    fn a_value_that_goes_on_past_a_refusal_is_measured_as_it_is() {
        on_small_stack(|| {
            let deep = || Item::Value(nested(100_000));
            let document = Lenient(vec![deep()]);
            assert!(Content::from_serialize(&document).is_err());
            dismantle_items(document);
            let in_a_field = InAField {
                id: "s",
                v: Lenient(vec![Item::Variant(Kind::Holding(1)), deep()]),
            };
            let err = Content::from_serialize(&in_a_field).unwrap_err();
            assert!(err.to_string().contains("levels deep"), "{err}");
            dismantle_items(in_a_field.v);
        });
        // The field's array is one level: 63 more reach the limit.
        let at_the_limit = InAField {
            id: "s",
            v: Lenient(vec![
                Item::FailsInside(FailsInside),
                Item::Value(nested(MAX_NESTING_DEPTH - 1)),
            ]),
        };
        let content = Content::from_serialize(&at_the_limit).unwrap();
        assert_eq!(nesting_depth(&content.fields()["v"]), MAX_NESTING_DEPTH);
    }

    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Key {
        Name(&'static str),
        FailsInside(FailsInside),
    }

    /// What a key or a value of a [`Scripted`] map is.
    enum Part {
        Json(Value),
        Unit,
        /// A `RawValue` of this text, which serde_json writes as its text
        /// and refuses as a key.
        Raw(&'static str),
        Map(Scripted),
    }

    impl Serialize for Part {
        fn serialize<S: ser::Serializer>(
            &self,
            serializer: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            match self {
                Part::Json(value) => value.serialize(serializer),
                Part::Unit => serializer.serialize_unit(),
                Part::Raw(text) => serde_json::value::RawValue::from_string((*text).to_owned())
                    .map_err(ser::Error::custom)?
                    .serialize(serializer),
                Part::Map(map) => map.serialize(serializer),
            }
        }
    }

    /// One call a [`Scripted`] map's `Serialize` makes.
    enum Call {
        /// `serialize_key`, going on past its error.
        Key(Part),
        /// `serialize_key`, stopping at its error.
        KeyOrStop(Part),
        /// `serialize_value`, going on past its error.
        Value(Part),
        /// `serialize_entry`, going on past its error.
        Entry(Part, Part),
        /// An error of the `Serialize` itself, the map left unended.
        Fail,
    }

    /// A map whose `Serialize` makes these calls in order, then ends it: a
    /// hand-written one may go on past an error, or call out of order.
    struct Scripted(Vec<Call>);

    impl Serialize for Scripted {
        fn serialize<S: ser::Serializer>(
            &self,
            serializer: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            use ser::SerializeMap;
            let mut map = serializer.serialize_map(None)?;
            for call in &self.0 {
                match call {
                    Call::Key(key) => drop(map.serialize_key(key)),
                    Call::KeyOrStop(key) => map.serialize_key(key)?,
                    Call::Value(value) => drop(map.serialize_value(value)),
                    Call::Entry(key, value) => drop(map.serialize_entry(key, value)),
                    Call::Fail => return Err(ser::Error::custom("stops")),
                }
            }
            map.end()
        }
    }

    fn json(value: Value) -> Part {
        Part::Json(value)
    }

    /// A value given after a key serde_json refuses (`keyed`), or without
    /// a key at all.
    fn keyless(keyed: bool) -> Scripted {
        let key = keyed.then(|| Call::Key(json(json!([1]))));
        Scripted(
            key.into_iter()
                .chain([Call::Value(json(json!(1)))])
                .collect(),
        )
    }

    /// A key and no value.
    fn key_only() -> Scripted {
        Scripted(vec![Call::KeyOrStop(json(json!("x")))])
    }

    /// A `RawValue` key, then a value.
    fn raw_keyed() -> Scripted {
        Scripted(vec![
            Call::Key(Part::Raw("\"k\"")),
            Call::Value(json(json!(1))),
        ])
    }

    /// A key, then a failure before its value.
    fn key_then_fails() -> Scripted {
        Scripted(vec![Call::KeyOrStop(json(json!("x"))), Call::Fail])
    }

    /// An entry whose value failed (a map given a key), then a value of no
    /// key.
    fn after_a_failed_value() -> Scripted {
        Scripted(vec![
            Call::Entry(json(json!("a")), Part::Map(key_then_fails())),
            Call::Value(json(json!(1))),
        ])
    }

    /// A key serde_json refuses after one it took, then a value: serde_json's
    /// map gives the value the key it took.
    fn key_kept() -> Scripted {
        Scripted(vec![
            Call::Entry(json(json!("id")), json(json!("a"))),
            Call::Key(json(json!("x"))),
            Call::Key(Part::Unit),
            Call::Value(json(json!(1))),
        ])
    }

    /// A value without its key after a map that ended with its key's value
    /// missing was taken for the key's (one flag for every map of the
    /// walk), and serde_json's map then panicked at it; so it did after a
    /// `RawValue` key.
    #[test]
    fn a_value_without_its_key_is_refused_whatever_came_before() {
        assert!(check_serialize(&(key_only(), keyless(false))).is_err());
        assert!(check_serialize(&raw_keyed()).is_err());
        let after_a_key_only = InAField {
            id: "s",
            v: (key_only(), keyless(false)),
        };
        assert!(Content::from_serialize(&after_a_key_only).is_err());
        assert!(Content::from_serialize(&InAField {
            id: "s",
            v: raw_keyed()
        })
        .is_err());
    }

    /// A struct named as serde_json's own, without its one field.
    #[derive(serde::Serialize)]
    #[serde(rename = "$serde_json::private::RawValue")]
    struct NamedAsRawValue {}

    /// What the probe still got wrong about maps whose `Serialize` goes on
    /// past a refusal: a map inside a value, ending after its key, left
    /// the key as the outer map's (serde_json's map then panicked at a
    /// value without one); a refused key after a taken one lost the taken
    /// one, which serde_json's map keeps for the next value; a key that is
    /// a container was walked into, and refused as too deep where
    /// serde_json refuses it at once and leaves the entry out; and a struct
    /// named as serde_json's own passed without its field, at which
    /// serde_json panics.
    #[test]
    fn maps_that_go_on_past_a_refusal_are_measured_as_serde_json_reads_them() {
        assert!(Content::from_serialize(&InAField {
            id: "s",
            v: after_a_failed_value()
        })
        .is_err());
        assert!(check_serialize(&after_a_failed_value()).is_err());
        assert!(Content::from_serialize(&InAField {
            id: "s",
            v: NamedAsRawValue {}
        })
        .is_err());
        let direct = Content::from_serialize(&key_kept()).unwrap();
        let through = Content::from_value(serde_json::to_value(key_kept()).unwrap()).unwrap();
        assert_eq!(direct, through);
        assert_eq!(direct.fields().get("x"), Some(&json!(1)));
        let deep_key = LenientMap(vec![
            (nested(MAX_NESTING_DEPTH + 1), json!(0)),
            (json!("id"), json!("a")),
            (json!("x"), json!(1)),
        ]);
        let direct = Content::from_serialize(&deep_key).unwrap();
        let through = Content::from_value(serde_json::to_value(&deep_key).unwrap()).unwrap();
        assert_eq!(direct, through);
        let deep_key = LenientMap(vec![
            (nested(MAX_NESTING_DEPTH), json!(0)),
            (json!("k"), json!(1)),
        ]);
        let direct = Content::from_serialize(&InAField {
            id: "s",
            v: deep_key,
        })
        .unwrap();
        assert_eq!(direct.fields()["v"], json!({"k": 1}));
    }

    /// What a map's `Serialize` going on past a refusal left the probe
    /// with: a key failing inside an array it opened left the entries
    /// after it a level deeper (and the document's fields unnamed); an
    /// integer beyond 64 bits was let through, to be dropped by serde_json,
    /// or kept and rounded under `arbitrary_precision`; a value after a
    /// refused key reached serde_json's map, which panics at it.
    #[test]
    fn a_map_that_goes_on_past_a_refusal_is_measured_as_serde_json_reads_it() {
        let document = LenientMap(vec![
            (Key::FailsInside(FailsInside), json!(0)),
            (Key::Name("id"), json!("a")),
            (Key::Name("d"), nested(MAX_NESTING_DEPTH)),
        ]);
        let direct = Content::from_serialize(&document).unwrap();
        let through = Content::from_value(serde_json::to_value(&document).unwrap()).unwrap();
        assert_eq!(direct, through);
        let wide = InAField {
            id: "s",
            v: Lenient(vec![Item::Wide(u128::MAX), Item::Value(json!(1))]),
        };
        let err = Content::from_serialize(&wide).unwrap_err();
        assert!(err.to_string().contains("beyond 64 bits"), "{err}");
        for keyed in [true, false] {
            assert!(check_serialize(&keyless(keyed)).is_err());
            let err = Content::from_serialize(&InAField {
                id: "s",
                v: keyless(keyed),
            })
            .unwrap_err();
            assert!(err.to_string().contains("key"), "{err}");
        }
    }

    /// A number as serde_json's `arbitrary_precision` feature (which any
    /// crate of a program can turn on) serialises it: a private struct whose
    /// one field is the number's text.
    struct PreciseNumber;

    impl Serialize for PreciseNumber {
        fn serialize<S: ser::Serializer>(
            &self,
            serializer: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            use ser::SerializeStruct;
            const TOKEN: &str = "$serde_json::private::Number";
            let mut number = serializer.serialize_struct(TOKEN, 1)?;
            number.serialize_field(TOKEN, "1")?;
            number.end()
        }
    }

    /// `levels` arrays around a [`PreciseNumber`].
    struct ArraysAround(usize);

    impl Serialize for ArraysAround {
        fn serialize<S: ser::Serializer>(
            &self,
            serializer: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            use ser::SerializeSeq;
            if self.0 == 0 {
                return PreciseNumber.serialize(serializer);
            }
            let mut array = serializer.serialize_seq(Some(1))?;
            array.serialize_element(&ArraysAround(self.0 - 1))?;
            array.end()
        }
    }

    /// Such a number was counted as an object, one level more than the
    /// text serde_json writes: a value at the limit was refused.
    #[test]
    fn an_arbitrary_precision_number_nests_as_its_text() {
        assert_eq!(field_fits(&ArraysAround(MAX_NESTING_DEPTH)), Ok(true));
        assert_eq!(field_fits(&ArraysAround(MAX_NESTING_DEPTH + 1)), Ok(false));
    }

    #[test]
    fn stored_records_are_checked_and_a_record_at_the_limit_survives_envelopes() {
        let stamp = Stamp::new(1, 0, "c").unwrap();
        let record = Record::create(Content::from_value(doc(MAX_NESTING_DEPTH)).unwrap(), &stamp);
        // Three envelopes around the record (S3 body, HTTP request, page):
        // serde_json still parses the text.
        let text = format!("{{\"a\":[{{\"b\":{}}}]}}", record.to_json_string());
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            Record::from_json(back["a"][0]["b"].clone()).unwrap(),
            record
        );

        let mut deeper = record.to_json();
        deeper["d"] = nested(MAX_NESTING_DEPTH + 1);
        let err = Record::from_json(deeper.clone()).unwrap_err();
        assert_eq!(err.to_string(), REFUSAL);
        // Through the text, as every backend and peer reads records.
        let err = serde_json::from_str::<Record>(&deeper.to_string()).unwrap_err();
        assert!(err.to_string().starts_with(REFUSAL), "{err}");
        on_small_stack(move || {
            let mut deepest = record.to_json();
            deepest["d"] = nested(10_000);
            assert_eq!(Record::from_json(deepest).unwrap_err().to_string(), REFUSAL);
        });
    }

    #[test]
    fn field_states_for_records_from_parts_are_checked() {
        let stamp = Stamp::new(1, 0, "c").unwrap();
        let parts = |levels| -> crate::Result<Record> {
            let fields = [(
                "d".to_owned(),
                FieldState::new(Some(nested(levels)), stamp.clone())?,
            )];
            Record::from_parts(
                "deep",
                fields.into_iter().collect::<crate::FieldStates>(),
                stamp.clone(),
                None,
                VersionVector::new(),
            )
        };
        assert!(parts(MAX_NESTING_DEPTH).is_ok());
        let err = parts(MAX_NESTING_DEPTH + 1).unwrap_err().to_string();
        assert!(err.contains("more than 64 levels deep"), "{err}");
        let state = |levels| {
            format!(
                "{{\"value\":{},\"stamp\":\"000000000001.00000000.c\"}}",
                nested(levels)
            )
        };
        assert!(serde_json::from_str::<FieldState>(&state(MAX_NESTING_DEPTH)).is_ok());
        let err = serde_json::from_str::<FieldState>(&state(MAX_NESTING_DEPTH + 1)).unwrap_err();
        assert!(
            err.to_string().contains("more than 64 levels deep"),
            "{err}"
        );
    }

    /// A user type nesting by recursion in its `Serialize`, as deep as asked.
    #[derive(serde::Serialize)]
    struct Node {
        child: Option<Box<Node>>,
    }

    #[derive(serde::Serialize)]
    struct Doc {
        a: u8,
        tree: Node,
        id: &'static str,
    }

    fn tree(levels: usize) -> Node {
        let mut node = Node { child: None };
        for _ in 1..levels {
            node = Node {
                child: Some(Box::new(node)),
            };
        }
        node
    }

    /// Drops a [`tree`] without recursion.
    fn fell(mut node: Node) {
        while let Some(child) = node.child.take() {
            node = *child;
        }
    }

    /// A value whose `Serialize` writes something deeper on a later call
    /// than on the first ones was measured on one call and converted on the
    /// next, and the record built held a value past the limit, which every
    /// reader of it then refused.
    #[test]
    fn a_value_serialised_deeper_on_a_later_call_is_refused() {
        struct Shifting(std::cell::Cell<u32>);
        impl Serialize for Shifting {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let calls = self.0.get();
                self.0.set(calls + 1);
                let levels = if calls < 2 { 1 } else { MAX_NESTING_DEPTH + 6 };
                serializer.serialize_newtype_variant("E", 0, "V", &nested(levels))
            }
        }
        #[derive(serde::Serialize)]
        struct Doc {
            id: &'static str,
            f: Shifting,
        }
        let doc = Doc {
            id: "shifting",
            f: Shifting(std::cell::Cell::new(0)),
        };
        let refused = Content::from_serialize(&doc);
        assert!(doc.f.0.get() >= 3, "serialised {} times", doc.f.0.get());
        let err = refused.unwrap_err();
        assert!(err.to_string().contains("64 levels deep"), "{err}");
    }

    /// Only serde_json's own two private structs are written as text: one
    /// of the user's whose name starts like theirs is an object, and was
    /// counted as no level at all.
    #[test]
    fn a_struct_named_like_serde_jsons_private_ones_is_counted() {
        #[derive(serde::Serialize)]
        #[serde(rename = "$serde_json::private::Mine")]
        struct Mine {
            inner: Option<Box<Mine>>,
        }
        #[derive(serde::Serialize)]
        struct Doc {
            id: &'static str,
            f: Mine,
        }
        let mut mine = Mine { inner: None };
        for _ in 0..MAX_NESTING_DEPTH + 6 {
            mine = Mine {
                inner: Some(Box::new(mine)),
            };
        }
        let doc = Doc {
            id: "named",
            f: mine,
        };
        let err = check_serialize(&doc).unwrap_err();
        assert!(err.to_string().contains("64 levels deep"), "{err}");
        assert!(Content::from_serialize(&doc).is_err());
    }

    #[test]
    fn serialize_is_stopped_at_the_limit_before_it_recurses_deeper() {
        assert!(check_serialize(&doc(MAX_NESTING_DEPTH)).is_ok());
        let measured = serde_json::to_value(doc(MAX_NESTING_DEPTH)).unwrap();
        assert_eq!(nesting_depth(&measured), MAX_NESTING_DEPTH + 1);
        for levels in [MAX_NESTING_DEPTH + 1, 10_000] {
            on_small_stack(move || {
                let value = doc(levels);
                let err = check_serialize(&value).unwrap_err();
                dismantle(value);
                assert_eq!(err.to_string(), REFUSAL);
            });
        }
        // A derived type: `{"a":0,"tree":{"child":{...}},"id":"t"}`, the id
        // after the field at fault.
        assert!(check_serialize(&Doc {
            a: 0,
            tree: tree(MAX_NESTING_DEPTH),
            id: "t"
        })
        .is_ok());
        for levels in [MAX_NESTING_DEPTH + 1, 10_000] {
            on_small_stack(move || {
                let doc = Doc {
                    a: 0,
                    tree: tree(levels),
                    id: "t",
                };
                let err = check_serialize(&doc).unwrap_err();
                fell(doc.tree);
                assert_eq!(
                    err.to_string(),
                    "invalid record \"t\", field `tree`: nests arrays and objects more than 64 levels deep, the limit for a record's values"
                );
            });
        }
        // What the probe counts is what serde_json writes, enums included.
        #[derive(serde::Serialize)]
        enum E {
            New(Vec<u8>),
            Tuple(u8, Vec<u8>),
            Struct { x: Vec<u8> },
            Unit,
        }
        for value in [
            E::New(vec![1]),
            E::Tuple(1, vec![]),
            E::Struct { x: vec![] },
            E::Unit,
        ] {
            let depth = nesting_depth(&serde_json::to_value(&value).unwrap());
            // With `open` containers around it, the value fits when
            // `open + depth` is within the document's limit.
            let fits = |open: usize| {
                let mut probe = Probe::new(Mode::Measure);
                probe.depth = open;
                value.serialize(&mut probe).is_ok() && probe.depth == open
            };
            assert!(fits(MAX_NESTING_DEPTH + 1 - depth));
            assert!(depth == 0 || !fits(MAX_NESTING_DEPTH + 2 - depth));
        }
    }
}
