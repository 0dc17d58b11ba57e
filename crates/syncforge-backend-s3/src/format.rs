//! What the objects hold, as JSON.

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use syncforge_core::{CollectionName, Cursor, Error, Record, RecordId, Result, Stamp};

use crate::BACKEND_NAME;

/// Items per feed entry at most: a cursor is `entry << 20 | item`.
pub(crate) const ITEM_BITS: u32 = 20;
/// The largest number of items one entry holds.
pub(crate) const MAX_ITEMS: usize = 1 << ITEM_BITS;
/// The largest entry number whose cursors stay within 2^53.
pub(crate) const MAX_ENTRY: u64 = (1 << (53 - ITEM_BITS)) - 1;

/// The cursor of item `item` of entry `entry`.
pub(crate) fn cursor(entry: u64, item: usize) -> Cursor {
    Cursor::new((entry << ITEM_BITS) | item as u64)
}

/// The entry a cursor lies in.
pub(crate) fn entry_of(cursor: Cursor) -> u64 {
    cursor.get() >> ITEM_BITS
}

/// The last cursor of entry `entry`.
pub(crate) fn end_of(entry: u64) -> Cursor {
    Cursor::new((entry << ITEM_BITS) | (MAX_ITEMS as u64 - 1))
}

/// The body of a record object: the record with the cursor of the write
/// that put it there, or a marker left by a hard delete.
///
/// Every body is unique — a cursor is handed out once per collection, a
/// marker holds a fresh ULID — so an ETag never comes back once an object
/// has moved on (S3's ETag is the MD5 of the body; other stores use
/// counters or generations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) seq: Option<Cursor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) record: Option<Record>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) void: Option<String>,
    /// The cursors of the record states this one replaced, newest first, up
    /// to [`KEPT_BEFORE`]: a writer whose write was completed by a reader
    /// and then replaced before its own commit came back finds its cursor
    /// here, and knows that its write landed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) before: Vec<Cursor>,
}

/// How many earlier states a record object names ([`RecordBody::before`]).
pub(crate) const KEPT_BEFORE: usize = 16;

/// The exact size of a marker body: `{"void":"<26-character ULID>"}`.
/// Listings tell markers from records by size alone: every record body is
/// larger (it holds at least `seq`, the id and the record's metadata).
pub(crate) const MARKER_SIZE: u64 = 37;

impl RecordBody {
    /// The body of `record` written at `seq`, over states written at
    /// `before` (newest first; only the first [`KEPT_BEFORE`] are kept).
    pub(crate) fn record(seq: Cursor, record: Record, before: &[Cursor]) -> Self {
        RecordBody {
            seq: Some(seq),
            record: Some(record),
            void: None,
            before: before.iter().take(KEPT_BEFORE).copied().collect(),
        }
    }

    pub(crate) fn marker() -> Self {
        RecordBody {
            seq: None,
            record: None,
            void: Some(ulid::Ulid::new().to_string()),
            before: Vec::new(),
        }
    }
}

/// One write of a feed entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Item {
    /// The record written (its id is the object's).
    pub(crate) record: Record,
    /// The ETag the record object must have, or `None`: it must not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expect: Option<String>,
}

impl Item {
    pub(crate) fn id(&self) -> &RecordId {
        self.record.id()
    }
}

/// A feed entry: the writes of one batch, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    pub(crate) items: Vec<Item>,
    /// A ULID made for this entry. An entry number can be held by two
    /// entries in turn (compaction deletes an entry it folded, and a writer
    /// that still takes the feed to end before it claims the number again,
    /// then abandons it): compaction keeps the ids of the entries it folds
    /// ([`Segment::folded`]), so that a writer can tell whether the entry
    /// folded under its number was its own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) id: String,
}

impl Entry {
    /// An entry of `items`, with an id of its own.
    pub(crate) fn new(items: Vec<Item>) -> Self {
        Entry {
            items,
            id: ulid::Ulid::new().to_string(),
        }
    }
}

/// The horizon: entries up to `horizon` are folded into `segment`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Horizon {
    pub(crate) horizon: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) segment: Option<String>,
}

/// A segment: for each record whose latest write lies at or before the
/// horizon, the cursor of that write — sorted by cursor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Segment {
    pub(crate) horizon: u64,
    pub(crate) writes: Vec<(Cursor, RecordId)>,
    /// The entries folded by the compactions up to this one, by number and
    /// [`Entry::id`], in number order: every entry this one folded, and
    /// before them the last of the others, [`KEPT_FOLDED`] in all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) folded: Vec<(u64, String)>,
}

/// How many folded entries a segment names at least ([`Segment::folded`];
/// more when one compaction folds more): four compactions' worth at the
/// default interval, more than are folded while a writer between its claim
/// and its commit looks.
pub(crate) const KEPT_FOLDED: usize = 1024;

/// The bound on the newest stamp of a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Newest {
    pub(crate) stamp: Stamp,
}

/// A metadata value with its key (hashed keys are checked against it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Meta {
    pub(crate) key: String,
    pub(crate) value: String,
}

/// The full name of a collection whose directory name is hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Name {
    pub(crate) name: CollectionName,
}

/// Serialises a body.
pub(crate) fn to_bytes<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::storage_caused(BACKEND_NAME, "serialising an object failed", e))
}

/// Parses a body, naming the object when it cannot be read.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    collection: &str,
    path: &Path,
) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::Corrupt {
        backend: BACKEND_NAME,
        collection: collection.to_owned(),
        id: None,
        location: path.to_string(),
        reason: format!("not what syncforge writes there: {e}"),
    })
}

/// Parses a feed entry's body (see [`check_item_count`]).
pub(crate) fn parse_entry(body: &[u8], collection: &str, path: &Path) -> Result<Entry> {
    let entry: Entry = parse(body, collection, path)?;
    check_item_count(entry.items.len(), collection, path)?;
    Ok(entry)
}

/// An entry of more items than a cursor can number ([`MAX_ITEMS`]) would
/// share its last cursors with the next entry's first: it is corrupt.
fn check_item_count(count: usize, collection: &str, path: &Path) -> Result<()> {
    if count <= MAX_ITEMS {
        return Ok(());
    }
    Err(Error::Corrupt {
        backend: BACKEND_NAME,
        collection: collection.to_owned(),
        id: None,
        location: path.to_string(),
        reason: format!(
            "a feed entry of {count} writes, more than the {MAX_ITEMS} one entry holds"
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use syncforge_core::{ClientId, Content, Hlc};

    #[test]
    fn an_entry_of_more_items_than_cursors_number_is_corrupt() {
        let path = Path::from("c/f/1");
        assert!(check_item_count(MAX_ITEMS, "c", &path).is_ok());
        match check_item_count(MAX_ITEMS + 1, "c", &path) {
            Err(Error::Corrupt { location, .. }) => assert_eq!(location, "c/f/1"),
            other => panic!("{other:?}"),
        }
        let empty = parse_entry(br#"{"items":[]}"#, "c", &path).unwrap();
        assert!(empty.items.is_empty());
    }

    #[test]
    fn markers_have_one_size_and_records_are_larger() {
        assert_eq!(
            to_bytes(&RecordBody::marker()).unwrap().len() as u64,
            MARKER_SIZE
        );
        let mut clock = Hlc::new(ClientId::new("c").unwrap());
        let smallest = Record::create(
            Content::from_value(json!({"id": "a"})).unwrap(),
            clock.now().unwrap(),
        );
        let body = to_bytes(&RecordBody::record(Cursor::new(1), smallest, &[])).unwrap();
        assert!(body.len() as u64 > 2 * MARKER_SIZE, "{}", body.len());
    }

    #[test]
    fn cursors_pack_entry_and_item() {
        let c = cursor(5, 3);
        assert_eq!(entry_of(c), 5);
        assert!(cursor(5, MAX_ITEMS - 1) < cursor(6, 0));
        assert_eq!(end_of(5), cursor(5, MAX_ITEMS - 1));
        assert!(end_of(MAX_ENTRY).get() < 1 << 53);
    }
}
