//! An `ObjectStore` wrapper for tests and benchmarks: counts requests, adds
//! latency, and makes a writer "die" after a chosen number of requests (every
//! later request fails, as if the process were gone; optionally the last one
//! takes effect but its answer is lost).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Keys per listing or bulk delete request on S3.
const LIST_PAGE: u64 = 1000;

/// The wrapper.
#[derive(Debug)]
pub(crate) struct Wrapped {
    inner: Arc<dyn ObjectStore>,
    latency: Duration,
    requests: Arc<AtomicU64>,
    /// Requests allowed before dying (u64::MAX: never).
    dies_after: AtomicU64,
    /// Whether the request that finds the writer dead still takes effect.
    last_lands: AtomicBool,
    /// Extra delay for puts whose key contains this text (a slow writer).
    slow_puts: parking_lot::Mutex<Option<(String, Duration)>>,
    /// Told when such a put begins its delay.
    slow_put_began: tokio::sync::Notify,
    /// Puts to keys this matches are sent twice, the caller told what the
    /// second send was answered.
    resent_puts: parking_lot::Mutex<Option<KeyMatch>>,
    /// Whether every put is made unconditionally, its condition ignored.
    ignoring_conditions: AtomicBool,
    /// Which updates-if-ETag are refused as if the ETag did not match.
    refused_updates: parking_lot::Mutex<Option<UpdateRefusal>>,
    /// Whether listings give bare the ETags that reads give in quotes.
    unquoting_listed_tags: AtomicBool,
    /// How deletes are refused, if they are.
    refused_deletes: parking_lot::Mutex<Option<DeleteRefusal>>,
    /// Creates of keys containing this text are refused without effect, as
    /// the mode says (with the keys refused so far).
    refused_creates:
        parking_lot::Mutex<Option<(String, std::collections::HashSet<Path>, Refusing)>>,
    /// Reads of keys containing this text, counted.
    counted_gets: parking_lot::Mutex<Option<(String, Arc<AtomicU64>)>>,
    /// The next listing leaves out keys ending with this text, as a listing
    /// made while the key was created may.
    hidden_once: parking_lot::Mutex<Option<String>>,
    /// The next read of a key ending with this text is held until let
    /// through.
    held_get: parking_lot::Mutex<Option<(String, Arc<HeldGet>)>>,
    /// The longest part of a key between two `/` read or written; longer
    /// ones are refused as MinIO refuses them (u64::MAX: no bound).
    longest_segment: AtomicU64,
}

/// A read [`Wrapped::hold_next_get`] holds: it says when it got there, and
/// goes on once let through.
#[derive(Debug, Default)]
pub(crate) struct HeldGet {
    arrived: tokio::sync::Notify,
    released: tokio::sync::Notify,
}

impl HeldGet {
    /// Waits until the read is held.
    pub(crate) async fn arrived(&self) {
        self.arrived.notified().await;
    }

    /// Lets the read go on.
    pub(crate) fn release(&self) {
        self.released.notify_one();
    }
}

/// Which updates-if-ETag [`Wrapped`] refuses.
#[derive(Debug)]
enum UpdateRefusal {
    /// Every one.
    Every,
    /// Of the updates to keys containing `key_part`, the one that brings
    /// `left` to 0.
    Nth { key_part: String, left: u64 },
}

impl UpdateRefusal {
    /// Whether the update of `key` is refused (counted when it is one of
    /// those counted).
    fn refuses(&mut self, key: &str) -> bool {
        match self {
            UpdateRefusal::Every => true,
            UpdateRefusal::Nth { key_part, left }
                if *left > 0 && key.contains(key_part.as_str()) =>
            {
                *left -= 1;
                *left == 0
            }
            UpdateRefusal::Nth { .. } => false,
        }
    }
}

/// How [`Wrapped`] answers deletes it refuses.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DeleteRefusal {
    /// Each key forbidden (`403`), as a store that deletes key by key says
    /// it to credentials without `DeleteObject`.
    Forbidden,
    /// Each key listed as `AccessDenied` in a bulk delete's `200` answer,
    /// as S3 says it to those credentials.
    AccessDeniedInBulk,
    /// Each key deleted, and listed as `NoSuchKey` in the bulk delete's
    /// answer, as some S3-compatible servers do for a key already gone.
    DeletedButNoSuchKey,
}

/// Which creates [`Wrapped`] refuses of the keys it was told.
#[derive(Debug, Clone, Copy)]
enum Refusing {
    /// The first create of each key.
    FirstOfEachKey,
    /// The first create of any of them, and no other.
    Once,
}

impl Wrapped {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Wrapped {
            inner,
            latency: Duration::ZERO,
            requests: Arc::new(AtomicU64::new(0)),
            dies_after: AtomicU64::new(u64::MAX),
            last_lands: AtomicBool::new(false),
            slow_puts: parking_lot::Mutex::new(None),
            slow_put_began: tokio::sync::Notify::new(),
            resent_puts: parking_lot::Mutex::new(None),
            refused_creates: parking_lot::Mutex::new(None),
            ignoring_conditions: AtomicBool::new(false),
            refused_updates: parking_lot::Mutex::new(None),
            unquoting_listed_tags: AtomicBool::new(false),
            refused_deletes: parking_lot::Mutex::new(None),
            counted_gets: parking_lot::Mutex::new(None),
            hidden_once: parking_lot::Mutex::new(None),
            held_get: parking_lot::Mutex::new(None),
            longest_segment: AtomicU64::new(u64::MAX),
        }
    }

    /// Refuses reads and writes of keys with a part between two `/` longer
    /// than `bytes`, answering as MinIO does (a 400 with its code).
    pub(crate) fn refusing_segments_over(self, bytes: u64) -> Self {
        self.longest_segment.store(bytes, Ordering::SeqCst);
        self
    }

    /// MinIO's refusal of `location`, when one of its parts is too long.
    fn too_long(&self, location: &Path) -> Result<()> {
        let longest = self.longest_segment.load(Ordering::SeqCst);
        if location
            .parts()
            .any(|part| part.as_ref().len() as u64 > longest)
        {
            return Err(object_store::Error::Generic {
                store: "S3",
                source: "Client error with status 400 Bad Request: <?xml version=\"1.0\" \
                         encoding=\"UTF-8\"?><Error><Code>KeyTooLongError</Code><Message>Your \
                         key is too long</Message></Error>"
                    .into(),
            });
        }
        Ok(())
    }

    /// Holds the next read of a key ending with `key_end` (before it is
    /// made) until the [`HeldGet`] returned lets it through.
    pub(crate) fn hold_next_get(&self, key_end: &str) -> Arc<HeldGet> {
        let held = Arc::new(HeldGet::default());
        *self.held_get.lock() = Some((key_end.to_owned(), Arc::clone(&held)));
        held
    }

    /// Leaves keys ending with `key_end` out of the next listing: a
    /// listing read in several calls (a directory, or a bucket a page at a
    /// time) while the key was created, which showed a later key.
    pub(crate) fn hide_from_next_listing(&self, key_end: &str) {
        *self.hidden_once.lock() = Some(key_end.to_owned());
    }

    /// Counts the reads of keys containing `key_part` into the counter it
    /// returns.
    pub(crate) fn counting_gets(self, key_part: &str) -> (Self, Arc<AtomicU64>) {
        let counter = Arc::new(AtomicU64::new(0));
        *self.counted_gets.lock() = Some((key_part.to_owned(), Arc::clone(&counter)));
        (self, counter)
    }

    /// Forbids every delete from now on, or lets them through again.
    pub(crate) fn set_denying_deletes(&self, denying: bool) {
        *self.refused_deletes.lock() = denying.then_some(DeleteRefusal::Forbidden);
    }

    /// Lists ETags bare where reads give them in quotes: a server that
    /// formats them differently in `ListObjectsV2` and in `GET`.
    pub(crate) fn unquoting_listed_tags(self) -> Self {
        self.unquoting_listed_tags.store(true, Ordering::SeqCst);
        self
    }

    /// Answers every delete as `how` says.
    pub(crate) fn refusing_deletes(self, how: DeleteRefusal) -> Self {
        *self.refused_deletes.lock() = Some(how);
        self
    }

    /// Makes every put unconditionally: a store that takes `If-None-Match`
    /// and `If-Match` and ignores them.
    pub(crate) fn ignoring_conditions(self) -> Self {
        self.ignoring_conditions.store(true, Ordering::SeqCst);
        self
    }

    /// Refuses every update-if-ETag (`If-Match`) as if the ETag did not
    /// match, writing nothing: a store that compares ETags in another form
    /// than it hands them out, or takes no `If-Match` at all.
    pub(crate) fn refusing_updates(self) -> Self {
        *self.refused_updates.lock() = Some(UpdateRefusal::Every);
        self
    }

    /// Refuses the `nth` update-if-ETag (from 1) of keys containing
    /// `key_part`, writing nothing, as S3's 409 to an update racing another
    /// request on the key.
    pub(crate) fn refusing_nth_update(self, key_part: &str, nth: u64) -> Self {
        *self.refused_updates.lock() = Some(UpdateRefusal::Nth {
            key_part: key_part.to_owned(),
            left: nth,
        });
        self
    }

    /// Refuses the first create-if-absent of each key containing
    /// `key_part` as if the key existed, writing nothing: S3's 409 to a
    /// create that raced another request on the key, which failed too.
    pub(crate) fn refusing_first_creates(self, key_part: &str) -> Self {
        *self.refused_creates.lock() = Some((
            key_part.to_owned(),
            Default::default(),
            Refusing::FirstOfEachKey,
        ));
        self
    }

    /// [`refusing_first_creates`](Self::refusing_first_creates), refusing
    /// only the first create of all those keys.
    pub(crate) fn refusing_one_create(self, key_part: &str) -> Self {
        *self.refused_creates.lock() =
            Some((key_part.to_owned(), Default::default(), Refusing::Once));
        self
    }

    /// Sends each put to a key ending with `key_end` twice and answers what
    /// the second send was answered: what a client does that retries a put
    /// whose first send landed but whose answer was lost (object_store
    /// retries a put after a 5xx, 429 or a cut response). A conditional put
    /// is then refused, although it took effect.
    pub(crate) fn resending_puts(self, key_end: &str) -> Self {
        *self.resent_puts.lock() = Some(KeyMatch::Ending(key_end.to_owned()));
        self
    }

    /// [`resending_puts`](Self::resending_puts) for keys containing
    /// `key_part`.
    pub(crate) fn resending_puts_containing(self, key_part: &str) -> Self {
        *self.resent_puts.lock() = Some(KeyMatch::Containing(key_part.to_owned()));
        self
    }

    /// [`resending_puts`](Self::resending_puts) for updates (`If-Match`)
    /// of keys containing `key_part`.
    pub(crate) fn resending_updates_containing(self, key_part: &str) -> Self {
        *self.resent_puts.lock() = Some(KeyMatch::UpdatesContaining(key_part.to_owned()));
        self
    }

    /// Sends every put once from now on.
    pub(crate) fn stop_resending(&self) {
        *self.resent_puts.lock() = None;
    }

    /// Every request waits this long first (the benches' 20 ms region).
    #[allow(dead_code)]
    pub(crate) fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Dies once `requests` requests were made: later ones fail; with
    /// `last_lands`, the first failing one takes effect before failing.
    pub(crate) fn dying_after(self, requests: u64, last_lands: bool) -> Self {
        self.dies_after.store(requests, Ordering::SeqCst);
        self.last_lands.store(last_lands, Ordering::SeqCst);
        self
    }

    /// Puts to keys containing `key_part` wait `delay` first.
    #[allow(dead_code)]
    pub(crate) fn slow_puts(self, key_part: &str, delay: Duration) -> Self {
        *self.slow_puts.lock() = Some((key_part.to_owned(), delay));
        self
    }

    /// Waits until a put made slow by [`slow_puts`](Self::slow_puts) has
    /// begun its delay (at once if one has since the last wait).
    #[allow(dead_code)]
    pub(crate) async fn slow_put_begun(&self) {
        self.slow_put_began.notified().await;
    }

    /// Requests made so far (a listing counts one per 1,000 keys, as on S3).
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// What happens to the next request: `Ok(true)` proceed, `Ok(false)`
    /// proceed but report failure, `Err` fail without effect.
    async fn enter(&self) -> Result<bool> {
        let number = self.requests.fetch_add(1, Ordering::SeqCst);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let limit = self.dies_after.load(Ordering::SeqCst);
        if number < limit {
            Ok(true)
        } else if number == limit && self.last_lands.load(Ordering::SeqCst) {
            Ok(false)
        } else {
            Err(dead())
        }
    }

    async fn around<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match self.enter().await? {
            true => call.await,
            false => {
                let _ = call.await;
                Err(dead())
            }
        }
    }

    fn counted_list(
        &self,
        stream: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let stream = match self.hidden_once.lock().take() {
            Some(hidden) => stream
                .try_filter(move |meta| {
                    futures::future::ready(!meta.location.as_ref().ends_with(hidden.as_str()))
                })
                .boxed(),
            None => stream,
        };
        let stream = if self.unquoting_listed_tags.load(Ordering::SeqCst) {
            stream
                .map_ok(|mut meta| {
                    meta.e_tag = meta.e_tag.map(|tag| tag.trim_matches('"').to_owned());
                    meta
                })
                .boxed()
        } else {
            stream
        };
        let number = self.requests.fetch_add(1, Ordering::SeqCst);
        if number >= self.dies_after.load(Ordering::SeqCst) {
            return futures::stream::once(async { Err(dead()) }).boxed();
        }
        // One request for the first page, one more per further 1,000 keys.
        let requests = Arc::clone(&self.requests);
        let mut keys = 0u64;
        let latency = self.latency;
        futures::stream::once(async move {
            tokio::time::sleep(latency).await;
            stream
        })
        .flatten()
        .inspect_ok(move |_| {
            keys += 1;
            if keys > 1 && keys % LIST_PAGE == 1 {
                requests.fetch_add(1, Ordering::SeqCst);
            }
        })
        .boxed()
    }
}

/// Which keys a [`Wrapped`] option applies to.
#[derive(Debug)]
enum KeyMatch {
    Ending(String),
    Containing(String),
    /// Updates only.
    UpdatesContaining(String),
}

impl KeyMatch {
    /// Whether a put to `key` (an update or not) matches.
    fn matches(&self, key: &str, update: bool) -> bool {
        match self {
            KeyMatch::Ending(end) => key.ends_with(end.as_str()),
            KeyMatch::Containing(part) => key.contains(part.as_str()),
            KeyMatch::UpdatesContaining(part) => update && key.contains(part.as_str()),
        }
    }
}

fn dead() -> object_store::Error {
    object_store::Error::Generic {
        store: "test wrapper",
        source: "the writer died: no more requests leave this process".into(),
    }
}

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wrapped({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Wrapped {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> Result<PutResult> {
        self.too_long(location)?;
        if self.ignoring_conditions.load(Ordering::SeqCst) {
            opts.mode = object_store::PutMode::Overwrite;
        }
        let refused = matches!(opts.mode, object_store::PutMode::Update(_))
            && self
                .refused_updates
                .lock()
                .as_mut()
                .is_some_and(|refusal| refusal.refuses(location.as_ref()));
        if refused {
            return Err(object_store::Error::Precondition {
                path: location.to_string(),
                source: "refused by the test wrapper".into(),
            });
        }
        let slow = self.slow_puts.lock().clone();
        if let Some((part, delay)) = slow {
            if location.as_ref().contains(&part) {
                self.slow_put_began.notify_one();
                tokio::time::sleep(delay).await;
            }
        }
        if let (object_store::PutMode::Create, Some((part, refused, mode))) =
            (&opts.mode, self.refused_creates.lock().as_mut())
        {
            let refuse = location.as_ref().contains(part.as_str())
                && match mode {
                    Refusing::FirstOfEachKey => refused.insert(location.clone()),
                    Refusing::Once => refused.is_empty() && refused.insert(location.clone()),
                };
            if refuse {
                self.requests.fetch_add(1, Ordering::SeqCst);
                return Err(object_store::Error::AlreadyExists {
                    path: location.to_string(),
                    source: "a create racing another request on the key (409)".into(),
                });
            }
        }
        let resent = self.resent_puts.lock().as_ref().is_some_and(|keys| {
            keys.matches(
                location.as_ref(),
                matches!(opts.mode, object_store::PutMode::Update(_)),
            )
        });
        if resent {
            let _lost = self
                .around(self.inner.put_opts(location, payload.clone(), opts.clone()))
                .await;
        }
        self.around(self.inner.put_opts(location, payload, opts))
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.around(self.inner.put_multipart_opts(location, opts))
            .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.too_long(location)?;
        if let Some((key_part, counter)) = &*self.counted_gets.lock() {
            if location.as_ref().contains(key_part.as_str()) {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
        let held = {
            let mut slot = self.held_get.lock();
            let matching = slot
                .as_ref()
                .is_some_and(|(end, _)| location.as_ref().ends_with(end.as_str()));
            if matching {
                slot.take().map(|(_, held)| held)
            } else {
                None
            }
        };
        if let Some(held) = held {
            held.arrived.notify_one();
            held.released.notified().await;
        }
        self.around(self.inner.get_opts(location, options)).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let number = self.requests.fetch_add(1, Ordering::SeqCst);
        if number >= self.dies_after.load(Ordering::SeqCst) {
            return futures::stream::once(async { Err(dead()) }).boxed();
        }
        let in_bulk = |key: Result<Path>, code: &str| {
            let key = key.map(|path| path.to_string()).unwrap_or_default();
            Err(object_store::Error::Generic {
                store: "S3",
                source: format!(
                    "DeleteObjects request failed for key {key}: Refused (code: {code})"
                )
                .into(),
            })
        };
        match *self.refused_deletes.lock() {
            None => {}
            Some(DeleteRefusal::Forbidden) => {
                return locations
                    .map(|location| {
                        Err(object_store::Error::PermissionDenied {
                            path: location.map(|path| path.to_string()).unwrap_or_default(),
                            source: "AccessDenied: not allowed to delete".into(),
                        })
                    })
                    .boxed();
            }
            Some(DeleteRefusal::AccessDeniedInBulk) => {
                return locations
                    .map(move |key| in_bulk(key, "AccessDenied"))
                    .boxed();
            }
            Some(DeleteRefusal::DeletedButNoSuchKey) => {
                return self
                    .inner
                    .delete_stream(locations)
                    .map(move |key| in_bulk(key, "NoSuchKey"))
                    .boxed();
            }
        }
        // One request for the first 1,000 keys, one more per further 1,000,
        // as S3's DeleteObjects.
        let requests = Arc::clone(&self.requests);
        let mut keys = 0u64;
        let counted = locations
            .inspect_ok(move |_| {
                keys += 1;
                if keys > 1 && keys % LIST_PAGE == 1 {
                    requests.fetch_add(1, Ordering::SeqCst);
                }
            })
            .boxed();
        let deleting = self.inner.delete_stream(counted);
        let latency = self.latency;
        futures::stream::once(async move {
            tokio::time::sleep(latency).await;
            deleting
        })
        .flatten()
        .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let stream = self.inner.list(prefix);
        self.counted_list(stream)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let stream = self.inner.list_with_offset(prefix, offset);
        self.counted_list(stream)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.around(self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.around(self.inner.copy_opts(from, to, options)).await
    }
}
