//! `ls`, `get`, `put` and `delete`: reading and writing single records.

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use syncforge::core::Content;
use syncforge::{CollectionName, Record, RecordId, StoreUrl};

use super::Context;
use crate::cli::{DeleteArgs, GetArgs, LsArgs, PutArgs};
use crate::failure::usage;
use crate::input;
use crate::reader::Reader;
use crate::store::{parse_collection, parse_id, parse_url, Store};

pub(crate) async fn ls(args: LsArgs, cx: &mut Context) -> Result<()> {
    let url = parse_url("STORE", &args.store)?;
    let collection = args
        .collection
        .as_deref()
        .map(parse_collection)
        .transpose()?;
    let store = Reader::open(url, cx).await?;
    match collection {
        None => {
            let names = store.collections().await?;
            if cx.out.json() {
                let names: Vec<&str> = names.iter().map(CollectionName::as_str).collect();
                cx.out.value(&json!(names))?;
            } else {
                for name in &names {
                    cx.out.line(name)?;
                }
            }
        }
        Some(name) => {
            store.require(&name).await?;
            let records = store.records(&name).await?;
            if cx.out.json() {
                let listed: Vec<Value> = records.iter().map(summary).collect();
                cx.out.value(&Value::Array(listed))?;
            } else {
                for record in &records {
                    if record.is_deleted() {
                        cx.out.line(&format!("{}  (deleted)", record.id()))?;
                    } else {
                        cx.out.line(record.id())?;
                    }
                }
            }
        }
    }
    store.close_whole().await
}

/// One record in `ls --json`.
fn summary(record: &Record) -> Value {
    json!({
        "id": record.id().as_str(),
        "deleted": record.is_deleted(),
        "version": record.version(),
        "timestamp": record.timestamp(),
        "client_id": record.client_id().as_str(),
    })
}

pub(crate) async fn get(args: GetArgs, cx: &mut Context) -> Result<()> {
    let url = parse_url("STORE", &args.store)?;
    let name = parse_collection(&args.collection)?;
    let id = parse_id(&args.id)?;
    let store = Reader::open(url, cx).await?;
    store.require(&name).await?;
    let record = store
        .get(&name, &id)
        .await?
        .ok_or_else(|| missing(store.url(), &name, &id))?;
    cx.out.record(&record)?;
    store.close().await
}

pub(crate) async fn put(args: PutArgs, cx: &mut Context) -> Result<()> {
    let url = local("put", parse_url("STORE", &args.store)?)?;
    let name = parse_collection(&args.collection)?;
    // The options are checked before the input is read (all of it, perhaps
    // typed at a terminal), and all of the input before the store is opened.
    cx.engine().check()?;
    let values = input::read(args.file.as_deref())?;
    let source = values.source.clone();
    let docs = values.convert(|value| Content::from_value(value.clone()).map(|_| value))?;
    if docs.is_empty() {
        anyhow::bail!("{source} holds no record to put");
    }
    let store = Store::open(url, &cx.engine()).await?;
    let collection = store.collection(&name)?;
    for (done, doc) in docs.iter().enumerate() {
        let record = collection.put(doc).await.with_context(|| {
            format!(
                "cannot put into collection {:?} of {} ({done} of the {} records were put)",
                name.as_str(),
                store.url(),
                docs.len()
            )
        })?;
        // The store holds what was put: whoever reads the error must know
        // how far the put went.
        cx.out.record(&record).with_context(|| {
            format!(
                "{} of the {} records were put before the output failed",
                done + 1,
                docs.len()
            )
        })?;
    }
    // What is still buffered goes out now: its failure is told with the
    // count, as a failure halfway is.
    cx.out.flush().with_context(|| {
        format!(
            "{0} of the {0} records were put before the output failed",
            docs.len()
        )
    })?;
    store.close().await
}

pub(crate) async fn delete(args: DeleteArgs, cx: &mut Context) -> Result<()> {
    let url = local("delete", parse_url("STORE", &args.store)?)?;
    let name = parse_collection(&args.collection)?;
    let id = parse_id(&args.id)?;
    let store = Store::open_existing(url, &cx.engine()).await?;
    let deleted = store
        .existing(&name)
        .await?
        .delete(id.clone())
        .await
        .with_context(|| format!("cannot delete record {:?}", id.as_str()))?;
    let record = deleted.ok_or_else(|| missing(store.url(), &name, &id))?;
    cx.out
        .record(&record)
        .and_then(|()| cx.out.flush())
        .with_context(|| {
            format!(
                "record {:?} was deleted before the output failed",
                id.as_str()
            )
        })?;
    store.close().await
}

/// `url`, when it names a local store: local writes are stamped by this
/// command's own engine, which a sync server does not run.
fn local(command: &str, url: StoreUrl) -> Result<StoreUrl> {
    if url.backend_config().is_none() {
        return Err(usage(format!(
            "{command} writes to a local store, and {url} is a {}: write to a local store \
             and `syncforge sync` it there",
            url.kind()
        )));
    }
    Ok(url)
}

fn missing(url: &StoreUrl, collection: &CollectionName, id: &RecordId) -> anyhow::Error {
    anyhow::anyhow!(
        "collection {:?} of {} has no record {:?}",
        collection.as_str(),
        url,
        id.as_str()
    )
}
