//! The accept loop of [`Server`](super::Server): HTTP/1 connections with a
//! header-read timeout, a bound on how many are open at once, and a shutdown
//! that lets requests in flight finish but does not wait for ever.
//!
//! `axum::serve` sets no timer on hyper, so a client that sends half a
//! header (or nothing) holds its connection, and its file descriptor, until
//! it leaves; enough of them lock real clients out and stall a graceful
//! shutdown. Serving each connection through hyper directly sets the timer.
//! An answer the client takes none of for the request timeout closes its
//! connection: a client that stops reading a large page held its
//! connection (one of `max_connections`), and the page's room among the
//! bodies held at once, until it left or the server shut down.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower_http::cors::CorsLayer;

use super::closed;
use super::error::ApiError;
use super::handlers::{mark_protocol, SyncSlots};
use crate::protocol::ErrorCode;

/// Longest timeout handed to hyper, and longest shutdown grace: both are
/// added to `Instant::now()`, which panics past the clock's range. A year is
/// as good as never.
const LONGEST_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Connections past `max_connections` taken in at once only to be answered
/// 503: past these, clients wait in the listen queue.
const OVERFLOW_CONNECTIONS: usize = 64;

/// How long a connection past `max_connections` has to send its request's
/// headers before it is closed unanswered.
const REFUSAL_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to pause accepting after an error that is not one connection's
/// (out of file descriptors): retrying at once would spin and flood the log.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// How the accept loop treats connections.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionLimits {
    /// Time to send a request's headers, and longest idle time between two
    /// requests (hyper's header timer runs while it waits for the next one).
    pub(super) header_read_timeout: Duration,
    /// Longest time a connection's answer may wait for its client to take
    /// any of it: past it the connection closes, giving back the room the
    /// answer held among the bodies held at once.
    pub(super) write_stall_timeout: Duration,
    /// Most connections open at once.
    pub(super) max_connections: usize,
    /// Longest wait for open connections once shutdown starts.
    pub(super) shutdown_grace: Duration,
}

/// Accepts connections on `listener` and serves `app` on each until
/// `closing` turns true, then waits up to the grace for the connections,
/// and then the merges, to finish, and drops the connections still open.
pub(super) async fn accept_until_closed(
    listener: TcpListener,
    app: Router,
    refusal: Router,
    sync_slots: SyncSlots,
    limits: ConnectionLimits,
    mut closing: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        // Past the limit, a few more connections are taken in only to be
        // told to come back (503 and Retry-After), so that clients fail
        // fast instead of hanging; past those, clients wait in the listen
        // queue.
        let next = async {
            let place = tokio::select! {
                biased;
                permit = permits.clone().acquire_owned() => permit.map(Place::Serve),
                permit = overflow.clone().acquire_owned() => permit.map(Place::Refuse),
            };
            (place, listener.accept().await)
        };
        tokio::select! {
            biased;
            () = closed(&mut closing) => break,
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = ended {
                    if error.is_panic() {
                        tracing::error!(%error, "a connection's task panicked");
                    }
                }
            }
            (place, accepted) = next => {
                // The semaphores are never closed.
                let Ok(place) = place else { break };
                match accepted {
                    Ok((stream, _)) => {
                        let (app, timeout, permit) = match place {
                            Place::Serve(permit) => {
                                (app.clone(), limits.header_read_timeout, permit)
                            }
                            Place::Refuse(permit) => (
                                refusal.clone(),
                                limits.header_read_timeout.min(REFUSAL_HEADER_TIMEOUT),
                                permit,
                            ),
                        };
                        connections.spawn(serve_connection(
                            stream,
                            app,
                            Timeouts {
                                header_read: timeout,
                                write_stall: limits.write_stall_timeout,
                            },
                            closing.clone(),
                            permit,
                        ));
                    }
                    Err(error) if is_one_connections_error(&error) => {
                        tracing::debug!(%error, "a connection failed while being accepted");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot accept connections; pausing");
                        tokio::select! {
                            () = closed(&mut closing) => break,
                            () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                        }
                    }
                }
            }
        }
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + limits.shutdown_grace.min(LONGEST_TIMEOUT);
    let drained = tokio::time::timeout_at(deadline, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            grace = ?limits.shutdown_grace,
            "closing connections still open after the shutdown grace"
        );
        connections.shutdown().await;
    }
    // Merges of requests that timed out run on their own tasks.
    if tokio::time::timeout_at(deadline, sync_slots.all_returned())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?limits.shutdown_grace,
            "merges still running after the shutdown grace are left to finish on their own"
        );
    }
}

/// Where an accepted connection goes.
enum Place {
    /// Served: one of `max_connections`.
    Serve(OwnedSemaphorePermit),
    /// Answered 503 and closed: one of [`OVERFLOW_CONNECTIONS`].
    Refuse(OwnedSemaphorePermit),
}

/// What a connection past `max_connections` is answered: 503 `unavailable`
/// with `Retry-After`, and the connection closes; with the server's CORS
/// headers, so that a browser can read it.
pub(super) fn overloaded(cors: Option<CorsLayer>) -> Router {
    let refusal = Router::new().fallback(|| async {
        let mut response = ApiError::new(
            ErrorCode::Unavailable,
            "the server holds as many connections as it may; try again shortly",
        )
        .into_response();
        mark_protocol(response.headers_mut());
        response
    });
    let refusal = match cors {
        Some(cors) => refusal.layer(cors),
        None => refusal,
    };
    // Every answer closes the connection, also a CORS preflight's, which
    // the CORS layer answers itself: a place past the limit is not kept
    // for a second request.
    refusal.layer(axum::middleware::map_response(
        |mut response: axum::response::Response| async move {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        },
    ))
}

/// Errors of the one connection being accepted, after which the next
/// accept works as before.
fn is_one_connections_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::Interrupted
    )
}

/// The timeouts of one connection.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// Time to send a request's headers (and idle time between requests).
    header_read: Duration,
    /// Longest wait for the client to take any of an answer.
    write_stall: Duration,
}

/// Serves one connection until the client leaves, a timeout closes it, or
/// shutdown: then the request in flight finishes and the connection closes.
/// `_permit` frees its place when the connection ends.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    timeouts: Timeouts,
    mut closing: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    // Small answers (a long poll's page) must not wait for Nagle.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    // hyper never gives up on an answer the client does not read: a client
    // that stops reading (on purpose, or a phone out of signal) held its
    // page, and the page's room, until the kernel gave up on the
    // connection, a quarter of an hour later.
    let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
    stream.set_write_timeout(Some(timeouts.write_stall.min(LONGEST_TIMEOUT)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read.min(LONGEST_TIMEOUT));
    let connection = builder.serve_connection(
        TokioIo::new(Box::pin(stream)),
        TowerToHyperService::new(app),
    );
    let mut connection = std::pin::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        () = closed(&mut closing) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    // Clients leaving, and the header timeout, end connections every day.
    if let Err(error) = outcome {
        tracing::debug!(%error, "connection ended with an error");
    }
}
