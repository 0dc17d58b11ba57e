//! The field-service story, end to end over HTTP: a technician's tablet
//! logs inspections on its filesystem store at a site without coverage,
//! then syncs with the company's server back at the office — the server
//! the original README left every user to write.
//!
//! Run with `cargo run -p syncforge-http --features server,client --example field_service`.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use syncforge::http::{AccessToken, HttpPeer, Server, ServerOptions};
use syncforge::{ConflictStrategy, FsBackend, SyncEngine};

const TABLET_TOKEN: &str = "tablet-42-secret";
const DASHBOARD_TOKEN: &str = "dashboard-secret";

async fn open(client: &str, dir: &Path) -> syncforge::Result<SyncEngine> {
    SyncEngine::builder()
        .client_id(client)
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend(FsBackend::open(dir).await?)
        .build()
        .await
}

fn options() -> ServerOptions {
    ServerOptions::default()
        .token(AccessToken::read_write(TABLET_TOKEN).collections(["inspections"]))
        .token(AccessToken::read_only(DASHBOARD_TOKEN))
}

/// The tablet's link to the office server at `address`.
fn office_link(address: std::net::SocketAddr) -> syncforge::Result<HttpPeer> {
    HttpPeer::builder(format!("http://{address}"))
        .peer_id("office")
        .bearer_token(TABLET_TOKEN)
        .timeout(Duration::from_secs(10))
        .user_agent("field-app/1.0")
        .build()
}

/// `Ok` when `claim` holds, else an error saying what did not.
fn check(claim: bool, what: &str) -> Result<(), String> {
    if claim {
        Ok(())
    } else {
        Err(format!("not so: {what}"))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dirs = tempfile::tempdir()?;
    let (office_dir, tablet_dir) = (dirs.path().join("office"), dirs.path().join("tablet"));

    // The company server: an engine on the filesystem, served over HTTP.
    let office = open("office", &office_dir).await?;
    let server = Server::bind(office.clone(), "127.0.0.1:0", options()).await?;
    let address = server.local_addr();
    println!("office server at {}", server.url());
    // Out in the field the office is out of reach.
    server.shutdown().await?;
    office.close().await?;

    // On the tablet: works offline with filesystem persistence.
    let tablet = open("technician-42", &tablet_dir).await?;
    let link = office_link(address)?;
    tablet
        .put(
            "inspections",
            &json!({"id": "insp-001", "equipmentId": "pump-7", "status": "needs-repair", "notes": "Bearing noise detected"}),
        )
        .await?;
    tablet
        .put(
            "inspections",
            &json!({"id": "insp-002", "equipmentId": "valve-3", "status": "ok"}),
        )
        .await?;
    match tablet.sync_with(&link, "inspections").await {
        Err(error) if error.is_transient() => {
            println!("at the site: no coverage, sync postponed ({error})");
        }
        other => return Err(format!("the office was down, yet: {other:?}").into()),
    }

    // Back at the office: the server is up (same store, same address), and
    // a dispatcher has already scheduled a follow-up on it.
    let office = open("office", &office_dir).await?;
    office
        .put(
            "inspections",
            &json!({"id": "insp-003", "equipmentId": "pump-7", "status": "scheduled", "assignee": "technician-42"}),
        )
        .await?;
    let server = Server::bind(office.clone(), address, options()).await?;
    let report = tablet.sync_with(&link, "inspections").await?;
    println!(
        "back at the office: pushed {}, pulled {} new ({} records looked at)",
        report.pushed,
        report.pulled.added,
        report.pulled.total()
    );
    check(
        (report.pushed, report.pulled.added) == (2, 1),
        "the two inspections went up and the follow-up came down",
    )?;

    // The dispatcher adds a part number while the technician closes the
    // ticket on the tablet: different fields, both kept.
    let mut on_server = office
        .get("inspections", "insp-001")
        .await?
        .map(|r| r.content())
        .unwrap_or_default();
    on_server.insert("part".to_owned(), json!("bearing-6204"));
    office
        .put("inspections", &serde_json::Value::Object(on_server))
        .await?;
    tablet
        .put(
            "inspections",
            &json!({"id": "insp-001", "equipmentId": "pump-7", "status": "repaired", "notes": "Bearing noise detected"}),
        )
        .await?;
    let report = tablet.sync_with(&link, "inspections").await?;
    println!(
        "second sync: pushed {}, pulled {} (echoes of its own writes skipped: {})",
        report.pushed,
        report.pulled.total(),
        report.echoes_skipped
    );

    // The tablet app restarts, with a new link: its cursors are on its
    // filesystem store, so the next sync sends nothing and takes nothing
    // new (the office's copy of the tablet's last push comes back once,
    // and is found unchanged).
    tablet.close().await?;
    let tablet = open("technician-42", &tablet_dir).await?;
    let link = office_link(address)?;
    let report = tablet.sync_with(&link, "inspections").await?;
    let pulled = &report.pulled;
    println!(
        "after a restart: pushed {}, pulled {} ({} unchanged)",
        report.pushed,
        pulled.total(),
        pulled.unchanged
    );
    check(
        (
            report.pushed,
            pulled.added + pulled.updated + pulled.deleted,
        ) == (0, 0),
        "a sync after a restart moves nothing",
    )?;

    // The dashboard's token reads but may not write.
    let dashboard = HttpPeer::builder(server.url())
        .bearer_token(DASHBOARD_TOKEN)
        .build()?;
    println!("the dashboard sees {:?}", dashboard.collections().await?);
    let viewer = SyncEngine::builder().client_id("dashboard").build().await?;
    viewer
        .put(
            "inspections",
            &json!({"id": "insp-999", "status": "forged"}),
        )
        .await?;
    match viewer.sync_with(&dashboard, "inspections").await {
        Err(error) => println!("a read-only token cannot push: {error}"),
        Ok(report) => return Err(format!("a read-only token pushed: {report:?}").into()),
    }

    let on_tablet = tablet.get("inspections", "insp-001").await?;
    let at_office = office.get("inspections", "insp-001").await?;
    if let Some(record) = &on_tablet {
        println!("insp-001 on the tablet: {}", record.to_json_string());
    }
    let closed = on_tablet.as_ref().map(|r| r.content()).unwrap_or_default();
    check(
        closed.get("status") == Some(&json!("repaired"))
            && closed.get("part") == Some(&json!("bearing-6204")),
        "insp-001 keeps the technician's status and the dispatcher's part",
    )?;
    check(
        on_tablet.map(|r| r.to_json_string()) == at_office.map(|r| r.to_json_string()),
        "tablet and office agree byte for byte",
    )?;
    println!("tablet and office agree byte for byte");
    server.shutdown().await?;
    tablet.close().await?;
    Ok(office.close().await?)
}
