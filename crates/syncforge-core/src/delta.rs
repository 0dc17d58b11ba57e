//! Classifying incoming records against local state.

use std::collections::HashMap;

use crate::error::Result;
use crate::merge::{merge_all, merge_knowing, resolve_conflict, ConflictDetail, ConflictStrategy};
use crate::names::{CollectionName, IntoName, RecordId};
use crate::record::Record;
use crate::version_vector::Causality;

/// What an incoming record does to local state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A record that was not known (or was deleted) becomes visible.
    Added,
    /// A known record changes.
    Updated,
    /// A record becomes deleted (or a tombstone for an unknown record arrives).
    Deleted,
    /// Local state already contains everything the incoming record says.
    Unchanged,
}

/// The merge of one incoming record into local state.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    /// What the merge does.
    pub kind: ChangeKind,
    /// The state to store (the local state when unchanged).
    pub merged: Record,
    /// Set when the two states were written concurrently (neither version
    /// vector dominates).
    pub conflict: Option<ConflictDetail>,
}

/// Merges `remote` into `local` (absent when the record is unknown) and says
/// what that changes. Classification follows from the version vectors and the
/// merged state, never from client ids. Takes `remote` by value so that a
/// record new to this replica is stored without a copy.
pub fn classify(
    collection: &CollectionName,
    local: Option<&Record>,
    remote: Record,
    strategy: ConflictStrategy,
) -> Result<Classified> {
    let Some(local) = local else {
        let kind = if remote.is_deleted() {
            ChangeKind::Deleted
        } else {
            ChangeKind::Added
        };
        return Ok(Classified {
            kind,
            merged: remote,
            conflict: None,
        });
    };
    // Compared once, for telling a conflict and for the merge's shortcuts;
    // records whose version vectors differ differ.
    let causality = local.versions().compare(remote.versions());
    if causality == Causality::Equal && *local == remote {
        return Ok(unchanged(local));
    }
    let (merged, conflict) = if causality == Causality::Concurrent {
        let detail = resolve_conflict(collection, local, &remote, strategy)?;
        (detail.resolved_record.clone(), Some(detail))
    } else {
        (merge_knowing(local, &remote, strategy, causality)?, None)
    };
    if merged == *local {
        return Ok(unchanged(local));
    }
    let kind = match (local.is_deleted(), merged.is_deleted()) {
        (false, true) => ChangeKind::Deleted,
        (true, false) => ChangeKind::Added,
        _ => ChangeKind::Updated,
    };
    Ok(Classified {
        kind,
        merged,
        conflict,
    })
}

fn unchanged(local: &Record) -> Classified {
    Classified {
        kind: ChangeKind::Unchanged,
        merged: local.clone(),
        conflict: None,
    }
}

/// Incoming records sorted by what they do to local state, holding the
/// merged states that would be stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Records that become visible.
    pub added: Vec<Record>,
    /// Records that change.
    pub updated: Vec<Record>,
    /// Records that become deleted.
    pub deleted: Vec<Record>,
    /// Ids of records that change nothing.
    pub unchanged: Vec<RecordId>,
    /// Concurrent edits found, with their resolution.
    pub conflicts: Vec<ConflictDetail>,
}

/// Classifies every remote record against a map of local records by id.
/// A remote record that appears several times is merged cumulatively; two
/// of its states written concurrently are a conflict, reported when their
/// merge changes the local record ([`dedupe`]).
pub fn compute_delta(
    collection: impl IntoName<CollectionName>,
    local: &HashMap<String, Record>,
    remote: &[Record],
    strategy: ConflictStrategy,
) -> Result<Delta> {
    let collection = collection.into_name()?;
    let mut delta = Delta::default();
    let Deduped { records, conflicts } = dedupe(&collection, remote.to_vec(), strategy)?;
    // At most one per id (see `dedupe`), found by id as each record lands.
    let mut in_batch: HashMap<RecordId, ConflictDetail> = conflicts
        .into_iter()
        .map(|conflict| (conflict.record_id.clone(), conflict))
        .collect();
    for incoming in records {
        let id = incoming.id().clone();
        let out = classify(&collection, local.get(id.as_str()), incoming, strategy)?;
        // A conflict between two states of the batch is this replica's to
        // report when their merge changes what it holds; one that changes
        // nothing was merged, and reported, before.
        if !in_batch.is_empty() && out.kind != ChangeKind::Unchanged {
            delta.conflicts.extend(in_batch.remove(&id));
        }
        delta.conflicts.extend(out.conflict);
        match out.kind {
            ChangeKind::Added => delta.added.push(out.merged),
            ChangeKind::Updated => delta.updated.push(out.merged),
            ChangeKind::Deleted => delta.deleted.push(out.merged),
            ChangeKind::Unchanged => delta.unchanged.push(id),
        }
    }
    Ok(delta)
}

/// A batch with each id once ([`dedupe`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deduped {
    /// One record per id, merged from every state of it the batch held, in
    /// the order of each id's first appearance.
    pub records: Vec<Record>,
    /// For each id with states written concurrently, the first such pair
    /// met in the batch: the earlier states merged so far as the local
    /// record, the next one as the remote, and their merge as resolved.
    /// At most one per id, so that a batch repeating one id many times
    /// keeps what it reports in proportion to the batch.
    pub conflicts: Vec<ConflictDetail>,
}

/// Merges records of `collection` that share an id into one, keeping the
/// order of first appearance: a batch may carry several states of one
/// record. Two of them written concurrently are a conflict, reported as
/// any other merge reports one; the later concurrent states of an id
/// already reported are merged all the same, unreported: each report holds
/// three copies of a state that grows with every state merged into it, so
/// reporting them all would hold memory growing with the square of the
/// batch. Each id's states are merged at once, so that a
/// batch repeating one large record costs its size once, not once a state.
pub fn dedupe(
    collection: &CollectionName,
    records: Vec<Record>,
    strategy: ConflictStrategy,
) -> Result<Deduped> {
    // Batches rarely repeat an id: checking with borrowed ids first spares
    // the common case a copy of every id.
    let mut seen: foldhash::HashSet<&str> =
        foldhash::HashSet::with_capacity_and_hasher(records.len(), Default::default());
    if records.iter().all(|r| seen.insert(r.id().as_str())) {
        return Ok(Deduped {
            records,
            conflicts: Vec::new(),
        });
    }
    drop(seen);
    let mut position: HashMap<RecordId, usize> = HashMap::with_capacity(records.len());
    let mut states_of: Vec<Vec<Record>> = Vec::with_capacity(records.len());
    for record in records {
        match position.get(record.id()) {
            Some(&i) => states_of[i].push(record),
            None => {
                position.insert(record.id().clone(), states_of.len());
                states_of.push(vec![record]);
            }
        }
    }
    drop(position);
    let mut out = Vec::with_capacity(states_of.len());
    let mut conflicts = Vec::new();
    for states in states_of {
        let Some((first, rest)) = states.split_first() else {
            continue;
        };
        if let Some(k) = first_concurrent(&states) {
            let before = merge_all(first, &rest[..k - 1], strategy)?;
            conflicts.push(resolve_conflict(
                collection.clone(),
                &before,
                &states[k],
                strategy,
            )?);
        }
        out.push(merge_all(first, rest, strategy)?);
    }
    Ok(Deduped {
        records: out,
        conflicts,
    })
}

/// The position of the first of `states` (states of one record, in batch
/// order) written concurrently with the merge of those before it.
///
/// The merge's version vector is kept as it grows, never rebuilt: it only
/// changes when a state dominates it, and then it is that state's. A state
/// naming fewer clients cannot dominate it, and is looked up in it entry by
/// entry: a batch of a record seen by many clients followed by many small
/// states of it costs their sizes, not their product.
fn first_concurrent(states: &[Record]) -> Option<usize> {
    let mut merged = states.first()?.versions();
    for (k, state) in states.iter().enumerate().skip(1) {
        let theirs = state.versions();
        let causality = if theirs.len() < merged.len() {
            if theirs.iter().all(|(client, n)| n <= merged.get(client)) {
                Causality::Dominates
            } else {
                Causality::Concurrent
            }
        } else {
            merged.compare(theirs)
        };
        match causality {
            Causality::Concurrent => return Some(k),
            Causality::DominatedBy => merged = theirs,
            Causality::Equal | Causality::Dominates => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Stamp;
    use crate::merge::merge;
    use crate::record::Content;
    use serde_json::json;

    fn record(id: &str, field: &str, millis: u64) -> Record {
        let stamp = Stamp::new(millis, 0, "c").unwrap();
        Record::create(
            Content::from_value(json!({"id": id, field: millis})).unwrap(),
            &stamp,
        )
    }

    fn content(value: serde_json::Value) -> Content {
        Content::from_value(value).unwrap()
    }

    /// Local state of four records written by "a", and an incoming batch
    /// that leaves one as it is, edits one, deletes one, edits one
    /// concurrently with a local edit, brings a new one, and repeats the
    /// edited one in an older state.
    fn local_and_incoming() -> (HashMap<String, Record>, Vec<Record>) {
        let base = |id: &str| {
            Record::create(
                content(json!({"id": id, "x": 1, "y": 1})),
                Stamp::new(10, 0, "a").unwrap(),
            )
        };
        let edited = |id: &str, x: i32, y: i32, millis: u64, client: &str| {
            let mut record = base(id);
            record
                .apply_put(
                    content(json!({"id": id, "x": x, "y": y})),
                    &Stamp::new(millis, 0, client).unwrap(),
                )
                .unwrap();
            record
        };
        let mut gone = base("gone");
        gone.apply_delete(&Stamp::new(20, 0, "a").unwrap()).unwrap();
        let local = [
            base("same"),
            base("edited"),
            base("gone"),
            edited("both", 5, 1, 30, "a"),
        ]
        .into_iter()
        .map(|r| (r.id().to_string(), r))
        .collect();
        let incoming = vec![
            base("same"),
            edited("edited", 2, 1, 20, "a"),
            gone,
            edited("both", 1, 7, 31, "b"),
            record("fresh", "x", 40),
            base("edited"),
        ];
        (local, incoming)
    }

    #[test]
    fn compute_delta_sorts_every_kind_of_change() {
        let (local, incoming) = local_and_incoming();
        let delta = compute_delta("c", &local, &incoming, ConflictStrategy::Crdt).unwrap();
        let ids = |records: &[Record]| {
            records
                .iter()
                .map(|r| r.id().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&delta.added), ["fresh"]);
        assert_eq!(ids(&delta.updated), ["edited", "both"]);
        assert_eq!(ids(&delta.deleted), ["gone"]);
        assert_eq!(delta.unchanged, [RecordId::new("same").unwrap()]);
        // The repeated "edited" merged into its newer state.
        assert_eq!(delta.updated[0].get("x"), Some(json!(2)));
        // Concurrent edits of different fields: both kept, and described.
        assert_eq!(delta.updated[1].get("x"), Some(json!(5)));
        assert_eq!(delta.updated[1].get("y"), Some(json!(7)));
        let [conflict] = &delta.conflicts[..] else {
            panic!("{:?}", delta.conflicts);
        };
        assert_eq!(conflict.record_id.as_str(), "both");
        assert_eq!(conflict.strategy, ConflictStrategy::Crdt);
        assert_eq!(conflict.fields_conflicted, ["x", "y"]);
        assert_eq!(conflict.resolved_record, delta.updated[1]);
        assert_eq!(conflict.local_record, local["both"]);
    }

    #[test]
    fn under_the_timestamp_strategy_the_newer_write_takes_the_whole_record() {
        let (local, incoming) = local_and_incoming();
        let delta = compute_delta("c", &local, &incoming, ConflictStrategy::Timestamp).unwrap();
        let both = &delta.updated[1];
        assert_eq!(both.id().as_str(), "both");
        assert_eq!(
            (both.get("x"), both.get("y")),
            (Some(json!(1)), Some(json!(7)))
        );
        assert_eq!(delta.conflicts.len(), 1);
        assert_eq!(delta.conflicts[0].strategy, ConflictStrategy::Timestamp);
        assert_eq!(
            resolve_conflict(
                "c",
                &local["both"],
                &incoming[3],
                ConflictStrategy::Timestamp
            )
            .unwrap(),
            delta.conflicts[0]
        );
    }

    fn dedupe(records: Vec<Record>, strategy: ConflictStrategy) -> Result<Vec<Record>> {
        let deduped = super::dedupe(&"c".into_name().unwrap(), records, strategy)?;
        assert!(deduped.conflicts.is_empty());
        Ok(deduped.records)
    }

    #[test]
    fn dedupe_keeps_distinct_ids_in_order() {
        let batch = vec![record("b", "x", 1), record("a", "x", 2)];
        let out = dedupe(batch.clone(), ConflictStrategy::Crdt).unwrap();
        assert_eq!(out, batch);
    }

    /// Two states of one record in a batch, written concurrently (`x` by
    /// "a" after `base`, `y` by "b" after `base`), are a conflict this
    /// replica reports, being the first to merge them: it merged them
    /// into a state newer than its own and reported nothing, and that
    /// state reached every other replica as a plain newer copy.
    #[test]
    fn two_concurrent_states_in_one_batch_are_reported_once_their_merge_lands() {
        let base = Record::create(
            content(json!({"id": "r", "x": 1, "y": 1})),
            Stamp::new(10, 0, "a").unwrap(),
        );
        let edited = |x: i32, y: i32, millis: u64, client: &str| {
            let mut record = base.clone();
            record
                .apply_put(
                    content(json!({"id": "r", "x": x, "y": y})),
                    &Stamp::new(millis, 0, client).unwrap(),
                )
                .unwrap();
            record
        };
        let (x, y) = (edited(2, 1, 20, "a"), edited(1, 3, 21, "b"));
        let resolved = merge(&x, &y, ConflictStrategy::Crdt).unwrap();
        for local in [
            HashMap::from([("r".to_owned(), base.clone())]),
            HashMap::new(),
        ] {
            let delta = compute_delta("c", &local, &[x.clone(), y.clone()], ConflictStrategy::Crdt)
                .unwrap();
            assert_eq!(delta.conflicts.len(), 1, "{local:?}");
            let conflict = &delta.conflicts[0];
            assert_eq!(
                (
                    &conflict.local_record,
                    &conflict.remote_record,
                    &conflict.resolved_record
                ),
                (&x, &y, &resolved)
            );
            assert_eq!(conflict.fields_conflicted, ["x", "y"]);
        }
        // A replica that holds the merge already changes nothing, and
        // reports nothing: whoever merged first did.
        let merged_before = HashMap::from([("r".to_owned(), resolved)]);
        let delta = compute_delta("c", &merged_before, &[x, y], ConflictStrategy::Crdt).unwrap();
        assert!(delta.conflicts.is_empty());
        assert_eq!(delta.unchanged.len(), 1);
    }

    /// Every concurrent state of one id was reported, each report holding
    /// copies of a merge that grew with every state: memory growing with
    /// the square of the batch (a push of 4,000 such states held about
    /// sixteen million fields). One report an id now, the merge unchanged.
    #[test]
    fn a_batch_repeating_one_id_reports_one_conflict_for_it() {
        let states: Vec<Record> = (0..200u64)
            .map(|i| {
                let field = format!("f{i}");
                Record::create(
                    content(json!({"id": "x", field: i})),
                    Stamp::new(1_000 + i, 0, format!("c{i}")).unwrap(),
                )
            })
            .collect();
        for strategy in [ConflictStrategy::Crdt, ConflictStrategy::Timestamp] {
            let folded = states[1..]
                .iter()
                .try_fold(states[0].clone(), |merged, state| {
                    merge(&merged, state, strategy)
                })
                .unwrap();
            let deduped =
                super::dedupe(&"c".into_name().unwrap(), states.clone(), strategy).unwrap();
            assert_eq!(deduped.records, std::slice::from_ref(&folded));
            let [conflict] = &deduped.conflicts[..] else {
                panic!("{} conflicts", deduped.conflicts.len());
            };
            assert_eq!(
                (&conflict.local_record, &conflict.remote_record),
                (&states[0], &states[1])
            );
            let delta = compute_delta("c", &HashMap::new(), &states, strategy).unwrap();
            assert_eq!(delta.added, [folded]);
            assert_eq!(delta.conflicts.len(), 1);
        }
    }

    /// Record `x` of `fields` fields, named `prefix` and their number,
    /// written at `stamp`.
    fn wide_record(prefix: &str, fields: usize, stamp: Stamp) -> Record {
        let mut content_of = serde_json::Map::new();
        content_of.insert("id".to_owned(), json!("x"));
        for i in 0..fields {
            content_of.insert(format!("{prefix}{i}"), json!(i));
        }
        Record::create(content(serde_json::Value::Object(content_of)), stamp)
    }

    /// A batch carrying a large record and many small states of it was
    /// merged one state at a time, each merge copying every field of the
    /// large one: 500 states of a 10,000-field record laid five million
    /// fields into new records (a push of 16 MiB could keep a server busy
    /// for minutes). Each id's states are merged at once now.
    #[test]
    fn a_batch_repeating_a_large_record_copies_it_a_few_times_not_once_a_state() {
        const FIELDS: usize = 10_000;
        let large = wide_record("f", FIELDS, Stamp::new(5_000, 0, "large").unwrap());
        let small: Vec<Record> = (0..500u64)
            .map(|i| {
                Record::create(
                    content(json!({"id": "x", "t": i})),
                    Stamp::new(1_000 + i, 0, format!("c{i}")).unwrap(),
                )
            })
            .collect();
        for strategy in [ConflictStrategy::Timestamp, ConflictStrategy::Crdt] {
            let batch: Vec<Record> = std::iter::once(large.clone())
                .chain(small.iter().cloned())
                .collect();
            let laid_before = crate::record::FIELDS_LAID.with(std::cell::Cell::get);
            let deduped = super::dedupe(&"c".into_name().unwrap(), batch, strategy).unwrap();
            let laid = crate::record::FIELDS_LAID.with(std::cell::Cell::get) - laid_before;
            assert!(laid <= 3 * (FIELDS + 1), "{strategy}: {laid} fields laid");
            let [merged] = &deduped.records[..] else {
                panic!("{} records", deduped.records.len());
            };
            assert_eq!(merged.versions().iter().count(), 501);
            let kept_small = merged.get("t").is_some();
            assert_eq!(
                (merged.field_states().len(), kept_small),
                match strategy {
                    ConflictStrategy::Timestamp => (FIELDS, false),
                    ConflictStrategy::Crdt => (FIELDS + 1, true),
                }
            );
            assert_eq!(deduped.conflicts.len(), 1);
        }
    }

    /// The same batch with every state's stamps tied (imported records
    /// tie): the timestamp strategy orders tied states by their canonical
    /// text, and the merge wrote the large winner's text again for every
    /// state it was compared with.
    #[test]
    fn a_batch_of_tied_states_writes_each_states_text_once() {
        const FIELDS: usize = 2_000;
        let tied = Stamp::new(5_000, 0, "tied").unwrap();
        // Named to sort after the small states' `t`: the large state wins.
        let large = wide_record("z", FIELDS, tied.clone());
        let large_text = large.content_json_string().len();
        let batch: Vec<Record> = std::iter::once(large)
            .chain((0..500).map(|i| Record::create(content(json!({"id": "x", "t": i})), &tied)))
            .collect();
        let written_before = crate::record::CONTENT_TEXT_WRITTEN.with(std::cell::Cell::get);
        let deduped = super::dedupe(
            &"c".into_name().unwrap(),
            batch,
            ConflictStrategy::Timestamp,
        )
        .unwrap();
        let written =
            crate::record::CONTENT_TEXT_WRITTEN.with(std::cell::Cell::get) - written_before;
        assert!(written <= 2 * large_text, "{written} bytes written");
        let [merged] = &deduped.records[..] else {
            panic!("{} records", deduped.records.len());
        };
        assert_eq!(merged.field_states().len(), FIELDS);
    }

    #[test]
    fn dedupe_merges_repeated_ids_at_first_position() {
        let batch = vec![
            record("a", "x", 1),
            record("b", "x", 2),
            record("a", "y", 3),
        ];
        let out = dedupe(batch.clone(), ConflictStrategy::Crdt).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0],
            merge(&batch[0], &batch[2], ConflictStrategy::Crdt).unwrap()
        );
        assert_eq!(out[1], batch[1]);
    }
}
