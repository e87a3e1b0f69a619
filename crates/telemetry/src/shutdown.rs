//! Shutdown plumbing: one cancellation token for the whole process, cancelled by SIGTERM or
//! SIGINT, and a bounded drain of every task that was spawned through a [`TaskTracker`].
//!
//! The pattern in every service's `main`:
//! 1. create a [`CancellationToken`] and call [`cancel_on_signal`];
//! 2. spawn long-running work on a [`TaskTracker`], each task watching the token;
//! 3. when the token fires, each task stops taking new work, finishes (or abandons) what it
//!    holds and commits only what it fully handled;
//! 4. `main` calls [`drain`] with a deadline; tasks still running after it are reported and the
//!    process exits anyway, so a stuck dependency can never hold a shutdown forever.

use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutdown requested");
        token.cancel();
    });
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can still be stopped by SIGKILL; waiting forever
        // here only means graceful shutdown is unavailable, which is logged.
        tracing::error!("cannot install signal handlers; graceful shutdown disabled");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every tracked task finished in time.
    Completed,
    /// The deadline passed with this many tasks still running.
    TimedOut { still_running: usize },
}

/// Closes `tracker` and waits up to `deadline` for its tasks to finish.
pub async fn drain(tracker: &TaskTracker, deadline: Duration) -> DrainOutcome {
    tracker.close();
    match tokio::time::timeout(deadline, tracker.wait()).await {
        Ok(()) => DrainOutcome::Completed,
        Err(_) => {
            let still_running = tracker.len();
            tracing::warn!(
                still_running,
                deadline_ms = deadline.as_millis() as u64,
                "drain deadline passed; exiting with tasks still running"
            );
            DrainOutcome::TimedOut { still_running }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_that_honour_the_token() {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let child = token.child_token();
        tracker.spawn(async move {
            child.cancelled().await;
            // Finishing in-flight work takes a while, but less than the deadline.
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        token.cancel();
        assert_eq!(
            drain(&tracker, Duration::from_secs(5)).await,
            DrainOutcome::Completed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_at_the_deadline() {
        let tracker = TaskTracker::new();
        tracker.spawn(std::future::pending::<()>());
        let started = tokio::time::Instant::now();
        let outcome = drain(&tracker, Duration::from_secs(3)).await;
        assert_eq!(outcome, DrainOutcome::TimedOut { still_running: 1 });
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
