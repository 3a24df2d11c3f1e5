//! Reads each node's busy CPU from Prometheus with an instant query every `interval`.
//!
//! A failed or malformed answer keeps the last snapshot (it ages out after `max_staleness`, and then
//! placement falls back to hashing) and logs a warning with the reason.
//!
//! DESIGN note: values. A value a hair outside 0..1 counts as the nearer end: `rate()` over an
//! idle node's idle counter reads a little above one second per second (extrapolation and float
//! sums), so the default query answers values such as `-0.00008` for an idle node, and a
//! saturated node can read a little above 1. A value further out than [`NOISE`], `NaN`, an
//! infinity or not a number leaves that node without a reading this time, with a warning naming
//! it (at most once a minute); the other nodes' readings stand. A node without a reading takes
//! new rooms only after those with one, so a bad value holds that node back rather than skewing
//! placement, while rejecting the whole answer would let one broken exporter blind placement
//! for the whole fleet. An answer in which no value is usable is a failed query. A node the
//! answer has no series for is named in a warning too (at most once a minute): its `instance`
//! is likely not the label's value for it.
//!
//! Polls follow the wall clock: each one happens just after a multiple of `interval` since the Unix
//! epoch and evaluates at that boundary (`time=`), so router replicas read exactly the same values
//! and place rooms alike, and each reading is fresh. At start-up the router reads the last
//! boundary at once; if Prometheus has nothing for that instant (it started later), it reads now.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{Fleet, Node, NodeId};
use crate::config::{Prometheus, Scale};
use crate::metrics::Metrics;
use crate::throttle::Throttle;

/// How far outside 0..1 a busy fraction may read and still count, as the nearer end.
pub const NOISE: f64 = 0.05;

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
    /// The answer is larger than a CPU query's for any fleet.
    #[error("answer over {MAX_ANSWER} bytes; prometheus.query must give one value per node")]
    TooLarge,
    /// The answer is not Prometheus's JSON.
    #[error("not a Prometheus answer: {0}")]
    Malformed(serde_json::Error),
    /// The result was not an instant vector.
    #[error("result type {0:?}, expected \"vector\"")]
    ResultType(String),
    /// No sample's value is a busy fraction within range.
    #[error("no value is a busy {expected} (for example {value:?} for {label}={instance:?}); check prometheus.query and prometheus.scale")]
    NoUsableValue {
        /// The label name.
        label: String,
        /// The label value of the first unusable sample.
        instance: String,
        /// Its value as sent.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// One answer: each node's busy fraction by its label value, and the values that are none.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reading {
    /// Busy fraction in 0..=1 by the label's value (the node's `instance`).
    pub busy: HashMap<String, f64>,
    /// `(label value, value as answered)` of each sample that is not a busy fraction.
    pub unusable: Vec<(String, String)>,
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

/// The largest answer read: a thousand nodes' CPU is about 150 KB. A query that is not one
/// value per node (raw `node_cpu_seconds_total`: every core and mode of every host) can be
/// tens of megabytes, read and parsed at every interval.
const MAX_ANSWER: usize = 16 << 20;

/// Runs one instant query evaluated at `time` (Unix seconds); returns busy CPU (0..1) by label
/// value, and the values that are not a busy fraction.
pub async fn query(
    client: &reqwest::Client,
    cfg: &Prometheus,
    time: f64,
) -> Result<Reading, QueryError> {
    let timed_out = |e: reqwest::Error| {
        if e.is_timeout() {
            QueryError::Timeout(cfg.timeout())
        } else {
            QueryError::Http(e)
        }
    };
    let time = time.to_string();
    let mut response = client
        .get(format!("{}/api/v1/query", cfg.url))
        .query(&[("query", cfg.query.as_str()), ("time", time.as_str())])
        .timeout(cfg.timeout())
        .send()
        .await
        .map_err(timed_out)?;
    let status = response.status();
    let body = (super::body_within(&mut response, MAX_ANSWER).await)
        .map_err(timed_out)?
        .ok_or(QueryError::TooLarge)?;
    // Prometheus answers 400/422 with a JSON error body worth reporting.
    let answer: Answer = match serde_json::from_slice(&body) {
        Ok(answer) => answer,
        Err(_) if !status.is_success() => return Err(QueryError::Status(status)),
        Err(e) => return Err(QueryError::Malformed(e)),
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

/// What a value must be, by scale.
fn expected(scale: Scale) -> &'static str {
    match scale {
        Scale::Fraction => "fraction in [0, 1]",
        Scale::Percent => "percentage in [0, 100]",
    }
}

fn busy_by_label(samples: Vec<Sample>, label: &str, scale: Scale) -> Result<Reading, QueryError> {
    let divisor = match scale {
        Scale::Fraction => 1.0,
        Scale::Percent => 100.0,
    };
    let mut reading = Reading::default();
    for sample in samples {
        // Series without the label cannot belong to a node; they are skipped, not fatal.
        let Some(instance) = sample.metric.get(label) else {
            continue;
        };
        let value = sample.value.1.parse::<f64>().ok().map(|v| v / divisor);
        match value {
            Some(v) if (-NOISE..=1.0 + NOISE).contains(&v) => {
                reading.busy.insert(instance.clone(), v.clamp(0.0, 1.0));
            }
            _ => reading.unusable.push((instance.clone(), sample.value.1)),
        }
    }
    match reading.unusable.first() {
        Some((instance, value)) if reading.busy.is_empty() => Err(QueryError::NoUsableValue {
            label: label.to_owned(),
            instance: instance.clone(),
            value: value.clone(),
            expected: expected(scale),
        }),
        _ => Ok(reading),
    }
}

/// Reads the nodes' CPU forever by the fleet's `[prometheus]` settings, starting again by the new
/// ones when a reload changes them (and idle while there are none).
pub async fn run(fleet: Arc<Fleet>, metrics: Arc<Metrics>) {
    let mut changes = fleet.prometheus_changes();
    loop {
        let cfg = changes.borrow_and_update().clone();
        if let Some(cfg) = cfg.as_ref() {
            tracing::info!(url = %cfg.url, interval = ?cfg.interval, "reading node CPU from prometheus");
        }
        let polling = async {
            match cfg.as_ref() {
                Some(settings) => poll(&fleet, &cfg, settings, &metrics).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = polling => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// Polls forever by `cfg`, the settings `source` holds, publishing each good reading into the
/// fleet; returns only when it cannot build its client. Failed or rejected refreshes are
/// counted in `metrics`.
async fn poll(
    fleet: &Fleet,
    source: &Arc<Option<Prometheus>>,
    cfg: &Prometheus,
    metrics: &Metrics,
) {
    let client = match reqwest::Client::builder().no_proxy().build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the Prometheus client; CPU data disabled");
            return;
        }
    };
    let mut watch = Watch {
        failing: false,
        unusable: Throttle::new(Duration::from_secs(60)),
        unmatched: Throttle::new(Duration::from_secs(60)),
        missed: Vec::new(),
    };
    // Start-up: the last boundary (what every replica read), else now.
    let boundary = aligned_time(SystemTime::now(), cfg.interval);
    let first = match query(&client, cfg, boundary).await {
        Ok(cpu) if cpu == Reading::default() => query(&client, cfg, unix_now())
            .await
            .map(|cpu| (cpu, unix_now())),
        other => other.map(|cpu| (cpu, boundary)),
    };
    publish(fleet, source, cfg, first, &mut watch, metrics);
    loop {
        let (boundary, wait) = next_boundary(SystemTime::now(), cfg.interval);
        // A moment past the boundary, so scrapes up to it are stored everywhere.
        tokio::time::sleep(wait + settle(cfg.interval)).await;
        let result = query(&client, cfg, boundary)
            .await
            .map(|cpu| (cpu, boundary));
        publish(fleet, source, cfg, result, &mut watch, metrics);
    }
}

/// What the poll loop remembers between answers for its log lines.
struct Watch {
    /// The last query failed: the next good one says Prometheus answers again.
    failing: bool,
    /// Values that are not a busy fraction (warned at most once a minute).
    unusable: Throttle,
    /// Nodes whose `instance` no series of the answer carries (warned at most once a minute).
    unmatched: Throttle,
    /// The nodes the last answer with series had none for.
    missed: Vec<NodeId>,
}

fn publish(
    fleet: &Fleet,
    source: &Arc<Option<Prometheus>>,
    cfg: &Prometheus,
    result: Result<(Reading, f64), QueryError>,
    watch: &mut Watch,
    metrics: &Metrics,
) {
    match result {
        Ok((cpu, at)) => {
            if watch.failing {
                tracing::info!(url = %cfg.url, "prometheus answering again");
            }
            watch.failing = false;
            if let Some((instance, value)) = cpu.unusable.first() {
                if let Some(answers) = watch.unusable.due() {
                    tracing::warn!(
                        url = %cfg.url,
                        label = %cfg.label,
                        instance,
                        value,
                        nodes = cpu.unusable.len(),
                        answers_since_last_warning = answers,
                        "prometheus answered a value that is not a busy {}; those nodes have no CPU reading this time (check prometheus.query)",
                        expected(cfg.scale)
                    );
                }
            }
            warn_unmatched(fleet, cfg, &cpu, watch);
            tracing::debug!(series = cpu.busy.len(), at, "cpu snapshot");
            fleet.set_cpu_from(source, cpu.busy, Instant::now());
        }
        Err(e) => {
            watch.failing = true;
            metrics.prometheus_failed();
            tracing::warn!(url = %cfg.url, error = %e, "prometheus query failed; keeping the last snapshot");
        }
    }
}

/// Warns of the nodes the answer has no series for: a node without a reading takes new rooms
/// only after the nodes with one, so an `instance` that matches nothing (the default, the
/// upstream's `host:port`, where node_exporter's series say `host:9100`) holds a node back
/// for good. Names a few of the answer's own values to compare with.
///
/// A node is named only when two answers with series in a row have none for it: a Prometheus
/// that has just started gets its series one scrape at a time, and an answer with no series at
/// all shows no mismatch.
fn warn_unmatched(fleet: &Fleet, cfg: &Prometheus, cpu: &Reading, watch: &mut Watch) {
    if cpu == &Reading::default() {
        watch.missed.clear();
        return;
    }
    let answered = |instance: &str| {
        cpu.busy.contains_key(instance) || cpu.unusable.iter().any(|(i, _)| i == instance)
    };
    let state = fleet.snapshot();
    let missed: Vec<&Arc<Node>> = (state.nodes().iter())
        .filter(|node| !answered(&node.spec.instance))
        .collect();
    let before = std::mem::replace(
        &mut watch.missed,
        missed.iter().map(|node| node.id.clone()).collect(),
    );
    let unmatched: Vec<String> = (missed.iter())
        .filter(|node| before.contains(&node.id))
        .map(|node| format!("{} ({:?})", node.id, node.spec.instance))
        .collect();
    if unmatched.is_empty() || watch.unmatched.due().is_none() {
        return;
    }
    let mut values: Vec<&str> = cpu.busy.keys().map(String::as_str).collect();
    values.sort_unstable();
    values.truncate(5);
    tracing::warn!(
        label = %cfg.label,
        nodes = %unmatched.join(", "),
        answer_has = ?values,
        "prometheus has no series for these nodes' instance; they take new rooms only after the nodes with a reading (set [[nodes]] instance to the node's value of the label)"
    );
}

/// Now, in Unix seconds.
pub fn unix_now() -> f64 {
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
    fn an_idle_nodes_noise_counts_as_the_nearer_end() {
        // What a real Prometheus answers for an idle node with the default query.
        for (noise, busy) in [
            ("-0.0000847457627117798", 0.0),
            ("-2.220446049250313e-16", 0.0),
        ]
        .into_iter()
        .chain([("1.00003", 1.0), ("0.0500", 0.05), ("-0.05", 0.0)])
        {
            let reading = busy_by_label(vec![sample("a", noise)], "instance", Scale::Fraction);
            let reading = reading.unwrap();
            assert_eq!(reading.busy["a"], busy, "{noise}");
            assert!(reading.unusable.is_empty());
        }
    }

    #[test]
    fn a_bad_value_leaves_only_its_node_without_a_reading() {
        for bad in ["NaN", "1.5", "-0.1", "+Inf", "-Inf", "busy", ""] {
            let reading = busy_by_label(
                vec![sample("a", "0.5"), sample("b", bad), sample("c", "0")],
                "instance",
                Scale::Fraction,
            )
            .unwrap();
            assert_eq!(
                reading.busy,
                HashMap::from([("a".to_owned(), 0.5), ("c".to_owned(), 0.0)]),
                "{bad}"
            );
            assert_eq!(reading.unusable, [("b".to_owned(), bad.to_owned())]);
        }
    }

    #[test]
    fn an_answer_with_no_usable_value_fails_and_names_one() {
        let e = busy_by_label(
            vec![sample("a", "45"), sample("b", "70")],
            "instance",
            Scale::Fraction,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, QueryError::NoUsableValue { .. }), "{text}");
        assert!(
            text.contains(r#""45" for instance="a""#) && text.contains("prometheus.scale"),
            "{text}"
        );
        // Series without the label are no nodes: an answer of only those is empty, not failed.
        let unlabelled = Sample {
            metric: HashMap::new(),
            value: (0.0, "NaN".to_owned()),
        };
        let empty = busy_by_label(vec![unlabelled], "instance", Scale::Fraction).unwrap();
        assert_eq!(empty, Reading::default());
    }

    #[test]
    fn percent_scale_is_converted() {
        let ok = busy_by_label(vec![sample("a", "42")], "instance", Scale::Percent).unwrap();
        assert!((ok.busy["a"] - 0.42).abs() < 1e-12);
        assert!(busy_by_label(vec![sample("a", "42")], "instance", Scale::Fraction).is_err());
        let noise = busy_by_label(vec![sample("a", "-0.3")], "instance", Scale::Percent).unwrap();
        assert_eq!(noise.busy["a"], 0.0);
    }

    #[test]
    fn a_node_is_named_unmatched_after_two_answers_in_a_row() {
        use crate::config::{NodeSpec, DEFAULT_QUERY};
        let specs = ["a", "b"].map(|n| NodeSpec::new(n, &format!("http://{n}:80")).unwrap());
        let fleet = Fleet::new(specs.to_vec(), Duration::from_secs(90));
        let cfg = Prometheus::built_in("http://p", DEFAULT_QUERY, Duration::from_secs(1));
        let mut watch = Watch {
            failing: false,
            unusable: Throttle::new(Duration::from_secs(60)),
            unmatched: Throttle::new(Duration::ZERO),
            missed: Vec::new(),
        };
        let answer = |instances: &[&str]| Reading {
            busy: instances.iter().map(|i| (i.to_string(), 0.5)).collect(),
            unusable: Vec::new(),
        };
        let warnings = |watch: &Watch| watch.unmatched.count();
        // A Prometheus that has just started: no series, then a's, then both.
        for (instances, warned) in [(&[][..], 0), (&["a:80"][..], 0), (&["a:80", "b:80"][..], 0)] {
            warn_unmatched(&fleet, &cfg, &answer(instances), &mut watch);
            assert_eq!(warnings(&watch), warned, "{instances:?}");
        }
        // b's instance matches nothing: named from the second answer on.
        warn_unmatched(&fleet, &cfg, &answer(&["a:80", "b:9100"]), &mut watch);
        assert_eq!(warnings(&watch), 0);
        warn_unmatched(&fleet, &cfg, &answer(&["a:80", "b:9100"]), &mut watch);
        assert_eq!(warnings(&watch), 1);
        assert_eq!(watch.missed, [NodeId::new("b")]);
    }
}
