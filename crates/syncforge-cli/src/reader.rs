//! Reading a store the commands that only read (`ls`, `get`, `export`,
//! `stats`, `watch`) can name: a local store, or a sync server through its
//! change feed.

use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::{Context as _, Result};
use syncforge::{ChangePage, CollectionName, Cursor, PageOptions, Record, RecordId, StoreUrl};

use crate::commands::Context;
use crate::store::{listing, Store};

/// A store to read.
pub(crate) enum Reader {
    Local(Store),
    #[cfg(feature = "http")]
    Remote(crate::remote::Remote),
}

impl Reader {
    /// Opens the store `url` names; a local one must exist already.
    pub(crate) async fn open(url: StoreUrl, cx: &Context) -> Result<Reader> {
        #[cfg(feature = "http")]
        if url.server_url().is_some() {
            return Ok(Reader::Remote(crate::remote::Remote::connect(url, cx)?));
        }
        Ok(Reader::Local(
            Store::open_existing(url, &cx.engine()).await?,
        ))
    }

    pub(crate) fn url(&self) -> &StoreUrl {
        match self {
            Reader::Local(store) => store.url(),
            #[cfg(feature = "http")]
            Reader::Remote(remote) => remote.url(),
        }
    }

    /// Whether the store is opened here, not reached through a server.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Reader::Local(_))
    }

    /// The store's id as the store holds it now: a local store's (`none`
    /// once the store lost it, wiped under the engine), or the id of the
    /// store a server serves.
    pub(crate) async fn id(&self) -> Result<String> {
        match self {
            Reader::Local(store) => Ok(store
                .engine()
                .stored_id()
                .await?
                .unwrap_or_else(|| "none".to_owned())),
            #[cfg(feature = "http")]
            Reader::Remote(remote) => remote.feed_id().await,
        }
    }

    /// The collections holding records, sorted by name.
    pub(crate) async fn collections(&self) -> Result<Vec<CollectionName>> {
        match self {
            Reader::Local(store) => store.collections().await,
            #[cfg(feature = "http")]
            Reader::Remote(remote) => remote.collections().await,
        }
    }

    /// Fails, listing the collections there are, unless `name` is one.
    pub(crate) async fn require(&self, name: &CollectionName) -> Result<()> {
        let known = self.collections().await?;
        if known.contains(name) {
            return Ok(());
        }
        anyhow::bail!(
            "{} has no collection {:?} ({})",
            self.url(),
            name.as_str(),
            listing(&known)
        )
    }

    /// A page of the collection's change feed after `after`.
    pub(crate) async fn page(
        &self,
        name: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        let page = match self {
            Reader::Local(store) => {
                store
                    .collection(name)?
                    .changes(after, PageOptions::default().limit(limit.get()))
                    .await
            }
            #[cfg(feature = "http")]
            Reader::Remote(remote) => remote.page(name, after, limit, Duration::ZERO).await,
        };
        page.with_context(|| format!("cannot read the change feed of {:?}", name.as_str()))
    }

    /// Like [`page`](Self::page), but when nothing comes after `after`,
    /// waits up to `wait` for a change: a server answers as soon as one
    /// lands (a long poll); a local store is looked at again after `wait`.
    pub(crate) async fn next_page(
        &self,
        name: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
        wait: Duration,
    ) -> Result<ChangePage> {
        match self {
            Reader::Local(_) => {
                let page = self.page(name, after, limit).await?;
                if page.is_empty() && page.next == after {
                    tokio::time::sleep(wait).await;
                }
                Ok(page)
            }
            #[cfg(feature = "http")]
            Reader::Remote(remote) => remote
                .page(name, after, limit, wait)
                .await
                .with_context(|| format!("cannot read the change feed of {:?}", name.as_str())),
        }
    }

    /// Every record of the collection, soft-deleted ones included, sorted
    /// by id.
    pub(crate) async fn records(&self, name: &CollectionName) -> Result<Vec<Record>> {
        let mut records = match self {
            Reader::Local(store) => store
                .collection(name)?
                .get_all()
                .await
                .with_context(|| format!("cannot read collection {:?}", name.as_str()))?,
            #[cfg(feature = "http")]
            Reader::Remote(_) => {
                let mut changed = Vec::new();
                self.each_change(name, |change| changed.push(change.record))
                    .await?;
                return Ok(latest_states(changed));
            }
        };
        records.sort_by(|a, b| a.id().cmp(b.id()));
        Ok(records)
    }

    /// One record (soft-deleted ones too). A server has no route for one
    /// record: its feed is read until the record turns up (the feed holds
    /// each record once, at its last change).
    pub(crate) async fn get(&self, name: &CollectionName, id: &RecordId) -> Result<Option<Record>> {
        match self {
            Reader::Local(store) => store
                .collection(name)?
                .get(id.clone())
                .await
                .with_context(|| format!("cannot read record {:?}", id.as_str())),
            #[cfg(feature = "http")]
            Reader::Remote(_) => {
                let mut found = None;
                self.each_change_until(name, |change| {
                    if change.record.id() != id {
                        return ControlFlow::Continue(());
                    }
                    found = Some(change.record);
                    ControlFlow::Break(())
                })
                .await?;
                Ok(found)
            }
        }
    }

    /// Calls `visit` on every change of the collection's feed, oldest first;
    /// returns where the feed ends.
    pub(crate) async fn each_change(
        &self,
        name: &CollectionName,
        mut visit: impl FnMut(syncforge::Change),
    ) -> Result<Cursor> {
        self.each_change_until(name, |change| {
            visit(change);
            ControlFlow::Continue(())
        })
        .await
    }

    /// [`each_change`](Self::each_change), ending early, without reading
    /// another page, once `visit` breaks.
    async fn each_change_until(
        &self,
        name: &CollectionName,
        mut visit: impl FnMut(syncforge::Change) -> ControlFlow<()>,
    ) -> Result<Cursor> {
        let limit = NonZeroUsize::new(PAGE).unwrap_or(NonZeroUsize::MIN);
        let mut cursor = Cursor::START;
        loop {
            let page = self.page(name, cursor, limit).await?;
            let read_on = reads_on(name, cursor, &page)?;
            cursor = cursor.max(page.next);
            for change in page.changes {
                if visit(change).is_break() {
                    return Ok(cursor);
                }
            }
            if !read_on {
                return Ok(cursor);
            }
        }
    }

    /// Closes a local store's engine; a server needs nothing.
    pub(crate) async fn close(self) -> Result<()> {
        match self {
            Reader::Local(store) => store.close().await,
            #[cfg(feature = "http")]
            Reader::Remote(_) => Ok(()),
        }
    }

    /// Closes the store after a command that showed whole collections
    /// (`export`, `ls`, `stats`), failing when its reads skipped corrupt
    /// record files: what was shown lacks their records (an export taken as
    /// a backup would lose them), which a warning alone let pass with
    /// success.
    pub(crate) async fn close_whole(self) -> Result<()> {
        let skipped = match &self {
            Reader::Local(store) => store.corrupt_skipped(),
            #[cfg(feature = "http")]
            Reader::Remote(_) => 0,
        };
        let url = self.url().to_string();
        self.close().await?;
        if skipped > 0 {
            anyhow::bail!(
                "{skipped} corrupt record file(s) of {url} were left out of what was shown, each \
                 named in a warning above; repair or remove those files"
            );
        }
        Ok(())
    }
}

/// Changes read per page of a feed.
const PAGE: usize = 1000;

/// The records of a feed read oldest first, each in its last state, sorted
/// by id: a record written again while the feed is read turns up again at
/// its new position.
#[cfg(feature = "http")]
fn latest_states(changed: Vec<Record>) -> Vec<Record> {
    let mut latest = std::collections::BTreeMap::new();
    for record in changed {
        latest.insert(record.id().clone(), record);
    }
    latest.into_values().collect()
}

/// Whether the feed is read on after `page`, read after `cursor` (from its
/// `next`). A page that says more follows without moving past `cursor`
/// would be read forever, and ending there would print part of the feed as
/// if it were all of it: an error.
fn reads_on(name: &CollectionName, cursor: Cursor, page: &ChangePage) -> Result<bool> {
    if !page.more {
        return Ok(false);
    }
    if page.next <= cursor {
        anyhow::bail!(
            "the feed of collection {:?} answered a page after cursor {cursor} that says more \
             follows but does not move past it (next {})",
            name.as_str(),
            page.next
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_that_promises_more_must_move_on() {
        let name = CollectionName::new("notes").unwrap();
        let page = |next, more| ChangePage {
            changes: Vec::new(),
            next: Cursor::new(next),
            more,
        };
        let at = Cursor::new(5);
        assert!(reads_on(&name, at, &page(9, true)).unwrap());
        assert!(!reads_on(&name, at, &page(9, false)).unwrap());
        assert!(!reads_on(&name, at, &page(5, false)).unwrap());
        for stuck in [5, 4] {
            let error = reads_on(&name, at, &page(stuck, true)).unwrap_err();
            assert!(
                error.to_string().contains("does not move past it"),
                "{error}"
            );
        }
    }

    #[cfg(feature = "http")]
    #[test]
    fn a_record_written_again_during_the_read_is_listed_once_in_its_last_state() {
        let state = |id: &str, n: u64| {
            let content =
                syncforge::core::Content::from_value(serde_json::json!({"id": id, "n": n}))
                    .unwrap();
            Record::create(content, syncforge::Stamp::new(1_000 + n, 0, "c").unwrap())
        };
        let listed = latest_states(vec![state("b", 1), state("a", 2), state("b", 3)]);
        let listed: Vec<(String, Option<serde_json::Value>)> = listed
            .iter()
            .map(|r| (r.id().to_string(), r.get("n")))
            .collect();
        assert_eq!(
            listed,
            [
                ("a".to_owned(), Some(serde_json::json!(2))),
                ("b".to_owned(), Some(serde_json::json!(3)))
            ]
        );
    }
}
