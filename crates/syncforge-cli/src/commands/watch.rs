//! `syncforge watch STORE COLLECTION`: follow the change feed.

use std::io::Write as _;
use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use syncforge::{Change, CollectionName, Cursor};

use super::signals::StopSignals;
use super::Context;
use crate::cli::WatchArgs;
use crate::reader::Reader;
use crate::store::{parse_collection, parse_url};

/// Changes read per page of the feed.
const PAGE: usize = 500;

/// The wait before reading again after the store was unavailable; it
/// doubles while it stays so, up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// Whether a failure may go away by itself (the store or server
/// unreachable for now).
fn is_transient(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<syncforge::Error>()
        .is_some_and(syncforge::Error::is_transient)
}

/// `after`, unless it is past the end of the collection's feed, which no
/// cursor of this store is: one taken from another store, or from this one
/// before it was restored. Followed from there, the watch printed nothing
/// until the feed reached it, and skipped every change until then. The
/// whole feed is read only when neither `after` nor the position before it
/// is seen to be within the feed (a cursor past its end; or one at its end
/// whose own change is gone, superseded or removed).
async fn within_feed(store: &Reader, name: &CollectionName, after: Cursor) -> Result<Cursor> {
    let next = store.page(name, after, NonZeroUsize::MIN).await?;
    if !next.changes.is_empty() || next.next > after {
        return Ok(after);
    }
    // A watch resumed where it stopped, at the end of the feed: the change
    // at `after` itself is there.
    if let Some(before) = after.get().checked_sub(1) {
        let at = store
            .page(name, Cursor::new(before), NonZeroUsize::MIN)
            .await?;
        if at.changes.iter().any(|change| change.cursor >= after) || at.next >= after {
            return Ok(after);
        }
    }
    let end = store.each_change(name, drop).await?;
    if after > end {
        anyhow::bail!(
            "--after {after} is past the end of the change feed of collection {:?} of {} (its \
             end is cursor {end}): no change of it would be shown until the feed got there; \
             was the cursor taken from another store, or before this one was restored?",
            name.as_str(),
            store.url()
        );
    }
    Ok(after)
}

pub(crate) async fn run(args: WatchArgs, cx: &mut Context) -> Result<()> {
    let url = parse_url("STORE", &args.store)?;
    let name = parse_collection(&args.collection)?;
    let store = Reader::open(url, cx).await?;
    store.require(&name).await?;
    // The cursor means something only in this store's feed: after the store
    // was unreachable, the watch goes on only if it is still this store.
    // Read before the cursor is worked out: a server's id is read from its
    // health, which takes on a new feed without a word, and read after, a
    // store replaced in between would have been followed from the old
    // store's cursor.
    let feed = store.id().await?;
    let mut cursor = match (args.from_start, args.after) {
        (true, _) => Cursor::START,
        (false, Some(after)) => within_feed(&store, &name, Cursor::new(after)).await?,
        (false, None) => store.each_change(&name, drop).await?,
    };
    // Listened for before the watch is said to start: whoever started it
    // may stop it as soon as it has read that, and a signal with no
    // listener yet would end the process without closing the store.
    let mut signals = StopSignals::listen()?;
    // Said on stderr once the store was reached, so that whoever starts a
    // watch knows from which point on changes will be printed.
    let _ = writeln!(
        std::io::stderr(),
        "watching collection {:?} of {} after cursor {cursor}",
        name.as_str(),
        store.url()
    );
    // Whoever reads the watch may go while it waits for changes: it stops
    // then, as it would at its next change.
    let reader_gone = crate::output::reader_gone();
    tokio::pin!(reader_gone);
    let mut check_feed = false;
    let limit = NonZeroUsize::new(PAGE).unwrap_or(NonZeroUsize::MIN);
    let mut printed = 0u64;
    let mut retry = FIRST_RETRY;
    while args.count.is_none_or(|count| printed < count) {
        cx.out.flush()?;
        // Between pages a local store is looked at again every --interval;
        // a server answers a long poll as soon as a change lands.
        let page = tokio::select! {
            page = next_page(&store, &name, cursor, limit, args.interval, check_feed.then_some(feed.as_str())) => page,
            stop = signals.next() => {
                stop?;
                break;
            }
            () = &mut reader_gone => break,
        };
        let page = match page {
            Ok(page) => {
                retry = FIRST_RETRY;
                // A local store's feed with nothing new may have been
                // replaced (a Redis server restarted without persistence
                // numbers its feed from the start again, under the cursor
                // held here): the store is looked at again before the next
                // read. A server's id changes only with a restart, which
                // the watch sees as a failure first; a store replaced under
                // a running server fails the server's pages.
                check_feed = page.changes.is_empty() && store.is_local();
                page
            }
            // A server restarting, or briefly at its bound of connections:
            // a watch outlives it.
            Err(error) if is_transient(&error) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "{error:#}; trying again in {}s",
                    retry.as_secs()
                );
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    stop = signals.next() => {
                        stop?;
                        break;
                    }
                    () = &mut reader_gone => break,
                }
                retry = (retry * 2).min(LAST_RETRY);
                check_feed = true;
                continue;
            }
            Err(error) => return Err(error),
        };
        for change in &page.changes {
            if args.count.is_some_and(|count| printed >= count) {
                break;
            }
            show(cx, change)?;
            printed += 1;
        }
        cursor = cursor.max(page.next);
    }
    // A store that is slow to close (a server gone) does not hold the
    // command once it is told (again) to stop.
    tokio::select! {
        closed = store.close() => closed,
        again = signals.next() => {
            again?;
            Err(anyhow::anyhow!("stopped by a signal before the store was closed"))
        }
    }
}

/// The next page after `cursor`; with `feed`, only once the store is seen
/// to be that one still (a server may come back serving another store,
/// whose feed the cursor does not belong to).
async fn next_page(
    store: &Reader,
    name: &syncforge::CollectionName,
    cursor: Cursor,
    limit: NonZeroUsize,
    wait: Duration,
    feed: Option<&str>,
) -> Result<syncforge::ChangePage> {
    if let Some(feed) = feed {
        let now = store.id().await?;
        if now != feed {
            anyhow::bail!(
                "{} holds another store now (feed {now}, was {feed}): cursor {cursor} means \
                 nothing there; start the watch again",
                store.url()
            );
        }
    }
    store.next_page(name, cursor, limit, wait).await
}

/// One change: `cursor  put|delete  id  {fields}`, or a JSON line.
fn show(cx: &mut Context, change: &Change) -> Result<()> {
    let record = &change.record;
    if cx.out.json() {
        return cx.out.value(&json!({
            "cursor": change.cursor.get(),
            "record": record.to_json(),
        }));
    }
    let what = if record.is_deleted() { "delete" } else { "put" };
    let mut fields = record.content();
    fields.remove("id");
    cx.out.line(&format!(
        "{}  {what:<6}  {}  {}",
        change.cursor,
        record.id(),
        Value::Object(fields)
    ))
}
