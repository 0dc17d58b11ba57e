//! The password never shows: not in `Debug` or `Display` of the
//! configuration or the backend, not in any error, not in any log line of
//! this crate or of the Redis client, at every level down to TRACE.
//!
//! A binary of its own, because it installs a global log subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code, unreachable_pub)]
#[path = "redis/support.rs"]
mod support;

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use fred::interfaces::{ClientLike, KeysInterface};
use syncforge_backend_redis::{RedisBackend, RedisConfig};
use syncforge_core::{ClientId, Hlc, StorageBackend, Write};

use support::{coll, fresh_prefix, key, raw_client, record, rid, PrivateServer};

const PASSWORD: &str = "Pa55-wOrd-never-shown-7c1f";

/// Everything logged, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_shows() {
    let captured = Captured::default();
    let writer = captured.clone();
    // Also takes in the `log` records of the Redis client.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .try_init()
        .unwrap();

    let Some(server) = PrivateServer::start_with_password(Some(PASSWORD)).await else {
        return;
    };
    let config = server.config(&fresh_prefix("secret"));
    let mut shown = vec![
        format!("{config}"),
        format!("{config:?}"),
        format!("{config:#?}"),
    ];

    // A working connection, used for every kind of call.
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    shown.push(format!("{store:?}"));
    let notes = coll("secret");
    let mut hlc = Hlc::new(ClientId::new("shy").unwrap());
    store
        .put(&notes, &Write::create(record(&mut hlc, "n1", 1)))
        .await
        .unwrap();
    store.get(&notes, &rid("n1")).await.unwrap().unwrap();
    store.get_all(&notes).await.unwrap();
    store.list_collections().await.unwrap();
    store.newest_stamp().await.unwrap();

    // A permanent error: a key of the collection holds another type.
    let raw = raw_client(&config).await.unwrap();
    let broken = coll("broken");
    let _: () = raw
        .set(
            key(&config.key_prefix, "broken", "records"),
            "not a hash",
            None,
            None,
            false,
        )
        .await
        .unwrap();
    raw.quit().await.ok();
    let error = store.get(&broken, &rid("x")).await.unwrap_err();
    assert!(error.to_string().contains("WRONGTYPE"), "{error}");
    shown.push(format!("{error}"));
    shown.push(format!("{error:?}"));

    // Failed connections: a wrong password, and no server at all.
    for bad in [
        RedisConfig {
            password: Some(format!("{PASSWORD}-wrong")),
            ..config.clone()
        },
        RedisConfig {
            port: 1,
            ..config.clone()
        },
    ] {
        let error = RedisBackend::connect(bad).await.unwrap_err();
        shown.push(format!("{error}"));
        shown.push(format!("{error:?}"));
    }
    store.close().await.unwrap();
    drop(server);

    std::io::stderr().flush().ok();
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("fred"),
        "the client's own log lines were captured too"
    );
    shown.push(logged);
    for text in &shown {
        assert!(!text.contains(PASSWORD), "the password shows in: {text}");
        // Not even its distinctive middle.
        assert!(!text.contains("never-shown-7c1f"), "{text}");
    }
}
