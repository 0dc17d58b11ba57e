//! # syncforge-backend-redis
//!
//! [`RedisBackend`]: a [`StorageBackend`] on Redis or Redis Cluster, through
//! the [`fred`] client. It is made for services that share state: several
//! engines — in one process or in many — write through their own
//! connections and never lose an update, because every write is a Lua
//! script that checks each record's token and changes the record and all
//! its index entries at once.
//!
//! ```no_run
//! use serde_json::json;
//! use syncforge_backend_redis::{RedisBackend, RedisConfig};
//! use syncforge_core::{CollectionName, Content, Cursor, Record, Stamp, StorageBackend, Write};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisBackend::connect(RedisConfig::from_url("redis://127.0.0.1:6379/0?prefix=catalog")?).await?;
//! let products = CollectionName::new("products")?;
//! let stamp = Stamp::new(1_000, 0, "us-east-1")?;
//! let lamp = Record::create(Content::from_value(json!({"id": "p1", "name": "Lamp"}))?, &stamp);
//! store.put(&products, &Write::create(lamp)).await?;
//! let page = store.changes(&products, Cursor::START, 100.try_into()?).await?;
//! assert_eq!(page.len(), 1);
//! store.close().await?; // disconnects; never deletes anything
//! # Ok(())
//! # }
//! ```
//!
//! # Server
//!
//! Redis 6.2 or newer, standalone or as a cluster: the batch script reads
//! every write's token with one `ZMSCORE`, a command Redis 6.0 lacks.
//! [`connect`](RedisBackend::connect) refuses an older server with
//! [`Error::Storage`] naming its version. The client reads the version
//! (`INFO server`) as it connects; a server that does not tell it (an ACL
//! user without `INFO`) is not refused, since its version is unknown, not
//! too old.
//!
//! # Layout
//!
//! Every key of a collection carries the collection's name, encoded, as its
//! hash tag, so the collection lives in one cluster slot:
//!
//! ```text
//! dse:collections            set: names of the collections ever written
//! dse:meta                   hash: engine metadata
//! dse:c:{notes}:records      hash: id -> "<sequence> <record JSON>"
//! dse:c:{notes}:feed         sorted set: id by the sequence of its last change
//! dse:c:{notes}:time         sorted set: id by its `_timestamp`
//! dse:c:{notes}:seq          the last sequence handed out
//! dse:c:{notes}:newest       the newest stamp written, or newer
//! ```
//!
//! Names are encoded one-to-one: ASCII letters, digits, `-`, `_` and `.`
//! stay, every other byte becomes `%XX` — so `{`, `}`, `:`, `*`, spaces and
//! unicode can neither collide nor leave the tag or the prefix.
//!
//! # Atomicity
//!
//! A conditional batch (one script per 1,000 writes or 16 MiB of records),
//! an insert-if-absent, a hard delete and a clear are each one Lua script,
//! run by `EVALSHA` (reloaded after a `NOSCRIPT`, as
//! after a restart or on a node that just took over a slot). Redis runs a
//! script without interleaving other commands, so a record and its index
//! entries are always in agreement, and a write whose token no longer
//! matches reports [`WriteOutcome::Conflict`] while the others of the batch
//! still happen.
//!
//! The set of collection names and the metadata hash each live in a slot of
//! their own. A writer adds the collection's name to the set, and waits for
//! the answer, before its first write to that collection; names are never
//! removed, and [`list_collections`](StorageBackend::list_collections)
//! lists those holding records. So the list is right on a cluster too,
//! without a script spanning slots. Metadata changes are single commands
//! (or a one-key script) on the one metadata key.

mod config;
mod error;
mod keys;
mod scripts;
#[cfg(feature = "tls")]
mod tls;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{
    ClientLike, EventInterface, HashesInterface, KeysInterface, SetsInterface, SortedSetsInterface,
};
use fred::types::config::{
    Config as FredConfig, ReconnectPolicy, Server, ServerConfig, UnresponsiveConfig,
};
use fred::types::{Builder, ClusterHash, ConnectHandle, CustomCommand, Value, Version};
use parking_lot::Mutex;
use syncforge_core::{
    async_trait, record_to_insert, remember_collection_hint, Change, ChangePage, CollectionName,
    Cursor, Error, IfAbsent, Record, RecordId, Result, Stamp, StorageBackend, Stored, Token, Write,
    WriteOutcome,
};

pub use config::{
    RedisConfig, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_PORT,
};

use crate::error::BACKEND;
use crate::keys::{CollectionKeys, Keys};
use crate::scripts::Scripts;

/// The oldest Redis (major, minor) the scripts run on: `ZMSCORE` came with
/// 6.2.
const MIN_SERVER_VERSION: (u64, u64) = (6, 2);
/// The largest sequence: every JSON reader and a sorted-set score keep it exact.
const MAX_SEQUENCE: u64 = 1 << 53;
/// Records read or written per script call: bounds how long one script
/// keeps the server busy and how large one reply grows.
const CHUNK: usize = 1_000;
/// Bytes of record values one write script takes before a batch goes on in
/// the next call (a record larger than this goes alone). Redis drops a
/// connection whose request outgrows its query buffer (1 GiB by default),
/// which a thousand large records would; the client would then send the
/// same request again, and fail the same way.
const CHUNK_BYTES: usize = 16 << 20;
/// Bytes of record values one read of the change feed (or one slice of
/// the time index) returns before its page ends (a larger record comes
/// alone): a collection of large records
/// is read in replies of about this size, where a thousand records of a
/// megabyte made a reply of a gigabyte, which timed out and was read again
/// the same way.
const READ_BYTES: usize = 16 << 20;

/// What one feed page script call read.
struct FeedChunk {
    /// The changes found, in feed order.
    changes: Vec<Change>,
    /// The cursor of the last entry examined (found or skipped).
    last: Cursor,
    /// Whether more entries lie beyond.
    more: bool,
    /// Whether the call stopped at its byte budget before its limit.
    cut: bool,
    /// The bytes of the values it read.
    bytes: usize,
}

/// The largest value a Redis server takes as one argument unless told
/// otherwise (`proto-max-bulk-len`, 512 MiB): assumed when the server does
/// not say (`CONFIG` renamed, or denied to the user).
const DEFAULT_VALUE_LIMIT: usize = 512 << 20;

/// A store on a Redis server or a Redis Cluster.
///
/// Each `RedisBackend` is one client (one connection per server node).
/// Open one per engine, or share one through an `Arc`; any number of
/// handles, in any number of processes, may work on the same keys.
/// [`close`](StorageBackend::close) disconnects and never deletes data.
///
/// Lost connections are re-established in the background; a command that
/// fails meanwhile, or takes longer than the command timeout, fails with
/// [`Error::Unavailable`], which the engine retries. The client itself
/// sends a command again when its connection dropped before the answer
/// came, and a write that did happen would then answer as if another
/// writer had come first: a conditional write with
/// [`WriteOutcome::Conflict`] (its token moved), an insert-if-absent with
/// the record its first run wrote, a delete with "nothing there". Such an
/// answer, from a call during which the client connected again, is
/// reported as [`Error::Unavailable`] instead: its outcome is unknown, and
/// the engine's retry then takes a state built on the write for the write
/// having landed, rather than applying it again over a later writer's.
pub struct RedisBackend {
    client: Client,
    keys: Keys,
    scripts: Scripts,
    /// The server's address for messages (never the password).
    address: String,
    /// Whether the client follows a cluster's redirections (a
    /// `redis-cluster://` URL).
    cluster: bool,
    key_prefix: String,
    closed: AtomicBool,
    connect_timeout: Duration,
    /// The client's connection task. fred ends it for good on some routing
    /// failures (an `ASK` redirection during a slot migration is one, see
    /// [`check_open`](Self::check_open)); the next call then
    /// starts a new one.
    connection: tokio::sync::Mutex<ConnectHandle>,
    /// Collections this handle has added to the registry, each with the
    /// count of reconnections seen when it did: later writes to them skip
    /// that round trip until the client reconnects (see
    /// [`register`](Self::register)). A cache ([`remember_collection_hint`]): a collection
    /// missing from it is registered again.
    registered: Mutex<HashMap<CollectionName, u64>>,
    /// The client's reconnections, as the client announces them.
    reconnects: Mutex<tokio::sync::broadcast::Receiver<Server>>,
    /// How many of them this handle has seen.
    connections: std::sync::atomic::AtomicU64,
    /// Whether this handle asked the client to connect again and it has
    /// not done so yet ([`reconnect_in_background`](Self::reconnect_in_background)).
    reconnecting: Arc<AtomicBool>,
    /// The last sequence this handle saw handed out in each collection: the
    /// batch script's guess of the next ones (see `scripts::PUT_BATCH`). A
    /// cache ([`remember_collection_hint`]): a batch without a guess, or with a wrong one,
    /// stores the same.
    last_sequence: Mutex<HashMap<CollectionName, u64>>,
    /// The largest value the server takes as one argument, as it said when
    /// this handle connected ([`value_limit`]): a larger record is refused
    /// before it is sent.
    max_value_bytes: usize,
}

impl RedisBackend {
    /// Connects to the server (or cluster) `config` describes.
    ///
    /// Fails within the connect timeout with a typed error naming the
    /// address (never the password): [`Error::InvalidConfig`] for a setting
    /// that cannot work, [`Error::Unavailable`] when the server does not
    /// answer, [`Error::Storage`] when it refuses the credentials or the
    /// database, or is older than Redis 6.2.
    ///
    /// It also reads the largest value the server takes as one argument
    /// (`proto-max-bulk-len`, within what is left of the connect timeout;
    /// Redis's default of 512 MiB when the server does not say): a write of
    /// a record whose stored value could be larger fails with
    /// [`Error::InvalidRecord`] naming it, and its batch writes nothing.
    pub async fn connect(config: RedisConfig) -> Result<RedisBackend> {
        config.validate()?;
        let address = config.address();
        let client = build_client(&config)?;
        let started = tokio::time::Instant::now();
        // Connecting ends with a PING: a server that accepts connections but
        // does not answer, or wants credentials that were not given, fails
        // here rather than at the first command.
        let connection = match tokio::time::timeout(config.connect_timeout, connect(&client)).await
        {
            Ok(Ok(task)) => task,
            Ok(Err(e)) => {
                stop_in_background(&client);
                return Err(error::map(e, "connecting", &address));
            }
            Err(_) => {
                stop_in_background(&client);
                return Err(error::connect_timeout(&address, config.connect_timeout));
            }
        };
        // Refused here: on an older server a put of a new record works, and
        // every batch write then fails with a script error that names no
        // cause.
        if let Err(refused) = check_server_version(client.server_version().as_ref(), &address) {
            stop_in_background(&client);
            return Err(refused);
        }
        // Within what is left of the connect timeout.
        let left = config.connect_timeout.saturating_sub(started.elapsed());
        let max_value_bytes = value_limit(&client, left, &address).await;
        // Subscribed after connecting: the first connection is announced
        // too, and is no reconnection.
        Ok(RedisBackend::with_client(
            client,
            &config,
            connection,
            max_value_bytes,
        ))
    }

    /// The handle on `client`, whose connection task is `connection`.
    fn with_client(
        client: Client,
        config: &RedisConfig,
        connection: ConnectHandle,
        max_value_bytes: usize,
    ) -> RedisBackend {
        let reconnects = client.reconnect_rx();
        RedisBackend {
            client,
            keys: Keys::new(&config.key_prefix),
            scripts: Scripts::new(),
            address: config.address(),
            cluster: config.cluster,
            key_prefix: config.key_prefix.clone(),
            closed: AtomicBool::new(false),
            connect_timeout: config.connect_timeout,
            connection: tokio::sync::Mutex::new(connection),
            registered: Mutex::new(HashMap::new()),
            reconnects: Mutex::new(reconnects),
            connections: std::sync::atomic::AtomicU64::new(0),
            reconnecting: Arc::new(AtomicBool::new(false)),
            last_sequence: Mutex::new(HashMap::new()),
            max_value_bytes,
        }
    }

    /// Connects to the server a URL names (see [`RedisConfig::from_url`]).
    pub async fn connect_url(url: &str) -> Result<RedisBackend> {
        RedisBackend::connect(RedisConfig::from_url(url)?).await
    }

    /// The address of the server, as in messages (never the password).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The key prefix of this store.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// Refuses calls on a closed handle, and restarts the client's
    /// connection task if it ended.
    ///
    /// fred 10.1 follows an `ASK` redirection (a slot half-way through a
    /// migration) by sending `ASKING` to the new node but the command itself
    /// to the old one again, until the command runs out of attempts; it then
    /// ends its connection task, after which every command would time out.
    /// The failed command reaches the caller as [`Error::Unavailable`] (the
    /// engine retries it), and the next call reconnects here. Once the
    /// migration completes, the old node answers `MOVED`, which fred follows.
    async fn check_open(&self) -> Result<()> {
        self.refuse_if_closed()?;
        let mut connection = self.connection.lock().await;
        // `close` may have run while this call waited for the lock: a
        // client started again now would stay connected after the close.
        self.refuse_if_closed()?;
        if connection.is_finished() {
            tracing::warn!(address = %self.address, "the redis connection task ended; reconnecting");
            *connection = tokio::time::timeout(self.connect_timeout, connect(&self.client))
                .await
                .map_err(|_| error::connect_timeout(&self.address, self.connect_timeout))?
                .map_err(self.fail("reconnecting", None))?;
        }
        Ok(())
    }

    /// [`Error::Closed`] once [`close`](StorageBackend::close) has begun.
    fn refuse_if_closed(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed {
                what: "redis backend handle",
            });
        }
        Ok(())
    }

    /// Maps a client error; the message is only built when a call fails.
    ///
    /// A call that passed its open check just before [`close`] and then
    /// found the client stopped failed as a lost connection, which the
    /// engine retries; once the handle is closed its failures say so.
    ///
    /// [`close`]: StorageBackend::close
    fn fail<'a>(
        &'a self,
        operation: &'a str,
        collection: Option<&'a CollectionName>,
    ) -> impl FnOnce(fred::error::Error) -> Error + 'a {
        move |e| {
            if let Err(closed) = self.refuse_if_closed() {
                return closed;
            }
            let operation = match collection {
                Some(c) => format!("{operation} in collection {:?}", c.as_str()),
                None => operation.to_owned(),
            };
            if !self.cluster && error::is_redirection(&e) {
                return error::redirected(e, &operation, &self.address);
            }
            // Stored data a script could not read, not a refused command.
            if let (Some(collection), Some(key)) = (collection, error::bad_counter_key(e.details()))
            {
                return error::corrupt(
                    collection.as_str(),
                    None,
                    key,
                    "does not hold a change sequence (a whole number from 0 to 2^53, no less \
                     than the last in the collection's change feed)"
                        .to_owned(),
                );
            }
            if error::calls_for_new_connections(&e) {
                self.reconnect_in_background(*e.kind() == fred::error::ErrorKind::Timeout);
            }
            error::map(e, operation, &self.address)
        }
    }

    /// Has the client drop its connections and make them again, in the
    /// background. A command that timed out leaves its connection open: a
    /// server gone silent (a host that lost power, a partition dropping
    /// packets) kept every later command on it until the kernel gave up on
    /// the connection, a quarter of an hour later. And a primary demoted to
    /// a replica without closing its connections (a managed failover)
    /// answers every write with READONLY for good, where a new connection
    /// follows a name that now points at the new primary.
    ///
    /// After a `timed_out` command, a ping decides first: a server busy but
    /// answering (a long script, a fork) keeps its connections. At most one
    /// such request runs at a time, and one follows another no sooner than
    /// the connect timeout: every caller's commands are sent again when
    /// the connections are made again.
    fn reconnect_in_background(&self, timed_out: bool) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.closed.load(Ordering::Acquire) || self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let client = self.client.clone();
        let reconnecting = ClearOnDrop(Arc::clone(&self.reconnecting));
        let bound = self.connect_timeout;
        runtime.spawn(async move {
            // Cleared however the task ends, dropped with its runtime too.
            let _reconnecting = reconnecting;
            if timed_out {
                let ping = tokio::time::timeout(bound, client.ping::<String>(None)).await;
                match ping {
                    // Refused as `BUSY`, `LOADING` or `MISCONF` is answered too.
                    Ok(Ok(_)) => return,
                    Ok(Err(error)) if error::answers_but_does_not_serve(&error) => return,
                    _ => {}
                }
            }
            match tokio::time::timeout(bound.saturating_mul(4), client.force_reconnection()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%error, "redis: connecting again failed; the client keeps trying");
                }
                Err(_) => tracing::debug!("redis: connecting again takes long; the client keeps trying"),
            }
            tokio::time::sleep(bound).await;
        });
    }

    /// Runs a script with a few short arguments, loading it first if the
    /// server does not know it.
    async fn eval(
        &self,
        script: &fred::types::scripts::Script,
        keys: Vec<String>,
        args: Vec<Value>,
        operation: &str,
        collection: Option<&CollectionName>,
    ) -> Result<Value> {
        self.eval_built(script, keys, || args.clone(), operation, collection)
            .await
    }

    /// Runs a script whose arguments `args` builds, loading the script first
    /// if the server does not know it. Unlike [`eval`](Self::eval), no copy
    /// of the arguments is kept for a second attempt: after a `NOSCRIPT`
    /// they are built again. A batch's arguments hold all its records.
    async fn eval_built(
        &self,
        script: &fred::types::scripts::Script,
        keys: Vec<String>,
        args: impl Fn() -> Vec<Value>,
        operation: &str,
        collection: Option<&CollectionName>,
    ) -> Result<Value> {
        match script
            .evalsha::<Value, _, _, _>(&self.client, keys.clone(), args())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                script
                    .load(&self.client)
                    .await
                    .map_err(self.fail(operation, collection))?;
                script
                    .evalsha(&self.client, keys, args())
                    .await
                    .map_err(self.fail(operation, collection))
            }
            result => result.map_err(self.fail(operation, collection)),
        }
    }

    /// Adds the collection to the registry unless this handle already did.
    /// Done, and answered, before the first write, so a collection holding
    /// records is registered, whichever node holds it (docs/backends.md, "The
    /// collection list and metadata on a cluster", has the one exception).
    ///
    /// A reconnection makes the handle register every collection again: a
    /// server that came back without its data, or a failover whose new
    /// primary missed the registry's last writes, would otherwise never
    /// list this handle's collections again.
    ///
    /// Returns the count of reconnections seen before the registration,
    /// for [`register_again_if_reconnected`](Self::register_again_if_reconnected).
    async fn register(&self, collection: &CollectionName) -> Result<u64> {
        let connection = self.connection_count();
        if self.registered.lock().get(collection) == Some(&connection) {
            return Ok(connection);
        }
        let _: i64 = self
            .client
            .sadd(self.keys.registry(), collection.as_str())
            .await
            .map_err(self.fail("registering", Some(collection)))?;
        // Kept under the connection it was made on: after a reconnection
        // (seen here or by any other call) the name is added again.
        remember_collection_hint(&mut self.registered.lock(), collection, connection);
        Ok(connection)
    }

    /// After a write of `collection` (done or failed), whose registration
    /// was made under `connection` ([`register`](Self::register)): a
    /// reconnection since, which the write itself may have gone through
    /// (the client sends a command again on a new connection), registers
    /// the collection again now. A failure is left to the next write, which
    /// finds the collection registered under an older connection.
    async fn register_again_if_reconnected(&self, collection: &CollectionName, connection: u64) {
        if self.connection_count() == connection {
            return;
        }
        if let Err(error) = self.register(collection).await {
            tracing::debug!(%error, "registering a collection again after a reconnection");
        }
    }

    /// Whether the client connected again since [`connection_count`]
    /// answered `count`. The client announces a new connection before it
    /// sends anything on it, so a command it sent again on one, and
    /// answered, is always seen here.
    ///
    /// [`connection_count`]: Self::connection_count
    fn reconnected_since(&self, count: u64) -> bool {
        self.connection_count() != count
    }

    /// How many reconnections of the client this handle has seen.
    fn connection_count(&self) -> u64 {
        use tokio::sync::broadcast::error::TryRecvError;
        let mut reconnects = self.reconnects.lock();
        let mut reconnected = false;
        loop {
            match reconnects.try_recv() {
                Ok(_) | Err(TryRecvError::Lagged(_)) => reconnected = true,
                Err(TryRecvError::Empty) => break,
                // The client made a new channel (it was told to quit and
                // started again): what happened meanwhile is unknown.
                Err(TryRecvError::Closed) => {
                    *reconnects = self.client.reconnect_rx();
                    reconnected = true;
                    break;
                }
            }
        }
        if reconnected {
            self.connections.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.connections.load(Ordering::Acquire)
        }
    }

    /// The arguments of the first script of a `put_batch` of `writes`
    /// ([`batch_arguments`]), once every write of the batch is known to fit
    /// the server's limit of a value: a batch refused writes nothing.
    fn first_chunk(
        &self,
        collection: &CollectionName,
        writes: &[Write],
    ) -> Result<(Vec<Value>, usize)> {
        let guess = self.next_sequence_guess(collection);
        let (args, taken) = batch_arguments(writes, guess, CHUNK_BYTES, self.max_value_bytes)?;
        check_value_sizes(
            writes.get(taken..).unwrap_or_default(),
            self.max_value_bytes,
        )?;
        Ok((args, taken))
    }

    /// The sequence the next write to `collection` is guessed to get: the
    /// one after the last this handle saw handed out (0: no guess).
    fn next_sequence_guess(&self, collection: &CollectionName) -> u64 {
        self.last_sequence
            .lock()
            .get(collection)
            .map_or(0, |last| last + 1)
    }

    /// The scripts of a `put_batch`, at most [`CHUNK`] writes and (but for
    /// a single larger record) [`CHUNK_BYTES`] of values each; the first
    /// one's arguments made already ([`first_chunk`](Self::first_chunk)).
    async fn write_chunks(
        &self,
        collection: &CollectionName,
        writes: &[Write],
        first: (Vec<Value>, usize),
    ) -> Result<Vec<WriteOutcome>> {
        let keys = self.keys.collection(collection);
        let script_keys = keys.for_writes();
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut remaining = writes;
        let mut first = Some(first);
        while !remaining.is_empty() {
            let (args, taken) = match first.take() {
                Some(made) => made,
                None => {
                    let guess = self.next_sequence_guess(collection);
                    batch_arguments(remaining, guess, CHUNK_BYTES, self.max_value_bytes)?
                }
            };
            remaining = remaining.get(taken..).unwrap_or_default();
            let connection = self.connection_count();
            // Cloning the arguments shares their texts (no copy), for the
            // second send after a `NOSCRIPT`.
            let reply = self
                .eval_built(
                    &self.scripts.put_batch,
                    script_keys.clone(),
                    || args.clone(),
                    "writing records",
                    Some(collection),
                )
                .await?;
            let sequences = batch_outcomes(reply, taken)
                .map_err(|what| error::unexpected_reply("writing records", &self.address, what))?;
            // A conflict answered to a second send is the first send's own
            // write.
            if sequences.contains(&0) && self.reconnected_since(connection) {
                return Err(error::maybe_sent_twice("writing records", &self.address));
            }
            let mut last = None;
            for sequence in sequences {
                outcomes.push(if sequence == 0 {
                    WriteOutcome::Conflict
                } else {
                    last = last.max(Some(sequence));
                    WriteOutcome::Written {
                        token: Token::Sequence(sequence),
                        cursor: Cursor::new(sequence),
                    }
                });
            }
            if let Some(last) = last {
                remember_collection_hint(&mut self.last_sequence.lock(), collection, last);
            }
        }
        Ok(outcomes)
    }

    /// The names in the registry (collections ever written).
    async fn registered_names(&self, operation: &str) -> Result<Vec<CollectionName>> {
        // Read as raw values: bytes that are not UTF-8 would fail the
        // whole reply as strings, before any entry could be skipped.
        let registry = self.keys.registry();
        let names: Vec<Value> = self
            .client
            .smembers(&registry)
            .await
            .map_err(self.fail(operation, None))?;
        // A name this backend did not write (it checks every name before
        // adding it) names no collection it can hold: skipped, where
        // refusing the whole set would keep every engine on the store from
        // opening.
        Ok(names
            .iter()
            .filter_map(|entry| {
                let Some(text) = entry.as_str() else {
                    tracing::warn!(
                        %registry,
                        "skipping an entry of the collection registry that is not UTF-8 text"
                    );
                    return None;
                };
                CollectionName::new(text.as_ref())
                    .inspect_err(|error| {
                        tracing::warn!(
                            %registry,
                            %error,
                            "skipping an entry of the collection registry that is not a collection name"
                        );
                    })
                    .ok()
            })
            .collect())
    }

    /// The record a read of `id` found, with its token: `None` when there
    /// is none.
    fn stored(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        id: &RecordId,
        value: &Value,
    ) -> Result<Option<Stored>> {
        let Some(text) = stored_text(value, collection, keys, id.as_str())? else {
            return Ok(None);
        };
        let (sequence, record) = self.decode(collection, keys, id, &text)?;
        Ok(Some(Stored {
            record,
            token: Token::Sequence(sequence),
        }))
    }

    /// Reads one stored value: `"<sequence> <record JSON>"`.
    fn decode(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        id: &str,
        value: &str,
    ) -> Result<(u64, Record)> {
        let bad = |reason: String| error::corrupt(collection, Some(id), &keys.records, reason);
        let (sequence, json) = value
            .split_once(' ')
            .ok_or_else(|| bad("expected \"<sequence> <record JSON>\"".to_owned()))?;
        let sequence: u64 = sequence
            .parse()
            .ok()
            .filter(|&parsed| parsed <= MAX_SEQUENCE)
            .ok_or_else(|| bad(format!("{sequence:?} is not a sequence number")))?;
        let record = match Record::from_stored_json(json) {
            Some(record) => record,
            None => {
                let json: serde_json::Value = serde_json::from_str(json)
                    .map_err(|e| bad(format!("the record is not JSON: {e}")))?;
                Record::from_json(json).map_err(|e| bad(format!("not a record: {e}")))?
            }
        };
        if record.id().as_str() != id {
            return Err(bad(format!(
                "the record stored under this id has the id {:?}",
                record.id().as_str()
            )));
        }
        Ok((sequence, record))
    }

    /// The text of the metadata field `key` as read: [`Error::Corrupt`]
    /// when it is not UTF-8.
    fn meta_text(&self, key: &str, value: &Value) -> Result<String> {
        value.as_str().map(|text| text.into_owned()).ok_or_else(|| {
            error::corrupt(
                "",
                None,
                &self.keys.meta(),
                format!("the metadata field {key:?} is not UTF-8 text"),
            )
        })
    }

    /// [`StorageBackend::insert_if_absent`]: the record `make` builds,
    /// written by one script unless the id is stored.
    async fn insert_new(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        make: &mut (dyn FnMut() -> Result<Record> + Send),
    ) -> Result<IfAbsent> {
        self.check_open().await?;
        let record = record_to_insert(BACKEND, id, make)?;
        let json = record.to_json_string();
        check_value_size(&record, json.len(), self.max_value_bytes)?;
        let value = Value::from(json);
        let connection = self.register(collection).await?;
        let keys = self.keys.collection(collection);
        let sent = self.connection_count();
        let reply = self
            .eval_built(
                &self.scripts.insert_if_absent,
                keys.for_writes(),
                || insert_arguments(&record, value.clone()),
                "writing a record",
                Some(collection),
            )
            .await;
        // Also after a failure: the write may have landed.
        self.register_again_if_reconnected(collection, connection)
            .await;
        match reply? {
            // The record a second send finds may be the first send's.
            Value::Array(_) if self.reconnected_since(sent) => {
                Err(error::maybe_sent_twice("writing a record", &self.address))
            }
            Value::Array(stored) if stored.len() == 1 => {
                let value = stored.first().and_then(text).ok_or_else(|| {
                    let reason = "the stored value is not UTF-8 text".to_owned();
                    error::corrupt(collection, Some(id), &keys.records, reason)
                })?;
                let (sequence, record) = self.decode(collection, &keys, id, &value)?;
                Ok(IfAbsent::Present(Stored {
                    record,
                    token: Token::Sequence(sequence),
                }))
            }
            reply => {
                let sequence = reply
                    .as_u64()
                    .filter(|&sequence| sequence > 0 && sequence <= MAX_SEQUENCE)
                    .ok_or_else(|| {
                        error::unexpected_reply(
                            "writing a record",
                            &self.address,
                            "neither the stored record nor a sequence",
                        )
                    })?;
                remember_collection_hint(&mut self.last_sequence.lock(), collection, sequence);
                Ok(IfAbsent::Inserted {
                    record,
                    token: Token::Sequence(sequence),
                    cursor: Cursor::new(sequence),
                })
            }
        }
    }

    /// One feed page script call: at most `limit` (≤ [`CHUNK`]) entries
    /// after `after`, fewer once their values pass `budget` bytes (the
    /// first entry is read whatever its size).
    async fn feed_chunk(
        &self,
        collection: &CollectionName,
        keys: &CollectionKeys,
        after: Cursor,
        limit: usize,
        budget: usize,
    ) -> Result<FeedChunk> {
        const OP: &str = "reading the change feed";
        let reply = self
            .eval(
                &self.scripts.feed_page,
                vec![keys.records.clone(), keys.feed.clone()],
                vec![
                    Value::from(after.get().to_string()),
                    Value::from(limit as i64),
                    Value::from(i64::try_from(budget).unwrap_or(i64::MAX)),
                ],
                OP,
                Some(collection),
            )
            .await?;
        let unexpected = |what: &str| error::unexpected_reply(OP, &self.address, what);
        let [more, ids, scores, values] =
            <[Value; 4]>::try_from(array(reply)).map_err(|_| unexpected("not four parts"))?;
        let more = more.as_i64() == Some(1);
        let (ids, scores, values) = (array(ids), array(scores), array(values));
        if ids.len() != scores.len() || ids.len() != values.len() {
            return Err(unexpected("parts of different lengths"));
        }
        let examined = ids.len();
        let mut changes = Vec::with_capacity(examined);
        let mut last = after;
        let mut bytes = 0usize;
        for ((id, score), value) in ids.into_iter().zip(scores).zip(values) {
            // The index's entries are data: one that no script writes is
            // corrupt data naming the index, not a server that answers
            // strangely.
            let corrupt = |id: Option<&str>, reason: &str| {
                error::corrupt(collection, id, &keys.feed, reason.to_owned())
            };
            let id =
                text(&id).ok_or_else(|| corrupt(None, "holds an id that is not UTF-8 text"))?;
            last = Cursor::new(parse_score(&score).ok_or_else(|| {
                corrupt(
                    Some(&id),
                    "gives the record a sequence that is not a whole number of at most 2^53",
                )
            })?);
            // An index entry without its record cannot come from the scripts;
            // skipping it (the page's `next` passes it) keeps the feed moving.
            let Some(value) = stored_text(&value, collection, keys, &id)? else {
                tracing::warn!(
                    collection = collection.as_str(),
                    id = id.as_ref(),
                    "feed entry without a record; skipped"
                );
                continue;
            };
            bytes = bytes.saturating_add(value.len());
            let (_, record) = self.decode(collection, keys, &id, &value)?;
            changes.push(Change {
                cursor: last,
                record,
            });
        }
        Ok(FeedChunk {
            changes,
            last,
            more,
            cut: more && examined < limit,
            bytes,
        })
    }

    /// The values of `ids` in the hash, in order.
    async fn hmget(
        &self,
        keys: &CollectionKeys,
        ids: &[RecordId],
        collection: &CollectionName,
    ) -> Result<Vec<Value>> {
        const OP: &str = "reading records";
        if ids.len() <= CHUNK {
            let fields: Vec<&str> = ids.iter().map(RecordId::as_str).collect();
            let values: Vec<Value> = self
                .client
                .hmget(keys.records.as_str(), fields)
                .await
                .map_err(self.fail(OP, Some(collection)))?;
            return Ok(values);
        }
        // Many ids: slices of one pipeline, still one round trip.
        let pipeline = self.client.pipeline();
        for slice in ids.chunks(CHUNK) {
            let fields: Vec<&str> = slice.iter().map(RecordId::as_str).collect();
            let () = pipeline
                .hmget(keys.records.as_str(), fields)
                .await
                .map_err(self.fail(OP, Some(collection)))?;
        }
        let mut values = Vec::with_capacity(ids.len());
        for reply in pipeline.try_all::<Vec<Value>>().await {
            values.extend(reply.map_err(self.fail(OP, Some(collection)))?);
        }
        Ok(values)
    }
}

/// Starts the client's connection task and checks with a PING that the
/// server answers: one that accepts connections but does not answer, or
/// wants credentials that were not given, fails here rather than at the
/// first command.
async fn connect(client: &Client) -> std::result::Result<ConnectHandle, fred::error::Error> {
    let task = client.init().await?;
    client.ping::<String>(None).await?;
    Ok(task)
}

/// Refuses a server older than [`MIN_SERVER_VERSION`], whose version the
/// client read (`found`) from the server at `address`. Pre-release and
/// patch numbers do not count. An unknown version is let through: the
/// client reads it with `INFO`, which an ACL may deny to a user that can
/// run everything the backend sends.
fn check_server_version(found: Option<&Version>, address: &str) -> Result<()> {
    match found {
        Some(version) if (version.major, version.minor) < MIN_SERVER_VERSION => {
            Err(error::server_too_old(address, version, MIN_SERVER_VERSION))
        }
        _ => Ok(()),
    }
}

/// Builds (without connecting) the client for `config`.
fn build_client(config: &RedisConfig) -> Result<Client> {
    let server = if config.cluster {
        let mut hosts = vec![(config.host.clone(), config.port)];
        hosts.extend(config.nodes.iter().cloned());
        ServerConfig::new_clustered(hosts)
    } else {
        ServerConfig::new_centralized(config.host.clone(), config.port)
    };
    #[allow(unused_mut)] // mutated only with TLS
    let mut fred_config = FredConfig {
        server,
        username: config.username.clone(),
        password: login_password(config),
        database: (config.db != 0).then_some(config.db),
        fail_fast: true,
        ..FredConfig::default()
    };
    #[cfg(feature = "tls")]
    if config.tls {
        fred_config.tls = Some(tls::connector(config)?.into());
    }
    let connect_timeout = config.connect_timeout;
    let command_timeout = config.command_timeout;
    let cluster = config.cluster;
    Builder::from_config(fred_config)
        .with_connection_config(|connection| {
            connection.connection_timeout = connect_timeout;
            connection.internal_command_timeout = connect_timeout;
            connection.max_command_attempts = 10;
            connection.max_redirections = 10;
            if cluster {
                // A cluster's connection to a node gone silent is closed,
                // and made again, once nothing came back on it and nothing
                // was written to it for the command timeout (every command
                // on it has then timed out): connecting again as a whole
                // keeps every connection that has not failed, and the ping
                // that decides it goes to another node. Under steady
                // traffic to the silent node it is not closed this way.
                connection.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(command_timeout),
                    interval: (command_timeout / 4).max(Duration::from_millis(100)),
                };
            }
        })
        .with_performance_config(|performance| {
            performance.default_command_timeout = command_timeout;
        })
        // Reconnect in the background for as long as the handle is open.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build()
        .map_err(|e| error::map(e, "configuring the client", &config.address()))
}

/// Clears a flag when dropped.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The password fred logs in with. fred sends `AUTH` only with a password,
/// so a user name alone would connect as the `default` user, silently: it
/// gets an empty password instead, which a `nopass` user accepts and any
/// other refuses with `WRONGPASS` (as redis-py does for `redis://user@host`).
fn login_password(config: &RedisConfig) -> Option<String> {
    match (&config.password, config.username.as_deref()) {
        (Some(password), _) => Some(password.clone()),
        (None, Some(user)) if !user.is_empty() => Some(String::new()),
        (None, _) => None,
    }
}

/// Stops a client that failed to connect, so it does not keep retrying,
/// without making the caller wait for it.
fn stop_in_background(client: &Client) {
    let client = client.clone();
    tokio::spawn(async move { quit_quietly(&client).await });
}

/// Asks the connection task to end, waiting at most a second.
async fn quit_quietly(client: &Client) {
    if tokio::time::timeout(Duration::from_secs(1), client.quit())
        .await
        .is_err()
    {
        tracing::debug!("the redis client did not stop within 1 s after a failed connect");
    }
}

/// Drops every change of a record but its last. A page read in several
/// script calls can meet a record twice: read live early on, then rewritten
/// further along the feed before a later call reads it there. Each record
/// is in a page at most once, at its latest change, as the feed promises.
fn keep_latest_change_of_each_record(changes: &mut Vec<Change>) {
    let mut latest: HashMap<&str, usize> = HashMap::with_capacity(changes.len());
    for (index, change) in changes.iter().enumerate() {
        latest.insert(change.record.id().as_str(), index);
    }
    if latest.len() == changes.len() {
        return;
    }
    let keep: Vec<bool> = changes
        .iter()
        .enumerate()
        .map(|(index, change)| latest.get(change.record.id().as_str()) == Some(&index))
        .collect();
    let mut keep = keep.into_iter();
    changes.retain(|_| keep.next().unwrap_or(true));
}

/// The elements of an array reply (nothing for nil).
fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// Whether a reply is nil, or a script's `false` standing for one.
fn is_nil(value: &Value) -> bool {
    matches!(value, Value::Null | Value::Boolean(false))
}

/// The text of a string reply; `None` for nil or bytes that are not UTF-8.
fn text(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    if is_nil(value) {
        return None;
    }
    value.as_str()
}

/// A stored record's text as a script returned it: `None` when there is no
/// record, and [`Error::Corrupt`] for bytes that are not UTF-8 (written by
/// something else), which skipping would hide from every reader of the feed.
fn stored_text<'a>(
    value: &'a Value,
    collection: &CollectionName,
    keys: &CollectionKeys,
    id: &str,
) -> Result<Option<std::borrow::Cow<'a, str>>> {
    if is_nil(value) {
        return Ok(None);
    }
    let text = value.as_str().ok_or_else(|| {
        error::corrupt(
            collection,
            Some(id),
            &keys.records,
            "the stored record is not UTF-8 text".to_owned(),
        )
    })?;
    Ok(Some(text))
}

/// A sorted-set score as a whole number (scores of ours are integers ≤ 2^53).
fn parse_score(value: &Value) -> Option<u64> {
    let text = text(value)?;
    // Digits alone are read exactly: as a float, 2^53 + 1 would round to 2^53.
    if let Ok(whole) = text.parse::<u64>() {
        return (whole <= MAX_SEQUENCE).then_some(whole);
    }
    let float: f64 = text.parse().ok()?;
    (float.is_finite() && float >= 0.0 && float.fract() == 0.0 && float <= MAX_SEQUENCE as f64)
        .then_some(float as u64)
}

/// The argument telling the write script what the record must still hold.
fn expected_argument(expected: Option<&Token>) -> String {
    match expected {
        None => String::new(),
        Some(Token::Sequence(sequence)) if *sequence <= MAX_SEQUENCE => sequence.to_string(),
        // A tag, or a sequence this store never hands out: never matches.
        Some(_) => "-".to_owned(),
    }
}

/// The arguments of the batch script for the first writes of `writes`, as
/// `scripts::PUT_BATCH` documents them, and how many writes they hold: at
/// most [`CHUNK`], and no more than take `budget` bytes of values, but at
/// least one. The arguments are their number, the newest stamp among them,
/// the guessed sequence of the first write (0 for none), whether no id
/// repeats, then the ids, the expectations, the `_timestamp`s and the
/// values — each record's JSON, after its guessed sequence and a space when
/// there is a guess — each as one run. A value larger than `max_value` (the
/// server's limit for one argument) fails the call, naming its record.
fn batch_arguments(
    writes: &[Write],
    guess: u64,
    budget: usize,
    max_value: usize,
) -> Result<(Vec<Value>, usize)> {
    let most = writes.len().min(CHUNK);
    // A guess is only worth sending while every guessed sequence is one
    // the store may hand out.
    let guess = if guess > 0 && guess.saturating_add(most as u64) <= MAX_SEQUENCE {
        guess
    } else {
        0
    };
    // The values first, as they decide how many writes fit. Each is
    // written straight into its own buffer, sized by the one before
    // (records of a batch tend to be alike).
    let mut values = Vec::with_capacity(most);
    let (mut size, mut bytes) = (256, 0);
    for (w, sequence) in writes.iter().take(most).zip(guess..) {
        let mut value = String::with_capacity(size);
        if guess > 0 {
            // Writing into a String cannot fail.
            let _ = write!(value, "{sequence} ");
        }
        let json_start = value.len();
        w.record.write_json(&mut value);
        check_value_size(&w.record, value.len() - json_start, max_value)?;
        size = value.len() + value.len() / 8;
        if !values.is_empty() && bytes + value.len() > budget {
            // Left for the next call, which it may fill alone.
            break;
        }
        bytes += value.len();
        values.push(Value::from(value));
    }
    let writes = writes.get(..values.len()).unwrap_or_default();
    let n = writes.len();
    let mut seen = HashSet::with_capacity(n);
    let distinct = writes.iter().all(|w| seen.insert(w.record.id().as_str()));
    let mut args = Vec::with_capacity(4 + 4 * n);
    args.push(Value::Integer(n as i64));
    let newest = writes.iter().map(|w| w.record.newest_stamp()).max();
    args.push(Value::from(
        newest.map(Stamp::to_string).unwrap_or_default(),
    ));
    args.push(Value::Integer(guess as i64));
    args.push(Value::Integer(i64::from(distinct)));
    args.extend(writes.iter().map(|w| Value::from(w.record.id().as_str())));
    args.extend(
        writes
            .iter()
            .map(|w| Value::from(expected_argument(w.expected.as_ref()))),
    );
    args.extend(writes.iter().map(|w| {
        // Millis stay far below 2^63 (a stamp holds 48 bits of them).
        Value::Integer(i64::try_from(w.record.newest_stamp().millis()).unwrap_or(i64::MAX))
    }));
    args.extend(values);
    Ok((args, n))
}

/// The longest prefix of a stored value: a sequence (at most 2^53, 16
/// digits) and a space.
const SEQUENCE_PREFIX: usize = 17;

/// Refuses `record`, whose JSON is `json_len` bytes long, when its stored
/// value could be larger than the server takes as one argument
/// (`max_value`): the server would drop the connection mid-request, the
/// client send it again, and every attempt fail the same way, each looking
/// like a lost connection. Measured with the longest sequence prefix,
/// whichever way the record is written, so that one record is refused or
/// taken the same way by every write.
fn check_value_size(record: &Record, json_len: usize, max_value: usize) -> Result<()> {
    if json_len.saturating_add(SEQUENCE_PREFIX) <= max_value {
        return Ok(());
    }
    Err(Error::InvalidRecord {
        id: Some(record.id().to_string()),
        field: None,
        reason: format!(
            "is {json_len} bytes of JSON, which with its sequence is more than the Redis \
             server takes as one value (proto-max-bulk-len, {max_value} bytes)"
        ),
    })
}

/// Checks, as [`check_value_size`], the writes of a batch that its first
/// script call does not take (`rest`), before that call is sent: a record too
/// large later in the batch would otherwise fail it after earlier calls had
/// written theirs. Each is written once more, into one buffer.
fn check_value_sizes(rest: &[Write], max_value: usize) -> Result<()> {
    let mut json = String::new();
    for write in rest {
        json.clear();
        write.record.write_json(&mut json);
        check_value_size(&write.record, json.len(), max_value)?;
    }
    Ok(())
}

/// The largest value the server takes as one argument (`CONFIG GET
/// proto-max-bulk-len`), or Redis's default when it does not say within
/// `patience` (a managed server may rename `CONFIG`, an ACL deny it, a
/// proxy not pass it on).
async fn value_limit(client: &Client, patience: Duration, address: &str) -> usize {
    let asked = client.custom::<HashMap<String, String>, _>(
        CustomCommand::new_static("CONFIG", ClusterHash::Random, false),
        vec!["GET", "proto-max-bulk-len"],
    );
    let said = match tokio::time::timeout(patience, asked).await {
        Ok(Ok(answer)) => answer
            .get("proto-max-bulk-len")
            .and_then(|limit| limit.parse().ok())
            .ok_or_else(|| "no number in its answer".to_owned()),
        Ok(Err(refused)) => Err(refused.details().to_owned()),
        Err(_) => Err("no answer within the connect timeout".to_owned()),
    };
    said.unwrap_or_else(|reason| {
        tracing::debug!(
            %address,
            %reason,
            "the server did not say how large a value it takes; assuming Redis's default, 512 MiB"
        );
        DEFAULT_VALUE_LIMIT
    })
}

/// The arguments of the insert script for `record`, whose JSON is
/// `value`, as `scripts::INSERT_IF_ABSENT` documents them.
fn insert_arguments(record: &Record, value: Value) -> Vec<Value> {
    let newest = record.newest_stamp();
    vec![
        Value::from(record.id().as_str()),
        Value::from(newest.to_string()),
        // Millis stay far below 2^63 (a stamp holds 48 bits of them).
        Value::Integer(i64::try_from(newest.millis()).unwrap_or(i64::MAX)),
        value,
    ]
}

/// The outcomes the batch script answered for `n` writes: one integer
/// per write (its sequence, 0 for a conflict), or the one integer `g` of
/// its fast path, where every write happened and the `i`-th got `g + i - 1`.
fn batch_outcomes(reply: Value, n: usize) -> std::result::Result<Vec<u64>, &'static str> {
    match reply {
        Value::Integer(first) => {
            let first = u64::try_from(first).map_err(|_| "a negative first sequence")?;
            if first == 0 || first.saturating_add(n as u64) > MAX_SEQUENCE + 1 {
                return Err("a first sequence out of range");
            }
            Ok((first..first + n as u64).collect())
        }
        Value::Array(items) => {
            if items.len() != n {
                return Err("not one outcome per write");
            }
            items
                .iter()
                .map(|item| match item {
                    Value::Integer(n) => u64::try_from(*n)
                        .ok()
                        .filter(|&n| n <= MAX_SEQUENCE)
                        .ok_or("an outcome that is no sequence"),
                    _ => Err("an outcome that is not a number"),
                })
                .collect()
        }
        _ => Err("neither a first sequence nor one outcome per write"),
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) {
            // The connection task would otherwise stay connected, and
            // reconnect forever, on the runtime that started it. Inside a
            // runtime it is asked to quit; outside one (dropped after
            // `block_on` returned), it is aborted, which needs no runtime.
            if tokio::runtime::Handle::try_current().is_ok() {
                stop_in_background(&self.client);
            } else {
                self.connection.get_mut().abort();
            }
        }
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client's own configuration holds the password: never shown.
        f.debug_struct("RedisBackend")
            .field("address", &self.address)
            .field("key_prefix", &self.key_prefix)
            .field("closed", &self.closed.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl StorageBackend for RedisBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn get(&self, collection: &CollectionName, id: &RecordId) -> Result<Option<Stored>> {
        self.check_open().await?;
        let keys = self.keys.collection(collection);
        let value: Value = self
            .client
            .hget(keys.records.as_str(), id.as_str())
            .await
            .map_err(self.fail("reading a record", Some(collection)))?;
        self.stored(collection, &keys, id, &value)
    }

    async fn get_many(
        &self,
        collection: &CollectionName,
        ids: &[RecordId],
    ) -> Result<Vec<Option<Stored>>> {
        self.check_open().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.keys.collection(collection);
        let values = self.hmget(&keys, ids, collection).await?;
        if values.len() != ids.len() {
            return Err(error::unexpected_reply(
                "reading records",
                &self.address,
                "HMGET answered another number of values",
            ));
        }
        ids.iter()
            .zip(&values)
            .map(|(id, value)| self.stored(collection, &keys, id, value))
            .collect()
    }

    async fn get_all(&self, collection: &CollectionName) -> Result<Vec<Record>> {
        self.check_open().await?;
        let keys = self.keys.collection(collection);
        // Walk the feed in slices: no reply grows with the collection, and a
        // record rewritten meanwhile shows up again later, never missed.
        let mut latest: HashMap<RecordId, Record> = HashMap::new();
        let mut after = Cursor::START;
        loop {
            let chunk = self
                .feed_chunk(collection, &keys, after, CHUNK, READ_BYTES)
                .await?;
            for change in chunk.changes {
                latest.insert(change.record.id().clone(), change.record);
            }
            if !chunk.more {
                return Ok(latest.into_values().collect());
            }
            after = chunk.last;
        }
    }

    async fn put_batch(
        &self,
        collection: &CollectionName,
        writes: &[Write],
    ) -> Result<Vec<WriteOutcome>> {
        self.check_open().await?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        // Made before the collection is registered: a batch refused for a
        // record too large registers nothing either.
        let first = self.first_chunk(collection, writes)?;
        let connection = self.register(collection).await?;
        let written = self.write_chunks(collection, writes, first).await;
        // Also after a failure: chunks before it landed.
        self.register_again_if_reconnected(collection, connection)
            .await;
        written
    }

    /// One script: the read and, for a new record, the write of a put.
    async fn insert_if_absent(
        &self,
        collection: &CollectionName,
        id: &RecordId,
        make: &mut (dyn FnMut() -> Result<Record> + Send),
    ) -> Option<Result<IfAbsent>> {
        Some(self.insert_new(collection, id, make).await)
    }

    async fn delete(&self, collection: &CollectionName, id: &RecordId) -> Result<bool> {
        self.check_open().await?;
        let keys = self.keys.collection(collection);
        let sent = self.connection_count();
        let removed = self
            .eval(
                &self.scripts.delete,
                vec![keys.records, keys.feed, keys.time],
                vec![Value::from(id.as_str())],
                "deleting a record",
                Some(collection),
            )
            .await?;
        let removed = removed.as_i64().is_some_and(|n| n > 0);
        // Nothing found by a second send may be what the first removed.
        if !removed && self.reconnected_since(sent) {
            return Err(error::maybe_sent_twice("deleting a record", &self.address));
        }
        Ok(removed)
    }

    async fn changes(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> Result<ChangePage> {
        self.check_open().await?;
        let keys = self.keys.collection(collection);
        let mut remaining = limit.get();
        let mut changes = Vec::with_capacity(remaining.min(CHUNK));
        let mut next = after;
        let mut chunks = 0;
        let mut read = 0usize;
        loop {
            let slice = remaining.min(CHUNK);
            // The page's calls share one byte bound: each call kept to it
            // alone, a page of a hundred calls held a hundred times it.
            let budget = READ_BYTES.saturating_sub(read).max(1);
            let mut chunk = self
                .feed_chunk(collection, &keys, next, slice, budget)
                .await?;
            next = chunk.last;
            chunks += 1;
            read = read.saturating_add(chunk.bytes);
            // Entries examined count against the limit, found or skipped.
            remaining = remaining.saturating_sub(slice);
            changes.append(&mut chunk.changes);
            let more = chunk.more;
            if !more || remaining == 0 || chunk.cut || read >= READ_BYTES {
                if chunks > 1 {
                    keep_latest_change_of_each_record(&mut changes);
                }
                return Ok(ChangePage {
                    changes,
                    next,
                    more,
                });
            }
        }
    }

    async fn changes_since_timestamp(
        &self,
        collection: &CollectionName,
        millis: u64,
    ) -> Result<Vec<Record>> {
        const OP: &str = "reading records by time";
        self.check_open().await?;
        let keys = self.keys.collection(collection);
        let unexpected = |what: &str| error::unexpected_reply(OP, &self.address, what);
        // The index's entries are data: one that no script writes is
        // corrupt data naming the index.
        let corrupt =
            |reason: &str| error::corrupt(collection, None, &keys.time, reason.to_owned());
        let mut latest: HashMap<RecordId, Record> = HashMap::new();
        // The position in the index's order (millis, then id) after which
        // the next slice starts; no id at first: strictly after `millis`.
        let mut after = millis;
        let mut anchor = String::new();
        loop {
            let reply = self
                .eval(
                    &self.scripts.time_slice,
                    vec![keys.records.clone(), keys.time.clone()],
                    vec![
                        Value::from(after.to_string()),
                        Value::from(CHUNK as i64),
                        Value::from(anchor.as_str()),
                        Value::from(READ_BYTES as i64),
                    ],
                    OP,
                    Some(collection),
                )
                .await?;
            let [last, last_id, ids, values] =
                <[Value; 4]>::try_from(array(reply)).map_err(|_| unexpected("not four parts"))?;
            let (ids, values) = (array(ids), array(values));
            if ids.len() != values.len() {
                return Err(unexpected("parts of different lengths"));
            }
            for (id, value) in ids.iter().zip(&values) {
                let id = text(id).ok_or_else(|| corrupt("holds an id that is not UTF-8 text"))?;
                if let Some(value) = stored_text(value, collection, &keys, &id)? {
                    let (_, record) = self.decode(collection, &keys, &id, &value)?;
                    latest.insert(record.id().clone(), record);
                }
            }
            if is_nil(&last) {
                return Ok(latest.into_values().collect());
            }
            let next = parse_score(&last).ok_or_else(|| {
                corrupt("gives a record a time that is not a whole number of milliseconds")
            })?;
            let next_id = text(&last_id)
                .ok_or_else(|| corrupt("holds an id that is not UTF-8 text"))?
                .into_owned();
            // An empty anchor means "none" to the script: it would go on
            // strictly after the time, past the rest of the tie.
            if next_id.is_empty() {
                return Err(corrupt("holds an empty id"));
            }
            // The index's order: by millis, then by id byte for byte, as
            // Rust orders strings.
            if (next, next_id.as_str()) <= (after, anchor.as_str()) {
                return Err(unexpected("a time slice that does not advance"));
            }
            (after, anchor) = (next, next_id);
        }
    }

    async fn list_collections(&self) -> Result<Vec<CollectionName>> {
        const OP: &str = "listing collections";
        self.check_open().await?;
        let names = self.registered_names(OP).await?;
        if names.is_empty() {
            return Ok(names);
        }
        // One pipeline (split by node on a cluster): is each one non-empty?
        let pipeline = self.client.pipeline();
        for name in &names {
            let () = pipeline
                .exists(self.keys.collection(name).records)
                .await
                .map_err(self.fail(OP, None))?;
        }
        let mut listed = Vec::new();
        for (name, exists) in names.into_iter().zip(pipeline.try_all::<i64>().await) {
            if exists.map_err(self.fail(OP, None))? > 0 {
                listed.push(name);
            }
        }
        Ok(listed)
    }

    async fn clear_collection(&self, collection: &CollectionName) -> Result<()> {
        self.check_open().await?;
        let keys = self.keys.collection(collection);
        self.eval(
            &self.scripts.clear,
            vec![keys.records, keys.feed, keys.time],
            Vec::new(),
            "clearing",
            Some(collection),
        )
        .await?;
        // A cleared collection is often never written again, and its entries
        // would stay for the handle's life. Both were still right (the name
        // stays in the registry, the counter on the server): forgetting them
        // costs its next write one registration and a batch without a guess.
        self.registered.lock().remove(collection);
        self.last_sequence.lock().remove(collection);
        Ok(())
    }

    async fn newest_stamp(&self) -> Result<Option<Stamp>> {
        const OP: &str = "reading the newest stamps";
        self.check_open().await?;
        let names = self.registered_names(OP).await?;
        if names.is_empty() {
            return Ok(None);
        }
        // One small key per collection, in one pipeline: never the records.
        let pipeline = self.client.pipeline();
        for name in &names {
            let () = pipeline
                .zrange(
                    self.keys.collection(name).newest,
                    -1,
                    -1,
                    None,
                    false,
                    None,
                    false,
                )
                .await
                .map_err(self.fail(OP, None))?;
        }
        let mut newest: Option<Stamp> = None;
        // Read as raw values: bytes that are not UTF-8 are a corrupt
        // member, not a failed command.
        for (name, reply) in names.iter().zip(pipeline.try_all::<Vec<Value>>().await) {
            for member in reply.map_err(self.fail(OP, None))? {
                let corrupt = |reason: String| {
                    error::corrupt(name, None, &self.keys.collection(name).newest, reason)
                };
                let text = member
                    .as_str()
                    .ok_or_else(|| corrupt("not UTF-8 text".to_owned()))?;
                let stamp: Stamp = text
                    .parse()
                    .map_err(|e| corrupt(format!("not a stamp: {e}")))?;
                if newest.as_ref().is_none_or(|n| stamp > *n) {
                    newest = Some(stamp);
                }
            }
        }
        Ok(newest)
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.check_open().await?;
        // Read raw: bytes that are not UTF-8 (written by something else)
        // are corrupt data, not a reply the client failed to convert.
        let value: Value = self
            .client
            .hget(self.keys.meta(), key)
            .await
            .map_err(self.fail("reading metadata", None))?;
        if is_nil(&value) {
            return Ok(None);
        }
        self.meta_text(key, &value).map(Some)
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.check_open().await?;
        let _: i64 = self
            .client
            .hset(self.keys.meta(), (key, value))
            .await
            .map_err(self.fail("writing metadata", None))?;
        Ok(())
    }

    async fn set_meta_if_absent(&self, key: &str, value: &str) -> Result<String> {
        const OP: &str = "writing metadata once";
        self.check_open().await?;
        let kept = self
            .eval(
                &self.scripts.meta_if_absent,
                vec![self.keys.meta()],
                vec![Value::from(key), Value::from(value)],
                OP,
                None,
            )
            .await?;
        if is_nil(&kept) {
            return Err(error::unexpected_reply(OP, &self.address, "no value"));
        }
        self.meta_text(key, &kept)
    }

    async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Under the connection lock: a call restarting the client right now
        // (it passed its check before `closed` was set) finishes first, and
        // its client is stopped here; a call that takes the lock later finds
        // the handle closed (see `check_open`). Quitting a client whose
        // restart is half-way would do nothing, and leave it connected.
        let _connection = self.connection.lock().await;
        // Data stays; only the connections end. A server already gone is no
        // reason to fail: the handle is closed either way.
        quit_quietly(&self.client).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncforge_core::CACHED_COLLECTIONS;

    /// The batch script's arguments, under the default limit of a value.
    fn arguments(writes: &[Write], guess: u64, budget: usize) -> (Vec<Value>, usize) {
        batch_arguments(writes, guess, budget, DEFAULT_VALUE_LIMIT).unwrap()
    }

    /// A record met twice in a page read in several calls (rewritten
    /// further along the feed between them) is kept once, at its latest
    /// change; the order of the rest stays.
    #[test]
    fn a_page_holds_each_record_once_at_its_latest_change() {
        let change = |cursor: u64, id: &str| {
            let stamp = Stamp::new(cursor, 0, "t").unwrap();
            let content =
                syncforge_core::Content::from_value(serde_json::json!({ "id": id, "at": cursor }))
                    .unwrap();
            Change {
                cursor: Cursor::new(cursor),
                record: Record::create(content, &stamp),
            }
        };
        let mut changes = vec![
            change(3, "a"),
            change(4, "b"),
            change(9, "c"),
            change(1_500, "a"),
            change(1_600, "d"),
            change(1_700, "b"),
        ];
        keep_latest_change_of_each_record(&mut changes);
        let kept: Vec<(u64, &str)> = changes
            .iter()
            .map(|change| (change.cursor.get(), change.record.id().as_str()))
            .collect();
        assert_eq!(kept, [(9, "c"), (1_500, "a"), (1_600, "d"), (1_700, "b")]);
        let mut distinct = vec![change(1, "x"), change(2, "y")];
        keep_latest_change_of_each_record(&mut distinct);
        assert_eq!(distinct.len(), 2);
    }

    #[test]
    fn scores_parse_exactly() {
        assert_eq!(parse_score(&Value::from("17")), Some(17));
        assert_eq!(
            parse_score(&Value::from("9007199254740992")),
            Some(MAX_SEQUENCE)
        );
        assert_eq!(
            parse_score(&Value::from("1e+15")),
            Some(1_000_000_000_000_000)
        );
        assert_eq!(parse_score(&Value::from("9007199254740993")), None);
        assert_eq!(parse_score(&Value::from("1e+16")), None);
        assert_eq!(parse_score(&Value::from("1.5")), None);
        assert_eq!(parse_score(&Value::from("-1")), None);
        assert_eq!(parse_score(&Value::Null), None);
    }

    #[test]
    fn batch_replies_expand_to_one_sequence_per_write() {
        // The fast path's one integer: every write, in order, from it on.
        assert_eq!(batch_outcomes(Value::Integer(7), 3), Ok(vec![7, 8, 9]));
        assert_eq!(
            batch_outcomes(Value::Integer(MAX_SEQUENCE as i64 - 1), 2),
            Ok(vec![MAX_SEQUENCE - 1, MAX_SEQUENCE])
        );
        assert!(batch_outcomes(Value::Integer(MAX_SEQUENCE as i64), 2).is_err());
        assert!(batch_outcomes(Value::Integer(0), 1).is_err());
        assert!(batch_outcomes(Value::Integer(-1), 1).is_err());
        // The general path's array: one outcome per write, 0 a conflict.
        let array =
            |items: &[i64]| Value::Array(items.iter().map(|&i| Value::Integer(i)).collect());
        assert_eq!(batch_outcomes(array(&[5, 0, 6]), 3), Ok(vec![5, 0, 6]));
        assert!(batch_outcomes(array(&[5, 0]), 3).is_err());
        assert!(batch_outcomes(Value::Array(vec![Value::from("x")]), 1).is_err());
        assert!(batch_outcomes(Value::Null, 1).is_err());
        // Outcomes past 2^53 (no cursor can hold them), negative ones, and
        // numbers as text (which the script never answers) are no reply of
        // the script's: a server or proxy that is not Redis.
        assert_eq!(
            batch_outcomes(array(&[MAX_SEQUENCE as i64]), 1),
            Ok(vec![MAX_SEQUENCE])
        );
        assert!(batch_outcomes(array(&[MAX_SEQUENCE as i64 + 1]), 1).is_err());
        assert!(batch_outcomes(array(&[i64::MAX]), 1).is_err());
        assert!(batch_outcomes(array(&[-1]), 1).is_err());
        assert!(batch_outcomes(Value::Array(vec![Value::from("5")]), 1).is_err());
    }

    #[test]
    fn batch_arguments_say_whether_an_id_repeats() {
        let mut hlc = syncforge_core::Hlc::new(syncforge_core::ClientId::new("args").unwrap());
        let write = |hlc: &mut syncforge_core::Hlc, id: &str| {
            let content =
                syncforge_core::Content::from_value(serde_json::json!({ "id": id })).unwrap();
            Write::create(Record::create(content, hlc.now().unwrap()))
        };
        let distinct = [write(&mut hlc, "a"), write(&mut hlc, "b")];
        let repeated = [write(&mut hlc, "a"), write(&mut hlc, "a")];
        let flag = |args: &[Value]| args[3].as_i64();
        let (args, taken) = arguments(&distinct, 5, CHUNK_BYTES);
        assert_eq!((args.len(), taken), (4 + 4 * 2, 2));
        assert_eq!(flag(&args), Some(1));
        assert_eq!(args[2].as_i64(), Some(5));
        let value = |v: &Value| text(v).unwrap().into_owned();
        assert!(value(&args[10]).starts_with("5 {"));
        assert!(value(&args[11]).starts_with("6 {"));
        assert_eq!(flag(&arguments(&repeated, 5, CHUNK_BYTES).0), Some(0));
        // Without a guess, the values are the bare JSON.
        let (args, _) = arguments(&distinct, 0, CHUNK_BYTES);
        assert!(value(&args[10]).starts_with('{'));
    }

    #[test]
    fn a_script_takes_writes_up_to_its_byte_budget_and_at_least_one() {
        let mut hlc = syncforge_core::Hlc::new(syncforge_core::ClientId::new("args").unwrap());
        let writes: Vec<Write> = (0..5)
            .map(|i| {
                let content = syncforge_core::Content::from_value(
                    serde_json::json!({ "id": format!("r{i}"), "blob": "x".repeat(1_000) }),
                )
                .unwrap();
                Write::create(Record::create(content, hlc.now().unwrap()))
            })
            .collect();
        let one = writes[0].record.to_json_string().len();
        // Two values fit in a budget of two, not of two less a byte.
        let (args, taken) = arguments(&writes, 0, 2 * one);
        assert_eq!((taken, args.len()), (2, 4 + 4 * 2));
        assert_eq!(args[0].as_i64(), Some(2));
        assert_eq!(arguments(&writes, 0, 2 * one - 1).1, 1);
        // A record larger than the budget goes alone.
        let (args, taken) = arguments(&writes, 7, 1);
        assert_eq!((taken, args.len()), (1, 4 + 4));
        assert!(text(&args[7]).unwrap().starts_with("7 {"));
        // Everything, under a budget none reaches.
        assert_eq!(arguments(&writes, 0, CHUNK_BYTES).1, 5);
        // A large record after small ones waits for a call of its own.
        let large = syncforge_core::Content::from_value(
            serde_json::json!({ "id": "large", "blob": "x".repeat(10_000) }),
        )
        .unwrap();
        let mixed = [
            Write::create(writes[0].record.clone()),
            Write::create(writes[1].record.clone()),
            Write::create(Record::create(large, hlc.now().unwrap())),
        ];
        assert_eq!(arguments(&mixed, 0, 5_000).1, 2);
        assert_eq!(arguments(&mixed[2..], 0, 5_000).1, 1);
        // A record whose JSON and longest sequence pass the server's limit
        // of a value is refused, named, with or without a guess; one byte
        // less is taken.
        let json = mixed[2].record.to_json_string().len();
        for guess in [0, 7] {
            let refused = batch_arguments(&mixed, guess, CHUNK_BYTES, json + SEQUENCE_PREFIX - 1);
            assert!(
                matches!(&refused, Err(Error::InvalidRecord { id: Some(id), .. }) if id == "large"),
                "{refused:?}"
            );
            let taken = batch_arguments(&mixed, guess, CHUNK_BYTES, json + SEQUENCE_PREFIX);
            assert_eq!(taken.map(|(_, n)| n).ok(), Some(3));
        }
        assert!(check_value_sizes(&mixed, json + SEQUENCE_PREFIX - 1).is_err());
        assert!(check_value_sizes(&mixed, json + SEQUENCE_PREFIX).is_ok());
    }

    /// Polls `future` once, without waiting: whether it finished.
    async fn poll_once<F: std::future::Future + ?Sized>(
        mut future: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx))).await
    }

    /// A handle on `config` whose connection task has ended, as after
    /// fred gave up on an `ASK`: its next call starts the client again.
    async fn handle_with_an_ended_task(config: &RedisConfig) -> RedisBackend {
        let ended: ConnectHandle = tokio::spawn(async { Ok(()) });
        while !ended.is_finished() {
            tokio::task::yield_now().await;
        }
        RedisBackend::with_client(
            build_client(config).unwrap(),
            config,
            ended,
            DEFAULT_VALUE_LIMIT,
        )
    }

    /// A call that passed the closed check and waits for the connection
    /// lock while `close` runs finds the handle closed once it has the
    /// lock, and does not start the client again. Nothing listens on the
    /// port: a reconnection would fail as `Unavailable` instead.
    #[tokio::test(flavor = "current_thread")]
    async fn a_call_waiting_while_close_runs_does_not_reconnect() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let config = RedisConfig {
            port,
            connect_timeout: Duration::from_secs(1),
            ..RedisConfig::default()
        };
        let store = handle_with_an_ended_task(&config).await;
        let held = store.connection.lock().await;
        let mut call = std::pin::pin!(store.check_open());
        // Past the closed check, waiting for the lock.
        assert!(poll_once(call.as_mut()).await.is_pending());
        let mut closing = std::pin::pin!(store.close());
        let closed = poll_once(closing.as_mut()).await;
        drop(held);
        let result = call.await;
        assert!(matches!(result, Err(Error::Closed { .. })), "{result:?}");
        match closed {
            std::task::Poll::Ready(closed) => closed.unwrap(),
            std::task::Poll::Pending => closing.await.unwrap(),
        }
    }

    /// The test server's configuration, once it answered; `None` (and a
    /// skip message) when it is not running.
    async fn test_server() -> Option<RedisConfig> {
        use syncforge_testkit::services::{address, available};
        const ENV: &str = "SYNCFORGE_TEST_REDIS_URL";
        let url = address(ENV, "redis://127.0.0.1:6379/0");
        let config = RedisConfig {
            connect_timeout: Duration::from_secs(2),
            ..RedisConfig::from_url(&url).unwrap()
        };
        let answered = match RedisBackend::connect(config.clone()).await {
            Ok(probe) => probe.close().await.is_ok(),
            Err(_) => false,
        };
        available("redis", ENV, &url, answered).then_some(config)
    }

    /// The time slice script by hand: after an anchor it still finds at
    /// the same time, it goes on by rank, a page at most; after one that
    /// moved, it takes the whole tie at the anchor's time, then a page
    /// strictly after. Needs the test server.
    #[tokio::test(flavor = "current_thread")]
    async fn a_time_slice_goes_on_by_rank_or_after_a_moved_anchor_by_time() {
        let Some(mut config) = test_server().await else {
            return;
        };
        config.key_prefix = format!(
            "sft-slices-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let store = RedisBackend::connect(config).await.unwrap();
        let notes = CollectionName::new("notes").unwrap();
        let writes: Vec<Write> = ["a", "b", "c", "d", "e", "f", "g"]
            .iter()
            .enumerate()
            .map(|(n, id)| {
                let millis = if n < 5 { 5_000 } else { 6_000 };
                let stamp = Stamp::new(millis, 0, "slices").unwrap();
                let content =
                    syncforge_core::Content::from_value(serde_json::json!({ "id": id })).unwrap();
                Write::create(Record::create(content, &stamp))
            })
            .collect();
        store.put_batch(&notes, &writes).await.unwrap();
        let keys = store.keys.collection(&notes);
        let sliced = |after: &'static str, anchor: &'static str, budget: i64| {
            let (store, keys) = (&store, &keys);
            async move {
                let reply = store
                    .eval(
                        &store.scripts.time_slice,
                        vec![keys.records.clone(), keys.time.clone()],
                        vec![
                            Value::from(after),
                            Value::from(3),
                            Value::from(anchor),
                            Value::from(budget),
                        ],
                        "test",
                        None,
                    )
                    .await
                    .unwrap();
                let [last, last_id, ids, _values] = <[Value; 4]>::try_from(array(reply)).unwrap();
                let ids: Vec<String> = array(ids)
                    .iter()
                    .map(|id| text(id).unwrap().into_owned())
                    .collect();
                (
                    parse_score(&last),
                    text(&last_id).map(std::borrow::Cow::into_owned),
                    ids,
                )
            }
        };
        let slice = |after: &'static str, anchor: &'static str| sliced(after, anchor, 1 << 20);
        let owned = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect::<Vec<_>>();
        // By rank after "b" (still at 5000): a page of three.
        assert_eq!(
            slice("5000", "b").await,
            (Some(5_000), Some("e".to_owned()), owned(&["c", "d", "e"]))
        );
        // After the end: nothing, and no next slice.
        assert_eq!(slice("6000", "g").await, (None, None, Vec::new()));
        // An anchor gone from 5000: the whole tie there, then what follows.
        assert_eq!(
            slice("5000", "gone").await,
            (None, None, owned(&["a", "b", "c", "d", "e", "f", "g"]))
        );
        // No anchor: strictly after the time, a page at most.
        assert_eq!(
            slice("4999", "").await,
            (Some(5_000), Some("c".to_owned()), owned(&["a", "b", "c"]))
        );
        // A budget no value fits in: the first record alone, and the next
        // slice goes on after it; after a moved anchor, the whole tie and
        // one record past it.
        assert_eq!(
            sliced("4999", "", 1).await,
            (Some(5_000), Some("a".to_owned()), owned(&["a"]))
        );
        assert_eq!(
            sliced("5000", "gone", 1).await,
            (
                Some(6_000),
                Some("f".to_owned()),
                owned(&["a", "b", "c", "d", "e", "f"])
            )
        );
        store.clear_collection(&notes).await.unwrap();
        store.close().await.unwrap();
    }

    /// A call that passed its open check just before `close` and then
    /// sends to the stopped client fails as closed, not as a lost
    /// connection that the engine would retry. Needs the test server.
    #[tokio::test(flavor = "current_thread")]
    async fn a_call_meeting_the_client_stopped_by_close_is_refused_as_closed() {
        let Some(config) = test_server().await else {
            return;
        };
        // The stopped client answers nothing: its command times out.
        let config = RedisConfig {
            command_timeout: Duration::from_millis(300),
            ..config
        };
        let store = RedisBackend::connect(config).await.unwrap();
        store.check_open().await.unwrap();
        store.close().await.unwrap();
        let collection = CollectionName::new("closed").unwrap();
        let keys = store.keys.collection(&collection);
        let ids = [RecordId::new("a").unwrap()];
        let result = store.hmget(&keys, &ids, &collection).await;
        assert!(matches!(result, Err(Error::Closed { .. })), "{result:?}");
    }

    /// `close` while a call is starting the client again (it passed its
    /// check before the close) stops the client that call started: no
    /// connection outlives the close. Needs the test server.
    #[tokio::test(flavor = "current_thread")]
    async fn close_during_a_reconnection_stops_the_client_it_starts() {
        let Some(config) = test_server().await else {
            return;
        };
        let store = handle_with_an_ended_task(&config).await;
        let mut call = std::pin::pin!(store.check_open());
        // Holding the lock, the client's new connection task spawned but
        // not yet run (one thread: nothing else runs between the polls).
        assert!(poll_once(call.as_mut()).await.is_pending());
        let mut closing = std::pin::pin!(store.close());
        let closed = poll_once(closing.as_mut()).await;
        // Begun before the close, the call may finish its reconnection.
        call.await.unwrap();
        match closed {
            std::task::Poll::Ready(closed) => closed.unwrap(),
            std::task::Poll::Pending => closing.await.unwrap(),
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !store.connection.lock().await.is_finished() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the client started during close() is still running"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What fred is told to log in with: a user name alone gets an empty
    /// password, since fred sends no `AUTH` without one and the connection
    /// would run as the `default` user.
    #[test]
    fn a_user_without_a_password_logs_in_as_that_user() {
        let credentials = |url: &str| {
            let config = build_client(&RedisConfig::from_url(url).unwrap())
                .unwrap()
                .client_config();
            (config.username, config.password)
        };
        assert_eq!(
            credentials("redis://app@h"),
            (Some("app".to_owned()), Some(String::new()))
        );
        assert_eq!(
            credentials("redis://app:pw@h"),
            (Some("app".to_owned()), Some("pw".to_owned()))
        );
        assert_eq!(credentials("redis://:pw@h"), (None, Some("pw".to_owned())));
        assert_eq!(credentials("redis://h"), (None, None));
        assert_eq!(credentials("redis://@h"), (None, None));
        assert_eq!(credentials("redis://:@h"), (None, None));
    }

    /// The scripts call `ZMSCORE`, which came with Redis 6.2: an older
    /// server is refused, naming both versions; one whose version the
    /// client could not read is let through.
    #[test]
    fn servers_older_than_redis_6_2_are_refused() {
        let check = |found: Option<&str>| {
            let found = found.map(|v| Version::parse(v).unwrap());
            check_server_version(found.as_ref(), "redis://h:1/0")
        };
        for old in ["6.0.16", "6.1.240", "5.0.14"] {
            let refused = check(Some(old)).unwrap_err();
            assert!(matches!(refused, Error::Storage { .. }), "{refused:?}");
            assert!(!refused.is_transient());
            let text = refused.to_string();
            for part in [old, "Redis 6.2 or newer", "redis://h:1/0"] {
                assert!(text.contains(part), "{part} missing: {text}");
            }
        }
        for new in ["6.2.0", "6.2.0-rc1", "7.0.15", "8.0.2", "10.0.0"] {
            assert!(check(Some(new)).is_ok(), "{new}");
        }
        assert!(check(None).is_ok());
    }

    /// The client reads the server's version as it connects, so the check
    /// above runs against a real server; the test server is new enough.
    /// Needs the test server.
    #[tokio::test(flavor = "current_thread")]
    async fn the_client_knows_the_version_of_the_server_it_connected_to() {
        let Some(config) = test_server().await else {
            return;
        };
        let store = RedisBackend::connect(config).await.unwrap();
        let version = store.client.server_version();
        assert!(
            version
                .as_ref()
                .is_some_and(|v| (v.major, v.minor) >= MIN_SERVER_VERSION),
            "{version:?}"
        );
        store.close().await.unwrap();
    }

    impl RedisBackend {
        /// Whether the handle's caches hold `collection`: registered, and
        /// the last sequence seen there.
        fn cached(&self, collection: &CollectionName) -> (bool, Option<u64>) {
            (
                self.registered.lock().contains_key(collection),
                self.last_sequence.lock().get(collection).copied(),
            )
        }

        /// How many collections each of the handle's caches holds.
        fn cached_collections(&self) -> (usize, usize) {
            (
                self.registered.lock().len(),
                self.last_sequence.lock().len(),
            )
        }

        /// Whether the registry holds `collection`'s name.
        async fn in_registry(&self, collection: &CollectionName) -> bool {
            self.client
                .sismember(self.keys.registry(), collection.as_str())
                .await
                .unwrap()
        }

        /// Takes `collection`'s name out of the registry, as a failover
        /// that lost the registry's last writes would: only a write that
        /// registers the collection again puts it back.
        async fn unregister(&self, collection: &CollectionName) {
            let _: i64 = self
                .client
                .srem(self.keys.registry(), collection.as_str())
                .await
                .unwrap();
        }

        /// Deletes every key of `collections` and of the store itself.
        async fn remove_keys(&self, collections: &[CollectionName]) {
            let mut keys = vec![self.keys.registry(), self.keys.meta()];
            keys.extend(
                collections
                    .iter()
                    .flat_map(|c| self.keys.collection(c).for_writes()),
            );
            for slice in keys.chunks(1_000) {
                let _: i64 = self.client.unlink(slice.to_vec()).await.unwrap();
            }
        }
    }

    /// A key prefix no other test or run uses.
    fn fresh_prefix(tag: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("sft-{tag}-{}-{nanos:x}", std::process::id())
    }

    /// A create of the record `id`, or an update of it from `token`.
    fn write_of(id: &str, millis: u64, expected: Option<Token>) -> Write {
        let stamp = Stamp::new(millis, 0, "caches").unwrap();
        let content =
            syncforge_core::Content::from_value(serde_json::json!({ "id": id, "at": millis }))
                .unwrap();
        let record = Record::create(content, &stamp);
        match expected {
            None => Write::create(record),
            Some(token) => Write::replace(record, token),
        }
    }

    /// The one write of a batch, written.
    async fn written(store: &RedisBackend, collection: &CollectionName, write: Write) -> u64 {
        let outcomes = store.put_batch(collection, &[write]).await.unwrap();
        match outcomes.as_slice() {
            [WriteOutcome::Written {
                token: Token::Sequence(sequence),
                ..
            }] => *sequence,
            other => panic!("{other:?}"),
        }
    }

    /// A batch whose sequence the handle guessed right, with no repeated id
    /// and every expectation holding, takes the batch script's fast path:
    /// its reply is the first sequence alone, where the general path
    /// answers one per write. Both store the same bytes (the integration
    /// test `the_fast_path_stores_what_the_general_path_stores`); this one
    /// sees that the fast path is taken at all. Needs the test server.
    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_guessed_right_takes_the_fast_path() {
        let Some(mut config) = test_server().await else {
            return;
        };
        config.key_prefix = fresh_prefix("fast");
        let store = RedisBackend::connect(config).await.unwrap();
        let notes = CollectionName::new("notes").unwrap();
        assert_eq!(written(&store, &notes, write_of("a", 1_000, None)).await, 1);
        let keys = store.keys.collection(&notes);
        let run = |writes: Vec<Write>| {
            let guess = store.next_sequence_guess(&notes);
            let (args, _) =
                batch_arguments(&writes, guess, CHUNK_BYTES, DEFAULT_VALUE_LIMIT).unwrap();
            store.eval(
                &store.scripts.put_batch,
                keys.for_writes(),
                args,
                "test",
                None,
            )
        };
        let b = write_of("b", 2_000, None);
        let fast = run(vec![b.clone()]).await.unwrap();
        // Matched as it is: a one-integer array reads as that integer too.
        assert!(matches!(fast, Value::Integer(2)), "{fast:?}");
        // The same create again conflicts: the general path answers it.
        remember_collection_hint(&mut store.last_sequence.lock(), &notes, 2);
        let general = run(vec![b]).await.unwrap();
        assert!(
            matches!(&general, Value::Array(outcomes) if outcomes.len() == 1),
            "{general:?}"
        );
        store.remove_keys(&[notes]).await;
        store.close().await.unwrap();
    }

    /// A clear forgets the collection in the handle's caches, which would
    /// otherwise keep it for the handle's life. What that costs is a
    /// registration and a batch without a guess: the next write registers
    /// the collection again, and its sequence follows the counter the
    /// clear kept. Needs the test server.
    #[tokio::test(flavor = "current_thread")]
    async fn a_clear_forgets_the_collection_and_its_next_write_registers_it_again() {
        let Some(mut config) = test_server().await else {
            return;
        };
        config.key_prefix = fresh_prefix("forget");
        let store = RedisBackend::connect(config).await.unwrap();
        let notes = CollectionName::new("notes").unwrap();
        assert_eq!(written(&store, &notes, write_of("a", 1_000, None)).await, 1);
        assert_eq!(store.cached(&notes), (true, Some(1)));
        store.clear_collection(&notes).await.unwrap();
        assert_eq!(store.cached(&notes), (false, None));
        store.unregister(&notes).await;
        assert_eq!(written(&store, &notes, write_of("b", 2_000, None)).await, 2);
        assert!(store.in_registry(&notes).await);
        assert_eq!(store.cached(&notes), (true, Some(2)));
        let b = RecordId::new("b").unwrap();
        let stored = store.get(&notes, &b).await.unwrap().unwrap();
        assert_eq!(stored.token, Token::Sequence(2));
        assert_eq!(store.list_collections().await.unwrap(), vec![notes.clone()]);
        store.remove_keys(&[notes]).await;
        store.close().await.unwrap();
    }

    /// A handle writing ever new collections kept an entry for each in
    /// both caches for good. Past 4,096 collections they start afresh; a
    /// collection forgotten that way is registered again by its next write,
    /// whose sequence follows the counter. Needs the test server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_handle_caches_hold_at_most_4096_collections() {
        let Some(mut config) = test_server().await else {
            return;
        };
        config.key_prefix = fresh_prefix("bounded");
        let store = Arc::new(RedisBackend::connect(config).await.unwrap());
        let collections: Vec<CollectionName> = (0..=CACHED_COLLECTIONS)
            .map(|n| CollectionName::new(format!("c{n}")).unwrap())
            .collect();
        let (first, last) = (&collections[0], &collections[CACHED_COLLECTIONS]);
        // Many at a time: one after another they take seconds.
        for slice in collections[..CACHED_COLLECTIONS].chunks(128) {
            let mut writes = tokio::task::JoinSet::new();
            for collection in slice {
                let (store, collection) = (Arc::clone(&store), collection.clone());
                writes.spawn(async move {
                    assert_eq!(
                        written(&store, &collection, write_of("r", 1_000, None)).await,
                        1
                    );
                });
            }
            while let Some(done) = writes.join_next().await {
                done.unwrap();
            }
        }
        assert_eq!(
            store.cached_collections(),
            (CACHED_COLLECTIONS, CACHED_COLLECTIONS)
        );
        assert_eq!(store.cached(first), (true, Some(1)));
        assert_eq!(written(&store, last, write_of("r", 1_000, None)).await, 1);
        assert_eq!(store.cached_collections(), (1, 1));
        assert_eq!(store.cached(last), (true, Some(1)));
        // Forgotten: its next write registers it again, and the update
        // takes the sequence after the counter's, with no guess to go by.
        store.unregister(first).await;
        let update = write_of("r", 2_000, Some(Token::Sequence(1)));
        assert_eq!(written(&store, first, update).await, 2);
        assert!(store.in_registry(first).await);
        assert_eq!(store.cached(first), (true, Some(2)));
        let r = RecordId::new("r").unwrap();
        let stored = store.get(first, &r).await.unwrap().unwrap();
        assert_eq!(stored.token, Token::Sequence(2));
        assert_eq!(stored.record.get("at"), Some(serde_json::json!(2_000)));
        store.remove_keys(&collections).await;
        store.close().await.unwrap();
    }

    #[test]
    fn expectations_beyond_the_store_never_match() {
        assert_eq!(expected_argument(None), "");
        assert_eq!(expected_argument(Some(&Token::Sequence(42))), "42");
        assert_eq!(
            expected_argument(Some(&Token::Sequence(MAX_SEQUENCE + 1))),
            "-"
        );
        assert_eq!(expected_argument(Some(&Token::Tag("42".to_owned()))), "-");
    }
}
