//! `make e2e`: the fault scenarios under load, natively, each verified; prints the table and
//! writes artifacts/e2e/report.md and report.json. Exits 1 if anything was lost, duplicated or
//! misplaced in the DLQ, or a healthy upstream lost more than 10 % of its rate while another
//! was down.
//!
//! Usage: relais-e2e [--short] [--only NAME-SUBSTRING]

use std::io::Write as _;

use relais_e2e::scenario::{self, Outcome};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = !args.iter().any(|a| a == "--short");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    relais_test_support::install_crypto_provider();
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let mut outcomes: Vec<Outcome> = Vec::new();
    for plan in scenario::plans(full) {
        if only
            .as_ref()
            .is_some_and(|only| !plan.name.contains(only.as_str()))
        {
            continue;
        }
        let _ = writeln!(std::io::stderr(), "[e2e] {} ...", plan.name);
        let outcome = scenario::run(&kafka, &rgw, plan).await;
        let _ = writeln!(
            std::io::stderr(),
            "[e2e] {}: {} messages, lost {}, duplicated {}, DLQ mismatches {}, audit object errors {}",
            outcome.plan.name,
            outcome.verdict.messages,
            outcome.verdict.lost,
            outcome.verdict.duplicated,
            outcome.verdict.dlq_mismatches,
            outcome.verdict.audit_object_errors
        );
        outcomes.push(outcome);
    }
    let table = scenario::table(&outcomes);
    let dir = relais_test_support::artifacts_dir().join("e2e");
    let _ = std::fs::create_dir_all(&dir);
    let report = format!(
        "# Relais fault scenarios\n\nEach scenario: a fresh stack of processes on the native Kafka and RGW, steady \
         load from loadgen, one fault a quarter into it, then the verifier reads the ingress topic, \
         the DLQ and every audit object.\n\n{table}"
    );
    let _ = std::fs::write(dir.join("report.md"), &report);
    let _ = std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&outcomes).unwrap_or_default(),
    );
    let _ = writeln!(std::io::stdout(), "{report}");
    let failed = outcomes.iter().any(|o| {
        !o.verdict.is_exact()
            || o.counters_agree == Some(false)
            || o.fault_outcomes_seen == Some(false)
            || o.healthy_rate_held() == Some(false)
    });
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
