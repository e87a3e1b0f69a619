//! The Compose file as Compose itself renders it, and where its containers go on this machine.
//!
//! The container test runs each service of `compose/compose.yaml` with the settings Compose
//! would give it (image, environment, command, health check, read-only root, dropped
//! capabilities, init), read from `docker-compose config`, so that the file under test is the
//! one users run. Two things differ, both because every container here shares the host's
//! network (all traffic stays on loopback): a container cannot have the port the Compose file
//! names (the native stack, or a developer's `make dev`, may hold it), so each port a service
//! listens on moves to a free one, and every `service:port` that names another container is
//! rewritten to the loopback address where that container now listens. [`Placement`] holds
//! that mapping; [`Placement::rewrite`] applies it to a value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;

/// The rendered file: every service with its anchors merged and variables substituted.
#[derive(Debug, Deserialize)]
pub struct ComposeFile {
    pub services: BTreeMap<String, ComposeService>,
}

/// The settings of one service that decide how its container runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ComposeService {
    pub image: Option<String>,
    #[serde(deserialize_with = "environment")]
    pub environment: BTreeMap<String, String>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub healthcheck: Option<Healthcheck>,
    pub ports: Vec<String>,
    pub volumes: Vec<String>,
    pub read_only: bool,
    pub tmpfs: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub init: bool,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Healthcheck {
    /// `["CMD", program, args...]` or `["CMD-SHELL", script]`.
    pub test: Vec<String>,
    pub retries: Option<u32>,
}

/// Environment values as strings, whatever YAML type Compose rendered them with.
fn environment<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let values: BTreeMap<String, serde_yaml::Value> = Deserialize::deserialize(deserializer)?;
    Ok(values
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                serde_yaml::Value::String(text) => text,
                serde_yaml::Value::Null => String::new(),
                other => serde_yaml::to_string(&other)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            };
            (name, text)
        })
        .collect())
}

impl ComposeFile {
    /// The file as `docker-compose config` renders it (see [`render_text`]).
    pub fn render(repository_root: &Path) -> Self {
        Self::parse(&render_text(repository_root, &[COMPOSE_FILE]))
    }

    /// `compose/compose.yaml` with the overrides in `files` (`compose/secure.yaml`), rendered.
    pub fn render_with(repository_root: &Path, overrides: &[&str]) -> Self {
        let mut files = vec![COMPOSE_FILE];
        files.extend_from_slice(overrides);
        Self::parse(&render_text(repository_root, &files))
    }

    pub fn parse(rendered: &str) -> Self {
        serde_yaml::from_str(rendered)
            .unwrap_or_else(|error| panic!("the rendered Compose file does not parse: {error}"))
    }

    pub fn service(&self, name: &str) -> &ComposeService {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("compose/compose.yaml has no service {name:?}"))
    }
}

/// The Compose file of the stack, from the repository root.
pub const COMPOSE_FILE: &str = "compose/compose.yaml";

/// Runs `docker-compose config` on `files` (the Compose file first, then overrides; with
/// `compose/.env`): Compose's own validation, anchors merged and variables substituted.
pub fn render_text(repository_root: &Path, files: &[&str]) -> String {
    let mut command = Command::new("docker-compose");
    command.args(["--project-directory", "compose"]);
    for file in files {
        command.args(["-f", file]);
    }
    let output = command
        .arg("config")
        .current_dir(repository_root)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "docker-compose is required: install it with deploy/native/test-tools.sh ({error})"
            )
        });
    assert!(
        output.status.success(),
        "docker-compose config failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl ComposeService {
    /// The ports the container listens on: those it publishes (`host:port:container/proto`).
    pub fn published_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .filter_map(|mapping| {
                let without_protocol = mapping.split('/').next()?;
                without_protocol.rsplit(':').next()?.parse().ok()
            })
            .collect()
    }

    /// The health check's command, for `podman run --health-cmd` (a JSON array).
    pub fn health_command(&self) -> Option<&[String]> {
        self.healthcheck
            .as_ref()
            .map(|check| check.test.as_slice())
            .filter(|test| !test.is_empty() && test[0] != "NONE")
    }
}

/// Compose escapes a literal `$` as `$$`; the rendered file keeps the escape.
pub fn unescape_dollars(value: &str) -> String {
    value.replace("$$", "$")
}

/// Where each service's ports are on this machine's loopback.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// (service, port in the Compose file or image) → where it listens here.
    ports: BTreeMap<(String, u16), SocketAddr>,
    /// `host:port` of something outside the Compose stack under test (the native Kafka) →
    /// its address here.
    outside: BTreeMap<String, String>,
}

impl Placement {
    /// `service` listens on `port` (as the Compose file says) at `address` here.
    pub fn place(&mut self, service: &str, port: u16, address: SocketAddr) {
        self.ports.insert((service.to_owned(), port), address);
    }

    /// Compose's `host:port` (a service not run as a container) is `address` here.
    pub fn outside(&mut self, compose_address: &str, address: &str) {
        self.outside
            .insert(compose_address.to_owned(), address.to_owned());
    }

    pub fn address(&self, service: &str, port: u16) -> SocketAddr {
        *self
            .ports
            .get(&(service.to_owned(), port))
            .unwrap_or_else(|| panic!("no place for {service}:{port}"))
    }

    /// `value` as seen from `service`'s container on the host network: its own listening
    /// addresses (`0.0.0.0:port`, `127.0.0.1:port`, `localhost:port`) move to its ports here,
    /// other services' `name:port` to theirs, outside addresses to theirs, and a bare
    /// `0.0.0.0` (listen everywhere) becomes loopback. Anything else is left as it is.
    pub fn rewrite(&self, service: &str, value: &str) -> String {
        if value == "0.0.0.0" {
            return "127.0.0.1".into();
        }
        let mut rewritten = String::with_capacity(value.len());
        let mut rest = value;
        while let Some((start, end, replacement)) = self.next_address(service, rest) {
            rewritten.push_str(&rest[..start]);
            rewritten.push_str(&replacement);
            rest = &rest[end..];
        }
        rewritten.push_str(rest);
        rewritten
    }

    /// The first `host:port` in `text` that this placement knows: (start, end, replacement).
    fn next_address(&self, service: &str, text: &str) -> Option<(usize, usize, String)> {
        let bytes = text.as_bytes();
        let is_host = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_';
        let mut search_from = 0;
        while let Some(found) = text[search_from..].find(':') {
            let colon = search_from + found;
            search_from = colon + 1;
            let host_start = text[..colon]
                .bytes()
                .rposition(|b| !is_host(b))
                .map_or(0, |position| position + 1);
            let port_end = text[colon + 1..]
                .bytes()
                .position(|b| !b.is_ascii_digit())
                .map_or(text.len(), |position| colon + 1 + position);
            if host_start == colon || port_end == colon + 1 || bytes.get(port_end) == Some(&b'.') {
                continue;
            }
            let host = &text[host_start..colon];
            let Ok(port) = text[colon + 1..port_end].parse::<u16>() else {
                continue;
            };
            if let Some(replacement) = self.resolve(service, host, port) {
                return Some((host_start, port_end, replacement));
            }
        }
        None
    }

    fn resolve(&self, service: &str, host: &str, port: u16) -> Option<String> {
        if let Some(address) = self.outside.get(&format!("{host}:{port}")) {
            return Some(address.clone());
        }
        let owner = match host {
            "0.0.0.0" | "127.0.0.1" | "localhost" => service,
            other => other,
        };
        self.ports
            .get(&(owner.to_owned(), port))
            .map(SocketAddr::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement() -> Placement {
        let mut placement = Placement::default();
        placement.place("ceph", 7480, "127.0.0.1:41000".parse().unwrap());
        placement.place("audit-service", 9102, "127.0.0.1:41001".parse().unwrap());
        placement.place("audit-service", 50051, "127.0.0.1:41002".parse().unwrap());
        placement.outside("kafka:19092", "127.0.0.1:9092");
        placement
    }

    #[test]
    fn other_services_and_outside_addresses_move_to_their_places() {
        let placement = placement();
        assert_eq!(
            placement.rewrite("realtime-gateway", "http://audit-service:50051"),
            "http://127.0.0.1:41002"
        );
        assert_eq!(
            placement.rewrite("audit-service", "kafka:19092"),
            "127.0.0.1:9092"
        );
        assert_eq!(
            placement.rewrite("init-bucket", "PUT \"http://ceph:7480/$BUCKET\" -o x"),
            "PUT \"http://127.0.0.1:41000/$BUCKET\" -o x"
        );
    }

    #[test]
    fn a_service_s_own_listening_addresses_move_to_its_ports() {
        let placement = placement();
        assert_eq!(
            placement.rewrite("audit-service", "0.0.0.0:9102"),
            "127.0.0.1:41001"
        );
        assert_eq!(
            placement.rewrite("audit-service", "http://127.0.0.1:9102/readyz"),
            "http://127.0.0.1:41001/readyz"
        );
        assert_eq!(placement.rewrite("ceph", "0.0.0.0"), "127.0.0.1");
    }

    #[test]
    fn what_the_placement_does_not_know_is_left_alone() {
        let placement = placement();
        for value in [
            "aws:amz:default:s3",
            "viewer:dashboard:relais-dev-viewer-token",
            "http://otel-collector:4317",
            "127.0.0.1:9999",
            "10:30",
            "info",
            "",
        ] {
            assert_eq!(placement.rewrite("audit-service", value), value);
        }
    }

    #[test]
    fn the_rendered_file_gives_strings_ports_and_health_commands() {
        let file = ComposeFile::parse(
            r#"
services:
  kafka:
    environment:
      KAFKA_NODE_ID: 1
      EMPTY:
  audit-service:
    image: relais/audit-service:dev
    read_only: true
    ports: ["127.0.0.1:9102:9102/tcp", "127.0.0.1:50051:50051/tcp"]
    healthcheck:
      test: ["CMD", "curl", "-fsS", "http://127.0.0.1:9102/readyz"]
      retries: 24
"#,
        );
        let kafka = file.service("kafka");
        assert_eq!(kafka.environment["KAFKA_NODE_ID"], "1");
        assert_eq!(kafka.environment["EMPTY"], "");
        let audit = file.service("audit-service");
        assert!(audit.read_only);
        assert_eq!(audit.published_ports(), vec![9102, 50051]);
        assert_eq!(audit.health_command().unwrap()[0], "CMD");
        assert_eq!(unescape_dollars("$${KEY}:$$x"), "${KEY}:$x");
    }
}
