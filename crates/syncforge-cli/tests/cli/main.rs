//! The `syncforge` binary, driven as a user runs it, on memory and
//! filesystem stores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod errors;
#[cfg(feature = "http")]
mod http;
mod records;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "s3")]
mod s3;
mod stats_watch;
mod support;
mod sync;
mod transfer;
