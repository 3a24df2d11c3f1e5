//! Reads each node's busy CPU from Prometheus with an instant query every `interval`.
//!
//! A failed or malformed answer keeps the last snapshot (it ages out after `max_staleness`, and then
//! placement falls back to hashing) and logs a warning with the reason. An answer with any value
//! that is not a number in range is rejected whole: half a snapshot would skew placement.
//!
//! Queries evaluate at a time aligned to the interval (`time=` a multiple of it since the Unix
//! epoch), so router replicas polling the same Prometheus at slightly different moments read the
//! same values and place rooms alike.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::Fleet;
use crate::config::{Prometheus, Scale};

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
    /// A sample's value is not a number within range.
    #[error("value {value:?} for {label}={instance:?} is not a busy {expected}")]
    BadValue {
        /// The label name.
        label: String,
        /// The label value.
        instance: String,
        /// The value as sent.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
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

/// The evaluation time for a query made at `now`: the start of its interval, in Unix seconds.
pub fn aligned_time(now: SystemTime, interval: Duration) -> f64 {
    let since_epoch = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let step = interval.as_millis().max(1);
    (since_epoch - since_epoch % step) as f64 / 1000.0
}

/// Runs one instant query and returns busy CPU (0..1) by label value.
pub async fn query(
    client: &reqwest::Client,
    cfg: &Prometheus,
) -> Result<HashMap<String, f64>, QueryError> {
    let time = aligned_time(SystemTime::now(), cfg.interval).to_string();
    let response = client
        .get(format!("{}/api/v1/query", cfg.url))
        .query(&[("query", cfg.query.as_str()), ("time", time.as_str())])
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
    busy_by_label(data.result, &cfg.label, cfg.scale)
}

fn busy_by_label(
    samples: Vec<Sample>,
    label: &str,
    scale: Scale,
) -> Result<HashMap<String, f64>, QueryError> {
    let (divisor, expected) = match scale {
        Scale::Fraction => (1.0, "fraction in [0, 1]"),
        Scale::Percent => (100.0, "percentage in [0, 100]"),
    };
    let mut busy = HashMap::with_capacity(samples.len());
    for sample in samples {
        // Series without the label cannot belong to a node; they are skipped, not fatal.
        let Some(instance) = sample.metric.get(label) else {
            continue;
        };
        let value = sample.value.1.parse::<f64>().ok().map(|v| v / divisor);
        match value {
            Some(v) if (0.0..=1.0).contains(&v) => {
                busy.insert(instance.clone(), v);
            }
            _ => {
                return Err(QueryError::BadValue {
                    label: label.to_owned(),
                    instance: instance.clone(),
                    value: sample.value.1,
                    expected,
                })
            }
        }
    }
    Ok(busy)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(instance: &str, value: &str) -> Sample {
        Sample {
            metric: HashMap::from([("instance".to_owned(), instance.to_owned())]),
            value: (0.0, value.to_owned()),
        }
    }

    #[test]
    fn evaluation_time_is_aligned_to_the_interval() {
        let at = |secs: f64| UNIX_EPOCH + Duration::from_secs_f64(secs);
        let interval = Duration::from_secs(30);
        assert_eq!(aligned_time(at(1_000_000_010.0), interval), 999_999_990.0);
        assert_eq!(aligned_time(at(1_000_000_019.9), interval), 999_999_990.0);
        assert_eq!(aligned_time(at(1_000_000_020.0), interval), 1_000_000_020.0);
        assert_eq!(aligned_time(at(12.75), Duration::from_millis(500)), 12.5);
    }

    #[test]
    fn bad_values_reject_the_whole_answer() {
        for bad in ["NaN", "1.5", "-0.1", "+Inf", "busy"] {
            let e = busy_by_label(
                vec![sample("a", "0.5"), sample("b", bad)],
                "instance",
                Scale::Fraction,
            );
            assert!(matches!(e, Err(QueryError::BadValue { .. })), "{bad}");
        }
        let ok = busy_by_label(
            vec![sample("a", "0.5"), sample("b", "0")],
            "instance",
            Scale::Fraction,
        )
        .unwrap();
        assert_eq!(ok["a"], 0.5);
    }

    #[test]
    fn percent_scale_is_converted() {
        let ok = busy_by_label(vec![sample("a", "42")], "instance", Scale::Percent).unwrap();
        assert!((ok["a"] - 0.42).abs() < 1e-12);
        assert!(busy_by_label(vec![sample("a", "42")], "instance", Scale::Fraction).is_err());
    }
}
