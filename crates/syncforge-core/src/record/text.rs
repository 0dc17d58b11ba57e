//! A field's value held as its canonical JSON text.

use arrayvec::ArrayString;
use compact_str::CompactString;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::canonical::{plain_prefix, write_str, write_value};
use crate::depth::{too_deep, too_deep_error};
use crate::error::Result;

/// A JSON value held as its canonical text: the text serde_json writes for
/// the value (objects sorted by key, no spaces), with `-0.0` written as `0.0`.
///
/// Records hold their field values this way. A value of up to 24 bytes of
/// text — most numbers, short strings, small arrays — is held inline, so a
/// typical record's values need no allocation of their own; comparing two
/// values compares their bytes, and writing a record's JSON copies them.
/// Two values are equal exactly when their texts are: the text is canonical.
///
/// ```
/// use serde_json::json;
/// use syncforge_core::JsonText;
///
/// let text = JsonText::from_value(&json!({"b": [1, 2.5], "a": "x"}))?;
/// assert_eq!(text.as_str(), r#"{"a":"x","b":[1,2.5]}"#);
/// assert_eq!(text.to_value(), json!({"a": "x", "b": [1, 2.5]}));
/// assert_eq!(text, json!({"a": "x", "b": [1, 2.5]}));
/// # Ok::<(), syncforge_core::Error>(())
/// ```
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct JsonText(CompactString);

/// Lengths first: most different values differ in length, and equal
/// lengths leave one byte comparison.
impl PartialEq for JsonText {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        same_bytes(self.0.as_bytes(), other.0.as_bytes())
    }
}

/// Whether `a` and `b` hold the same bytes. Confirming that an unchanged
/// record equals the stored one compares every value, and most values are a
/// few bytes long: up to 32 bytes they are compared as two overlapping
/// words each (the first and the last `N` bytes), in line, where a slice
/// comparison calls `memcmp` for every one.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    match a.len() {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=7 => ends_equal::<4>(a, b),
        8..=15 => ends_equal::<8>(a, b),
        16..=32 => ends_equal::<16>(a, b),
        _ => a == b,
    }
}

/// Whether the first `N` and the last `N` bytes of `a` and `b` agree: all of
/// them, for texts of `N` to `2N` bytes.
#[inline]
fn ends_equal<const N: usize>(a: &[u8], b: &[u8]) -> bool {
    a.first_chunk::<N>() == b.first_chunk::<N>() && a.last_chunk::<N>() == b.last_chunk::<N>()
}

impl std::hash::Hash for JsonText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_bytes().hash(state);
    }
}

impl JsonText {
    /// The canonical text of `value`. A value nested deeper than
    /// [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH) is refused with
    /// [`Error::InvalidRecord`](crate::Error::InvalidRecord).
    pub fn from_value(value: &Value) -> Result<JsonText> {
        if too_deep(value) {
            return Err(too_deep_error(None, None));
        }
        Ok(JsonText::from_checked(value))
    }

    /// [`from_value`](Self::from_value) of a value handed over: one refused
    /// as too deep is taken apart without recursion, as dropping it would
    /// recurse as deep as it nests.
    pub(crate) fn from_owned(value: Value) -> Result<JsonText> {
        if too_deep(&value) {
            crate::depth::dismantle(value);
            return Err(too_deep_error(None, None));
        }
        Ok(JsonText::from_checked(&value))
    }

    /// [`from_value`](Self::from_value) of a value already known to nest
    /// within the limit (writing it recurses once per level).
    pub(crate) fn from_checked(value: &Value) -> JsonText {
        with_scratch(|out| write_value(out, value))
    }

    /// Text that is already canonical JSON of a value within the nesting
    /// limit, as this crate's writers produce it.
    #[inline]
    pub(super) fn from_canonical(text: &str) -> JsonText {
        JsonText(CompactString::new(text))
    }

    /// The JSON string of `text`. A short one that needs no escape (nearly
    /// every string value) is quoted in a stack buffer and held inline, with
    /// no shared buffer to borrow and copy out of.
    #[inline]
    pub(super) fn of_str(text: &str) -> JsonText {
        const INLINE: usize = std::mem::size_of::<CompactString>();
        let bytes = text.as_bytes();
        if bytes.len() + 2 <= INLINE && plain_prefix(bytes) == bytes.len() {
            let mut quoted = ArrayString::<INLINE>::new();
            // The room was checked: no push fails.
            let pushed = quoted.try_push_str("\"").is_ok()
                && quoted.try_push_str(text).is_ok()
                && quoted.try_push_str("\"").is_ok();
            if pushed {
                return JsonText(CompactString::new(quoted.as_str()));
            }
        }
        with_scratch(|out| write_str(out, text))
    }

    /// The canonical JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value, parsed from the text.
    pub fn to_value(&self) -> Value {
        // The text is canonical JSON written by this crate, nested within
        // the limit: it always parses. `Null` only keeps this total.
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    /// The value deserialised as `T`, straight from the text.
    pub fn parse<T: DeserializeOwned>(&self) -> std::result::Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

/// Writes canonical text with a buffer kept per thread, then copies it into
/// the value (inline when it is short): no allocation for a short value.
pub(super) fn with_scratch(write: impl FnOnce(&mut String)) -> JsonText {
    thread_local! {
        static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    // Gone (from another thread-local's destructor): a buffer of its own.
    // Asked first, so that `write` is not given to a closure that never runs.
    if SCRATCH.try_with(|_| ()).is_err() {
        return written_apart(write);
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut out) => {
            out.clear();
            write(&mut out);
            let text = JsonText::from_canonical(&out);
            // A huge value once must not keep its buffer for good.
            if out.capacity() > 64 * 1024 {
                *out = String::new();
            }
            text
        }
        // Only if `write` itself wrote a value this way: a buffer of its own.
        Err(_) => written_apart(write),
    })
}

/// [`with_scratch`] in a buffer of its own.
fn written_apart(write: impl FnOnce(&mut String)) -> JsonText {
    let mut out = String::new();
    write(&mut out);
    JsonText::from_canonical(&out)
}

impl PartialEq<Value> for JsonText {
    fn eq(&self, other: &Value) -> bool {
        JsonText::from_value(other).is_ok_and(|text| *self == text)
    }
}

impl PartialEq<JsonText> for Value {
    fn eq(&self, other: &JsonText) -> bool {
        other == self
    }
}

impl std::fmt::Display for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Serialised as the value it holds.
impl serde::Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

/// Any JSON value within the nesting limit (deeper ones are refused without
/// recursing into them).
impl<'de> serde::Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        JsonText::from_owned(Value::deserialize(d)?).map_err(|_| {
            serde::de::Error::custom(format!(
                "a field value nests arrays and objects more than {} levels deep, the limit for a record's values",
                crate::depth::MAX_NESTING_DEPTH
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::record::canonical::InKeyOrder;

    #[test]
    fn bytes_are_equal_exactly_when_slices_are() {
        let text: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for len in 0..=text.len() {
            let a = &text[..len];
            assert!(same_bytes(a, a), "{len}");
            if len < text.len() {
                assert!(
                    !same_bytes(a, &text[..=len]),
                    "{len} against {} bytes",
                    len + 1
                );
            }
            for at in 0..len {
                let mut b = a.to_vec();
                b[at] ^= 0x20;
                assert!(!same_bytes(a, &b), "{len} bytes, differing at {at}");
            }
        }
    }

    #[test]
    fn a_string_is_quoted_as_serde_json_quotes_it() {
        // Around the longest string held inline (22 bytes and its quotes),
        // plain, with an escape, and with characters of several bytes.
        for len in 0..=26 {
            for text in [
                "x".repeat(len),
                format!("{}\"", "x".repeat(len)),
                format!("\n{}", "x".repeat(len)),
                "é".repeat(len / 2),
            ] {
                let quoted = JsonText::of_str(&text);
                assert_eq!(quoted.as_str(), serde_json::to_string(&text).unwrap());
                assert_eq!(quoted, JsonText::from_value(&json!(text)).unwrap());
            }
        }
    }

    #[test]
    fn text_is_what_serde_json_writes_with_positive_zero() {
        for value in [
            json!(null),
            json!(true),
            json!(-7),
            json!(18446744073709551615u64),
            json!(0.1),
            json!(1e300),
            json!("a \"q\" \u{1} é"),
            json!([1, {"z": 1, "a": [{}]}]),
        ] {
            let text = JsonText::from_value(&value).unwrap();
            // serde_json's own writer, keys in order whatever its map keeps.
            let by_serde_json = serde_json::to_string(&InKeyOrder(&value)).unwrap();
            assert_eq!(text.as_str(), by_serde_json);
            assert_eq!(text.to_value(), value);
            assert_eq!(text, value);
        }
        assert_eq!(
            JsonText::from_value(&json!([-0.0, {"k": -0.0}]))
                .unwrap()
                .as_str(),
            "[0.0,{\"k\":0.0}]"
        );
        // The text `-0`, which serde_json reads as `-0.0`, or with its
        // `arbitrary_precision` feature keeps as an integer: `0.0` either way.
        let parsed: serde_json::Value = serde_json::from_str("[-0, {\"k\": -0}]").unwrap();
        assert_eq!(
            JsonText::from_value(&parsed).unwrap().as_str(),
            "[0.0,{\"k\":0.0}]"
        );
    }

    #[test]
    fn too_deep_values_are_refused() {
        let mut deep = json!(1);
        for _ in 0..=crate::depth::MAX_NESTING_DEPTH {
            deep = json!([deep]);
        }
        assert!(JsonText::from_value(&deep).is_err());
        assert_ne!(JsonText::from_canonical("1"), deep);
        crate::depth::dismantle(deep);
    }
}
