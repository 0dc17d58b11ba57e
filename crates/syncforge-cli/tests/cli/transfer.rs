//! `export` and `import`, and the TypeScript original's files.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use tempfile::TempDir;

use crate::support::{arg, counts, docs, export, syncforge, syncforge_with};

#[test]
fn an_export_imports_into_another_store_and_an_import_can_be_repeated() {
    let dir = TempDir::new().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    syncforge_with(&["put", arg(&a), "notes"], &docs("n", 20)).ok();
    syncforge(&["delete", arg(&a), "notes", "n00003"]).ok();
    let exported = export(&a, "notes");
    assert_eq!(exported.lines().count(), 20);
    // Sorted by id: converged replicas export the same bytes.
    let ids: Vec<String> = exported
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["id"].to_string())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);

    let first = syncforge_with(&["import", arg(&b), "notes", "--json"], &exported).ok();
    let line = &first.json_lines()[0];
    assert_eq!(line["records"], 20);
    assert_eq!(counts(line), [19, 0, 1, 0, 0]);
    assert_eq!(export(&b, "notes"), exported);

    let again = syncforge_with(&["import", arg(&b), "notes"], &exported).ok();
    assert_eq!(
        again.stdout,
        "notes: 20 records: 0 added, 0 updated, 0 deleted, 20 unchanged, 0 conflicts\n"
    );

    // A file works as well as stdin, and a JSON array as well as JSON Lines.
    let file = dir.path().join("notes.json");
    let array: Vec<serde_json::Value> = exported
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    std::fs::write(&file, serde_json::to_string_pretty(&array).unwrap()).unwrap();
    let c = dir.path().join("c");
    syncforge(&["import", arg(&c), "notes", arg(&file)]).ok();
    assert_eq!(export(&c, "notes"), exported);
}

#[test]
fn an_import_repeating_ids_says_how_many_distinct_ids_its_counts_add_up_to() {
    let dir = TempDir::new().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    syncforge_with(&["put", arg(&a), "notes"], &docs("n", 3)).ok();
    let exported = export(&a, "notes");
    let twice = format!("{exported}{exported}");
    let run = syncforge_with(&["import", arg(&b), "notes"], &twice).ok();
    assert_eq!(
        run.stdout,
        "notes: 6 records, 3 distinct ids: \
         3 added, 0 updated, 0 deleted, 0 unchanged, 0 conflicts\n"
    );
    let run = syncforge_with(&["import", arg(&b), "notes", "--json"], &twice).ok();
    let line = &run.json_lines()[0];
    assert_eq!(
        (line["records"].as_u64(), line["ids"].as_u64()),
        (Some(6), Some(3))
    );
    assert_eq!(counts(line), [0, 0, 0, 3, 0]);
    assert_eq!(export(&b, "notes"), exported);
}

#[test]
fn a_malformed_line_refuses_the_whole_import_with_its_number() {
    let dir = TempDir::new().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    syncforge_with(&["put", arg(&a), "notes"], &docs("n", 5)).ok();
    let mut lines: Vec<String> = export(&a, "notes").lines().map(str::to_owned).collect();
    lines[2] = "{\"id\": \"broken\", ".to_owned();
    lines.insert(4, "{\"id\": \"no-metadata\"}".to_owned());
    let input = lines.join("\n");

    let run = syncforge_with(&["import", arg(&b), "notes"], &input).fails(1);
    assert!(
        run.stderr
            .contains("stdin has 2 faults; nothing was written"),
        "{run:?}"
    );
    assert!(run.stderr.contains("\n  line 3: "), "{run:?}");
    assert!(run.stderr.contains("\n  line 5: "), "{run:?}");
    assert!(run.stderr.contains("no-metadata"), "{run:?}");
    assert!(!b.exists(), "nothing written, not even the store");

    let array = "[\n{\"id\": \"a\", \"_version\": 1, \"_timestamp\": 5, \"_clientId\": \"x\"},\n{\"id\": 7}\n]";
    let run = syncforge_with(&["import", arg(&b), "notes"], array).fails(1);
    assert!(run.stderr.contains("\n  line 3: "), "{run:?}");
    assert!(!b.exists(), "nothing written, not even the store");
}

#[test]
fn records_stamped_far_in_the_future_are_refused_before_any_write() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let input = format!(
        "{}\n{}\n",
        json!({"id": "ok", "_version": 1, "_timestamp": now, "_clientId": "a", "_deleted": false}),
        json!({"id": "ahead", "_version": 1, "_timestamp": now + 3_600_000, "_clientId": "a", "_deleted": false}),
    );
    let run = syncforge_with(&["import", arg(&store), "notes"], &input).fails(1);
    assert!(run.stderr.contains("line 2: clock drift"), "{run:?}");
    assert!(run.stderr.contains("ahead"), "{run:?}");
    assert!(!store.exists(), "nothing written, not even the store");
}

/// A record counting more writes than a sync accepts is a fault of its
/// line, found before anything is written: the engine refused it only once
/// the collections before it were written.
#[test]
fn records_counting_more_writes_than_a_sync_accepts_are_refused_before_any_write() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    let input = format!(
        "{}\n{}\n",
        json!({"id": "ok", "_version": 1, "_timestamp": 5, "_clientId": "a", "_deleted": false}),
        json!({"id": "pinned", "_version": 9_007_199_254_740_991u64, "_timestamp": 5, "_clientId": "a", "_deleted": false}),
    );
    let run = syncforge_with(&["import", arg(&store), "notes"], &input).fails(1);
    assert!(run.stderr.contains("line 2: "), "{run:?}");
    assert!(run.stderr.contains("pinned"), "{run:?}");
    assert!(!store.exists(), "nothing written, not even the store");
}

/// One record file as the TypeScript original's filesystem backend writes it.
fn write_original(dir: &Path, file: &str, record: &serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join(file),
        serde_json::to_string_pretty(record).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_store_directory_of_the_typescript_original_imports_with_one_command() {
    let dir = TempDir::new().unwrap();
    let original = dir.path().join("local-data");
    let inspections = original.join("inspections");
    write_original(
        &inspections,
        "insp-001.json",
        &json!({"id": "insp-001", "equipmentId": "pump-7", "status": "needs-repair",
               "notes": "Bearing noise detected", "_version": 2, "_timestamp": 1_709_654_321_000u64,
               "_deleted": false, "_clientId": "technician-42"}),
    );
    // The original's lossy file names: the id inside the file is what counts.
    write_original(
        &inspections,
        "insp_002.json",
        &json!({"id": "insp/002", "status": "ok", "_version": 1, "_timestamp": 1_709_654_000_000u64,
               "_deleted": false, "_clientId": "technician-42"}),
    );
    write_original(
        &inspections,
        "insp-003.json",
        &json!({"id": "insp-003", "status": "ok", "_version": 3, "_timestamp": 1_709_654_400_000u64,
               "_deleted": true, "_clientId": "technician-7"}),
    );
    write_original(
        &original.join("readings"),
        "r-1.json",
        &json!({"id": "r-1", "temperature": 21.5, "location": "warehouse-3", "_version": 1,
               "_timestamp": 1_709_654_000_500u64, "_deleted": false, "_clientId": "sensor-3"}),
    );
    // A record whose id starts with a dot was skipped as a hidden file.
    write_original(
        &original.join("readings"),
        ".r-2.json",
        &json!({"id": ".r-2", "temperature": 20.0, "_version": 1,
               "_timestamp": 1_709_654_000_600u64, "_deleted": false, "_clientId": "sensor-3"}),
    );
    write_original(
        &original.join("readings"),
        "._r-3.json",
        &json!({"id": "._r-3", "temperature": 19.0, "_version": 1,
               "_timestamp": 1_709_654_000_700u64, "_deleted": false, "_clientId": "sensor-3"}),
    );
    // Not records: left alone (a hidden directory with a warning, and the
    // file macOS writes beside a copied one, told by its first bytes).
    std::fs::write(inspections.join("notes.txt"), "not a record").unwrap();
    std::fs::write(
        original.join("readings").join("._r-1.json"),
        b"\0\x05\x16\x07",
    )
    .unwrap();
    std::fs::create_dir_all(original.join(".cache")).unwrap();

    let store = dir.path().join("store");
    let run = syncforge(&["import", arg(&store), "--store-dir", arg(&original)]).ok();
    assert_eq!(
        run.stdout,
        "inspections: 3 records: 2 added, 0 updated, 1 deleted, 0 unchanged, 0 conflicts\n\
         readings: 3 records: 3 added, 0 updated, 0 deleted, 0 unchanged, 0 conflicts\n"
    );
    assert!(
        run.stderr.contains("skipping") && run.stderr.contains(".cache"),
        "{run:?}"
    );
    let insp = syncforge(&["get", arg(&store), "inspections", "insp-001", "--json"])
        .ok()
        .json();
    assert_eq!(insp["status"], "needs-repair");
    assert_eq!(insp["_version"], 2);
    assert_eq!(insp["_timestamp"], 1_709_654_321_000u64);
    assert_eq!(insp["_clientId"], "technician-42");
    let slash = syncforge(&["get", arg(&store), "inspections", "insp/002", "--json"]).ok();
    assert_eq!(slash.json()["status"], "ok");
    assert_eq!(
        syncforge(&["ls", arg(&store), "inspections"]).ok().stdout,
        "insp-001\ninsp-003  (deleted)\ninsp/002\n"
    );

    // Repeating the import changes nothing; so does importing one
    // collection directory on its own.
    let again = syncforge(&[
        "import",
        arg(&store),
        "--store-dir",
        arg(&original),
        "--json",
    ])
    .ok();
    assert!(!again.json_lines().is_empty(), "{again:?}");
    for line in again.json_lines() {
        let [added, updated, deleted, _, _] = counts(&line);
        assert_eq!((added, updated, deleted), (0, 0, 0), "{line}");
    }
    let one = syncforge(&[
        "import",
        arg(&store),
        "inspections",
        arg(&inspections),
        "--json",
    ])
    .ok();
    assert_eq!(counts(&one.json_lines()[0]), [0, 0, 0, 3, 0]);

    // A malformed file refuses the whole import, naming the file.
    write_original(
        &original.join("zz"),
        "bad.json",
        &json!({"id": "x", "_version": "one"}),
    );
    let store2 = dir.path().join("store2");
    let refused = syncforge(&["import", arg(&store2), "--store-dir", arg(&original)]).fails(1);
    assert!(refused.stderr.contains("bad.json"), "{refused:?}");
    assert!(!store2.exists(), "nothing written, not even the store");
}

/// A command that writes finishes its writes when its reader stops reading
/// (`syncforge put .. | head -1`): it stopped part-way before, with exit 0.
#[test]
fn a_put_whose_reader_stops_early_still_puts_every_record() {
    use std::io::BufReader;
    use std::time::Duration;

    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a");
    // The whole input is read before anything is written or printed.
    let command = crate::support::command(&["put", arg(&a), "notes"]);
    let mut child = crate::support::spawned(command, &docs("n", 3_000));
    let (_first, reader) = syncforge_testkit::processes::read_line(
        BufReader::new(child.stdout.take().unwrap()),
        Duration::from_secs(60),
    )
    .unwrap();
    // The reader stops here.
    drop(reader);
    let output = syncforge_testkit::processes::finish(child, Duration::from_secs(120)).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert_eq!(stderr, "");
    assert_eq!(export(&a, "notes").lines().count(), 3_000);
}

/// A put whose output fails otherwise than by its reader leaving (a full
/// disk) stops there, and says how many records it put: the store holds
/// them, which the error did not say.
#[cfg(target_os = "linux")]
#[test]
fn a_put_whose_output_fails_says_how_many_records_it_put() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a");
    let stderr = into_a_full_disk(&["put", arg(&a), "notes"], &docs("n", 3_000));
    let said = stderr
        .split(" of the 3000 records were put before the output failed")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|count| count.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no count of records put: {stderr}"));
    assert!(0 < said && said < 3_000, "{stderr}");
    assert_eq!(export(&a, "notes").lines().count(), said);

    // A put whose output was all buffered when the last record went in
    // says so too.
    let stderr = into_a_full_disk(&["put", arg(&a), "small"], &docs("s", 1));
    assert!(
        stderr.contains("1 of the 1 records were put before the output failed"),
        "{stderr}"
    );
}

/// A writing command whose output fails otherwise than by its reader
/// leaving stops, and says what it wrote: an import or a sync the
/// collections it finished, a delete that it deleted.
#[cfg(target_os = "linux")]
#[test]
fn a_write_whose_output_fails_says_what_it_wrote() {
    let dir = TempDir::new().unwrap();
    let original = dir.path().join("original");
    for collection in ["first", "second"] {
        write_original(
            &original.join(collection),
            "r-1.json",
            &json!({"id": "r-1", "_version": 1, "_timestamp": 1_709_654_000_500u64,
                   "_deleted": false, "_clientId": "sensor-3"}),
        );
    }
    let store = dir.path().join("store");
    let stderr = into_a_full_disk(&["import", arg(&store), "--store-dir", arg(&original)], "");
    assert!(
        stderr.contains(
            "1 of the 2 collections were imported before the output failed (the last: \"first\")"
        ),
        "{stderr}"
    );
    assert_eq!(export(&store, "first").lines().count(), 1);
    // The rest, imported again with somewhere to print.
    syncforge(&["import", arg(&store), "--store-dir", arg(&original)]).ok();

    let copy = dir.path().join("copy");
    let stderr = into_a_full_disk(&["sync", arg(&store), arg(&copy)], "");
    assert!(
        stderr.contains(
            "1 of the 2 collections were synced before the output failed (the last: \"first\")"
        ),
        "{stderr}"
    );
    assert_eq!(export(&copy, "first").lines().count(), 1);

    let stderr = into_a_full_disk(&["delete", arg(&store), "first", "r-1"], "");
    assert!(
        stderr.contains("record \"r-1\" was deleted before the output failed"),
        "{stderr}"
    );
    let deleted = syncforge(&["get", arg(&store), "first", "r-1", "--json"])
        .ok()
        .json();
    assert_eq!(deleted["_deleted"], true);
}

/// Runs the binary with `args`, `input` on stdin and stdout on a full disk
/// (`/dev/full`); the command must fail with exit code 1. Its stderr.
#[cfg(target_os = "linux")]
fn into_a_full_disk(args: &[&str], input: &str) -> String {
    use std::io::Write as _;
    use std::process::Stdio;
    use std::time::Duration;

    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut child = crate::support::command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(full))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let output = syncforge_testkit::processes::finish(child, Duration::from_secs(120)).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

/// A reader that stops reading (`syncforge export .. | head -1`) ends the
/// export quietly with exit code 0: the rest is the reader's choice not to
/// read, not a failure.
#[test]
fn an_export_whose_reader_stops_early_ends_quietly() {
    use std::io::BufReader;
    use std::process::Stdio;
    use std::time::Duration;

    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a");
    // Far more than a pipe holds, so the export is still writing when the
    // reader goes.
    syncforge_with(&["put", arg(&a), "notes"], &docs("n", 3_000)).ok();
    let mut child = crate::support::command(&["export", arg(&a), "notes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (first, reader) = syncforge_testkit::processes::read_line(
        BufReader::new(child.stdout.take().unwrap()),
        Duration::from_secs(60),
    )
    .unwrap();
    // The reader stops here.
    drop(reader);
    assert!(first.contains("\"id\""), "{first}");
    let output = syncforge_testkit::processes::finish(child, Duration::from_secs(120)).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert_eq!(stderr, "");
}
