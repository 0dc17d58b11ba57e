//! Merges of pushed records: how many run at once, and what shutdown waits
//! for.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use syncforge::http::{Server, ServerOptions};

use crate::support::{memory_engine, raw_client, InstrumentedReplica};

/// A push of one record stamped by a client engine, as a request body.
async fn body(id: &str) -> Vec<u8> {
    let client = memory_engine("client").await;
    let record = client.put("notes", &json!({"id": id})).await.unwrap();
    serde_json::to_vec(&json!({ "records": [record] })).unwrap()
}

async fn push(url: String, body: Vec<u8>) -> reqwest::StatusCode {
    raw_client()
        .post(format!("{url}/v1/collections/notes/sync"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// Past `max_concurrent_syncs`, a push waits for a merge to end before its
/// own starts; every push is still merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_past_the_limit_wait_for_a_place() {
    let replica =
        InstrumentedReplica::new(memory_engine("hq").await).slow_syncs(Duration::from_millis(200));
    let (most, ended) = (
        replica.most_syncs_running.clone(),
        replica.syncs_ended.clone(),
    );
    let server = Server::bind(
        replica,
        "127.0.0.1:0",
        ServerOptions::default().max_concurrent_syncs(2),
    )
    .await
    .unwrap();
    let mut pushes = Vec::new();
    for i in 0..6 {
        let body = body(&format!("n{i}")).await;
        pushes.push(tokio::spawn(push(server.url(), body)));
    }
    for push in pushes {
        assert_eq!(push.await.unwrap(), reqwest::StatusCode::OK);
    }
    assert_eq!(ended.load(Ordering::SeqCst), 6);
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} merges ran at once, past the limit of 2");
    server.shutdown().await.unwrap();
}

/// Past `max_buffered_bytes`, a push waits for room before its body is
/// read, and keeps its room until its merge ends: with room for one body,
/// one merge runs at a time although many more may; every push is still
/// merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_past_the_buffered_bytes_wait_for_room() {
    let replica =
        InstrumentedReplica::new(memory_engine("hq").await).slow_syncs(Duration::from_millis(200));
    let (most, ended) = (
        replica.most_syncs_running.clone(),
        replica.syncs_ended.clone(),
    );
    let mut bodies = Vec::new();
    for i in 0..4 {
        bodies.push(body(&format!("n{i}")).await);
    }
    let largest = bodies.iter().map(Vec::len).max().unwrap();
    assert!(largest < 1024, "each body takes one KiB of room");
    let options = ServerOptions::default()
        .max_concurrent_syncs(100)
        .max_body_bytes(1024)
        .max_buffered_bytes(1024);
    let server = Server::bind(replica, "127.0.0.1:0", options).await.unwrap();
    let pushes: Vec<_> = bodies
        .into_iter()
        .map(|body| tokio::spawn(push(server.url(), body)))
        .collect();
    for push in pushes {
        assert_eq!(push.await.unwrap(), reqwest::StatusCode::OK);
    }
    assert_eq!(ended.load(Ordering::SeqCst), 4);
    let most = most.load(Ordering::SeqCst);
    assert_eq!(
        most, 1,
        "{most} merges held their bodies at once, past the room for one"
    );
    server.shutdown().await.unwrap();
}

/// A push whose request timed out is still merged, in the background:
/// shutdown waits for that merge before it returns, so that a store closed
/// after it is not closed under a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_merges_of_requests_that_timed_out() {
    let replica =
        InstrumentedReplica::new(memory_engine("hq").await).slow_syncs(Duration::from_secs(4));
    let ended = replica.syncs_ended.clone();
    let options = ServerOptions::default()
        .request_timeout(Duration::from_millis(500))
        .max_wait(Duration::from_millis(100));
    let server = Server::bind(replica, "127.0.0.1:0", options).await.unwrap();
    let status = push(server.url(), body("n1").await).await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ended.load(Ordering::SeqCst), 0, "the merge ended early");
    tokio::time::timeout(Duration::from_secs(20), server.shutdown())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ended.load(Ordering::SeqCst),
        1,
        "shutdown returned with a merge still running"
    );
}

/// A server with one merge's place and a two-second request timeout, the
/// place held by a push whose merge takes `merge_time` (once that merge
/// began); with that push's task and the count of merges ended.
async fn one_place_held(
    merge_time: Duration,
) -> (
    Server,
    tokio::task::JoinHandle<reqwest::StatusCode>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let replica = InstrumentedReplica::new(memory_engine("hq").await).slow_syncs(merge_time);
    let (running, ended) = (replica.syncs_running.clone(), replica.syncs_ended.clone());
    let options = ServerOptions::default()
        .max_concurrent_syncs(1)
        .request_timeout(Duration::from_secs(2))
        .max_wait(Duration::from_millis(100));
    let server = Server::bind(replica, "127.0.0.1:0", options).await.unwrap();
    let holding = tokio::spawn(push(server.url(), body("n1").await));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first merge never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (server, holding, ended)
}

/// A push that waits for a merge's place longer than half the request
/// timeout is answered 503 `unavailable` (busy: try later), not `timeout`,
/// which tells a client that its request is too slow and makes it send
/// less. The push that held the place is still merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_waiting_too_long_for_a_place_is_told_the_server_is_busy() {
    let (server, holding, ended) = one_place_held(Duration::from_secs(3)).await;
    let answer = raw_client()
        .post(format!("{}/v1/collections/notes/sync", server.url()))
        .header("content-type", "application/json")
        .body(body("n2").await)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.headers().contains_key("retry-after"));
    let error: serde_json::Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "unavailable", "{error}");
    // The first push's request timed out; its merge goes on and ends.
    let _ = holding.await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(ended.load(Ordering::SeqCst), 1);
}

/// A push whose body took most of the request's time to arrive, and which
/// then found every merge's place taken, waited for one with the full
/// patience and was cut off by the request's limit: answered `timeout`,
/// which tells a client its link is slow and makes it send smaller pushes
/// to a server that is only busy. It is answered `unavailable` in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_uploaded_slowly_to_a_busy_server_is_told_it_is_busy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (server, holding, _) = one_place_held(Duration::from_secs(4)).await;
    let sent = body("n2").await;
    let (first, rest) = sent.split_at(sent.len() / 2);
    let mut stream = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let head = format!(
        "POST /v1/collections/notes/sync HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        sent.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first).await.unwrap();
    // Most of the request's two seconds go to the upload, with room left
    // for a loaded machine's late timers.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    stream.write_all(rest).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"unavailable\""), "{answer}");
    let _ = holding.await.unwrap();
    server.shutdown().await.unwrap();
}
