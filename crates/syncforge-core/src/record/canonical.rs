//! The canonical JSON text of a record, written straight from the record:
//! no `Value` is built, no content copied, no stamp formatted into a string
//! of its own, and text that needs no escape copied whole. The output is the
//! text serde_json writes for [`Record::to_json`] (objects sorted by key),
//! byte for byte; the tests hold the two equal.

use std::fmt::Write as _;

use serde_json::Value;

use super::{Record, CLIENT_ID_KEY, DELETED_KEY, ID_KEY, SYNC_KEY, TIMESTAMP_KEY, VERSION_KEY};
use crate::hlc::Stamp;
use crate::words::{any_word, holds_byte, some_byte_below};

/// The record's own members, sorted by name (byte order, as serde_json's map
/// sorts). Content field names are never one of these (they are reserved).
const MEMBERS: [Member; 6] = [
    Member::ClientId,
    Member::Deleted,
    Member::Sync,
    Member::Timestamp,
    Member::Version,
    Member::Id,
];

#[derive(Clone, Copy)]
enum Member {
    ClientId,
    Deleted,
    Sync,
    Timestamp,
    Version,
    Id,
}

impl Member {
    fn name(self) -> &'static str {
        match self {
            Member::ClientId => CLIENT_ID_KEY,
            Member::Deleted => DELETED_KEY,
            Member::Sync => SYNC_KEY,
            Member::Timestamp => TIMESTAMP_KEY,
            Member::Version => VERSION_KEY,
            Member::Id => ID_KEY,
        }
    }
}

impl Record {
    /// The canonical JSON form as a string: the text of
    /// [`to_json`](Record::to_json), written without building it.
    pub fn to_json_string(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write_json(&mut out);
        out
    }

    /// Appends the canonical JSON form to `out`, as
    /// [`to_json_string`](Record::to_json_string) returns it, so that many
    /// records can be written into one buffer.
    pub fn write_json(&self, out: &mut String) {
        self.write_object(out, &MEMBERS);
    }

    /// The JSON text of the user content, `id` and the visible fields, as
    /// [`content`](Record::content) holds it.
    pub(crate) fn content_json_string(&self) -> String {
        let mut out = String::with_capacity(128);
        self.write_object(&mut out, &[Member::Id]);
        #[cfg(test)]
        super::CONTENT_TEXT_WRITTEN.with(|written| written.set(written.get() + out.len()));
        out
    }

    /// An object of the visible fields and `members` (sorted by name).
    fn write_object(&self, out: &mut String, members: &[Member]) {
        out.push('{');
        let mut first = true;
        let mut fields = self.fields().peekable();
        for &member in members {
            // Content fields sort among the record's own members: a walk
            // of both sorted sequences keeps serde_json's key order.
            while let Some((name, value)) = fields.next_if(|(name, _)| *name < member.name()) {
                separate(out, &mut first);
                write_key(out, name);
                out.push_str(value.as_str());
            }
            separate(out, &mut first);
            write_key(out, member.name());
            self.write_member(out, member);
        }
        for (name, value) in fields {
            separate(out, &mut first);
            write_key(out, name);
            out.push_str(value.as_str());
        }
        out.push('}');
    }

    fn write_member(&self, out: &mut String, member: Member) {
        let newest = self.newest_stamp();
        match member {
            Member::ClientId => write_str(out, newest.client().as_str()),
            Member::Deleted => out.push_str(if self.is_deleted() { "true" } else { "false" }),
            Member::Sync => self.write_sync(out),
            Member::Timestamp => write_u64(out, newest.millis()),
            Member::Version => write_u64(out, self.version()),
            Member::Id => write_str(out, self.id().as_str()),
        }
    }

    /// `_sync`: `deleted`, `fields`, `removed`, `versions`, `written`, in
    /// that (sorted) order.
    fn write_sync(&self, out: &mut String) {
        out.push('{');
        if let Some(tombstone) = self.tombstone() {
            out.push_str("\"deleted\":");
            write_stamp(out, tombstone);
            out.push(',');
        }
        out.push_str("\"fields\":");
        self.write_field_stamps(out, true);
        if self
            .field_states()
            .iter()
            .any(|(_, state)| state.text().is_none())
        {
            out.push_str(",\"removed\":");
            self.write_field_stamps(out, false);
        }
        out.push_str(",\"versions\":{");
        let mut first = true;
        for (client, count) in self.versions().iter() {
            separate(out, &mut first);
            write_key(out, client.as_str());
            write_u64(out, count);
        }
        out.push_str("},\"written\":");
        write_stamp(out, self.written());
        out.push('}');
    }

    /// The stamps of the live (or the removed) fields, by name.
    fn write_field_stamps(&self, out: &mut String, live: bool) {
        out.push('{');
        let mut first = true;
        for (name, state) in self.field_states().iter() {
            if state.text().is_some() == live {
                separate(out, &mut first);
                write_key(out, name);
                write_stamp(out, state.stamp());
            }
        }
        out.push('}');
    }
}

#[inline]
pub(super) fn separate(out: &mut String, first: &mut bool) {
    if !std::mem::take(first) {
        out.push(',');
    }
}

#[inline]
pub(super) fn write_key(out: &mut String, name: &str) {
    write_str(out, name);
    out.push(':');
}

/// A stamp as a JSON string: its `Display` form, `{:012x}.{:08x}.{client}`.
fn write_stamp(out: &mut String, stamp: &Stamp) {
    out.push('"');
    // Writing into a String cannot fail.
    let _ = stamp.write_fixed_text(out);
    write_escaped(out, stamp.client().as_str());
    out.push('"');
}

/// A JSON value as serde_json writes it (objects sorted by key, as its map
/// keeps them), `-0.0` as `0.0`. Recurses once per level: only for values
/// within the nesting limit.
pub(super) fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => write_number(out, number),
        Value::String(text) => write_str(out, text),
        Value::Array(items) => {
            out.push('[');
            let mut first = true;
            for item in items {
                separate(out, &mut first);
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_members(out, map.iter()),
    }
}

/// An object of `members`, written in key order whatever order they come in.
///
/// serde_json's map iterates in key order, unless any crate of the program
/// turns on serde_json's `preserve_order` feature, which Cargo then turns on
/// for every crate: its map then keeps the order keys came in, and equal
/// objects would print differently.
fn write_members<'a, I>(out: &mut String, members: I)
where
    I: Iterator<Item = (&'a String, &'a Value)> + Clone,
{
    if members.clone().map(|(key, _)| key).is_sorted() {
        write_object(out, members);
    } else {
        let mut sorted: Vec<_> = members.collect();
        // A map holds each key once.
        sorted.sort_unstable_by_key(|&(key, _)| key);
        write_object(out, sorted.into_iter());
    }
}

/// A value serialised with every object's keys in order, as the canonical
/// text has them: serde's own `Serialize` for a `Value` follows the map,
/// whose order serde_json's `preserve_order` feature changes (see
/// [`write_members`]).
pub(super) struct InKeyOrder<'a>(pub(super) &'a Value);

impl serde::Serialize for InKeyOrder<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Value::Array(items) => s.collect_seq(items.iter().map(InKeyOrder)),
            Value::Object(map) => {
                let mut members: Vec<_> = map.iter().collect();
                if !members.is_sorted_by_key(|&(key, _)| key) {
                    members.sort_unstable_by_key(|&(key, _)| key);
                }
                s.collect_map(
                    members
                        .into_iter()
                        .map(|(key, value)| (key, InKeyOrder(value))),
                )
            }
            scalar => scalar.serialize(s),
        }
    }
}

fn write_object<'a>(out: &mut String, members: impl Iterator<Item = (&'a String, &'a Value)>) {
    out.push('{');
    let mut first = true;
    for (key, item) in members {
        separate(out, &mut first);
        write_key(out, key);
        write_value(out, item);
    }
    out.push('}');
}

pub(super) fn write_u64(out: &mut String, value: u64) {
    out.push_str(itoa::Buffer::new().format(value));
}

/// Integers as serde_json writes them; a float in its `Display` form, which
/// is serde_json's own (the shortest text that reads back the same), and
/// `-0.0` as `0.0`.
pub(super) fn write_number(out: &mut String, number: &serde_json::Number) {
    if let Some(value) = number.as_u64() {
        write_u64(out, value);
    } else if let Some(value) = number.as_i64() {
        // A zero `as_u64` did not take is the text `-0`, which only a build
        // with serde_json's `arbitrary_precision` keeps as an integer (any
        // other reads it as the float `-0.0`): written as that float is, so
        // that replicas built either way hold the same bytes.
        if value == 0 {
            write_f64(out, 0.0);
        } else {
            out.push_str(itoa::Buffer::new().format(value));
        }
    } else if let Some(value) = number.as_f64() {
        write_f64(out, value);
    } else {
        // Writing into a String cannot fail.
        let _ = write!(out, "{number}");
    }
}

/// A float as serde_json writes it (with its own formatter: the shortest
/// text that reads back the same), `-0.0` as `0.0`, and a value JSON cannot
/// hold as `null`, as serde_json's value makes it.
#[inline]
pub(super) fn write_f64(out: &mut String, value: f64) {
    out.push_str(f64_text(value, &mut zmij::Buffer::new()));
}

/// The text [`write_f64`] writes, formatted in `buffer` when it is a number.
#[inline]
pub(super) fn f64_text(value: f64, buffer: &mut zmij::Buffer) -> &str {
    if value == 0.0 {
        "0.0"
    } else if value.is_finite() {
        buffer.format_finite(value)
    } else {
        "null"
    }
}

#[inline]
pub(super) fn write_str(out: &mut String, text: &str) {
    out.reserve(text.len() + 2);
    out.push('"');
    write_escaped(out, text);
    out.push('"');
}

/// The inside of a JSON string, escaped as serde_json escapes: `"`, `\` and
/// the control characters, with the short forms where JSON has them.
#[inline]
fn write_escaped(out: &mut String, text: &str) {
    // Nearly every string needs no escape: found eight bytes at a time,
    // the plain part is copied whole.
    let plain = plain_prefix(text.as_bytes());
    out.push_str(&text[..plain]);
    if plain < text.len() {
        write_escaped_rest(out, &text[plain..]);
    }
}

/// The rest of [`write_escaped`], from the first byte that needs an escape.
#[cold]
fn write_escaped_rest(out: &mut String, text: &str) {
    let mut start = 0;
    for (index, byte) in text.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[start..index]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        start = index + 1;
    }
    out.push_str(&text[start..]);
}

/// How many leading bytes of `bytes` need no escape: none is `"`, `\\` or a
/// control character. Always a character boundary, since every byte that
/// ends the prefix is ASCII. Looks at eight bytes at a time; where the
/// first byte to escape is, is found byte by byte only when there is one.
#[inline(always)]
pub(super) fn plain_prefix(bytes: &[u8]) -> usize {
    if any_word(bytes, has_special) {
        first_special(bytes)
    } else {
        bytes.len()
    }
}

/// Whether any byte of `x` is below 0x20 or is `"` or `\\` (exact as to
/// whether, not as to which).
#[inline]
fn has_special(x: u64) -> bool {
    some_byte_below(x, 0x20) || holds_byte(x, b'"') || holds_byte(x, b'\\')
}

/// Where the first byte needing an escape is (or the length, if none is).
/// Out of line: few strings need an escape, and the scan that finds none
/// stays small enough to be inlined.
#[cold]
fn first_special(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .unwrap_or(bytes.len())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::*;
    use crate::{merge, ConflictStrategy, Content, JsonText, MAX_STAMP_MILLIS};

    #[test]
    fn serialised_in_key_order_whatever_order_the_map_keeps() {
        let mut map = Map::new();
        map.insert("b".to_owned(), json!([{"d": 1, "c": 2}]));
        map.insert("a".to_owned(), json!(null));
        let value = Value::Object(map);
        let text = serde_json::to_string(&InKeyOrder(&value)).unwrap();
        assert_eq!(text, r#"{"a":null,"b":[{"c":2,"d":1}]}"#);
        assert_eq!(text, JsonText::from_checked(&value).as_str());
    }

    /// What a map in insertion order (serde_json's `preserve_order`) hands
    /// the writer: equal objects print the same whatever their order.
    #[test]
    fn members_are_written_in_key_order_whatever_order_they_come_in() {
        let (a, b, c) = ("a".to_owned(), "b".to_owned(), "c".to_owned());
        let (one, two, inner) = (json!(1), json!(2), json!({"y": [], "x": null}));
        let mut shuffled = String::new();
        write_members(
            &mut shuffled,
            [(&c, &inner), (&a, &one), (&b, &two)].into_iter(),
        );
        let mut sorted = String::new();
        write_members(
            &mut sorted,
            [(&a, &one), (&b, &two), (&c, &inner)].into_iter(),
        );
        assert_eq!(shuffled, r#"{"a":1,"b":2,"c":{"x":null,"y":[]}}"#);
        assert_eq!(sorted, shuffled);
    }

    fn stamp(millis: u64, counter: u32, client: &str) -> Stamp {
        Stamp::new(millis, counter, client).unwrap()
    }

    fn content(value: Value) -> Content {
        Content::from_value(value).unwrap()
    }

    fn same_as_serde_json(record: &Record) {
        let text = record.to_json_string();
        // serde_json's own writer, with keys in order whatever its map keeps.
        assert_eq!(text, serde_json::to_string(record).unwrap());
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            record.to_json()
        );
    }

    #[test]
    fn writes_exactly_the_canonical_form() {
        let mut record = Record::create(
            content(json!({
                "id": "r-1", "name": "A \"quoted\"\n\u{7f} é 😀\u{1}\u{8}\u{c}\r\t", "age": 3,
                "score": -0.0, "Upper": [1, {"b": null, "a": 2.5, "k\\\"\u{1f}": "\\"}],
                "0digit": true, "zz": {}, "ü": "", "_under": 1, "i": 2, "idz": 3,
                "we\"ird\tkey": [1e300, -7, 18446744073709551615u64, 0.1, -9223372036854775808i64],
            })),
            stamp(1_700_000_000_000, 0, "tablet"),
        );
        same_as_serde_json(&record);
        // A field removed, one changed, by another client.
        record
            .apply_put(
                content(json!({"id": "r-1", "name": "B", "age": 4, "Upper": 1, "zz": {}, "ü": ""})),
                &stamp(1_700_000_000_005, 2, "hq"),
            )
            .unwrap();
        same_as_serde_json(&record);
        // Deleted, then merged with a concurrent write of a third client.
        let mut deleted = record.clone();
        deleted
            .apply_delete(&stamp(1_700_000_000_009, 0, "a-client"))
            .unwrap();
        same_as_serde_json(&deleted);
        let mut concurrent = record.clone();
        concurrent
            .apply_put(
                content(json!({"id": "r-1", "late": "x"})),
                &stamp(1_700_000_000_010, 7, "Zed \"q\""),
            )
            .unwrap();
        same_as_serde_json(&concurrent);
        same_as_serde_json(&merge(&deleted, &concurrent, ConflictStrategy::Crdt).unwrap());
        // A record read from the TypeScript library's form.
        let seeded = Record::from_json(json!({
            "id": "ts", "v": 1, "_version": 1, "_timestamp": 5, "_deleted": false, "_clientId": "web"
        }))
        .unwrap();
        same_as_serde_json(&seeded);
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let specials = ["", "\"", "\\", "\n", "\u{1f}", "\u{0}", "é", "😀", "\u{7f}"];
        for prefix in ["", "abcdefg", "abcdefgh", "abcdefghijklmnopq"] {
            for special in specials {
                for suffix in ["", "x", "0123456789"] {
                    let text = format!("{prefix}{special}{suffix}");
                    let mut out = String::new();
                    write_str(&mut out, &text);
                    assert_eq!(out, serde_json::to_string(&text).unwrap(), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn the_plain_prefix_ends_at_the_first_byte_to_escape() {
        let bytewise = |bytes: &[u8]| {
            bytes
                .iter()
                .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
                .unwrap_or(bytes.len())
        };
        // Each text alone, and with a byte to escape at its end too.
        crate::words::every_byte_at_every_position(|text| {
            assert_eq!(plain_prefix(text), bytewise(text), "{text:?}");
            let mut quoted = text.to_vec();
            if let Some(last) = quoted.last_mut() {
                *last = b'"';
            }
            assert_eq!(plain_prefix(&quoted), bytewise(&quoted), "{quoted:?}");
        });
    }

    #[test]
    fn stamps_are_written_as_they_display() {
        for (millis, counter) in [
            (0, 0),
            (1, 1),
            (0xfff_ffff_ffff, u32::MAX),
            (MAX_STAMP_MILLIS, 0x10),
        ] {
            for client in ["tablet", "client \"1\" \\"] {
                let stamp = stamp(millis, counter, client);
                let mut text = String::new();
                write_stamp(&mut text, &stamp);
                assert_eq!(text, serde_json::to_string(&stamp.to_string()).unwrap());
            }
        }
    }
}
