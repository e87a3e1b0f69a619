//! The faults the simulator injects, set at run time through the admin API.
//!
//! Per request, in order: a full outage refuses connections outright (the listener closes);
//! otherwise one draw decides among hang, reset, 429, a redirect and the error statuses by their ratios,
//! the rest succeed; every answered request first waits the drawn latency.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, LogNormal};
use serde::{Deserialize, Serialize};

/// The whole fault configuration; the default is a healthy, fast upstream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub latency: Latency,
    /// Share of requests answered with each error status: any 4xx or 5xx (503 for an overloaded
    /// upstream, 401 or 403 for an expired credential, 410 for an endpoint that is gone).
    pub errors: BTreeMap<u16, f64>,
    pub rate_limit: RateLimit,
    pub redirect: Redirect,
    pub hang: Hang,
    /// Share of requests whose connection is closed without an answer.
    pub reset_ratio: f64,
    /// While true, the port refuses connections.
    pub outage: bool,
    /// Requests answered at once, beyond which further ones are refused with 429: an API
    /// that takes a fixed number of concurrent requests.
    pub concurrency_limit: Option<ConcurrencyLimit>,
    /// Requests served at once, beyond which further ones wait their turn unrefused (their
    /// latency starts when their turn comes): an API that queues what it cannot serve, whose
    /// answers only get slower as more are sent.
    pub serves_at_once: Option<usize>,
}

/// At most `max` requests in progress; one more is answered 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    pub max: usize,
    #[serde(default = "default_limit_retry_after")]
    pub retry_after_secs: u64,
}

fn default_limit_retry_after() -> u64 {
    1
}

/// Latency added before answering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Latency {
    Fixed {
        ms: u64,
    },
    Uniform {
        min_ms: u64,
        max_ms: u64,
    },
    /// Log-normal around a median; `sigma` 0.5 gives a p99 of about 3.2 × the median.
    LogNormal {
        median_ms: f64,
        sigma: f64,
    },
}

impl Default for Latency {
    fn default() -> Self {
        Self::Fixed { ms: 0 }
    }
}

/// 429 answers with a `Retry-After`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    pub ratio: f64,
    pub retry_after_secs: u64,
}

/// Answers that redirect (`Location: /moved`, a path this server does not serve), as an API
/// that moved answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Redirect {
    pub ratio: f64,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

impl Default for Redirect {
    fn default() -> Self {
        Self {
            ratio: 0.0,
            status: 302,
        }
    }
}

/// Where a redirect answer points.
pub const REDIRECT_LOCATION: &str = "/moved";

/// Requests that get no answer for a long time (beyond any sane client timeout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hang {
    pub ratio: f64,
    pub ms: u64,
}

impl Default for Hang {
    fn default() -> Self {
        Self {
            ratio: 0.0,
            ms: 60_000,
        }
    }
}

/// What the simulator does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Error(u16),
    RateLimit { retry_after_secs: u64 },
    Redirect(u16),
    Hang(Duration),
    Reset,
}

/// A configuration that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid faults: {0}")]
pub struct FaultsError(String);

/// The longest hang or latency accepted, so a typo cannot park connections for days.
const MAX_DELAY_MS: u64 = 10 * 60 * 1000;

impl Faults {
    pub fn validate(&self) -> Result<(), FaultsError> {
        let ratio = |name: &str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(FaultsError(format!(
                    "{name} must be within 0..=1, got {value}"
                )))
            }
        };
        for (status, share) in &self.errors {
            if !(400..=599).contains(status) {
                return Err(FaultsError(format!(
                    "error status {status} is not a 4xx or 5xx"
                )));
            }
            ratio(&format!("errors.{status}"), *share)?;
        }
        ratio("rate_limit.ratio", self.rate_limit.ratio)?;
        ratio("redirect.ratio", self.redirect.ratio)?;
        if ![301, 302, 303, 307, 308].contains(&self.redirect.status) {
            return Err(FaultsError(format!(
                "redirect.status {} is not 301, 302, 303, 307 or 308",
                self.redirect.status
            )));
        }
        ratio("hang.ratio", self.hang.ratio)?;
        ratio("reset_ratio", self.reset_ratio)?;
        let total = self.errors.values().sum::<f64>()
            + self.rate_limit.ratio
            + self.redirect.ratio
            + self.hang.ratio
            + self.reset_ratio;
        if total > 1.0 + 1e-9 {
            return Err(FaultsError(format!(
                "fault ratios add up to {total}, more than 1"
            )));
        }
        if self.concurrency_limit.is_some_and(|limit| limit.max == 0) {
            return Err(FaultsError(
                "concurrency_limit.max must be at least 1".into(),
            ));
        }
        if self.serves_at_once == Some(0) {
            return Err(FaultsError("serves_at_once must be at least 1".into()));
        }
        if self.hang.ms > MAX_DELAY_MS {
            return Err(FaultsError(format!("hang.ms above {MAX_DELAY_MS}")));
        }
        match self.latency {
            Latency::Fixed { ms } if ms > MAX_DELAY_MS => {
                Err(FaultsError("latency too long".into()))
            }
            Latency::Uniform { min_ms, max_ms } if min_ms > max_ms || max_ms > MAX_DELAY_MS => Err(
                FaultsError("uniform latency needs min_ms <= max_ms <= 10 min".into()),
            ),
            Latency::LogNormal { median_ms, sigma }
                if !(median_ms > 0.0 && median_ms.is_finite() && (0.0..=3.0).contains(&sigma)) =>
            {
                Err(FaultsError(
                    "log_normal needs median_ms > 0 and sigma within 0..=3".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Draws what to do with one request, and how long to wait first.
    pub fn decide(&self, rng: &mut impl Rng) -> (Duration, Action) {
        let latency = self.latency.sample(rng);
        let mut draw: f64 = rng.random();
        let mut take = |share: f64| {
            if draw < share {
                true
            } else {
                draw -= share;
                false
            }
        };
        let action = if take(self.hang.ratio) {
            Action::Hang(Duration::from_millis(self.hang.ms))
        } else if take(self.reset_ratio) {
            Action::Reset
        } else if take(self.rate_limit.ratio) {
            Action::RateLimit {
                retry_after_secs: self.rate_limit.retry_after_secs,
            }
        } else if take(self.redirect.ratio) {
            Action::Redirect(self.redirect.status)
        } else if let Some(status) = self
            .errors
            .iter()
            .find_map(|(status, share)| take(*share).then_some(*status))
        {
            Action::Error(status)
        } else {
            Action::Accept
        };
        (latency, action)
    }
}

impl Latency {
    fn sample(&self, rng: &mut impl Rng) -> Duration {
        let ms = match *self {
            Self::Fixed { ms } => ms as f64,
            Self::Uniform { min_ms, max_ms } => rng.random_range(min_ms..=max_ms) as f64,
            Self::LogNormal { median_ms, sigma } => LogNormal::new(median_ms.ln(), sigma)
                .map(|distribution| distribution.sample(rng))
                .unwrap_or(median_ms),
        };
        Duration::from_secs_f64(ms.clamp(0.0, MAX_DELAY_MS as f64) / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn ratios_are_respected() {
        let faults = Faults {
            errors: BTreeMap::from([(503, 0.2)]),
            hang: Hang {
                ratio: 0.05,
                ms: 1000,
            },
            ..Faults::default()
        };
        faults.validate().expect("valid");
        let mut rng = StdRng::seed_from_u64(1);
        let actions: Vec<Action> = (0..20_000).map(|_| faults.decide(&mut rng).1).collect();
        let share = |wanted: fn(&Action) -> bool| {
            actions.iter().filter(|a| wanted(a)).count() as f64 / 20_000.0
        };
        assert!((share(|a| *a == Action::Error(503)) - 0.2).abs() < 0.015);
        assert!((share(|a| matches!(a, Action::Hang(_))) - 0.05).abs() < 0.008);
        assert!((share(|a| *a == Action::Accept) - 0.75).abs() < 0.015);
    }

    #[test]
    fn log_normal_latency_has_the_configured_median() {
        let latency = Latency::LogNormal {
            median_ms: 100.0,
            sigma: 0.5,
        };
        let mut rng = StdRng::seed_from_u64(2);
        let mut samples: Vec<Duration> = (0..10_001).map(|_| latency.sample(&mut rng)).collect();
        samples.sort();
        let median = samples[5000].as_millis();
        assert!((90..110).contains(&median), "median {median} ms");
    }

    #[test]
    fn redirects_and_client_errors_are_drawn_like_the_other_faults() {
        let mut rng = StdRng::seed_from_u64(3);
        let redirecting = Faults {
            redirect: Redirect {
                ratio: 1.0,
                status: 308,
            },
            ..Faults::default()
        };
        redirecting.validate().unwrap();
        assert_eq!(redirecting.decide(&mut rng).1, Action::Redirect(308));
        let gone = Faults {
            errors: BTreeMap::from([(410, 1.0)]),
            ..Faults::default()
        };
        gone.validate().unwrap();
        assert_eq!(gone.decide(&mut rng).1, Action::Error(410));
    }

    #[test]
    fn invalid_configurations_are_refused() {
        let bad = [
            Faults {
                errors: BTreeMap::from([(302, 0.1)]),
                ..Faults::default()
            },
            Faults {
                errors: BTreeMap::from([(600, 0.1)]),
                ..Faults::default()
            },
            Faults {
                redirect: Redirect {
                    ratio: 0.1,
                    status: 200,
                },
                ..Faults::default()
            },
            Faults {
                reset_ratio: 1.5,
                ..Faults::default()
            },
            Faults {
                errors: BTreeMap::from([(500, 0.7)]),
                reset_ratio: 0.5,
                ..Faults::default()
            },
            Faults {
                latency: Latency::Uniform {
                    min_ms: 10,
                    max_ms: 5,
                },
                ..Faults::default()
            },
        ];
        for faults in bad {
            assert!(faults.validate().is_err(), "{faults:?}");
        }
        let parsed: Faults = serde_json::from_str(
            r#"{"latency": {"kind": "log_normal", "median_ms": 20, "sigma": 0.5},
                "errors": {"503": 0.2}, "rate_limit": {"ratio": 0.1, "retry_after_secs": 2}}"#,
        )
        .expect("parses");
        parsed.validate().expect("valid");
        assert!(
            serde_json::from_str::<Faults>(r#"{"eror": {}}"#).is_err(),
            "typos are caught"
        );
    }
}
