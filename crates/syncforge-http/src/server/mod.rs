//! The sync server: an axum [`Router`] to mount in your own app
//! ([`router`]), or a standalone server ([`Server::bind`], [`serve`]).
//!
//! The server serves a [`Replica`]: its change feed, its sync, its
//! collections, and a signal when it changes. `syncforge::SyncEngine`
//! implements it (feature `http-server` of `syncforge`), so an engine is
//! served as it is.

mod connections;
mod error;
mod handlers;
mod options;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use syncforge_core::{ChangePage, CollectionName, Cursor, Error, Record, Result};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use connections::ConnectionLimits;

/// How long shutdown waits past the request timeout: a request that began
/// just before it may still be writing its answer, even a 503 `timeout`.
const SHUTDOWN_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

pub use options::{
    Access, AccessToken, Cors, ServerOptions, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_CONCURRENT_SYNCS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PAGE, DEFAULT_MAX_RECORDS, DEFAULT_MAX_WAIT, DEFAULT_PAGE, DEFAULT_REQUEST_TIMEOUT,
};

/// What a sync server serves: one replica's store, through its engine.
///
/// `syncforge::SyncEngine` implements it; another implementation must keep
/// the same promises (the feed numbering stays valid while `feed_id` does,
/// `sync` validates a batch whole before writing anything).
#[async_trait]
pub trait Replica: Send + Sync + 'static {
    /// The id of the store's change-feed numbering.
    fn feed_id(&self) -> &str;

    /// Fails when [`feed_id`](Self::feed_id) no longer names the numbering
    /// of the store's change feed (the store was replaced under a running
    /// replica). Asked by the health route, which every client reads before
    /// it follows the feed, and after each feed page is read, before it is
    /// sent. The default trusts the id.
    async fn check_feed_id(&self) -> Result<()> {
        Ok(())
    }

    /// Names of the collections holding at least one record.
    async fn collections(&self) -> Result<Vec<CollectionName>>;

    /// Changes of `collection` after `after`, at most `limit`.
    async fn changes(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage>;

    /// Merges `records` into `collection`, reporting the feed positions of
    /// the writes that stored exactly an incoming record.
    async fn sync(&self, collection: &CollectionName, records: Vec<Record>) -> Result<SyncOutcome>;

    /// Calls `wake` with a collection's name after each write applied to
    /// it, until the returned guard is dropped; also after a write that
    /// began before the call and lands after it, where the replica can (an
    /// engine does; the server reads once more a second after starting to
    /// watch, for replicas that do not). `wake` must be quick: it runs on
    /// the writing task.
    fn watch(&self, wake: Box<dyn Fn(&CollectionName) + Send + Sync>) -> WatchGuard;
}

/// What one [`Replica::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Records that became visible.
    pub added: usize,
    /// Records that changed.
    pub updated: usize,
    /// Records that became deleted.
    pub deleted: usize,
    /// Records that changed nothing.
    pub unchanged: usize,
    /// Concurrent writes the merge met: with the stored state, or between
    /// the batch's own records of one id.
    pub conflicts: usize,
    /// Feed positions of the writes whose stored state is exactly the
    /// incoming record (any order).
    pub echoes: Vec<Cursor>,
}

/// Keeps a [`Replica::watch`] registration alive; dropping it unregisters.
pub struct WatchGuard {
    unregister: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl WatchGuard {
    /// A guard that runs `unregister` when dropped.
    pub fn new(unregister: impl FnOnce() + Send + Sync + 'static) -> Self {
        WatchGuard {
            unregister: Some(Box::new(unregister)),
        }
    }
}

impl std::fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchGuard").finish_non_exhaustive()
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(unregister) = self.unregister.take() {
            unregister();
        }
    }
}

/// The sync routes over `replica`, as an axum [`Router`] to serve alone or
/// to nest in your own app. Refuses options that cannot work
/// ([`Error::InvalidConfig`]).
///
/// Long polls in flight end within `max_wait`; [`Server`] ends them at once
/// when it shuts down.
///
/// The router leaves connections to the server it is mounted in: give that
/// server a header-read timeout, a bound on open connections and a timeout
/// on answers their clients do not read, as [`Server`] has
/// ([`ServerOptions::header_read_timeout`],
/// [`ServerOptions::max_connections`], [`ServerOptions::request_timeout`]),
/// or clients sending half a request can hold connections for good, and
/// clients that stop reading, the room their answers hold among the
/// bodies held at once.
pub fn router(replica: impl Replica, options: ServerOptions) -> Result<Router> {
    let (_, closing) = watch::channel(false);
    Ok(handlers::build(Arc::new(replica), options, closing)?.0)
}

/// A sync server listening on a socket, serving until
/// [`shutdown`](Self::shutdown) (or until dropped).
///
/// ```no_run
/// # async fn run(engine: impl syncforge_http::Replica) -> syncforge_core::Result<()> {
/// use syncforge_http::{Server, ServerOptions};
///
/// let server = Server::bind(engine, "127.0.0.1:0", ServerOptions::default()).await?;
/// println!("syncing at {}", server.url());
/// // ...
/// server.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    address: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `address` (port 0 picks a free port) and starts serving
    /// `replica` on the current tokio runtime.
    pub async fn bind(
        replica: impl Replica,
        address: impl ToSocketAddrs,
        options: ServerOptions,
    ) -> Result<Server> {
        options.validate()?;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| Error::InvalidConfig {
                option: "address",
                reason: format!("cannot listen: {error}"),
            })?;
        Server::from_listener(replica, listener, options)
    }

    /// Starts serving `replica` on the current tokio runtime, on a listener
    /// bound already: a program can then bind first, and open or create
    /// its store only once it knows it can serve it.
    pub fn from_listener(
        replica: impl Replica,
        listener: TcpListener,
        options: ServerOptions,
    ) -> Result<Server> {
        let (stop, closing) = watch::channel(false);
        let limits = ConnectionLimits {
            header_read_timeout: options.header_read_timeout,
            write_stall_timeout: options.request_timeout,
            max_connections: options.max_connections,
            shutdown_grace: options.request_timeout.saturating_add(SHUTDOWN_MARGIN),
        };
        let cors = options.cors.clone();
        // After `build` has checked the options: the CORS layer panics on
        // a list of origins holding "*".
        let (app, sync_slots) = handlers::build(Arc::new(replica), options, closing.clone())?;
        let refusal = connections::overloaded(handlers::cors_layer(&cors));
        let address = listener
            .local_addr()
            .map_err(|error| Error::InvalidConfig {
                option: "address",
                reason: format!("cannot read the bound address: {error}"),
            })?;
        let task = tokio::spawn(connections::accept_until_closed(
            listener, app, refusal, sync_slots, limits, closing,
        ));
        tracing::info!(%address, "sync server listening");
        Ok(Server {
            address,
            stop,
            task: Some(task),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// The server's base URL, `http://ADDRESS`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops accepting connections, ends waiting long polls, lets requests
    /// in flight finish, and returns when the server has stopped.
    ///
    /// It also waits for merges still running for requests that timed out.
    /// It waits at most the request timeout
    /// ([`ServerOptions::request_timeout`]) and five seconds more, for the
    /// last answers to be written: connections still open then (a client
    /// still sending its headers, or not reading its answer) are closed, and
    /// a merge still running is left to finish (or fail, if the store is
    /// closed) on its own; its client was told to push again.
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop.send_replace(true);
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        task.await
            .map_err(|error| Error::storage("http", format!("the server task failed: {error}")))?;
        tracing::info!(address = %self.address, "sync server stopped");
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Resolves when the server starts shutting down; never, for a router
/// without a server. ([`Server`]'s `Drop` turns `closing` true before its
/// sender goes.)
async fn closed(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Serves `replica` on `address` until the process receives Ctrl-C (or
/// SIGTERM on Unix), then shuts down gracefully.
///
/// ```no_run
/// # async fn run(engine: impl syncforge_http::Replica) -> syncforge_core::Result<()> {
/// syncforge_http::serve(engine, "0.0.0.0:8080", syncforge_http::ServerOptions::default()).await
/// # }
/// ```
pub async fn serve(
    replica: impl Replica,
    address: impl ToSocketAddrs,
    options: ServerOptions,
) -> Result<()> {
    let server = Server::bind(replica, address, options).await?;
    termination().await;
    server.shutdown().await
}

/// Resolves on Ctrl-C, or SIGTERM on Unix. If no handler can be installed,
/// it never resolves (the server runs until the process is killed).
async fn termination() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
