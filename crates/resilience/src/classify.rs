//! Retry *decisions*, kept apart from the retry *machinery* (`middleware::Retry`).
//!
//! An attempt ends in an [`AttemptResult`]; a [`RetryClassifier`] says whether it succeeded,
//! may be retried (and no sooner than when), or failed for good. The decision is data, so it is
//! tested on its own and the loop that sleeps and retries never inspects statuses or errors.

use std::collections::BTreeSet;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// Which limit ended an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeoutKind {
    /// The connection could not be established in time.
    Connect,
    /// The per-attempt timeout fired.
    Attempt,
    /// The delivery's overall deadline fired.
    Deadline,
}

impl TimeoutKind {
    pub const ALL: [Self; 3] = [Self::Connect, Self::Attempt, Self::Deadline];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Attempt => "attempt",
            Self::Deadline => "deadline",
        }
    }
}

/// Transport-level failure classes, decided from error *types*, never from messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransportError {
    /// No connection: refused, unreachable, DNS failure. The request was never sent.
    Connect,
    /// A limit fired.
    Timeout(TimeoutKind),
    /// The connection broke after the request may have been sent (reset, EOF, protocol error).
    Interrupted,
    /// The response body was larger than allowed.
    ResponseTooLarge,
    /// Anything else (a bug, an invalid request).
    Other,
}

impl TransportError {
    /// The OpenTelemetry `error.type` value.
    pub const fn error_type(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout(_) => "timeout",
            Self::Interrupted => "interrupted",
            Self::ResponseTooLarge => "response_too_large",
            Self::Other => "other",
        }
    }

    /// Classifies a reqwest error by its kind.
    pub fn from_reqwest(error: &reqwest::Error) -> Self {
        if error.is_connect() {
            // reqwest reports a connect timeout as a connect error that is also a timeout.
            if error.is_timeout() {
                Self::Timeout(TimeoutKind::Connect)
            } else {
                Self::Connect
            }
        } else if error.is_timeout() {
            Self::Timeout(TimeoutKind::Attempt)
        } else if error.is_request() || error.is_body() || error.is_decode() {
            Self::Interrupted
        } else {
            Self::Other
        }
    }
}

/// How one attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Response {
        status: StatusCode,
        /// `Retry-After`, already parsed (seconds or HTTP date, relative to now).
        retry_after: Option<Duration>,
    },
    Error(TransportError),
}

impl AttemptResult {
    pub fn from_response(status: StatusCode, headers: &HeaderMap) -> Self {
        Self::Response {
            status,
            retry_after: parse_retry_after(headers),
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Done: a 2xx.
    Success,
    /// Try again, not before `not_before` (from `Retry-After`) when set.
    Retry { not_before: Option<Duration> },
    /// Do not retry: the answer will not change (4xx) or retrying could repeat a side effect.
    Fatal,
}

/// Decides retries. Implemented by [`StatusClassifier`]; a different upstream contract (say,
/// one that signals "retry" in a 200 body) gets its own implementation.
pub trait RetryClassifier: Send + Sync + std::fmt::Debug {
    fn classify(&self, result: &AttemptResult, request_is_replayable: bool) -> Decision;

    /// Whether this result says the upstream itself is unhealthy (what the circuit breaker
    /// counts as a failure). A 404 is the caller's problem, a 503 is the upstream's.
    fn is_upstream_failure(&self, result: &AttemptResult) -> bool;
}

/// The default classifier: 2xx succeeds; configured statuses and transport errors retry;
/// everything else is final.
#[derive(Debug, Clone)]
pub struct StatusClassifier {
    retry_statuses: BTreeSet<u16>,
}

impl StatusClassifier {
    pub fn new(retry_statuses: impl IntoIterator<Item = u16>) -> Self {
        Self {
            retry_statuses: retry_statuses.into_iter().collect(),
        }
    }
}

impl RetryClassifier for StatusClassifier {
    fn classify(&self, result: &AttemptResult, request_is_replayable: bool) -> Decision {
        match result {
            AttemptResult::Response { status, .. } if status.is_success() => Decision::Success,
            AttemptResult::Response {
                status,
                retry_after,
            } => {
                if self.retry_statuses.contains(&status.as_u16()) {
                    Decision::Retry {
                        not_before: *retry_after,
                    }
                } else {
                    Decision::Fatal
                }
            }
            // Never sent: always safe to retry.
            AttemptResult::Error(TransportError::Connect)
            | AttemptResult::Error(TransportError::Timeout(TimeoutKind::Connect)) => {
                Decision::Retry { not_before: None }
            }
            // Possibly processed upstream: retry only when a repeat is harmless (the request is
            // idempotent or carries an Idempotency-Key).
            AttemptResult::Error(TransportError::Timeout(TimeoutKind::Attempt))
            | AttemptResult::Error(TransportError::Interrupted) => {
                if request_is_replayable {
                    Decision::Retry { not_before: None }
                } else {
                    Decision::Fatal
                }
            }
            AttemptResult::Error(TransportError::Timeout(TimeoutKind::Deadline))
            | AttemptResult::Error(TransportError::ResponseTooLarge)
            | AttemptResult::Error(TransportError::Other) => Decision::Fatal,
        }
    }

    fn is_upstream_failure(&self, result: &AttemptResult) -> bool {
        match result {
            AttemptResult::Response { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            AttemptResult::Error(TransportError::Other | TransportError::ResponseTooLarge) => false,
            AttemptResult::Error(_) => true,
        }
    }
}

/// `Retry-After` as delta-seconds or an HTTP date; a date in the past means "now".
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate_parse(value)?;
    Some(
        date.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only date form senders may generate.
fn httpdate_parse(value: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u32
        + 1;
    let day: u32 = day.parse().ok()?;
    let year: i32 = year.parse().ok()?;
    let mut hms = time.split(':').map(|n| n.parse::<u32>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    // Days since the Unix epoch (civil-from-days inverse, proleptic Gregorian).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year as i32;
    let days = i64::from(era) * 146_097 + i64::from(day_of_era) - 719_468;
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let seconds = u64::try_from(seconds).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Why the retry layer stopped before a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStop {
    /// The answer was final (a 4xx, or a failure that is unsafe to repeat).
    NotRetryable,
    /// `max_attempts` attempts were made.
    MaxAttempts,
    /// The retry budget was spent.
    BudgetExhausted,
    /// The upstream asked to wait longer than `max_retry_after`.
    RetryAfterTooLong,
    /// The next attempt could not start before the deadline.
    Deadline,
    /// The circuit opened while this call was retrying.
    CircuitOpened,
}

impl RetryStop {
    pub const ALL: [Self; 6] = [
        Self::NotRetryable,
        Self::MaxAttempts,
        Self::BudgetExhausted,
        Self::RetryAfterTooLong,
        Self::Deadline,
        Self::CircuitOpened,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotRetryable => "not_retryable",
            Self::MaxAttempts => "max_attempts",
            Self::BudgetExhausted => "budget_exhausted",
            Self::RetryAfterTooLong => "retry_after_too_long",
            Self::Deadline => "deadline",
            Self::CircuitOpened => "circuit_opened",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> StatusClassifier {
        StatusClassifier::new([408, 425, 429, 500, 502, 503, 504])
    }

    fn response(status: u16, retry_after: Option<u64>) -> AttemptResult {
        AttemptResult::Response {
            status: StatusCode::from_u16(status).expect("status"),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn statuses() {
        let c = classifier();
        assert_eq!(c.classify(&response(200, None), true), Decision::Success);
        assert_eq!(c.classify(&response(204, None), false), Decision::Success);
        assert_eq!(
            c.classify(&response(503, None), true),
            Decision::Retry { not_before: None }
        );
        assert_eq!(
            c.classify(&response(429, Some(2)), true),
            Decision::Retry {
                not_before: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(c.classify(&response(400, None), true), Decision::Fatal);
        assert_eq!(c.classify(&response(404, None), true), Decision::Fatal);
        assert_eq!(
            c.classify(&response(501, None), true),
            Decision::Fatal,
            "not configured"
        );
    }

    #[test]
    fn transport_errors_respect_replayability() {
        let c = classifier();
        let retry = Decision::Retry { not_before: None };
        for (error, replayable, expected) in [
            (TransportError::Connect, false, retry),
            (TransportError::Timeout(TimeoutKind::Connect), false, retry),
            (TransportError::Timeout(TimeoutKind::Attempt), true, retry),
            (
                TransportError::Timeout(TimeoutKind::Attempt),
                false,
                Decision::Fatal,
            ),
            (TransportError::Interrupted, true, retry),
            (TransportError::Interrupted, false, Decision::Fatal),
            (
                TransportError::Timeout(TimeoutKind::Deadline),
                true,
                Decision::Fatal,
            ),
            (TransportError::ResponseTooLarge, true, Decision::Fatal),
            (TransportError::Other, true, Decision::Fatal),
        ] {
            assert_eq!(
                c.classify(&AttemptResult::Error(error), replayable),
                expected,
                "{error:?} replayable={replayable}"
            );
        }
    }

    #[test]
    fn upstream_failures_are_what_the_breaker_counts() {
        let c = classifier();
        assert!(c.is_upstream_failure(&response(503, None)));
        assert!(c.is_upstream_failure(&response(429, None)));
        assert!(!c.is_upstream_failure(&response(404, None)));
        assert!(!c.is_upstream_failure(&response(200, None)));
        assert!(c.is_upstream_failure(&AttemptResult::Error(TransportError::Connect)));
        assert!(
            c.is_upstream_failure(&AttemptResult::Error(TransportError::Timeout(
                TimeoutKind::Attempt
            )))
        );
        assert!(!c.is_upstream_failure(&AttemptResult::Error(TransportError::Other)));
    }

    #[test]
    fn retry_after_forms() {
        let mut headers = HeaderMap::new();
        assert_eq!(parse_retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, "2".parse().expect("header"));
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(
            http::header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().expect("header"),
        );
        assert_eq!(
            parse_retry_after(&headers),
            Some(Duration::ZERO),
            "a past date means now"
        );
        headers.insert(http::header::RETRY_AFTER, "soon".parse().expect("header"));
        assert_eq!(parse_retry_after(&headers), None);
        assert_eq!(
            httpdate_parse("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
    }
}
