//! Faults: a server killed in the middle of a sync, a server down or
//! refusing at start, a cluster slot moved while a sync runs.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use fred::clients::Client;
use fred::interfaces::{ClientLike, HashesInterface};
use fred::types::config::{Config as FredConfig, ServerConfig};
use fred::types::{Builder, ClusterHash, CustomCommand};
use serde_json::json;
use syncforge_backend_redis::{RedisBackend, RedisConfig};
use syncforge_core::{
    ClientId, CollectionName, Content, Cursor, Error, Hlc, IfAbsent, Record, StorageBackend, Write,
    WriteOutcome,
};

use crate::support::{
    assert_consistent, coll, edited, fresh_prefix, key, raw_client, record, refused_insert,
    remove_prefix, rid, standalone, sync_records, PrivateCluster, PrivateServer,
};

const SYNCED: usize = 10_000;

/// The server is killed (SIGKILL) while a sync of 10,000 records runs, and
/// started again a second later from its append-only file. The sync either
/// completes through its retries or fails with a clear transient error;
/// either way every stored record agrees with both indexes, and every
/// record stored is one that was sent.
///
/// The server runs with `appendfsync always`: Redis then acknowledges a
/// script only once its effects are on disk (as one MULTI/EXEC block, which
/// a torn tail never half-applies), so a restart keeps exactly what was
/// acknowledged and the test can tell a lost write from a lost answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_sync_loses_nothing_and_tears_nothing() {
    let Some(mut server) = PrivateServer::start().await else {
        return;
    };
    let prefix = fresh_prefix("killed");
    let config = server.config(&prefix);
    let store = Arc::new(RedisBackend::connect(config.clone()).await.unwrap());
    let mut hlc = Hlc::new(ClientId::new("remote").unwrap());
    let incoming: Vec<Record> = (0..SYNCED)
        .map(|i| record(&mut hlc, &format!("k{i:05}"), i as i64))
        .collect();
    let sent = incoming.clone();
    let syncing = {
        let store = Arc::clone(&store);
        tokio::spawn(
            async move { sync_records(&*store, &coll("killed"), &incoming, 100, 10).await },
        )
    };

    let raw = raw_client(&config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // What the server was seen to hold before the kill: with `appendfsync
    // always` it answered only once those writes were on disk (Redis
    // flushes its append-only file before it sends any answer), so they
    // must all be there after the restart, whatever the sync's outcome.
    let seen_before_kill = loop {
        let stored: u64 = raw.hlen(key(&prefix, "killed", "records")).await.unwrap();
        if stored >= 3_000 {
            break stored;
        }
        assert!(!syncing.is_finished(), "the sync ended before the kill");
        assert!(Instant::now() < deadline, "the sync does not progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // The kill must land mid-sync: a poll that came late may have seen a
    // sync that already wrote everything.
    assert!(
        seen_before_kill < SYNCED as u64,
        "the sync ended before the kill ({seen_before_kill} records stored)"
    );
    raw.quit().await.ok();
    server.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart().await;

    let outcome = tokio::time::timeout(Duration::from_secs(120), syncing)
        .await
        .expect("the sync ends")
        .unwrap();
    let raw = raw_client(&config).await.unwrap();
    let stored = assert_consistent(&raw, &prefix, "killed").await;
    assert!(
        stored.len() as u64 >= seen_before_kill,
        "{} records after the restart, {seen_before_kill} seen before the kill",
        stored.len()
    );
    match outcome {
        Ok(synced) => {
            assert_eq!(stored.len(), SYNCED, "a completed sync holds every record");
            println!(
                "the sync completed after {} retried failures",
                synced.retried
            );
        }
        Err(error) => {
            assert!(matches!(error, Error::Unavailable { .. }), "{error}");
            assert!(
                error
                    .to_string()
                    .contains(&format!("127.0.0.1:{}", server.port)),
                "{error}"
            );
            println!("the sync gave up with a clear error: {error}");
        }
    }
    for (id, record) in &stored {
        let index: usize = id[1..].parse().unwrap();
        assert_eq!(record, &sent[index], "{id} is not what was sent");
    }
    println!(
        "after the kill and restart: {} of {SYNCED} records, all consistent",
        stored.len()
    );
    raw.quit().await.ok();
    store.close().await.unwrap();
}

/// A write that ran on the server, and whose answer was lost with its
/// connection, is sent again by the client on its next connection, where
/// it answers as if another writer had come first: a conflict (its token
/// moved), the record already there, nothing to delete. Taken at its word,
/// the engine would apply the write again, over whatever a later writer
/// stored meanwhile. The handle reports such an answer as an unknown
/// outcome (transient), for each of the three writes, and every one of
/// them did run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_again_on_a_new_connection_reports_its_outcome_unknown() {
    let Some(direct) = standalone("resent").await else {
        return;
    };
    let relay = AnswerDropper::start(&direct.host, direct.port).await;
    let config = RedisConfig {
        host: "127.0.0.1".to_owned(),
        port: relay.port,
        ..direct.clone()
    };
    let store = RedisBackend::connect(config).await.unwrap();
    let c = coll("resent");
    let mut hlc = Hlc::new(ClientId::new("w").unwrap());
    let first = record(&mut hlc, "r1", 1);
    let WriteOutcome::Written { token, .. } =
        store.put(&c, &Write::create(first.clone())).await.unwrap()
    else {
        panic!("the first write conflicts");
    };

    let second = edited(&mut hlc, &first, 2);
    relay.drop_next_answer();
    let error = store
        .put_batch(&c, &[Write::replace(second.clone(), token)])
        .await
        .expect_err("a write sent twice answers a conflict");
    assert!(error.is_transient(), "{error}");
    assert!(relay.dropped(), "the answer was not dropped");
    let stored = store.get(&c, &rid("r1")).await.unwrap().unwrap();
    assert_eq!(stored.record, second, "the write ran");

    // The server learns each script before its answer is dropped: the
    // answer dropped must be the write's, not the one asking for the script.
    let warm = record(&mut hlc, "warm", 0);
    let warmed = store
        .insert_if_absent(&c, &rid("warm"), &mut || Ok(warm.clone()))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(warmed, IfAbsent::Inserted { .. }), "{warmed:?}");
    let new = record(&mut hlc, "r2", 3);
    relay.drop_next_answer();
    let error = store
        .insert_if_absent(&c, &rid("r2"), &mut || Ok(new.clone()))
        .await
        .unwrap()
        .expect_err("an insert sent twice finds its own record");
    assert!(error.is_transient(), "{error}");
    assert!(relay.dropped(), "the answer was not dropped");
    let stored = store.get(&c, &rid("r2")).await.unwrap().unwrap();
    assert_eq!(stored.record, new, "the insert ran");

    assert!(!store.delete(&c, &rid("absent")).await.unwrap());
    relay.drop_next_answer();
    let error = store
        .delete(&c, &rid("r2"))
        .await
        .expect_err("a delete sent twice finds nothing");
    assert!(error.is_transient(), "{error}");
    assert!(relay.dropped(), "the answer was not dropped");
    assert!(
        store.get(&c, &rid("r2")).await.unwrap().is_none(),
        "the delete ran"
    );

    store.clear_collection(&c).await.unwrap();
    store.close().await.unwrap();
    remove_prefix(&direct).await;
}

/// A relay on loopback between clients and a Redis server that, when told,
/// closes the connection carrying the server's next answer instead of
/// passing that answer on: the command ran, and its answer was lost.
struct AnswerDropper {
    port: u16,
    armed: Arc<AtomicBool>,
    dropped: Arc<AtomicBool>,
}

impl AnswerDropper {
    async fn start(host: &str, port: u16) -> AnswerDropper {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = AnswerDropper {
            port: listener.local_addr().unwrap().port(),
            armed: Arc::new(AtomicBool::new(false)),
            dropped: Arc::new(AtomicBool::new(false)),
        };
        let (armed, dropped) = (Arc::clone(&relay.armed), Arc::clone(&relay.dropped));
        let server = format!("{host}:{port}");
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(&server).await else {
                    continue;
                };
                let (armed, dropped) = (Arc::clone(&armed), Arc::clone(&dropped));
                tokio::spawn(async move {
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = upstream.into_split();
                    let requests = tokio::io::copy(&mut from_client, &mut to_server);
                    let answers = async {
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let n = from_server.read(&mut buffer).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            if armed.swap(false, AtomicOrdering::SeqCst) {
                                dropped.store(true, AtomicOrdering::SeqCst);
                                return Ok(());
                            }
                            to_client.write_all(&buffer[..n]).await?;
                        }
                    };
                    // Either side ending ends both connections.
                    tokio::select! {
                        _ = requests => {}
                        _ = answers => {}
                    }
                });
            }
        });
        relay
    }

    /// Closes the connection at the next answer from the server.
    fn drop_next_answer(&self) {
        self.dropped.store(false, AtomicOrdering::SeqCst);
        self.armed.store(true, AtomicOrdering::SeqCst);
    }

    /// Whether an answer was dropped since [`drop_next_answer`](Self::drop_next_answer).
    fn dropped(&self) -> bool {
        self.dropped.load(AtomicOrdering::SeqCst)
    }
}

/// A server that came back without the registry of collections (a restart
/// without its data, a failover whose new primary missed the last writes)
/// had a handle that registered a collection before never register it
/// again: the collection was missing from `list_collections` for good. The
/// handle registers its collections again after a reconnection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_registers_its_collections_again_after_a_reconnection() {
    let Some(mut server) = PrivateServer::start().await else {
        return;
    };
    let (prefix, config, store, mut hlc) = holding_one_record(&server, "healed").await;
    let raw = raw_client(&config).await.unwrap();
    let removed: i64 = fred::interfaces::KeysInterface::del(&raw, format!("{prefix}:collections"))
        .await
        .unwrap();
    assert_eq!(removed, 1);
    raw.quit().await.ok();
    server.restart().await;
    // The handle reconnects in the background; its first calls may fail.
    put_once_reconnected(&store, "healed", record(&mut hlc, "r2", 2)).await;
    let fresh = RedisBackend::connect(config).await.unwrap();
    assert_eq!(fresh.list_collections().await.unwrap(), [coll("healed")]);
    fresh.close().await.unwrap();
    store.close().await.unwrap();
}

/// A server that stops answering without closing its connections (a host
/// that lost power, a partition dropping packets; here, a stopped process)
/// has the handle connect again once a command timed out, even while
/// commands keep coming (as an engine's retries send them). Kept, that
/// connection would have carried every later command into the same silence
/// until the kernel gave up on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_answering_is_made_again() {
    let Some(server) = PrivateServer::start().await else {
        return;
    };
    let prefix = fresh_prefix("silent");
    let config = server.config(&prefix);
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("w").unwrap());
    let written = record(&mut hlc, "r1", 1);
    store
        .put(&coll("silent"), &Write::create(written.clone()))
        .await
        .unwrap();
    let raw = raw_client(&config).await.unwrap();
    let before = connections_received(&raw).await;

    server.pause();
    // Calls every 300 ms for 5 s, each failing within the command timeout
    // (2 s here).
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_secs(5) {
        let started = Instant::now();
        let error = store.get(&coll("silent"), &rid("r1")).await.unwrap_err();
        assert!(error.is_transient(), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10), "{error}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    server.resume();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.get(&coll("silent"), &rid("r1")).await {
            Ok(found) => {
                assert_eq!(found.map(|stored| stored.record), Some(written));
                break;
            }
            Err(error) => {
                assert!(error.is_transient(), "{error}");
                assert!(Instant::now() < deadline, "no answer again: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(
        connections_received(&raw).await > before,
        "the handle kept its silent connection"
    );
    raw.quit().await.ok();
    store.close().await.unwrap();
}

/// On a cluster, a node gone silent kept its connection too: the check that
/// decides whether to connect again pinged whichever node the client lists
/// first, which answered for the silent one, and connecting again keeps
/// every connection that has not failed. Now a connection on which nothing
/// came back and nothing was written for the command timeout is closed:
/// each node in turn is paused, reads of its collections time out, and once
/// it runs again it has been connected to anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_that_stops_answering_is_connected_to_again() {
    let Some(cluster) = PrivateCluster::start().await else {
        return;
    };
    let prefix = fresh_prefix("silent-node");
    let store = Arc::new(
        RedisBackend::connect(cluster.config(&prefix))
            .await
            .unwrap(),
    );
    let mut hlc = Hlc::new(ClientId::new("w").unwrap());
    // Collections enough that each node holds some.
    let names: Vec<String> = (0..24).map(|n| format!("c{n}")).collect();
    for name in &names {
        let write = Write::create(record(&mut hlc, "r1", 1));
        store.put(&coll(name), &write).await.unwrap();
    }
    // Every collection read at once: `Ok` when each answered.
    let read_all = |store: &Arc<RedisBackend>| {
        let mut reads = tokio::task::JoinSet::new();
        for name in &names {
            let (store, name) = (Arc::clone(store), name.clone());
            reads.spawn(async move { store.get(&coll(&name), &rid("r1")).await });
        }
        async move {
            let mut failed = None;
            while let Some(read) = reads.join_next().await {
                if let Err(error) = read.unwrap() {
                    assert!(error.is_transient(), "{error}");
                    failed = Some(error);
                }
            }
            failed.map_or(Ok(()), Err)
        }
    };
    for node in &cluster.nodes {
        let raw = raw_client(&node.config(&prefix)).await.unwrap();
        let before = connections_received(&raw).await;
        node.pause();
        // The node's reads time out (2 s here); with nothing more written
        // to it, its connection is closed within the next 2 s or so.
        let error = read_all(&store).await.unwrap_err();
        assert!(matches!(error, Error::Unavailable { .. }), "{error}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        node.resume();
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(error) = read_all(&store).await {
            assert!(Instant::now() < deadline, "no answer again: {error}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            connections_received(&raw).await > before,
            "the handle kept its silent connection to node {}",
            node.port
        );
        raw.quit().await.ok();
    }
    store.close().await.unwrap();
}

/// A primary demoted to a replica without closing its connections (as a
/// managed failover does) answers every write with READONLY: the handle
/// then connects again, which follows a name that now points at the new
/// primary, where the old connection stayed on the replica for good. Its
/// writes fail as transient meanwhile, and go through once it is a primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_as_read_only_makes_the_handle_connect_again() {
    let (Some(server), Some(primary)) =
        (PrivateServer::start().await, PrivateServer::start().await)
    else {
        return;
    };
    let (_, config, store, mut hlc) = holding_one_record(&server, "demoted").await;
    let raw = raw_client(&config).await.unwrap();
    server_cmd(&raw, "REPLICAOF", &["127.0.0.1", &primary.port.to_string()]).await;
    let before = connections_received(&raw).await;

    let refused = store
        .put(&coll("demoted"), &Write::create(record(&mut hlc, "r2", 2)))
        .await
        .unwrap_err();
    assert!(refused.is_transient(), "{refused}");
    // The handle connects again in the background.
    let deadline = Instant::now() + Duration::from_secs(20);
    while connections_received(&raw).await <= before {
        assert!(
            Instant::now() < deadline,
            "the handle stayed on the demoted server's connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    server_cmd(&raw, "REPLICAOF", &["NO", "ONE"]).await;
    put_once_reconnected(&store, "demoted", record(&mut hlc, "r3", 3)).await;
    raw.quit().await.ok();
    store.close().await.unwrap();
}

/// A server whose last background save failed refuses every write
/// (`MISCONF`, with `stop-writes-on-bgsave-error`, Redis's default) until a
/// save succeeds. The refusal is transient and writes nothing, and the
/// same handle's write lands once the server saves again. It was taken for
/// a permanent refusal, which the engine does not retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_while_the_server_cannot_save_is_transient() {
    let Some(server) = PrivateServer::start_seven_with_args(&[
        "--appendonly",
        "no",
        "--save",
        "3600 1",
        // `dir` is changed below, which Redis 7 allows only so.
        "--enable-protected-configs",
        "yes",
    ])
    .await
    else {
        return;
    };
    let (_, config, store, mut hlc) = holding_one_record(&server, "unsaved").await;
    let raw = raw_client(&config).await.unwrap();
    // Snapshots go to a directory that is then removed: the next one
    // cannot be created there, whoever the server runs as.
    let gone = tempfile::tempdir().unwrap();
    save_in(&raw, gone.path()).await;
    drop(gone);
    assert_eq!(background_save(&raw).await, "err");

    let refused = store
        .put(&coll("unsaved"), &Write::create(record(&mut hlc, "r2", 2)))
        .await
        .unwrap_err();
    assert!(refused.is_transient(), "{refused}");
    assert!(refused.to_string().contains("MISCONF"), "{refused}");
    assert!(store
        .get(&coll("unsaved"), &rid("r2"))
        .await
        .unwrap()
        .is_none());

    let saves = tempfile::tempdir().unwrap();
    save_in(&raw, saves.path()).await;
    assert_eq!(background_save(&raw).await, "ok");
    let r2 = record(&mut hlc, "r2", 2);
    store
        .put(&coll("unsaved"), &Write::create(r2.clone()))
        .await
        .unwrap();
    let stored = store.get(&coll("unsaved"), &rid("r2")).await.unwrap();
    assert_eq!(stored.map(|stored| stored.record), Some(r2));
    raw.quit().await.ok();
    store.close().await.unwrap();
}

/// A record larger than the server takes as one value (`proto-max-bulk-len`,
/// lowered here to its least, 1 MiB) is refused as invalid, naming it, by
/// every way of writing, and a batch holding it sends nothing, however
/// long; a record within the limit is stored. The server dropped the connection in the middle of such
/// a request, the client sent it whole again, and the write failed as
/// transient after many uploads, for a record that can never be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_the_server_takes_is_refused_before_it_is_sent() {
    let Some(server) = PrivateServer::start_with_args(&["--proto-max-bulk-len", "1mb"]).await
    else {
        return;
    };
    let prefix = fresh_prefix("bulky");
    let config = server.config(&prefix);
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let raw = raw_client(&config).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("w").unwrap());
    let mut sized = |id: &str, bytes: usize| {
        Record::create(
            Content::from_value(json!({"id": id, "blob": "x".repeat(bytes)})).unwrap(),
            hlc.now().unwrap(),
        )
    };
    let (big, fits) = (sized("big", 2 << 20), sized("fits", 512 << 10));
    // A batch whose first script call takes its first thousand writes,
    // and the record too large after them: refused before that call.
    let mut long_batch: Vec<Write> = (0..1_000)
        .map(|i| Write::create(record(&mut hlc, &format!("s{i}"), i)))
        .collect();
    long_batch.push(Write::create(big.clone()));
    let c = coll("bulky");
    let sent_before = bytes_received(&raw).await;
    let refusals = [
        store
            .put(&c, &Write::create(big.clone()))
            .await
            .unwrap_err(),
        store
            .put_batch(
                &c,
                &[Write::create(fits.clone()), Write::create(big.clone())],
            )
            .await
            .unwrap_err(),
        store.put_batch(&c, &long_batch).await.unwrap_err(),
        store
            .insert_if_absent(&c, &rid("big"), &mut || Ok(big.clone()))
            .await
            .unwrap()
            .unwrap_err(),
    ];
    for refused in refusals {
        assert!(
            matches!(&refused, Error::InvalidRecord { id: Some(id), .. } if id == "big"),
            "{refused:?}"
        );
        assert!(
            refused.to_string().contains("proto-max-bulk-len"),
            "{refused}"
        );
    }
    let sent = bytes_received(&raw).await - sent_before;
    assert!(sent < 64 << 10, "{sent} bytes reached the server");
    assert!(
        store.get_all(&c).await.unwrap().is_empty(),
        "a refused batch wrote"
    );
    store.put(&c, &Write::create(fits.clone())).await.unwrap();
    let stored = store.get(&c, &rid("fits")).await.unwrap();
    assert_eq!(stored.map(|stored| stored.record), Some(fits));
    assert!(store.get(&c, &rid("big")).await.unwrap().is_none());
    raw.quit().await.ok();
    store.close().await.unwrap();
}

/// The bytes the server of `client` has received from all its clients.
async fn bytes_received(client: &Client) -> u64 {
    info_count(client, "stats", "total_net_input_bytes").await
}

/// Makes the server of `client` save its snapshots in `dir`.
async fn save_in(client: &Client, dir: &std::path::Path) {
    server_cmd(client, "CONFIG", &["SET", "dir", dir.to_str().unwrap()]).await;
}

/// Runs `BGSAVE` on the server of `client` and waits for it to end: its
/// status as `INFO persistence` gives it (`ok` or `err`).
async fn background_save(client: &Client) -> String {
    // In progress from the moment `BGSAVE` answers; the server takes note
    // of the end and of its status together.
    server_cmd(client, "BGSAVE", &[]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while info_field(client, "persistence", "rdb_bgsave_in_progress").await != "0" {
        assert!(Instant::now() < deadline, "BGSAVE did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    info_field(client, "persistence", "rdb_last_bgsave_status").await
}

/// Connecting to a port where nothing listens fails with a transient error
/// naming the address, within the connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_at_start_is_a_clear_error_within_the_bound() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let bound = Duration::from_secs(2);
    let config = RedisConfig {
        port,
        password: Some("never-shown-1f2e".to_owned()),
        connect_timeout: bound,
        ..RedisConfig::default()
    };
    let started = Instant::now();
    let error = RedisBackend::connect(config).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains(&format!("redis://127.0.0.1:{port}/0")),
        "{text}"
    );
    assert!(!text.contains("never-shown") && !format!("{error:?}").contains("never-shown"));
    // Bounded, with room for a loaded machine: not a measurement.
    assert!(took < bound * 2, "took {took:?}");

    // A listener that accepts connections but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let result = RedisBackend::connect(RedisConfig {
        port: silent_port,
        connect_timeout: bound,
        ..RedisConfig::default()
    })
    .await;
    let took = started.elapsed();
    let error = result.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert!(
        error.to_string().contains(&silent_port.to_string()),
        "{error}"
    );
    // Bounded, with room for a loaded machine: not a measurement.
    assert!(took < bound * 2, "took {took:?}");
    drop(silent);
}

/// Wrong credentials, missing credentials and a database the server does
/// not have are permanent errors that say what to do, name the address and
/// never show a password. The server requires a password: it is one this
/// test starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_a_missing_database_are_refused_clearly() {
    let right = "right-pw-9d1e";
    let Some(server) = PrivateServer::start_with_password(Some(right)).await else {
        return;
    };
    let config = server.config(&fresh_prefix("refused"));
    let wrong = "pw-5ecret-a7c3";
    let auth = "check the username and password";
    for (what, bad, advice) in [
        (
            "a wrong password",
            RedisConfig {
                password: Some(wrong.to_owned()),
                ..config.clone()
            },
            auth,
        ),
        (
            "an unknown user",
            RedisConfig {
                username: Some("nobody-here".to_owned()),
                password: Some(wrong.to_owned()),
                ..config.clone()
            },
            auth,
        ),
        (
            "no password",
            RedisConfig {
                password: None,
                ..config.clone()
            },
            auth,
        ),
        (
            "a database that does not exist",
            RedisConfig {
                db: 200,
                ..config.clone()
            },
            "database does not exist",
        ),
    ] {
        let started = Instant::now();
        let error = RedisBackend::connect(bad.clone()).await.unwrap_err();
        assert!(started.elapsed() < bad.connect_timeout, "{what}");
        let text = error.to_string();
        println!("{what}: {text}");
        assert!(matches!(error, Error::Storage { .. }), "{what}: {error:?}");
        assert!(
            text.contains(&format!("127.0.0.1:{}", server.port)),
            "{what}: {text}"
        );
        assert!(text.contains(advice), "{what}: {text}");
        for secret in [right, wrong] {
            assert!(
                !text.contains(secret) && !format!("{error:?}").contains(secret),
                "{what}"
            );
        }
    }
    let store = RedisBackend::connect(config).await.unwrap();
    store.close().await.unwrap();
}

/// A server older than Redis 6.2 (no `ZMSCORE`) is refused at connect with
/// a permanent error naming its version and the one needed. It used to be
/// accepted: a put of a new record then worked, and every batch write failed
/// with a script error naming no cause. A server whose version the client
/// cannot read (`INFO` denied) is let through. The servers are stand-ins
/// answering what a client sends while connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_older_than_redis_6_2_is_refused_at_connect() {
    let config = |port| RedisConfig {
        port,
        connect_timeout: Duration::from_secs(2),
        ..RedisConfig::default()
    };
    let old = stand_in_server("$redis_version:6.0.16\r\nredis_mode:standalone").await;
    let error = RedisBackend::connect(config(old)).await.unwrap_err();
    assert!(matches!(error, Error::Storage { .. }), "{error:?}");
    assert!(!error.is_transient());
    let text = error.to_string();
    for part in [
        "6.0.16",
        "Redis 6.2 or newer",
        &format!("redis://127.0.0.1:{old}/0"),
    ] {
        assert!(text.contains(part), "{part} missing: {text}");
    }

    let unknown =
        stand_in_server("-NOPERM this user has no permissions to run the 'info' command").await;
    let store = RedisBackend::connect(config(unknown)).await.unwrap();
    store.close().await.unwrap();
}

/// The port of a stand-in for a Redis server on loopback, answering the
/// commands a client sends while connecting: `PING`, `CLIENT ID`, `QUIT`,
/// and `INFO` with `info` — a bulk reply of the text after a `$`, or the
/// error reply after a `-`. Anything else gets an error reply.
async fn stand_in_server(info: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let info = match info.strip_prefix('$') {
        Some(text) => format!("${}\r\n{text}\r\n", text.len()),
        None => format!("{info}\r\n"),
    };
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let info = info.clone();
            tokio::spawn(async move {
                let mut received = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some((name, taken)) = command_name(&received) {
                        received.drain(..taken);
                        let reply = match name.to_ascii_uppercase().as_str() {
                            "PING" => "+PONG\r\n",
                            "CLIENT" => ":1\r\n",
                            "QUIT" => "+OK\r\n",
                            "INFO" => info.as_str(),
                            _ => "-ERR unknown command\r\n",
                        };
                        if socket.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => received.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    port
}

/// The name of the first command in `received` (an array of bulk strings,
/// as clients send commands) and how many bytes it takes; `None` until the
/// whole command has arrived.
fn command_name(received: &[u8]) -> Option<(String, usize)> {
    let line = |at: usize| {
        let rest = received.get(at..)?;
        let end = rest.windows(2).position(|pair| pair == b"\r\n")?;
        let number: usize = std::str::from_utf8(rest.get(1..end)?).ok()?.parse().ok()?;
        Some((number, at + end + 2))
    };
    let (count, mut at) = line(0)?;
    let mut name = None;
    for _ in 0..count {
        let (length, start) = line(at)?;
        let bytes = received.get(start..start + length)?;
        name.get_or_insert_with(|| String::from_utf8_lossy(bytes).into_owned());
        at = start + length + 2;
    }
    if received.len() < at {
        return None;
    }
    Some((name?, at))
}

/// A user name without a password (`redis://app@host`) logs in as that
/// user, which a `nopass` ACL user accepts, and never as `default`; a user
/// that has a password is refused with advice about the credentials. The
/// users are made on a private server (an ACL user is the whole server's:
/// one left on a shared one by a killed test could run any command there)
/// and deleted afterwards, whatever the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_name_without_a_password_logs_in_as_that_user() {
    let Some(server) = PrivateServer::start().await else {
        return;
    };
    let config = server.config(&fresh_prefix("nopass"));
    let admin = raw_client(&config).await.unwrap();
    let open_user = config.key_prefix.clone();
    let guarded_user = format!("{open_user}-pw");
    acl(
        &admin,
        &[
            "SETUSER",
            &open_user,
            "on",
            "nopass",
            &format!("~{}:*", config.key_prefix),
            "+@all",
        ],
    )
    .await;
    acl(
        &admin,
        &[
            "SETUSER",
            &guarded_user,
            "on",
            ">pw-of-a-guarded-user-3b7f",
            "~*",
            "+@all",
        ],
    )
    .await;
    // Run apart, so that the users are deleted even when a check fails.
    let checks = tokio::spawn(log_in_as_users_without_passwords(
        config.clone(),
        admin.clone(),
        open_user.clone(),
        guarded_user.clone(),
    ))
    .await;
    acl(&admin, &["DELUSER", &open_user, &guarded_user]).await;
    remove_prefix(&config).await;
    admin.quit().await.ok();
    if let Err(failed) = checks {
        std::panic::resume_unwind(failed.into_panic());
    }
}

async fn log_in_as_users_without_passwords(
    config: RedisConfig,
    admin: Client,
    open_user: String,
    guarded_user: String,
) {
    let open = RedisConfig {
        username: Some(open_user.clone()),
        password: None,
        ..config.clone()
    };
    let store = RedisBackend::connect(open).await.unwrap();
    let clients: String = admin
        .custom(
            CustomCommand::new_static("CLIENT", ClusterHash::Random, false),
            vec!["LIST"],
        )
        .await
        .unwrap();
    let marker = format!(" user={open_user} ");
    assert!(
        clients.lines().any(|line| line.contains(&marker)),
        "no connection of {open_user}: {clients}"
    );
    // The user may touch only the prefix's keys: the store works through it.
    let mut hlc = Hlc::new(ClientId::new("nopass").unwrap());
    let notes = coll("notes");
    store
        .put_batch(&notes, &[Write::create(record(&mut hlc, "a", 1))])
        .await
        .unwrap();
    assert!(store.get(&notes, &rid("a")).await.unwrap().is_some());
    store.close().await.unwrap();

    let guarded = RedisConfig {
        username: Some(guarded_user),
        password: None,
        ..config
    };
    let error = RedisBackend::connect(guarded).await.unwrap_err();
    assert!(matches!(error, Error::Storage { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("check the username and password"),
        "{error}"
    );
}

/// A user the ACL allows some commands of a write but not all: the server
/// checks each command of a script as it runs it, so the script wrote the
/// record (`HSET`) and then failed at the counter (`SET`) or the feed
/// (`ZADD`), leaving a sequence to be handed out twice or a record the
/// feed does not know; a delete removed the record and then failed at its
/// feed entry. The scripts now ask the ACL first (Redis 7 and later), and
/// such a write or delete changes nothing. The users are made on a private
/// server, as above, and deleted afterwards, whatever the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_refused_a_command_a_write_needs_changes_nothing() {
    let Some(server) = PrivateServer::start().await else {
        return;
    };
    let config = server.config(&fresh_prefix("noperm"));
    let admin = raw_client(&config).await.unwrap();
    let checks_acl: i64 = admin
        .custom(
            CustomCommand::new_static("EVAL", ClusterHash::Random, false),
            vec!["return redis.acl_check_cmd ~= nil and 1 or 0", "0"],
        )
        .await
        .unwrap();
    // Redis before 7 checks no ACL in scripts ahead of their commands; a
    // skip is visible, and fails where services are required.
    if !syncforge_testkit::services::available(
        "redis-server 7+ (ACL checks inside scripts)",
        crate::support::SERVER_BIN_ENV,
        &config.address(),
        checks_acl != 0,
    ) {
        return;
    }
    let users: Vec<(String, &str)> = ["set", "zadd", "zrem"]
        .into_iter()
        .map(|denied| (format!("{}-no-{denied}", config.key_prefix), denied))
        .collect();
    for (user, denied) in &users {
        let keys = format!("~{}:*", config.key_prefix);
        let minus = format!("-{denied}");
        acl(
            &admin,
            &["SETUSER", user, "on", "nopass", &keys, "+@all", &minus],
        )
        .await;
    }
    let checks = tokio::spawn(write_as_users_refused_a_command(
        config.clone(),
        admin.clone(),
        users.clone(),
    ))
    .await;
    for (user, _) in &users {
        acl(&admin, &["DELUSER", user]).await;
    }
    remove_prefix(&config).await;
    checks.unwrap();
}

async fn write_as_users_refused_a_command(
    config: RedisConfig,
    admin: Client,
    users: Vec<(String, &'static str)>,
) {
    let notes = coll("notes");
    let mut hlc = Hlc::new(ClientId::new("granted").unwrap());
    let granted = RedisBackend::connect(config.clone()).await.unwrap();
    granted
        .put_batch(&notes, &[Write::create(record(&mut hlc, "kept", 1))])
        .await
        .unwrap();
    let records = key(&config.key_prefix, "notes", "records");
    for (user, denied) in users {
        let store = RedisBackend::connect(RedisConfig {
            username: Some(user.clone()),
            password: None,
            ..config.clone()
        })
        .await
        .unwrap();
        if denied == "zrem" {
            let error = store.delete(&notes, &rid("kept")).await.unwrap_err();
            assert!(error.to_string().contains("run ZREM"), "{denied}: {error}");
            assert!(admin.hexists::<bool, _, _>(&records, "kept").await.unwrap());
        } else {
            let new = Write::create(record(&mut hlc, "new", 1));
            let error = store.put_batch(&notes, &[new]).await.unwrap_err();
            let named = format!("run {} ", denied.to_uppercase());
            assert!(error.to_string().contains(&named), "{denied}: {error}");
            let inserted = refused_insert(&store, &notes, &mut hlc).await;
            assert!(
                matches!(inserted, Error::Storage { .. }),
                "{denied}: {inserted:?}"
            );
            for id in ["new", "other"] {
                assert!(
                    !admin.hexists::<bool, _, _>(&records, id).await.unwrap(),
                    "{denied}: {id} was written"
                );
            }
        }
        store.close().await.unwrap();
    }
    // What was refused left the store as it was: the next write follows on.
    let next = granted
        .put_batch(&notes, &[Write::create(record(&mut hlc, "next", 1))])
        .await
        .unwrap();
    assert!(
        matches!(next[0], WriteOutcome::Written { cursor, .. } if cursor == Cursor::new(2)),
        "{next:?}"
    );
    granted.close().await.unwrap();
}

/// Runs `ACL <args>` on the server of `client`.
async fn acl(client: &Client, args: &[&str]) {
    let _: fred::types::Value = client
        .custom(
            CustomCommand::new_static("ACL", ClusterHash::Random, false),
            args.to_vec(),
        )
        .await
        .unwrap();
}

/// One cluster slot — the one holding the collection — moves to another
/// master (`CLUSTER SETSLOT ... IMPORTING/MIGRATING`, `MIGRATE`, `SETSLOT
/// ... NODE`) while a sync writes into it. The client follows the `ASK`
/// and `MOVED` redirections, a script that meets keys on both sides gets
/// `TRYAGAIN` (transient, retried), and the sync completes with every
/// record consistent, now served by the new master. On a cluster of its
/// own: moving a slot moves every key in it, and the shared test cluster
/// may be a developer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_during_a_sync_is_followed() {
    const RECORDS: usize = 20_000;
    let Some(cluster) = PrivateCluster::start().await else {
        return;
    };
    // The default command timeout: `MIGRATE` holds a node until the other
    // has synced what it took, which the private servers do at every write.
    let config = RedisConfig {
        command_timeout: syncforge_backend_redis::DEFAULT_COMMAND_TIMEOUT,
        ..cluster.config(&fresh_prefix("reshard"))
    };
    let prefix = config.key_prefix.clone();
    // A collection name unique to this run, so each run moves some slot.
    let name = format!("reshard-{}", &prefix[prefix.len() - 8..]);
    let records_key = key(&prefix, &name, "records");
    let slot = fred::util::redis_keyslot(records_key.as_bytes());

    let mut seeds = vec![(config.host.clone(), config.port)];
    seeds.extend(config.nodes.iter().cloned());
    let nodes = cluster_nodes(&seeds[0]).await;
    let source = nodes
        .iter()
        .find(|n| n.slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi))
        .expect("a master owns the slot")
        .clone();
    let target = nodes.iter().find(|n| n.id != source.id).unwrap().clone();

    let store = Arc::new(RedisBackend::connect(config.clone()).await.unwrap());
    let mut hlc = Hlc::new(ClientId::new("resharder").unwrap());
    let incoming: Vec<Record> = (0..RECORDS)
        .map(|i| record(&mut hlc, &format!("s{i:05}"), i as i64))
        .collect();
    let syncing = {
        let store = Arc::clone(&store);
        let name = name.clone();
        tokio::spawn(async move { sync_records(&*store, &coll(&name), &incoming, 50, 10).await })
    };

    let source_client = node_client(&source.address).await;
    let target_client = node_client(&target.address).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored: u64 = source_client.hlen(&records_key).await.unwrap_or(0);
        if stored >= 2_000 {
            break;
        }
        assert!(Instant::now() < deadline, "the sync does not progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let slot_arg = slot.to_string();
    cluster_cmd(
        &target_client,
        &["SETSLOT", &slot_arg, "IMPORTING", &source.id],
    )
    .await;
    cluster_cmd(
        &source_client,
        &["SETSLOT", &slot_arg, "MIGRATING", &target.id],
    )
    .await;
    let (target_host, target_port) = target.address.rsplit_once(':').unwrap();
    // Each pass moves up to 100 keys: far fewer passes than this empty it.
    for pass in 0.. {
        assert!(pass < 1_000, "slot {slot_arg} was never emptied");
        let keys: Vec<String> = source_client
            .custom(
                CustomCommand::new_static("CLUSTER", ClusterHash::Random, false),
                vec![
                    "GETKEYSINSLOT".to_owned(),
                    slot_arg.clone(),
                    "100".to_owned(),
                ],
            )
            .await
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let mut args = vec![
            target_host.to_owned(),
            target_port.to_owned(),
            String::new(),
            "0".to_owned(),
            "10000".to_owned(),
            "KEYS".to_owned(),
        ];
        args.extend(keys);
        let _: String = source_client
            .custom(
                CustomCommand::new_static("MIGRATE", ClusterHash::Random, false),
                args,
            )
            .await
            .unwrap();
    }
    for node in &nodes {
        let client = node_client(&node.address).await;
        cluster_cmd(&client, &["SETSLOT", &slot_arg, "NODE", &target.id]).await;
        client.quit().await.ok();
    }
    let moved_while_syncing = !syncing.is_finished();

    let outcome = tokio::time::timeout(Duration::from_secs(180), syncing)
        .await
        .expect("the sync ends")
        .unwrap();
    let synced = outcome.expect("the sync completes across the move");
    // A write whose answer a retry lost is found stored on the next pass:
    // unchanged, not written.
    assert_eq!(synced.written + synced.unchanged, RECORDS);
    assert!(
        moved_while_syncing,
        "the slot moved only after the sync ended"
    );

    let owner = cluster_nodes(&seeds[0]).await;
    let now = owner
        .iter()
        .find(|n| n.slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi))
        .unwrap();
    assert_eq!(now.id, target.id, "slot {slot} is served by the target now");
    let stored: u64 = target_client.hlen(&records_key).await.unwrap();
    assert_eq!(stored, RECORDS as u64);
    let raw = raw_client(&config).await.unwrap();
    let consistent = assert_consistent(&raw, &prefix, &name).await;
    assert_eq!(consistent.len(), RECORDS);
    assert_eq!(store.get_all(&coll(&name)).await.unwrap().len(), RECORDS);
    println!(
        "slot {slot} moved from {} to {} during a sync of {RECORDS} records ({} transient failures retried); all consistent",
        source.address, target.address, synced.retried
    );
    store.clear_collection(&coll(&name)).await.unwrap();
    for client in [raw, source_client, target_client] {
        client.quit().await.ok();
    }
    store.close().await.unwrap();
    remove_prefix(&config).await;
}

/// A master of the cluster, as `CLUSTER NODES` lists it.
#[derive(Debug, Clone)]
struct Node {
    id: String,
    address: String,
    slots: Vec<(u16, u16)>,
}

async fn cluster_nodes(seed: &(String, u16)) -> Vec<Node> {
    let client = node_client(&format!("{}:{}", seed.0, seed.1)).await;
    let text: String = client
        .custom(
            CustomCommand::new_static("CLUSTER", ClusterHash::Random, false),
            vec!["NODES"],
        )
        .await
        .unwrap();
    client.quit().await.ok();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") {
                return None;
            }
            let address = fields[1].split('@').next()?.to_owned();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|range| match range.split_once('-') {
                    Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                    None => range.parse().ok().map(|s| (s, s)),
                })
                .collect();
            Some(Node {
                id: fields[0].to_owned(),
                address,
                slots,
            })
        })
        .collect()
}

/// A client on one cluster node alone (no redirections), for CLUSTER commands.
async fn node_client(address: &str) -> Client {
    let (host, port) = address.rsplit_once(':').unwrap();
    let client = Builder::from_config(FredConfig {
        server: ServerConfig::new_centralized(host, port.parse().unwrap()),
        ..FredConfig::default()
    })
    .build()
    .unwrap();
    client.init().await.unwrap();
    client
}

/// Runs the server command `name` with `args` on the server of `client`.
async fn server_cmd(client: &Client, name: &'static str, args: &[&str]) {
    let _: String = client
        .custom(
            CustomCommand::new_static(name, ClusterHash::Random, false),
            args.to_vec(),
        )
        .await
        .unwrap();
}

async fn cluster_cmd(client: &Client, args: &[&str]) {
    server_cmd(client, "CLUSTER", args).await;
}

/// `INFO section` of the server of `client`.
async fn info(client: &Client, section: &str) -> String {
    client
        .custom(
            CustomCommand::new_static("INFO", ClusterHash::Random, false),
            vec![section],
        )
        .await
        .unwrap()
}

/// The value of `field` in `INFO section` of the server of `client`;
/// empty when it has none.
async fn info_field(client: &Client, section: &str, field: &str) -> String {
    info(client, section)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
        .unwrap_or_default()
}

/// The count `field` of `INFO section` on the server of `client`.
async fn info_count(client: &Client, section: &str, field: &str) -> u64 {
    info_field(client, section, field).await.parse().unwrap()
}

/// The clients connected to the server of `client` (this client included).
async fn connected_clients(client: &Client) -> u64 {
    info_count(client, "clients", "connected_clients").await
}

/// The connections the server of `client` accepted since it started.
async fn connections_received(client: &Client) -> u64 {
    info_count(client, "stats", "total_connections_received").await
}

/// A handle built inside a runtime and dropped outside of one (after
/// `block_on` returned) left its connection task connected, reconnecting
/// forever should the server go away.
#[test]
fn a_handle_dropped_outside_a_runtime_closes_its_connection() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let Some(server) = runtime.block_on(PrivateServer::start()) else {
        return;
    };
    let config = server.config(&fresh_prefix("drop"));
    let (store, watcher) = runtime.block_on(async {
        let store = RedisBackend::connect(config.clone()).await.unwrap();
        (store, raw_client(&config).await.unwrap())
    });
    let with_store = runtime.block_on(connected_clients(&watcher));
    drop(store);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = runtime.block_on(connected_clients(&watcher));
        if now < with_store {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dropped handle is still connected ({now} clients, {with_store} before)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.block_on(async { watcher.quit().await.ok() });
}

/// A store on `server` (30 s a command, for large replies) whose collection
/// `name` holds `count` records, each with a body of `body_bytes`, written
/// `batch` at a time.
async fn large_records(
    server: &PrivateServer,
    name: &str,
    count: usize,
    body_bytes: usize,
    batch: usize,
) -> (RedisConfig, RedisBackend, CollectionName) {
    let config = RedisConfig {
        command_timeout: Duration::from_secs(30),
        ..server.config(&fresh_prefix(name))
    };
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let collection = coll(name);
    let mut hlc = Hlc::new(ClientId::new("w").unwrap());
    let body = "x".repeat(body_bytes);
    let records: Vec<Record> = (0..count)
        .map(|i| {
            Record::create(
                Content::from_value(json!({"id": format!("r{i:05}"), "body": body})).unwrap(),
                hlc.now().unwrap(),
            )
        })
        .collect();
    sync_records(&store, &collection, &records, batch, 0)
        .await
        .unwrap();
    (config, store, collection)
}

/// A collection of large records is read in pages of bounded size: each
/// feed read stops past 16 MiB of values, so `get_all` of 40 records of a
/// megabyte takes three reads where one would have built a 40 MiB reply,
/// and a page of the feed ends early, saying more follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_are_read_in_pages_of_bounded_size() {
    const RECORDS: usize = 40;
    let Some(server) = PrivateServer::start().await else {
        return;
    };
    let (config, store, collection) = large_records(&server, "large", RECORDS, 1 << 20, 10).await;

    let raw = raw_client(&config).await.unwrap();
    let before = evalsha_calls(&raw).await;
    let all = store.get_all(&collection).await.unwrap();
    let reads = evalsha_calls(&raw).await - before;
    assert_eq!(all.len(), RECORDS);
    assert!(
        (3..=4).contains(&reads),
        "{reads} feed reads for {RECORDS} MiB of records"
    );

    let page = store
        .changes(&collection, Cursor::START, 1000.try_into().unwrap())
        .await
        .unwrap();
    assert!(page.more, "a page of 40 MiB ended as the last");
    assert!((10..=16).contains(&page.len()), "{} records", page.len());
    // A page asked of more than one script call's entries ends at the
    // first call cut at the bound: it went on, and held all 40 MiB.
    let page = store
        .changes(&collection, Cursor::START, 5000.try_into().unwrap())
        .await
        .unwrap();
    assert!(page.more, "a page of 40 MiB ended as the last");
    assert!((10..=16).contains(&page.len()), "{} records", page.len());

    // The time index is read in slices of the same bound: one slice of a
    // thousand records of a megabyte was a reply of a gigabyte.
    let before = evalsha_calls(&raw).await;
    let by_time = store.changes_since_timestamp(&collection, 0).await.unwrap();
    let reads = evalsha_calls(&raw).await - before;
    assert_eq!(by_time.len(), RECORDS);
    assert!(
        (3..=4).contains(&reads),
        "{reads} time-index reads for {RECORDS} MiB of records"
    );
    raw.quit().await.ok();
    store.close().await.unwrap();
}

/// A page of several script calls, none of them cut at the byte bound,
/// ends once they have read that bound between them: each call kept to it
/// alone, so a page of 3,000 records of 10 KiB held 30 MB (and a page of a
/// hundred thousand, a gigabyte).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_many_script_calls_is_bounded_in_bytes_as_one() {
    const RECORDS: usize = 3_000;
    let Some(server) = PrivateServer::start().await else {
        return;
    };
    let (_, store, collection) = large_records(&server, "many", RECORDS, 10 << 10, 500).await;
    let page = store
        .changes(&collection, Cursor::START, RECORDS.try_into().unwrap())
        .await
        .unwrap();
    assert!(page.more, "a page of 30 MB ended as the last");
    let bytes: usize = page
        .changes
        .iter()
        .map(|change| change.record.to_json_string().len())
        .sum();
    assert!(bytes < 17 << 20, "{bytes} bytes in one page");
    // Read on from there, the rest follows.
    let rest = store
        .changes(&collection, page.next, RECORDS.try_into().unwrap())
        .await
        .unwrap();
    assert_eq!(page.len() + rest.len(), RECORDS);
    assert!(!rest.more);
    store.close().await.unwrap();
}

/// `EVALSHA` calls the server of `client` answered since it started.
async fn evalsha_calls(client: &Client) -> u64 {
    info(client, "commandstats")
        .await
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap()
}

/// A handle on `server` under a fresh prefix, holding one record (`r1`) in
/// collection `name`; with its prefix, its config and the clock that wrote
/// the record.
async fn holding_one_record(
    server: &PrivateServer,
    name: &str,
) -> (String, RedisConfig, RedisBackend, Hlc) {
    let prefix = fresh_prefix(name);
    let config = server.config(&prefix);
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("w").unwrap());
    store
        .put(&coll(name), &Write::create(record(&mut hlc, "r1", 1)))
        .await
        .unwrap();
    (prefix, config, store, hlc)
}

/// Puts `record` into collection `name` as soon as the handle, connecting
/// again in the background, lets a write through: within 30 seconds, its
/// failures meanwhile transient.
async fn put_once_reconnected(store: &RedisBackend, name: &str, record: Record) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let write = Write::create(record);
    while let Err(error) = store.put(&coll(name), &write).await {
        assert!(error.is_transient(), "{error}");
        assert!(Instant::now() < deadline, "no write went through: {error}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
