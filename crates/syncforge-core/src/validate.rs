//! Validation of ids and collection names.
//!
//! Ids and collection names are 1 to [`MAX_NAME_BYTES`] bytes of UTF-8 without
//! control characters. Backends rely on this: they may encode names in keys,
//! paths and object names, but they never need to guess what a name means.

use std::num::NonZeroUsize;

use crate::error::{shorten, Error, Result};
use crate::words::{any_word, holds_byte, some_byte_below};

/// The longest accepted id or collection name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 1024;

#[inline]
pub(crate) fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "is {} bytes long, the limit is {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    // Control characters (U+0000-U+001F, U+007F-U+009F) start with one of
    // these bytes in UTF-8; most names have none, and a byte scan spares them
    // decoding every character (ids are checked on every store call).
    if may_hold_control(name.as_bytes()) {
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(format!("contains the control character {c:?}"));
        }
    }
    Ok(())
}

/// Whether `bytes` hold a byte below 0x20, 0x7F or 0xC2, eight bytes at a
/// time: every id of every store call and every synced record is checked,
/// and a byte at a time cost more than the rest of the check.
fn may_hold_control(bytes: &[u8]) -> bool {
    any_word(bytes, |word| {
        some_byte_below(word, 0x20) || holds_byte(word, 0x7F) || holds_byte(word, 0xC2)
    })
}

/// Checks a record id: 1 to 1024 bytes, no control characters.
#[inline]
pub fn validate_id(id: &str) -> Result<()> {
    check_name(id).map_err(|reason| Error::InvalidId {
        id: shorten(id),
        reason,
    })
}

/// Checks a client id: 1 to 1024 bytes, no control characters. Refused as
/// an [`Error::InvalidArgument`] named `client_id`, not as a record id.
pub(crate) fn validate_client_id(id: &str) -> Result<()> {
    check_name(id).map_err(|reason| Error::InvalidArgument {
        name: "client_id",
        reason: format!("{:?} {reason}", shorten(id)),
    })
}

/// Checks a collection name: 1 to 1024 bytes, no control characters.
pub fn validate_collection(name: &str) -> Result<()> {
    check_name(name).map_err(|reason| Error::InvalidCollection {
        name: shorten(name),
        reason,
    })
}

/// Checks the size of a change-feed page: at least 1, since a page that can
/// hold nothing never lets a reader advance.
pub fn page_limit(limit: usize) -> Result<NonZeroUsize> {
    NonZeroUsize::new(limit).ok_or_else(|| Error::InvalidArgument {
        name: "limit",
        reason: "a change page must hold at least one change".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_scan_finds_what_the_byte_scan_finds() {
        let bytewise = |bytes: &[u8]| bytes.iter().any(|&b| b < 0x20 || b == 0x7F || b == 0xC2);
        crate::words::every_byte_at_every_position(|text| {
            assert_eq!(may_hold_control(text), bytewise(text), "{text:?}");
        });
        let mut text = [b'a'; 19];
        // Every pair of neighbours, whose borrows could mislead a word scan.
        for (first, second) in (0..=255u8).flat_map(|a| (0..=255u8).map(move |b| (a, b))) {
            text[3] = first;
            text[4] = second;
            assert_eq!(
                may_hold_control(&text),
                bytewise(&text),
                "{first:#x} {second:#x}"
            );
        }
    }

    #[test]
    fn accepts_ordinary_and_unusual_names() {
        for name in [
            "a",
            "a/b",
            "../x",
            "con",
            "名前",
            " spaced ",
            "price in ¢ and £",
            &"x".repeat(1024),
        ] {
            assert!(validate_id(name).is_ok(), "{name:?}");
            assert!(validate_collection(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn refuses_empty_long_and_control_characters() {
        for name in [
            "",
            "a\nb",
            "\u{0}",
            "tab\there",
            "\u{7f}",
            "next\u{85}line",
            "\u{9f}",
            &"x".repeat(1025),
        ] {
            assert!(
                matches!(validate_id(name), Err(Error::InvalidId { .. })),
                "{name:?}"
            );
            assert!(
                matches!(
                    validate_collection(name),
                    Err(Error::InvalidCollection { .. })
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn long_names_are_shortened_in_messages() {
        let err = validate_id(&"y".repeat(5000)).unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
        assert!(err.contains("5000 bytes"), "{err}");
    }
}
