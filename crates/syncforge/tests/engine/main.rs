//! Integration tests of the `syncforge` facade: one binary, one module per theme.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod api;
mod auto_sync;
mod convergence;
mod events;
mod faults;
mod flaws;
mod handles;
mod hostile;
mod nesting;
mod peers;
mod scenarios;
mod support;
mod tracing_spans;
