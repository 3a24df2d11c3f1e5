//! Reads each node's busy CPU from Prometheus with an instant query every `interval`.
//!
//! A failed or malformed answer keeps the last snapshot (it ages out after `max_staleness`, and then
//! placement falls back to hashing) and logs a warning with the reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;

use super::Fleet;
use crate::config::Prometheus;

/// Why one query did not produce a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The request failed (connection, timeout, body).
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// Prometheus answered with a non-success status.
    #[error("HTTP status {0}")]
    Status(reqwest::StatusCode),
    /// Prometheus reported an error for the query.
    #[error("query error: {0}")]
    Api(String),
    /// The result was not an instant vector.
    #[error("result type {0:?}, expected \"vector\"")]
    ResultType(String),
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    metric: HashMap<String, String>,
    value: (f64, String),
}

/// Runs one instant query and returns busy CPU by label value.
pub async fn query(
    client: &reqwest::Client,
    cfg: &Prometheus,
) -> Result<HashMap<String, f64>, QueryError> {
    let response = client
        .get(format!("{}/api/v1/query", cfg.url))
        .query(&[("query", cfg.query.as_str())])
        .timeout(cfg.timeout)
        .send()
        .await?;
    let status = response.status();
    // Prometheus answers 400/422 with a JSON error body worth reporting.
    let answer: Answer = match response.json().await {
        Ok(answer) => answer,
        Err(_) if !status.is_success() => return Err(QueryError::Status(status)),
        Err(e) => return Err(e.into()),
    };
    if answer.status != "success" {
        return Err(QueryError::Api(answer.error.unwrap_or(answer.status)));
    }
    let data = answer
        .data
        .ok_or_else(|| QueryError::Api("no data in answer".into()))?;
    if data.result_type != "vector" {
        return Err(QueryError::ResultType(data.result_type));
    }
    Ok(data
        .result
        .into_iter()
        .filter_map(|sample| {
            let value: f64 = sample.value.1.parse().ok()?;
            let label = sample.metric.get(&cfg.label)?;
            value.is_finite().then(|| (label.clone(), value))
        })
        .collect())
}

/// Polls forever, publishing each good reading into the fleet.
pub async fn poll(fleet: Arc<Fleet>, cfg: Prometheus) {
    let client = match reqwest::Client::builder().build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the Prometheus client; CPU data disabled");
            return;
        }
    };
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match query(&client, &cfg).await {
            Ok(cpu) => {
                if failing {
                    tracing::info!(url = %cfg.url, "prometheus answering again");
                }
                failing = false;
                tracing::debug!(series = cpu.len(), "cpu snapshot");
                fleet.set_cpu(cpu, Instant::now());
            }
            Err(e) => {
                failing = true;
                tracing::warn!(url = %cfg.url, error = %e, "prometheus query failed; keeping the last snapshot");
            }
        }
    }
}
