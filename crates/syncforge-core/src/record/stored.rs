//! A quick way to read the JSON text of a record in the form syncforge
//! writes it: straight from the text, without first building a
//! `serde_json::Value` of the whole record (its maps, their keys, and the
//! maps of `_sync`), which was half of what reading a record cost.
//!
//! It only ever answers with the record [`Record::from_json`] would return
//! for the same text. Anything it does not read itself — the TypeScript
//! form, a missing or repeated key, any value `from_json` would refuse —
//! it leaves to `from_json` by answering `None`, so every refusal and its
//! message stay `from_json`'s own.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::fields::{shared_name, FieldState, FieldStates};
use super::json::SeedMeta;
use super::{
    is_reserved, Record, CLIENT_ID_KEY, DELETED_KEY, ID_KEY, SYNC_KEY, TIMESTAMP_KEY, VERSION_KEY,
};
use crate::depth::too_deep;
use crate::hlc::{ClientId, Stamp, MAX_STAMP_MILLIS};
use crate::names::RecordId;
use crate::validate::check_name;
use crate::version_vector::{VersionVector, MAX_VERSION};

impl Record {
    /// Reads `text`, the JSON form of a record as syncforge writes it (see
    /// [`to_json_string`](Record::to_json_string)), without building a
    /// [`Value`] of the whole record.
    ///
    /// Returns `Some` only with the record that [`from_json`](Record::from_json)
    /// of the parsed text returns. Returns `None` for anything else: text
    /// that is not JSON, a record `from_json` refuses, or one in another form
    /// it accepts (the TypeScript form); read those with `from_json`, which
    /// also says what is wrong.
    ///
    /// ```
    /// use syncforge_core::{Content, Record, Stamp};
    ///
    /// let content = Content::from_value(serde_json::json!({"id": "n1", "title": "hi"}))?;
    /// let record = Record::create(content, &Stamp::new(1, 0, "phone")?);
    /// let text = record.to_json_string();
    /// assert_eq!(Record::from_stored_json(&text), Some(record));
    /// assert_eq!(Record::from_stored_json(r#"{"id": "n1"}"#), None);
    /// # Ok::<(), syncforge_core::Error>(())
    /// ```
    pub fn from_stored_json(text: &str) -> Option<Record> {
        let mut parser = serde_json::Deserializer::from_str(text);
        let stored = parser.deserialize_map(StoredVisitor).ok()?;
        parser.end().ok()?;
        stored.into_record()
    }
}

/// A string of the text: borrowed when it holds no escape.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// Room made up front for the entries of an object: a record's maps are
/// small, and growing a vector one entry at a time reallocated it thrice.
const ROOM: usize = 8;

/// The entries of a JSON object, in the order of the text.
struct Entries<'a, T>(Vec<(Text<'a>, T)>);

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for Entries<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for EntriesVisitor<T> {
            type Value = Entries<'de, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(ROOM));
                while let Some((key, value)) = map.next_entry::<Text<'de>, T>()? {
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(EntriesVisitor(std::marker::PhantomData))
    }
}

impl<T> Entries<'_, T> {
    /// The entries sorted by name, or `None` when a name is repeated.
    fn sorted(mut self) -> Option<Self> {
        self.0.sort_by(|a, b| a.0 .0.cmp(&b.0 .0));
        if self.0.windows(2).any(|w| w[0].0 .0 == w[1].0 .0) {
            return None;
        }
        Some(self)
    }
}

/// `_sync`, as syncforge writes it: an object (a derived `Deserialize`
/// would also take its members as an array, which `from_json` refuses).
/// `deleted` and `removed` may be missing but not `null`.
struct SyncText<'a> {
    written: Text<'a>,
    deleted: Option<Text<'a>>,
    fields: Entries<'a, Text<'a>>,
    removed: Option<Entries<'a, Text<'a>>>,
    versions: Entries<'a, u64>,
}

impl<'de: 'a, 'a> Deserialize<'de> for SyncText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SyncVisitor;
        impl<'de> Visitor<'de> for SyncVisitor {
            type Value = SyncText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the `_sync` object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut written, mut deleted, mut fields, mut removed, mut versions) =
                    (None, None, None, None, None);
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    match key.0.as_ref() {
                        "written" => once(&mut written, map.next_value()?)?,
                        "deleted" => once(&mut deleted, map.next_value()?)?,
                        "fields" => once(&mut fields, map.next_value()?)?,
                        "removed" => once(&mut removed, map.next_value()?)?,
                        "versions" => once(&mut versions, map.next_value()?)?,
                        _ => return Err(de::Error::custom("a key `_sync` cannot hold")),
                    }
                }
                let missing = || de::Error::custom("a key `_sync` must hold");
                Ok(SyncText {
                    written: written.ok_or_else(missing)?,
                    deleted,
                    fields: fields.ok_or_else(missing)?,
                    removed,
                    versions: versions.ok_or_else(missing)?,
                })
            }
        }
        d.deserialize_map(SyncVisitor)
    }
}

/// A record's members as read from the text, before any check.
#[derive(Default)]
struct Stored<'a> {
    id: Option<Text<'a>>,
    version: Option<u64>,
    timestamp: Option<u64>,
    deleted: Option<bool>,
    client: Option<Text<'a>>,
    sync: Option<SyncText<'a>>,
    values: Vec<(Text<'a>, Value)>,
}

struct StoredVisitor;

/// Sets `slot` once; a key seen twice is left to `from_json`.
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(E::custom("a repeated key")),
    }
}

impl<'de> Visitor<'de> for StoredVisitor {
    type Value = Stored<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Stored<'de>, A::Error> {
        let mut stored = Stored {
            values: Vec::with_capacity(ROOM),
            ..Stored::default()
        };
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match key.0.as_ref() {
                ID_KEY => once(&mut stored.id, map.next_value()?)?,
                VERSION_KEY => once(&mut stored.version, map.next_value()?)?,
                TIMESTAMP_KEY => once(&mut stored.timestamp, map.next_value()?)?,
                DELETED_KEY => once(&mut stored.deleted, map.next_value()?)?,
                CLIENT_ID_KEY => once(&mut stored.client, map.next_value()?)?,
                SYNC_KEY => once(&mut stored.sync, map.next_value()?)?,
                _ => {
                    let value = map.next_value()?;
                    stored.values.push((key, value));
                }
            }
        }
        Ok(stored)
    }
}

impl Stored<'_> {
    /// The record, when every check of `from_json` passes; `None` at the
    /// first that does not (or at anything `from_json` would read another
    /// way).
    fn into_record(self) -> Option<Record> {
        let id = RecordId::new(self.id?.0).ok()?;
        let (version, timestamp, deleted) = (self.version?, self.timestamp?, self.deleted?);
        let client = self.client?;
        if version > MAX_VERSION || timestamp > MAX_STAMP_MILLIS || check_name(&client.0).is_err() {
            return None;
        }
        let sync = self.sync?;
        let values = Entries(self.values).sorted()?.0;
        // Every reserved key has its own member above: none is among the values.
        if values.iter().any(|(_, value)| too_deep(value)) {
            return None;
        }
        let stamp = |text: &Text<'_>| text.0.parse::<Stamp>().ok();
        let written = stamp(&sync.written)?;
        let tombstone = match &sync.deleted {
            Some(text) => Some(stamp(text)?),
            None => None,
        };
        let live = sync.fields.sorted()?.0;
        if live.len() != values.len() {
            return None;
        }
        let mut fields = FieldStates::new();
        for ((name, text), (value_name, value)) in live.iter().zip(&values) {
            if name.0 != value_name.0 {
                return None;
            }
            fields.insert_shared(&name.0, FieldState::checked(Some(value), stamp(text)?));
        }
        if let Some(removed) = sync.removed {
            let removed = removed.sorted()?.0;
            let mut gone = Vec::with_capacity(removed.len());
            for (name, text) in removed {
                if is_reserved(&name.0) || fields.contains_key(name.0.as_ref()) {
                    return None;
                }
                gone.push((
                    shared_name(name.0.as_ref()),
                    FieldState::checked(None, stamp(&text)?),
                ));
            }
            fields.add_new(gone);
        }
        let mut versions = VersionVector::new();
        for (writer, count) in sync.versions.sorted()?.0 {
            if !(1..=MAX_VERSION).contains(&count) {
                return None;
            }
            // `ClientId::new` checks the name as `from_json` does.
            versions.set(ClientId::new(&writer.0).ok()?, count);
        }
        let record = Record::assembled(id, fields, written, tombstone, versions);
        let meta = SeedMeta {
            version: Some(version),
            timestamp: Some(timestamp),
            deleted: Some(deleted),
            client: Some(&client.0),
        };
        record.check_metadata(&meta).ok()?;
        Some(record)
    }
}
