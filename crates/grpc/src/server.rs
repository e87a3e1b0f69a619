//! The serving side: TLS, required client certificates, bearer tokens, request sizes.

use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::{AcceptedTokens, GrpcSecurityError, path_or_env, read_file};

/// A gRPC server's `[grpc]` section. Without any key it serves plain text to anyone, as in
/// development; each key left out falls back to the variable named beside it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcServerConfig {
    /// PEM certificate chain the server presents (`RELAIS_GRPC_TLS_CERTIFICATE_FILE`). With
    /// `key_file`, the server speaks TLS only.
    pub certificate_file: Option<PathBuf>,
    /// PEM private key of the certificate (`RELAIS_GRPC_TLS_KEY_FILE`).
    pub key_file: Option<PathBuf>,
    /// PEM CA whose client certificates are required of every caller: mutual TLS
    /// (`RELAIS_GRPC_CLIENT_CA_FILE`). Needs the server's own certificate.
    pub client_ca_file: Option<PathBuf>,
    /// File of the accepted bearer tokens, one per line, each at least 32 characters
    /// (`RELAIS_GRPC_TOKENS_FILE`). Every call but health checks must carry one.
    pub tokens_file: Option<PathBuf>,
    /// The largest request message accepted, in bytes; a larger one is refused with
    /// `OUT_OF_RANGE` before it is decoded.
    pub max_request_bytes: usize,
}

impl Default for GrpcServerConfig {
    fn default() -> Self {
        Self {
            certificate_file: None,
            key_file: None,
            client_ca_file: None,
            tokens_file: None,
            max_request_bytes: 1024 * 1024,
        }
    }
}

impl GrpcServerConfig {
    /// Fills what the section leaves out from the process environment and reads the files.
    pub fn resolve(&self) -> Result<ServerSecurity, GrpcSecurityError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// [`Self::resolve`] with the environment given (tests).
    pub fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ServerSecurity, GrpcSecurityError> {
        const SECTION: &str = "grpc";
        let invalid = |reason: &str| GrpcSecurityError::Invalid {
            section: SECTION.into(),
            reason: reason.into(),
        };
        let certificate = path_or_env(
            &self.certificate_file,
            "RELAIS_GRPC_TLS_CERTIFICATE_FILE",
            &env,
        );
        let key = path_or_env(&self.key_file, "RELAIS_GRPC_TLS_KEY_FILE", &env);
        let client_ca = path_or_env(&self.client_ca_file, "RELAIS_GRPC_CLIENT_CA_FILE", &env);
        let tokens_file = path_or_env(&self.tokens_file, "RELAIS_GRPC_TOKENS_FILE", &env);
        if self.max_request_bytes < 1024 {
            return Err(invalid("max_request_bytes must be at least 1024"));
        }

        let tls = match (&certificate, &key) {
            (Some(certificate), Some(key)) => {
                let identity = Identity::from_pem(
                    read_file(SECTION, "certificate_file", certificate)?,
                    read_file(SECTION, "key_file", key)?,
                );
                let mut tls = ServerTlsConfig::new().identity(identity);
                if let Some(ca) = &client_ca {
                    tls = tls.client_ca_root(Certificate::from_pem(read_file(
                        SECTION,
                        "client_ca_file",
                        ca,
                    )?));
                }
                Some(tls)
            }
            (None, None) if client_ca.is_some() => {
                return Err(invalid(
                    "client_ca_file needs the server's own certificate_file and key_file (client certificates are asked for during TLS)",
                ));
            }
            (None, None) => None,
            _ => return Err(invalid("certificate_file and key_file go together")),
        };
        let tokens = match &tokens_file {
            Some(path) => {
                let content = read_file(SECTION, "tokens_file", path)?;
                let parsed = AcceptedTokens::parse(&String::from_utf8_lossy(&content)).map_err(
                    |reason| GrpcSecurityError::File {
                        section: SECTION.into(),
                        key: "tokens_file",
                        path: path.clone(),
                        reason,
                    },
                )?;
                Some(Arc::new(parsed))
            }
            None => None,
        };
        Ok(ServerSecurity {
            mutual_tls: tls.is_some() && client_ca.is_some(),
            tls,
            tokens,
            max_request_bytes: self.max_request_bytes,
        })
    }
}

/// A resolved `[grpc]` section, ready to build a server with.
#[derive(Debug, Clone)]
pub struct ServerSecurity {
    tls: Option<ServerTlsConfig>,
    mutual_tls: bool,
    tokens: Option<Arc<AcceptedTokens>>,
    max_request_bytes: usize,
}

impl ServerSecurity {
    /// A server builder speaking TLS when configured.
    pub fn server(&self) -> Result<Server, tonic::transport::Error> {
        let builder = Server::builder();
        match &self.tls {
            Some(tls) => builder.tls_config(tls.clone()),
            None => Ok(builder),
        }
    }

    /// The layer that refuses calls without an accepted token (it lets everything through
    /// when no tokens file is configured).
    pub fn require_token(&self) -> RequireTokenLayer {
        RequireTokenLayer {
            tokens: self.tokens.clone(),
        }
    }

    /// Hands each accepted token to `check` (see [`AcceptedTokens::check_each`]).
    pub fn check_tokens(&self, check: impl Fn(&str) -> Result<(), String>) -> Result<(), String> {
        match &self.tokens {
            Some(tokens) => tokens.check_each(check),
            None => Ok(()),
        }
    }

    /// For the generated servers' `max_decoding_message_size`.
    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    /// How callers are checked, for the start-up log.
    pub fn describe(&self) -> &'static str {
        match (self.tls.is_some(), self.mutual_tls, self.tokens.is_some()) {
            (false, _, false) => "plain text, no authentication",
            (false, _, true) => "plain text, bearer tokens",
            (true, false, false) => "TLS, no authentication",
            (true, false, true) => "TLS, bearer tokens",
            (true, true, false) => "mutual TLS",
            (true, true, true) => "mutual TLS and bearer tokens",
        }
    }
}

/// Health checks answer without a token: they reveal nothing, and probes carry none.
const OPEN_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

#[derive(Debug, Clone)]
pub struct RequireTokenLayer {
    tokens: Option<Arc<AcceptedTokens>>,
}

impl<S> tower::Layer<S> for RequireTokenLayer {
    type Service = RequireToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireToken {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequireToken<S> {
    inner: S,
    tokens: Option<Arc<AcceptedTokens>>,
}

type Refusal<E> = Ready<Result<http::Response<tonic::body::Body>, E>>;

impl<S, B> tower::Service<http::Request<B>> for RequireToken<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Refusal<S::Error>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let allowed = match &self.tokens {
            None => true,
            Some(tokens) => {
                request.uri().path().starts_with(OPEN_PATH_PREFIX)
                    || tokens.accepts(
                        request
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .map(http::HeaderValue::as_bytes),
                    )
            }
        };
        if allowed {
            Either::Right(self.inner.call(request))
        } else {
            let status = tonic::Status::unauthenticated("an accepted bearer token is required");
            Either::Left(ready(Ok(status.into_http())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn nothing_configured_is_plain_text_for_anyone() {
        let security = GrpcServerConfig::default()
            .resolve_with(no_env)
            .expect("resolves");
        assert_eq!(security.describe(), "plain text, no authentication");
    }

    #[test]
    fn half_a_tls_setting_is_refused() {
        let config = GrpcServerConfig {
            certificate_file: Some("/x.pem".into()),
            ..GrpcServerConfig::default()
        };
        let error = config
            .resolve_with(no_env)
            .expect_err("refused")
            .to_string();
        assert!(error.contains("go together"), "{error}");
        let config = GrpcServerConfig {
            client_ca_file: Some("/ca.pem".into()),
            ..GrpcServerConfig::default()
        };
        let error = config
            .resolve_with(no_env)
            .expect_err("refused")
            .to_string();
        assert!(error.contains("client_ca_file needs"), "{error}");
    }

    #[test]
    fn files_come_from_the_environment_when_the_section_leaves_them_out() {
        let env = |name: &str| {
            (name == "RELAIS_GRPC_TOKENS_FILE").then(|| "/nonexistent/tokens".to_owned())
        };
        let error = GrpcServerConfig::default()
            .resolve_with(env)
            .expect_err("missing file")
            .to_string();
        assert!(
            error.contains("grpc.tokens_file") && error.contains("/nonexistent/tokens"),
            "{error}"
        );
    }
}
