//! What the checks share: the context, failure helpers and record builders.

use std::fmt::Debug;
use std::sync::Arc;

use serde_json::json;
use std::num::NonZeroUsize;

use syncforge_core::{
    ClientId, CollectionName, Content, Cursor, Error, Hlc, ManualTime, Record, RecordId,
    StorageBackend, Token, Write, WriteOutcome,
};

use crate::StoreFactory;

/// A check's result: `Err` carries the failure message, naming what was
/// expected and what the backend did.
pub type CheckResult<T = ()> = Result<T, String>;

/// Fails the check with a message unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Fails the check unless both sides are equal, showing both.
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {
        match (&$left, &$right) {
            (left, right) => {
                if left != right {
                    return Err(format!(
                        "{}\n  got:      {:?}\n  expected: {:?}",
                        format_args!($($msg)+),
                        left,
                        right
                    ));
                }
            }
        }
    };
}

pub(crate) use {ensure, ensure_eq};

/// What the checks of one run share: the store under test, how to open
/// more handles on it, and a run id that makes every name a check writes
/// unique to this run.
///
/// Made by [`Context::open`]; pass it to any function of
/// [`checks`](crate::checks). End a run with
/// [`checks::clear_run_collections`](crate::checks::clear_run_collections)
/// to leave a shared store (a Redis, a bucket) clean.
pub struct Context<'a> {
    pub(crate) factory: &'a dyn StoreFactory,
    pub(crate) store: Arc<dyn StorageBackend>,
    pub(crate) run: String,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("backend", &self.store.name())
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl<'a> Context<'a> {
    /// Opens a handle on the store with `factory` and picks a run id unique
    /// to this process and moment.
    pub async fn open(factory: &'a dyn StoreFactory) -> Context<'a> {
        Context {
            factory,
            store: factory.open().await,
            run: crate::unique_run_id(),
        }
    }

    /// The handle the checks use.
    pub fn store(&self) -> &Arc<dyn StorageBackend> {
        &self.store
    }

    /// The run id: a prefix of every collection name and metadata key the
    /// checks write.
    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// A collection name no other check or run uses.
    pub(crate) fn collection(&self, tag: &str) -> CollectionName {
        // The run id and the tags are short and printable: always valid.
        CollectionName::new(format!("{}-{tag}", self.run))
            .unwrap_or_else(|e| panic!("the suite built an invalid collection name: {e}"))
    }

    /// A clock on the system time for a client unique to this run.
    pub(crate) fn clock(&self, who: &str) -> CheckResult<Hlc> {
        Ok(Hlc::new(self.client(who)?))
    }

    /// A clock on a manual time (for records "arriving by sync" with old stamps).
    pub(crate) fn manual_clock(
        &self,
        who: &str,
        millis: u64,
    ) -> CheckResult<(Arc<ManualTime>, Hlc)> {
        let time = Arc::new(ManualTime::new(millis));
        let hlc = Hlc::with_time(self.client(who)?, time.clone());
        Ok((time, hlc))
    }

    fn client(&self, who: &str) -> CheckResult<ClientId> {
        ClientId::new(&format!("{}-{who}", self.run)).or_fail("building a client id")
    }
}

/// Turns a backend error into a check failure saying what was being done.
pub(crate) trait OrFail<T> {
    fn or_fail(self, what: &str) -> CheckResult<T>;
}

impl<T> OrFail<T> for syncforge_core::Result<T> {
    fn or_fail(self, what: &str) -> CheckResult<T> {
        self.map_err(|e| format!("{what}: unexpected error: {e}"))
    }
}

/// The content `{"id": id, "n": n}`.
pub(crate) fn content(id: &str, n: i64) -> CheckResult<Content> {
    Content::from_value(json!({"id": id, "n": n})).or_fail("building content")
}

/// A new record `{"id": id, "n": n}` stamped now.
pub(crate) fn record(hlc: &mut Hlc, id: &str, n: i64) -> CheckResult<Record> {
    let stamp = hlc.now().or_fail("stamping a record")?;
    Ok(Record::create(content(id, n)?, &stamp))
}

/// `base` with `n` set by a later local write, as the engine would produce it.
pub(crate) fn edited(hlc: &mut Hlc, base: &Record, n: i64) -> CheckResult<Record> {
    hlc.observe(base.newest_stamp())
        .or_fail("observing a record's stamp")?;
    let mut next = base.clone();
    let stamp = hlc.now().or_fail("stamping a put")?;
    next.apply_put(content(base.id(), n)?, &stamp)
        .or_fail("applying a put")?;
    Ok(next)
}

/// `base`, soft-deleted by a later local write.
pub(crate) fn soft_deleted(hlc: &mut Hlc, base: &Record) -> CheckResult<Record> {
    hlc.observe(base.newest_stamp())
        .or_fail("observing a record's stamp")?;
    let mut next = base.clone();
    let stamp = hlc.now().or_fail("stamping a delete")?;
    next.apply_delete(&stamp).or_fail("applying a delete")?;
    Ok(next)
}

/// The token and feed position of a write that must have happened.
pub(crate) fn written(outcome: &WriteOutcome, what: &str) -> CheckResult<(Token, Cursor)> {
    match outcome {
        WriteOutcome::Written { cursor, .. } if *cursor > Cursor::LARGEST => Err(format!(
            "{what}: answered cursor {cursor}, past {}, the largest a feed may hand out",
            Cursor::LARGEST
        )),
        WriteOutcome::Written { token, cursor } => Ok((token.clone(), *cursor)),
        WriteOutcome::Conflict => Err(format!(
            "{what}: expected the write to happen, got Conflict"
        )),
    }
}

/// Puts `write`, failing the check unless the backend answers and writes it.
pub(crate) async fn put_ok(
    store: &dyn StorageBackend,
    collection: &CollectionName,
    write: &Write,
    what: &str,
) -> CheckResult<(Token, Cursor)> {
    let outcome = store.put(collection, write).await.or_fail(what)?;
    written(&outcome, what)
}

/// Puts `write`, failing the check unless the backend refuses it as a
/// conflict.
pub(crate) async fn put_conflicts(
    store: &dyn StorageBackend,
    collection: &CollectionName,
    write: &Write,
    what: &str,
) -> CheckResult {
    let outcome = store.put(collection, write).await.or_fail(what)?;
    ensure_eq!(outcome, WriteOutcome::Conflict, "{what}");
    Ok(())
}

/// Fails the check unless `store` holds no record `id` in `collection`.
pub(crate) async fn ensure_absent(
    store: &dyn StorageBackend,
    collection: &CollectionName,
    id: &str,
    what: &str,
) -> CheckResult {
    let stored = store.get(collection, &rid(id)).await.or_fail("get")?;
    ensure!(stored.is_none(), "{what}: found {stored:?}");
    Ok(())
}

/// Fails the check unless the page of `collection`'s feed after `after`
/// holds nothing, says nothing follows, and keeps `after` as its `next`;
/// `where_` says where `after` lies ("after the end of the feed").
pub(crate) async fn ensure_nothing_after(
    store: &dyn StorageBackend,
    collection: &CollectionName,
    after: Cursor,
    where_: &str,
) -> CheckResult {
    let page = store
        .changes(collection, after, limit(10))
        .await
        .or_fail("changes")?;
    ensure!(
        page.changes.is_empty() && !page.more,
        "nothing lies {where_}"
    );
    ensure_eq!(
        page.next,
        after,
        "{where_}, next stays at the cursor asked for"
    );
    Ok(())
}

/// The `n` field of a record.
pub(crate) fn n_of(record: &Record) -> Option<i64> {
    record.get("n").as_ref().and_then(serde_json::Value::as_i64)
}

/// A record id from a literal.
pub(crate) fn rid(id: &str) -> RecordId {
    // Every id the checks spell out is valid; a bad one is a bug in the suite.
    RecordId::new(id).unwrap_or_else(|e| panic!("the suite spelled an invalid id: {e}"))
}

/// Record ids from literals.
pub(crate) fn rids(ids: &[&str]) -> Vec<RecordId> {
    ids.iter().map(|id| rid(id)).collect()
}

/// A page limit from a literal.
pub(crate) fn limit(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// Records sorted by id, for comparing unordered results.
pub(crate) fn sorted(mut records: Vec<Record>) -> Vec<Record> {
    records.sort_by(|a, b| a.id().cmp(b.id()));
    records
}

/// Fails unless `result` is [`Error::Closed`].
pub(crate) fn expect_closed<T: Debug>(
    result: syncforge_core::Result<T>,
    what: &str,
) -> CheckResult {
    match result {
        Err(Error::Closed { .. }) => Ok(()),
        other => Err(format!(
            "{what} on a closed handle: expected Error::Closed, got {other:?}"
        )),
    }
}

/// [`expect_closed`] for a call a store may decline, answering `None` and
/// doing nothing (the `_now` calls, `insert_if_absent`).
pub(crate) fn expect_closed_or_declined<T: Debug>(
    result: Option<syncforge_core::Result<T>>,
    what: &str,
) -> CheckResult {
    result.map_or(Ok(()), |result| expect_closed(result, what))
}

/// A long name cut for a failure message.
pub(crate) fn shortened(name: &str) -> String {
    let mut end = name.len().min(60);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    if end == name.len() {
        name.to_owned()
    } else {
        format!("{}... ({} bytes)", &name[..end], name.len())
    }
}
