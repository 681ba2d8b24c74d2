//! Optional TLS on both listeners, with rustls. The HTTP port offers HTTP/2
//! and HTTP/1.1 by ALPN: over HTTP/1.1 a browser opens at most six
//! EventSource streams per origin, so a seventh tab would hang; over HTTP/2
//! they share one connection. The gRPC port offers HTTP/2 only.
//!
//! Handshakes run on each connection's own task, within the header
//! timeout (see `listener`), so a slow or silent client holds up no one.

use crate::startup::start::StartError;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{
            CertificateDer, PrivateKeyDer,
            pem::{self, PemObject},
        },
    },
};

/// The certificate chain and private key, both PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The acceptors of both ports.
#[derive(Clone)]
pub struct Acceptors {
    /// HTTP/2 and HTTP/1.1, by ALPN.
    pub http: TlsAcceptor,
    /// HTTP/2 only.
    pub grpc: TlsAcceptor,
}

/// Reads `files` and makes both ports' acceptors.
pub fn acceptors(files: &TlsFiles) -> Result<Acceptors, StartError> {
    Ok(Acceptors {
        http: acceptor(files, &[b"h2", b"http/1.1"])?,
        grpc: acceptor(files, &[b"h2"])?,
    })
}

/// A TLS acceptor for `files` offering the `alpn` protocols.
fn acceptor(files: &TlsFiles, alpn: &[&[u8]]) -> Result<TlsAcceptor, StartError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect())
        .map_err(|error| unusable(&files.cert, "a PEM certificate chain", error))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|error| unusable(&files.key, "a PEM private key", error))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(StartError::Tls)?;
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A file that cannot be read, or does not hold what was `expected`.
fn unusable(path: &Path, expected: &str, error: pem::Error) -> StartError {
    match error {
        pem::Error::Io(error) => StartError::read(path, error),
        error => StartError::Unusable {
            path: path.to_owned(),
            expected: format!("not {expected}"),
            source: Some(Box::new(error)),
        },
    }
}
