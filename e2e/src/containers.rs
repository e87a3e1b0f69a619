//! The project's images run as containers, with podman on the host network
//! (`deploy/podman/podman.sh`, which carries the settings these machines need).
//!
//! [`ContainerSpec::from_compose`] turns a Compose service into a `podman run`: the same image,
//! environment, command, health check, user, read-only root, tmpfs, capabilities and init as
//! Compose gives it, with its addresses moved by a [`Placement`] (see [`crate::compose`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::compose::{ComposeService, Placement, unescape_dollars};
use crate::service::repository_root;

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

/// How to run one container.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub environment: Vec<(String, String)>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Vec<String>,
    pub health_command: Option<Vec<String>>,
    pub volumes: Vec<String>,
    pub read_only: bool,
    pub tmpfs: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub init: bool,
    pub user: Option<String>,
    /// Compose gives each container a hostname of its own (a worker's id defaults to it); on
    /// the host network podman would give every container the host's.
    pub hostname: Option<String>,
}

impl ContainerSpec {
    /// The container Compose would run for `service`, as instance `instance` (its key in the
    /// placement: the service's name, or a replica's), with its addresses moved and its named
    /// volumes at `volume_dirs`.
    pub fn from_compose(
        instance: &str,
        service: &ComposeService,
        image: &ImageConfig,
        placement: &Placement,
        volume_dirs: &BTreeMap<String, PathBuf>,
    ) -> Self {
        let rewrite = |value: &str| placement.rewrite(instance, &unescape_dollars(value));
        let mut environment = Vec::new();
        // The image's own settings that name a listening address or port: moved like the rest.
        for (name, value) in &image.environment {
            let moved = match value.parse::<u16>() {
                Ok(port) if image.exposed_ports.contains(&port) => placement
                    .rewrite(instance, &format!("0.0.0.0:{port}"))
                    .rsplit(':')
                    .next()
                    .unwrap_or(value)
                    .to_owned(),
                _ => placement.rewrite(instance, value),
            };
            if &moved != value {
                environment.push((name.clone(), moved));
            }
        }
        for (name, value) in &service.environment {
            environment.push((name.clone(), rewrite(value)));
        }
        let volumes = service
            .volumes
            .iter()
            .map(|volume| {
                let (source, target) = volume.split_once(':').unwrap_or((volume, volume));
                if source.starts_with('/') {
                    volume.clone()
                } else {
                    let dir = volume_dirs.get(source).unwrap_or_else(|| {
                        panic!("no directory given for the named volume {source:?}")
                    });
                    format!("{}:{target}", dir.display())
                }
            })
            .collect();
        Self {
            name: format!("relais-test-{instance}"),
            image: service.image.clone().unwrap_or_default(),
            environment,
            entrypoint: service
                .entrypoint
                .as_ref()
                .map(|words| words.iter().map(|word| rewrite(word)).collect()),
            command: service
                .command
                .iter()
                .flatten()
                .map(|word| rewrite(word))
                .collect(),
            health_command: service
                .health_command()
                .map(|words| words.iter().map(|word| rewrite(word)).collect()),
            volumes,
            read_only: service.read_only,
            tmpfs: service.tmpfs.clone(),
            cap_drop: service.cap_drop.clone(),
            security_opt: service.security_opt.clone(),
            init: service.init,
            user: service.user.clone(),
            hostname: Some(instance.to_owned()),
        }
    }

    /// `podman run` for this container, on the host network.
    pub fn run_arguments(&self) -> Vec<String> {
        let mut args: Vec<String> = ["run", "--detach", "--network", "host", "--name"]
            .map(String::from)
            .into();
        args.push(self.name.clone());
        let mut flag = |name: &str, value: String| {
            args.push(name.to_owned());
            args.push(value);
        };
        for (name, value) in &self.environment {
            flag("--env", format!("{name}={value}"));
        }
        for volume in &self.volumes {
            flag("--volume", volume.clone());
        }
        for path in &self.tmpfs {
            flag("--tmpfs", path.clone());
        }
        for capability in &self.cap_drop {
            flag("--cap-drop", capability.clone());
        }
        for option in &self.security_opt {
            // Compose writes `no-new-privileges:true`; podman takes `no-new-privileges`.
            flag(
                "--security-opt",
                option.trim_end_matches(":true").to_owned(),
            );
        }
        if let Some(user) = &self.user {
            flag("--user", user.clone());
        }
        if let Some(hostname) = &self.hostname {
            flag("--hostname", hostname.clone());
        }
        if let Some(entrypoint) = &self.entrypoint {
            flag("--entrypoint", json(entrypoint));
        }
        if let Some(health) = &self.health_command {
            flag("--health-cmd", health_shell_command(health));
            // Checked by the test (`podman healthcheck run`), not by systemd timers.
            flag("--health-interval", "disable".into());
        }
        if self.read_only {
            args.push("--read-only".into());
        }
        if self.init {
            args.push("--init".into());
        }
        args.push(self.image.clone());
        args.extend(self.command.iter().cloned());
        args
    }
}

fn json(words: &[String]) -> String {
    serde_json::to_string(words).expect("strings serialise")
}

/// Compose's health check test as the one shell command podman 4 takes reliably (it reads a
/// JSON array as a single word): `CMD` words quoted, a `CMD-SHELL` script as it is.
pub fn health_shell_command(test: &[String]) -> String {
    match test.split_first() {
        Some((kind, script)) if kind == "CMD-SHELL" => script.join(" "),
        Some((kind, words)) if kind == "CMD" => words
            .iter()
            .map(|word| shell_quote(word))
            .collect::<Vec<_>>()
            .join(" "),
        _ => test
            .iter()
            .map(|word| shell_quote(word))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::ComposeFile;

    #[test]
    fn a_compose_service_becomes_a_podman_run_with_its_addresses_moved() {
        let file = ComposeFile::parse(
            r#"
services:
  audit-service:
    image: relais/audit-service:dev
    init: true
    read_only: true
    tmpfs: [/tmp]
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    environment:
      RELAIS_KAFKA_BOOTSTRAP: kafka:19092
      RELAIS_S3_ENDPOINT: http://ceph:7480
    ports: ["127.0.0.1:9102:9102/tcp"]
    healthcheck:
      test: ["CMD", "curl", "-fsS", "http://127.0.0.1:9102/readyz"]
  init-bucket:
    image: relais/ceph-rgw:dev
    entrypoint: ["/bin/bash", "-c"]
    command: ["curl -X PUT http://ceph:7480/$${BUCKET}"]
"#,
        );
        let mut placement = Placement::default();
        placement.place("audit-service", 9102, "127.0.0.1:41001".parse().unwrap());
        placement.place("ceph", 7480, "127.0.0.1:41000".parse().unwrap());
        placement.outside("kafka:19092", "127.0.0.1:9092");
        let image = ImageConfig {
            environment: vec![
                ("PATH".into(), "/usr/bin".into()),
                ("RELAIS_ADMIN_ADDR".into(), "0.0.0.0:9102".into()),
            ],
            exposed_ports: vec![9102],
            user: "10001:10001".into(),
        };
        let spec = ContainerSpec::from_compose(
            "audit-service",
            file.service("audit-service"),
            &image,
            &placement,
            &BTreeMap::new(),
        );
        let args = spec.run_arguments().join(" ");
        for expected in [
            "--network host",
            "--env RELAIS_ADMIN_ADDR=127.0.0.1:41001",
            "--env RELAIS_KAFKA_BOOTSTRAP=127.0.0.1:9092",
            "--env RELAIS_S3_ENDPOINT=http://127.0.0.1:41000",
            "--read-only",
            "--tmpfs /tmp",
            "--cap-drop ALL",
            "--security-opt no-new-privileges",
            "--init",
            "--health-cmd curl -fsS http://127.0.0.1:41001/readyz",
        ] {
            assert!(args.contains(expected), "{expected:?} missing from {args}");
        }
        assert!(
            !args.contains("PATH="),
            "unchanged image settings stay as they are"
        );
        assert!(args.ends_with("relais/audit-service:dev"), "{args}");

        let bucket = ContainerSpec::from_compose(
            "init-bucket",
            file.service("init-bucket"),
            &ImageConfig::default(),
            &placement,
            &BTreeMap::new(),
        );
        assert_eq!(
            bucket.command,
            vec!["curl -X PUT http://127.0.0.1:41000/${BUCKET}"]
        );
        assert_eq!(
            bucket.entrypoint,
            Some(vec!["/bin/bash".to_owned(), "-c".to_owned()])
        );
    }

    #[test]
    fn health_checks_become_shell_commands_with_their_words_intact() {
        let words = |list: &[&str]| list.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            health_shell_command(&words(&[
                "CMD",
                "curl",
                "-fsS",
                "http://127.0.0.1:1/x?a=b c"
            ])),
            "curl -fsS 'http://127.0.0.1:1/x?a=b c'"
        );
        assert_eq!(
            health_shell_command(&words(&["CMD-SHELL", "test -f /x || exit 1"])),
            "test -f /x || exit 1"
        );
        assert_eq!(health_shell_command(&words(&["CMD", "it's"])), r"'it'\''s'");
    }

    #[test]
    fn a_bare_exposed_port_in_the_image_settings_moves_too() {
        let mut placement = Placement::default();
        placement.place("ceph", 7480, "127.0.0.1:41000".parse().unwrap());
        let image = ImageConfig {
            environment: vec![
                ("RELAIS_RGW_PORT".into(), "7480".into()),
                ("RELAIS_RGW_LISTEN".into(), "0.0.0.0".into()),
                ("RELAIS_BIND_HOST".into(), "127.0.0.1".into()),
            ],
            exposed_ports: vec![7480],
            user: String::new(),
        };
        let spec = ContainerSpec::from_compose(
            "ceph",
            &ComposeService {
                image: Some("relais/ceph-rgw:dev".into()),
                ..ComposeService::default()
            },
            &image,
            &placement,
            &BTreeMap::new(),
        );
        assert_eq!(
            spec.environment,
            vec![
                ("RELAIS_RGW_PORT".to_owned(), "41000".to_owned()),
                ("RELAIS_RGW_LISTEN".to_owned(), "127.0.0.1".to_owned()),
            ]
        );
    }
}
