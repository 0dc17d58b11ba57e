//! The merge rules. Everything syncforge decides about concurrent edits is in
//! this file.
//!
//! Both strategies are joins (commutative, associative, idempotent), so
//! replicas that have seen the same writes, in any order and any number of
//! times, hold equal records and print byte-identical JSON.
//!
//! * [`ConflictStrategy::Crdt`]: field by field, the higher stamp wins. A
//!   record is deleted when its tombstone is newer than every write. Version
//!   vectors merge by pointwise maximum.
//! * [`ConflictStrategy::Timestamp`]: the whole record of the side with the
//!   newest stamp wins; version vectors still merge by pointwise maximum.
//!
//! A replica never issues the same stamp twice, so equal stamps normally mean
//! the same write. Records imported from the TypeScript library can carry equal
//! stamps with different values; those ties are broken by comparing canonical
//! JSON, which keeps merge a join.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::names::{CollectionName, IntoName, RecordId};
use crate::record::{FieldName, FieldState, FieldStates, FieldStatesRef, JsonText, Record};
use crate::sorted::merge_sorted;
use crate::version_vector::{Causality, VersionVector};

/// How concurrent edits of one record are resolved.
///
/// Every replica of a collection must merge it with the same strategy.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ConflictStrategy {
    /// Last writer wins for the whole record (the default, as in the original).
    #[default]
    Timestamp,
    /// Field-level last writer wins: concurrent edits of different fields are
    /// both kept.
    Crdt,
}

impl std::fmt::Display for ConflictStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConflictStrategy::Timestamp => "timestamp",
            ConflictStrategy::Crdt => "crdt",
        })
    }
}

impl std::str::FromStr for ConflictStrategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "timestamp" => Ok(ConflictStrategy::Timestamp),
            "crdt" => Ok(ConflictStrategy::Crdt),
            other => Err(Error::InvalidConfig {
                option: "conflict_strategy",
                reason: format!("unknown strategy {other:?}; expected \"timestamp\" or \"crdt\""),
            }),
        }
    }
}

/// Orders two values written with equal stamps: removed < present, then by
/// canonical JSON. Only imports produce such ties.
pub(crate) fn cmp_tied_values(a: Option<&JsonText>, b: Option<&JsonText>) -> Ordering {
    // `None` sorts before any value, and values sort by their text.
    a.cmp(&b)
}

/// The winner of two states of one field: the higher stamp, ties broken by value.
#[inline]
pub(crate) fn pick_field<'a>(a: &'a FieldState, b: &'a FieldState) -> &'a FieldState {
    match a.stamp.cmp(&b.stamp) {
        Ordering::Greater => a,
        Ordering::Less => b,
        // Equal stamps are nearly always one write seen on both sides, with
        // equal values: an equality test in line settles those, where the
        // ordering that breaks a real tie is a call.
        Ordering::Equal if a.value == b.value => a,
        Ordering::Equal => match cmp_tied_values(a.value.as_ref(), b.value.as_ref()) {
            Ordering::Less => b,
            _ => a,
        },
    }
}

/// Merges two states of the same record with `strategy`.
///
/// Fails only when the records have different ids.
pub fn merge(local: &Record, remote: &Record, strategy: ConflictStrategy) -> Result<Record> {
    let causality = local.versions().compare(remote.versions());
    merge_knowing(local, remote, strategy, causality)
}

/// [`merge`], given how the version vectors relate (`local` to `remote`):
/// a caller that compared them already (to tell a conflict) does not pay
/// for it again, nor do the shortcuts below, once each.
pub(crate) fn merge_knowing(
    local: &Record,
    remote: &Record,
    strategy: ConflictStrategy,
    causality: Causality,
) -> Result<Record> {
    use crate::version_vector::Causality::{DominatedBy, Dominates, Equal};
    check_same_record(local, remote)?;
    // Records whose version vectors differ differ.
    if causality == Equal && local == remote {
        return Ok(local.clone());
    }
    // A newer copy of the record (or an older one) holds everything the other
    // side does, so the merge is that side as it is: handing it out spares
    // building the same record again, a copy of every field value. Decided
    // by the same comparisons the merge makes, so it is exact whatever the
    // stamps (records written by the original can tie with different values).
    if strategy == ConflictStrategy::Crdt {
        if matches!(causality, Equal | DominatedBy) && crdt_fields_kept(remote, local) {
            return Ok(remote.clone());
        }
        if matches!(causality, Equal | Dominates) && crdt_fields_kept(local, remote) {
            return Ok(local.clone());
        }
    }
    let versions = local.versions().merge(remote.versions());
    let merged = match strategy {
        ConflictStrategy::Crdt => {
            let fields = merge_field_states(local.field_states(), remote.field_states());
            let written = local.written().max(remote.written()).clone();
            let tombstone = local.tombstone().max(remote.tombstone()).cloned();
            // The fields of two records hold no reserved name: nothing to check.
            Record::assembled(local.id().clone(), fields, written, tombstone, versions)
        }
        ConflictStrategy::Timestamp => {
            let winner = match timestamp_order(local, remote) {
                Ordering::Less => remote,
                _ => local,
            };
            with_versions(winner, versions)
        }
    };
    Ok(merged)
}

/// The timestamp strategy's merge: the winning state, with the version
/// vector of every state merged.
fn with_versions(winner: &Record, versions: VersionVector) -> Record {
    Record::assembled(
        winner.id().clone(),
        winner.field_states().to_field_states(),
        winner.written().clone(),
        winner.tombstone().cloned(),
        versions,
    )
}

/// Refuses to merge `other` into `record` when they are states of
/// different records.
fn check_same_record(record: &Record, other: &Record) -> Result<()> {
    if record.id() == other.id() {
        return Ok(());
    }
    Err(Error::invalid_record(
        Some(other.id()),
        format!("cannot merge it with record {:?}", record.id()),
    ))
}

/// The merge of `first` and every state in `rest` (all of one record): what
/// folding [`merge`] over them gives, built once. A fold builds a record for
/// every state it takes in, copying every field each time, so a batch
/// carrying many states of one large record would cost their number times
/// its size.
///
/// Exact because both strategies pick a maximum of a total order: the
/// timestamp strategy the whole state first in [`timestamp_order`] (which
/// reads no version vector), the CRDT strategy each field by
/// [`pick_field`], the newest write stamp and tombstone; version vectors
/// join by pointwise maximum. Fails only when the states have different ids.
pub(crate) fn merge_all(
    first: &Record,
    rest: &[Record],
    strategy: ConflictStrategy,
) -> Result<Record> {
    for other in rest {
        check_same_record(first, other)?;
    }
    if rest.is_empty() {
        return Ok(first.clone());
    }
    let states = || std::iter::once(first).chain(rest);
    // Sorted once, however many clients the states name between them.
    let versions: VersionVector = states()
        .flat_map(|r| r.versions().iter().map(|(client, n)| (client.clone(), n)))
        .collect();
    let merged = match strategy {
        ConflictStrategy::Timestamp => {
            let mut winner = TimestampRank::new(first);
            for state in rest {
                let mut next = TimestampRank::new(state);
                if winner.cmp(&mut next) == Ordering::Less {
                    winner = next;
                }
            }
            let winner = winner.record;
            if *winner.versions() == versions {
                return Ok(winner.clone());
            }
            with_versions(winner, versions)
        }
        ConflictStrategy::Crdt => {
            let mut fields: BTreeMap<&FieldName, &FieldState> = BTreeMap::new();
            for (name, state) in states().flat_map(|r| r.field_states().0) {
                fields
                    .entry(name)
                    .and_modify(|kept| *kept = pick_field(kept, state))
                    .or_insert(state);
            }
            let fields = fields
                .into_iter()
                .map(|(name, state)| (name.clone(), state.clone()))
                .collect();
            let written = states()
                .map(Record::written)
                .fold(first.written(), Ord::max);
            let tombstone = states().map(Record::tombstone).fold(None, Ord::max);
            // The fields of records hold no reserved name: nothing to check.
            Record::assembled(
                first.id().clone(),
                FieldStates(fields),
                written.clone(),
                tombstone.cloned(),
                versions,
            )
        }
    };
    Ok(merged)
}

/// Whether the CRDT merge of `target` and `other` (in either order: the rule
/// is symmetric) equals `target`, given that `target`'s version vector is at
/// least `other`'s (the caller compared them): every field of `other` is in
/// `target` and `pick_field` keeps `target`'s state (or one equal to it),
/// and `target`'s write stamp and tombstone are at least `other`'s.
fn crdt_fields_kept(target: &Record, other: &Record) -> bool {
    if target.written() < other.written() || target.tombstone() < other.tombstone() {
        return false;
    }
    // Both lists are sorted by name: one walk over both, as the merge makes.
    let mut ours = target.field_states().0.iter();
    'theirs: for (name, theirs) in other.field_states().0 {
        for (key, kept) in ours.by_ref() {
            match key.cmp(name) {
                Ordering::Less => continue,
                Ordering::Greater => return false,
                Ordering::Equal => {
                    let winner = pick_field(kept, theirs);
                    if std::ptr::eq(winner, kept) || winner == kept {
                        continue 'theirs;
                    }
                    return false;
                }
            }
        }
        // `other` holds a field `target` does not.
        return false;
    }
    true
}

/// Whole-record order of the timestamp strategy: newest stamp, then (for
/// imports with equal stamps) the canonical JSON of the content, then, for
/// equal content, that of the state, so that the order stays total.
fn timestamp_order(a: &Record, b: &Record) -> Ordering {
    TimestampRank::new(a).cmp(&mut TimestampRank::new(b))
}

/// A state as [`timestamp_order`] ranks it, keeping the texts a tie made it
/// write for the next comparison: [`merge_all`] compares its winner so far
/// with every state, and writing the winner's text anew each time cost
/// the number of states times its size when their stamps tie.
struct TimestampRank<'a> {
    record: &'a Record,
    content: Option<String>,
    state: Option<crate::JsonText>,
}

impl<'a> TimestampRank<'a> {
    fn new(record: &'a Record) -> Self {
        TimestampRank {
            record,
            content: None,
            state: None,
        }
    }

    fn content(&mut self) -> &str {
        let record = self.record;
        self.content
            .get_or_insert_with(|| record.content_json_string())
    }

    fn state(&mut self) -> &crate::JsonText {
        let record = self.record;
        self.state.get_or_insert_with(|| state_json(record))
    }

    fn cmp(&mut self, other: &mut TimestampRank<'_>) -> Ordering {
        let (a, b) = (self.record, other.record);
        a.newest_stamp().cmp(b.newest_stamp()).then_with(|| {
            if same_state(a, b) {
                Ordering::Equal
            } else {
                self.content()
                    .cmp(other.content())
                    .then_with(|| self.state().cmp(other.state()))
            }
        })
    }
}

fn same_state(a: &Record, b: &Record) -> bool {
    a.field_states() == b.field_states()
        && a.written() == b.written()
        && a.tombstone() == b.tombstone()
}

/// Canonical JSON of everything but the version vector.
///
/// Written by the canonical writer, not `Value`'s `to_string`: with
/// serde_json's `preserve_order` feature on anywhere in a program, the
/// latter prints keys in the order they were inserted (and a removal moves
/// the last key into the removed one's place), so replicas built with and
/// without it would break the same tie differently.
fn state_json(r: &Record) -> crate::JsonText {
    let mut json = r.to_json();
    if let Some(sync) = json
        .get_mut(crate::record::SYNC_KEY)
        .and_then(Value::as_object_mut)
    {
        sync.remove("versions");
    }
    if let Some(map) = json.as_object_mut() {
        map.remove(crate::record::VERSION_KEY);
    }
    crate::JsonText::from_checked(&json)
}

/// Fields held by both sides (live or removed) whose visible values differ.
pub fn conflicted_fields(local: &Record, remote: &Record) -> Vec<String> {
    // Both lists are sorted by name: one walk over both, instead of a search
    // of the remote list for every local name.
    let mut theirs = remote.field_states().0.iter().peekable();
    let mut conflicted = Vec::new();
    for (name, ours) in local.field_states().0 {
        while theirs.next_if(|(other, _)| other < name).is_some() {}
        if let Some((_, theirs)) = theirs.next_if(|(other, _)| other == name) {
            if ours.value != theirs.value {
                // Copied as the string it is: `to_string` would go through
                // the formatting machinery, several times the cost.
                conflicted.push(name.as_str().to_owned());
            }
        }
    }
    conflicted
}

/// Whether two states of a record were written concurrently: neither version
/// vector dominates the other. A plain newer copy is not a conflict.
pub fn is_conflict(local: &Record, remote: &Record) -> bool {
    local.versions().compare(remote.versions()) == Causality::Concurrent
}

/// A resolved conflict between two states of one record.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConflictDetail {
    /// The collection of the record.
    pub collection: CollectionName,
    /// The record id.
    pub record_id: RecordId,
    /// The strategy that resolved it.
    pub strategy: ConflictStrategy,
    /// The local state before the merge.
    pub local_record: Record,
    /// The incoming state.
    pub remote_record: Record,
    /// The merged state that was kept.
    pub resolved_record: Record,
    /// Fields both sides hold with different values.
    pub fields_conflicted: Vec<String>,
}

/// Resolves two states of one record with `strategy`, describing the outcome.
pub fn resolve_conflict(
    collection: impl IntoName<CollectionName>,
    local: &Record,
    remote: &Record,
    strategy: ConflictStrategy,
) -> Result<ConflictDetail> {
    let collection = collection.into_name()?;
    let resolved = merge(local, remote, strategy)?;
    Ok(ConflictDetail {
        collection,
        record_id: local.id().clone(),
        strategy,
        fields_conflicted: conflicted_fields(local, remote),
        local_record: local.clone(),
        remote_record: remote.clone(),
        resolved_record: resolved,
    })
}

/// Field-level merge (the CRDT rule): for each field the state that
/// [`pick_field`] prefers, in one pass over both name-sorted lists.
pub(crate) fn merge_field_states(
    ours: FieldStatesRef<'_>,
    theirs: FieldStatesRef<'_>,
) -> FieldStates {
    FieldStates(merge_sorted(ours.0, theirs.0, |a, b| {
        pick_field(a, b).clone()
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::hlc::Stamp;
    use crate::version_vector::VersionVector;

    /// A strategy parses from the name it displays and serialises as, and
    /// any other name is refused naming the option.
    #[test]
    fn a_strategy_reads_its_own_name_and_refuses_others() {
        for strategy in [ConflictStrategy::Timestamp, ConflictStrategy::Crdt] {
            let name = strategy.to_string();
            assert_eq!(name.parse::<ConflictStrategy>().unwrap(), strategy);
            assert_eq!(serde_json::to_value(strategy).unwrap(), json!(name));
            let read: ConflictStrategy = serde_json::from_value(json!(name)).unwrap();
            assert_eq!(read, strategy);
        }
        assert_eq!(ConflictStrategy::default(), ConflictStrategy::Timestamp);
        for other in ["CRDT", "lww", ""] {
            match other.parse::<ConflictStrategy>() {
                Err(Error::InvalidConfig { option, reason }) => {
                    assert_eq!(option, "conflict_strategy");
                    assert!(reason.contains(&format!("{other:?}")), "{reason}");
                }
                parsed => panic!("{other:?} gave {parsed:?}"),
            }
        }
    }

    /// Two records in the TypeScript library's format, equal stamps and
    /// different values: the Timestamp strategy keeps the one whose
    /// canonical text sorts last. With serde_json's `preserve_order`, a
    /// `Value`'s own text puts the fields before the metadata, and the other
    /// record's `"z"` would win instead of `"a"`'s shorter `_sync.fields`.
    #[test]
    fn a_timestamp_tie_goes_by_the_content_text() {
        let record = |fields: serde_json::Value| {
            let mut value = json!({"id": "r", "_timestamp": 1000, "_clientId": "c", "_version": 1});
            if let (Some(value), Some(fields)) = (value.as_object_mut(), fields.as_object()) {
                value.extend(fields.clone());
            }
            Record::from_json(value).unwrap()
        };
        // The whole state's text would pick `short` (its `_sync` sorts
        // higher); the content's picks `long`, as the design asks.
        let (short, long) = (record(json!({"a": "a"})), record(json!({"a": "z", "b": 1})));
        assert!(short.to_json_string() > long.to_json_string());
        for (local, remote) in [(&short, &long), (&long, &short)] {
            let merged = merge(local, remote, ConflictStrategy::Timestamp).unwrap();
            assert_eq!(merged.to_json_string(), long.to_json_string());
        }
    }

    /// What docs/semantics.md says of two records in the TypeScript form
    /// with equal stamps: the tie rule decides, `_version` aside, so an
    /// older copy can change what a replica holds.
    #[test]
    fn a_typescript_tie_goes_by_the_values_whatever_the_versions() {
        let record = |x: &str, version: u64| {
            Record::from_json(json!({
                "id": "r", "x": x, "_version": version, "_timestamp": 1000,
                "_deleted": false, "_clientId": "ts"
            }))
            .unwrap()
        };
        let (newer, older) = (record("a", 2), record("z", 1));
        for strategy in [ConflictStrategy::Crdt, ConflictStrategy::Timestamp] {
            for (local, remote) in [(&newer, &older), (&older, &newer)] {
                let merged = merge(local, remote, strategy).unwrap();
                assert_eq!(merged.content_json_string(), older.content_json_string());
                assert_eq!(merged.versions(), newer.versions());
            }
        }
    }

    #[test]
    fn a_timestamp_tie_of_equal_content_goes_by_the_state_text() {
        // Equal content and newest stamps; one side also holds a removed
        // field: the states differ only in what `_sync` holds.
        let stamp = Stamp::new(1000, 0, "c").unwrap();
        let field = |value: Option<serde_json::Value>| FieldState::new(value, stamp.clone());
        let record = |fields: Vec<(String, FieldState)>| {
            let mut versions = VersionVector::new();
            versions.increment(stamp.client());
            let fields: FieldStates = fields.into_iter().collect();
            Record::from_parts("r", fields, stamp.clone(), None, versions).unwrap()
        };
        let plain = record(vec![("a".to_owned(), field(Some(json!(1))).unwrap())]);
        let with_removed = record(vec![
            ("a".to_owned(), field(Some(json!(1))).unwrap()),
            ("b".to_owned(), field(None).unwrap()),
        ]);
        assert_eq!(
            plain.content_json_string(),
            with_removed.content_json_string()
        );
        assert_ne!(plain.to_json_string(), with_removed.to_json_string());
        let expected = std::cmp::max(plain.to_json_string(), with_removed.to_json_string());
        for (local, remote) in [(&plain, &with_removed), (&with_removed, &plain)] {
            let merged = merge(local, remote, ConflictStrategy::Timestamp).unwrap();
            assert_eq!(merged.to_json_string(), expected);
        }
    }
}
