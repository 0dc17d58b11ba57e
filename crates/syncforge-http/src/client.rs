//! [`HttpPeer`]: a sync server as a [`SyncPeer`], so that
//! `engine.sync_with(&peer, collection)` works across the network as it
//! does in process.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use syncforge_core::{
    Change, ChangePage, CollectionName, Cursor, Error, IntoName, PushOutcome, Record, RecordId,
    RefusedRecord, Result, SyncPeer,
};

use crate::parallel;
use crate::protocol::{
    bearer_token_fault, CollectionList, CursorRanges, ErrorBody, ErrorCode, Health, Limits,
    SyncResponse, MAX_SKIP_RANGES,
};

/// The backend name in this crate's errors.
const BACKEND: &str = "http";

/// Default whole-request timeout (a long poll adds its wait to it): longer
/// than a sync server's request timeout (30 s by default), so that a slow
/// request gets the server's answer (503 `timeout`: a page or push then
/// asked for or sent again in halves, anything else retried) rather than
/// being cut off by the client while the server still works on it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(40);
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of retries of a transient failure inside one call.
pub const DEFAULT_RETRIES: u32 = 2;
pub use syncforge_core::MAX_RETRIES;
/// How long an idle connection is kept for the next call: well below what
/// a sync server keeps one (its header-read timeout, 30 s by default), so
/// that a request is not sent on a connection the server is closing, and so
/// that a device between syncs does not hold one of the server's places.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most a push puts in one request, below a server's own bound when
/// that is larger: on a slow link a request must upload within the timeout.
/// A record larger than this still goes, alone, up to the server's bound.
const PUSH_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Most feed reads one [`HttpPeer::wait_for_changes`] makes while the server
/// answers pages with nothing to show but more to read.
const MAX_FOLLOWED_PAGES: usize = 64;

/// How often [`HttpPeer::wait_for_changes`] asks a server that holds no
/// request (`max_wait` 0) while its wait lasts.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What [`HttpPeer::wait_for_changes`] does with a page it read.
#[derive(Debug, PartialEq, Eq)]
enum AfterWait {
    /// Reads on from the page's `next`.
    Follow,
    /// Asks again from the same place after a pause.
    Poll,
    /// Hands the page to the caller.
    Answer,
}

/// Where a [`HttpPeer::wait_for_changes`] reads from, and how many pages
/// it followed.
struct Waiting {
    after: Cursor,
    followed: usize,
}

impl Waiting {
    /// What to do with `page`, read from `self.after`, when `may_poll` (the
    /// server holds no request and the wait has time left); a page followed
    /// moves `self.after` to its end.
    fn then(&mut self, page: &ChangePage, may_poll: bool) -> AfterWait {
        if !page.changes.is_empty() {
            return AfterWait::Answer;
        }
        // Nothing to show but more to read: the server passed over changes
        // this client holds. Asking again from the same place would get the
        // same answer at once, so the wait reads on, a few dozen pages at
        // most (counted apart from polls, which a quiet collection makes
        // many of).
        if page.more && page.next > self.after {
            if self.followed >= MAX_FOLLOWED_PAGES {
                return AfterWait::Answer;
            }
            self.followed += 1;
            self.after = page.next;
            return AfterWait::Follow;
        }
        if may_poll {
            AfterWait::Poll
        } else {
            AfterWait::Answer
        }
    }
}

/// Most bytes of `skip` in a feed request's URL (each comma encoded as
/// `%2C`): proxies refuse URLs past a few KiB (nginx: 8 KiB of header line).
const MAX_SKIP_QUERY_BYTES: usize = 4_000;

/// How long a request that a gateway answered 408 or 504 must have taken
/// (or half the timeout, when that is less) for the answer to mean a slow
/// link: a gateway that is restarting answers at once.
const LONG_FOR_A_GATEWAY: Duration = Duration::from_secs(1);

/// The most of an error answer's body read when it is not JSON: enough for
/// any message, and a proxy's large error page is neither buffered whole
/// nor taken for an answer too large (which would shrink pages, or fail a
/// push for good). A JSON error (the server's own, which can list every id
/// of a large batch) is read up to `max_response_bytes`.
const ERROR_BODY_BYTES: usize = 64 * 1024;

/// A size learnt from slow requests, a quarter larger (at least one more):
/// it grows back only while requests come well within the timeout.
fn grown(size: usize) -> usize {
    size.saturating_add((size / 4).max(1))
}

/// Whether a request that took `took` came quickly enough for the smaller
/// sizes learnt from slow ones to grow: within a quarter of `timeout`.
fn quick(took: Duration, timeout: Duration) -> bool {
    took < timeout / 4
}

/// Decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Feed ranges remembered per collection as echoes to skip; past this, the
/// newest are forgotten (they are only downloaded again, never lost).
const MAX_REMEMBERED_RANGES: usize = 4096;

/// Used until the server's health answer tells its own limits.
const FALLBACK_LIMITS: Limits = Limits {
    max_body_bytes: 16 * 1024 * 1024,
    max_records: 10_000,
    max_page: 10_000,
    max_wait_ms: 25_000,
};

/// A sync server reached over HTTP, as a [`SyncPeer`].
///
/// Pulls read the server's change feed after the cursor the engine keeps
/// for this peer; pushes send records to merge. The feed positions of what
/// a push stored exactly as sent (the server's echoes) are remembered and
/// left out of later pulls, so a client does not download its own writes.
/// Transient failures — connection refused or reset, timeouts, 502, 503,
/// 504 — are retried a few times inside, then reported as
/// [`Error::Unavailable`], which auto-sync rides out; a page of changes or a
/// push that ran out of time (the timeout, the server's `timeout`, or a 408
/// or 504 that came after a second or more) is instead asked for or sent
/// again in halves (see [`HttpPeerBuilder::timeout`]); 401, 403 and other
/// refusals are permanent errors carrying the server's message (a refused
/// record comes back as the same typed error a local engine gives).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> syncforge_core::Result<()> {
/// use std::time::Duration;
/// use syncforge_http::HttpPeer;
///
/// let server = HttpPeer::builder("https://sync.example.com")
///     .bearer_token("tablet-secret")
///     .timeout(Duration::from_secs(60))
///     .user_agent("field-app/2.1")
///     .build()?;
/// // engine.sync_with(&server, "inspections").await?;
/// # let _ = server;
/// # Ok(())
/// # }
/// ```
///
/// One `HttpPeer` serves one engine: the echoes it remembers are that
/// engine's writes, and it leaves them out of every pull made through it. An
/// engine that pulled through the peer of another would miss the other's
/// writes. A clone shares the connection pool and settings but starts with
/// an empty echo memory, so a clone may go to another engine.
#[derive(Debug)]
pub struct HttpPeer {
    inner: Arc<Inner>,
}

impl Clone for HttpPeer {
    fn clone(&self) -> Self {
        let inner = &self.inner;
        HttpPeer {
            inner: Arc::new(Inner {
                base: inner.base.clone(),
                peer_id: inner.peer_id.clone(),
                client: inner.client.clone(),
                token: inner.token.clone(),
                timeout: inner.timeout,
                retries: inner.retries,
                retry_delay: inner.retry_delay,
                max_response_bytes: inner.max_response_bytes,
                state: Mutex::new({
                    let state = inner.state.lock();
                    PeerState {
                        feed_id: None,
                        limits: state.limits,
                        push_bytes: state.push_bytes,
                        slow_push_bytes: state.slow_push_bytes,
                        push_records: state.push_records,
                        page_limits: state.page_limits.clone(),
                        echoes: HashMap::new(),
                        feeds: HashMap::new(),
                    }
                }),
            }),
        }
    }
}

struct Inner {
    base: Url,
    peer_id: String,
    client: reqwest::Client,
    token: Option<String>,
    timeout: Duration,
    retries: u32,
    retry_delay: Duration,
    max_response_bytes: usize,
    state: Mutex<PeerState>,
}

/// Every setting, the bearer token as `***`.
impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPeer")
            .field("base", &self.base.as_str())
            .field("peer_id", &self.peer_id)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("retry_delay", &self.retry_delay)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

/// What the peer learnt from the server.
#[derive(Debug, Default)]
struct PeerState {
    /// The server's feed id, as last seen.
    feed_id: Option<String>,
    /// The server's limits, once its health was read.
    limits: Option<Limits>,
    /// The most a push request may carry, once something in front of the
    /// server (a proxy) refused a larger one with 413.
    push_bytes: Option<usize>,
    /// The most a push request carries while the link is slow: a larger
    /// one did not go through in time. Grows back as requests go quickly.
    slow_push_bytes: Option<usize>,
    /// The most records a push request carries since the server refused
    /// more (its limits were lowered since they were read), until they are
    /// read again: the rest of that push is sent in parts it takes, where
    /// each part was refused and halved in its turn.
    push_records: Option<usize>,
    /// Per collection, the most changes a feed read asks for, once a
    /// longer page did not arrive in time or was larger than
    /// `max_response_bytes`.
    page_limits: HashMap<CollectionName, PageLimit>,
    /// Per collection, echo ranges (start -> end) still ahead of the pulls.
    echoes: HashMap<CollectionName, BTreeMap<u64, u64>>,
    /// Per collection, the feed id its exchanges are on: the one an
    /// engine's sync of it began with ([`SyncPeer::exchanges_begin`]), else
    /// that of the last page or push answer about it. Another collection's
    /// call seeing a new store first does not change it.
    feeds: HashMap<CollectionName, String>,
}

/// The most changes a feed read of a collection asks for, learnt from pages
/// that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageLimit {
    limit: NonZeroUsize,
    /// The limit asked for when the first page failed: growing back to it
    /// ends what was learnt.
    wanted: NonZeroUsize,
    /// Whether a page that failed was slow: the limit then grows back only
    /// with full pages that come quickly.
    slow: bool,
    /// Whether a page that failed was larger than `max_response_bytes`:
    /// the limit then grows back only with full pages of at most a quarter
    /// of that (the changes got smaller). Kept at its smaller size for
    /// good, one burst of large records had every later page of small ones
    /// ask for one change.
    large: bool,
}

impl PeerState {
    /// Takes note of the feed id of an answer: a new one voids every echo
    /// position. Returns whether it changed from one known before.
    fn follow_feed(&mut self, feed_id: &str) -> bool {
        if self.feed_id.as_deref() == Some(feed_id) {
            return false;
        }
        let changed = self.feed_id.is_some();
        self.echoes.clear();
        self.feed_id = Some(feed_id.to_owned());
        changed
    }

    /// Takes note of the feed id of an answer about `collection` (a page,
    /// a push): returns whether it changed, from the one known before (any
    /// call's) or from the one the collection's exchanges are on.
    fn follow_feed_of(&mut self, collection: &CollectionName, feed_id: &str) -> bool {
        let changed = self.follow_feed(feed_id);
        let moved = self
            .feeds
            .insert(collection.clone(), feed_id.to_owned())
            .is_some_and(|known| known != feed_id);
        changed || moved
    }

    fn remember_echoes(&mut self, collection: &CollectionName, echoes: &CursorRanges) {
        if echoes.is_empty() {
            return;
        }
        let ranges = self.echoes.entry(collection.clone()).or_default();
        for &[start, end] in echoes.ranges() {
            ranges.insert(start, end);
        }
        // Merge touching or overlapping ranges.
        let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
        let mut current: Option<(u64, u64)> = None;
        for (&start, &end) in ranges.iter() {
            current = match current {
                Some((s, e)) if start <= e.saturating_add(1) => Some((s, e.max(end))),
                Some((s, e)) => {
                    merged.insert(s, e);
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((s, e)) = current {
            merged.insert(s, e);
        }
        while merged.len() > MAX_REMEMBERED_RANGES {
            merged.pop_last();
        }
        *ranges = merged;
    }

    /// The echo ranges after `after` to send with a pull.
    fn skip_after(&self, collection: &CollectionName, after: Cursor) -> CursorRanges {
        let Some(ranges) = self.echoes.get(collection) else {
            return CursorRanges::default();
        };
        let after = after.get();
        let mut query_bytes = 0;
        let ranges: Vec<[u64; 2]> = ranges
            .iter()
            .filter(|&(_, &end)| end > after)
            .map(|(&start, &end)| [start.max(after.saturating_add(1)), end])
            .take(MAX_SKIP_RANGES)
            // A URL past a few KiB is refused by proxies (414): the ranges
            // left out are only downloaded again.
            .take_while(|&[start, end]| {
                query_bytes += digits(start) + if start == end { 0 } else { 1 + digits(end) } + 3;
                query_bytes <= MAX_SKIP_QUERY_BYTES
            })
            .collect();
        CursorRanges::new(ranges).unwrap_or_default()
    }

    /// The limit of a page of `collection` asked for with `limit`: no more
    /// than a shorter page that went through when a longer one did not.
    fn page_limit(&self, collection: &CollectionName, limit: NonZeroUsize) -> NonZeroUsize {
        self.page_limits
            .get(collection)
            .map_or(limit, |learnt| learnt.limit.min(limit))
    }

    /// A page of `limit` changes of `collection` did not come in time
    /// (`slow`) or was too large: later pages ask for no more than
    /// `limit / 2`. Returns that.
    fn halve_page_limit(
        &mut self,
        collection: &CollectionName,
        limit: NonZeroUsize,
        slow: bool,
    ) -> NonZeroUsize {
        let half = NonZeroUsize::new(limit.get() / 2).unwrap_or(NonZeroUsize::MIN);
        let known = self.page_limits.get(collection);
        let learnt = PageLimit {
            limit: self.page_limit(collection, half),
            wanted: known.map_or(limit, |known| known.wanted.max(limit)),
            slow: slow || known.is_some_and(|known| known.slow),
            large: !slow || known.is_some_and(|known| known.large),
        };
        self.page_limits.insert(collection.clone(), learnt);
        learnt.limit
    }

    /// A full page of `limit` changes of `collection` came, `quickly` if
    /// timed (a long poll's time is mostly its wait), and `small` (at most
    /// a quarter of `max_response_bytes`): a smaller limit learnt grows by a
    /// quarter when the page tells that what made it smaller has passed (a
    /// slow one's page came quickly, a large one's was small), and goes once
    /// it reaches the limit wanted when it was learnt. (A page that is not
    /// full, as the last of a sync, is quick and small whatever the link
    /// and the changes: it says nothing of a full one.)
    fn full_page_came(
        &mut self,
        collection: &CollectionName,
        limit: NonZeroUsize,
        quickly: Option<bool>,
        small: bool,
    ) {
        let Some(learnt) = self.page_limits.get_mut(collection) else {
            return;
        };
        let passed = (!learnt.slow || quickly == Some(true)) && (!learnt.large || small);
        if !passed || learnt.limit != limit {
            return;
        }
        let wanted = learnt.wanted;
        match NonZeroUsize::new(grown(limit.get())).filter(|&grown| grown < wanted) {
            Some(grown) => learnt.limit = grown,
            None => {
                self.page_limits.remove(collection);
            }
        }
    }

    /// `limit`, lowered to the largest page the server sends, once known.
    fn server_page_limit(&self, limit: NonZeroUsize) -> NonZeroUsize {
        self.limits
            .and_then(|limits| NonZeroUsize::new(limits.max_page))
            .map_or(limit, |max_page| max_page.min(limit))
    }

    /// The most a push request's records may take, as learnt from refused
    /// or slow ones.
    fn push_cap(&self) -> usize {
        self.push_bytes
            .unwrap_or(usize::MAX)
            .min(self.slow_push_bytes.unwrap_or(usize::MAX))
    }

    /// A push request of `bytes` went through `quickly`: a smaller request
    /// size learnt from slow pushes grows by a quarter when the request was
    /// near it, and goes once it reaches [`PUSH_REQUEST_BYTES`].
    fn push_went(&mut self, bytes: usize, quickly: bool) {
        let Some(cap) = self.slow_push_bytes else {
            return;
        };
        if quickly && bytes.saturating_mul(2) >= cap {
            let grown = grown(cap);
            self.slow_push_bytes = (grown < PUSH_REQUEST_BYTES).then_some(grown);
        }
    }

    /// Forgets echo ranges the pulls have passed.
    fn prune(&mut self, collection: &CollectionName, next: Cursor) {
        if let Some(ranges) = self.echoes.get_mut(collection) {
            ranges.retain(|_, end| *end > next.get());
            if ranges.is_empty() {
                self.echoes.remove(collection);
            }
        }
    }
}

/// Builds an [`HttpPeer`]: [`HttpPeer::builder`].
#[derive(Clone)]
#[must_use]
pub struct HttpPeerBuilder {
    base_url: String,
    peer_id: Option<String>,
    token: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    user_agent: String,
    retries: u32,
    retry_delay: Duration,
    max_response_bytes: usize,
    /// PEM bundles of certificate authorities trusted besides the system's.
    root_certificates: Vec<Vec<u8>>,
}

/// Every setting, the bearer token as `***`.
impl std::fmt::Debug for HttpPeerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPeerBuilder")
            .field("base_url", &shown_url(&self.base_url))
            .field("peer_id", &self.peer_id)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("user_agent", &self.user_agent)
            .field("retries", &self.retries)
            .field("retry_delay", &self.retry_delay)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("root_certificates", &self.root_certificates.len())
            .finish()
    }
}

/// Checks a sync server's base URL as [`HttpPeerBuilder::build`] does,
/// without building a peer: an `http://` or `https://` URL with a host,
/// no user or password, no query and no fragment. Fails with
/// [`Error::InvalidConfig`] for the option `base_url`, saying what is wrong.
pub fn check_base_url(base_url: &str) -> Result<()> {
    self::base_url(base_url).map(drop)
}

/// The base URL the peer's routes are appended to.
fn base_url(raw: &str) -> Result<Url> {
    let invalid = |reason: String| Error::InvalidConfig {
        option: "base_url",
        reason,
    };
    let shown = shown_url(raw);
    let mut base = Url::parse(raw).map_err(|error| invalid(format!("{shown}: {error}")))?;
    if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
        return Err(invalid(format!(
            "{shown} is not an http:// or https:// URL"
        )));
    }
    // The base URL names the peer (its default id, messages, logs), so
    // it must hold no secret: a server's token goes in `bearer_token`.
    if !base.username().is_empty() || base.password().is_some() {
        return Err(invalid(
            "must not name a user or password: give the server's token to bearer_token".to_owned(),
        ));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(invalid(format!(
            "{shown} must not have a query or fragment"
        )));
    }
    // Routes are appended to the base's path.
    if let Ok(mut segments) = base.path_segments_mut() {
        segments.pop_if_empty();
    }
    Ok(base)
}

/// A base URL as messages show it: hidden whole when it may carry a secret
/// (a user and password, or a token in a query or fragment), which the
/// builder refuses but must not print.
fn shown_url(url: &str) -> String {
    if url.contains('@') {
        "(a URL naming a user, not shown)".to_owned()
    } else if url.contains(['?', '#']) {
        "(a URL with a query or fragment, not shown)".to_owned()
    } else {
        format!("{url:?}")
    }
}

/// The largest answer a peer reads by default: far above a page of 10,000
/// records of a few KiB each.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 256 << 20;

/// The default wait before the first retry of a call (then four times
/// longer each time, up to 30 s).
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The longest wait between two attempts of a call, as the engine's own
/// retries wait at most.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Whether `error` is a TLS handshake that refused the server's
/// certificate (unknown authority, expired, another name), somewhere in its
/// chain of causes; an I/O error's own cause is looked into too, which its
/// `source` skips.
fn refused_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        if let Some(inner) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if refused_certificate(inner) {
                return true;
            }
        }
        cause = current.source();
    }
    false
}

/// The longest long poll asked of a server: its own bound is far below.
const LONGEST_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Waits the time a slow answer asked for (`Retry-After`, already bounded
/// by [`MAX_RETRY_DELAY`]) before a smaller request, if it asked.
async fn wait_as_asked(asked: Option<Duration>) {
    if let Some(asked) = asked {
        tokio::time::sleep(asked).await;
    }
}

/// The time a refusal asks to wait before trying again (`Retry-After` in
/// seconds, or as an HTTP date, as a proxy in front of the server may send
/// it: a date already past asks for no wait), up to [`MAX_RETRY_DELAY`].
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let asked = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(asked.min(MAX_RETRY_DELAY))
}

/// How long to wait before a retry: the back-off `delay`, or what the
/// server asked if longer, and up to half as much again at random, so that
/// clients refused together (a server restarting, at its bound of
/// connections) do not come back together.
fn retry_wait(delay: Duration, asked: Option<Duration>) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let wait = asked
        .map_or(delay, |asked| asked.max(delay))
        .min(MAX_RETRY_DELAY);
    // Randomly seeded per call: enough to spread clients, no generator needed.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let spread = u64::try_from(wait.as_nanos() / 2).unwrap_or(u64::MAX);
    wait + Duration::from_nanos(random.checked_rem(spread).unwrap_or(0))
}

/// The wait after `delay`: four times longer, up to [`MAX_RETRY_DELAY`].
fn next_retry_delay(delay: Duration) -> Duration {
    delay.saturating_mul(4).min(MAX_RETRY_DELAY)
}

impl HttpPeerBuilder {
    /// The peer id the engine keeps its cursors under (default: the base
    /// URL). Keep it stable for one server.
    pub fn peer_id(mut self, peer_id: impl Into<String>) -> Self {
        self.peer_id = Some(peer_id.into());
        self
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Longest time one request may take (default 40 s, longer than a sync
    /// server's request timeout); a long poll gets its wait on top. A push
    /// or a page of changes that takes longer (or is answered the server's
    /// `timeout`, or a 408 or 504 after a second or more, or half the
    /// timeout if that is less) is sent or asked for again in halves, and
    /// later ones through this peer are no larger until full pages (and
    /// pushes near the size learnt) come within a quarter of the timeout
    /// again, which lets them grow back a quarter at a time.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Longest time to establish a connection (default 5 s, and at most
    /// half the [`timeout`](Self::timeout)).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The `User-Agent` header (default `syncforge-http/VERSION`).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// The largest answer read from the server, decompressed (default
    /// 256 MiB). A page of changes is the largest answer: a larger page is
    /// asked for again with half as many changes, down to one (and later
    /// pages of that collection through this peer are no longer); any other
    /// larger answer, or a single change that large, fails the call with
    /// [`Error::PeerProtocol`].
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// Also trusts the certificate authorities of `pem` (one or more
    /// PEM-encoded certificates) for `https://` servers: a private CA, or
    /// roots a platform does not offer where the system's store is not
    /// found (Android and iOS, where setting `SSL_CERT_FILE` to a bundle
    /// shipped with the app does the same). Refused at
    /// [`build`](Self::build) if it holds no certificate. A server whose
    /// certificate the peer does not trust fails each call at once, with
    /// [`Error::Storage`] naming this option: it is not retried.
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates.push(pem.into());
        self
    }

    /// How many times a call retries a transient failure before reporting
    /// [`Error::Unavailable`] (default 2, at most 20, as the engine's own
    /// retries), and the first delay, which quadruples with each retry
    /// (default 100 ms) up to 30 s.
    pub fn retries(mut self, retries: u32, first_delay: Duration) -> Self {
        self.retries = retries;
        self.retry_delay = first_delay;
        self
    }

    /// The peer, or [`Error::InvalidConfig`] naming what is wrong.
    pub fn build(self) -> Result<HttpPeer> {
        let invalid =
            |option: &'static str, reason: String| Error::InvalidConfig { option, reason };
        let base = base_url(&self.base_url)?;
        if let Some(fault) = self.token.as_deref().and_then(bearer_token_fault) {
            return Err(invalid(
                "bearer_token",
                format!("{fault}: a token is a non-empty secret of visible ASCII characters"),
            ));
        }
        let peer_id = self
            .peer_id
            .unwrap_or_else(|| base.as_str().trim_end_matches('/').to_owned());
        syncforge_core::validate_id(&peer_id)
            .map_err(|error| invalid("peer_id", error.to_string()))?;
        for (option, timeout) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if timeout.is_zero() {
                return Err(invalid(option, "must be longer than zero".to_owned()));
            }
        }
        if self.retries > MAX_RETRIES {
            return Err(invalid(
                "retries",
                format!("{} is more than {MAX_RETRIES}", self.retries),
            ));
        }
        if self.max_response_bytes == 0 {
            return Err(invalid(
                "max_response_bytes",
                "must be at least 1: every answer would fail".to_owned(),
            ));
        }
        // Checked here, where reqwest would only say the client failed.
        if reqwest::header::HeaderValue::from_str(&self.user_agent).is_err() {
            return Err(invalid(
                "user_agent",
                "holds characters a header cannot carry".to_owned(),
            ));
        }
        let mut client = reqwest::Client::builder()
            .user_agent(self.user_agent)
            // At most half the timeout, so that a connection that cannot be
            // made fails as a connection failure, never as a slow answer
            // (which would make pages and pushes smaller).
            .connect_timeout(self.connect_timeout.min(self.timeout / 2))
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // A redirect followed would turn a push into a GET without its
            // body, and drop the token on a change of host or scheme: every
            // sync would then fail with a misleading refusal. It is
            // reported instead, naming where the server points.
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true);
        for pem in &self.root_certificates {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|error| invalid("root_certificates_pem", error.to_string()))?;
            if certificates.is_empty() {
                return Err(invalid(
                    "root_certificates_pem",
                    "holds no PEM certificate".to_owned(),
                ));
            }
            for certificate in certificates {
                client = client.add_root_certificate(certificate);
            }
        }
        let client = client
            .build()
            .map_err(|error| invalid("client", format!("cannot build the HTTP client: {error}")))?;
        Ok(HttpPeer {
            inner: Arc::new(Inner {
                base,
                peer_id,
                client,
                token: self.token,
                timeout: self.timeout,
                retries: self.retries,
                retry_delay: self.retry_delay,
                max_response_bytes: self.max_response_bytes,
                state: Mutex::new(PeerState::default()),
            }),
        })
    }
}

/// One request to make, possibly several times.
struct Call {
    method: Method,
    url: Url,
    body: Option<Bytes>,
    extra_time: Duration,
    /// Whether a smaller call could ask for the same: a slow answer is then
    /// handed back at once ([`Failure::Slow`]) instead of being asked for
    /// again as it is, which would time out the same way.
    shrinkable: bool,
}

impl Call {
    /// This request held for `wait` instead (a long poll's `wait` parameter
    /// set to it, or left out when zero), with its extra time to match.
    fn held_for(&self, wait: Duration) -> Call {
        let mut url = self.url.clone();
        let kept: Vec<(String, String)> = self
            .url
            .query_pairs()
            .filter(|(key, _)| key != "wait")
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        {
            let mut query = url.query_pairs_mut();
            query.clear().extend_pairs(kept);
            if !wait.is_zero() {
                query.append_pair("wait", &wait.as_millis().to_string());
            }
        }
        Call {
            method: self.method.clone(),
            url,
            body: self.body.clone(),
            extra_time: wait,
            shrinkable: self.shrinkable,
        }
    }
}

/// Why a push request is sent again in halves.
#[derive(Clone, Copy)]
enum Halved {
    /// Refused as too large by something in front of the server.
    Large,
    /// Not sent within the time allowed.
    Slow,
    /// Refused by the server for its count of records.
    Many,
}

/// How one attempt failed.
enum Failure {
    /// Worth trying again, not before the time the server asked for, if it
    /// asked (`Retry-After`).
    Transient(Error, Option<Duration>),
    /// Final.
    Permanent(Error),
    /// Final for this body: refused as too large (413).
    TooLarge(Error),
    /// Final for this body: refused by the server itself for holding more
    /// records than it takes in one request (413 `too_many_records`), so
    /// its limits are no longer those this peer read.
    TooMany(Error),
    /// Final: an answer larger than `max_response_bytes`. A shorter page
    /// may fit.
    AnswerTooLarge(Error),
    /// Not done within the time allowed: the client's timeout, the
    /// server's own 503 `timeout`, or a 408 or 504 that came after
    /// [`LONG_FOR_A_GATEWAY`] or half the client's timeout, whichever is
    /// less (one that comes at once, as from a gateway restarting, is no
    /// sign of a slow link, and is [`Failure::Transient`]). Worth trying
    /// again, smaller if the call can be.
    Slow(Error, Option<Duration>),
    /// Final for this URL: refused as too long (414, or 431 for its
    /// headers), by a proxy that takes shorter ones than the server.
    UrlTooLong(Error),
}

impl Failure {
    /// The error, however the attempt failed.
    fn into_error(self) -> Error {
        match self {
            Failure::Transient(error, _)
            | Failure::Permanent(error)
            | Failure::TooLarge(error)
            | Failure::TooMany(error)
            | Failure::AnswerTooLarge(error)
            | Failure::UrlTooLong(error)
            | Failure::Slow(error, _) => error,
        }
    }
}

impl HttpPeer {
    /// A peer for the server at `base_url` with the default settings.
    pub fn new(base_url: impl Into<String>) -> Result<HttpPeer> {
        HttpPeer::builder(base_url).build()
    }

    /// A builder for a peer at `base_url` (`http://host:port`, or with a
    /// path prefix where the router is nested: `https://host/sync`). The URL
    /// names the peer in cursors, events and logs, so it may not hold a user
    /// or password: a server's token goes to
    /// [`bearer_token`](HttpPeerBuilder::bearer_token).
    pub fn builder(base_url: impl Into<String>) -> HttpPeerBuilder {
        HttpPeerBuilder {
            base_url: base_url.into(),
            peer_id: None,
            token: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            user_agent: concat!("syncforge-http/", env!("CARGO_PKG_VERSION")).to_owned(),
            retries: DEFAULT_RETRIES,
            retry_delay: DEFAULT_RETRY_DELAY,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            root_certificates: Vec::new(),
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// The server's health: its feed id and limits. Also refreshes what this
    /// peer knows of them.
    pub async fn health(&self) -> Result<Health> {
        let health: Health = self
            .call(Call {
                method: Method::GET,
                url: self.url(&["health"]),
                body: None,
                extra_time: Duration::ZERO,
                shrinkable: false,
            })
            .await?;
        let mut state = self.inner.state.lock();
        state.follow_feed(&health.feed_id);
        state.limits = Some(health.limits);
        state.push_records = None;
        Ok(health)
    }

    /// The collections on the server this peer's token may read.
    pub async fn collections(&self) -> Result<Vec<CollectionName>> {
        let list: CollectionList = self
            .call(Call {
                method: Method::GET,
                url: self.url(&["collections"]),
                body: None,
                extra_time: Duration::ZERO,
                shrinkable: false,
            })
            .await?;
        self.inner.state.lock().follow_feed(&list.feed_id);
        list.collections
            .into_iter()
            .map(|name| {
                CollectionName::new(name).map_err(|error| self.protocol_error(error.to_string()))
            })
            .collect()
    }

    /// A long poll: the server's changes of `collection` after `after` (at
    /// most `limit`), waiting up to `wait` (bounded by the server's
    /// `max_wait`) for one to arrive if there is none yet. Returns as soon as
    /// a change lands; the page is empty when the wait ran out. This peer's
    /// own echoes are left out, as in [`pull`](SyncPeer::pull); pages the
    /// server answers with nothing but more to read are followed inside (a
    /// few dozen at most, then such a page is returned as it is). A server
    /// that holds no request (`max_wait` 0) is asked again every second
    /// until `wait` runs out, so that a loop of waits does not ask it
    /// without pause.
    ///
    /// Use it to sync as soon as another client writes: wait on the cursor
    /// the engine keeps for this peer (`engine.peer_cursors(peer_id,
    /// collection)`), then `sync_with`.
    pub async fn wait_for_changes(
        &self,
        collection: impl IntoName<CollectionName>,
        after: Cursor,
        limit: NonZeroUsize,
        wait: Duration,
    ) -> Result<ChangePage> {
        let collection = collection.into_name()?;
        // The server waits no longer than its own bound: asking for more
        // would only let a connection that died silently go unnoticed longer.
        // Asked for when not known: the fallback's wait would take a server
        // that holds no request for one that does, and ask it without pause.
        let limits = self.known_limits().await?;
        let max_wait = Duration::from_millis(limits.max_wait_ms);
        let polled = max_wait.is_zero();
        let waited = if polled { wait } else { wait.min(max_wait) };
        let deadline = tokio::time::Instant::now() + waited.min(LONGEST_WAIT);
        let mut waiting = Waiting { after, followed: 0 };
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // A server that holds no request answers at once: its requests
            // get the plain timeout, not the wait on top, which let a
            // connection that died silently hold the call for all of it.
            let held = if polled { Duration::ZERO } else { left };
            let page = self
                .read_feed(&collection, waiting.after, limit, held, Prune::No)
                .await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match waiting.then(&page, polled && !left.is_zero()) {
                AfterWait::Follow => {}
                AfterWait::Poll => tokio::time::sleep(left.min(POLL_INTERVAL)).await,
                AfterWait::Answer => return Ok(page),
            }
        }
    }

    /// Sends `records` to merge into the server's `collection`, in as many
    /// requests as the server's limits need, and returns the summed answer
    /// (`echoes` of the last request only).
    ///
    /// A record larger than the server takes in one request fails the
    /// push with [`Error::InvalidRecord`] before any request is sent (see
    /// [`check_sizes`](Self::check_sizes)), so that nothing of it is
    /// merged; this costs one more encoding of each record. Something in
    /// front of the server with a smaller bound is only found by sending:
    /// a record it refuses on its own fails the push with
    /// [`Error::InvalidRecord`] naming it then, when the records of the
    /// requests before it are merged already and those after it are not
    /// sent. Pushing them again is safe: merging is idempotent.
    ///
    /// Records pushed this way are not echoes to the engine this peer
    /// serves (they may not come from it): its next pull receives them like
    /// any other change. Only the engine's own pushes
    /// ([`SyncPeer::push`]) are left out of its pulls.
    pub async fn push_records(
        &self,
        collection: impl IntoName<CollectionName>,
        records: Vec<Record>,
    ) -> Result<SyncResponse> {
        let collection = collection.into_name()?;
        self.check_sizes(&records).await?;
        self.push_all(collection, records, Echoes::Forget, None)
            .await?
            .ok_or_else(|| self.protocol_error("no request was sent".to_owned()))
    }

    /// Checks, without sending them, that the server takes each of
    /// `records` in one request, asking it for its limits first when they
    /// are not known yet: [`Error::InvalidRecord`] names the first one it
    /// would refuse as too large. A caller pushing several batches checks
    /// them all first, to send none when one cannot go. The check knows
    /// the server's own bound; a proxy in front of it that takes less is
    /// learnt only when it refuses a request.
    pub async fn check_sizes(&self, records: &[Record]) -> Result<()> {
        let limits = self.known_limits().await?;
        let mut text = String::new();
        for record in records {
            text.clear();
            record.write_json(&mut text);
            if let Some(reason) = too_large(text.len(), &limits) {
                return Err(Error::invalid_record(Some(record.id().as_str()), reason));
            }
        }
        Ok(())
    }

    /// The server's limits, asked for when not known yet.
    async fn known_limits(&self) -> Result<Limits> {
        // The server's own limits, not a guess: a record larger than the
        // fallback bound may be one it takes, and a smaller count bound
        // refused as too large would be learnt as a byte bound for good.
        let known = self.inner.state.lock().limits;
        match known {
            Some(limits) => Ok(limits),
            None => {
                self.health().await?;
                Ok(self.inner.state.lock().limits.unwrap_or(FALLBACK_LIMITS))
            }
        }
    }

    /// [`push_records`](Self::push_records), remembering the positions the
    /// server gave the records as echoes when `echoes` says so. A record
    /// larger than the server takes in one request fails the push with
    /// [`Error::InvalidRecord`], or, given `refused`, is left out and
    /// named there. `None` when no request was needed: every record was
    /// refused.
    async fn push_all(
        &self,
        collection: CollectionName,
        records: Vec<Record>,
        echoes: Echoes,
        mut refused: Option<&mut Vec<RefusedRecord>>,
    ) -> Result<Option<SyncResponse>> {
        let limits = self.known_limits().await?;
        let push_cap = self.inner.state.lock().push_cap();
        let target = limits.max_body_bytes.min(PUSH_REQUEST_BYTES).min(push_cap);
        let mut total: Option<SyncResponse> = None;
        let mut body = RequestBody::new();
        let mut records = records.into_iter();
        let most_records = || {
            let learnt = self.inner.state.lock().push_records;
            learnt.map_or(limits.max_records, |most| most.min(limits.max_records))
        };
        let mut max_records = most_records();
        loop {
            // Encoded a window at a time, so that a huge push is never held
            // twice in memory.
            let window: Vec<Record> = records.by_ref().take(ENCODE_WINDOW).collect();
            if window.is_empty() {
                break;
            }
            for chunk in encode(window).await? {
                let mut start = 0;
                for (&end, id) in chunk.ends.iter().zip(&chunk.ids) {
                    let text = chunk.text.get(start..end).unwrap_or_default();
                    start = end;
                    if let Some(reason) = too_large(text.len(), &limits) {
                        refuse(&mut refused, id.clone(), reason)?;
                        continue;
                    }
                    let full = body.count() >= max_records
                        || (body.count() > 0 && body.len() + text.len() + 1 + ENVELOPE > target);
                    if full {
                        let (part, ends, ids) = body.finish();
                        let answer = self
                            .send_part(&collection, part, &ends, &ids, echoes, &mut refused)
                            .await?;
                        total = sum(total, answer);
                        max_records = most_records();
                    }
                    body.push(text.as_bytes(), id);
                }
            }
        }
        // A push of no records still makes its request, whose answer it
        // returns; one whose every record was left out makes none.
        let all_refused = refused.as_ref().is_some_and(|refused| !refused.is_empty());
        if body.count() > 0 || (total.is_none() && !all_refused) {
            let (part, ends, ids) = body.finish();
            let answer = self
                .send_part(&collection, part, &ends, &ids, echoes, &mut refused)
                .await?;
            total = sum(total, answer);
        }
        Ok(total)
    }

    /// Sends a sync request's body, whose records (`ids`) end at `ends`
    /// (offsets after the envelope's opening). A body refused as too large
    /// (413) by something in front of the server, which announced a larger
    /// bound, or one that did not go through in time (a slow link), is sent
    /// again in halves, down to single records, and later pushes send no
    /// more than what went through. One the server refuses for its count of
    /// records (its limits changed since they were read) is sent again in
    /// halves too, the rest of the push in parts of no more records than
    /// went through, and the limits are read again before the next push. A
    /// single record refused as too large is
    /// refused like one over the server's own bound: named in `refused`
    /// when given (`None` is answered, as for a part of no request), else
    /// [`Error::InvalidRecord`].
    async fn send_part(
        &self,
        collection: &CollectionName,
        body: Bytes,
        ends: &[usize],
        ids: &[RecordId],
        echoes: Echoes,
        refused: &mut Option<&mut Vec<RefusedRecord>>,
    ) -> Result<Option<SyncResponse>> {
        let divisible = ends.len() > 1;
        let records = body
            .get(RequestBody::OPEN.len()..body.len().saturating_sub(RequestBody::CLOSE.len()))
            .unwrap_or_default();
        // A part larger than what went through since it was made (the other
        // half of one refused or too slow) is split without trying it.
        let known_too_large = divisible && {
            let state = self.inner.state.lock();
            records.len() > state.push_cap()
                || state.push_records.is_some_and(|most| ends.len() > most)
        };
        if !known_too_large {
            let started = Instant::now();
            let (cause, halved, asked_wait) = match self
                .send_records(collection, body.clone(), ids.len(), echoes, divisible)
                .await
            {
                Ok(answer) => {
                    let quickly = quick(started.elapsed(), self.inner.timeout);
                    self.inner.state.lock().push_went(records.len(), quickly);
                    return Ok(Some(answer));
                }
                Err(Failure::TooLarge(error)) if divisible => (error, Halved::Large, None),
                Err(Failure::TooMany(error)) if divisible => (error, Halved::Many, None),
                // Something in front of the server takes less than this
                // record: sent again it would be refused again, and failing
                // the push on it would hold back every later change.
                Err(Failure::TooLarge(error)) => {
                    let Some(id) = ids.first().cloned() else {
                        return Err(error);
                    };
                    let reason = format!(
                        "is {} bytes of JSON, more than the server, or something in front of it, takes in one request: {error}",
                        records.len()
                    );
                    refuse(refused, id, reason)?;
                    return Ok(None);
                }
                Err(Failure::Slow(error, asked_wait)) if divisible => {
                    (error, Halved::Slow, asked_wait)
                }
                Err(failure) => return Err(failure.into_error()),
            };
            tracing::debug!(%cause, records = ends.len(), "a push was refused as too large or too many records, or was too slow; sending it in halves");
            {
                let mut state = self.inner.state.lock();
                let half = records.len() / 2;
                // A proxy's bound stays; a slow link's is only while it is
                // slow; the server's own count bound is asked for again
                // before the next push (a byte bound learnt from it would
                // stay for good).
                let learn = |learnt: &mut Option<usize>| {
                    *learnt = Some(learnt.map_or(half, |bytes| bytes.min(half)));
                };
                match halved {
                    Halved::Large => learn(&mut state.push_bytes),
                    Halved::Slow => learn(&mut state.slow_push_bytes),
                    Halved::Many => {
                        state.limits = None;
                        let fewer = ends.len() / 2;
                        state.push_records =
                            Some(state.push_records.map_or(fewer, |most| most.min(fewer)));
                    }
                }
            }
            wait_as_asked(asked_wait).await;
        }
        let middle = ends.len() / 2;
        let cut = ends.get(middle - 1).copied().unwrap_or_default();
        let first = RequestBody::wrap(records.get(..cut).unwrap_or_default());
        let second = RequestBody::wrap(records.get(cut + 1..).unwrap_or_default());
        let second_ends: Vec<usize> = ends
            .get(middle..)
            .unwrap_or_default()
            .iter()
            .map(|end| end.saturating_sub(cut + 1))
            .collect();
        let first = Box::pin(self.send_part(
            collection,
            first,
            ends.get(..middle).unwrap_or_default(),
            ids.get(..middle).unwrap_or_default(),
            echoes,
            refused,
        ))
        .await?;
        let second = Box::pin(self.send_part(
            collection,
            second,
            &second_ends,
            ids.get(middle..).unwrap_or_default(),
            echoes,
            refused,
        ))
        .await?;
        Ok(sum(first, second))
    }

    /// Sends a sync request's body of `records` records once (with the
    /// retries of transient failures; a slow one is handed back when the body
    /// is `divisible`).
    async fn send_records(
        &self,
        collection: &CollectionName,
        body: Bytes,
        records: usize,
        echoes: Echoes,
        divisible: bool,
    ) -> Result<SyncResponse, Failure> {
        let call = Call {
            method: Method::POST,
            url: self
                .collection_url(collection, "sync")
                .map_err(Failure::Permanent)?,
            body: Some(body),
            extra_time: Duration::ZERO,
            shrinkable: divisible,
        };
        let bytes = self.call_raw(&call).await?;
        let answer: SyncResponse = serde_json::from_slice(&bytes)
            .map_err(|error| Failure::Permanent(self.unexpected_body(&call.url, &error)))?;
        self.check_sync_answer(collection, records, &answer)
            .map_err(Failure::Permanent)?;
        let mut state = self.inner.state.lock();
        if state.follow_feed_of(collection, &answer.feed_id) {
            // Merged into another store than the one the sync began with:
            // the push must not count as the first one's, or the engine's
            // push cursor would pass records that store never got.
            return Err(Failure::Permanent(self.changed_stores(&answer.feed_id)));
        }
        if echoes == Echoes::Remember {
            state.remember_echoes(collection, &answer.echoes);
        }
        Ok(answer)
    }

    /// The error of an answer from a store (`feed_id`) other than the one
    /// the sync began with: transient, the next sync sees the new feed id
    /// and starts over.
    fn changed_stores(&self, feed_id: &str) -> Error {
        Error::unavailable(
            BACKEND,
            format!(
                "{} changed stores during the sync (feed {feed_id}); sync again",
                self.inner.base
            ),
        )
    }

    /// Refuses an answer to a push of `records` records to `collection`
    /// that cannot be one: the echoes it names are skipped by later pulls
    /// unread, so positions that are not this push's own writes would hide
    /// other replicas' changes for good, and one past every feed position
    /// would make every later pull refused.
    fn check_sync_answer(
        &self,
        collection: &CollectionName,
        records: usize,
        answer: &SyncResponse,
    ) -> Result<()> {
        self.check_collection("push", collection, &answer.collection)?;
        let echoed = answer.echoes.positions();
        if echoed > u64::try_from(records).unwrap_or(u64::MAX) {
            return Err(self.protocol_error(format!(
                "answered a push of {records} records with {echoed} echoed writes, more than one a record"
            )));
        }
        if let Some([_, end]) = answer.echoes.ranges().last() {
            if *end > Cursor::LARGEST.get() {
                return Err(self.protocol_error(format!(
                    "answered a push with echo position {end}, past {}, the largest any feed hands out",
                    Cursor::LARGEST
                )));
            }
        }
        Ok(())
    }

    /// Refuses an answer (`what` it is) naming another collection than the
    /// one asked for: a proxy or cache answering for the wrong URL.
    fn check_collection(&self, what: &str, asked: &CollectionName, answered: &str) -> Result<()> {
        if answered == asked.as_str() {
            return Ok(());
        }
        Err(self.protocol_error(format!(
            "answered a {what} for collection {:?} with collection {:?}",
            asked.as_str(),
            syncforge_core::shorten(answered)
        )))
    }

    async fn read_feed(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
        wait: Duration,
        prune: Prune,
    ) -> Result<ChangePage> {
        // A long poll's time is mostly its wait: whether it came in time
        // says nothing of the link, so only the size of its pages adapts.
        let timed = wait.is_zero();
        let (mut skip, mut limit) = {
            let state = self.inner.state.lock();
            (
                state.skip_after(collection, after),
                // No more than the server sends: halving a limit it lowers
                // anyway would ask for the same page again.
                state.page_limit(collection, state.server_page_limit(limit)),
            )
        };
        let (call, bytes, took) = loop {
            let mut url = self.collection_url(collection, "changes")?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("after", &after.to_string());
                query.append_pair("limit", &limit.to_string());
                if !wait.is_zero() {
                    query.append_pair("wait", &wait.as_millis().to_string());
                }
                if !skip.is_empty() {
                    query.append_pair("skip", &skip.to_string());
                }
            }
            let call = Call {
                method: Method::GET,
                url,
                body: None,
                extra_time: wait,
                shrinkable: timed && limit.get() > 1,
            };
            let started = Instant::now();
            // A page the link cannot bring in time, or larger than this peer
            // takes: asked for again, half as long. Asked for again as it
            // was, it would fail the same way, and the pull would never get
            // past it.
            let (error, slow, asked_wait) = match self.call_raw(&call).await {
                Ok(bytes) => break (call, bytes, started.elapsed()),
                Err(Failure::Slow(error, asked_wait)) if timed && limit.get() > 1 => {
                    (error, true, asked_wait)
                }
                Err(Failure::AnswerTooLarge(error)) if limit.get() > 1 => (error, false, None),
                // Leaving out echoes only saves downloading them again: a
                // URL too long for something in front of the server is
                // asked for without them, and they are let go, so that
                // every later pull does not fail the same way first.
                Err(Failure::UrlTooLong(error)) if !skip.is_empty() => {
                    tracing::debug!(%error, "a feed request with its skip list was refused as too long; asking without it");
                    self.inner.state.lock().echoes.remove(collection);
                    skip = CursorRanges::default();
                    continue;
                }
                Err(failure) => return Err(failure.into_error()),
            };
            limit = self
                .inner
                .state
                .lock()
                .halve_page_limit(collection, limit, slow);
            tracing::debug!(%error, slow, limit, "a feed page was too slow or too large; asking for fewer changes");
            wait_as_asked(asked_wait).await;
        };
        let page: RawPage<'_> = serde_json::from_slice(&bytes)
            .map_err(|error| self.unexpected_body(&call.url, &error))?;
        // Checked before anything is learnt from the page: an answer meant
        // for another request (a cache or proxy answering the wrong URL)
        // would otherwise switch this peer to its feed, forgetting every
        // collection's echoes, or grow the page limit.
        self.check_collection("change page", collection, &page.collection)?;
        if page.changes.len() > limit.get() {
            return Err(self.protocol_error(format!(
                "answered a change page of {} changes, asked for at most {limit}",
                page.changes.len()
            )));
        }
        // Checked before the echoes up to `next` are let go too: a page
        // refused leaves them for the pull that reads those positions again.
        ChangePage::check_cursors_after(
            after,
            page.changes.iter().map(|change| change.cursor),
            page.next,
            page.more,
        )
        .map_err(|reason| self.protocol_error(reason))?;
        {
            let mut state = self.inner.state.lock();
            if page.changes.len() == limit.get() {
                let quickly = timed.then(|| quick(took, self.inner.timeout));
                let small = bytes.len() <= self.inner.max_response_bytes / 4;
                state.full_page_came(collection, limit, quickly, small);
            }
            if state.follow_feed_of(collection, &page.feed_id) {
                // The server now runs on another store: `after` meant nothing
                // there. The next sync sees the new feed id and starts over.
                return Err(self.changed_stores(&page.feed_id));
            }
        }
        // Each record located in the body, to be read on every core.
        let base = bytes.as_ptr() as usize;
        let located: Vec<(Cursor, Range<usize>)> = page
            .changes
            .iter()
            .map(|change| {
                let text = change.record.get();
                let start = (text.as_ptr() as usize).wrapping_sub(base);
                (change.cursor, start..start.saturating_add(text.len()))
            })
            .collect();
        let (next, more) = (page.next, page.more);
        drop(page);
        let mut changes = Vec::with_capacity(located.len());
        let body = bytes.clone();
        let length = body.len();
        let chunks = parallel::in_chunks(
            located,
            |_| length,
            move |chunk, _| decode_changes(&body, chunk),
        )
        .await;
        for chunk in chunks {
            let chunk = chunk
                .map_err(|error| {
                    Error::storage(BACKEND, format!("a record decoding task failed: {error}"))
                })?
                .map_err(|error| self.unexpected_body(&call.url, &error))?;
            changes.extend(chunk);
        }
        if prune == Prune::Yes {
            self.inner.state.lock().prune(collection, next);
        }
        Ok(ChangePage {
            changes,
            next,
            more,
        })
    }

    /// The URL of a route of `collection`: `v1/collections/<name>/<route>`.
    ///
    /// The names `.` and `..` are refused: URLs treat those segments (and
    /// their percent-encoded forms) as "this" and "the parent" directory, so
    /// the request would reach another route and be refused there, as not
    /// found, at every try.
    fn collection_url(&self, collection: &CollectionName, route: &str) -> Result<Url> {
        let name = collection.as_str();
        if name == "." || name == ".." {
            return Err(Error::InvalidCollection {
                name: name.to_owned(),
                reason: "cannot be named in a URL path, so it cannot be synced over HTTP"
                    .to_owned(),
            });
        }
        Ok(self.url(&["collections", name, route]))
    }

    /// The URL of a route: the base, `v1`, then `segments`, each
    /// percent-encoded as one path segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v1").extend(segments);
        }
        url
    }

    /// Makes `call`, retrying transient failures, and reads the answer.
    async fn call<T: DeserializeOwned>(&self, call: Call) -> Result<T> {
        let bytes = self.call_bytes(&call).await?;
        serde_json::from_slice(&bytes).map_err(|error| self.unexpected_body(&call.url, &error))
    }

    /// Makes `call`, retrying transient failures: the body of its success.
    async fn call_bytes(&self, call: &Call) -> Result<Bytes> {
        self.call_raw(call).await.map_err(Failure::into_error)
    }

    /// [`call_bytes`](Self::call_bytes), telling how the last attempt failed.
    /// A held request (a long poll, `extra_time` past zero) is asked again
    /// for what is left of its wait (nothing, once it has run out): asked
    /// for its whole wait again, each retry waited it all again, past what
    /// its caller asked to wait.
    async fn call_raw(&self, call: &Call) -> Result<Bytes, Failure> {
        let mut delay = self.inner.retry_delay.min(MAX_RETRY_DELAY);
        let held_until = tokio::time::Instant::now() + call.extra_time;
        let mut again: Option<Call> = None;
        let mut attempt = 0;
        loop {
            let current = again.as_ref().unwrap_or(call);
            let (error, asked) = match self.attempt(current).await {
                Ok(answer) => return Ok(answer),
                Err(Failure::Slow(error, asked)) if !call.shrinkable => (error, asked),
                Err(Failure::Transient(error, asked)) => (error, asked),
                Err(failure) => return Err(failure),
            };
            if attempt >= self.inner.retries {
                return Err(Failure::Transient(error, asked));
            }
            tracing::debug!(%error, attempt, url = %call.url, "retrying a transient failure");
            tokio::time::sleep(retry_wait(delay, asked)).await;
            delay = next_retry_delay(delay);
            attempt += 1;
            if !call.extra_time.is_zero() {
                let left = held_until.saturating_duration_since(tokio::time::Instant::now());
                again = Some(call.held_for(left));
            }
        }
    }

    /// A success whose body is not what the route answers.
    fn unexpected_body(&self, url: &Url, error: &dyn std::fmt::Display) -> Error {
        self.protocol_error(format!(
            "answered {} with a body that is not the expected JSON: {error}",
            url.path()
        ))
    }

    async fn attempt(&self, call: &Call) -> Result<Bytes, Failure> {
        let allowed = self.inner.timeout.saturating_add(call.extra_time);
        let started = Instant::now();
        let mut request = self
            .inner
            .client
            .request(call.method.clone(), call.url.clone())
            .timeout(allowed);
        if let Some(token) = &self.inner.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &call.body {
            // A clone of `Bytes` shares the buffer: a retry copies nothing.
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.transport(error))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(Failure::Permanent(self.redirected(&response, &call.url)));
        }
        let asked = retry_after(response.headers());
        if !status.is_success() {
            let bytes = match self.error_body(response).await {
                Ok(bytes) => bytes,
                // What these mean does not depend on the body: a proxy that
                // refuses an upload often closes without sending its page
                // whole, and taking that for a lost answer retried the same
                // request instead of sending it in smaller parts.
                Err(cut) if decided_by_status(status) => {
                    format!("(its body could not be read: {})", cut.into_error()).into_bytes()
                }
                Err(failure) => return Err(failure),
            };
            let took_long = started.elapsed() >= (allowed / 2).min(LONG_FOR_A_GATEWAY);
            return Err(self.refusal(status, &bytes, &call.url, asked, took_long));
        }
        self.body(response, &call.url).await
    }

    /// A redirect, as the error that says where the server points.
    fn redirected(&self, response: &reqwest::Response, url: &Url) -> Error {
        let status = response.status();
        let target = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|location| location.to_str().ok())
            .and_then(|location| url.join(location).ok())
            .map_or_else(
                || "no location".to_owned(),
                |target| shown_url(target.as_str()),
            );
        Error::storage(
            BACKEND,
            format!(
                "{} answered {status} to {}, pointing to {target}: redirects are not \
                 followed; give the base URL that reaches the server itself",
                self.inner.base,
                url.path()
            ),
        )
    }

    /// The start of an error answer's body (see [`ERROR_BODY_BYTES`]).
    async fn error_body(&self, response: reqwest::Response) -> Result<Vec<u8>, Failure> {
        let json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|kind| kind.to_str().ok())
            .is_some_and(|kind| kind.starts_with("application/json"));
        let most = if json {
            self.inner.max_response_bytes
        } else {
            ERROR_BODY_BYTES.min(self.inner.max_response_bytes)
        };
        let (body, _) = self.read_at_most(response, most).await?;
        Ok(body)
    }

    /// The answer's body, decompressed, up to `most` bytes, and whether
    /// more followed (not read).
    async fn read_at_most(
        &self,
        mut response: reqwest::Response,
        most: usize,
    ) -> Result<(Vec<u8>, bool), Failure> {
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| self.transport(error))?
        {
            let room = most - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                return Ok((body, true));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, false))
    }

    /// The answer's body, decompressed, read up to the peer's bound: a
    /// server's answer is the server's word, and a small compressed body
    /// can stand for gigabytes.
    async fn body(&self, response: reqwest::Response, url: &Url) -> Result<Bytes, Failure> {
        let max = self.inner.max_response_bytes;
        let (body, more) = self.read_at_most(response, max).await?;
        if more {
            return Err(Failure::AnswerTooLarge(self.protocol_error(format!(
                "answered {} with more than max_response_bytes ({max} bytes)",
                url.path()
            ))));
        }
        Ok(Bytes::from(body))
    }

    /// A failure to exchange a request at all.
    fn transport(&self, error: reqwest::Error) -> Failure {
        if refused_certificate(&error) {
            // Not going away by itself: retrying would only hide it.
            return Failure::Permanent(Error::storage_caused(
                BACKEND,
                format!(
                    "{} presented a certificate this client does not trust: give its \
                     authority with root_certificates_pem, or fix the server's certificate",
                    self.inner.base
                ),
                error,
            ));
        }
        if error.is_timeout() && !error.is_connect() {
            // Connected, but the answer did not come in time: a smaller one
            // may.
            return Failure::Slow(Error::unavailable(BACKEND, error), None);
        }
        if error.is_builder() || error.is_redirect() {
            Failure::Permanent(Error::storage_caused(
                BACKEND,
                format!("cannot call {}", self.inner.base),
                error,
            ))
        } else {
            // Refused, reset, timed out, cut off mid-answer: the server may
            // be back later.
            Failure::Transient(Error::unavailable(BACKEND, error), None)
        }
    }

    /// An error answer, as the matching syncforge error; `asked`, the wait
    /// its `Retry-After` asked for, goes with a transient one.
    /// `took_long`: whether the request took long enough (see
    /// [`LONG_FOR_A_GATEWAY`]) for a 408 or 504 to mean a slow link.
    fn refusal(
        &self,
        status: StatusCode,
        bytes: &[u8],
        url: &Url,
        asked: Option<Duration>,
        took_long: bool,
    ) -> Failure {
        let detail = serde_json::from_slice::<ErrorBody>(bytes)
            .ok()
            .map(|body| body.error);
        let message = detail.as_ref().map_or_else(
            || String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            |detail| detail.message.clone(),
        );
        let described = format!(
            "{} answered {status} to {}: {message}",
            self.inner.base,
            url.path()
        );
        // The server's own word that the request took too long; a 408 or
        // 504 from something in front of it only when the request did take
        // long (a gateway restarting answers 504 at once).
        let server_timed_out = status == StatusCode::SERVICE_UNAVAILABLE
            && detail
                .as_ref()
                .is_some_and(|detail| detail.code == ErrorCode::Timeout);
        let timed_out = matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT
        );
        if server_timed_out || (timed_out && took_long) {
            return Failure::Slow(Error::unavailable(BACKEND, described), asked);
        }
        let transient = timed_out
            || matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
            );
        if transient {
            return Failure::Transient(Error::unavailable(BACKEND, described), asked);
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            let error = Error::storage(BACKEND, described);
            let too_many = detail
                .as_ref()
                .is_some_and(|detail| detail.code == ErrorCode::TooManyRecords);
            return if too_many {
                Failure::TooMany(error)
            } else {
                Failure::TooLarge(error)
            };
        }
        if matches!(
            status,
            StatusCode::URI_TOO_LONG | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ) {
            return Failure::UrlTooLong(Error::storage(BACKEND, described));
        }
        let Some(detail) = detail else {
            return Failure::Permanent(Error::storage(BACKEND, described));
        };
        let error = match detail.code {
            ErrorCode::ClockDrift if !detail.ids.is_empty() => Error::ClockDrift {
                ids: detail.ids,
                ahead_ms: detail.ahead_ms.unwrap_or(0),
                max_drift_ms: detail.max_drift_ms.unwrap_or(0),
            },
            // One stamp ahead, not a batch's records: as a local engine
            // refuses it.
            ErrorCode::ClockDrift if detail.stamp.is_some() => Error::StampAhead {
                stamp: detail.stamp.unwrap_or_default(),
                ahead_ms: detail.ahead_ms.unwrap_or(0),
                max_drift_ms: detail.max_drift_ms.unwrap_or(0),
            },
            ErrorCode::InvalidStamp => Error::InvalidStamp {
                stamp: detail.stamp.unwrap_or_default(),
                reason: detail.reason.unwrap_or(message),
            },
            ErrorCode::InvalidRecord => Error::InvalidRecord {
                id: detail.id,
                field: detail.field,
                reason: detail.reason.unwrap_or(message),
            },
            ErrorCode::InvalidId => Error::InvalidId {
                id: detail.id.unwrap_or_default(),
                reason: detail.reason.unwrap_or(message),
            },
            _ => Error::storage(BACKEND, described),
        };
        Failure::Permanent(error)
    }

    fn protocol_error(&self, reason: String) -> Error {
        Error::PeerProtocol {
            peer: self.inner.peer_id.clone(),
            reason,
        }
    }
}

/// Whether a push's records are echoes to the engine this peer serves:
/// those its own sync pushed, which its pulls need not download again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Echoes {
    Remember,
    Forget,
}

/// Whether a feed read forgets the echoes it passed. Only pulls do: a long
/// poll runs ahead of the engine's cursor, and the pull after it still
/// needs the echoes between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prune {
    Yes,
    No,
}

/// Whether an error answer with `status` means the same whatever its body
/// says: a request too large, or a URL too long.
fn decided_by_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::URI_TOO_LONG
            | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    )
}

/// `{"records":[` ... `]}` around the records and their commas.
const ENVELOPE: usize = RequestBody::OPEN.len() + RequestBody::CLOSE.len();
/// Records encoded at a time by a push.
const ENCODE_WINDOW: usize = 4096;

/// The body of a sync request being filled.
struct RequestBody {
    text: Vec<u8>,
    /// Where each record ends, after [`OPEN`](Self::OPEN): one a record.
    ends: Vec<usize>,
    /// Each record's id, in the same order.
    ids: Vec<RecordId>,
}

impl RequestBody {
    const OPEN: &'static [u8] = b"{\"records\":[";
    const CLOSE: &'static [u8] = b"]}";

    fn new() -> Self {
        RequestBody {
            text: Self::OPEN.to_vec(),
            ends: Vec::new(),
            ids: Vec::new(),
        }
    }

    /// A body of `records`, already joined by commas.
    fn wrap(records: &[u8]) -> Bytes {
        let mut text = Vec::with_capacity(Self::OPEN.len() + records.len() + Self::CLOSE.len());
        text.extend_from_slice(Self::OPEN);
        text.extend_from_slice(records);
        text.extend_from_slice(Self::CLOSE);
        Bytes::from(text)
    }

    /// Records so far.
    fn count(&self) -> usize {
        self.ends.len()
    }

    /// Bytes so far, without the envelope.
    fn len(&self) -> usize {
        self.text.len() - Self::OPEN.len()
    }

    fn push(&mut self, record: &[u8], id: &RecordId) {
        if self.count() > 0 {
            self.text.push(b',');
        }
        self.text.extend_from_slice(record);
        self.ends.push(self.len());
        self.ids.push(id.clone());
    }

    /// The finished body, where its records end and their ids; this one
    /// starts over empty.
    fn finish(&mut self) -> (Bytes, Vec<usize>, Vec<RecordId>) {
        let mut text = std::mem::replace(&mut self.text, Self::OPEN.to_vec());
        text.extend_from_slice(Self::CLOSE);
        (
            Bytes::from(text),
            std::mem::take(&mut self.ends),
            std::mem::take(&mut self.ids),
        )
    }
}

/// Records encoded as JSON, one after the other.
struct Encoded {
    text: String,
    /// Where each record's JSON ends in `text`.
    ends: Vec<usize>,
    /// Each record's id, to name one too large to send.
    ids: Vec<RecordId>,
}

/// Encodes `records` in order, spread over the machine's cores on blocking
/// threads when there are enough of them: writing records as JSON is most of
/// a push's cost on the client.
async fn encode(records: Vec<Record>) -> Result<Vec<Encoded>> {
    let mut encoded = Vec::new();
    // The size of what is written is known once written; its values' is
    // less (see `write_spread` on the server).
    let values = |records: &[Record]| parallel::values_bytes(records);
    for chunk in parallel::in_chunks(records, values, |chunk, _| encode_chunk(chunk)).await {
        let chunk = chunk.map_err(|error| {
            Error::storage(BACKEND, format!("a record encoding task failed: {error}"))
        })?;
        encoded.push(chunk);
    }
    Ok(encoded)
}

fn encode_chunk(records: Vec<Record>) -> Encoded {
    let mut encoded = Encoded {
        text: String::new(),
        ends: Vec::with_capacity(records.len()),
        ids: Vec::with_capacity(records.len()),
    };
    for record in records {
        record.write_json(&mut encoded.text);
        encoded.ends.push(encoded.text.len());
        encoded.ids.push(record.id().clone());
    }
    encoded
}

/// A feed page with its records still JSON text, borrowed from the body:
/// the fields of `ChangesResponse`.
#[derive(serde::Deserialize)]
struct RawPage<'a> {
    feed_id: String,
    #[serde(borrow)]
    collection: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    changes: Vec<RawChange<'a>>,
    next: Cursor,
    more: bool,
}

#[derive(serde::Deserialize)]
struct RawChange<'a> {
    cursor: Cursor,
    #[serde(borrow)]
    record: &'a RawValue,
}

/// Reads the records of a page at their ranges of `body`.
fn decode_changes(
    body: &[u8],
    located: Vec<(Cursor, Range<usize>)>,
) -> std::result::Result<Vec<Change>, String> {
    located
        .into_iter()
        .map(|(cursor, range)| {
            let text = body.get(range).unwrap_or_default();
            let quick = std::str::from_utf8(text)
                .ok()
                .and_then(Record::from_stored_json);
            if let Some(record) = quick {
                return Ok(Change { cursor, record });
            }
            let value: serde_json::Value =
                serde_json::from_slice(text).map_err(|error| error.to_string())?;
            let record = Record::from_json(value).map_err(|error| error.to_string())?;
            Ok(Change { cursor, record })
        })
        .collect()
}

/// Why a record of `len` bytes of JSON cannot go to a server with
/// `limits` in one request, if it cannot.
fn too_large(len: usize, limits: &Limits) -> Option<String> {
    (len + ENVELOPE > limits.max_body_bytes).then(|| {
        format!(
            "is {len} bytes of JSON, more than the server accepts in one request ({} bytes)",
            limits.max_body_bytes
        )
    })
}

/// Refuses record `id` of a push for `reason`: named in `refused` when
/// given (the push goes on without it), else the push fails with
/// [`Error::InvalidRecord`] naming it.
fn refuse(
    refused: &mut Option<&mut Vec<RefusedRecord>>,
    id: RecordId,
    reason: String,
) -> Result<()> {
    match refused.as_deref_mut() {
        Some(refused) => {
            refused.push(RefusedRecord::new(id, reason));
            Ok(())
        }
        None => Err(Error::invalid_record(Some(id.as_str()), reason)),
    }
}

/// The answer to a push sent in parts: the parts' answers so far, `total`,
/// with the next one's (`None` for a part whose one record was refused).
fn sum(total: Option<SyncResponse>, answer: Option<SyncResponse>) -> Option<SyncResponse> {
    let Some(answer) = answer else {
        return total;
    };
    Some(match total {
        None => answer,
        Some(total) => SyncResponse {
            // Counts the server sends are not trusted to stay in range.
            added: total.added.saturating_add(answer.added),
            updated: total.updated.saturating_add(answer.updated),
            deleted: total.deleted.saturating_add(answer.deleted),
            unchanged: total.unchanged.saturating_add(answer.unchanged),
            conflicts: total.conflicts.saturating_add(answer.conflicts),
            ..answer
        },
    })
}

#[async_trait]
impl SyncPeer for HttpPeer {
    fn peer_id(&self) -> &str {
        &self.inner.peer_id
    }

    async fn feed_id(&self) -> Result<Option<String>> {
        Ok(Some(self.health().await?.feed_id))
    }

    /// Forgets the positions of the engine's own writes it left out of
    /// pulls of `collection`: an engine whose store was replaced no longer
    /// holds them, and pulled again from the start it would never get them
    /// back.
    async fn cursors_restarted(&self, collection: &CollectionName) {
        let mut state = self.inner.state.lock();
        state.echoes.remove(collection);
        state.feeds.remove(collection);
    }

    async fn exchanges_begin(&self, collection: &CollectionName, feed_id: &str) {
        let mut state = self.inner.state.lock();
        state.feeds.insert(collection.clone(), feed_id.to_owned());
    }

    async fn pull(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        self.read_feed(collection, after, limit, Duration::ZERO, Prune::Yes)
            .await
    }

    /// Records larger than the server takes in one request are refused
    /// (see [`PushOutcome`]), not sent: a server can hold one (its own
    /// application wrote it, two pushes merged into it, or its limit was
    /// lowered), and failing the push on it held back every later change
    /// of the collection for good.
    async fn push(&self, collection: &CollectionName, records: Vec<Record>) -> Result<PushOutcome> {
        let mut refused = Vec::new();
        self.push_all(
            collection.clone(),
            records,
            Echoes::Remember,
            Some(&mut refused),
        )
        .await?;
        Ok(PushOutcome::refusing(refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> CollectionName {
        CollectionName::new(text).unwrap()
    }

    /// A wait on a server that holds no request polls a quiet collection
    /// once a second; each poll counted as a followed page, so after about
    /// a minute of quiet a page of nothing but more to read was polled
    /// from the same place again, not followed, until the wait ran out.
    /// Only follows count now, and once they reach the bound the page is
    /// answered, as the docs say, not polled again.
    #[test]
    fn a_wait_follows_skipped_changes_however_long_it_polled() {
        let page = |next: u64, more: bool| ChangePage {
            changes: Vec::new(),
            next: Cursor::new(next),
            more,
        };
        let mut waiting = Waiting {
            after: Cursor::new(7),
            followed: 0,
        };
        for _ in 0..200 {
            assert_eq!(waiting.then(&page(7, false), true), AfterWait::Poll);
        }
        // A page that does not move on is polled again too, while time is
        // left, and answered once it is not.
        assert_eq!(waiting.then(&page(7, true), true), AfterWait::Poll);
        assert_eq!(waiting.then(&page(7, false), false), AfterWait::Answer);
        for n in 1..=MAX_FOLLOWED_PAGES as u64 {
            assert_eq!(waiting.then(&page(7 + n, true), true), AfterWait::Follow);
            assert_eq!(waiting.after, Cursor::new(7 + n));
        }
        let last = 8 + MAX_FOLLOWED_PAGES as u64;
        assert_eq!(waiting.then(&page(last, true), true), AfterWait::Answer);
    }

    #[test]
    fn totals_of_a_push_in_parts_do_not_overflow() {
        let answer = |added| SyncResponse {
            feed_id: "f1".to_owned(),
            collection: "notes".to_owned(),
            added,
            updated: 1,
            deleted: 0,
            unchanged: 2,
            conflicts: 0,
            echoes: CursorRanges::default(),
        };
        let total = sum(Some(answer(3)), Some(answer(4))).unwrap();
        assert_eq!((total.added, total.updated, total.unchanged), (7, 2, 4));
        assert_eq!(
            sum(Some(answer(usize::MAX)), Some(answer(4)))
                .unwrap()
                .added,
            usize::MAX
        );
        assert_eq!(sum(Some(answer(1)), None).unwrap().added, 1);
        assert!(sum(None, None).is_none());
    }

    #[test]
    fn echoes_merge_are_sent_after_the_cursor_and_pruned() {
        let mut state = PeerState::default();
        state.follow_feed("f1");
        let notes = name("notes");
        state.remember_echoes(&notes, &CursorRanges::new(vec![[3, 5], [9, 9]]).unwrap());
        state.remember_echoes(&notes, &CursorRanges::new(vec![[6, 7], [20, 30]]).unwrap());
        assert_eq!(
            state.skip_after(&notes, Cursor::START).to_string(),
            "3-7,9,20-30"
        );
        assert_eq!(
            state.skip_after(&notes, Cursor::new(4)).to_string(),
            "5-7,9,20-30"
        );
        state.prune(&notes, Cursor::new(9));
        assert_eq!(
            state.skip_after(&notes, Cursor::new(9)).to_string(),
            "20-30"
        );
        assert!(state.skip_after(&name("other"), Cursor::START).is_empty());
        // Another store: every position is void.
        assert!(!state.follow_feed("f1"));
        assert!(state.follow_feed("f2"));
        assert!(state.skip_after(&notes, Cursor::START).is_empty());
    }

    /// The server's 503 `timeout`, or a 408 or 504 that came after the
    /// request took long, is a slow link's; a 408 or 504 that came at once is
    /// only transient, as is any other 503.
    #[test]
    fn timeouts_answered_late_are_slow_and_early_transient() {
        let peer = HttpPeer::new("http://127.0.0.1:1").unwrap();
        let url = peer.url(&["health"]);
        let timeout = br#"{"error":{"code":"timeout","message":"too long"}}"#;
        let unavailable = br#"{"error":{"code":"unavailable","message":"down"}}"#;
        let asked = Some(Duration::from_secs(2));
        let kind = |status: u16, body: &[u8], took_long: bool| {
            let status = StatusCode::from_u16(status).unwrap();
            match peer.refusal(status, body, &url, asked, took_long) {
                Failure::Slow(_, wait) => {
                    assert_eq!(wait, asked, "the Retry-After goes with it");
                    "slow"
                }
                Failure::Transient(_, wait) => {
                    assert_eq!(wait, asked);
                    "transient"
                }
                Failure::Permanent(_) => "permanent",
                Failure::TooLarge(_) => "too large",
                Failure::TooMany(_) => "too many",
                Failure::AnswerTooLarge(_) => "answer too large",
                Failure::UrlTooLong(_) => "URL too long",
            }
        };
        for status in [408, 504] {
            assert_eq!(kind(status, b"", true), "slow", "{status}");
            assert_eq!(kind(status, b"", false), "transient", "{status}");
        }
        // The server's own timeout, whatever its limit against the client's.
        assert_eq!(kind(503, timeout, true), "slow");
        assert_eq!(kind(503, timeout, false), "slow");
        assert_eq!(kind(503, unavailable, true), "transient");
        assert_eq!(kind(502, b"", true), "transient");
        assert_eq!(kind(413, b"", true), "too large");
        assert_eq!(kind(414, b"", true), "URL too long");
        assert_eq!(kind(431, b"", true), "URL too long");
    }

    /// A page limit learnt from a slow page grows back a quarter at a time
    /// while full pages come quickly, and is gone once it reaches the limit
    /// wanted when it was learnt; one learnt from a page too large grows
    /// back only with full pages of a quarter of `max_response_bytes` or
    /// less, however quick (it stayed for good: after one burst of large
    /// records, every page of small ones asked for one change).
    #[test]
    fn page_limits_grow_back_once_what_made_them_smaller_passed() {
        let limit = |n: usize| NonZeroUsize::new(n).unwrap();
        let (notes, photos) = (name("notes"), name("photos"));
        let mut state = PeerState::default();
        assert_eq!(state.halve_page_limit(&notes, limit(100), true), limit(50));
        assert_eq!(state.halve_page_limit(&notes, limit(50), true), limit(25));
        // Other collections keep theirs, and a read asking for less than
        // the limit learnt asks for what it asks.
        assert_eq!(state.page_limit(&photos, limit(100)), limit(100));
        assert_eq!(state.page_limit(&notes, limit(10)), limit(10));
        // A slow page at the smaller limit does not grow it.
        state.full_page_came(&notes, limit(25), Some(false), true);
        // A long poll's page says nothing of the link.
        state.full_page_came(&notes, limit(25), None, true);
        assert_eq!(state.page_limit(&notes, limit(100)), limit(25));
        let mut sizes = Vec::new();
        while state.page_limits.contains_key(&notes) {
            let now = state.page_limit(&notes, limit(100));
            sizes.push(now.get());
            state.full_page_came(&notes, now, Some(true), true);
        }
        assert_eq!(sizes, [25, 31, 38, 47, 58, 72, 90]);
        assert_eq!(state.page_limit(&notes, limit(100)), limit(100));
        // Too large: halved, and it stays however quick the pages.
        assert_eq!(
            state.halve_page_limit(&photos, limit(100), false),
            limit(50)
        );
        state.full_page_came(&photos, limit(50), Some(true), false);
        assert_eq!(state.page_limit(&photos, limit(100)), limit(50));
        state.full_page_came(&photos, limit(50), None, true);
        assert_eq!(state.page_limit(&photos, limit(100)), limit(62));
        // Both slow and too large: it needs both to have passed.
        assert_eq!(state.halve_page_limit(&photos, limit(62), true), limit(31));
        state.full_page_came(&photos, limit(31), Some(true), false);
        state.full_page_came(&photos, limit(31), Some(false), true);
        assert_eq!(state.page_limit(&photos, limit(100)), limit(31));
        state.full_page_came(&photos, limit(31), Some(true), true);
        assert_eq!(state.page_limit(&photos, limit(100)), limit(38));
        // A limit of one grows too.
        let mut one = PeerState::default();
        assert_eq!(one.halve_page_limit(&notes, limit(4), true), limit(2));
        assert_eq!(one.halve_page_limit(&notes, limit(2), true), limit(1));
        one.full_page_came(&notes, limit(1), Some(true), true);
        assert_eq!(one.page_limit(&notes, limit(100)), limit(2));
    }

    /// A push size learnt from slow pushes grows back a quarter at a time
    /// when requests near it go quickly; one learnt from a 413 is another
    /// field, which never grows.
    #[test]
    fn slow_push_sizes_grow_back_when_requests_go_quickly() {
        let mut state = PeerState {
            slow_push_bytes: Some(1_000_000),
            ..PeerState::default()
        };
        state.push_went(1_000_000, false);
        assert_eq!(state.slow_push_bytes, Some(1_000_000));
        // A small request says little of the link.
        state.push_went(1_000, true);
        assert_eq!(state.slow_push_bytes, Some(1_000_000));
        state.push_went(900_000, true);
        assert_eq!(state.slow_push_bytes, Some(1_250_000));
        while let Some(cap) = state.slow_push_bytes {
            state.push_went(cap, true);
        }
        assert_eq!(state.push_bytes, None);
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let refused = |builder: HttpPeerBuilder| match builder.build() {
            Err(Error::InvalidConfig { option, .. }) => option,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        assert_eq!(refused(HttpPeer::builder("not a url")), "base_url");
        assert_eq!(refused(HttpPeer::builder("ftp://host")), "base_url");
        assert_eq!(refused(HttpPeer::builder("http://host/?q=1")), "base_url");
        assert_eq!(
            refused(HttpPeer::builder("http://host").bearer_token("a b")),
            "bearer_token"
        );
        assert_eq!(
            refused(HttpPeer::builder("http://host").peer_id("")),
            "peer_id"
        );
        let peer = HttpPeer::new("http://127.0.0.1:8080/sync/").unwrap();
        assert_eq!(peer.peer_id(), "http://127.0.0.1:8080/sync");
        assert_eq!(
            peer.url(&["collections", "a/b c", "changes"]).as_str(),
            "http://127.0.0.1:8080/sync/v1/collections/a%2Fb%20c/changes"
        );
    }

    #[test]
    fn retry_delays_quadruple_up_to_thirty_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(next_retry_delay(ms(100)), ms(400));
        assert_eq!(next_retry_delay(ms(6_400)), ms(25_600));
        assert_eq!(next_retry_delay(ms(25_600)), MAX_RETRY_DELAY);
        assert_eq!(next_retry_delay(Duration::MAX), MAX_RETRY_DELAY);
    }

    /// A skip list of many long ranges is cut to what a proxy takes in a
    /// URL (it refused them with 414 before, for good); what is left out is
    /// only downloaded again.
    #[test]
    fn the_skip_list_fits_in_a_url() {
        let notes = name("notes");
        let mut state = PeerState::default();
        let base = 1_000_000_000_000u64;
        let ranges: Vec<[u64; 2]> = (0..1_000u64)
            .map(|n| [base + n * 10, base + n * 10 + 5])
            .collect();
        state.remember_echoes(&notes, &CursorRanges::new(ranges).unwrap());
        let skip = state.skip_after(&notes, Cursor::START);
        let mut url = Url::parse("http://h/").unwrap();
        url.query_pairs_mut().append_pair("skip", &skip.to_string());
        let encoded = url.query().unwrap_or_default().len() - "skip=".len();
        assert!(!skip.is_empty());
        assert!(encoded <= MAX_SKIP_QUERY_BYTES, "{encoded} bytes");
        assert!(skip.ranges().len() < 1_000);
        // Short lists go whole.
        let few = CursorRanges::new(vec![[3, 5], [9, 9]]).unwrap();
        let mut state = PeerState::default();
        state.remember_echoes(&notes, &few);
        assert_eq!(state.skip_after(&notes, Cursor::START), few);
    }

    /// A retry waits at least the back-off and what the server asked, and
    /// at random up to half as much again; never past the cap and a half.
    #[test]
    fn retries_wait_what_was_asked_and_spread_out() {
        let ms = Duration::from_millis;
        let mut waits = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let wait = retry_wait(ms(100), Some(Duration::from_secs(2)));
            assert!(
                wait >= Duration::from_secs(2) && wait <= Duration::from_secs(3),
                "{wait:?}"
            );
            waits.insert(wait);
            let plain = retry_wait(ms(100), None);
            assert!(plain >= ms(100) && plain <= ms(150), "{plain:?}");
        }
        assert!(waits.len() > 1, "every client would come back at once");
        let capped = retry_wait(ms(100), Some(Duration::from_secs(3_600)));
        assert!(
            capped <= MAX_RETRY_DELAY + MAX_RETRY_DELAY / 2,
            "{capped:?}"
        );
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        // A date, as a proxy may give it: the time until then; none once
        // it is past.
        let soon = std::time::SystemTime::now() + Duration::from_secs(20);
        headers.insert(
            reqwest::header::RETRY_AFTER,
            httpdate::fmt_http_date(soon).parse().unwrap(),
        );
        let asked = retry_after(&headers).unwrap();
        assert!(
            asked > Duration::from_secs(15) && asked <= Duration::from_secs(20),
            "{asked:?}"
        );
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    /// Settings that cannot work are refused naming the builder method
    /// they came from (a zero connect timeout named `timeout`, and a bad
    /// user agent named nothing the builder has).
    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        let refused = |builder: HttpPeerBuilder| match builder.build() {
            Err(Error::InvalidConfig { option, .. }) => option,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let builder = || HttpPeer::builder("http://127.0.0.1:8080");
        assert_eq!(refused(builder().timeout(Duration::ZERO)), "timeout");
        assert_eq!(
            refused(builder().connect_timeout(Duration::ZERO)),
            "connect_timeout"
        );
        assert_eq!(
            refused(builder().max_response_bytes(0)),
            "max_response_bytes"
        );
        assert_eq!(refused(builder().user_agent("app\n2.0")), "user_agent");
        assert_eq!(refused(builder().bearer_token("pässwort")), "bearer_token");
        assert_eq!(
            refused(builder().retries(MAX_RETRIES + 1, Duration::ZERO)),
            "retries"
        );
        assert!(builder()
            .retries(MAX_RETRIES, Duration::ZERO)
            .build()
            .is_ok());
        assert!(builder().build().is_ok());
    }

    /// The token and any password in a base URL stay out of `Debug` and of
    /// every refusal; a URL naming a user is refused, since it names the
    /// peer in cursors, events and logs.
    #[test]
    fn secrets_never_show() {
        let builder = HttpPeer::builder("http://127.0.0.1:8080").bearer_token("t0ken-secret");
        let peer = builder.clone().build().unwrap();
        for shown in [format!("{builder:?}"), format!("{peer:?}")] {
            assert!(!shown.contains("t0ken-secret"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        for url in [
            "http://ann:pa55word@127.0.0.1:8080",
            "http://pa55word@127.0.0.1:8080",
            "ftp://ann:pa55word@host",
            "http://ann:pa55word@host/?q",
        ] {
            let builder = HttpPeer::builder(url);
            assert!(!format!("{builder:?}").contains("pa55word"));
            let error = builder.build().unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::InvalidConfig {
                        option: "base_url",
                        ..
                    }
                ),
                "{error:?}"
            );
            assert!(!error.to_string().contains("pa55word"), "{error}");
        }
    }
}
