//! How Relais services serve and call gRPC: `AuditQuery` (audit-service, called by the
//! gateway and the `trail` command) and `WorkerReport` (gateway, called by the workers).
//!
//! A server's `[grpc]` section ([`GrpcServerConfig`]) turns on TLS (a certificate and key),
//! mutual TLS (a CA whose client certificates are required) and bearer tokens (a file of
//! accepted tokens), and limits the size of a request. A client's section
//! ([`GrpcClientConfig`]) gives the CA to trust, its own certificate and the token to send.
//! Each key falls back to a variable, and secrets are read from files, never from the
//! configuration itself. Health checks stay open to every client that completes the TLS
//! handshake: they say nothing but "serving".

mod client;
mod server;
mod tokens;

pub use client::{BearerToken, GrpcClientConfig};
pub use server::{GrpcServerConfig, RequireToken, RequireTokenLayer, ServerSecurity};
pub use tokens::{AcceptedTokens, MIN_TOKEN_LENGTH};

use std::path::{Path, PathBuf};

/// A gRPC security setting that cannot work. Messages name keys and files, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum GrpcSecurityError {
    #[error("{section}: {reason}")]
    Invalid { section: String, reason: String },
    #[error("{section}.{key}: cannot read {path}: {reason}")]
    File {
        section: String,
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// Reads a file named by a setting; the error names the setting and the file.
fn read_file(section: &str, key: &'static str, path: &Path) -> Result<Vec<u8>, GrpcSecurityError> {
    let bytes = std::fs::read(path).map_err(|error| GrpcSecurityError::File {
        section: section.to_owned(),
        key,
        path: path.to_owned(),
        reason: error.to_string(),
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(GrpcSecurityError::File {
            section: section.to_owned(),
            key,
            path: path.to_owned(),
            reason: "the file is empty".into(),
        });
    }
    Ok(bytes)
}

/// `current`, or the path in the variable `name` when set.
fn path_or_env(
    current: &Option<PathBuf>,
    name: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Option<PathBuf> {
    current.clone().or_else(|| {
        env(name)
            .filter(|value| !value.trim().is_empty())
            .map(PathBuf::from)
    })
}
