//! # syncforge — the command
//!
//! Sync, inspect, import and export syncforge stores from the shell, without
//! writing a program each time. Stores are named by URL
//! ([`syncforge::StoreUrl`]): `memory:` always; a directory path or
//! `file:///path` with the `fs` feature (a default one); each further kind
//! with the cargo feature that builds it in.
//!
//! ```text
//! syncforge sync ./phone ./laptop --both        # two-way, incremental
//! syncforge ls ./laptop notes                    # the records of a collection
//! syncforge export ./laptop notes > notes.jsonl  # canonical JSON Lines
//! syncforge import ./server --store-dir ./ts-data  # the TypeScript original's files
//! ```
//!
//! Exit codes: 0 success, 1 failure at run time, 2 usage error, 3 a sync
//! that synced all but records a sync server refused. Errors print
//! their cause chain in one block. `--json` makes every command print
//! machine-readable output.

mod cli;
mod commands;
mod failure;
mod input;
mod output;
mod progress;
mod reader;
#[cfg(feature = "http")]
mod remote;
mod store;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    show_warnings();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return failure::report(&anyhow::Error::new(error).context("cannot start the runtime"))
        }
    };
    let outcome = runtime.block_on(commands::run(cli));
    // What a command left running (a server stopped at once by a second
    // signal, with its requests and store) is not waited for long: dropping
    // the runtime would wait for its blocking tasks without a bound.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => failure::report(&error),
    }
}

/// Shows the library's warnings on stderr — a corrupt record file a read
/// skipped, a log started again, a server open to anyone — which would
/// otherwise go nowhere. `SYNCFORGE_LOG` sets another level (`error`,
/// `info`, `debug`, `trace`).
fn show_warnings() {
    let asked = std::env::var("SYNCFORGE_LOG").ok();
    let read = asked
        .as_deref()
        .and_then(|level| level.parse::<tracing::Level>().ok());
    let shown = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(read.unwrap_or(tracing::Level::WARN))
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .try_init();
    // Only fails when a subscriber is set already, which nothing here does.
    drop(shown);
    if let (Some(asked), None) = (asked, read) {
        tracing::warn!(
            "SYNCFORGE_LOG={:?} is not a level (error, warn, info, debug, trace); showing warnings",
            syncforge::core::shorten(&asked)
        );
    }
}
