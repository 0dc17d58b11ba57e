//! `ls`, `get`, `put` and `delete`.

use serde_json::json;
use tempfile::TempDir;

use crate::support::{arg, syncforge, syncforge_with};

#[test]
fn put_get_ls_delete() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    let put = syncforge_with(
        &["put", arg(&store), "notes"],
        "{\"id\": \"n1\", \"title\": \"Q3\"}",
    )
    .ok();
    // The human form is pretty JSON over several lines.
    assert!(put.stdout.lines().count() > 5, "{put:?}");
    let stored: serde_json::Value = serde_json::from_str(&put.stdout).unwrap();
    assert_eq!(stored["title"], "Q3");
    assert_eq!(stored["_version"], 1);

    let got = syncforge(&["get", arg(&store), "notes", "n1", "--json"]).ok();
    assert_eq!(got.stdout.lines().count(), 1, "compact with --json");
    assert_eq!(got.json(), stored);

    // A record printed by `get` can be edited and put back.
    let mut edited = got.json();
    edited["title"] = json!("Q4");
    syncforge_with(&["put", arg(&store), "notes"], &edited.to_string()).ok();
    let got = syncforge(&["get", arg(&store), "notes", "n1", "--json"]).ok();
    assert_eq!(got.json()["title"], "Q4");
    assert_eq!(got.json()["_version"], 2);

    syncforge_with(
        &["put", arg(&store), "notes"],
        "[{\"id\": \"n2\"}, {\"id\": \"n3\"}]",
    )
    .ok();
    assert_eq!(syncforge(&["ls", arg(&store)]).ok().stdout, "notes\n");
    assert_eq!(
        syncforge(&["ls", arg(&store), "notes"]).ok().stdout,
        "n1\nn2\nn3\n"
    );

    let deleted = syncforge(&["delete", arg(&store), "notes", "n2", "--json"]).ok();
    assert_eq!(deleted.json()["_deleted"], true);
    assert_eq!(
        syncforge(&["ls", arg(&store), "notes"]).ok().stdout,
        "n1\nn2  (deleted)\nn3\n"
    );
    let listed = syncforge(&["ls", arg(&store), "notes", "--json"])
        .ok()
        .json();
    assert_eq!(listed[1]["id"], "n2");
    assert_eq!(listed[1]["deleted"], true);
    assert_eq!(
        syncforge(&["ls", arg(&store), "--json"]).ok().json(),
        json!(["notes"])
    );
}

#[test]
fn put_checks_all_of_its_input_before_writing() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    let run = syncforge_with(
        &["put", arg(&store), "notes"],
        "{\"id\": \"a\"}\n{\"title\": \"no id\"}\n{\"id\": \"c\"}\n",
    )
    .fails(1);
    assert!(run.stderr.contains("line 2:"), "{run:?}");
    assert!(run.stderr.contains("nothing was written"), "{run:?}");
    assert!(!store.exists(), "nothing written, not even the store");

    let empty = syncforge_with(&["put", arg(&store), "notes"], "\n").fails(1);
    assert!(empty.stderr.contains("holds no record"), "{empty:?}");
}

#[test]
fn a_memory_store_lives_for_one_command() {
    let put = syncforge_with(&["put", "memory:", "notes", "--json"], "{\"id\": \"n1\"}").ok();
    assert_eq!(put.json()["id"], "n1");
    assert_eq!(syncforge(&["ls", "memory:"]).ok().stdout, "");
}

#[test]
fn the_client_id_can_be_chosen() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("store");
    let put = syncforge_with(
        &[
            "put",
            arg(&store),
            "notes",
            "--json",
            "--client-id",
            "ops-laptop",
        ],
        "{\"id\": \"n1\"}",
    )
    .ok();
    assert_eq!(put.json()["_clientId"], "ops-laptop");
}
