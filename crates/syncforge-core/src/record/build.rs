//! A field's value built straight from a user's `Serialize` type in one
//! pass that also counts how deep it nests.
//!
//! The other way, measuring each field with the depth probe and then
//! converting it with `serde_json::to_value`, walks every value twice; a put
//! of a small struct spent most of its time there. This serializer builds
//! exactly what `serde_json::to_value` builds (scalars are handed to
//! serde_json's own value serializer), normalised as stored values are
//! (`-0.0` becomes `0.0`), and stops at the nesting limit before the user's
//! type can recurse deeper. What it does not handle itself — enum variants
//! holding data, bytes, non-string map keys, serde_json's private tokens,
//! and every error — it hands back as [`Fault::Other`], and the caller takes
//! the measured route, which answers exactly as before.

use serde::ser::{self, Impossible, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::depth::MAX_NESTING_DEPTH;

/// Why a value was not built.
#[derive(Debug)]
pub(super) enum Fault {
    /// It nests deeper than [`MAX_NESTING_DEPTH`].
    TooDeep,
    /// Anything else: take the measured route for this value.
    Other,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::TooDeep => f.write_str("nested too deep"),
            Fault::Other => f.write_str("not built directly"),
        }
    }
}

impl std::error::Error for Fault {}

impl ser::Error for Fault {
    // The user's own error: the measured route reports it with its message.
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Fault::Other
    }
}

type Built = std::result::Result<Value, Fault>;

/// Builds the value of one top-level field of a record.
pub(super) fn field_value<T: Serialize + ?Sized>(value: &T) -> Built {
    // The record's own object is open around the field, as the depth probe
    // counts it.
    value.serialize(Build { depth: 1 })
}

/// `read` of the string that `value` is (through newtypes), without building
/// a value; anything else is [`Fault::Other`].
pub(super) fn read_str<T, O, F>(value: &T, read: F) -> std::result::Result<O, Fault>
where
    T: Serialize + ?Sized,
    F: FnOnce(&str) -> O,
{
    value.serialize(Text(read))
}

/// serde_json's names for its raw-value and number tokens start with this:
/// the structs carrying them are left to serde_json.
const PRIVATE_TOKEN: &str = "$serde_json::private::";

fn json<T>(result: std::result::Result<T, serde_json::Error>) -> std::result::Result<T, Fault> {
    result.map_err(|_| Fault::Other)
}

/// The serializer: `depth` containers are open around the value it builds.
#[derive(Clone, Copy)]
struct Build {
    depth: usize,
}

impl Build {
    /// The depth inside a container opened here, or the refusal when that
    /// container would nest past the limit (as the depth probe's `open`).
    fn open(self) -> std::result::Result<usize, Fault> {
        if self.depth > MAX_NESTING_DEPTH {
            return Err(Fault::TooDeep);
        }
        Ok(self.depth + 1)
    }
}

/// An array being built.
struct Items {
    items: Vec<Value>,
    depth: usize,
}

/// An object being built.
struct Entries {
    map: Map<String, Value>,
    key: Option<String>,
    depth: usize,
}

fn positive(f: f64) -> Value {
    // `-0.0 == 0.0`: both are stored as `0.0`, as everywhere in syncforge.
    if f == 0.0 {
        Value::from(0.0)
    } else {
        Value::from(f)
    }
}

macro_rules! delegate {
    ($($method:ident($arg:ty);)*) => {
        $(fn $method(self, v: $arg) -> Built {
            json(serde_json::value::Serializer.$method(v))
        })*
    };
}

impl Serializer for Build {
    type Ok = Value;
    type Error = Fault;
    type SerializeSeq = Items;
    type SerializeTuple = Items;
    type SerializeTupleStruct = Items;
    type SerializeTupleVariant = Impossible<Value, Fault>;
    type SerializeMap = Entries;
    type SerializeStruct = Entries;
    type SerializeStructVariant = Impossible<Value, Fault>;

    delegate! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_i128(i128);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_u128(u128);
        serialize_char(char);
    }

    fn serialize_f32(self, v: f32) -> Built {
        if v == 0.0 {
            return Ok(Value::from(0.0));
        }
        json(serde_json::value::Serializer.serialize_f32(v))
    }

    fn serialize_f64(self, v: f64) -> Built {
        Ok(positive(v))
    }

    fn serialize_str(self, v: &str) -> Built {
        Ok(Value::String(v.to_owned()))
    }

    fn serialize_bytes(self, _: &[u8]) -> Built {
        Err(Fault::Other)
    }

    fn serialize_none(self) -> Built {
        Ok(Value::Null)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Built {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Built {
        Ok(Value::Null)
    }

    fn serialize_unit_struct(self, _: &'static str) -> Built {
        Ok(Value::Null)
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Built {
        Ok(Value::String(variant.to_owned()))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Built {
        if name.starts_with(PRIVATE_TOKEN) {
            return Err(Fault::Other);
        }
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Built {
        Err(Fault::Other)
    }

    fn serialize_seq(self, len: Option<usize>) -> std::result::Result<Items, Fault> {
        Ok(Items {
            depth: self.open()?,
            items: Vec::with_capacity(len.unwrap_or(0)),
        })
    }

    fn serialize_tuple(self, len: usize) -> std::result::Result<Items, Fault> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> std::result::Result<Items, Fault> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleVariant, Fault> {
        Err(Fault::Other)
    }

    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Entries, Fault> {
        Ok(Entries {
            depth: self.open()?,
            map: Map::new(),
            key: None,
        })
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> std::result::Result<Entries, Fault> {
        if name.starts_with(PRIVATE_TOKEN) {
            return Err(Fault::Other);
        }
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStructVariant, Fault> {
        Err(Fault::Other)
    }
}

impl Items {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> std::result::Result<(), Fault> {
        let value = value.serialize(Build { depth: self.depth })?;
        self.items.push(value);
        Ok(())
    }
}

impl ser::SerializeSeq for Items {
    type Ok = Value;
    type Error = Fault;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Fault> {
        self.push(value)
    }
    fn end(self) -> Built {
        Ok(Value::Array(self.items))
    }
}

impl ser::SerializeTuple for Items {
    type Ok = Value;
    type Error = Fault;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Fault> {
        self.push(value)
    }
    fn end(self) -> Built {
        Ok(Value::Array(self.items))
    }
}

impl ser::SerializeTupleStruct for Items {
    type Ok = Value;
    type Error = Fault;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Fault> {
        self.push(value)
    }
    fn end(self) -> Built {
        Ok(Value::Array(self.items))
    }
}

impl ser::SerializeMap for Entries {
    type Ok = Value;
    type Error = Fault;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Fault> {
        self.key = Some(read_str(key, str::to_owned)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Fault> {
        let key = self.key.take().ok_or(Fault::Other)?;
        let value = value.serialize(Build { depth: self.depth })?;
        self.map.insert(key, value);
        Ok(())
    }
    fn end(self) -> Built {
        Ok(Value::Object(self.map))
    }
}

impl ser::SerializeStruct for Entries {
    type Ok = Value;
    type Error = Fault;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Fault> {
        let value = value.serialize(Build { depth: self.depth })?;
        self.map.insert(key.to_owned(), value);
        Ok(())
    }
    fn end(self) -> Built {
        Ok(Value::Object(self.map))
    }
}

/// Reads a string (through newtypes), refusing anything else.
struct Text<F>(F);

macro_rules! not_a_string {
    ($($method:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> std::result::Result<$ret, Fault> {
            Err(Fault::Other)
        })*
    };
}

impl<O, F: FnOnce(&str) -> O> Serializer for Text<F> {
    type Ok = O;
    type Error = Fault;
    type SerializeSeq = Impossible<O, Fault>;
    type SerializeTuple = Impossible<O, Fault>;
    type SerializeTupleStruct = Impossible<O, Fault>;
    type SerializeTupleVariant = Impossible<O, Fault>;
    type SerializeMap = Impossible<O, Fault>;
    type SerializeStruct = Impossible<O, Fault>;
    type SerializeStructVariant = Impossible<O, Fault>;

    not_a_string! {
        serialize_bool(bool) -> O;
        serialize_i8(i8) -> O;
        serialize_i16(i16) -> O;
        serialize_i32(i32) -> O;
        serialize_i64(i64) -> O;
        serialize_u8(u8) -> O;
        serialize_u16(u16) -> O;
        serialize_u32(u32) -> O;
        serialize_u64(u64) -> O;
        serialize_f32(f32) -> O;
        serialize_f64(f64) -> O;
        serialize_char(char) -> O;
        serialize_bytes(&[u8]) -> O;
        serialize_none() -> O;
        serialize_unit() -> O;
        serialize_unit_struct(&'static str) -> O;
        serialize_unit_variant(&'static str, u32, &'static str) -> O;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_str(self, v: &str) -> std::result::Result<O, Fault> {
        Ok((self.0)(v))
    }

    // Transparent only where serde_json is transparent for both keys and
    // values, so that a string found here is the string it would find.
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> std::result::Result<O, Fault> {
        Err(Fault::Other)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> std::result::Result<O, Fault> {
        if name.starts_with(PRIVATE_TOKEN) {
            return Err(Fault::Other);
        }
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<O, Fault> {
        Err(Fault::Other)
    }
}
