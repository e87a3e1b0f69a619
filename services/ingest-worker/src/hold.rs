//! Holding an upstream that refuses everyone, so that one bad credential or one removed
//! endpoint does not empty the stream into the DLQ message by message. The held upstream's
//! messages wait (as for an open circuit) and nothing of them is decided.
//!
//! - **Unauthorized** (401, 403: an expired or revoked credential, often fixed without telling
//!   anyone): after `pause_on_unauthorized` one message makes a trial call. An answer other than
//!   401/403, to the trial or to any call, releases the hold; another refusal renews it.
//! - **Disabled** (410: the endpoint is gone, which no retry fixes; or an operator disabled the
//!   upstream): held until an operator re-enables it through the gateway. The state lives in the
//!   upstream control topic, so every replica holds it alike and a restart keeps it
//!   ([`relais_operator::control`]).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

/// Why an upstream is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// 401 or 403: the credential is not (or no longer) accepted.
    Unauthorized,
    /// Disabled until re-enabled: it answered 410, or an operator disabled it.
    Disabled,
}

impl HoldReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Disabled => "disabled",
        }
    }
}

/// How refusals hold an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPolicy {
    /// How long a 401/403 holds before a trial call; zero makes such an answer a FAILED outcome.
    pub pause_on_unauthorized: Duration,
    /// Whether a 410 disables the upstream; if not, it is a FAILED outcome.
    pub disable_on_gone: bool,
}

/// The refusal an answer is, under `policy`.
fn refusal(policy: HoldPolicy, status: u16) -> Option<HoldReason> {
    match status {
        401 | 403 if !policy.pause_on_unauthorized.is_zero() => Some(HoldReason::Unauthorized),
        410 if policy.disable_on_gone => Some(HoldReason::Disabled),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    reason: HoldReason,
    /// When a trial call may be made; `None` until an operator re-enables the upstream.
    until: Option<Instant>,
    trial_running: bool,
}

#[derive(Debug, Default)]
struct State {
    held: Option<Held>,
    /// Counts re-enables: a 410 to a call admitted before the latest one is stale.
    epoch: u64,
}

/// What a message may do before calling its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call; `trial` when this call tests whether a hold can end. Hand `epoch` back to
    /// [`UpstreamHold::settle`].
    Call { trial: bool, epoch: u64 },
    /// Wait this long, then ask again.
    Wait(Duration),
}

/// How long a message waits while another one's trial call runs, or before it looks again
/// whether a disabled upstream was re-enabled.
const RECHECK: Duration = Duration::from_millis(200);

fn admit(state: &mut State, now: Instant) -> Admission {
    let epoch = state.epoch;
    match &mut state.held {
        None => Admission::Call {
            trial: false,
            epoch,
        },
        Some(Held { until: None, .. }) => Admission::Wait(RECHECK),
        Some(Held {
            until: Some(until), ..
        }) if now < *until => Admission::Wait(*until - now),
        Some(hold) if hold.trial_running => Admission::Wait(RECHECK),
        Some(hold) => {
            hold.trial_running = true;
            Admission::Call { trial: true, epoch }
        }
    }
}

/// What to do with a call's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The answer decides the message's outcome.
    Decide,
    /// The message waits and calls again: the upstream is held, or the answer came from before
    /// an operator re-enabled it.
    CallAgain,
}

/// A change of an upstream's hold that an answer made, to be told beyond this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldChange {
    /// It answered 410: disabled until re-enabled.
    Disabled,
    /// It answered 401/403: held, with a trial call per pause.
    Held,
    /// An unauthorized hold ended: it answered otherwise.
    Released,
}

/// What settling an answer changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settled {
    verdict: Verdict,
    /// This answer disabled the upstream (to be published for the other replicas).
    disabled_now: bool,
}

/// Takes a call's final answer (`None` when no answer arrived).
fn settle(
    state: &mut State,
    answer: Option<u16>,
    trial: bool,
    epoch: u64,
    policy: HoldPolicy,
    now: Instant,
) -> Settled {
    let refused = answer.and_then(|status| refusal(policy, status));
    match refused {
        // Re-enabled while this call ran: its 410 says nothing about the endpoint now.
        Some(HoldReason::Disabled) if epoch < state.epoch => Settled {
            verdict: Verdict::CallAgain,
            disabled_now: false,
        },
        Some(HoldReason::Disabled) => {
            let disabled_now = !matches!(
                state.held,
                Some(Held {
                    reason: HoldReason::Disabled,
                    ..
                })
            );
            state.held = Some(Held {
                reason: HoldReason::Disabled,
                until: None,
                trial_running: false,
            });
            Settled {
                verdict: Verdict::CallAgain,
                disabled_now,
            }
        }
        Some(HoldReason::Unauthorized) => {
            // A disabled upstream stays disabled: only an operator ends that.
            if !matches!(state.held, Some(Held { until: None, .. })) {
                state.held = Some(Held {
                    reason: HoldReason::Unauthorized,
                    until: Some(now + policy.pause_on_unauthorized),
                    trial_running: false,
                });
            }
            Settled {
                verdict: Verdict::CallAgain,
                disabled_now: false,
            }
        }
        None => {
            // Any other answer to the trial ends an unauthorized hold (whatever is wrong now is
            // the circuit breaker's and the retries' to handle); a success from anyone ends it
            // too. A late answer of a call made before the hold changes nothing.
            let ends = trial || answer.is_some_and(|status| (200..300).contains(&status));
            if ends
                && matches!(
                    state.held,
                    Some(Held {
                        reason: HoldReason::Unauthorized,
                        ..
                    })
                )
            {
                state.held = None;
            }
            Settled {
                // Held by another call's answer meanwhile: this message waits with the rest.
                verdict: if state.held.is_some() {
                    Verdict::CallAgain
                } else {
                    Verdict::Decide
                },
                disabled_now: false,
            }
        }
    }
}

/// The hold state of one upstream, shared by its deliveries and the control topic follower.
#[derive(Debug)]
pub struct UpstreamHold {
    upstream: String,
    policy: HoldPolicy,
    state: Mutex<State>,
    /// 1 while held, per reason.
    unauthorized: Gauge,
    disabled: Gauge,
}

impl UpstreamHold {
    pub fn new(upstream: &str, policy: HoldPolicy, unauthorized: Gauge, disabled: Gauge) -> Self {
        Self {
            upstream: upstream.to_owned(),
            policy,
            state: Mutex::default(),
            unauthorized,
            disabled,
        }
    }

    fn with_state<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let before = state.held.map(|held| held.reason);
        let result = change(&mut state);
        let after = state.held.map(|held| held.reason);
        drop(state);
        if before != after {
            match after {
                Some(reason) => tracing::warn!(
                    upstream = %self.upstream,
                    reason = reason.label(),
                    "upstream held: its deliveries wait"
                ),
                None => tracing::info!(upstream = %self.upstream, "upstream hold released"),
            }
            self.unauthorized
                .set(i64::from(after == Some(HoldReason::Unauthorized)));
            self.disabled
                .set(i64::from(after == Some(HoldReason::Disabled)));
        }
        result
    }

    pub fn admit(&self) -> Admission {
        self.with_state(|state| admit(state, Instant::now()))
    }

    /// Why the upstream is held, if it is.
    pub fn reason(&self) -> Option<HoldReason> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held
            .map(|held| held.reason)
    }

    /// The trial call was refused by the worker's own layers (circuit, bulkhead) before it
    /// reached the upstream: the next message makes it.
    pub fn abandon_trial(&self) {
        self.with_state(|state| {
            if let Some(held) = state.held.as_mut() {
                held.trial_running = false;
            }
        });
    }

    /// Takes a call's final answer (`None` when none arrived) with the epoch its admission
    /// gave. Returns what to do with it, and the change this answer made, if any.
    pub fn settle(
        &self,
        answer: Option<u16>,
        trial: bool,
        epoch: u64,
    ) -> (Verdict, Option<HoldChange>) {
        self.with_state(|state| {
            let before = state.held.map(|held| held.reason);
            let settled = settle(state, answer, trial, epoch, self.policy, Instant::now());
            let after = state.held.map(|held| held.reason);
            let change = match (before, after) {
                _ if settled.disabled_now => Some(HoldChange::Disabled),
                (before, Some(HoldReason::Unauthorized)) if before.is_none() => {
                    Some(HoldChange::Held)
                }
                (Some(HoldReason::Unauthorized), None) => Some(HoldChange::Released),
                _ => None,
            };
            (settled.verdict, change)
        })
    }

    /// Applies the upstream's state from the control topic.
    pub fn set_enabled(&self, enabled: bool) {
        self.with_state(|state| {
            if enabled {
                if state.held.is_some_and(|held| held.until.is_none()) {
                    state.held = None;
                    state.epoch += 1;
                }
            } else {
                state.held = Some(Held {
                    reason: HoldReason::Disabled,
                    until: None,
                    trial_running: false,
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: HoldPolicy = HoldPolicy {
        pause_on_unauthorized: Duration::from_secs(30),
        disable_on_gone: true,
    };

    fn call(state: &mut State, now: Instant) -> (bool, u64) {
        match admit(state, now) {
            Admission::Call { trial, epoch } => (trial, epoch),
            Admission::Wait(wait) => panic!("waits {wait:?}"),
        }
    }

    fn decide() -> Settled {
        Settled {
            verdict: Verdict::Decide,
            disabled_now: false,
        }
    }

    fn again() -> Settled {
        Settled {
            verdict: Verdict::CallAgain,
            disabled_now: false,
        }
    }

    #[test]
    fn unauthorized_holds_until_the_pause_then_lets_one_trial_through() {
        let start = Instant::now();
        let mut state = State::default();
        let (trial, epoch) = call(&mut state, start);
        assert!(!trial);
        assert_eq!(
            settle(&mut state, Some(401), false, epoch, POLICY, start),
            again()
        );
        assert_eq!(
            admit(&mut state, start + Duration::from_secs(10)),
            Admission::Wait(Duration::from_secs(20))
        );
        let later = start + Duration::from_secs(30);
        assert_eq!(call(&mut state, later), (true, 0));
        assert_eq!(
            admit(&mut state, later),
            Admission::Wait(RECHECK),
            "one trial at a time"
        );
        // The trial is refused again: held for another pause.
        assert_eq!(
            settle(&mut state, Some(403), true, 0, POLICY, later),
            again()
        );
        assert!(matches!(admit(&mut state, later), Admission::Wait(_)));
        let again_later = later + Duration::from_secs(30);
        assert_eq!(call(&mut state, again_later), (true, 0));
        assert_eq!(
            settle(&mut state, Some(200), true, 0, POLICY, again_later),
            decide()
        );
        assert_eq!(call(&mut state, again_later), (false, 0));
    }

    #[test]
    fn gone_disables_until_re_enabled_and_no_trial_is_made() {
        let start = Instant::now();
        let mut state = State::default();
        assert_eq!(
            settle(&mut state, Some(410), false, 0, POLICY, start),
            Settled {
                verdict: Verdict::CallAgain,
                disabled_now: true
            }
        );
        assert_eq!(
            settle(&mut state, Some(410), false, 0, POLICY, start),
            again(),
            "a second 410 in flight does not disable twice"
        );
        let hour_later = start + Duration::from_secs(3600);
        assert_eq!(admit(&mut state, hour_later), Admission::Wait(RECHECK));
        assert_eq!(
            settle(&mut state, Some(200), false, 0, POLICY, hour_later),
            again(),
            "a late success does not end what only an operator ends"
        );
        assert_eq!(
            settle(&mut state, Some(401), false, 0, POLICY, hour_later),
            again()
        );
        assert_eq!(
            state.held.map(|held| held.reason),
            Some(HoldReason::Disabled)
        );
    }

    #[test]
    fn a_410_to_a_call_made_before_re_enabling_is_stale() {
        let start = Instant::now();
        let mut state = State::default();
        let (_, before) = call(&mut state, start);
        settle(&mut state, Some(410), false, before, POLICY, start);
        // Re-enabled by an operator (what UpstreamHold::set_enabled does).
        state.held = None;
        state.epoch += 1;
        assert_eq!(
            settle(&mut state, Some(410), false, before, POLICY, start),
            again(),
            "called again, not disabled again"
        );
        assert_eq!(state.held, None);
        let (_, now) = call(&mut state, start);
        assert!(
            settle(&mut state, Some(410), false, now, POLICY, start).disabled_now,
            "a fresh 410 disables again"
        );
    }

    #[test]
    fn a_late_failure_does_not_release_and_the_policy_can_turn_holding_off() {
        let start = Instant::now();
        let mut state = State::default();
        settle(&mut state, Some(401), false, 0, POLICY, start);
        assert_eq!(
            settle(&mut state, Some(500), false, 0, POLICY, start),
            again(),
            "a call that was in flight before the hold waits with the rest"
        );
        assert_eq!(
            state.held.map(|held| held.reason),
            Some(HoldReason::Unauthorized)
        );
        settle(&mut state, Some(200), false, 0, POLICY, start);
        assert_eq!(state.held, None, "a success shows the credential works");
        let off = HoldPolicy {
            pause_on_unauthorized: Duration::ZERO,
            disable_on_gone: false,
        };
        assert_eq!(
            settle(&mut state, Some(401), false, 0, off, start),
            decide()
        );
        assert_eq!(
            settle(&mut state, Some(410), false, 0, off, start),
            decide()
        );
        assert_eq!(call(&mut state, start), (false, 0));
    }
}
