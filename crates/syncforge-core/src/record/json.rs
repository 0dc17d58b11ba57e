//! The canonical JSON form of records: writing it, and reading it back with
//! every check a record from outside needs.

use serde_json::{Map, Value};

use super::fields::{shared_name, FieldState, FieldStates};
use super::typescript::from_seed;
use super::{
    is_reserved, Record, CLIENT_ID_KEY, DELETED_KEY, ID_KEY, SYNC_KEY, TIMESTAMP_KEY, VERSION_KEY,
};
use crate::depth::check_record_value;
use crate::error::{Error, Result};
use crate::hlc::{ClientId, Stamp, MAX_STAMP_MILLIS};
use crate::names::RecordId;
use crate::validate::check_name;
use crate::version_vector::{VersionVector, MAX_VERSION};

impl Record {
    /// The canonical JSON form (see [`Record`]).
    pub fn to_json(&self) -> Value {
        let mut map = self.content();
        let newest = self.newest_stamp();
        map.insert(VERSION_KEY.to_owned(), Value::from(self.version()));
        map.insert(TIMESTAMP_KEY.to_owned(), Value::from(newest.millis()));
        map.insert(DELETED_KEY.to_owned(), Value::Bool(self.is_deleted()));
        map.insert(
            CLIENT_ID_KEY.to_owned(),
            Value::String(newest.client().as_str().to_owned()),
        );
        map.insert(SYNC_KEY.to_owned(), Value::Object(self.sync_state()));
        // Sorted already unless serde_json's `preserve_order` is on (any
        // crate of a program can turn it on): its map prints keys in the
        // order they were inserted, and the form is sorted.
        map.sort_keys();
        Value::Object(map)
    }

    fn sync_state(&self) -> Map<String, Value> {
        let mut live = Map::new();
        let mut removed = Map::new();
        for (name, state) in self.field_states() {
            let target = if state.value.is_some() {
                &mut live
            } else {
                &mut removed
            };
            target.insert(name.to_owned(), Value::String(state.stamp.to_string()));
        }
        let versions: Map<String, Value> = self
            .versions()
            .iter()
            .map(|(c, n)| (c.as_str().to_owned(), Value::from(n)))
            .collect();
        let mut sync = Map::new();
        sync.insert(
            "written".to_owned(),
            Value::String(self.written().to_string()),
        );
        sync.insert("fields".to_owned(), Value::Object(live));
        if !removed.is_empty() {
            sync.insert("removed".to_owned(), Value::Object(removed));
        }
        if let Some(t) = self.tombstone() {
            sync.insert("deleted".to_owned(), Value::String(t.to_string()));
        }
        sync.insert("versions".to_owned(), Value::Object(versions));
        // The members inside were inserted in order; these were not.
        sync.sort_keys();
        sync
    }

    /// Reads a record from its JSON form, or from the TypeScript library's form
    /// (no `_sync`). Refuses, naming the record, the field and the reason,
    /// anything that is not a well-formed record, among them a field nested
    /// deeper than [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH).
    pub fn from_json(value: Value) -> Result<Record> {
        let (id, mut map) = open_object(value)?;
        let version = map.remove(VERSION_KEY);
        let timestamp = map.remove(TIMESTAMP_KEY);
        let deleted = map.remove(DELETED_KEY);
        let client = map.remove(CLIENT_ID_KEY);
        let sync = map.remove(SYNC_KEY);
        let meta = SeedMeta {
            version: version.as_ref().and_then(Value::as_u64),
            timestamp: timestamp.as_ref().and_then(Value::as_u64),
            deleted: deleted.as_ref().and_then(Value::as_bool),
            client: client.as_ref().and_then(Value::as_str),
        };
        let record = match sync {
            Some(Value::Object(sync)) => from_sync_state(id, &map, &sync)?,
            // `open_object` checked that `_sync`, when present, is an object.
            Some(other) => return Err(wrong_type(&id, SYNC_KEY, "an object", &other)),
            None => from_seed(id, map, &meta)?,
        };
        record.check_metadata(&meta)?;
        Ok(record)
    }

    /// Checks that the TypeScript-style metadata given with a record agrees with
    /// what its stamps say.
    pub(super) fn check_metadata(&self, meta: &SeedMeta<'_>) -> Result<()> {
        let newest = self.newest_stamp();
        let disagree =
            |key: &str, reason: String| Error::invalid_field(Some(self.id()), key, reason);
        if let Some(v) = meta.version.filter(|v| *v != self.version()) {
            return Err(disagree(
                VERSION_KEY,
                format!(
                    "{v} disagrees with the version vector, which sums to {}",
                    self.version()
                ),
            ));
        }
        if let Some(t) = meta.timestamp.filter(|t| *t != newest.millis()) {
            return Err(disagree(
                TIMESTAMP_KEY,
                format!(
                    "{t} disagrees with the newest stamp, written at {}",
                    newest.millis()
                ),
            ));
        }
        if let Some(d) = meta.deleted.filter(|d| *d != self.is_deleted()) {
            return Err(disagree(
                DELETED_KEY,
                format!(
                    "{d} disagrees with the stamps, which say {}",
                    self.is_deleted()
                ),
            ));
        }
        if let Some(c) = meta.client.filter(|c| *c != newest.client().as_str()) {
            return Err(disagree(
                CLIENT_ID_KEY,
                format!(
                    "{c:?} disagrees with the newest stamp, written by {:?}",
                    newest.client().as_str()
                ),
            ));
        }
        Ok(())
    }
}

/// The TypeScript-style metadata read from a JSON record (types already checked).
pub(super) struct SeedMeta<'a> {
    pub(super) version: Option<u64>,
    pub(super) timestamp: Option<u64>,
    pub(super) deleted: Option<bool>,
    pub(super) client: Option<&'a str>,
}

/// Describes a JSON value for a message: its kind, and the value itself when
/// it is short and scalar ("null", "1.5", "the string \"x\"", "an array").
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        // Shortened too: with serde_json's `arbitrary_precision` a number
        // keeps every digit it was given, a million of them if need be.
        Value::Number(n) => crate::error::shorten(&n.to_string()),
        Value::String(s) => format!("the string {:?}", crate::error::shorten(s)),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

fn wrong_type(id: &str, key: &str, expected: &str, found: &Value) -> Error {
    Error::invalid_field(
        Some(id),
        key,
        format!("must be {expected}, found {}", describe(found)),
    )
}

/// A JSON value offered as a record (content or stored form): an object with a
/// valid string id, its metadata of the right types, and its user values
/// normalised. Returns the id and the remaining keys.
pub(super) fn open_object(value: Value) -> Result<(RecordId, Map<String, Value>)> {
    // Before anything walks the value recursively (normalising zeros,
    // comparing, dropping it on another refusal).
    let value = check_record_value(value)?;
    let Value::Object(mut map) = value else {
        return Err(Error::invalid_record(
            None,
            format!("expected a JSON object, found {}", describe(&value)),
        ));
    };
    let id = take_id(&mut map)?;
    check_metadata_types(&id, &map)?;
    Ok((id, map))
}

fn take_id(map: &mut Map<String, Value>) -> Result<RecordId> {
    read_id(map.remove(ID_KEY))
}

/// The record id from the value of the `id` key, if there was one.
pub(super) fn read_id(id: Option<Value>) -> Result<RecordId> {
    match id {
        Some(Value::String(id)) => RecordId::new(id),
        Some(other) => Err(Error::invalid_field(
            None,
            ID_KEY,
            format!("must be a string, found {}", describe(&other)),
        )),
        None => Err(Error::invalid_record(None, "missing the string field `id`")),
    }
}

/// Checks the types of the metadata keys that are present.
pub(super) fn check_metadata_types(id: &str, map: &Map<String, Value>) -> Result<()> {
    if let Some(v) = map.get(VERSION_KEY) {
        if v.as_u64().is_none_or(|n| n > MAX_VERSION) {
            return Err(wrong_type(
                id,
                VERSION_KEY,
                &format!("an integer from 0 to {MAX_VERSION}"),
                v,
            ));
        }
    }
    if let Some(v) = map.get(TIMESTAMP_KEY) {
        if v.as_u64().is_none_or(|t| t > MAX_STAMP_MILLIS) {
            return Err(wrong_type(
                id,
                TIMESTAMP_KEY,
                &format!("milliseconds since 1970, an integer from 0 to {MAX_STAMP_MILLIS}"),
                v,
            ));
        }
    }
    if let Some(v) = map.get(DELETED_KEY).filter(|v| !v.is_boolean()) {
        return Err(wrong_type(id, DELETED_KEY, "a boolean", v));
    }
    if let Some(v) = map.get(CLIENT_ID_KEY) {
        match v.as_str() {
            Some(c) => {
                check_name(c)
                    .map_err(|reason| Error::invalid_field(Some(id), CLIENT_ID_KEY, reason))?;
            }
            None => return Err(wrong_type(id, CLIENT_ID_KEY, "a string", v)),
        }
    }
    if let Some(v) = map.get(SYNC_KEY).filter(|v| !v.is_object()) {
        return Err(wrong_type(id, SYNC_KEY, "an object", v));
    }
    Ok(())
}

/// Reads the `_sync` state. `values` are the user fields beside it; every
/// one must have a stamp, and every stamp a field.
fn from_sync_state<'a>(
    id: RecordId,
    values: &Map<String, Value>,
    sync: &'a Map<String, Value>,
) -> Result<Record> {
    // Keys for messages are only spelt out for a refusal: formatting one
    // per field and stamp was a large part of reading a record.
    let bad = |key: &dyn Fn() -> String, why: String| Error::invalid_field(Some(&id), &key(), why);
    let stamp = |key: &dyn Fn() -> String, v: &Value| -> Result<Stamp> {
        let text = v.as_str().ok_or_else(|| {
            bad(
                key,
                format!("must be a stamp string, found {}", describe(v)),
            )
        })?;
        text.parse::<Stamp>().map_err(|e| match e {
            Error::InvalidStamp { reason, .. } => bad(
                key,
                format!("stamp {:?} is {reason}", crate::error::shorten(text)),
            ),
            other => other,
        })
    };
    let empty = Map::new();
    let object = |key: &str, v: &'a Value| -> Result<&'a Map<String, Value>> {
        v.as_object().ok_or_else(|| {
            bad(
                &|| format!("_sync.{key}"),
                format!("must be an object, found {}", describe(v)),
            )
        })
    };
    let mut written = None;
    let mut tombstone = None;
    let mut live = &empty;
    let mut removed = &empty;
    let mut versions = &empty;
    for (key, value) in sync {
        match key.as_str() {
            "written" => written = Some(stamp(&|| "_sync.written".to_owned(), value)?),
            "deleted" => tombstone = Some(stamp(&|| "_sync.deleted".to_owned(), value)?),
            "fields" => live = object(key, value)?,
            "removed" => removed = object(key, value)?,
            "versions" => versions = object(key, value)?,
            other => {
                return Err(bad(
                    &|| format!("_sync.{other}"),
                    "is not a key `_sync` can hold".to_owned(),
                ))
            }
        }
    }
    let written =
        written.ok_or_else(|| bad(&|| "_sync.written".to_owned(), "is missing".to_owned()))?;
    let mut fields = FieldStates::new();
    // Values are looked up, not taken out of their map: removing each was
    // a large part of reading a record. Once every stamp found its value,
    // equal counts mean every value has its stamp. The states are sorted
    // once at the end: a map that keeps its text's order (serde_json's
    // `preserve_order`, which any crate of a program can turn on) may hand
    // them over in any order, and inserting each in its place was
    // quadratic.
    let mut present = Vec::with_capacity(live.len());
    for (name, s) in live {
        let Some(value) = values.get(name) else {
            return Err(bad(
                &|| name.clone(),
                "has a stamp in `_sync.fields` but no value".to_owned(),
            ));
        };
        present.push((
            shared_name(name.as_str()),
            FieldState::checked(Some(value), stamp(&|| format!("_sync.fields.{name}"), s)?),
        ));
    }
    fields.add_new(present);
    if values.len() != live.len() {
        if let Some(name) = values.keys().find(|name| !live.contains_key(*name)) {
            return Err(bad(
                &|| name.clone(),
                "has no stamp in `_sync.fields`".to_owned(),
            ));
        }
    }
    let mut gone = Vec::with_capacity(removed.len());
    for (name, s) in removed {
        if is_reserved(name) {
            return Err(bad(
                &|| name.clone(),
                "is listed in `_sync.removed`, but the name is kept for a record's metadata \
                 and is never a field"
                    .to_owned(),
            ));
        }
        if fields.contains_key(name) {
            return Err(bad(
                &|| name.clone(),
                "is listed in `_sync.removed` but present".to_owned(),
            ));
        }
        gone.push((
            shared_name(name.as_str()),
            FieldState::checked(None, stamp(&|| format!("_sync.removed.{name}"), s)?),
        ));
    }
    fields.add_new(gone);
    let mut counts = Vec::with_capacity(versions.len());
    for (client, n) in versions {
        let key = || format!("_sync.versions.{client}");
        check_name(client)
            .map_err(|reason| bad(&key, format!("names a client id that {reason}")))?;
        let n = n
            .as_u64()
            .filter(|n| (1..=MAX_VERSION).contains(n))
            .ok_or_else(|| {
                bad(
                    &key,
                    format!(
                        "must be an integer from 1 to {MAX_VERSION}, found {}",
                        describe(n)
                    ),
                )
            })?;
        counts.push((ClientId::new(client)?, n));
    }
    // Sorted once, as the fields are.
    let vv: VersionVector = counts.into_iter().collect();
    Ok(Record::assembled(id, fields, written, tombstone, vv))
}

#[cfg(test)]
mod tests {
    use super::super::Content;
    use super::*;
    use serde_json::json;

    fn stamp(millis: u64, counter: u32, client: &str) -> Stamp {
        Stamp::new(millis, counter, client).unwrap()
    }

    /// With serde_json's `arbitrary_precision` (which CI turns on for this
    /// crate in one run) a number keeps all its digits, and a refusal
    /// naming it printed every one. Without the feature such a number does
    /// not parse, and there is nothing to shorten.
    #[test]
    fn a_refusal_shortens_a_huge_number() {
        let digits = "1".repeat(100_000);
        if let Ok(id) = serde_json::from_str::<Value>(&digits) {
            let refused = Record::from_json(json!({"id": id})).unwrap_err();
            assert!(
                refused.to_string().len() < 1_000,
                "{} bytes",
                refused.to_string().len()
            );
        }
    }

    fn content(v: Value) -> Content {
        Content::from_value(v).unwrap()
    }

    /// Removed names between live ones are read into their places by name
    /// (they are added after the live ones and sorted once), by both
    /// readers, and the record prints as it was read.
    #[test]
    fn removed_names_among_live_ones_are_read_in_name_order() {
        let s = "018bcfe569f4.00000000.laptop";
        let text = json!({
            "id": "x", "b": 1, "d": 2,
            "_clientId": "laptop", "_deleted": false, "_timestamp": 1700000000500u64,
            "_version": 1,
            "_sync": {
                "written": s,
                "fields": {"b": s, "d": s},
                "removed": {"a": s, "c": s, "e": s},
                "versions": {"laptop": 1}
            }
        });
        let record = Record::from_json(text).unwrap();
        let names: Vec<&str> = record.field_states().iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        let printed = record.to_json_string();
        assert_eq!(Record::from_stored_json(&printed), Some(record.clone()));
        // Canonical: keys sorted, whatever order the input gave them in.
        let sorted = r#"{"_clientId":"laptop","_deleted":false,"_sync":{"fields":{"b":"S","d":"S"},"removed":{"a":"S","c":"S","e":"S"},"versions":{"laptop":1},"written":"S"},"_timestamp":1700000000500,"_version":1,"b":1,"d":2,"id":"x"}"#;
        assert_eq!(printed, sorted.replace('S', s));
    }

    /// Counts that are each within bounds but sum past them: the record's
    /// `_version` stops at the largest count, so its JSON reads back (both
    /// ways), where the sum had written a `_version` no reader took.
    #[test]
    fn a_version_vector_summing_past_the_bound_reads_back() {
        let record = Record::from_json(json!({
            "id": "x",
            "_sync": {
                "written": "000000000001.00000000.a",
                "fields": {},
                "versions": {"a": MAX_VERSION, "b": 1}
            }
        }))
        .unwrap();
        assert_eq!(record.version(), MAX_VERSION);
        let text = record.to_json_string();
        assert_eq!(Record::from_stored_json(&text), Some(record.clone()));
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(Record::from_json(value).unwrap(), record);
    }

    #[test]
    fn json_form_is_canonical_and_round_trips() {
        let mut r = Record::create(
            content(json!({"id": "n1", "z": 1, "a": {"y": 2, "b": 3}})),
            stamp(1000, 0, "phone"),
        );
        r.apply_put(
            content(json!({"id": "n1", "a": 5})),
            &stamp(2000, 3, "laptop"),
        )
        .unwrap();
        let text = r.to_json_string();
        assert_eq!(
            text,
            r#"{"_clientId":"laptop","_deleted":false,"_sync":{"fields":{"a":"0000000007d0.00000003.laptop"},"removed":{"z":"0000000007d0.00000003.laptop"},"versions":{"laptop":1,"phone":1},"written":"0000000007d0.00000003.laptop"},"_timestamp":2000,"_version":2,"a":5,"id":"n1"}"#
        );
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    /// `to_json` and `content` print sorted keys at every level, as the
    /// text form does, also when serde_json's `preserve_order` is on (CI
    /// runs this crate's tests that way too): that map prints keys in the
    /// order they went in.
    #[test]
    fn the_value_forms_print_as_the_text_form() {
        let mut r = Record::create(
            content(json!({"id": "n1", "z": 1, "_a": [2], "b": {"y": 2, "c": 3}})),
            stamp(1000, 0, "phone"),
        );
        r.apply_put(
            content(json!({"id": "n1", "_a": [2], "b": 5})),
            &stamp(2000, 3, "laptop"),
        )
        .unwrap();
        r.apply_delete(&stamp(3000, 0, "tablet")).unwrap();
        assert_eq!(r.to_json().to_string(), r.to_json_string());
        assert_eq!(
            Value::Object(r.content()).to_string(),
            r#"{"_a":[2],"b":5,"id":"n1"}"#
        );
    }

    #[test]
    fn bad_records_are_refused_with_reasons() {
        const W: &str = "000000000001.00000000.c";
        let cases = [
            (json!([1]), "expected a JSON object"),
            (json!({"name": "x"}), "missing the string field `id`"),
            (json!({"id": 5}), "field `id`: must be a string, found 5"),
            (json!({"id": ""}), "must not be empty"),
            (
                json!({"id": "a", "_version": null, "_timestamp": 1, "_clientId": "c"}),
                "field `_version`: must be an integer from 0 to 9007199254740991, found null",
            ),
            (
                json!({"id": "a", "_version": 1, "_timestamp": "1", "_clientId": "c"}),
                "field `_timestamp`: must be milliseconds since 1970, an integer from 0 to 281474976710655, found the string \"1\"",
            ),
            (
                json!({"id": "a", "_version": 1, "_timestamp": 1.5, "_clientId": "c"}),
                "field `_timestamp`: must be milliseconds since 1970, an integer from 0 to 281474976710655, found 1.5",
            ),
            (
                json!({"id": "a", "_version": 1, "_timestamp": 1, "_clientId": 3}),
                "field `_clientId`: must be a string, found 3",
            ),
            (
                json!({"id": "a", "_version": 1, "_timestamp": 1}),
                "field `_clientId`: is missing",
            ),
            (
                json!({"id": "a", "_version": 1, "_timestamp": 1, "_clientId": "c", "_deleted": "no"}),
                "field `_deleted`: must be a boolean, found the string \"no\"",
            ),
            (json!({"id": "a", "_sync": 1}), "field `_sync`: must be an object, found 1"),
            (
                json!({"id": "a", "x": 1, "_sync": {"written": "000000000001.00000000.c", "fields": {}}}),
                "field `x`: has no stamp in `_sync.fields`",
            ),
            (
                json!({"id": "a", "y": 1, "_sync": {"written": W, "fields": {"x": W}}}),
                "field `x`: has a stamp in `_sync.fields` but no value",
            ),
            (
                json!({"id": "a", "x": 1, "z": 2, "_sync": {"written": W, "fields": {"x": W}}}),
                "field `z`: has no stamp in `_sync.fields`",
            ),
            (
                json!({"id": "a", "x": 1, "_sync": {"written": W, "fields": {"x": 5}}}),
                "field `_sync.fields.x`: must be a stamp string, found 5",
            ),
            (
                json!({"id": "a", "x": 1, "_sync": {"written": W, "fields": {"x": "000000000001.0000000A.c"}}}),
                "field `_sync.fields.x`: stamp \"000000000001.0000000A.c\" is malformed: milliseconds and counter must be lowercase hex",
            ),
            (
                json!({"id": "a", "x": 1, "_sync": {"written": W, "fields": {"x": W}, "removed": {"x": W}}}),
                "field `x`: is listed in `_sync.removed` but present",
            ),
            (
                json!({"id": "a", "_sync": {"written": W, "fields": {}, "removed": {"_clientId": W}}}),
                "field `_clientId`: is listed in `_sync.removed`, but the name is kept for a record's metadata",
            ),
            (
                json!({"id": "a", "_sync": {"written": W, "fields": {}, "removed": {"x": "0"}}}),
                "field `_sync.removed.x`: stamp \"0\" is malformed",
            ),
            (
                json!({"id": "a", "_sync": {"written": W, "fields": {}, "versions": {"c": 0}}}),
                "field `_sync.versions.c`: must be an integer from 1 to",
            ),
            (
                json!({"id": "a", "_sync": {"written": W, "fields": [], "versions": {}}}),
                "field `_sync.fields`: must be an object, found an array",
            ),
            (
                json!({"id": "a", "_sync": {"written": W, "fields": {}, "other": 1}}),
                "field `_sync.other`: is not a key `_sync` can hold",
            ),
            (
                json!({"id": "a", "_sync": {"written": "garbage"}}),
                "field `_sync.written`: stamp \"garbage\" is malformed",
            ),
            (
                json!({"id": "a", "_sync": {"fields": {}}}),
                "field `_sync.written`: is missing",
            ),
            (
                json!({"id": "a", "_version": 9, "_sync": {"written": "000000000001.00000000.c", "fields": {}, "versions": {"c": 1}}}),
                "field `_version`: 9 disagrees with the version vector, which sums to 1",
            ),
        ];
        for (value, expected) in cases {
            let err = Record::from_json(value.clone()).unwrap_err().to_string();
            assert!(err.contains(expected), "{value}: {err}");
            // One sentence: never a refusal nested inside another, never a
            // value described twice ("found null null").
            assert!(err.matches("invalid").count() <= 1, "{err}");
            assert!(!err.contains("null null"), "{err}");
        }
    }
}
