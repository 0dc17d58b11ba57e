//! Offline-first: two devices and a server. Both devices edit while offline,
//! then reconnect and exchange only what changed, through JSON as a real
//! transport would. Every replica ends byte-identical, with every edit kept.
//!
//! Run with `cargo run -p syncforge --example offline_first`.
#![allow(clippy::print_stdout)]

use serde_json::json;
use syncforge::{ConflictStrategy, Cursor, PageOptions, Record, SyncEngine, SyncResult};

/// A device's link to the server: how far it has read each side's change feed.
#[derive(Default)]
struct Link {
    device_cursor: Cursor,
    server_cursor: Cursor,
}

/// Sends the device's changes to the server and the server's to the device,
/// incrementally, as JSON text.
async fn exchange(
    name: &str,
    device: &SyncEngine,
    server: &SyncEngine,
    link: &mut Link,
) -> syncforge::Result<()> {
    let up = device
        .changes(
            "notes",
            link.device_cursor,
            PageOptions::default().limit(1000),
        )
        .await?;
    let wire = to_wire(&up.records().cloned().collect::<Vec<_>>());
    let pushed = server.sync("notes", from_wire(&wire)?).await?;
    link.device_cursor = up.next;
    report(&format!("{name} -> server"), &pushed, wire.len());

    let down = server
        .changes(
            "notes",
            link.server_cursor,
            PageOptions::default().limit(1000),
        )
        .await?;
    let wire = to_wire(&down.records().cloned().collect::<Vec<_>>());
    let pulled = device.sync("notes", from_wire(&wire)?).await?;
    link.server_cursor = down.next;
    report(&format!("server -> {name}"), &pulled, wire.len());
    Ok(())
}

fn to_wire(records: &[Record]) -> String {
    serde_json::to_string(records).unwrap_or_else(|_| "[]".to_owned())
}

fn from_wire(text: &str) -> syncforge::Result<Vec<Record>> {
    serde_json::from_str(text)
        .map_err(|e| syncforge::Error::invalid_record(None, format!("bad payload: {e}")))
}

fn report(direction: &str, result: &SyncResult, bytes: usize) {
    println!(
        "  {direction:<16} {bytes:>5} bytes: +{} added, ~{} updated, -{} deleted, {} unchanged, {} conflict(s)",
        result.added,
        result.updated,
        result.deleted,
        result.unchanged,
        result.conflicts.len()
    );
    for conflict in &result.conflicts {
        println!(
            "    conflict on {}: fields {:?} -> kept {}",
            conflict.record_id,
            conflict.fields_conflicted,
            serde_json::Value::Object(conflict.resolved_record.content())
        );
    }
}

async fn replica(id: &str) -> syncforge::Result<SyncEngine> {
    SyncEngine::builder()
        .client_id(id)
        .conflict_strategy(ConflictStrategy::Crdt)
        .build()
        .await
}

async fn print_notes(name: &str, engine: &SyncEngine) -> syncforge::Result<String> {
    let mut notes = engine.get_all("notes").await?;
    notes.sort_by(|a, b| a.id().cmp(b.id()));
    println!("{name}:");
    for note in &notes {
        let state = if note.is_deleted() { " (deleted)" } else { "" };
        println!("  {}{state}", serde_json::Value::Object(note.content()));
    }
    Ok(notes
        .iter()
        .map(Record::to_json_string)
        .collect::<Vec<_>>()
        .join("\n"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> syncforge::Result<()> {
    let server = replica("server").await?;
    let phone = replica("phone").await?;
    let laptop = replica("laptop").await?;
    let (mut phone_link, mut laptop_link) = (Link::default(), Link::default());

    println!("1. The server holds three notes; both devices sync while online.");
    server
        .put(
            "notes",
            &json!({"id": "n1", "title": "Meeting Notes", "body": "Discuss Q3 targets"}),
        )
        .await?;
    server
        .put(
            "notes",
            &json!({"id": "n2", "title": "Groceries", "body": "milk"}),
        )
        .await?;
    server
        .put(
            "notes",
            &json!({"id": "n3", "title": "Old idea", "body": "..."}),
        )
        .await?;
    exchange("phone", &phone, &server, &mut phone_link).await?;
    exchange("laptop", &laptop, &server, &mut laptop_link).await?;

    println!("2. Offline edits:");
    println!("   laptop renames n1 and adds n4; phone extends n1's body, deletes n3 and edits n2");
    laptop
        .put(
            "notes",
            &json!({"id": "n1", "title": "Q3 Planning Notes", "body": "Discuss Q3 targets"}),
        )
        .await?;
    laptop
        .put(
            "notes",
            &json!({"id": "n4", "title": "Laptop-only note", "body": "written on a train"}),
        )
        .await?;
    phone.put("notes", &json!({"id": "n1", "title": "Meeting Notes", "body": "Discuss Q3 targets\n- Revenue goals"})).await?;
    phone.delete("notes", "n3").await?;
    phone
        .put(
            "notes",
            &json!({"id": "n2", "title": "Groceries", "body": "milk, eggs"}),
        )
        .await?;

    println!("3. Back online: each device exchanges only its changes with the server.");
    exchange("phone", &phone, &server, &mut phone_link).await?;
    exchange("laptop", &laptop, &server, &mut laptop_link).await?;
    exchange("phone", &phone, &server, &mut phone_link).await?;

    println!("4. Result:");
    let s = print_notes("server", &server).await?;
    let p = print_notes("phone", &phone).await?;
    let l = print_notes("laptop", &laptop).await?;
    println!("all three replicas byte-identical: {}", s == p && p == l);
    Ok(())
}
