//! `export` and `import`: whole collections as JSON Lines, and the
//! TypeScript original's files.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde_json::Value;
use syncforge::core::DEFAULT_MAX_DRIFT;
use syncforge::{CollectionName, Error, Record, StoreUrl};

use super::{output_failed_after, Context, Counts};
use crate::cli::{ExportArgs, ImportArgs, MergeOptions};
use crate::input::{self, Values};
use crate::reader::Reader;
use crate::store::{parse_collection, parse_url, Store};

pub(crate) async fn export(args: ExportArgs, cx: &mut Context) -> Result<()> {
    let url = parse_url("STORE", &args.store)?;
    let name = parse_collection(&args.collection)?;
    let store = Reader::open(url, cx).await?;
    store.require(&name).await?;
    // Sorted by id, so that converged replicas export byte-identical files.
    let records = store.records(&name).await?;
    for record in &records {
        cx.out.line(&record.to_json_string())?;
    }
    store.close_whole().await
}

pub(crate) async fn import(args: ImportArgs, cx: &mut Context) -> Result<()> {
    let url = parse_url("STORE", &args.store)?;
    // Before the input is read: it may be long, and the command refused.
    let target = TargetKind::of(&url, args.merge, cx)?;
    // Everything is read and checked before the store is even opened.
    let inputs = match (&args.store_dir, &args.collection) {
        (Some(dir), _) => input::collection_dirs(dir)?
            .into_iter()
            .map(|(name, path)| {
                let name = CollectionName::new(name.as_str()).with_context(|| {
                    format!("the directory {} names no collection", path.display())
                })?;
                Ok((name, input::read(Some(&path))?))
            })
            .collect::<Result<Vec<_>>>()?,
        (None, Some(collection)) => vec![(
            parse_collection(collection)?,
            input::read(args.file.as_deref())?,
        )],
        (None, None) => anyhow::bail!("name a COLLECTION, or a --store-dir"),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    let batches = inputs
        .into_iter()
        .map(|(name, values)| Ok((name, records(values, now)?)))
        .collect::<Result<Vec<_>>>()?;
    if batches.iter().all(|(_, records)| records.is_empty()) {
        anyhow::bail!("the input holds no record to import");
    }

    let store = Target::open(url, target, cx).await?;
    store.check_sizes(&batches).await?;
    let all = batches.len();
    for (done, (name, records)) in batches.into_iter().enumerate() {
        let count = records.len();
        // Records repeating an id merge into one, with one outcome (per
        // request to a server, when the import takes several).
        let ids = records
            .iter()
            .map(Record::id)
            .collect::<std::collections::HashSet<_>>()
            .len();
        let counts = store.merge(cx, &name, records).await.with_context(|| {
            format!(
                "cannot import into collection {:?} of {}",
                name.as_str(),
                store.url()
            )
        })?;
        let printed = if cx.out.json() {
            let mut line = serde_json::Map::new();
            line.insert("collection".to_owned(), name.as_str().into());
            line.insert("records".to_owned(), count.into());
            line.insert("ids".to_owned(), ids.into());
            line.extend(counts.json());
            cx.out.value(&Value::Object(line))
        } else if ids < count {
            cx.out.line(&format!(
                "{name}: {count} records, {ids} distinct ids: {}",
                counts.human()
            ))
        } else {
            cx.out
                .line(&format!("{name}: {count} records: {}", counts.human()))
        };
        printed
            .and_then(|()| cx.out.flush())
            .with_context(|| output_failed_after("imported", done + 1, all, name.as_str()))?;
    }
    store.close().await
}

/// Where an import goes: a local store, or a sync server the records are
/// sent to.
enum Target {
    Local(Store),
    #[cfg(feature = "http")]
    Remote {
        remote: crate::remote::Remote,
        /// Records sent per request (`--batch-size`); `None`: as many as
        /// the server takes.
        per_request: Option<usize>,
    },
}

/// Where an import goes, with its options checked, before anything opens.
enum TargetKind {
    Local(MergeOptions),
    /// A sync server (nothing is sent before the input is read), sent
    /// `per_request` records a request (`None`: as many as it takes).
    #[cfg(feature = "http")]
    Remote {
        remote: crate::remote::Remote,
        per_request: Option<usize>,
    },
}

impl TargetKind {
    /// Checks every option the import's target takes (the token of a sync
    /// server, the client id of a local store) before the input is read.
    fn of(url: &StoreUrl, merge: MergeOptions, cx: &Context) -> Result<TargetKind> {
        #[cfg(feature = "http")]
        if url.server_url().is_some() {
            if merge.strategy.is_some() {
                return Err(crate::failure::usage(
                    "--strategy: a sync server merges what it is sent with its own strategy \
                     (syncforge serve --strategy)",
                ));
            }
            // In 1..=MAX_BATCH_SIZE: checked as the flag was read.
            return Ok(TargetKind::Remote {
                remote: crate::remote::Remote::connect(url.clone(), cx)?,
                per_request: merge.batch_size,
            });
        }
        #[cfg(not(feature = "http"))]
        let _ = url;
        cx.merging(merge).check()?;
        Ok(TargetKind::Local(merge))
    }
}

impl Target {
    async fn open(url: StoreUrl, kind: TargetKind, cx: &Context) -> Result<Target> {
        match kind {
            #[cfg(feature = "http")]
            TargetKind::Remote {
                remote,
                per_request,
            } => Ok(Target::Remote {
                remote,
                per_request,
            }),
            TargetKind::Local(merge) => {
                Ok(Target::Local(Store::open(url, &cx.merging(merge)).await?))
            }
        }
    }

    fn url(&self) -> &StoreUrl {
        match self {
            Target::Local(store) => store.url(),
            #[cfg(feature = "http")]
            Target::Remote { remote, .. } => remote.url(),
        }
    }

    /// Checks that a sync server takes every record of `batches` before
    /// any is sent: one it would refuse as too large fails the import with
    /// nothing written, where it failed the import half done.
    async fn check_sizes(&self, batches: &[(CollectionName, Vec<Record>)]) -> Result<()> {
        #[cfg(feature = "http")]
        if let Target::Remote { remote, .. } = self {
            for (name, records) in batches {
                remote.peer().check_sizes(records).await.with_context(|| {
                    format!(
                        "cannot import into collection {:?} of {}; nothing was imported",
                        name.as_str(),
                        remote.url()
                    )
                })?;
            }
        }
        #[cfg(not(feature = "http"))]
        let _ = batches;
        Ok(())
    }

    /// Merges `records` into collection `name`, with a progress bar.
    async fn merge(
        &self,
        cx: &Context,
        name: &CollectionName,
        records: Vec<Record>,
    ) -> Result<Counts> {
        match self {
            Target::Local(store) => {
                let bar = cx.progress.bar(name.as_str(), Some(records.len() as u64));
                let result = {
                    let _following = bar.follow(store.engine());
                    store.collection(name)?.sync(records).await
                };
                match result {
                    Ok(result) => {
                        bar.finish();
                        Ok(Counts::of(&result))
                    }
                    Err(error) => {
                        bar.abandon();
                        Err(error.into())
                    }
                }
            }
            #[cfg(feature = "http")]
            Target::Remote {
                remote,
                per_request,
            } => {
                let bar = cx.progress.bar(name.as_str(), Some(records.len() as u64));
                let per_request = per_request.unwrap_or(records.len()).max(1);
                let mut counts = Counts::default();
                let mut records = records.into_iter();
                loop {
                    let part: Vec<Record> = records.by_ref().take(per_request).collect();
                    if part.is_empty() {
                        break;
                    }
                    let sent = part.len() as u64;
                    match remote.push(name, part).await {
                        Ok(done) => counts.add(done),
                        Err(error) => {
                            bar.abandon();
                            return Err(error);
                        }
                    }
                    bar.advance(sent);
                }
                bar.finish();
                Ok(counts)
            }
        }
    }

    async fn close(self) -> Result<()> {
        match self {
            Target::Local(store) => store.close().await,
            #[cfg(feature = "http")]
            Target::Remote { .. } => Ok(()),
        }
    }
}

/// The records of one input, in canonical or TypeScript form. A record
/// stamped further ahead of this machine's clock than a sync accepts, or
/// counting more writes than a sync accepts, is a fault of its line too, so
/// that no collection of an import is written when another would be
/// refused.
fn records(values: Values, now: u64) -> Result<Vec<Record>> {
    let max_drift_ms = u64::try_from(DEFAULT_MAX_DRIFT.as_millis()).unwrap_or(u64::MAX);
    let records = values.convert(|value| {
        let record = Record::from_json(value)?;
        record.check_received_counts()?;
        let millis = record.newest_stamp().millis();
        if millis > now.saturating_add(max_drift_ms) {
            return Err(Error::ClockDrift {
                ids: vec![record.id().to_string()],
                ahead_ms: millis - now,
                max_drift_ms,
            });
        }
        Ok(record)
    })?;
    Ok(records)
}
