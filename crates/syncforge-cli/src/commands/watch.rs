//! `syncforge watch STORE COLLECTION`: follow the change feed.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use syncforge::{Change, Collection, Cursor, PageOptions};

use super::Context;
use crate::cli::WatchArgs;
use crate::store::{parse_collection, parse_url, Store};

/// Changes read per page of the feed.
const PAGE: usize = 500;

pub(crate) async fn run(args: WatchArgs, cx: &mut Context) -> Result<()> {
    let url = parse_url("STORE", &args.store)?;
    let name = parse_collection(&args.collection)?;
    let store = Store::open_existing(url, &cx.engine()).await?;
    let collection = store.existing(&name).await?;
    let mut cursor = match (args.from_start, args.after) {
        (true, _) => Cursor::START,
        (false, Some(after)) => Cursor::new(after),
        (false, None) => head(&collection).await?,
    };
    // Said on stderr, so that whoever starts a watch knows from which point
    // on changes will be printed.
    let _ = writeln!(
        std::io::stderr(),
        "watching collection {:?} of {} after cursor {cursor}",
        name.as_str(),
        store.url()
    );
    let mut printed = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    'follow: loop {
        loop {
            let page = collection
                .changes(cursor, PageOptions::default().limit(PAGE))
                .await
                .with_context(|| format!("cannot read the change feed of {:?}", name.as_str()))?;
            for change in &page.changes {
                if args.count.is_some_and(|count| printed >= count) {
                    break 'follow;
                }
                show(cx, change)?;
                printed += 1;
            }
            // A page that does not move the cursor would be read forever.
            let advanced = page.next > cursor;
            cursor = cursor.max(page.next);
            if !page.more || !advanced {
                break;
            }
        }
        if args.count.is_some_and(|count| printed >= count) {
            break;
        }
        cx.out.flush()?;
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = &mut interrupted => break,
        }
    }
    store.close().await
}

/// Where the feed ends now.
async fn head(collection: &Collection) -> Result<Cursor> {
    let mut cursor = Cursor::START;
    loop {
        let page = collection
            .changes(cursor, PageOptions::default().limit(PAGE))
            .await?;
        let advanced = page.next > cursor;
        cursor = cursor.max(page.next);
        if !page.more || !advanced {
            return Ok(cursor);
        }
    }
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
