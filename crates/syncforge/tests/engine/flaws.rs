//! One test per flaw of the TypeScript original (DESIGN.md) that concerns the
//! engine. Each would fail on the original's behaviour.

use std::sync::Arc;

use serde_json::json;
use syncforge::{ConflictStrategy, Cursor, ManualTime, PageOptions, Record};

use crate::support::{engine, engine_at, push_all, snapshot, T0};

/// Flaw 1: the original stamped every field with the record's timestamp, so
/// the newer record overwrote the other side's edit of a different field.
#[tokio::test]
async fn flaw_1_field_edits_on_both_sides_survive() {
    let time = Arc::new(ManualTime::new(T0));
    let a = engine_at("a", ConflictStrategy::Crdt, &time).await;
    let b = engine_at("b", ConflictStrategy::Crdt, &time).await;
    for i in 0..20 {
        a.put(
            "c",
            &json!({"id": format!("r{i}"), "email": "old", "age": 1}),
        )
        .await
        .unwrap();
    }
    let _ = push_all(&a, &b, "c").await;
    time.advance(1);
    for i in 0..20 {
        a.put(
            "c",
            &json!({"id": format!("r{i}"), "email": format!("new{i}"), "age": 1}),
        )
        .await
        .unwrap();
    }
    time.advance(1);
    for i in 0..20 {
        b.put(
            "c",
            &json!({"id": format!("r{i}"), "email": "old", "age": i + 100}),
        )
        .await
        .unwrap();
    }
    let _ = push_all(&a, &b, "c").await;
    let _ = push_all(&b, &a, "c").await;
    for i in 0..20 {
        let r = a.get("c", &format!("r{i}")).await.unwrap().unwrap();
        assert_eq!(
            r.get("email"),
            Some(json!(format!("new{i}"))),
            "lost a's edit"
        );
        assert_eq!(r.get("age"), Some(json!(i + 100)), "lost b's edit");
    }
    assert_eq!(snapshot(&a, "c").await, snapshot(&b, "c").await);
}

/// Flaw 2: concurrent edits in the same millisecond never converged in the
/// original (equal version and timestamp counted as unchanged).
#[tokio::test]
async fn flaw_2_same_millisecond_edits_converge() {
    for strategy in [ConflictStrategy::Timestamp, ConflictStrategy::Crdt] {
        let time = Arc::new(ManualTime::new(T0));
        let a = engine_at("a", strategy, &time).await;
        let b = engine_at("b", strategy, &time).await;
        a.put("c", &json!({"id": "x", "v": "from a"}))
            .await
            .unwrap();
        b.put("c", &json!({"id": "x", "v": "from b"}))
            .await
            .unwrap();
        let _ = push_all(&a, &b, "c").await;
        let _ = push_all(&b, &a, "c").await;
        assert_eq!(
            snapshot(&a, "c").await,
            snapshot(&b, "c").await,
            "{strategy}"
        );
        // No version creep: another exchange changes nothing.
        let before = snapshot(&a, "c").await;
        let r1 = push_all(&a, &b, "c").await;
        let r2 = push_all(&b, &a, "c").await;
        assert_eq!((r1.updated, r2.updated), (0, 0));
        assert_eq!(snapshot(&a, "c").await, before);
    }
}

/// Flaw 3: the original called any differing `_clientId` a conflict.
#[tokio::test]
async fn flaw_3_a_newer_copy_is_not_a_conflict_but_concurrent_edits_are() {
    let a = engine("a", ConflictStrategy::Crdt).await;
    let b = engine("b", ConflictStrategy::Crdt).await;
    a.put("c", &json!({"id": "x", "v": 1})).await.unwrap();
    let _ = push_all(&a, &b, "c").await;
    b.put("c", &json!({"id": "x", "v": 2})).await.unwrap();
    let result = push_all(&b, &a, "c").await;
    assert_eq!(result.updated, 1);
    assert!(result.conflicts.is_empty());

    a.put("c", &json!({"id": "x", "v": 3})).await.unwrap();
    b.put("c", &json!({"id": "x", "v": 4})).await.unwrap();
    let result = push_all(&b, &a, "c").await;
    assert_eq!(result.conflicts.len(), 1);
    assert_eq!(result.conflicts[0].fields_conflicted, vec!["v".to_owned()]);
}

/// Flaw 4: `getChangesSince(timestamp)` missed records that arrived by sync
/// carrying older timestamps; the sequence-based feed does not.
#[tokio::test]
async fn flaw_4_change_feed_relays_records_with_old_timestamps() {
    let time_old = Arc::new(ManualTime::new(T0));
    let time_relay = Arc::new(ManualTime::new(T0 + 60_000));
    let offline = engine_at("offline", ConflictStrategy::Crdt, &time_old).await;
    let relay = engine_at("relay", ConflictStrategy::Crdt, &time_relay).await;

    relay.put("c", &json!({"id": "fresh"})).await.unwrap();
    let cursor = relay
        .changes("c", Cursor::START, PageOptions::default().limit(100))
        .await
        .unwrap()
        .next;
    let last_sync_time = T0 + 60_000;

    // A device that was offline for a minute brings an older write.
    offline.put("c", &json!({"id": "old-edit"})).await.unwrap();
    let _ = push_all(&offline, &relay, "c").await;

    let by_time = relay.get_changes_since("c", last_sync_time).await.unwrap();
    assert!(
        by_time.is_empty(),
        "the time-based query misses it (documented)"
    );
    let by_sequence = relay
        .changes("c", cursor, PageOptions::default().limit(100))
        .await
        .unwrap();
    let ids: Vec<_> = by_sequence
        .changes
        .iter()
        .map(|c| c.record.id().to_string())
        .collect();
    assert_eq!(ids, vec!["old-edit".to_owned()]);
}

/// Flaw 5: with wall-clock timestamps a replica whose clock runs an hour
/// ahead won every later conflict. Its stamps are now refused, and stamps
/// within the bound are followed by the hybrid clock so later edits still win.
#[tokio::test]
async fn flaw_5_a_clock_far_ahead_cannot_win_forever() {
    let honest = Arc::new(ManualTime::new(T0));
    let skewed = Arc::new(ManualTime::new(T0 + 3_600_000));
    let a = engine_at("a", ConflictStrategy::Timestamp, &honest).await;
    let fast = engine_at("fast", ConflictStrategy::Timestamp, &skewed).await;
    fast.put("c", &json!({"id": "x", "v": "from the future"}))
        .await
        .unwrap();
    let err = a
        .sync("c", fast.get_all("c").await.unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, syncforge::Error::ClockDrift { .. }), "{err}");
    assert!(a.get("c", "x").await.unwrap().is_none());

    // A clock two minutes ahead is within the bound: its write is taken, and a
    // later local edit still wins, because the local clock moved past it.
    let slightly = Arc::new(ManualTime::new(T0 + 120_000));
    let fast = engine_at("slightly-fast", ConflictStrategy::Timestamp, &slightly).await;
    fast.put("c", &json!({"id": "y", "v": "slightly ahead"}))
        .await
        .unwrap();
    let y = fast.get("c", "y").await.unwrap().unwrap();
    let _ = a.sync("c", vec![y]).await.unwrap();
    honest.advance(1);
    a.put("c", &json!({"id": "y", "v": "later edit"}))
        .await
        .unwrap();
    let _ = fast.sync("c", a.get_all("c").await.unwrap()).await.unwrap();
    assert_eq!(
        fast.get("c", "y").await.unwrap().unwrap().get("v"),
        Some(json!("later edit"))
    );
}

/// Flaw 6: an incoming delete won without comparing timestamps, so
/// delete-vs-update depended on the order of syncs.
#[tokio::test]
async fn flaw_6_delete_versus_update_does_not_depend_on_sync_order() {
    for strategy in [ConflictStrategy::Timestamp, ConflictStrategy::Crdt] {
        for delete_is_newer in [false, true] {
            let mut outcomes = Vec::new();
            for a_first in [false, true] {
                let time = Arc::new(ManualTime::new(T0));
                let a = engine_at("a", strategy, &time).await;
                let b = engine_at("b", strategy, &time).await;
                a.put("c", &json!({"id": "x", "v": 1})).await.unwrap();
                let _ = push_all(&a, &b, "c").await;
                if delete_is_newer {
                    time.advance(1);
                    b.put("c", &json!({"id": "x", "v": 2})).await.unwrap();
                    time.advance(1);
                    a.delete("c", "x").await.unwrap();
                } else {
                    time.advance(1);
                    a.delete("c", "x").await.unwrap();
                    time.advance(1);
                    b.put("c", &json!({"id": "x", "v": 2})).await.unwrap();
                }
                if a_first {
                    let _ = push_all(&a, &b, "c").await;
                    let _ = push_all(&b, &a, "c").await;
                } else {
                    let _ = push_all(&b, &a, "c").await;
                    let _ = push_all(&a, &b, "c").await;
                }
                assert_eq!(snapshot(&a, "c").await, snapshot(&b, "c").await);
                let x = a.get("c", "x").await.unwrap().unwrap();
                assert_eq!(
                    x.is_deleted(),
                    delete_is_newer,
                    "{strategy}, delete newer: {delete_is_newer}"
                );
                outcomes.push(snapshot(&a, "c").await);
            }
            assert_eq!(
                outcomes[0], outcomes[1],
                "{strategy}: order changed the outcome"
            );
        }
    }
}

/// Flaw 7: the original stored a record without `id` under "undefined",
/// kept `NaN` versions and let string timestamps drop out of the feed.
#[tokio::test]
async fn flaw_7_malformed_remote_records_are_refused() {
    let cases = [
        json!({"title": "no id", "_version": 1, "_timestamp": T0, "_clientId": "r"}),
        json!({"id": "nan", "_version": null, "_timestamp": T0, "_clientId": "r"}),
        json!({"id": "str", "_version": 1, "_timestamp": "1700000000000", "_clientId": "r"}),
        json!({"id": "neg", "_version": -1, "_timestamp": T0, "_clientId": "r"}),
    ];
    for case in cases {
        let parsed: Result<Vec<Record>, _> = serde_json::from_value(json!([case.clone()]));
        let err = parsed.unwrap_err().to_string();
        assert!(err.contains("invalid record"), "{case}: {err}");
    }
}
