//! Sync over HTTP, over real sockets on 127.0.0.1: servers on port 0,
//! engines on memory and filesystem stores, `HttpPeer` clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::print_stderr)]

mod auth;
mod bad_input;
mod browser;
mod client;
mod convergence;
mod long_poll;
mod merges;
mod slow_clients;
mod support;
mod tls;
mod tracing_spans;
