//! A field's value written as canonical JSON text straight from a user's
//! `Serialize` type, in one pass that also counts how deep it nests.
//!
//! The other way, measuring each field with the depth probe, converting it
//! with `serde_json::to_value` and writing that value's text, walks every
//! value three times and builds a tree only to drop it; a put of a small
//! struct spent most of its time there. This serializer writes exactly the
//! text of the value `serde_json::to_value` builds (objects sorted by key,
//! `-0.0` as `0.0`), and stops at the nesting limit before the user's type
//! can recurse deeper. What it does not handle itself — enum variants
//! holding data, bytes, non-string map keys, integers beyond 64 bits,
//! serde_json's private tokens, and every error — it hands back as
//! [`Fault::Other`], and the caller takes the measured route, which answers
//! exactly as before.
//!
//! A field that is one string, number or literal — most fields — is first
//! tried with [`Scalar`], which makes its text straight into the field's
//! value (a short string quoted on the stack and held inline) without
//! borrowing the writer's buffer and copying out of it; a container refuses
//! it at its first call and is written by [`Build`].

use arrayvec::ArrayString;
use serde::ser::{self, Impossible, Serialize, Serializer};
use serde_json::Value;

use super::canonical::{f64_text, plain_prefix, separate, write_key, write_str, write_value};
use super::text::{with_scratch, JsonText};
use crate::depth::{MAX_NESTING_DEPTH, PRIVATE_TOKEN};
use crate::sorted::sort_keeping_last;

/// Why a value was not built.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    /// It nests deeper than [`MAX_NESTING_DEPTH`].
    TooDeep,
    /// Anything else: take the measured route for this value.
    Other,
    /// A container, which [`Scalar`] leaves to the writer.
    Compound,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::TooDeep => f.write_str("nested too deep"),
            Fault::Other => f.write_str("not built directly"),
            Fault::Compound => f.write_str("a container"),
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

type Built = std::result::Result<(), Fault>;

/// Room to make ahead for a container whose `Serialize` announced `hint`
/// entries. The hint is only the type's word (a hand-written one may say
/// `usize::MAX`), so it is believed up to what a record's container
/// commonly holds; past that the vector grows as the entries arrive.
pub(super) fn room_for(hint: usize) -> usize {
    /// Believed hints: a derived struct of up to this many fields is made
    /// in one allocation.
    const BELIEVED: usize = 64;
    hint.min(BELIEVED)
}

/// The canonical text of one top-level field of a record.
pub(super) fn field_text<T: Serialize + ?Sized>(value: &T) -> std::result::Result<JsonText, Fault> {
    // Most fields are one string or number: made straight into their text.
    // A container fails at its first call, and is written in the buffer.
    match value.serialize(Scalar) {
        Err(Fault::Compound) => {}
        made => return made,
    }
    let mut built = Ok(());
    // The record's own object is open around the field, as the depth probe
    // counts it.
    let text = with_scratch(|out| built = value.serialize(Build { out, depth: 1 }));
    built.map(|()| text)
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

/// The serializer: writes into `out`, with `depth` containers open around
/// the value it writes.
struct Build<'a> {
    out: &'a mut String,
    depth: usize,
}

impl Build<'_> {
    /// The depth inside a container opened here, or the refusal when that
    /// container would nest past the limit (as the depth probe's `open`).
    fn open(&self) -> std::result::Result<usize, Fault> {
        if self.depth > MAX_NESTING_DEPTH {
            return Err(Fault::TooDeep);
        }
        Ok(self.depth + 1)
    }

    /// Text written as it is: a literal or a formatted number.
    fn text(self, text: &str) -> Built {
        self.out.push_str(text);
        Ok(())
    }

    /// A string, quoted and escaped.
    fn string(self, text: &str) -> Built {
        write_str(self.out, text);
        Ok(())
    }

    /// A scalar as serde_json's value serializer made it.
    fn value(self, value: &Value) -> Built {
        write_value(self.out, value);
        Ok(())
    }
}

/// An array being written.
struct Items<'a> {
    out: &'a mut String,
    depth: usize,
    first: bool,
    /// The first refusal of an item, which left part of its text: the
    /// array answers it at its end too, should the value's `Serialize` go
    /// on past it.
    refused: Option<Fault>,
}

/// An object being built: its entries are written apart and sorted by key
/// at the end, as serde_json's map sorts them.
struct Entries<'a> {
    out: &'a mut String,
    entries: Vec<(String, String)>,
    key: Option<String>,
    depth: usize,
    /// The first refusal of a key or a value, as [`Items`] keeps it: an
    /// entry left out by a `Serialize` that goes on past it must not be
    /// dropped silently.
    refused: Option<Fault>,
}

/// The two newtype methods of every serializer here: a newtype struct is
/// what it holds (but serde_json's private tokens are left to serde_json),
/// and an enum variant holding data takes the measured route.
macro_rules! newtype_methods {
    ($ok:ty) => {
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            name: &'static str,
            value: &T,
        ) -> std::result::Result<$ok, Fault> {
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
        ) -> std::result::Result<$ok, Fault> {
            Err(Fault::Other)
        }
    };
}

/// The methods of a scalar, alike in [`Build`] and [`Scalar`]: each is
/// the text serde_json's value would hold, handed to the serializer's own
/// `text` (a literal or a number), `string` or `value`. Refused as
/// [`Fault::Other`], for the measured route: bytes, enum variants holding
/// data, integers beyond 64 bits and serde_json's private tokens.
macro_rules! scalar_methods {
    ($ok:ty) => {
        scalar_methods! { $ok;
            serialize_i8(i8); serialize_i16(i16); serialize_i32(i32); serialize_i64(i64);
            serialize_u8(u8); serialize_u16(u16); serialize_u32(u32); serialize_u64(u64);
        }
    };
    ($ok:ty; $($integer:ident($arg:ty);)*) => {
        $(fn $integer(self, v: $arg) -> std::result::Result<$ok, Fault> {
            self.text(itoa::Buffer::new().format(v))
        })*

        fn serialize_bool(self, v: bool) -> std::result::Result<$ok, Fault> {
            self.text(if v { "true" } else { "false" })
        }

        fn serialize_i128(self, v: i128) -> std::result::Result<$ok, Fault> {
            let v = i64::try_from(v).map_err(|_| Fault::Other)?;
            self.serialize_i64(v)
        }

        fn serialize_u128(self, v: u128) -> std::result::Result<$ok, Fault> {
            let v = u64::try_from(v).map_err(|_| Fault::Other)?;
            self.serialize_u64(v)
        }

        fn serialize_f32(self, v: f32) -> std::result::Result<$ok, Fault> {
            let value = serde_json::value::Serializer
                .serialize_f32(v)
                .map_err(|_| Fault::Other)?;
            self.value(&value)
        }

        fn serialize_f64(self, v: f64) -> std::result::Result<$ok, Fault> {
            self.text(f64_text(v, &mut zmij::Buffer::new()))
        }

        fn serialize_char(self, v: char) -> std::result::Result<$ok, Fault> {
            self.string(v.encode_utf8(&mut [0; 4]))
        }

        fn serialize_str(self, v: &str) -> std::result::Result<$ok, Fault> {
            self.string(v)
        }

        fn serialize_bytes(self, _: &[u8]) -> std::result::Result<$ok, Fault> {
            Err(Fault::Other)
        }

        fn serialize_none(self) -> std::result::Result<$ok, Fault> {
            self.text("null")
        }

        fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> std::result::Result<$ok, Fault> {
            value.serialize(self)
        }

        fn serialize_unit(self) -> std::result::Result<$ok, Fault> {
            self.text("null")
        }

        fn serialize_unit_struct(self, _: &'static str) -> std::result::Result<$ok, Fault> {
            self.text("null")
        }

        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
        ) -> std::result::Result<$ok, Fault> {
            self.string(variant)
        }

        newtype_methods!($ok);

        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> std::result::Result<Self::SerializeTupleVariant, Fault> {
            Err(Fault::Other)
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
    };
}

impl<'a> Serializer for Build<'a> {
    type Ok = ();
    type Error = Fault;
    type SerializeSeq = Items<'a>;
    type SerializeTuple = Items<'a>;
    type SerializeTupleStruct = Items<'a>;
    type SerializeTupleVariant = Impossible<(), Fault>;
    type SerializeMap = Entries<'a>;
    type SerializeStruct = Entries<'a>;
    type SerializeStructVariant = Impossible<(), Fault>;

    scalar_methods!(());

    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Items<'a>, Fault> {
        let depth = self.open()?;
        self.out.push('[');
        Ok(Items {
            out: self.out,
            depth,
            first: true,
            refused: None,
        })
    }

    fn serialize_tuple(self, len: usize) -> std::result::Result<Items<'a>, Fault> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> std::result::Result<Items<'a>, Fault> {
        self.serialize_seq(Some(len))
    }

    fn serialize_map(self, len: Option<usize>) -> std::result::Result<Entries<'a>, Fault> {
        Ok(Entries {
            depth: self.open()?,
            out: self.out,
            entries: Vec::with_capacity(room_for(len.unwrap_or(0))),
            key: None,
            refused: None,
        })
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> std::result::Result<Entries<'a>, Fault> {
        if name.starts_with(PRIVATE_TOKEN) {
            return Err(Fault::Other);
        }
        self.serialize_map(Some(len))
    }
}

impl Items<'_> {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Built {
        separate(self.out, &mut self.first);
        let pushed = value.serialize(Build {
            out: self.out,
            depth: self.depth,
        });
        keep_first(&mut self.refused, pushed)
    }

    fn close(self) -> Built {
        if let Some(fault) = self.refused {
            return Err(fault);
        }
        self.out.push(']');
        Ok(())
    }
}

/// Passes `built` on, keeping its fault in `refused` when it is a
/// container's first: the container answers it at its end too, should the
/// value's `Serialize` go on past it.
fn keep_first(refused: &mut Option<Fault>, built: Built) -> Built {
    if let Err(fault) = built {
        refused.get_or_insert(fault);
    }
    built
}

/// The sequence, tuple and tuple-struct serializers of an array writer
/// `$writer`, each item to its `push` and the end to its `close`, which
/// answers `$ok`.
macro_rules! array_writer {
    ($writer:ty, $ok:ty) => {
        impl ser::SerializeSeq for $writer {
            type Ok = $ok;
            type Error = Fault;
            fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Built {
                self.push(value)
            }
            fn end(self) -> std::result::Result<$ok, Fault> {
                self.close()
            }
        }

        impl ser::SerializeTuple for $writer {
            type Ok = $ok;
            type Error = Fault;
            fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Built {
                self.push(value)
            }
            fn end(self) -> std::result::Result<$ok, Fault> {
                self.close()
            }
        }

        impl ser::SerializeTupleStruct for $writer {
            type Ok = $ok;
            type Error = Fault;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Built {
                self.push(value)
            }
            fn end(self) -> std::result::Result<$ok, Fault> {
                self.close()
            }
        }
    };
}

array_writer!(Items<'_>, ());

impl Entries<'_> {
    fn insert<T: Serialize + ?Sized>(&mut self, key: String, value: &T) -> Built {
        let mut text = String::new();
        value.serialize(Build {
            out: &mut text,
            depth: self.depth,
        })?;
        self.entries.push((key, text));
        Ok(())
    }

    fn close(mut self) -> Built {
        if let Some(fault) = self.refused {
            return Err(fault);
        }
        // Of a key given twice the last counts, as serde_json's map keeps it.
        sort_keeping_last(&mut self.entries);
        self.out.push('{');
        let mut first = true;
        for (key, text) in &self.entries {
            separate(self.out, &mut first);
            write_key(self.out, key);
            self.out.push_str(text);
        }
        self.out.push('}');
        Ok(())
    }
}

impl ser::SerializeMap for Entries<'_> {
    type Ok = ();
    type Error = Fault;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Built {
        let read = read_str(key, str::to_owned).map(|key| self.key = Some(key));
        keep_first(&mut self.refused, read)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Built {
        let inserted = match self.key.take() {
            Some(key) => self.insert(key, value),
            None => Err(Fault::Other),
        };
        keep_first(&mut self.refused, inserted)
    }
    fn end(self) -> Built {
        self.close()
    }
}

impl ser::SerializeStruct for Entries<'_> {
    type Ok = ();
    type Error = Fault;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Built {
        let inserted = self.insert(key.to_owned(), value);
        keep_first(&mut self.refused, inserted)
    }
    fn end(self) -> Built {
        self.close()
    }
}

/// Makes the text of a value that is no container, as [`Build`] writes it,
/// straight into a [`JsonText`]; refuses a container with
/// [`Fault::Compound`] before anything of it is serialised.
struct Scalar;

type Made = std::result::Result<JsonText, Fault>;

impl Scalar {
    fn text(self, text: &str) -> Made {
        Ok(JsonText::from_canonical(text))
    }

    fn string(self, text: &str) -> Made {
        Ok(JsonText::of_str(text))
    }

    fn value(self, value: &Value) -> Made {
        Ok(JsonText::from_checked(value))
    }
}

/// The types of a serializer that makes one value of type `$ok` and no
/// container of its own (it refuses every container).
macro_rules! no_containers {
    ($ok:ty) => {
        type Ok = $ok;
        type Error = Fault;
        type SerializeSeq = Impossible<$ok, Fault>;
        type SerializeTuple = Impossible<$ok, Fault>;
        type SerializeTupleStruct = Impossible<$ok, Fault>;
        type SerializeTupleVariant = Impossible<$ok, Fault>;
        type SerializeMap = Impossible<$ok, Fault>;
        type SerializeStruct = Impossible<$ok, Fault>;
        type SerializeStructVariant = Impossible<$ok, Fault>;
    };
}

/// Methods that refuse with `$fault` whatever they are given.
macro_rules! refuse {
    ($fault:expr; $($method:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> std::result::Result<$ret, Fault> {
            Err($fault)
        })*
    };
}

impl Serializer for Scalar {
    type Ok = JsonText;
    type Error = Fault;
    type SerializeSeq = ShortItems;
    type SerializeTuple = ShortItems;
    type SerializeTupleStruct = ShortItems;
    type SerializeTupleVariant = Impossible<JsonText, Fault>;
    type SerializeMap = Impossible<JsonText, Fault>;
    type SerializeStruct = Impossible<JsonText, Fault>;
    type SerializeStructVariant = Impossible<JsonText, Fault>;

    scalar_methods!(JsonText);

    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<ShortItems, Fault> {
        ShortItems::open()
    }

    fn serialize_tuple(self, _: usize) -> std::result::Result<ShortItems, Fault> {
        ShortItems::open()
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<ShortItems, Fault> {
        ShortItems::open()
    }

    refuse! { Fault::Compound;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
    }
}

/// The bytes of text a [`ShortItems`] array is written in, on the stack.
const SHORT_ITEMS: usize = 64;

/// A short array of scalars (`["a","b"]`, `[1,2,3]`), the text [`Build`]
/// writes for it made on the stack and held as the field's value: the
/// writer's buffer kept per thread, borrowed and copied out of, cost more
/// than the array's own text. Anything that does not fit, needs an escape,
/// or is not a plain scalar (a container, an `f32`, a refusal of any kind)
/// gives up with [`Fault::Compound`], and [`Build`] writes the whole value
/// anew and answers for it as before.
struct ShortItems {
    out: ArrayString<SHORT_ITEMS>,
    first: bool,
    /// An item gave up, leaving part of its text: the array gives up at its
    /// end too, should the value's `Serialize` go on past the refusal.
    gave_up: bool,
}

impl ShortItems {
    fn open() -> std::result::Result<ShortItems, Fault> {
        let mut out = ArrayString::new();
        out.try_push('[').map_err(|_| Fault::Compound)?;
        Ok(ShortItems {
            out,
            first: true,
            gave_up: false,
        })
    }

    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> std::result::Result<(), Fault> {
        let pushed = (std::mem::take(&mut self.first) || self.out.try_push(',').is_ok())
            && value.serialize(ShortItem { out: &mut self.out }).is_ok();
        if pushed {
            Ok(())
        } else {
            self.gave_up = true;
            Err(Fault::Compound)
        }
    }

    fn close(mut self) -> Made {
        if self.gave_up {
            return Err(Fault::Compound);
        }
        self.out.try_push(']').map_err(|_| Fault::Compound)?;
        Ok(JsonText::from_canonical(&self.out))
    }
}

array_writer!(ShortItems, JsonText);

/// One item of a [`ShortItems`] array, written as [`Build`] writes it; any
/// refusal here only sends the array to [`Build`].
struct ShortItem<'a> {
    out: &'a mut ArrayString<SHORT_ITEMS>,
}

impl ShortItem<'_> {
    fn text(self, text: &str) -> Built {
        self.out.try_push_str(text).map_err(|_| Fault::Compound)
    }

    /// A string that needs no escape, quoted; one that does is left to
    /// [`Build`].
    fn string(self, text: &str) -> Built {
        if plain_prefix(text.as_bytes()) != text.len() {
            return Err(Fault::Compound);
        }
        let pushed = self.out.try_push('"').is_ok()
            && self.out.try_push_str(text).is_ok()
            && self.out.try_push('"').is_ok();
        if pushed {
            Ok(())
        } else {
            Err(Fault::Compound)
        }
    }

    /// Only an `f32` comes here: left to [`Build`].
    fn value(self, _: &Value) -> Built {
        Err(Fault::Compound)
    }
}

impl Serializer for ShortItem<'_> {
    no_containers!(());

    scalar_methods!(());

    refuse! { Fault::Compound;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
    }
}

/// Reads a string (through newtypes), refusing anything else.
struct Text<F>(F);

impl<O, F: FnOnce(&str) -> O> Serializer for Text<F> {
    no_containers!(O);

    refuse! { Fault::Other;
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

    newtype_methods!(O);
}
