//! A record's canonical JSON form (`Record::to_json`, as serde_json writes
//! it), written straight from the record into the output: no `Value` is
//! built, no content copied, no stamp formatted into a string of its own,
//! and text needing no escapes copied whole. A push writes every record it
//! sends this way; the tests below hold the two forms byte for byte equal.

use serde_json::Value;
use syncforge_core::{Record, Stamp};

/// One member of the record's object.
enum Member<'a> {
    Content(&'a Value),
    Id,
    Version,
    Timestamp,
    Deleted,
    ClientId,
    Sync,
}

/// Appends `record` in its canonical JSON form to `out`.
pub(crate) fn write_record(out: &mut Vec<u8>, record: &Record) -> serde_json::Result<()> {
    // serde_json's map is sorted by key: content fields and metadata
    // interleave by name.
    let mut members: Vec<(&str, Member<'_>)> = Vec::with_capacity(16);
    members.push(("id", Member::Id));
    members.extend(
        record
            .fields()
            .map(|(name, value)| (name, Member::Content(value))),
    );
    members.extend([
        ("_version", Member::Version),
        ("_timestamp", Member::Timestamp),
        ("_deleted", Member::Deleted),
        ("_clientId", Member::ClientId),
        ("_sync", Member::Sync),
    ]);
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let newest = record.newest_stamp();
    out.push(b'{');
    for (index, (name, member)) in members.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_str(out, name)?;
        out.push(b':');
        match member {
            Member::Content(value) => write_value(out, value)?,
            Member::Id => write_str(out, record.id().as_str())?,
            Member::Version => write_number(out, record.version())?,
            Member::Timestamp => write_number(out, newest.millis())?,
            Member::Deleted => write_bool(out, record.is_deleted()),
            Member::ClientId => write_str(out, newest.client().as_str())?,
            Member::Sync => write_sync(out, record)?,
        }
    }
    out.push(b'}');
    Ok(())
}

/// `_sync`: `deleted`, `fields`, `removed`, `versions`, `written`, in
/// that (sorted) order.
fn write_sync(out: &mut Vec<u8>, record: &Record) -> serde_json::Result<()> {
    out.push(b'{');
    if let Some(tombstone) = record.tombstone() {
        out.extend_from_slice(b"\"deleted\":");
        write_stamp(out, tombstone)?;
        out.push(b',');
    }
    out.extend_from_slice(b"\"fields\":");
    write_stamps(out, record, true)?;
    if record
        .field_states()
        .values()
        .any(|state| state.value().is_none())
    {
        out.extend_from_slice(b",\"removed\":");
        write_stamps(out, record, false)?;
    }
    out.extend_from_slice(b",\"versions\":");
    let mut versions: Vec<(&str, u64)> = record
        .versions()
        .iter()
        .map(|(client, count)| (client.as_str(), count))
        .collect();
    versions.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (index, (client, count)) in versions.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_str(out, client)?;
        out.push(b':');
        write_number(out, count)?;
    }
    out.extend_from_slice(b"},\"written\":");
    write_stamp(out, record.written())?;
    out.push(b'}');
    Ok(())
}

/// The stamps of the live (or the removed) fields, by name.
fn write_stamps(out: &mut Vec<u8>, record: &Record, live: bool) -> serde_json::Result<()> {
    let mut stamps: Vec<_> = record
        .field_states()
        .iter()
        .filter(|(_, state)| state.value().is_some() == live)
        .collect();
    stamps.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (index, (name, state)) in stamps.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_str(out, name)?;
        out.push(b':');
        write_stamp(out, state.stamp())?;
    }
    out.push(b'}');
    Ok(())
}

/// A stamp as a JSON string: its `Display` form, `{:012x}.{:08x}.{client}`.
fn write_stamp(out: &mut Vec<u8>, stamp: &Stamp) -> serde_json::Result<()> {
    let client = stamp.client().as_str();
    if !needs_escape(client) {
        out.push(b'"');
        push_hex(out, stamp.millis(), 12);
        out.push(b'.');
        push_hex(out, u64::from(stamp.counter()), 8);
        out.push(b'.');
        out.extend_from_slice(client.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, &stamp.to_string())
    }
}

/// `value` in lowercase hexadecimal, zero-padded to at least `width` digits.
fn push_hex(out: &mut Vec<u8>, value: u64, width: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut rest = value;
    let mut count = 0;
    while rest > 0 || count < width.min(16) {
        digits[15 - count] = DIGITS[(rest & 0xf) as usize];
        rest >>= 4;
        count += 1;
    }
    out.extend_from_slice(&digits[16 - count..]);
}

/// A JSON value as serde_json writes it (objects sorted by key).
fn write_value(out: &mut Vec<u8>, value: &Value) -> serde_json::Result<()> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(value) => write_bool(out, *value),
        Value::Number(number) => serde_json::to_writer(&mut *out, number)?,
        Value::String(text) => write_str(out, text)?,
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_str(out, key)?;
                out.push(b':');
                write_value(out, item)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_bool(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

fn write_number(out: &mut Vec<u8>, value: u64) -> serde_json::Result<()> {
    serde_json::to_writer(out, &value)
}

/// A JSON string; serde_json escapes exactly the control characters, `"`
/// and `\\`, so text without them is copied as it is.
fn write_str(out: &mut Vec<u8>, text: &str) -> serde_json::Result<()> {
    if needs_escape(text) {
        serde_json::to_writer(out, text)
    } else {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        Ok(())
    }
}

fn needs_escape(text: &str) -> bool {
    text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use syncforge_core::{merge, ConflictStrategy, Content, MAX_STAMP_MILLIS};

    use super::*;

    fn stamp(millis: u64, counter: u32, client: &str) -> Stamp {
        Stamp::new(millis, counter, client).unwrap()
    }

    fn content(value: Value) -> Content {
        Content::from_value(value).unwrap()
    }

    fn same_as_to_json(record: &Record) {
        let mut canonical = Vec::new();
        write_record(&mut canonical, record).unwrap();
        let canonical = String::from_utf8(canonical).unwrap();
        assert_eq!(canonical, serde_json::to_string(&record.to_json()).unwrap());
        assert_eq!(canonical, serde_json::to_string(record).unwrap());
    }

    #[test]
    fn writes_exactly_the_canonical_form() {
        let mut record = Record::create(
            content(json!({
                "id": "r-1", "name": "A \"quoted\"\n\u{7f} é 😀", "age": 3, "score": -0.0,
                "Upper": [1, {"b": null, "a": 2.5, "k\\\"\u{1f}": "\\"}], "0digit": true, "zz": {}, "ü": "",
                "we\"ird\tkey": [1e300, -7, 18446744073709551615u64, 0.1],
            })),
            &stamp(1_700_000_000_000, 0, "tablet"),
        );
        same_as_to_json(&record);
        // A field removed, one changed, by another client.
        record
            .apply_put(
                content(json!({"id": "r-1", "name": "B", "age": 4, "Upper": 1, "zz": {}, "ü": ""})),
                &stamp(1_700_000_000_005, 2, "hq"),
            )
            .unwrap();
        same_as_to_json(&record);
        // Deleted, then merged with a concurrent write of a third client.
        let mut deleted = record.clone();
        deleted
            .apply_delete(&stamp(1_700_000_000_009, 0, "a-client"))
            .unwrap();
        same_as_to_json(&deleted);
        let mut concurrent = record.clone();
        concurrent
            .apply_put(
                content(json!({"id": "r-1", "late": "x"})),
                &stamp(1_700_000_000_010, 7, "Zed"),
            )
            .unwrap();
        same_as_to_json(&concurrent);
        let merged = merge(&deleted, &concurrent, ConflictStrategy::Crdt).unwrap();
        same_as_to_json(&merged);
        // A record read from the TypeScript library's form.
        let seeded = Record::from_json(json!({
            "id": "ts", "v": 1, "_version": 1, "_timestamp": 5, "_deleted": false, "_clientId": "web"
        }))
        .unwrap();
        same_as_to_json(&seeded);
    }

    #[test]
    fn stamps_are_written_as_they_display() {
        for (millis, counter) in [
            (0, 0),
            (1, 1),
            (0xfff_ffff_ffff, u32::MAX),
            (MAX_STAMP_MILLIS, 0x10),
        ] {
            for client in ["tablet", "client \"1\""] {
                let stamp = stamp(millis, counter, client);
                let mut text = Vec::new();
                write_stamp(&mut text, &stamp).unwrap();
                assert_eq!(
                    String::from_utf8(text).unwrap(),
                    serde_json::to_string(&stamp.to_string()).unwrap()
                );
            }
        }
    }

    #[test]
    fn random_accepted_records_are_written_as_to_json_writes_them() {
        use syncforge_testkit::hostile::{self, Outcome};
        let mut rng = hostile::rng(14);
        let mut accepted = 0;
        for _ in 0..hostile::cases(3_000) {
            if let Outcome::Accepted(record) = hostile::parse(&hostile::random_record(&mut rng)) {
                same_as_to_json(&record);
                accepted += 1;
            }
        }
        assert!(accepted > 100, "only {accepted} records accepted");
    }
}
