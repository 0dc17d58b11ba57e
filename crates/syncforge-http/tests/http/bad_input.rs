//! Bad input gets a 4xx with a typed JSON body naming the record and the
//! reason, and writes nothing: oversized bodies, malformed JSON, records
//! that are not objects, ids over the limit, stamps beyond the drift bound,
//! bad cursors, unknown routes — and 1,000 seeded random malformed requests,
//! none of which gets a 500 or breaks the server. Odd but valid input too: a
//! declared length far beyond the body, a push repeating an id.

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use syncforge::http::protocol::{ErrorBody, ErrorCode, ErrorDetail};
use syncforge::http::{AccessToken, ServerOptions};
use syncforge::SyncEngine;

use crate::support::{raw_client, FsServer};

const TOKEN: &str = "test-secret";

fn options() -> ServerOptions {
    ServerOptions::default()
        .token(AccessToken::read_write(TOKEN))
        .max_body_bytes(64 * 1024)
        .max_records(50)
}

fn now_millis() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Valid records in their wire form, written by a real engine.
async fn valid_records(count: usize) -> Vec<Value> {
    let engine = SyncEngine::builder()
        .client_id("tablet")
        .build()
        .await
        .unwrap();
    let mut records = Vec::new();
    for n in 0..count {
        let record = engine
            .put(
                "inbox",
                &json!({"id": format!("ok-{n}"), "n": n, "text": "fine"}),
            )
            .await
            .unwrap();
        records.push(serde_json::to_value(&record).unwrap());
    }
    records
}

/// A record in the original's format stamped an hour in the future.
fn from_the_future(id: &str) -> Value {
    json!({"id": id, "_version": 1, "_timestamp": now_millis() + 3_600_000, "_clientId": "fast-clock", "_deleted": false, "v": 1})
}

struct Answer {
    status: StatusCode,
    detail: Option<ErrorDetail>,
    text: String,
}

async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    content_type: Option<&str>,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Answer {
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("no answer to {url}: {error}"));
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    Answer {
        status,
        detail: serde_json::from_slice::<ErrorBody>(&bytes)
            .ok()
            .map(|b| b.error),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn push(server: &FsServer, collection: &str, body: Vec<u8>) -> Answer {
    let url = format!("{}/v1/collections/{collection}/sync", server.url());
    send(
        &raw_client(),
        Method::POST,
        &url,
        Some("application/json"),
        Some(TOKEN),
        Some(body),
    )
    .await
}

fn expect(answer: &Answer, status: StatusCode, code: ErrorCode) -> &ErrorDetail {
    assert_eq!(answer.status, status, "{}", answer.text);
    let detail = answer
        .detail
        .as_ref()
        .unwrap_or_else(|| panic!("not a typed error body: {}", answer.text));
    assert_eq!(detail.code, code, "{}", answer.text);
    detail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_input_gets_its_typed_refusal_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FsServer::start(dir.path(), options()).await;
    let good = valid_records(3).await;
    let records = |extra: Value| {
        let mut all = good.clone();
        all.push(extra);
        serde_json::to_vec(&json!({ "records": all })).unwrap()
    };

    // Oversized body.
    let big = json!({"records": [{"id": "big", "blob": "x".repeat(70 * 1024)}]});
    let answer = push(&server, "inbox", serde_json::to_vec(&big).unwrap()).await;
    expect(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
    );

    // Malformed JSON, and JSON of the wrong shape.
    for body in [
        &b"{\"records\": [ {\"id\": \"a\""[..],
        b"not json",
        b"[]",
        b"{\"records\": 5}",
    ] {
        let answer = push(&server, "inbox", body.to_vec()).await;
        expect(&answer, StatusCode::BAD_REQUEST, ErrorCode::MalformedJson);
    }

    // A record that is not an object, named by its position; the three valid
    // records before it are not written either.
    let answer = push(&server, "inbox", records(json!(42))).await;
    let detail = expect(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::InvalidRecord,
    );
    assert_eq!(detail.index, Some(3));
    assert!(
        detail.reason.as_deref().unwrap_or("").contains("object"),
        "{detail:?}"
    );

    // An id over the 1024-byte limit.
    let mut long = good[0].clone();
    long["id"] = json!("i".repeat(1025));
    let answer = push(&server, "inbox", records(long)).await;
    let detail = expect(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::InvalidId,
    );
    assert_eq!(detail.index, Some(3));

    // Metadata of the wrong type names the record and the field.
    let mut wrong = good[0].clone();
    wrong["id"] = json!("wrong-version");
    wrong["_version"] = json!("three");
    let answer = push(&server, "inbox", records(wrong)).await;
    let detail = expect(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::InvalidRecord,
    );
    assert_eq!(detail.id.as_deref(), Some("wrong-version"));
    assert_eq!(detail.field.as_deref(), Some("_version"));

    // A field nested past MAX_NESTING_DEPTH (which the parser would still
    // read) names the record and the field; the batch writes nothing.
    let mut deep = good[0].clone();
    deep["id"] = json!("too-deep");
    deep["v"] = serde_json::from_str(&format!(
        "{}{}",
        "[".repeat(syncforge::MAX_NESTING_DEPTH + 1),
        "]".repeat(syncforge::MAX_NESTING_DEPTH + 1)
    ))
    .unwrap();
    let answer = push(&server, "inbox", records(deep)).await;
    let detail = expect(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::InvalidRecord,
    );
    assert_eq!(detail.index, Some(3));
    assert_eq!(detail.id.as_deref(), Some("too-deep"));
    assert_eq!(detail.field.as_deref(), Some("v"));

    // Stamps beyond the drift bound: the whole batch is refused, naming them.
    let answer = push(&server, "inbox", records(from_the_future("ahead"))).await;
    let detail = expect(
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::ClockDrift,
    );
    assert_eq!(detail.ids, vec!["ahead".to_owned()]);
    assert!(detail.ahead_ms.unwrap() > 3_000_000);

    // Too many records.
    let many: Vec<Value> = (0..51).map(|n| json!({"id": format!("m{n}")})).collect();
    let answer = push(
        &server,
        "inbox",
        serde_json::to_vec(&json!({"records": many})).unwrap(),
    )
    .await;
    expect(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::TooManyRecords,
    );

    // Not JSON by its content type.
    let url = format!("{}/v1/collections/inbox/sync", server.url());
    let answer = send(
        &raw_client(),
        Method::POST,
        &url,
        Some("text/plain"),
        Some(TOKEN),
        Some(records(json!({}))),
    )
    .await;
    expect(
        &answer,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::UnsupportedMediaType,
    );

    // Bad cursors and arguments, unknown routes, wrong methods.
    let feed = format!("{}/v1/collections/inbox/changes", server.url());
    let client = raw_client();
    for (query, code) in [
        ("after=abc", ErrorCode::InvalidCursor),
        ("after=-1", ErrorCode::InvalidCursor),
        ("after=99999999999999999999999", ErrorCode::InvalidCursor),
        ("after=9007199254740993", ErrorCode::InvalidCursor),
        ("limit=0", ErrorCode::InvalidArgument),
        ("wait=soon", ErrorCode::InvalidArgument),
        ("skip=9-3", ErrorCode::InvalidArgument),
        ("skip=1-9007199254740993", ErrorCode::InvalidArgument),
        ("skip=1-18446744073709551615", ErrorCode::InvalidArgument),
        ("after=1&after=2", ErrorCode::InvalidArgument),
    ] {
        let answer = send(
            &client,
            Method::GET,
            &format!("{feed}?{query}"),
            None,
            Some(TOKEN),
            None,
        )
        .await;
        expect(&answer, StatusCode::BAD_REQUEST, code);
    }
    // A limit past every integer is lowered to the server's largest page,
    // as a smaller one too large is, not refused from some length on.
    let answer = send(
        &client,
        Method::GET,
        &format!("{feed}?limit=99999999999999999999999"),
        None,
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    // An `after` past every integer is refused quoting what was sent.
    let answer = send(
        &client,
        Method::GET,
        &format!("{feed}?after=99999999999999999999999"),
        None,
        Some(TOKEN),
        None,
    )
    .await;
    assert!(
        answer.text.contains("99999999999999999999999"),
        "{}",
        answer.text
    );
    // An empty collection name is a name no store takes.
    let answer = send(
        &client,
        Method::GET,
        &format!("{}/v1/collections//changes", server.url()),
        None,
        Some(TOKEN),
        None,
    )
    .await;
    expect(
        &answer,
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidCollection,
    );
    let answer = send(
        &client,
        Method::GET,
        &format!("{}/v1/nothing", server.url()),
        None,
        Some(TOKEN),
        None,
    )
    .await;
    expect(&answer, StatusCode::NOT_FOUND, ErrorCode::NotFound);
    let answer = send(&client, Method::DELETE, &feed, None, Some(TOKEN), None).await;
    expect(
        &answer,
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
    );
    let bad_name = format!("{}/v1/collections/bad%0Aname/changes", server.url());
    let answer = send(&client, Method::GET, &bad_name, None, Some(TOKEN), None).await;
    expect(
        &answer,
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidCollection,
    );

    assert!(
        server.engine().list_collections().await.unwrap().is_empty(),
        "nothing was written"
    );

    // The same valid records alone go through.
    let answer = push(
        &server,
        "inbox",
        serde_json::to_vec(&json!({"records": good})).unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(server.engine().get_all("inbox").await.unwrap().len(), 3);
    server.stop().await;
}

/// A request that is wrong by construction, of one of several kinds.
fn malformed(
    rng: &mut fastrand::Rng,
    base: &str,
    good: &[Value],
) -> (
    Method,
    String,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
) {
    let collection = ["inbox", "notes", "tasks"][rng.usize(..3)];
    let sync = format!("{base}/v1/collections/{collection}/sync");
    let feed = format!("{base}/v1/collections/{collection}/changes");
    let json = Some("application/json".to_owned());
    let token = Some(TOKEN.to_owned());
    let with = |record: Value| {
        let mut records: Vec<Value> = good.iter().take(1 + good.len() / 2).cloned().collect();
        records.insert(0, record);
        serde_json::to_vec(&json!({ "records": records })).unwrap()
    };
    let mut record = good[rng.usize(..good.len())].clone();
    match rng.u8(..12) {
        // Random bytes.
        0 => {
            let bytes: Vec<u8> = (0..rng.usize(1..300)).map(|_| rng.u8(..)).collect();
            (Method::POST, sync, json, token, Some(bytes))
        }
        // Valid records, cut short.
        1 => {
            let full = serde_json::to_vec(&json!({ "records": good })).unwrap();
            let cut = rng.usize(..full.len());
            (Method::POST, sync, json, token, Some(full[..cut].to_vec()))
        }
        // JSON of the wrong shape.
        2 => {
            let body = [
                json!(null),
                json!([]),
                json!({"record": []}),
                json!({"records": "all"}),
                json!({"records": {"id": "x"}}),
                json!(rng.i64(..)),
            ][rng.usize(..6)]
            .to_string();
            (Method::POST, sync, json, token, Some(body.into_bytes()))
        }
        // A broken record among valid ones.
        3 => {
            let broken = [
                json!(rng.u32(..)),
                json!("a string"),
                json!([1, 2]),
                json!({"no_id": true}),
                json!({"id": rng.u32(..)}),
                json!({"id": ""}),
                json!({"id": "bell\u{7}"}),
                json!({"id": "x".repeat(1025 + rng.usize(..100))}),
            ][rng.usize(..8)]
            .clone();
            (Method::POST, sync, json, token, Some(with(broken)))
        }
        // Valid records with one metadata value of the wrong type.
        4 => {
            let key = ["_version", "_timestamp", "_deleted", "_clientId", "_sync"][rng.usize(..5)];
            record[key] = [
                json!("text"),
                json!(-1),
                json!([]),
                json!({"fields": 3}),
                json!(1.5),
            ][rng.usize(..5)]
            .clone();
            if key == "_sync" && record[key].is_object() {
                record[key] = json!({"fields": {"n": "not a stamp"}});
            }
            record["id"] = json!(format!("meta-{}", rng.u32(..)));
            (Method::POST, sync, json, token, Some(with(record)))
        }
        // A stamp far ahead of the server's clock.
        5 => (
            Method::POST,
            sync,
            json,
            token,
            Some(with(from_the_future(&format!("f{}", rng.u32(..))))),
        ),
        // Nesting deeper than the parser allows.
        6 => {
            let depth = rng.usize(130..400);
            let body = format!(
                "{{\"records\":[{{\"id\":\"deep\",\"v\":{}{}}}]}}",
                "[".repeat(depth),
                "]".repeat(depth)
            );
            (Method::POST, sync, json, token, Some(body.into_bytes()))
        }
        // Garbage in the feed query.
        7 => {
            let query = [
                format!("after={}", rng.i64(i64::MIN..0)),
                format!("after=x{}", rng.u32(..)),
                format!("limit={}", ["0", "-5", "many", ""][rng.usize(..4)]),
                format!("wait={}", ["-1", "1e3", "forever"][rng.usize(..3)]),
                format!("skip={}-{}", rng.u32(100..200), rng.u32(..100)),
                format!("skip={}", ["1,,2", "a-b", "3,1", "1-2-3"][rng.usize(..4)]),
                "after=1&after=1".to_owned(),
                "after=%ZZ".to_owned(),
            ][rng.usize(..8)]
            .clone();
            (Method::GET, format!("{feed}?{query}"), None, token, None)
        }
        // Routes that do not exist, names that are not names.
        8 => {
            let path = [
                format!("/v2/collections/{collection}/changes"),
                format!("/v1/{}", rng.u32(..)),
                "/v1/collections/%00/changes".to_owned(),
                format!("/v1/collections/{}/changes", "n".repeat(1025)),
                format!("/v1/collections/{collection}/feed"),
                "/".to_owned(),
            ][rng.usize(..6)]
            .clone();
            (Method::GET, format!("{base}{path}"), None, token, None)
        }
        // Methods a route does not take.
        9 => {
            let method = [Method::PUT, Method::DELETE, Method::PATCH][rng.usize(..3)].clone();
            let url = [sync, feed][rng.usize(..2)].clone();
            (method, url, json, token, Some(b"{}".to_vec()))
        }
        // Not JSON by its content type.
        10 => {
            let content_type = [
                "text/plain",
                "application/x-www-form-urlencoded",
                "application/jsonx",
            ][rng.usize(..3)];
            (
                Method::POST,
                sync,
                Some(content_type.to_owned()),
                token,
                Some(with(record)),
            )
        }
        // Bad credentials on a valid push.
        _ => {
            let token = [
                "",
                "Bearer",
                "test-secreT",
                "test-secret-",
                &"z".repeat(rng.usize(1..500)),
            ][rng.usize(..5)]
            .to_owned();
            (Method::POST, sync, json, Some(token), Some(with(record)))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_random_malformed_requests_get_typed_4xx_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FsServer::start(dir.path(), options()).await;
    let good = valid_records(6).await;
    let client = raw_client();
    let mut rng = fastrand::Rng::with_seed(0x0BAD_1000);
    let mut seen = std::collections::BTreeMap::new();
    for round in 0..1000 {
        let (method, url, content_type, token, body) = malformed(&mut rng, &server.url(), &good);
        let answer = send(
            &client,
            method.clone(),
            &url,
            content_type.as_deref(),
            token.as_deref(),
            body,
        )
        .await;
        assert!(
            answer.status.is_client_error(),
            "request {round} ({method} {url}) got {}: {}",
            answer.status,
            answer.text
        );
        let detail = answer.detail.unwrap_or_else(|| {
            panic!(
                "request {round} ({method} {url}): not a typed error body: {}",
                answer.text
            )
        });
        assert_eq!(detail.code.status(), answer.status.as_u16());
        *seen.entry(format!("{:?}", detail.code)).or_insert(0) += 1;
    }
    eprintln!("refusals by code: {seen:?}");
    assert!(
        seen.len() >= 8,
        "the requests cover many kinds of refusal: {seen:?}"
    );
    assert!(
        server.engine().list_collections().await.unwrap().is_empty(),
        "no malformed request wrote anything"
    );
    let health = raw_client()
        .get(format!("{}/v1/health", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK, "the server still answers");
    server.stop().await;
}

/// A body's declared length is the client's word: with no bound on bodies,
/// a length near 2^64 made the server reserve that much before reading a
/// byte (a capacity-overflow panic; a length of some TiB would abort the
/// process). It gets an answer like any body that ends early.
#[tokio::test]
async fn a_declared_length_reserves_no_memory_before_the_bytes_come() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::default()
        .token(AccessToken::read_write(TOKEN))
        .max_body_bytes(usize::MAX);
    let mut server = FsServer::start(dir.path(), options).await;
    let address = server.url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "POST /v1/collections/notes/sync HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: 18446744073709551613\r\n\r\n{{\"records\":[]}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_string(&mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(server.is_running());
    server.stop().await;
}

/// A push holding one id twice is merged into a record the client never
/// sent: no write of it is an echo, or the client would skip pulling it and
/// keep one of its two halves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_repeating_an_id_reports_no_echo() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FsServer::start(dir.path(), options()).await;
    let mut halves = Vec::new();
    for (client, field) in [("phone", "title"), ("laptop", "body")] {
        let engine = SyncEngine::builder()
            .client_id(client)
            .build()
            .await
            .unwrap();
        let record = engine
            .put("inbox", &json!({"id": "n1", field: "x"}))
            .await
            .unwrap();
        halves.push(serde_json::to_value(&record).unwrap());
    }
    let body = serde_json::to_vec(&json!({ "records": halves })).unwrap();
    let answer = push(&server, "inbox", body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let response: Value = serde_json::from_str(&answer.text).unwrap();
    assert_eq!(response["added"], 1, "{response}");
    assert_eq!(response["echoes"], json!([]), "{response}");
    // One record alone is stored as sent: an echo.
    let single = serde_json::to_vec(&json!({ "records": [halves[0].clone()] })).unwrap();
    let answer = push(&server, "other", single).await;
    let response: Value = serde_json::from_str(&answer.text).unwrap();
    assert_ne!(response["echoes"], json!([]), "{response}");
    server.stop().await;
}

/// A server whose store was replaced under its engine (a Redis restarted
/// without persistence) answered its health route with the old feed id,
/// and its clients, trusting it, skipped every change up to their cursors,
/// for good. Its health route fails instead, and so does a client's sync,
/// until the server is restarted; and so do its feed pages, which a client
/// that read the health before the store was replaced (a watch following
/// the feed) goes on asking for, where they were numbered afresh under the
/// old id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_store_was_replaced_fails_its_health_route() {
    use syncforge::StorageBackend;

    let store = syncforge::MemoryBackend::new();
    let engine = SyncEngine::builder()
        .client_id("hq")
        .backend(store.clone())
        .build()
        .await
        .unwrap();
    let server = syncforge::http::Server::bind(engine, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let health = format!("{}/v1/health", server.url());
    let status = raw_client().get(&health).send().await.unwrap().status();
    assert_eq!(status, StatusCode::OK);

    store
        .set_meta("syncforge/store-id/v1", "another-store")
        .await
        .unwrap();
    let status = raw_client().get(&health).send().await.unwrap().status();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let feed = format!("{}/v1/collections/notes/changes", server.url());
    for query in ["?after=0", "?after=0&wait=50"] {
        let url = format!("{feed}{query}");
        let status = raw_client().get(&url).send().await.unwrap().status();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{query}");
    }
    let phone = SyncEngine::builder()
        .client_id("phone")
        .build()
        .await
        .unwrap();
    let peer = syncforge::http::HttpPeer::builder(server.url())
        .build()
        .unwrap();
    assert!(phone.sync_with(&peer, "notes").await.is_err());
    server.shutdown().await.unwrap();
}

/// The health route needs no token and checks the store's identity: health
/// requests arriving together share one check, so that anyone could not
/// make the server read its store as many times at once as they like.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_requests_arriving_together_share_one_store_check() {
    let engine = crate::support::memory_engine("hq").await;
    let replica = crate::support::InstrumentedReplica::new(engine)
        .slow_identity_checks(std::time::Duration::from_millis(300));
    let checks = replica.identity_checks.clone();
    let server = syncforge::http::Server::bind(replica, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let health = format!("{}/v1/health", server.url());
    // One client, made before: making one reads the system's certificates,
    // which would spread the requests over time.
    let client = raw_client();
    let mut asked = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request = client.get(&health).send();
        asked.spawn(async move { request.await.map(|answer| answer.status()) });
    }
    while let Some(answer) = asked.join_next().await {
        assert_eq!(answer.unwrap().unwrap(), StatusCode::OK);
    }
    let made = checks.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=5).contains(&made), "{made} checks for 20 requests");
    server.shutdown().await.unwrap();
}
