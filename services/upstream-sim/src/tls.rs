//! HTTPS for the simulated API, optionally requiring client certificates (mutual TLS), so that
//! a client's TLS settings (its CA, its certificate) are tested against a real server.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Where the API's certificate, its key and (for mutual TLS) the client CA are.
#[derive(Debug, Clone)]
pub struct ApiTls {
    pub certificate_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    /// Callers must present a certificate of this CA.
    pub client_ca_file: Option<std::path::PathBuf>,
}

impl ApiTls {
    /// The server configuration; the error names the file that could not be used.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let chain = certificates(&self.certificate_file)?;
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key_file)?).map_err(|error| {
            format!(
                "{}: not a PEM private key: {error}",
                self.key_file.display()
            )
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("TLS versions: {error}"))?;
        let builder = match &self.client_ca_file {
            Some(file) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in certificates(file)? {
                    roots
                        .add(certificate)
                        .map_err(|error| format!("{}: {error}", file.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|error| format!("{}: {error}", file.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|error| format!("{}: {error}", self.certificate_file.display()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn read(file: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|error| format!("{}: {error}", file.display()))
}

fn certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(&read(file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: not PEM certificates: {error}", file.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no certificate in it", file.display()));
    }
    Ok(certificates)
}
