//! Fault injection: a backend wrapper that fails a chosen fraction of calls
//! and delays the others, deterministically from a seed, counts every call
//! by operation, and keeps the most calls that were under way at once.
//!
//! Injected failures are [`Error::Unavailable`] — transient, what a network
//! blip or an overloaded server gives — so the engine's retries see them as
//! real outages. A failed `put_batch` fails either before writing anything or
//! after writing everything (the client lost the answer, not the write): both
//! happen in reality, and the second is the one that tests whether a retry is
//! safe. A failed `insert_if_absent` fails the same two ways.
//!
//! Only the awaited calls are wrapped: the engine finds no `*_now` answer
//! here and awaits every call.
//!
//! A rival writer can also be put between a caller's read and its write
//! ([`FaultyBackend::rival_before_next_put_batch`]): what another process on
//! the same store does at the worst moment, on demand instead of by chance.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use syncforge_backend_memory::MemoryBackend;
//! use syncforge_testkit::faults::{FaultyBackend, Operation};
//!
//! // 20% of calls fail; the others wait up to 2 ms.
//! let store = FaultyBackend::new(Arc::new(MemoryBackend::new()), 42, 0.2, Duration::from_millis(2));
//! assert_eq!(store.calls(Operation::GetAll), 0);
//! ```

use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};
use syncforge_core::{
    ChangePage, CollectionName, Cursor, Error, IfAbsent, Record, RecordId, Result, Stamp,
    StorageBackend, Stored, Write, WriteOutcome,
};

/// The calls of the [`StorageBackend`] trait, for counting and for choosing
/// which of them may fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `get`.
    Get,
    /// `get_many`.
    GetMany,
    /// `get_all`.
    GetAll,
    /// `put_batch`, and `put` (which goes through it).
    PutBatch,
    /// `insert_if_absent`.
    InsertIfAbsent,
    /// `delete` (the hard delete).
    Delete,
    /// `changes`.
    Changes,
    /// `changes_since_timestamp`.
    ChangesSinceTimestamp,
    /// `list_collections`.
    ListCollections,
    /// `clear_collection`.
    ClearCollection,
    /// `newest_stamp`.
    NewestStamp,
    /// `get_meta`.
    GetMeta,
    /// `set_meta`.
    SetMeta,
    /// `set_meta_if_absent`.
    SetMetaIfAbsent,
    /// `close` (counted, never failed or delayed).
    Close,
}

const OPERATIONS: usize = 15;

impl Operation {
    fn index(self) -> usize {
        self as usize
    }
}

/// Another writer's calls on the wrapped store, made before a write of the
/// wrapper's caller reaches it.
type Rival =
    Box<dyn FnOnce(Arc<dyn StorageBackend>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// `rival` as a [`Rival`].
fn rival<F, Fut>(rival: F) -> Rival
where
    F: FnOnce(Arc<dyn StorageBackend>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Box::new(move |store| Box::pin(rival(store)))
}

/// What happens to one call.
enum Fate {
    Proceed { delay: Duration },
    FailBefore,
    FailAfter,
}

struct Dice {
    rng: fastrand::Rng,
    failure_rate: f64,
    max_delay: Duration,
    /// Operations that may fail; `None`: all but `close`.
    failing: Option<Vec<Operation>>,
}

/// A [`StorageBackend`] wrapper that injects transient failures and delays.
///
/// Deterministic: the same seed and the same sequence of calls give the same
/// failures and delays. (Calls racing on several tasks reach the dice in
/// whatever order they arrive.)
pub struct FaultyBackend {
    inner: Arc<dyn StorageBackend>,
    dice: Mutex<Dice>,
    calls: [AtomicU64; OPERATIONS],
    injected: AtomicU64,
    in_flight: AtomicU64,
    most_in_flight: AtomicU64,
    /// Whether each `insert_if_absent` that goes through is sent twice.
    resend_inserts: bool,
    /// What another writer does just before the next `put_batch`.
    rival: Mutex<Option<Rival>>,
    /// What another writer does after the next `put_batch` took effect,
    /// whose answer is then lost.
    rival_after_lost_answer: Mutex<Option<Rival>>,
    /// The same, after the next `insert_if_absent`.
    rival_after_lost_insert: Mutex<Option<Rival>>,
    /// Whether the next `insert_if_absent` builds its record and then fails
    /// without writing it.
    fail_next_insert_after_building: std::sync::atomic::AtomicBool,
    /// Whether `changes` answers pages that never advance.
    stalling_feed: bool,
}

impl fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dice = self.lock();
        f.debug_struct("FaultyBackend")
            .field("inner", &self.inner)
            .field("failure_rate", &dice.failure_rate)
            .field("max_delay", &dice.max_delay)
            .field("injected", &self.injected_failures())
            .finish_non_exhaustive()
    }
}

impl FaultyBackend {
    /// Wraps `inner`: each call fails with probability `failure_rate` (0 to
    /// 1) and otherwise waits a random time up to `max_delay` first.
    ///
    /// # Panics
    ///
    /// If `failure_rate` is not within 0 to 1.
    pub fn new(
        inner: Arc<dyn StorageBackend>,
        seed: u64,
        failure_rate: f64,
        max_delay: Duration,
    ) -> Self {
        check_rate(failure_rate);
        FaultyBackend {
            inner,
            dice: Mutex::new(Dice {
                rng: fastrand::Rng::with_seed(seed),
                failure_rate,
                max_delay,
                failing: None,
            }),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            injected: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            most_in_flight: AtomicU64::new(0),
            resend_inserts: false,
            rival: Mutex::new(None),
            rival_after_lost_answer: Mutex::new(None),
            rival_after_lost_insert: Mutex::new(None),
            fail_next_insert_after_building: std::sync::atomic::AtomicBool::new(false),
            stalling_feed: false,
        }
    }

    /// Has another writer act on the wrapped store just before the next
    /// `put_batch` (or `put`) reaches it: `rival` is given the wrapped store
    /// and awaited first, once. That is a writer on another connection
    /// acting between the caller's read of a record and its conditional
    /// write, so the write finds a state it did not read.
    pub fn rival_before_next_put_batch<F, Fut>(&self, rival: F)
    where
        F: FnOnce(Arc<dyn StorageBackend>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        *self.rival.lock() = Some(self::rival(rival));
    }

    /// Lets the next `put_batch` (or `put`) take effect, then has `rival`
    /// act on the wrapped store, then fails the call as transient with its
    /// answer lost: a writer that saw the caller's write and acted on it
    /// while the caller waits to try again.
    pub fn rival_after_next_lost_put_batch<F, Fut>(&self, rival: F)
    where
        F: FnOnce(Arc<dyn StorageBackend>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        *self.rival_after_lost_answer.lock() = Some(self::rival(rival));
    }

    /// [`rival_after_next_lost_put_batch`](Self::rival_after_next_lost_put_batch)
    /// for the next `insert_if_absent`.
    pub fn rival_after_next_lost_insert<F, Fut>(&self, rival: F)
    where
        F: FnOnce(Arc<dyn StorageBackend>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        *self.rival_after_lost_insert.lock() = Some(self::rival(rival));
    }

    /// Has the next `insert_if_absent` build its record (call `make`) and
    /// then fail as transient, writing nothing: a store that builds the
    /// record before it looks for the id (the Redis store sends it with
    /// the script), whose answer that the id is taken was lost.
    pub fn fail_next_insert_after_building(&self) {
        self.fail_next_insert_after_building
            .store(true, Ordering::SeqCst);
    }

    /// Limits failures to the given operations (the others are only
    /// delayed). `close` fails only when named here.
    pub fn failing_only(self, operations: &[Operation]) -> Self {
        self.lock().failing = Some(operations.to_vec());
        self
    }

    /// Sends every `insert_if_absent` that goes through twice, with the
    /// same record, and answers what the second call answered: what a client
    /// does that lost its connection before the answer came and sent the
    /// command again. (Counted as one call.) A first call that failed before
    /// its record was built is answered as it is: a client never resends a
    /// command it never built.
    pub fn resending_inserts(mut self) -> Self {
        self.resend_inserts = true;
        self
    }

    /// Answers every `changes` with an empty page that says more follow
    /// without moving past `after`: a store breaking the feed's contract,
    /// which a reader must refuse instead of asking again for ever.
    pub fn stalling_feed(mut self) -> Self {
        self.stalling_feed = true;
        self
    }

    /// Changes the failure rate from now on (0 to stop injecting).
    ///
    /// # Panics
    ///
    /// If `failure_rate` is not within 0 to 1.
    pub fn set_failure_rate(&self, failure_rate: f64) {
        check_rate(failure_rate);
        self.lock().failure_rate = failure_rate;
    }

    /// How many times `operation` was called on this wrapper (failed calls
    /// included).
    pub fn calls(&self, operation: Operation) -> u64 {
        self.calls[operation.index()].load(Ordering::SeqCst)
    }

    /// How many calls failed by injection.
    pub fn injected_failures(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// The most calls that were under way at once, on any tasks: a call is
    /// under way from when it is first polled until it returns (or is
    /// dropped), its injected delay included.
    pub fn most_in_flight(&self) -> u64 {
        self.most_in_flight.load(Ordering::SeqCst)
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn StorageBackend> {
        &self.inner
    }

    fn lock(&self) -> MutexGuard<'_, Dice> {
        self.dice.lock()
    }

    fn roll(&self, operation: Operation) -> Fate {
        self.calls[operation.index()].fetch_add(1, Ordering::SeqCst);
        let mut dice = self.lock();
        let named = dice.failing.as_ref().map(|ops| ops.contains(&operation));
        // Closing fails only when asked for by name: tests close their
        // stores whatever the failure rate.
        if operation == Operation::Close && named != Some(true) {
            return Fate::Proceed {
                delay: Duration::ZERO,
            };
        }
        let may_fail = named.unwrap_or(true);
        if may_fail && dice.rng.f64() < dice.failure_rate {
            self.injected.fetch_add(1, Ordering::SeqCst);
            let writes = matches!(operation, Operation::PutBatch | Operation::InsertIfAbsent);
            return if writes && dice.rng.bool() {
                Fate::FailAfter
            } else {
                Fate::FailBefore
            };
        }
        let max = u64::try_from(dice.max_delay.as_micros()).unwrap_or(u64::MAX);
        let delay = if max == 0 { 0 } else { dice.rng.u64(0..=max) };
        Fate::Proceed {
            delay: Duration::from_micros(delay),
        }
    }

    /// Lets `call` (a call of `operation`) take effect, then has `rival`
    /// act on the wrapped store, and gives the transient failure the caller
    /// gets in place of the call's answer.
    async fn lose_answer<T>(
        &self,
        operation: Operation,
        call: impl Future<Output = T>,
        rival: Rival,
    ) -> Error {
        self.calls[operation.index()].fetch_add(1, Ordering::SeqCst);
        self.injected.fetch_add(1, Ordering::SeqCst);
        let _lost = call.await;
        rival(Arc::clone(&self.inner)).await;
        injected(
            operation,
            "after the call took effect, and after another writer acted",
        )
    }

    /// Runs `call` unless the dice say fail; a failure "after" runs it and
    /// throws its answer away.
    async fn faulty<T, F>(&self, operation: Operation, call: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let _under_way = UnderWay(&self.in_flight);
        match self.roll(operation) {
            Fate::Proceed { delay } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                call.await
            }
            Fate::FailBefore => Err(injected(operation, "before the call")),
            Fate::FailAfter => {
                // The outcome is thrown away: the caller must not learn it.
                let _ = call.await;
                Err(injected(operation, "after the call took effect"))
            }
        }
    }
}

/// Counts a call as no longer under way when it ends, however it ends.
struct UnderWay<'a>(&'a AtomicU64);

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn check_rate(failure_rate: f64) {
    assert!(
        (0.0..=1.0).contains(&failure_rate),
        "failure rate {failure_rate} is not within 0 to 1"
    );
}

fn injected(operation: Operation, when: &str) -> Error {
    Error::unavailable(
        "faulty",
        format!("injected failure of {operation:?} {when}"),
    )
}

#[async_trait]
impl StorageBackend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<Stored>> {
        self.faulty(Operation::Get, self.inner.get(collection, id))
            .await
    }

    async fn get_many(
        &self,
        collection: &CollectionName,
        ids: &[RecordId],
    ) -> Result<Vec<Option<Stored>>> {
        self.faulty(Operation::GetMany, self.inner.get_many(collection, ids))
            .await
    }

    async fn get_all(&self, collection: &CollectionName) -> Result<Vec<Record>> {
        self.faulty(Operation::GetAll, self.inner.get_all(collection))
            .await
    }

    async fn put_batch(
        &self,
        collection: &CollectionName,
        writes: &[Write],
    ) -> Result<Vec<WriteOutcome>> {
        let rival = self.rival.lock().take();
        if let Some(rival) = rival {
            rival(Arc::clone(&self.inner)).await;
        }
        let after_lost = self.rival_after_lost_answer.lock().take();
        if let Some(rival) = after_lost {
            let call = self.inner.put_batch(collection, writes);
            return Err(self.lose_answer(Operation::PutBatch, call, rival).await);
        }
        self.faulty(
            Operation::PutBatch,
            self.inner.put_batch(collection, writes),
        )
        .await
    }

    async fn insert_if_absent(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        make: &mut (dyn FnMut() -> Result<Record> + Send),
    ) -> Option<Result<IfAbsent>> {
        if self
            .fail_next_insert_after_building
            .swap(false, Ordering::SeqCst)
        {
            self.calls[Operation::InsertIfAbsent.index()].fetch_add(1, Ordering::SeqCst);
            self.injected.fetch_add(1, Ordering::SeqCst);
            if let Err(error) = make() {
                return Some(Err(error));
            }
            return Some(Err(injected(
                Operation::InsertIfAbsent,
                "after building the record, with nothing written",
            )));
        }
        let after_lost = self.rival_after_lost_insert.lock().take();
        if let Some(rival) = after_lost {
            let call = self.inner.insert_if_absent(collection, id, make);
            return Some(Err(self
                .lose_answer(Operation::InsertIfAbsent, call, rival)
                .await));
        }
        // An injected failure stands for a store that tried the one step,
        // even in front of one that has none: the caller must take either.
        let answer = self
            .faulty(Operation::InsertIfAbsent, async {
                if !self.resend_inserts {
                    return Ok(self.inner.insert_if_absent(collection, id, make).await);
                }
                // The second call sends the record the first one built.
                let mut built: Option<Record> = None;
                let lost = {
                    let mut building = || {
                        let record = make()?;
                        built = Some(record.clone());
                        Ok(record)
                    };
                    self.inner
                        .insert_if_absent(collection, id, &mut building)
                        .await
                };
                // A command that failed before it was built is never sent
                // again: its `make` would be called a second time.
                if built.is_none() && matches!(lost, Some(Err(_))) {
                    return Ok(lost);
                }
                let mut resent = || match &built {
                    Some(record) => Ok(record.clone()),
                    None => make(),
                };
                Ok(self
                    .inner
                    .insert_if_absent(collection, id, &mut resent)
                    .await)
            })
            .await;
        answer.unwrap_or_else(|injected| Some(Err(injected)))
    }

    async fn delete(&self, collection: &CollectionName, id: &RecordId) -> Result<bool> {
        self.faulty(Operation::Delete, self.inner.delete(collection, id))
            .await
    }

    async fn changes(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        let page = self
            .faulty(
                Operation::Changes,
                self.inner.changes(collection, after, limit),
            )
            .await?;
        if self.stalling_feed {
            return Ok(ChangePage {
                changes: Vec::new(),
                next: after,
                more: true,
            });
        }
        Ok(page)
    }

    async fn changes_since_timestamp(
        &self,
        collection: &CollectionName,
        millis: u64,
    ) -> Result<Vec<Record>> {
        self.faulty(
            Operation::ChangesSinceTimestamp,
            self.inner.changes_since_timestamp(collection, millis),
        )
        .await
    }

    async fn list_collections(&self) -> Result<Vec<CollectionName>> {
        self.faulty(Operation::ListCollections, self.inner.list_collections())
            .await
    }

    async fn clear_collection(&self, collection: &CollectionName) -> Result<()> {
        self.faulty(
            Operation::ClearCollection,
            self.inner.clear_collection(collection),
        )
        .await
    }

    async fn newest_stamp(&self) -> Result<Option<Stamp>> {
        self.faulty(Operation::NewestStamp, self.inner.newest_stamp())
            .await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.faulty(Operation::GetMeta, self.inner.get_meta(key))
            .await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.faulty(Operation::SetMeta, self.inner.set_meta(key, value))
            .await
    }

    async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<String> {
        self.faulty(
            Operation::SetMetaIfAbsent,
            self.inner.set_meta_if_absent(key, value),
        )
        .await
    }

    async fn close(&self) -> Result<()> {
        self.faulty(Operation::Close, self.inner.close()).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use syncforge_backend_memory::MemoryBackend;

    async fn failures(seed: u64) -> Vec<bool> {
        let store = FaultyBackend::new(Arc::new(MemoryBackend::new()), seed, 0.3, Duration::ZERO);
        let mut out = Vec::new();
        for _ in 0..200 {
            out.push(store.get_meta("k").await.is_err());
        }
        out
    }

    #[tokio::test]
    async fn the_same_seed_fails_the_same_calls() {
        let a = failures(7).await;
        assert_eq!(a, failures(7).await);
        assert_ne!(a, failures(8).await);
        let failed = a.iter().filter(|f| **f).count();
        // 30% of 200, within a wide margin: the rate is honoured.
        assert!((30..=90).contains(&failed), "{failed} of 200 failed");
    }

    #[tokio::test]
    async fn failures_are_transient_and_counted() {
        let store = FaultyBackend::new(Arc::new(MemoryBackend::new()), 1, 1.0, Duration::ZERO);
        let err = store.list_collections().await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        assert_eq!(store.calls(Operation::ListCollections), 1);
        assert_eq!(store.injected_failures(), 1);
        store.set_failure_rate(0.0);
        store.list_collections().await.unwrap();
        assert_eq!(store.calls(Operation::ListCollections), 2);
        assert_eq!(store.injected_failures(), 1);
    }

    /// A resent insert whose `make` failed was sent again, calling `make`
    /// a second time: a client never resends a command it never built.
    #[tokio::test]
    async fn a_resent_insert_whose_make_failed_calls_it_once() {
        let store = FaultyBackend::new(Arc::new(MemoryBackend::new()), 5, 0.0, Duration::ZERO)
            .resending_inserts();
        let mut made = 0;
        let answer = store
            .insert_if_absent(
                &CollectionName::new("c").unwrap(),
                &RecordId::new("r").unwrap(),
                &mut || {
                    made += 1;
                    Err(Error::invalid_record(None, "made to fail"))
                },
            )
            .await;
        assert!(
            matches!(answer, Some(Err(Error::InvalidRecord { .. }))),
            "{answer:?}"
        );
        assert_eq!(made, 1);
    }

    #[tokio::test]
    async fn only_chosen_operations_fail() {
        let store = FaultyBackend::new(Arc::new(MemoryBackend::new()), 3, 1.0, Duration::ZERO)
            .failing_only(&[Operation::SetMeta]);
        assert!(store.get_meta("k").await.unwrap().is_none());
        assert!(store.set_meta("k", "v").await.is_err());
    }

    #[tokio::test]
    async fn a_failed_put_batch_may_have_written() {
        use syncforge_core::{ClientId, Content, Hlc};
        let memory = MemoryBackend::new();
        let store = FaultyBackend::new(Arc::new(memory.clone()), 11, 1.0, Duration::ZERO)
            .failing_only(&[Operation::PutBatch]);
        let mut clock = Hlc::new(ClientId::new("w").unwrap());
        let mut written_anyway = 0;
        let collection = CollectionName::new("c").unwrap();
        for i in 0..40 {
            let content = Content::from_value(serde_json::json!({"id": format!("r{i}")})).unwrap();
            let id = content.id().clone();
            let write = Write::create(Record::create(content, clock.now().unwrap()));
            assert!(store.put(&collection, &write).await.is_err());
            if memory.get(&collection, &id).await.unwrap().is_some() {
                written_anyway += 1;
            }
        }
        // Both kinds of failure happen.
        assert!(
            (1..40).contains(&written_anyway),
            "{written_anyway} of 40 failed writes took effect"
        );
    }
}
