//! `HttpPeer` over `https://` with a certificate authority of its own: a TLS
//! front (rustls) before a sync server, its certificate made by `openssl`
//! for this test.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use syncforge::http::{HttpPeer, Server, ServerOptions};
use syncforge::Error;

use crate::support::memory_engine;

/// Serves TLS on a free port of 127.0.0.1, passing each connection on to
/// `backend` in the clear; returns the `https://` URL.
async fn tls_front(certificate: Vec<u8>, key: Vec<u8>, backend: std::net::SocketAddr) -> String {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(certificate)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake.
                let Ok(mut secured) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut secured, &mut plain).await;
            });
        }
    });
    url
}

/// A server whose certificate a private authority signed is refused until
/// the peer is given that authority, and then reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_given_a_certificate_authority_reaches_a_server_it_signed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(certificates) = syncforge_testkit::certificates::make(dir.path()) else {
        return;
    };
    let authority = certificates.authority_pem;
    let server = Server::bind(
        memory_engine("hq").await,
        "127.0.0.1:0",
        ServerOptions::default(),
    )
    .await
    .unwrap();
    let url = tls_front(
        certificates.server_certificate_der,
        certificates.server_key_der,
        server.local_addr(),
    )
    .await;

    // Refused at once, and not as a failure that may go away by itself.
    let stranger = HttpPeer::new(&url).unwrap();
    let refused = stranger.health().await.unwrap_err();
    assert!(
        matches!(&refused, Error::Storage { message, .. } if message.contains("root_certificates_pem")),
        "{refused:?}"
    );

    let trusting = HttpPeer::builder(&url)
        .root_certificates_pem(authority)
        .build()
        .unwrap();
    let health = trusting.health().await.unwrap();
    assert_eq!(health.status, "ok");

    let refused = HttpPeer::builder(&url)
        .root_certificates_pem("not a certificate")
        .build()
        .unwrap_err();
    assert!(
        matches!(
            refused,
            Error::InvalidConfig {
                option: "root_certificates_pem",
                ..
            }
        ),
        "{refused:?}"
    );
    server.shutdown().await.unwrap();
}
