//! Key names. Every key of one collection carries the same hash tag — the
//! collection's encoded name in braces — so a collection lives in one cluster
//! slot and one Lua script may touch all of its keys.
//!
//! ```text
//! <prefix>:collections          set: names of the collections ever written
//! <prefix>:meta                 hash: engine metadata
//! <prefix>:c:{<name>}:records   hash: id -> "<sequence> <record JSON>"
//! <prefix>:c:{<name>}:feed      sorted set: id scored by its last change's sequence
//! <prefix>:c:{<name>}:time      sorted set: id scored by its `_timestamp`
//! <prefix>:c:{<name>}:seq       string: the last sequence handed out
//! <prefix>:c:{<name>}:newest    sorted set: the newest stamp written, or newer (one member)
//! ```

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use syncforge_core::CollectionName;

/// The keys of one store (one key prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// The keys of one collection, in the order the scripts expect them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CollectionKeys {
    pub(crate) records: String,
    pub(crate) feed: String,
    pub(crate) time: String,
    pub(crate) seq: String,
    pub(crate) newest: String,
}

impl CollectionKeys {
    /// The `KEYS` of the write scripts, in the order they take them:
    /// records, feed, time, seq, newest.
    pub(crate) fn for_writes(&self) -> Vec<String> {
        vec![
            self.records.clone(),
            self.feed.clone(),
            self.time.clone(),
            self.seq.clone(),
            self.newest.clone(),
        ]
    }
}

impl Keys {
    /// Keys under `prefix`, which the configuration checked holds no brace.
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The set of collection names ever written.
    pub(crate) fn registry(&self) -> String {
        format!("{}:collections", self.prefix)
    }

    /// The hash of engine metadata.
    pub(crate) fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }

    /// The keys of `collection`.
    pub(crate) fn collection(&self, collection: &CollectionName) -> CollectionKeys {
        let base = format!("{}:c:{{{}}}:", self.prefix, encode(collection));
        CollectionKeys {
            records: format!("{base}records"),
            feed: format!("{base}feed"),
            time: format!("{base}time"),
            seq: format!("{base}seq"),
            newest: format!("{base}newest"),
        }
    }
}

/// The bytes of a collection name that stay as they are in its key: ASCII
/// letters, digits, `-`, `_` and `.`.
const KEPT_IN_KEYS: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// Encodes a collection name for a hash tag, one-to-one: ASCII letters,
/// digits, `-`, `_` and `.` stay; every other byte of the UTF-8 form becomes
/// `%XX` (uppercase hex). So no name yields a brace (which would end the
/// tag), a `:` (which would blur the key's parts) or a `*`, and since `%`
/// itself is escaped, two names never share an encoding.
pub(crate) fn encode(name: &str) -> String {
    utf8_percent_encode(name, KEPT_IN_KEYS).to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn name(s: &str) -> CollectionName {
        CollectionName::new(s).unwrap()
    }

    /// The part of a key Redis Cluster hashes: between the first `{` and the
    /// first `}` after it, when that is not empty.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + 1 + key[open + 1..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn unusual_names_encode_one_to_one_inside_the_tag() {
        let names = [
            "a", "A", "a b", "a:b", "a*b", "{a}", "a}b", "{", "}", "%", "%25", "a%7Bb", "名前",
            "e\u{301}", "\u{e9}", "a.b", "a_b", "a-b", "🙂",
        ];
        let keys = Keys::new("dse");
        let mut seen = BTreeSet::new();
        for n in names {
            let k = keys.collection(&name(n));
            let tag = hash_tag(&k.records);
            assert_eq!(tag, encode(n), "{n:?}");
            assert!(
                tag.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.%".contains(&b)),
                "{tag}"
            );
            for key in [&k.feed, &k.time, &k.seq, &k.newest] {
                assert_eq!(hash_tag(key), tag, "every key of {n:?} shares the tag");
                assert!(key.starts_with("dse:c:{"), "{key}");
            }
            assert!(seen.insert(tag.to_owned()), "{n:?} collides");
        }
    }

    #[test]
    fn the_encoding_is_exact() {
        assert_eq!(encode("Notes-2024_v1.x"), "Notes-2024_v1.x");
        assert_eq!(encode("a b:c{d}*%"), "a%20b%3Ac%7Bd%7D%2A%25");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn prefixes_do_not_overlap() {
        // A prefix that extends another by ":c" still yields other keys.
        let short = Keys::new("dse");
        let long = Keys::new("dse:c");
        let c = name("x");
        let shorts = [
            short.registry(),
            short.meta(),
            short.collection(&c).records,
            short.collection(&c).seq,
        ];
        let longs = [
            long.registry(),
            long.meta(),
            long.collection(&c).records,
            long.collection(&c).seq,
        ];
        for key in &shorts {
            assert!(!longs.contains(key), "{key}");
        }
    }
}
