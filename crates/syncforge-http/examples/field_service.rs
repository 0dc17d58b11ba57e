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

#[tokio::main]
async fn main() -> syncforge::Result<()> {
    let dirs = tempfile::tempdir()
        .map_err(|e| syncforge::Error::storage("example", format!("no temp dir: {e}")))?;
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
    let link = HttpPeer::builder(format!("http://{address}"))
        .peer_id("office")
        .bearer_token(TABLET_TOKEN)
        .timeout(Duration::from_secs(10))
        .user_agent("field-app/1.0")
        .build()?;
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
        other => println!("unexpected: {other:?}"),
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

    // The tablet app restarts: its cursors are on its filesystem store, so
    // the next sync moves nothing.
    tablet.close().await?;
    let tablet = open("technician-42", &tablet_dir).await?;
    let report = tablet.sync_with(&link, "inspections").await?;
    println!(
        "after a restart: pushed {}, pulled {}",
        report.pushed,
        report.pulled.total()
    );

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
    if let Err(error) = viewer.sync_with(&dashboard, "inspections").await {
        println!("a read-only token cannot push: {error}");
    }

    let on_tablet = tablet.get("inspections", "insp-001").await?;
    let at_office = office.get("inspections", "insp-001").await?;
    if let Some(record) = &on_tablet {
        println!("insp-001 on the tablet: {}", record.to_json_string());
    }
    println!(
        "tablet and office agree byte for byte: {}",
        on_tablet.map(|r| r.to_json_string()) == at_office.map(|r| r.to_json_string())
    );
    server.shutdown().await?;
    tablet.close().await?;
    office.close().await
}
