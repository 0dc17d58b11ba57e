//! `syncforge sync SRC DST`: one-way or two-way sync through the change feed.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use futures_util::TryStreamExt;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use syncforge::{
    CollectionName, Cursor, EventKind, PageOptions, PeerSyncReport, RefusedRecord, StoreUrl,
    SyncEvent, SyncPeer,
};

use super::{output_failed_after, Context, Counts};
use crate::cli::SyncArgs;
use crate::failure::{usage, Refused};
use crate::progress::Following;
use crate::store::{
    listing, parse_collection, parse_url, Destination, EngineOptions, Store, StorePeer,
};

/// Changes read per page when counting what a sync will send.
const COUNT_PAGE: usize = 1000;

/// The two ends of a sync. The local end whose engine runs the sync keeps
/// the cursors: DST when both are local (or SRC is a server), SRC when DST
/// is a server (a server keeps nothing for its clients).
enum Ends {
    Local {
        src: Store,
        dst: Store,
    },
    #[cfg(feature = "http")]
    FromServer {
        src: crate::remote::Remote,
        dst: Store,
    },
    #[cfg(feature = "http")]
    ToServer {
        src: Store,
        dst: crate::remote::Remote,
    },
}

pub(crate) async fn run(args: SyncArgs, cx: &mut Context) -> Result<()> {
    let src_url = parse_url("SRC", &args.src)?;
    let dst_url = parse_url("DST", &args.dst)?;
    let named = args
        .collections
        .iter()
        .map(|name| parse_collection(name))
        .collect::<Result<Vec<_>>>()?;
    let Some((ends, collections)) =
        Ends::open(src_url, dst_url, cx, args.merge, &named, args.both).await?
    else {
        if !cx.out.json() {
            cx.out.line(if args.both {
                "nothing to sync: neither end holds a collection"
            } else {
                "nothing to sync: SRC holds no collection"
            })?;
        }
        return Ok(());
    };
    // Records a server refused hold back no other change: the sync goes on
    // and the command fails at the end, naming them.
    let mut refused = Vec::new();
    // The collections whose sync skipped corrupt record files, by the end
    // (of `Ends::read_ends`) that skipped them: only those are listed for
    // files left behind.
    let mut skipped_in: Vec<(usize, CollectionName)> = Vec::new();
    // Collections a sync server cannot be asked about (`.` and `..`, which
    // no URL path can name): they hold back no other collection either.
    let mut unsyncable: Vec<String> = Vec::new();
    for (done, collection) in collections.iter().enumerate() {
        let skips_before = ends.skips(args.both);
        let cannot = || {
            format!(
                "cannot sync collection {:?} from {} to {}",
                collection.as_str(),
                ends.src_url(),
                ends.dst_url()
            )
        };
        let summary = match ends.sync(collection, args.both, cx).await {
            Ok(summary) => summary,
            Err(error) if names_no_url(&error) => {
                tracing::warn!("{}: {error:#}; syncing the others", cannot());
                unsyncable.push(format!("{:?}: {error:#}", collection.as_str()));
                continue;
            }
            Err(error) => return Err(error.context(cannot())),
        };
        let skips_after = ends.skips(args.both);
        skipped_in.extend(
            skips_before
                .iter()
                .zip(&skips_after)
                .enumerate()
                .filter(|(_, (before, after))| after > before)
                .map(|(end, _)| (end, collection.clone())),
        );
        // A line per collection as it ends, not all at the end.
        summary
            .print(collection, cx)
            .and_then(|()| cx.out.flush())
            .with_context(|| {
                output_failed_after("synced", done + 1, collections.len(), collection.as_str())
            })?;
        refused.extend(
            summary
                .refused()
                .map(|record| (collection.clone(), record.clone())),
        );
    }
    let closed = ends.close(&skipped_in, args.both).await;
    let refused = refused.first().map(|(collection, first)| {
        format!(
            "{} record(s) were not sent: the receiving end refused them; the first, {:?} of \
             collection {:?}: {}. Every other change was synced.",
            refused.len(),
            first.id.as_str(),
            collection.as_str(),
            first.reason
        )
    });
    let left_behind = match (closed, &refused) {
        (Ok(left_behind), _) => left_behind,
        (Err(error), None) => return Err(error),
        (Err(error), Some(refused)) => return Err(error.context(refused.clone())),
    };
    let unsyncable = (!unsyncable.is_empty()).then(|| {
        format!(
            "{} collection(s) were not synced: {}. Every other collection was synced",
            unsyncable.len(),
            unsyncable.join("; ")
        )
    });
    // Refused records alone are their own failure; beside anything else,
    // they are told after it, in a failure at run time.
    let failures: Vec<String> = left_behind.into_iter().chain(unsyncable).collect();
    match (failures.is_empty(), refused) {
        (true, None) => Ok(()),
        (true, Some(refused)) => Err(anyhow::Error::new(Refused(refused))),
        (false, refused) => Err(anyhow::anyhow!(failures
            .into_iter()
            .chain(refused)
            .collect::<Vec<_>>()
            .join(". Besides, "))),
    }
}

/// Whether `error` is a sync server's peer refusing a collection no URL
/// can name, before any request.
fn names_no_url(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<syncforge::Error>())
        .any(|cause| matches!(cause, syncforge::Error::InvalidCollection { .. }))
}

impl Ends {
    /// Opens both ends and chooses the collections to sync (see
    /// [`choose`]), or `None` when there are none. A DST directory that
    /// holds no store yet is created only once there are collections to
    /// sync and those named are known to be there: a refused sync, or one
    /// with nothing to sync, leaves no store behind there.
    async fn open(
        src: StoreUrl,
        dst: StoreUrl,
        cx: &Context,
        merge: crate::cli::MergeOptions,
        named: &[CollectionName],
        both: bool,
    ) -> Result<Option<(Ends, Vec<CollectionName>)>> {
        let options = cx.merging(merge);
        #[cfg(feature = "http")]
        match (src.server_url().is_some(), dst.server_url().is_some()) {
            (true, true) => {
                return Err(usage(
                    "SRC and DST are both sync servers: one end must be a local store, \
                     whose engine runs the sync and keeps its cursors",
                ))
            }
            (true, false) => {
                let src = crate::remote::Remote::connect(src, cx)?;
                let in_src = src.collections().await?;
                let dst = Destination::prepare(dst, &options).await?;
                if dst.store_id() == Some(src.feed_id().await?.as_str()) {
                    return Err(same_store(dst.url(), true));
                }
                let chosen = choose(
                    named,
                    both,
                    in_src,
                    dst.collections(),
                    (src.url(), dst.url()),
                )
                .await?;
                if chosen.is_empty() {
                    dst.close().await?;
                    return Ok(None);
                }
                let dst = dst.open().await?;
                return Ok(Some((Ends::FromServer { src, dst }, chosen)));
            }
            (false, true) => {
                if !both && merge.strategy.is_some() {
                    return Err(usage(
                        "--strategy: a sync to a server only sends, and the server merges \
                         with its own strategy (syncforge serve --strategy); with --both, \
                         the local store merges what it pulls with this one",
                    ));
                }
                let src = source(src, &options, both).await?;
                let dst = crate::remote::Remote::connect(dst, cx)?;
                if src.store_id() == Some(dst.feed_id().await?.as_str()) {
                    return Err(same_store(src.url(), true));
                }
                let chosen = choose(
                    named,
                    both,
                    src.collections().await?,
                    dst.collections(),
                    (src.url(), dst.url()),
                )
                .await?;
                if chosen.is_empty() {
                    src.close().await?;
                    return Ok(None);
                }
                let src = src.open().await?;
                return Ok(Some((Ends::ToServer { src, dst }, chosen)));
            }
            (false, false) => {}
        }
        let src = source(src, &options, both).await?;
        let dst = Destination::prepare(dst, &options).await?;
        if src.store_id().is_some() && dst.store_id() == src.store_id() {
            return Err(same_store(src.url(), false));
        }
        let chosen = choose(
            named,
            both,
            src.collections().await?,
            dst.collections(),
            (src.url(), dst.url()),
        )
        .await?;
        if chosen.is_empty() {
            src.close().await?;
            dst.close().await?;
            return Ok(None);
        }
        let src = src.open().await?;
        let dst = dst.open().await?;
        Ok(Some((Ends::Local { src, dst }, chosen)))
    }

    fn src_url(&self) -> &StoreUrl {
        match self {
            Ends::Local { src, .. } => src.url(),
            #[cfg(feature = "http")]
            Ends::FromServer { src, .. } => src.url(),
            #[cfg(feature = "http")]
            Ends::ToServer { src, .. } => src.url(),
        }
    }

    fn dst_url(&self) -> &StoreUrl {
        match self {
            Ends::Local { dst, .. } => dst.url(),
            #[cfg(feature = "http")]
            Ends::FromServer { dst, .. } => dst.url(),
            #[cfg(feature = "http")]
            Ends::ToServer { dst, .. } => dst.url(),
        }
    }

    /// Syncs one collection and tells what it did.
    async fn sync(
        &self,
        collection: &CollectionName,
        both: bool,
        cx: &mut Context,
    ) -> Result<Summary> {
        Ok(match self {
            Ends::Local { src, dst } => {
                let peer = StorePeer::new(src);
                let total = if cx.progress.enabled() {
                    pending(src, dst, &peer, collection, both).await?
                } else {
                    0
                };
                let bar = cx.progress.bar(collection.as_str(), Some(total));
                let outcome = {
                    let _pulling = bar.follow(dst.engine());
                    let _pushing = both.then(|| bar.follow(src.engine()));
                    let (sent_back, _tallying) = tally(src, collection);
                    let report = if both {
                        dst.engine().sync_with(&peer, collection.clone()).await
                    } else {
                        dst.engine().pull_from(&peer, collection.clone()).await
                    };
                    report.map(|report| (report, *sent_back.lock()))
                };
                match outcome {
                    Ok((report, back)) => {
                        bar.finish();
                        Summary {
                            into_dst: Leg::merged(&report),
                            into_src: both.then_some(Leg {
                                sent: Some(report.pushed),
                                counts: Some(back),
                                refused: report.refused,
                            }),
                        }
                    }
                    Err(error) => {
                        bar.abandon();
                        return Err(error.into());
                    }
                }
            }
            #[cfg(feature = "http")]
            Ends::FromServer { src, dst } => {
                let bar = cx.progress.bar(collection.as_str(), None);
                let server = Counted::new(src.peer(), &bar);
                let report = {
                    let _pulling = bar.follow(dst.engine());
                    if both {
                        dst.engine().sync_with(&server, collection.clone()).await
                    } else {
                        dst.engine().pull_from(&server, collection.clone()).await
                    }
                };
                let report = finished(&bar, report)?;
                Summary {
                    into_dst: Leg::merged(&report),
                    // What the server's merges did is its own business.
                    into_src: both.then(|| Leg::sent(report.pushed, report.refused.clone())),
                }
            }
            #[cfg(feature = "http")]
            Ends::ToServer { src, dst } => {
                let bar = cx.progress.bar(collection.as_str(), None);
                let server = Counted::new(dst.peer(), &bar);
                let report = {
                    let _pulling = bar.follow(src.engine());
                    if both {
                        src.engine().sync_with(&server, collection.clone()).await
                    } else {
                        src.engine().push_to(&server, collection.clone()).await
                    }
                };
                let report = finished(&bar, report)?;
                Summary {
                    into_dst: Leg::sent(report.pushed, report.refused.clone()),
                    into_src: both.then(|| Leg::merged(&report)),
                }
            }
        })
    }

    /// Closes the ends (whatever else fails), and returns what the sync
    /// left behind, if anything: the corrupt record files still in the
    /// collections of `skipped_in`, those whose sync skipped some in an end
    /// whose change feed it read (SRC, and DST with `both`; by its place in
    /// [`read_ends`](Self::read_ends)). A record whose file is corrupt is
    /// not synced, and a backup taken with a sync that succeeded then
    /// lacked it. A corrupt file of the receiving end that the sync read as
    /// absent and wrote over is healed (moved aside), and not listed.
    async fn close(
        self,
        skipped_in: &[(usize, CollectionName)],
        both: bool,
    ) -> Result<Option<String>> {
        // Listed while the stores are open: a file healed by a write not
        // checkpointed yet is not listed.
        let listed = self.corrupt_files_in(skipped_in, both).await;
        match self {
            Ends::Local { src, dst } => {
                let src_closed = src.close().await;
                dst.close().await?;
                src_closed?;
            }
            #[cfg(feature = "http")]
            Ends::FromServer { dst, .. } => dst.close().await?,
            #[cfg(feature = "http")]
            Ends::ToServer { src, .. } => src.close().await?,
        }
        let left = listed?;
        Ok(left.first().map(|(url, file)| {
            format!(
                "{} corrupt record file(s) remain in a store this sync read from (the first: {} \
                 of {url}), each named in a warning above: a record whose file is corrupt is not \
                 synced. Every other change was synced; repair or remove those files, then write \
                 a repaired record again so that it travels",
                left.len(),
                file.display()
            )
        }))
    }

    /// The corrupt record files of the collections of `skipped_in`, in the
    /// ends named there, with each end's address.
    async fn corrupt_files_in(
        &self,
        skipped_in: &[(usize, CollectionName)],
        both: bool,
    ) -> Result<Vec<(String, std::path::PathBuf)>> {
        let ends = self.read_ends(both);
        let mut left = Vec::new();
        for (end, collection) in skipped_in {
            let Some(store) = ends.get(*end) else {
                continue;
            };
            let url = store.url().to_string();
            let files = store.corrupt_files(collection).await?;
            left.extend(files.into_iter().map(|file| (url.clone(), file)));
        }
        Ok(left)
    }

    /// How many corrupt record files the reads of each of
    /// [`read_ends`](Self::read_ends) skipped so far.
    fn skips(&self, both: bool) -> Vec<u64> {
        self.read_ends(both)
            .iter()
            .map(|store| store.corrupt_skipped())
            .collect()
    }

    /// The local ends whose change feeds a sync reads: SRC, and DST with
    /// `both` (a server's feed is its own business).
    fn read_ends(&self, both: bool) -> Vec<&Store> {
        match self {
            Ends::Local { src, dst } if both => vec![src, dst],
            Ends::Local { src, .. } => vec![src],
            #[cfg(feature = "http")]
            Ends::FromServer { dst, .. } if both => vec![dst],
            #[cfg(feature = "http")]
            Ends::FromServer { .. } => Vec::new(),
            #[cfg(feature = "http")]
            Ends::ToServer { src, .. } => vec![src],
        }
    }
}

/// The local store SRC names. A one-way sync only reads it, so there must
/// be one; with --both it is written as DST is, so, like DST, it may be new
/// (a new device's first two-way sync), created once there is something to
/// sync.
async fn source(url: StoreUrl, options: &EngineOptions, both: bool) -> Result<Destination> {
    if both {
        Destination::prepare(url, options).await
    } else {
        Ok(Destination::Existing(
            Store::open_existing(url, options).await?,
        ))
    }
}

/// The refusal of a sync of the store at `local` with itself, which
/// would merge every record into itself; `served` when the other end is a
/// sync server serving it.
fn same_store(local: &StoreUrl, served: bool) -> anyhow::Error {
    let how = if served {
        ", which the server serves"
    } else {
        ""
    };
    usage(format!("SRC and DST are the same store ({local}{how})"))
}

/// The collections to sync: those named, each held by SRC (or, with
/// --both, by either end); by default every collection of SRC (and DST).
/// DST's collections are only listed with --both.
async fn choose(
    named: &[CollectionName],
    both: bool,
    in_src: Vec<CollectionName>,
    in_dst: impl std::future::Future<Output = Result<Vec<CollectionName>>>,
    (src_url, dst_url): (&StoreUrl, &StoreUrl),
) -> Result<Vec<CollectionName>> {
    let in_dst = if both { in_dst.await? } else { Vec::new() };
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
                "neither {src_url} nor {dst_url} has a collection {:?} (SRC: {}; DST: {})",
                name.as_str(),
                listing(&in_src),
                listing(&in_dst)
            );
        }
        anyhow::bail!(
            "{src_url} has no collection {:?} ({})",
            name.as_str(),
            listing(&in_src)
        );
    }
    let mut named = named.to_vec();
    named.sort();
    named.dedup();
    Ok(named)
}

/// A peer whose pushes move a progress bar: records sent to a server show
/// no event on this side.
#[cfg(feature = "http")]
struct Counted<'a, P: SyncPeer> {
    peer: &'a P,
    bar: crate::progress::Bar,
}

#[cfg(feature = "http")]
impl<'a, P: SyncPeer> Counted<'a, P> {
    fn new(peer: &'a P, bar: &crate::progress::Bar) -> Self {
        Counted {
            peer,
            bar: bar.clone(),
        }
    }
}

#[cfg(feature = "http")]
#[async_trait::async_trait]
impl<P: SyncPeer> SyncPeer for Counted<'_, P> {
    fn peer_id(&self) -> &str {
        self.peer.peer_id()
    }

    async fn feed_id(&self) -> syncforge::Result<Option<String>> {
        self.peer.feed_id().await
    }

    async fn cursors_restarted(&self, collection: &CollectionName) {
        self.peer.cursors_restarted(collection).await;
    }

    async fn exchanges_begin(&self, collection: &CollectionName, feed_id: &str) {
        self.peer.exchanges_begin(collection, feed_id).await;
    }

    async fn pull(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: std::num::NonZeroUsize,
    ) -> syncforge::Result<syncforge::ChangePage> {
        self.peer.pull(collection, after, limit).await
    }

    async fn push(
        &self,
        collection: &CollectionName,
        records: Vec<syncforge::Record>,
    ) -> syncforge::Result<syncforge::PushOutcome> {
        let count = records.len() as u64;
        let outcome = self.peer.push(collection, records).await?;
        self.bar.advance(count);
        Ok(outcome)
    }
}

/// Ends `bar` as `report` says.
#[cfg(feature = "http")]
fn finished(
    bar: &crate::progress::Bar,
    report: syncforge::Result<PeerSyncReport>,
) -> Result<PeerSyncReport> {
    match report {
        Ok(report) => {
            bar.finish();
            Ok(report)
        }
        Err(error) => {
            bar.abandon();
            Err(error.into())
        }
    }
}

/// What a sync did to one collection, in each direction.
struct Summary {
    into_dst: Leg,
    /// With --both only.
    into_src: Option<Leg>,
}

/// What one direction of a sync did: records sent (when the sending end
/// counted them) and what merging them did (when the receiving end is
/// local and could tell).
struct Leg {
    sent: Option<usize>,
    counts: Option<Counts>,
    /// Records the receiving end would not take (larger than a server
    /// takes in one request); the sync went on past them.
    refused: Vec<RefusedRecord>,
}

impl Leg {
    /// Records pulled and merged by the engine that ran the sync.
    fn merged(report: &PeerSyncReport) -> Leg {
        Leg {
            sent: None,
            counts: Some(Counts::of(&report.pulled)),
            refused: Vec::new(),
        }
    }

    /// Records pushed to a server.
    #[cfg(feature = "http")]
    fn sent(count: usize, refused: Vec<RefusedRecord>) -> Leg {
        Leg {
            sent: Some(count),
            counts: None,
            refused,
        }
    }

    fn human(&self) -> String {
        let sent = match (self.sent, self.refused.len()) {
            (None, _) => None,
            (Some(sent), 0) => Some(format!("{sent} sent")),
            (Some(sent), refused) => Some(format!("{sent} sent, {refused} refused")),
        };
        match (sent, self.counts) {
            (Some(sent), Some(counts)) => format!("{sent}: {}", counts.human()),
            (Some(sent), None) => sent,
            (None, Some(counts)) => counts.human(),
            (None, None) => String::new(),
        }
    }

    fn json(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        if let Some(sent) = self.sent {
            fields.insert("sent".to_owned(), sent.into());
        }
        if let Some(counts) = self.counts {
            fields.extend(counts.json());
        }
        if !self.refused.is_empty() {
            let refused = self
                .refused
                .iter()
                .map(
                    |record| serde_json::json!({"id": record.id.as_str(), "reason": record.reason}),
                )
                .collect();
            fields.insert("refused".to_owned(), Value::Array(refused));
        }
        fields
    }
}

impl Summary {
    /// The records either direction's receiving end refused.
    fn refused(&self) -> impl Iterator<Item = &RefusedRecord> {
        self.into_dst
            .refused
            .iter()
            .chain(self.into_src.iter().flat_map(|leg| &leg.refused))
    }

    fn print(&self, collection: &CollectionName, cx: &mut Context) -> Result<()> {
        if cx.out.json() {
            let mut line = Map::new();
            line.insert("collection".to_owned(), collection.as_str().into());
            line.extend(self.into_dst.json());
            if let Some(into_src) = &self.into_src {
                line.insert("to_src".to_owned(), Value::Object(into_src.json()));
            }
            return cx.out.value(&Value::Object(line));
        }
        match &self.into_src {
            None => cx
                .out
                .line(&format!("{collection}: {}", self.into_dst.human())),
            Some(into_src) => cx.out.line(&format!(
                "{collection}: into DST {}; into SRC {}",
                self.into_dst.human(),
                into_src.human()
            )),
        }
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
