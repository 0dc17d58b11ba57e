//! Offline-first: two devices and a server. Both devices edit while offline,
//! then reconnect and exchange only what changed, through JSON as a real
//! transport would. Every replica ends byte-identical, with every edit kept.
//!
//! This shows the parts at work: change feeds read after a cursor, records
//! as JSON, `sync` merging them. An application does not write this loop:
//! `engine.sync_with(&peer, "notes")` does it, with the cursors kept in the
//! store and a server's feed id checked, in process or over HTTP with an
//! `HttpPeer` (the `field_service` example of `syncforge-http`).
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
    let up = format!("{name} -> server");
    send(device, server, &mut link.device_cursor, &up).await?;
    let down = format!("server -> {name}");
    send(server, device, &mut link.server_cursor, &down).await
}

/// Sends `from`'s changes after `cursor` to `to`, a page at a time until
/// the feed has no more, moving `cursor` past each page once it is merged.
async fn send(
    from: &SyncEngine,
    to: &SyncEngine,
    cursor: &mut Cursor,
    direction: &str,
) -> syncforge::Result<()> {
    loop {
        let page = from
            .changes("notes", *cursor, PageOptions::default().limit(1000))
            .await?;
        let wire = to_wire(&page.records().cloned().collect::<Vec<_>>())?;
        let merged = to.sync("notes", from_wire(&wire)?).await?;
        *cursor = page.next;
        report(direction, &merged, wire.len());
        if !page.more {
            return Ok(());
        }
    }
}

fn to_wire(records: &[Record]) -> syncforge::Result<String> {
    // An error, not an empty page: the cursor must not move past records
    // that were never sent.
    serde_json::to_string(records)
        .map_err(|e| syncforge::Error::invalid_record(None, format!("cannot encode: {e}")))
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

/// `Ok` when `claim` holds, else an error saying what did not.
fn check(claim: bool, what: &str) -> Result<(), String> {
    if claim {
        Ok(())
    } else {
        Err(format!("not so: {what}"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    check(s == p && p == l, "the three replicas are byte-identical")?;
    let note = |id: &'static str| {
        let server = server.clone();
        async move { server.get("notes", id).await }
    };
    let n1 = note("n1").await?.map(|r| r.content()).unwrap_or_default();
    check(
        n1.get("title") == Some(&json!("Q3 Planning Notes"))
            && n1.get("body") == Some(&json!("Discuss Q3 targets\n- Revenue goals")),
        "n1 keeps the laptop's title and the phone's body",
    )?;
    let n2 = note("n2").await?.map(|r| r.content()).unwrap_or_default();
    check(
        n2.get("body") == Some(&json!("milk, eggs")),
        "n2 keeps the phone's edit",
    )?;
    check(
        note("n3").await?.is_some_and(|r| r.is_deleted()),
        "n3 is deleted",
    )?;
    check(
        note("n4").await?.is_some_and(|r| !r.is_deleted()),
        "n4, written on the laptop, is everywhere",
    )?;
    println!("all three replicas byte-identical, every edit kept");
    Ok(())
}
