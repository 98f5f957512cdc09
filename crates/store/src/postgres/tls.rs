//! TLS to PostgreSQL: with `[store] ca` set (and `sslmode=require` in the URL to insist), the
//! server's certificate is verified against those CAs and the host name of the URL — stricter
//! than libpq's `require`, which encrypts without checking who answers.

use std::path::Path;
use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;

use crate::contract::StoreError;

fn open_err(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Open {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A connector that trusts exactly the certificates in the PEM file `ca`.
pub fn connector(ca: &Path) -> Result<MakeRustlsConnect, StoreError> {
    let pem = std::fs::read(ca).map_err(|e| open_err(ca, e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| open_err(ca, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| open_err(ca, format!("not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(open_err(ca, "no certificate in the file"));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| open_err(ca, e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
