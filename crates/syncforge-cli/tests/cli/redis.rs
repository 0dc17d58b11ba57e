//! Redis stores, against the test server `cargo xtask ci` starts
//! (`SYNCFORGE_TEST_REDIS_URL`), each test under a key prefix of its own.

use std::time::{Duration, Instant};

use syncforge_testkit::services::{address, available};
use tempfile::TempDir;

use crate::support::{arg, counts, docs, export, syncforge, syncforge_with};

const REDIS_ENV: &str = "SYNCFORGE_TEST_REDIS_URL";

/// The test server's URL with a fresh key prefix, or `None` (skipped).
fn redis_url() -> Option<String> {
    let server = address(REDIS_ENV, "redis://127.0.0.1:6379/0");
    let url = format!("{server}?prefix=syncforge-cli-test-{}", ulid::Ulid::new());
    let answers = syncforge(&["ls", &url]).code == 0;
    available("redis", REDIS_ENV, &server, answers).then_some(url)
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
