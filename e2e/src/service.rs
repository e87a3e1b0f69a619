//! The service processes of a stack: where the binaries are, how one is started, stopped,
//! killed and frozen, and what it reports (metrics, memory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relais_test_support::{PrometheusTestEnv, ScrapeTarget, free_port};

/// The repository root.
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ sits in the repository")
        .to_path_buf()
}

/// A workspace binary from the debug build (`cargo test --workspace --all-targets` builds
/// them all).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repository_root().join("target"), PathBuf::from);
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the services first with `cargo build --workspace --bins` \
         (make test does)",
        path.display()
    );
    path
}

/// One service process.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub admin: SocketAddr,
    command: Vec<(String, String)>,
    binary: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    _target: Option<ScrapeTarget>,
}

impl Service {
    pub(crate) fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("service log file");
        let child = Command::new(&self.binary)
            .envs(self.command.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.binary.display()));
        self.child = Some(child);
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let url = format!("http://{}/readyz", self.admin);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {within:?}; log: {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no drain, no commit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `within`).
    pub fn stop(&mut self, within: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts the process again after [`kill`](Self::kill) or [`stop`](Self::stop).
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    }

    /// The sum of a metric's samples (all label sets), 0 when absent or unreachable.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        self.read_metric_sum(name).await.unwrap_or(0.0)
    }

    /// Like [`Service::metric_sum`], but None when the service does not answer (stopped,
    /// restarting), so that a missing figure is never taken for zero.
    pub async fn read_metric_sum(&self, name: &str) -> Option<f64> {
        let response = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .and_then(reqwest::Response::error_for_status)
            .ok()?;
        let text = response.text().await.ok()?;
        Some(
            text.lines()
                .filter(|line| {
                    line.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                })
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// The service's metric families, from its own `/metrics`.
    pub async fn metric_families(&self) -> Vec<String> {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("metrics of a running service")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .map(str::to_owned)
            .collect()
    }

    /// The service's exposition text (`/metrics`).
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("metrics of a running service")
            .text()
            .await
            .unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What every service process of a stack shares: environment, log folder, Prometheus.
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    pub(crate) common: Vec<(String, String)>,
    pub(crate) dir: PathBuf,
    pub(crate) prometheus: Option<PrometheusTestEnv>,
}

impl Launcher {
    pub(crate) fn service(
        &self,
        name: &str,
        binary_name: &str,
        admin: SocketAddr,
        extra: Vec<(&str, String)>,
    ) -> Service {
        let mut command = self.common.clone();
        command.push(("RELAIS_ADMIN_ADDR".into(), admin.to_string()));
        command.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
        Service {
            name: name.to_owned(),
            admin,
            command,
            binary: binary(binary_name),
            log: self.dir.join(format!("{name}.log")),
            child: None,
            _target: self
                .prometheus
                .as_ref()
                .map(|p| p.register_target(binary_name, admin)),
        }
    }
}

pub(crate) fn worker_service(launcher: &Launcher, config: &Path, index: usize) -> Service {
    launcher.service(
        &format!("ingest-worker-{index}"),
        "ingest-worker",
        free_port(),
        vec![
            ("RELAIS_WORKER_CONFIG", config.display().to_string()),
            ("RELAIS_WORKER_ID", format!("e2e-worker-{index}")),
        ],
    )
}
