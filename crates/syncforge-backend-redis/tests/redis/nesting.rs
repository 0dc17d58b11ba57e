//! A stored record nested past [`MAX_NESTING_DEPTH`] (written by hand, or
//! before the limit) reads as corrupt data, like any record that cannot be
//! read: a typed error naming the key, record and field, never a panic.

use fred::interfaces::{ClientLike, HashesInterface};
use serde_json::json;
use syncforge_backend_redis::RedisBackend;
use syncforge_core::{ClientId, Error, Hlc, StorageBackend, Write, MAX_NESTING_DEPTH};
use syncforge_testkit::hostile;

use crate::support::{coll, key, raw_client, record, remove_prefix, rid, standalone};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_record_nested_past_the_limit_is_corrupt() {
    let Some(config) = standalone("nesting").await else {
        return;
    };
    let store = RedisBackend::connect(config.clone()).await.unwrap();
    let mut hlc = Hlc::new(ClientId::new("nester").unwrap());
    let base = record(&mut hlc, "r1", 1);
    store
        .put(&coll("notes"), &Write::create(base.clone()))
        .await
        .unwrap();
    let raw = raw_client(&config).await.unwrap();
    let records = key(&config.key_prefix, "notes", "records");
    let stored: String = raw.hget(&records, "r1").await.unwrap();
    let (sequence, _) = stored.split_once(' ').unwrap();
    let with_deep_field = |levels: usize| {
        let mut value = base.to_json();
        hostile::add_deep_field(&mut value, levels);
        format!("{sequence} {value}")
    };

    let _: () = raw
        .hset(&records, ("r1", with_deep_field(MAX_NESTING_DEPTH)))
        .await
        .unwrap();
    let read = store
        .get(&coll("notes"), &rid("r1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.record.get("n"), Some(json!(1)));
    assert!(read.record.get("deep").is_some());

    let _: () = raw
        .hset(&records, ("r1", with_deep_field(MAX_NESTING_DEPTH + 1)))
        .await
        .unwrap();
    let err = store.get(&coll("notes"), &rid("r1")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { backend: "redis", id: Some(id), .. } if id == "r1"),
        "{err}"
    );
    assert!(
        err.to_string().contains(
            "invalid record \"r1\", field `deep`: nests arrays and objects more than 64 levels deep"
        ),
        "{err}"
    );
    assert!(!err.is_transient());

    raw.quit().await.ok();
    store.close().await.unwrap();
    remove_prefix(&config).await;
}
