//! `syncforge sync SRC DST`: one-way or two-way sync through the change feed.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use futures_util::TryStreamExt;
use parking_lot::Mutex;
use serde_json::Value;
use syncforge::{CollectionName, Cursor, EventKind, PageOptions, SyncEvent, SyncPeer};

use super::{Context, Counts};
use crate::cli::SyncArgs;
use crate::failure::usage;
use crate::progress::Following;
use crate::store::{listing, parse_collection, parse_url, Store, StorePeer};

/// Changes read per page when counting what a sync will send.
const COUNT_PAGE: usize = 1000;

pub(crate) async fn run(args: SyncArgs, cx: &mut Context) -> Result<()> {
    let src_url = parse_url("SRC", &args.src)?;
    let dst_url = parse_url("DST", &args.dst)?;
    let named = args
        .collections
        .iter()
        .map(|name| parse_collection(name))
        .collect::<Result<Vec<_>>>()?;
    let options = cx.merging(args.merge);
    let src = Store::open_existing(src_url, &options).await?;
    let dst = Store::open(dst_url, &options).await?;
    if src.engine().store_id() == dst.engine().store_id() {
        return Err(usage(format!(
            "SRC and DST are the same store ({})",
            src.url()
        )));
    }
    let collections = choose(&named, &src, &dst, args.both).await?;
    if collections.is_empty() && !cx.out.json() {
        cx.out.line("nothing to sync: SRC holds no collection")?;
    }
    let peer = StorePeer::new(&src);
    for collection in &collections {
        sync_one(&src, &dst, &peer, collection, args.both, cx)
            .await
            .with_context(|| {
                format!(
                    "cannot sync collection {:?} from {} to {}",
                    collection.as_str(),
                    src.url(),
                    dst.url()
                )
            })?;
        // A line per collection as it ends, not all at the end.
        cx.out.flush()?;
    }
    src.close().await?;
    dst.close().await
}

/// The collections to sync: those named, each held by SRC (or, with
/// --both, by either store); by default every collection of SRC (and DST).
async fn choose(
    named: &[CollectionName],
    src: &Store,
    dst: &Store,
    both: bool,
) -> Result<Vec<CollectionName>> {
    let in_src = src.collections().await?;
    let in_dst = if both {
        dst.collections().await?
    } else {
        Vec::new()
    };
    if named.is_empty() {
        let mut all: Vec<CollectionName> = in_src.into_iter().chain(in_dst).collect();
        all.sort();
        all.dedup();
        return Ok(all);
    }
    for name in named {
        if in_src.contains(name) || in_dst.contains(name) {
            continue;
        }
        if both {
            anyhow::bail!(
                "neither {} nor {} has a collection {:?} (SRC: {}; DST: {})",
                src.url(),
                dst.url(),
                name.as_str(),
                listing(&in_src),
                listing(&in_dst)
            );
        }
        anyhow::bail!(
            "{} has no collection {:?} ({})",
            src.url(),
            name.as_str(),
            listing(&in_src)
        );
    }
    let mut named = named.to_vec();
    named.sort();
    named.dedup();
    Ok(named)
}

async fn sync_one(
    src: &Store,
    dst: &Store,
    peer: &StorePeer,
    collection: &CollectionName,
    both: bool,
    cx: &mut Context,
) -> Result<()> {
    let total = if cx.progress.enabled() {
        pending(src, dst, peer, collection, both).await?
    } else {
        0
    };
    let bar = cx.progress.bar(collection.as_str(), total);
    let outcome = {
        let _pulling = bar.follow(dst.engine());
        let _pushing = both.then(|| bar.follow(src.engine()));
        let (sent_back, _tallying) = tally(src, collection);
        let report = if both {
            dst.engine().sync_with(peer, collection.clone()).await
        } else {
            dst.engine().pull_from(peer, collection.clone()).await
        };
        report.map(|report| (report, *sent_back.lock()))
    };
    let (report, back) = match outcome {
        Ok(done) => {
            bar.finish();
            done
        }
        Err(error) => {
            bar.abandon();
            return Err(error.into());
        }
    };
    let into_dst = Counts::of(&report.pulled);
    if cx.out.json() {
        let mut line = serde_json::Map::new();
        line.insert("collection".to_owned(), collection.as_str().into());
        line.extend(into_dst.json());
        if both {
            let mut to_src = serde_json::Map::new();
            to_src.insert("sent".to_owned(), report.pushed.into());
            to_src.extend(back.json());
            line.insert("to_src".to_owned(), Value::Object(to_src));
        }
        cx.out.value(&Value::Object(line))
    } else if both {
        cx.out.line(&format!(
            "{}: into DST {}; into SRC {} sent: {}",
            collection,
            into_dst.human(),
            report.pushed,
            back.human()
        ))
    } else {
        cx.out
            .line(&format!("{}: {}", collection, into_dst.human()))
    }
}

/// Counts what the merges into SRC do (the records --both sends back) while
/// the returned guard lives.
fn tally(src: &Store, collection: &CollectionName) -> (Arc<Mutex<Counts>>, Following) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let into = counts.clone();
    let name = collection.clone();
    let listener = src
        .engine()
        .events()
        .on(EventKind::SyncSuccess, move |event| {
            if let SyncEvent::SyncSuccess(result) = event {
                if result.collection == name {
                    into.lock().add(Counts::of(result));
                }
            }
        });
    (counts, Following::new(src.engine(), vec![listener]))
}

/// How many changes the sync will read: SRC's since the pull cursor DST
/// keeps for it, and with --both DST's since the push cursor. Only for the
/// bar's length, so only when a bar is drawn: it reads those changes once
/// more (the cost grows with the change, like the sync itself).
async fn pending(
    src: &Store,
    dst: &Store,
    peer: &StorePeer,
    collection: &CollectionName,
    both: bool,
) -> Result<u64> {
    let cursors = dst
        .engine()
        .peer_cursors(peer.peer_id(), collection.clone())
        .await?;
    let mut total = count_after(src, collection, cursors.pulled).await?;
    if both {
        total += count_after(dst, collection, cursors.pushed).await?;
    }
    Ok(total)
}

async fn count_after(store: &Store, collection: &CollectionName, after: Cursor) -> Result<u64> {
    let count = store
        .collection(collection)?
        .change_stream(after, PageOptions::default().limit(COUNT_PAGE))
        .try_fold(0u64, |count, _| async move { Ok(count + 1) })
        .await?;
    Ok(count)
}
