//! One upstream's outbound stack, composed in one place.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Extensions;
use reqwest::Url;
use reqwest_middleware::ClientWithMiddleware;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::admission::{Admission, Bulkhead, CircuitGate, Deadline};
use crate::attempt::{AttemptRecord, CallRecord};
use crate::budget::RetryBudget;
use crate::circuit::{CircuitBreaker, CircuitState};
use crate::classify::{RetryClassifier, RetryStop, StatusClassifier, TransportError};
use crate::credentials::{Credentials, OAuth2};
use crate::destination::{AllowedNetworks, GuardedResolver};
use crate::error::{ResilienceError, refusal, transport_error};
use crate::layers::{Retry, ServerAddress};
use crate::metrics::{AttemptMetrics, ResilienceMetrics};
use crate::pace::{Pacer, Wait};
use crate::policy::{PolicyError, UpstreamPolicy};
use crate::probe::{ConnectTimingLayer, Probe, TimedResolver};

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The upstream answered (the last attempt's status; 2xx or not).
    Response { status: u16 },
    /// Our own layers refused to send: nothing reached the upstream.
    Refused(Refusal),
    /// The last attempt failed without a usable response.
    Failed(TransportError),
}

/// Why a call was refused before any attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The circuit is open; a call may be let through after `retry_in`.
    CircuitOpen { retry_in: Duration },
    /// No bulkhead slot within the wait limit.
    BulkheadFull,
    /// The upstream's rate limit or its `Retry-After` pause: ask again after `retry_in`.
    Throttled { retry_in: Duration },
}

/// Everything the caller needs to decide the outcome and explain it afterwards.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub outcome: CallOutcome,
    /// Every attempt, in order, with probe data.
    pub attempts: Vec<AttemptRecord>,
    /// Why retries stopped before a success, if they did.
    pub retry_stop: Option<RetryStop>,
    /// The circuit's state when the call ended.
    pub circuit_state: CircuitState,
    pub elapsed: Duration,
}

impl Delivery {
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, CallOutcome::Response { status } if (200..300).contains(&status))
    }
}

/// Failure to build an upstream client.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("invalid base URL {url:?} for upstream {upstream}")]
    BaseUrl {
        upstream: String,
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("invalid path {path:?} for upstream {upstream}")]
    Path {
        upstream: String,
        path: String,
        #[source]
        source: url::ParseError,
    },
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("upstream {upstream}: TLS: {reason}")]
    Tls { upstream: String, reason: String },
    #[error("{0}")]
    Destination(String),
    #[error("{0}")]
    Credentials(String),
}

/// How one upstream's client is built beyond its policy.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Internal ranges the upstream may be at; `None`: any address (tools and tests).
    pub allowed: Option<AllowedNetworks>,
    pub tls: UpstreamTls,
}

/// TLS towards one upstream: CAs trusted besides the system's, and a client certificate for
/// upstreams that require one (mutual TLS). PEM contents, read by the caller.
#[derive(Clone, Default)]
pub struct UpstreamTls {
    pub ca_pem: Option<Vec<u8>>,
    /// Certificate chain and private key, PEM, one after the other.
    pub identity_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity_pem.is_some())
            .finish()
    }
}

/// A URL under an upstream's base URL, resolved once when the caller is set up: a bad path
/// fails the start instead of every call, and no call joins paths.
#[derive(Debug, Clone)]
pub struct Endpoint {
    url: Url,
}

/// The URL without user info and query, which may hold credentials: fit for logs and records.
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = self.url.origin().ascii_serialization();
        write!(f, "{origin}{}", self.url.path())
    }
}

/// An upstream with its own policy, circuit breaker, retry budget and bulkhead.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    name: Arc<str>,
    base_url: Url,
    client: ClientWithMiddleware,
    breaker: Arc<CircuitBreaker>,
    pacer: Arc<Pacer>,
    policy: Arc<UpstreamPolicy>,
    /// This upstream's `throttled_calls` series, resolved once.
    throttled: Arc<ThrottledCounters>,
    /// Standard Webhooks signatures on every delivery, when the upstream checks them.
    signer: Option<Arc<relais_webhooks::Signer>>,
    /// How deliveries authenticate (fixed secret headers, or an OAuth2 token).
    credentials: Option<Credentials>,
    /// The bare HTTP client under the stack (for the OAuth2 token endpoint).
    http: reqwest::Client,
}

/// The `throttled_calls` series of one upstream, by reason.
#[derive(Debug)]
struct ThrottledCounters {
    rate_limit: prometheus_client::metrics::counter::Counter,
    retry_after: prometheus_client::metrics::counter::Counter,
}

impl UpstreamClient {
    /// Builds the stack for one upstream, to any address (tools and tests; the worker uses
    /// [`Self::guarded`]). The policy is validated first.
    pub fn new(
        name: &str,
        base_url: &str,
        policy: UpstreamPolicy,
        metrics: &ResilienceMetrics,
    ) -> Result<Self, BuildError> {
        Self::with_options(name, base_url, policy, metrics, ClientOptions::default())
    }

    /// Builds the stack for one upstream with `options`: its addresses public unless
    /// `options.allowed` names their range (`destination`: an address literal in the URL is
    /// checked here, a host name at every resolution, before any connection), and its TLS.
    pub fn with_options(
        name: &str,
        base_url: &str,
        policy: UpstreamPolicy,
        metrics: &ResilienceMetrics,
        options: ClientOptions,
    ) -> Result<Self, BuildError> {
        let ClientOptions { allowed, tls } = options;
        policy.validate()?;
        let base_url = Url::parse(base_url).map_err(|source| BuildError::BaseUrl {
            upstream: name.to_owned(),
            url: base_url.to_owned(),
            source,
        })?;
        let upstream: Arc<str> = Arc::from(name);
        let guard = match allowed {
            Some(allowed) => {
                crate::destination::check_url(name, &base_url, &allowed)
                    .map_err(BuildError::Destination)?;
                Some(GuardedResolver {
                    upstream: Arc::clone(&upstream),
                    allowed: Arc::new(allowed),
                })
            }
            None => None,
        };

        let transition_metrics = metrics.clone();
        let transition_upstream = Arc::clone(&upstream);
        let pacer = Arc::new(Pacer::new(policy.rate_limit, Instant::now()));
        let breaker = CircuitBreaker::new(
            policy.circuit.clone(),
            Some(Arc::new(move |from, to| {
                tracing::warn!(upstream = %transition_upstream, from = from.as_str(), to = to.as_str(), "circuit state changed");
                transition_metrics.record_transition(&transition_upstream, from, to);
            })),
        );
        metrics.prepare_upstream(name);
        let labels = crate::metrics::UpstreamLabels {
            upstream: name.to_owned(),
        };
        let budget = Arc::new(RetryBudget::new(policy.retry.budget.clone()));
        let classifier: Arc<dyn RetryClassifier> = Arc::new(StatusClassifier::new(
            policy.retry.retry_statuses.iter().copied(),
        ));

        // reqwest is built without a default TLS provider (so aws-lc is not compiled); pick
        // ring once per process. A provider installed earlier by the binary wins.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls_config = crate::tls::client_config(&tls).map_err(|reason| BuildError::Tls {
            upstream: name.to_owned(),
            reason,
        })?;
        let http = reqwest::Client::builder().tls_backend_preconfigured(tls_config);
        let http = http
            .dns_resolver(Arc::new(TimedResolver { guard }))
            .connector_layer(ConnectTimingLayer)
            .connect_timeout(policy.connect_timeout)
            .pool_max_idle_per_host(policy.bulkhead.max_concurrent)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .redirect(crate::redirect::client_policy(policy.redirects))
            .build()
            .map_err(BuildError::Client)?;

        let server = ServerAddress::new(&base_url);
        let attempts = AttemptMetrics::new(metrics, &upstream);
        // The order is the design (outermost first); each layer says why it is where it is.
        let client = reqwest_middleware::ClientBuilder::new(http.clone())
            // 1-3. Admission, one middleware in three parts. The caller's time limit covers
            //    everything below, waits included; then concurrency is bounded before anything
            //    else, so a slow upstream ties up at most max_concurrent callers, whatever the
            //    breaker and retries do; then an open circuit refuses the whole call, retries
            //    included.
            .with(Admission {
                deadline: Deadline {
                    deadline: policy.deadline,
                },
                bulkhead: Bulkhead {
                    slots: Arc::new(Semaphore::new(policy.bulkhead.max_concurrent)),
                    max_wait: policy.bulkhead.max_wait,
                    in_flight: metrics.bulkhead_in_flight.get_or_create(&labels).clone(),
                    rejected: metrics.bulkhead_rejected.get_or_create(&labels).clone(),
                },
                circuit: CircuitGate {
                    breaker: Arc::clone(&breaker),
                    upstream: Arc::clone(&upstream),
                    metrics: metrics.clone(),
                },
            })
            // 4. Retries decide per attempt and feed the breaker per attempt; each attempt
            //    gets its own time limit, so one hang cannot eat the deadline.
            .with(Retry {
                attempt_timeout: policy.attempt_timeout,
                budget_utilisation: metrics
                    .retry_budget_utilisation
                    .get_or_create(&labels)
                    .clone(),
                backoff: crate::backoff::exponential_full_jitter(
                    policy.retry.base_backoff,
                    policy.retry.max_backoff,
                ),
                policy: policy.retry.clone(),
                classifier,
                budget,
                breaker: Arc::clone(&breaker),
                pacer: Arc::clone(&pacer),
                upstream: Arc::clone(&upstream),
                server,
                metrics: metrics.clone(),
                attempts,
            })
            // 5. Closest to the wire: measures exactly what the network did.
            .with(Probe {
                upstream: Arc::clone(&upstream),
                max_response_bytes: policy.max_response_bytes,
                excerpt_bytes: policy.response_excerpt_bytes,
            })
            .build();

        Ok(Self {
            name: upstream,
            base_url,
            client,
            breaker,
            pacer,
            policy: Arc::new(policy),
            throttled: Arc::new(ThrottledCounters {
                rate_limit: metrics.throttled_calls(name, "rate_limit"),
                retry_after: metrics.throttled_calls(name, "retry_after"),
            }),
            signer: None,
            credentials: None,
            http,
        })
    }

    /// Sends these headers, whose values are secrets, with every delivery.
    pub fn with_headers(mut self, headers: Vec<(String, String)>) -> Result<Self, BuildError> {
        let credentials = Credentials::headers(headers).map_err(|reason| {
            BuildError::Credentials(format!("upstream {}: {reason}", self.name))
        })?;
        self.credentials = Some(credentials);
        Ok(self)
    }

    /// Authenticates every delivery with an OAuth2 client-credentials token from `token_url`
    /// (reached by the same client, so under the same TLS and destination rules).
    pub fn with_oauth2(
        mut self,
        token_url: &str,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
    ) -> Result<Self, BuildError> {
        let url = Url::parse(token_url).map_err(|source| BuildError::BaseUrl {
            upstream: self.name.to_string(),
            url: token_url.to_owned(),
            source,
        })?;
        self.credentials = Some(Credentials::OAuth2(Arc::new(OAuth2::new(
            url,
            client_id,
            client_secret,
            scope,
            self.http.clone(),
            self.policy.attempt_timeout,
        ))));
        Ok(self)
    }

    /// Signs every delivery (`webhook-id`, `webhook-timestamp`, `webhook-signature`) with
    /// `signer`'s keys.
    pub fn with_signer(mut self, signer: Arc<relais_webhooks::Signer>) -> Self {
        self.signer = Some(signer);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn policy(&self) -> &UpstreamPolicy {
        &self.policy
    }

    /// The upstream's circuit breaker (its state feeds backpressure and status reports).
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// Resolves `path` against the base URL (a leading `/` keeps the base URL's own path).
    pub fn endpoint(&self, path: &str) -> Result<Endpoint, BuildError> {
        self.base_url
            .join(path.trim_start_matches('/'))
            .map(|url| Endpoint { url })
            .map_err(|source| BuildError::Path {
                upstream: self.name.to_string(),
                path: path.to_owned(),
                source,
            })
    }

    /// POSTs a JSON body to `endpoint` with `Idempotency-Key`, through the whole stack. With
    /// an OAuth2 token that the upstream refuses (401), the token is fetched again and the
    /// call made once more; the delivery then holds the attempts of both.
    pub async fn post_json(
        &self,
        endpoint: &Endpoint,
        body: Bytes,
        idempotency_key: &str,
    ) -> Delivery {
        let started = Instant::now();
        let (first, used) = self
            .post_once(endpoint, body.clone(), idempotency_key, started)
            .await;
        let refused = matches!(first.outcome, CallOutcome::Response { status: 401 });
        match (&self.credentials, used) {
            (Some(Credentials::OAuth2(oauth)), Some(used)) if refused => {
                oauth.forget(&used).await;
                let (mut second, _) = self
                    .post_once(endpoint, body, idempotency_key, started)
                    .await;
                let mut attempts = first.attempts;
                attempts.append(&mut second.attempts);
                second.attempts = attempts;
                second
            }
            _ => first,
        }
    }

    /// One call through the stack, and the OAuth2 authorization it carried.
    async fn post_once(
        &self,
        endpoint: &Endpoint,
        body: Bytes,
        idempotency_key: &str,
        started: Instant,
    ) -> (Delivery, Option<http::HeaderValue>) {
        // The token may have to be fetched: that wait is boxed, so the future of every call,
        // which the caller moves around whole, does not carry a token request's.
        let used = match &self.credentials {
            Some(Credentials::OAuth2(oauth)) => match Box::pin(oauth.authorization()).await {
                Ok(authorization) => Some(authorization),
                Err(reason) => {
                    // No token, so no request: like a connection that could not be made.
                    tracing::warn!(upstream = %self.name, %reason, "no OAuth2 token; the delivery waits");
                    let failed = CallOutcome::Failed(TransportError::Connect);
                    return (self.finish(failed, Vec::new(), None, started), None);
                }
            },
            _ => None,
        };
        let request = match self.request(endpoint, body, idempotency_key, used.as_ref()) {
            Ok(request) => request,
            Err(error) => {
                tracing::error!(%error, "cannot build the request");
                let failed = CallOutcome::Failed(TransportError::Other);
                return (self.finish(failed, Vec::new(), None, started), used);
            }
        };

        // Paced before the stack, outside the deadline: a message that waits for its turn
        // waits, it does not time out.
        if let Err(wait) = self.pacer.admit(Instant::now()) {
            match wait {
                Wait::Rate(_) => self.throttled.rate_limit.inc(),
                Wait::Paused(_) => self.throttled.retry_after.inc(),
            };
            let throttled = CallOutcome::Refused(Refusal::Throttled {
                retry_in: wait.duration(),
            });
            return (self.finish(throttled, Vec::new(), None, started), used);
        }
        let call = CallRecord::default();
        let mut extensions = Extensions::new();
        extensions.insert(call.clone());
        let result = self
            .client
            .execute_with_extensions(request, &mut extensions)
            .await;
        let outcome = match &result {
            Ok(response) => CallOutcome::Response {
                status: response.status().as_u16(),
            },
            Err(error) => match refusal(error) {
                Some(ResilienceError::CircuitOpen(open)) => {
                    CallOutcome::Refused(Refusal::CircuitOpen {
                        retry_in: open.retry_in,
                    })
                }
                Some(_) => CallOutcome::Refused(Refusal::BulkheadFull),
                None => CallOutcome::Failed(transport_error(error)),
            },
        };
        let (attempts, stop) = call.take();
        (self.finish(outcome, attempts, stop, started), used)
    }

    /// The POST of one delivery, with its signature and credentials. Built in place rather
    /// than through a request builder, which is moved whole at every header it adds.
    fn request(
        &self,
        endpoint: &Endpoint,
        body: Bytes,
        idempotency_key: &str,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<reqwest::Request, http::Error> {
        use http::{HeaderName, HeaderValue};
        let mut request = reqwest::Request::new(http::Method::POST, endpoint.url.clone());
        let headers = request.headers_mut();
        headers.append(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.append(
            crate::layers::IDEMPOTENCY_KEY,
            HeaderValue::from_str(idempotency_key)?,
        );
        if let Some(signer) = &self.signer {
            // The time of this call: retries inside it keep it (they end within the call's
            // deadline); a retry tier hours later is a new call with a fresh timestamp.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| {
                    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
                });
            for (name, value) in signer.headers(idempotency_key, now, &body) {
                headers.append(HeaderName::try_from(name)?, HeaderValue::try_from(value)?);
            }
        }
        if let Some(Credentials::Headers(credentials)) = &self.credentials {
            for (name, value) in credentials.iter() {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some(authorization) = authorization {
            headers.append(http::header::AUTHORIZATION, authorization.clone());
        }
        *request.body_mut() = Some(body.into());
        Ok(request)
    }

    fn finish(
        &self,
        outcome: CallOutcome,
        attempts: Vec<AttemptRecord>,
        retry_stop: Option<RetryStop>,
        started: Instant,
    ) -> Delivery {
        Delivery {
            outcome,
            attempts,
            retry_stop,
            circuit_state: self.breaker.state(),
            elapsed: started.elapsed(),
        }
    }
}
