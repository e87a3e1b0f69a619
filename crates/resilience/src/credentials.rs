//! How an upstream's deliveries authenticate: fixed headers whose values are secrets (API keys,
//! long-lived bearer tokens), or an OAuth2 client-credentials token, fetched from the token
//! endpoint, cached, refreshed before it expires and once more when the upstream answers 401.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

/// An upstream's credentials, ready to use.
#[derive(Clone)]
pub enum Credentials {
    Headers(Arc<Vec<(HeaderName, HeaderValue)>>),
    OAuth2(Arc<OAuth2>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Headers(headers) => {
                let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
                write!(f, "Credentials::Headers({names:?})")
            }
            Self::OAuth2(oauth) => write!(f, "Credentials::OAuth2({})", oauth.token_url),
        }
    }
}

impl Credentials {
    /// Fixed headers; each value is marked sensitive (kept out of debug output and HTTP/2
    /// header compression tables).
    pub fn headers(headers: Vec<(String, String)>) -> Result<Self, String> {
        let mut parsed = Vec::new();
        for (name, value) in headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{name:?} is not a header name"))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| format!("the value of header {name} is not printable ASCII"))?;
            value.set_sensitive(true);
            parsed.push((header, value));
        }
        Ok(Self::Headers(Arc::new(parsed)))
    }
}

/// An OAuth2 client-credentials grant (RFC 6749, section 4.4).
pub struct OAuth2 {
    token_url: Url,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    /// The token endpoint's client: the upstream's (same TLS and destination rules), without
    /// its resilience stack, which belongs to deliveries.
    http: reqwest::Client,
    /// Limit of one token request: deliveries wait behind it (one fetch at a time), so a
    /// token endpoint that hangs must not hold them longer than an attempt would.
    fetch_timeout: Duration,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

struct Token {
    authorization: HeaderValue,
    refresh_at: Instant,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A token is used until this share of its lifetime has passed, so that it never expires in
/// flight.
const USE_SHARE: f64 = 0.8;
/// Without `expires_in`, a token is fetched again after this long.
const UNSTATED_LIFETIME: Duration = Duration::from_secs(300);

/// When a token that lives `lifetime` should be replaced, counted from when it was fetched.
pub(crate) fn refresh_after(lifetime: Option<Duration>) -> Duration {
    lifetime.unwrap_or(UNSTATED_LIFETIME).mul_f64(USE_SHARE)
}

impl OAuth2 {
    pub(crate) fn new(
        token_url: Url,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
        http: reqwest::Client,
        fetch_timeout: Duration,
    ) -> Self {
        Self {
            token_url,
            client_id,
            client_secret,
            scope,
            http,
            fetch_timeout,
            token: Mutex::new(None),
        }
    }

    /// The `Authorization` value to send: the cached token, or a new one. One fetch at a time;
    /// callers waiting meanwhile use its result.
    pub(crate) async fn authorization(&self) -> Result<HeaderValue, String> {
        let mut token = self.token.lock().await;
        if let Some(current) = token.as_ref()
            && Instant::now() < current.refresh_at
        {
            return Ok(current.authorization.clone());
        }
        let fetched = self.fetch().await?;
        let authorization = fetched.authorization.clone();
        *token = Some(fetched);
        Ok(authorization)
    }

    /// Forgets `used` after the upstream refused it (revoked, or expired early); a token
    /// fetched meanwhile by another call is kept.
    pub(crate) async fn forget(&self, used: &HeaderValue) {
        let mut token = self.token.lock().await;
        if token
            .as_ref()
            .is_some_and(|current| current.authorization == used)
        {
            *token = None;
        }
    }

    async fn fetch(&self) -> Result<Token, String> {
        // The serializer is not Send: done before the first await.
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if let Some(scope) = &self.scope {
                form.append_pair("scope", scope);
            }
            form.finish()
        };
        let fetched_at = Instant::now();
        let response = self
            .http
            .post(self.token_url.clone())
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .timeout(self.fetch_timeout)
            .send()
            .await
            .map_err(|error| format!("token endpoint {}: {error}", self.token_url))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "token endpoint {} answered {status}",
                self.token_url
            ));
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|error| format!("token endpoint {}: {error}", self.token_url))?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", body.access_token))
            .map_err(|_| {
                format!(
                    "token endpoint {}: the token is not printable",
                    self.token_url
                )
            })?;
        authorization.set_sensitive(true);
        Ok(Token {
            authorization,
            refresh_at: fetched_at + refresh_after(body.expires_in.map(Duration::from_secs)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_replaced_well_before_it_expires() {
        assert_eq!(
            refresh_after(Some(Duration::from_secs(3600))),
            Duration::from_secs(2880)
        );
        assert_eq!(refresh_after(None), Duration::from_secs(240));
        assert_eq!(refresh_after(Some(Duration::ZERO)), Duration::ZERO);
    }

    #[test]
    fn header_values_are_sensitive_and_names_are_checked() {
        let Credentials::Headers(headers) =
            Credentials::headers(vec![("x-api-key".into(), "s3cret".into())]).expect("valid")
        else {
            panic!("headers")
        };
        assert!(headers[0].1.is_sensitive());
        assert!(Credentials::headers(vec![("bad name".into(), "v".into())]).is_err());
        let debug = format!(
            "{:?}",
            Credentials::headers(vec![("x-api-key".into(), "s3cret".into())]).expect("valid")
        );
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
