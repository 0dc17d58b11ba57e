//! Integration tests of the Redis backend against real servers, in one
//! binary: the conformance suite on a standalone server and on a 3-master
//! cluster, one test per flaw of the original's Redis backend, connection
//! errors, faults (a server killed mid-sync, a slot moved mid-sync), TLS.
//!
//! Servers: `SYNCFORGE_TEST_REDIS_URL` (standalone) and
//! `SYNCFORGE_TEST_REDIS_CLUSTER_URL` (cluster), which `cargo xtask ci`
//! sets for the servers it starts. Tests that kill or count a server start
//! a private `redis-server` of their own (`SYNCFORGE_TEST_REDIS_SERVER_BIN`,
//! default `redis-server`). Every test writes under a key prefix of its own
//! and never flushes a server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod conformance;
mod faults;
mod flaws;
mod nesting;
mod support;
#[cfg(feature = "tls")]
mod tls;
