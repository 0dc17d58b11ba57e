//! W3 — merging 100,000 records of which 10,000 changed on each side, 5,000
//! on both (one side changed `email`, the other `age`) — done three ways in
//! the same run:
//!
//! * syncforge: the CRDT sync of the engine into its memory store, exactly
//!   as the `w3_sync_crdt` row of the workloads bench;
//! * `crdts`: a map from id to a map of `LWWReg` registers, merged register
//!   by register with `CvRDT::merge`;
//! * `automerge`: one document holding a map of maps (id → record), the
//!   receiver's fork merging the sender's with `AutoCommit::merge`.
//!
//! Each is set up outside the timing, and after each timed merge every edit
//! of both sides is checked to have survived. Each merges data of its own,
//! copied just before the timing (syncforge's records are copies sharing no
//! memory with the sides', as the other two clone theirs), and frees in the
//! timing what its merge takes by value: syncforge the records of its batch,
//! `crdts` the incoming map; automerge borrows the sending document, which is
//! freed after.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../../../crates/syncforge/benches/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ReadDoc, ScalarValue, Value, ROOT};
use crdts::{CvRDT, LWWReg};
use criterion::Criterion;

use support::w3::{
    assert_no_edit_lost, diverge, edited_age, edited_email, receiver_edits, sender_edits,
    CHANGED_EACH_SIDE,
};
use support::{runtime, timed_checked, written_records, Person, RECORDS};

const GROUP: &str = "peers";

fn syncforge_w3(c: &mut Criterion) {
    let rt = runtime();
    let base = written_records(&rt, "writer", RECORDS);
    // Criterion calls the closure once per sample: the sides are made once.
    let mut sides = None;
    c.benchmark_group(GROUP)
        .bench_function("peers_w3_syncforge", |b| {
            let sides = sides.get_or_insert_with(|| diverge(&rt, &base));
            b.iter_custom(|iters| {
                timed_checked(
                    iters,
                    || sides.fresh(&rt),
                    |(receiver, batch)| {
                        let result = rt
                            .block_on(receiver.sync(support::COLLECTION, batch))
                            .unwrap();
                        (receiver, result)
                    },
                    |(receiver, result)| {
                        assert_eq!(result.updated, CHANGED_EACH_SIDE);
                        assert_no_edit_lost(&rt, receiver);
                    },
                )
            })
        });
}

/// A write's marker: (time, counter, replica), ordered like a stamp.
type Marker = (u64, u32, u8);
type LwwRecord = BTreeMap<String, LWWReg<serde_json::Value, Marker>>;

fn lww_record(person: &Person, marker: Marker) -> (String, LwwRecord) {
    let serde_json::Value::Object(fields) = serde_json::to_value(person).unwrap() else {
        unreachable!("a person serialises to an object")
    };
    let record = fields
        .into_iter()
        .filter(|(name, _)| name != "id")
        .map(|(name, val)| (name, LWWReg { val, marker }))
        .collect();
    (person.id.clone(), record)
}

/// Both sides as maps of LWW registers: base written at time 1 by replica 0,
/// the sender's edits at time 2 by replica 1, the receiver's by replica 2.
fn crdts_sides() -> (HashMap<String, LwwRecord>, Vec<(String, LwwRecord)>) {
    let base = |i| lww_record(&Person::nth(i), (1, 0, 0));
    let mut receiver: HashMap<String, LwwRecord> = (0..RECORDS).map(base).collect();
    let mut sender: Vec<(String, LwwRecord)> = (0..RECORDS).map(base).collect();
    for i in sender_edits() {
        sender[i]
            .1
            .get_mut("email")
            .unwrap()
            .update(serde_json::Value::from(edited_email(i)), (2, 0, 1));
    }
    for i in receiver_edits() {
        let id = Person::nth(i).id;
        let record = receiver.get_mut(&id).unwrap();
        record
            .get_mut("age")
            .unwrap()
            .update(serde_json::Value::from(edited_age(i)), (2, 0, 2));
    }
    (receiver, sender)
}

fn crdts_merge(
    mut local: HashMap<String, LwwRecord>,
    remote: Vec<(String, LwwRecord)>,
) -> HashMap<String, LwwRecord> {
    for (id, incoming) in remote {
        match local.get_mut(&id) {
            Some(record) => {
                for (name, register) in incoming {
                    match record.get_mut(&name) {
                        Some(mine) => mine.merge(register),
                        None => {
                            record.insert(name, register);
                        }
                    }
                }
            }
            None => {
                local.insert(id, incoming);
            }
        }
    }
    local
}

fn crdts_check(merged: &HashMap<String, LwwRecord>) {
    assert_eq!(merged.len(), RECORDS);
    for i in sender_edits().chain(receiver_edits()) {
        let record = &merged[&Person::nth(i).id];
        let email = &record["email"].val;
        let age = &record["age"].val;
        let mut expected = Person::nth(i);
        if sender_edits().contains(&i) {
            expected.email = edited_email(i);
        }
        if receiver_edits().contains(&i) {
            expected.age = edited_age(i);
        }
        assert_eq!(email, &serde_json::Value::from(expected.email), "{i}");
        assert_eq!(age, &serde_json::Value::from(expected.age), "{i}");
    }
}

fn crdts_w3(c: &mut Criterion) {
    let mut sides = None;
    c.benchmark_group(GROUP)
        .bench_function("peers_w3_crdts", |b| {
            let (receiver, sender) = sides.get_or_insert_with(crdts_sides);
            b.iter_custom(|iters| {
                timed_checked(
                    iters,
                    || (receiver.clone(), sender.clone()),
                    |(local, remote)| crdts_merge(local, remote),
                    crdts_check,
                )
            })
        });
}

fn automerge_put_person(doc: &mut AutoCommit, person: &Person) {
    let record = doc
        .put_object(ROOT, person.id.as_str(), ObjType::Map)
        .unwrap();
    doc.put(&record, "name", person.name.as_str()).unwrap();
    doc.put(&record, "age", u64::from(person.age)).unwrap();
    doc.put(&record, "email", person.email.as_str()).unwrap();
    let tags = doc.put_object(&record, "tags", ObjType::List).unwrap();
    for (index, tag) in person.tags.iter().enumerate() {
        doc.insert(&tags, index, tag.as_str()).unwrap();
    }
    doc.put(&record, "score", person.score).unwrap();
}

/// The receiver's and the sender's document: forks of one base, each with
/// its edits committed one record at a time (one change per write).
fn automerge_sides() -> (AutoCommit, AutoCommit) {
    let mut base = AutoCommit::new();
    for i in 0..RECORDS {
        automerge_put_person(&mut base, &Person::nth(i));
    }
    base.commit();
    let mut sender = base.fork();
    let mut receiver = base.fork();
    for i in sender_edits() {
        let record = record_of(&sender, &Person::nth(i).id);
        sender
            .put(&record, "email", edited_email(i).as_str())
            .unwrap();
        sender.commit();
    }
    for i in receiver_edits() {
        let record = record_of(&receiver, &Person::nth(i).id);
        receiver
            .put(&record, "age", u64::from(edited_age(i)))
            .unwrap();
        receiver.commit();
    }
    (receiver, sender)
}

fn record_of(doc: &AutoCommit, id: &str) -> automerge::ObjId {
    match doc.get(ROOT, id).unwrap() {
        Some((Value::Object(ObjType::Map), record)) => record,
        other => panic!("record {id} is missing: {other:?}"),
    }
}

fn scalar(doc: &AutoCommit, record: &automerge::ObjId, field: &str) -> ScalarValue {
    match doc.get(record, field).unwrap() {
        Some((Value::Scalar(value), _)) => value.into_owned(),
        other => panic!("field {field} is missing: {other:?}"),
    }
}

fn automerge_check(merged: &AutoCommit) {
    for i in sender_edits().chain(receiver_edits()) {
        let record = record_of(merged, &Person::nth(i).id);
        let mut expected = Person::nth(i);
        if sender_edits().contains(&i) {
            expected.email = edited_email(i);
        }
        if receiver_edits().contains(&i) {
            expected.age = edited_age(i);
        }
        assert_eq!(
            scalar(merged, &record, "email"),
            ScalarValue::Str(expected.email.into()),
            "{i}"
        );
        assert_eq!(
            scalar(merged, &record, "age"),
            ScalarValue::Uint(u64::from(expected.age)),
            "{i}"
        );
    }
}

fn automerge_w3(c: &mut Criterion) {
    let mut sides = None;
    c.benchmark_group(GROUP)
        .bench_function("peers_w3_automerge", |b| {
            let (receiver, sender) = sides.get_or_insert_with(automerge_sides);
            b.iter_custom(|iters| {
                timed_checked(
                    iters,
                    || (receiver.clone(), sender.clone()),
                    // The sender is handed back: the merge only borrows it.
                    |(mut local, mut remote)| {
                        local.merge(&mut remote).unwrap();
                        (local, remote)
                    },
                    |(local, _)| automerge_check(local),
                )
            })
        });
}

fn main() {
    let since = SystemTime::now();
    let mut c = support::criterion();
    syncforge_w3(&mut c);
    crdts_w3(&mut c);
    automerge_w3(&mut c);
    c.final_summary();
    support::report_medians(
        GROUP,
        &[
            ("peers_w3_syncforge", RECORDS),
            ("peers_w3_crdts", RECORDS),
            ("peers_w3_automerge", RECORDS),
        ],
        since,
    );
}
