//! Reads each node's busy CPU from Prometheus with an instant query every `interval`.
//!
//! A failed or malformed answer keeps the last snapshot (it ages out after `max_staleness`, and then
//! placement falls back to hashing) and logs a warning with the reason. An answer with any value
//! that is not a number in range is rejected whole: half a snapshot would skew placement.
//!
//! Polls follow the wall clock: each one happens just after a multiple of `interval` since the Unix
//! epoch and evaluates at that boundary (`time=`), so router replicas read exactly the same values
//! and place rooms alike, and each reading is fresh. At start-up the router reads the last
//! boundary at once; if Prometheus has nothing for that instant (it started later), it reads now.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::Fleet;
use crate::config::{Prometheus, Scale};
use crate::metrics::Metrics;

/// Why one query did not produce a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The request failed (connection, body).
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

/// Runs one instant query evaluated at `time` (Unix seconds); returns busy CPU (0..1) by label value.
pub async fn query(
    client: &reqwest::Client,
    cfg: &Prometheus,
    time: f64,
) -> Result<HashMap<String, f64>, QueryError> {
    let timed_out = |e: reqwest::Error| {
        if e.is_timeout() {
            QueryError::Timeout(cfg.timeout())
        } else {
            QueryError::Http(e)
        }
    };
    let time = time.to_string();
    let response = client
        .get(format!("{}/api/v1/query", cfg.url))
        .query(&[("query", cfg.query.as_str()), ("time", time.as_str())])
        .timeout(cfg.timeout())
        .send()
        .await
        .map_err(timed_out)?;
    let status = response.status();
    // Prometheus answers 400/422 with a JSON error body worth reporting.
    let answer: Answer = match response.json().await {
        Ok(answer) => answer,
        Err(_) if !status.is_success() => return Err(QueryError::Status(status)),
        Err(e) => return Err(timed_out(e)),
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
/// Failed or rejected refreshes are counted in `metrics`.
pub async fn poll(fleet: Arc<Fleet>, cfg: Prometheus, metrics: Arc<Metrics>) {
    let client = match reqwest::Client::builder().no_proxy().build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the Prometheus client; CPU data disabled");
            return;
        }
    };
    let mut failing = false;
    // Start-up: the last boundary (what every replica read), else now.
    let boundary = aligned_time(SystemTime::now(), cfg.interval);
    let first = match query(&client, &cfg, boundary).await {
        Ok(cpu) if cpu.is_empty() => query(&client, &cfg, unix_now())
            .await
            .map(|cpu| (cpu, unix_now())),
        other => other.map(|cpu| (cpu, boundary)),
    };
    publish(&fleet, &cfg, first, &mut failing, &metrics);
    loop {
        let (boundary, wait) = next_boundary(SystemTime::now(), cfg.interval);
        // A moment past the boundary, so scrapes up to it are stored everywhere.
        tokio::time::sleep(wait + settle(cfg.interval)).await;
        let result = query(&client, &cfg, boundary)
            .await
            .map(|cpu| (cpu, boundary));
        publish(&fleet, &cfg, result, &mut failing, &metrics);
    }
}

fn publish(
    fleet: &Fleet,
    cfg: &Prometheus,
    result: Result<(HashMap<String, f64>, f64), QueryError>,
    failing: &mut bool,
    metrics: &Metrics,
) {
    match result {
        Ok((cpu, at)) => {
            if *failing {
                tracing::info!(url = %cfg.url, "prometheus answering again");
            }
            *failing = false;
            tracing::debug!(series = cpu.len(), at, "cpu snapshot");
            fleet.set_cpu(cpu, Instant::now());
        }
        Err(e) => {
            *failing = true;
            metrics.prometheus_failed();
            tracing::warn!(url = %cfg.url, error = %e, "prometheus query failed; keeping the last snapshot");
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as f64
        / 1000.0
}

/// The next interval boundary after `now` (Unix seconds) and the time until it.
pub fn next_boundary(now: SystemTime, interval: Duration) -> (f64, Duration) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let step = interval.as_millis().max(1);
    let next_ms = (since_epoch.as_millis() / step + 1) * step;
    let wait =
        Duration::from_millis(u64::try_from(next_ms - since_epoch.as_millis()).unwrap_or(u64::MAX));
    (next_ms as f64 / 1000.0, wait)
}

fn settle(interval: Duration) -> Duration {
    (interval / 10).min(Duration::from_secs(1))
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
    fn polls_wait_for_the_next_boundary() {
        let now = UNIX_EPOCH + Duration::from_millis(1_000_000_012_500);
        let (at, wait) = next_boundary(now, Duration::from_secs(30));
        assert_eq!(at, 1_000_000_020.0);
        assert_eq!(wait, Duration::from_millis(7_500));
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
