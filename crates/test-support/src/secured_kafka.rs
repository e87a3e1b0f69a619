//! The native broker's secured listeners: TLS with SASL, and mutual TLS (deploy/native/kafka.sh).

use std::path::PathBuf;
use std::time::Duration;

use relais_kafka::{KafkaClientConfig, KafkaSasl, KafkaTls, SaslMechanism, SecurityProtocol};

use crate::{Endpoints, UnavailableError};

/// Where the secured listeners are and the files that open them.
#[derive(Debug, Clone)]
pub struct SecuredKafka {
    /// TLS + SASL (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN).
    pub sasl_ssl_bootstrap: String,
    /// Mutual TLS: a client certificate of the native CA is required.
    pub mtls_bootstrap: String,
    pki: PathBuf,
}

impl SecuredKafka {
    pub(crate) async fn connect(endpoints: &Endpoints) -> Result<Self, UnavailableError> {
        let secured = Self {
            sasl_ssl_bootstrap: endpoints.kafka_sasl_ssl_bootstrap.clone(),
            mtls_bootstrap: endpoints.kafka_mtls_bootstrap.clone(),
            pki: endpoints.state_dir.join("pki"),
        };
        for file in [secured.ca_file(), secured.password_file("relais")] {
            if !file.exists() {
                return Err(UnavailableError::Unhealthy {
                    endpoint: "the native Kafka's secured listeners".into(),
                    detail: format!("{} is missing", file.display()),
                });
            }
        }
        for address in [&secured.sasl_ssl_bootstrap, &secured.mtls_bootstrap] {
            tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(address),
            )
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|connected| connected.map_err(|error| error.to_string()))
            .map_err(|detail| UnavailableError::Unreachable {
                endpoint: format!("Kafka listener {address}"),
                detail,
            })?;
        }
        Ok(secured)
    }

    /// The CA that signs the broker's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.pki.join("relais-ca.pem")
    }

    /// The file holding a SASL user's password (`relais`: every ACL; `relais-noacl`: none).
    pub fn password_file(&self, user: &str) -> PathBuf {
        self.pki.join(format!("kafka-{user}.secret"))
    }

    /// TLS with SASL as `user`, for the TLS + SASL listener.
    pub fn sasl(&self, mechanism: SaslMechanism, user: &str) -> KafkaClientConfig {
        KafkaClientConfig {
            security_protocol: Some(SecurityProtocol::SaslSsl),
            tls: KafkaTls {
                ca_file: Some(self.ca_file()),
                ..KafkaTls::default()
            },
            sasl: KafkaSasl {
                mechanism: Some(mechanism),
                username: Some(user.to_owned()),
                password_file: Some(self.password_file(user)),
            },
            ..KafkaClientConfig::default()
        }
    }

    /// Mutual TLS with the certificate of `relais-mtls` (every ACL), for the mTLS listener.
    pub fn mtls(&self) -> KafkaClientConfig {
        self.mtls_as("kafka-client")
    }

    /// Mutual TLS with a certificate of the same name signed by a CA the broker does not trust.
    pub fn rogue_mtls(&self) -> KafkaClientConfig {
        self.mtls_as("kafka-rogue-client")
    }

    /// The `RELAIS_KAFKA_*` variables that make a service use `config` towards `bootstrap`.
    /// Every variable is named, the unused ones empty, so that they override what a process
    /// would otherwise inherit.
    pub fn environment(
        &self,
        bootstrap: &str,
        config: &KafkaClientConfig,
    ) -> Vec<(String, String)> {
        let path = |path: &Option<PathBuf>| {
            path.as_ref()
                .map(|path| path.display().to_string())
                .unwrap_or_default()
        };
        let protocol = match config.security_protocol {
            Some(SecurityProtocol::Plaintext) | None => "plaintext",
            Some(SecurityProtocol::Ssl) => "ssl",
            Some(SecurityProtocol::SaslPlaintext) => "sasl_plaintext",
            Some(SecurityProtocol::SaslSsl) => "sasl_ssl",
        };
        let mechanism = match config.sasl.mechanism {
            Some(SaslMechanism::ScramSha512) => "SCRAM-SHA-512",
            Some(SaslMechanism::ScramSha256) => "SCRAM-SHA-256",
            Some(SaslMechanism::Plain) => "PLAIN",
            None => "",
        };
        [
            ("RELAIS_KAFKA_BOOTSTRAP", bootstrap.to_owned()),
            ("RELAIS_KAFKA_SECURITY_PROTOCOL", protocol.to_owned()),
            ("RELAIS_KAFKA_TLS_CA_FILE", path(&config.tls.ca_file)),
            (
                "RELAIS_KAFKA_TLS_CERTIFICATE_FILE",
                path(&config.tls.certificate_file),
            ),
            ("RELAIS_KAFKA_TLS_KEY_FILE", path(&config.tls.key_file)),
            ("RELAIS_KAFKA_SASL_MECHANISM", mechanism.to_owned()),
            (
                "RELAIS_KAFKA_SASL_USERNAME",
                config.sasl.username.clone().unwrap_or_default(),
            ),
            (
                "RELAIS_KAFKA_SASL_PASSWORD_FILE",
                path(&config.sasl.password_file),
            ),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    fn mtls_as(&self, name: &str) -> KafkaClientConfig {
        KafkaClientConfig {
            security_protocol: Some(SecurityProtocol::Ssl),
            tls: KafkaTls {
                ca_file: Some(self.ca_file()),
                certificate_file: Some(self.pki.join(format!("{name}.pem"))),
                key_file: Some(self.pki.join(format!("{name}.key"))),
                ..KafkaTls::default()
            },
            ..KafkaClientConfig::default()
        }
    }
}
