//! Redis stores, against the test server `cargo xtask ci` starts
//! (`SYNCFORGE_TEST_REDIS_URL`), each test under a key prefix of its own.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use syncforge_testkit::services::{address, available, version_of};
use tempfile::TempDir;

use crate::support::{
    arg, counts, docs, export, syncforge, syncforge_env, syncforge_with, watching, KilledOnDrop,
};

const REDIS_ENV: &str = "SYNCFORGE_TEST_REDIS_URL";

/// The test server's URL with a fresh key prefix, or `None` (skipped).
fn redis_url() -> Option<String> {
    redis_store().map(|store| store.url)
}

/// A store on the test server under a key prefix of its own.
struct RedisStore {
    server: String,
    prefix: String,
    url: String,
}

/// [`redis_url`] with the server and the prefix apart.
fn redis_store() -> Option<RedisStore> {
    let server = address(REDIS_ENV, "redis://127.0.0.1:6379/0");
    let prefix = format!("syncforge-cli-test-{}", ulid::Ulid::new());
    let url = format!("{server}?prefix={prefix}");
    // A prefix that holds nothing is refused by reading commands; the
    // refusal says the server answered.
    let probe = syncforge(&["ls", &url]);
    let answers = probe.code == 0 || probe.stderr.contains("there is no store at ");
    available("redis", REDIS_ENV, &server, answers).then_some(RedisStore {
        server,
        prefix,
        url,
    })
}

/// What `redis-cli` prints for `args` against `store`'s server.
fn redis_cli(store: &RedisStore, args: &[&str]) -> String {
    let child = Command::new("redis-cli")
        .args(["-u", &store.server])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = syncforge_testkit::processes::finish(child, Duration::from_secs(60)).unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The keys under `store`'s prefix.
fn keys(store: &RedisStore) -> Vec<String> {
    let pattern = format!("{}*", store.prefix);
    redis_cli(store, &["--scan", "--pattern", &pattern])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Deletes every key of `store`, as a server restarted without persistence
/// loses them.
fn wipe(store: &RedisStore) {
    let keys = keys(store);
    assert!(!keys.is_empty(), "no key under {}", store.prefix);
    let mut delete = vec!["DEL"];
    delete.extend(keys.iter().map(String::as_str));
    redis_cli(store, &delete);
}

/// A reading command on a key prefix that holds no store (a typo in the
/// URL) is refused, and writes nothing under it: opening a store would
/// have written its id there.
#[test]
fn reading_a_prefix_that_holds_no_store_writes_nothing_there() {
    let Some(store) = redis_store() else { return };
    let url = store.url.as_str();
    for args in [
        vec!["ls", url],
        vec!["stats", url],
        vec!["export", url, "notes"],
        vec!["sync", url, "memory:"],
    ] {
        let run = syncforge(&args).fails(1);
        assert!(run.stderr.contains("there is no store at "), "{run:?}");
    }
    assert_eq!(keys(&store), Vec::<String>::new());
    // A store made there is read as any other.
    syncforge_with(&["put", url, "notes"], &docs("n", 1)).ok();
    assert!(syncforge(&["ls", url]).ok().stdout.contains("notes"));
}

#[test]
fn a_filesystem_store_syncs_through_redis_and_a_repeat_sends_nothing() {
    let Some(redis) = redis_url() else { return };
    let dir = TempDir::new().unwrap();
    let (phone, laptop) = (dir.path().join("phone"), dir.path().join("laptop"));
    syncforge_with(&["put", arg(&phone), "notes"], &docs("n", 25)).ok();

    let up = syncforge(&["sync", arg(&phone), &redis, "--json"]).ok();
    assert_eq!(counts(&up.json_lines()[0]), [25, 0, 0, 0, 0]);
    let again = syncforge(&["sync", arg(&phone), &redis, "--json"]).ok();
    assert_eq!(counts(&again.json_lines()[0]), [0, 0, 0, 0, 0]);

    let down = syncforge(&["sync", &redis, arg(&laptop), "--json"]).ok();
    assert_eq!(counts(&down.json_lines()[0]), [25, 0, 0, 0, 0]);
    assert_eq!(export(&laptop, "notes"), export(&phone, "notes"));
    assert_eq!(
        syncforge(&["export", &redis, "notes"]).ok().stdout,
        export(&phone, "notes")
    );
    let stats = syncforge(&["stats", &redis, "--json"]).ok().json();
    assert_eq!(stats["kind"], "redis");
    assert_eq!(stats["collections"][0]["records"], 25);
}

#[test]
fn an_unreachable_redis_fails_within_the_connect_bound_without_its_password() {
    let started = Instant::now();
    let run = syncforge(&["ls", "redis://:hunter2@127.0.0.1:1/0"]).fails(1);
    assert!(started.elapsed() < Duration::from_secs(30), "{run:?}");
    assert!(run.stderr.contains("127.0.0.1:1"), "{run:?}");
    assert!(!run.stderr.contains("hunter2"), "{run:?}");
    let bad = syncforge(&["ls", "redis://:hunter2@127.0.0.1:port"]).fails(2);
    assert!(!bad.stderr.contains("hunter2"), "{bad:?}");
}

/// A watch on a Redis store that was wiped under it (a server restarted
/// without persistence numbers its feed from the start again, under the
/// watch's cursor) went on silently, never printing the changes numbered up
/// to its cursor. It stops with an error.
#[test]
fn a_watch_on_a_wiped_redis_store_stops_with_an_error() {
    let Some(store) = redis_store() else { return };
    syncforge_with(&["put", &store.url, "notes"], &docs("n", 3)).ok();
    let (mut watcher, said, stderr) =
        watching(&["watch", &store.url, "notes", "--interval", "50ms"]);
    assert!(said.ends_with("after cursor 3\n"), "{said:?}");
    watcher.stderr = Some(stderr.into_inner());
    wipe(&store);
    syncforge_with(&["put", &store.url, "notes"], "{\"id\": \"new\"}").ok();
    let output = syncforge_testkit::processes::finish(watcher, Duration::from_secs(30))
        .unwrap_or_else(|error| panic!("the watch went on after the wipe: {error}"));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds another store now"), "{stderr}");
}

/// A `rediss://` store in the CLI: reached when the system trusts the
/// server's authority (`SSL_CERT_FILE`), refused with advice when it does
/// not. With the default features the CLI links two TLS crypto providers
/// (ring for HTTP and Redis, aws-lc-rs for S3), where rustls left to pick
/// one panicked.
#[test]
fn a_tls_store_is_reached_when_its_authority_is_trusted() {
    let bin = address("SYNCFORGE_TEST_REDIS_SERVER_BIN", "redis-server");
    let found = version_of(&bin).is_some();
    if !available(
        "redis-server binary",
        "SYNCFORGE_TEST_REDIS_SERVER_BIN",
        &bin,
        found,
    ) {
        return;
    }
    let dir = TempDir::new().unwrap();
    let Some(certificates) = syncforge_testkit::certificates::make(dir.path()) else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Command::new(&bin)
        .args(["--port", "0", "--bind", "127.0.0.1", "--save", ""])
        .args(certificates.redis_server_args(port))
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Stopped also when the test fails before its end.
    let mut server = KilledOnDrop(Some(server));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        // One built without TLS exits at once on a TLS port.
        let exited = server
            .0
            .as_mut()
            .is_some_and(|child| child.try_wait().is_ok_and(|status| status.is_some()));
        if exited {
            let variable = "SYNCFORGE_TEST_REDIS_SERVER_BIN";
            available("redis-server built with TLS", variable, &bin, false);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("rediss://127.0.0.1:{port}/0?prefix=tls");
    let authority = certificates.authority_file.to_str().unwrap();
    let trusted = syncforge_env(&["ls", &url], &[("SSL_CERT_FILE", authority)]);
    let refused = syncforge(&["ls", &url]);
    drop(server);
    // Connected and asked: the prefix holds no store yet.
    assert!(
        trusted.code == 0 || trusted.stderr.contains("there is no store at "),
        "{trusted:?}"
    );
    assert_ne!(refused.code, 0);
    assert!(!refused.stderr.contains("panicked"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("TLS handshake failed"),
        "{}",
        refused.stderr
    );
}
