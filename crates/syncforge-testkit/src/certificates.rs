//! A certificate authority of a test's own and a server certificate it
//! signed for 127.0.0.1, made by the `openssl` command, for tests of TLS
//! connections (HTTPS, `rediss://`).

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::services::required;

/// What [`make`] wrote: the authority's certificate (PEM) for clients to
/// trust, and the server's certificate and key as files (PEM) and as bytes
/// (DER).
pub struct TestCertificates {
    /// The authority's certificate, PEM.
    pub authority_pem: Vec<u8>,
    /// The authority's certificate file, PEM.
    pub authority_file: PathBuf,
    /// The server's certificate file, PEM.
    pub server_certificate_file: PathBuf,
    /// The server's private key file, PEM.
    pub server_key_file: PathBuf,
    /// The server's certificate, DER.
    pub server_certificate_der: Vec<u8>,
    /// The server's private key, PKCS#8 DER.
    pub server_key_der: Vec<u8>,
}

impl TestCertificates {
    /// The arguments that make a `redis-server` serve TLS on `port`, with
    /// the server certificate, asking clients for none.
    pub fn redis_server_args(&self, port: u16) -> Vec<OsString> {
        vec![
            "--tls-port".into(),
            port.to_string().into(),
            "--tls-cert-file".into(),
            self.server_certificate_file.clone().into(),
            "--tls-key-file".into(),
            self.server_key_file.clone().into(),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}

/// Makes them in `dir`, or returns `None` (skipped, with a message) when
/// `openssl` is missing and services are not required.
///
/// # Panics
///
/// When `openssl` fails, or is missing while services are required.
pub fn make(dir: &Path) -> Option<TestCertificates> {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        assert!(
            !required(),
            "openssl is needed to make TLS test certificates (services are required): \
             install it (apt install openssl)"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: openssl not found; it makes this test's certificates"
        );
        return None;
    }
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n")
        .unwrap_or_else(|error| panic!("writing ext.cnf in {}: {error}", dir.display()));
    let steps: [&[&str]; 5] = [
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
        ],
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
    ];
    for args in steps {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|error| panic!("running openssl {args:?}: {error}"));
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .unwrap_or_else(|error| panic!("reading {name} in {}: {error}", dir.display()))
    };
    Some(TestCertificates {
        authority_pem: read("ca.pem"),
        authority_file: dir.join("ca.pem"),
        server_certificate_file: dir.join("server.pem"),
        server_key_file: dir.join("server.key"),
        server_certificate_der: read("server.der"),
        server_key_der: read("server.key.der"),
    })
}
