//! # syncforge-http
//!
//! Sync over HTTP for syncforge: an embeddable sync server (feature
//! `server`) and [`HttpPeer`], a client that is a `SyncPeer` (feature
//! `client`), so that `engine.sync_with(&peer, collection)` works across the
//! network exactly as it does between two engines in one process. The
//! `syncforge` crate re-exports this crate as `syncforge::http` behind its
//! features `http-server` and `http-client`.
//!
//! The server speaks a small versioned JSON protocol ([`protocol`], and
//! `docs/http-protocol.md` for clients in other languages): list
//! collections, read a page of a collection's change feed after a cursor
//! (optionally waiting for a change: a long poll), push records to merge,
//! health. It checks bearer tokens per collection (read or read-write,
//! compared in constant time), answers CORS preflights when configured,
//! gzips responses for clients that accept it, bounds bodies, record counts
//! and request time, and refuses bad input with a typed JSON error, writing
//! nothing.
//!
//! Writing and reading records as JSON is most of what a sync over HTTP
//! costs, more than the engines' own work: on both sides, the records of a
//! push or of a feed page are encoded and decoded on tokio's blocking
//! threads — in chunks, one per core (eight at most), from 256 records on a
//! machine of two cores or more, and in one piece from 1 MiB of values —
//! and the async workers stay free meanwhile.
//!
//! ```
//! # #[cfg(all(feature = "server", feature = "client"))]
//! # mod example {
//! use syncforge_core::{CollectionName, Cursor, SyncPeer};
//! use syncforge_http::{AccessToken, HttpPeer, Replica, Server, ServerOptions};
//!
//! /// Serves `engine` (a `syncforge::SyncEngine`) on a free port, and reads
//! /// its feed back through a client.
//! pub async fn serve_and_read(engine: impl Replica) -> syncforge_core::Result<()> {
//!     let options = ServerOptions::default().token(AccessToken::read_only("secret"));
//!     let server = Server::bind(engine, "127.0.0.1:0", options).await?;
//!
//!     let peer = HttpPeer::builder(server.url()).bearer_token("secret").build()?;
//!     let notes = CollectionName::new("notes")?;
//!     let page = peer.pull(&notes, Cursor::START, 100.try_into().expect("not zero")).await?;
//!     println!("{} changes, continue after {}", page.len(), page.next);
//!
//!     server.shutdown().await
//! }
//! # }
//! ```
//!
//! With `syncforge` (features `http-server`, `http-client`), an engine is the
//! [`Replica`] the server serves and `engine.sync_with(&peer, "notes")` syncs
//! with it; see the README and the `field_service` example.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod protocol;

#[cfg(feature = "server")]
mod server;

#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use server::{
    router, serve, Access, AccessToken, Cors, Replica, Server, ServerOptions, SyncOutcome,
    WatchGuard, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_CONCURRENT_SYNCS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PAGE, DEFAULT_MAX_RECORDS,
    DEFAULT_MAX_WAIT, DEFAULT_PAGE, DEFAULT_REQUEST_TIMEOUT,
};

#[cfg(feature = "client")]
mod client;
#[cfg(any(feature = "client", feature = "server"))]
mod parallel;

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use client::{
    check_base_url, HttpPeer, HttpPeerBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_RETRIES, DEFAULT_RETRY_DELAY, DEFAULT_TIMEOUT, MAX_RETRIES,
};
