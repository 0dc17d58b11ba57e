//! # syncforge-core
//!
//! The pure core of [syncforge](https://docs.rs/syncforge): everything that
//! decides *what* replicas hold, with no I/O and no async runtime.
//!
//! * [`Hlc`] — a hybrid logical clock issuing [`Stamp`]s `(millis, counter, client)`.
//! * [`Record`] — a JSON record with a stamp per field, a tombstone and a
//!   version vector, in a canonical JSON form compatible with the TypeScript
//!   original's metadata.
//! * [`merge`](mod@merge) — the merge rules of both [`ConflictStrategy`]s, in one file.
//! * [`LwwRegister`], [`LwwMap`] — the last-writer-wins primitives.
//! * [`compute_delta`], [`classify`], [`resolve_conflict`] — what an incoming
//!   record changes.
//! * [`StorageBackend`] — the storage contract every backend crate implements.
//! * [`MAX_NESTING_DEPTH`] — how deep a record's values may nest arrays and
//!   objects (64): every way of making a record refuses deeper values with
//!   [`Error::InvalidRecord`], without recursing into them, and
//!   [`check_serialize`] measures a `Serialize` value before it is converted.
//!
//! ```
//! use std::sync::Arc;
//! use serde_json::json;
//! use syncforge_core::{merge, ClientId, ConflictStrategy, Content, Hlc, ManualTime, Record};
//!
//! let time = Arc::new(ManualTime::new(1_000));
//! let mut phone = Hlc::with_time(ClientId::new("phone")?, time.clone());
//! let mut laptop = Hlc::with_time(ClientId::new("laptop")?, time.clone());
//!
//! let note = Content::from_value(json!({"id": "n1", "title": "Meeting", "body": "Q3"}))?;
//! let base = Record::create(note, &phone.now()?);
//! // The laptop receives the note; its clock takes in the note's stamps.
//! laptop.observe(base.newest_stamp())?;
//!
//! // Each device edits a different field.
//! let mut on_laptop = base.clone();
//! on_laptop.apply_put(Content::from_value(json!({"id": "n1", "title": "Q3 Planning", "body": "Q3"}))?, &laptop.now()?)?;
//! let mut on_phone = base.clone();
//! on_phone.apply_put(Content::from_value(json!({"id": "n1", "title": "Meeting", "body": "Q3 + revenue"}))?, &phone.now()?)?;
//!
//! // Field-level merge keeps both edits, whichever side merges.
//! let a = merge(&on_laptop, &on_phone, ConflictStrategy::Crdt)?;
//! let b = merge(&on_phone, &on_laptop, ConflictStrategy::Crdt)?;
//! assert_eq!(a.to_json_string(), b.to_json_string());
//! assert_eq!(a.get("title"), Some(json!("Q3 Planning")));
//! assert_eq!(a.get("body"), Some(json!("Q3 + revenue")));
//! # Ok::<(), syncforge_core::Error>(())
//! ```

pub mod backend;
mod delta;
mod depth;
mod error;
mod hlc;
mod lww;
pub mod merge;
mod names;
mod peer;
mod record;
mod sorted;
mod url_text;
mod validate;
mod version_vector;
mod words;

pub use backend::{
    record_to_insert, remember_collection_hint, Change, ChangePage, Cursor, IfAbsent,
    StorageBackend, Stored, Token, Write, WriteOutcome, CACHED_COLLECTIONS,
};
pub use delta::{classify, compute_delta, dedupe, ChangeKind, Classified, Deduped, Delta};
pub use depth::{check_serialize, dismantle, nesting_depth, MAX_NESTING_DEPTH};
pub use error::{shorten, BoxError, Error, Result, SharedError, MAX_RETRIES};
pub use hlc::{
    ClientId, Hlc, IntoClientId, ManualTime, Stamp, SystemClock, TimeSource, DEFAULT_MAX_DRIFT,
    MAX_STAMP_MILLIS,
};
pub use lww::{LwwMap, LwwMapState, LwwRegister, MergedRecords, RegisterState};
pub use merge::{
    conflicted_fields, is_conflict, merge, resolve_conflict, ConflictDetail, ConflictStrategy,
};
pub use names::{CollectionName, IntoName, RecordId};
pub use peer::{PushOutcome, RefusedRecord, SyncPeer};
pub use record::{
    Content, FieldName, FieldState, FieldStates, FieldStatesRef, JsonText, Record, CLIENT_ID_KEY,
    DELETED_KEY, ID_KEY, RESERVED_KEYS, SYNC_KEY, TIMESTAMP_KEY, VERSION_KEY,
};
pub use url_text::{percent_decode, unbracketed_ipv6, EscapeError};
pub use validate::{page_limit, validate_collection, validate_id, MAX_NAME_BYTES};
pub use version_vector::{Causality, VersionVector, MAX_RECEIVED_VERSION, MAX_VERSION};

/// Re-exported so backends implement [`StorageBackend`] with the same macro version.
pub use async_trait::async_trait;

/// Helpers the modules' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::cell::RefCell;
    use std::sync::mpsc::{channel, Sender};

    /// Runs `early` on a new thread, then `late` from a thread-local's
    /// destructor on that thread, one registered before the tables `early`
    /// brought into being, so torn down after them; whether both held (a
    /// panic in `late` counts as not).
    pub(crate) fn held_while_torn_down(early: fn() -> bool, late: fn() -> bool) -> bool {
        struct RunsOnDrop(Sender<bool>, fn() -> bool);
        impl Drop for RunsOnDrop {
            fn drop(&mut self) {
                let held = std::panic::catch_unwind(self.1);
                let _ = self.0.send(held.unwrap_or(false));
            }
        }
        thread_local! {
            static LATE: RefCell<Option<RunsOnDrop>> = const { RefCell::new(None) };
        }
        let (tx, rx) = channel();
        let early_held = std::thread::spawn(move || {
            LATE.with(|slot| *slot.borrow_mut() = Some(RunsOnDrop(tx, late)));
            early()
        })
        .join()
        .unwrap_or(false);
        early_held && rx.recv() == Ok(true)
    }

    /// A sequence whose `Serialize` goes on past an item refused, as a
    /// hand-written one may.
    pub(crate) struct Lenient<T>(pub(crate) Vec<T>);

    impl<T: serde::Serialize> serde::Serialize for Lenient<T> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
            for item in &self.0 {
                let _ = seq.serialize_element(item);
            }
            seq.end()
        }
    }

    /// A map whose `Serialize` goes on past an entry refused.
    pub(crate) struct LenientMap<K, V>(pub(crate) Vec<(K, V)>);

    impl<K: serde::Serialize, V: serde::Serialize> serde::Serialize for LenientMap<K, V> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = serializer.serialize_map(Some(self.0.len()))?;
            for (key, value) in &self.0 {
                let _ = map.serialize_entry(key, value);
            }
            map.end()
        }
    }
}
