//! Per-upstream policy: every limit of the resilience stack, as configuration.
//!
//! Each upstream in the worker's configuration file carries one [`UpstreamPolicy`]; anything it
//! leaves out takes the documented default. Durations are written the human way (`"250ms"`,
//! `"30s"`). [`UpstreamPolicy::validate`] checks that the settings make sense together.

use std::time::Duration;

use serde::Deserialize;

/// All resilience settings of one upstream.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamPolicy {
    /// Overall deadline of one delivery, all attempts and backoff included.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub deadline: Duration,
    /// Limit of one attempt: connect, request, response and body.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub attempt_timeout: Duration,
    /// Limit of establishing a connection (DNS, TCP, TLS), within the attempt timeout.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Largest response body read; larger bodies fail the attempt.
    pub max_response_bytes: usize,
    /// Which redirects are followed. `none` (the default): a 3xx is the upstream's final
    /// answer. `same-origin` follows 307 and 308, which keep the method and body, to the same
    /// scheme, host and port only (at most 5 hops); 301, 302 and 303 are never followed, since
    /// a client turns the POST into a GET without its body.
    pub redirects: RedirectPolicy,
    /// How many bytes of an unsuccessful response's body the attempt record keeps (with an
    /// allow-listed set of its headers), so an operator can read why the upstream refused.
    pub response_excerpt_bytes: usize,
    pub bulkhead: BulkheadPolicy,
    pub circuit: CircuitPolicy,
    pub retry: RetryPolicyConfig,
    /// Requests per second this upstream accepts, if it has a limit: calls beyond it wait
    /// (retries included). Absent: no limit. A 429 or 503 with `Retry-After` pauses every
    /// call to the upstream for that long (up to `retry.max_retry_after`) either way.
    pub rate_limit: Option<RateLimitPolicy>,
}

/// A token bucket: `per_second` requests on average, `burst` at once after a quiet time.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    pub per_second: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_burst() -> u32 {
    1
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_response_bytes: 1024 * 1024,
            redirects: RedirectPolicy::None,
            response_excerpt_bytes: 2048,
            bulkhead: BulkheadPolicy::default(),
            circuit: CircuitPolicy::default(),
            retry: RetryPolicyConfig::default(),
            rate_limit: None,
        }
    }
}

/// Which redirect answers the client follows; see [`UpstreamPolicy::redirects`].
#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RedirectPolicy {
    /// No redirect is followed: a 3xx ends the delivery as FAILED (`http_3xx` codes).
    #[default]
    None,
    /// 307 and 308 to the same origin are followed; any other redirect is the final answer.
    SameOrigin,
}

/// The concurrency limit: at most `max_concurrent` calls in flight to this upstream; a call
/// waits up to `max_wait` for a slot, then fails without touching the upstream.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BulkheadPolicy {
    pub max_concurrent: usize,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_wait: Duration,
}

impl Default for BulkheadPolicy {
    fn default() -> Self {
        Self {
            max_concurrent: 64,
            max_wait: Duration::from_secs(5),
        }
    }
}

/// When the circuit opens, how long it stays open, how it tests recovery.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitPolicy {
    /// How many of the most recent attempts the failure and slow rates are computed over.
    pub window_size: usize,
    /// No decision before the window holds this many attempts.
    pub minimum_calls: usize,
    /// Open when at least this share of the window failed (0..=1).
    pub failure_rate_threshold: f64,
    /// An attempt slower than this counts as slow (successful or not).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub slow_call_duration: Duration,
    /// Open when at least this share of the window was slow (0..=1).
    pub slow_call_rate_threshold: f64,
    /// How long the circuit stays open before letting trial calls through.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub open_duration: Duration,
    /// Trial calls allowed while half-open. The circuit re-opens as soon as their failure or
    /// slow-call rate reaches its threshold and closes once all are in below both.
    pub half_open_calls: usize,
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        Self {
            window_size: 50,
            minimum_calls: 10,
            failure_rate_threshold: 0.5,
            slow_call_duration: Duration::from_secs(2),
            slow_call_rate_threshold: 0.8,
            open_duration: Duration::from_secs(5),
            half_open_calls: 10,
        }
    }
}

/// Retries: how many, how spaced, on what, and how many overall.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicyConfig {
    /// Attempts per delivery, the first included (1 disables retries).
    pub max_attempts: u32,
    /// Backoff before retry n is uniformly random in [0, min(max_backoff, base_backoff × 2ⁿ)]
    /// ("full jitter"), so synchronised clients spread out.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub base_backoff: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured. A longer one ends the retries instead: retrying sooner
    /// than the upstream asked would be hammering it.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_retry_after: Duration,
    /// HTTP statuses that are retried (with `Retry-After` honoured where sent).
    pub retry_statuses: Vec<u16>,
    pub budget: RetryBudgetPolicy,
}

impl Default for RetryPolicyConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            retry_statuses: vec![408, 425, 429, 500, 502, 503, 504],
            budget: RetryBudgetPolicy::default(),
        }
    }
}

/// The retry budget caps retries at a share of recent requests, so a struggling upstream
/// sees at most `1 + ratio` times its normal load, never `max_attempts` times.
#[derive(Debug, Clone, Deserialize, PartialEq, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudgetPolicy {
    /// Retries allowed per first attempt over the window (0.2: one retry per five requests).
    pub ratio: f64,
    /// Retries always allowed per second, so low traffic can still retry.
    pub min_retries_per_second: u32,
    /// The sliding window the ratio is computed over.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
}

impl Default for RetryBudgetPolicy {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_retries_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// A policy whose settings contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream policy: {0}")]
pub struct PolicyError(String);

impl UpstreamPolicy {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let fail = |message: String| Err(PolicyError(message));
        if self.attempt_timeout.is_zero() || self.deadline.is_zero() {
            return fail("deadline and attempt_timeout must be positive".into());
        }
        if self.attempt_timeout > self.deadline {
            return fail(format!(
                "attempt_timeout ({:?}) exceeds the deadline ({:?}): no attempt could time out on its own",
                self.attempt_timeout, self.deadline
            ));
        }
        if self.connect_timeout > self.attempt_timeout {
            return fail("connect_timeout exceeds attempt_timeout".into());
        }
        if self.response_excerpt_bytes > 64 * 1024 {
            return fail(format!(
                "response_excerpt_bytes ({}) exceeds 65536: the excerpt travels in every failed attempt's audit record",
                self.response_excerpt_bytes
            ));
        }
        if self.bulkhead.max_concurrent == 0 {
            return fail("bulkhead.max_concurrent must be at least 1".into());
        }
        if let Some(rate) = &self.rate_limit
            && !(rate.per_second.is_finite() && rate.per_second > 0.0 && rate.burst >= 1)
        {
            return fail(format!(
                "rate_limit: per_second must be a positive number and burst at least 1 (got {} and {})",
                rate.per_second, rate.burst
            ));
        }
        let circuit = &self.circuit;
        if circuit.window_size == 0 || circuit.minimum_calls == 0 || circuit.half_open_calls == 0 {
            return fail(
                "circuit window_size, minimum_calls and half_open_calls must be at least 1".into(),
            );
        }
        if circuit.minimum_calls > circuit.window_size {
            return fail(
                "circuit.minimum_calls exceeds circuit.window_size: the circuit could never open"
                    .into(),
            );
        }
        for (name, rate) in [
            ("failure_rate_threshold", circuit.failure_rate_threshold),
            ("slow_call_rate_threshold", circuit.slow_call_rate_threshold),
        ] {
            if !(rate > 0.0 && rate <= 1.0) {
                return fail(format!("circuit.{name} must be in (0, 1], got {rate}"));
            }
        }
        let retry = &self.retry;
        if retry.max_attempts == 0 {
            return fail("retry.max_attempts must be at least 1".into());
        }
        if retry.base_backoff > retry.max_backoff {
            return fail("retry.base_backoff exceeds retry.max_backoff".into());
        }
        if !(retry.budget.ratio >= 0.0 && retry.budget.ratio.is_finite()) {
            return fail("retry.budget.ratio must be a non-negative number".into());
        }
        if retry.budget.window < Duration::from_secs(1) {
            return fail("retry.budget.window must be at least 1s".into());
        }
        if let Some(status) = retry
            .retry_statuses
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            return fail(format!(
                "retry.retry_statuses contains {status}, not an HTTP status"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        UpstreamPolicy::default()
            .validate()
            .expect("defaults validate");
    }

    #[test]
    fn partial_configuration_takes_defaults_for_the_rest() {
        let policy: UpstreamPolicy = toml::from_str(
            r#"
            deadline = "10s"
            attempt_timeout = "750ms"
            connect_timeout = "500ms"
            [retry]
            max_attempts = 3
            [retry.budget]
            ratio = 0.5
            "#,
        )
        .expect("parses");
        assert_eq!(policy.deadline, Duration::from_secs(10));
        assert_eq!(policy.attempt_timeout, Duration::from_millis(750));
        assert_eq!(policy.retry.max_attempts, 3);
        assert_eq!(policy.retry.budget.ratio, 0.5);
        assert_eq!(policy.retry.budget.window, Duration::from_secs(10));
        assert_eq!(policy.circuit, CircuitPolicy::default());
        policy.validate().expect("valid");
    }

    #[test]
    fn unknown_settings_are_rejected() {
        let error = toml::from_str::<UpstreamPolicy>("retries = 3").expect_err("typo caught");
        assert!(error.to_string().contains("unknown field"), "{error}");
    }

    #[test]
    fn contradictions_are_rejected() {
        let mut policy = UpstreamPolicy {
            attempt_timeout: Duration::from_secs(60),
            ..UpstreamPolicy::default()
        };
        assert!(policy.validate().is_err());
        policy.attempt_timeout = Duration::from_secs(1);
        policy.circuit.minimum_calls = 100;
        assert!(policy.validate().is_err());
        policy.circuit.minimum_calls = 10;
        policy.circuit.failure_rate_threshold = 1.5;
        assert!(policy.validate().is_err());
        policy.circuit.failure_rate_threshold = 0.5;
        policy.retry.retry_statuses.push(42);
        assert!(policy.validate().is_err());
    }
}
