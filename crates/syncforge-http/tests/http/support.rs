//! Helpers shared by the HTTP tests: engines on memory and filesystem
//! stores, a server that can be stopped and started again on its port, and
//! canonical snapshots.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use syncforge::http::{HttpPeer, Replica, Server, ServerOptions, SyncOutcome, WatchGuard};
use syncforge::{
    ChangePage, CollectionName, ConflictStrategy, Cursor, FsBackend, MemoryBackend, PageOptions,
    Record, SyncEngine,
};

/// An engine over a fresh memory store.
pub(crate) async fn memory_engine(client: &str) -> SyncEngine {
    SyncEngine::builder()
        .client_id(client)
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend(MemoryBackend::new())
        .build()
        .await
        .unwrap()
}

/// An engine over the filesystem store in `dir`.
pub(crate) async fn fs_engine(client: &str, dir: &Path) -> SyncEngine {
    SyncEngine::builder()
        .client_id(client)
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend(FsBackend::open(dir).await.unwrap())
        .build()
        .await
        .unwrap()
}

/// A sync server over a filesystem store, which can be stopped (engine
/// closed, port free) and started again on the same port and directory.
pub(crate) struct FsServer {
    pub(crate) dir: PathBuf,
    pub(crate) address: SocketAddr,
    options: ServerOptions,
    running: Option<(Server, SyncEngine)>,
}

impl FsServer {
    /// Starts on a free port of 127.0.0.1.
    pub(crate) async fn start(dir: &Path, options: ServerOptions) -> FsServer {
        let engine = fs_engine("server", dir).await;
        let server = Server::bind(engine.clone(), "127.0.0.1:0", options.clone())
            .await
            .unwrap();
        FsServer {
            dir: dir.to_owned(),
            address: server.local_addr(),
            options,
            running: Some((server, engine)),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub(crate) fn engine(&self) -> &SyncEngine {
        &self.running.as_ref().expect("server is running").1
    }

    pub(crate) fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Shuts the server down and closes its store.
    pub(crate) async fn stop(&mut self) {
        if let Some((server, engine)) = self.running.take() {
            server.shutdown().await.unwrap();
            engine.close().await.unwrap();
        }
    }

    /// Opens the store again and serves it on the same port.
    pub(crate) async fn restart(&mut self) {
        self.stop().await;
        let engine = fs_engine("server", &self.dir).await;
        // The port was just released; binding it again may need a moment.
        let mut attempts = 0;
        let server = loop {
            match Server::bind(engine.clone(), self.address, self.options.clone()).await {
                Ok(server) => break server,
                Err(error) if attempts < 50 => {
                    attempts += 1;
                    eprintln!("rebinding {}: {error}", self.address);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("cannot rebind {}: {error}", self.address),
            }
        };
        self.running = Some((server, engine));
    }
}

/// A client of `url` with quick retries, as the tests want failures fast.
pub(crate) fn peer(url: &str, token: Option<&str>) -> HttpPeer {
    let mut builder = HttpPeer::builder(url)
        .peer_id("server")
        .timeout(Duration::from_secs(10))
        .retries(1, Duration::from_millis(20));
    if let Some(token) = token {
        builder = builder.bearer_token(token);
    }
    builder.build().unwrap()
}

/// Canonical JSON of a whole collection, sorted by id: equal strings mean
/// byte-identical replicas.
pub(crate) async fn snapshot(engine: &SyncEngine, collection: &str) -> String {
    let mut records = engine.get_all(collection).await.unwrap();
    records.sort_by(|a, b| a.id().cmp(b.id()));
    records
        .iter()
        .map(|r| r.to_json_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The end of `collection`'s change feed: moves with every write.
pub(crate) async fn feed_head(engine: &SyncEngine, collection: &str) -> Cursor {
    let mut cursor = Cursor::START;
    for pages in 0.. {
        assert!(pages < 100_000, "the feed did not end within 100,000 pages");
        let page = engine
            .changes(collection, cursor, PageOptions::default().limit(1000))
            .await
            .unwrap();
        cursor = page.next;
        if !page.more {
            return cursor;
        }
    }
    unreachable!("the loop returns or fails")
}

/// A plain HTTP client for hand-made requests.
/// The JSON body of a GET of `url`, whatever its status.
pub(crate) async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    let text = client.get(url).send().await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap()
}

pub(crate) fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// An engine served through counters: the changes its feed reads return
/// (the work a skip list makes the server do), the limit of each feed read,
/// and its merges — how many run at once, at most, and how many ended.
/// Merges and feed reads can be slowed down.
#[derive(Clone)]
pub(crate) struct InstrumentedReplica {
    engine: SyncEngine,
    pub(crate) scanned: Arc<AtomicUsize>,
    pub(crate) syncs_running: Arc<AtomicUsize>,
    pub(crate) most_syncs_running: Arc<AtomicUsize>,
    pub(crate) syncs_ended: Arc<AtomicUsize>,
    /// The limit of each feed read, in order.
    pub(crate) read_limits: Arc<std::sync::Mutex<Vec<usize>>>,
    sync_delay: Duration,
    /// How long each feed read and each merge takes per change it holds.
    per_change: Duration,
    /// How many writes its watch announces at most (all when `None`).
    announced: Option<usize>,
    /// A record rewritten right after the next feed read.
    rewrite: Arc<std::sync::Mutex<Option<String>>>,
    /// Checks of the store's identity made, and how long each takes.
    pub(crate) identity_checks: Arc<AtomicUsize>,
    identity_check_delay: Duration,
}

impl InstrumentedReplica {
    pub(crate) fn new(engine: SyncEngine) -> Self {
        InstrumentedReplica {
            engine,
            scanned: Arc::default(),
            syncs_running: Arc::default(),
            most_syncs_running: Arc::default(),
            syncs_ended: Arc::default(),
            read_limits: Arc::default(),
            sync_delay: Duration::ZERO,
            per_change: Duration::ZERO,
            announced: None,
            rewrite: Arc::default(),
            identity_checks: Arc::default(),
            identity_check_delay: Duration::ZERO,
        }
    }

    /// Each check of the store's identity takes `delay`.
    pub(crate) fn slow_identity_checks(mut self, delay: Duration) -> Self {
        self.identity_check_delay = delay;
        self
    }

    /// Rewrites record `id` right after the next feed read, as a write
    /// landing between two reads of one request.
    pub(crate) fn rewriting_after_next_read(self, id: &str) -> Self {
        *self.rewrite.lock().unwrap() = Some(id.to_owned());
        self
    }

    /// Its watch never wakes anyone, as for writes that began before the
    /// watch did.
    pub(crate) fn deaf(self) -> Self {
        self.announces_at_most(0)
    }

    /// Its watch announces the first `writes` writes only.
    pub(crate) fn announces_at_most(mut self, writes: usize) -> Self {
        self.announced = Some(writes);
        self
    }

    /// Each merge waits `delay` before it starts.
    pub(crate) fn slow_syncs(mut self, delay: Duration) -> Self {
        self.sync_delay = delay;
        self
    }

    /// Each feed read and each merge takes `delay` per change it holds, as
    /// over a slow link.
    pub(crate) fn slow_per_change(mut self, delay: Duration) -> Self {
        self.per_change = delay;
        self
    }

    /// How long `changes` changes take.
    fn time_for(&self, changes: usize) -> Duration {
        self.per_change
            .saturating_mul(u32::try_from(changes).unwrap_or(u32::MAX))
    }
}

#[async_trait::async_trait]
impl Replica for InstrumentedReplica {
    fn feed_id(&self) -> &str {
        Replica::feed_id(&self.engine)
    }

    async fn check_feed_id(&self) -> syncforge::Result<()> {
        self.identity_checks.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.identity_check_delay).await;
        Replica::check_feed_id(&self.engine).await
    }

    async fn collections(&self) -> syncforge::Result<Vec<CollectionName>> {
        Replica::collections(&self.engine).await
    }

    async fn changes(
        &self,
        collection: &CollectionName,
        after: Cursor,
        limit: NonZeroUsize,
    ) -> syncforge::Result<ChangePage> {
        self.read_limits.lock().unwrap().push(limit.get());
        let page = Replica::changes(&self.engine, collection, after, limit).await?;
        self.scanned.fetch_add(page.changes.len(), Ordering::SeqCst);
        tokio::time::sleep(self.time_for(page.changes.len())).await;
        let rewrite = self.rewrite.lock().unwrap().take();
        if let Some(id) = rewrite {
            self.engine
                .put(
                    collection.clone(),
                    &serde_json::json!({"id": id, "rewritten": true}),
                )
                .await?;
        }
        Ok(page)
    }

    async fn sync(
        &self,
        collection: &CollectionName,
        records: Vec<Record>,
    ) -> syncforge::Result<SyncOutcome> {
        let running = self.syncs_running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_syncs_running.fetch_max(running, Ordering::SeqCst);
        tokio::time::sleep(self.sync_delay + self.time_for(records.len())).await;
        let outcome = Replica::sync(&self.engine, collection, records).await;
        self.syncs_running.fetch_sub(1, Ordering::SeqCst);
        self.syncs_ended.fetch_add(1, Ordering::SeqCst);
        outcome
    }

    fn watch(&self, wake: Box<dyn Fn(&CollectionName) + Send + Sync>) -> WatchGuard {
        match self.announced {
            None => Replica::watch(&self.engine, wake),
            Some(0) => WatchGuard::new(|| {}),
            Some(most) => {
                let left = AtomicUsize::new(most);
                Replica::watch(
                    &self.engine,
                    Box::new(move |collection: &CollectionName| {
                        let announced = left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                                left.checked_sub(1)
                            })
                            .is_ok();
                        if announced {
                            wake(collection);
                        }
                    }),
                )
            }
        }
    }
}
