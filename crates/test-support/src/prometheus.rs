//! Prometheus of the native stack.
//!
//! The native Prometheus discovers extra targets from JSON files in
//! `{state_dir}/prometheus/targets/` (`file_sd_configs`, re-read on change), so a test exposes a
//! `/metrics` endpoint, registers it with [`PrometheusTestEnv::register_target`], and queries the
//! series back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::{Endpoints, UnavailableError, unique_name};

/// A ready Prometheus.
#[derive(Debug, Clone)]
pub struct PrometheusTestEnv {
    url: String,
    targets_dir: PathBuf,
    http: reqwest::Client,
}

/// A scrape target file; removed (and so the target dropped) when this is dropped.
#[derive(Debug)]
pub struct ScrapeTarget {
    path: PathBuf,
    /// The `instance` label Prometheus gives the target's series.
    pub instance: String,
}

impl Drop for ScrapeTarget {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One sample of an instant query.
#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    pub metric: std::collections::BTreeMap<String, String>,
    /// `[unix time, "value"]` as the HTTP API returns it.
    pub value: (f64, String),
}

/// One loaded rule and how its last evaluation went (`health`: ok, err or unknown).
#[derive(Debug, Clone)]
pub struct RuleState {
    pub group: String,
    pub name: String,
    pub health: String,
    pub last_error: String,
}

#[derive(Deserialize)]
struct QueryResponse {
    status: String,
    data: Option<QueryData>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct QueryData {
    result: Vec<Sample>,
}

impl PrometheusTestEnv {
    pub(crate) async fn connect(endpoints: &Endpoints) -> Result<Self, UnavailableError> {
        crate::rgw::install_crypto_provider();
        let url = endpoints.prometheus_url.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|error| UnavailableError::Unreachable {
                endpoint: url.clone(),
                detail: error.to_string(),
            })?;
        let ready = http.get(format!("{url}/-/ready")).send().await;
        match ready {
            Err(error) => {
                return Err(UnavailableError::Unreachable {
                    endpoint: format!("Prometheus {url}"),
                    detail: error.to_string(),
                });
            }
            Ok(response) if !response.status().is_success() => {
                return Err(UnavailableError::Unhealthy {
                    endpoint: format!("Prometheus {url}"),
                    detail: format!("/-/ready says HTTP {}", response.status()),
                });
            }
            Ok(_) => {}
        }
        let state_dir = endpoints
            .state_dir
            .canonicalize()
            .unwrap_or_else(|_| endpoints.state_dir.clone());
        let targets_dir = state_dir.join("prometheus/targets");
        if !targets_dir.is_dir() {
            return Err(UnavailableError::Unhealthy {
                endpoint: format!("Prometheus {url}"),
                detail: format!(
                    "its target directory {} does not exist (was it started by `make infra-up` with this RELAIS_STATE_DIR?)",
                    targets_dir.display()
                ),
            });
        }
        // A Prometheus started from another checkout watches another target directory: our
        // targets would never be scraped. Say so now rather than time out later.
        let config = http
            .get(format!("{url}/api/v1/status/config"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        let config_text = match config {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(error) => {
                return Err(UnavailableError::Unhealthy {
                    endpoint: format!("Prometheus {url}"),
                    detail: format!("its configuration cannot be read: {error}"),
                });
            }
        };
        let watched = targets_dir.join("*.json");
        if !config_text.contains(&*watched.to_string_lossy()) {
            return Err(UnavailableError::Unhealthy {
                endpoint: format!("Prometheus {url}"),
                detail: format!(
                    "it does not watch {} (started from another RELAIS_STATE_DIR?); restart it with `make infra-down infra-up`",
                    watched.display()
                ),
            });
        }
        Ok(Self {
            url,
            targets_dir,
            http,
        })
    }

    /// Makes Prometheus scrape `address` (`/metrics`) under `job`, until the guard is dropped.
    pub fn register_target(&self, job: &str, address: SocketAddr) -> ScrapeTarget {
        let instance = address.to_string();
        let file = self.targets_dir.join(format!("{}.json", unique_name(job)));
        let body = serde_json::json!([{ "targets": [instance], "labels": { "job": job } }]);
        // Written under a temporary name and renamed, so Prometheus never reads half a file.
        let partial = file.with_extension("json.partial");
        std::fs::write(&partial, body.to_string())
            .and_then(|()| std::fs::rename(&partial, &file))
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", file.display()));
        ScrapeTarget {
            path: file,
            instance,
        }
    }

    /// Runs an instant query.
    pub async fn query(&self, expression: &str) -> Vec<Sample> {
        let response: QueryResponse = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expression)])
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|error| panic!("query {expression:?} failed: {error}"))
            .json()
            .await
            .unwrap_or_else(|error| panic!("query {expression:?} answered non-JSON: {error}"));
        assert_eq!(
            response.status,
            "success",
            "query {expression:?} failed: {}",
            response.error.unwrap_or_default()
        );
        response.data.map(|data| data.result).unwrap_or_default()
    }

    /// Every loaded rule as (group, name, health, last error), from `/api/v1/rules`.
    pub async fn rules(&self) -> Vec<RuleState> {
        let response: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/rules", self.url))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|error| panic!("GET /api/v1/rules failed: {error}"))
            .json()
            .await
            .unwrap_or_else(|error| panic!("/api/v1/rules answered non-JSON: {error}"));
        let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
        response["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| {
                group["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|rule| RuleState {
                        group: text(&group["name"]),
                        name: text(&rule["name"]),
                        health: text(&rule["health"]),
                        last_error: text(&rule["lastError"]),
                    })
            })
            .collect()
    }

    /// Polls `expression` until it returns at least one sample, or panics after `timeout`.
    pub async fn wait_for(&self, expression: &str, timeout: Duration) -> Vec<Sample> {
        let started = Instant::now();
        loop {
            let samples = self.query(expression).await;
            if !samples.is_empty() {
                return samples;
            }
            assert!(
                started.elapsed() < timeout,
                "Prometheus returned nothing for {expression:?} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
