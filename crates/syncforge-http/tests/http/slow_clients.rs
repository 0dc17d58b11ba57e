//! Clients that connect and then stall: a server must close them in time,
//! keep serving others, bound how many it holds, and still shut down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use syncforge::http::{Server, ServerOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::memory_engine;

const HEALTH: &str = "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
/// Half a request: its headers never end.
const HALF_HEADERS: &str = "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n";

async fn serve(options: ServerOptions) -> Server {
    Server::bind(memory_engine("server").await, "127.0.0.1:0", options)
        .await
        .unwrap()
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.local_addr()).await.unwrap()
}

/// A push body of `length` spaces sent slowly: after `first_after`, a
/// `chunk` every `every`; with `Expect: 100-continue` if `expect_continue`.
struct SlowUpload {
    length: usize,
    expect_continue: bool,
    first_after: Duration,
    chunk: usize,
    every: Duration,
}

/// Sends `upload` to `server`'s sync route, and checks that it is answered
/// 503 while its body is still read: the upload ends without being cut.
async fn refused_503_with_its_upload_whole(server: &Server, upload: SlowUpload) {
    let (mut reading, mut writing) = connect(server).await.into_split();
    let expect = if upload.expect_continue {
        "Expect: 100-continue\r\n"
    } else {
        ""
    };
    let head = format!(
        "POST /v1/collections/notes/sync HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{expect}\r\n",
        upload.length
    );
    let uploading = tokio::spawn(async move {
        writing.write_all(head.as_bytes()).await?;
        tokio::time::sleep(upload.first_after).await;
        let chunk = vec![b' '; upload.chunk];
        for _ in 0..upload.length / upload.chunk {
            writing.write_all(&chunk).await?;
            tokio::time::sleep(upload.every).await;
        }
        std::io::Result::Ok(())
    });
    let answer = read_answer_head(&mut reading, Duration::from_secs(15))
        .await
        .expect("an answer within 15 s");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    let uploaded = tokio::time::timeout(Duration::from_secs(15), uploading)
        .await
        .expect("the upload ends within 15 s")
        .unwrap();
    assert!(uploaded.is_ok(), "the upload was cut: {uploaded:?}");
}

/// What the server sends until it closes the connection, or `None` if it
/// is still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let reading = async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    };
    tokio::time::timeout(within, reading).await.ok()?;
    Some(String::from_utf8_lossy(&received).into_owned())
}

/// Reads at least one complete answer's head from `stream`.
async fn read_answer_head(
    stream: &mut (impl AsyncRead + Unpin),
    within: Duration,
) -> Option<String> {
    let mut received = Vec::new();
    let reading = async {
        let mut buffer = [0u8; 4096];
        while !received.windows(4).any(|window| window == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    };
    tokio::time::timeout(within, reading).await.ok()?;
    Some(String::from_utf8_lossy(&received).into_owned())
}

/// Without a header-read timeout, half a header held a connection (and its
/// file descriptor) for as long as the client liked, and so did a
/// connection kept alive with no further request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stall_are_disconnected_after_the_header_read_timeout() {
    let server = serve(ServerOptions::default().header_read_timeout(Duration::from_secs(1))).await;

    let mut half = connect(&server).await;
    half.write_all(HALF_HEADERS.as_bytes()).await.unwrap();
    let mut kept_alive = connect(&server).await;
    kept_alive.write_all(HEALTH.as_bytes()).await.unwrap();
    let (half, kept_alive) = tokio::join!(
        read_until_closed(&mut half, Duration::from_secs(15)),
        read_until_closed(&mut kept_alive, Duration::from_secs(15)),
    );
    assert!(
        half.is_some(),
        "a connection stuck in its headers stayed open"
    );
    let answer = kept_alive.expect("an idle kept-alive connection stayed open");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    // Others are served as before.
    let health = reqwest::get(format!("{}/v1/health", server.url()))
        .await
        .unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    server.shutdown().await.unwrap();
}

/// The longest settings mean "never" and "no bound": hyper adds the header
/// timeout to the clock, which panicked every connection's task at
/// `Duration::MAX`, shutdown added its grace to it the same way, and tokio's
/// semaphores refuse more than their maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_timeout_and_the_largest_limit_serve_as_usual() {
    let options = ServerOptions::default()
        .header_read_timeout(Duration::MAX)
        .request_timeout(Duration::MAX)
        .max_connections(usize::MAX)
        .max_concurrent_syncs(usize::MAX);
    let server = serve(options).await;
    let mut stream = connect(&server).await;
    stream.write_all(HEALTH.as_bytes()).await.unwrap();
    let head = read_answer_head(&mut stream, Duration::from_secs(15)).await;
    assert!(
        head.as_deref()
            .is_some_and(|head| head.starts_with("HTTP/1.1 200")),
        "{head:?}"
    );
    server.shutdown().await.unwrap();
}

/// A push told the server is busy, after it waited for room longer than a
/// second, had its upload cut when it had asked to be told to go on
/// (`Expect: 100-continue`): such a client (curl) sends its body anyway once
/// a second passed without an answer, and the refusal closed the
/// connection under it, so it saw a broken pipe instead of the refusal and
/// its `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_refusal_reads_the_upload_of_a_client_that_stopped_waiting_to_go_on() {
    const BODY: usize = 256 << 10;
    let replica = crate::support::InstrumentedReplica::new(memory_engine("hq").await)
        .slow_syncs(Duration::from_secs(5));
    let running = replica.syncs_running.clone();
    // Room for one body of BODY bytes, which the merge of a small push
    // holds; a busy refusal after half the request's time, 1.5 s.
    let options = ServerOptions::default()
        .max_body_bytes(BODY)
        .max_buffered_bytes(BODY)
        .request_timeout(Duration::from_secs(3))
        .max_wait(Duration::from_millis(100));
    let server = Server::bind(replica, "127.0.0.1:0", options).await.unwrap();
    let writer = memory_engine("client").await;
    let record = writer
        .put("notes", &serde_json::json!({"id": "n1"}))
        .await
        .unwrap();
    let holding = crate::support::raw_client()
        .post(format!("{}/v1/collections/notes/sync", server.url()))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&serde_json::json!({ "records": [record] })).unwrap())
        .send();
    let holding = tokio::spawn(holding);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "no merge began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The body goes after 1.1 s without an answer, 16 KiB every 100 ms:
    // until 2.7 s, past the refusal at 1.5 s.
    refused_503_with_its_upload_whole(
        &server,
        SlowUpload {
            length: BODY,
            expect_continue: true,
            first_after: Duration::from_millis(1_100),
            chunk: 16 << 10,
            every: Duration::from_millis(100),
        },
    )
    .await;
    let _ = holding.await.unwrap();
    server.shutdown().await.unwrap();
}

/// Feed pages held for clients that do not read them took no room among
/// the bodies held: each connection could pin a page of up to
/// `max_body_bytes`. A page now takes room until it is sent; with the room
/// taken by two unread pages, a third is answered busy, and the room comes
/// back when their connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_pages_a_client_does_not_read_hold_room_until_sent() {
    let (server, unread, scanned) = two_unread_pages(ServerOptions::default()).await;
    // Refused before their store reads: pages took room only once
    // written, so every request read and wrote a page of up to
    // `max_body_bytes` before it was turned away.
    let read_before = scanned.load(Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(ask_for_the_page(&mut connect(&server).await).await, "503");
    }
    assert_eq!(scanned.load(Ordering::SeqCst), read_before);
    // Room short of a whole body cuts a page of small records short, to
    // what a first read of them is given, rather than refusing it; with
    // the room back, the page is whole.
    let (cut, more) = page_of_small(&server).await;
    assert!(
        more && cut > 100 && cut < SMALL_RECORDS,
        "{cut} changes, more {more}"
    );
    drop(unread);
    assert_eq!(page_of_small(&server).await, (SMALL_RECORDS, false));
    // Dropped at once, so that shutdown does not wait for the page it
    // does not read.
    assert_eq!(ask_for_the_page(&mut connect(&server).await).await, "200");
    server.shutdown().await.unwrap();
}

/// A client that takes none of its page for the request time has its
/// connection closed, and the page's room comes back: connections whose
/// clients stopped reading held their pages' room until they left, so a
/// few read-only clients could refuse every page and push of everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_unread_for_the_request_time_gives_its_room_back() {
    const REQUEST_TIME: Duration = Duration::from_secs(2);
    let options = ServerOptions::default()
        .request_timeout(REQUEST_TIME)
        .max_wait(Duration::from_secs(1));
    let (server, unread, _) = two_unread_pages(options).await;
    // Asked again until the room is back (the two stalled connections
    // close after the request time), within a bound well past it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = ask_for_the_page(&mut connect(&server).await).await;
        if status == "200" || tokio::time::Instant::now() >= deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(status, "200");
    drop(unread);
    server.shutdown().await.unwrap();
}

/// The records of 1 KB in collection `small` of [`two_unread_pages`]'
/// server.
const SMALL_RECORDS: usize = 500;

/// How many changes a page of `small` holds, and whether more follow.
async fn page_of_small(server: &Server) -> (usize, bool) {
    let body = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
        .get(format!(
            "{}/v1/collections/small/changes?after=0&limit=1000",
            server.url()
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let changes = page["changes"].as_array().map_or(0, Vec::len);
    (changes, page["more"] == serde_json::Value::Bool(true))
}

/// A feed request for all 60 records of [`two_unread_pages`]' server.
const PAGE_OF_60: &str = "GET /v1/collections/notes/changes?after=0&limit=200 HTTP/1.1\r\n\
                          Host: 127.0.0.1\r\n\r\n";

/// The status of the answer to [`PAGE_OF_60`], asked on `stream` ("200",
/// "503"; the head as it came when it has none), its body left unread.
async fn ask_for_the_page(stream: &mut TcpStream) -> String {
    stream.write_all(PAGE_OF_60.as_bytes()).await.unwrap();
    let head = read_answer_head(stream, Duration::from_secs(15)).await;
    match head
        .as_deref()
        .and_then(|head| head.strip_prefix("HTTP/1.1 "))
    {
        Some(rest) => rest.chars().take(3).collect(),
        None => format!("{head:?}"),
    }
}

/// A server (with `options`, and bounds on bodies such that two of its
/// pages of 60 records fit the room held at once and three do not) and two
/// clients that asked for such a page and read the head of their answer
/// and no more, through a small receive buffer, so that the kernel cannot
/// take a page whole; and the count of changes the server's store reads
/// returned.
async fn two_unread_pages(options: ServerOptions) -> (Server, Vec<TcpStream>, Arc<AtomicUsize>) {
    const RECORD: usize = 100 << 10;
    let engine = memory_engine("server").await;
    for n in 0..SMALL_RECORDS {
        engine
            .put(
                "small",
                &serde_json::json!({"id": format!("s{n:03}"), "text": "x".repeat(1_000)}),
            )
            .await
            .unwrap();
    }
    for n in 0..60 {
        engine
            .put(
                "notes",
                &serde_json::json!({"id": format!("n{n}"), "text": "x".repeat(RECORD)}),
            )
            .await
            .unwrap();
    }
    // A page of all 60 records (6 MiB: more than the kernel's buffers of a
    // connection take) fits a body; one page and the room another takes
    // before it is read (a body's bound, 7 MiB) fit the room, three pages
    // do not.
    let options = options.max_body_bytes(7 << 20).max_buffered_bytes(14 << 20);
    let replica = crate::support::InstrumentedReplica::new(engine);
    let scanned = replica.scanned.clone();
    let server = Server::bind(replica, "127.0.0.1:0", options).await.unwrap();
    let mut unread = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(server.local_addr()).await.unwrap();
        assert_eq!(ask_for_the_page(&mut stream).await, "200");
        unread.push(stream);
    }
    (server, unread, scanned)
}

/// Past `max_connections`, a client is told at once to come back (503 with
/// `Retry-After`) instead of hanging unanswered, and served once a place is
/// free; past a few such answers in flight, clients wait in the listen queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_past_the_connection_limit_are_told_to_come_back() {
    let server = serve(ServerOptions::default().max_connections(2)).await;
    let mut first = connect(&server).await;
    let second = connect(&server).await;
    // The first two are served (and kept open, idle).
    first.write_all(HEALTH.as_bytes()).await.unwrap();
    let head = read_answer_head(&mut first, Duration::from_secs(15)).await;
    assert!(head.is_some_and(|head| head.starts_with("HTTP/1.1 200")));

    let mut third = connect(&server).await;
    third.write_all(HEALTH.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut third, Duration::from_secs(15)).await;
    let answer = answer.expect("a third connection was neither answered nor closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer:?}"
    );
    assert!(answer.contains("\"unavailable\""), "{answer:?}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("syncforge-protocol: 1"),
        "{answer:?}"
    );

    drop(first);
    // The place is free once the server has seen the first one go.
    let mut served = None;
    for _ in 0..100 {
        let mut fourth = connect(&server).await;
        fourth.write_all(HEALTH.as_bytes()).await.unwrap();
        let head = read_answer_head(&mut fourth, Duration::from_secs(15)).await;
        if head
            .as_deref()
            .is_some_and(|head| head.starts_with("HTTP/1.1 200"))
        {
            served = Some(fourth);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served.is_some(), "no place came free");
    drop((second, served));
    server.shutdown().await.unwrap();
}

/// The refusal past the limit went out without the CORS headers of every
/// other answer, so a browser saw a network failure instead of a 503 to
/// retry; and no answer exposed `Retry-After` to scripts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_past_the_limit_is_readable_by_a_browser() {
    const ORIGIN: &str = "https://app.example.com";
    let options = ServerOptions::default()
        .max_connections(1)
        .cors_allow_origins([ORIGIN]);
    let server = serve(options).await;
    let mut held = connect(&server).await;
    held.write_all(HEALTH.as_bytes()).await.unwrap();
    assert!(read_answer_head(&mut held, Duration::from_secs(15))
        .await
        .is_some());
    let mut refused = connect(&server).await;
    let request = format!("GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {ORIGIN}\r\n\r\n");
    refused.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut refused, Duration::from_secs(15))
        .await
        .expect("the refused connection was neither answered nor closed")
        .to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer:?}");
    assert!(
        answer.contains(&format!("access-control-allow-origin: {ORIGIN}")),
        "{answer:?}"
    );
    let exposed = answer
        .lines()
        .find_map(|line| line.strip_prefix("access-control-expose-headers:"))
        .unwrap_or_default();
    assert!(exposed.contains("retry-after"), "{answer:?}");
    assert!(exposed.contains("www-authenticate"), "{answer:?}");
    // A preflight past the limit, which the CORS layer answers itself, is
    // answered and closed too, not kept open for a second request.
    let mut preflight = connect(&server).await;
    let request = format!(
        "OPTIONS /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {ORIGIN}\r\n\
         Access-Control-Request-Method: GET\r\n\r\n"
    );
    preflight.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut preflight, Duration::from_secs(3))
        .await
        .expect("the preflight's connection was kept open")
        .to_ascii_lowercase();
    assert!(answer.contains("connection: close"), "{answer:?}");
    drop(held);
    server.shutdown().await.unwrap();
}

/// The answers past the limit are bounded too: with those places taken by
/// clients that send nothing, a further client waits (until the silent ones
/// are closed after a few seconds) rather than being taken in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limit_and_its_answers_clients_wait() {
    let server = serve(ServerOptions::default().max_connections(1)).await;
    let mut held = connect(&server).await;
    held.write_all(HEALTH.as_bytes()).await.unwrap();
    assert!(read_answer_head(&mut held, Duration::from_secs(15))
        .await
        .is_some());
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(connect(&server).await);
    }
    // Let the server take them in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut waiting = connect(&server).await;
    waiting.write_all(HEALTH.as_bytes()).await.unwrap();
    let early = read_answer_head(&mut waiting, Duration::from_millis(500)).await;
    assert_eq!(
        early, None,
        "a client past every place was answered at once"
    );
    // The silent ones are closed after five seconds; then it is answered.
    let head = read_answer_head(&mut waiting, Duration::from_secs(20)).await;
    assert!(
        head.as_deref()
            .is_some_and(|head| head.starts_with("HTTP/1.1 503")),
        "{head:?}"
    );
    drop((held, silent));
    server.shutdown().await.unwrap();
}

/// Shutdown lets requests in flight finish, but a client that never ends
/// its headers (or never sends any) no longer keeps it waiting: it ends
/// within the request timeout, closing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_clients_that_never_finish_a_request() {
    let options = ServerOptions::default()
        .header_read_timeout(Duration::from_secs(600))
        .request_timeout(Duration::from_secs(2))
        .max_wait(Duration::from_secs(1));
    let server = serve(options).await;
    let mut half = connect(&server).await;
    half.write_all(HALF_HEADERS.as_bytes()).await.unwrap();
    let mut silent = connect(&server).await;
    // Both are being served before shutdown starts.
    let mut served = connect(&server).await;
    served.write_all(HEALTH.as_bytes()).await.unwrap();
    assert!(read_answer_head(&mut served, Duration::from_secs(15))
        .await
        .is_some());

    tokio::time::timeout(Duration::from_secs(30), server.shutdown())
        .await
        .expect("shutdown waited for clients that never finish a request")
        .unwrap();
    for stream in [&mut half, &mut silent, &mut served] {
        assert!(read_until_closed(stream, Duration::from_secs(15))
            .await
            .is_some());
    }
}

/// Connections between requests, or that have sent nothing yet, close at
/// once on shutdown: it does not wait the request timeout for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_at_once() {
    let options = ServerOptions::default()
        .header_read_timeout(Duration::from_secs(600))
        .request_timeout(Duration::from_secs(60))
        .max_wait(Duration::from_secs(1));
    let server = serve(options).await;
    let mut idle = connect(&server).await;
    idle.write_all(HEALTH.as_bytes()).await.unwrap();
    assert!(read_answer_head(&mut idle, Duration::from_secs(15))
        .await
        .is_some());
    let mut silent = connect(&server).await;
    // Let the server take the silent connection in before it stops.
    tokio::time::sleep(Duration::from_millis(200)).await;

    tokio::time::timeout(Duration::from_secs(20), server.shutdown())
        .await
        .expect("shutdown waited for idle connections")
        .unwrap();
    for stream in [&mut idle, &mut silent] {
        assert!(read_until_closed(stream, Duration::from_secs(15))
            .await
            .is_some());
    }
}

/// A push refused before its body is read (here: a read-only token) is
/// answered with its refusal at once, even when the body arrives more
/// slowly than the request's time allows: the body is read and dropped
/// after the answer. Read first, it ran into the request's limit, and the
/// client was told `timeout`, a failure to retry, where a 403 tells it not
/// to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_push_uploaded_slowly_gets_its_refusal_not_a_timeout() {
    const BODY: usize = 2 << 20;
    let options = ServerOptions::default()
        .request_timeout(Duration::from_secs(1))
        .max_wait(Duration::from_millis(500))
        .token(syncforge::http::AccessToken::read_only("reader-secret"));
    let server = serve(options).await;
    let (mut reading, mut writing) = connect(&server).await.into_split();
    let head = format!(
        "POST /v1/collections/notes/sync HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer reader-secret\r\nContent-Type: application/json\r\n\
         Content-Length: {BODY}\r\n\r\n"
    );
    // 64 KiB every 100 ms: the 2 MiB take three seconds.
    let uploading = tokio::spawn(async move {
        if writing.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b' '; 64 << 10];
        for _ in 0..BODY / chunk.len() {
            if writing.write_all(&chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let reading = async {
        while !received.windows(4).any(|window| window == b"\r\n\r\n") {
            match reading.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), reading)
        .await
        .expect("an answer within 15 s");
    let answer = String::from_utf8_lossy(&received);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer:?}");
    // The answer came while the body was still on its way.
    assert!(!uploading.is_finished());
    uploading.abort();
    server.shutdown().await.unwrap();
}

/// A push whose body arrives more slowly than the request's time allows is
/// answered `timeout` while the body is still on its way, and the rest of it
/// is read and dropped. Cut off by the request's limit, the connection was
/// closed under the client still sending, which saw a broken pipe instead
/// of the answer that tells it to send fewer records at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_uploaded_too_slowly_is_told_timeout_without_its_upload_cut() {
    const BODY: usize = 2 << 20;
    let options = ServerOptions::default()
        .request_timeout(Duration::from_secs(2))
        .max_wait(Duration::from_millis(500));
    let server = serve(options).await;
    // 64 KiB every 85 ms: the 2 MiB take 2.7 s, past the request's limit
    // (answered at 1.8 s) and well within the time the rest is read for
    // (until 3.8 s).
    refused_503_with_its_upload_whole(
        &server,
        SlowUpload {
            length: BODY,
            expect_continue: false,
            first_after: Duration::ZERO,
            chunk: 64 << 10,
            every: Duration::from_millis(85),
        },
    )
    .await;
    server.shutdown().await.unwrap();
}
