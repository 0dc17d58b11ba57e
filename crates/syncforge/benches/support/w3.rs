//! W3, shared with the peers comparison: two replicas of the same records,
//! a tenth of them edited on each side and half of those on both (the sender
//! edits `email`, the receiver `age`). At the table's size: 100,000 records,
//! 10,000 edited on each side, 5,000 on both.

use std::ops::Range;

use syncforge::{Record, SyncEngine};
use tokio::runtime::Runtime;

use super::{deep_copy, engine_holding, Person, COLLECTION, RECORDS};

/// Records changed on each side, and how many of them on both, at 100k.
pub const CHANGED_EACH_SIDE: usize = 10_000;
pub const CHANGED_BOTH: usize = 5_000;

/// The size of one W3 run: records, and edits on each side.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub records: usize,
    pub each_side: usize,
    pub both: usize,
}

impl Shape {
    /// The table's W3: 100,000 records.
    pub const W3: Shape = Shape::of(RECORDS);

    /// `records` records, a tenth edited on each side, half of those on both.
    pub const fn of(records: usize) -> Shape {
        Shape {
            records,
            each_side: records / 10,
            both: records / 20,
        }
    }

    /// Sender edits `email` of the first `each_side` records.
    pub fn sender_edits(self) -> Range<usize> {
        0..self.each_side
    }

    /// Receiver edits `age` of `each_side` records, the first `both` of them
    /// also edited by the sender.
    pub fn receiver_edits(self) -> Range<usize> {
        self.each_side - self.both..2 * self.each_side - self.both
    }
}

/// W3's two sides: what the receiver holds and what the sender sends, each
/// with its own edits.
pub struct Diverged {
    /// The receiver's records (its own `age` edits included), deep copies.
    pub local: Vec<Record>,
    /// The sender's records (its own `email` edits included), deep copies.
    pub remote: Vec<Record>,
}

impl Diverged {
    /// The receiver holding copies of `local` of its own, and copies of
    /// `remote` to sync, made anew for each run as two processes hold them:
    /// the sync then frees the incoming records it does not keep and the
    /// stored ones it replaces, as a replica receiving them over the wire
    /// does. (Synced as shared references, they were only counted down.)
    pub fn fresh(&self, rt: &Runtime) -> (SyncEngine, Vec<Record>) {
        let local: Vec<Record> = self.local.iter().map(deep_copy).collect();
        let receiver = rt.block_on(engine_holding("receiver", &local));
        drop(local);
        (receiver, self.remote.iter().map(deep_copy).collect())
    }
}

/// The table's sender edits (see [`Shape::sender_edits`]).
pub fn sender_edits() -> Range<usize> {
    Shape::W3.sender_edits()
}

/// The table's receiver edits (see [`Shape::receiver_edits`]).
pub fn receiver_edits() -> Range<usize> {
    Shape::W3.receiver_edits()
}

pub fn edited_email(i: usize) -> String {
    format!("changed{i}@example.org")
}

pub fn edited_age(i: usize) -> u32 {
    100 + (i % 50) as u32
}

/// The table's W3 sides from `base` (100,000 records).
pub fn diverge(rt: &Runtime, base: &[Record]) -> Diverged {
    diverge_shaped(rt, base, Shape::W3)
}

pub fn diverge_shaped(rt: &Runtime, base: &[Record], shape: Shape) -> Diverged {
    rt.block_on(async {
        let sender = engine_holding("sender", base).await;
        let receiver = engine_holding("receiver", base).await;
        for i in shape.sender_edits() {
            let mut person = Person::nth(i);
            person.email = edited_email(i);
            sender.put(COLLECTION, &person).await.unwrap();
        }
        for i in shape.receiver_edits() {
            let mut person = Person::nth(i);
            person.age = edited_age(i);
            receiver.put(COLLECTION, &person).await.unwrap();
        }
        let copy_all = |records: Vec<Record>| records.iter().map(deep_copy).collect::<Vec<_>>();
        Diverged {
            local: copy_all(receiver.get_all(COLLECTION).await.unwrap()),
            remote: copy_all(sender.get_all(COLLECTION).await.unwrap()),
        }
    })
}

/// Every record of the receiver shows both sides' edits: none was lost.
pub fn assert_no_edit_lost(rt: &Runtime, receiver: &SyncEngine) {
    assert_no_edit_lost_shaped(rt, receiver, Shape::W3);
}

pub fn assert_no_edit_lost_shaped(rt: &Runtime, receiver: &SyncEngine, shape: Shape) {
    let stored = rt.block_on(receiver.get_all(COLLECTION)).unwrap();
    assert_eq!(stored.len(), shape.records);
    let (sender_side, receiver_side) = (shape.sender_edits(), shape.receiver_edits());
    for record in stored {
        let i: usize = record.id()["person-".len()..].parse().unwrap();
        let mut expected = Person::nth(i);
        if sender_side.contains(&i) {
            expected.email = edited_email(i);
        }
        if receiver_side.contains(&i) {
            expected.age = edited_age(i);
        }
        let shown: Person = record.get_as().unwrap();
        assert_eq!(shown, expected, "an edit of {} was lost", record.id());
    }
}
