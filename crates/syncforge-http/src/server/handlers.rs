//! The routes: health, collections, the change feed (with long polls and
//! echo skipping) and sync; authorisation, body limits, the request span and
//! the request timeout around them.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::body::{Body, BodyDataStream};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use subtle::ConstantTimeEq;
use syncforge_core::{shorten, CollectionName, Cursor, Record, RecordId, Result};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::field::Empty;
use tracing::Instrument;

use super::error::ApiError;
use super::options::{digest, Access, AccessToken, Cors, ServerOptions, DEFAULT_PAGE};
use super::{closed, Replica, WatchGuard};
use crate::parallel;
use crate::protocol::{
    CollectionList, CursorRanges, ErrorCode, Health, SyncResponse, MAX_SKIP_RANGES,
    PROTOCOL_HEADER, PROTOCOL_VERSION,
};

/// Most backend reads one feed request makes while skipping echoes, so that
/// a request's round trips to the store stay bounded whatever the skip list.
const MAX_READS_PER_PAGE: usize = 16;

/// Most changes one feed request reads while skipping echoes, as a multiple
/// of its `limit`: a skip list can make a request pass over changes, never
/// more than a few pages of them.
const MAX_SCANNED_PAGES: usize = 4;

/// How many changes a feed request reads from the store first; later reads
/// are sized by the text those took (see `read_page`).
const FIRST_READ: usize = 64;

/// How many times larger than the one before it a later read of a feed
/// request may be (see `read_page`).
const ROUND_GROWTH: usize = 4;

/// The most a request body's declared length reserves before its bytes come.
const MAX_RESERVED_BODY: usize = 1 << 20;

/// The most of a refused body read only to be dropped, when the server's
/// own bound is smaller: twice the largest body a syncforge client sends to
/// a server whose bound it has not learnt yet (16 MiB). Answered with its
/// body unread, a client still sending it found the connection cut instead
/// of the refusal.
const MAX_DISCARDED_BODY: usize = 32 << 20;

/// How long a client that asked to be told to go on (`Expect:
/// 100-continue`) waits for that before it sends its body anyway (curl: a
/// second): a refusal made later reads the body, which may be arriving.
const EXPECT_PATIENCE: Duration = Duration::from_secs(1);

/// What every handler shares.
struct Shared {
    replica: Arc<dyn Replica>,
    options: ServerOptions,
    watchers: Arc<Watchers>,
    /// Set when the server shuts down: long polls return at once.
    closing: watch::Receiver<bool>,
    sync_slots: SyncSlots,
    /// Room for request and answer bodies, in KiB ([`kib`]): a sync request
    /// takes room for its body before reading it, and its merge task gives
    /// it back when the merge ends, so the room also covers the records
    /// decoded from it; a feed page takes room before it is read (a whole
    /// body's when it is free, else [`page_room`]), writes no more than
    /// that, keeps as much as it came out, and gives it back once sent
    /// ([`HeldBody`]).
    body_room: Permits,
    /// The text a change of each collection took in the last page read of
    /// it: the first read of the next page is sized by it ([`first_read`]),
    /// and its room when room is short ([`page_room`]).
    text_per_change: Mutex<HashMap<CollectionName, usize>>,
    /// The last check of the store's identity ([`Shared::check_identity`]),
    /// and when it began. No result is kept longer than the requests waiting
    /// for it, since a client trusts it to follow the feed (a store replaced
    /// meanwhile must be told at once).
    identity_checked: tokio::sync::Mutex<Option<(Instant, Result<()>)>>,
}

/// Collections whose text per change a server remembers; past that, it
/// starts again with none.
const REMEMBERED_SIZES: usize = 1024;

/// How many changes the first read of a page takes: [`FIRST_READ`], or
/// fewer when the collection's changes were seen to be large, enough to
/// fill a body of `max_bytes` at the size seen and one more. Reading
/// [`FIRST_READ`] records of 16 MiB held a GiB to send one of them.
fn first_read(text_per_change: Option<usize>, max_bytes: usize) -> usize {
    text_per_change.map_or(FIRST_READ, |each| {
        (max_bytes / each.max(1)).saturating_add(1).min(FIRST_READ)
    })
}

/// The room a page of `limit` changes takes before the store is read for
/// it, which is also the most its body then holds ([`page_body`]; but for
/// a first change larger than that, sent alone): `limit` changes of the
/// size the collection's last page showed a change to take, or, for a
/// collection no page showed yet, [`UNSEEN_CHANGE`] bytes for each of at
/// most [`FIRST_READ`] changes; with [`PAGE_FRAME`] for the text around
/// them, and at most a body's bound `max_bytes`. A page whose changes are
/// larger than that ends early, saying more follow, and shows the next
/// page their size.
fn page_room(text_per_change: Option<usize>, limit: usize, max_bytes: usize) -> usize {
    let changes = match text_per_change {
        // And the comma between two changes.
        Some(each) => each.saturating_add(1).saturating_mul(limit),
        None => UNSEEN_CHANGE.saturating_mul(limit.min(FIRST_READ)),
    };
    changes.saturating_add(PAGE_FRAME).min(max_bytes)
}

/// The room a change of a collection no page showed yet is given
/// ([`page_room`]): enough for a small record; a page of larger ones
/// ends early and sizes the next.
const UNSEEN_CHANGE: usize = 4 * 1024;

/// The room of a page's text around its changes ([`page_room`]): the feed
/// id, the collection's name, `next` and `more`.
const PAGE_FRAME: usize = 4 * 1024;

/// Places that requests take and give back, some at a time, from a fixed
/// number: the merges running at once ([`SyncSlots`]), and the KiB of sync
/// request bodies and feed pages held at once (counted in KiB so that one
/// request's share fits the semaphore's `u32`).
#[derive(Clone)]
pub(super) struct Permits {
    permits: Arc<Semaphore>,
    capacity: u32,
    /// The (unreachable) error of a closed semaphore.
    closed: &'static str,
    /// What the server is busy with when no permit frees in time.
    busy: &'static str,
}

impl Permits {
    fn new(capacity: u32, closed: &'static str, busy: &'static str) -> Self {
        let capacity = capacity.clamp(1, u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Permits {
            permits: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            closed,
            busy,
        }
    }

    /// `wanted` permits (at most all of them), once they are free; or,
    /// when none free within `patience`, `unavailable`: the server is busy,
    /// which a smaller request would not help (where the request's own
    /// `timeout` tells a client that its request or its link is too slow,
    /// and makes it send less).
    async fn take(
        &self,
        wanted: u32,
        patience: Duration,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        let taking = self
            .permits
            .clone()
            .acquire_many_owned(wanted.min(self.capacity));
        match tokio::time::timeout(patience, taking).await {
            Ok(taken) => {
                // Only a closed semaphore refuses, and this one is never closed.
                taken.map_err(|_| ApiError::new(ErrorCode::Internal, self.closed))
            }
            Err(_) => Err(ApiError::new(ErrorCode::Unavailable, self.busy)),
        }
    }

    /// `wanted` permits (at most all of them) if they are free now.
    fn try_take(&self, wanted: u32) -> Option<OwnedSemaphorePermit> {
        self.permits
            .clone()
            .try_acquire_many_owned(wanted.min(self.capacity))
            .ok()
    }

    /// `room` made `wanted` permits (at most all of them): the ones past
    /// it given back, or the ones missing taken at once if they are free,
    /// else all of them taken again as [`take`](Self::take) takes them,
    /// with `room` given back first: a request waiting for more while it
    /// held some kept that from others, who may hold what it waits for.
    async fn resize(
        &self,
        mut room: OwnedSemaphorePermit,
        wanted: u32,
        patience: Duration,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        let wanted = wanted.min(self.capacity);
        let held = room.num_permits();
        let wanted_permits = wanted as usize;
        if held > wanted_permits {
            drop(room.split(held - wanted_permits));
        } else if held < wanted_permits {
            let missing = u32::try_from(wanted_permits - held).unwrap_or(u32::MAX);
            match self.try_take(missing) {
                Some(more) => room.merge(more),
                None => {
                    drop(room);
                    return self.take(wanted, patience).await;
                }
            }
        }
        Ok(room)
    }

    /// Resolves when every permit is back.
    pub(super) async fn all_returned(&self) {
        let _ = self.permits.acquire_many(self.capacity).await;
    }
}

/// Room for merges running at once, a permit each. A sync request takes a
/// slot once its records are read, and its merge task keeps it until the
/// merge ends, also after the request timed out; [`Server`](super::Server)
/// waits for every slot to come back when it shuts down.
pub(super) type SyncSlots = Permits;

/// The most a feed page holding `room` may write: the bytes of the room
/// (taken in KiB, [`kib`]), at most a body's bound `max_bytes`.
fn page_budget(room: &OwnedSemaphorePermit, max_bytes: usize) -> usize {
    room.num_permits().saturating_mul(1024).min(max_bytes)
}

/// `bytes` in KiB, rounded up.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

type AppState = Arc<Shared>;

/// Builds the router over `replica`.
pub(super) fn build(
    replica: Arc<dyn Replica>,
    options: ServerOptions,
    closing: watch::Receiver<bool>,
) -> Result<(Router, SyncSlots)> {
    options.validate()?;
    if options.tokens.is_empty() {
        tracing::warn!(
            "sync server without access tokens: every client may read and write every collection"
        );
    }
    let watchers = Arc::new(Watchers::new(replica.clone()));
    let cors = cors_layer(&options.cors);
    let compression = options.compression;
    let concurrent_syncs = u32::try_from(options.max_concurrent_syncs).unwrap_or(u32::MAX);
    let sync_slots = SyncSlots::new(
        concurrent_syncs,
        "the merge slots are closed",
        "the server is busy with other pushes; try again later",
    );
    let body_room = Permits::new(
        kib(options.max_buffered_bytes.max(options.max_body_bytes)),
        "the room for request bodies is closed",
        "the server holds as many request and answer bodies as it may; try again later",
    );
    let state = Arc::new(Shared {
        replica,
        options,
        watchers,
        closing,
        sync_slots: sync_slots.clone(),
        body_room,
        text_per_change: Mutex::new(HashMap::new()),
        identity_checked: tokio::sync::Mutex::new(None),
    });
    let mut app = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/collections", get(collections))
        .route("/v1/collections/{collection}/changes", get(changes))
        .route("/v1/collections/{collection}/sync", post(sync))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .with_state(state);
    if compression {
        app = app.layer(
            CompressionLayer::new()
                .gzip(true)
                .quality(CompressionLevel::Fastest),
        );
    }
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    Ok((app.layer(middleware::from_fn(observe)), sync_slots))
}

/// The CORS answers browsers need: every route's, and the refusal of a
/// connection past the limit, which a browser would otherwise see as an
/// opaque network failure instead of a 503 to retry.
pub(super) fn cors_layer(cors: &Cors) -> Option<CorsLayer> {
    let origins = match cors {
        Cors::Off => return None,
        Cors::AnyOrigin => AllowOrigin::any(),
        Cors::Origins(origins) => AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            // A script reads only the headers exposed to it: the protocol
            // version, how long to wait before retrying, and why a token
            // was refused.
            .expose_headers([
                header::HeaderName::from_static(PROTOCOL_HEADER),
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// The request span (method, route, collection, records, status,
/// duration), and the protocol header on every response.
async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!(
        "http_request",
        method = %request.method(),
        route = %route,
        collection = Empty,
        records = Empty,
        status = Empty,
        duration_ms = Empty,
    );
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    span.record("status", status)
        .record("duration_ms", duration_ms);
    tracing::debug!(parent: &span, status, duration_ms, "request finished");
    mark_protocol(response.headers_mut());
    response
}

/// The headers every response carries: the protocol version, and that no
/// cache may keep it. Each answer is the store at one moment: a cache that
/// kept a feed page (a server behind a proxy with a default lifetime) would
/// answer later requests for it with changes missing, and a long poll at
/// once, for as long as it kept it.
pub(super) fn mark_protocol(headers: &mut HeaderMap) {
    headers.insert(
        header::HeaderName::from_static(PROTOCOL_HEADER),
        HeaderValue::from(PROTOCOL_VERSION),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Answers 503 `timeout` when a request takes longer than allowed.
async fn time_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.options.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::Timeout,
            format!("the request took longer than the server's limit of {limit:?}"),
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route (routes start with /v1/)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take this method",
    )
}

async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.check_identity().await?;
    Ok(Json(Health {
        status: "ok".to_owned(),
        protocol: PROTOCOL_VERSION,
        feed_id: state.replica.feed_id().to_owned(),
        limits: state.options.limits(),
    }))
}

async fn collections(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<CollectionList>, ApiError> {
    let token = state.authenticate(&headers)?;
    let mut collections: Vec<String> = state
        .replica
        .collections()
        .await?
        .into_iter()
        .map(|name| name.as_str().to_owned())
        .filter(|name| token.is_none_or(|token| token.covers(name)))
        .collect();
    collections.sort();
    Ok(Json(CollectionList {
        feed_id: state.replica.feed_id().to_owned(),
        collections,
    }))
}

/// The query of a feed read.
struct FeedQuery {
    after: Cursor,
    limit: NonZeroUsize,
    wait: Duration,
    skip: CursorRanges,
}

impl FeedQuery {
    fn parse(pairs: Vec<(String, String)>, options: &ServerOptions) -> Result<Self, ApiError> {
        let mut seen: HashMap<String, String> = HashMap::new();
        for (name, value) in pairs {
            if seen.contains_key(&name) {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("query parameter `{name}` is given more than once"),
                ));
            }
            seen.insert(name, value);
        }
        let number = |name: &str| -> Result<Option<u64>, ApiError> {
            let Some(text) = seen.get(name) else {
                return Ok(None);
            };
            let code = if name == "after" {
                ErrorCode::InvalidCursor
            } else {
                ErrorCode::InvalidArgument
            };
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ApiError::new(
                    code,
                    format!(
                        "`{name}` must be a non-negative integer, not {:?}",
                        shorten(text)
                    ),
                ));
            }
            // Digits only: what does not fit is past every bound, and is
            // treated as the largest number (a `limit` or `wait` lowered to
            // the server's maximum, an `after` past the last cursor) rather
            // than refused from one arbitrary length on.
            Ok(Some(text.parse().unwrap_or(u64::MAX)))
        };
        let after = match number("after")? {
            None => Cursor::START,
            // No feed position is past 2^53 (what every JSON reader keeps
            // exact).
            Some(after) if after > Cursor::LARGEST.get() => {
                return Err(ApiError::new(
                    ErrorCode::InvalidCursor,
                    // The text sent: a number past every integer was read
                    // as the largest one.
                    format!(
                        "`after` is past the largest cursor, 2^53: {}",
                        seen.get("after")
                            .map_or_else(String::new, |text| shorten(text))
                    ),
                ));
            }
            Some(after) => Cursor::new(after),
        };
        let limit = match number("limit")? {
            None => DEFAULT_PAGE,
            Some(0) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    "`limit` must be at least 1: a page that can hold nothing never advances",
                ))
            }
            Some(limit) => usize::try_from(limit).unwrap_or(usize::MAX),
        };
        let limit = NonZeroUsize::new(limit.min(options.max_page)).unwrap_or(NonZeroUsize::MIN);
        let wait = number("wait")?
            .map_or(Duration::ZERO, Duration::from_millis)
            .min(options.longest_wait());
        let skip = match seen.get("skip") {
            None => CursorRanges::default(),
            Some(text) => CursorRanges::parse_query(text, MAX_SKIP_RANGES).map_err(|reason| {
                ApiError::new(ErrorCode::InvalidArgument, format!("`skip`: {reason}"))
            })?,
        };
        // A page's `next` can land on a skipped range's end: past 2^53 it
        // would be a cursor this server refuses as `after`.
        if let Some([_, end]) = skip
            .ranges()
            .last()
            .filter(|[_, end]| *end > Cursor::LARGEST.get())
        {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("`skip`: {end} is past the largest cursor, 2^53"),
            ));
        }
        Ok(FeedQuery {
            after,
            limit,
            wait,
            skip,
        })
    }
}

async fn changes(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let collection = state.collection(&headers, path, Access::Read)?;
    let Query(pairs) = query.map_err(|rejection| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("malformed query string: {rejection}"),
        )
    })?;
    let query = FeedQuery::parse(pairs, &state.options)?;
    let max_bytes = state.options.max_body_bytes;
    let (page, room) = state.feed_page(&collection, &query, max_bytes).await?;
    // Checked after the read: a page read from a store replaced under the
    // server (a Redis flushed while it runs) would be numbered afresh under
    // the id the server opened, and a client following it from its cursor
    // would skip the new store's changes up to that cursor for good.
    state.check_identity().await?;
    let budget = page_budget(&room, max_bytes);
    let (body, sent) = page_body(state.replica.feed_id(), &collection, page, budget)?;
    // The page keeps room among the bodies held, as large as it came out,
    // until it is sent: a client that reads its answers slowly, or not at
    // all, held a page of up to `max_body_bytes` on each of its
    // connections.
    let room = state
        .body_room
        .resize(room, kib(body.len()), state.page_patience())
        .await?;
    tracing::Span::current().record("records", sent);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::new(HeldBody::new(body, room)),
    )
        .into_response())
}

/// The slices a held body is handed over in: the connection asks for the
/// next once it has written most of the last, so the body's room is given
/// back with at most about this much of it still unsent.
const HELD_BODY_SLICE: usize = 64 * 1024;

/// A body holding its room among the bodies held at once
/// (`max_buffered_bytes`) until it is sent, or dropped with its connection.
struct HeldBody {
    bytes: axum::body::Bytes,
    /// Where the part not yet handed over begins.
    sent: usize,
    _room: OwnedSemaphorePermit,
}

impl HeldBody {
    fn new(bytes: Vec<u8>, room: OwnedSemaphorePermit) -> Self {
        HeldBody {
            bytes: bytes.into(),
            sent: 0,
            _room: room,
        }
    }
}

impl hyper::body::Body for HeldBody {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Self::Data>, Self::Error>>>
    {
        let start = self.sent;
        let end = start.saturating_add(HELD_BODY_SLICE).min(self.bytes.len());
        if start >= end {
            return std::task::Poll::Ready(None);
        }
        self.sent = end;
        let slice = self.bytes.slice(start..end);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.bytes.len()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let left = self.bytes.len().saturating_sub(self.sent);
        hyper::body::SizeHint::with_exact(u64::try_from(left).unwrap_or(u64::MAX))
    }
}

/// A feed page as its `ChangesResponse` JSON, exactly as serde_json writes
/// it, and how many changes it holds.
///
/// The body stays within `max_bytes` (the page's room, at most the
/// server's `max_body_bytes`), but
/// for a first record larger than that: the page then ends at the last
/// change that fits, with `more` set. Pages were bounded by their count
/// only, so a page of large records could outgrow what a client takes, and
/// the client, asking for the same page again, never got past it.
fn page_body(
    feed_id: &str,
    collection: &CollectionName,
    page: WrittenPage,
    max_bytes: usize,
) -> Result<(Vec<u8>, usize), ApiError> {
    let WrittenPage {
        chunks,
        mut next,
        mut more,
    } = page;
    let mut body = Vec::new();
    body.extend_from_slice(b"{\"feed_id\":");
    serde_json::to_writer(&mut body, feed_id).map_err(|error| unwritable(&error))?;
    body.extend_from_slice(b",\"collection\":");
    serde_json::to_writer(&mut body, collection.as_str()).map_err(|error| unwritable(&error))?;
    body.extend_from_slice(b",\"changes\":[");
    // Room for the separator and the page's end after the changes.
    let budget = max_bytes.saturating_sub(64);
    let mut last: Option<Cursor> = None;
    let mut sent = 0;
    for chunk in chunks {
        let separator = usize::from(last.is_some());
        let room = budget.saturating_sub(body.len() + separator);
        // The changes of the chunk that fit; the page's first always does.
        let mut fits = chunk.ends.partition_point(|&(end, _)| end <= room);
        if last.is_none() {
            fits = fits.max(1);
        }
        let Some(&(end, cursor)) = fits.checked_sub(1).and_then(|i| chunk.ends.get(i)) else {
            if !chunk.ends.is_empty() {
                // Nothing more fits: the page ends at the last change in it.
                next = last.unwrap_or(next);
                more = true;
                break;
            }
            continue;
        };
        if separator == 1 {
            body.push(b',');
        }
        body.extend_from_slice(chunk.bytes.get(..end).unwrap_or(&chunk.bytes));
        last = Some(cursor);
        sent += fits;
        if fits < chunk.ends.len() || !chunk.whole {
            next = cursor;
            more = true;
            break;
        }
    }
    body.extend_from_slice(b"],\"next\":");
    serde_json::to_writer(&mut body, &next).map_err(|error| unwritable(&error))?;
    body.extend_from_slice(if more {
        b",\"more\":true}"
    } else {
        b",\"more\":false}"
    });
    Ok((body, sent))
}

/// The answer to a feed page that could not be written, logged.
fn unwritable(error: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(%error, "a feed page could not be written");
    ApiError::new(ErrorCode::Internal, "the feed page could not be written")
}

/// The changes of a feed page read so far, written as JSON, and where the
/// feed goes on after them.
struct WrittenPage {
    /// The changes, in feed order, in chunks as they were written.
    chunks: Vec<WrittenChanges>,
    /// Where the next page starts if every change written is sent.
    next: Cursor,
    /// Whether changes may follow `next`.
    more: bool,
}

impl WrittenPage {
    /// Whether no change was found.
    fn is_empty(&self) -> bool {
        self.chunks.iter().all(|chunk| chunk.ends.is_empty())
    }
}

/// `changes` written as JSON, spread over the cores (a page of thousands of
/// records is most of a pull's cost on the server), each chunk until its
/// text passes `max_bytes`.
async fn write_spread(
    changes: Vec<syncforge_core::Change>,
    max_bytes: usize,
) -> Result<Vec<WrittenChanges>, ApiError> {
    // The size of what is written is known once written; its values' is
    // less, and a page of a few large records written on the async worker
    // held up every request waiting on it.
    let values = |changes: &[syncforge_core::Change]| {
        parallel::values_bytes(changes.iter().map(|change| &change.record))
    };
    parallel::in_chunks(changes, values, move |chunk, _| {
        write_changes(&chunk, max_bytes)
    })
    .await
    .into_iter()
    .map(|chunk| chunk.map_err(|error| unwritable(&error)))
    .collect()
}

/// Changes written as JSON, comma-separated, and where each ends.
struct WrittenChanges {
    bytes: Vec<u8>,
    /// For each change written, the end of its text in `bytes` and its
    /// cursor.
    ends: Vec<(usize, Cursor)>,
    /// Whether every change of the chunk was written.
    whole: bool,
}

/// `{"cursor":N,"record":{...}}` for each change, comma-separated, until
/// the text passes `max_bytes`: no page sends more, so writing on would be
/// work thrown away.
fn write_changes(changes: &[syncforge_core::Change], max_bytes: usize) -> WrittenChanges {
    let mut out = String::new();
    let mut ends = Vec::with_capacity(changes.len());
    for (index, change) in changes.iter().enumerate() {
        if out.len() > max_bytes {
            return WrittenChanges {
                bytes: out.into_bytes(),
                ends,
                whole: false,
            };
        }
        if index > 0 {
            out.push(',');
        }
        out.push_str("{\"cursor\":");
        out.push_str(itoa::Buffer::new().format(change.cursor.get()));
        out.push_str(",\"record\":");
        change.record.write_json(&mut out);
        out.push('}');
        ends.push((out.len(), change.cursor));
    }
    WrittenChanges {
        bytes: out.into_bytes(),
        ends,
        whole: true,
    }
}

async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<SyncResponse>, ApiError> {
    let started = Instant::now();
    let max = state.options.max_body_bytes;
    let checked = state
        .collection(&headers, path, Access::ReadWrite)
        .and_then(|collection| check_json_content_type(&headers).map(|()| collection))
        .and_then(|collection| declared_length(&headers, max).map(|length| (collection, length)));
    let mut body = body.into_data_stream();
    // The drain takes what is left of the request's time, as the request
    // itself would have.
    let discard = |body, reading| {
        let left = state
            .options
            .request_timeout
            .saturating_sub(started.elapsed());
        discard_body(&headers, body, reading, max, left);
    };
    let (collection, declared) = match checked {
        Ok(checked) => checked,
        Err(refusal) => {
            discard(body, Reading::NotBegun);
            return Err(refusal);
        }
    };
    // Room for the body before a byte of it is read, kept while the records
    // decoded from it are merged: the bodies held at once stay within
    // `max_buffered_bytes` (and their records within a few times that, 16
    // to 32 times for a body of tiny values while it is parsed).
    // A wait for room or for a merge's place, longer than half the request
    // timeout, is the server being busy.
    let patience = state.options.request_timeout / 2;
    let waiting_since = Instant::now();
    let room = match state
        .body_room
        .take(kib(declared.unwrap_or(max)), patience)
        .await
    {
        Ok(room) => room,
        Err(busy) => {
            // Read too, so that the client sees the answer (and its
            // `Retry-After`), not a connection cut under its upload; also
            // when it asked to be told to go on, once it may have stopped
            // waiting for that.
            let reading = if waiting_since.elapsed() >= EXPECT_PATIENCE {
                Reading::Begun
            } else {
                Reading::NotBegun
            };
            discard(body, reading);
            return Err(busy);
        }
    };
    // The upload ends a little before the request's limit, so that the
    // `timeout` goes out while the rest of the body is still read and
    // dropped: cut off by the limit, the connection was closed under a
    // client still sending, which saw a broken pipe instead of the answer,
    // and sent the same push again rather than smaller ones.
    let upload_within = state
        .options
        .request_timeout
        .saturating_sub(state.options.answer_margin())
        .saturating_sub(started.elapsed());
    let bytes = match tokio::time::timeout(upload_within, read_body(declared, &mut body, max)).await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(refused)) => {
            drop(room);
            discard(body, Reading::Begun);
            return Err(refused);
        }
        Err(_) => {
            drop(room);
            // The client is told to send less at a time; what it still
            // sends is read and dropped for as long again as the request
            // was allowed.
            discard_body(
                &headers,
                body,
                Reading::Begun,
                max,
                state.options.request_timeout,
            );
            return Err(ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the request's body did not arrive within the server's limit of {:?}; \
                     send fewer records at a time",
                    state.options.request_timeout
                ),
            ));
        }
    };
    // Checked UTF-8 once, whole: the parsers then read it as text.
    let text = String::from_utf8(bytes).map_err(|error| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body is not UTF-8: {}", error.utf8_error()),
        )
    })?;
    let spans = parse_records(&text, state.options.max_records)?;
    tracing::Span::current().record("records", spans.len());
    // Every record is read before anything is written: one bad record
    // refuses the whole request.
    let records = decode_records(Arc::new(text), spans).await?;
    // Taken once the body is in: a client sending its body slowly holds a
    // connection, not a merge's place. The wait takes at most half the
    // request's time left, so that a push that waited for room and then
    // uploaded is answered busy, not cut off by the request's limit: a
    // `timeout` would tell its client that the link is slow, and make it
    // send smaller pushes to a server that is only busy.
    let left = state
        .options
        .request_timeout
        .saturating_sub(started.elapsed());
    let slot = state.sync_slots.take(1, patience.min(left / 2)).await?;
    // The merge runs on its own task: a client that goes away or a request
    // that times out does not cut a write in half.
    let replica = state.replica.clone();
    let target = collection.clone();
    let outcome = tokio::spawn(
        async move {
            let outcome = replica.sync(&target, records).await;
            drop(slot);
            drop(room);
            outcome
        }
        .instrument(tracing::Span::current()),
    )
    .await
    .map_err(|error| {
        tracing::error!(%error, "the sync task failed");
        ApiError::new(ErrorCode::Internal, "the sync task failed")
    })??;
    Ok(Json(SyncResponse {
        feed_id: state.replica.feed_id().to_owned(),
        collection: collection.as_str().to_owned(),
        added: outcome.added,
        updated: outcome.updated,
        deleted: outcome.deleted,
        unchanged: outcome.unchanged,
        conflicts: outcome.conflicts,
        echoes: CursorRanges::from_cursors(outcome.echoes),
    }))
}

impl Shared {
    /// The token presented, checked against every configured token in
    /// constant time. `Ok(None)`: the server has no tokens (open).
    fn authenticate(&self, headers: &HeaderMap) -> Result<Option<&AccessToken>, ApiError> {
        if self.options.tokens.is_empty() {
            return Ok(None);
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "this server needs `Authorization: Bearer <token>`",
                )
            })?;
        let presented = digest(presented);
        // Every configured token is compared, whichever matches.
        let mut found = None;
        for token in &self.options.tokens {
            if bool::from(token.digest.ct_eq(&presented)) {
                found = Some(token);
            }
        }
        found.map(Some).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "the bearer token is not known here",
            )
        })
    }

    /// The collection of a route, once the caller is known to be allowed
    /// `needed` on it.
    fn collection(
        &self,
        headers: &HeaderMap,
        path: Result<Path<String>, PathRejection>,
        needed: Access,
    ) -> Result<CollectionName, ApiError> {
        let token = self.authenticate(headers)?;
        let Path(name) = path.map_err(|rejection| {
            ApiError::new(
                ErrorCode::InvalidCollection,
                format!("the collection in the path cannot be read: {rejection}"),
            )
        })?;
        tracing::Span::current().record("collection", shorten(&name));
        // A name no store takes is refused as such (400) whatever the
        // token, before the token's collections are looked at (403).
        let collection = CollectionName::new(name)?;
        if let Some(token) = token {
            if !token.allows(collection.as_str(), needed) {
                let what = match needed {
                    Access::Read => "read",
                    Access::ReadWrite => "write",
                };
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "this token may not {what} collection {:?}",
                        shorten(collection.as_str())
                    ),
                ));
            }
        }
        Ok(collection)
    }

    /// Fails when the replica's feed id no longer names the feed it
    /// serves ([`Replica::check_feed_id`]). Requests arriving while a check
    /// runs wait for it, and share the next one: the health route needs no
    /// token, and anyone could otherwise make the server read its store (a
    /// billed request on S3) as many times at once as they like. Only a
    /// check that began after a request arrived answers it: one begun
    /// before may have read the store before the page this request read.
    async fn check_identity(&self) -> Result<(), ApiError> {
        let arrived = Instant::now();
        let mut checked = self.identity_checked.lock().await;
        let fresh = checked
            .as_ref()
            .filter(|(began, _)| *began >= arrived)
            .map(|(_, outcome)| outcome.clone());
        let outcome = match fresh {
            Some(outcome) => outcome,
            None => {
                let began = Instant::now();
                let outcome = self.replica.check_feed_id().await;
                *checked = Some((began, outcome.clone()));
                outcome
            }
        };
        Ok(outcome?)
    }

    /// A page of the feed after `query.after`, leaving out the positions in
    /// `query.skip`, written within the room it takes (at most `max_bytes`,
    /// [`read_page`](Self::read_page)); with `query.wait`, waits for
    /// a change if there is none yet.
    async fn feed_page(
        &self,
        collection: &CollectionName,
        query: &FeedQuery,
        max_bytes: usize,
    ) -> Result<(WrittenPage, OwnedSemaphorePermit), ApiError> {
        if query.wait.is_zero() {
            return self
                .read_page(collection, query.after, query, max_bytes)
                .await;
        }
        let deadline = tokio::time::Instant::now() + query.wait;
        let waiting = Watchers::wait(&self.watchers, collection);
        let notify = &waiting.notify;
        // A write that began before the watch started is not announced:
        // a request made in the watch's first moments reads once more when
        // they are over.
        let mut settling = waiting.settled;
        let mut closing = self.closing.clone();
        let mut after = query.after;
        loop {
            // Registered before reading, so a write landing between the read
            // and the wait still wakes this request.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (page, room) = self.read_page(collection, after, query, max_bytes).await?;
            // A page whose read budget ran out among skipped positions has
            // nothing to show but more to read: the client reads on at once,
            // where a wait would only read the same positions again.
            if !page.is_empty()
                || page.more
                || tokio::time::Instant::now() >= deadline
                || *closing.borrow()
            {
                return Ok((page, room));
            }
            // The room is the page's, not the wait's.
            drop(room);
            // Everything up to `page.next` was skipped: after a wake, only
            // what came since is read (a skip list of future positions would
            // otherwise make every write rescan the same pages).
            after = page.next;
            // The second look stays due until it is made: a wake before it
            // (a write this request skips) does not stand for it.
            settling = settling.filter(|settled| tokio::time::Instant::now() < *settled);
            let until = settling.map_or(deadline, |settled| settled.min(deadline));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => {}
                () = closed(&mut closing) => {}
            }
        }
    }

    /// Reads the feed after `after`, and writes what it found, until
    /// `query.limit` changes not in `query.skip` are found, their text
    /// passes `max_bytes`, the feed ends, or the read budget (reads, and
    /// changes passed over) is spent.
    ///
    /// The store is read in rounds: [`FIRST_READ`] changes (fewer when
    /// the collection's last page showed large ones), then as many as
    /// the text written so far says will fill the rest of the body, each
    /// round at most [`ROUND_GROWTH`] times the one before. A page
    /// read at its `limit` in one go read up to that many records (10,000 by
    /// default) from the store to send the few of them that fit in a body
    /// when records were large, and a pull read its whole collection again
    /// for every page.
    ///
    /// Takes room among the bodies held first, a whole body's if it is
    /// free, else what the page is expected to take ([`page_room`]), and
    /// writes no more than it (but for a first change larger than it),
    /// returning it with the page: room taken once a page was written left
    /// every request reading at once free to build a page of `max_bytes`,
    /// 512 of them by default. Pages are cut short only when room is.
    async fn read_page(
        &self,
        collection: &CollectionName,
        after: Cursor,
        query: &FeedQuery,
        max_bytes: usize,
    ) -> Result<(WrittenPage, OwnedSemaphorePermit), ApiError> {
        let learnt = self.text_per_change.lock().get(collection).copied();
        // A whole body's room when it is free: the estimate, from what one
        // page of the collection showed (another reader's, of records of
        // another size, maybe), cuts pages short only when room is short.
        let room = match self.body_room.try_take(kib(max_bytes)) {
            Some(room) => room,
            None => {
                let wanted = page_room(learnt, query.limit.get(), max_bytes);
                self.body_room
                    .take(kib(wanted), self.page_patience())
                    .await?
            }
        };
        let budget = page_budget(&room, max_bytes);
        let first = first_read(learnt, budget);
        let page = self
            .read_page_in_rounds(collection, after, query, budget, first)
            .await?;
        let (text, changes) =
            page.chunks
                .iter()
                .fold((0_usize, 0_usize), |(text, changes), chunk| {
                    (
                        text.saturating_add(chunk.bytes.len()),
                        changes + chunk.ends.len(),
                    )
                });
        if let Some(each) = text.checked_div(changes) {
            let mut sizes = self.text_per_change.lock();
            if sizes.len() >= REMEMBERED_SIZES && !sizes.contains_key(collection) {
                sizes.clear();
            }
            sizes.insert(collection.clone(), each);
        }
        Ok((page, room))
    }

    /// How long a feed page waits for room among the bodies held before it
    /// is answered busy.
    fn page_patience(&self) -> Duration {
        self.options.answer_margin()
    }

    /// [`read_page`](Self::read_page), whose first read takes `first`
    /// changes.
    async fn read_page_in_rounds(
        &self,
        collection: &CollectionName,
        after: Cursor,
        query: &FeedQuery,
        max_bytes: usize,
        first: usize,
    ) -> Result<WrittenPage, ApiError> {
        let limit = query.limit.get();
        let mut page = WrittenPage {
            chunks: Vec::new(),
            next: after,
            more: true,
        };
        let (mut kept, mut bytes) = (0_usize, 0_usize);
        let mut unscanned = if query.skip.is_empty() {
            usize::MAX
        } else {
            limit.saturating_mul(MAX_SCANNED_PAGES)
        };
        let mut round = first.min(limit);
        // The records found by earlier reads: one rewritten since is met
        // again, and a page holds each record once, at its latest change.
        let mut earlier: HashSet<RecordId> = HashSet::new();
        for _ in 0..MAX_READS_PER_PAGE {
            let Some(wanted) = NonZeroUsize::new(round.min(unscanned)) else {
                break;
            };
            // Positions right after this one that are all skipped need no read.
            if let Some([_, end]) = query.skip.find(page.next.get().saturating_add(1)) {
                page.next = Cursor::new(end);
            }
            let read = self.replica.changes(collection, page.next, wanted).await?;
            unscanned = unscanned.saturating_sub(read.changes.len());
            let last = read.changes.last().map(|change| change.cursor);
            let mut found = Vec::new();
            let mut jumped = None;
            let mut changes = read.changes.into_iter().peekable();
            let mut full = false;
            let mut repeated = false;
            for change in changes.by_ref() {
                match query.skip.find(change.cursor.get()) {
                    // A skipped run reaching past this read: read on after it.
                    Some([_, end]) if Some(Cursor::new(end)) > last => {
                        jumped = Some(Cursor::new(end));
                        break;
                    }
                    Some(_) => {}
                    // Rewritten since an earlier read found it: the page ends
                    // before it, and the next page brings its latest change.
                    None if earlier.contains(change.record.id()) => {
                        repeated = true;
                        break;
                    }
                    None => {
                        found.push(change);
                        if kept + found.len() == limit {
                            full = true;
                            break;
                        }
                    }
                }
            }
            if full || repeated {
                // The page ends at its last change; more may follow it.
                page.more = repeated || changes.peek().is_some() || read.more;
                page.next = found.last().map_or(page.next, |change| change.cursor);
            } else {
                page.next = jumped.map_or(read.next, |end| end.max(read.next));
                page.more = jumped.is_some() || read.more;
            }
            let ends = full || repeated || !page.more;
            if !ends {
                earlier.extend(found.iter().map(|change| change.record.id().clone()));
            }
            kept += found.len();
            for chunk in write_spread(found, max_bytes.saturating_sub(bytes)).await? {
                bytes = bytes.saturating_add(chunk.bytes.len());
                page.chunks.push(chunk);
            }
            if ends || bytes > max_bytes {
                return Ok(page);
            }
            // Enough changes of the size seen so far to fill the body, and a
            // quarter more, so that one round usually does; but at most
            // ROUND_GROWTH times the last round, since the changes still
            // unread may be far larger than those read (a few small records
            // before many large ones would have had the next round read
            // thousands of large records to send a few).
            let filling = match bytes.checked_div(kept) {
                Some(each) => {
                    let filling = (max_bytes - bytes) / each.max(1);
                    filling.saturating_add(filling / 4).saturating_add(1)
                }
                None => usize::MAX,
            };
            round = filling
                .min(round.saturating_mul(ROUND_GROWTH))
                .min(limit - kept);
        }
        Ok(page)
    }
}

/// Long-poll wake-ups, one `Notify` per collection being waited on. The
/// replica is watched only while a request waits, so that writes cost
/// nothing extra when nobody long-polls. A write already under way when the
/// watch starts may go unannounced (an engine announces it when it lands;
/// another replica need not), so requests made in the watch's first
/// [`WATCH_SETTLING`] read once more when it is over.
struct Watchers {
    replica: Arc<dyn Replica>,
    by_collection: Mutex<HashMap<CollectionName, Weak<Notify>>>,
    /// Requests waiting, and the watch on the replica while there are any.
    /// Never locked on the writing path (`wake`), so that installing or
    /// dropping the watch, which takes the replica's own locks, cannot
    /// deadlock with a write calling `wake`.
    watching: Mutex<Watching>,
}

/// How long after starting the watch a long poll reads once more: long
/// enough for most writes under way when it started to land.
const WATCH_SETTLING: Duration = Duration::from_secs(1);

/// The requests waiting, and the watch on the replica while there are any.
#[derive(Default)]
struct Watching {
    requests: usize,
    guard: Option<WatchGuard>,
    /// When the first moments of the watch end: writes under way when it
    /// started have landed by then.
    settled: Option<tokio::time::Instant>,
}

/// One waiting request: its collection's notifier, and its share in
/// keeping the replica watched.
struct Waiting {
    notify: Arc<Notify>,
    watchers: Arc<Watchers>,
    /// When the watch's first moments end, if they had not when this
    /// request came.
    settled: Option<tokio::time::Instant>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let unwatched = {
            let mut watching = self.watchers.watching.lock();
            watching.requests -= 1;
            if watching.requests == 0 {
                watching.guard.take()
            } else {
                None
            }
        };
        drop(unwatched);
    }
}

impl Watchers {
    fn new(replica: Arc<dyn Replica>) -> Self {
        Watchers {
            replica,
            by_collection: Mutex::new(HashMap::new()),
            watching: Mutex::new(Watching::default()),
        }
    }

    /// Registers a request waiting on `collection`; the replica is watched
    /// from now until the returned value is dropped.
    fn wait(watchers: &Arc<Watchers>, collection: &CollectionName) -> Waiting {
        let notify = watchers.notify(collection);
        let mut watching = watchers.watching.lock();
        watching.requests += 1;
        let now = tokio::time::Instant::now();
        if watching.guard.is_none() {
            watching.settled = Some(now + WATCH_SETTLING);
            let woken = Arc::downgrade(watchers);
            watching.guard = Some(watchers.replica.watch(Box::new(
                move |collection: &CollectionName| {
                    if let Some(watchers) = woken.upgrade() {
                        watchers.wake(collection);
                    }
                },
            )));
        }
        Waiting {
            notify,
            watchers: watchers.clone(),
            settled: watching.settled.filter(|settled| now < *settled),
        }
    }

    /// The notifier of `collection`, shared by everyone waiting on it.
    fn notify(&self, collection: &CollectionName) -> Arc<Notify> {
        let mut map = self.by_collection.lock();
        if let Some(notify) = map.get(collection).and_then(Weak::upgrade) {
            return notify;
        }
        // Forget collections nobody waits on any more before adding one.
        map.retain(|_, notify| notify.strong_count() > 0);
        let notify = Arc::new(Notify::new());
        map.insert(collection.clone(), Arc::downgrade(&notify));
        notify
    }

    fn wake(&self, collection: &CollectionName) {
        let notify = self
            .by_collection
            .lock()
            .get(collection)
            .and_then(Weak::upgrade);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }
}

/// POST bodies must say they are JSON: a browser cannot send that
/// cross-origin without a CORS preflight.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "the body must be `application/json`, not {:?}",
                shorten(content_type)
            ),
        ))
    }
}

/// The refusal of a body larger than `max` bytes.
fn too_large(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the body is larger than the server accepts ({max} bytes)"),
    )
}

/// The body length the request declares (`None`: it declares none), refused
/// when it is larger than `max` bytes.
fn declared_length(headers: &HeaderMap, max: usize) -> Result<Option<usize>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > max as u64 => Err(too_large(max)),
        // At most `max`, so it fits.
        Some(length) => Ok(Some(usize::try_from(length).unwrap_or(max))),
        None => Ok(None),
    }
}

/// Reads the whole body, refused with 413 past `max` bytes, of `declared`
/// length if the request declared one ([`declared_length`], which refuses a
/// declared length over `max` before anything is read).
async fn read_body(
    declared: Option<usize>,
    stream: &mut BodyDataStream,
    max: usize,
) -> Result<Vec<u8>, ApiError> {
    // Reserved from the declared length only up to a point: the length is
    // the client's word, and the bytes have not come yet.
    let mut collected = Vec::with_capacity(declared.unwrap_or(0).min(MAX_RESERVED_BODY));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::new(
                ErrorCode::MalformedJson,
                format!("the body could not be read: {error}"),
            )
        })?;
        if collected.len() + chunk.len() > max {
            return Err(too_large(max));
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(collected)
}

/// Reads and drops the rest of the body of a refused request (a token that
/// may not write, a body that is not JSON, one larger than `max`, a server
/// busy with other pushes), up to `max` or [`MAX_DISCARDED_BODY`] bytes,
/// whichever is larger, for at most `within`. Answered with its body
/// unread, the connection was closed under a client still sending it,
/// which saw a broken pipe instead of the refusal, took it for a transient
/// failure, and tried again for ever (an auto-sync with a read-only token,
/// or a push of a record larger than the server takes).
///
/// Read on a task of its own while the refusal goes out at once: read
/// before answering, a body arriving more slowly than the request's time
/// allows turned the refusal into a `timeout`, which tells a client on a
/// slow link to try again, where the refusal tells it not to.
///
/// Not read: a body declared longer than that (cut off anyway), or one the
/// client sends only once told to go on (`Expect: 100-continue`, which
/// reading would tell it), unless the reading has begun (it was told).
fn discard_body(
    headers: &HeaderMap,
    mut stream: BodyDataStream,
    reading: Reading,
    max: usize,
    within: Duration,
) {
    let most = max.max(MAX_DISCARDED_BODY);
    let waits_to_send = reading == Reading::NotBegun && headers.contains_key(header::EXPECT);
    if waits_to_send || declared_length(headers, most).is_err() {
        return;
    }
    tokio::spawn(async move {
        let read_all = async {
            let mut read = 0usize;
            while let Some(Ok(chunk)) = stream.next().await {
                read = read.saturating_add(chunk.len());
                if read > most {
                    break;
                }
            }
        };
        // Past `within`, the rest is left unread: the connection closes.
        let _ = tokio::time::timeout(within, read_all).await;
    });
}

/// Whether a request's body was read from before it was refused: a client
/// that waited to be told to go on (`Expect: 100-continue`) was told then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    NotBegun,
    Begun,
}

/// Reads `{"records": [...]}`, refusing more than `max` records while
/// reading. Only the envelope is parsed here: each record is checked to be
/// well-formed JSON and located (its byte range in `text`), to be decoded
/// by [`decode_records`].
fn parse_records(text: &str, max: usize) -> Result<Vec<Range<usize>>, ApiError> {
    let mut over_limit = false;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = EnvelopeSeed {
        base: text.as_ptr() as usize,
        max,
        over_limit: &mut over_limit,
    }
    .deserialize(&mut deserializer)
    .and_then(|records| deserializer.end().map(|()| records));
    match parsed {
        Ok(records) => Ok(records),
        Err(_) if over_limit => Err(ApiError::new(
            ErrorCode::TooManyRecords,
            format!("more than {max} records in one request; send them in several"),
        )),
        Err(error) => Err(malformed(&error)),
    }
}

fn malformed(error: &serde_json::Error) -> ApiError {
    ApiError::new(
        ErrorCode::MalformedJson,
        format!("the body is not a sync request ({{\"records\": [...]}}): {error}"),
    )
}

/// Decodes the records at `spans` of `bytes` (from [`parse_records`]),
/// spread over the machine's cores on blocking threads: reading JSON into
/// records is most of a push's cost on the server, and the async workers
/// stay free meanwhile. The first bad record (by index) refuses the whole
/// request; a record that is not JSON the parser accepts (nested too deep)
/// is reported before any refused record, as when the body was read whole.
async fn decode_records(
    text: Arc<String>,
    spans: Vec<Range<usize>>,
) -> Result<Vec<Record>, ApiError> {
    let mut records = Vec::with_capacity(spans.len());
    let mut refused: Option<ChunkError> = None;
    let length = text.len();
    let chunks = parallel::in_chunks(
        spans,
        |_| length,
        move |chunk, offset| decode_chunk(&text, &chunk, offset),
    )
    .await;
    for outcome in chunks {
        let outcome = outcome.map_err(|error| {
            tracing::error!(%error, "a record decoding task failed");
            ApiError::new(ErrorCode::Internal, "the records could not be decoded")
        })?;
        match outcome {
            Ok(chunk) if refused.is_none() => records.extend(chunk),
            Ok(_) => {}
            // Chunks come in index order: the first JSON error, else the
            // first refused record.
            Err(error) => {
                refused = match refused {
                    Some(ChunkError::Record(_)) if error.is_json() => Some(error),
                    None => Some(error),
                    kept => kept,
                };
            }
        }
    }
    match refused {
        Some(error) => Err(error.into_api()),
        None => Ok(records),
    }
}

/// Why a chunk of records was refused.
enum ChunkError {
    /// A record the JSON parser refuses (nested too deep).
    Json(ApiError),
    /// A record that is not a valid record.
    Record(ApiError),
}

impl ChunkError {
    fn is_json(&self) -> bool {
        matches!(self, ChunkError::Json(_))
    }

    fn into_api(self) -> ApiError {
        match self {
            ChunkError::Json(error) | ChunkError::Record(error) => error,
        }
    }
}

/// Decodes the records at `spans`, the first of them at index `offset` of
/// the request. After a refused record, the rest is only parsed, so that a
/// JSON error anywhere still wins.
fn decode_chunk(
    text: &str,
    spans: &[Range<usize>],
    offset: usize,
) -> Result<Vec<Record>, ChunkError> {
    let mut records = Vec::with_capacity(spans.len());
    let mut refused = None;
    for (index, span) in spans.iter().enumerate() {
        let record = text.get(span.clone()).unwrap_or_default();
        if refused.is_none() {
            if let Some(record) = Record::from_stored_json(record) {
                records.push(record);
                continue;
            }
        }
        let value: Value =
            serde_json::from_str(record).map_err(|error| ChunkError::Json(malformed(&error)))?;
        if refused.is_some() {
            continue;
        }
        match Record::from_json(value) {
            Ok(record) => records.push(record),
            Err(error) => refused = Some(ApiError::from(error).at_index(offset + index)),
        }
    }
    match refused {
        Some(error) => Err(ChunkError::Record(error)),
        None => Ok(records),
    }
}

struct EnvelopeSeed<'a> {
    /// Where the body starts in memory, to locate each record in it.
    base: usize,
    max: usize,
    over_limit: &'a mut bool,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Vec<Range<usize>>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = Vec<Range<usize>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object with a `records` array")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut records = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "records" {
                if records.is_some() {
                    return Err(serde::de::Error::duplicate_field("records"));
                }
                records = Some(map.next_value_seed(RecordsSeed {
                    base: self.base,
                    max: self.max,
                    over_limit: &mut *self.over_limit,
                })?);
            } else {
                // Fields a later protocol version may add.
                map.next_value::<IgnoredAny>()?;
            }
        }
        records.ok_or_else(|| serde::de::Error::missing_field("records"))
    }
}

struct RecordsSeed<'a> {
    base: usize,
    max: usize,
    over_limit: &'a mut bool,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = Vec<Range<usize>>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = Vec<Range<usize>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max));
        // Each record is borrowed from the body as raw JSON (checked
        // well-formed, not decoded), and kept as its byte range.
        while let Some(record) = seq.next_element::<&'de RawValue>()? {
            if records.len() == self.max {
                *self.over_limit = true;
                return Err(serde::de::Error::custom("too many records"));
            }
            let text = record.get();
            let start = (text.as_ptr() as usize).wrapping_sub(self.base);
            records.push(start..start.saturating_add(text.len()));
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncforge_core::ChangePage;

    /// A page's room: `limit` changes of the size shown, with their commas
    /// and the page's frame; for a collection no page showed yet, room for
    /// a first read of small records; never past a body's bound.
    #[test]
    fn a_page_takes_room_for_the_changes_it_may_hold() {
        const BODY: usize = 16 << 20;
        assert_eq!(page_room(Some(300), 1_000, BODY), 301 * 1_000 + PAGE_FRAME);
        assert_eq!(page_room(Some(300), 1_000_000, BODY), BODY);
        assert_eq!(page_room(Some(usize::MAX), 2, BODY), BODY);
        let unseen = UNSEEN_CHANGE * FIRST_READ + PAGE_FRAME;
        assert_eq!(page_room(None, 10_000, BODY), unseen);
        assert_eq!(page_room(None, 1, BODY), UNSEEN_CHANGE + PAGE_FRAME);
        assert_eq!(page_room(None, 10_000, 1_000), 1_000);
    }

    /// Room made smaller gives the rest back; made larger, it takes what is
    /// free at once, and otherwise gives back what it held before it waits
    /// (a request waiting for more while holding some kept that from the
    /// others), answering busy when nothing frees in time.
    #[tokio::test]
    async fn room_is_resized_without_waiting_while_holding_any() {
        let room = Permits::new(10, "closed", "busy");
        let free = || room.permits.available_permits();
        let held = room.take(6, Duration::ZERO).await.unwrap();
        let held = room.resize(held, 2, Duration::ZERO).await.unwrap();
        assert_eq!((held.num_permits(), free()), (2, 8));
        let held = room.resize(held, 5, Duration::ZERO).await.unwrap();
        assert_eq!((held.num_permits(), free()), (5, 5));
        let other = room.take(4, Duration::ZERO).await.unwrap();
        let refused = room
            .resize(held, 9, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::Unavailable);
        assert_eq!(free(), 6);
        drop(other);
        let all = room.take(100, Duration::ZERO).await.unwrap();
        assert_eq!(all.num_permits(), 10);
    }

    /// `page` as `changes` answers it: written, then laid out within
    /// `max_bytes`.
    async fn body_of(collection: &CollectionName, page: ChangePage, max_bytes: usize) -> Vec<u8> {
        let written = WrittenPage {
            chunks: write_spread(page.changes, max_bytes).await.unwrap(),
            next: page.next,
            more: page.more,
        };
        page_body("feed", collection, written, max_bytes).unwrap().0
    }

    /// The body checks of the sync route: UTF-8, then the envelope.
    fn parse_body(bytes: &[u8], max: usize) -> Result<Vec<Range<usize>>, ApiError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|error| ApiError::new(ErrorCode::MalformedJson, error.to_string()))?;
        parse_records(text, max)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn feed_pages_are_written_as_serde_writes_them() {
        use crate::protocol::{ChangesResponse, WireChange};
        use serde_json::json;
        use syncforge_core::{Change, Content, Stamp};
        let collection = CollectionName::new("notes \"x\"").unwrap();
        for count in [0, 1, 3, 1_000] {
            let changes: Vec<Change> = (0..count)
                .map(|i| {
                    let content = Content::from_value(
                        json!({"id": format!("n{i}"), "text": format!("note\n{i}"), "n": i}),
                    )
                    .unwrap();
                    let stamp = Stamp::new(1_700_000_000_000 + i, 0, "tablet").unwrap();
                    Change {
                        cursor: Cursor::new(i + 1),
                        record: Record::create(content, &stamp),
                    }
                })
                .collect();
            let expected = serde_json::to_vec(&ChangesResponse {
                feed_id: "feed".to_owned(),
                collection: collection.as_str().to_owned(),
                changes: changes
                    .iter()
                    .map(|change| WireChange {
                        cursor: change.cursor,
                        record: change.record.clone(),
                    })
                    .collect(),
                next: Cursor::new(count + 5),
                more: count % 2 == 1,
            })
            .unwrap();
            let page = ChangePage {
                changes,
                next: Cursor::new(count + 5),
                more: count % 2 == 1,
            };
            let body = body_of(&collection, page, super::super::DEFAULT_MAX_BODY_BYTES).await;
            assert_eq!(
                String::from_utf8(body).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    /// A page whose records would outgrow the body bound ends at the last
    /// change that fits, saying more follow; its first change is sent
    /// whatever its size, so that every page advances.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn feed_pages_stay_within_the_body_bound() {
        use crate::protocol::ChangesResponse;
        use syncforge_core::{Change, Content, Stamp};
        let collection = CollectionName::new("photos").unwrap();
        let page = |count: u64| ChangePage {
            changes: (0..count)
                .map(|i| {
                    let content = Content::from_value(
                        serde_json::json!({"id": format!("p{i:04}"), "blob": "x".repeat(1_000)}),
                    )
                    .unwrap();
                    let stamp = Stamp::new(1_700_000_000_000 + i, 0, "tablet").unwrap();
                    Change {
                        cursor: Cursor::new(i * 2 + 1),
                        record: Record::create(content, &stamp),
                    }
                })
                .collect(),
            next: Cursor::new(count * 2 + 7),
            more: false,
        };
        let read = |body: Vec<u8>| serde_json::from_slice::<ChangesResponse>(&body).unwrap();
        // 1,000 changes of about 1.2 KB, within 100 KB: the first eighty or so.
        let body = body_of(&collection, page(1_000), 100_000).await;
        assert!(body.len() <= 100_000, "{} bytes", body.len());
        let answer = read(body);
        let kept = answer.changes.len();
        assert!((60..100).contains(&kept), "{kept}");
        assert_eq!(answer.next, answer.changes[kept - 1].cursor);
        assert!(answer.more);
        // A first change larger than the bound goes alone.
        let answer = read(body_of(&collection, page(3), 10).await);
        assert_eq!(answer.changes.len(), 1);
        assert_eq!((answer.next, answer.more), (Cursor::new(1), true));
        // A page that fits is answered whole, with the store's next.
        let answer = read(body_of(&collection, page(3), 100_000).await);
        assert_eq!(answer.changes.len(), 3);
        assert_eq!((answer.next, answer.more), (Cursor::new(13), false));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_decoded_in_chunks_are_refused_as_when_read_whole() {
        let body = |bad: &[(usize, String)]| {
            let records: Vec<String> = (0..1_000)
                .map(|i| {
                    bad.iter().find(|(at, _)| *at == i).map_or_else(
                        || format!(
                                "{{\"id\":\"r{i}\",\"n\":{i},\"_version\":1,\"_timestamp\":5,\"_deleted\":false,\"_clientId\":\"web\"}}"
                            ),
                        |(_, text)| text.clone(),
                    )
                })
                .collect();
            format!("{{\"records\":[{}]}}", records.join(","))
        };
        let decode = |text: String| async move {
            let spans = parse_records(&text, 10_000)?;
            decode_records(Arc::new(text), spans).await
        };
        let records = decode(body(&[])).await.unwrap();
        assert_eq!(records.len(), 1_000);
        assert_eq!(records[999].id().as_str(), "r999");
        // The first refused record by index, whichever chunk it is in: the
        // two are in different chunks on any machine of two cores or more
        // (1,000 records go in chunks of 500 or fewer).
        let refused = decode(body(&[(900, "7".to_owned()), (100, "[]".to_owned())]))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::InvalidRecord);
        assert!(format!("{refused:?}").contains("100"), "{refused:?}");
        // JSON the parser refuses wins over a refused record before it.
        let deep = format!(
            "{{\"id\":\"deep\",\"v\":{}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        let refused = decode(body(&[(10, "7".to_owned()), (990, deep)]))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::MalformedJson);
    }

    #[test]
    fn record_bodies_are_counted_while_read() {
        assert_eq!(
            parse_body(br#"{"records":[{"id":"a"},{"id":"b"}]}"#, 2)
                .unwrap()
                .len(),
            2
        );
        let too_many = parse_body(br#"{"records":[{},{},{}]}"#, 2).unwrap_err();
        assert_eq!(too_many.code(), ErrorCode::TooManyRecords);
        for malformed in [
            &b"{"[..],
            b"[]",
            b"{}",
            br#"{"records":{}}"#,
            br#"{"records":[],"records":[]}"#,
            br#"{"records":[]} trailing"#,
            b"\xff",
        ] {
            let error = parse_body(malformed, 10).unwrap_err();
            assert_eq!(error.code(), ErrorCode::MalformedJson, "{malformed:?}");
        }
        assert!(parse_body(br#"{"records":[],"later":{"x":1}}"#, 10)
            .unwrap()
            .is_empty());
    }
}
