//! The short fault suite (the full one is `make e2e`): kill -9 of every service in turn, an
//! upstream outage, and workers scaled 1 → 3 → 1, each under load and each verified: every
//! message has exactly one outcome in RGW, the DLQ holds exactly what it should, and the
//! audit-service's counter agrees with what is stored.

use relais_e2e::scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_duplicated_under_faults() {
    relais_test_support::install_crypto_provider();
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let mut outcomes = Vec::new();
    for plan in scenario::plans(false) {
        outcomes.push(scenario::run(&kafka, &rgw, plan).await);
    }
    let table = scenario::table(&outcomes);
    std::fs::write(
        relais_test_support::artifacts_dir().join("e2e-short.md"),
        &table,
    )
    .expect("report");
    for outcome in &outcomes {
        assert!(
            outcome.verdict.is_exact(),
            "{}: {:?}\n{table}",
            outcome.plan.name,
            outcome.verdict
        );
        assert!(outcome.verdict.messages > 1000, "{table}");
        assert_ne!(outcome.counters_agree, Some(false), "{table}");
    }
}
