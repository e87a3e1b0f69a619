//! What a real API asks of its callers, so that each of the worker's authentication modes is
//! tested against a server that checks it: a required header (an API key), Standard Webhooks
//! signatures, and OAuth2 client credentials with a token endpoint of its own
//! (`POST /oauth/token` on the API port), expiring tokens, and revocation from the admin port.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;

/// The checks a delivery must pass; none by default.
#[derive(Debug, Default)]
pub struct AuthChecks {
    /// `(name, value)`: the header every delivery must carry.
    pub required_header: Option<(String, String)>,
    pub verifier: Option<relais_webhooks::Verifier>,
    pub oauth: Option<TokenIssuer>,
}

/// Why a delivery is refused with 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthorized {
    #[error("the required header {0} is missing or wrong")]
    Header(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("no valid bearer token (missing, unknown, expired or revoked)")]
    Token,
}

impl AuthChecks {
    /// Checks one delivery at `now` (Unix seconds for signatures).
    pub fn check(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        unix_now: i64,
    ) -> Result<(), Unauthorized> {
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        if let Some((name, value)) = &self.required_header
            && header(name) != Some(value.as_str())
        {
            return Err(Unauthorized::Header(name.clone()));
        }
        if let Some(oauth) = &self.oauth {
            let token = header("authorization").and_then(|value| value.strip_prefix("Bearer "));
            if !token.is_some_and(|token| oauth.is_valid(token, Instant::now())) {
                return Err(Unauthorized::Token);
            }
        }
        if let Some(verifier) = &self.verifier {
            verifier
                .verify(
                    header(relais_webhooks::ID_HEADER),
                    header(relais_webhooks::TIMESTAMP_HEADER),
                    header(relais_webhooks::SIGNATURE_HEADER),
                    body,
                    unix_now,
                )
                .map_err(|refusal| Unauthorized::Signature(refusal.to_string()))?;
        }
        Ok(())
    }
}

/// An OAuth2 token endpoint for one client (client-credentials grant).
#[derive(Debug)]
pub struct TokenIssuer {
    client_id: String,
    client_secret: String,
    lifetime: Duration,
    tokens: Mutex<HashMap<String, Instant>>,
    issued: Mutex<u64>,
}

/// The token endpoint's answer, or its refusal (status, OAuth2 error code).
pub type TokenAnswer = Result<(String, u64), (u16, &'static str)>;

impl TokenIssuer {
    pub fn new(client_id: String, client_secret: String, lifetime: Duration) -> Self {
        Self {
            client_id,
            client_secret,
            lifetime,
            tokens: Mutex::default(),
            issued: Mutex::new(0),
        }
    }

    /// Answers a token request: HTTP Basic client authentication and a form body with
    /// `grant_type=client_credentials`.
    pub fn issue(&self, headers: &HeaderMap, form: &str, now: Instant) -> TokenAnswer {
        let authorized = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Basic "))
            .and_then(|encoded| STANDARD.decode(encoded).ok())
            .and_then(|decoded| String::from_utf8(decoded).ok())
            .is_some_and(|pair| pair == format!("{}:{}", self.client_id, self.client_secret));
        if !authorized {
            return Err((401, "invalid_client"));
        }
        let grant = form
            .split('&')
            .any(|pair| pair == "grant_type=client_credentials");
        if !grant {
            return Err((400, "unsupported_grant_type"));
        }
        let token = format!("sim-{:032x}", rand::random::<u128>());
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|_, expires| *expires > now);
        tokens.insert(token.clone(), now + self.lifetime);
        *self.issued.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Ok((token, self.lifetime.as_secs()))
    }

    fn is_valid(&self, token: &str, now: Instant) -> bool {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .is_some_and(|expires| *expires > now)
    }

    /// Forgets every token issued (a rotation of the API's signing key, say).
    pub fn revoke_all(&self) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Tokens issued since start.
    pub fn issued(&self) -> u64 {
        *self.issued.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(id: &str, secret: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
        headers.insert("authorization", value.parse().expect("header"));
        headers
    }

    #[test]
    fn tokens_go_to_the_right_client_and_expire_or_are_revoked() {
        let issuer = TokenIssuer::new("relais".into(), "s3cret".into(), Duration::from_secs(60));
        let now = Instant::now();
        let grant = "grant_type=client_credentials&scope=events";
        assert_eq!(
            issuer.issue(&basic("relais", "wrong"), grant, now),
            Err((401, "invalid_client"))
        );
        assert_eq!(
            issuer.issue(&basic("relais", "s3cret"), "grant_type=password", now),
            Err((400, "unsupported_grant_type"))
        );
        let (token, lifetime) = issuer
            .issue(&basic("relais", "s3cret"), grant, now)
            .expect("issued");
        assert_eq!(lifetime, 60);
        assert!(issuer.is_valid(&token, now));
        assert!(!issuer.is_valid(&token, now + Duration::from_secs(61)));
        issuer.revoke_all();
        assert!(!issuer.is_valid(&token, now));
        assert_eq!(issuer.issued(), 1);
    }

    #[test]
    fn a_required_header_must_match() {
        let checks = AuthChecks {
            required_header: Some(("x-api-key".into(), "k3y".into())),
            ..AuthChecks::default()
        };
        let mut headers = HeaderMap::new();
        assert!(checks.check(&headers, b"{}", 0).is_err());
        headers.insert("x-api-key", "k3y".parse().expect("header"));
        assert_eq!(checks.check(&headers, b"{}", 0), Ok(()));
    }
}
