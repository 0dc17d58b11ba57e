//! W3, shared with the peers comparison: two replicas of the same 100,000
//! records, 10,000 edited on each side, 5,000 on both (the sender edits
//! `email`, the receiver `age`).

use syncforge::{Record, SyncEngine};
use tokio::runtime::Runtime;

use super::{deep_copy, engine_holding, Person, COLLECTION, RECORDS};

/// Records changed on each side, and how many of them on both.
pub const CHANGED_EACH_SIDE: usize = 10_000;
pub const CHANGED_BOTH: usize = 5_000;

/// W3's two sides: what the receiver holds and what the sender sends, each
/// with 10,000 edits of its own, 5,000 records edited on both.
pub struct Diverged {
    /// The receiver's records (its own `age` edits included), deep copies.
    pub local: Vec<Record>,
    /// The sender's records (its own `email` edits included), deep copies.
    pub remote: Vec<Record>,
}

/// Sender edits `email` of records `0..10_000`; receiver edits `age` of
/// `5_000..15_000`.
pub fn sender_edits() -> std::ops::Range<usize> {
    0..CHANGED_EACH_SIDE
}

pub fn receiver_edits() -> std::ops::Range<usize> {
    CHANGED_EACH_SIDE - CHANGED_BOTH..2 * CHANGED_EACH_SIDE - CHANGED_BOTH
}

pub fn edited_email(i: usize) -> String {
    format!("changed{i}@example.org")
}

pub fn edited_age(i: usize) -> u32 {
    100 + (i % 50) as u32
}

pub fn diverge(rt: &Runtime, base: &[Record]) -> Diverged {
    rt.block_on(async {
        let sender = engine_holding("sender", base).await;
        let receiver = engine_holding("receiver", base).await;
        for i in sender_edits() {
            let mut person = Person::nth(i);
            person.email = edited_email(i);
            sender.put(COLLECTION, &person).await.unwrap();
        }
        for i in receiver_edits() {
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
    let stored = rt.block_on(receiver.get_all(COLLECTION)).unwrap();
    assert_eq!(stored.len(), RECORDS);
    let (sender_side, receiver_side) = (sender_edits(), receiver_edits());
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
