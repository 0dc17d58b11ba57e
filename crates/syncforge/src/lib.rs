//! # syncforge
//!
//! Incremental, conflict-free synchronisation of JSON records between replicas
//! — phones, laptops, edge devices, services — over pluggable storage.
//!
//! Each replica runs a [`SyncEngine`] over a backend. Local writes are stamped
//! with a hybrid logical clock, field by field; [`SyncEngine::sync`] merges
//! records from another replica with a [`ConflictStrategy`]; both strategies
//! are joins, so replicas that saw the same writes hold byte-identical JSON.
//! The change feed ([`SyncEngine::changes`]) lets a replica send only what
//! changed since its last sync; [`SyncEngine::sync_with`] does that both ways
//! with any [`SyncPeer`] (another engine, or a network transport), by hand or
//! on the auto-sync timer. Typed [`SyncEvent`]s report what happened, to
//! receivers ([`SyncEngine::subscribe`]) and closure handlers
//! ([`SyncEngine::events`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> syncforge::Result<()> {
//! use serde_json::json;
//! use syncforge::{ConflictStrategy, SyncEngine};
//!
//! let phone = SyncEngine::builder().client_id("phone").conflict_strategy(ConflictStrategy::Crdt).build().await?;
//! let laptop = SyncEngine::builder().client_id("laptop").conflict_strategy(ConflictStrategy::Crdt).build().await?;
//!
//! phone.put("notes", &json!({"id": "n1", "title": "Meeting Notes", "body": "Discuss Q3 targets"})).await?;
//! let _merged = laptop.sync("notes", phone.get_all("notes").await?).await?;
//!
//! // The laptop edits the title while the phone edits the body.
//! laptop.put("notes", &json!({"id": "n1", "title": "Q3 Planning Notes", "body": "Discuss Q3 targets"})).await?;
//! phone.put("notes", &json!({"id": "n1", "title": "Meeting Notes", "body": "Discuss Q3 targets\n- Revenue goals"})).await?;
//!
//! let _merged = phone.sync("notes", laptop.get_all("notes").await?).await?;
//! let _merged = laptop.sync("notes", phone.get_all("notes").await?).await?;
//!
//! let on_phone = phone.get("notes", "n1").await?.expect("synced");
//! let on_laptop = laptop.get("notes", "n1").await?.expect("synced");
//! assert_eq!(on_phone.get("title"), Some(json!("Q3 Planning Notes")));
//! assert_eq!(on_phone.get("body"), Some(json!("Discuss Q3 targets\n- Revenue goals")));
//! assert_eq!(on_phone.to_json_string(), on_laptop.to_json_string());
//! # Ok(())
//! # }
//! ```
//!
//! ## Cargo features
//!
//! | feature | default | provides |
//! |---------|---------|----------|
//! | `memory` | yes | [`MemoryBackend`], the in-process store |
//! | `fs` | no | `FsBackend`: a directory per collection, one JSON file per record |
//! | `http-server` | no | `http::{router, Server, serve, ...}`: serve an engine over HTTP |
//! | `http-client` | no | `http::HttpPeer`: sync with such a server like with a peer |
//! | `redis` | no | `RedisBackend` and `RedisConfig`: Redis and Redis Cluster, atomic Lua-script writes |
//! | `s3` | no | `S3Backend` and `S3Config`: S3, S3-compatible servers, any conditional-write `object_store`, a local directory |
//!
//! A store chosen at run time is named by a [`BackendConfig`] or by a URL
//! ([`StoreUrl`], [`open_store`]: `memory:`, a directory path, ...), the
//! form the `syncforge` command takes.
//!
//! The merge rules live in [`syncforge_core`] (re-exported as [`core`]).
#![cfg_attr(docsrs, feature(doc_cfg))]

// In alphabetical order; the order of their dependencies, which run one
// way, is in docs/architecture.md.
mod auto_sync;
mod backends;
mod builder;
mod collection;
mod config;
mod distinct;
mod engine;
pub mod events;
mod feed;
#[cfg(any(feature = "http-server", feature = "http-client"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "http-server", feature = "http-client")))
)]
pub mod http;
mod peer;
mod peer_sync;
mod result;
mod retry;
mod store_url;

pub use backends::{create_backend, holds_store, BackendConfig};
pub use builder::EngineBuilder;
pub use collection::Collection;
pub use config::{
    Config, DEFAULT_AUTO_SYNC_INTERVAL, DEFAULT_AUTO_SYNC_PEER_TIMEOUT, DEFAULT_BATCH_SIZE,
    DEFAULT_EVENT_CAPACITY, DEFAULT_MAX_RETRIES, MAX_AUTO_SYNC_INTERVAL, MAX_BATCH_SIZE,
    MAX_CLOCK_DRIFT, MAX_EVENT_CAPACITY, MAX_RETRIES, MIN_AUTO_SYNC_INTERVAL, MIN_CLOCK_DRIFT,
};
pub use engine::SyncEngine;
pub use events::{EventKind, EventReceiver, Events, ListenerId, SyncEvent, SyncTrigger};
pub use feed::{PageOptions, DEFAULT_PAGE_LIMIT};
pub use peer::{PeerCursors, PushOutcome, RefusedRecord, SyncPeer};
pub use peer_sync::PeerSyncReport;
pub use result::SyncResult;
pub use store_url::{open_store, StoreUrl};

pub use syncforge_core as core;
pub use syncforge_core::{
    compute_delta, merge, resolve_conflict, Change, ChangePage, ClientId, CollectionName,
    ConflictDetail, ConflictStrategy, Cursor, Error, Hlc, LwwMap, LwwRegister, ManualTime, Record,
    RecordId, Result, Stamp, StorageBackend, TimeSource, MAX_NESTING_DEPTH,
};

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use syncforge_backend_memory::MemoryBackend;

#[cfg(feature = "fs")]
#[cfg_attr(docsrs, doc(cfg(feature = "fs")))]
pub use syncforge_backend_fs::{Durability, FsBackend, FsOptions};

/// The filesystem backend's crate, whole: `CorruptFile`, which
/// `FsBackend::corrupt_files` lists, and the rest of its types.
#[cfg(feature = "fs")]
#[cfg_attr(docsrs, doc(cfg(feature = "fs")))]
pub use syncforge_backend_fs as fs;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use syncforge_backend_redis::{RedisBackend, RedisConfig};

/// The Redis backend's crate, whole: its defaults (port, key prefix,
/// timeouts).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use syncforge_backend_redis as redis;

#[cfg(feature = "s3")]
#[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
pub use syncforge_backend_s3::{
    LocalDirectory, S3Backend, S3Config, StoreOptions as S3StoreOptions,
};

/// The S3 backend's crate, whole: its defaults (`DEFAULT_REGION`,
/// `DEFAULT_PREFIX`).
#[cfg(feature = "s3")]
#[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
pub use syncforge_backend_s3 as s3;

/// The guide's examples, compiled and run as doctests so the guide stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide.md")]
struct GuideDoctests;

/// The examples of the events, auto-sync and peers guide, run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide-events-and-peers.md")]
struct GuideEventsAndPeersDoctests;

/// The migration guide's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/migrating-from-typescript.md")]
struct MigrationDoctests;

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
