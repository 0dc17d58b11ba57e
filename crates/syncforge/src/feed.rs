//! Reading the change feed: page options, and the feed as a stream.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use futures_core::Stream;
use syncforge_core::{page_limit, Change, Cursor, Result};

use crate::collection::Collection;

/// Default number of changes in a page of the feed.
pub const DEFAULT_PAGE_LIMIT: usize = 100;

/// How a page of the change feed is read.
///
/// ```
/// use syncforge::PageOptions;
/// let options = PageOptions::default().limit(500);
/// assert_eq!(options.get_limit(), 500);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageOptions {
    limit: usize,
}

impl Default for PageOptions {
    fn default() -> Self {
        PageOptions {
            limit: DEFAULT_PAGE_LIMIT,
        }
    }
}

impl PageOptions {
    /// At most `limit` changes per page (default 100). A limit of 0 is
    /// refused when the page is read, with
    /// [`Error::InvalidArgument`](syncforge_core::Error::InvalidArgument).
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The page limit.
    pub fn get_limit(&self) -> usize {
        self.limit
    }

    pub(crate) fn checked_limit(&self) -> Result<NonZeroUsize> {
        page_limit(self.limit)
    }
}

impl Collection {
    /// The change feed after `after` as a stream of changes, fetching pages
    /// of `options.limit()` underneath. The stream ends when it has caught
    /// up with the feed (changes applied later need a new stream from the
    /// cursor of the last change seen). An error ends the stream after it is
    /// yielded.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> syncforge::Result<()> {
    /// use futures_util::TryStreamExt;
    /// use serde_json::json;
    /// use syncforge::{Cursor, PageOptions, SyncEngine};
    ///
    /// let engine = SyncEngine::builder().build().await?;
    /// let notes = engine.collection("notes")?;
    /// for n in 0..5 {
    ///     notes.put(&json!({"id": format!("n{n}")})).await?;
    /// }
    /// let changes: Vec<_> = notes
    ///     .change_stream(Cursor::START, PageOptions::default().limit(2))
    ///     .try_collect()
    ///     .await?;
    /// assert_eq!(changes.len(), 5);
    /// # Ok(())
    /// # }
    /// ```
    pub fn change_stream(
        &self,
        after: Cursor,
        options: PageOptions,
    ) -> impl Stream<Item = Result<Change>> + Send + 'static {
        let state = FeedState {
            collection: self.clone(),
            cursor: after,
            buffered: VecDeque::new(),
            more: true,
            options,
        };
        futures_util::stream::try_unfold(state, |mut state| async move {
            loop {
                if let Some(change) = state.buffered.pop_front() {
                    return Ok(Some((change, state)));
                }
                if !state.more {
                    return Ok(None);
                }
                let page = state
                    .collection
                    .changes(state.cursor, state.options)
                    .await?;
                // `changes` refuses a page saying "more" whose `next` does
                // not advance, so the stream cannot spin.
                state.more = page.more;
                state.cursor = page.next;
                state.buffered.extend(page.changes);
            }
        })
    }
}

/// Where a [`Collection::change_stream`] is.
struct FeedState {
    collection: Collection,
    cursor: Cursor,
    buffered: VecDeque<Change>,
    more: bool,
    options: PageOptions,
}
