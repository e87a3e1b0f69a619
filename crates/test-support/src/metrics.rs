//! Reading a service's metrics from its admin endpoint, strictly: an endpoint that does not
//! answer or a series that is not there fails the test instead of reading as 0.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One scrape of a Prometheus or OpenMetrics text exposition.
#[derive(Debug, Clone)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn parse(text: String) -> Self {
        Self { text }
    }

    /// The value of one series, named exactly as exposed (`name_total{label="x"}`).
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples()
            .find(|(name, _)| *name == series)
            .map(|(_, value)| value)
    }

    /// The sum of every series of a metric name, whatever its labels; None when it has none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut matched = self
            .samples()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .map(|(_, value)| value)
            .peekable();
        matched.peek()?;
        Some(matched.sum())
    }

    /// Whether the exposition declares the metric family of `series` (its `# TYPE` line).
    pub fn declares_family_of(&self, series: &str) -> bool {
        let (name, family) = family_of(series);
        self.text.lines().any(|line| {
            line.strip_prefix("# TYPE ")
                .and_then(|rest| rest.split(' ').next())
                .is_some_and(|declared| declared == family || declared == name)
        })
    }

    /// `(series, value)` per sample line; exemplars and timestamps are left out.
    fn samples(&self) -> impl Iterator<Item = (&str, f64)> {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let sample = line.split(" # ").next()?;
                // Labels may hold spaces; the value follows the closing brace or the name.
                let split = sample
                    .rfind('}')
                    .map_or_else(|| sample.find(' '), |end| Some(end + 1))?;
                let (series, rest) = sample.split_at(split);
                let value = rest.split_whitespace().next()?.parse().ok()?;
                Some((series, value))
            })
    }
}

/// The series' metric name, and its family name (without a counter's or histogram's suffix).
fn family_of(series: &str) -> (&str, &str) {
    let name = series.split('{').next().unwrap_or(series);
    let family = ["_total", "_bucket", "_count", "_sum", "_created", "_info"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    (name, family)
}

/// Whether `docs/metrics.md`, the generated reference of every service's metrics, lists the
/// series' metric. A family none of whose label sets was used yet is left out of the
/// exposition, so an absent series is known by its name there.
fn documented(series: &str) -> bool {
    static REFERENCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let reference = REFERENCE.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
    });
    let (name, family) = family_of(series);
    [name, family]
        .iter()
        .any(|metric| reference.contains(&format!("| `{metric}` |")))
}

/// A service's admin endpoint.
#[derive(Debug, Clone, Copy)]
pub struct AdminMetrics {
    admin: SocketAddr,
}

impl AdminMetrics {
    pub fn new(admin: SocketAddr) -> Self {
        Self { admin }
    }

    pub async fn try_scrape(&self) -> Result<Exposition, String> {
        // The scrape may come before the service under test has installed a TLS provider
        // (it does so when it builds its own clients), and reqwest needs one to build any client.
        crate::rgw::install_crypto_provider();
        let url = format!("http://{}/metrics", self.admin);
        let response = reqwest::get(&url)
            .await
            .map_err(|error| format!("{url}: {error}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        let text = response
            .text()
            .await
            .map_err(|error| format!("{url}: {error}"))?;
        Ok(Exposition::parse(text))
    }

    /// One scrape; panics when the endpoint does not answer.
    pub async fn scrape(&self) -> Exposition {
        self.try_scrape()
            .await
            .unwrap_or_else(|error| panic!("metrics not readable: {error}"))
    }

    /// A series' value; panics when the endpoint does not answer or the series is missing.
    pub async fn value(&self, series: &str) -> f64 {
        self.scrape()
            .await
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} at {}", self.admin))
    }

    /// A series' value as a counter or gauge reads it: 0 for a label set never used of a known
    /// metric (exposed, or in the generated reference). Panics for a metric known nowhere (a
    /// renamed or misspelt one) and when the endpoint does not answer within 30 s (it may be
    /// starting).
    pub async fn read(&self, series: &str) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let exposition = loop {
            match self.try_scrape().await {
                Ok(exposition) => break exposition,
                Err(error) => {
                    assert!(Instant::now() < deadline, "metrics not readable: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        match exposition.get(series) {
            Some(value) => value,
            None if exposition.declares_family_of(series) || documented(series) => 0.0,
            None => panic!("{} exposes no metric family for {series}", self.admin),
        }
    }

    /// Waits until the series exists and `accept`s its value; panics after `within`, saying
    /// what was last seen. The endpoint may come up meanwhile.
    pub async fn wait_for(
        &self,
        series: &str,
        within: Duration,
        accept: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let seen = match self.try_scrape().await {
                Ok(exposition) => match exposition.get(series) {
                    Some(value) if accept(value) => return value,
                    Some(value) => format!("{value}"),
                    None => "no such series".to_owned(),
                },
                Err(error) => error,
            };
            assert!(
                Instant::now() < deadline,
                "{series} at {} not as expected within {within:?}; last seen: {seen}",
                self.admin
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`AdminMetrics::wait_for`] a value of at least `at_least`.
    pub async fn wait_for_at_least(&self, series: &str, at_least: f64, within: Duration) -> f64 {
        self.wait_for(series, within, |value| value >= at_least)
            .await
    }
}

/// Polls `condition` every 100 ms until it holds; panics after `within` naming `what`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP relais_audit_commits Offset commits\n\
# TYPE relais_audit_commits counter\n\
relais_audit_commits_total 3\n\
relais_audit_commit_failures_total 1\n\
relais_worker_outcomes_total{outcome=\"delivered\",upstream=\"a b\"} 5 # {trace_id=\"x\"} 1.0\n\
relais_worker_outcomes_total{outcome=\"failed\",upstream=\"a b\"} 2\n\
# EOF\n";

    #[test]
    fn series_are_matched_exactly_not_by_prefix() {
        let exposition = Exposition::parse(TEXT.to_owned());
        assert_eq!(exposition.get("relais_audit_commits_total"), Some(3.0));
        assert_eq!(exposition.get("relais_audit_commit"), None);
        assert_eq!(
            exposition.get("relais_worker_outcomes_total{outcome=\"delivered\",upstream=\"a b\"}"),
            Some(5.0)
        );
    }

    #[test]
    fn a_family_is_known_by_its_type_line_whatever_the_suffix() {
        let exposition = Exposition::parse(TEXT.to_owned());
        assert!(exposition.declares_family_of("relais_audit_commits_total"));
        assert!(exposition.declares_family_of("relais_audit_commits"));
        assert!(!exposition.declares_family_of("relais_audit_commit_failures_total"));
        assert!(!exposition.declares_family_of("relais_audit_comits_total"));
    }

    #[test]
    fn the_generated_reference_knows_every_metric_by_name() {
        assert!(documented("relais_worker_consumer_lag{partition=\"7\"}"));
        assert!(documented("relais_audit_commits_total"));
        assert!(!documented("relais_worker_consumer_lagg"));
    }

    #[test]
    fn sums_every_label_set_of_a_name() {
        let exposition = Exposition::parse(TEXT.to_owned());
        assert_eq!(exposition.sum("relais_worker_outcomes_total"), Some(7.0));
        assert_eq!(exposition.sum("relais_worker_missing_total"), None);
    }
}
