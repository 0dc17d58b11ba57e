//! `rediss://`: a private `redis-server` serving TLS with a certificate a
//! test authority signed.

use std::path::Path;
use std::time::{Duration, Instant};

use syncforge_backend_redis::{RedisBackend, RedisConfig};
use syncforge_core::{ClientId, Error, Hlc, StorageBackend};
use syncforge_testkit::certificates::TestCertificates;

use crate::support::{coll, fresh_prefix, record, rid, sync_records, PrivateServer};

/// A private server serving TLS with a certificate of the test authority
/// (files in `dir`), asking clients for certificates when
/// `client_certificates`; `None` (skipped) without openssl or a TLS
/// `redis-server`.
async fn tls_server(
    dir: &Path,
    client_certificates: bool,
) -> Option<(TestCertificates, PrivateServer)> {
    let certificates = syncforge_testkit::certificates::make(dir)?;
    let server = PrivateServer::start_with_tls(&certificates, client_certificates).await?;
    Some((certificates, server))
}

/// A client given the server's authority writes and reads over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_given_the_servers_authority_works_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let Some((certificates, server)) = tls_server(dir.path(), false).await else {
        return;
    };
    let config = server.tls_config(&fresh_prefix("tls"), &certificates.authority_pem);
    assert!(config.to_string().starts_with("rediss://"));
    let store = RedisBackend::connect(config).await.unwrap();
    let notes = coll("notes");
    let written = record(&mut Hlc::new(ClientId::new("tls").unwrap()), "n1", 1);
    let synced = sync_records(&store, &notes, std::slice::from_ref(&written), 10, 0)
        .await
        .unwrap();
    assert_eq!(synced.written, 1);
    let read = store.get(&notes, &rid("n1")).await.unwrap().unwrap();
    assert_eq!(read.record.to_json(), written.to_json());
    store.close().await.unwrap();
}

/// A server whose certificate no trusted authority signed is refused at
/// once, as a failure that retrying does not mend, with advice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_no_trusted_authority_signed_is_refused_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let Some((certificates, server)) = tls_server(dir.path(), false).await else {
        return;
    };
    let trusted = server.tls_config(&fresh_prefix("tls-stranger"), &certificates.authority_pem);
    let stranger = RedisConfig {
        tls_root_certificates: Vec::new(),
        ..trusted
    };
    refused_for_good(stranger, "TLS handshake failed").await;
}

/// A server that asks for a client certificate (Redis's default) is
/// refused for good, with advice about client certificates, which this
/// client does not send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_asking_for_client_certificates_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let Some((certificates, server)) = tls_server(dir.path(), true).await else {
        return;
    };
    let config = server.tls_config(&fresh_prefix("tls-client"), &certificates.authority_pem);
    refused_for_good(config, "client certificate").await;
}

/// Connecting with `config` fails at once (well within a connect timeout of
/// ten seconds: the handshake's verdict is the answer, not a timeout) as a
/// failure that retrying does not mend, with `advice`.
async fn refused_for_good(config: RedisConfig, advice: &str) {
    let config = RedisConfig {
        connect_timeout: Duration::from_secs(10),
        ..config
    };
    let started = Instant::now();
    let error = RedisBackend::connect(config).await.err().unwrap();
    assert!(
        matches!(error, Error::Storage { .. }),
        "refused as {error:?}"
    );
    assert!(error.to_string().contains(advice), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Authorities that are not PEM certificates, or given without TLS, are
/// refused before connecting.
#[tokio::test]
async fn bad_certificate_authorities_are_refused_before_connecting() {
    for (tls, roots) in [
        (true, vec![b"not a certificate".to_vec()]),
        (true, vec![Vec::new()]),
        (
            true,
            vec![b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_vec()],
        ),
        (false, vec![b"-----BEGIN CERTIFICATE-----\n".to_vec()]),
    ] {
        let config = RedisConfig {
            port: 1,
            tls,
            tls_root_certificates: roots,
            ..RedisConfig::default()
        };
        let error = RedisBackend::connect(config).await.err().unwrap();
        assert!(
            matches!(
                error,
                Error::InvalidConfig {
                    option: "tls_root_certificates",
                    ..
                }
            ),
            "{error:?}"
        );
    }
}
