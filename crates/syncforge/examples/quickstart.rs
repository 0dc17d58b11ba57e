//! The original README's quick start: put, get, update, soft delete, close.
//!
//! Run with `cargo run -p syncforge --example quickstart`.
#![allow(clippy::print_stdout)]

use serde_json::json;
use syncforge::SyncEngine;

#[tokio::main(flavor = "current_thread")]
async fn main() -> syncforge::Result<()> {
    let engine = SyncEngine::builder().build().await?;

    // Store a record.
    engine
        .put("users", &json!({"id": "1", "name": "Alice", "age": 30}))
        .await?;

    // Retrieve it: the metadata is visible in its JSON form.
    if let Some(user) = engine.get("users", "1").await? {
        println!("stored:  {}", user.to_json());
    }

    // Update it: only `age` gets a new stamp.
    let updated = engine
        .put("users", &json!({"id": "1", "name": "Alice", "age": 31}))
        .await?;
    println!(
        "updated: version {}, age {}",
        updated.version(),
        updated.get("age").unwrap_or(json!(null))
    );

    // Delete it (soft delete: the tombstone travels in syncs).
    if let Some(deleted) = engine.delete("users", "1").await? {
        println!(
            "deleted: {} (version {})",
            deleted.is_deleted(),
            deleted.version()
        );
    }

    // Close: releases the backend, never deletes stored data.
    engine.close().await
}
