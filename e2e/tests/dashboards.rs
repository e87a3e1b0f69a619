//! Every panel of every Grafana dashboard shows data: after a short native load through the
//! real services (processes), each PromQL expression evaluated by the real Prometheus returns
//! at least one series, and each service's dashboard asks only for that service's metrics.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt as _;
use relais_e2e::{ProcessStack, StackOptions, repository_root};
use serde_json::Value;

/// The metric names an expression selects (identifiers followed by a selector or a range).
fn metric_names(expression: &str) -> BTreeSet<String> {
    let pattern = regex::Regex::new(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{").unwrap();
    pattern
        .captures_iter(expression)
        .map(|c| c[1].to_owned())
        .filter(|name| !["by", "without", "on", "ignoring"].contains(&name.as_str()))
        .collect()
}

/// The exposition family of a series name (`x_bucket` → `x`, `x_total` → `x`).
fn family(name: &str) -> &str {
    ["_bucket", "_count", "_sum", "_total"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|panel| panel["type"] != "row")
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap().to_owned();
            panel["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |target| (title.clone(), target["expr"].as_str().unwrap().to_owned()))
        })
        .collect()
}

/// docs/metrics.md, generated from what the running services expose: every family with its
/// type, labels and help text. Stale → fail; `RELAIS_UPDATE_DOCS=1` regenerates it.
async fn check_metrics_reference(stack: &ProcessStack) {
    let mut document = String::from(
        "# Metrics reference\n\n<!-- Generated from the running services by e2e/tests/dashboards.rs; do not \
         edit. -->\n\nEvery service serves OpenMetrics text at `/metrics` on its admin port. Counters carry \
         `_total`, units are in the names, label values come from fixed sets. Dashboards: \
         `dashboards/`.\n",
    );
    for (job, services) in stack.services() {
        let text = services[0].metrics_text().await;
        let mut families: BTreeMap<String, (String, String, BTreeSet<String>)> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                families.entry(name.to_owned()).or_default().1 = help.to_owned();
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
                families.entry(name.to_owned()).or_default().0 = kind.to_owned();
            } else if !line.starts_with('#') && line.contains('{') {
                let (series, labels) = line.split_once('{').unwrap();
                let family = families
                    .keys()
                    .filter(|name| series.starts_with(name.as_str()))
                    .max_by_key(|name| name.len())
                    .cloned();
                if let Some(family) = family {
                    let labels = labels.split('}').next().unwrap_or_default();
                    for pair in labels.split(',') {
                        if let Some((key, _)) = pair.split_once('=')
                            && key != "le"
                        {
                            families.get_mut(&family).unwrap().2.insert(key.to_owned());
                        }
                    }
                }
            }
        }
        document.push_str(&format!(
            "\n## {job}\n\n| metric | type | labels | meaning |\n| --- | --- | --- | --- |\n"
        ));
        for (name, (kind, help, labels)) in &families {
            let exposed = match kind.as_str() {
                "counter" => format!("{name}_total"),
                _ => name.clone(),
            };
            let labels: Vec<String> = labels.iter().map(|l| format!("`{l}`")).collect();
            document.push_str(&format!(
                "| `{exposed}` | {kind} | {} | {} |\n",
                labels.join(", "),
                help.replace('|', "\\|")
            ));
        }
    }
    let path = repository_root().join("docs/metrics.md");
    if std::env::var_os("RELAIS_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &document).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == document,
        "docs/metrics.md is stale: regenerate it with RELAIS_UPDATE_DOCS=1 cargo test -p relais-e2e --test dashboards"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_returns_data_from_its_own_service() {
    let kafka = relais_test_support::kafka().await;
    let rgw = relais_test_support::rgw().await;
    let prometheus = relais_test_support::prometheus().await;
    let stack = ProcessStack::start(&kafka, &rgw, Some(&prometheus), StackOptions::default()).await;

    // The gateway's own traffic: a WebSocket client, pages, a trace lookup, a refused token.
    let ws_url = format!("ws://{}/ws", stack.gateway_http);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)
            .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("relais.v1, relais.bearer.{}", stack.viewer_token)
            .parse()
            .unwrap(),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let reader = tokio::spawn(async move {
        let (_, mut incoming) = socket.split();
        while let Some(Ok(_)) = incoming.next().await {}
    });

    let scenario = repository_root().join("loadtest/scenarios/dashboard-check.toml");
    let summary = stack.load(&kafka, &scenario, &[]);
    assert!(summary["sent"].as_u64().unwrap() > 3000, "{summary}");

    let page: Value = stack
        .gateway_get("/api/v1/events?limit=5")
        .await
        .json()
        .await
        .unwrap();
    let trace_id = page["events"][0]["trace_id"].as_str().unwrap().to_owned();
    assert_eq!(
        stack
            .gateway_get(&format!("/api/v1/traces/{trace_id}"))
            .await
            .status(),
        200
    );
    let refused = reqwest::Client::new()
        .get(format!("http://{}/api/v1/stats", stack.gateway_http))
        .bearer_auth("not-a-valid-token-at-all")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // Two scrapes after the load (interval 5 s) so every rate has its samples.
    tokio::time::sleep(Duration::from_secs(12)).await;

    // `$instance` becomes exactly this stack's processes, so series of anything else that
    // Prometheus scrapes under the same job (a `make dev` stack, say) cannot hide a dead panel.
    let mut families: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut instances: BTreeMap<&str, String> = BTreeMap::new();
    for (job, services) in stack.services() {
        for service in &services {
            families
                .entry(job)
                .or_default()
                .extend(service.metric_families().await);
        }
        let addresses: Vec<String> = services.iter().map(|s| s.admin.to_string()).collect();
        instances.insert(job, addresses.join("|"));
    }
    let mut dead = Vec::new();
    let mut foreign = Vec::new();
    let mut checked = 0;
    for name in [
        "ingest-worker",
        "audit-service",
        "realtime-gateway",
        "upstream-sim",
        "overview",
    ] {
        let path = repository_root().join(format!("dashboards/{name}.json"));
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            dashboard["panels"][1]["datasource"]["uid"], "relais-prometheus",
            "{name}: the provisioned data source uid"
        );
        for (title, expression) in expressions(&dashboard) {
            checked += 1;
            if name != "overview" {
                if !expression.contains(&format!("job=\"{name}\"")) {
                    foreign.push(format!(
                        "{name} / {title}: no job=\"{name}\" selector: {expression}"
                    ));
                }
                for metric in metric_names(&expression) {
                    if metric != "up" && !families[name].contains(family(&metric)) {
                        foreign.push(format!("{name} / {title}: {metric} is not a {name} metric"));
                    }
                }
            }
            let instance = instances.get(name).map_or(".*", String::as_str);
            let query = expression
                .replace("$__rate_interval", "1m")
                .replace("$instance", instance);
            let samples = prometheus.query(&query).await;
            if samples.is_empty() {
                dead.push(format!("{name} / {title}: {query}"));
            }
        }
    }
    assert!(checked > 50, "only {checked} expressions");
    check_metrics_reference(&stack).await;
    assert!(
        foreign.is_empty(),
        "queries outside their service:\n{}",
        foreign.join("\n")
    );
    assert!(dead.is_empty(), "panels without data:\n{}", dead.join("\n"));
    reader.abort();
    // The alert rules are loaded and evaluate without error against these series.
    let evaluated = std::time::Instant::now();
    loop {
        let rules: Vec<_> = prometheus
            .rules()
            .await
            .into_iter()
            .filter(|rule| rule.group.starts_with("relais-"))
            .collect();
        assert!(
            !rules.is_empty(),
            "Prometheus has not loaded compose/prometheus/alerts.yml"
        );
        let failing: Vec<_> = rules.iter().filter(|rule| rule.health == "err").collect();
        assert!(
            failing.is_empty(),
            "alert rules fail to evaluate: {failing:?}"
        );
        if rules.iter().all(|rule| rule.health == "ok") {
            break;
        }
        assert!(
            evaluated.elapsed() < Duration::from_secs(60),
            "alert rules not evaluated within 60 s: {rules:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stack.stop();
}
