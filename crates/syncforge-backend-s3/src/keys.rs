//! Object keys: where each piece of a store lives, and the one-to-one
//! encoding of collection names, record ids and metadata keys into key
//! segments.
//!
//! ```text
//! {prefix}/m/k{key}                 metadata
//! {prefix}/c/{collection}/name      the full name, only for hashed names
//! {prefix}/c/{collection}/t         bound on the newest stamp written
//! {prefix}/c/{collection}/h         feed horizon: entries folded so far
//! {prefix}/c/{collection}/s/...     segment: what the folded entries left
//! {prefix}/c/{collection}/f/{N}     feed entry N (16 hex digits)
//! {prefix}/c/{collection}/r/{id}    one record
//! ```

use object_store::path::Path;
use sha2::{Digest, Sha256};
use syncforge_core::{CollectionName, Error, RecordId, Result};

/// Longest encoded collection segment kept as it is; longer ones are hashed.
const MAX_PLAIN_COLLECTION: usize = 180;
/// Longest encoded id segment kept as it is; longer ones are hashed.
const MAX_PLAIN_ID: usize = 600;
/// Longest accepted prefix, so that every key stays under S3's 1,024 bytes.
pub(crate) const MAX_PREFIX: usize = 120;
/// Separates the readable head from the hash in a hashed segment.
const HASH_MARK: char = '!';
/// Encoded bytes kept before the hash in a hashed segment.
const HASHED_HEAD: usize = 64;

/// Encodes a name as a key segment: `A`-`Z`, `a`-`z`, `0`-`9`, `-` and `_`
/// stay, every other byte of the UTF-8 form becomes `.XX` (uppercase hex).
/// The result decodes back to exactly one name. Segments longer than `max`
/// become the first encoded bytes, `!` and 128 bits of the name's SHA-256:
/// `!` never appears in the plain form, so the two forms never meet (and
/// object_store keeps it as it is, unlike `~`).
fn encode(name: &str, max: usize) -> String {
    let mut out = String::with_capacity(name.len());
    for &byte in name.as_bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            out.push('.');
            out.push_str(&format!("{byte:02X}"));
        }
    }
    if out.len() <= max {
        return out;
    }
    // Cut on an escape boundary so the head stays readable.
    let mut cut = HASHED_HEAD;
    while out.as_bytes().get(cut.saturating_sub(1)) == Some(&b'.')
        || out.as_bytes().get(cut.saturating_sub(2)) == Some(&b'.')
    {
        cut -= 1;
    }
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}{HASH_MARK}{hash}", &out[..cut])
}

/// The longest metadata key kept plain in a local directory whose file
/// names hold at most `longest` bytes (the name is `k` and the key).
fn local_meta_plain(longest: usize) -> usize {
    MAX_PLAIN_ID.min(longest.saturating_sub(1))
}

/// Decodes a plain segment; `None` for a hashed one or one that is not the
/// canonical encoding of any name.
fn decode(segment: &str) -> Option<String> {
    if segment.contains(HASH_MARK) {
        return None;
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'.' {
            let hex = segment.get(i + 1..i + 3)?;
            if hex.bytes().any(|b| b.is_ascii_lowercase()) {
                return None;
            }
            let value = u8::from_str_radix(hex, 16).ok()?;
            // Only the canonical form decodes: a byte that stays plain must not be escaped.
            if value.is_ascii_alphanumeric() || value == b'-' || value == b'_' {
                return None;
            }
            out.push(value);
            i += 3;
        } else if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(byte);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether a segment is the hashed form (the full name is stored elsewhere).
pub(crate) fn is_hashed(segment: &str) -> bool {
    segment.contains(HASH_MARK)
}

/// What a key segment of a collection directory says.
pub(crate) enum SegmentName {
    /// The name, decoded.
    Plain(CollectionName),
    /// A hashed name: read the `name` object.
    Hashed,
}

/// The key layout of one store (one prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    /// In a local directory: the longest record file name it can write.
    longest_file_name: Option<usize>,
}

impl Keys {
    /// Checks the prefix: non-empty segments separated by `/`, without `.`
    /// or `..`, of characters that need no escaping in any object store.
    pub(crate) fn new(prefix: &str) -> Result<Keys> {
        let prefix = prefix.trim_matches('/');
        let refuse = |reason: &str| Error::InvalidConfig {
            option: "prefix",
            reason: format!("{prefix:?} {reason}"),
        };
        if prefix.is_empty() {
            return Err(refuse("is empty: give the store a prefix of its own"));
        }
        if prefix.len() > MAX_PREFIX {
            return Err(refuse(&format!("is longer than {MAX_PREFIX} bytes")));
        }
        for segment in prefix.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(refuse("has an empty, `.` or `..` segment"));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!'()".contains(&b))
            {
                return Err(refuse(
                    "may hold only letters, digits and - _ . ! ' ( ) between slashes",
                ));
            }
        }
        Ok(Keys {
            prefix: prefix.to_owned(),
            longest_file_name: None,
        })
    }

    /// The layout in a local directory, whose files' names are bounded
    /// ([`MAX_WRITABLE_NAME`](crate::local::MAX_WRITABLE_NAME)).
    pub(crate) fn in_local_files(mut self) -> Keys {
        self.longest_file_name = Some(crate::local::MAX_WRITABLE_NAME);
        self
    }

    /// Whether this is the layout in a local directory.
    pub(crate) fn local(&self) -> bool {
        self.longest_file_name.is_some()
    }

    /// Refuses an id whose record key (in `keys`) ends in a longer name than
    /// a local directory can write. Checked before a write's feed entry:
    /// written, the entry would hold a write that can never land.
    pub(crate) fn check_id(&self, keys: &CollectionKeys, id: &RecordId) -> Result<()> {
        let Some(longest) = self.longest_file_name else {
            return Ok(());
        };
        let record = keys.record(id);
        let name = record.filename().unwrap_or_default();
        if name.len() <= longest {
            return Ok(());
        }
        Err(Error::InvalidId {
            id: id.as_str().chars().take(64).collect(),
            reason: format!(
                "a local directory stores it in a file named by its key, {} bytes long \
                 (an id encodes each byte but letters, digits, `-` and `_` as three), and a \
                 file name holds at most {longest} here; ids whose key passes {MAX_PLAIN_ID} \
                 bytes are stored under a hash and fit",
                name.len()
            ),
        })
    }

    /// The prefix as given (without surrounding slashes).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where a handle tries conditional writes, on keys of its own (see
    /// `Io::check_conditions`), apart from every collection and value.
    pub(crate) fn probes(&self) -> Path {
        Path::from(format!("{}/p", self.prefix))
    }

    /// The directory holding every collection.
    pub(crate) fn collections(&self) -> Path {
        Path::from(format!("{}/c", self.prefix))
    }

    /// The key of a metadata value. In a local directory a key whose file
    /// name would pass what a file name holds is stored under a hash, as an
    /// id's is past [`MAX_PLAIN_ID`] (the value's object names its key):
    /// the engine's own keys name peers and collections, and a collection
    /// of a few dozen non-ASCII characters made every sync of it fail.
    pub(crate) fn meta(&self, key: &str) -> Path {
        let plain = match self.longest_file_name {
            Some(longest) => local_meta_plain(longest),
            None => MAX_PLAIN_ID,
        };
        Path::from(format!("{}/m/k{}", self.prefix, encode(key, plain)))
    }

    /// Where a local directory keeps the metadata value of `key`, when that
    /// is not [`meta`](Self::meta) (a bucket, and a key a local file name
    /// cannot hold as it is): a directory uploaded to a bucket keeps its
    /// values there.
    pub(crate) fn meta_of_local_files(&self, key: &str) -> Option<Path> {
        if self.longest_file_name.is_some() {
            return None;
        }
        let local = encode(key, local_meta_plain(crate::local::MAX_WRITABLE_NAME));
        (local != encode(key, MAX_PLAIN_ID))
            .then(|| Path::from(format!("{}/m/k{local}", self.prefix)))
    }

    /// The key paths of one collection.
    pub(crate) fn collection(&self, name: &CollectionName) -> CollectionKeys {
        CollectionKeys::at(
            format!("{}/c/{}", self.prefix, encode(name, MAX_PLAIN_COLLECTION)),
            Some(name.as_str()),
        )
    }

    /// The keys of the collection stored under directory segment `segment`.
    pub(crate) fn collection_at(&self, segment: &str) -> CollectionKeys {
        let name = decode(segment);
        CollectionKeys::at(format!("{}/c/{segment}", self.prefix), name.as_deref())
    }

    /// Reads a collection directory's segment.
    pub(crate) fn collection_name(segment: &str) -> Option<SegmentName> {
        if is_hashed(segment) {
            return Some(SegmentName::Hashed);
        }
        decode(segment)
            .and_then(|name| CollectionName::new(name).ok())
            .map(SegmentName::Plain)
    }
}

/// The keys of one collection.
#[derive(Debug, Clone)]
pub(crate) struct CollectionKeys {
    dir: String,
    hashed: bool,
    /// The collection as errors name it: its name, or the directory when
    /// only a hashed directory is known (its name is in an object there).
    collection: String,
}

impl CollectionKeys {
    fn at(dir: String, name: Option<&str>) -> Self {
        let hashed = dir.rsplit('/').next().is_some_and(is_hashed);
        let collection = name.map_or_else(|| dir.clone(), str::to_owned);
        CollectionKeys {
            dir,
            hashed,
            collection,
        }
    }

    /// The collection as errors name it (see [`Error::Corrupt`]).
    pub(crate) fn collection(&self) -> &str {
        &self.collection
    }

    /// Whether the directory name is hashed (the `name` object holds the name).
    pub(crate) fn is_hashed(&self) -> bool {
        self.hashed
    }

    /// The object holding the full name of a hashed collection.
    pub(crate) fn name(&self) -> Path {
        Path::from(format!("{}/name", self.dir))
    }

    /// The bound on the newest stamp written to the collection.
    pub(crate) fn newest(&self) -> Path {
        Path::from(format!("{}/t", self.dir))
    }

    /// The feed's horizon object.
    pub(crate) fn horizon(&self) -> Path {
        Path::from(format!("{}/h", self.dir))
    }

    /// A new segment object's key (unique: two compactors never share one).
    pub(crate) fn segment(&self, horizon: u64, unique: &str) -> Path {
        Path::from(format!("{}/s/{horizon:016x}-{unique}", self.dir))
    }

    /// Directory of the segments.
    pub(crate) fn segments(&self) -> Path {
        Path::from(format!("{}/s", self.dir))
    }

    /// The horizon a segment's key was written for (see
    /// [`segment`](Self::segment)); `None` for a key syncforge does not
    /// write there.
    pub(crate) fn segment_horizon(&self, path: &Path) -> Option<u64> {
        let (number, _unique) = self.name_in("s", path)?.split_once('-')?;
        lower_hex(number)
    }

    /// A segment object's key from its name in the horizon object.
    pub(crate) fn segment_named(&self, name: &str) -> Result<Path> {
        Path::parse(format!("{}/s/{name}", self.dir)).map_err(|e| {
            self.corrupt(
                &self.horizon(),
                format!("names an invalid segment {name:?}: {e}"),
            )
        })
    }

    /// The error for an object of this collection's feed (`location`) that
    /// syncforge would not have written.
    pub(crate) fn corrupt(&self, location: &Path, reason: String) -> Error {
        Error::Corrupt {
            backend: crate::BACKEND_NAME,
            collection: self.collection.clone(),
            id: None,
            location: location.to_string(),
            reason,
        }
    }

    /// Directory of the feed entries.
    pub(crate) fn entries(&self) -> Path {
        Path::from(format!("{}/f", self.dir))
    }

    /// Feed entry `number`.
    pub(crate) fn entry(&self, number: u64) -> Path {
        Path::from(format!("{}/f/{number:016x}", self.dir))
    }

    /// The entry number of a feed key. A name past
    /// [`MAX_ENTRY`](crate::format::MAX_ENTRY) is no entry: syncforge never
    /// writes one (its cursors would pass 2^53), and counting it would push
    /// the feed's head past the numbers a cursor can hold.
    pub(crate) fn entry_number(&self, path: &Path) -> Option<u64> {
        lower_hex(self.name_in("f", path)?).filter(|number| *number <= crate::format::MAX_ENTRY)
    }

    /// Directory of the records.
    pub(crate) fn records(&self) -> Path {
        Path::from(format!("{}/r", self.dir))
    }

    /// Whether `location`, listed under [`records`](Self::records), is
    /// where a record is kept.
    pub(crate) fn holds_record_at(&self, location: &Path) -> bool {
        self.name_in("r", location).is_some()
    }

    /// The name of `location` when it lies right in this collection's
    /// `folder` (`r`, `f` or `s`), as every key syncforge writes there
    /// does. A key deeper down is another store's, whose prefix lies under
    /// this one's folder (listings go down every level): it is never read,
    /// folded, cleared or deleted as this collection's.
    fn name_in<'a>(&self, folder: &str, location: &'a Path) -> Option<&'a str> {
        let name = location
            .as_ref()
            .strip_prefix(self.dir.as_str())?
            .strip_prefix('/')?
            .strip_prefix(folder)?
            .strip_prefix('/')?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    /// The object of record `id`.
    pub(crate) fn record(&self, id: &RecordId) -> Path {
        Path::from(format!("{}/r/{}", self.dir, encode(id, MAX_PLAIN_ID)))
    }

    /// The directory as a string, for messages.
    pub(crate) fn dir(&self) -> &str {
        &self.dir
    }
}

/// A number as syncforge names feed objects: 16 lowercase hexadecimal
/// digits. Any other spelling of the same number (`000000000000000A`, or
/// with a sign, which `from_str_radix` would take) is another key, and no
/// number: counting it would give two objects one number.
fn lower_hex(name: &str) -> Option<u64> {
    if name.len() != 16 || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn plain_names_round_trip_and_stay_distinct() {
        let names = [
            "a", "A", "a b", "a_b", "a.b", "a/b", "a%2Fb", "a%2fb", "..", ".", "../x", "~", "名前",
            "e\u{301}", "\u{e9}", "a.2Fb", "-", "_",
        ];
        let mut seen = BTreeSet::new();
        for name in names {
            let encoded = encode(name, MAX_PLAIN_ID);
            assert!(seen.insert(encoded.clone()), "{name:?} collides");
            assert_eq!(decode(&encoded).as_deref(), Some(name), "{encoded}");
            assert!(encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
            // object_store keeps the segment as it is (no escaping of its own).
            assert_eq!(Path::from(encoded.as_str()).as_ref(), encoded);
        }
    }

    #[test]
    fn only_the_canonical_form_decodes() {
        assert_eq!(decode(".61"), None); // "a" escaped
        assert_eq!(decode(".2f"), None); // lowercase hex
        assert_eq!(decode("a."), None);
        assert_eq!(decode("a b"), None);
        assert_eq!(decode(".2F"), Some("/".to_owned()));
    }

    #[test]
    fn long_names_are_hashed_and_never_meet_plain_ones() {
        let a = format!("{}1", "x".repeat(1023));
        let b = format!("{}2", "x".repeat(1023));
        let (ea, eb) = (encode(&a, MAX_PLAIN_ID), encode(&b, MAX_PLAIN_ID));
        assert_ne!(ea, eb);
        assert!(is_hashed(&ea) && ea.len() <= HASHED_HEAD + 33);
        assert_eq!(decode(&ea), None);
        let wide = "é".repeat(512);
        let encoded = encode(&wide, MAX_PLAIN_COLLECTION);
        assert!(is_hashed(&encoded));
        assert!(!encoded.split(HASH_MARK).next().unwrap().ends_with('.'));
        assert_eq!(Path::from(encoded.as_str()).as_ref(), encoded);
    }

    #[test]
    fn keys_stay_under_the_s3_limit() {
        let keys = Keys::new(&"p".repeat(MAX_PREFIX)).unwrap();
        let coll = CollectionName::new("é".repeat(512)).unwrap();
        let id = RecordId::new("é".repeat(512)).unwrap();
        assert!(keys.collection(&coll).record(&id).as_ref().len() <= 1024);
        let coll = CollectionName::new("a".repeat(180)).unwrap();
        let id = RecordId::new("b".repeat(600)).unwrap();
        assert!(keys.collection(&coll).record(&id).as_ref().len() <= 1024);
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for prefix in [
            "",
            "/",
            "a//b",
            "a/../b",
            "a b",
            "a%b",
            "a~b",
            "a*b",
            "..",
            &"x".repeat(121),
        ] {
            assert!(Keys::new(prefix).is_err(), "{prefix:?}");
        }
        assert_eq!(Keys::new("/dse/").unwrap().prefix(), "dse");
        assert_eq!(
            Keys::new("team-a/sync.v1").unwrap().prefix(),
            "team-a/sync.v1"
        );
    }

    #[test]
    fn entry_keys_sort_by_number() {
        let keys = Keys::new("dse").unwrap();
        let coll = keys.collection(&CollectionName::new("c").unwrap());
        assert!(coll.entry(9).as_ref() < coll.entry(10).as_ref());
        assert_eq!(coll.entry_number(&coll.entry(300)), Some(300));
    }

    #[test]
    fn a_feed_key_past_the_last_entry_number_is_no_entry() {
        let keys = Keys::new("dse").unwrap();
        let coll = keys.collection(&CollectionName::new("c").unwrap());
        let last = crate::format::MAX_ENTRY;
        assert_eq!(coll.entry_number(&coll.entry(last)), Some(last));
        assert_eq!(coll.entry_number(&coll.entry(last + 1)), None);
        assert_eq!(coll.entry_number(&coll.entry(u64::MAX)), None);
        let signed = Path::from(format!("{}/f/+00000000000001a", coll.dir()));
        assert_eq!(coll.entry_number(&signed), None);
    }

    /// An uppercase name spells the number of another key, which a reader
    /// counted as that entry: two objects, one number, one cursor for two
    /// writes. Only the names syncforge writes are entries.
    #[test]
    fn a_feed_key_in_uppercase_is_no_entry() {
        let keys = Keys::new("dse").unwrap();
        let coll = keys.collection(&CollectionName::new("c").unwrap());
        let upper = Path::from(format!("{}/f/000000000000000A", coll.dir()));
        assert_eq!(coll.entry_number(&upper), None);
        assert_eq!(coll.entry_number(&coll.entry(10)), Some(10));
    }

    /// Listings go down every level: a key deeper in a folder is another
    /// store's, whose prefix lies under this one's folder (`dse/c/c/s`
    /// under `dse`), and its segments, entries and records were taken for
    /// this collection's: deleted by a compaction, folded into its feed,
    /// marked by a clear.
    #[test]
    fn keys_of_a_store_nested_in_a_folder_are_not_this_collections() {
        let keys = Keys::new("dse").unwrap();
        let coll = keys.collection(&CollectionName::new("c").unwrap());
        let inner = Keys::new(&format!("{}/s", coll.dir())).unwrap();
        let nested = inner.collection(&CollectionName::new("c").unwrap());
        let segment = nested.segment(300, "01JUNIQUE");
        assert_eq!(nested.segment_horizon(&segment), Some(300));
        assert_eq!(coll.segment_horizon(&segment), None);
        let inner = Keys::new(&format!("{}/f", coll.dir())).unwrap();
        let nested = inner.collection(&CollectionName::new("c").unwrap());
        assert_eq!(coll.entry_number(&nested.entry(10)), None);
        let inner = Keys::new(&format!("{}/r", coll.dir())).unwrap();
        let nested = inner.collection(&CollectionName::new("c").unwrap());
        let record = nested.record(&RecordId::new("x").unwrap());
        assert!(nested.holds_record_at(&record));
        assert!(!coll.holds_record_at(&record));
    }

    #[test]
    fn a_segment_key_names_its_horizon() {
        let keys = Keys::new("dse").unwrap();
        let coll = keys.collection(&CollectionName::new("c").unwrap());
        let segment = coll.segment(300, "01JUNIQUE");
        assert!(segment.as_ref().starts_with(coll.segments().as_ref()));
        assert_eq!(coll.segment_horizon(&segment), Some(300));
        let foreign = Path::from(format!("{}/s/notes.txt", coll.dir()));
        assert_eq!(coll.segment_horizon(&foreign), None);
    }
}
