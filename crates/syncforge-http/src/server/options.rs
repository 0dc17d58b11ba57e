//! What a sync server is configured with: access tokens, CORS, compression
//! and limits.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use syncforge_core::{validate_collection, Error, Result};

use crate::protocol::{bearer_token_fault, Limits};

/// Default largest request body: 16 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Default most records per sync request.
pub const DEFAULT_MAX_RECORDS: usize = 10_000;
/// Default most changes per feed page.
pub const DEFAULT_MAX_PAGE: usize = 10_000;
/// Default page size when a feed request names no `limit`.
pub const DEFAULT_PAGE: usize = 100;
/// Default longest long-poll wait.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(25);
/// Default request timeout (longer than the longest wait).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a client has to send a request's headers, and longest a
/// connection stays open between two requests.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default most sync requests merged at once.
pub const DEFAULT_MAX_CONCURRENT_SYNCS: usize = 32;
/// Default most bytes of sync request bodies held at once, across all
/// requests: 256 MiB.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;
/// Default most connections a [`Server`](crate::Server) keeps open at once:
/// room under the usual limit of 1,024 open files a process, for the store's.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// What a token may do with the collections it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Read the change feed and list collections.
    Read,
    /// Read, and push records to sync.
    ReadWrite,
}

/// A bearer token the server accepts: its secret (kept only as a SHA-256
/// digest, compared in constant time), what it may do, and on which
/// collections.
///
/// ```
/// use syncforge_http::AccessToken;
/// let technicians = AccessToken::read_write("s3cret-tablet-token").collections(["inspections"]);
/// let dashboard = AccessToken::read_only("s3cret-dashboard-token"); // every collection
/// # let _ = (technicians, dashboard);
/// ```
#[derive(Clone)]
pub struct AccessToken {
    pub(crate) digest: [u8; 32],
    /// Why no client could send the secret, if none could
    /// ([`bearer_token_fault`]); the secret itself is not kept.
    secret_fault: Option<&'static str>,
    pub(crate) access: Access,
    /// `None`: every collection.
    pub(crate) collections: Option<BTreeSet<String>>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret, nor its digest.
        f.debug_struct("AccessToken")
            .field("access", &self.access)
            .field("collections", &self.collections)
            .finish_non_exhaustive()
    }
}

impl AccessToken {
    /// A token with `secret` and `access` on every collection.
    pub fn new(secret: impl AsRef<str>, access: Access) -> Self {
        let secret = secret.as_ref();
        AccessToken {
            digest: digest(secret),
            secret_fault: bearer_token_fault(secret),
            access,
            collections: None,
        }
    }

    /// A token that may read and write every collection.
    pub fn read_write(secret: impl AsRef<str>) -> Self {
        AccessToken::new(secret, Access::ReadWrite)
    }

    /// A token that may only read, every collection.
    pub fn read_only(secret: impl AsRef<str>) -> Self {
        AccessToken::new(secret, Access::Read)
    }

    /// Limits the token to these collections (checked as names, and to
    /// be at least one, when the router is built).
    #[must_use]
    pub fn collections<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.collections = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// What the token may do.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Whether the token may do `needed` on `collection`.
    pub(crate) fn allows(&self, collection: &str, needed: Access) -> bool {
        self.access >= needed && self.covers(collection)
    }

    /// Whether the token reaches `collection` at all.
    pub(crate) fn covers(&self, collection: &str) -> bool {
        self.collections
            .as_ref()
            .is_none_or(|names| names.contains(collection))
    }
}

/// SHA-256 of a presented or configured secret: compared digests have one
/// length whatever the secrets' lengths.
pub(crate) fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Which browser origins may call the server (CORS).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cors {
    /// No CORS headers: browsers refuse cross-origin calls (the default).
    #[default]
    Off,
    /// Any origin.
    AnyOrigin,
    /// Exactly these origins (`https://app.example.com`).
    Origins(Vec<String>),
}

/// How a sync server behaves: tokens, CORS, compression, limits, timeouts.
///
/// With no token configured the server is open: every client may read and
/// write every collection (for a trusted network only; the router logs a
/// warning). With tokens, every route but `/v1/health` needs
/// `Authorization: Bearer <token>`.
///
/// ```
/// use std::time::Duration;
/// use syncforge_http::{AccessToken, ServerOptions};
///
/// let options = ServerOptions::default()
///     .token(AccessToken::read_write("tablet-secret").collections(["inspections"]))
///     .token(AccessToken::read_only("dashboard-secret"))
///     .cors_allow_origins(["https://dashboard.example.com"])
///     .max_records(5_000)
///     .max_wait(Duration::from_secs(20));
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub(crate) tokens: Vec<AccessToken>,
    pub(crate) cors: Cors,
    pub(crate) compression: bool,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_records: usize,
    pub(crate) max_page: usize,
    pub(crate) max_wait: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_concurrent_syncs: usize,
    pub(crate) max_buffered_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            tokens: Vec::new(),
            cors: Cors::Off,
            compression: true,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_records: DEFAULT_MAX_RECORDS,
            max_page: DEFAULT_MAX_PAGE,
            max_wait: DEFAULT_MAX_WAIT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_syncs: DEFAULT_MAX_CONCURRENT_SYNCS,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
        }
    }
}

impl ServerOptions {
    /// Accepts `token` (in addition to those already added).
    #[must_use]
    pub fn token(mut self, token: AccessToken) -> Self {
        self.tokens.push(token);
        self
    }

    /// Lets browser apps from these origins call the server. `"*"` is
    /// refused (see [`cors_allow_any_origin`](Self::cors_allow_any_origin)).
    #[must_use]
    pub fn cors_allow_origins<S: Into<String>>(
        mut self,
        origins: impl IntoIterator<Item = S>,
    ) -> Self {
        self.cors = Cors::Origins(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Lets browser apps from any origin call the server.
    #[must_use]
    pub fn cors_allow_any_origin(mut self) -> Self {
        self.cors = Cors::AnyOrigin;
        self
    }

    /// Whether responses are gzip-compressed for clients that accept it
    /// (default on).
    #[must_use]
    pub fn compression(mut self, enabled: bool) -> Self {
        self.compression = enabled;
        self
    }

    /// Largest request body in bytes (default 16 MiB); larger ones get 413.
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Most records one sync request may carry (default 10,000); more get 413.
    #[must_use]
    pub fn max_records(mut self, records: usize) -> Self {
        self.max_records = records;
        self
    }

    /// Most changes in one feed page (default 10,000); a larger `limit` is
    /// lowered to it.
    #[must_use]
    pub fn max_page(mut self, changes: usize) -> Self {
        self.max_page = changes;
        self
    }

    /// Longest long-poll wait (default 25 s); a larger `wait` is lowered to
    /// it. Must be shorter than the request timeout, and a wait is lowered
    /// further to leave the last tenth of it, in which the answer is read
    /// and sent. A waiting request wakes
    /// at once for changes written through this server's engine, and sees
    /// one written to a shared store by another process only when its wait
    /// ends: where several processes write one store, this bounds how late
    /// clients learn of such changes.
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// How long one request may take before the server answers 503
    /// `timeout` (default 30 s). A sync still running then completes in the
    /// background; the client, told to retry, merges again harmlessly. A
    /// connection of a [`Server`](crate::Server) (or [`serve`](crate::serve))
    /// whose client takes none of an answer for this long is closed, giving
    /// back the room its answer held
    /// ([`max_buffered_bytes`](Self::max_buffered_bytes)).
    /// [`Server::shutdown`](crate::Server::shutdown) waits for requests in
    /// flight this long, and five seconds more.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a client has to send a request's headers, and how long a
    /// connection may stay open between two requests (default 30 s); then
    /// [`Server`](crate::Server) closes it. Without it, clients that send
    /// half a request would hold their connections for good. Keep it longer
    /// than clients keep idle connections (`HttpPeer`: 5 s), or a client
    /// may send a request on a connection the server is closing.
    ///
    /// Applies to [`Server`](crate::Server) and [`serve`](crate::serve), which
    /// own their connections; a [`router`](crate::router) mounted in your own
    /// server has that server's settings.
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Most connections served at once (default 512). A further client is
    /// answered 503 `unavailable` with `Retry-After` and its connection
    /// closed (up to 64 such answers at a time; past those, clients wait in
    /// the operating system's queue). Each long-polling client holds a
    /// connection for as long as it keeps polling, so set it above the
    /// number of clients that follow the feed at once. Raise the process's
    /// open-file limit with it.
    ///
    /// Applies to [`Server`](crate::Server) and [`serve`](crate::serve), as
    /// [`header_read_timeout`](Self::header_read_timeout) does.
    #[must_use]
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// Most sync requests merged at once (default 32). A merge keeps its
    /// place until it ends, also when its request has timed out and it
    /// completes in the background; further sync requests wait for a place,
    /// up to half the request timeout, and are then answered 503
    /// `unavailable` (busy, try later). Bounds the merges, and the records
    /// they hold, that clients retrying slow pushes can pile up.
    #[must_use]
    pub fn max_concurrent_syncs(mut self, syncs: usize) -> Self {
        self.max_concurrent_syncs = syncs;
        self
    }

    /// Most bytes of sync request bodies and feed pages held at once,
    /// across all requests (default 256 MiB, and never less than
    /// [`max_body_bytes`](Self::max_body_bytes), so that the largest body
    /// allowed always gets in). A push takes room for its body (the length
    /// it declares, or `max_body_bytes` if it declares none) before reading
    /// it, and keeps the room until its merge ends; a push that finds no
    /// room waits for it, up to half the request timeout, and is then
    /// answered 503 `unavailable`. A feed page takes room before the store
    /// is read for it (`max_body_bytes` when that much is free; else its
    /// limit times what a change took in the collection's last page, or 4
    /// KiB for each of up to 64 changes in a collection no page showed
    /// yet, with 4 KiB for the page's frame, up to `max_body_bytes`), ends
    /// early (`more` set) rather than outgrow
    /// it (but for a first change larger than it, sent alone), keeps as
    /// much as it came out, and keeps that until it is sent (or its
    /// connection closes). A page that finds no room waits for it, up to a
    /// tenth of the request timeout, and is then answered 503
    /// `unavailable`; a client that takes none of its page for the request
    /// timeout has its connection closed (by a [`Server`](crate::Server);
    /// a [`router`](crate::router) mounted in your own server leaves that
    /// to the server). Without it, every
    /// connection could hold a body of `max_body_bytes` at once (512 × 16
    /// MiB by default), a client that reads its answers slowly or not at
    /// all included. The bound counts body bytes: the records decoded
    /// from a body take a few times its size, and while one is decoded its
    /// values are parsed whole, so a body of tiny values (an array of
    /// one-digit numbers: two bytes of text each, 32 bytes parsed) takes 16
    /// to 32 times its size for a moment.
    #[must_use]
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes = bytes;
        self
    }

    /// The limits as the health route reports them.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_records: self.max_records,
            max_page: self.max_page,
            max_wait_ms: u64::try_from(self.longest_wait().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The longest a long poll waits: [`max_wait`](Self::max_wait), but
    /// leaving the last tenth of the request timeout for the answer (the
    /// feed is read once more after the wait, and the page may wait for
    /// room): a wait that took that tenth too timed out every long poll
    /// on a quiet collection.
    pub(crate) fn longest_wait(&self) -> Duration {
        self.max_wait
            .min(self.request_timeout.saturating_sub(self.answer_margin()))
    }

    /// The last tenth of the request timeout, kept for an answer to go out
    /// before the request's limit cuts the connection: after a long poll's
    /// wait, after a push's upload; also how long a feed page waits for
    /// room.
    pub(crate) fn answer_margin(&self) -> Duration {
        /// The share of the request's time (one part in this many).
        const ANSWER_MARGIN_DIVISOR: u32 = 10;
        self.request_timeout / ANSWER_MARGIN_DIVISOR
    }

    /// Refuses settings that cannot work, naming the option
    /// ([`Error::InvalidConfig`]): what [`router`](crate::router) and
    /// [`Server::bind`](crate::Server::bind) check first, for a caller that
    /// wants to know before it opens anything.
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |option: &'static str, reason: String| Err(Error::InvalidConfig { option, reason });
        for (option, value) in [
            ("max_body_bytes", self.max_body_bytes),
            ("max_records", self.max_records),
            ("max_page", self.max_page),
            ("max_connections", self.max_connections),
            ("max_concurrent_syncs", self.max_concurrent_syncs),
            ("max_buffered_bytes", self.max_buffered_bytes),
        ] {
            if value == 0 {
                return invalid(option, "must be at least 1".to_owned());
            }
        }
        for (option, timeout) in [
            ("request_timeout", self.request_timeout),
            ("header_read_timeout", self.header_read_timeout),
        ] {
            if timeout.is_zero() {
                return invalid(option, "must be longer than zero".to_owned());
            }
        }
        if self.max_wait >= self.request_timeout {
            return invalid(
                "max_wait",
                format!(
                    "{:?} is not shorter than the request timeout {:?}: every long poll would time out",
                    self.max_wait, self.request_timeout
                ),
            );
        }
        let mut digests = BTreeSet::new();
        for token in &self.tokens {
            if let Some(fault) = token.secret_fault {
                return invalid(
                    "token",
                    format!("a token's secret {fault}: no client could send it"),
                );
            }
            if !digests.insert(token.digest) {
                return invalid("token", "the same secret is configured twice".to_owned());
            }
            if token.collections.as_ref().is_some_and(BTreeSet::is_empty) {
                return invalid(
                    "token",
                    "a token is limited to no collection: it could do nothing".to_owned(),
                );
            }
            for name in token.collections.iter().flatten() {
                validate_collection(name).map_err(|error| Error::InvalidConfig {
                    option: "token",
                    reason: format!("a token names an invalid collection: {error}"),
                })?;
            }
        }
        if let Cors::Origins(origins) = &self.cors {
            for origin in origins {
                if origin == "*" {
                    return invalid(
                        "cors_allow_origins",
                        "\"*\" is not an origin: allow every origin with cors_allow_any_origin()"
                            .to_owned(),
                    );
                }
                if axum::http::HeaderValue::from_str(origin).is_err() {
                    return invalid(
                        "cors_allow_origins",
                        format!("{origin:?} is not a valid origin header value"),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        let refused = |options: ServerOptions| match options.validate() {
            Err(Error::InvalidConfig { option, .. }) => option,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        assert!(ServerOptions::default().validate().is_ok());
        assert_eq!(
            refused(ServerOptions::default().max_records(0)),
            "max_records"
        );
        assert_eq!(
            refused(ServerOptions::default().max_connections(0)),
            "max_connections"
        );
        assert_eq!(
            refused(ServerOptions::default().max_concurrent_syncs(0)),
            "max_concurrent_syncs"
        );
        assert_eq!(
            refused(ServerOptions::default().max_buffered_bytes(0)),
            "max_buffered_bytes"
        );
        assert_eq!(
            refused(ServerOptions::default().header_read_timeout(Duration::ZERO)),
            "header_read_timeout"
        );
        assert_eq!(
            refused(ServerOptions::default().max_wait(Duration::from_secs(40))),
            "max_wait"
        );
        // The last tenth of the request's time is the answer's: a longer
        // wait is lowered to leave it.
        let nearly = ServerOptions::default()
            .request_timeout(Duration::from_secs(1))
            .max_wait(Duration::from_millis(990));
        assert!(nearly.validate().is_ok());
        assert_eq!(nearly.longest_wait(), Duration::from_millis(900));
        assert_eq!(nearly.limits().max_wait_ms, 900);
        assert_eq!(ServerOptions::default().longest_wait(), DEFAULT_MAX_WAIT);
        assert_eq!(
            refused(ServerOptions::default().token(AccessToken::read_only(""))),
            "token"
        );
        // Limited to no collection, a token could not even list them.
        let nothing: [&str; 0] = [];
        assert_eq!(
            refused(
                ServerOptions::default().token(AccessToken::read_write("a").collections(nothing))
            ),
            "token"
        );
        assert_eq!(
            refused(
                ServerOptions::default()
                    .token(AccessToken::read_only("a"))
                    .token(AccessToken::read_write("a"))
            ),
            "token"
        );
        assert_eq!(
            refused(
                ServerOptions::default().token(AccessToken::read_only("a").collections(["bad\n"]))
            ),
            "token"
        );
        assert_eq!(
            refused(ServerOptions::default().token(AccessToken::read_write("secret\r"))),
            "token"
        );
        assert_eq!(
            refused(ServerOptions::default().token(AccessToken::read_only("two words"))),
            "token"
        );
        // The server reads the header as ASCII: such a secret never matched.
        assert_eq!(
            refused(ServerOptions::default().token(AccessToken::read_only("pässwort"))),
            "token"
        );
        // The CORS layer panics on a "*" in a list of origins.
        assert_eq!(
            refused(ServerOptions::default().cors_allow_origins(["https://a.example", "*"])),
            "cors_allow_origins"
        );
    }

    #[test]
    fn tokens_allow_what_they_were_given() {
        let scoped = AccessToken::read_only("s").collections(["notes"]);
        assert!(scoped.allows("notes", Access::Read));
        assert!(!scoped.allows("notes", Access::ReadWrite));
        assert!(!scoped.allows("tasks", Access::Read));
        let all = AccessToken::read_write("t");
        assert!(all.allows("anything", Access::ReadWrite));
        assert!(!format!("{all:?}").contains("digest"));
    }
}
