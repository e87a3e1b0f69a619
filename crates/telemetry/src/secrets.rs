//! Secrets at start-up: read from files or variables, and refused in production when they are
//! placeholders. A development stack runs with the committed development values; the
//! production profile (`RELAIS_PROFILE=production`, set by the Kubernetes production overlay)
//! refuses them, and anything that still says it must be replaced, so that a deployment that
//! forgot a secret stops at once instead of running with a value everyone can read.

use std::path::Path;

/// Which rules a service applies to its secrets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Anything goes: the committed development values work.
    #[default]
    Development,
    /// Placeholders, development values and short tokens are refused (exit 64).
    Production,
}

/// Tokens (API and gRPC bearer tokens) shorter than this are refused in production.
pub const MIN_PRODUCTION_TOKEN_LENGTH: usize = 32;

/// Values committed to this repository for development; never secret, so never production.
const DEVELOPMENT_VALUES: &[&str] = &[
    "relais-dev",
    "relais-dev-secret",
    "relais-dev-viewer-token",
    "relais-dev-admin-token-change-me",
];

/// Words that mark a value as one to be replaced.
const PLACEHOLDER_MARKERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "replace",
    "placeholder",
];

/// What a secret is, for the rules that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// A bearer token Relais checks itself: long enough to resist guessing.
    Token,
    /// A password or key another system checks (Kafka, S3): its rules are that system's.
    Credential,
}

/// Checks `value` against the profile's rules. The error names `what` and the rule, never the
/// value.
pub fn check(what: &str, value: &str, kind: SecretKind, profile: Profile) -> Result<(), String> {
    if profile == Profile::Development {
        return Ok(());
    }
    let lowered = value.to_ascii_lowercase();
    if DEVELOPMENT_VALUES.contains(&value) {
        return Err(format!(
            "{what} is a development value committed to the repository; set a real secret (the production profile refuses it)"
        ));
    }
    if let Some(marker) = PLACEHOLDER_MARKERS
        .iter()
        .find(|marker| lowered.contains(*marker))
    {
        return Err(format!(
            "{what} is a placeholder (it contains {marker:?}); set a real secret (the production profile refuses it)"
        ));
    }
    if kind == SecretKind::Token && value.len() < MIN_PRODUCTION_TOKEN_LENGTH {
        return Err(format!(
            "{what} is shorter than {MIN_PRODUCTION_TOKEN_LENGTH} characters (the production profile refuses it)"
        ));
    }
    Ok(())
}

/// [`check`] as a closure over one value, for the libraries' secret walkers.
pub fn rule(
    what: &str,
    kind: SecretKind,
    profile: Profile,
) -> impl Fn(&str) -> Result<(), String> + '_ {
    move |value| check(what, value, kind, profile)
}

/// A secret file's content without its final line break; an empty file is an error, so that
/// an unset secret never passes as an empty one. The error names the file, not its content.
pub fn read_file(what: &str, path: &Path) -> Result<String, String> {
    let content = std::fs::read_to_string(path)
        .map_err(|error| format!("{what}: cannot read {}: {error}", path.display()))?;
    let value = content.strip_suffix('\n').unwrap_or(&content);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        return Err(format!("{what}: {} is empty", path.display()));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: &str = "f3b0c44298fc1c149afbf4c8996fb92427ae41e4";

    #[test]
    fn development_accepts_everything() {
        for value in ["relais-dev-secret", "change-me", "short"] {
            assert!(check("x", value, SecretKind::Token, Profile::Development).is_ok());
        }
    }

    #[test]
    fn production_refuses_placeholders_development_values_and_short_tokens() {
        let refused = |value: &str, kind| check("the value", value, kind, Profile::Production);
        assert!(refused("relais-dev-secret", SecretKind::Credential).is_err());
        assert!(refused("replace-with-a-long-random-secret", SecretKind::Token).is_err());
        assert!(
            refused(
                "Change-Me-viewer-token-0001-aaaaaaaaaaaaa",
                SecretKind::Token
            )
            .is_err()
        );
        assert!(
            refused("abcdefghijklmnopqrstuvwxyz", SecretKind::Token)
                .unwrap_err()
                .contains("shorter than 32")
        );
        // Passwords follow their own system's rules: a short one is not Relais' to refuse.
        assert!(refused("s3cr3t-pw", SecretKind::Credential).is_ok());
        assert!(refused(LONG, SecretKind::Token).is_ok());
    }

    #[test]
    fn errors_never_carry_the_value() {
        let error = check(
            "RELAIS_S3_SECRET_KEY",
            "replace-me-please",
            SecretKind::Credential,
            Profile::Production,
        )
        .unwrap_err();
        assert!(
            error.contains("RELAIS_S3_SECRET_KEY") && !error.contains("please"),
            "{error}"
        );
    }

    #[test]
    fn secret_files_lose_their_final_line_break_and_may_not_be_empty() {
        let folder = relais_test_support::ScratchDir::new("secret");
        let path = folder.write("secret", "value\n");
        assert_eq!(read_file("x", &path).as_deref(), Ok("value"));
        std::fs::write(&path, "").expect("temp file");
        assert!(read_file("x", &path).unwrap_err().contains("is empty"));
    }
}
