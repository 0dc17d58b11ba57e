//! File and directory names for record ids and collection names.
//!
//! The readable form keeps `a`–`z`, `0`–`9`, `-` and `_` as they are, and a `.`
//! that is neither first nor last. An uppercase ASCII letter becomes `^` and
//! its lowercase, so names that differ only in case stay apart on
//! case-insensitive filesystems. Every other byte of the UTF-8 form (spaces,
//! `/`, `\`, `%`, `^`, `~`, non-ASCII, a leading or trailing dot) becomes
//! `%XX` with uppercase hex: non-ASCII never reaches the filesystem, so
//! Unicode normalisation (macOS) cannot merge two names. When the part before
//! the first `.` is a Windows device name (`con`, `nul`, `com1`, ...), its
//! first letter is escaped too. Only the canonical form decodes, so the
//! mapping is one-to-one, and since escapes use uppercase hex while literal
//! letters are lowercase, no two forms differ only in case.
//!
//! A readable form longer than [`MAX_READABLE_BYTES`] would break file-name
//! and path length limits, so such a name is stored as its first readable
//! part, `~`, and 32 hex digits of the SHA-256 of the name. `~` never occurs in
//! a readable form, so the two kinds cannot meet. Hashed names are recovered
//! from what the file holds (a record's `id`, a collection's `.name` file),
//! and a file whose content does not match the name it is stored under is
//! reported, never overwritten.

use sha2::{Digest, Sha256};

/// The longest readable form used as it is; longer names are hashed.
pub(crate) const MAX_READABLE_BYTES: usize = 120;

/// How much of the readable form a hashed name keeps, to stay recognisable.
const HASHED_PREFIX_BYTES: usize = 64;

/// Hex digits of the SHA-256 kept in a hashed name (128 bits).
const HASH_HEX_DIGITS: usize = 32;

/// The marker between the readable prefix and the hash of a hashed name.
const HASH_MARKER: char = '~';

/// Windows device names, reserved whatever follows them after a dot.
const DEVICE_NAMES: [&str; 4] = ["con", "prn", "aux", "nul"];

/// The name of the file or directory (without extension) that stores `name`.
pub(crate) fn stem_for(name: &str) -> String {
    let readable = encode(name);
    if readable.len() <= MAX_READABLE_BYTES {
        return readable;
    }
    let prefix = readable_prefix(&readable, HASHED_PREFIX_BYTES);
    let digest = Sha256::digest(name.as_bytes());
    let mut hex = String::with_capacity(HASH_HEX_DIGITS);
    for byte in digest.iter().take(HASH_HEX_DIGITS / 2) {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!("{prefix}{HASH_MARKER}{hex}")
}

/// Whether a stem is a hashed name, whose original name must be read from
/// the content: a readable prefix of at most [`HASHED_PREFIX_BYTES`], the
/// marker and [`HASH_HEX_DIGITS`] lowercase hex digits, as [`stem_for`]
/// makes them. A file only holding a `~` (`notes~old.json`) is not one, so
/// it is no record file and a clear leaves it alone.
pub(crate) fn is_hashed(stem: &str) -> bool {
    stem.split_once(HASH_MARKER).is_some_and(|(prefix, hash)| {
        !prefix.is_empty()
            && prefix.len() <= HASHED_PREFIX_BYTES
            && !prefix.contains(HASH_MARKER)
            && hash.len() == HASH_HEX_DIGITS
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The name a readable stem stands for; `None` for anything that is not the
/// canonical readable form of a name (hashed stems, foreign files).
pub(crate) fn decode(stem: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(stem.len());
    let mut chars = stem.bytes();
    while let Some(b) = chars.next() {
        match b {
            b'%' => {
                let high = hex_value(chars.next()?)?;
                let low = hex_value(chars.next()?)?;
                bytes.push(high << 4 | low);
            }
            b'^' => {
                let letter = chars.next()?;
                if !letter.is_ascii_lowercase() {
                    return None;
                }
                bytes.push(letter.to_ascii_uppercase());
            }
            _ => bytes.push(b),
        }
    }
    let name = String::from_utf8(bytes).ok()?;
    // Only the canonical form decodes: this keeps the mapping one-to-one and
    // rejects files the store did not name. A readable form too long to use
    // is not where its name is kept either: that is its hashed stem.
    (!name.is_empty() && stem.len() <= MAX_READABLE_BYTES && encode(&name) == stem).then_some(name)
}

/// The readable form of a name (possibly too long to use; see [`stem_for`]).
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    let last = name.len().saturating_sub(1);
    for (index, c) in name.char_indices() {
        match c {
            'a'..='z' | '0'..='9' | '-' | '_' => out.push(c),
            '.' if index != 0 && index != last => out.push('.'),
            'A'..='Z' => {
                out.push('^');
                out.push(c.to_ascii_lowercase());
            }
            _ => {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    push_escape(&mut out, byte);
                }
            }
        }
    }
    if is_device_name(&out) {
        // The device check only matches names starting with a literal letter.
        let first = out.as_bytes().first().copied().unwrap_or(b'_');
        let mut escaped = String::with_capacity(out.len() + 2);
        push_escape(&mut escaped, first);
        escaped.push_str(out.get(1..).unwrap_or_default());
        out = escaped;
    }
    out
}

fn push_escape(out: &mut String, byte: u8) {
    out.push_str(&format!("%{byte:02X}"));
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn is_device_name(readable: &str) -> bool {
    let base = readable.split('.').next().unwrap_or_default();
    if DEVICE_NAMES.contains(&base) {
        return true;
    }
    let bytes = base.as_bytes();
    bytes.len() == 4
        && (base.starts_with("com") || base.starts_with("lpt"))
        && bytes[3].is_ascii_digit()
}

/// The longest prefix of a readable form within `max` bytes that does not cut
/// an escape in two.
fn readable_prefix(readable: &str, max: usize) -> &str {
    let bytes = readable.as_bytes();
    let mut end = 0;
    while end < bytes.len() {
        let token = match bytes[end] {
            b'%' => 3,
            b'^' => 2,
            _ => 1,
        };
        if end + token > max {
            break;
        }
        end += token;
    }
    readable.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(stem_for("insp-001"), "insp-001");
        assert_eq!(stem_for("user_42"), "user_42");
        assert_eq!(stem_for("a.b"), "a.b");
    }

    #[test]
    fn names_the_original_merged_stay_apart() {
        let names = ["a/b", "a_b", "a.b", "a b", "A b", "a%2Fb", "a\\b", "a:b"];
        let stems: HashSet<String> = names.iter().map(|n| stem_for(n).to_lowercase()).collect();
        assert_eq!(stems.len(), names.len(), "{stems:?}");
    }

    #[test]
    fn case_differences_survive_case_insensitive_filesystems() {
        let names = ["note", "Note", "NOTE", "nOtE", "%4Eote", "^note"];
        let folded: HashSet<String> = names.iter().map(|n| stem_for(n).to_lowercase()).collect();
        assert_eq!(folded.len(), names.len(), "{folded:?}");
        assert_eq!(stem_for("Note"), "^note");
    }

    #[test]
    fn dots_and_separators_never_form_paths() {
        for name in [
            ".",
            "..",
            "../x",
            "x/..",
            "/etc/passwd",
            ".hidden",
            "trailing.",
            "a\\..\\b",
        ] {
            let stem = stem_for(name);
            assert!(!stem.starts_with('.'), "{name:?} -> {stem}");
            assert!(!stem.ends_with('.'), "{name:?} -> {stem}");
            assert!(
                !stem.contains('/') && !stem.contains('\\'),
                "{name:?} -> {stem}"
            );
            assert_eq!(decode(&stem).as_deref(), Some(name));
        }
        assert_eq!(stem_for(".."), "%2E%2E");
    }

    #[test]
    fn windows_device_names_are_escaped() {
        for name in ["con", "CON", "nul", "aux.txt", "com1", "lpt9.tar.gz", "prn"] {
            let stem = stem_for(name).to_lowercase();
            let base = stem.split('.').next().unwrap();
            assert!(!DEVICE_NAMES.contains(&base), "{name:?} -> {stem}");
            assert!(!(base.len() == 4 && (base.starts_with("com") || base.starts_with("lpt"))));
        }
        assert_eq!(stem_for("con"), "%63on");
        assert_eq!(stem_for("console"), "console");
        assert_eq!(stem_for("com10"), "com10");
    }

    #[test]
    fn unicode_is_escaped_so_normalisation_cannot_merge_names() {
        let composed = "caf\u{e9}";
        let decomposed = "cafe\u{301}";
        assert_ne!(stem_for(composed), stem_for(decomposed));
        assert!(stem_for(composed).is_ascii());
        assert_eq!(decode(&stem_for("名前")).as_deref(), Some("名前"));
    }

    #[test]
    fn long_names_are_hashed_within_file_name_limits() {
        let long = "x".repeat(1024);
        let worst = "/".repeat(1024);
        for name in [&long, &worst] {
            let stem = stem_for(name);
            assert!(is_hashed(&stem));
            assert!(stem.len() + ".json".len() <= 255 && stem.len() <= MAX_READABLE_BYTES);
            assert_eq!(decode(&stem), None);
        }
        assert_ne!(stem_for(&long), stem_for(&format!("{}y", "x".repeat(1023))));
        let escaped_cut = format!("{}{}", "a".repeat(63), "/".repeat(200));
        assert_eq!(
            stem_for(&escaped_cut).split('~').next().unwrap(),
            "a".repeat(63)
        );
    }

    /// Only the shape `stem_for` gives a hashed name is one: a name merely
    /// holding a `~` was taken for one, and its file for a record's.
    #[test]
    fn only_the_shape_of_a_hashed_name_is_hashed() {
        let hash = "0123456789abcdef0123456789abcdef";
        assert!(is_hashed(&format!("notes~{hash}")));
        for foreign in [
            "notes~old".to_owned(),
            "draft~2".to_owned(),
            format!("~{hash}"),
            format!("a~{}", hash.to_uppercase()),
            format!("a~{hash}0"),
            format!("a~b~{hash}"),
            format!("{}~{hash}", "a".repeat(HASHED_PREFIX_BYTES + 1)),
        ] {
            assert!(!is_hashed(&foreign), "{foreign:?}");
        }
    }

    #[test]
    fn only_canonical_forms_decode() {
        for foreign in [
            "", "%2e", "a%2fb", "%41", "^A", "^1", "Note", "a~b", "%4", "%ZZ", "%FF", "con",
        ] {
            assert_eq!(decode(foreign), None, "{foreign:?}");
        }
        // Readable, but too long to be where its name is kept: that is its
        // hashed stem, so the file stands for no record.
        let long = "a".repeat(MAX_READABLE_BYTES + 1);
        assert_eq!(decode(&long), None);
        assert_eq!(decode(&long[1..]).as_deref(), Some(&long[1..]));
    }

    proptest! {
        #[test]
        fn readable_forms_round_trip(name in "\\PC{1,10}") {
            let stem = stem_for(&name);
            prop_assert!(!is_hashed(&stem));
            prop_assert_eq!(decode(&stem), Some(name));
        }

        #[test]
        fn distinct_names_never_share_a_case_folded_stem(a in "[a-zA-Z./ _%^~-]{1,8}", b in "[a-zA-Z./ _%^~-]{1,8}") {
            prop_assume!(a != b);
            prop_assert_ne!(stem_for(&a).to_lowercase(), stem_for(&b).to_lowercase());
        }
    }
}
