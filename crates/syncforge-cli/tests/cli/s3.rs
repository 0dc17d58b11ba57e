//! S3 stores, against the S3-compatible test server `cargo xtask ci` starts
//! (`SYNCFORGE_TEST_S3_ENDPOINT`, `SYNCFORGE_TEST_S3_BUCKET`), each test
//! under a key prefix of its own. Credentials reach the command through the
//! environment only.

use syncforge_testkit::services::{address, available, listens};
use tempfile::TempDir;

use crate::support::{arg, counts, docs, export, syncforge_env, syncforge_with};

const ENDPOINT_ENV: &str = "SYNCFORGE_TEST_S3_ENDPOINT";
const BUCKET_ENV: &str = "SYNCFORGE_TEST_S3_BUCKET";
/// What the test server accepts; any key works there.
const CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing-s3cr3t"),
];

/// The test bucket's store URL under a fresh prefix, or `None` (skipped).
fn s3_url() -> Option<String> {
    let endpoint = address(ENDPOINT_ENV, "http://127.0.0.1:45655");
    let bucket = address(BUCKET_ENV, "syncforge-test");
    let answers = listens(&endpoint);
    available("S3 server (moto)", ENDPOINT_ENV, &endpoint, answers).then(|| {
        format!(
            "s3://{bucket}/syncforge-cli-test-{}?endpoint={endpoint}&allow_http=true",
            ulid::Ulid::new()
        )
    })
}

#[test]
fn a_filesystem_store_syncs_through_a_bucket_and_a_repeat_sends_nothing() {
    let Some(bucket) = s3_url() else { return };
    let dir = TempDir::new().unwrap();
    let (sensor, office) = (dir.path().join("sensor"), dir.path().join("office"));
    syncforge_with(&["put", arg(&sensor), "readings"], &docs("r", 12)).ok();

    let up = syncforge_env(&["sync", arg(&sensor), &bucket, "--json"], &CREDENTIALS).ok();
    assert_eq!(counts(&up.json_lines()[0]), [12, 0, 0, 0, 0]);
    let again = syncforge_env(&["sync", arg(&sensor), &bucket, "--json"], &CREDENTIALS).ok();
    assert_eq!(counts(&again.json_lines()[0]), [0, 0, 0, 0, 0]);

    let down = syncforge_env(&["sync", &bucket, arg(&office), "--json"], &CREDENTIALS).ok();
    assert_eq!(counts(&down.json_lines()[0]), [12, 0, 0, 0, 0]);
    assert_eq!(export(&office, "readings"), export(&sensor, "readings"));
    let stats = syncforge_env(&["stats", &bucket, "--json"], &CREDENTIALS)
        .ok()
        .json();
    assert_eq!(stats["kind"], "s3");
}

/// A reading command on a prefix that holds no store (a typo in the URL)
/// is refused, and writes nothing there: had it written the store's id,
/// the second round would have found a store.
#[test]
fn reading_a_prefix_that_holds_no_store_writes_nothing_there() {
    let Some(bucket) = s3_url() else { return };
    let dir = TempDir::new().unwrap();
    let backup = dir.path().join("backup");
    for _round in 0..2 {
        for args in [
            vec!["ls", bucket.as_str()],
            vec!["export", bucket.as_str(), "readings"],
            vec!["sync", bucket.as_str(), arg(&backup)],
        ] {
            let run = syncforge_env(&args, &CREDENTIALS).fails(1);
            assert!(run.stderr.contains("there is no store at "), "{run:?}");
        }
    }
    assert!(!backup.exists());
}

#[test]
fn credentials_in_an_s3_url_are_refused_and_never_shown() {
    let run = syncforge_env(
        &["ls", "s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/prefix"],
        &CREDENTIALS,
    )
    .fails(2);
    assert!(!run.stderr.contains("wJalrXUtnFEMI"), "{run:?}");
    let run = syncforge_env(
        &["ls", "s3://bucket/prefix?secret_access_key=wJalrXUtnFEMI"],
        &CREDENTIALS,
    )
    .fails(2);
    assert!(!run.stderr.contains("wJalrXUtnFEMI"), "{run:?}");
}
