//! Hostile input: seeded random records, valid and invalid, thrown at the
//! record parser and at an engine's put and sync over any backend.
//!
//! Each case asserts what the library promises about input:
//!
//! * nothing panics (a panic is caught and reported as a failure);
//! * every refusal is a typed [`Error`] — of a kind that means bad input, not
//!   a storage failure;
//! * a refused write writes nothing: the collection's change feed and the
//!   record are as before;
//! * an accepted record survives its canonical JSON text: parsing the text
//!   again gives an equal record printing the same bytes.
//!
//! ```
//! use syncforge_testkit::hostile::{self, Outcome};
//!
//! let mut rng = hostile::rng(7);
//! for _ in 0..200 {
//!     let value = hostile::random_record(&mut rng);
//!     // Never a panic; either a record that round-trips or a typed refusal.
//!     match hostile::parse(&value) {
//!         Outcome::Accepted(_) | Outcome::Refused(_) => {}
//!         Outcome::Failed(why) => panic!("{why}"),
//!     }
//! }
//! ```
//!
//! The engine side needs an engine, so it lives where one can be built: the
//! facade's tests throw these values at `put` and `sync` over each backend of
//! the workspace. [`cases`] reads the number of cases from
//! `SYNCFORGE_HOSTILE_CASES` (a soak knob) with a default for CI.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::{json, Map, Number, Value};
use syncforge_core::{
    nesting_depth, Content, Error, Record, Stamp, MAX_NESTING_DEPTH, RESERVED_KEYS,
};

/// Environment variable with the number of cases to run (soak runs).
pub const CASES_ENV: &str = "SYNCFORGE_HOSTILE_CASES";

/// The number of cases: `SYNCFORGE_HOSTILE_CASES` when set to a positive
/// number, else `default`. Zero is not taken: every test would pass
/// without a case run.
pub fn cases(default: usize) -> usize {
    std::env::var(CASES_ENV)
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .filter(|&cases: &usize| cases > 0)
        .unwrap_or(default)
}

/// A seeded random source, so a failing case can be replayed from its seed.
pub fn rng(seed: u64) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed)
}

/// What parsing one value as a record did.
#[derive(Debug)]
pub enum Outcome {
    /// A record, which round-trips through its canonical JSON text.
    Accepted(Record),
    /// A typed refusal of bad input.
    Refused(Error),
    /// A broken promise: a panic, an untyped or storage error for input, or
    /// a record that does not survive its own JSON text. The text says which.
    Failed(String),
}

/// Whether `error` is a refusal of input (as opposed to a storage failure).
pub fn is_input_refusal(error: &Error) -> bool {
    matches!(
        error,
        Error::InvalidRecord { .. }
            | Error::InvalidId { .. }
            | Error::InvalidCollection { .. }
            | Error::InvalidStamp { .. }
            | Error::ClockDrift { .. }
            | Error::InvalidArgument { .. }
    )
}

/// Parses `value` with [`Record::from_json`] and checks the promises: no
/// panic, a typed refusal, or a record whose canonical JSON text parses back
/// to an equal record printing the same bytes.
pub fn parse(value: &Value) -> Outcome {
    let parsed = catch_unwind(AssertUnwindSafe(|| Record::from_json(value.clone())));
    match parsed {
        Err(_) => Outcome::Failed(format!("Record::from_json panicked on {value}")),
        Ok(Err(error)) if is_input_refusal(&error) => Outcome::Refused(error),
        Ok(Err(error)) => Outcome::Failed(format!(
            "Record::from_json refused {value} with a non-input error: {error}"
        )),
        Ok(Ok(record)) => match round_trip(&record) {
            Ok(()) => Outcome::Accepted(record),
            Err(why) => Outcome::Failed(why),
        },
    }
}

/// Checks that `record` survives its canonical JSON text, and holds no
/// value nested past [`MAX_NESTING_DEPTH`] (which every way in must refuse).
pub fn round_trip(record: &Record) -> Result<(), String> {
    if let Some((field, depth)) = record
        .fields()
        .map(|(field, text)| (field, nesting_depth(&text.to_value())))
        .find(|(_, depth)| *depth > MAX_NESTING_DEPTH)
    {
        return Err(format!(
            "an accepted record {:?} holds field {field:?} nested {depth} deep, past the limit of {MAX_NESTING_DEPTH}",
            record.id().as_str(),
        ));
    }
    let text = record.to_json_string();
    let back: Record = serde_json::from_str(&text).map_err(|e| {
        format!(
            "the JSON text of an accepted record does not parse again: {e}; text: {}",
            shorten(&text)
        )
    })?;
    if &back != record {
        return Err(format!(
            "an accepted record changed through its JSON text: {}",
            shorten(&text)
        ));
    }
    if back.to_json_string() != text {
        return Err(format!(
            "an accepted record prints different bytes after a round trip: {}",
            shorten(&text)
        ));
    }
    Ok(())
}

fn shorten(text: &str) -> String {
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Nesting depth of the values this generator builds at most: past
/// [`MAX_NESTING_DEPTH`], so that some generated fields must be refused by
/// the nesting limit, and well under serde_json's parser limit (128), so
/// that the generator's own values can still be printed and parsed by tests.
pub const MAX_GENERATED_DEPTH: usize = MAX_NESTING_DEPTH + 16;

/// A random JSON value: scalars of every kind (huge and negative numbers,
/// `-0.0`, strings with control characters and unicode), arrays and objects,
/// nested up to `depth`.
pub fn random_value(rng: &mut fastrand::Rng, depth: usize) -> Value {
    let kinds = if depth == 0 { 5 } else { 8 };
    match rng.usize(..kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 => random_number(rng),
        3 | 4 => Value::String(random_string(rng)),
        5 => Value::Array(
            (0..rng.usize(..4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        6 => Value::Object(
            (0..rng.usize(..4))
                .map(|_| (random_string(rng), random_value(rng, depth - 1)))
                .collect(),
        ),
        _ => nested(rng, depth),
    }
}

/// `[[...[1]...]]`, `levels` arrays deep, built without recursion. Drop a
/// deep one with [`syncforge_core::dismantle`]: dropping it recurses.
pub fn nested_arrays(levels: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..levels {
        value = Value::Array(vec![value]);
    }
    value
}

/// Gives a record in its canonical JSON form a field `deep` holding
/// [`nested_arrays`]`(levels)`, stamped with the record's write stamp: a
/// stored record as a hand edit (or a store written before the nesting
/// limit) could leave it, for tests of what a backend's reads make of it.
pub fn add_deep_field(record: &mut Value, levels: usize) {
    record["deep"] = nested_arrays(levels);
    record["_sync"]["fields"]["deep"] = record["_sync"]["written"].clone();
}

/// A value nested exactly `depth` levels deep.
fn nested(rng: &mut fastrand::Rng, depth: usize) -> Value {
    let mut value = Value::from(rng.u8(..));
    for _ in 0..depth {
        value = if rng.bool() {
            Value::Array(vec![value])
        } else {
            json!({ "k": value })
        };
    }
    value
}

fn random_number(rng: &mut fastrand::Rng) -> Value {
    match rng.usize(..7) {
        0 => Value::from(rng.i64(..)),
        1 => Value::from(rng.u64(..)),
        2 => Value::from(-0.0),
        3 => Number::from_f64(rng.f64() * 1e300).map_or(Value::Null, Value::Number),
        4 => Number::from_f64(f64::MIN_POSITIVE * rng.f64()).map_or(Value::Null, Value::Number),
        5 => Value::from(u64::MAX),
        _ => Value::from(rng.i32(-3..3)),
    }
}

/// A random string: short, with control characters, unicode, reserved-looking
/// names, or empty.
pub fn random_string(rng: &mut fastrand::Rng) -> String {
    const PIECES: [&str; 16] = [
        "a", "id", "_sync", "_version", "é", "名", "🙂", "\u{0}", "\n", "\t", "\u{7f}", "\u{85}",
        " ", "/", "..", "%",
    ];
    match rng.usize(..10) {
        0 => String::new(),
        1 => "x".repeat(rng.usize(1000..1100)),
        _ => (0..rng.usize(1..6))
            .map(|_| PIECES[rng.usize(..PIECES.len())])
            .collect(),
    }
}

/// A random value offered as a record: most are plausible records (an `id`,
/// fields, sometimes metadata and `_sync` state), mutated in every way a
/// careless or hostile sender might — wrong types, missing keys, stamps that
/// do not parse, counters at their limits — and some are not objects at all.
pub fn random_record(rng: &mut fastrand::Rng) -> Value {
    match rng.usize(..20) {
        0 => return random_value(rng, 3),
        // A sound record in its full JSON form, sometimes with one thing broken.
        1..=9 => {
            if let Some(mut value) = sound_record(rng) {
                if rng.bool() {
                    break_one_thing(rng, &mut value);
                }
                return value;
            }
        }
        _ => {}
    }
    let mut map = Map::new();
    match rng.usize(..12) {
        0 => {}
        1 => {
            map.insert("id".into(), random_value(rng, 1));
        }
        2 => {
            map.insert("id".into(), Value::String(random_string(rng)));
        }
        _ => {
            map.insert("id".into(), Value::String(format!("r{}", rng.u16(..))));
        }
    }
    for _ in 0..rng.usize(..5) {
        // Deep fields straddle the nesting limit: some at or just under it,
        // most past it.
        let depth = if rng.usize(..10) == 0 {
            rng.usize(MAX_NESTING_DEPTH - 4..=MAX_GENERATED_DEPTH)
        } else {
            3
        };
        map.insert(random_string(rng), random_value(rng, depth));
    }
    if rng.bool() {
        add_metadata(rng, &mut map);
    }
    Value::Object(map)
}

/// A well-formed record (put, sometimes edited, deleted or written by
/// several clients) in its full JSON form; `None` when the random content is
/// not a valid record.
fn sound_record(rng: &mut fastrand::Rng) -> Option<Value> {
    let mut content = Map::new();
    content.insert("id".into(), Value::String(format!("r{}", rng.u16(..))));
    for _ in 0..rng.usize(..5) {
        let name = ["title", "body", "n", "tags", "名", "x y"][rng.usize(..6)];
        content.insert(name.into(), random_value(rng, 3));
    }
    let client = ["a", "b", "phone"][rng.usize(..3)];
    let mut millis = rng.u64(1..2_000_000_000_000);
    let stamp = Stamp::new(millis, rng.u32(..), client).ok()?;
    let mut record = Record::create(
        Content::from_value(Value::Object(content.clone())).ok()?,
        &stamp,
    );
    for _ in 0..rng.usize(..3) {
        millis += rng.u64(1..1000);
        let stamp = Stamp::new(millis, 0, ["a", "b", "phone"][rng.usize(..3)]).ok()?;
        if rng.usize(..4) == 0 {
            record.apply_delete(&stamp).ok()?;
        } else {
            content.insert("edit".into(), random_value(rng, 2));
            record
                .apply_put(
                    Content::from_value(Value::Object(content.clone())).ok()?,
                    &stamp,
                )
                .ok()?;
        }
    }
    Some(record.to_json())
}

/// Breaks one thing of a record's JSON form: a metadata key of the wrong
/// type or value, a stamp that does not parse, a counter at its limit.
fn break_one_thing(rng: &mut fastrand::Rng, value: &mut Value) {
    let Some(map) = value.as_object_mut() else {
        return;
    };
    let key = RESERVED_KEYS[rng.usize(..RESERVED_KEYS.len())];
    match rng.usize(..4) {
        0 => {
            map.remove(key);
        }
        1 => {
            map.insert(key.into(), random_value(rng, 1));
        }
        2 => {
            if let Some(sync) = map.get_mut("_sync").and_then(Value::as_object_mut) {
                let part = ["written", "fields", "versions", "removed", "deleted"][rng.usize(..5)];
                sync.insert(part.into(), random_value(rng, 2));
            }
        }
        _ => {
            if let Some(versions) = map
                .get_mut("_sync")
                .and_then(|sync| sync.get_mut("versions"))
                .and_then(Value::as_object_mut)
            {
                versions.insert("a".into(), Value::from(u64::MAX));
            }
        }
    }
}

/// Adds the metadata keys, and sometimes `_sync`, right or wrong.
fn add_metadata(rng: &mut fastrand::Rng, map: &mut Map<String, Value>) {
    let client = if rng.usize(..8) == 0 {
        random_value(rng, 1)
    } else {
        Value::String(["a", "b", "phone"][rng.usize(..3)].to_owned())
    };
    let version = match rng.usize(..8) {
        0 => random_value(rng, 1),
        1 => Value::from(u64::MAX),
        2 => Value::from(1u64 << 53),
        _ => Value::from(rng.u64(1..10)),
    };
    let timestamp = match rng.usize(..8) {
        0 => random_value(rng, 1),
        1 => Value::from(1u64 << 48),
        2 => Value::from((1u64 << 48) - 1),
        _ => Value::from(rng.u64(..2_000_000_000_000)),
    };
    for (key, value) in [
        ("_clientId", client),
        ("_version", version),
        ("_timestamp", timestamp),
        (
            "_deleted",
            if rng.usize(..8) == 0 {
                random_value(rng, 1)
            } else {
                Value::Bool(rng.bool())
            },
        ),
    ] {
        if rng.usize(..6) != 0 {
            map.insert(key.into(), value);
        }
    }
    if rng.usize(..3) == 0 {
        let fields: Map<String, Value> = map
            .keys()
            .filter(|k| !k.starts_with('_') && *k != "id")
            .map(|k| (k.clone(), Value::String(random_stamp(rng))))
            .collect();
        let mut sync = json!({
            "written": random_stamp(rng),
            "fields": fields,
            "versions": {"a": rng.u64(1..5)},
        });
        if rng.usize(..4) == 0 {
            sync[[
                "written", "fields", "versions", "removed", "deleted", "bogus",
            ][rng.usize(..6)]] = random_value(rng, 2);
        }
        map.insert("_sync".into(), sync);
    }
}

/// A stamp string: mostly well formed, sometimes at the limits or broken.
fn random_stamp(rng: &mut fastrand::Rng) -> String {
    match rng.usize(..8) {
        0 => random_string(rng),
        1 => "ffffffffffff.ffffffff.z".to_owned(),
        2 => format!("{:012x}.{:08x}.", rng.u64(..1 << 40), rng.u32(..)),
        _ => format!("{:012x}.{:08x}.a", rng.u64(..1 << 40), rng.u32(..)),
    }
}
