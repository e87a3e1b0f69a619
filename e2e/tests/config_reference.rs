//! docs/configuration.md is generated from the configuration types themselves (their doc
//! comments, types and defaults), so it cannot drift from the code: this test fails when the
//! file is stale. Regenerate it with
//!
//!     RELAIS_UPDATE_DOCS=1 cargo test -p relais-e2e --test config_reference
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;

use relais_e2e::repository_root;
use serde_json::Value;

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/$defs/");
            resolve(root, &root["$defs"][name])
        }
        None => schema,
    }
}

fn type_name(root: &Value, schema: &Value) -> String {
    let schema = resolve(root, schema);
    if let Some(values) = schema["enum"].as_array() {
        return values
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    if let Some(choices) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
        let names: Vec<String> = choices
            .iter()
            .map(|choice| type_name(root, choice))
            .filter(|name| name != "null")
            .collect();
        return names.join(" or ");
    }
    match &schema["type"] {
        Value::String(kind) if kind == "array" => {
            format!("list of {}", type_name(root, &schema["items"]))
        }
        Value::String(kind) => kind.clone(),
        Value::Array(kinds) => kinds
            .iter()
            .filter_map(Value::as_str)
            .filter(|kind| *kind != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "value".into(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// One row per leaf setting, with dotted keys as they appear in the TOML file.
fn rows(root: &Value, schema: &Value, prefix: &str, default: Option<&Value>, out: &mut String) {
    let schema = resolve(root, schema);
    let object_like = schema["properties"].is_object();
    if object_like {
        for (name, property) in schema["properties"].as_object().unwrap() {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let nested_default = property
                .get("default")
                .or_else(|| default.and_then(|d| d.get(name)));
            let description = property
                .get("description")
                .or_else(|| resolve(root, property).get("description"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let target = resolve(root, property);
            if target["properties"].is_object() {
                if !description.is_empty() {
                    let _ = writeln!(out, "| **`{key}`** | table | | {} |", one_line(description));
                }
                rows(root, property, &key, nested_default, out);
            } else if target["additionalProperties"].is_object() {
                let _ = writeln!(
                    out,
                    "| **`{key}.<name>`** | table per name | | {} |",
                    one_line(description)
                );
                rows(
                    root,
                    &target["additionalProperties"],
                    &format!("{key}.<name>"),
                    None,
                    out,
                );
            } else {
                let shown = nested_default
                    .map(|value| format!("`{}`", value.to_string().replace('|', "\\|")))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "| `{key}` | {} | {shown} | {} |",
                    type_name(root, property),
                    one_line(description)
                );
            }
        }
    }
}

fn section(title: &str, file_variable: &str, schema: &Value) -> String {
    let mut out = format!(
        "## {title}\n\nFile named by `{file_variable}`; every key is optional.\n\n| key | type | default | meaning |\n| --- | --- | --- | --- |\n"
    );
    rows(schema, schema, "", None, &mut out);
    out.push('\n');
    out
}

#[test]
fn the_configuration_reference_is_generated_from_the_config_types() {
    let worker = serde_json::to_value(schemars::schema_for!(
        relais_ingest_worker::config::WorkerConfig
    ))
    .unwrap();
    let audit = serde_json::to_value(schemars::schema_for!(
        relais_audit_service::config::AuditConfig
    ))
    .unwrap();
    let gateway = serde_json::to_value(schemars::schema_for!(
        relais_realtime_gateway::config::GatewayConfig
    ))
    .unwrap();
    let mut document = String::from(
        "# Configuration reference\n\n<!-- Generated from the configuration types by e2e/tests/config_reference.rs; \
         do not edit. -->\n\nEach service reads a TOML file (defaults apply to everything it leaves out) and \
         its deployment values (addresses, credentials, identity) from flags or `RELAIS_*` variables: \
         `<binary> --help` lists those. Durations are written like `250ms`, `5s`, `15m`. Invalid \
         files stop the service at start-up with exit code 64 and the reason.\n\n",
    );
    document.push_str(&section("ingest-worker", "RELAIS_WORKER_CONFIG", &worker));
    document.push_str(&section("audit-service", "RELAIS_AUDIT_CONFIG", &audit));
    document.push_str(&section(
        "realtime-gateway",
        "RELAIS_GATEWAY_CONFIG",
        &gateway,
    ));
    let path = repository_root().join("docs/configuration.md");
    if std::env::var_os("RELAIS_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &document).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == document,
        "docs/configuration.md is stale: regenerate it with \
         RELAIS_UPDATE_DOCS=1 cargo test -p relais-e2e --test config_reference"
    );
}
