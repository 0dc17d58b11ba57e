//! Bad command lines, unknown names and unusable stores: clear messages and
//! the exit codes the help promises (1 at run time, 2 for usage).

use std::time::Duration;

use tempfile::TempDir;

use crate::support::{arg, command, docs, on_a_terminal, syncforge, syncforge_env, syncforge_with};

#[test]
fn every_command_shows_an_example_in_its_help() {
    let mut commands = vec![
        "sync", "ls", "get", "put", "delete", "export", "import", "stats", "watch",
    ];
    if cfg!(feature = "http") {
        commands.push("serve");
    }
    for command in commands {
        let help = syncforge(&[command, "--help"]).ok();
        assert!(help.stdout.contains("Examples:"), "{command}: {help:?}");
        assert!(
            help.stdout.contains(&format!("syncforge {command} ")),
            "{command}: {help:?}"
        );
        assert!(help.stdout.contains("memory:"), "{command}: {help:?}");
    }
    let top = syncforge(&["--help"]).ok();
    assert!(top
        .stdout
        .contains("Exit codes: 0 success, 1 failure at run time, 2 usage error"));
}

#[test]
fn usage_errors_exit_with_2() {
    syncforge(&[]).fails(2);
    syncforge(&["frobnicate"]).fails(2);
    syncforge(&["get", "memory:"]).fails(2);
    syncforge(&["sync", "memory:", "memory:", "--strategy", "newest"]).fails(2);
    let run = syncforge(&["ls", "memory:", "bad\u{7}name"]).fails(2);
    assert!(run.stderr.contains("invalid collection name"), "{run:?}");
    let run = syncforge(&["sync", "memory:", "memory:", "--batch-size", "0"]).fails(2);
    assert!(run.stderr.contains("--batch-size"), "{run:?}");
    // Before any input is read: the input here is not even JSON.
    let run = syncforge_with(&["import", "memory:", "c", "--batch-size", "0"], "not JSON").fails(2);
    assert!(run.stderr.contains("--batch-size"), "{run:?}");
    // The client id and a server's token too: the input here is not JSON.
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    let run = syncforge_with(
        &["import", arg(&store), "c", "--client-id", "a\u{7}b"],
        "not JSON",
    )
    .fails(2);
    assert!(run.stderr.contains("client"), "{run:?}");
    assert!(!store.exists());
    #[cfg(feature = "http")]
    {
        let run = syncforge_with(
            &[
                "import",
                "http://127.0.0.1:9",
                "c",
                "--bearer-token",
                "two words",
            ],
            "not JSON",
        )
        .fails(2);
        assert!(run.stderr.contains("--bearer-token"), "{run:?}");
    }
    // A watch that stops after no change would read the feed to its end.
    let run = syncforge(&["watch", "memory:", "c", "--count", "0"]).fails(2);
    assert!(run.stderr.contains("--count"), "{run:?}");
    // A put refuses its client id before reading its input, which may be
    // typed at a terminal: here it never ends.
    let mut put = command(&["put", arg(&store), "c", "-", "--client-id", ""])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _input_left_open = put.stdin.take();
    let status = syncforge_testkit::processes::wait(&mut put, Duration::from_secs(60)).unwrap();
    assert_eq!(status.code(), Some(2), "{status:?}");
    assert!(!store.exists());
}

/// Options that cannot work are usage errors (2), found before anything is
/// created: a polling interval of zero, a serve token no client could send,
/// an address that does not parse.
#[test]
fn unusable_options_are_usage_errors_that_write_nothing() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    let run = syncforge(&["watch", arg(&store), "notes", "--interval", "0s"]).fails(2);
    assert!(run.stderr.contains("longer than zero"), "{run:?}");
    // No feed hands out a cursor past 2^53: a usage error, as the other
    // flags' bounds are, not a failure of the store.
    let run = syncforge(&["watch", arg(&store), "notes", "--after", "9007199254740993"]).fails(2);
    assert!(run.stderr.contains("--after"), "{run:?}");
    let run = syncforge(&["serve", arg(&store), "--token", "t0ken9\r"]).fails(2);
    assert!(run.stderr.contains("control characters"), "{run:?}");
    assert!(!run.stderr.contains("t0ken9"), "{run:?}");
    let run = syncforge(&[
        "serve",
        arg(&store),
        "--token",
        "t",
        "--addr",
        "127.0.0.1:80x",
    ])
    .fails(2);
    assert!(run.stderr.contains("--addr"), "{run:?}");
    assert!(!store.exists(), "the store was created");
}

/// A directory of records read by `put` takes files that start with a
/// byte-order mark, as a single file does.
#[test]
fn records_in_a_directory_may_start_with_a_byte_order_mark() {
    let dir = TempDir::new().unwrap();
    let records = dir.path().join("records");
    std::fs::create_dir(&records).unwrap();
    std::fs::write(
        records.join("n1.json"),
        "\u{feff}{\"id\": \"n1\", \"n\": 1}",
    )
    .unwrap();
    let store = dir.path().join("store");
    syncforge(&["put", arg(&store), "notes", arg(&records)]).ok();
    let got = syncforge(&["get", arg(&store), "notes", "n1", "--json"]).ok();
    assert!(got.stdout.contains("\"n\":1"), "{got:?}");
}

#[test]
fn bad_store_urls_are_usage_errors_that_name_the_problem() {
    let run = syncforge(&["ls", "ftp://example.com/data"]).fails(2);
    assert!(run.stderr.contains("STORE: "), "{run:?}");
    assert!(run.stderr.contains("unknown store kind \"ftp\""), "{run:?}");
    let run = syncforge(&["ls", "memroy:"]).fails(2);
    assert!(run.stderr.contains("./memroy:"), "{run:?}");
    let run = syncforge(&["sync", "memory:", "file:relative/dir"]).fails(2);
    assert!(run.stderr.contains("DST: "), "{run:?}");
    assert!(run.stderr.contains("file:///absolute/path"), "{run:?}");
}

/// A destination whose `http://` was forgotten made a new store in a
/// directory named after the address, and the sync exited 0.
#[test]
fn an_address_without_its_scheme_is_a_usage_error_that_makes_no_directory() {
    let dir = TempDir::new().unwrap();
    let mut command = crate::support::command(&["sync", "memory:", "127.0.0.1:8080"]);
    command.current_dir(dir.path());
    let run = crate::support::run_command(command).fails(2);
    assert!(run.stderr.contains("http://host:port"), "{run:?}");
    assert!(!dir.path().join("127.0.0.1:8080").exists());
}

/// A log level the binary cannot read was ignored in silence.
#[test]
fn an_unreadable_log_level_is_told() {
    let run = syncforge_env(&["ls", "memory:"], &[("SYNCFORGE_LOG", "verbose")]).ok();
    assert!(run.stderr.contains("SYNCFORGE_LOG"), "{run:?}");
    assert!(run.stderr.contains("\"verbose\""), "{run:?}");
}

/// Only in a build without the `s3` and `redis` features, which `cargo
/// xtask ci` makes for it (and runs by this exact name); the library's own
/// tests check each kind with its feature off.
#[cfg(not(any(feature = "s3", feature = "redis")))]
#[test]
fn a_kind_not_built_in_names_its_feature() {
    for (url, feature) in [
        ("s3://bucket/prefix?region=eu-west-1", "s3"),
        ("redis://127.0.0.1:9/0", "redis"),
    ] {
        let run = syncforge(&["stats", url]).fails(2);
        assert!(
            run.stderr
                .contains(&format!("enable the cargo feature `{feature}`")),
            "{run:?}"
        );
    }
}

#[test]
fn unknown_collections_and_records_are_runtime_errors() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    syncforge_with(&["put", arg(&store), "notes"], &docs("n", 2)).ok();

    let run = syncforge(&["ls", arg(&store), "tasks"]).fails(1);
    assert!(
        run.stderr
            .contains("has no collection \"tasks\" (its collections: notes)"),
        "{run:?}"
    );
    syncforge(&["get", arg(&store), "tasks", "n00000"]).fails(1);
    syncforge(&["export", arg(&store), "tasks"]).fails(1);
    syncforge(&["watch", arg(&store), "tasks"]).fails(1);
    let run = syncforge(&["sync", arg(&store), "memory:", "-c", "tasks"]).fails(1);
    assert!(run.stderr.contains("no collection \"tasks\""), "{run:?}");

    let run = syncforge(&["get", arg(&store), "notes", "n9"]).fails(1);
    assert!(run.stderr.contains("has no record \"n9\""), "{run:?}");
    syncforge(&["delete", arg(&store), "notes", "n9"]).fails(1);
}

/// A sync refused for a collection SRC lacks created DST's store first.
#[test]
fn a_refused_sync_creates_no_destination_store() {
    let dir = TempDir::new().unwrap();
    let phone = dir.path().join("phone");
    syncforge_with(&["put", arg(&phone), "notes"], &docs("n", 2)).ok();
    let typo = dir.path().join("lapotp");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for target in [&typo, &empty] {
        for both in [false, true] {
            let mut args = vec!["sync", arg(&phone), arg(target), "-c", "notez"];
            if both {
                args.push("--both");
            }
            let run = syncforge(&args).fails(1);
            assert!(run.stderr.contains("collection \"notez\""), "{run:?}");
        }
    }
    assert!(!typo.exists());
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    // Named rightly, the sync creates it.
    syncforge(&["sync", arg(&phone), arg(&typo), "-c", "notes"]).ok();
    let run = syncforge(&["ls", arg(&typo)]).ok();
    assert!(run.stdout.contains("notes"), "{run:?}");
}

#[test]
fn a_store_that_cannot_be_opened_is_a_runtime_error_with_its_cause() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let inside = file.join("store");
    let run = syncforge_with(&["put", arg(&inside), "notes"], "{\"id\": \"n1\"}").fails(1);
    let first = run.stderr.lines().next().unwrap();
    assert!(
        first.starts_with("error: cannot open the store "),
        "{run:?}"
    );
    assert!(run.stderr.contains("  caused by: "), "{run:?}");
}

#[test]
fn reading_a_store_that_is_not_there_creates_nothing() {
    let dir = TempDir::new().unwrap();
    let typo = dir.path().join("tpyo");
    for args in [
        vec!["ls", arg(&typo)],
        vec!["stats", arg(&typo)],
        vec!["export", arg(&typo), "notes"],
        vec!["sync", arg(&typo), "memory:"],
    ] {
        let run = syncforge(&args).fails(1);
        assert!(run.stderr.contains("there is no store at "), "{run:?}");
    }
    assert!(!typo.exists());
}

/// A file given where the store goes (`syncforge ls notes.jsonl`) was
/// reported as "no such directory", with the advice to create one by
/// `put`, which then failed on the file.
#[test]
fn a_file_where_the_store_goes_is_said_to_be_no_directory() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("notes.jsonl");
    std::fs::write(&file, "{\"id\": \"n1\"}\n").unwrap();
    for args in [
        vec!["ls", arg(&file)],
        vec!["export", arg(&file), "notes"],
        vec!["put", arg(&file), "notes"],
    ] {
        let run = syncforge_with(&args, "{\"id\": \"n2\"}").fails(1);
        assert!(run.stderr.contains("not a directory"), "{run:?}");
        assert!(!run.stderr.contains("no such directory"), "{run:?}");
    }
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "{\"id\": \"n1\"}\n"
    );
}

#[test]
fn reading_a_directory_that_holds_no_store_writes_nothing_into_it() {
    let dir = TempDir::new().unwrap();
    let plain = dir.path().join("photos");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("holiday.jpg"), "not a store").unwrap();
    std::fs::create_dir(plain.join("config")).unwrap();
    std::fs::write(plain.join("config").join("default.json"), "{\"id\": \"x\"}").unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for target in [&plain, &empty] {
        for args in [
            vec!["ls", arg(target)],
            vec!["stats", arg(target)],
            vec!["get", arg(target), "notes", "n1"],
            vec!["export", arg(target), "notes"],
            vec!["watch", arg(target), "notes", "--count", "1"],
            vec!["sync", arg(target), "memory:"],
        ] {
            let run = syncforge(&args).fails(1);
            assert!(
                run.stderr.contains("the directory holds none"),
                "{args:?}: {run:?}"
            );
        }
    }
    let entries = |dir: &std::path::Path| std::fs::read_dir(dir).unwrap().count();
    assert_eq!(entries(&plain), 2);
    assert_eq!(entries(&empty), 0);
    // A store is read as before, once something made it one.
    syncforge_with(&["put", arg(&empty), "notes"], &docs("n", 1)).ok();
    let run = syncforge(&["ls", arg(&empty)]).ok();
    assert!(run.stdout.contains("notes"), "{run:?}");
}

#[test]
fn one_store_cannot_sync_with_itself() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    syncforge_with(&["put", arg(&store), "notes"], &docs("n", 1)).ok();
    let run = syncforge(&["sync", arg(&store), arg(&store)]).fails(2);
    assert!(run.stderr.contains("same store"), "{run:?}");
}

/// A record file a read proves corrupt (edited by hand) is skipped by the
/// store with a warning: the CLI shows it on stderr, where it went nowhere
/// and an export silently left the record out, and the export fails once
/// the rest is written, where it succeeded (a backup taken that way lacked
/// the record).
#[test]
fn a_corrupt_record_file_skipped_by_an_export_is_shown_and_fails_it() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    syncforge_with(&["put", arg(&store), "notes"], &docs("n", 2)).ok();
    corrupt_n00000(&store);
    let run = syncforge(&["export", arg(&store), "notes"]).fails(1);
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("corrupt"), "{run:?}");
    assert!(run.stderr.contains("n00000.json"), "{run:?}");
    assert!(run.stderr.contains("1 corrupt record file(s)"), "{run:?}");
    // Removed, the file is no longer skipped: the export succeeds.
    std::fs::remove_file(store.join("notes").join("n00000.json")).unwrap();
    let repaired = syncforge(&["export", arg(&store), "notes"]).ok();
    assert_eq!(repaired.stdout.lines().count(), 1, "{repaired:?}");
}

/// A sync whose source skipped a corrupt record file synced the rest and
/// exited 0, its cursor past the record, which a backup taken with `sync`
/// then lacked for good: it fails once the rest is synced, as an export does.
#[test]
fn a_corrupt_record_file_skipped_by_a_sync_fails_it() {
    let dir = TempDir::new().unwrap();
    let (store, backup) = (dir.path().join("store"), dir.path().join("backup"));
    syncforge_with(&["put", arg(&store), "notes"], &docs("n", 2)).ok();
    corrupt_n00000(&store);
    let run = syncforge(&["sync", arg(&store), arg(&backup)]).fails(1);
    assert!(run.stderr.contains("n00000.json"), "{run:?}");
    assert!(
        run.stderr
            .contains("1 corrupt record file(s) remain in a store this sync read from"),
        "{run:?}"
    );
    // The rest was synced.
    let exported = syncforge(&["export", arg(&backup), "notes"]).ok();
    assert_eq!(exported.stdout.lines().count(), 1, "{exported:?}");
}

/// A corrupt record file of the receiving end, which the sync reads as
/// absent and writes over (moving it aside), is healed: that sync carried
/// the record, and succeeds.
#[test]
fn a_sync_that_heals_a_corrupt_file_of_its_destination_succeeds() {
    let dir = TempDir::new().unwrap();
    let (store, backup) = (dir.path().join("store"), dir.path().join("backup"));
    syncforge_with(&["put", arg(&store), "notes"], &docs("n", 2)).ok();
    syncforge(&["sync", arg(&store), arg(&backup)]).ok();
    corrupt_n00000(&backup);
    syncforge_with(
        &["put", arg(&store), "notes"],
        r#"{"id": "n00000", "n": 5}"#,
    )
    .ok();
    let run = syncforge(&["sync", arg(&store), arg(&backup)]).ok();
    assert!(run.stderr.contains("n00000.json"), "{run:?}");
    let healed = syncforge(&["get", arg(&backup), "notes", "n00000"]).ok();
    assert!(healed.stdout.contains("\"n\": 5"), "{healed:?}");
    // Both ways, the destination's feed is read too, and healed all the same.
    corrupt_n00000(&backup);
    syncforge_with(
        &["put", arg(&store), "notes"],
        r#"{"id": "n00000", "n": 6}"#,
    )
    .ok();
    syncforge(&["sync", arg(&store), arg(&backup), "--both"]).ok();
    let healed = syncforge(&["get", arg(&backup), "notes", "n00000"]).ok();
    assert!(healed.stdout.contains("\"n\": 6"), "{healed:?}");
}

/// `import` with no FILE and a terminal on stdin waited in silence for input
/// nobody was typing: a usage error says what to give it.
#[test]
fn an_import_with_no_input_on_a_terminal_is_a_usage_error() {
    let line = format!("{} import memory: notes", env!("CARGO_BIN_EXE_syncforge"));
    let run = on_a_terminal(&line);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.contains("no input"), "{run:?}");
}

/// Overwrites record n00000 of collection "notes" of the store at `store`
/// with a record of another id, which a read proves corrupt.
fn corrupt_n00000(store: &std::path::Path) {
    std::fs::write(
        store.join("notes").join("n00000.json"),
        br#"{"id": "someone else"}"#,
    )
    .unwrap();
}
