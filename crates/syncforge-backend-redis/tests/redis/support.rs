//! What the tests share: finding servers, private servers the tests own,
//! a raw client to look at keys, record builders, an engine-like sync loop
//! and the check that every record agrees with both of its indexes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::clients::Client;
use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, SortedSetsInterface};
use fred::types::config::Config as FredConfig;
use fred::types::Builder;
use serde_json::json;
use syncforge_backend_redis::{RedisBackend, RedisConfig};
use syncforge_core::{
    classify, ChangeKind, CollectionName, ConflictStrategy, Content, Error, Hlc, Record, RecordId,
    StorageBackend, Write, WriteOutcome,
};
use syncforge_testkit::processes;
use syncforge_testkit::services::{address, available, version_of};

pub(crate) const STANDALONE_ENV: &str = "SYNCFORGE_TEST_REDIS_URL";
pub(crate) const CLUSTER_ENV: &str = "SYNCFORGE_TEST_REDIS_CLUSTER_URL";
pub(crate) const SERVER_BIN_ENV: &str = "SYNCFORGE_TEST_REDIS_SERVER_BIN";

/// A key prefix no other test or run uses.
pub(crate) fn fresh_prefix(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sft-{tag}-{}-{nanos:x}", std::process::id())
}

/// Whether a server answers at `config`, within two seconds.
async fn answers(config: &RedisConfig) -> bool {
    let probe = RedisConfig {
        connect_timeout: Duration::from_secs(2),
        ..config.clone()
    };
    match RedisBackend::connect(probe).await {
        Ok(store) => {
            store.close().await.unwrap();
            true
        }
        Err(_) => false,
    }
}

/// The standalone test server with a fresh prefix, or `None` (skipped).
pub(crate) async fn standalone(tag: &str) -> Option<RedisConfig> {
    let url = address(STANDALONE_ENV, "redis://127.0.0.1:6379/0");
    let mut config = RedisConfig::from_url(&url).unwrap();
    config.key_prefix = fresh_prefix(tag);
    available("redis", STANDALONE_ENV, &url, answers(&config).await).then_some(config)
}

/// The test cluster with a fresh prefix, or `None` (skipped).
pub(crate) async fn cluster(tag: &str) -> Option<RedisConfig> {
    let url = address(CLUSTER_ENV, "redis-cluster://127.0.0.1:7001");
    let mut config = RedisConfig::from_url(&url).unwrap();
    config.key_prefix = fresh_prefix(tag);
    available("redis cluster", CLUSTER_ENV, &url, answers(&config).await).then_some(config)
}

/// A `redis-server` this test started and owns: it may kill, restart and
/// count it. Persists every acknowledged write (`appendfsync always`) in a
/// directory of its own, so a restart keeps exactly what was acknowledged.
pub(crate) struct PrivateServer {
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    password: Option<String>,
    tls: Option<TlsListener>,
}

/// A TLS port a private server listens on besides its plain one, with its
/// certificate and key (PEM files).
struct TlsListener {
    port: u16,
    certificate: PathBuf,
    key: PathBuf,
    /// The authority whose client certificates the server asks for, if any.
    client_authority: Option<PathBuf>,
}

/// Whether the `redis-server` at `bin` is Redis 7 or later.
fn server_is_seven_or_later(bin: &str) -> bool {
    version_of(bin)
        .and_then(|version| {
            let major = version
                .split("v=")
                .nth(1)?
                .split('.')
                .next()?
                .parse::<u32>();
            major.ok()
        })
        .is_some_and(|major| major >= 7)
}

impl PrivateServer {
    /// Starts one, or returns `None` (skipped) when `redis-server` is missing.
    pub(crate) async fn start() -> Option<PrivateServer> {
        PrivateServer::start_with_password(None).await
    }

    /// Starts one with `args` added to (and overriding) the usual ones, or
    /// returns `None` (skipped) when `redis-server` is missing.
    pub(crate) async fn start_with_args(args: &[&str]) -> Option<PrivateServer> {
        let extra = args.iter().map(|arg| (*arg).to_owned()).collect();
        PrivateServer::start_with(None, None, extra).await
    }

    /// [`start_with_args`](Self::start_with_args) with `args` only Redis 7
    /// knows: `None` (skipped) when `redis-server` is missing or older.
    pub(crate) async fn start_seven_with_args(args: &[&str]) -> Option<PrivateServer> {
        let bin = address(SERVER_BIN_ENV, "redis-server");
        if !available(
            "redis-server 7+",
            SERVER_BIN_ENV,
            &bin,
            server_is_seven_or_later(&bin),
        ) {
            return None;
        }
        PrivateServer::start_with_args(args).await
    }

    /// Starts one that requires `password` (when given) from every client.
    pub(crate) async fn start_with_password(password: Option<&str>) -> Option<PrivateServer> {
        PrivateServer::start_with(password, None, Vec::new()).await
    }

    #[cfg(feature = "tls")]
    /// Starts one that also serves TLS, on a port of its own
    /// ([`tls_config`](Self::tls_config)), with the server certificate of
    /// `certificates`; asking clients for certificates of its authority
    /// when `client_certificates`. `None` (skipped) when `redis-server` is
    /// missing or was built without TLS.
    pub(crate) async fn start_with_tls(
        certificates: &syncforge_testkit::certificates::TestCertificates,
        client_certificates: bool,
    ) -> Option<PrivateServer> {
        let bin = address(SERVER_BIN_ENV, "redis-server");
        let speaks_tls = PrivateServer::speaks_tls(&bin, certificates);
        if !available(
            "redis-server built with TLS",
            SERVER_BIN_ENV,
            &bin,
            speaks_tls,
        ) {
            return None;
        }
        let tls = TlsListener {
            port: free_port(),
            certificate: certificates.server_certificate_file.clone(),
            key: certificates.server_key_file.clone(),
            client_authority: client_certificates.then(|| certificates.authority_file.clone()),
        };
        PrivateServer::start_with(None, Some(tls), Vec::new()).await
    }

    /// Starts one with `extra` arguments to `redis-server`.
    async fn start_with(
        password: Option<&str>,
        tls: Option<TlsListener>,
        extra: Vec<String>,
    ) -> Option<PrivateServer> {
        let bin = address(SERVER_BIN_ENV, "redis-server");
        let found = version_of(&bin).is_some();
        if !available("redis-server binary", SERVER_BIN_ENV, &bin, found) {
            return None;
        }
        let port = free_port();
        let mut server = PrivateServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra: password
                .map(|p| vec!["--requirepass".to_owned(), p.to_owned()])
                .unwrap_or_default()
                .into_iter()
                .chain(extra)
                .collect(),
            password: password.map(str::to_owned),
            tls,
        };
        // The port was free when chosen; a test running beside this one
        // may take it before the server binds it: then another one.
        for _attempt in 0..5 {
            if server.spawn().await {
                return Some(server);
            }
            server.port = free_port();
            if let Some(tls) = server.tls.as_mut() {
                tls.port = free_port();
            }
        }
        panic!("no private redis-server started on any of five free ports");
    }

    pub(crate) fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig {
            port: self.port,
            key_prefix: prefix.to_owned(),
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            password: self.password.clone(),
            ..RedisConfig::default()
        }
    }

    #[cfg(feature = "tls")]
    /// Whether `bin` serves TLS: a server built without it exits at once
    /// when given a TLS port, where one built with it listens there.
    fn speaks_tls(
        bin: &str,
        certificates: &syncforge_testkit::certificates::TestCertificates,
    ) -> bool {
        // A port taken meanwhile makes a server exit as well: tried thrice.
        (0..3).any(|_| PrivateServer::listens_on_tls(bin, certificates, free_port()))
    }

    #[cfg(feature = "tls")]
    fn listens_on_tls(
        bin: &str,
        certificates: &syncforge_testkit::certificates::TestCertificates,
        port: u16,
    ) -> bool {
        let Ok(mut server) = Command::new(bin)
            .args(["--port", "0", "--bind", "127.0.0.1", "--save", ""])
            .args(certificates.redis_server_args(port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return false;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let listening = loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break true;
            }
            if server.try_wait().is_ok_and(|status| status.is_some()) || Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        server.kill().ok();
        server.wait().ok();
        listening
    }

    #[cfg(feature = "tls")]
    /// What reaches this server over TLS, trusting `authority` (PEM).
    pub(crate) fn tls_config(&self, prefix: &str, authority: &[u8]) -> RedisConfig {
        RedisConfig {
            port: self.tls.as_ref().map_or(self.port, |tls| tls.port),
            tls: true,
            tls_root_certificates: vec![authority.to_owned()],
            ..self.config(prefix)
        }
    }

    /// Starts the server on its port; `false` when it exited at once (the
    /// port was taken meanwhile). Ready once the server that answers on the
    /// port is this one (`INFO server`'s process id), not another test's.
    async fn spawn(&mut self) -> bool {
        let bin = address(SERVER_BIN_ENV, "redis-server");
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .args(self.tls.iter().flat_map(|tls| {
                [
                    OsString::from("--tls-port"),
                    tls.port.to_string().into(),
                    "--tls-cert-file".into(),
                    tls.certificate.clone().into_os_string(),
                    "--tls-key-file".into(),
                    tls.key.clone().into_os_string(),
                ]
            }))
            .args(self.tls.iter().flat_map(|tls| match &tls.client_authority {
                Some(authority) => vec![
                    OsString::from("--tls-ca-cert-file"),
                    authority.clone().into_os_string(),
                ],
                None => vec![OsString::from("--tls-auth-clients"), "no".into()],
            }))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().is_ok_and(|status| status.is_some()) {
                    self.child = None;
                    return false;
                }
            }
            if let Ok(client) = raw_client(&self.config("probe")).await {
                let info: Result<String, _> = client
                    .custom(
                        fred::types::CustomCommand::new_static(
                            "INFO",
                            fred::types::ClusterHash::Random,
                            false,
                        ),
                        vec!["server"],
                    )
                    .await;
                client.quit().await.ok();
                // Another test's server on the port: this one exits soon.
                let answering = info.ok().and_then(|info| {
                    info.lines()
                        .find_map(|line| line.strip_prefix("process_id:"))
                        .and_then(|id| id.trim().parse::<u32>().ok())
                });
                if answering == Some(pid) {
                    return true;
                }
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server at once (SIGKILL: no shutdown, no final save).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Stops the server's process (SIGSTOP) without closing anything: its
    /// connections stay open and go silent, as a host that lost power does.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [paused](Self::pause) server run again (SIGCONT).
    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server runs");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}: {status}");
    }

    /// Starts the server again on the same port and directory.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn().await,
            "port {} was taken while the server was down",
            self.port
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three private servers made one Redis Cluster, each a primary of a third
/// of the slots, that a test may pause and resume node by node.
pub(crate) struct PrivateCluster {
    pub(crate) nodes: Vec<PrivateServer>,
}

impl PrivateCluster {
    /// Starts one, or returns `None` (skipped) when `redis-server` is
    /// missing; `redis-cli` makes the cluster.
    pub(crate) async fn start() -> Option<PrivateCluster> {
        // `--cluster-port` came with Redis 7.
        let bin = address(SERVER_BIN_ENV, "redis-server");
        let seven = server_is_seven_or_later(&bin);
        let cli = version_of("redis-cli").is_some();
        if !available(
            "redis-server 7+ and redis-cli",
            SERVER_BIN_ENV,
            &bin,
            seven && cli,
        ) {
            return None;
        }
        let mut nodes = Vec::new();
        for _ in 0..3 {
            // A bus port of its own (the default, port + 10,000, may be
            // past the last port or taken); and a node timeout far longer
            // than a test pauses a node, so that the others never call the
            // cluster down meanwhile.
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &free_port().to_string(),
                "--cluster-node-timeout",
                "60000",
            ]
            .map(str::to_owned)
            .to_vec();
            nodes.push(PrivateServer::start_with(None, None, extra).await?);
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        // `--cluster create` waits for the nodes to agree with no limit of
        // its own: for good when one stops answering.
        let mut create = create
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let created = processes::wait(&mut create, Duration::from_secs(60)).unwrap();
        assert!(created.success(), "redis-cli --cluster create: {created}");
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let info = processes::finish(info, Duration::from_secs(10)).unwrap();
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the private cluster did not form"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Some(PrivateCluster { nodes })
    }

    /// A configuration for the cluster, seeded with its first node, keys
    /// under `prefix`, and the private servers' short timeouts.
    pub(crate) fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig {
            cluster: true,
            ..self.nodes[0].config(prefix)
        }
    }
}

/// A port free right now on 127.0.0.1 (and its cluster-bus twin unused).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A plain client on the server of `config` (cluster or not), for looking
/// at keys the way any Redis user would.
pub(crate) async fn raw_client(config: &RedisConfig) -> Result<Client, fred::error::Error> {
    let server = if config.cluster {
        fred::types::config::ServerConfig::new_clustered(vec![(config.host.clone(), config.port)])
    } else {
        fred::types::config::ServerConfig::new_centralized(config.host.clone(), config.port)
    };
    let client = Builder::from_config(FredConfig {
        server,
        password: config.password.clone(),
        database: (config.db != 0).then_some(config.db),
        ..FredConfig::default()
    })
    .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
    .build()?;
    client.init().await?;
    Ok(client)
}

/// Key names as docs/backends.md lays them out, for names that need no
/// encoding (letters, digits, `-`, `_`, `.`).
pub(crate) fn key(prefix: &str, collection: &str, part: &str) -> String {
    assert!(collection
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    format!("{prefix}:c:{{{collection}}}:{part}")
}

pub(crate) fn coll(name: &str) -> CollectionName {
    CollectionName::new(name).unwrap()
}

pub(crate) fn rid(id: &str) -> RecordId {
    RecordId::new(id).unwrap()
}

/// A new record `{"id", "n", "body"}` stamped now.
/// The refusal of an insert of a new record "other" into `collection`,
/// which must fail.
pub(crate) async fn refused_insert(
    store: &RedisBackend,
    collection: &CollectionName,
    hlc: &mut Hlc,
) -> Error {
    store
        .insert_if_absent(collection, &rid("other"), &mut || {
            Ok(record(hlc, "other", 1))
        })
        .await
        .unwrap()
        .unwrap_err()
}

pub(crate) fn record(hlc: &mut Hlc, id: &str, n: i64) -> Record {
    Record::create(
        Content::from_value(json!({"id": id, "n": n, "body": format!("body of {id}")})).unwrap(),
        hlc.now().unwrap(),
    )
}

/// `base` with `n` set by a later write of `hlc`'s client.
pub(crate) fn edited(hlc: &mut Hlc, base: &Record, n: i64) -> Record {
    hlc.observe(base.newest_stamp()).unwrap();
    let mut next = base.clone();
    next.apply_put(
        Content::from_value(
            json!({"id": base.id().as_str(), "n": n, "body": format!("body of {}", base.id())}),
        )
        .unwrap(),
        &hlc.now().unwrap(),
    )
    .unwrap();
    next
}

pub(crate) fn n_of(record: &Record) -> i64 {
    record
        .get("n")
        .as_ref()
        .and_then(serde_json::Value::as_i64)
        .unwrap()
}

/// Records stored by `sync_records`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Synced {
    pub(crate) written: usize,
    pub(crate) unchanged: usize,
    /// Transient failures retried.
    pub(crate) retried: u32,
}

/// Applies `incoming` the way the engine's `sync` does: in batches, one
/// `get_many` and one conditional `put_batch` each; lost races are read
/// and merged again; transient errors are retried with exponential
/// back-off, at most `retries` times in a row. Any other error ends it.
pub(crate) async fn sync_records(
    store: &dyn StorageBackend,
    collection: &CollectionName,
    incoming: &[Record],
    batch: usize,
    retries: u32,
) -> Result<Synced, Error> {
    let mut synced = Synced::default();
    for chunk in incoming.chunks(batch) {
        let mut pending: Vec<&Record> = chunk.iter().collect();
        let mut failures = 0;
        // A lost race is to another writer's write, which ends; the bound
        // keeps a store that loses every race from looping for ever.
        for step in 0.. {
            if pending.is_empty() {
                break;
            }
            assert!(step < 10_000, "records kept losing their races");
            match sync_step(store, collection, &pending).await {
                Ok((lost, step)) => {
                    failures = 0;
                    synced.written += step.written;
                    synced.unchanged += step.unchanged;
                    pending = lost;
                }
                Err(error) if error.is_transient() && failures < retries => {
                    failures += 1;
                    synced.retried += 1;
                    let wait = Duration::from_millis(50 << failures.min(6));
                    tokio::time::sleep(wait).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
    Ok(synced)
}

/// One read-merge-write round; returns the records whose write lost a race.
async fn sync_step<'a>(
    store: &dyn StorageBackend,
    collection: &CollectionName,
    pending: &[&'a Record],
) -> Result<(Vec<&'a Record>, Synced), Error> {
    let ids: Vec<RecordId> = pending.iter().map(|r| r.id().clone()).collect();
    let locals = store.get_many(collection, &ids).await?;
    let mut writes = Vec::new();
    let mut sources = Vec::new();
    let mut synced = Synced::default();
    for (remote, local) in pending.iter().zip(locals) {
        let classified = classify(
            collection,
            local.as_ref().map(|s| &s.record),
            (*remote).clone(),
            ConflictStrategy::Crdt,
        )?;
        if classified.kind == ChangeKind::Unchanged {
            synced.unchanged += 1;
            continue;
        }
        writes.push(Write {
            record: classified.merged,
            expected: local.map(|s| s.token),
        });
        sources.push(*remote);
    }
    let outcomes = store.put_batch(collection, &writes).await?;
    let mut lost = Vec::new();
    for (outcome, source) in outcomes.iter().zip(sources) {
        match outcome {
            WriteOutcome::Written { .. } => synced.written += 1,
            WriteOutcome::Conflict => lost.push(source),
        }
    }
    Ok((lost, synced))
}

/// Every entry of one of a collection's sorted sets (`feed`, `time`,
/// `newest`), in order, with its score.
async fn index_entries(
    client: &Client,
    prefix: &str,
    collection: &str,
    part: &str,
) -> Vec<(String, f64)> {
    client
        .zrange(
            key(prefix, collection, part),
            0,
            -1,
            None,
            false,
            None,
            true,
        )
        .await
        .unwrap()
}

/// Everything a collection stores, byte for byte: the values by id, both
/// indexes with their scores, the counter and the newest stamp.
#[derive(Debug, PartialEq)]
pub(crate) struct CollectionDump {
    pub(crate) records: BTreeMap<String, String>,
    pub(crate) feed: Vec<(String, f64)>,
    pub(crate) time: Vec<(String, f64)>,
    pub(crate) counter: Option<String>,
    pub(crate) newest: Vec<(String, f64)>,
}

/// Reads everything `collection` stores.
pub(crate) async fn dump_collection(
    client: &Client,
    prefix: &str,
    collection: &str,
) -> CollectionDump {
    let records: HashMap<String, String> = client
        .hgetall(key(prefix, collection, "records"))
        .await
        .unwrap();
    CollectionDump {
        records: records.into_iter().collect(),
        feed: index_entries(client, prefix, collection, "feed").await,
        time: index_entries(client, prefix, collection, "time").await,
        counter: client.get(key(prefix, collection, "seq")).await.unwrap(),
        newest: index_entries(client, prefix, collection, "newest").await,
    }
}

/// Checks that the hash of records and both indexes of a collection agree
/// exactly: the same ids; each record's feed score is the sequence stored
/// with it, its time score its `_timestamp`; the counter is at least every
/// sequence. Returns the records by id.
pub(crate) async fn assert_consistent(
    client: &Client,
    prefix: &str,
    collection: &str,
) -> BTreeMap<String, Record> {
    let CollectionDump {
        records,
        feed,
        time,
        counter,
        ..
    } = dump_collection(client, prefix, collection).await;
    let counter: Option<u64> = counter.map(|c| c.parse().unwrap());
    let feed: HashMap<String, f64> = feed.into_iter().collect();
    let time: HashMap<String, f64> = time.into_iter().collect();
    assert_eq!(
        feed.len(),
        records.len(),
        "feed index and records differ in size"
    );
    assert_eq!(
        time.len(),
        records.len(),
        "time index and records differ in size"
    );
    let mut out = BTreeMap::new();
    for (id, value) in records {
        let (sequence, json) = value.split_once(' ').unwrap();
        let sequence: u64 = sequence.parse().unwrap();
        let record = Record::from_json(serde_json::from_str(json).unwrap()).unwrap();
        assert_eq!(record.id().as_str(), id);
        assert_eq!(
            feed.get(&id),
            Some(&(sequence as f64)),
            "feed entry of {id}"
        );
        assert_eq!(
            time.get(&id),
            Some(&(record.timestamp() as f64)),
            "time entry of {id}"
        );
        assert!(
            counter.is_some_and(|c| c >= sequence),
            "counter below {id}'s sequence"
        );
        out.insert(id, record);
    }
    out
}

/// Deletes every key under `prefix` on a standalone server (SCAN + UNLINK):
/// tests on a shared server leave nothing behind.
pub(crate) async fn remove_prefix(config: &RedisConfig) {
    let client = raw_client(config).await.unwrap();
    if !config.cluster {
        remove_keys_of_node(&client, &config.key_prefix).await;
        client.quit().await.ok();
        return;
    }
    // A cluster's keys are spread over its primaries: each is scanned.
    for node in client.split_cluster().unwrap() {
        node.init().await.unwrap();
        remove_keys_of_node(&node, &config.key_prefix).await;
        node.quit().await.ok();
    }
    client.quit().await.ok();
}

/// Removes the keys under `prefix` that one server holds, one at a time: on
/// a cluster, keys of several slots may not share a command.
async fn remove_keys_of_node(client: &Client, prefix: &str) {
    let mut cursor = "0".to_owned();
    for _round in 0..100_000 {
        let (next, keys): (String, Vec<String>) = client
            .custom(
                fred::types::CustomCommand::new_static(
                    "SCAN",
                    fred::types::ClusterHash::Random,
                    false,
                ),
                vec![
                    cursor.clone(),
                    "MATCH".to_owned(),
                    format!("{prefix}:*"),
                    "COUNT".to_owned(),
                    "1000".to_owned(),
                ],
            )
            .await
            .unwrap();
        for key in keys {
            let _: i64 = client.unlink(key).await.unwrap();
        }
        if next == "0" {
            return;
        }
        cursor = next;
    }
    panic!("SCAN did not end within 100,000 rounds");
}
