//! `stats` and `watch`.

use std::time::Duration;

use tempfile::TempDir;

use crate::support::{arg, docs, syncforge, syncforge_with, watching};

#[test]
fn stats_counts_records_deletions_and_bytes() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    syncforge_with(&["put", arg(&store), "notes"], &docs("n", 4)).ok();
    syncforge_with(&["put", arg(&store), "tasks"], &docs("t", 2)).ok();
    syncforge(&["delete", arg(&store), "notes", "n00001"]).ok();

    let stats = syncforge(&["stats", arg(&store), "--json"]).ok().json();
    assert_eq!(stats["kind"], "filesystem");
    let notes = &stats["collections"][0];
    assert_eq!(notes["collection"], "notes");
    assert_eq!(
        (notes["records"].as_u64(), notes["deleted"].as_u64()),
        (Some(4), Some(1))
    );
    // Five writes: four puts and a delete.
    assert_eq!(notes["feed_head"], 5);
    assert!(notes["newest_time"].as_str().unwrap().ends_with('Z'));
    let bytes: u64 = syncforge(&["export", arg(&store), "notes"])
        .ok()
        .stdout
        .lines()
        .map(|line| line.len() as u64)
        .sum();
    assert_eq!(notes["json_bytes"], bytes);
    assert_eq!(stats["collections"][1]["records"], 2);

    let human = syncforge(&["stats", arg(&store)]).ok().stdout;
    let lines: Vec<&str> = human.lines().collect();
    assert!(
        lines[1].starts_with("collection  records  deleted  feed head"),
        "{human}"
    );
    assert!(
        lines[2].starts_with("notes             4        1          5  "),
        "{human}"
    );
}

/// `watch ... | head -n 1` on a quiet collection: the watch noticed that
/// nothing read it any more only when it next printed a change, so the
/// pipeline hung as long as nothing was written. It stops once its reader
/// goes, like any command that reads.
#[cfg(unix)]
#[test]
fn a_watch_stops_when_its_reader_goes_while_nothing_changes() {
    use std::io::BufRead;
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    syncforge_with(&["put", arg(&store), "notes"], &docs("n", 2)).ok();
    let (mut watcher, said, _stderr) = watching(&[
        "watch",
        arg(&store),
        "notes",
        "--from-start",
        "--interval",
        "50ms",
    ]);
    assert!(said.starts_with("watching collection"), "{said:?}");
    let mut stdout = std::io::BufReader::new(watcher.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("n00000"), "{first:?}");
    drop(stdout);
    let status = syncforge_testkit::processes::wait(&mut watcher, Duration::from_secs(20))
        .unwrap_or_else(|error| panic!("the watch went on without a reader: {error}"));
    assert!(status.success(), "{status:?}");
}

#[test]
fn watch_prints_the_feed_and_follows_new_changes() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    syncforge_with(&["put", arg(&store), "notes"], &docs("n", 3)).ok();

    let all = syncforge(&[
        "watch",
        arg(&store),
        "notes",
        "--from-start",
        "--count",
        "3",
        "--json",
    ])
    .ok();
    let lines = all.json_lines();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["cursor"], 1);
    assert_eq!(lines[2]["record"]["id"], "n00002");

    // A cursor past the end of the feed (taken from another store, or
    // before a restore) is refused: followed, it showed nothing until the
    // feed got there.
    let past = syncforge(&[
        "watch",
        arg(&store),
        "notes",
        "--after",
        "999",
        "--count",
        "1",
    ])
    .fails(1);
    assert!(past.stderr.contains("past the end"), "{past:?}");
    assert!(past.stderr.contains("cursor 3"), "{past:?}");
    let one_past = syncforge(&[
        "watch",
        arg(&store),
        "notes",
        "--after",
        "4",
        "--count",
        "1",
    ])
    .fails(1);
    assert!(one_past.stderr.contains("past the end"), "{one_past:?}");
    // The end itself is a cursor of the feed: the watch starts there.
    let (mut at_end, said, _stderr) = watching(&[
        "watch",
        arg(&store),
        "notes",
        "--after",
        "3",
        "--count",
        "1",
    ]);
    assert!(said.ends_with("after cursor 3\n"), "{said:?}");
    // Stopped as a service manager (or `timeout`) does: SIGTERM ended the
    // process at once, without closing the store. It stops cleanly now.
    #[cfg(unix)]
    {
        let stopped = crate::support::terminate(&mut at_end);
        assert!(stopped.success(), "watch stopped by SIGTERM: {stopped:?}");
    }
    #[cfg(not(unix))]
    {
        at_end.kill().unwrap();
        at_end.wait().unwrap();
    }

    // From the end of the feed: only what is written from now on. The
    // watcher says on stderr where it starts; write only after that.
    // Its stderr kept until the end: the watcher goes on writing to it.
    let (watcher, said, _stderr) = watching(&[
        "watch",
        arg(&store),
        "notes",
        "--count",
        "2",
        "--interval",
        "50ms",
    ]);
    assert!(said.ends_with("after cursor 3\n"), "{said:?}");
    syncforge_with(
        &["put", arg(&store), "notes"],
        "{\"id\": \"late\", \"x\": 1}",
    )
    .ok();
    syncforge(&["delete", arg(&store), "notes", "n00000"]).ok();
    let output = syncforge_testkit::processes::finish(watcher, Duration::from_secs(30))
        .unwrap_or_else(|error| panic!("watch did not print two changes within 30 s: {error}"));
    assert!(output.status.success());
    let printed: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        printed,
        vec!["4  put     late  {\"x\":1}", "5  delete  n00000  {\"n\":0}"]
    );
}
