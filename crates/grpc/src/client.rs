//! The calling side: the CA to trust, the client certificate, the bearer token to send.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::{GrpcSecurityError, path_or_env, read_file};

/// How a client reaches a Relais gRPC server. TLS is used for `https://` addresses; each key
/// left out falls back to `{PREFIX}_…` (the prefix is the caller's, such as `RELAIS_AUDIT`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcClientConfig {
    /// PEM CA of the server's certificate (`{PREFIX}_TLS_CA_FILE`); the system's CAs without.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that require one (`{PREFIX}_TLS_CERTIFICATE_FILE`).
    pub certificate_file: Option<PathBuf>,
    /// PEM private key of the client certificate (`{PREFIX}_TLS_KEY_FILE`).
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the address's host
    /// (`{PREFIX}_TLS_SERVER_NAME`).
    pub server_name: Option<String>,
    /// File holding the bearer token sent with every call (`{PREFIX}_TOKEN_FILE`).
    pub token_file: Option<PathBuf>,
}

/// The token a client sends; empty when none is configured. Used as a tonic interceptor.
#[derive(Clone, Default)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(<redacted>)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl BearerToken {
    /// Hands the token, if any, to `check` (start-up rules such as the production profile's).
    pub fn check(&self, check: impl Fn(&str) -> Result<(), String>) -> Result<(), String> {
        match &self.0 {
            Some(value) => {
                let text = value.to_str().unwrap_or_default();
                check(text.strip_prefix("Bearer ").unwrap_or(text))
            }
            None => Ok(()),
        }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl GrpcClientConfig {
    /// The endpoint for `url` and the token to send, with what the section leaves out taken
    /// from `{prefix}_…` variables. `section` names the section in error messages.
    pub fn endpoint(
        &self,
        section: &str,
        prefix: &str,
        url: &str,
    ) -> Result<(Endpoint, BearerToken), GrpcSecurityError> {
        self.endpoint_with(section, prefix, url, |name| std::env::var(name).ok())
    }

    /// [`Self::endpoint`] with the environment given (tests).
    pub fn endpoint_with(
        &self,
        section: &str,
        prefix: &str,
        url: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Endpoint, BearerToken), GrpcSecurityError> {
        let invalid = |reason: String| GrpcSecurityError::Invalid {
            section: section.to_owned(),
            reason,
        };
        let var = |suffix: &str| format!("{prefix}_{suffix}");
        let ca = path_or_env(&self.ca_file, &var("TLS_CA_FILE"), &env);
        let certificate = path_or_env(&self.certificate_file, &var("TLS_CERTIFICATE_FILE"), &env);
        let key = path_or_env(&self.key_file, &var("TLS_KEY_FILE"), &env);
        let server_name = self
            .server_name
            .clone()
            .or_else(|| env(&var("TLS_SERVER_NAME")).filter(|name| !name.is_empty()));
        let token_file = path_or_env(&self.token_file, &var("TOKEN_FILE"), &env);

        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|error| invalid(format!("{url:?} is not a gRPC address: {error}")))?;
        let tls_settings =
            ca.is_some() || certificate.is_some() || key.is_some() || server_name.is_some();
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &ca {
                Some(ca) => {
                    tls.ca_certificate(Certificate::from_pem(read_file(section, "ca_file", ca)?))
                }
                None => tls.with_native_roots(),
            };
            match (&certificate, &key) {
                (Some(certificate), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(
                        read_file(section, "certificate_file", certificate)?,
                        read_file(section, "key_file", key)?,
                    ));
                }
                (None, None) => {}
                _ => return Err(invalid("certificate_file and key_file go together".into())),
            }
            if let Some(name) = server_name {
                tls = tls.domain_name(name);
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|error| invalid(format!("TLS: {error}")))?;
        } else if tls_settings {
            return Err(invalid(format!(
                "TLS settings are given but the address {url:?} is not https://"
            )));
        }

        let token = match &token_file {
            Some(path) => {
                let content = read_file(section, "token_file", path)?;
                let token = String::from_utf8_lossy(&content).trim().to_owned();
                let value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| GrpcSecurityError::File {
                        section: section.to_owned(),
                        key: "token_file",
                        path: path.clone(),
                        reason: "the token is not printable ASCII".into(),
                    })?;
                BearerToken(Some(value))
            }
            None => BearerToken::default(),
        };
        Ok((endpoint, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_on_a_plain_address_are_refused() {
        let config = GrpcClientConfig {
            ca_file: Some("/ca.pem".into()),
            ..GrpcClientConfig::default()
        };
        let error = config
            .endpoint_with("audit", "RELAIS_AUDIT", "http://127.0.0.1:1", |_| None)
            .expect_err("refused")
            .to_string();
        assert!(error.contains("not https://"), "{error}");
    }

    #[test]
    fn the_token_file_comes_from_the_prefixed_variable() {
        let folder = relais_test_support::ScratchDir::new("grpc-token");
        let path = folder.write("token", "t0ken-with-enough-characters-to-pass-32\n");
        let name = path.display().to_string();
        let env = |variable: &str| (variable == "RELAIS_STATUS_TOKEN_FILE").then(|| name.clone());
        let (_, token) = GrpcClientConfig::default()
            .endpoint_with("status", "RELAIS_STATUS", "http://127.0.0.1:1", env)
            .expect("resolves");
        let mut request = tonic::Request::new(());
        request = tonic::service::Interceptor::call(&mut token.clone(), request).expect("adds");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().unwrap_or_default()),
            Some("Bearer t0ken-with-enough-characters-to-pass-32")
        );
        assert!(!format!("{token:?}").contains("t0ken"));
    }
}
