//! Holding an upstream that refuses everyone: an expired or revoked credential (401, 403) or an
//! endpoint that is gone (410) fails every message alike, so dead-lettering them one by one
//! would empty the stream into the DLQ. Instead the upstream is held: its messages wait (as for
//! an open circuit), and after the configured pause one message makes a trial call. An answer
//! other than 401/403/410, to the trial or to any call, releases the hold; another refusal
//! renews it.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

/// Why an upstream is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// 401 or 403: the credential is not (or no longer) accepted.
    Unauthorized,
    /// 410: the endpoint is gone.
    Gone,
}

impl HoldReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Gone => "gone",
        }
    }

    /// The reason a final answer gives, if any.
    pub fn of_status(status: u16) -> Option<Self> {
        match status {
            401 | 403 => Some(Self::Unauthorized),
            410 => Some(Self::Gone),
            _ => None,
        }
    }
}

/// How long an upstream is held for each reason; zero turns holding off for it (the answer is
/// then a FAILED outcome like any other 4xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPauses {
    pub unauthorized: Duration,
    pub gone: Duration,
}

impl HoldPauses {
    fn of(self, reason: HoldReason) -> Duration {
        match reason {
            HoldReason::Unauthorized => self.unauthorized,
            HoldReason::Gone => self.gone,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    reason: HoldReason,
    until: Instant,
    trial_running: bool,
}

/// What a message may do before calling its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call; `trial` when this call tests whether a hold can end.
    Call { trial: bool },
    /// Wait this long, then ask again.
    Wait(Duration),
}

/// How long a message waits while another one's trial call runs.
const TRIAL_WAIT: Duration = Duration::from_millis(200);

fn admit(held: &mut Option<Held>, now: Instant) -> Admission {
    match held {
        None => Admission::Call { trial: false },
        Some(hold) if now < hold.until => Admission::Wait(hold.until - now),
        Some(hold) if hold.trial_running => Admission::Wait(TRIAL_WAIT),
        Some(hold) => {
            hold.trial_running = true;
            Admission::Call { trial: true }
        }
    }
}

/// Takes a call's final answer (`None` when no answer arrived). Returns the reason the
/// upstream is held for after it, if it is.
fn settle(
    held: &mut Option<Held>,
    answer: Option<u16>,
    trial: bool,
    pauses: HoldPauses,
    now: Instant,
) -> Option<HoldReason> {
    let refusal = answer
        .and_then(HoldReason::of_status)
        .filter(|reason| !pauses.of(*reason).is_zero());
    match refusal {
        Some(reason) => {
            *held = Some(Held {
                reason,
                until: now + pauses.of(reason),
                trial_running: false,
            });
        }
        // Any other answer to the trial ends the hold (whatever is wrong now is the circuit
        // breaker's and the retries' to handle); a success from anyone ends it too.
        None if trial || answer.is_some_and(|status| (200..300).contains(&status)) => {
            *held = None;
        }
        None => {}
    }
    held.map(|hold| hold.reason)
}

/// The hold state of one upstream, shared by its deliveries.
#[derive(Debug)]
pub struct UpstreamHold {
    pauses: HoldPauses,
    held: Mutex<Option<Held>>,
    /// 1 while held, per reason.
    unauthorized: Gauge,
    gone: Gauge,
}

impl UpstreamHold {
    pub fn new(pauses: HoldPauses, unauthorized: Gauge, gone: Gauge) -> Self {
        Self {
            pauses,
            held: Mutex::new(None),
            unauthorized,
            gone,
        }
    }

    pub fn admit(&self) -> Admission {
        admit(
            &mut self.held.lock().unwrap_or_else(PoisonError::into_inner),
            Instant::now(),
        )
    }

    /// Why the upstream is held, if it is.
    pub fn reason(&self) -> Option<HoldReason> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|hold| hold.reason)
    }

    /// The trial call was refused by the worker's own layers (circuit, bulkhead) before it
    /// reached the upstream: the next message makes it.
    pub fn abandon_trial(&self) {
        if let Some(hold) = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            hold.trial_running = false;
        }
    }

    /// Takes a call's final answer (`None` when none arrived); returns the reason the upstream
    /// is held for after it, if it is. Also keeps the gauges and says when a hold starts or ends.
    pub fn settle(&self, answer: Option<u16>, trial: bool, upstream: &str) -> Option<HoldReason> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let before = held.map(|hold| hold.reason);
        let after = settle(&mut held, answer, trial, self.pauses, Instant::now());
        drop(held);
        if before != after {
            match after {
                Some(reason) => tracing::warn!(
                    upstream,
                    reason = reason.label(),
                    status = answer,
                    pause = ?self.pauses.of(reason),
                    "upstream held: its deliveries wait, then one trial call"
                ),
                None => tracing::info!(upstream, "upstream hold released"),
            }
            self.unauthorized
                .set(i64::from(after == Some(HoldReason::Unauthorized)));
            self.gone.set(i64::from(after == Some(HoldReason::Gone)));
        }
        after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSES: HoldPauses = HoldPauses {
        unauthorized: Duration::from_secs(30),
        gone: Duration::from_secs(300),
    };

    #[test]
    fn a_refusal_holds_until_the_pause_then_lets_one_trial_through() {
        let start = Instant::now();
        let mut held = None;
        assert_eq!(admit(&mut held, start), Admission::Call { trial: false });
        assert_eq!(
            settle(&mut held, Some(401), false, PAUSES, start),
            Some(HoldReason::Unauthorized)
        );
        assert_eq!(
            admit(&mut held, start + Duration::from_secs(10)),
            Admission::Wait(Duration::from_secs(20))
        );
        let later = start + Duration::from_secs(30);
        assert_eq!(admit(&mut held, later), Admission::Call { trial: true });
        assert_eq!(
            admit(&mut held, later),
            Admission::Wait(TRIAL_WAIT),
            "one trial at a time"
        );
        // The trial is refused again: held for another pause.
        assert_eq!(
            settle(&mut held, Some(403), true, PAUSES, later),
            Some(HoldReason::Unauthorized)
        );
        assert!(matches!(admit(&mut held, later), Admission::Wait(_)));
        let again = later + Duration::from_secs(30);
        assert_eq!(admit(&mut held, again), Admission::Call { trial: true });
        assert_eq!(settle(&mut held, Some(200), true, PAUSES, again), None);
        assert_eq!(admit(&mut held, again), Admission::Call { trial: false });
    }

    #[test]
    fn gone_holds_longer_and_any_other_trial_answer_releases() {
        let start = Instant::now();
        let mut held = None;
        assert_eq!(
            settle(&mut held, Some(410), false, PAUSES, start),
            Some(HoldReason::Gone)
        );
        assert!(matches!(
            admit(&mut held, start + Duration::from_secs(299)),
            Admission::Wait(_)
        ));
        let later = start + Duration::from_secs(300);
        assert_eq!(admit(&mut held, later), Admission::Call { trial: true });
        assert_eq!(settle(&mut held, Some(503), true, PAUSES, later), None);
        assert_eq!(settle(&mut held, None, false, PAUSES, later), None);
    }

    #[test]
    fn a_late_failure_of_another_call_does_not_release_and_a_zero_pause_never_holds() {
        let start = Instant::now();
        let mut held = None;
        settle(&mut held, Some(401), false, PAUSES, start);
        assert_eq!(
            settle(&mut held, Some(500), false, PAUSES, start),
            Some(HoldReason::Unauthorized),
            "a call that was in flight before the hold"
        );
        assert_eq!(
            settle(&mut held, Some(200), false, PAUSES, start),
            None,
            "a success shows the credential works"
        );
        let off = HoldPauses {
            unauthorized: Duration::ZERO,
            gone: Duration::ZERO,
        };
        assert_eq!(settle(&mut held, Some(401), false, off, start), None);
        assert_eq!(settle(&mut held, Some(410), false, off, start), None);
        assert_eq!(admit(&mut held, start), Admission::Call { trial: false });
    }
}
