//! A Compose service as a `podman run`: [`ContainerSpec::from_compose`] and its arguments.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::ImageConfig;
use crate::compose::{ComposeService, Placement, unescape_dollars};

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
    /// placement: the service's name, or a replica's), with its addresses moved, and its named
    /// volumes, and bind mounts the test replaces, at `volume_dirs` (by name or source path).
    pub fn from_compose(
        instance: &str,
        service: &ComposeService,
        image: &ImageConfig,
        placement: &Placement,
        volume_dirs: &BTreeMap<String, PathBuf>,
    ) -> Self {
        let rewrite = |value: &str| placement.rewrite(instance, &unescape_dollars(value));
        // A setting that is one of the container's own ports (`RELAIS_RGW_PORT=7480`) moves
        // with it.
        let move_port = |value: &str| {
            let port = value.parse::<u16>().ok()?;
            let moved = placement.rewrite(instance, &format!("0.0.0.0:{port}"));
            (moved != format!("0.0.0.0:{port}"))
                .then(|| moved.rsplit(':').next().unwrap_or(value).to_owned())
        };
        let mut environment = Vec::new();
        // The image's own settings that name a listening address or port: moved like the rest.
        for (name, value) in &image.environment {
            let moved = move_port(value).unwrap_or_else(|| placement.rewrite(instance, value));
            if &moved != value {
                environment.push((name.clone(), moved));
            }
        }
        for (name, value) in &service.environment {
            environment.push((
                name.clone(),
                move_port(value).unwrap_or_else(|| rewrite(value)),
            ));
        }
        let volumes = service
            .volumes
            .iter()
            .map(|volume| {
                let (source, target) = volume.split_once(':').unwrap_or((volume, volume));
                match volume_dirs.get(source) {
                    Some(dir) => format!("{}:{target}", dir.display()),
                    None if source.starts_with('/') => volume.clone(),
                    None => panic!("no directory given for the named volume {source:?}"),
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
        Some((kind, words)) if kind == "CMD" => shell_words(words),
        _ => shell_words(test),
    }
}

fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|word| shell_quote(word))
        .collect::<Vec<_>>()
        .join(" ")
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
