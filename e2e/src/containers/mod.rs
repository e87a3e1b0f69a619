//! The project's images run as containers, with podman on the host network
//! (`deploy/podman/podman.sh`, which carries the settings these machines need).
//!
//! [`ContainerSpec::from_compose`] turns a Compose service into a `podman run`: the same image,
//! environment, command, health check, user, read-only root, tmpfs, capabilities and init as
//! Compose gives it, with its addresses moved by a [`crate::compose::Placement`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::service::repository_root;

mod spec;
pub use spec::{ContainerSpec, health_shell_command};

/// podman, through the project's wrapper.
#[derive(Debug, Clone)]
pub struct Podman {
    wrapper: PathBuf,
}

/// What an image says about itself (its Dockerfile's ENV and EXPOSE).
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    pub environment: Vec<(String, String)>,
    pub exposed_ports: Vec<u16>,
    pub user: String,
}

#[derive(Deserialize)]
struct InspectedImage {
    #[serde(rename = "Config")]
    config: InspectedConfig,
}

#[derive(Deserialize)]
struct InspectedConfig {
    #[serde(rename = "Env", default)]
    env: Vec<String>,
    #[serde(rename = "ExposedPorts", default)]
    exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "User", default)]
    user: String,
}

impl Podman {
    /// podman as the project runs it, or a panic that says how to get it.
    pub fn connect() -> Self {
        let podman = Self {
            wrapper: repository_root().join("deploy/podman/podman.sh"),
        };
        let output = podman.output(&["version", "--format", "{{.Client.Version}}"]);
        assert!(
            output.status.success(),
            "podman does not run here ({}): see deploy/podman/lib.sh",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        podman
    }

    fn output(&self, args: &[&str]) -> Output {
        Command::new(&self.wrapper)
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", self.wrapper.display()))
    }

    /// Runs podman and returns its standard output, or panics with its error.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "podman {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The image's configuration; panics if it has not been built.
    pub fn image(&self, image: &str) -> ImageConfig {
        let output = self.output(&["image", "inspect", image]);
        assert!(
            output.status.success(),
            "image {image} is missing: build the project's images first (`make images`)"
        );
        let inspected: Vec<InspectedImage> = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|error| panic!("podman image inspect {image}: {error}"));
        let config = &inspected
            .first()
            .unwrap_or_else(|| panic!("podman image inspect {image} returned nothing"))
            .config;
        ImageConfig {
            environment: config
                .env
                .iter()
                .filter_map(|entry| entry.split_once('='))
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            exposed_ports: config
                .exposed_ports
                .keys()
                .filter_map(|port| port.split('/').next()?.parse().ok())
                .collect(),
            user: config.user.clone(),
        }
    }

    /// Starts a container (detached); it is removed when the handle is dropped.
    pub fn start(&self, spec: &ContainerSpec) -> Container {
        // A container of that name left by an interrupted run would refuse the new one.
        let _ = self.output(&["rm", "--force", "--time", "0", &spec.name]);
        let args = spec.run_arguments();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run_ok(&args);
        Container {
            name: spec.name.clone(),
            podman: self.clone(),
        }
    }
}

/// A running (or exited) container; removed on drop.
#[derive(Debug)]
pub struct Container {
    pub name: String,
    podman: Podman,
}

impl Container {
    /// Runs the container's health check until it passes, or panics with its log.
    pub fn wait_healthy(&self, within: Duration) {
        let started = Instant::now();
        loop {
            let output = self.podman.output(&["healthcheck", "run", &self.name]);
            if output.status.success() {
                return;
            }
            if !self.is_running() || started.elapsed() > within {
                panic!(
                    "container {} not healthy within {within:?} ({}); its log ends:\n{}",
                    self.name,
                    if self.is_running() {
                        "still running"
                    } else {
                        "it exited"
                    },
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    pub fn is_running(&self) -> bool {
        self.podman
            .output(&["inspect", "--format", "{{.State.Running}}", &self.name])
            .stdout
            .starts_with(b"true")
    }

    /// Waits until the container exits and returns its exit code, or panics.
    pub fn wait_exit(&self, within: Duration) -> i32 {
        let started = Instant::now();
        while self.is_running() {
            assert!(
                started.elapsed() < within,
                "container {} still running after {within:?}; its log ends:\n{}",
                self.name,
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        self.podman
            .run_ok(&["inspect", "--format", "{{.State.ExitCode}}", &self.name])
            .trim()
            .parse()
            .expect("an exit code")
    }

    /// Runs a command inside the container: (success, stdout + stderr).
    pub fn exec(&self, command: &[&str]) -> (bool, String) {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend_from_slice(command);
        let output = self.podman.output(&args);
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    }

    pub fn log(&self) -> String {
        let output = self.podman.output(&["logs", &self.name]);
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        text
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Keeps the container's log beside the test's other artefacts.
    pub fn save_log(&self, dir: &Path) {
        let _ = std::fs::write(dir.join(format!("{}.log", self.name)), self.log());
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self
            .podman
            .output(&["rm", "--force", "--time", "10", &self.name]);
    }
}
