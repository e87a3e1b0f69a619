//! Readiness that follows the pipeline: not ready while objects cannot be stored or offsets
//! cannot be committed, ready again once they can. An orchestrator then stops sending queries
//! to an instance that is not making progress, and an operator sees why on `/readyz`.

use std::time::Duration;

use relais_telemetry::admin::ReadinessCheck;

/// Commits failed in a row before the service says it cannot commit: one failure is routine
/// (a coordinator moving), three in a row (seconds of backoff) are not.
pub const COMMIT_FAILURES_NOT_READY: u32 = 3;

/// Why storing makes the service not ready, if it does: every PUT has failed for at least
/// `threshold` (`storage.put_timeout`: longer than any one attempt may take).
pub fn store_problem(failing: Option<(Duration, String)>, threshold: Duration) -> Option<String> {
    let (for_how_long, error) = failing?;
    (for_how_long >= threshold).then(|| {
        format!(
            "no object stored for {} s; last error: {error}",
            for_how_long.as_secs()
        )
    })
}

/// Why committing makes the service not ready, if it does.
pub fn commit_problem(failures_in_a_row: u32) -> Option<String> {
    (failures_in_a_row >= COMMIT_FAILURES_NOT_READY)
        .then(|| format!("{failures_in_a_row} offset commits failed in a row"))
}

/// One readiness check, set only when its verdict changes.
#[derive(Debug)]
pub struct Verdict {
    check: ReadinessCheck,
    problem: Option<String>,
}

impl Verdict {
    /// Starts ready: the check was made ready by what set the service up.
    pub fn new(check: ReadinessCheck) -> Self {
        Self {
            check,
            problem: None,
        }
    }

    pub fn update(&mut self, problem: Option<String>) {
        if problem == self.problem {
            return;
        }
        match &problem {
            Some(reason) => {
                tracing::warn!(%reason, "not ready");
                self.check.set_not_ready(reason.clone());
            }
            None => {
                tracing::info!("ready again");
                self.check.set_ready();
            }
        }
        self.problem = problem;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storing_is_a_problem_only_after_the_threshold() {
        let threshold = Duration::from_secs(30);
        assert_eq!(store_problem(None, threshold), None);
        assert_eq!(
            store_problem(Some((Duration::from_secs(29), "refused".into())), threshold),
            None
        );
        let problem = store_problem(Some((Duration::from_secs(31), "refused".into())), threshold)
            .unwrap_or_default();
        assert!(
            problem.contains("31 s") && problem.contains("refused"),
            "{problem}"
        );
    }

    #[test]
    fn committing_is_a_problem_from_three_failures_in_a_row() {
        assert_eq!(commit_problem(0), None);
        assert_eq!(commit_problem(2), None);
        assert!(commit_problem(3).is_some());
    }

    #[test]
    fn a_verdict_follows_the_problem_both_ways() {
        let readiness = relais_telemetry::admin::Readiness::default();
        let check = readiness.register("rgw");
        check.set_ready();
        let mut verdict = Verdict::new(check);
        verdict.update(Some("down".into()));
        assert!(!readiness.is_ready());
        verdict.update(Some("down".into()));
        assert!(!readiness.is_ready());
        verdict.update(None);
        assert!(readiness.is_ready());
    }
}
