//! One upstream's section of the configuration file: where it is, its resilience policy, and
//! how its deliveries are scheduled, held and retried.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use relais_resilience::UpstreamPolicy;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL, such as `http://127.0.0.1:8090`.
    pub url: String,
    /// Path the events are POSTed to.
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub policy: UpstreamPolicy,
    /// After a 401 or 403 (an expired or revoked credential, which fails every message alike)
    /// the upstream's deliveries wait this long, then one trial call tells whether to go on;
    /// "0s" makes such an answer a FAILED outcome instead.
    #[serde(default = "default_pause_on_unauthorized", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub pause_on_unauthorized: Duration,
    /// A 410 (the endpoint is gone, which no retry mends) disables the upstream for every
    /// replica until an operator re-enables it (`POST /api/v1/admin/upstreams/{name}/enable` on
    /// the gateway); its messages wait meanwhile. `false` makes a 410 a FAILED outcome instead.
    #[serde(default = "default_disable_on_gone")]
    pub disable_on_gone: bool,
    /// `"key"`: a key's later message for this upstream never starts before an earlier one has
    /// finished (distinct keys never wait for each other); `"none"`: no order, the fastest.
    #[serde(default)]
    pub ordering: crate::schedule::Ordering,
    /// Deliveries in flight to this upstream, at most (a message waiting for its open circuit
    /// counts); default: `policy.bulkhead.max_concurrent`.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// The in-flight limit follows what the upstream takes, within `1..=max_in_flight`: it
    /// grows by one per round trip while latency holds and the limit is reached, and shrinks
    /// to 90 % on a 429, a 503, a timeout or a doubled latency (docs/ingest-worker.md).
    /// `false`: always `max_in_flight`.
    #[serde(default = "default_adaptive_concurrency")]
    pub adaptive_concurrency: bool,
    /// Delays of the retry tiers a message goes through when its upstream cannot take it:
    /// retries exhausted, a long Retry-After, or a wait beyond `retry.in_memory_wait`. After
    /// the last, the message is DEAD_LETTERED `retry_tiers_exhausted`. `[]`: no tiers, the
    /// message waits in memory and holds its partition's commit position (the behaviour
    /// before tiers). Non-decreasing, each between 1 s and 7 days, at most 16.
    #[serde(default = "default_retry_tiers")]
    #[schemars(with = "Vec<String>")]
    pub retry_tiers: Vec<humantime_serde::Serde<Duration>>,
    /// Standard Webhooks signing: files each holding one key, `whsec_…` (HMAC-SHA256, `v1`)
    /// or `whsk_…` (an Ed25519 seed, `v1a`). Every delivery then carries `webhook-id` (the
    /// message id), `webhook-timestamp` and a signature per key: list the old and the new key
    /// while receivers move from one to the other. Empty: unsigned.
    #[serde(default)]
    pub signing_key_files: Vec<std::path::PathBuf>,
    /// Internal addresses this upstream may be reached at: `loopback`, `private` (RFC 1918,
    /// 100.64/10, fc00::/7), `link-local` (cloud metadata included) or CIDR ranges. Empty:
    /// public addresses only; an address literal in `url` or a DNS answer in a range not named
    /// here is refused before any connection (server-side request forgery).
    #[serde(default)]
    pub allowed_networks: Vec<String>,
    /// How deliveries authenticate: fixed headers whose values are read from files, or an
    /// OAuth2 client-credentials token.
    #[serde(default)]
    pub auth: UpstreamAuth,
    /// TLS towards this upstream: CAs to trust besides the system's, and a client certificate
    /// for upstreams that require one (mutual TLS).
    #[serde(default)]
    pub tls: UpstreamTlsConfig,
}

fn default_retry_tiers() -> Vec<humantime_serde::Serde<Duration>> {
    crate::retry::DEFAULT_TIERS.map(Into::into).to_vec()
}

fn default_adaptive_concurrency() -> bool {
    true
}

fn default_path() -> String {
    "/events".into()
}

fn default_pause_on_unauthorized() -> Duration {
    Duration::from_secs(30)
}

fn default_disable_on_gone() -> bool {
    true
}

impl UpstreamConfig {
    /// An upstream at `url` with the defaults for everything else.
    pub fn at(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            path: default_path(),
            policy: UpstreamPolicy::default(),
            pause_on_unauthorized: default_pause_on_unauthorized(),
            disable_on_gone: default_disable_on_gone(),
            ordering: crate::schedule::Ordering::default(),
            max_in_flight: None,
            adaptive_concurrency: default_adaptive_concurrency(),
            retry_tiers: default_retry_tiers(),
            signing_key_files: Vec::new(),
            allowed_networks: Vec::new(),
            auth: UpstreamAuth::default(),
            tls: UpstreamTlsConfig::default(),
        }
    }

    /// How this upstream's client is built: its allowed networks and its TLS files read.
    pub fn client_options(&self) -> Result<relais_resilience::ClientOptions, String> {
        let read = |key: &str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|error| format!("tls.{key}: cannot read {}: {error}", path.display()))
        };
        let tls = &self.tls;
        let identity_pem = match (&tls.certificate_file, &tls.key_file) {
            (Some(certificate), Some(key)) => {
                let mut pem = read("certificate_file", certificate)?;
                pem.push(b'\n');
                pem.extend(read("key_file", key)?);
                Some(pem)
            }
            (None, None) => None,
            _ => return Err("tls.certificate_file and tls.key_file go together".into()),
        };
        let ca_pem = tls
            .ca_file
            .as_ref()
            .map(|path| read("ca_file", path))
            .transpose()?;
        Ok(relais_resilience::ClientOptions {
            allowed: Some(self.allowed()?),
            tls: relais_resilience::UpstreamTls {
                ca_pem,
                identity_pem,
            },
        })
    }

    /// The credentials of `auth` with their secret files read, checked against `profile`.
    pub fn credentials(
        &self,
        profile: relais_telemetry::secrets::Profile,
    ) -> Result<Option<Credentials>, String> {
        use relais_telemetry::secrets::{self, SecretKind};
        let auth = &self.auth;
        match (&auth.oauth2, auth.header_files.is_empty()) {
            (Some(_), false) => Err("auth: give header_files or oauth2, not both".into()),
            (None, true) => Ok(None),
            (None, false) => {
                let mut headers = Vec::new();
                for (name, path) in &auth.header_files {
                    let what = format!("auth.header_files.{name}");
                    let value = secrets::read_file(&what, path)?;
                    secrets::check(&what, &value, SecretKind::Credential, profile)?;
                    headers.push((name.clone(), value));
                }
                Ok(Some(Credentials::Headers(headers)))
            }
            (Some(oauth2), true) => {
                let secret = secrets::read_file(
                    "auth.oauth2.client_secret_file",
                    &oauth2.client_secret_file,
                )?;
                secrets::check(
                    "auth.oauth2.client_secret_file",
                    &secret,
                    SecretKind::Credential,
                    profile,
                )?;
                Ok(Some(Credentials::OAuth2 {
                    token_url: oauth2.token_url.clone(),
                    client_id: oauth2.client_id.clone(),
                    client_secret: secret,
                    scope: oauth2.scope.clone(),
                }))
            }
        }
    }

    /// `allowed_networks` parsed.
    pub fn allowed(&self) -> Result<relais_resilience::destination::AllowedNetworks, String> {
        relais_resilience::destination::AllowedNetworks::parse(
            self.allowed_networks.iter().map(String::as_str),
        )
    }

    /// Refuses at start an address literal in `url` that `allowed_networks` does not permit
    /// (host names are checked at each resolution).
    pub fn check_destination(&self, name: &str) -> Result<(), String> {
        let allowed = self
            .allowed()
            .map_err(|reason| format!("upstream {name}: {reason}"))?;
        // An unparsable URL is reported when the client is built.
        match relais_resilience::Url::parse(&self.url) {
            Ok(url) => relais_resilience::destination::check_url(name, &url, &allowed),
            Err(_) => Ok(()),
        }
    }

    /// The signer of this upstream's deliveries, its keys read from `signing_key_files`; none
    /// when the list is empty. Errors name the file or the key's position, never a key.
    pub fn signer(&self) -> Result<Option<relais_webhooks::Signer>, String> {
        if self.signing_key_files.is_empty() {
            return Ok(None);
        }
        let keys = self
            .signing_key_files
            .iter()
            .map(|path| relais_telemetry::secrets::read_file("signing_key_files", path))
            .collect::<Result<Vec<_>, _>>()?;
        relais_webhooks::Signer::new(keys.iter().map(String::as_str))
            .map(Some)
            .map_err(|error| format!("signing_key_files: {error}"))
    }

    /// The delays of the retry tiers (see `retry_tiers`).
    pub fn retry_tiers(&self) -> Vec<Duration> {
        self.retry_tiers.iter().map(|delay| **delay).collect()
    }

    /// Sets the retry tiers (`[]`: none).
    pub fn with_retry_tiers(mut self, tiers: &[Duration]) -> Self {
        self.retry_tiers = tiers.iter().copied().map(Into::into).collect();
        self
    }

    /// Deliveries in flight at most (see `max_in_flight`).
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
            .unwrap_or(self.policy.bulkhead.max_concurrent)
    }

    pub fn hold_policy(&self) -> crate::hold::HoldPolicy {
        crate::hold::HoldPolicy {
            pause_on_unauthorized: self.pause_on_unauthorized,
            disable_on_gone: self.disable_on_gone,
        }
    }
}

/// TLS towards one upstream (`upstreams.<name>.tls`), files in PEM.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// CAs trusted besides the system's (a private CA of the upstream).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The client certificate presented to upstreams that require one.
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// An upstream's authentication (`upstreams.<name>.auth`).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuth {
    /// Headers sent with every delivery, by name, each value read from a file at start
    /// (`{ "x-api-key" = "/run/secrets/orders-api-key" }`, or an `authorization` header).
    #[serde(default)]
    pub header_files: BTreeMap<String, PathBuf>,
    /// An OAuth2 client-credentials grant: the token is fetched from `token_url`, used until
    /// 80 % of its lifetime, and fetched again at once when the upstream answers 401.
    #[serde(default)]
    pub oauth2: Option<OAuth2Config>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    pub token_url: String,
    pub client_id: String,
    /// File holding the client secret (sent with HTTP Basic authentication).
    pub client_secret_file: PathBuf,
    #[serde(default)]
    pub scope: Option<String>,
}

/// An upstream's credentials with their secrets read (never printed).
pub enum Credentials {
    Headers(Vec<(String, String)>),
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Headers(headers) => {
                let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
                write!(f, "Credentials::Headers({names:?})")
            }
            Self::OAuth2 {
                token_url,
                client_id,
                ..
            } => write!(f, "Credentials::OAuth2({token_url}, {client_id})"),
        }
    }
}
