//! The storage contract every backend implements.
//!
//! Backends store and index; they never merge. The engine reads a record with a
//! [`Token`], merges in core, and writes back *conditionally*: the write only
//! happens if the record still has that token, so two engines sharing one store
//! never lose an update (the loser re-reads and merges again).
//!
//! Every applied write gets a sequence number, strictly increasing per
//! collection, which feeds [`StorageBackend::changes`]: a reader that keeps the
//! last sequence it saw never misses a change, whatever the record's timestamp.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::hlc::Stamp;
use crate::record::Record;

/// Identifies the stored state of a record, for conditional writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Token {
    /// The change sequence number of the stored state.
    Sequence(u64),
    /// An opaque version tag (an ETag, a generation number, ...).
    Tag(String),
}

/// A record as stored, with the token to write it back conditionally.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The record.
    pub record: Record,
    /// Its current token.
    pub token: Token,
}

/// One conditional write.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The new state of the record.
    pub record: Record,
    /// What the store must still hold for the write to happen: `None` means the
    /// record must not exist yet, `Some(token)` that it still has that token.
    pub expected: Option<Token>,
}

impl Write {
    /// A write that succeeds only if `record` does not exist yet.
    pub fn create(record: Record) -> Self {
        Write {
            record,
            expected: None,
        }
    }

    /// A write that succeeds only if the record still has `token`.
    pub fn replace(record: Record, token: Token) -> Self {
        Write {
            record,
            expected: Some(token),
        }
    }
}

/// What happened to one conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written; the record now has this token and change sequence.
    Written {
        /// The new token.
        token: Token,
        /// The change sequence assigned to this write.
        sequence: u64,
    },
    /// Not written: the record no longer matched the expected state.
    Conflict,
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The sequence of the record's latest change.
    pub sequence: u64,
    /// The record as it is now.
    pub record: Record,
}

/// A page of the change feed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChangePage {
    /// Changed records, in increasing sequence order; each record at most once,
    /// at its latest change.
    pub changes: Vec<Change>,
    /// The cursor to continue from: the sequence up to which the feed was
    /// read. That is the last sequence returned, or beyond it when a backend
    /// skipped unreadable entries after it, or the cursor asked for when
    /// nothing was read.
    pub next: u64,
    /// Whether more changes lie beyond this page.
    pub more: bool,
}

/// Storage for records, organised in named collections.
///
/// Collection names and ids reaching a backend are already validated (see
/// [`crate::validate_id`]), but backends must still never interpret them as
/// paths or patterns. Errors are mapped into the semantic variants of
/// [`crate::Error`]: `Unavailable` for transient failures (retried by the
/// engine), `Storage` for permanent ones, `Closed` after [`close`](Self::close).
#[async_trait]
pub trait StorageBackend: Send + Sync + Debug {
    /// A short name for messages and logs (`"memory"`, `"fs"`, ...).
    fn name(&self) -> &'static str;

    /// One record with its token, or `None`.
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Stored>>;

    /// Several records at once, in the order of `ids`. Backends should override
    /// this with one round trip where they can.
    async fn get_many(&self, collection: &str, ids: &[&str]) -> Result<Vec<Option<Stored>>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.get(collection, id).await?);
        }
        Ok(out)
    }

    /// Every record of the collection, soft-deleted ones included, in no
    /// particular order.
    async fn get_all(&self, collection: &str) -> Result<Vec<Record>>;

    /// Applies conditional writes, each on its own: a write whose expectation
    /// fails reports [`WriteOutcome::Conflict`] and the others still happen.
    /// Outcomes come in the order of `writes`. An `Err` means the outcome of
    /// the batch is unknown (some writes may have happened); each record is
    /// then either old or new, never torn.
    ///
    /// Writes are borrowed so that the caller can retry them after a transient
    /// failure without copying.
    async fn put_batch(&self, collection: &str, writes: &[Write]) -> Result<Vec<WriteOutcome>>;

    /// One conditional write.
    async fn put(&self, collection: &str, write: &Write) -> Result<WriteOutcome> {
        let mut outcomes = self
            .put_batch(collection, std::slice::from_ref(write))
            .await?;
        outcomes
            .pop()
            .ok_or_else(|| Error::storage(self.name(), "put_batch returned no outcome for a write"))
    }

    /// Removes a record for good (no tombstone: it will not sync). Returns
    /// whether it existed.
    async fn delete(&self, collection: &str, id: &str) -> Result<bool>;

    /// Changes with a sequence greater than `after`, oldest first, at most
    /// `limit` of them. A `limit` of 0 is refused with
    /// [`Error::InvalidArgument`]: such a page could never advance a reader.
    async fn changes(&self, collection: &str, after: u64, limit: usize) -> Result<ChangePage>;

    /// Records whose `_timestamp` is greater than `millis`. Time-based: it can
    /// miss records that arrive later with older stamps; prefer
    /// [`changes`](Self::changes).
    async fn changes_since_timestamp(&self, collection: &str, millis: u64) -> Result<Vec<Record>>;

    /// Names of the collections holding at least one record.
    async fn list_collections(&self) -> Result<Vec<String>>;

    /// Removes every record of one collection (explicit; never done implicitly).
    async fn clear_collection(&self, collection: &str) -> Result<()>;

    /// The newest stamp stored anywhere, used to seed the engine's clock on
    /// open. The default scans every collection; backends that keep it at hand
    /// should override.
    async fn newest_stamp(&self) -> Result<Option<Stamp>> {
        let mut newest: Option<Stamp> = None;
        for collection in self.list_collections().await? {
            for record in self.get_all(&collection).await? {
                let stamp = record.newest_stamp();
                if newest.as_ref().is_none_or(|n| stamp > n) {
                    newest = Some(stamp.clone());
                }
            }
        }
        Ok(newest)
    }

    /// Reads a small piece of engine metadata (per-peer cursors, ...).
    async fn get_meta(&self, key: &str) -> Result<Option<String>>;

    /// Stores a small piece of engine metadata.
    async fn set_meta(&self, key: &str, value: &str) -> Result<()>;

    /// Releases connections and handles. Never deletes data. Later calls on
    /// this handle fail with [`crate::Error::Closed`].
    async fn close(&self) -> Result<()>;
}
