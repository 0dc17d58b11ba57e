//! The TLS client configuration of `rediss://` connections.

use std::sync::Arc;

use fred::types::config::TlsConnector;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use syncforge_core::{Error, Result};

use crate::config::RedisConfig;

/// The connector for `config`: the system's certificate authorities and
/// `config.tls_root_certificates`, with rustls's ring provider named
/// explicitly. Left to choose, rustls panics when a program also links
/// another provider (object_store's S3 client brings aws-lc-rs).
pub(crate) fn connector(config: &RedisConfig) -> Result<TlsConnector> {
    // Read first: a bundle that is no certificate is refused before the
    // system's store is read.
    let extra = extra_roots(&config.tls_root_certificates)?;
    let mut roots = RootCertStore::empty();
    // A system store that cannot be read in part still trusts what it could
    // read: a server signed by none of it fails its handshake with advice.
    for certificate in rustls_native_certs::load_native_certs().certs {
        // The system's bundle may hold certificates rustls cannot use; the
        // others are enough.
        let _ = roots.add(certificate);
    }
    for certificate in extra {
        roots
            .add(certificate)
            .map_err(|error| Error::InvalidConfig {
                option: "tls_root_certificates",
                reason: format!("a certificate was refused as an authority: {error}"),
            })?;
    }
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| Error::InvalidConfig {
                option: "tls",
                reason: format!("no TLS version to offer: {error}"),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(TlsConnector::from(client))
}

/// The certificates of `bundles` (PEM), refusing a bundle that holds none or
/// cannot be read, so that a wrong file is named before connecting.
fn extra_roots(bundles: &[Vec<u8>]) -> Result<Vec<CertificateDer<'static>>> {
    let mut certificates = Vec::new();
    for (index, bundle) in bundles.iter().enumerate() {
        let refused = |reason: String| Error::InvalidConfig {
            option: "tls_root_certificates",
            reason: format!("bundle {index}: {reason}"),
        };
        let before = certificates.len();
        for certificate in CertificateDer::pem_slice_iter(bundle) {
            certificates.push(certificate.map_err(|error| refused(error.to_string()))?);
        }
        if certificates.len() == before {
            return Err(refused(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
            ));
        }
    }
    Ok(certificates)
}
