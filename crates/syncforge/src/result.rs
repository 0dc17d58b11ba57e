//! What a sync did.

use std::time::Duration;

use syncforge_core::{ChangeKind, CollectionName, ConflictDetail};

/// What a [`sync`](crate::Collection::sync) (or an import) did.
///
/// Serialises as the JSON object the TypeScript library logs: camelCase
/// keys, and the duration in whole milliseconds.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = syncforge::SyncEngine::builder().build().await?;
/// let result = engine.sync("users", Vec::new()).await?;
/// let json = serde_json::to_value(&result)?;
/// assert_eq!(json["collection"], "users");
/// assert_eq!(json["added"], 0);
/// assert!(json["duration"].is_u64());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
#[must_use]
pub struct SyncResult {
    /// The collection synced.
    pub collection: CollectionName,
    /// Records that became visible.
    pub added: usize,
    /// Records that changed.
    pub updated: usize,
    /// Records that became deleted.
    pub deleted: usize,
    /// Records that changed nothing.
    pub unchanged: usize,
    /// Concurrent edits found and how each was resolved.
    pub conflicts: Vec<ConflictDetail>,
    /// When the sync finished, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// How long it took.
    #[serde(serialize_with = "whole_millis")]
    pub duration: Duration,
}

/// A duration as its whole milliseconds (saturating).
fn whole_millis<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

impl SyncResult {
    pub(crate) fn new(collection: &CollectionName) -> Self {
        SyncResult {
            collection: collection.clone(),
            added: 0,
            updated: 0,
            deleted: 0,
            unchanged: 0,
            conflicts: Vec::new(),
            timestamp: 0,
            duration: Duration::ZERO,
        }
    }

    /// Records the sync looked at: added, updated, deleted and unchanged.
    pub fn total(&self) -> usize {
        self.added + self.updated + self.deleted + self.unchanged
    }

    pub(crate) fn count(&mut self, kind: ChangeKind) {
        match kind {
            ChangeKind::Added => self.added += 1,
            ChangeKind::Updated => self.updated += 1,
            ChangeKind::Deleted => self.deleted += 1,
            ChangeKind::Unchanged => self.unchanged += 1,
        }
    }

    /// Adds the counts and conflicts of a later sync of the same collection.
    pub(crate) fn absorb(&mut self, later: SyncResult) {
        self.added += later.added;
        self.updated += later.updated;
        self.deleted += later.deleted;
        self.unchanged += later.unchanged;
        self.conflicts.extend(later.conflicts);
        self.timestamp = later.timestamp;
        self.duration += later.duration;
    }
}
