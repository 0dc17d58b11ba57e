//! Last-writer-wins building blocks: a register and a map of registers.
//!
//! These are the primitives the CRDT strategy is made of, exposed for users who
//! want field-level merging of their own data. Ties between equal stamps (from
//! imported data, two writers sharing a client id, or a caller giving one
//! stamp twice) are broken by the value's canonical JSON, the same rule as in
//! [`crate::merge`].

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::Result;
use crate::hlc::Stamp;
use crate::merge::{conflicted_fields, merge, pick_field, ConflictStrategy};
use crate::record::{FieldState, FieldStates, Record};

/// The serialisable state of an [`LwwRegister`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RegisterState {
    /// The value.
    pub value: Value,
    /// The stamp of the write that set it.
    pub stamp: Stamp,
}

/// A last-writer-wins register holding one JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct LwwRegister {
    state: FieldState,
    /// The value the state holds as text, kept parsed for [`get`](Self::get).
    value: Value,
}

impl LwwRegister {
    /// A register holding `value`, written at `stamp`. A value nested deeper
    /// than [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH) is refused, as a
    /// record's field is.
    pub fn new(value: Value, stamp: Stamp) -> Result<Self> {
        let state = FieldState::new(Some(value), stamp)?;
        Ok(LwwRegister::holding(state))
    }

    fn holding(state: FieldState) -> Self {
        let value = state.value().unwrap_or(Value::Null);
        LwwRegister { state, value }
    }

    /// Rebuilds a register from its state.
    pub fn from_state(state: RegisterState) -> Result<Self> {
        LwwRegister::new(state.value, state.stamp)
    }

    /// Writes `value` at `stamp`; returns whether it won: a newer stamp, or
    /// an equal stamp with a value that wins the tie (see the module docs).
    pub fn set(&mut self, value: Value, stamp: Stamp) -> Result<bool> {
        Ok(self.offer(FieldState::new(Some(value), stamp)?))
    }

    /// Merges another register's state; returns whether it won.
    pub fn merge(&mut self, other: &RegisterState) -> Result<bool> {
        Ok(self.offer(FieldState::new(
            Some(other.value.clone()),
            other.stamp.clone(),
        )?))
    }

    fn offer(&mut self, candidate: FieldState) -> bool {
        let wins = std::ptr::eq(pick_field(&self.state, &candidate), &candidate)
            && candidate != self.state;
        if wins {
            *self = LwwRegister::holding(candidate);
        }
        wins
    }

    /// The current value (`-0.0` read as `0.0`, as everywhere in syncforge).
    pub fn get(&self) -> &Value {
        &self.value
    }

    /// The stamp of the current value.
    pub fn stamp(&self) -> &Stamp {
        &self.state.stamp
    }

    /// The serialisable state.
    pub fn state(&self) -> RegisterState {
        RegisterState {
            value: self.value.clone(),
            stamp: self.state.stamp.clone(),
        }
    }
}

/// The serialisable state of an [`LwwMap`]: every key with its value (absent
/// once removed) and stamp, serialised as a JSON object.
pub type LwwMapState = FieldStates;

/// A last-writer-wins map: each key is a register; removals are stamped too,
/// so a removal and a concurrent write resolve by stamp like any two writes.
/// A write or a lookup costs O(log n) in the keys held, a merge O(m log n)
/// in the keys merged.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LwwMap {
    /// A tree, not the sorted list of [`LwwMapState`]: a new key went into
    /// its place in the list, moving every later one, so a map built of n
    /// keys in no order cost O(n²).
    entries: BTreeMap<String, FieldState>,
}

/// The outcome of [`LwwMap::merge_records`].
#[derive(Debug, Clone, PartialEq)]
pub struct MergedRecords {
    /// The field-level merge of both records.
    pub merged: Record,
    /// Fields both records hold with different values.
    pub conflicted_fields: Vec<String>,
}

impl LwwMap {
    /// An empty map.
    pub fn new() -> Self {
        LwwMap::default()
    }

    /// Writes `key = value` at `stamp`; returns whether the write won. A
    /// value nested deeper than [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH)
    /// is refused, as a record's field is.
    pub fn set(&mut self, key: &str, value: Value, stamp: Stamp) -> Result<bool> {
        Ok(self.offer(key, FieldState::new(Some(value), stamp)?))
    }

    /// Removes `key` at `stamp`; returns whether the removal won.
    pub fn remove(&mut self, key: &str, stamp: Stamp) -> bool {
        self.offer(key, FieldState::from_text(None, stamp))
    }

    fn offer(&mut self, key: &str, candidate: FieldState) -> bool {
        match self.entries.get_mut(key) {
            Some(current) => {
                let wins = std::ptr::eq(pick_field(current, &candidate), &candidate)
                    && candidate != *current;
                if wins {
                    *current = candidate;
                }
                wins
            }
            None => {
                self.entries.insert(key.to_owned(), candidate);
                true
            }
        }
    }

    /// The value of `key`, unless absent or removed.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.entries.get(key).and_then(FieldState::value)
    }

    /// Merges another map's state into this one, key by key: each key
    /// keeps the newer of its two states, as [`set`](Self::set) and
    /// [`remove`](Self::remove) would.
    pub fn merge(&mut self, other: &LwwMapState) {
        for (key, state) in other {
            self.offer(key, state.clone());
        }
    }

    /// The serialisable state (made on each call).
    pub fn state(&self) -> LwwMapState {
        self.entries
            .iter()
            .map(|(key, state)| (key.clone(), state.clone()))
            .collect()
    }

    /// The visible key/value pairs as a JSON object.
    pub fn to_record(&self) -> Map<String, Value> {
        self.entries
            .iter()
            .filter_map(|(k, s)| s.value().map(|v| (k.clone(), v)))
            .collect()
    }

    /// The fields of a record, with their stamps.
    pub fn from_record(record: &Record) -> Self {
        LwwMap {
            entries: record
                .field_states()
                .iter()
                .map(|(key, state)| (key.to_owned(), state.clone()))
                .collect(),
        }
    }

    /// Field-level merge of two states of one record, with the fields both hold
    /// with different values.
    pub fn merge_records(local: &Record, remote: &Record) -> Result<MergedRecords> {
        Ok(MergedRecords {
            merged: merge(local, remote, ConflictStrategy::Crdt)?,
            conflicted_fields: conflicted_fields(local, remote),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::ClientId;
    use serde_json::json;

    fn stamp(millis: u64, client: &str) -> Stamp {
        Stamp::new(millis, 0, ClientId::new(client).unwrap()).unwrap()
    }

    #[test]
    fn register_follows_the_original_example() {
        let mut reg = LwwRegister::new(json!("initial"), stamp(1000, "client-a")).unwrap();
        assert!(reg.set(json!("updated"), stamp(2000, "client-b")).unwrap());
        assert_eq!(reg.get(), &json!("updated"));
        assert!(!reg.set(json!("old"), stamp(500, "client-c")).unwrap());
        assert_eq!(reg.get(), &json!("updated"));
        assert!(reg
            .merge(&RegisterState {
                value: json!("merged"),
                stamp: stamp(3000, "client-c")
            })
            .unwrap());
        assert_eq!(reg.get(), &json!("merged"));
        let restored = LwwRegister::from_state(reg.state()).unwrap();
        assert_eq!(restored, reg);
    }

    #[test]
    fn register_ties_break_by_value_in_both_orders() {
        let mut a = LwwRegister::new(json!("x"), stamp(1, "c")).unwrap();
        let mut b = LwwRegister::new(json!("y"), stamp(1, "c")).unwrap();
        a.merge(&b.state()).unwrap();
        b.merge(&LwwRegister::new(json!("x"), stamp(1, "c")).unwrap().state())
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.get(), &json!("y"));
    }

    #[test]
    fn map_follows_the_original_example() {
        let mut map = LwwMap::new();
        map.set("name", json!("Alice"), stamp(1000, "client-a"))
            .unwrap();
        map.set("age", json!(30), stamp(1000, "client-a")).unwrap();
        assert_eq!(
            Value::Object(map.to_record()),
            json!({"name": "Alice", "age": 30})
        );
        let mut other = LwwMap::new();
        other
            .set("name", json!("Bob"), stamp(2000, "client-b"))
            .unwrap();
        other
            .set("email", json!("bob@example.com"), stamp(2000, "client-b"))
            .unwrap();
        map.merge(&other.state());
        assert_eq!(map.get("name"), Some(json!("Bob")));
        assert_eq!(map.get("email"), Some(json!("bob@example.com")));
        assert_eq!(map.get("age"), Some(json!(30)));
    }

    #[test]
    fn map_removal_is_stamped() {
        let mut map = LwwMap::new();
        map.set("k", json!(1), stamp(1, "a")).unwrap();
        assert!(map.remove("k", stamp(2, "a")));
        assert!(!map.set("k", json!(2), stamp(1, "b")).unwrap());
        assert_eq!(map.get("k"), None);
        let state = serde_json::to_value(map.state()).unwrap();
        assert_eq!(state, json!({"k": {"stamp": "000000000002.00000000.a"}}));
        let back: LwwMapState = serde_json::from_value(state).unwrap();
        assert_eq!(back, map.state());
    }

    /// A map read from a record holds its fields with their stamps, removed
    /// ones included: a write older than a field's stamp loses, a newer one
    /// wins, and its state is the record's.
    #[test]
    fn map_from_record_keeps_every_field_and_stamp() {
        let mut record = Record::create(
            crate::record::Content::from_value(json!({"id": "r", "a": 1, "b": "x"})).unwrap(),
            stamp(10, "a"),
        );
        record
            .apply_put(
                crate::record::Content::from_value(json!({"id": "r", "a": 1})).unwrap(),
                &stamp(20, "a"),
            )
            .unwrap();
        let mut map = LwwMap::from_record(&record);
        assert_eq!(map.state(), record.field_states().to_field_states());
        assert_eq!(Value::Object(map.to_record()), json!({"a": 1}));
        assert_eq!(map.get("b"), None);
        // "b" was removed at 20: a write at 15 loses, one at 30 wins.
        assert!(!map.set("b", json!("y"), stamp(15, "c")).unwrap());
        assert!(map.set("b", json!("z"), stamp(30, "c")).unwrap());
        assert!(!map.set("a", json!(2), stamp(5, "c")).unwrap());
        assert_eq!(Value::Object(map.to_record()), json!({"a": 1, "b": "z"}));
    }

    #[test]
    fn merge_records_follows_the_original_example() {
        let local = Record::from_json(json!({
            "id": "1", "name": "Alice", "age": 31,
            "_version": 2, "_timestamp": 2000, "_deleted": false, "_clientId": "a"
        }))
        .unwrap();
        let remote = Record::from_json(json!({
            "id": "1", "name": "Alice", "email": "alice@example.com",
            "_version": 2, "_timestamp": 2000, "_deleted": false, "_clientId": "b"
        }))
        .unwrap();
        let out = LwwMap::merge_records(&local, &remote).unwrap();
        assert_eq!(out.merged.get("age"), Some(json!(31)));
        assert_eq!(out.merged.get("email"), Some(json!("alice@example.com")));
        assert!(out.conflicted_fields.is_empty());
    }
}
