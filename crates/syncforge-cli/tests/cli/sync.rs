//! `syncforge sync`: incremental, one way and both ways, resuming after a kill.

use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use crate::support::{
    arg, command, counts, docs, export, on_a_terminal, syncforge, syncforge_with,
};

#[test]
fn a_repeated_sync_sends_nothing_and_then_only_what_changed() {
    let dir = TempDir::new().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    syncforge_with(&["put", arg(&src), "notes"], &docs("n", 30)).ok();
    syncforge_with(&["put", arg(&src), "tasks"], &docs("t", 5)).ok();

    let first = syncforge(&["sync", arg(&src), arg(&dst), "--json"]).ok();
    let lines = first.json_lines();
    assert_eq!(lines.len(), 2, "{first:?}");
    assert_eq!(lines[0]["collection"], "notes");
    assert_eq!(counts(&lines[0]), [30, 0, 0, 0, 0]);
    assert_eq!(counts(&lines[1]), [5, 0, 0, 0, 0]);
    assert_eq!(export(&src, "notes"), export(&dst, "notes"));

    // Nothing changed: nothing is read, let alone written.
    let second = syncforge(&["sync", arg(&src), arg(&dst), "--json"]).ok();
    assert_eq!(second.json_lines().len(), 2, "{second:?}");
    for line in second.json_lines() {
        assert_eq!(counts(&line), [0, 0, 0, 0, 0], "{second:?}");
    }

    // Only the changes travel.
    syncforge_with(
        &["put", arg(&src), "notes"],
        "{\"id\": \"n00001\", \"n\": 100}\n{\"id\": \"new\"}\n",
    )
    .ok();
    syncforge(&["delete", arg(&src), "notes", "n00002"]).ok();
    let third = syncforge(&["sync", arg(&src), arg(&dst), "-c", "notes"]).ok();
    assert_eq!(
        third.stdout,
        "notes: 1 added, 1 updated, 1 deleted, 0 unchanged, 0 conflicts\n"
    );
    assert_eq!(export(&src, "notes"), export(&dst, "notes"));
}

#[test]
fn both_ways_converges_and_then_settles() {
    let dir = TempDir::new().unwrap();
    let (phone, laptop) = (dir.path().join("phone"), dir.path().join("laptop"));
    syncforge_with(&["put", arg(&phone), "notes"], &docs("p", 4)).ok();
    syncforge_with(&["put", arg(&laptop), "notes"], &docs("l", 3)).ok();
    syncforge_with(&["put", arg(&laptop), "drafts"], &docs("d", 2)).ok();

    let first = syncforge(&["sync", arg(&phone), arg(&laptop), "--both", "--json"]).ok();
    let lines = first.json_lines();
    // Every collection of either store, by name.
    assert_eq!(lines[0]["collection"], "drafts");
    assert_eq!(lines[1]["collection"], "notes");
    assert_eq!(counts(&lines[1]), [4, 0, 0, 0, 0]);
    assert_eq!(lines[1]["to_src"]["sent"], 3);
    assert_eq!(lines[1]["to_src"]["added"], 3);
    assert_eq!(lines[0]["to_src"]["added"], 2);
    for collection in ["notes", "drafts"] {
        assert_eq!(export(&phone, collection), export(&laptop, collection));
    }

    // What the laptop sent comes back once from the phone's feed and merges
    // as unchanged; nothing is written anywhere.
    let second = syncforge(&["sync", arg(&phone), arg(&laptop), "--both", "--json"]).ok();
    assert_eq!(second.json_lines().len(), 2, "{second:?}");
    for line in second.json_lines() {
        let [added, updated, deleted, _, conflicts] = counts(&line);
        assert_eq!((added, updated, deleted, conflicts), (0, 0, 0, 0), "{line}");
        assert_eq!(line["to_src"]["sent"], 0, "{line}");
    }
    let third = syncforge(&["sync", arg(&phone), arg(&laptop), "--both", "--json"]).ok();
    assert_eq!(third.json_lines().len(), 2, "{third:?}");
    for line in third.json_lines() {
        assert_eq!(counts(&line), [0, 0, 0, 0, 0], "{line}");
        assert_eq!(line["to_src"]["sent"], 0, "{line}");
    }
}

/// Both ends are written by a two-way sync, so either may be new: a new
/// device's first sync names it as SRC as readily as DST. A one-way sync
/// only reads SRC, which must be there.
#[test]
fn a_two_way_sync_creates_a_new_source_store() {
    let dir = TempDir::new().unwrap();
    let (laptop, phone) = (dir.path().join("laptop"), dir.path().join("phone"));
    syncforge_with(&["put", arg(&laptop), "notes"], &docs("l", 3)).ok();
    let refused = syncforge(&["sync", arg(&phone), arg(&laptop)]).fails(1);
    assert!(
        refused.stderr.contains("there is no store at "),
        "{refused:?}"
    );
    assert!(!phone.exists());

    let first = syncforge(&["sync", arg(&phone), arg(&laptop), "--both", "--json"]).ok();
    let line = &first.json_lines()[0];
    assert_eq!(line["to_src"]["added"], 3, "{first:?}");
    assert_eq!(export(&phone, "notes"), export(&laptop, "notes"));

    // With nothing on either side, nothing is created.
    let (empty, nothing) = (dir.path().join("empty"), dir.path().join("nothing"));
    let idle = syncforge(&["sync", arg(&empty), arg(&nothing), "--both"]).ok();
    assert_eq!(
        idle.stdout,
        "nothing to sync: neither end holds a collection\n"
    );
    assert!(!empty.exists() && !nothing.exists());
}

#[test]
fn concurrent_edits_merge_field_by_field_with_crdt() {
    let dir = TempDir::new().unwrap();
    let (phone, laptop) = (dir.path().join("phone"), dir.path().join("laptop"));
    let note = "{\"id\": \"n1\", \"title\": \"Meeting\", \"body\": \"Q3\"}";
    syncforge_with(&["put", arg(&phone), "notes"], note).ok();
    syncforge(&["sync", arg(&phone), arg(&laptop), "--strategy", "crdt"]).ok();
    syncforge_with(
        &["put", arg(&laptop), "notes"],
        "{\"id\": \"n1\", \"title\": \"Q3 Planning\", \"body\": \"Q3\"}",
    )
    .ok();
    syncforge_with(
        &["put", arg(&phone), "notes"],
        "{\"id\": \"n1\", \"title\": \"Meeting\", \"body\": \"Q3 + revenue\"}",
    )
    .ok();
    let run = syncforge(&[
        "sync",
        arg(&phone),
        arg(&laptop),
        "--both",
        "--strategy",
        "crdt",
        "--json",
    ])
    .ok();
    assert_eq!(run.json_lines()[0]["conflicts"], 1, "{run:?}");
    let merged = syncforge(&["get", arg(&laptop), "notes", "n1", "--json"])
        .ok()
        .json();
    assert_eq!(merged["title"], json!("Q3 Planning"));
    assert_eq!(merged["body"], json!("Q3 + revenue"));
    assert_eq!(export(&phone, "notes"), export(&laptop, "notes"));
}

#[test]
fn a_killed_sync_resumes_where_it_stopped() {
    const RECORDS: u64 = 2000;
    const PAGE: u64 = 10;
    let dir = TempDir::new().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    syncforge_with(
        &["import", arg(&src), "c", "--batch-size", "1000"],
        &canonical(&docs("r", RECORDS as usize)),
    )
    .ok();

    // Small pages, each a durable batch whose cursor DST stores: slow
    // enough to be killed halfway. Progress is read from that cursor: the
    // records themselves reach their files only at a checkpoint, which may
    // come at the very end.
    let mut child = command(&[
        "sync",
        arg(&src),
        arg(&dst),
        "--batch-size",
        &PAGE.to_string(),
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let started = Instant::now();
    let pulled_at_kill = loop {
        let pulled = pulled_cursor(&dst);
        if pulled >= 10 * PAGE {
            child.kill().unwrap();
            break pulled;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the sync pulled nothing within a minute"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sync ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let status = child.wait().unwrap();
    assert!(!status.success(), "the sync was killed, not finished");
    assert!(
        pulled_at_kill < RECORDS - 10 * PAGE,
        "killed at {pulled_at_kill}: too close to the end to tell a resume from a finish"
    );

    let resumed = syncforge(&["sync", arg(&src), arg(&dst), "--json"]).ok();
    let [added, updated, deleted, unchanged, _] = counts(&resumed.json_lines()[0]);
    assert_eq!((updated, deleted), (0, 0));
    // It went on from the last page whose cursor was stored (that page may
    // come again, unchanged), not from the start, and the kill had left
    // records to add.
    assert!(added > 0, "{resumed:?}");
    assert!(
        added + unchanged <= RECORDS - pulled_at_kill + PAGE,
        "killed at {pulled_at_kill}: {resumed:?}"
    );
    assert_eq!(export(&src, "c"), export(&dst, "c"));
    let again = syncforge(&["sync", arg(&src), arg(&dst), "--json"]).ok();
    assert_eq!(counts(&again.json_lines()[0]), [0, 0, 0, 0, 0]);
}

/// The position in SRC's feed up to which the store at `dst` has pulled
/// collection `c`, as its engine stored it (0 before the first page).
fn pulled_cursor(dst: &std::path::Path) -> u64 {
    // Written whole and renamed into place: a read sees one version or the
    // other, or no file yet.
    let Ok(text) = std::fs::read_to_string(dst.join(".meta.json")) else {
        return 0;
    };
    let meta: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    meta.iter()
        .find(|(key, _)| key.ends_with(r#","c","pulled"]"#))
        .and_then(|(_, value)| value.as_str()?.rsplit(':').next()?.parse().ok())
        .unwrap_or(0)
}

/// With no collection in SRC, nothing is synced and no store is created at
/// DST, where an empty one was left behind.
#[test]
fn a_sync_with_nothing_to_sync_creates_no_store() {
    let dir = TempDir::new().unwrap();
    let dst = dir.path().join("typo");
    let run = syncforge(&["sync", "memory:", arg(&dst)]).ok();
    assert!(run.stdout.contains("nothing to sync"), "{run:?}");
    assert!(!dst.exists(), "{run:?}");
}

/// Documents stamped as records, in canonical form: what `put` into a
/// memory store prints with `--json` (the store is gone afterwards).
fn canonical(docs: &str) -> String {
    syncforge_with(&["put", "memory:", "c", "--json"], docs)
        .ok()
        .stdout
}

#[test]
fn progress_bars_are_drawn_on_a_terminal_only() {
    let dir = TempDir::new().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    syncforge_with(&["put", arg(&src), "notes"], &docs("n", 50)).ok();

    // Piped: the summary line, and nothing on stderr.
    let piped = syncforge(&["sync", arg(&src), arg(&dst)]).ok();
    assert_eq!(piped.stderr, "");

    // On a terminal (script(1) runs the command on a pseudo-terminal): a bar
    // per collection, then the summary line.
    syncforge_with(&["put", arg(&src), "notes"], &docs("m", 50)).ok();
    let line = format!(
        "{} sync {} {} --batch-size 10",
        env!("CARGO_BIN_EXE_syncforge"),
        arg(&src),
        arg(&dst)
    );
    let run = on_a_terminal(&line);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("50/50 records"), "{run:?}");
    assert!(run.stdout.contains("notes: 50 added"), "{run:?}");
}
