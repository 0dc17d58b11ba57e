//! What a sync did.

use std::time::Duration;

use syncforge_core::{ChangeKind, CollectionName, ConflictDetail};

/// What a [`sync`](crate::Collection::sync) (or an import) did.
#[derive(Debug, Clone, PartialEq)]
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
    pub duration: Duration,
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
