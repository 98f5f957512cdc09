//! TLS towards one peer: whom we accept on the other end (a CA chain and name, and/or pinned
//! public keys) and what we present (a client certificate).
//!
//! Without `tls_ca` and `tls_pin` the connection encrypts without checking the certificate: GRX
//! peers use self-signed ones, and opportunistic TLS must not fail on them (RFC 7435). With
//! either, a certificate that does not verify fails the handshake, and the caller never falls
//! back to plaintext.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::Digest;

use crate::config::PeerConfig;
use crate::tls::{read_certs, read_key, TlsError};

/// A SubjectPublicKeyInfo SHA-256 pin (`sha256/BASE64`, as HPKP and curl write them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin(pub [u8; 32]);

impl std::str::FromStr for Pin {
    type Err = String;

    fn from_str(s: &str) -> Result<Pin, String> {
        let b64 = s
            .strip_prefix("sha256/")
            .ok_or_else(|| format!("{s:?} does not start with \"sha256/\""))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("{s:?}: {e}"))?;
        let digest: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("{s:?} is not a SHA-256 digest (32 octets)"))?;
        Ok(Pin(digest))
    }
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.0);
        write!(f, "sha256/{b64}")
    }
}

impl Pin {
    /// The pin of a certificate's public key (`None`: the certificate does not parse).
    pub fn of(cert: &[u8]) -> Option<Pin> {
        let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
        Some(Pin(
            sha2::Sha256::digest(c.tbs_certificate.subject_pki.raw).into()
        ))
    }
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("verifies", &self.verifies)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// How we connect to one peer over TLS.
#[derive(Clone)]
pub struct PeerTls {
    pub connector: tokio_rustls::TlsConnector,
    /// Whether the peer's certificate is checked (then TLS is never optional).
    pub verifies: bool,
    /// The name to verify and send as SNI; `None`: the host we connect to.
    pub server_name: Option<String>,
}

/// The pin did not match: the evidence names what the peer presented.
#[derive(Debug)]
struct PinMismatch(Pin);

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "public key {} matches no tls_pin", self.0)
    }
}

impl std::error::Error for PinMismatch {}

/// Checks a peer's certificate against the configured CAs (chain and name) and pins — each
/// when configured; with neither, accepts any (encryption without authentication).
#[derive(Debug)]
struct PeerVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    pins: Vec<Pin>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(chain) = &self.chain {
            chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        }
        if !self.pins.is_empty() {
            let pin = Pin::of(end_entity).ok_or(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ))?;
            if !self.pins.contains(&pin) {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(PinMismatch(pin))),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The roots of a PEM file of CA certificates.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(path)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Rustls(format!("{}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The TLS client side for `peer`, from its configuration (files read now).
pub fn peer_tls(peer: &PeerConfig) -> Result<PeerTls, TlsError> {
    let client = match (&peer.client_cert, &peer.client_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    let (connector, verifies) = connector(peer.tls_ca.as_deref(), &peer.tls_pin, client)?;
    Ok(PeerTls {
        connector,
        verifies,
        server_name: peer.tls_server_name.clone(),
    })
}

/// A TLS connector that checks the server against `ca` (chain and name) and `pins` when given
/// (else accepts any certificate), presenting `client` (certificate, key) when given; and
/// whether it checks anything.
pub fn connector(
    ca: Option<&Path>,
    pins: &[String],
    client: Option<(&Path, &Path)>,
) -> Result<(tokio_rustls::TlsConnector, bool), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = match ca {
        Some(ca) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone())
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?,
        ),
        None => None,
    };
    let pins = pins
        .iter()
        .map(|p| p.parse::<Pin>().map_err(TlsError::Rustls))
        .collect::<Result<Vec<_>, _>>()?;
    let verifies = chain.is_some() || !pins.is_empty();
    let verifier = Arc::new(PeerVerifier {
        chain,
        pins,
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let cfg = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| TlsError::Rustls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    Ok((tokio_rustls::TlsConnector::from(Arc::new(cfg)), verifies))
}
