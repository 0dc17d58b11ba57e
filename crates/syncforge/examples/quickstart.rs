//! The original README's quick start: put, get, update, soft delete, close.
//!
//! Run with `cargo run -p syncforge --example quickstart`.
#![allow(clippy::print_stdout)]

use serde_json::json;
use syncforge::SyncEngine;

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
    let engine = SyncEngine::builder().build().await?;

    // Store a record.
    engine
        .put("users", &json!({"id": "1", "name": "Alice", "age": 30}))
        .await?;

    // Retrieve it: the metadata is visible in its JSON form.
    let user = engine
        .get("users", "1")
        .await?
        .ok_or("the record is not stored")?;
    println!("stored:  {}", user.to_json());
    check(
        user.get("name") == Some(json!("Alice")),
        "the record reads back",
    )?;

    // Update it: only `age` gets a new stamp.
    let updated = engine
        .put("users", &json!({"id": "1", "name": "Alice", "age": 31}))
        .await?;
    println!(
        "updated: version {}, age {}",
        updated.version(),
        updated.get("age").unwrap_or(json!(null))
    );
    check(
        updated.version() == 2 && updated.get("age") == Some(json!(31)),
        "the update is version 2, with the new age",
    )?;

    // Delete it (soft delete: the tombstone travels in syncs).
    let deleted = engine
        .delete("users", "1")
        .await?
        .ok_or("there was nothing to delete")?;
    println!(
        "deleted: {} (version {})",
        deleted.is_deleted(),
        deleted.version()
    );
    check(deleted.is_deleted(), "the record is deleted")?;

    // Close: releases the backend, never deletes stored data.
    Ok(engine.close().await?)
}
