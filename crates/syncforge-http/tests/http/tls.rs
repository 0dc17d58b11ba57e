//! `HttpPeer` over `https://` with a certificate authority of its own: a TLS
//! front (rustls) before a sync server, its certificate made by `openssl`
//! for this test.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use syncforge::http::{HttpPeer, Server, ServerOptions};
use syncforge::Error;

use crate::support::memory_engine;

/// A certificate authority and a certificate it signed for 127.0.0.1, or
/// `None` (skipped, with a message) when `openssl` is missing.
fn certificates(dir: &Path) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map(|output| {
                assert!(
                    output.status.success(),
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            })
    };
    if run(&["version"]).is_err() {
        assert!(
            !syncforge_testkit::services::required(),
            "openssl is needed to make this test's certificates (services are required): \
             install it (apt install openssl)"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: openssl not found; it makes this test's certificates"
        );
        return None;
    }
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for args in [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=syncforge test CA",
        ][..],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
        &[
            "x509",
            "-in",
            "server.pem",
            "-outform",
            "DER",
            "-out",
            "server.der",
        ],
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "server.key",
            "-outform",
            "DER",
            "-out",
            "server.key.der",
        ],
    ] {
        run(args).unwrap();
    }
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    Some((read("ca.pem"), read("server.der"), read("server.key.der")))
}

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
    let Some((authority, certificate, key)) = certificates(dir.path()) else {
        return;
    };
    let server = Server::bind(
        memory_engine("hq").await,
        "127.0.0.1:0",
        ServerOptions::default(),
    )
    .await
    .unwrap();
    let url = tls_front(certificate, key, server.local_addr()).await;

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
