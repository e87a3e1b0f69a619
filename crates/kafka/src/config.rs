//! The `[kafka.client]` section and its resolution into librdkafka settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::{KafkaClient, Secret};

/// How often clients refresh what they know of their topics unless `settings` says otherwise.
/// librdkafka's five minutes would leave partitions added to a topic unread, and a partition
/// added to a topic a service writes unknown to its producer, that long.
const METADATA_REFRESH_MS: &str = "30000";

/// How a Kafka client reaches the brokers. Each key left out falls back to its `RELAIS_KAFKA_*`
/// variable (named beside it); without any, the client speaks plain text, as in development.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaClientConfig {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (`RELAIS_KAFKA_SECURITY_PROTOCOL`).
    /// Left out, it follows from the rest: SASL settings mean SASL, TLS files mean TLS.
    pub security_protocol: Option<SecurityProtocol>,
    pub tls: KafkaTls,
    pub sasl: KafkaSasl,
    /// Further librdkafka settings (timeouts, sizes, `client.rack`). The settings the keys above
    /// cover, and secrets, are refused here. `topic.metadata.refresh.interval.ms` is 30 s
    /// unless set (librdkafka: 5 min): partitions added to a topic are read within half a
    /// minute.
    pub settings: BTreeMap<String, String>,
}

/// TLS towards the brokers. Without a CA file the system's trusted certificates are used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaTls {
    /// PEM file of the CAs that sign the brokers' certificates (`RELAIS_KAFKA_TLS_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (`RELAIS_KAFKA_TLS_CERTIFICATE_FILE`).
    pub certificate_file: Option<PathBuf>,
    /// PEM private key of the client certificate (`RELAIS_KAFKA_TLS_KEY_FILE`).
    pub key_file: Option<PathBuf>,
    /// File holding the private key's password, if it is encrypted
    /// (`RELAIS_KAFKA_TLS_KEY_PASSWORD_FILE`).
    pub key_password_file: Option<PathBuf>,
    /// Whether the broker's certificate must name the host it was reached at
    /// (`RELAIS_KAFKA_TLS_VERIFY_HOSTNAME`; default true).
    pub verify_hostname: Option<bool>,
}

/// SASL authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSasl {
    /// `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN` (`RELAIS_KAFKA_SASL_MECHANISM`).
    pub mechanism: Option<SaslMechanism>,
    /// The SASL user (`RELAIS_KAFKA_SASL_USERNAME`).
    pub username: Option<String>,
    /// File holding the password (`RELAIS_KAFKA_SASL_PASSWORD_FILE`; or the password itself in
    /// `RELAIS_KAFKA_SASL_PASSWORD`, never in this file).
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn librdkafka_name(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "plaintext" => Some(Self::Plaintext),
            "ssl" => Some(Self::Ssl),
            "sasl_plaintext" => Some(Self::SaslPlaintext),
            "sasl_ssl" => Some(Self::SaslSsl),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    fn librdkafka_name(self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_uppercase().as_str() {
            "SCRAM-SHA-512" => Some(Self::ScramSha512),
            "SCRAM-SHA-256" => Some(Self::ScramSha256),
            "PLAIN" => Some(Self::Plain),
            _ => None,
        }
    }
}

/// A `[kafka.client]` that cannot work. The messages name keys and files, never a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KafkaConfigError {
    #[error("{variable}: {reason}")]
    Variable {
        variable: &'static str,
        reason: String,
    },
    #[error("kafka.client: {0}")]
    Invalid(String),
    #[error("kafka.client.settings.\"{key}\" is not accepted here: {instead}")]
    ReservedSetting { key: String, instead: &'static str },
    #[error("kafka.client.{key}: cannot read {path}: {reason}")]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// Settings that have a typed key (or are secrets), and what to use instead.
const RESERVED_SETTINGS: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "the brokers are the service's --kafka-bootstrap (RELAIS_KAFKA_BOOTSTRAP)",
    ),
    ("security.protocol", "use kafka.client.security_protocol"),
    ("sasl.mechanism", "use kafka.client.sasl.mechanism"),
    ("sasl.mechanisms", "use kafka.client.sasl.mechanism"),
    ("sasl.username", "use kafka.client.sasl.username"),
    (
        "sasl.password",
        "a password is read from kafka.client.sasl.password_file",
    ),
    ("ssl.ca.location", "use kafka.client.tls.ca_file"),
    ("ssl.ca.pem", "use kafka.client.tls.ca_file"),
    (
        "ssl.certificate.location",
        "use kafka.client.tls.certificate_file",
    ),
    (
        "ssl.certificate.pem",
        "use kafka.client.tls.certificate_file",
    ),
    ("ssl.key.location", "use kafka.client.tls.key_file"),
    ("ssl.key.pem", "use kafka.client.tls.key_file"),
    (
        "ssl.key.password",
        "a key password is read from kafka.client.tls.key_password_file",
    ),
    (
        "ssl.keystore.password",
        "use PEM files: kafka.client.tls.certificate_file and key_file",
    ),
    (
        "ssl.endpoint.identification.algorithm",
        "use kafka.client.tls.verify_hostname",
    ),
];

impl KafkaClientConfig {
    /// Checks the section, fills what it leaves out from the process environment, reads the
    /// secret files and gives the client settings for `bootstrap`.
    pub fn resolve(&self, bootstrap: &str) -> Result<KafkaClient, KafkaConfigError> {
        self.resolve_with(bootstrap, |name| std::env::var(name).ok())
    }

    /// [`Self::resolve`] with the environment given (tests).
    pub fn resolve_with(
        &self,
        bootstrap: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<KafkaClient, KafkaConfigError> {
        let config = self.with_env_fallbacks(&env)?;
        for key in config.settings.keys() {
            if let Some((_, instead)) = RESERVED_SETTINGS.iter().find(|(name, _)| name == key) {
                return Err(KafkaConfigError::ReservedSetting {
                    key: key.clone(),
                    instead,
                });
            }
        }
        let protocol = config.protocol()?;
        let mut settings = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        settings.insert("bootstrap.servers".to_owned(), bootstrap.to_owned());
        settings.insert(
            "security.protocol".to_owned(),
            protocol.librdkafka_name().to_owned(),
        );

        let tls = &config.tls;
        if protocol.uses_tls() {
            if let Some(ca) = &tls.ca_file {
                require_readable("tls.ca_file", ca)?;
                settings.insert("ssl.ca.location".to_owned(), path_setting(ca));
            }
            match (&tls.certificate_file, &tls.key_file) {
                (Some(certificate), Some(key)) => {
                    require_readable("tls.certificate_file", certificate)?;
                    require_readable("tls.key_file", key)?;
                    settings.insert(
                        "ssl.certificate.location".to_owned(),
                        path_setting(certificate),
                    );
                    settings.insert("ssl.key.location".to_owned(), path_setting(key));
                }
                (None, None) => {}
                _ => {
                    return Err(KafkaConfigError::Invalid(
                        "tls.certificate_file and tls.key_file go together (mutual TLS needs both)"
                            .into(),
                    ));
                }
            }
            if let Some(path) = &tls.key_password_file {
                if tls.key_file.is_none() {
                    return Err(KafkaConfigError::Invalid(
                        "tls.key_password_file is set without tls.key_file".into(),
                    ));
                }
                secrets.insert(
                    "ssl.key.password",
                    read_secret("tls.key_password_file", path)?,
                );
            }
            let verify = tls.verify_hostname.unwrap_or(true);
            settings.insert(
                "ssl.endpoint.identification.algorithm".to_owned(),
                if verify { "https" } else { "none" }.to_owned(),
            );
        } else if tls != &KafkaTls::default() {
            return Err(KafkaConfigError::Invalid(format!(
                "TLS settings are given but security_protocol is {}: use ssl or sasl_ssl",
                protocol.librdkafka_name()
            )));
        }

        if protocol.uses_sasl() {
            let sasl = &config.sasl;
            let mechanism = sasl.mechanism.ok_or_else(|| {
                KafkaConfigError::Invalid(format!(
                    "security_protocol {} needs sasl.mechanism (SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN)",
                    protocol.librdkafka_name()
                ))
            })?;
            if mechanism == SaslMechanism::Plain && !protocol.uses_tls() {
                return Err(KafkaConfigError::Invalid(
                    "sasl.mechanism PLAIN over sasl_plaintext sends the password in clear: use sasl_ssl"
                        .into(),
                ));
            }
            let username = sasl
                .username
                .as_deref()
                .filter(|name| !name.trim().is_empty())
                .ok_or_else(|| KafkaConfigError::Invalid("SASL needs sasl.username".into()))?;
            let password = match (&sasl.password_file, env("RELAIS_KAFKA_SASL_PASSWORD")) {
                (Some(path), _) => read_secret("sasl.password_file", path)?,
                (None, Some(password)) if !password.is_empty() => Secret::new(password),
                (None, _) => {
                    return Err(KafkaConfigError::Invalid(
                        "SASL needs sasl.password_file (or RELAIS_KAFKA_SASL_PASSWORD)".into(),
                    ));
                }
            };
            settings.insert(
                "sasl.mechanism".to_owned(),
                mechanism.librdkafka_name().to_owned(),
            );
            settings.insert("sasl.username".to_owned(), username.to_owned());
            secrets.insert("sasl.password", password);
        } else if config.sasl != KafkaSasl::default() {
            return Err(KafkaConfigError::Invalid(format!(
                "SASL settings are given but security_protocol is {}: use sasl_ssl",
                protocol.librdkafka_name()
            )));
        }

        settings.insert(
            "topic.metadata.refresh.interval.ms".to_owned(),
            METADATA_REFRESH_MS.to_owned(),
        );
        settings.extend(config.settings.clone());
        Ok(KafkaClient::new(settings, secrets))
    }

    /// The protocol given, or the one the other settings imply.
    fn protocol(&self) -> Result<SecurityProtocol, KafkaConfigError> {
        if let Some(protocol) = self.security_protocol {
            return Ok(protocol);
        }
        let sasl = self.sasl != KafkaSasl::default();
        let tls = self.tls != KafkaTls::default();
        Ok(match (sasl, tls) {
            (false, false) => SecurityProtocol::Plaintext,
            (false, true) => SecurityProtocol::Ssl,
            (true, true) => SecurityProtocol::SaslSsl,
            (true, false) => {
                return Err(KafkaConfigError::Invalid(
                    "SASL settings without security_protocol: say sasl_ssl (or sasl_plaintext, which sends everything unencrypted)"
                        .into(),
                ));
            }
        })
    }

    /// This section with each key it leaves out taken from its `RELAIS_KAFKA_*` variable.
    fn with_env_fallbacks(
        &self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, KafkaConfigError> {
        let var = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        let path = |current: &Option<PathBuf>, name: &str| {
            current.clone().or_else(|| var(name).map(PathBuf::from))
        };
        let mut config = self.clone();
        if config.security_protocol.is_none()
            && let Some(value) = var("RELAIS_KAFKA_SECURITY_PROTOCOL")
        {
            config.security_protocol = Some(SecurityProtocol::parse(&value).ok_or_else(|| {
                KafkaConfigError::Variable {
                    variable: "RELAIS_KAFKA_SECURITY_PROTOCOL",
                    reason: format!(
                        "{value:?} is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"
                    ),
                }
            })?);
        }
        config.tls.ca_file = path(&config.tls.ca_file, "RELAIS_KAFKA_TLS_CA_FILE");
        config.tls.certificate_file = path(
            &config.tls.certificate_file,
            "RELAIS_KAFKA_TLS_CERTIFICATE_FILE",
        );
        config.tls.key_file = path(&config.tls.key_file, "RELAIS_KAFKA_TLS_KEY_FILE");
        config.tls.key_password_file = path(
            &config.tls.key_password_file,
            "RELAIS_KAFKA_TLS_KEY_PASSWORD_FILE",
        );
        if config.tls.verify_hostname.is_none()
            && let Some(value) = var("RELAIS_KAFKA_TLS_VERIFY_HOSTNAME")
        {
            config.tls.verify_hostname = Some(match value.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(KafkaConfigError::Variable {
                        variable: "RELAIS_KAFKA_TLS_VERIFY_HOSTNAME",
                        reason: format!("{value:?} is not true or false"),
                    });
                }
            });
        }
        if config.sasl.mechanism.is_none()
            && let Some(value) = var("RELAIS_KAFKA_SASL_MECHANISM")
        {
            config.sasl.mechanism =
                Some(
                    SaslMechanism::parse(&value).ok_or_else(|| KafkaConfigError::Variable {
                        variable: "RELAIS_KAFKA_SASL_MECHANISM",
                        reason: format!(
                            "{value:?} is not one of SCRAM-SHA-512, SCRAM-SHA-256, PLAIN"
                        ),
                    })?,
                );
        }
        if config.sasl.username.is_none() {
            config.sasl.username = var("RELAIS_KAFKA_SASL_USERNAME");
        }
        config.sasl.password_file = path(
            &config.sasl.password_file,
            "RELAIS_KAFKA_SASL_PASSWORD_FILE",
        );
        Ok(config)
    }
}

fn path_setting(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn require_readable(key: &'static str, path: &Path) -> Result<(), KafkaConfigError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|error| KafkaConfigError::File {
            key,
            path: path.to_owned(),
            reason: error.to_string(),
        })
}

/// A secret file's content without its final line break. An empty file is an error: an
/// unset secret must not pass as an empty password.
fn read_secret(key: &'static str, path: &Path) -> Result<Secret, KafkaConfigError> {
    let error = |reason: String| KafkaConfigError::File {
        key,
        path: path.to_owned(),
        reason,
    };
    let content = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let value = content.strip_suffix('\n').unwrap_or(&content);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        return Err(error("the file is empty".into()));
    }
    Ok(Secret::new(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn secret_file(folder: &relais_test_support::ScratchDir, content: &str) -> PathBuf {
        folder.write(&relais_test_support::unique_name("secret"), content)
    }

    fn parse(toml_text: &str) -> KafkaClientConfig {
        toml::from_str(toml_text).expect("valid section")
    }

    #[test]
    fn nothing_given_is_plain_text() {
        let client = KafkaClientConfig::default()
            .resolve_with("k:9092", no_env)
            .expect("resolves");
        assert_eq!(client.setting("security.protocol"), Some("plaintext"));
        assert_eq!(client.setting("bootstrap.servers"), Some("k:9092"));
    }

    #[test]
    fn topic_metadata_is_refreshed_every_half_minute_unless_set() {
        let refresh = |config: KafkaClientConfig| {
            let client = config.resolve_with("k:9092", no_env).expect("resolves");
            client
                .setting("topic.metadata.refresh.interval.ms")
                .map(str::to_owned)
        };
        assert_eq!(
            refresh(KafkaClientConfig::default()).as_deref(),
            Some("30000")
        );
        let set = parse("[settings]\n\"topic.metadata.refresh.interval.ms\" = \"5000\"\n");
        assert_eq!(refresh(set).as_deref(), Some("5000"));
    }

    #[test]
    fn scram_over_tls_reads_the_password_file_and_keeps_it_out_of_debug() {
        let folder = relais_test_support::ScratchDir::new("kafka-secrets");
        let password = secret_file(&folder, "s3cret-value\n");
        let ca = secret_file(&folder, "not parsed here");
        let config = parse(&format!(
            "[tls]\nca_file = {ca:?}\n[sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"relais\"\npassword_file = {password:?}\n"
        ));
        let client = config.resolve_with("k:9094", no_env).expect("resolves");
        assert_eq!(client.setting("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.setting("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(
            client.setting("ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        let librdkafka = client.config();
        assert_eq!(librdkafka.get("sasl.password"), Some("s3cret-value"));
        assert!(!format!("{client:?}").contains("s3cret"));
    }

    #[test]
    fn environment_fills_what_the_file_leaves_out_and_the_file_wins() {
        let env = |name: &str| match name {
            "RELAIS_KAFKA_SECURITY_PROTOCOL" => Some("SASL_SSL".to_owned()),
            "RELAIS_KAFKA_SASL_MECHANISM" => Some("plain".to_owned()),
            "RELAIS_KAFKA_SASL_USERNAME" => Some("from-env".to_owned()),
            "RELAIS_KAFKA_SASL_PASSWORD" => Some("pw".to_owned()),
            _ => None,
        };
        let config = parse("[sasl]\nusername = \"from-file\"\n");
        let client = config.resolve_with("k", env).expect("resolves");
        assert_eq!(client.setting("sasl.username"), Some("from-file"));
        assert_eq!(client.setting("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(client.config().get("sasl.password"), Some("pw"));
    }

    #[test]
    fn incomplete_or_contradictory_settings_are_refused_with_their_key() {
        let refused = |text: &str| {
            parse(text)
                .resolve_with("k", no_env)
                .expect_err("refused")
                .to_string()
        };
        assert!(refused("[sasl]\nmechanism = \"PLAIN\"\n").contains("security_protocol"));
        assert!(
            refused("security_protocol = \"sasl_ssl\"\n[sasl]\nmechanism = \"PLAIN\"\n")
                .contains("sasl.username")
        );
        assert!(
            refused("security_protocol = \"sasl_ssl\"\n[sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\n")
                .contains("password_file")
        );
        assert!(
            refused("security_protocol = \"sasl_plaintext\"\n[sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\n")
                .contains("in clear")
        );
        assert!(
            refused("security_protocol = \"plaintext\"\n[tls]\nca_file = \"/x\"\n")
                .contains("TLS settings")
        );
        assert!(refused("[tls]\ncertificate_file = \"/x\"\n").contains("go together"));
        assert!(refused("[settings]\n\"sasl.password\" = \"inline\"\n").contains("password_file"));
        assert!(
            refused("[settings]\n\"security.protocol\" = \"ssl\"\n").contains("security_protocol")
        );
    }

    #[test]
    fn unreadable_or_empty_secret_files_are_named_without_their_content() {
        let folder = relais_test_support::ScratchDir::new("kafka-secrets");
        let empty = secret_file(&folder, "");
        let config = parse(&format!(
            "security_protocol = \"sasl_ssl\"\n[sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword_file = {empty:?}\n"
        ));
        let message = config
            .resolve_with("k", no_env)
            .expect_err("empty")
            .to_string();
        assert!(message.contains("is empty"), "{message}");
        let missing = parse("[tls]\nca_file = \"/nonexistent/ca.pem\"\n");
        let message = missing
            .resolve_with("k", no_env)
            .expect_err("missing")
            .to_string();
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
    }

    #[test]
    fn bad_variables_are_named() {
        let env = |name: &str| (name == "RELAIS_KAFKA_SECURITY_PROTOCOL").then(|| "tls".to_owned());
        let message = KafkaClientConfig::default()
            .resolve_with("k", env)
            .expect_err("refused")
            .to_string();
        assert!(
            message.starts_with("RELAIS_KAFKA_SECURITY_PROTOCOL"),
            "{message}"
        );
    }

    #[test]
    fn further_settings_pass_through() {
        let client = parse("[settings]\n\"message.max.bytes\" = \"2000000\"\n")
            .resolve_with("k", no_env)
            .expect("resolves");
        assert_eq!(client.setting("message.max.bytes"), Some("2000000"));
    }
}
