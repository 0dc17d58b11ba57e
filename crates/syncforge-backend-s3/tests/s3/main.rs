//! Tests of the S3 backend: the conformance suite on a real S3-compatible
//! server (moto, started by `cargo xtask ci`) and on object_store's
//! in-memory store and a local directory, concurrency (across processes
//! too), dying writers, clocks, request counts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;
mod costs;
mod errors;
mod local;
mod support;
mod wrapper;
mod writers;
