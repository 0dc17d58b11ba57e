//! Sync over HTTP on loopback: an engine pushes 10,000 records to an empty
//! server (and, for comparison, the same push between the two engines in
//! process), an empty engine pulls 10,000 from a server, and a round trip of
//! 100 changes (one client pushes them, another pulls them) through a server
//! holding 1,000 and 100,000 records (10,000 in the quick mode). Every engine
//! is on a memory store, every client an `HttpPeer` with gzip, and engines
//! move `BATCH` records per request.
//!
//! Besides the times, a separate untimed run counts the bytes of the HTTP
//! requests and responses (request line or status line, headers, bodies as
//! sent) per record pushed and pulled.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../../syncforge/benches/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use criterion::Criterion;
use syncforge::http::{router, HttpPeer, Server, ServerOptions};
use syncforge::{ConflictStrategy, MemoryBackend, Record, SyncEngine};
use tokio::runtime::Runtime;

use support::{edit_spread, timed_checked, written_records, COLLECTION, INCREMENTAL};

const GROUP: &str = "http";
/// Records of the push and pull rows.
const RECORDS: usize = 10_000;
/// Records per request: the engines' batch size.
const BATCH: usize = 1_000;
const SMALL: usize = 1_000;

fn large() -> usize {
    if support::quick() {
        10_000
    } else {
        100_000
    }
}

/// Two workers: the server and its clients run side by side, as on two
/// machines they would.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn engine(client: &str) -> SyncEngine {
    SyncEngine::builder()
        .client_id(client)
        .conflict_strategy(ConflictStrategy::Crdt)
        .backend(MemoryBackend::new())
        .batch_size(BATCH)
        .build()
        .await
        .unwrap()
}

async fn engine_holding(client: &str, records: &[Record]) -> SyncEngine {
    let engine = engine(client).await;
    let _ = engine.import(COLLECTION, records.to_vec()).await.unwrap();
    engine
}

fn link(server: &str) -> HttpPeer {
    HttpPeer::builder(server).peer_id("server").build().unwrap()
}

async fn serve(engine: SyncEngine) -> Server {
    Server::bind(engine, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap()
}

fn group(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(GROUP);
    group.sample_size(10);
    group
}

/// Push: a client holding 10,000 records syncs with an empty server.
fn push(c: &mut Criterion, rt: &Runtime, records: &[Record]) {
    group(c).bench_function("http_push_10k", |b| {
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || {
                    rt.block_on(async {
                        let server = serve(engine("server").await).await;
                        let client = engine_holding("tablet", records).await;
                        (server, client)
                    })
                },
                |(server, client)| {
                    let report = rt.block_on(client.sync_with(&link(&server.url()), COLLECTION));
                    (report, server)
                },
                |(report, _)| assert_eq!(report.as_ref().unwrap().pushed, RECORDS),
            )
        })
    });
}

/// The same push without HTTP: the client engine syncs with the server's
/// engine in process. What the engines cost of the push row; the rest is
/// the transport (JSON both ways, HTTP, loopback).
fn push_in_process(c: &mut Criterion, rt: &Runtime, records: &[Record]) {
    group(c).bench_function("http_push_10k_in_process", |b| {
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || {
                    rt.block_on(async {
                        (
                            engine("server").await,
                            engine_holding("tablet", records).await,
                        )
                    })
                },
                |(server, client)| {
                    let report = rt.block_on(client.sync_with(&server, COLLECTION));
                    (report, server)
                },
                |(report, _)| assert_eq!(report.as_ref().unwrap().pushed, RECORDS),
            )
        })
    });
}

/// Pull: an empty client syncs with a server holding 10,000 records.
fn pull(c: &mut Criterion, rt: &Runtime, records: &[Record]) {
    let server = rt.block_on(async { serve(engine_holding("server", records).await).await });
    group(c).bench_function("http_pull_10k", |b| {
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || rt.block_on(engine("tablet")),
                |client| rt.block_on(client.sync_with(&link(&server.url()), COLLECTION)),
                |report| assert_eq!(report.as_ref().unwrap().pulled.added, RECORDS),
            )
        })
    });
    rt.block_on(server.shutdown()).unwrap();
}

/// A server holding `size` records and two clients synced with it.
struct RoundTrip {
    server: Server,
    writer: (SyncEngine, HttpPeer),
    reader: (SyncEngine, HttpPeer),
    size: usize,
}

impl RoundTrip {
    fn new(rt: &Runtime, size: usize) -> RoundTrip {
        let records = written_records(rt, "origin", size);
        rt.block_on(async {
            let server = serve(engine_holding("server", &records).await).await;
            let writer = (engine("writer").await, link(&server.url()));
            let reader = (engine("reader").await, link(&server.url()));
            for (engine, link) in [&writer, &reader] {
                let report = engine.sync_with(link, COLLECTION).await.unwrap();
                assert_eq!(report.pulled.added, size);
            }
            RoundTrip {
                server,
                writer,
                reader,
                size,
            }
        })
    }
}

/// Each iteration the writer edits 100 records (untimed), then pushes them
/// and the reader pulls them (timed).
fn round_trip(c: &mut Criterion, rt: &Runtime, id: &str, size: usize) {
    let mut setup = None;
    let mut round = 0usize;
    group(c).bench_function(id, |b| {
        let trip = setup.get_or_insert_with(|| RoundTrip::new(rt, size));
        b.iter_custom(|iters| {
            timed_checked(
                iters,
                || {
                    round += 1;
                    rt.block_on(edit_spread(&trip.writer.0, trip.size, round));
                },
                |()| {
                    rt.block_on(async {
                        let pushed = trip.writer.0.sync_with(&trip.writer.1, COLLECTION).await;
                        let pulled = trip.reader.0.sync_with(&trip.reader.1, COLLECTION).await;
                        (pushed.unwrap(), pulled.unwrap())
                    })
                },
                |(pushed, pulled)| {
                    assert_eq!(pushed.pushed, INCREMENTAL);
                    assert_eq!(pushed.pulled.total(), 0, "the writer's echoes are skipped");
                    assert_eq!(pulled.pulled.updated, INCREMENTAL);
                    assert_eq!(pulled.pushed, 0);
                },
            )
        })
    });
    if let Some(trip) = setup {
        rt.block_on(trip.server.shutdown()).unwrap();
    }
}

/// Counts the bytes of every request and response passing through.
#[derive(Default)]
struct Wire {
    sent: AtomicU64,
    received: AtomicU64,
}

fn head_bytes(line: usize, headers: &axum::http::HeaderMap) -> u64 {
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (line + fields + 2) as u64
}

async fn count(wire: Arc<Wire>, request: Request, next: Next) -> Response {
    let line = request.method().as_str().len() + request.uri().to_string().len() + 12;
    let head = head_bytes(line, request.headers());
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    wire.received
        .fetch_add(head + body.len() as u64, Ordering::Relaxed);
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    // A chunked body (compressed) carries its chunk framing too; counted as
    // the body alone, a few bytes under.
    let head = head_bytes(17, &parts.headers);
    wire.sent
        .fetch_add(head + body.len() as u64, Ordering::Relaxed);
    Response::from_parts(parts, Body::from(body))
}

/// Bytes on the wire per record: 10,000 pushed to an empty server, then
/// pulled by an empty client.
fn bytes_per_record(rt: &Runtime, records: &[Record]) -> (f64, f64) {
    rt.block_on(async {
        let wire = Arc::new(Wire::default());
        let counting = wire.clone();
        let app = router(engine("server").await, ServerOptions::default())
            .unwrap()
            .layer(middleware::from_fn(move |request, next| {
                count(counting.clone(), request, next)
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{address}");

        let tablet = engine_holding("tablet", records).await;
        let report = tablet.sync_with(&link(&url), COLLECTION).await.unwrap();
        assert_eq!(report.pushed, RECORDS);
        let pushed =
            wire.sent.swap(0, Ordering::Relaxed) + wire.received.swap(0, Ordering::Relaxed);

        let reader = engine("reader").await;
        let report = reader.sync_with(&link(&url), COLLECTION).await.unwrap();
        assert_eq!(report.pulled.added, RECORDS);
        let pulled =
            wire.sent.swap(0, Ordering::Relaxed) + wire.received.swap(0, Ordering::Relaxed);
        serving.abort();
        (
            pushed as f64 / RECORDS as f64,
            pulled as f64 / RECORDS as f64,
        )
    })
}

fn main() {
    let since = SystemTime::now();
    let rt = runtime();
    let mut c = support::criterion();
    let records = written_records(&rt, "tablet", RECORDS);
    push(&mut c, &rt, &records);
    push_in_process(&mut c, &rt, &records);
    pull(&mut c, &rt, &records);
    round_trip(&mut c, &rt, "http_round_trip_100_in_1k", SMALL);
    round_trip(&mut c, &rt, "http_round_trip_100_in_100k", large());
    c.final_summary();
    support::report_medians(
        GROUP,
        &[
            ("http_push_10k", RECORDS),
            ("http_push_10k_in_process", RECORDS),
            ("http_pull_10k", RECORDS),
            ("http_round_trip_100_in_1k", INCREMENTAL),
            ("http_round_trip_100_in_100k", INCREMENTAL),
        ],
        since,
    );
    // Only when benchmarking: `cargo test --benches` runs the file once as a
    // test, where the byte count would be noise.
    if std::env::args().any(|arg| arg == "--bench") {
        let (push, pull) = bytes_per_record(&rt, &records);
        println!("http: {push:.0} bytes on the wire per record pushed, {pull:.0} per record pulled (gzip)");
        support::report_value("http_push_bytes_per_record", push);
        support::report_value("http_pull_bytes_per_record", pull);
    }
}
