//! The alerting rules in `contrib/prometheus/`: `promtool` accepts them and passes their unit
//! tests (`jitsi-router-alerts.test.yml`), every metric they name is one the router exports,
//! and a real Prometheus scraping a real router fires them when a node fails, when every node
//! fails and when a drained node is empty.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use jitsi_router::demo::prometheus::PrometheusServer;
use support::*;

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus")
}

fn rules() -> String {
    std::fs::read_to_string(contrib().join("jitsi-router-alerts.yml")).unwrap()
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(contrib())
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool (Debian's prometheus has it): {e}"));
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_passes_their_tests() {
    promtool(&["check", "rules", "jitsi-router-alerts.yml"]);
    promtool(&["test", "rules", "jitsi-router-alerts.test.yml"]);
}

/// The `jitsi_router_…` metric names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("jitsi_router_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// A router with a CPU reading, so that every metric that does not need Redis or a census is
/// exported.
async fn read_router() -> (Vec<SimNode>, Router, FakePrometheus) {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let readings = nodes.iter().map(|n| (n.addr().to_string(), 0.2)).collect();
    let prometheus = FakePrometheus::start(PromAnswer::Busy(readings)).await;
    let sections = format!(
        "[prometheus]\nurl = {:?}\ninterval = \"1s\"\n\n\
         [health]\ninterval = \"1s\"\ntimeout = \"1s\"\nfall = 1\nrise = 1\n",
        prometheus.url
    );
    let router = Router::start(&certs, &config(&certs, &sections, &node_entries(&nodes)));
    (nodes, router, prometheus)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_rules_name_is_exported() {
    let (_nodes, router, _prometheus) = read_router().await;
    let exported = || async {
        let series = metrics(&router).await;
        (series.keys())
            .flat_map(|s| metric_names(s))
            .collect::<BTreeSet<_>>()
    };
    eventually(Duration::from_secs(10), "a CPU reading", || async {
        exported()
            .await
            .contains("jitsi_router_prometheus_snapshot_age_seconds")
    })
    .await;
    let exported = exported().await;
    // Exported only with `[pins.redis]`, and with a node's `census_url`: the README's table of
    // metrics must list them.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let documented = metric_names(&readme);
    let conditional = [
        "jitsi_router_shared_pin_store_connected",
        "jitsi_router_census_failures_total",
    ];
    for name in metric_names(&rules()) {
        assert!(documented.contains(&name), "{name} is not in the README");
        assert!(
            exported.contains(&name) || conditional.contains(&name.as_str()),
            "{name} is not exported: {exported:?}"
        );
    }
}

/// Waits until the alert `name` fires (for `node` when given); panics after `limit`.
async fn fires(prometheus: &PrometheusServer, name: &str, node: Option<&str>) {
    let labels = match node {
        Some(node) => format!(r#"alertname="{name}",alertstate="firing",node="{node}""#),
        None => format!(r#"alertname="{name}",alertstate="firing""#),
    };
    let query = format!("ALERTS{{{labels}}}");
    assert!(
        prometheus
            .wait_for(&query, 1, Duration::from_secs(20))
            .await,
        "{query} never fired"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_fires_them_on_a_real_router() {
    let (nodes, router, _fake) = read_router().await;
    // The rules as they are, their `for` waits cut to nothing: `promtool test` tests the waits.
    let dir = tempfile::tempdir().unwrap();
    let now: String = rules()
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for:") {
            Some(_) => "        for: 0s\n".to_owned(),
            None => format!("{line}\n"),
        })
        .collect();
    let file = dir.path().join("alerts.yml");
    std::fs::write(&file, now).unwrap();
    let prometheus =
        PrometheusServer::start_with_rules(&[router.admin.unwrap()], Duration::from_secs(1), &file)
            .await
            .unwrap_or_else(|e| panic!("{e}: run the README's test command"));
    let healthy = |node: &str| format!(r#"jitsi_router_node_healthy{{node="{node}"}} == 1"#);
    assert!(
        prometheus
            .wait_for(&healthy(nodes[0].name()), 1, Duration::from_secs(20))
            .await
    );
    let quiet = prometheus.query("ALERTS").await.unwrap();
    assert!(quiet.is_empty(), "alerts with every node well: {quiet:?}");

    nodes[0].set_healthy(false);
    fires(
        &prometheus,
        "JitsiRouterNodeUnhealthy",
        Some(nodes[0].name()),
    )
    .await;
    let all_down = r#"ALERTS{alertname="JitsiRouterNoHealthyNode"}"#;
    assert!(prometheus.query(all_down).await.unwrap().is_empty());
    nodes[1].set_healthy(false);
    fires(&prometheus, "JitsiRouterNoHealthyNode", None).await;

    nodes[0].set_healthy(true);
    router.drain(nodes[0].name()).await;
    fires(
        &prometheus,
        "JitsiRouterNodeDrainedEmpty",
        Some(nodes[0].name()),
    )
    .await;
}
