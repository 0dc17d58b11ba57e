//! Integration tests of the `syncforge` facade: one binary, one module per theme.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod flaws;
mod scenarios;
mod support;
