//! Bearer tokens, roles and the per-token rate limit.
//!
//! Why static tokens rather than JWTs: the gateway's clients are operators, dashboards and a
//! few programs, all configured by the same people who deploy the gateway, and a token file
//! needs no issuer, no clock agreement and no key rotation protocol. Tokens are kept only as
//! SHA-256 digests; a presented token is hashed and compared with every known digest in
//! constant time, so neither the comparison nor its length leaks which bytes matched.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use relais_telemetry::secrets::{self, Profile, SecretKind};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do. `Admin` includes everything `Viewer` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: stats, events, traces, workers, circuits, the WebSocket feed.
    Viewer,
    /// Also changes state (such as forgetting a departed worker).
    Admin,
}

/// The caller a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: Arc<str>,
    pub role: Role,
}

#[derive(Debug, Clone)]
struct Entry {
    digest: [u8; 32],
    principal: Principal,
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "no API token configured: set RELAIS_TOKENS (role:name:secret,...) or RELAIS_TOKENS_FILE; \
         the gateway does not start without authentication"
    )]
    None,
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("token entry {0}: expected role:name:secret with role viewer or admin")]
    Malformed(usize),
    #[error("token {name:?}: a secret must be at least 16 characters")]
    TooShort { name: String },
    #[error("{0}")]
    Refused(String),
    #[error("token {name:?}: give exactly one of `secret` and `sha256`")]
    SecretOrDigest { name: String },
    #[error("token {name:?}: `sha256` must be 64 hex digits")]
    BadDigest { name: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    token: Vec<TokenFileEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFileEntry {
    name: String,
    role: Role,
    /// The token itself ...
    secret: Option<String>,
    /// ... or its SHA-256 in hex, so the file need not hold the secret.
    sha256: Option<String>,
}

const MIN_SECRET_LEN: usize = 16;

impl Tokens {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn extend(&mut self, other: Tokens) {
        self.entries.extend(other.entries);
    }

    /// Adds one token under the development rules (tests use this).
    pub fn add(&mut self, name: &str, role: Role, secret: &str) -> Result<(), TokenError> {
        self.add_checked(name, role, secret, Profile::Development)
    }

    /// Adds one token; `profile` says whether placeholders and short tokens are refused.
    fn add_checked(
        &mut self,
        name: &str,
        role: Role,
        secret: &str,
        profile: Profile,
    ) -> Result<(), TokenError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(TokenError::TooShort { name: name.into() });
        }
        secrets::check(
            &format!("token {name:?}"),
            secret,
            SecretKind::Token,
            profile,
        )
        .map_err(TokenError::Refused)?;
        self.entries.push(Entry {
            digest: Sha256::digest(secret.as_bytes()).into(),
            principal: Principal {
                name: name.into(),
                role,
            },
        });
        Ok(())
    }

    /// `role:name:secret,role:name:secret`.
    pub fn from_list(list: &str, profile: Profile) -> Result<Self, TokenError> {
        let mut tokens = Self::default();
        for (index, entry) in list.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let mut parts = entry.splitn(3, ':');
            let (Some(role), Some(name), Some(secret)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(TokenError::Malformed(index + 1));
            };
            let role = match role {
                "viewer" => Role::Viewer,
                "admin" => Role::Admin,
                _ => return Err(TokenError::Malformed(index + 1)),
            };
            tokens.add_checked(name, role, secret, profile)?;
        }
        Ok(tokens)
    }

    pub fn from_file(path: &Path, profile: Profile) -> Result<Self, TokenError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: shown.clone(),
            source,
        })?;
        let file: TokenFile = toml::from_str(&text).map_err(|source| TokenError::Parse {
            path: shown,
            source: Box::new(source),
        })?;
        let mut tokens = Self::default();
        for entry in file.token {
            match (entry.secret, entry.sha256) {
                (Some(secret), None) => {
                    tokens.add_checked(&entry.name, entry.role, &secret, profile)?;
                }
                (None, Some(hex)) => {
                    let digest = parse_digest(&hex).ok_or_else(|| TokenError::BadDigest {
                        name: entry.name.clone(),
                    })?;
                    tokens.entries.push(Entry {
                        digest,
                        principal: Principal {
                            name: entry.name.as_str().into(),
                            role: entry.role,
                        },
                    });
                }
                _ => return Err(TokenError::SecretOrDigest { name: entry.name }),
            }
        }
        Ok(tokens)
    }

    /// The principal of `presented`, if any token matches. Every entry is compared, in
    /// constant time, whatever matched earlier.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(entry.principal.clone());
            }
        }
        found
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(digest)
}

/// A token bucket per principal: `rate` requests per second sustained, `burst` at once.
/// Principals come from configuration, so the map is bounded by the token list.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Arc<Mutex<HashMap<Arc<str>, Bucket>>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: Arc::default(),
        }
    }

    /// Takes one request from `principal`'s bucket; `Err(wait)` when it is empty.
    pub fn check(&self, principal: &Principal) -> Result<(), Duration> {
        self.check_at(principal, Instant::now())
    }

    fn check_at(&self, principal: &Principal, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets
            .entry(Arc::clone(&principal.name))
            .or_insert(Bucket {
                tokens: self.burst,
                updated: now,
            });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_by_secret_and_by_digest() {
        let mut tokens = Tokens::from_list(
            "viewer:dash:0123456789abcdef0123, admin:ops:fedcba9876543210fedc",
            Profile::Development,
        )
        .unwrap();
        let digest: [u8; 32] = Sha256::digest(b"another-secret-of-length").into();
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        let dir = relais_test_support::ScratchDir::new("tokens");
        let file = dir.write(
            "tokens.toml",
            &format!("[[token]]\nname = \"ci\"\nrole = \"viewer\"\nsha256 = \"{hex}\"\n"),
        );
        tokens.extend(Tokens::from_file(&file, Profile::Development).unwrap());

        let viewer = tokens.authenticate("0123456789abcdef0123").unwrap();
        assert_eq!((&*viewer.name, viewer.role), ("dash", Role::Viewer));
        let admin = tokens.authenticate("fedcba9876543210fedc").unwrap();
        assert_eq!(admin.role, Role::Admin);
        assert_eq!(
            &*tokens
                .authenticate("another-secret-of-length")
                .unwrap()
                .name,
            "ci"
        );
        assert!(tokens.authenticate("0123456789abcdef012").is_none());
        assert!(tokens.authenticate("").is_none());
    }

    #[test]
    fn malformed_and_short_tokens_are_refused() {
        assert!(matches!(
            Tokens::from_list("root:x:0123456789abcdef", Profile::Development),
            Err(TokenError::Malformed(1))
        ));
        assert!(matches!(
            Tokens::from_list("viewer:x:short", Profile::Development),
            Err(TokenError::TooShort { .. })
        ));
        assert!(matches!(
            Tokens::from_list("viewer-no-colons", Profile::Development),
            Err(TokenError::Malformed(1))
        ));
    }

    #[test]
    fn the_rate_limit_allows_the_burst_then_the_rate() {
        let limiter = RateLimiter::new(10.0, 3.0);
        let who = Principal {
            name: "a".into(),
            role: Role::Viewer,
        };
        let start = Instant::now();
        for _ in 0..3 {
            limiter.check_at(&who, start).unwrap();
        }
        let wait = limiter.check_at(&who, start).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        limiter
            .check_at(&who, start + Duration::from_millis(100))
            .unwrap();
        let other = Principal {
            name: "b".into(),
            role: Role::Viewer,
        };
        limiter.check_at(&other, start).unwrap();
    }
}
