//! The rustls configuration of an upstream's client, built here rather than by reqwest for one
//! reason: to see when the TLS handshake begins, so the probe can report TCP connect and the
//! handshake as separate phases.
//!
//! It is what reqwest builds itself (the platform's roots plus the upstream's CA, the
//! upstream's client certificate, ALPN h2 and http/1.1, an in-memory session cache), with the
//! session cache wrapped: rustls asks the cache for a key-share hint and a resumable session
//! while it writes the ClientHello, which is the first thing a handshake does, right after the
//! TCP connection is up. The wrapper marks that moment for the probe.

use std::sync::Arc;

use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, NamedGroup};

use crate::client::UpstreamTls;

/// Sessions kept for resumption, as rustls' default.
const SESSION_CACHE_SIZE: usize = 256;

/// The client configuration for `tls`; an error names what could not be read.
pub(crate) fn client_config(tls: &UpstreamTls) -> Result<ClientConfig, String> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let extra_roots = match &tls.ca_pem {
        Some(pem) => CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("the CA file is not PEM certificates: {error}"))?,
        None => Vec::new(),
    };
    let verifier = if extra_roots.is_empty() {
        rustls_platform_verifier::Verifier::new(Arc::clone(&provider))
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, Arc::clone(&provider))
    }
    .map_err(|error| format!("cannot load the trusted certificates: {error}"))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS versions: {error}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match &tls.identity_pem {
        Some(pem) => {
            let chain = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| format!("the client certificate is not PEM: {error}"))?;
            let key = PrivateKeyDer::from_pem_slice(pem)
                .map_err(|error| format!("the client key is not PEM: {error}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| format!("the client certificate and key: {error}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.resumption = Resumption::store(Arc::new(HandshakeStart {
        sessions: Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE_SIZE)),
    }));
    Ok(config)
}

/// The session cache, marking the start of each handshake for the probe.
#[derive(Debug)]
struct HandshakeStart {
    sessions: Arc<dyn ClientSessionStore>,
}

impl ClientSessionStore for HandshakeStart {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.sessions.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        crate::probe::mark_handshake_start();
        self.sessions.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.sessions.set_tls12_session(server_name, value);
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        crate::probe::mark_handshake_start();
        self.sessions.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.sessions.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.sessions.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        crate::probe::mark_handshake_start();
        self.sessions.take_tls13_ticket(server_name)
    }
}
