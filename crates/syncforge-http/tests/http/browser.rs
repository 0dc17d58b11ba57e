//! What browsers and proxies see: CORS for configured origins only, gzip
//! for clients that ask for it, the protocol version on every response.

use std::time::Duration;

use serde_json::json;
use syncforge::http::{Server, ServerOptions};

use crate::support::memory_engine;

/// A client that shows bodies as sent (no transparent decompression).
fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A "*" among listed origins is refused as the options' error, not by a
/// panic of the CORS layer, which `bind` built before checking the options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_among_listed_origins_is_a_config_error() {
    let options = ServerOptions::default().cors_allow_origins(["https://a.example", "*"]);
    let Err(refused) = Server::bind(memory_engine("hq").await, "127.0.0.1:0", options).await else {
        panic!("a \"*\" in a list of origins is refused");
    };
    assert!(
        matches!(
            refused,
            syncforge::Error::InvalidConfig {
                option: "cors_allow_origins",
                ..
            }
        ),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_for_allowed_origins_only() {
    let hq = memory_engine("hq").await;
    let options = ServerOptions::default().cors_allow_origins(["https://app.example.com"]);
    let server = Server::bind(hq, "127.0.0.1:0", options).await.unwrap();
    let url = format!("{}/v1/collections/notes/sync", server.url());
    let preflight = |origin: &'static str| {
        plain_client()
            .request(reqwest::Method::OPTIONS, url.clone())
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };

    let allowed = preflight("https://app.example.com").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let headers = allowed.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let allowed_headers = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );

    let other = preflight("https://evil.example.net").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    // Without CORS configured, no CORS headers at all.
    let closed = Server::bind(
        memory_engine("hq2").await,
        "127.0.0.1:0",
        ServerOptions::default(),
    )
    .await
    .unwrap();
    let answer = plain_client()
        .get(format!("{}/v1/health", closed.url()))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(!answer.headers().contains_key("access-control-allow-origin"));
    closed.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_gzipped_when_asked_and_carry_the_protocol_version() {
    let hq = memory_engine("hq").await;
    for n in 0..200 {
        hq.put(
            "notes",
            &json!({"id": format!("n{n}"), "body": "the same words again and again"}),
        )
        .await
        .unwrap();
    }
    let server = Server::bind(hq, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let url = format!("{}/v1/collections/notes/changes?limit=200", server.url());

    let plain = plain_client().get(url.clone()).send().await.unwrap();
    assert_eq!(plain.headers()["syncforge-protocol"], "1");
    assert!(!plain.headers().contains_key("content-encoding"));
    let plain_size = plain.bytes().await.unwrap().len();

    let zipped = plain_client()
        .get(url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    assert_eq!(zipped.headers()["syncforge-protocol"], "1");
    let zipped_size = zipped.bytes().await.unwrap().len();
    assert!(
        zipped_size * 4 < plain_size,
        "gzip: {zipped_size} bytes, plain: {plain_size}"
    );
    server.shutdown().await.unwrap();
}

/// No answer may be kept by a cache between client and server: a kept feed
/// page was answered again, with its changes as they were, to every later
/// request for it (a long poll at once), for as long as the cache kept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_may_be_kept_by_a_cache() {
    let hq = memory_engine("hq").await;
    hq.put("notes", &json!({"id": "n"})).await.unwrap();
    let server = Server::bind(hq, "127.0.0.1:0", ServerOptions::default())
        .await
        .unwrap();
    let base = server.url();
    for path in [
        "/v1/health",
        "/v1/collections",
        "/v1/collections/notes/changes?after=0",
        "/v1/no-such-route",
    ] {
        let answer = plain_client()
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.headers()["cache-control"], "no-store", "{path}");
    }
    server.shutdown().await.unwrap();
}
