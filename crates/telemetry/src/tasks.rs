//! The tasks a service cannot work without: each must run until shutdown. When one ends
//! before that (it panicked, or returned when it should not have), the service is no longer
//! doing its job: its readiness turns false, everything is asked to stop, and the process exits
//! non-zero so that its supervisor restarts it, instead of a half-dead process reporting ready.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::admin::ReadinessCheck;

/// A task that ended before shutdown, and how.
#[derive(Debug, thiserror::Error)]
#[error("task {name} stopped before shutdown: {how}")]
pub struct TaskDied {
    pub name: &'static str,
    pub how: String,
}

impl TaskDied {
    /// How the task `name`, which should have run until shutdown, ended.
    pub fn of(name: &'static str, ended: Result<(), JoinError>) -> Self {
        Self {
            name,
            how: match ended {
                Ok(()) => "it returned".to_owned(),
                Err(error) => describe(error),
            },
        }
    }
}

/// The essential tasks of a service, by name.
#[derive(Debug, Default)]
pub struct EssentialTasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl EssentialTasks {
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(essential(name, task));
        self.names.insert(handle.id(), name);
    }

    /// Waits until `shutdown` fires or a task ends. A task that ended first turns `ready`
    /// false with the reason, cancels `shutdown` and is returned as the error.
    pub async fn watch(
        &mut self,
        shutdown: &CancellationToken,
        ready: &ReadinessCheck,
    ) -> Result<(), TaskDied> {
        let ended = tokio::select! {
            // Stopping on request: the tasks end as they drain.
            _ = shutdown.cancelled() => return Ok(()),
            Some(ended) = self.set.join_next_with_id() => ended,
        };
        // Shutdown may have fired while the task ended; that is a stop, not a death.
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let id = match &ended {
            Ok((id, ())) => *id,
            Err(error) => error.id(),
        };
        let name = self.names.get(&id).copied().unwrap_or("unnamed");
        let died = TaskDied::of(name, ended.map(|_| ()));
        tracing::error!(task = died.name, how = %died.how, "an essential task stopped; the service stops");
        ready.set_not_ready(died.to_string());
        shutdown.cancel();
        Err(died)
    }

    /// Waits for the remaining tasks to end (they end on shutdown), at most `timeout`; those
    /// still running then are aborted.
    pub async fn join(mut self, timeout: std::time::Duration) {
        let all = async { while self.set.join_next().await.is_some() {} };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!(
                still_running = self.set.len(),
                "tasks did not stop in time; aborted"
            );
            self.set.abort_all();
        }
    }
}

/// Debug builds only: names an essential task that is to panic a while after it starts,
/// `<task>` or `<task>@<milliseconds>`, so that tests can show, on the real binaries, what a
/// service does when one of its tasks dies. Release builds never read it.
pub const KILL_TASK_ENV: &str = "RELAIS_DEBUG_KILL_TASK";

const DEFAULT_KILL_AFTER: Duration = Duration::from_secs(2);

/// Runs the essential task `name`: the task itself, unless a debug build was asked to kill it
/// (see [`KILL_TASK_ENV`]). Tasks a service supervises on its own go through this too.
pub async fn essential(name: &'static str, task: impl Future<Output = ()>) {
    dying_after(injected_death(name), name, task).await;
}

/// `task`, cut short by a panic after `after` when there is one.
async fn dying_after(after: Option<Duration>, name: &str, task: impl Future<Output = ()>) {
    match after {
        Some(after) => tokio::select! {
            () = task => {}
            () = tokio::time::sleep(after) => panic!("{KILL_TASK_ENV} killed task {name}"),
        },
        None => task.await,
    }
}

#[cfg(debug_assertions)]
fn injected_death(name: &str) -> Option<Duration> {
    kill_after(&std::env::var(KILL_TASK_ENV).ok()?, name)
}

#[cfg(not(debug_assertions))]
fn injected_death(_name: &str) -> Option<Duration> {
    None
}

/// When `spec` (see [`KILL_TASK_ENV`]) asks the task `name` to die; `None` when it names
/// another task or cannot be read.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
fn kill_after(spec: &str, name: &str) -> Option<Duration> {
    let (task, after) = match spec.trim().split_once('@') {
        Some((task, millis)) => (task, Duration::from_millis(millis.parse().ok()?)),
        None => (spec.trim(), DEFAULT_KILL_AFTER),
    };
    (task == name).then_some(after)
}

/// Sleeps until `at`, or forever when there is nothing to wait for: a `select!` branch for the
/// earliest of a loop's deadlines, which may have none at the moment.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn describe(error: JoinError) -> String {
    match error {
        error if error.is_panic() => {
            let panic = error.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text payload".to_owned());
            format!("it panicked: {message}")
        }
        _ => "it was cancelled".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::admin::Readiness;

    #[tokio::test]
    async fn a_task_that_panics_turns_readiness_false_and_stops_the_service() {
        let readiness = Readiness::default();
        let ready = readiness.register("tasks");
        ready.set_ready();
        let shutdown = CancellationToken::new();
        let mut tasks = EssentialTasks::default();
        let token = shutdown.clone();
        tasks.spawn("healthy", async move { token.cancelled().await });
        tasks.spawn("pipeline", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("state corrupted");
        });
        let died = tasks
            .watch(&shutdown, &ready)
            .await
            .expect_err("the pipeline task died");
        assert_eq!(died.name, "pipeline");
        assert!(died.how.contains("state corrupted"), "{}", died.how);
        assert!(!readiness.is_ready());
        assert!(shutdown.is_cancelled(), "the other tasks are asked to stop");
        tasks.join(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_task_that_returns_early_counts_as_dead() {
        let ready = Readiness::default().register("tasks");
        let shutdown = CancellationToken::new();
        let mut tasks = EssentialTasks::default();
        tasks.spawn("index", async {});
        let died = tasks.watch(&shutdown, &ready).await.expect_err("returned");
        assert_eq!(died.how, "it returned");
    }

    #[test]
    fn a_kill_names_one_task_and_when() {
        assert_eq!(kill_after("index", "index"), Some(DEFAULT_KILL_AFTER));
        assert_eq!(
            kill_after("dispatcher@1500", "dispatcher"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(kill_after("dispatcher@1500", "index"), None);
        assert_eq!(kill_after("dispatcher@soon", "dispatcher"), None);
        assert_eq!(kill_after("", "index"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_injected_death_is_a_panic_after_the_delay() {
        let forever = std::future::pending::<()>;
        let after = kill_after("grpc@50", "grpc");
        let ended = tokio::spawn(dying_after(after, "grpc", forever())).await;
        let died = TaskDied::of("grpc", ended);
        assert!(died.how.contains("killed task grpc"), "{}", died.how);

        let finished = tokio::spawn(dying_after(after, "grpc", async {})).await;
        assert!(finished.is_ok(), "a task that ends first is not killed");
        let untouched = tokio::spawn(dying_after(
            None,
            "grpc",
            tokio::time::sleep(Duration::from_secs(3600)),
        ));
        assert!(
            untouched.await.is_ok(),
            "no kill asked, the task runs to its end"
        );
    }

    #[tokio::test]
    async fn shutdown_is_not_a_death() {
        let readiness = Readiness::default();
        let ready = readiness.register("tasks");
        ready.set_ready();
        let shutdown = CancellationToken::new();
        let mut tasks = EssentialTasks::default();
        let token = shutdown.clone();
        tasks.spawn("pipeline", async move { token.cancelled().await });
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stopper.cancel();
        });
        assert!(tasks.watch(&shutdown, &ready).await.is_ok());
        assert!(readiness.is_ready());
        tasks.join(Duration::from_secs(1)).await;
    }
}
